"""`export_pcavs`: a checkpoint -> an export directory of four ONNX graphs (+ engines) + manifest.

Either family: PC-AVS (identity, pose, audio, generator) or PD-FGC (identity, motion, audio, the
2590-wide generator with the seeded noise maps), detected from the checkpoint or, for seeded
random weights, named by ``--model``; the manifest records it (``"family"``).

The directory is only ever seen complete: graphs are written into a hidden staging folder inside
it, moved in by rename, and ``manifest.json`` (the file every reader starts from) is written last,
atomically. A failed export removes its staging folder and leaves no manifest that names
half-written files (an older manifest is removed before the first file is replaced).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from trtalk import __version__
from trtalk.configcli import option
from trtalk import progress
from trtalk.errors import TrtalkError
from trtalk.export.manifest import MANIFEST_NAME, Manifest
from trtalk.export.onnx_export import FP32_ISLANDS, OPSET, PRECISIONS, export_stage
from trtalk.export.stages import stage_module, stage_specs
from trtalk.families import registry
from trtalk.families.pcavs.model import MODEL_CONFIG_HELP
from trtalk.fsutil import check_writable, output_folder, remove_abandoned
from trtalk.models.fuse import FuseOptions
from trtalk.signals import raise_if_interrupted

log = logging.getLogger(__name__)

#: The family of seeded random weights when neither --model, a checkpoint nor a config names one.
DEFAULT_FAMILY = "pcavs"

TARGETS = ("onnx", "tensorrt", "tensorrt-rtx", "aot")
MODCONV_CHOICES = ("decomposed", "plugin")
RANDOM_SEED = 0


def export_rewrites(opts: "ExportOptions") -> FuseOptions:
    """The exact rewrites (trtalk.models.fuse) that go into the graphs: all of them, except the
    blur fold where ``opts.fold_up_blur`` says no (default: yes for the TensorRT targets, which
    run on GPUs where it trades 4x upsampling-conv arithmetic for a memory pass; no for plain
    ONNX, which onnxruntime on the CPU ran ~1.5x slower with it: generator 919 vs 594 ms)."""
    fold = opts.fold_up_blur if opts.fold_up_blur is not None else opts.target != "onnx"
    return FuseOptions(fold_up_blur=fold)


@dataclass
class ExportOptions:
    """Options of `trtalk export` (see `export_pcavs`); each field is also its flag."""

    out: Path | None = option(None, help="output directory (not for --target aot, which builds "
                                         "into the engine cache)")
    checkpoint: Path | None = option(None, help="official checkpoint folder or trtalk .safetensors",
                                     default_text="random weights")  # None: loudly warned, recorded
    precision: str = option("auto", choices=("auto",) + PRECISIONS,
                            help="graph precision (fp16: fp16 weights/activations, fp32 I/O; auto: as "
                                 "render picks it, fp16 for CUDA and fp32 for the CPU)",
                            default_text="auto: fp16 for TensorRT targets and CUDA (--device, or a "
                                         "visible GPU), fp32 for the CPU")
    max_batch: int = option(8, bounds=(1, 1024), help="largest batch of the graphs and engines, 1 to 1024")
    target: str = option("onnx", choices=TARGETS, help="what to produce")
    fold_up_blur: bool | None = option(None, help="fold the blur into the upsampling convs (exact)",
                                       default_text="yes for TensorRT targets, no for plain ONNX")
    modconv: str = option("decomposed", choices=MODCONV_CHOICES,
                          help="modulated-conv form in the generator graph (plugin: custom "
                               "trtalk::ModulatedConv2d nodes for the TensorRT plugin; fp32, "
                               "datacenter TensorRT)")
    seed: int = option(RANDOM_SEED, bounds=(0, 2**32 - 1), help="seed of the random weights (no --checkpoint)")
    compute_capability: str | None = option(
        None, help="TensorRT-RTX target GPU: sm75, sm80, sm86, sm89, sm120, sm121",
        default_text="the local GPU")  # TensorRT targets; None = builder default
    model_config: Literal["official", "small"] = option("official", help=MODEL_CONFIG_HELP)
    model: str | None = option(
        None, help="model family of the seeded random weights (no --checkpoint); with one, it must "
                   "match the checkpoint's; warp: the warp avatar's two small graphs",
        default_text="the checkpoint's, else pcavs")
    device: str | None = option(None, help="--target aot: cpu or cuda[:N] (the packages run there)",
                                default_text="cuda when visible")
    buckets: tuple[int, ...] | None = option(
        None, bounds=(1, 1024),
        help="--target aot: one static-batch model per batch size (e.g. 1,2,4,8,16,32,64; "
             "a batch runs padded to the next one) instead of one dynamic-batch model",
        default_text="one model, batch 1..max(64, --max-batch)")
    cache_dir: Path | None = option(None, help="export / engine cache (--target aot builds into it)",
                                    default_text="trtalk's")
    config: Any = option(None, cli=False)  # architecture override (tests: small())
    stages: tuple[str, ...] | None = option(None, cli=False)  # None: every stage of the family

    def family(self) -> str:
        """The model family: the checkpoint's (``--model`` must agree), else ``--model``, else
        the config's, else PC-AVS."""
        if self.checkpoint is not None:
            found = registry.detect(self.checkpoint, fallback=self.model or DEFAULT_FAMILY)
            if self.model is not None and self.model != found:
                raise TrtalkError(f"--model {self.model}, but {self.checkpoint} is a {found} "
                                  f"checkpoint; drop --model")
            return found
        if self.model is not None:
            return self.model
        return registry.spec_of(self.config).name if self.config is not None else DEFAULT_FAMILY

    def resolved_precision(self) -> str:
        """``precision``, or for "auto" the rule render uses: fp16 where the graphs run on CUDA
        (the TensorRT targets; ``--device cuda``; a visible GPU), fp32 on the CPU; the plugin
        generator graph is fp32."""
        if self.precision != "auto":
            return self.precision
        if self.modconv == "plugin":
            return "fp32"
        if self.target in ("tensorrt", "tensorrt-rtx"):
            return "fp16"
        if self.device is not None:
            return "fp16" if self.device.startswith("cuda") else "fp32"
        return "fp16" if torch.cuda.is_available() else "fp32"

    def stage_names(self) -> tuple[str, ...]:
        """The stages to export: ``stages``, else all of the family's."""
        return tuple(self.stages) if self.stages is not None else registry.get(self.family()).stages

    def validate(self) -> None:
        if self.precision not in ("auto",) + PRECISIONS:
            raise TrtalkError(f"--precision must be one of auto, {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise TrtalkError(f"--target must be one of {', '.join(TARGETS)}")
        if self.modconv not in MODCONV_CHOICES:
            raise TrtalkError(f"--modconv must be one of {', '.join(MODCONV_CHOICES)}")
        if self.target == "aot":
            if self.out is not None:
                raise TrtalkError("--target aot builds into the engine cache; use --cache-dir, not --out")
            if self.modconv != "decomposed":
                raise TrtalkError("--target aot packages the decomposed generator; drop --modconv plugin")
            if self.compute_capability is not None:
                raise TrtalkError("--target aot builds for the local GPU (or CPU); drop --compute-capability")
        else:
            if self.out is None:
                raise TrtalkError(f"--target {self.target} writes an export directory: add --out DIR")
            if self.buckets is not None or self.device is not None:
                raise TrtalkError("--buckets and --device are --target aot options")
        if self.modconv == "plugin":
            if self.target == "tensorrt-rtx":
                raise TrtalkError("TensorRT for RTX has no plugin layers; use --modconv decomposed, "
                                  "or --target tensorrt (datacenter TensorRT >= 10) for the plugin")
            if self.resolved_precision() != "fp32":
                raise TrtalkError("--modconv plugin exports an fp32 graph (the TensorRT plugin picks "
                                  "fp16 I/O at build time); add --precision fp32")
        if not 1 <= self.max_batch <= 1024:
            raise TrtalkError("--max-batch must be between 1 and 1024")
        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")
        if self.model_config == "small" and self.checkpoint is not None:
            raise TrtalkError("--model-config small is for tests with random weights; drop --checkpoint or it")
        exportable = [s.name for s in registry.all_specs().values() if s.stages and s.capabilities.exportable]
        if self.model is not None and self.model not in exportable:
            raise TrtalkError(f"--model must be one of {', '.join(exportable)}")
        family = self.family()
        stages = registry.with_stages(registry.get(family)).stages
        unknown = [s for s in self.stage_names() if s not in stages]
        if unknown:
            raise TrtalkError(f"unknown {family} stage '{unknown[0]}'; stages are {', '.join(stages)}")


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and check that files can be written there (TrtalkError if not)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrtalkError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    check_writable(out / MANIFEST_NAME)
    return out


def require_export_extra() -> None:
    """TrtalkError naming the extra to install when the ONNX tool chain is missing."""
    import importlib

    for module in ("onnx", "onnxslim", "onnxscript"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise TrtalkError(f"exporting needs {module}, which is not installed: "
                              f"pip install 'trtalk[export]'") from None


def warn_random_weights(seed: int) -> None:
    """The loud warning before seeded random weights are exported."""
    log.warning("!!! NO --checkpoint GIVEN: exporting SEEDED RANDOM WEIGHTS (seed %d). The "
                "graphs produce noise, not faces; use them for tests and benchmarks only. !!!", seed)


def load_model(checkpoint: str | os.PathLike | None, seed: int = RANDOM_SEED,
               config: Any = None, family: str | None = None, *, warn: bool = True) -> tuple[torch.nn.Module, dict]:
    """The model to export and its manifest record (path, sha256, random_weights, seed).

    The family is the checkpoint's; for random weights ``family``, else the config's, else
    `DEFAULT_FAMILY`. ``warn``: say loudly that random weights are being exported (callers that
    may find the export already made, `trtalk.engine.runner`, warn only when they export)."""
    if checkpoint is None:
        if warn:
            warn_random_weights(seed)
        spec = registry.with_stages(registry.get(family) if family else
                                    registry.spec_of(config) if config is not None else registry.get(DEFAULT_FAMILY))
        assert spec.random is not None
        return spec.random(config, seed), {"path": None, "sha256": None, "random_weights": True, "seed": seed}
    spec = registry.with_stages(registry.get(registry.detect(checkpoint, fallback=family or DEFAULT_FAMILY)))
    model = registry.load(spec.name, checkpoint, config if spec.owns(config) else None)
    return model, {"path": str(checkpoint), "sha256": registry.checkpoint_hash(checkpoint),
                   "random_weights": False, "seed": None}


def _versions() -> dict:
    import onnx
    import onnxslim

    v = {"trtalk": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
         "onnxslim": onnxslim.__version__}
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - export_stage refuses without it
        pass
    return v


def small_config(family: str) -> Any:
    """``--model-config small``: the family's narrow test generator."""
    spec = registry.get(family)
    if spec.small_config is None:
        raise TrtalkError(f"the {spec.title} has no small config")
    return spec.small_config()


def export_pcavs(opts: ExportOptions, model: torch.nn.Module | None = None,
                 checkpoint_record: dict | None = None) -> Manifest:
    """Export the stages of a model (either family) to ``opts.out``; returns the written manifest.

    ``model`` (with its ``checkpoint_record``) skips loading ``opts.checkpoint``; its family is
    the export's.
    """
    if model is not None and opts.model is None and opts.checkpoint is None:
        opts = dataclasses.replace(opts, model=registry.spec_of(model).name)
    opts.validate()
    opts = dataclasses.replace(opts, precision=opts.resolved_precision())
    if opts.target == "aot":
        raise ValueError("export_pcavs writes export directories; use trtalk.export.aot.export_aot")
    assert opts.out is not None
    require_export_extra()
    if Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise TrtalkError(f"--out {opts.out} exists and is not a directory")
    # A folder created here is removed again when the export fails or is interrupted.
    with output_folder(opts.out, "--out") as out:
        check_writable(out / MANIFEST_NAME)
        return _export(opts, out, model, checkpoint_record)


def _export(opts: ExportOptions, out: Path, model: torch.nn.Module | None,
            checkpoint_record: dict | None) -> Manifest:
    build_opts = None
    if opts.target in ("tensorrt", "tensorrt-rtx"):
        from trtalk.export.tensorrt import BuildOptions, import_tensorrt, resolve_compute_capability

        # Fail fast (missing TensorRT, no GPU to target) before minutes of export.
        build_opts = BuildOptions(flavour=opts.target, max_batch=opts.max_batch,
                                  compute_capability=opts.compute_capability)
        if opts.modconv == "plugin":
            from trtalk.export.trt_plugin import PLUGIN_VERSION

            build_opts.python_plugin = True
            build_opts.plugin_version = f"python-{PLUGIN_VERSION}"
        import_tensorrt(opts.target)
        resolve_compute_capability(build_opts)
    if model is None:
        config = opts.config
        if config is None and opts.model_config == "small":
            config = small_config(opts.family())
        model, checkpoint_record = load_model(opts.checkpoint, opts.seed, config, opts.family())
    elif checkpoint_record is None:
        checkpoint_record = {"path": None, "sha256": None, "random_weights": True, "seed": None}
    spec = registry.spec_of(model)
    family = spec.name
    stages = tuple(opts.stages) if opts.stages is not None else spec.stages
    specs = stage_specs(model)
    manifest = Manifest(
        family=family, checkpoint=checkpoint_record, config=asdict(model.config),
        options={"precision": opts.precision, "io_dtype": "float32", "max_batch": opts.max_batch,
                 "opset": OPSET, "modconv": opts.modconv, "noise_mode": spec.noise,
                 "rewrites": asdict(export_rewrites(opts)),
                 "target": opts.target,
                 "fp32_islands": list(FP32_ISLANDS) if opts.precision == "fp16" else []},
        versions=_versions())
    # JSON keys are strings (PC-AVS's gen_channels are keyed by resolution)
    manifest.config = {k: ({str(i): x for i, x in v.items()} if isinstance(v, dict) else v)
                       for k, v in manifest.config.items()}

    remove_abandoned(out, re.compile(r"\.staging-[0-9a-f]{8}(?:-(?P<pid>\d+))?"), dirs=True)
    staging = out / f".staging-{secrets.token_hex(4)}-{os.getpid()}"
    staging.mkdir()
    t_all = time.perf_counter()
    bar = progress.start(len(stages), f"export {family}", unit="stage")
    try:
        for i, stage in enumerate(stages, 1):
            bar.next(stage)
            log.info("[%d/%d] exporting %s %s ...", i, len(stages), family, stage)
            module = stage_module(model, stage, modconv="decomposed", fuse=export_rewrites(opts))
            if stage == "generator" and opts.modconv == "plugin":
                from trtalk.export.plugin import export_plugin_stage

                if spec.generator_of is None:
                    raise TrtalkError(f"--modconv plugin: the {spec.title} does not name its generator")
                generator = spec.generator_of(module)
                manifest.graphs[stage] = export_plugin_stage(generator, specs[stage],
                                                             staging / f"{stage}.onnx")
            else:
                manifest.graphs[stage] = export_stage(module, specs[stage], staging / f"{stage}.onnx",
                                                      precision=opts.precision,
                                                      max_batch=opts.max_batch)
            del module
        raise_if_interrupted()  # a signal whose exception a library swallowed: publish nothing
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        for rec in manifest.graphs.values():
            for name in (rec.external_data, rec.file):  # data first: a graph never lacks its data
                if name:
                    os.replace(staging / name, out / name)
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)

    manifest.write(out)  # the graphs are complete and usable even if an engine build fails
    if build_opts is not None:
        from trtalk.export.tensorrt import build_export_engines

        manifest.engines = build_export_engines(out, manifest, build_opts)
        manifest.write(out)
    log.info("export finished in %.1f s: %s", time.perf_counter() - t_all, out / MANIFEST_NAME)
    return manifest


def describe(manifest: Manifest) -> str:
    """A short human summary (the CLI prints it): one aligned line per graph and engine, then
    where the weights came from."""
    rows = []
    for stage, rec in manifest.graphs.items():
        ins = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))}" for t in rec.inputs)
        outs = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))}" for t in rec.outputs)
        rows.append((stage, rec.file, f"{rec.bytes / 1e6:.1f} MB", f"{ins} -> {outs}"))
    for stage, eng in manifest.engines.items():
        rows.append((stage, eng["file"], f"{eng['bytes'] / 1e6:.1f} MB",
                     f"engine, built in {eng['build_seconds']:.1f} s"))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    ck = manifest.checkpoint or {}
    if ck.get("random_weights"):
        lines.append(f"weights: RANDOM (seed {ck.get('seed')}; no --checkpoint): for tests and benchmarks only")
    else:
        sha = str(ck.get("sha256") or "")[:12]
        lines.append(f"weights: {ck.get('path')}" + (f" (sha256 {sha}...)" if sha else ""))
    return "\n".join(lines)
