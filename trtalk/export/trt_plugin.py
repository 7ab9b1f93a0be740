"""TensorRT IPluginV3 ``trtalk::ModulatedConv2d`` v1 in Python, launching the csrc/ kernels.

Implements the nodes of the plugin-form graph (`trtalk.export.plugin`): inputs x (B x I x H x W,
fp16), weight (1 x O x I x k x k, fp32), styles (B x I, fp32) and, when ``up`` = 1, blur (4 x 4,
fp32); output B x O x H' x W' fp16. Fields (INT32): ``demodulate``, ``up``. ``enqueue`` calls
``trtalk_modulated_conv2d`` of libtrtalk_kernels.so (ctypes) on TensorRT's stream with the
tensor pointers and TensorRT's workspace (weight repack + demodulation coefficients), so it
needs neither cuda-python nor a CUDA context of its own.

Datacenter TensorRT >= 10 (``import tensorrt``) is the target: TensorRT-RTX has no plugin layers
(DESIGN.md). The same classes are built on ``tensorrt_rtx_bindings`` when that is all there is,
which is how CPU tests exercise the build-time methods. For the ONNX parser to find the creator,
tag the nodes with :func:`tag_for_tensorrt` (plugin_namespace "trtalk", plugin_version "1").
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import numpy as np

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

PLUGIN_NAME = "ModulatedConv2d"
PLUGIN_NAMESPACE = "trtalk"
PLUGIN_VERSION = "1"
FIELDS = ("demodulate", "up")
N_INPUTS = {0: 3, 1: 4}  # up -> number of inputs


def tensorrt_module() -> ModuleType:
    """``tensorrt`` (datacenter) if importable, else ``tensorrt_rtx_bindings``.

    Raises:
        TrtalkError: neither is installed.
    """
    for name in ("tensorrt", "tensorrt_rtx_bindings"):
        try:
            mod = __import__(name)
        except Exception:  # noqa: BLE001 - the PyPI 'tensorrt' stub raises on import
            continue
        if hasattr(mod, "IPluginV3"):
            return mod
    raise TrtalkError("TensorRT Python bindings with IPluginV3 not found (pip install tensorrt)")


def _align256(n: int) -> int:
    return (n + 255) // 256 * 256


def workspace_size(batch: int, out_ch: int, in_ch: int, ksize: int, up: bool) -> int:
    """Bytes of workspace ``trtalk_modulated_conv2d`` needs; mirrors
    csrc/modconv.cu:trtalk_modconv_workspace_size (a test holds them equal)."""
    n_total = 4 * out_ch if up else out_ch
    return (_align256(2 * ksize * ksize * in_ch * n_total) + _align256(4 * out_ch * in_ch)
            + _align256(4 * batch * out_ch))


def _field_value(field) -> int:
    data = np.asarray(field.data).reshape(-1)
    return int(data[0]) if data.size else 0


@functools.lru_cache(maxsize=None)
def plugin_classes(trt: ModuleType | None = None) -> tuple[type, type]:
    """(plugin class, creator class) built on the TensorRT module ``trt`` (default:
    :func:`tensorrt_module`)."""
    trt = trt or tensorrt_module()

    class ModulatedConv2dPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                                trt.IPluginV3OneRuntime):
        """One modulated conv layer; see the module docstring for its I/O."""

        def __init__(self, demodulate: int = 1, up: int = 0, phase=None):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            if up not in (0, 1) or demodulate not in (0, 1):
                raise TrtalkError(f"ModulatedConv2d plugin: demodulate and up must be 0/1, "
                                  f"got {demodulate}, {up}")
            self.demodulate, self.up, self.phase = int(demodulate), int(up), phase
            self.num_outputs = 1
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = PLUGIN_NAME
            self.plugin_version = PLUGIN_VERSION
            self.timing_cache_id = ""

        # -- core
        def get_capability_interface(self, type):  # noqa: A002 - TensorRT's name
            return self

        def clone(self):
            return ModulatedConv2dPlugin(self.demodulate, self.up, self.phase)

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([
                trt.PluginField(name, np.array([getattr(self, name)], dtype=np.int32),
                                trt.PluginFieldType.INT32) for name in FIELDS])

        # -- build
        def get_output_data_types(self, input_types):
            return [trt.DataType.HALF]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            x, w = inputs[0], inputs[1]
            out = trt.DimsExprs(x)
            out[1] = w[1]
            if self.up:
                two = expr_builder.constant(2)
                out[2] = expr_builder.operation(trt.DimensionOperation.PROD, x[2], two)
                out[3] = expr_builder.operation(trt.DimensionOperation.PROD, x[3], two)
            return [out]

        def supports_format_combination(self, pos, in_out, num_inputs):
            """x and y fp16, weight / styles / blur fp32, all linear (NCHW)."""
            if num_inputs != N_INPUTS[self.up]:
                return False
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            want = trt.DataType.HALF if pos in (0, num_inputs) else trt.DataType.FLOAT
            return desc.type == want

        def configure_plugin(self, inp, out):
            pass

        def get_workspace_size(self, inputs, outputs):
            x, w = inputs[0].max, inputs[1].max
            return workspace_size(x[0], w[1], w[2], w[3], bool(self.up))

        def get_valid_tactics(self):
            return []

        # -- runtime
        def set_tactic(self, tactic):
            pass

        def on_shape_change(self, inp, out):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            from trtalk.kernels import loader

            lib = loader.load_library()
            b, cin, h, w = (int(d) for d in input_desc[0].dims)
            wd = input_desc[1].dims
            cout, k = int(wd[1]), int(wd[3])
            blur = inputs[3] if self.up else None
            rc = lib.trtalk_modulated_conv2d(inputs[0], inputs[1], inputs[2], blur, b, cin, cout,
                                             h, w, k, self.demodulate, self.up, workspace,
                                             outputs[0], stream)
            loader.check(rc, "ModulatedConv2d plugin enqueue")

    class ModulatedConv2dCreator(trt.IPluginCreatorV3One):
        """Creator of ``trtalk::ModulatedConv2d`` v1 (fields demodulate, up: INT32)."""

        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32)
                for name in FIELDS])

        def create_plugin(self, name, fc, phase):
            values = {"demodulate": 1, "up": 0}
            for f in fc:
                if f.name in values:
                    values[f.name] = _field_value(f)
            return ModulatedConv2dPlugin(values["demodulate"], values["up"], phase)

    return ModulatedConv2dPlugin, ModulatedConv2dCreator


def register_creator(trt: ModuleType | None = None):
    """Register the creator with ``trt.get_plugin_registry()`` under namespace "trtalk".

    Returns:
        The registered creator (keep a reference while TensorRT may use it).
    """
    trt = trt or tensorrt_module()
    _, creator_cls = plugin_classes(trt)
    creator = creator_cls()
    registry = trt.get_plugin_registry()
    if not registry.register_creator(creator, PLUGIN_NAMESPACE):
        log.debug("a ModulatedConv2d creator was already registered")
    return creator


def tag_for_tensorrt(model):
    """Add plugin_namespace / plugin_version attributes to the trtalk nodes of an ONNX model
    (in place), which TensorRT's ONNX parser uses to look the creator up. Returns the model."""
    import onnx

    from trtalk.export.plugin import DOMAIN, OP_TYPE

    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            names = {a.name for a in node.attribute}
            if "plugin_namespace" not in names:
                node.attribute.append(onnx.helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
            if "plugin_version" not in names:
                node.attribute.append(onnx.helper.make_attribute("plugin_version", PLUGIN_VERSION))
    return model
