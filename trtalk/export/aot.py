"""Ahead-of-time packages: each stage as ``torch.export`` + AOTInductor, kept in the engine cache.

This is the compiled engine for GPUs that TensorRT-RTX does not run on (it supports compute
capability 7.5, 8.6, 8.9 and 12.0 only: no A100, H100 or H200), and for the CPU. A package
(``.pt2``, a zip) holds the generated kernels, the C++ wrapper compiled into a shared library
and the weights; `trtalk.engine.aot_backend.AotBackend` opens it with a ``dlopen`` in well under a
second, so nothing compiles when a stream starts. ``trtalk export --target aot`` builds them
ahead of time; ``open_runner("aot")`` builds what is missing (minutes on a GPU) the first time.

Batch, one of two layouts (`AotOptions.buckets`):

- default: ONE model per stage with a *dynamic* batch axis, batch 1..max_batch (traced at
  `AotOptions.trace_batch`). Chosen because it compiles once per stage instead of once per
  bucket (seven times less build time for the 1, 2, 4, ..., 64 ladder; a full build here is
  already minutes on a GPU), stores and loads the weights once (each static model of a package
  embeds and loads its own copy of the constants: seven copies in device memory), and runs a
  batch of 33 as 33, not padded to 64. What static shapes would buy is kernels specialised for
  one size; the convolutions, which dominate, are cuDNN / oneDNN calls chosen for the actual
  shape at run time either way.
- ``buckets=(1, 2, 4, ...)``: one static-shape model per bucket, all in the same package (named
  ``b1``, ``b2``, ...); the backend pads a batch to the smallest bucket that holds it and slices
  the result. Offered to measure whether specialisation wins on a given GPU.

Precision: fp16 weights and activations on CUDA, float32 I/O (cast inside the graph, like the
ONNX export); fp32 on the CPU (fp16 on CPU is refused: no fast path there).

The key (`AotKey`: an `EngineKey` plus ``buckets`` and ``weights_sha256``; the cache's files and
sidecars are the TensorRT engines', with the suffix ``.pt2``):

- ``graph_sha256``: what torch.export traces: the stage name, the model config, the source of
  the model code and of this build recipe (`code_sha256`), the decomposed modulated convs and
  the fixed noise;
- ``weights_sha256``: the stage's parameters and buffers, bytes and names;
- ``trt_version``: the builder, ``"torch <version>"`` (the field keeps its TensorRT name);
- ``compute_capability``: the target, ``"sm90:NVIDIA H100 80GB HBM3"`` or
  ``"cpu:x86_64:AVX512:<cpu model>"`` (`aot_target`: CPU code is compiled for the build
  machine's vector ISA, so a package moves only between machines with the same CPU model);
- ``precision``, ``max_batch``, ``opt_batch`` (the trace batch; 0 with buckets), ``buckets``
  (``"dynamic"`` or ``"1,2,4"``); ``flavour`` is ``"aotinductor"``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable

import torch

from trtalk import __version__
from trtalk.export.cache import EngineCache, EngineKey, EngineRecord
from trtalk import progress
from trtalk.errors import TrtalkError
from trtalk.fsutil import check_free_space
from trtalk.export.stages import BATCH, CastIO, StageSpec, example_inputs, stage_module, stage_specs, \
    stage_tensors
from trtalk.families import registry

if TYPE_CHECKING:
    from trtalk.export.exporter import ExportOptions

log = logging.getLogger(__name__)

FLAVOUR = "aotinductor"
DEFAULT_MAX_BATCH = 64  # dynamic range 1..64 unless asked for more: one package serves all
DYNAMIC = "dynamic"
DEFAULT_MODEL = "model"  # the model name inside a dynamic package (AOTInductor's default)
PRECISIONS = ("fp32", "fp16")
#: Sources whose change changes the traced graph (relative to the trtalk package).
CODE_FILES = ("models/*.py", "export/stages.py", "export/aot.py")


@dataclass(frozen=True)
class AotKey(EngineKey):
    """`EngineKey` of an AOTInductor package: two fields more, and the ``.pt2`` file suffix."""

    buckets: str = DYNAMIC  # "dynamic" (one model, batch 1..max_batch) or "1,2,4" (static models)
    weights_sha256: str = ""

    file_suffix: ClassVar[str] = ".pt2"

    @property
    def bucket_sizes(self) -> tuple[int, ...]:
        """The static batch sizes, ascending; () for a dynamic-batch package."""
        return () if self.buckets == DYNAMIC else tuple(int(b) for b in self.buckets.split(","))


@dataclass(frozen=True)
class AotOptions:
    """What to build: device, precision and batch layout (see the module docstring)."""

    device: str = "cpu"
    precision: str | None = None  # None: fp16 on CUDA, fp32 on the CPU
    max_batch: int = DEFAULT_MAX_BATCH  # dynamic layout: the batch range is 1..max_batch
    buckets: tuple[int, ...] | None = None  # static layout: one model per batch size
    trace_batch: int | None = None  # dynamic layout: the example batch (None: min(8, max_batch))

    def resolved(self) -> "AotOptions":
        """Checked, with defaults filled in (precision, sorted buckets, max_batch, trace_batch)."""
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device or ""):
            raise TrtalkError(f"--device {self.device!r}: use cpu, cuda or cuda:N")
        cuda = self.device.startswith("cuda")
        precision = self.precision or ("fp16" if cuda else "fp32")
        if precision not in PRECISIONS:
            raise TrtalkError(f"unknown precision {precision!r}; choose fp32 or fp16")
        if precision == "fp16" and not cuda:
            raise TrtalkError("AOT packages on the CPU are fp32; add --precision fp32 "
                              "(fp16 packages are built for --device cuda)")
        if self.buckets is not None:
            buckets = tuple(sorted(set(int(b) for b in self.buckets)))
            if not buckets or buckets[0] < 1:
                raise TrtalkError(f"--buckets {self.buckets}: give batch sizes >= 1, e.g. 1,2,4,8")
            return replace(self, precision=precision, buckets=buckets, max_batch=buckets[-1],
                           trace_batch=None)
        if self.max_batch < 2:
            raise TrtalkError("a dynamic-batch package needs max_batch >= 2; for batch 1 alone "
                              "use buckets (1,)")
        trace = self.trace_batch or min(8, self.max_batch)
        if not 2 <= trace <= self.max_batch:  # batch 1 would be specialised by the trace
            raise TrtalkError(f"trace_batch must be in 2..{self.max_batch}, got {trace}")
        return replace(self, precision=precision, trace_batch=trace)

    @property
    def models(self) -> dict[str, int | None]:
        """Model name in the package -> its static batch (None: the dynamic model)."""
        if self.buckets is None:
            return {DEFAULT_MODEL: None}
        return {f"b{b}": b for b in self.buckets}

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32


# ------------------------------------------------------------------------------------ key


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def aot_target(device: str) -> str:
    """What a package built for ``device`` runs on: ``"sm90:<GPU name>"`` or ``"cpu:<arch>:<ISA>:<model>"``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrtalkError(f"--device {device}: this torch sees no CUDA device; use --device cpu")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"sm{major}{minor}:{torch.cuda.get_device_name(index)}"
    return f"cpu:{platform.machine()}:{torch.backends.cpu.get_cpu_capability()}:{_cpu_model()}"


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """sha256 of the model code and of this build recipe (`CODE_FILES`), names and bytes."""
    import trtalk

    root = Path(trtalk.__file__).parent
    h = hashlib.sha256()
    for pattern in CODE_FILES:
        for p in sorted(root.glob(pattern)):
            h.update(f"{p.relative_to(root)}\0".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module, stage: str) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the tensors ``stage`` computes with."""
    h = hashlib.sha256()
    for name, t in sorted(stage_tensors(model, stage).items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def graph_sha256(model: torch.nn.Module, stage: str) -> str:
    """sha256 of what the trace of ``stage`` depends on besides the weights."""
    spec = registry.spec_of(model)
    desc = {"stage": stage, "config": json.loads(model.config.to_json()), "code": code_sha256(),
            "modconv": "decomposed", "noise": spec.noise, "trtalk": __version__}
    desc["family"] = spec.name
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def aot_key(model: torch.nn.Module, stage: str, opts: AotOptions) -> AotKey:
    """The cache key of ``stage``'s package for ``opts`` (hashes the stage's weights)."""
    opts = opts.resolved()
    return AotKey(graph_sha256=graph_sha256(model, stage), precision=str(opts.precision),
                  flavour=FLAVOUR, trt_version=f"torch {torch.__version__}",
                  compute_capability=aot_target(opts.device), max_batch=opts.max_batch,
                  opt_batch=opts.trace_batch or 0,
                  buckets=DYNAMIC if opts.buckets is None else ",".join(map(str, opts.buckets)),
                  weights_sha256=weights_sha256(model, stage))


# ---------------------------------------------------------------------------------- build


def _stage_for_build(model: torch.nn.Module, stage: str, opts: AotOptions) -> torch.nn.Module:
    module = stage_module(model, stage, modconv="decomposed")  # the family's noise
    module = module.to(torch.device(opts.device), opts.compute_dtype)
    if opts.compute_dtype != torch.float32:
        module = CastIO(module, opts.compute_dtype).eval()  # float32 I/O, casts inside the graph
    return module


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], dynamic: bool,
            max_batch: int) -> "torch.export.ExportedProgram":
    shapes = None
    if dynamic:
        batch = torch.export.Dim(BATCH, min=1, max=max_batch)
        shapes = tuple({0: batch} for _ in args)
    return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def load_aot_model(path: str | Path, model_name: str, device: str):
    """One model of a package, loaded (``dlopen`` + weights to ``device``); call ``boxed_run``.

    Uses the package loader directly: ``torch._inductor.aoti_load_package`` would load every
    model of a multi-model package to return one, and probe the CPU's vector ISA (seconds).
    """
    dev = torch.device(device)
    index = dev.index if (dev.type == "cuda" and dev.index is not None) else -1
    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), model_name, False, 1, index)
    return loader


def _check_package(path: Path, module: torch.nn.Module, spec: StageSpec, opts: AotOptions) -> dict:
    """Run the just-built package once against the module it came from (logged, recorded)."""
    name, batch = next(iter(opts.models.items()))
    n = batch or 1  # the dynamic model at batch 1: the real-time case and its range's edge
    args = [a.to(opts.device) for a in example_inputs(spec, n, seed=7)]
    with torch.inference_mode():
        ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = load_aot_model(path, name, opts.device).boxed_run(list(args))
    diff = max(float((g.float() - r.float()).abs().max()) for g, r in zip(got, ref))
    scale = max(float(r.float().abs().max()) for r in ref)
    if not diff <= 1e-2 * (1.0 + scale):  # also catches NaN
        log.warning("aot %s: the package differs from the module it was built from by %.3g "
                    "(outputs up to %.3g); check this build", spec.name, diff, scale)
    return {"model": name, "batch": n, "max_abs_diff": diff, "max_abs_output": scale}


def build_aot_package(model: torch.nn.Module, stage: str, opts: AotOptions, path: Path) -> dict:
    """Export and compile ``stage`` into the package ``path`` (a ``.pt2`` name); sidecar extras.

    One AOTInductor model per entry of ``opts.models``; the generated sources and libraries, and
    the compiler's own caches, go to a temporary folder next to ``path`` (in trtalk's cache, not
    the system temp folder) that is removed afterwards (only the package stays).
    """
    import torch._inductor
    from torch._inductor.package import package_aoti
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    opts = opts.resolved()
    spec = stage_specs(model)[stage]
    module = _stage_for_build(model, stage, opts)

    # the compiler's files (sources, objects, its own caches: hundreds of MB) go under trtalk's
    # cache, next to the package being built, and are removed with it
    work = Path(tempfile.mkdtemp(prefix=f".aot-build-{stage}-", dir=path.parent))
    models: dict[str, dict] = {}
    try:
        with temporary_cache_dir(str(work / "inductor")):
            files = {}
            for name, batch in opts.models.items():
                n = batch or int(opts.trace_batch or 2)
                args = tuple(a.to(opts.device) for a in example_inputs(spec, n, seed=0))
                what = f"batch 1..{opts.max_batch}" if batch is None else f"batch {batch}"
                t0 = time.perf_counter()
                ep = _export(module, args, dynamic=batch is None, max_batch=opts.max_batch)
                t1 = time.perf_counter()
                log.info("aot %s (%s): exported in %.1f s; compiling with AOTInductor ...",
                         stage, what, t1 - t0)
                files[name] = torch._inductor.aot_compile(
                    ep.module(), args,
                    options={"aot_inductor.package": True, "aot_inductor.output_path": str(work / name)})
                t2 = time.perf_counter()
                log.info("aot %s (%s): compiled in %.1f s", stage, what, t2 - t1)
                models[name] = {"batch": batch, "export_seconds": round(t1 - t0, 3),
                                "compile_seconds": round(t2 - t1, 3)}
                del ep
            package_aoti(str(path), files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check = _check_package(path, module, spec, opts)
    log.info("aot %s: package %.1f MB, max |package - module| = %.3g at batch %d", stage,
             path.stat().st_size / 1e6, check["max_abs_diff"], check["batch"])
    io = ([{"name": t.name, "mode": "input", "shape": list(t.shape), "dtype": t.dtype}
           for t in spec.inputs]
          + [{"name": t.name, "mode": "output", "shape": list(t.shape), "dtype": t.dtype}
             for t in spec.outputs])
    return {"io": io, "models": models, "device": opts.device, "check": check,
            "versions": {"trtalk": __version__, "torch": torch.__version__}}


#: the compiler's working files of one stage (sources, objects, caches; 724 MB seen for PC-AVS)
AOT_WORK_BYTES = 1 << 30


def aot_build_bytes(model: torch.nn.Module, opts: AotOptions) -> int:
    """Free disk a stage's build needs, about: the compiler's work plus, per model in the
    package, twice the weights (the compiled library and the package holding it)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return AOT_WORK_BYTES + 2 * weights * len(opts.resolved().models)


