"""What a model family is: one `FamilySpec` (its networks, checkpoints, stages, runtime adapter)
and a declared `Capabilities` record that front ends read instead of asking which family it is.

A family's package (`trtalk.families.pcavs`, a third-party plugin's module) builds one spec;
`trtalk.families.registry` finds them (built-ins and the ``trtalk.families`` entry points).
The lower layers take the spec's callables: the exporter, the engine cache, the AOT packages and
the runner run any family whose spec has stages (``stages``, `stage_specs`, `stage_module`); the
front ends open the runtime adapter with `FamilySpec.open`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trtalk.models.stages import StageSpec


@dataclass(frozen=True)
class Capabilities:
    """What a family can do; front ends decide by these, never by the family's name.

    - ``visual_mouth``: lips read from tracked frames (``--mouth video|webcam|blend``).
    - ``eye_controls`` / ``emotion_controls``: ``--eyes`` / ``--emotion`` factor sources.
    - ``checkpoint``: takes trained weights (``--checkpoint``); ``needs_checkpoint``: without one
      it runs on seeded random weights (noise), so a front end without a checkpoint prefers a
      family that does not need one.
    - ``noise``: the generator noise modes it offers, the default (what exported graphs hold) first.
    - ``exportable``: its stages export to ONNX / TensorRT / AOT (``trtalk export``).
    - ``backends``: the inference backends it runs on; ``devices``: "cpu" and/or "cuda".
    - ``runner_options``: precision, CUDA graphs and noise apply (networks behind a runner).
    - ``shared_networks``: a server batches several sessions through one network instance (False:
      each session runs the family whole on its own, e.g. a per-session renderer).
    - ``threads``: its default compute threads (None: every usable core).
    - ``full_frame``: its frames are the avatar photo's own frame (the warp avatar), not a crop:
      nothing to paste back, and ``--size`` is the family's own.
    - ``pose_factor``: a pose factor of its own (`ModelFamily.set_factor`): ``--pose off`` (a zero
      pose code) and, offline, a pose file read with its own loop and smoothing.
    - ``live_controls``: its streams' states carry live controls (`FamilyState.controls`: the
      stream's hotkeys and ``--control`` endpoint).
    """

    visual_mouth: bool = False
    eye_controls: bool = False
    emotion_controls: bool = False
    checkpoint: bool = True
    needs_checkpoint: bool = True
    noise: tuple[str, ...] = ("fixed",)
    exportable: bool = True
    backends: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt", "aot")
    devices: tuple[str, ...] = ("cpu", "cuda")
    runner_options: bool = True
    shared_networks: bool = True
    threads: int | None = None
    full_frame: bool = False
    pose_factor: bool = False
    live_controls: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class OpenRequest:
    """Everything `FamilySpec.open` may use to build the runtime family.

    ``make_runner(backend, source, device, options)`` is `trtalk.engine.open_runner` (handed in by
    the front end: families sit below the engine); ``runner_options`` a `trtalk.engine.RunnerOptions`
    with ``family`` and ``config`` set; ``controls`` the factor sources of families with eye or
    emotion controls (`trtalk.runtime.options.ModelOptions.control_kwargs`).
    """

    checkpoint: Any  # a checkpoint path, an export directory, a model instance or None (random weights)
    backend: str = "torch"
    device: str = "cpu"
    runner_options: Any = None
    fps: float = 25.0
    controls: Mapping[str, Any] = field(default_factory=dict)
    make_runner: Callable[..., Any] | None = None
    #: the output frame's size where the family makes its own frame (`Capabilities.full_frame`: the warp
    #: avatar's long side; None its default); crop families' ``--size`` is the frame step's
    size: int | None = None


@dataclass(frozen=True)
class FamilySpec:
    """One model family (see the module docstring).

    Networks (families with ``stages``): ``official_config()`` / ``small_config()`` make configs;
    ``random(config, seed)`` seeded random weights; ``load(path, config)`` a checkpoint (which
    ``claims(path)`` recognised); ``convert(src, out, config)`` writes one safetensors file;
    ``checkpoint_files(folder)`` lists what a folder's hash covers. ``model_types`` are the
    composition's and config's classes (how `trtalk.families.registry.spec_of` knows a model).
    Stages: ``stages`` in run order, ``stage_specs(model_or_config, dtype)``,
    ``stage_module(model, stage, *, modconv, noise_mode, copy_model, fuse)``,
    ``stage_tensors(model, stage)``, ``noise`` (what graphs hold), ``pose_stage`` and
    ``pose_code(outputs)`` (the runner's pose code from that stage's outputs), ``generator_of``
    (a generator stage module's generator, for the TensorRT plugin export).
    Runtime: ``open(request)`` -> a `trtalk.families.base.ModelFamily`.
    """

    name: str
    title: str
    capabilities: Capabilities
    open: Callable[[OpenRequest], Any]  # -> a `trtalk.families.base.ModelFamily`
    stages: tuple[str, ...] = ()
    noise: str = "fixed"
    model_types: tuple[type, ...] = ()
    official_config: Callable[[], Any] | None = None
    small_config: Callable[[], Any] | None = None
    claims: Callable[[Path], bool] | None = None
    load: Callable[[Path, Any], "nn.Module"] | None = None
    random: Callable[[Any, int], "nn.Module"] | None = None
    convert: Callable[[Path, Path, Any], Path] | None = None
    checkpoint_files: Callable[[Path], list[Path]] | None = None
    stage_specs: Callable[..., dict[str, "StageSpec"]] | None = None
    stage_module: Callable[..., "nn.Module"] | None = None
    stage_tensors: Callable[[Any, str], dict[str, "torch.Tensor"]] | None = None
    pose_stage: str = "pose"
    pose_code: Callable[[dict[str, "torch.Tensor"]], "torch.Tensor"] | None = None
    generator_of: Callable[["nn.Module"], "nn.Module"] | None = None
    origin: str = "built-in"
    #: a family without stages that still has graphs to export (``trtalk export --model NAME``):
    #: "module:function", the function taking the output folder and returning its manifest. A
    #: dotted name, not a callable, so a low-layer family can name an exporter of a higher layer.
    export_entry: str | None = None
    #: why ``trtalk bench`` cannot compare this family across backends (families without stages)
    bench_note: str = ""

    def owns(self, obj: object) -> bool:
        """Whether ``obj`` is this family's model or config."""
        return bool(self.model_types) and isinstance(obj, self.model_types)

    def describe(self) -> dict[str, Any]:
        """Name, title, origin, stages and capabilities (``trtalk models --json``)."""
        return {"name": self.name, "title": self.title, "origin": self.origin,
                "stages": list(self.stages), "capabilities": self.capabilities.to_dict()}


def folder_files(folder: str | os.PathLike, names: Mapping[str, str] | list[str]) -> list[Path]:
    """The files ``names`` (a list, or a mapping's values) of ``folder``, in that order."""
    values = list(names.values()) if isinstance(names, Mapping) else list(names)
    return [Path(folder) / n for n in values]
