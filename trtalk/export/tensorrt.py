"""Build TensorRT engines from the exported ONNX graphs: TensorRT for RTX or datacenter TensorRT.

One code path over two Python modules, imported lazily:

- ``"tensorrt-rtx"``: TensorRT for RTX, ``pip install tensorrt-rtx-cu13-libs
  tensorrt-rtx-cu13-bindings`` (import name ``tensorrt_rtx_bindings``). Builds ahead-of-time on a
  machine without a GPU for a chosen compute capability (``IBuilderConfig.set_compute_capability``;
  its enum lists SM75, SM80, SM86, SM89, SM120, SM121, or CURRENT = the local GPU). Networks are
  strongly typed: there is no FP16 flag, an FP16 engine comes from the fp16 graph. No plugins.
- ``"tensorrt"``: datacenter TensorRT >= 10 (``import tensorrt``; its PyPI wheels download from
  NVIDIA's host). Builds for the local GPU only; the network is strongly typed, as on
  TensorRT-RTX (TensorRT 11 removed ``BuilderFlag.FP16``), so an fp16 engine is the fp16 graph;
  custom plugin libraries load through the plugin registry.
  (WRITTEN AGAINST THE DOCUMENTED API, NOT RUN HERE: datacenter TensorRT cannot be installed on
  these machines.)

Without a GPU neither flavour can deserialise an engine, and TensorRT-RTX's
``Runtime.get_engine_validity`` needs one too, so the engine's I/O (names, shapes with -1 for the
batch, dtypes) is read from the parsed network at build time, checked against the stage spec,
and recorded in the engine sidecar (see `trtalk.export.engine_file`).
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from trtalk.errors import TrtalkError
from trtalk.export.engine_file import EngineKey, EngineRecord, local_compute_capability, write_engine
from trtalk.export.stages import BATCH, StageSpec

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt-rtx", "tensorrt")
PIP_HINT = {
    "tensorrt-rtx": "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings "
                    "(or pip install 'trtalk[trt-rtx]')",
    "tensorrt": "pip install 'tensorrt-cu13>=10' (needs access to pypi.nvidia.com)",
}
RTX_COMPUTE_CAPABILITIES = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
               "BOOL": "bool", "INT8": "int8", "UINT8": "uint8", "BF16": "bfloat16"}


def import_tensorrt(flavour: str) -> ModuleType:
    """The TensorRT Python module of ``flavour``, or a TrtalkError naming the pip packages."""
    if flavour not in FLAVOURS:
        raise TrtalkError(f"unknown TensorRT flavour {flavour!r}; choose {' or '.join(FLAVOURS)}")
    try:
        if flavour == "tensorrt-rtx":
            import tensorrt_rtx_bindings as trt
        else:
            import tensorrt as trt
    except ImportError:
        raise TrtalkError(f"{flavour} is not installed: {PIP_HINT[flavour]}") from None
    except OSError as exc:  # the bindings import but the shared libraries do not load
        raise TrtalkError(f"{flavour} libraries failed to load ({exc}); reinstall: "
                          f"{PIP_HINT[flavour]}") from None
    if flavour == "tensorrt" and int(trt.__version__.split(".")[0]) < 10:
        raise TrtalkError(f"tensorrt {trt.__version__} is too old (need >= 10): {PIP_HINT[flavour]}")
    return trt


def tensorrt_version(flavour: str) -> str:
    return str(import_tensorrt(flavour).__version__)


@dataclass
class BuildOptions:
    """How to build: flavour, batch profile 1..max_batch (opt = ``opt_batch`` or max/2), target."""

    flavour: str = "tensorrt-rtx"
    max_batch: int = 8
    opt_batch: int | None = None
    compute_capability: str | None = None  # RTX: "sm89" ...; None = the local GPU ("current")
    workspace_mb: int | None = None
    plugin_library: str | None = None
    plugin_version: str = "none"
    python_plugin: bool = False  # the graph has trtalk::ModulatedConv2d nodes (trt_plugin.py)

    @property
    def opt(self) -> int:
        return self.opt_batch or max(1, self.max_batch // 2)


def resolve_compute_capability(opts: BuildOptions) -> str:
    """The target recorded in the engine key: "sm89", or "current:sm90" for the local GPU."""
    cc = (opts.compute_capability or "").lower() or None
    if opts.flavour == "tensorrt":
        local = local_compute_capability()
        if local is None:
            raise TrtalkError("datacenter TensorRT builds only for the local GPU and this machine "
                              "has none; use --target tensorrt-rtx --compute-capability smXY")
        if cc not in (None, "current", local):
            raise TrtalkError(f"datacenter TensorRT builds for the local GPU ({local}) only, "
                              f"not {cc}")
        return f"current:{local}"
    if cc in (None, "current"):
        local = local_compute_capability()
        if local is None:
            raise TrtalkError("no GPU here to build for: give --compute-capability, one of "
                              f"{', '.join(RTX_COMPUTE_CAPABILITIES)}")
        return f"current:{local}"
    if cc not in RTX_COMPUTE_CAPABILITIES:
        raise TrtalkError(f"TensorRT-RTX cannot target {cc}; choose one of "
                          f"{', '.join(RTX_COMPUTE_CAPABILITIES)} (or current, on a GPU machine)")
    return cc


def engine_key(graph_sha256: str, precision: str, opts: BuildOptions) -> EngineKey:
    return EngineKey(graph_sha256=graph_sha256, precision=precision, flavour=opts.flavour,
                     trt_version=tensorrt_version(opts.flavour),
                     compute_capability=resolve_compute_capability(opts),
                     max_batch=opts.max_batch, opt_batch=opts.opt,
                     plugin_version=opts.plugin_version)


class _Logger:
    """Route TensorRT's log into ``logging`` (errors kept for the one-line message)."""

    def __init__(self, trt: ModuleType):
        outer = self
        self.errors: list[str] = []

        class L(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):  # noqa: D401 - TensorRT callback
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    outer.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        self.trt_logger = L()


