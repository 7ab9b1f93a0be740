"""The runtime stages of any model family, for the exporter, manifest, engine builder, engine
cache, AOT packages and runner: each call asks the model's family (`trtalk.families.registry`).

A *stage* is one network call of the per-frame pipeline with named, fixed I/O
(`trtalk.models.stages`); PC-AVS's are identity, pose, audio, generator and pose_mouth
(`trtalk.families.pcavs.stages`), PD-FGC's identity, motion, audio, generator.
"""

from __future__ import annotations

import torch
from torch import nn

from trtalk.families import registry
from trtalk.families.pcavs.stages import STAGES
from trtalk.models.fuse import FuseOptions
from trtalk.models.stages import BATCH, CastIO, StageSpec, TensorSpec, example_inputs, fuse_options

__all__ = ["BATCH", "CastIO", "STAGES", "StageSpec", "TensorSpec", "example_inputs", "family_stages",
           "family_noise", "fuse_options", "stage_module", "stage_specs", "stage_tensors"]


def family_stages(family: str) -> tuple[str, ...]:
    """The stage names of ``family`` in run order (ValueError for a family without stages)."""
    try:
        spec = registry.get(family)
    except Exception:
        raise ValueError(f"unknown model family {family!r}; families with stages are "
                         f"{', '.join(s.name for s in registry.all_specs().values() if s.stages)}") from None
    if not spec.stages:
        raise ValueError(f"the {spec.title} has no stages")
    return spec.stages


def family_noise(family: str) -> str:
    """The generator noise ``family``'s graphs hold."""
    return registry.get(family).noise


def stage_specs(model: object, dtype: str = "float32") -> dict[str, StageSpec]:
    """I/O specs of the stages of ``model``'s family (a model or its config; ``dtype`` of every
    I/O tensor)."""
    spec = registry.spec_of(model)
    assert spec.stage_specs is not None
    return spec.stage_specs(model, dtype)


def stage_module(model: object, stage: str, *, modconv: str = "decomposed",
                 noise_mode: str | None = None, copy_model: bool = True,
                 fuse: FuseOptions | bool | None = None) -> nn.Module:
    """The eval-mode module of ``stage``; positional inputs and outputs follow `stage_specs`.

    The generator is switched to ``modconv`` and ``noise_mode`` (None: the family's, what its
    graphs hold). ``fuse`` picks the exact inference rewrites (`fuse_options`: by default all of
    them for the decomposed form, none for ``"grouped"``). With ``copy_model`` the stage works on
    a deep copy, so ``model`` itself is never changed (export may cast to fp16).
    """
    spec = registry.spec_of(model)
    assert spec.stage_module is not None
    return spec.stage_module(model, stage, modconv=modconv,
                             noise_mode=spec.noise if noise_mode is None else noise_mode,
                             copy_model=copy_model, fuse=fuse)


def stage_tensors(model: object, stage: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers ``stage`` computes with, by their names in its module (not copied)."""
    spec = registry.spec_of(model)
    assert spec.stage_tensors is not None
    return spec.stage_tensors(model, stage)
