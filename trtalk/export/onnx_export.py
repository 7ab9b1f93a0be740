"""One stage module -> one checked, simplified ONNX graph.

Promises of every graph written here:

- opset `OPSET` (>= 17), one dynamic axis named ``"batch"`` (axis 0 of every input and output),
  input/output names and float32 I/O exactly as `trtalk.export.stages.stage_specs` says;
- passes ``onnx.checker`` (full check) and strict shape inference, simplified by onnxslim;
- weights inline, or in one external data file ``<name>.onnx.data`` when they exceed 2 GB
  (protobuf's limit);
- precision ``"fp16"``: weights and activations are float16, I/O stays float32 (one Cast after
  each input and before each output), and these stay float32 where fp16 overflows or loses the
  result: the modulated-conv demodulation (``(s^2) @ sum_k(w^2)^T + 1e-8 -> rsqrt``: the sum of
  squares exceeds 65504 and eps underflows in fp16; the model code computes it in float32) and
  every Softmax (the audio encoder's attention pooling; cast to float32 and back by
  `keep_fp32_ops`). Average pools, the SE means and the attention-weighted sum stay fp16: they are
  means or sums of <= 10 softmax-weighted terms, not overflow risks, and TensorRT accumulates
  reductions in fp32 anyway.

Export uses the torch.export-based exporter (``dynamo=True``, needs ``onnxscript``): the legacy
TorchScript exporter cannot export the generator's depthwise blur with a dynamic batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:  # the `export` extra; without it this module still imports (manifests, records, constants)
    import onnx
    from onnx import TensorProto, helper
except ImportError:  # export_stage says which extra to install
    onnx = TensorProto = helper = None  # type: ignore[assignment]

from trtalk.errors import TrtalkError
from trtalk.export.stages import BATCH, CastIO, StageSpec, TensorSpec, example_inputs

log = logging.getLogger(__name__)

OPSET = 18
PRECISIONS = ("fp32", "fp16")
TWO_GB = 2 ** 31
# Ops recomputed in float32 inside fp16 graphs (see the module docstring).
FP32_OPS = ("Softmax",)
FP32_ISLANDS = (
    "modulated-conv demodulation: sum of squared modulated weights + 1e-8 and rsqrt (model code)",
    "Softmax (audio attention pooling), cast to float32 and back",
)

_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo",
                  "torch.fx", "onnxslim")
# onnx.TensorProto's element types (FLOAT 1, FLOAT16 10, INT64 7, INT32 6).
_DTYPE_NAMES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


@dataclass
class GraphRecord:
    """What the manifest says about one written graph."""

    stage: str
    file: str
    sha256: str
    bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: str | None = None
    external_data_sha256: str | None = None
    export_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes,
                "external_data": self.external_data, "external_data_sha256": self.external_data_sha256,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "export_seconds": round(self.export_seconds, 3)}

    @classmethod
    def from_dict(cls, stage: str, d: dict) -> "GraphRecord":
        return cls(stage, d["file"], d["sha256"], d["bytes"],
                   [TensorSpec.from_dict(t) for t in d["inputs"]],
                   [TensorSpec.from_dict(t) for t in d["outputs"]],
                   d.get("external_data"), d.get("external_data_sha256"), d.get("export_seconds", 0.0))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def value_specs(values) -> list[TensorSpec]:
    """TensorSpecs of graph inputs/outputs (dim_param names kept as strings)."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        out.append(TensorSpec(v.name, shape, _DTYPE_NAMES.get(tt.elem_type, str(tt.elem_type))))
    return out


