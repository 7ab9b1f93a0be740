"""trtalk-tiny: a model family plugin for trtalk (an example, see README.md).

A tiny talking-head generator on seeded random weights, registered through the ``trtalk.families``
entry point as `SPEC`. It uses only trtalk's public plugin surface: `FamilySpec`, `Capabilities`,
`OpenRequest` (`trtalk.families.spec`), the `ModelFamily` interface and its helpers
(`trtalk.families.base`) and stage I/O (`trtalk.models.stages`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from trtalk.errors import TrtalkError
from trtalk.families.base import Avatar, FamilyState, ModelFamily, PoseInput, align_photo, to_uint8
from trtalk.families.spec import Capabilities, FamilySpec, OpenRequest
from trtalk.models.stages import BATCH, StageSpec, TensorSpec

__all__ = ["SPEC", "TinyConfig", "TinyFamily", "TinyModel"]

STAGES = ("identity", "pose", "audio", "generator")


@dataclass(frozen=True)
class TinyConfig:
    """The tiny networks' sizes (224 crops in and out, like PC-AVS)."""

    crop_size: int = 224
    id_dim: int = 16
    channels: int = 8
    pose_dim: int = 3
    mouth_dim: int = 8

    @property
    def style_dim(self) -> int:
        return self.id_dim + self.mouth_dim + self.pose_dim

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class _Identity(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c.channels, 8, stride=8)  # 224 -> 28
        self.vec = nn.Linear(c.channels, c.id_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.conv(image), 0.2)
        id_map = F.avg_pool2d(x, 4)  # 28 -> 7
        return self.vec(x.mean((2, 3))), id_map


class _Pose(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 16, stride=16)
        self.out = nn.Linear(4, c.pose_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(F.leaky_relu(self.conv(image), 0.2).mean((2, 3))))