def aot_packages(model: torch.nn.Module, opts: AotOptions, stages: Iterable[str] | None = None,
                 cache_dir: str | Path | None = None) -> dict[str, EngineRecord]:
    """The verified package of each of ``stages`` from the engine cache, building what is missing.

    A cached package is used only when its sidecar's key equals the wanted one and its size
    and sha256 match (`EngineCache.lookup`); a truncated or edited one is logged, deleted and
    rebuilt. Builds are atomic (temp file, then rename; sidecar last).
    """
    opts = opts.resolved()
    stages = tuple(stages) if stages is not None else registry.spec_of(model).stages
    cache = EngineCache(cache_dir)
    out: dict[str, EngineRecord] = {}
    t_all = time.perf_counter()
    bar = progress.start(len(stages), "aot build", unit="stage")
    for i, stage in enumerate(stages, 1):
        bar.next(stage)
        key = aot_key(model, stage, opts)
        rec = cache.lookup(stage, key)
        if rec is not None:
            log.info("aot [%d/%d] %s: cached package %s", i, len(stages), stage, rec.path.name)
        else:
            check_free_space(cache.dir, aot_build_bytes(model, opts),
                             f"building the aot {stage} package")
            layout = (f"batch 1..{key.max_batch}" if key.buckets == DYNAMIC
                      else f"batch buckets {key.buckets}")
            log.info("aot [%d/%d] %s: building the %s package (%s) for %s (%s) into %s ...", i,
                     len(stages), stage, opts.precision, layout, opts.device,
                     key.compute_capability, cache.dir)
            t0 = time.perf_counter()
            rec = cache.get_or_build(stage, key, lambda tmp, _s=stage: build_aot_package(
                model, _s, opts, tmp))
            log.info("aot [%d/%d] %s: built in %.1f s: %s", i, len(stages), stage,
                     time.perf_counter() - t0, rec.path)
        out[stage] = rec
    bar.close()
    log.info("aot packages ready in %.1f s", time.perf_counter() - t_all)
    return out


