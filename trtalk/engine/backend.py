"""One interface for running a named stage on named tensors, and its torch / onnxruntime forms.

A `Backend` runs one stage ("identity", "pose", "audio", "generator"; see
`trtalk.export.stages`) with the I/O names of the export manifest:

    identity: image -> id_vector, id_map     pose: image -> pose
    audio:    mel -> mouth                   generator: style, id_map -> image

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

from trtalk.errors import TrtalkError
from trtalk.export.stages import StageSpec, fuse_options, stage_module
from trtalk.models.fuse import FuseOptions

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
    """The PyTorch stage module (decomposed modulated convs, fixed noise, as exported), with the
    exact rewrites of `trtalk.models.fuse` (on CPU all but the blur fold, which is slower there).

    CPU: eager float32. CUDA (GPU-ONLY CODE PATH, not exercised by the CPU test suite): float16
    weights and activations with float32 I/O, channels_last, and optionally one CUDA graph per
    batch size (``cuda_graphs=True``) replayed on static input buffers.
    """

    def __init__(self, spec: StageSpec, model, *, device: str = "cpu", precision: str | None = None,
                 max_batch: int = 64, cuda_graphs: bool = False, modconv: str = "decomposed"):
        super().__init__(spec, max_batch)
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise TrtalkError(f"--device {device}: this torch has no CUDA device; use --device cpu")
        self._precision = precision or ("fp16" if self._device.type == "cuda" else "fp32")
        self._model = model
        self._modconv = modconv
        self._cuda_graphs = cuda_graphs and self._device.type == "cuda"
        self._graphs: dict[int, tuple] = {}
        self.module: torch.nn.Module | None = None

    @property
    def device(self) -> str:
        return str(self._device)

    def load(self) -> "TorchBackend":
        if self._loaded:
            return self
        # The exact rewrites of the decomposed form, minus those measured slower on this device
        # (on CPU the blur fold: see FuseOptions.for_device); none for the official "grouped".
        fuse = FuseOptions.for_device(self._device) if fuse_options(self._modconv) else False
        mod = stage_module(self._model, self.name, modconv=self._modconv, noise_mode="fixed",
                           fuse=fuse)
        mod = mod.to(self._device)
        if self._precision == "fp16":  # GPU-ONLY in practice (fp16 convs are slow/absent on CPU)
            mod = mod.half()
            if self._device.type == "cuda":
                mod = mod.to(memory_format=torch.channels_last)
        self.module = mod
        self._model = None  # the stage holds its own copy; drop the reference
        self._loaded = True
        return self

    def _forward(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        assert self.module is not None
        cdt = torch.float16 if self._precision == "fp16" else torch.float32
        args = [a.to(self._device, cdt) for a in args]
        if self._device.type == "cuda":
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a
                    for a in args]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float() for o in out)

    def _forward_graphed(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """GPU-ONLY: capture once per batch size, then copy into static inputs and replay."""
        b = int(args[0].shape[0])
        if b not in self._graphs:
            static_in = [a.to(self._device).clone() for a in args]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up (cudnn autotune, allocator) outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[b] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[b]
        for dst, src in zip(static_in, args):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return tuple(o.clone() for o in static_out)

    def _run_batch(self, inputs: dict[str, Array], as_torch: bool) -> dict[str, Array]:
        args = [inputs[n] if as_torch else torch.from_numpy(inputs[n]) for n in self.spec.input_names]
        caller_device = args[0].device
        out = self._forward_graphed(args) if self._cuda_graphs else self._forward(args)
        if as_torch:
            return {n: o.to(caller_device) for n, o in zip(self.spec.output_names, out)}
        return {n: o.cpu().numpy() for n, o in zip(self.spec.output_names, out)}


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
        if self._threads:
            so.intra_op_num_threads = self._threads
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
