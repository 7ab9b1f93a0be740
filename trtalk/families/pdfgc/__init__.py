"""PD-FGC (CVPR 2023): PC-AVS's frame step with separate pose, eyes (blink, gaze) and emotion.

The family's composition (`model`), stages (`stages`), runtime adapter (`runtime`) and its
`SPEC` for `trtalk.families.registry`.
"""

from __future__ import annotations

from typing import Any

import torch

from trtalk.families.pdfgc import model, runtime, stages
from trtalk.families.pdfgc.model import EMOTION_WEIGHT, EYE_WEIGHT, PDFGC, PDFGCConfig
from trtalk.errors import TrtalkError
from trtalk.families.spec import FamilySpec

__all__ = ["PDFGC", "PDFGCConfig", "SPEC", "motion_code"]


def motion_code(pose: torch.Tensor, eye: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
    """PD-FGC's style tail B x 42 from raw codes: 1.2 emotion | 1.2 eye | pose (official order)."""
    return torch.cat([EMOTION_WEIGHT * emotion, EYE_WEIGHT * eye, pose], 1)


def _pose_code(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return motion_code(outputs["pose"], outputs["eye"], outputs["emotion"])


def _random(config: Any, seed: int) -> PDFGC:
    if config is not None and not isinstance(config, PDFGCConfig):
        raise TrtalkError("a PD-FGC model takes a PDFGCConfig")
    return PDFGC.random(seed, config)


SPEC = FamilySpec(
    name="pdfgc",
    title="PD-FGC",
    capabilities=runtime.CAPABILITIES,
    open=runtime.open_pdfgc,
    stages=stages.PDFGC_STAGES,
    noise="seeded",
    model_types=(PDFGC, PDFGCConfig),
    official_config=PDFGCConfig,
    small_config=PDFGCConfig.small,
    claims=model.claims,
    load=lambda path, config: model.load_pdfgc(path, config),
    random=_random,
    convert=lambda src, out, config: model.convert(src, out, config),
    checkpoint_files=model.checkpoint_files,
    stage_specs=stages.pdfgc_stage_specs,
    stage_module=stages.pdfgc_stage_module,
    stage_tensors=stages.pdfgc_stage_tensors,
    pose_stage="motion",
    pose_code=_pose_code,
    generator_of=lambda module: module.generator,
)
