"""Plugin-form ONNX graph of the generator: modulated convs as custom ``trtalk`` nodes.

Every modulated convolution of the generator becomes one node of domain ``trtalk`` (opset 1):

====================  ================================  =========================================
node                  inputs                            attributes
====================  ================================  =========================================
``ModulatedConv2d``   x, weight (1xOxIxkxk), styles     demodulate (int 0/1), up = 0
``ModulatedConv2d``   x, weight, styles, blur (4x4)     demodulate, up = 1 (2x upsampling form)
====================  ================================  =========================================

which the TensorRT plugin of `trtalk.export.trt_plugin` (namespace "trtalk", name
"ModulatedConv2d", version "1") implements; everything else (modulation linears, noise, bias,
activations, ToRGB skips) stays standard ONNX.

How: :func:`plugin_modconv` temporarily adds a modconv implementation ``"plugin"`` that calls the
``trtalk::modulated_conv2d[_up]`` torch.library ops (`trtalk.kernels.ops`, whose fake
registrations give torch.export the shapes), and the dynamo exporter's
``custom_translation_table`` turns those ops into the custom nodes.

Running it on CPU: ONNX Runtime knows no ``trtalk`` domain, so :func:`ort_session` rewrites a
copy of the graph to onnxruntime-extensions' Python custom-op domain ``ai.onnx.contrib``
(``ModulatedConv2d`` nodes with 4 inputs are renamed ``ModulatedConv2dUp``, since a Python custom
op has a fixed number of inputs) and implements both with the plain-PyTorch reference of
`trtalk.kernels.reference`. That run checks the graph's wiring (inputs, attributes, shapes) against
the decomposed graph; the kernels themselves are checked on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import numpy as np
import onnx
import torch

from trtalk.errors import TrtalkError
from trtalk.models import modconv

log = logging.getLogger(__name__)

DOMAIN = "trtalk"
OP_TYPE = "ModulatedConv2d"
ORT_DOMAIN = "ai.onnx.contrib"
ORT_UP_OP_TYPE = "ModulatedConv2dUp"
OPSET = 18
PLUGIN_IMPL = "plugin"


def _plugin_impl(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                 up: bool, blur: torch.Tensor | None) -> torch.Tensor:
    import trtalk.kernels.ops  # noqa: F401 - registers torch.ops.trtalk.*

    if up:
        return torch.ops.trtalk.modulated_conv2d_up(x, weight, styles, blur, demodulate)
    return torch.ops.trtalk.modulated_conv2d(x, weight, styles, demodulate)


@contextlib.contextmanager
def plugin_modconv(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Route every modulated conv of ``module`` through the trtalk torch.library ops.

    Args:
        module: a Generator (anything with ``ModulatedConv2d`` submodules having ``.impl``).

    Restores each layer's impl and the modconv impl table on exit.
    """
    layers = [m for m in module.modules() if hasattr(m, "impl") and hasattr(m, "demodulate")]
    saved = [m.impl for m in layers]
    had = PLUGIN_IMPL in modconv.IMPLS
    modconv.IMPLS[PLUGIN_IMPL] = modconv.ModConvImpl(PLUGIN_IMPL, _plugin_impl, True,
                                                     "trtalk custom ops (plugin-form export)")
    try:
        for m in layers:
            m.impl = PLUGIN_IMPL
        yield module
    finally:
        for m, impl in zip(layers, saved):
            m.impl = impl
        if not had:
            modconv.IMPLS.pop(PLUGIN_IMPL, None)


def register_onnx_schema() -> None:
    """Register the ONNX schema of ``trtalk::ModulatedConv2d`` v1 (idempotent).

    Lets onnxscript emit the node during export and ``onnx.checker`` / shape inference accept
    the graph. T is float or float16; blur is optional (present iff up = 1).
    """
    from onnx import defs

    try:
        defs.get_schema(OP_TYPE, 1, DOMAIN)
        return
    except defs.SchemaError:
        pass
    fp = defs.OpSchema.FormalParameter
    opt = defs.OpSchema.FormalParameterOption.Optional
    attr = defs.OpSchema.Attribute
    ints = defs.OpSchema.AttrType.INT
    schema = defs.OpSchema(
        OP_TYPE, DOMAIN, 1,
        doc="Modulated (demodulated) conv of a StyleGAN2 generator; up=1: 2x upsampling form.",
        inputs=[fp("x", "T", "B x I x H x W"), fp("weight", "T", "1 x O x I x k x k"),
                fp("styles", "T", "B x I"), fp("blur", "T", "4 x 4 blur (gain 4)", param_option=opt)],
        outputs=[fp("y", "T", "B x O x H' x W'")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "activations")],
        attributes=[attr("demodulate", ints, "1: demodulate", required=False),
                    attr("up", ints, "1: 2x upsampling form", required=False)])
    defs.register_schema(schema)


def _translation_table() -> dict:
    from onnxscript.values import Opset

    register_onnx_schema()
    node = getattr(Opset(DOMAIN, 1), OP_TYPE)

    def modconv_node(x, weight, styles, demodulate: bool):
        return node(x, weight, styles, demodulate=int(demodulate), up=0)

    def modconv_up_node(x, weight, styles, blur, demodulate: bool):
        return node(x, weight, styles, blur, demodulate=int(demodulate), up=1)

    return {torch.ops.trtalk.modulated_conv2d.default: modconv_node,
            torch.ops.trtalk.modulated_conv2d_up.default: modconv_up_node}


