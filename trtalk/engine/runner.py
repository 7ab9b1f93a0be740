"""The one runner: choose a backend, get the four stages, run them like the PyTorch model.

`open_runner(backend, source, device, options)` returns a `Runner` whose ``encode_identity``,
``encode_pose``, ``encode_pose_mouth``, ``encode_audio``, ``generate`` and ``style`` match `trtalk.models.PCAVS`'s
(torch tensors in and out, NCHW, float32). Both families run here: a PD-FGC source (checkpoint,
export directory, `PDFGC` instance, or random weights with ``RunnerOptions(family="pdfgc")``)
gives a runner whose stages are identity, motion, audio, generator, with ``encode_motion``
-> (pose, eye, emotion) as `trtalk.families.pdfgc.model.PDFGC`'s. Render, stream, serve and bench all get their
networks here; every option in `RunnerOptions` means the same on every backend, or
`open_runner` refuses it with a one-line error (nothing is silently ignored).

``source`` is one of: None (seeded random weights, loudly warned), a checkpoint (official folder
or .safetensors), an export directory (has ``manifest.json``), or a `PCAVS` / `PDFGC` instance (torch and aot).
For onnxruntime and tensorrt a checkpoint is exported first into the cache,
``<cache root>/exports/<family>-<checkpoint sha256[:16]>-<precision>-v<version>``, reused next time
whatever the batch (the graphs' batch axis is dynamic; tensorrt reuses a cached engine whose
batch profile covers the request and builds one only when none does); an
export directory is used as it is (verified, never rebuilt or copied into the cache). torch and aot
run the weights an export directory was made from (its manifest's random weights or checkpoint).
An export directory of random weights (its manifest says so) is warned and stamped like no checkpoint.
For aot the stages are torch.export + AOTInductor packages in the engine cache
(`trtalk.export.aot`), built the first time they are missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trtalk import __version__
from trtalk.engine.backend import Backend, OrtBackend, TorchBackend
from trtalk.engine.graphs import CudaGraphAPI, GraphAPI, GraphedFunction
from trtalk.export.cache import EngineCache, cache_root
from trtalk.export.engine_file import check_engine
from trtalk.errors import TrtalkError
from trtalk.export.manifest import MANIFEST_NAME, Manifest
from trtalk.export.stages import StageSpec, family_stages
from trtalk.families import registry
from trtalk.families.spec import FamilySpec
from trtalk.fsutil import remove_abandoned
from trtalk.signals import raise_if_interrupted

log = logging.getLogger(__name__)

#: Every backend `open_runner` knows (the CLIs' ``--backend`` choices come from here).
BACKENDS = ("torch", "onnxruntime", "tensorrt", "aot")
PRECISIONS = ("fp32", "fp16")
NOISE_MODES = ("fixed", "random", "zero", "seeded")
MODCONV_IMPLS = ("decomposed", "grouped", "cuda", "triton")


@dataclass
class RunnerOptions:
    """How the networks run, beyond backend / source / device. Same meaning on every backend."""

    precision: str | None = None  # None: fp32 on CPU, fp16 on CUDA for torch and tensorrt
    max_batch: int = 8
    cache_dir: str | os.PathLike | None = None
    compute_capability: str | None = None  # tensorrt-rtx target; None = the local GPU
    flavour: str | None = None  # "tensorrt" | "tensorrt-rtx"; None = datacenter if installed
    config: Any = None  # the family's config (random weights); None: its official one
    family: str = "pcavs"  # of random weights; a checkpoint, export or model instance says its own
    cuda_graphs: bool = False  # torch and tensorrt: one CUDA graph per batch size
    compile: bool = False  # torch only: torch.compile each stage module
    modconv: str = "decomposed"  # torch only: the generator's modulated-conv implementation
    noise: str | None = None  # generator noise; None: the family's (`FamilySpec.noise`), what graphs hold
    seed: int = 0  # seed of the random weights when there is no checkpoint
    threads: int | None = None  # onnxruntime intra-op threads; None = torch's (trtalk.threads)
    graph_api: GraphAPI | None = None  # stand-in for CUDA graphs (tests); None = torch.cuda
    buckets: tuple[int, ...] | None = None  # aot only: static-batch packages; None = dynamic batch
    aot_stages: tuple[str, ...] | None = None  # aot only: stages from packages (None: all); the others run on torch

    @property
    def stages(self) -> tuple[str, ...]:
        """The family's stages."""
        return family_stages(self.family)

    def check(self, backend: str, device: str) -> None:
        """TrtalkError naming the option when ``backend`` on ``device`` cannot honour it."""
        if backend not in BACKENDS:
            raise TrtalkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise TrtalkError(f"unknown precision {self.precision!r}; choose fp32 or fp16")
        registry.with_stages(registry.get(self.family))  # TrtalkError naming the choices
        if self.noise is not None and self.noise not in NOISE_MODES:
            raise TrtalkError(f"unknown noise mode {self.noise!r}; choose {', '.join(NOISE_MODES)}")
        if self.modconv not in MODCONV_IMPLS:
            raise TrtalkError(f"unknown modconv {self.modconv!r}; choose {', '.join(MODCONV_IMPLS)}")
        if self.max_batch < 1:
            raise TrtalkError("the largest batch must be >= 1")
        if backend != "torch":
            held = registry.get(self.family).noise
            if self.noise not in (None, held):
                what = "checkpoint's fixed noise buffers" if held == "fixed" else "seeded noise maps"
                raise TrtalkError(f"--noise {self.noise} needs --backend torch: the {backend} graphs "
                                  f"hold the {what}")
            if self.modconv != "decomposed":
                raise TrtalkError(f"--modconv {self.modconv} needs --backend torch ({backend} runs the "
                                  f"exported decomposed graph)")
            if self.compile:
                raise TrtalkError(f"compile is a torch option; {backend} builds its own graph")
        if self.cuda_graphs and not device.startswith("cuda") and self.graph_api is None:
            raise TrtalkError(f"CUDA graphs need --device cuda, not {device}")
        if backend != "aot":
            if self.buckets is not None:
                raise TrtalkError(f"batch buckets are an aot option; {backend} does not take them")
            if self.aot_stages is not None:
                raise TrtalkError(f"aot_stages is an aot option; {backend} runs every stage itself")
        else:
            if self.cuda_graphs:
                raise TrtalkError("CUDA graphs are not offered for aot yet; use torch or tensorrt")
            if self.precision == "fp16" and not device.startswith("cuda"):
                raise TrtalkError("aot packages on the CPU are fp32; use --precision fp32 "
                                  "(fp16 needs --device cuda)")
            if self.buckets is not None and (not self.buckets or min(self.buckets) < 1):
                raise TrtalkError(f"buckets {self.buckets}: give batch sizes >= 1, e.g. 1,2,4,8")
            unknown = [s for s in self.aot_stages or () if s not in self.stages]
            if unknown:
                raise TrtalkError(f"unknown stage '{unknown[0]}'; stages are {', '.join(self.stages)}")
        if backend == "onnxruntime" and self.cuda_graphs:
            raise TrtalkError("CUDA graphs are not offered for onnxruntime; use torch or tensorrt")


