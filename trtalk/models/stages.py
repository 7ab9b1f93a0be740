"""The four runtime stages of each model family as standalone modules with named, fixed I/O.

A *stage* is one network call of the per-frame pipeline. Every backend (torch, onnxruntime,
tensorrt) and the export manifest use these names, in this order:

    identity:  image  B x 3 x 224 x 224           -> id_vector B x 2048, id_map B x 512 x 7 x 7
    pose:      image  B x 3 x 224 x 224           -> pose B x 12
    audio:     mel    B x 1 x 80 x 20             -> mouth B x 500   (1.2 weight + netE.mouth_embed inside)
    generator: style  B x 2560, id_map B x 512x7x7 -> image B x 3 x 224 x 224 in [-1, 1]
    pose_mouth: image B x 3 x 224 x 224           -> pose B x 12, mouth B x 500 (one FAN trunk pass:
               netE's head-pose and visual mouth branches; lips from a video or a webcam)

All tensors are NCHW (or B x D) float; "batch" is the one dynamic axis. PD-FGC's four stages
(`trtalk.export.pdfgc_stages`: identity, motion, audio, generator) go through the same functions
here (`stage_specs`, `stage_module`, `stage_tensors` dispatch on the model), so the exporter,
manifest, engine builder, engine cache, AOT packages and runner take both families alike;
`family_stages` names a family's stages in order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from trtalk.models.fuse import (FuseOptions, fuse_audio_encoder, fuse_generator,
                                fuse_identity_encoder, fuse_pose_encoder)
from trtalk.models.pcavs import ID_DIM, MOUTH_DIM, PCAVS

STAGES = ("identity", "pose", "audio", "generator", "pose_mouth")
#: Every family's stages, in run order (PC-AVS's are `STAGES`).
FAMILY_STAGES = {"pcavs": STAGES, "pdfgc": ("identity", "motion", "audio", "generator")}
#: The generator noise a family's graphs hold (PD-FGC: the official seeded maps).
FAMILY_NOISE = {"pcavs": "fixed", "pdfgc": "seeded"}
BATCH = "batch"  # the symbolic name of the dynamic batch axis in every graph and manifest


@dataclass(frozen=True)
class TensorSpec:
    """One named stage input or output; ``shape[0]`` is the symbolic batch ``"batch"``."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch axis set to ``batch``."""
        return tuple(batch if s == BATCH else int(s) for s in self.shape)


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def family_of(model: object) -> str:
    """"pdfgc" for a PD-FGC model or config, "pcavs" otherwise."""
    from trtalk.models.pdfgc import PDFGC, PDFGCConfig

    return "pdfgc" if isinstance(model, (PDFGC, PDFGCConfig)) else "pcavs"


def family_stages(family: str) -> tuple[str, ...]:
    """The stage names of ``family`` in run order (ValueError for an unknown family)."""
    if family not in FAMILY_STAGES:
        raise ValueError(f"unknown model family {family!r}; families are {', '.join(FAMILY_STAGES)}")
    return FAMILY_STAGES[family]


def shared_specs(crop_size: int, style_dim: int, dtype: str = "float32") -> dict[str, StageSpec]:
    """The stages both families share, by name: identity, audio (B x 500 mouth) and generator
    (``style_dim`` wide); plus ``"image"``, the B x 3 x crop x crop input of the image encoders,
    as a one-input spec for the family's own encoder stage."""
    img = (BATCH, 3, crop_size, crop_size)
    idmap = (BATCH, 512, 7, 7)

    def t(name: str, shape: tuple) -> TensorSpec:
        return TensorSpec(name, shape, dtype)

    return {
        "image": StageSpec("image", (t("image", img),), ()),
        "identity": StageSpec("identity", (t("image", img),),
                              (t("id_vector", (BATCH, ID_DIM)), t("id_map", idmap))),
        "audio": StageSpec("audio", (t("mel", (BATCH, 1, 80, 20)),), (t("mouth", (BATCH, MOUTH_DIM)),)),
        "generator": StageSpec("generator", (t("style", (BATCH, style_dim)), t("id_map", idmap)),
                               (t("image", img),)),
    }


def stage_specs(model: object, dtype: str = "float32") -> dict[str, StageSpec]:
    """I/O specs of the four stages for ``model``'s family and config (``dtype`` of every I/O
    tensor): a `PCAVS` (or its config), or a PD-FGC model or config."""
    if family_of(model) == "pdfgc":
        from trtalk.export.pdfgc_stages import pdfgc_stage_specs

        return pdfgc_stage_specs(model, dtype)  # type: ignore[arg-type]
    c = getattr(model, "config", model)
    base = shared_specs(c.crop_size, c.style_dim, dtype)
    pose = TensorSpec("pose", (BATCH, c.pose_dim), dtype)
    return {"identity": base["identity"], "pose": StageSpec("pose", base["image"].inputs, (pose,)),
            "audio": base["audio"], "generator": base["generator"],
            "pose_mouth": StageSpec("pose_mouth", base["image"].inputs,
                                    (pose, TensorSpec("mouth", (BATCH, MOUTH_DIM), dtype)))}


class IdentityStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netV = model.netV

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vec, id_map = self.netV(image)
        return vec, id_map


class PoseStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netE = model.netE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.netE(image)


