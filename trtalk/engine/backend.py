"""One interface for running a named stage on named tensors, and its torch / onnxruntime forms.

A `Backend` runs one stage ("identity", "pose", "audio", "generator", "pose_mouth"; see
`trtalk.export.stages`) with the I/O names of the export manifest:

    identity: image -> id_vector, id_map     pose: image -> pose
    audio:    mel -> mouth                   generator: style, id_map -> image
    pose_mouth: image -> pose, mouth

``run`` takes a dict of NCHW (or B x D) float arrays, numpy or torch, and returns a dict of the
same kind (torch in -> torch out on the caller's device; numpy in -> numpy out), float32.
Batches above ``max_batch`` are split into chunks and concatenated, so callers never see the
engine's batch limit.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch

from trtalk.engine.graphs import CudaGraphAPI, GraphAPI
from trtalk.errors import TrtalkError
from trtalk.export.stages import StageSpec, fuse_options, stage_module
from trtalk.models.fuse import FuseOptions
from trtalk.threads import configure_ort

log = logging.getLogger(__name__)

Array = Union[np.ndarray, torch.Tensor]


class Backend(abc.ABC):
    """Runs one stage. Subclasses implement `load` and `_run_batch` (one chunk, numpy or torch)."""

    def __init__(self, spec: StageSpec, max_batch: int, precision: str = "fp32"):
        self.spec = spec
        self._max_batch = int(max_batch)
        self._precision = precision
        self._loaded = False

    # -- properties of the contract
    @property
    def name(self) -> str:
        """The stage name."""
        return self.spec.name

    @property
    def max_batch(self) -> int:
        """Largest batch one call of the underlying engine takes (``run`` splits bigger ones)."""
        return self._max_batch

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where it computes: "cpu", "cuda", "cuda:0" ..."""

    @property
    def dtype(self) -> str:
        """Compute precision: "float32" or "float16" (I/O is float32 either way)."""
        return "float16" if self._precision == "fp16" else "float32"

    @property
    def kind(self) -> str:
        return type(self).__name__

    # -- life cycle
    @abc.abstractmethod
    def load(self) -> "Backend":
        """Make it ready to run (sessions, engines, weights on the device); idempotent."""

    @abc.abstractmethod
    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        """Run one chunk (batch <= max_batch); inputs are contiguous float32 of the same kind."""

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the stage on ``inputs`` (all of `spec.inputs`, same batch) -> all of `spec.outputs`."""
        if not self._loaded:
            self.load()
        names = self.spec.input_names
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"{self.name}: missing input '{missing[0]}' (inputs are {names})")
        as_torch = isinstance(inputs[names[0]], torch.Tensor)
        batch = None
        clean: dict[str, Array] = {}
        for t in self.spec.inputs:
            x = inputs[t.name]
            if as_torch != isinstance(x, torch.Tensor):
                raise TypeError(f"{self.name}: mix of numpy and torch inputs")
            if batch is None:
                batch = int(x.shape[0])
            want = t.concrete(batch)
            if tuple(x.shape) != want:
                raise ValueError(f"{self.name}: input '{t.name}' has shape {tuple(x.shape)}, "
                                 f"expected {want}")
            if as_torch:
                clean[t.name] = x.float().contiguous() if x.dtype != torch.float32 else x.contiguous()
            else:
                clean[t.name] = np.ascontiguousarray(x, dtype=np.float32)
        assert batch is not None
        if batch <= self.max_batch:
            return self._run_batch(clean, as_torch)
        parts = [self._run_batch({k: v[i:i + self.max_batch] for k, v in clean.items()}, as_torch)
                 for i in range(0, batch, self.max_batch)]
        cat = torch.cat if as_torch else np.concatenate
        return {k: cat([p[k] for p in parts], 0) for k in self.spec.output_names}

    def __repr__(self) -> str:
        return (f"{self.kind}(stage={self.name!r}, device={self.device!r}, dtype={self.dtype!r}, "
                f"max_batch={self.max_batch})")


# --------------------------------------------------------------------------------------- torch


class TorchBackend(Backend):
    """The PyTorch stage module (decomposed modulated convs unless said, as exported), with the
    exact rewrites of `trtalk.models.fuse` (on CPU all but the blur fold, which is slower there).

    CPU: eager, float32 unless ``precision="fp16"``. CUDA: float16 weights and activations by
    default, float32 I/O, 4-D tensors in channels_last. Options (each also runs on CPU in the
    tests, except the device calls themselves): ``cuda_graphs`` captures one graph per batch
    size and replays it on static input buffers (through ``graph_api``, a stand-in in tests);
    ``compile`` wraps the module in ``torch.compile`` (``compile_backend`` picks Inductor or a
    stand-in); ``channels_last`` (default: on CUDA) converts the 4-D weights and inputs.
    """

    def __init__(self, spec: StageSpec, model, *, device: str = "cpu", precision: str | None = None,
                 max_batch: int = 64, cuda_graphs: bool = False, modconv: str = "decomposed",
                 noise: str = "fixed", compile: bool = False, compile_backend: str = "inductor",
                 channels_last: bool | None = None, graph_api: GraphAPI | None = None):
        super().__init__(spec, max_batch)
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise TrtalkError(f"--device {device}: this torch has no CUDA device; use --device cpu")
        self._precision = precision or ("fp16" if self._device.type == "cuda" else "fp32")
        self._model = model
        self._modconv = modconv
        self._noise = noise
        self._compile = compile
        self._compile_backend = compile_backend
        self._channels_last = self._device.type == "cuda" if channels_last is None else channels_last
        self._graph_api = graph_api or (CudaGraphAPI() if cuda_graphs else None)
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[int, tuple] = {}
        self.module: torch.nn.Module | None = None

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float16 if self._precision == "fp16" else torch.float32

    def load(self) -> "TorchBackend":
        if self._loaded:
            return self
        # The exact rewrites of the decomposed form, minus those measured slower on this device
        # (on CPU the blur fold: see FuseOptions.for_device); none for the official "grouped".
        fuse = FuseOptions.for_device(self._device) if fuse_options(self._modconv) else False
        mod = stage_module(self._model, self.name, modconv=self._modconv, noise_mode=self._noise,
                           fuse=fuse)
        mod = mod.to(self._device, self.compute_dtype)
        if self._channels_last:
            to_channels_last(mod)
        if self._compile:
            mod = torch.compile(mod, backend=self._compile_backend)
        self.module = mod
        self._model = None  # the stage holds its own copy; drop the reference
        self._loaded = True
        return self

    def _forward(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        assert self.module is not None
        args = [a.to(self._device, self.compute_dtype) for a in args]
        if self._channels_last:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a
                    for a in args]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float() for o in out)

    def _forward_graphed(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Capture once per batch size (after two warm-up runs), then copy inputs and replay."""
        api = self._graph_api
        assert api is not None
        b = int(args[0].shape[0])
        if b not in self._graphs:
            static_in = [a.to(self._device).clone() for a in args]
            with api.side_stream():
                for _ in range(2):  # warm up (cudnn autotune, allocator) outside the capture
                    self._forward(static_in)
            graph, static_out = api.capture(lambda: self._forward(static_in))
            self._graphs[b] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[b]
        for dst, src in zip(static_in, args):
            dst.copy_(src, non_blocking=True)
        api.replay(graph)
        return tuple(o.clone() for o in static_out)

    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        args = [inputs[n] if as_torch else torch.from_numpy(inputs[n]) for n in self.spec.input_names]
        caller_device = args[0].device
        out = self._forward_graphed(args) if self._graph_api is not None else self._forward(args)
        if as_torch:
            return {n: o.to(caller_device) for n, o in zip(self.spec.output_names, out)}
        return {n: o.cpu().numpy() for n, o in zip(self.spec.output_names, out)}


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Convert the module's 4-D parameters and buffers to channels_last, in place; others stay.

    ``Module.to(memory_format=channels_last)`` refuses modules that hold 5-D tensors (the
    modulated convs' B x O x I x k x k weights), which is what crashed every fp16 path on GPU.
    """
    for t in [*module.parameters(), *module.buffers()]:
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module


# ------------------------------------------------------------------------------- onnxruntime


def ort_providers(device: str) -> list[str]:
    """Execution providers for ``device``: CPU always last; CUDA/TensorRT EPs when installed."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device.startswith("cuda"):
        chosen = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in avail]
        if not chosen:
            raise TrtalkError(f"--device {device}: this onnxruntime has no CUDA provider "
                              f"(available: {', '.join(avail)}); pip install onnxruntime-gpu "
                              f"or use --device cpu")
        return chosen + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend(Backend):
    """ONNX Runtime session over one exported graph (float32 I/O; fp16 graphs cast inside)."""

    def __init__(self, spec: StageSpec, onnx_path: str | Path, *, device: str = "cpu",
                 precision: str = "fp32", max_batch: int = 64, threads: int | None = None):
        super().__init__(spec, max_batch)
        self.path = Path(onnx_path)
        self._device = device
        self._precision = precision
        self._threads = threads
        self.session = None

    @property
    def device(self) -> str:
        return self._device

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []

    def load(self) -> "OrtBackend":
        if self._loaded:
            return self
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # ORT warns about every fp16 node it runs via casts on CPU
        configure_ort(so, self._threads)  # torch's thread count unless given; idle workers sleep
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=ort_providers(self._device))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise TrtalkError(f"onnxruntime cannot load {self.path}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != self.spec.input_names or got_out != self.spec.output_names:
            raise TrtalkError(f"{self.path} has I/O {got_in} -> {got_out}, stage {self.name} needs "
                              f"{self.spec.input_names} -> {self.spec.output_names}; re-export")
        self._loaded = True
        return self

    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        assert self.session is not None
        feed = {k: (v.detach().cpu().numpy() if as_torch else v) for k, v in inputs.items()}
        outs = self.session.run(self.spec.output_names, feed)
        if as_torch:
            dev = next(iter(inputs.values())).device
            return {n: torch.from_numpy(o).to(dev) for n, o in zip(self.spec.output_names, outs)}
        return dict(zip(self.spec.output_names, outs))