class _Audio(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.out = nn.Linear(80 * 20, c.mouth_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(mel.flatten(1)))


class _Generator(nn.Module):
    """Style-modulated id map, five nearest-neighbour upsamplings 7 -> 224, RGB in [-1, 1]."""

    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.mod = nn.Linear(c.style_dim, c.channels)
        self.convs = nn.ModuleList(nn.Conv2d(c.channels, c.channels, 3, padding=1) for _ in range(5))
        self.rgb = nn.Conv2d(c.channels, 3, 1)

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        x = id_map * (1 + self.mod(style))[:, :, None, None]
        for conv in self.convs:
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        return torch.tanh(self.rgb(x))


class TinyModel(nn.Module):
    """The tiny family's networks (`encode_identity`, `encode_pose`, `encode_audio`, `generate`)."""

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        self.identity = _Identity(self.config)
        self.pose = _Pose(self.config)
        self.audio = _Audio(self.config)
        self.generator = _Generator(self.config)

    @classmethod
    def random(cls, seed: int = 0, config: TinyConfig | None = None) -> "TinyModel":
        """Seeded random weights (the global RNG left as it was), in eval mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config).eval()


# ---------------------------------------------------------------------------------- stages


class _ImageStage(nn.Module):  # identity, pose
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return self.net(image)


class _AudioStage(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel)


class _GeneratorStage(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.net(style, id_map)


# The exporters name each input after the stage module's forward arguments (`StageSpec` names).
_STAGE_CLASSES = {"identity": _ImageStage, "pose": _ImageStage, "audio": _AudioStage,
                  "generator": _GeneratorStage}


def stage_specs(model: TinyModel | TinyConfig, dtype: str = "float32") -> dict[str, StageSpec]:
    c = model.config if isinstance(model, TinyModel) else model
    img = TensorSpec("image", (BATCH, 3, c.crop_size, c.crop_size), dtype)
    idmap = TensorSpec("id_map", (BATCH, c.channels, 7, 7), dtype)
    return {
        "identity": StageSpec("identity", (img,), (TensorSpec("id_vector", (BATCH, c.id_dim), dtype), idmap)),
        "pose": StageSpec("pose", (img,), (TensorSpec("pose", (BATCH, c.pose_dim), dtype),)),
        "audio": StageSpec("audio", (TensorSpec("mel", (BATCH, 1, 80, 20), dtype),),
                           (TensorSpec("mouth", (BATCH, c.mouth_dim), dtype),)),
        "generator": StageSpec("generator", (TensorSpec("style", (BATCH, c.style_dim), dtype), idmap),
                               (img,)),
    }


def stage_module(model: TinyModel, stage: str, *, modconv: str = "decomposed", noise_mode: str | None = None,
                 copy_model: bool = True, fuse: Any = None) -> nn.Module:
    """The stage's module (no noise, no rewrites: ``modconv``/``noise_mode``/``fuse`` do not apply)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    mod = _STAGE_CLASSES[stage](getattr(model, stage))
    return (copy.deepcopy(mod) if copy_model else mod).eval()


def stage_tensors(model: TinyModel, stage: str) -> dict[str, torch.Tensor]:
    mod = stage_module(model, stage, copy_model=False)
    return {**dict(mod.named_parameters()), **dict(mod.named_buffers())}


# ---------------------------------------------------------------------------------- runtime

# No trained weights exist: no checkpoint to load, nothing better to ask for.
CAPABILITIES = Capabilities(visual_mouth=False, checkpoint=False, needs_checkpoint=False, noise=("fixed",),
                            exportable=True, backends=("torch", "onnxruntime", "tensorrt", "aot"))


class TinyFamily(ModelFamily):
    """The frame step's family over a runner with the four tiny stages. It keeps no per-stream
    state, so every call ignores ``state`` (the base `FamilyState` from `new_state`); a family
    with followers, smoothing or controls subclasses `FamilyState` and returns it from `new_state`."""

    name = "tiny"
    capabilities = CAPABILITIES
    output_size = 224

    def __init__(self, runner: Any, device: str = "cpu") -> None:
        super().__init__(bool(getattr(runner, "random_weights", True)))
        self.runner = runner
        self.device = torch.device(device)

    def _tensor(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.to(self.device)

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        crop, crop_m, mesh = align_photo(image, name, crop, crop_m, mesh)
        x = self._tensor([crop])
        with torch.no_grad():
            id_vec, id_map = self.runner.encode_identity(x)
            ref_pose = self.runner.encode_pose(x)[0]
        return Avatar(image, crop, crop_m, ref_pose, {"id_vec": id_vec, "id_map": id_map, "mesh": mesh})

    def mouth(self, state: FamilyState, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.runner.encode_audio(mel.to(self.device))

    def pose(self, state: FamilyState, inputs: Sequence[PoseInput]) -> torch.Tensor:
        with torch.no_grad():
            return self.runner.encode_pose(self._tensor([p.crop for p in inputs]))

    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        return avatar.ref_pose.expand(len(frames), -1)

    def generate(self, state: FamilyState, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor,
                 frames: Sequence[int] | None = None,
                 camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        b = mouth.shape[0]
        id_vec, id_map = avatar.state["id_vec"], avatar.state["id_map"]
        style = torch.cat([id_vec.expand(b, -1), mouth, pose.to(mouth.device, mouth.dtype)], 1)
        with torch.no_grad():
            return to_uint8(self.runner.generate(style, id_map.expand(b, -1, -1, -1)))


def open_tiny(request: OpenRequest) -> TinyFamily:
    if request.make_runner is None:
        raise TrtalkError("the tiny family runs behind a runner (trtalk.engine.open_runner)")
    runner = request.make_runner(request.backend, request.checkpoint, request.device, request.runner_options)
    return TinyFamily(runner, request.device)


def _random(config: Any, seed: int) -> TinyModel:
    if config is not None and not isinstance(config, TinyConfig):
        raise TrtalkError("the tiny family takes a TinyConfig")
    return TinyModel.random(seed, config)


SPEC = FamilySpec(
    name="tiny",
    title="tiny generator",
    capabilities=CAPABILITIES,
    open=open_tiny,
    stages=STAGES,
    noise="fixed",
    model_types=(TinyModel, TinyConfig),
    official_config=TinyConfig,
    small_config=TinyConfig,
    random=_random,
    stage_specs=stage_specs,
    stage_module=stage_module,
    stage_tensors=stage_tensors,
    pose_stage="pose",
    pose_code=lambda outputs: outputs["pose"],
    generator_of=lambda module: module.net,
)