class PoseMouthStage(nn.Module):
    """netE's trunk once, then its head-pose and visual mouth branches (`PoseEncoder.pose_and_mouth`)."""

    def __init__(self, model: PCAVS):
        super().__init__()
        self.netE = model.netE

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pose, mouth = self.netE.pose_and_mouth(image)
        return pose, mouth


class AudioStage(nn.Module):
    """netA_sync, the 1.2 mouth weight and netE.mouth_embed: one graph = one runtime stage."""

    def __init__(self, model: PCAVS):
        super().__init__()
        self.netA_sync = model.netA_sync
        self.mouth_embed = model.netE.mouth_embed  # shared, not copied: only this part of netE
        self.weight = float(model.config.mouth_weight)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.mouth_embed(self.weight * self.netA_sync(mel))


class GeneratorStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netG = model.netG

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.netG(style, id_map)


_STAGE_CLASSES: dict[str, type[nn.Module]] = {
    "identity": IdentityStage, "pose": PoseStage, "audio": AudioStage, "generator": GeneratorStage,
    "pose_mouth": PoseMouthStage}


class CastIO(nn.Module):
    """Runs ``inner`` in ``compute_dtype`` with float32 inputs and outputs (casts inside the graph)."""

    def __init__(self, inner: nn.Module, compute_dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.compute_dtype = compute_dtype

    def forward(self, *args: torch.Tensor):
        out = self.inner(*(a.to(self.compute_dtype) for a in args))
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


def fuse_options(modconv: str, fuse: FuseOptions | bool | None = None) -> FuseOptions | None:
    """The exact rewrites (`trtalk.models.fuse`) a stage gets: ``fuse`` None means all of them
    for the decomposed form (``modconv`` "decomposed" or "auto") and none otherwise, so
    ``"grouped"`` stays the official reference; True/False force all/none."""
    if fuse is None:
        fuse = modconv in ("decomposed", "auto")  # "auto" resolves to "decomposed"
    if fuse is True:
        return FuseOptions()
    return fuse or None


def _fuse_stage(mod: nn.Module, stage: str, options: FuseOptions) -> None:
    """Swap the stage's networks for their rewritten copies (`trtalk.models.fuse`)."""
    if stage == "identity":
        mod.netV = fuse_identity_encoder(mod.netV, options)
    elif stage in ("pose", "pose_mouth"):
        mod.netE = fuse_pose_encoder(mod.netE, options)
    elif stage == "audio":
        mod.netA_sync = fuse_audio_encoder(mod.netA_sync, options)
    else:
        mod.netG = fuse_generator(mod.netG, options)


def stage_module(model: object, stage: str, *, modconv: str = "decomposed",
                 noise_mode: str | None = None, copy_model: bool = True,
                 fuse: FuseOptions | bool | None = None) -> nn.Module:
    """The eval-mode module of ``stage``; positional inputs and outputs follow `stage_specs`.

    The generator is switched to ``modconv`` and ``noise_mode``. ``fuse`` picks the exact
    inference rewrites (blur folded into the upsampling convs, fixed skip/bilinear upsampling
    filters, BatchNorm folded; see `fuse_options`): by default all of them for the decomposed
    form, none for ``"grouped"``. With ``copy_model`` the stage works on a deep copy, so
    ``model`` itself is never changed (export may cast to fp16); rewritten networks are always
    new copies. ``noise_mode`` None is the family's (`FAMILY_NOISE`). A PD-FGC model gets its
    own stages (`trtalk.export.pdfgc_stages.pdfgc_stage_module`).
    """
    if noise_mode is None:
        noise_mode = FAMILY_NOISE[family_of(model)]
    if family_of(model) == "pdfgc":
        from trtalk.export.pdfgc_stages import pdfgc_stage_module

        return pdfgc_stage_module(model, stage, modconv=modconv, noise_mode=noise_mode,  # type: ignore[arg-type]
                                  copy_model=copy_model, fuse=fuse)
    assert isinstance(model, PCAVS)
    if stage not in _STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    mod = _STAGE_CLASSES[stage](model)
    if copy_model:
        mod = copy.deepcopy(mod)
    options = fuse_options(modconv, fuse)
    if options is not None:
        _fuse_stage(mod, stage, options)
    if stage == "generator":
        mod.netG.set_modconv_impl(modconv)
        mod.netG.noise_mode = noise_mode
    return mod.eval()


def stage_tensors(model: object, stage: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers ``stage`` computes with, by their names in its module (not copied)."""
    if family_of(model) == "pdfgc":
        from trtalk.export.pdfgc_stages import PDFGC_STAGE_CLASSES

        if stage not in PDFGC_STAGE_CLASSES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(FAMILY_STAGES['pdfgc'])}")
        mod = PDFGC_STAGE_CLASSES[stage](model)
        return {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
    assert isinstance(model, PCAVS)
    if stage not in _STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    mod = _STAGE_CLASSES[stage](model)
    return {**dict(mod.named_parameters()), **dict(mod.named_buffers())}


def example_inputs(spec: StageSpec, batch: int = 2, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs in the stage's ranges: images and styles in [-1, 1], mel in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        x = torch.rand(t.concrete(batch), generator=gen)
        if t.name == "mel":
            pass
        elif t.name == "id_map":
            x = x * 2.0  # pooled post-ReLU-ish activations: non-negative, O(1)
        else:
            x = x * 2.0 - 1.0
        out.append(x.to(dtype))
    return tuple(out)