def keep_fp32_ops(model: onnx.ModelProto, op_types: tuple[str, ...] = FP32_OPS) -> int:
    """Run every node of ``op_types`` with float16 inputs in float32: Cast in, Cast out.

    Only single-output nodes whose float inputs are float16 (by shape inference) are changed.
    Returns the number of nodes wrapped.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    new_nodes: list[onnx.NodeProto] = []
    wrapped = 0
    for node in model.graph.node:
        if node.op_type not in op_types or len(node.output) != 1 or not any(
                types.get(i) == TensorProto.FLOAT16 for i in node.input):
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if types.get(name) == TensorProto.FLOAT16:
                cast_out = f"{name}__fp32_{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT,
                                                  name=f"{node.name}__in{k}_fp32"))
                node.input[k] = cast_out
        out = node.output[0]
        node.output[0] = f"{out}__fp32"
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT16,
                                          name=f"{node.name}__out_fp16"))
        wrapped += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return wrapped


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) if t.HasField("raw_data") else 0 for t in model.graph.initializer)


def _name_batch_axis(model: onnx.ModelProto) -> None:
    """Name axis 0 of every graph input/output ``"batch"`` (the exporter's name may differ)."""
    for v in list(model.graph.input) + list(model.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = BATCH
    for v in list(model.graph.input) + list(model.graph.output):
        # Strip the exporter's per-value metadata: it names torch internals, not our contract.
        del v.metadata_props[:]


def _torch_export(module: torch.nn.Module, spec: StageSpec, max_batch: int,
                  precision: str) -> onnx.ModelProto:
    if precision == "fp16":
        module = CastIO(module.half(), torch.float16)
    args = example_inputs(spec, batch=2)
    batch = torch.export.Dim(BATCH, min=1, max=max(2, max_batch))
    dyn = tuple({0: batch} for _ in spec.inputs)
    if isinstance(module, CastIO):
        dyn = (dyn,)  # CastIO.forward(*args): torch.export sees one varargs tuple
    # The exporter logs every pass at INFO; quiet it unless we are debugging.
    quiet = not log.isEnabledFor(logging.DEBUG)
    noisy = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    try:
        if quiet:
            for lg in noisy:
                lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, args, input_names=spec.input_names,
                                     output_names=spec.output_names, dynamic_shapes=dyn,
                                     opset_version=OPSET, dynamo=True, optimize=True,
                                     external_data=False, verbose=not quiet, report=False)
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
    return prog.model_proto


def export_stage(module: torch.nn.Module, spec: StageSpec, path: str | os.PathLike, *,
                 precision: str = "fp32", max_batch: int = 8) -> GraphRecord:
    """Export ``module`` (positional I/O as ``spec``) to ``path``; return its manifest record.

    ``path`` is written directly (the caller stages it in a temp dir and renames); an external
    data file, when needed, is ``<path>.data`` next to it.
    """
    if precision not in PRECISIONS:
        raise TrtalkError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if onnx is None:
        raise TrtalkError("ONNX export needs onnx, which is not installed: pip install 'trtalk[export]'")
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with a clear message)
    except ImportError:
        raise TrtalkError("ONNX export needs onnxscript: pip install 'trtalk[export]'") from None
    import onnxslim

    path = Path(path)
    t0 = time.perf_counter()
    model = _torch_export(module, spec, max_batch, precision)
    t_export = time.perf_counter() - t0
    model = onnxslim.slim(model)
    if precision == "fp16":
        n = keep_fp32_ops(model)
        log.debug("%s: %d node(s) kept in float32", spec.name, n)
    _name_batch_axis(model)
    model.producer_name, model.producer_version = "trtalk", _trtalk_version()
    helper.set_model_props(model, {"trtalk.stage": spec.name, "trtalk.precision": precision})

    external = _initializer_bytes(model) > TWO_GB - (64 << 20)
    data_name = f"{path.name}.data" if external else None
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)
    else:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.save_model(model, str(path))

    got_in, got_out = value_specs(model.graph.input), value_specs(model.graph.output)
    if [t.to_dict() for t in got_in] != [t.to_dict() for t in spec.inputs] or \
            [t.to_dict() for t in got_out] != [t.to_dict() for t in spec.outputs]:
        raise RuntimeError(f"{spec.name}: exported I/O {got_in} -> {got_out} does not match the "
                           f"stage spec {spec.inputs} -> {spec.outputs}")
    rec = GraphRecord(spec.name, path.name, sha256_file(path), path.stat().st_size, got_in, got_out,
                      export_seconds=time.perf_counter() - t0)
    if data_name:
        rec.external_data = data_name
        rec.external_data_sha256 = sha256_file(path.parent / data_name)
    log.info("exported %s (%s) in %.1f s (torch export %.1f s): %s, %.1f MB", spec.name, precision,
             rec.export_seconds, t_export, path.name, rec.bytes / 1e6)
    return rec


def _trtalk_version() -> str:
    from trtalk import __version__

    return __version__
