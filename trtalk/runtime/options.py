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

    ``model`` None picks the checkpoint's family when a checkpoint is given (PC-AVS or PD-FGC, from
    the folder's file names or the converted file's metadata) and the built-in warp avatar
    otherwise (said in the log): without a checkpoint PC-AVS would run on random weights, i.e. noise.
    ``eyes``/``emotion``/``emotion_strength``/``eyes_closed``/``emotion_presets``/``mouth_smoothing``
    are PD-FGC's factor controls (`trtalk.runtime.controls`).
    ``model_config`` "small" is the narrow test generator (random weights only).
    """

    model: Literal["pcavs", "warp", "pdfgc"] | None = option(
        None, help="model family", default_text="the checkpoint's family with --checkpoint, else the warp avatar")
    checkpoint: Path | None = option(None, help="official PC-AVS or PD-FGC checkpoint folder or a "
                                                "`trtalk convert` file")
    backend: Literal["torch", "onnxruntime", "tensorrt", "aot"] = option(
        "torch", help="inference backend (aot: AOTInductor packages, built once into the engine cache)")
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    precision: Literal["fp32", "fp16"] | None = option(None, help="compute precision",
                                                       default_text="fp32 on CPU, fp16 on CUDA")
    noise: Literal["fixed", "random", "zero", "seeded"] | None = option(
        None, help="generator noise: the checkpoint's fixed buffers (deterministic), fresh noise "
                   "per frame (as the published demo; torch only), none (torch only) or PD-FGC's "
                   "official seeded maps (torch only)",
        default_text="fixed for PC-AVS, seeded for PD-FGC")
    cuda_graphs: bool = option(False, help="replay each stage as a CUDA graph (torch, tensorrt)")
    seed: int = option(0, bounds=(0, 2**32 - 1), help="seed of the random weights when there is no checkpoint")
    model_config: Literal["official", "small"] = option("official", help=MODEL_CONFIG_HELP)
    eyes: str | None = option(None, section="PD-FGC factors", metavar="SRC",
                              help="eyes (blink and gaze): a video, an image, webcam (the pose "
                                   "source's frames), off, auto (natural blinks) or avatar",
                              default_text="the avatar's own; blinking with the speech under --pose auto")
    eyes_closed: Path | None = option(None, section="PD-FGC factors", metavar="IMAGE",
                                      help="a still with shut eyes: the closed-eye code of --eyes "
                                           "auto and of blink-now")
    emotion: str | None = option(None, section="PD-FGC factors", metavar="SRC",
                                 help="emotion: a reference still (a preset: happy.jpg), a video, "
                                      "webcam, off or avatar", default_text="the avatar's own")
    emotion_strength: float = option(1.0, section="PD-FGC factors", bounds=(0, 2),
                                     help="scale of an image's emotion code, 0 (neutral) to 2")
    emotion_presets: list[Path] | None = option(None, section="PD-FGC factors", metavar="IMAGES",
                                                help="comma-separated stills whose emotion codes "
                                                     "live controls can pick by file stem")
    mouth_smoothing: Literal["causal", "centred"] | None = option(
        None, section="PD-FGC factors", help="PD-FGC mouth smoothing: centred is the official "
        "kernel (needs the next frame's audio: 40 ms more lookahead at 25 fps), causal adds none",
        default_text="centred for render, causal for stream")

    def resolved_model(self) -> str:
        if self.model is not None:
            if self.model not in FAMILIES:
                raise TrtalkError(f"unknown --model {self.model!r}; choose one of {', '.join(FAMILIES)}")
            return self.model
        if self.checkpoint is None:
            log.info("no --checkpoint: using the built-in warp avatar (--model pcavs runs PC-AVS on "
                     "seeded random weights instead)")
            return "warp"
        from trtalk.models.checkpoint import detect_family

        return detect_family(self.checkpoint, fallback="pcavs")  # PC-AVS's loader names problems

    def family_threads(self) -> int | None:
        """The family's default compute threads (`trtalk.threads`): 1 for the warp avatar on torch
        (its network is a grid_sample over the face region; more threads only compete with the per-frame numpy
        and mediapipe work: 60 ms per frame with 2 threads, 5 ms with 1, measured on 2 cores),
        None (the usable cores) otherwise."""
        model = self.model or ("pcavs" if self.checkpoint is not None else "warp")
        return 1 if model == "warp" and self.backend == "torch" else None

    def pdfgc_kwargs(self, mouth_smoothing: str = "causal") -> dict:
        """The PD-FGC family's factor sources from these options."""
        from trtalk.runtime.controls import parse_factor

        presets = {Path(p).stem: Path(p) for p in (self.emotion_presets or [])}
        for p in presets.values():
            if not p.is_file():
                raise TrtalkError(f"--emotion-presets: {p} does not exist")
        if self.eyes_closed is not None and not self.eyes_closed.is_file():
            raise TrtalkError(f"--eyes-closed {self.eyes_closed} does not exist")
        eyes = parse_factor(self.eyes, "eyes") if self.eyes is not None else None  # the family's default
        return {"eyes": eyes, "emotion": parse_factor(self.emotion, "emotion"),
                "emotion_strength": self.emotion_strength, "eyes_closed": self.eyes_closed,
                "presets": presets, "mouth_smoothing": self.mouth_smoothing or mouth_smoothing}

    def open(self, fps: float = 25.0, mouth_smoothing: str = "causal", size: int | None = None) -> ModelFamily:
        """The family, loaded (checkpoints read, engines built or taken from the cache); ``size``:
        the warp avatar's frame long side (``--size``; the crop families' is the frame step's)."""
        from trtalk.engine.runner import RunnerOptions, check_device
        from trtalk.models.pcavs import PCAVSConfig

        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")
        if self.model_config == "small" and self.checkpoint is not None:
            raise TrtalkError("--model-config small is for tests with random weights; drop --checkpoint or it")
        check_device(self.device)
        if self.emotion_presets is not None and not self.emotion_presets:  # ",,," -> []
            raise TrtalkError("--emotion-presets names no file; give comma-separated stills (happy.jpg,sad.jpg)")
        model = self.resolved_model()
        pd_flags = [f for f, v in (("--eyes", self.eyes), ("--emotion", self.emotion),
                                   ("--eyes-closed", self.eyes_closed),
                                   ("--emotion-presets", self.emotion_presets),
                                   ("--emotion-strength", self.emotion_strength != 1.0),
                                   ("--mouth-smoothing", self.mouth_smoothing)) if v]
        if model == "pdfgc":
            from trtalk.models.pdfgc import PDFGCConfig

            return open_family(model, self.checkpoint, self.backend, self.device,
                               RunnerOptions(precision=self.precision, noise=self.noise,
                                             cuda_graphs=self.cuda_graphs, seed=self.seed,
                                             family="pdfgc",
                                             config=PDFGCConfig.small() if self.model_config == "small" else None),
                               fps=fps, pdfgc=self.pdfgc_kwargs(mouth_smoothing))
        if pd_flags:
            raise TrtalkError(f"{pd_flags[0]} is a PD-FGC control; this checkpoint is {model} "
                              f"(give a PD-FGC checkpoint or --model pdfgc)")
        opts = RunnerOptions(precision=self.precision, noise=self.noise or "fixed", cuda_graphs=self.cuda_graphs,
                             seed=self.seed,
                             config=PCAVSConfig.small() if self.model_config == "small" else None)
        if model == "warp":
            changed = [f for f, v in (("--precision", self.precision), ("--cuda-graphs", self.cuda_graphs),
                                      ("--noise", self.noise not in (None, "fixed"))) if v]
            if changed:
                raise TrtalkError(f"{changed[0]} is a PC-AVS option; the warp avatar has no such setting")
        return open_family(model, self.checkpoint, self.backend, self.device, opts, fps=fps, size=size)
