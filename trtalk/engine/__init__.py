"""Inference backends behind one interface (torch, onnxruntime, tensorrt) and the engine cache.

Import cost is kept low: the TensorRT backend and builder are imported only when asked for.
"""

from trtalk.engine.backend import Backend, OrtBackend, TorchBackend
from trtalk.export.cache import EngineCache
from trtalk.engine.runner import KINDS, RunnerOptions, StageRunner, open_backends, open_runner
from trtalk.export.engine_file import EngineKey

__all__ = ["Backend", "TorchBackend", "OrtBackend", "EngineCache", "EngineKey", "KINDS",
           "RunnerOptions", "StageRunner", "open_backends", "open_runner"]
