"""The four PC-AVS networks together, with the official inference composition.

    id_vector, id_map = netV(reference image)             # once per avatar
    mouth = netE.mouth_embed(1.2 * netA_sync(mel window))  # per frame, 500-d
    pose  = netE.headpose_embed(netE.to_headpose(netE.model(pose frame)))  # per frame, 12-d
    lips  = netE.mouth_embed(netE.to_mouth(netE.model(frame)))  # visual mouth, 500-d (no 1.2)
    style = cat(id_vector 2048, mouth 500, pose 12)         # 2560
    image = netG(style, id_map)                             # B x 3 x 224 x 224, tanh, [-1, 1]

Images are RGB, NCHW, scaled to [-1, 1]; mel windows are B x 1 x 80 x 20 (freq x time).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, TypeVar

import torch
from torch import nn

from trtalk.models.fan import PoseEncoder
from trtalk.models.generator import OFFICIAL_CHANNELS, Generator
from trtalk.models.resnet_se import AudioEncoder
from trtalk.models.resnext import IdentityEncoder

ID_DIM = 2048
MOUTH_DIM = 500

#: Bounds on a config read from a file (untrusted: a checkpoint's metadata). The official values
#: sit well inside them; anything outside is refused before a single tensor is allocated.
MAX_GEN_CHANNELS = 4096
MAX_NUM_CLASSES = 100_000
MAX_POSE_DIM = 256
MAX_CLIP_LEN = 64
CROP_SIZES = (224,)
#: Largest model (all four networks, float32) a config may imply: 2 GiB (official: 0.57 GiB).
MAX_MODEL_BYTES = 2 << 30
#: the encoders' sizes: official, or small (one block per stage, narrow trunks; the small config)
ENCODER_SIZES = ("official", "small")
#: the small config's generator widths
SMALL_CHANNELS = {7: 512, 14: 64, 28: 64, 56: 32, 112: 32, 224: 16}


def encoder_size(v: object) -> str:
    """A config's ``encoders`` value, checked (ConfigError otherwise)."""
    if v not in ENCODER_SIZES:
        raise ConfigError(f"config encoders must be one of {', '.join(ENCODER_SIZES)}, got {v!r:.40}")
    return str(v)


