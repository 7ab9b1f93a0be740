"""FLOPs per stage per frame, counted from the PyTorch graph (not typed by hand).

`torch.utils.flop_counter.FlopCounterMode` runs each stage module once at batch 1 and counts the
FLOPs of its matmuls and convolutions (2 per multiply-add; elementwise ops are not counted). The
generator is counted in the official formulation (``modconv="grouped"``), the useful work every
backend does; the decomposed form differs only by the elementwise style/demodulation scaling.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from trtalk.export.stages import example_inputs, stage_module, stage_specs
from trtalk.families import registry

log = logging.getLogger(__name__)

# GFLOP per 224x224 frame of the official networks (DESIGN.md, torch FLOP counter).
DESIGN_GFLOP = {"identity": 8.6, "pose": 12.7, "audio": 0.94, "generator": 69.4}
#: Relative difference from DESIGN_GFLOP still called "near" (rounding of the design numbers).
NEAR_TOLERANCE = 0.05
#: The family whose networks DESIGN.md's figures count (others are compared for reference only).
DESIGN_FAMILY = "pcavs"


def count_stage_flops(model: torch.nn.Module) -> dict[str, int]:
    """FLOPs of one frame (batch 1) per stage of ``model``; ``model`` itself is not changed.

    Keys are the stage names, the family's pose stage (PD-FGC's motion encoder) counted as
    "pose" (the frame's image encoder in the bench's frame)."""
    specs = stage_specs(model)
    family = registry.spec_of(model)
    out: dict[str, int] = {}
    for stage in family.stages:
        key = "pose" if stage == family.pose_stage else stage
        mod = stage_module(model, stage, modconv="grouped")
        args = example_inputs(specs[stage], batch=1)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            mod(*args)
        out[key] = int(counter.get_total_flops())
        del mod
    return out


def compare_with_design(flops: dict[str, int], official: bool, family: str = DESIGN_FAMILY) -> dict[str, dict]:
    """Per stage: counted GFLOP, DESIGN's number, relative difference and a verdict string
    (DESIGN's numbers are PC-AVS's: for PD-FGC they are a reference only)."""
    out = {}
    for stage, f in flops.items():
        g = f / 1e9
        ref = DESIGN_GFLOP.get(stage)
        if ref is None:  # a stage DESIGN has no figure for (pose_mouth: pose + two small MLPs)
            out[stage] = {"gflop": round(g, 4), "design_gflop": None, "rel_diff": None,
                          "verdict": "no reference figure"}
            continue
        rel = (g - ref) / ref
        if family != DESIGN_FAMILY:
            verdict = f"{family}: the reference is PC-AVS's networks (for scale only)"
        elif not official:
            verdict = "small dev model: not comparable" if stage == "generator" else (
                "near the reference" if abs(rel) <= NEAR_TOLERANCE else "differs from the reference")
        else:
            verdict = "near the reference" if abs(rel) <= NEAR_TOLERANCE else "DIFFERS from the reference"
        out[stage] = {"gflop": round(g, 4), "design_gflop": ref, "rel_diff": round(rel, 4),
                      "verdict": verdict}
    return out
