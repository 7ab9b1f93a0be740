"""Which networks a front end runs, one dataclass for render, stream and bench alike."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trtalk.configcli import option
from trtalk.engine.runner import RunnerOptions
from trtalk.errors import TrtalkError
from trtalk.families import registry
from trtalk.families.base import ModelFamily
from trtalk.families.pcavs.model import MODEL_CONFIG_HELP
from trtalk.families.spec import FamilySpec, OpenRequest

log = logging.getLogger(__name__)

#: The family front ends run without --model and --checkpoint (it needs no weights).
NO_CHECKPOINT_FAMILY = "warp"
#: The family of a checkpoint that no family claims (its loader then names the problem).
CHECKPOINT_FALLBACK = "pcavs"
#: ``--checkpoint``'s help, the same in render, stream, demo, serve and bench
CHECKPOINT_HELP = ("official PC-AVS or PD-FGC checkpoint folder, a `trtalk convert` file, or a "
                   "`trtalk export --out` folder (its graphs run as they are, never re-exported)")


def is_export_folder(path: object) -> bool:
    """Whether ``path`` is a `trtalk export` folder (holds manifest.json)."""
    return path is not None and Path(path).is_dir() and (Path(path) / "manifest.json").is_file()  # type: ignore[arg-type]


def export_family(path: object, default: str = CHECKPOINT_FALLBACK) -> str:
    """The family an export folder's manifest names (``default`` when unreadable: the backend
    that opens it then says what is wrong)."""
    import json

    try:
        family = json.loads((Path(path) / "manifest.json").read_text()).get("family", "pcavs")  # type: ignore[arg-type]
    except (OSError, ValueError, AttributeError):
        return default
    return family if isinstance(family, str) and family in registry.names() else default


@dataclass
class ModelOptions:
    """The model family, its weights and where and how it runs.

    ``model`` None picks the checkpoint's family when a checkpoint is given (PC-AVS or PD-FGC, from
    the folder's file names or the converted file's metadata) and the built-in warp avatar
    otherwise (said in the log): without a checkpoint PC-AVS would run on random weights, i.e. noise.
    ``eyes``/``emotion``/``emotion_strength``/``eyes_closed``/``emotion_presets``/``mouth_smoothing``
    are PD-FGC's factor controls (`trtalk.families.controls`).
    ``model_config`` "small" is the narrow test generator (random weights only).
    """

    model: str | None = option(
        None, metavar="NAME", help="model family (`trtalk models` lists them)", default_text="the checkpoint's family with --checkpoint, else the warp avatar")
    checkpoint: Path | None = option(None, metavar="PATH", help=CHECKPOINT_HELP)
    backend: Literal["torch", "onnxruntime", "tensorrt", "aot"] | None = option(
        None, help="inference backend (aot: AOTInductor packages, built once into the engine cache)",
        default_text="onnxruntime for an export folder, else torch")
    device: str = option("cpu", metavar="DEV", help="cpu, cuda or cuda:N")
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

    def spec(self) -> FamilySpec:
        """The family these options run (`resolved_model`'s spec)."""
        return registry.get(self.resolved_model())

    def resolved_backend(self) -> str:
        """``backend``, else onnxruntime for an export folder (its graphs), else torch."""
        if self.backend is not None:
            return self.backend
        return "onnxruntime" if is_export_folder(self.checkpoint) else "torch"

    def resolved_model(self) -> str:
        if self.model is not None:
            if self.model not in registry.names():
                raise TrtalkError(f"unknown --model {self.model!r}; choose one of {', '.join(registry.names())}")
            return self.model
        if self.checkpoint is None:
            return NO_CHECKPOINT_FAMILY
        if is_export_folder(self.checkpoint):
            return export_family(self.checkpoint)  # the manifest's
        return registry.detect(self.checkpoint, fallback=CHECKPOINT_FALLBACK)  # its loader names problems

    def family_threads(self) -> int | None:
        """The family's default compute threads (`trtalk.threads`; its `Capabilities.threads`) on
        the torch backend, None (the usable cores) otherwise."""
        model = self.model or (CHECKPOINT_FALLBACK if self.checkpoint is not None else NO_CHECKPOINT_FAMILY)
        if model not in registry.names() or self.resolved_backend() != "torch":
            return None
        return registry.get(model).capabilities.threads

    def control_kwargs(self, mouth_smoothing: str = "causal") -> dict:
        """The factor sources (eyes, emotion) of a family with eye or emotion controls."""
        from trtalk.families.controls import parse_factor

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
        the frame size of a family that makes its own frame (``full_frame``: the warp avatar's long
        side, ``--size``; the crop families' is the frame step's)."""
        from trtalk.engine.runner import check_device

        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")
        if self.model_config == "small" and self.checkpoint is not None:
            raise TrtalkError("--model-config small is for tests with random weights; drop --checkpoint or it")
        check_device(self.device)
        if self.emotion_presets is not None and not self.emotion_presets:  # ",,," -> []
            raise TrtalkError("--emotion-presets names no file; give comma-separated stills (happy.jpg,sad.jpg)")
        spec = self.spec()
        if self.model is None and self.checkpoint is None:  # said once, when the model loads
            log.info("no --checkpoint: using the built-in warp avatar (--model pcavs runs PC-AVS on "
                     "seeded random weights instead)")
        caps = spec.capabilities
        control_flags = [f for f, v in (("--eyes", self.eyes), ("--emotion", self.emotion),
                                        ("--eyes-closed", self.eyes_closed),
                                        ("--emotion-presets", self.emotion_presets),
                                        ("--emotion-strength", self.emotion_strength != 1.0),
                                        ("--mouth-smoothing", self.mouth_smoothing)) if v]
        controls: dict = {}
        if caps.eye_controls or caps.emotion_controls:
            controls = self.control_kwargs(mouth_smoothing)
        elif control_flags:
            with_controls = [s.name for s in registry.all_specs().values()
                             if s.capabilities.eye_controls or s.capabilities.emotion_controls]
            raise TrtalkError(f"{control_flags[0]} is a {'/'.join(registry.get(n).title for n in with_controls)} "
                              f"control; this checkpoint is {spec.name} (give such a checkpoint or "
                              f"--model {with_controls[0] if with_controls else '...'})")
        if not caps.runner_options:
            changed = [f for f, v in (("--precision", self.precision), ("--cuda-graphs", self.cuda_graphs),
                                      ("--noise", self.noise not in (None, "fixed"))) if v]
            if changed:
                raise TrtalkError(f"{changed[0]} is an option of networks behind a runner; the "
                                  f"{spec.title} has no such setting")
        if self.model_config == "small" and spec.small_config is None and spec.stages:
            raise TrtalkError(f"the {spec.title} has no small config")
        config = spec.small_config() if self.model_config == "small" and spec.small_config else None
        return open_family(spec.name, self.checkpoint, self.resolved_backend(), self.device,
                           self.runner_options(spec, config), fps=fps, controls=controls, size=size)

    def runner_options(self, spec: FamilySpec, config: object = None) -> RunnerOptions:
        """How the family's networks run (`trtalk.engine.RunnerOptions`)."""
        return RunnerOptions(precision=self.precision,
                             noise=self.noise or (spec.capabilities.noise[0] if spec.capabilities.noise else None),
                             cuda_graphs=self.cuda_graphs, seed=self.seed, family=spec.name, config=config)


def open_family(model: str, checkpoint: Any = None, backend: str = "torch",
                device: str = "cpu", options: RunnerOptions | None = None, *, fps: float = 25.0,
                controls: dict | None = None, size: int | None = None) -> ModelFamily:
    """The family ``model`` ready to run (`FamilySpec.open`, its networks from
    `trtalk.engine.open_runner`), after the checks its capabilities call for; ``checkpoint`` a
    checkpoint, an export directory or a model instance (what `open_runner` takes); ``options`` the
    runner's (its ``family`` is set to ``model``), ``controls`` the factor sources of a family
    with eye or emotion controls (`ModelOptions.control_kwargs`), ``size`` the frame size of a
    family that makes its own frame (`OpenRequest.size`)."""
    from trtalk.engine.runner import open_runner

    spec = registry.get(model)
    caps = spec.capabilities
    exported = isinstance(checkpoint, (str, os.PathLike)) and is_export_folder(checkpoint) \
        and export_family(checkpoint) == spec.name  # the family's own export folder
    if checkpoint is not None and not caps.checkpoint and not exported:
        raise TrtalkError(f"the {spec.title} has no checkpoint; drop --checkpoint or use --model "
                          f"{next(s.name for s in registry.all_specs().values() if s.capabilities.checkpoint)}")
    if backend not in caps.backends:
        raise TrtalkError(f"the {spec.title} runs on {' or '.join(caps.backends)}, not {backend}")
    if device.split(":")[0] not in caps.devices:
        raise TrtalkError(f"the {spec.title} runs on the {'/'.join(d.upper() for d in caps.devices)}; "
                          f"drop --device or use another --model")
    opts = dataclasses.replace(options or RunnerOptions(), family=spec.name)
    fam = spec.open(OpenRequest(checkpoint, backend, device, opts, fps, dict(controls or {}),
                                make_runner=open_runner, size=size))
    if caps.checkpoint:
        fam.weights_source = (checkpoint, opts)  # keys its angle map (`--pose auto`)
    return fam