def export_aot(opts: "ExportOptions", model: torch.nn.Module | None = None) -> dict[str, EngineRecord]:
    """``trtalk export --target aot``: build ``opts.stages`` into the engine cache (``opts.cache_dir``)."""
    import dataclasses

    from trtalk.export.exporter import load_model

    if model is not None and opts.model is None and opts.checkpoint is None:
        opts = dataclasses.replace(opts, model=registry.spec_of(model).name)  # its family is the export's
    opts.validate()
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    aopts = AotOptions(device=device, precision=dataclasses.replace(opts, device=device).resolved_precision(),
                       max_batch=max(opts.max_batch, DEFAULT_MAX_BATCH),
                       buckets=tuple(opts.buckets) if opts.buckets else None).resolved()
    if device.startswith("cuda"):
        aot_target(device)  # fail fast without a GPU, before loading anything
    if model is None:
        from trtalk.export.exporter import small_config

        config = opts.config
        if config is None and opts.model_config == "small":
            config = small_config(opts.family())
        model, _ = load_model(opts.checkpoint, opts.seed, config, opts.family())
    return aot_packages(model, aopts, opts.stages, opts.cache_dir)  # None: all of the family's


def describe_aot(records: dict[str, EngineRecord]) -> str:
    """One line per stage (the CLI prints it)."""
    lines = []
    for stage, rec in records.items():
        k = rec.key
        assert isinstance(k, AotKey)
        lines.append(f"{stage:9s} {rec.path}  {rec.bytes / 1e6:.1f} MB  {k.precision} "
                     f"batch {k.buckets if k.bucket_sizes else f'1..{k.max_batch}'}  "
                     f"{k.compute_capability}  built in {rec.build_seconds:.1f} s")
    return "\n".join(lines)
