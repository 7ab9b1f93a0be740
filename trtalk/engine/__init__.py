"""Inference backends behind one interface (torch, onnxruntime, tensorrt, aot) and one runner.

`open_runner(backend, source, device, RunnerOptions(...))` is how every front end gets its
networks. Import cost is kept low: the TensorRT backend and builder are imported only when asked.
"""

from trtalk.engine.backend import Backend, OrtBackend, TorchBackend
from trtalk.engine.runner import BACKENDS, Runner, RunnerOptions, open_runner
from trtalk.export.cache import EngineCache
from trtalk.export.engine_file import EngineKey

__all__ = ["BACKENDS", "Backend", "EngineCache", "EngineKey", "OrtBackend", "Runner", "RunnerOptions",
           "TorchBackend", "open_runner"]
