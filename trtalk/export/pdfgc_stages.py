"""The four runtime stages of PD-FGC as standalone modules with named I/O, and their ONNX export.

    identity:  image  B x 3 x 224 x 224            -> id_vector B x 2048, id_map B x 512 x 7 x 7
    motion:    image  B x 3 x 224 x 224            -> pose B x 6, eye B x 6, emotion B x 30
    audio:     mel    B x 1 x 80 x 20              -> mouth B x 500   (the 1.5 weight inside)
    generator: style  B x 2590, id_map B x 512x7x7 -> image B x 3 x 224 x 224 in [-1, 1]

The generator graph holds PD-FGC's seeded noise maps as constants (`Generator` noise mode
"seeded"); smoothing, weights 1.2 and the masks stay outside the graphs (they are per-stream
state, `trtalk.models.pdfgc`). These graphs are not yet wired into the engine cache, manifest or
runner (the PC-AVS stages are); `export_pdfgc` writes them to a folder, each checked against its
spec.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from trtalk.export.stages import BATCH, StageSpec, TensorSpec, fuse_options
from trtalk.models.pdfgc import (EMOTION_DIM, EYE_DIM, ID_DIM, MOUTH_DIM, MOUTH_WEIGHT, POSE_DIM,
                                 STYLE_DIM, PDFGC, PDFGCConfig)

PDFGC_STAGES = ("identity", "motion", "audio", "generator")


def pdfgc_stage_specs(model: "PDFGC | PDFGCConfig", dtype: str = "float32") -> dict[str, StageSpec]:
    """I/O specs of the four PD-FGC stages (of a model or its config)."""
    s = getattr(model, "config", model).crop_size
    img = (BATCH, 3, s, s)
    idmap = (BATCH, 512, 7, 7)

    def t(name: str, shape: tuple) -> TensorSpec:
        return TensorSpec(name, shape, dtype)

    return {
        "identity": StageSpec("identity", (t("image", img),),
                              (t("id_vector", (BATCH, ID_DIM)), t("id_map", idmap))),
        "motion": StageSpec("motion", (t("image", img),),
                            (t("pose", (BATCH, POSE_DIM)), t("eye", (BATCH, EYE_DIM)),
                             t("emotion", (BATCH, EMOTION_DIM)))),
        "audio": StageSpec("audio", (t("mel", (BATCH, 1, 80, 20)),), (t("mouth", (BATCH, MOUTH_DIM)),)),
        "generator": StageSpec("generator", (t("style", (BATCH, STYLE_DIM)), t("id_map", idmap)),
                               (t("image", img),)),
    }


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


_CLASSES = {"identity": _Identity, "motion": _Motion, "audio": _Audio, "generator": _Generator}


def pdfgc_stage_module(model: PDFGC, stage: str, *, modconv: str = "decomposed",
                       noise_mode: str = "seeded") -> nn.Module:
    """An eval-mode copy of ``stage`` (``model`` is never changed); the generator with the
    generator rewrites of `fuse_options` and ``noise_mode`` (default: the official seeded maps)."""
    from trtalk.models.fuse import fuse_generator

    if stage not in _CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(PDFGC_STAGES)}")
    mod = copy.deepcopy(_CLASSES[stage](model))
    if stage == "generator":
        options = fuse_options(modconv)
        if options is not None:
            mod.generator = fuse_generator(mod.generator, options)
        mod.generator.set_modconv_impl(modconv)
        mod.generator.noise_mode = noise_mode
    return mod.eval()


def export_pdfgc(model: PDFGC, out: str | os.PathLike, stages: tuple[str, ...] = PDFGC_STAGES, *,
                 precision: str = "fp32", max_batch: int = 8) -> dict:
    """Write ``<stage>.onnx`` for each of ``stages`` into folder ``out``; returns the records."""
    from trtalk.export.onnx_export import export_stage

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = pdfgc_stage_specs(model)
    records = {}
    for stage in stages:
        records[stage] = export_stage(pdfgc_stage_module(model, stage), specs[stage],
                                      out / f"{stage}.onnx", precision=precision, max_batch=max_batch)
    return records