def check_device(device: str) -> None:
    """TrtalkError when ``device`` is not cpu/cuda[:N], or names CUDA and torch sees none."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device or ""):
        raise TrtalkError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrtalkError(f"--device {device} asked for, but PyTorch sees no CUDA device; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise TrtalkError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _is_export_dir(p: Path) -> bool:
    return p.is_dir() and (p / MANIFEST_NAME).is_file()


def _specs_from_manifest(m: Manifest) -> dict[str, StageSpec]:
    return {s: StageSpec(s, tuple(r.inputs), tuple(r.outputs)) for s, r in m.graphs.items()}


def ensure_export(source: str | os.PathLike | None, precision: str, max_batch: int,
                  cache_dir: str | os.PathLike | None = None,
                  config: Any = None, seed: int = 0,
                  fold_up_blur: bool = False, family: str = "pcavs") -> Path:
    """An export directory for ``source`` (checkpoint or None = random weights of ``family``),
    made once per cache key.

    The key is (family, weights, precision, fold, version), not the batch: the ONNX graphs have
    a dynamic batch axis, so one export serves every batch (``max_batch`` is the batch a new
    export records in its manifest; engines built from it get their own batch profile). An
    entry of the older batch-keyed layout (``...-b<N>...``) is reused the same way.

    ``fold_up_blur``: the blur folded into the upsampling convs (pays on GPUs, costs on CPU)."""
    from trtalk.export.exporter import ExportOptions, export_pcavs, load_model, warn_random_weights

    if source is not None and _is_export_dir(Path(source)):
        Manifest.read(source).verify(source)  # the user's own folder: report, never touch
        return Path(source)
    model, record = load_model(source, seed=seed, config=config, family=family, warn=False)
    cfg_hash = hashlib.sha256(model.config.to_json().encode()).hexdigest()[:8]
    tag = record["sha256"][:16] if record["sha256"] else f"random{record['seed']}-{cfg_hash}"
    family = registry.spec_of(model).name
    tag = f"{family}-{tag}"
    root = cache_root(cache_dir) / "exports"
    fold = "-fold" if fold_up_blur else ""
    final = root / f"{tag}-{precision}{fold}-v{__version__}"
    if final.exists():
        try:
            _check_cached(final, family, precision, record)
            log.info("using cached export %s", final)
            return final
        except TrtalkError as exc:  # a corrupt cache entry heals: set aside, then rebuilt
            aside = quarantine(final)
            log.warning("cached export %s is unusable (%s); moved it to %s and re-exporting",
                        final, exc, aside.name)
    else:
        legacy = _legacy_export(root, f"{tag}-{precision}", f"{fold}-v{__version__}",
                                family, precision, record)
        if legacy is not None:
            return legacy
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot create export cache {root}: {exc.strerror or exc}") from None
    remove_abandoned(root, re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{8}}(?:-(?P<pid>\d+))?\.tmp"),
                     dirs=True)  # what killed exports into this slot left behind
    tmp = root / f".{final.name}.{secrets.token_hex(4)}-{os.getpid()}.tmp"
    if record["random_weights"]:
        warn_random_weights(record["seed"])
    try:
        export_pcavs(ExportOptions(out=tmp, precision=precision, max_batch=max_batch,
                                   fold_up_blur=fold_up_blur),
                     model=model, checkpoint_record=record)
        raise_if_interrupted()  # a signal whose exception a library swallowed: publish nothing
        try:
            os.rename(tmp, final)  # atomic publish of the whole directory
        except OSError:
            if not _is_export_dir(final):  # not a concurrent twin that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_cached(folder: Path, family: str, precision: str, record: dict) -> None:
    """TrtalkError unless the cache entry ``folder`` verifies (every graph's sha256) and its
    manifest says the family, precision and weights its name promises (names are not trusted)."""
    m = Manifest.read(folder)
    m.verify(folder)
    got = m.checkpoint if isinstance(m.checkpoint, dict) else {}
    want = {"family": family, "precision": precision, "sha256": record.get("sha256")}
    have = {"family": m.family, "precision": m.options.get("precision"), "sha256": got.get("sha256")}
    if record.get("random_weights"):
        want["seed"], have["seed"] = record.get("seed"), got.get("seed")
    diff = [f"{k} {have[k]!r} != {v!r}" for k, v in want.items() if have[k] != v]
    if diff:
        raise TrtalkError(f"its manifest does not match its name ({', '.join(diff)})")


def _legacy_export(root: Path, head: str, tail: str, family: str, precision: str,
                   record: dict) -> Path | None:
    """A verified cache entry of the batch-keyed layout ``<head>-b<N><tail>`` (its graphs have a
    dynamic batch axis, so any N serves), the largest N first; None when there is none. An entry
    that does not verify is left where it is (it is no slot this version writes) and skipped."""
    pattern = re.compile(rf"{re.escape(head)}-b(\d+){re.escape(tail)}")
    try:
        found = [(int(m.group(1)), p) for p in root.iterdir()
                 if (m := pattern.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return None
    for _, p in sorted(found, reverse=True):
        try:
            _check_cached(p, family, precision, record)
        except TrtalkError as exc:
            log.info("skipping cached export %s (%s)", p, exc)
            continue
        log.info("using cached export %s (its graphs take any batch)", p)
        return p
    return None


def quarantine(path: Path) -> Path:
    """Move a corrupt cache entry aside as ``<name>.corrupt-<UTC time>`` (kept for inspection;
    nothing reads it again) and return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise TrtalkError(f"cannot move the corrupt cache entry {path} aside ({exc.strerror or exc}); "
                          f"delete it") from None
    from trtalk.export.cache import prune_corrupt

    prune_corrupt(path.parent)  # the newest few stay for inspection
    return aside


def _source_model(source, opts: RunnerOptions, backend: str) -> torch.nn.Module:
    """The PyTorch model of ``source`` (a family's model, a checkpoint, or None: seeded random
    weights of ``opts.family``)."""
    from trtalk.export.exporter import load_model

    if isinstance(source, torch.nn.Module):
        return source
    if source is not None and _is_export_dir(Path(source)):
        return export_source_model(Path(source), backend)
    model, _ = load_model(source, seed=opts.seed, config=opts.config, family=opts.family)
    return model


def export_random_weights(source: object) -> bool:
    """Whether ``source`` is an export directory whose manifest records seeded random weights."""
    if source is None or isinstance(source, torch.nn.Module) or not _is_export_dir(Path(source)):  # type: ignore[arg-type]
        return False
    try:
        return bool(Manifest.read(source).checkpoint.get("random_weights"))  # type: ignore[arg-type]
    except TrtalkError:
        return False


def export_source_model(folder: Path, backend: str) -> torch.nn.Module:
    """The PyTorch model an export directory was made from (torch and aot run weights, not ONNX
    graphs): the seeded random weights its manifest records (family, config, seed), or its
    checkpoint when that file is still where the manifest says and matches its sha256."""
    from trtalk.export.exporter import load_model

    m = Manifest.read(folder)
    rec = m.checkpoint
    spec = registry.with_stages(registry.get(m.family))
    if rec.get("random_weights"):
        assert spec.random is not None and spec.official_config is not None
        import json

        try:
            config = type(spec.official_config()).from_json(json.dumps(m.config))  # type: ignore[attr-defined]
        except (AttributeError, ValueError) as exc:
            raise TrtalkError(f"{folder}: its manifest's config cannot be read ({exc}); use "
                              f"--backend onnxruntime") from None
        return spec.random(config, int(rec.get("seed") or 0))
    path = rec.get("path")
    if path and Path(path).exists() and registry.checkpoint_hash(path) == rec.get("sha256"):
        model, _ = load_model(path, family=m.family)
        return model
    raise TrtalkError(f"--backend {backend} runs weights, and the checkpoint {folder} was exported "
                      f"from ({path}) is not there (or changed); give that checkpoint, or use "
                      f"--backend onnxruntime to run the export's graphs")


def _torch_backends(source, device: str, opts: RunnerOptions,
                    stages: tuple[str, ...] | None = None) -> dict[str, Backend]:
    from trtalk.export.stages import stage_specs

    model = _source_model(source, opts, "torch")
    specs = stage_specs(model)
    stages = stages if stages is not None else registry.spec_of(model).stages
    return {s: TorchBackend(specs[s], model, device=device, precision=opts.precision,
                            max_batch=max(opts.max_batch, 64), cuda_graphs=opts.cuda_graphs,
                            modconv=opts.modconv, noise=opts.noise, compile=opts.compile)
            for s in stages}


def _aot_backends(source, device: str, opts: RunnerOptions) -> dict[str, Backend]:
    """AOTInductor packages from the engine cache (built when missing); stages left out of
    ``opts.aot_stages`` run eagerly on torch with the same weights."""
    from trtalk.engine.aot_backend import AotBackend
    from trtalk.export.aot import DEFAULT_MAX_BATCH, AotOptions, aot_packages
    from trtalk.export.stages import stage_specs

    model = _source_model(source, opts, "aot")
    aopts = AotOptions(device=device, precision=opts.precision,
                       max_batch=max(opts.max_batch, DEFAULT_MAX_BATCH),
                       buckets=tuple(opts.buckets) if opts.buckets is not None else None)
    stages = registry.spec_of(model).stages
    packaged = tuple(s for s in stages if opts.aot_stages is None or s in opts.aot_stages)
    records = aot_packages(model, aopts, packaged, opts.cache_dir)
    specs = stage_specs(model)
    out: dict[str, Backend] = {s: AotBackend(specs[s], r.path, device=device, key=r.key)  # type: ignore[arg-type]
                               for s, r in records.items()}
    rest = tuple(s for s in stages if s not in out)
    if rest:
        log.info("aot: %s run eagerly on torch (not in aot_stages)", ", ".join(rest))
        out.update(_torch_backends(model, device, opts, rest))
    return {s: out[s] for s in stages}


def _ort_backends(source, device: str, opts: RunnerOptions) -> dict[str, Backend]:
    precision = opts.precision or "fp32"
    d = ensure_export(source, precision, opts.max_batch, opts.cache_dir, opts.config, opts.seed,
                      fold_up_blur=device.startswith("cuda"), family=opts.family)
    m = Manifest.read(d)
    if opts.precision is not None and opts.precision != m.precision:
        log.warning("the export folder %s holds %s graphs: they run as they are (--precision %s "
                    "does not apply; export again with --precision %s for that)", d, m.precision,
                    opts.precision, opts.precision)
    specs = _specs_from_manifest(m)
    return {s: OrtBackend(specs[s], m.graph_path(d, s, verify=False), device=device, precision=m.precision,
                          max_batch=max(opts.max_batch, 64), threads=opts.threads) for s in m.stages}


def _pick_flavour(opts: RunnerOptions) -> str:
    if opts.flavour:
        return opts.flavour
    try:
        import tensorrt  # noqa: F401

        return "tensorrt"
    except ImportError:
        return "tensorrt-rtx"


def tensorrt_engines(source, opts: RunnerOptions) -> dict[str, tuple[Path, "object", StageSpec]]:
    """Engine path, key and stage spec per stage: the export's own engine, or a cached one, whose
    batch profile covers ``opts.max_batch`` (same graph, precision and target).

    Builds what is missing (on this machine, for ``opts.compute_capability`` or the local GPU), for
    batches up to the larger of ``opts.max_batch`` and the export's ``max_batch``, and says why in
    one INFO line.
    """
    from trtalk.export.engine_file import covering_key, read_sidecar
    from trtalk.export.tensorrt import BuildOptions, build_engine, engine_key

    precision = opts.precision or "fp16"
    d = ensure_export(source, precision, opts.max_batch, opts.cache_dir, opts.config, opts.seed,
                      fold_up_blur=True, family=opts.family)
    m = Manifest.read(d)
    need = opts.max_batch
    bopts = BuildOptions(flavour=_pick_flavour(opts), max_batch=max(need, m.max_batch),
                         compute_capability=opts.compute_capability)
    cache = EngineCache(opts.cache_dir)
    specs = _specs_from_manifest(m)
    out = {}
    for s in m.stages:
        key = engine_key(m.graphs[s].sha256, m.precision, bopts)
        shipped = m.engines.get(s)
        if shipped:
            path = d / shipped["file"]
            sc = read_sidecar(path)
            theirs = covering_key(sc.get("key") if sc else None, key, need)
            ok, reason, _ = check_engine(path, theirs if theirs is not None else key)
            if ok:
                out[s] = (path, theirs if theirs is not None else key, specs[s])
                continue
            log.info("export's %s engine not usable here (%s); using the engine cache", s, reason)
        rec, top = cache.covering(s, key, need)
        if rec is not None:
            log.info("engine cache hit: %s (batch up to %d)", rec.path, rec.key.max_batch)
            out[s] = (rec.path, rec.key, specs[s])
            continue
        why = (f"the cached one covers up to {top}" if top else
               "none is cached for this graph, precision and target")
        log.info("building %s engine for batch up to %d: %s", s, key.max_batch, why)
        graph = m.graph_path(d, s, verify=False)  # ensure_export verified it
        rec = cache.get_or_build(s, key, lambda tmp, _g=graph, _s=specs[s]: build_engine(
            _g, _s, m.precision, bopts, tmp))
        out[s] = (rec.path, key, specs[s])
    return out


def _trt_backends(source, device: str, opts: RunnerOptions) -> dict[str, Backend]:
    from trtalk.engine.tensorrt_backend import TensorRTBackend, cuda_device_count

    if cuda_device_count() == 0:
        raise TrtalkError("--backend tensorrt needs a CUDA GPU and none is visible here; "
                          "use --backend onnxruntime or --backend torch")
    # One export (and one verification of it) serves the engines and their specs.
    return {s: TensorRTBackend(spec, p, flavour=k.flavour, device=device, key=k,
                               max_batch=k.max_batch, precision=k.precision,
                               cuda_graphs=opts.cuda_graphs)
            for s, (p, k, spec) in tensorrt_engines(source, opts).items()}


def _open_backends(backend: str, source=None, device: str = "cpu",
                  options: RunnerOptions | None = None) -> dict[str, Backend]:
    """The four stage backends of ``backend`` ("torch", "onnxruntime", "tensorrt", "aot"), loaded."""
    opts = options or RunnerOptions()
    opts.check(backend, device)
    if backend in ("torch", "aot"):
        check_device(device)
    elif not re.fullmatch(r"cpu|cuda(:\d+)?", device or ""):
        raise TrtalkError(f"--device {device!r}: use cpu, cuda or cuda:N")
    make = {"torch": _torch_backends, "onnxruntime": _ort_backends, "tensorrt": _trt_backends,
            "aot": _aot_backends}[backend]
    backends = make(source, device, opts)
    for b in backends.values():
        b.load()
    return backends


class Runner:
    """The inference surface of either family over its four stage backends; torch tensors in
    and out (float32).

    ``family`` is the family's name (``spec`` its `FamilySpec`): given, or the family whose stages
    the backends hold. For
    PD-FGC, ``encode_motion`` gives the raw (pose B x 6, eye B x 6, emotion B x 30), and
    `encode_pose` and the ``pose`` argument of `style` / `synthesize` are the style's motion
    tail B x 42 (`motion_code`: 1.2 emotion | 1.2 eye | pose), so `frame` drives every factor from its
    pose images. ``random_weights`` says the networks are seeded random weights (no
    checkpoint). With ``graphs`` (a `GraphAPI`; CUDA graphs from `open_runner(...,
    RunnerOptions(cuda_graphs=True))` on the torch backend) `encode_pose` (PD-FGC: and
    `encode_motion`), `encode_audio`, `generate`, `synthesize` (audio + style + generator, what
    the frame step calls) and `frame` (pose + audio + style + generator) each replay one recorded
    graph per batch bucket.
    """

    def __init__(self, backends: dict[str, Backend], random_weights: bool = False,
                 graphs: GraphAPI | None = None, device: str = "cpu", family: str | None = None):
        self.spec: FamilySpec = registry.get(family) if family is not None else _spec_holding(backends)
        self.family = self.spec.name
        missing = [s for s in self.spec.stages if s not in backends]
        if missing:
            raise ValueError(f"no backend for stage {missing[0]}")
        self.backends = backends
        self.random_weights = random_weights
        self.graphed = graphs is not None
        if graphs is not None:
            if "motion" in backends:
                self.encode_motion = GraphedFunction(self._encode_motion, device, graphs)  # type: ignore[method-assign]
            if "pose_mouth" in backends:
                self.encode_pose_mouth = GraphedFunction(self._encode_pose_mouth, device, graphs)  # type: ignore[method-assign]
            self.encode_pose = GraphedFunction(self._encode_pose, device, graphs)  # type: ignore[method-assign]
            self.encode_audio = GraphedFunction(self._encode_audio, device, graphs)  # type: ignore[method-assign]
            self.generate = GraphedFunction(self._generate, device, graphs)  # type: ignore[method-assign]
            self.synthesize = GraphedFunction(self._synthesize, device, graphs)  # type: ignore[method-assign]
            self._frame_graph = GraphedFunction(self._frame, device, graphs)

    @property
    def name(self) -> str:
        b = self.backends["generator"]
        return f"{b.kind}({b.device}, {b.dtype})"

    def encode_identity(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x 224 x 224 in [-1, 1] -> (id_vector B x 2048, id_map B x 512 x 7 x 7)."""
        out = self.backends["identity"].run({"image": image})
        return out["id_vector"], out["id_map"]

    def encode_pose(self, image: torch.Tensor) -> torch.Tensor:
        """Aligned pose frame B x 3 x 224 x 224 -> pose code B x 12 (PD-FGC: the style's motion
        tail B x 42 of the frame's own pose, eyes and emotion, `motion_code`)."""
        return self._encode_pose(image)

    def _encode_pose(self, image: torch.Tensor) -> torch.Tensor:
        assert self.spec.pose_code is not None
        return self.spec.pose_code(self.backends[self.spec.pose_stage].run({"image": image}))

    def encode_motion(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PD-FGC: aligned crops B x 3 x 224 x 224 -> raw (pose B x 6, eye B x 6, emotion B x 30)."""
        return self._encode_motion(image)

    def _encode_motion(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "motion" not in self.backends:
            raise ValueError(f"encode_motion needs a motion stage; {self.spec.title} has encode_pose")
        out = self.backends["motion"].run({"image": image})
        return out["pose"], out["eye"], out["emotion"]

    def encode_pose_mouth(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned frame B x 3 x 224 x 224 -> (pose code B x 12, visual mouth code B x 500):
        one pass of the pose encoder's trunk (the ``pose_mouth`` stage; lips from a video)."""
        return self._encode_pose_mouth(image)

    def _encode_pose_mouth(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backends["pose_mouth"].run({"image": image})
        return out["pose"], out["mouth"]

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel window B x 1 x 80 x 20 -> mouth code B x 500 (1.2 weight applied)."""
        return self._encode_audio(mel)

    def _encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.backends["audio"].run({"mel": mel})["mouth"]

    @staticmethod
    def style(id_vector: torch.Tensor, mouth: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """id | mouth | pose (PD-FGC: its `motion_code`, 42 wide): both families' official order."""
        return torch.cat([id_vector, mouth, pose], 1)

    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        """Style B x 2560 (PD-FGC: 2590) + id map B x 512 x 7 x 7 -> image B x 3 x 224 x 224 in [-1, 1]."""
        return self._generate(style, id_map)

    def _generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.backends["generator"].run({"style": style, "id_map": id_map})["image"]

    def synthesize(self, mel: torch.Tensor, pose: torch.Tensor, id_vector: torch.Tensor,
                   id_map: torch.Tensor) -> torch.Tensor:
        """Mel windows + pose codes + identity (all B rows) -> images: audio, style, generator."""
        return self._synthesize(mel, pose, id_vector, id_map)

    def _synthesize(self, mel, pose, id_vector, id_map, mark=None) -> torch.Tensor:
        mouth = self._encode_audio(mel)
        if mark:
            mark()
        return self._generate(self.style(id_vector, mouth, pose.to(mouth.dtype)), id_map)

    def frame(self, mel: torch.Tensor, pose_image: torch.Tensor, id_vector: torch.Tensor,
              id_map: torch.Tensor, mark=None) -> torch.Tensor:
        """The networks of B frames back to back: pose, audio, style, generator -> images.

        ``mark()`` is called after each of the three (the bench times the parts with it); a
        graphed runner replays the whole frame as one graph and cannot time its parts (mark None).
        """
        if self.graphed:
            if mark is not None:
                raise ValueError("a graphed frame is one replay: time its parts with the graphed "
                                 "encode_pose / encode_audio / generate instead")
            return self._frame_graph(mel, pose_image, id_vector, id_map)
        return self._frame(mel, pose_image, id_vector, id_map, mark)

    def _frame(self, mel, pose_image, id_vector, id_map, mark=None) -> torch.Tensor:
        pose = self._encode_pose(pose_image)
        if mark:
            mark()
        image = self._synthesize(mel, pose, id_vector, id_map, mark)
        if mark:
            mark()
        return image


def source_family(source: object, default: str = "pcavs") -> str:
    """The model family of a runner source: a model instance's, an export directory's manifest's,
    a checkpoint's (`trtalk.families.registry.detect`), else (None: random weights) ``default``."""
    if source is None:
        return default
    if isinstance(source, torch.nn.Module):
        return registry.spec_of(source).name
    if _is_export_dir(Path(source)):  # type: ignore[arg-type]
        try:
            return Manifest.read(source).family  # type: ignore[arg-type]
        except TrtalkError:  # the backend that opens it says what is wrong (or that it needs none)
            return default
    return registry.detect(source, fallback=default)  # type: ignore[arg-type]


def open_runner(backend: str = "torch", source=None, device: str = "cpu",
                options: RunnerOptions | None = None, *, seed: int | None = None) -> Runner:
    """The networks of ``source`` on ``backend``, ready to run: what every front end uses.

    ``source``: None (seeded random weights of ``options.family``, warned loudly), a checkpoint
    folder or file, an export directory, or a `PCAVS` / `PDFGC` instance (torch and aot): the
    family is the source's. ``seed`` overrides ``options.seed``.
    """
    opts = options or RunnerOptions()
    if seed is not None:
        opts = dataclasses.replace(opts, seed=seed)
    opts = dataclasses.replace(opts, family=source_family(source, opts.family))
    opts.check(backend, device)
    random_weights = source is None or export_random_weights(source)
    if source is None:
        name = registry.get(opts.family).title
        log.warning("no checkpoint given: running with SEEDED RANDOM WEIGHTS (seed %d); the face "
                    "will not look like the input. Pass the official %s checkpoint folder or a "
                    "`trtalk convert` file to get real results.", opts.seed, name)
    elif random_weights:
        log.warning("the export %s holds SEEDED RANDOM WEIGHTS (its manifest says so: it was exported "
                    "without --checkpoint); the frames are noise and stamped so. Export the real "
                    "checkpoint with `trtalk export --checkpoint ...`.", source)
    graphs = None
    if opts.cuda_graphs and backend == "torch":
        # One graph per frame batch at the runner level; the stage backends stay eager (a graph
        # cannot be captured around another graph's replay).
        graphs = opts.graph_api or CudaGraphAPI()
        opts = dataclasses.replace(opts, cuda_graphs=False)
    return Runner(_open_backends(backend, source, device, opts), random_weights, graphs, device, opts.family)


def _spec_holding(backends: dict[str, Backend]) -> FamilySpec:
    """The family whose stages ``backends`` hold (the one with the most of them, all present)."""
    found = [s for s in registry.all_specs().values() if s.stages and set(s.stages) <= set(backends)]
    if not found:
        raise ValueError(f"no model family has the stages {', '.join(backends)}")
    return max(found, key=lambda s: len(s.stages))

