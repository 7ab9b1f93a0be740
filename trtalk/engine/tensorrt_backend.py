"""`TensorRTBackend`: one deserialised TensorRT(-RTX) engine run on a CUDA stream.

GPU-ONLY CODE PATH: nothing here runs on the CPU-only CI machines; on those, `load` raises a
TrtalkError (no CUDA device) before touching TensorRT. Written against the documented TensorRT
>= 10 / TensorRT-RTX Python API (``deserialize_cuda_engine``, ``create_execution_context``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and cuda-python's runtime
(``cuda.bindings.runtime``, or the older ``cuda.cudart``): device buffers sized for max_batch,
async H2D / D2H copies on one stream (pinned host staging buffers), and optional CUDA-graph
capture of the enqueue, one graph per batch size.

The engine file is never loaded blindly: its sidecar must exist and match (see
`trtalk.export.engine_file.check_engine`), so a truncated engine or one built for another GPU or
TensorRT version is refused with a one-line error before deserialisation.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

from trtalk.engine.backend import Array, Backend
from trtalk.errors import TrtalkError
from trtalk.export.engine_file import EngineKey, check_engine_target, local_compute_capability, verify_user_engine
from trtalk.export.stages import StageSpec
from trtalk.export.tensorrt import import_tensorrt

log = logging.getLogger(__name__)


def import_cudart():
    """cuda-python's runtime module (new or old layout) or a TrtalkError naming the package."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.8
        except ImportError:
            raise TrtalkError("the TensorRT backend needs cuda-python: pip install cuda-python") from None
    return cudart


def cuda_device_count() -> int:
    """Number of CUDA devices (0 when there is no driver or no cuda-python)."""
    try:
        cudart = import_cudart()
        err, n = cudart.cudaGetDeviceCount()
        return int(n) if int(err) == 0 else 0
    except TrtalkError:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check(result):
    """Unwrap a cuda-python ``(err, *values)`` tuple; raise on an error code."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return vals[0] if len(vals) == 1 else vals


class TensorRTBackend(Backend):
    """Runs one stage's engine. GPU-ONLY (see the module docstring)."""

    def __init__(self, spec: StageSpec, engine_path: str | Path, *, flavour: str = "tensorrt-rtx",
                 device: str = "cuda", key: EngineKey | None = None, max_batch: int | None = None,
                 precision: str = "fp16", cuda_graphs: bool = False):
        super().__init__(spec, max_batch or 1)
        self.path = Path(engine_path)
        self.flavour = flavour
        self._device = device
        self._key = key
        self._precision = precision
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[int, object] = {}

    @property
    def device(self) -> str:
        return self._device

    def load(self) -> "TensorRTBackend":
        if self._loaded:
            return self
        if cuda_device_count() == 0:
            raise TrtalkError("the TensorRT backend needs a CUDA GPU and none is visible here; "
                              "use --backend onnxruntime or --backend torch")
        rec = verify_user_engine(self.path, self._key)
        self._max_batch = rec.key.max_batch
        trt = import_tensorrt(self.flavour)
        if self._key is None:  # an engine file the user named: it must suit this machine
            check_engine_target(rec.key.to_dict(), str(trt.__version__), local_compute_capability())
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TrtalkError(f"TensorRT could not deserialise {self.path} (built for another GPU "
                              f"or TensorRT version?); delete it and rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        want = self.spec.input_names + self.spec.output_names
        if sorted(names) != sorted(want):
            raise TrtalkError(f"engine {self.path} has tensors {names}, stage {self.name} needs {want}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        # Device buffers and pinned host staging for max_batch, float32 I/O.
        self._dev: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        for t in self.spec.inputs + self.spec.outputs:
            shape = t.concrete(self._max_batch)
            nbytes = int(np.prod(shape)) * 4
            self._dev[t.name] = _check(cudart.cudaMalloc(nbytes))
            hptr = _check(cudart.cudaMallocHost(nbytes))
            self._host[t.name] = np.ctypeslib.as_array(
                (ctypes.c_float * (nbytes // 4)).from_address(int(hptr))).reshape(shape)
            self.context.set_tensor_address(t.name, int(self._dev[t.name]))
        self._loaded = True
        log.info("loaded %s engine %s (batch <= %d)", self.flavour, self.path.name, self._max_batch)
        return self

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"TensorRT enqueue failed for {self.name}")

    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        cudart = self._cudart
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        b = int(next(iter(inputs.values())).shape[0])
        for t in self.spec.inputs:
            x = inputs[t.name]
            nbytes = x.numel() * 4 if as_torch else x.nbytes
            if as_torch and x.is_cuda:
                _check(cudart.cudaMemcpyAsync(self._dev[t.name], x.data_ptr(), nbytes, kind_d2d, self.stream))
            else:
                xn = x.numpy() if as_torch else x
                self._host[t.name][:b] = xn
                _check(cudart.cudaMemcpyAsync(self._dev[t.name], self._host[t.name].ctypes.data,
                                              nbytes, kind_h2d, self.stream))
            self.context.set_input_shape(t.name, t.concrete(b))
        if self._cuda_graphs:
            if b not in self._graphs:
                self._enqueue()  # first enqueue after a shape change must not be captured
                mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
                _check(cudart.cudaStreamBeginCapture(self.stream, mode))
                self._enqueue()
                graph = _check(cudart.cudaStreamEndCapture(self.stream))
                self._graphs[b] = _check(cudart.cudaGraphInstantiate(graph, 0))
            _check(cudart.cudaGraphLaunch(self._graphs[b], self.stream))
        else:
            self._enqueue()
        out: dict[str, Array] = {}
        for t in self.spec.outputs:
            shape = t.concrete(b)
            if as_torch and next(iter(inputs.values())).is_cuda:
                dst = torch.empty(shape, dtype=torch.float32, device=next(iter(inputs.values())).device)
                _check(cudart.cudaMemcpyAsync(dst.data_ptr(), self._dev[t.name], dst.numel() * 4,
                                              kind_d2d, self.stream))
                out[t.name] = dst
            else:
                host = self._host[t.name]
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._dev[t.name],
                                              int(np.prod(shape)) * 4,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
                out[t.name] = host  # copied below after the sync
        _check(cudart.cudaStreamSynchronize(self.stream))
        for t in self.spec.outputs:
            v = out[t.name]
            if isinstance(v, np.ndarray):
                v = v[:b].copy()
                out[t.name] = torch.from_numpy(v) if as_torch else v
        return out
