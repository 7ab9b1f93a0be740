"""CUDA graphs for whole frame batches: capture once per batch bucket, replay with copies.

`GraphedFunction(fn, device)` runs ``fn(*tensors) -> tensor(s)`` (every input and output has the
batch as its first axis) as one recorded graph per bucket (1, 2, 4, 8, 16, 32, 64): a call with
batch b copies its inputs into the static inputs of the smallest bucket >= b (through pinned host
buffers when they come from the CPU), replays the graph on one stream, and returns the first b
rows of the static outputs. Batches above the largest bucket run in chunks. The graph mechanics
go through `GraphAPI`: `CudaGraphAPI` on a GPU, a stand-in in the CPU tests, so every line but
the CUDA calls themselves runs in CI.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Sequence

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GraphAPI(abc.ABC):
    """What capturing and replaying needs; CUDA's below, stand-ins in tests."""

    @abc.abstractmethod
    def side_stream(self):
        """Context manager: the warm-up runs on a side stream (synchronised on exit)."""

    @abc.abstractmethod
    def capture(self, fn: Callable[[], object]) -> tuple[object, object]:
        """Record ``fn()`` once; (graph, its static outputs)."""

    @abc.abstractmethod
    def replay(self, graph: object) -> None:
        """Run the recorded work again on the static buffers."""

    def pinned(self, like: torch.Tensor) -> torch.Tensor | None:
        """A page-locked host buffer shaped like ``like`` (None where there is no such thing)."""
        return None


class CudaGraphAPI(GraphAPI):
    """torch.cuda graphs: the only lines of the graph path that need a GPU."""

    def side_stream(self):
        @contextlib.contextmanager
        def ctx():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                yield
            torch.cuda.current_stream().wait_stream(stream)
        return ctx()

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def replay(self, graph) -> None:
        graph.replay()

    def pinned(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)


def bucket_for(batch: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket >= ``batch`` (the largest when none is)."""
    for b in buckets:
        if b >= batch:
            return b
    return buckets[-1]


class GraphedFunction:
    """``fn`` replayed as one recorded graph per batch bucket (see the module docstring)."""

    def __init__(self, fn: Callable[..., object], device: str | torch.device, api: GraphAPI,
                 buckets: Sequence[int] = BUCKETS, warmup: int = 2) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.api = api
        self.buckets = tuple(sorted(buckets))
        self.warmup = warmup
        # bucket -> (graph, static inputs, static outputs, pinned host staging per input)
        self._graphs: dict[int, tuple] = {}

    @property
    def captured(self) -> list[int]:
        """Buckets recorded so far."""
        return sorted(self._graphs)

    def _record(self, bucket: int, like: Sequence[torch.Tensor]) -> tuple:
        static_in = [torch.zeros((bucket, *a.shape[1:]), dtype=a.dtype, device=self.device) for a in like]
        with torch.inference_mode():
            with self.api.side_stream():
                for _ in range(self.warmup):  # autotuning and allocations outside the capture
                    self.fn(*static_in)
            graph, static_out = self.api.capture(lambda: self.fn(*static_in))
        single = isinstance(static_out, torch.Tensor)
        outs = (static_out,) if single else tuple(static_out)
        staging = [self.api.pinned(s) if a.device.type == "cpu" else None for a, s in zip(like, static_in)]
        return graph, static_in, outs, staging, single

    def __call__(self, *args: torch.Tensor):
        b = int(args[0].shape[0])
        top = self.buckets[-1]
        if b > top:  # chunks of the largest bucket
            parts = [self(*(a[i:i + top] for a in args)) for i in range(0, b, top)]
            if isinstance(parts[0], torch.Tensor):
                return torch.cat(parts)
            return tuple(torch.cat(p) for p in zip(*parts))
        bucket = bucket_for(b, self.buckets)
        if bucket not in self._graphs:
            self._graphs[bucket] = self._record(bucket, args)
        graph, static_in, outs, staging, single = self._graphs[bucket]
        for dst, src, host in zip(static_in, args, staging):
            if host is not None:
                host[:b].copy_(src)
                src = host[:b]
            dst[:b].copy_(src, non_blocking=host is not None)
        self.api.replay(graph)
        result = tuple(o[:b].clone() for o in outs)
        return result[0] if single else result
