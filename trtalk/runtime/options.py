"""Which networks a front end runs, one dataclass for render, stream and bench alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.models.pcavs import MODEL_CONFIG_HELP
from trtalk.runtime.family import FAMILIES, ModelFamily, open_family

log = logging.getLogger(__name__)


@dataclass
class ModelOptions:
    """The model family, its weights and where and how it runs.

    ``model`` None picks PC-AVS when a checkpoint is given and the built-in warp avatar otherwise
    (said in the log): without a checkpoint PC-AVS would run on random weights, i.e. noise.
    ``model_config`` "small" is the narrow test generator (random weights only).
    """

    model: Literal["pcavs", "warp"] | None = option(
        None, help="model family", default_text="pcavs with --checkpoint, else the warp avatar")
    checkpoint: Path | None = option(None, help="official PC-AVS checkpoint folder or a `trtalk convert` file")
    backend: Literal["torch", "onnxruntime", "tensorrt", "aot"] = option(
        "torch", help="inference backend (aot: AOTInductor packages, built once into the engine cache)")
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    precision: Literal["fp32", "fp16"] | None = option(None, help="compute precision",
                                                       default_text="fp32 on CPU, fp16 on CUDA")
    noise: Literal["fixed", "random", "zero"] = option(
        "fixed", help="generator noise: the checkpoint's fixed buffers (deterministic), fresh noise "
                      "per frame (as the published demo; torch only) or none (torch only)")
    cuda_graphs: bool = option(False, help="replay each stage as a CUDA graph (torch, tensorrt)")
    seed: int = option(0, help="seed of the random weights when there is no checkpoint")
    model_config: Literal["official", "small"] = option("official", help=MODEL_CONFIG_HELP)

    def resolved_model(self) -> str:
        if self.model is not None:
            if self.model not in FAMILIES:
                raise TrtalkError(f"unknown --model {self.model!r}; choose one of {', '.join(FAMILIES)}")
            return self.model
        if self.checkpoint is None:
            log.info("no --checkpoint: using the built-in warp avatar (--model pcavs runs PC-AVS on "
                     "seeded random weights instead)")
            return "warp"
        return "pcavs"

    def family_threads(self) -> int | None:
        """The family's default compute threads (`trtalk.threads`): 1 for the warp avatar on torch
        (its network is a 256x256 grid_sample; more threads only compete with the per-frame numpy
        and mediapipe work: 60 ms per frame with 2 threads, 5 ms with 1, measured on 2 cores),
        None (the usable cores) otherwise."""
        model = self.model or ("pcavs" if self.checkpoint is not None else "warp")
        return 1 if model == "warp" and self.backend == "torch" else None

    def open(self, fps: float = 25.0) -> ModelFamily:
        """The family, loaded (checkpoints read, engines built or taken from the cache)."""
        from trtalk.engine.runner import RunnerOptions, check_device
        from trtalk.models.pcavs import PCAVSConfig

        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")
        if self.model_config == "small" and self.checkpoint is not None:
            raise TrtalkError("--model-config small is for tests with random weights; drop --checkpoint or it")
        check_device(self.device)
        model = self.resolved_model()
        opts = RunnerOptions(precision=self.precision, noise=self.noise, cuda_graphs=self.cuda_graphs,
                             seed=self.seed,
                             config=PCAVSConfig.small() if self.model_config == "small" else None)
        if model == "warp":
            changed = [f for f, v in (("--precision", self.precision), ("--cuda-graphs", self.cuda_graphs),
                                      ("--noise", self.noise != "fixed")) if v]
            if changed:
                raise TrtalkError(f"{changed[0]} is a PC-AVS option; the warp avatar has no such setting")
        return open_family(model, self.checkpoint, self.backend, self.device, opts, fps=fps)
