"""The four runtime stages of PD-FGC as standalone modules with named I/O, and their ONNX export.

    identity:  image  B x 3 x 224 x 224            -> id_vector B x 2048, id_map B x 512 x 7 x 7
    motion:    image  B x 3 x 224 x 224            -> pose B x 6, eye B x 6, emotion B x 30
    audio:     mel    B x 1 x 80 x 20              -> mouth B x 500   (the 1.5 weight inside)
    generator: style  B x 2590, id_map B x 512x7x7 -> image B x 3 x 224 x 224 in [-1, 1]

The generator graph holds PD-FGC's seeded noise maps as constants (`Generator` noise mode
"seeded"); smoothing, weights 1.2 and the masks stay outside the graphs (they are per-stream
state, `trtalk.families.pdfgc.model`). The family's spec (`trtalk.families.pdfgc`) hands these to
the exporter (manifest with ``"family": "pdfgc"``), engine builder, cache, AOT packages and runner.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trtalk.families.pcavs.stages import shared_specs
from trtalk.families.pdfgc.model import EMOTION_DIM, EYE_DIM, MOUTH_WEIGHT, POSE_DIM, STYLE_DIM, PDFGC, PDFGCConfig
from trtalk.models.fuse import FuseOptions
from trtalk.models.stages import BATCH, StageSpec, TensorSpec, fuse_options

PDFGC_STAGES = ("identity", "motion", "audio", "generator")


def pdfgc_stage_specs(model: "PDFGC | PDFGCConfig", dtype: str = "float32") -> dict[str, StageSpec]:
    """I/O specs of the four PD-FGC stages (of a model or its config)."""
    base = shared_specs(getattr(model, "config", model).crop_size, STYLE_DIM, dtype)
    motion = StageSpec("motion", base["image"].inputs,
                       tuple(TensorSpec(n, (BATCH, d), dtype) for n, d in
                             (("pose", POSE_DIM), ("eye", EYE_DIM), ("emotion", EMOTION_DIM))))
    return {"identity": base["identity"], "motion": motion, "audio": base["audio"],
            "generator": base["generator"]}


class _Identity(nn.Module):
    def __init__(self, model: PDFGC) -> None:
        super().__init__()
        self.appearance = model.appearance

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.appearance(image)


class _Motion(nn.Module):
    def __init__(self, model: PDFGC) -> None:
        super().__init__()
        self.motion = model.motion

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.motion(image)


class _Audio(nn.Module):
    """The audio encoder, its mouth embedding and the official 1.5 weight: one graph."""

    def __init__(self, model: PDFGC) -> None:
        super().__init__()
        self.audio = model.audio

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return MOUTH_WEIGHT * self.audio(mel)


class _Generator(nn.Module):
    def __init__(self, model: PDFGC) -> None:
        super().__init__()
        self.generator = model.generator

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.generator(style, id_map)


PDFGC_STAGE_CLASSES: dict[str, type[nn.Module]] = {
    "identity": _Identity, "motion": _Motion, "audio": _Audio, "generator": _Generator}


def pdfgc_stage_module(model: PDFGC, stage: str, *, modconv: str = "decomposed",
                       noise_mode: str = "seeded", copy_model: bool = True,
                       fuse: FuseOptions | bool | None = None) -> nn.Module:
    """The eval-mode module of ``stage`` (with ``copy_model``, a copy: ``model`` is never
    changed); the generator with the rewrites of `fuse_options` (``modconv`` / ``fuse``, new
    copies), ``modconv`` and ``noise_mode`` (default: the official seeded maps). The encoders
    run as loaded (their rewrites are PC-AVS's module layout)."""
    from trtalk.models.fuse import fuse_generator

    if stage not in PDFGC_STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(PDFGC_STAGES)}")
    mod = PDFGC_STAGE_CLASSES[stage](model)
    if copy_model:
        mod = copy.deepcopy(mod)
    if stage == "generator":
        options = fuse_options(modconv, fuse)
        if options is not None:
            mod.generator = fuse_generator(mod.generator, options)
        mod.generator.set_modconv_impl(modconv)
        mod.generator.noise_mode = noise_mode
    return mod.eval()


def pdfgc_stage_tensors(model: PDFGC, stage: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers ``stage`` computes with, by their names in its module (not copied)."""
    if stage not in PDFGC_STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(PDFGC_STAGES)}")
    mod = PDFGC_STAGE_CLASSES[stage](model)
    return {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
