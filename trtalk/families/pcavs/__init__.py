"""PC-AVS (CVPR 2021): identity, audio and pose encoders and a modulated-conv generator.

The family's composition (`model`), checkpoints (`checkpoint`), stages (`stages`) and runtime
adapter (`runtime`), and its `SPEC` for `trtalk.families.registry`.
"""

from __future__ import annotations

from typing import Any

import torch

from trtalk.families.pcavs import checkpoint, runtime, stages
from trtalk.families.pcavs.checkpoint import convert, load_pcavs, save_official_folder
from trtalk.families.pcavs.model import PCAVS, PCAVSConfig
from trtalk.errors import TrtalkError
from trtalk.families.spec import FamilySpec

__all__ = ["PCAVS", "PCAVSConfig", "SPEC", "convert", "load_pcavs", "save_official_folder"]


def _pose_code(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return outputs["pose"]


def _random(config: Any, seed: int) -> PCAVS:
    if config is not None and not isinstance(config, PCAVSConfig):
        raise TrtalkError("a PC-AVS model takes a PCAVSConfig")
    return PCAVS.random(seed, config)


SPEC = FamilySpec(
    name="pcavs",
    title="PC-AVS",
    capabilities=runtime.CAPABILITIES,
    open=runtime.open_pcavs,
    stages=stages.STAGES,
    noise="fixed",
    model_types=(PCAVS, PCAVSConfig),
    official_config=PCAVSConfig,
    small_config=PCAVSConfig.small,
    claims=checkpoint.claims,
    load=lambda path, config: load_pcavs(path, config),
    random=_random,
    convert=lambda src, out, config: convert(src, out, config),
    checkpoint_files=checkpoint.checkpoint_files,
    stage_specs=stages.stage_specs,
    stage_module=stages.stage_module,
    stage_tensors=stages.stage_tensors,
    pose_stage="pose",
    pose_code=_pose_code,
    generator_of=lambda module: module.netG,
)
