"""The four PC-AVS networks together, with the official inference composition.

    id_vector, id_map = netV(reference image)             # once per avatar
    mouth = netE.mouth_embed(1.2 * netA_sync(mel window))  # per frame, 500-d
    pose  = netE.headpose_embed(netE.to_headpose(netE.model(pose frame)))  # per frame, 12-d
    style = cat(id_vector 2048, mouth 500, pose 12)         # 2560
    image = netG(style, id_map)                             # B x 3 x 224 x 224, tanh, [-1, 1]

Images are RGB, NCHW, scaled to [-1, 1]; mel windows are B x 1 x 80 x 20 (freq x time).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from trtalk.models.fan import PoseEncoder
from trtalk.models.generator import OFFICIAL_CHANNELS, Generator
from trtalk.models.resnet_se import AudioEncoder
from trtalk.models.resnext import IdentityEncoder

ID_DIM = 2048
MOUTH_DIM = 500


@dataclass(frozen=True)
class PCAVSConfig:
    """Options of the official demo (options/*.py + experiments/demo_vox.sh)."""

    style_dim: int = 2560
    crop_size: int = 224
    pose_dim: int = 12
    num_classes: int = 5830
    clip_len: int = 1
    mouth_weight: float = 1.2
    gen_channels: dict[int, int] = field(default_factory=lambda: dict(OFFICIAL_CHANNELS))

    def __post_init__(self) -> None:
        if ID_DIM + MOUTH_DIM + self.pose_dim != self.style_dim:
            raise ValueError("style_dim must equal 2048 + 500 + pose_dim")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PCAVSConfig":
        d = json.loads(text)
        d["gen_channels"] = {int(k): int(v) for k, v in d["gen_channels"].items()}
        return cls(**d)

    @classmethod
    def small(cls) -> "PCAVSConfig":
        """Same architecture and keys with a narrow generator (fast tests only; 512 at 7x7 is
        fixed by the identity map)."""
        return cls(gen_channels={7: 512, 14: 64, 28: 64, 56: 32, 112: 32, 224: 16})


NETWORKS = ("G", "V", "E", "A_sync")


class PCAVS(nn.Module):
    """Holds netG, netV, netE, netA_sync under the official names and runs the composition."""

    def __init__(self, config: PCAVSConfig | None = None):
        super().__init__()
        self.config = config or PCAVSConfig()
        c = self.config
        self.netG = Generator(style_dim=c.style_dim, size=c.crop_size, channels=c.gen_channels)
        self.netV = IdentityEncoder(num_classes=c.num_classes)
        self.netE = PoseEncoder(num_classes=c.num_classes, pose_dim=c.pose_dim, clip_len=c.clip_len)
        self.netA_sync = AudioEncoder(num_classes=c.num_classes)

    def network(self, name: str) -> nn.Module:
        """The sub-network by its checkpoint name: "G", "V", "E" or "A_sync"."""
        return getattr(self, f"net{name}")

    @classmethod
    def random(cls, seed: int = 0, config: PCAVSConfig | None = None) -> "PCAVS":
        """Seeded random weights (tests, demos without a checkpoint, benchmarks)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
            gen = torch.Generator().manual_seed(seed + 1)
            for m in model.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    # Non-trivial running statistics so parity tests see BN in eval mode.
                    m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
        return model.eval()

    @torch.no_grad()
    def encode_identity(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference image B x 3 x 224 x 224 -> (id_vector B x 2048, id_map B x 512 x 7 x 7)."""
        return self.netV(image)

    @torch.no_grad()
    def encode_pose(self, image: torch.Tensor) -> torch.Tensor:
        """Aligned pose frame B x 3 x 224 x 224 -> pose code B x 12."""
        return self.netE(image)

    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel window B x 1 x 80 x 20 -> mouth code B x 500 (mouth weight applied)."""
        return self.netE.embed_mouth(self.config.mouth_weight * self.netA_sync(mel))

    @staticmethod
    def style(id_vector: torch.Tensor, mouth: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Official order: id | mouth | pose -> B x 2560."""
        return torch.cat([id_vector, mouth, pose], 1)

    @torch.no_grad()
    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        """Style B x 2560 + id map B x 512 x 7 x 7 -> image B x 3 x 224 x 224 in [-1, 1]."""
        return self.netG(style, id_map)

    @torch.no_grad()
    def forward(self, reference: torch.Tensor, mel: torch.Tensor, pose_image: torch.Tensor) -> torch.Tensor:
        """One reference image (1 x 3 x 224 x 224) driven by B mel windows and B pose frames."""
        id_vec, id_map = self.encode_identity(reference)
        b = mel.shape[0]
        style = self.style(id_vec.expand(b, -1), self.encode_audio(mel), self.encode_pose(pose_image))
        return self.generate(style, id_map.expand(b, -1, -1, -1))
