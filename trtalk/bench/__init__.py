"""`trtalk bench`: every backend side by side on the four PC-AVS stages, with limits and plots.

- `trtalk.bench.run`: timing of identity / pose / audio / generator and of a whole frame per
  backend and batch, memory, the streaming-latency measure.
- `trtalk.bench.flops`: FLOPs per stage counted from the PyTorch graph (FlopCounterMode).
- `trtalk.bench.peaks`: the machine's description and its peak FLOP/s per precision.
- `trtalk.bench.report`: results.json, results.md and the PNG plots, written atomically.
"""

from trtalk.bench.run import BACKENDS, BenchConfig, StreamBenchConfig, run_bench, run_stream_bench

__all__ = ["BACKENDS", "BenchConfig", "StreamBenchConfig", "run_bench", "run_stream_bench"]