def _load_plugin(trt: ModuleType, opts: BuildOptions, builder) -> None:
    if not opts.plugin_library:
        return
    if opts.flavour == "tensorrt-rtx":
        raise TrtalkError("TensorRT-RTX has no plugin layers; build the plugin variant with "
                          "--target tensorrt (datacenter TensorRT)")
    path = Path(opts.plugin_library)
    if not path.is_file():
        raise TrtalkError(f"plugin library {path} not found (build csrc/ with CMake first)")
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise TrtalkError(f"cannot load plugin library {path}: {str(exc).splitlines()[0]}") from None
    builder.get_plugin_registry().load_library(str(path))


def _parse_with_python_plugin(trt: ModuleType, parser, onnx_path: str | Path, opts: BuildOptions) -> bool:
    """Register the Python IPluginV3 creator of trtalk::ModulatedConv2d, tag the graph's custom
    nodes with its namespace/version (how the ONNX parser finds a plugin) and parse it."""
    if opts.flavour == "tensorrt-rtx":
        raise TrtalkError("TensorRT-RTX has no plugin layers; build the plugin-form graph with "
                          "--target tensorrt (datacenter TensorRT >= 10)")
    import onnx

    from trtalk.export.trt_plugin import register_creator, tag_for_tensorrt

    register_creator(trt)
    model = tag_for_tensorrt(onnx.load(str(onnx_path)))
    return parser.parse(model.SerializeToString(), str(Path(onnx_path).parent))