class ConfigError(ValueError):
    """A config dict that is not a valid `PCAVSConfig` (message: one line, names the key)."""


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
    #: encoder size: "official", or "small" (narrow, shallow trunks of the small test config;
    #: same outputs, random weights only)
    encoders: str = "official"

    def __post_init__(self) -> None:
        if ID_DIM + MOUTH_DIM + self.pose_dim != self.style_dim:
            raise ValueError("style_dim must equal 2048 + 500 + pose_dim")
        if self.encoders not in ENCODER_SIZES:
            raise ValueError(f"encoders must be one of {', '.join(ENCODER_SIZES)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PCAVSConfig":
        """The config of a JSON object (untrusted input: see `from_dict`).

        Raises ConfigError (a ValueError) on broken JSON or any invalid field."""
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config is not valid JSON ({' '.join(str(exc).split())})") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: object) -> "PCAVSConfig":
        """Validate ``d`` against the schema (known keys, types, bounds, style_dim consistency,
        implied model size <= `MAX_MODEL_BYTES`) and return the config. Nothing is allocated.

        Raises ConfigError naming the first problem; unknown keys are listed in
        ``ConfigError.unknown`` (a file from a newer trtalk)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            err = ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(repr(k) for k in unknown[:3])}")
            err.unknown = unknown  # type: ignore[attr-defined]
            raise err
        kw: dict = {}
        for name, lo, hi in (("style_dim", 1, ID_DIM + MOUTH_DIM + MAX_POSE_DIM),
                             ("crop_size", 1, max(CROP_SIZES)), ("pose_dim", 1, MAX_POSE_DIM),
                             ("num_classes", 1, MAX_NUM_CLASSES), ("clip_len", 1, MAX_CLIP_LEN)):
            if name in d:
                kw[name] = _bounded_int(d[name], name, lo, hi)
        if "crop_size" in kw and kw["crop_size"] not in CROP_SIZES:
            raise ConfigError(f"config crop_size {kw['crop_size']} is not supported "
                              f"({', '.join(map(str, CROP_SIZES))})")
        if "mouth_weight" in d:
            w = d["mouth_weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                    or abs(w) > 1e3:
                raise ConfigError(f"config mouth_weight must be a finite number, got {w!r:.40}")
            kw["mouth_weight"] = float(w)
        if "gen_channels" in d:
            kw["gen_channels"] = _gen_channels(d["gen_channels"], kw.get("crop_size", 224))
        if "encoders" in d:
            kw["encoders"] = encoder_size(d["encoders"])
        try:
            cfg = cls(**kw)
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
        need = cfg.model_bytes()
        if need > MAX_MODEL_BYTES:
            raise ConfigError(f"config implies a {need / 2 ** 30:.1f} GiB model, more than the "
                              f"{MAX_MODEL_BYTES / 2 ** 30:.0f} GiB bound")
        return cfg

    def parameter_count(self) -> int:
        """Parameters and buffers of the four networks of this config, counted without
        allocating them (the modules are built on the meta device)."""
        import torch

        with torch.device("meta"):
            model = PCAVS(self)
        return sum(t.numel() for t in model.state_dict().values())

    def model_bytes(self) -> int:
        """float32 bytes of the model this config describes (see `parameter_count`)."""
        return 4 * self.parameter_count()

    @classmethod
    def small(cls) -> "PCAVSConfig":
        """A narrow generator (512 at 7x7 is fixed by the identity map) and small encoders
        (`ENCODER_SIZES`): same stages, inputs and outputs; fast tests and trials only."""
        return cls(gen_channels=dict(SMALL_CHANNELS), encoders="small")


NETWORKS = ("G", "V", "E", "A_sync")

#: ``--model-config`` of every command that builds PC-AVS networks (one help text for all).
MODEL_CONFIG_HELP = ("network size: official (the published networks) or small (every network "
                     "narrow and shallow, seeded random weights: for trying things and tests)")


def _bounded_int(v: object, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"config {name} must be an integer, got {v!r:.40}")
    if not lo <= v <= hi:
        raise ConfigError(f"config {name} {v} is out of range [{lo}, {hi}]")
    return v


def _gen_channels(v: object, crop_size: int) -> dict[int, int]:
    """Generator widths: resolutions 7, 14, ... crop_size (JSON keys are strings), each 1..4096,
    512 at 7x7 (the identity map's width)."""
    if not isinstance(v, dict):
        raise ConfigError(f"config gen_channels must be an object, got {type(v).__name__}")
    want = []
    r = 7
    while r <= crop_size:
        want.append(r)
        r *= 2
    out: dict[int, int] = {}
    for k, c in v.items():
        try:
            res = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"config gen_channels key {k!r:.20} is not a resolution") from None
        if res not in want:
            raise ConfigError(f"config gen_channels key {res} is not one of "
                              f"{', '.join(map(str, want))}")
        out[res] = _bounded_int(c, f"gen_channels[{res}]", 1, MAX_GEN_CHANNELS)
    missing = [r for r in want if r not in out]
    if missing:
        raise ConfigError(f"config gen_channels lacks resolution {missing[0]}")
    if out[7] != 512:
        raise ConfigError(f"config gen_channels[7] must be 512 (the identity map), got {out[7]}")
    return out


M = TypeVar("M", bound=nn.Module)


def seeded_model(make: Callable[[], M], seed: int,
                 finish: Callable[[M, torch.Generator], None] | None = None) -> M:
    """``make()`` under ``torch.manual_seed(seed)`` (the global RNG left as it was), with
    non-trivial BatchNorm running statistics (so parity tests see BN in eval mode) drawn from a
    generator seeded ``seed + 1``, which ``finish(model, generator)`` may draw from further; in
    eval mode. The seeded random weights of both families."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
        gen = torch.Generator().manual_seed(seed + 1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
        if finish is not None:
            finish(model, gen)
    return model.eval()


class PCAVS(nn.Module):
    """Holds netG, netV, netE, netA_sync under the official names and runs the composition."""

    def __init__(self, config: PCAVSConfig | None = None):
        super().__init__()
        self.config = config or PCAVSConfig()
        c = self.config
        self.netG = Generator(style_dim=c.style_dim, size=c.crop_size, channels=c.gen_channels)
        small = c.encoders == "small"
        self.netV = IdentityEncoder(num_classes=c.num_classes, small=small)
        self.netE = PoseEncoder(num_classes=c.num_classes, pose_dim=c.pose_dim, clip_len=c.clip_len,
                                small=small)
        self.netA_sync = AudioEncoder(num_classes=c.num_classes, small=small)

    def network(self, name: str) -> nn.Module:
        """The sub-network by its checkpoint name: "G", "V", "E" or "A_sync"."""
        return getattr(self, f"net{name}")

    @classmethod
    def random(cls, seed: int = 0, config: PCAVSConfig | None = None) -> "PCAVS":
        """Seeded random weights (tests, demos without a checkpoint, benchmarks)."""
        return seeded_model(lambda: cls(config), seed)

    @torch.no_grad()
    def encode_identity(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference image B x 3 x 224 x 224 -> (id_vector B x 2048, id_map B x 512 x 7 x 7)."""
        return self.netV(image)

    @torch.no_grad()
    def encode_pose(self, image: torch.Tensor) -> torch.Tensor:
        """Aligned pose frame B x 3 x 224 x 224 -> pose code B x 12."""
        return self.netE(image)

    @torch.no_grad()
    def encode_pose_mouth(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned frame B x 3 x 224 x 224 -> (pose code B x 12, visual mouth code B x 500), one
        trunk pass: the mouth from a video or a webcam instead of the audio."""
        return self.netE.pose_and_mouth(image)

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