def export_plugin_graph(generator: torch.nn.Module, path: str | os.PathLike | None = None, *,
                        batch: int = 1, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export ``generator`` (style, id_map) -> image with custom ModulatedConv2d nodes.

    Args:
        generator: a `trtalk.models.generator.Generator` (eval mode is set here).
        path: write the model there as well (single file); None: only return it.
        batch: batch size of the example inputs.
        dynamic_batch: make axis 0 of inputs and outputs dynamic ("batch").

    Returns:
        The ONNX model (opset 18 + domain "trtalk" v1).
    """
    import trtalk.kernels.ops  # noqa: F401

    generator.eval()
    c0 = generator.channels[generator.init_size]
    style = torch.randn(batch, generator.style_dim)
    id_map = torch.randn(batch, c0, generator.init_size, generator.init_size)
    dyn = None
    if dynamic_batch:
        b = torch.export.Dim("batch", min=1, max=1024)
        dyn = {"style": {0: b}, "id_map": {0: b}}
    for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with plugin_modconv(generator), torch.no_grad():
        prog = torch.onnx.export(generator, (style, id_map), input_names=["style", "id_map"],
                                 output_names=["image"], opset_version=OPSET, dynamo=True,
                                 dynamic_shapes=dyn, custom_translation_table=_translation_table(),
                                 optimize=True, verbose=False)
    model = prog.model_proto
    n = count_plugin_nodes(model)
    if n == 0:
        raise TrtalkError("plugin-form export produced no trtalk::ModulatedConv2d node")
    log.info("plugin-form graph: %d trtalk::%s nodes", n, OP_TYPE)
    if path is not None:
        onnx.save(model, str(path))
    return model


def count_plugin_nodes(model: onnx.ModelProto) -> int:
    """Number of ``trtalk::ModulatedConv2d`` nodes in the main graph."""
    return sum(1 for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE)


def to_ort_contrib(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with the trtalk nodes moved to onnxruntime-extensions' domain."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = ORT_DOMAIN
            if len(node.input) == 4:
                node.op_type = ORT_UP_OP_TYPE
    imports = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    if not any(o.domain == ORT_DOMAIN for o in imports):
        out.opset_import.append(onnx.helper.make_opsetid(ORT_DOMAIN, 1))
    return out


_ORT_OPS_REGISTERED = False


def register_ort_ops() -> None:
    """Register ModulatedConv2d / ModulatedConv2dUp as onnxruntime-extensions Python ops (once).

    Raises:
        TrtalkError: onnxruntime-extensions is not installed.
    """
    global _ORT_OPS_REGISTERED
    if _ORT_OPS_REGISTERED:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as exc:
        raise TrtalkError("running the plugin-form graph in ONNX Runtime needs "
                          "`pip install onnxruntime-extensions`") from exc
    from trtalk.kernels import reference

    f32 = PyCustomOpDef.dt_float
    attrs = {"demodulate": PyCustomOpDef.dt_int64, "up": PyCustomOpDef.dt_int64}

    @onnx_op(op_type=OP_TYPE, inputs=[f32] * 3, outputs=[f32], attrs=attrs)
    def _modconv(x, weight, styles, demodulate=1, up=0):
        t = torch.from_numpy
        return reference.modulated_conv2d(t(x), t(weight), t(styles), bool(demodulate)).numpy()

    @onnx_op(op_type=ORT_UP_OP_TYPE, inputs=[f32] * 4, outputs=[f32], attrs=attrs)
    def _modconv_up(x, weight, styles, blur, demodulate=1, up=1):
        t = torch.from_numpy
        return reference.modulated_conv2d(t(x), t(weight), t(styles), bool(demodulate), True,
                                          t(blur)).numpy()

    _ORT_OPS_REGISTERED = True


def ort_session(model: onnx.ModelProto, threads: int | None = None):
    """An ONNX Runtime CPU session running a plugin-form graph with the reference ops.

    Args:
        model: the graph from :func:`export_plugin_graph` (domain "trtalk").
        threads: intra-op threads (None: ORT's default).
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register_ort_ops()
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(to_ort_contrib(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def run_ort(session, style: np.ndarray, id_map: np.ndarray) -> np.ndarray:
    """Run a session from :func:`ort_session`; returns the image (float32)."""
    return session.run(["image"], {"style": style.astype(np.float32),
                                   "id_map": id_map.astype(np.float32)})[0]


def export_plugin_stage(generator: torch.nn.Module, spec, path: str | os.PathLike):
    """`trtalk export --modconv plugin`: the generator stage as a plugin-form graph + its record.

    fp32 graph (the TensorRT plugin chooses its fp16 I/O formats at build time); I/O names and
    the dynamic batch axis follow ``spec`` like the decomposed graph, so the manifest, the engine
    builder and the backends treat both forms alike.
    """
    import time
    from pathlib import Path

    from trtalk.export.onnx_export import GraphRecord, sha256_file, value_specs

    path = Path(path)
    t0 = time.perf_counter()
    model = export_plugin_graph(generator, path)
    got_in, got_out = value_specs(model.graph.input), value_specs(model.graph.output)
    if [t.name for t in got_in] != [t.name for t in spec.inputs] or \
            [t.name for t in got_out] != [t.name for t in spec.outputs]:
        raise RuntimeError(f"plugin-form generator I/O {got_in} -> {got_out} does not match {spec}")
    return GraphRecord(spec.name, path.name, sha256_file(path), path.stat().st_size, got_in, got_out,
                       export_seconds=time.perf_counter() - t0)