def _network_io(trt: ModuleType, network) -> list[dict]:
    io = []
    for mode, n, get in (("input", network.num_inputs, network.get_input),
                         ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            shape = [BATCH if (k == 0 and d == -1) else int(d) for k, d in enumerate(t.shape)]
            io.append({"name": t.name, "mode": mode, "shape": shape,
                       "dtype": _TRT_DTYPES.get(t.dtype.name, t.dtype.name.lower())})
    return io


def expected_io(spec: StageSpec) -> list[dict]:
    """The I/O list an engine of ``spec`` must have (the manifest's names/shapes/dtypes)."""
    return ([{"name": t.name, "mode": "input", "shape": list(t.shape), "dtype": t.dtype}
             for t in spec.inputs]
            + [{"name": t.name, "mode": "output", "shape": list(t.shape), "dtype": t.dtype}
               for t in spec.outputs])


def network_flags(trt: ModuleType, flavour: str) -> int:
    """`Builder.create_network` flags: strongly typed on datacenter TensorRT where the module has
    the flag (>= 9; the only mode in 11), so the graph's own dtypes decide the precision.
    TensorRT-RTX networks are strongly typed without asking (0). Explicit batch is the only mode
    in TensorRT >= 10, so no flag for it."""
    if flavour == "tensorrt-rtx":
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(onnx_path: str | Path, spec: StageSpec, precision: str, opts: BuildOptions,
                 out_path: Path) -> dict:
    """Parse ``onnx_path``, check its I/O against ``spec``, build, write bytes to ``out_path``.

    Returns the sidecar extras: ``io`` (the network's I/O) and ``parse_seconds``.
    """
    trt = import_tensorrt(opts.flavour)
    cc = resolve_compute_capability(opts)
    lg = _Logger(trt)
    builder = trt.Builder(lg.trt_logger)
    _load_plugin(trt, opts, builder)
    t0 = time.perf_counter()
    network = builder.create_network(network_flags(trt, opts.flavour))
    parser = trt.OnnxParser(network, lg.trt_logger)
    if opts.python_plugin:
        parsed = _parse_with_python_plugin(trt, parser, onnx_path, opts)
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or lg.errors
        raise TrtalkError(f"TensorRT cannot parse {onnx_path}: {errs[0] if errs else 'unknown error'}")
    parse_s = time.perf_counter() - t0
    io = _network_io(trt, network)
    if io != expected_io(spec):
        raise TrtalkError(f"{onnx_path}: network I/O {io} differs from stage {spec.name}'s "
                          f"{expected_io(spec)}; re-export")

    config = builder.create_builder_config()
    if opts.flavour == "tensorrt-rtx":
        if not cc.startswith("current"):
            config.num_compute_capabilities = 1
            if not config.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), 0):
                raise TrtalkError(f"TensorRT-RTX refused compute capability {cc}")
    elif precision == "fp16" and not network_flags(trt, opts.flavour):
        # A datacenter TensorRT without strong typing (< 9): allow FP16 kernels (the fp16 graph's
        # Casts still pin the fp32 islands). TensorRT 11 has no such flag: it is strongly typed.
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        profile.set_shape(t.name, t.concrete(1), t.concrete(opts.opt), t.concrete(opts.max_batch))
    config.add_optimization_profile(profile)
    t1 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtalkError(f"TensorRT could not build the {spec.name} engine: "
                          f"{lg.errors[-1] if lg.errors else 'see the log above'}")
    build_s = time.perf_counter() - t1
    with open(out_path, "wb") as fh:
        fh.write(memoryview(serialized))
    log.info("built %s %s engine (%s, batch 1..%d opt %d) in %.1f s (parse %.1f s), %.1f MB",
             opts.flavour, spec.name, cc, opts.max_batch, opts.opt, build_s, parse_s,
             serialized.nbytes / 1e6)
    return {"io": io, "parse_seconds": round(parse_s, 3), "builder_seconds": round(build_s, 3),
            "stage": spec.name}


def build_export_engines(out_dir: str | Path, manifest, opts: BuildOptions) -> dict[str, dict]:
    """Build one engine per graph of ``manifest`` into ``out_dir/engines``; manifest records."""
    from trtalk.export.stages import StageSpec as _Spec

    out_dir = Path(out_dir)
    eng_dir = out_dir / "engines"
    eng_dir.mkdir(exist_ok=True)
    records: dict[str, dict] = {}
    for stage, rec in manifest.graphs.items():
        spec = _Spec(stage, tuple(rec.inputs), tuple(rec.outputs))
        key = engine_key(rec.sha256, manifest.precision, opts)
        cc = key.compute_capability.replace(":", "-")
        path = eng_dir / f"{stage}.{manifest.precision}.{opts.flavour}.{cc}.engine"
        er: EngineRecord = write_engine(
            path, key, lambda tmp, _g=out_dir / rec.file, _s=spec: build_engine(
                _g, _s, manifest.precision, opts, tmp))
        records[stage] = er.to_manifest(out_dir)
    return records
