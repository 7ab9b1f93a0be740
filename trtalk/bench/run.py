"""Timing of every backend on the four stages and on whole frames; the streaming measure.

Promises of `run_bench`:

- Every requested backend appears in the result, once per precision it was asked in; one that
  cannot run here has ``available: False`` and a one-line ``reason`` (nothing is silently
  skipped).
- Per backend and batch: identity (timed alone; once per avatar, so *not* part of a frame),
  pose, audio and generator latencies, and the whole frame = pose + audio + style + generator run
  back to back, each iteration timed as one unit; p50/p90/p99 in ms over ``iters`` runs after
  ``warmup`` runs. On CUDA with CUDA events (the work is asynchronous), on CPU with
  ``time.perf_counter``.
- frames/s = batch / frame p50. FLOP/s = counted FLOPs x batch / p50, and its fraction of the
  device peak for the backend's precision.
- Memory: on CUDA ``torch.cuda.max_memory_allocated`` (torch's allocator only: onnxruntime /
  TensorRT allocations are outside it, so also the device's used memory from ``mem_get_info``);
  on CPU the peak resident set size of the whole process, sampled every 2 ms with psutil while
  the backend runs, and its growth over the RSS before the backend was loaded.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import torch

from trtalk.bench.flops import compare_with_design, count_stage_flops
from trtalk.bench.peaks import device_peak, machine_info, machine_tag
from trtalk import progress
from trtalk.errors import TrtalkError
from trtalk.export.stages import example_inputs, stage_specs
from trtalk.families import registry

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Preset:
    """One row group of the comparison: a runner backend with runner options (`RunnerOptions`)."""

    backend: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    cuda_only: bool = False

    @property
    def precision(self) -> str | None:
        return self.options.get("precision")


#: The rows `trtalk bench` compares, in report order: each is `open_runner` with options.
PRESETS: dict[str, Preset] = {
    "torch-ref": Preset("torch", "official formulation: eager fp32, generator modconv 'grouped' "
                        "(per-sample weights)", {"modconv": "grouped", "precision": "fp32"}),
    "torch": Preset("torch", "eager fp32, decomposed modulated convs", {"precision": "fp32"}),
    "torch-fp16": Preset("torch", "eager fp16 + channels_last, decomposed", {"precision": "fp16"}, True),
    "torch-cudagraph": Preset("torch", "fp16 + channels_last + one CUDA graph per batch, decomposed",
                              {"precision": "fp16", "cuda_graphs": True}, True),
    "torch-compile": Preset("torch", "torch.compile (inductor) of the decomposed model", {"compile": True}),
    "triton": Preset("torch", "fp16, generator modconv 'triton' (fused Triton kernels)",
                     {"precision": "fp16", "modconv": "triton"}, True),
    "onnxruntime": Preset("onnxruntime", "ONNX Runtime over the exported graphs (CUDA EP when "
                          "installed, else CPU)"),
    "tensorrt": Preset("tensorrt", "TensorRT (or TensorRT-RTX) engines built from the exported graphs",
                       {}, True),
    "aot": Preset("aot", "torch.export + AOTInductor packages from the engine cache, dynamic batch "
                  "(fp16 on CUDA, fp32 on CPU; built on first use, loaded without compiling)", {}),
}
BACKENDS: dict[str, str] = {name: p.description for name, p in PRESETS.items()}

#: Rows the default run leaves out on a CPU, each with why (shown as the row's reason, and said
#: before the run): their first build compiles C++ for minutes of CPU, more than every other row
#: together (`DefaultPlan`). Naming them in --backends runs them.
CPU_LEFT_OUT: dict[str, str] = {
    "torch-compile": "left out of the default CPU run: Inductor compiles C++ for each stage and "
                     "again for each new batch size (small model, 2 cores: about 120 CPU s per batch "
                     "size); add it to --backends to run it",
    "aot": "left out of the default CPU run: its first build compiles one AOTInductor package per "
           "stage (small model, 2 cores: about 100 CPU s; cached afterwards); add it to --backends "
           "to run it",
}
FRAME_STAGES = ("pose", "audio", "generator")
PRECISIONS = ("fp32", "fp16")

# Performance targets of the project (H100, FP16, batch 1 unless said): for the report only.
TARGETS = (
    {"what": "generator latency, batch 1", "target": "<= 0.5 ms", "metric": "generator_ms_b1"},
    {"what": "frame latency (pose + audio + generator), batch 1", "target": "<= 1 ms",
     "metric": "frame_ms_b1"},
    {"what": "speed-up of the frame over torch-ref, batch 1", "target": ">= 20x", "metric": "speedup_b1"},
    {"what": "frames/s at batch 64", "target": ">= 3000", "metric": "fps_b64"},
)
TARGET_DEVICE = "H100, FP16"


@dataclass
class BenchConfig:
    """Options of one `trtalk bench` run (see `trtalk bench --help`)."""

    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    batches: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    precisions: list[str] | None = None  # None: fp32 on CPU; fp16 then fp32 on CUDA
    warmup: int = 3
    iters: int = 20
    device: str = "cpu"
    checkpoint: Path | None = None
    model_config: str = "official"  # "official" | "small"
    model: str | None = None  # family (`trtalk models`); None: the checkpoint's, else PC-AVS
    seed: int = 0
    cache_dir: Path | None = None
    threads: int | None = None  # CPU threads for torch and onnxruntime; None = their defaults
    command: str = ""
    # rows listed in the report with this reason and not run (the default CPU plan: CPU_LEFT_OUT)
    left_out: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise TrtalkError("--threads must be >= 1")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise TrtalkError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        if not self.backends:
            raise TrtalkError("--backends is empty")
        if not self.batches or any(b < 1 for b in self.batches):
            raise TrtalkError("--batch takes positive integers, e.g. 1,8,32,64")
        if self.precisions is not None:
            bad = [p for p in self.precisions if p not in PRECISIONS]
            if bad or not self.precisions:
                raise TrtalkError(f"--precision takes fp32 and/or fp16, got {','.join(self.precisions)}")
        if self.warmup < 0 or self.iters < 1:
            raise TrtalkError("--warmup must be >= 0 and --iters >= 1")
        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")
        if self.checkpoint is not None and self.model_config == "small":
            raise TrtalkError("--model-config small is for random weights; drop --checkpoint or it")
        if self.model is not None:
            spec = registry.get(self.model)  # TrtalkError naming the choices
            if not spec.stages and spec.bench_note:
                raise TrtalkError(f"--model {self.model}: {spec.bench_note}")
            registry.with_stages(spec)  # TrtalkError naming the families with stages
        from trtalk.engine.runner import check_device

        check_device(self.device)

    @property
    def family(self) -> str:
        """The model family: the checkpoint's, else ``model``, else PC-AVS."""
        from trtalk.export.exporter import DEFAULT_FAMILY

        if self.checkpoint is not None:
            from trtalk.engine.runner import source_family
            from trtalk.runtime.options import is_export_folder

            if is_export_folder(self.checkpoint):  # an export folder: its manifest's family
                return source_family(self.checkpoint, self.model or DEFAULT_FAMILY)
            return registry.detect(self.checkpoint, fallback=self.model or DEFAULT_FAMILY)
        return self.model or DEFAULT_FAMILY

    @property
    def architecture(self) -> Any:
        """The architecture of the family's random weights (official or small)."""
        if self.model_config == "small":
            from trtalk.export.exporter import small_config

            return small_config(self.family)
        spec = registry.get(self.family)
        assert spec.official_config is not None
        return spec.official_config()

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def wanted_precisions(self) -> list[str]:
        if self.precisions is not None:
            return list(self.precisions)
        return ["fp16", "fp32"] if self.is_cuda else ["fp32"]


@dataclass(frozen=True)
class DefaultPlan:
    """What `trtalk bench` runs when the command line does not say: batch sizes, untimed and
    timed runs per batch, and the rows left out (with why).

    On a CPU: batch 1 and 8 (a CPU's frames/s no longer grows past a few frames, while batch 32
    and 64 cost 4x and 8x batch 8: they were most of the old default's time), 3 + 10 runs, and
    every row but those of `CPU_LEFT_OUT`. On CUDA: batch 1, 8, 32, 64, 10 + 100 runs, every row.
    """

    batches: tuple[int, ...]
    warmup: int
    iters: int
    left_out: dict[str, str]


def default_plan(device: str) -> DefaultPlan:
    """The `DefaultPlan` of ``device`` ("cpu", "cuda", "cuda:N")."""
    if device.startswith("cuda"):
        return DefaultPlan(batches=(1, 8, 32, 64), warmup=10, iters=100, left_out={})
    return DefaultPlan(batches=(1, 8), warmup=3, iters=10, left_out=dict(CPU_LEFT_OUT))


# ------------------------------------------------------------------------------ measuring


class RssSampler:
    """Peak resident set size of this process while the ``with`` block runs (bytes)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process()
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(a.mean()), 4), "min": round(float(a.min()), 4), "n": int(a.size)}


class Timer:
    """Marks points in a sequence of GPU/CPU work; ``intervals()`` -> ms between marks."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


# ------------------------------------------------------------------------------ backends


@dataclass
class Variant:
    """One row group of the report: a backend at one precision."""

    backend: str
    precision: str
    label: str
    reason: str | None = None  # why it cannot run here (None: it can)
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def plan_variants(cfg: BenchConfig) -> list[Variant]:
    """Backend x precision rows, with the reasons known before loading anything."""
    out: list[Variant] = []
    cuda = cfg.is_cuda
    for b in cfg.backends:
        fixed = PRESETS[b].precision
        precs = [fixed] if fixed else cfg.wanted_precisions()
        for p in precs:
            label = b if (fixed or len(precs) == 1) else f"{b} {p}"
            v = Variant(b, p, label, device=cfg.device)
            if b in cfg.left_out:
                v.reason = cfg.left_out[b]
            elif PRESETS[b].cuda_only and not cuda:
                v.reason = (f"needs a CUDA GPU; running on {cfg.device} "
                            f"(torch.cuda.is_available() = {torch.cuda.is_available()})")
            elif b == "torch-compile" and p == "fp16" and not cuda:
                v.reason = "fp16 torch.compile needs a CUDA GPU (fp16 convolutions on CPU are not a real path)"
            elif b == "aot" and p == "fp16" and not cuda:
                v.reason = "fp16 AOT packages are built for CUDA; on the CPU they are fp32"
            elif b == "onnxruntime" and p == "fp16" and not cuda:
                v.notes.append("fp16 graph on the CPU provider: runs through casts, expect it slower")
            out.append(v)
    return out


def open_variant(model: torch.nn.Module, v: Variant, cfg: BenchConfig):
    """The loaded runner of ``v`` (`open_runner` with the preset's options); raises with a reason
    where it cannot run."""
    from trtalk.engine.runner import RunnerOptions, open_runner

    preset = PRESETS[v.backend]
    opts = RunnerOptions(**{"precision": v.precision, **preset.options}, max_batch=max(cfg.batches),
                         cache_dir=cfg.cache_dir, config=cfg.architecture, seed=cfg.seed,
                         family=cfg.family,
                         threads=cfg.threads if preset.backend == "onnxruntime" else None)
    if preset.backend == "torch":
        source = model
        if opts.compile:
            v.notes.append("compile time is in the warm-up (recompiles per batch size), not in the latencies")
    else:
        source = str(cfg.checkpoint) if cfg.checkpoint is not None else None
    device = cfg.device
    if preset.backend == "onnxruntime" and cfg.is_cuda:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            device = "cpu"
            v.notes.append("this onnxruntime has no CUDA provider: measured on the CPU")
    v.device = device
    return open_runner(preset.backend, source, device, opts)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------ timing


def _inputs(model: torch.nn.Module, batch: int, device: str) -> dict[str, torch.Tensor]:
    specs = stage_specs(model)
    (image,) = example_inputs(specs["identity"], batch, seed=1)
    (mel,) = example_inputs(specs["audio"], batch, seed=2)
    style, id_map = example_inputs(specs["generator"], batch, seed=3)
    id_dim = next(int(t.shape[1]) for t in specs["identity"].outputs if t.name == "id_vector")
    return {k: v.to(device) for k, v in
            {"image": image, "mel": mel, "id_vector": style[:, :id_dim].contiguous(), "id_map": id_map}.items()}


def time_identity(runner: Any, x: dict[str, torch.Tensor], cfg: BenchConfig) -> list[float]:
    ms: list[float] = []
    for i in range(cfg.warmup + cfg.iters):
        t = Timer(cfg.is_cuda and x["image"].is_cuda)
        t.mark()
        runner.encode_identity(x["image"])
        t.mark()
        if i >= cfg.warmup:
            ms += t.intervals()
    return ms


def time_frames(runner: Any, x: dict[str, torch.Tensor], cfg: BenchConfig) -> dict[str, list[float]]:
    """Runs the frame's networks (`Runner.frame`) ``warmup + iters`` times; ms per part and frame.

    A graphed runner replays the frame as one graph: its parts are then timed as their own graphs
    (pose, audio, generator one after the other) and the frame as the one graph it is.
    """
    out: dict[str, list[float]] = {"pose": [], "audio": [], "generator": [], "frame": []}
    if getattr(runner, "graphed", False):
        style = torch.cat([x["id_vector"], runner.encode_audio(x["mel"]), runner.encode_pose(x["image"])], 1)
        for i in range(cfg.warmup + cfg.iters):
            t = Timer(cfg.is_cuda and x["image"].is_cuda)
            t.mark()
            runner.encode_pose(x["image"])
            t.mark()
            runner.encode_audio(x["mel"])
            t.mark()
            runner.generate(style, x["id_map"])
            t.mark()
            runner.frame(x["mel"], x["image"], x["id_vector"], x["id_map"])
            t.mark()
            if i >= cfg.warmup:
                p, a, g, f = t.intervals()
                for k, v in zip(("pose", "audio", "generator", "frame"), (p, a, g, f)):
                    out[k].append(v)
        return out
    for i in range(cfg.warmup + cfg.iters):
        t = Timer(cfg.is_cuda and x["image"].is_cuda)
        t.mark()
        runner.frame(x["mel"], x["image"], x["id_vector"], x["id_map"], mark=t.mark)
        if i >= cfg.warmup:
            p, a, g = t.intervals()
            out["pose"].append(p)
            out["audio"].append(a)
            out["generator"].append(g)
            out["frame"].append(p + a + g)
    return out


def _memory_cuda(device: str) -> dict[str, Any]:
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return {"kind": "cuda: torch.cuda.max_memory_allocated (torch allocator only) + device used "
                    "memory from cudaMemGetInfo",
            "torch_peak_bytes": int(torch.cuda.max_memory_allocated(torch.device(device))),
            "device_used_bytes": int(total - free)}


def bench_variant(model: torch.nn.Module, v: Variant, cfg: BenchConfig, flops: dict[str, int],
                  step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure one variant over all batches; never raises for a backend that cannot run.

    ``step`` (progress) is called with what starts next: the load, then each batch."""
    step = step or (lambda _name: None)
    entry: dict[str, Any] = {"label": v.label, "backend": v.backend, "precision": v.precision,
                             "description": BACKENDS[v.backend], "available": v.reason is None,
                             "reason": v.reason, "device": v.device, "notes": v.notes, "batches": []}
    if v.reason is not None:
        log.info("%s: unavailable (%s)", v.label, v.reason)
        return entry
    on_cuda = cfg.is_cuda
    peak = None
    try:
        with RssSampler() as rss:
            t0 = time.perf_counter()
            step(f"{v.label}: load")
            runner = open_variant(model, v, cfg)
            entry["load_s"] = round(time.perf_counter() - t0, 3)
            entry["device"] = v.device
            peak = device_peak(v.device, v.precision)
            entry["peak"] = peak.to_dict()
            entry["stage_backends"] = {s: repr(b) for s, b in runner.backends.items()}
            for batch in cfg.batches:
                step(f"{v.label} b={batch}")
                if on_cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                x = _inputs(model, batch, cfg.device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    ident = time_identity(runner, x, cfg)
                    parts = time_frames(runner, x, cfg)
                row: dict[str, Any] = {"batch": batch, "wall_s": round(time.perf_counter() - t0, 3),
                                       "timer": "cuda events" if on_cuda else "time.perf_counter",
                                       "ms": {"identity": percentiles(ident),
                                              **{k: percentiles(s) for k, s in parts.items()}}}
                frame_ms = row["ms"]["frame"]["p50"]
                row["frames_per_s"] = round(batch / (frame_ms / 1e3), 3)
                row["achieved_tflops"] = {}
                row["fraction_of_peak"] = {}
                frame_flops = sum(flops[s] for s in FRAME_STAGES)
                timed = [(s, f) for s, f in flops.items() if s in row["ms"]]  # pose_mouth: not timed here
                for s, f in [*timed, ("frame", frame_flops)]:
                    rate = f * batch / (row["ms"][s]["p50"] / 1e3)
                    row["achieved_tflops"][s] = round(rate / 1e12, 6)
                    row["fraction_of_peak"][s] = round(rate / peak.flops, 6) if peak.flops else None
                if on_cuda:
                    row["memory"] = _memory_cuda(cfg.device)
                log.info("%s b=%d: frame p50 %.3f ms (%.1f frames/s), generator p50 %.3f ms",
                         v.label, batch, frame_ms, row["frames_per_s"], row["ms"]["generator"]["p50"])
                entry["batches"].append(row)
                del x
            del runner
    except (TrtalkError, Exception) as exc:  # noqa: BLE001 - any failure is reported, not raised
        log.warning("%s: cannot run here: %s", v.label, _reason(exc))
        entry["available"] = bool(entry["batches"])
        entry["reason"] = _reason(exc) if not entry["batches"] else None
        if entry["batches"]:
            entry["notes"].append(f"stopped after batch {entry['batches'][-1]['batch']}: {_reason(exc)}")
    finally:
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    entry["host_memory"] = {
        "kind": "host: peak RSS of the whole process while this backend ran, sampled every 2 ms "
                "(psutil); growth = peak - RSS before it was loaded",
        "peak_rss_bytes": int(rss.peak),
        "growth_bytes": int(rss.peak - rss.baseline),
        "process_ru_maxrss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
    }
    return entry


def _summaries(runs: list[dict[str, Any]], flops: dict[str, int]) -> dict[str, Any]:
    """Speed-ups over torch-ref per stage and batch; the target metrics of the best backend."""
    avail = [r for r in runs if r["available"] and r["batches"]]
    by_label = {r["label"]: {b["batch"]: b for b in r["batches"]} for r in avail}
    ref = by_label.get("torch-ref")
    speedups: dict[str, dict[str, dict[str, float]]] = {}
    if ref:
        for label, rows in by_label.items():
            speedups[label] = {}
            for batch, row in rows.items():
                if batch in ref:
                    speedups[label][str(batch)] = {
                        s: round(ref[batch]["ms"][s]["p50"] / row["ms"][s]["p50"], 3)
                        for s in ("identity", *FRAME_STAGES, "frame")}
    best: dict[str, Any] = {}

    def pick(batch: int, key: Callable[[dict], float]) -> tuple[str, dict] | None:
        c = [(label, rows[batch]) for label, rows in by_label.items() if batch in rows]
        return min(c, key=lambda lr: key(lr[1])) if c else None

    b1 = pick(1, lambda r: r["ms"]["frame"]["p50"])
    if b1:
        best["generator_ms_b1"] = {"value": min(rows[1]["ms"]["generator"]["p50"] for rows in by_label.values()
                                                if 1 in rows), "backend": pick(1, lambda r: r["ms"]["generator"]["p50"])[0]}
        best["frame_ms_b1"] = {"value": b1[1]["ms"]["frame"]["p50"], "backend": b1[0]}
        if ref and 1 in ref:
            best["speedup_b1"] = {"value": round(ref[1]["ms"]["frame"]["p50"] / b1[1]["ms"]["frame"]["p50"], 3),
                                  "backend": b1[0]}
    b64 = pick(64, lambda r: -r["frames_per_s"])
    if b64:
        best["fps_b64"] = {"value": b64[1]["frames_per_s"], "backend": b64[0]}
    return {"speedup_vs_torch_ref_p50": speedups, "best": best}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole comparison; the result is what `trtalk.bench.report` writes (results.json)."""
    from trtalk.export.exporter import load_model

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    info = machine_info(cfg.device)
    t0 = time.perf_counter()
    from trtalk.runtime.options import is_export_folder

    if is_export_folder(cfg.checkpoint):
        # an export folder: its graphs on onnxruntime / tensorrt (used as they are), the weights it
        # was made from on torch / aot (and for the FLOP count)
        from trtalk.engine.runner import export_source_model
        from trtalk.export.manifest import Manifest

        model, record = export_source_model(Path(cfg.checkpoint), "torch"), Manifest.read(cfg.checkpoint).checkpoint  # type: ignore[arg-type]
    else:
        model, record = load_model(str(cfg.checkpoint) if cfg.checkpoint else None, seed=cfg.seed,
                                   config=None if cfg.checkpoint else cfg.architecture, family=cfg.family)
    model = model.eval()
    flops = count_stage_flops(model)
    flop_check = compare_with_design(flops, official=cfg.model_config == "official", family=cfg.family)
    log.info("FLOPs per frame (GFLOP): %s", {s: round(f / 1e9, 3) for s, f in flops.items()})
    variants = plan_variants(cfg)
    # one step per load and per batch of each row that runs, one per row that does not
    sizes = [1 + len(cfg.batches) if v.reason is None else 1 for v in variants]
    with progress.steps(sum(sizes), "bench", unit="step") as bar:
        runs = []
        for v, size in zip(variants, sizes):
            calls: list[str] = []

            def step(name: str, calls: list[str] = calls) -> None:
                calls.append(name)
                bar.next(name)

            if v.reason is not None:
                step(f"{v.label}: not run")
            runs.append(bench_variant(model, v, cfg, flops, step=step))
            if len(calls) < size:  # a row that stopped early: count the steps it did not take
                bar.bar.update(size - len(calls))
    on_gpu = cfg.is_cuda and info.get("gpu")
    result = {
        "schema": "trtalk-bench/1",
        "command": cfg.command,
        "machine": info,
        "machine_tag": machine_tag(info),
        "config": {**{k: (str(v) if isinstance(v, Path) else v)
                      for k, v in dataclasses.asdict(cfg).items() if k not in ("command",)},
                   "precisions": cfg.wanted_precisions(),
                   "threads_in_use": torch.get_num_threads(),
                   "weights": "checkpoint" if not record.get("random_weights") else
                              f"seeded random (seed {record.get('seed', cfg.seed)}); "
                              "timing does not depend on weight values",
                   "checkpoint_sha256": record.get("sha256")},
        "family": cfg.family,
        "frame_definition": "frame = pose + audio + style concat + generator for `batch` frames, run back "
                            "to back; identity is encoded once per avatar and is shown but NOT in the frame"
                            + (f"; {registry.get(cfg.family).title}: 'pose' is its "
                               f"{registry.get(cfg.family).pose_stage} stage (the pose codes of the style)"
                               if registry.get(cfg.family).pose_stage != "pose" else ""),
        "flops_per_frame": {s: int(f) for s, f in flops.items()},
        "flops_frame": int(sum(flops[s] for s in FRAME_STAGES)),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode on the PyTorch stage modules at batch 1 "
                        "(generator in the official grouped form); matmul/conv FLOPs, 2 per MAC",
        "flops_vs_design": flop_check,
        "peaks": {p: device_peak(cfg.device, p).to_dict() for p in cfg.wanted_precisions()},
        "runs": runs,
        "targets": {"device": TARGET_DEVICE, "measured_here": bool(on_gpu), "items": list(TARGETS)},
        "wall_s": None,
    }
    result.update(_summaries(runs, flops))
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    return result


# ------------------------------------------------------------------------------ streaming


@dataclass
class StreamBenchConfig:
    """Options of `trtalk bench --stream`."""

    duration_s: float = 5.0
    pose: str = "video"  # "video": synthesised head motion; "still": the avatar's own pose
    backend: str = "torch"
    device: str = "cpu"
    model_config: str = "small"
    checkpoint: Path | None = None
    model: str | None = None  # family of the random weights (`trtalk models`); None: PC-AVS
    batch: int = 4
    fps: float = 25.0
    seed: int = 0
    command: str = ""

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise TrtalkError("--stream-duration must be > 0 s")
        if self.pose not in ("video", "still"):
            raise TrtalkError("--stream-pose is video or still")
        if self.model_config not in ("official", "small"):
            raise TrtalkError("--model-config is official or small")


def head_motion_video(path: Path, photo: Path, seconds: float, fps: float = 25.0, size: int = 256) -> None:
    """Write an mp4 of ``photo`` with a slow head-like wobble (rotation +-8 deg, a few px shift).

    Same motion as the test suite's pose fixture: rotation ``8 sin(2 pi t / 2)`` deg about the face
    centre (0.44, 0.23 of the astronaut photo), shifts (4 sin(2 pi t / 1.3), 3 sin(2 pi t / 1.7 +
    0.5)) px, the square around the face cropped to ``size``.
    """
    import cv2

    from trtalk.media.read import iter_frames
    from trtalk.media.mp4 import Mp4Sink

    rgb = next(iter(iter_frames(photo)))
    h, w = rgb.shape[:2]
    cx, cy, crop = 0.44 * w, 0.23 * h, 0.44 * min(h, w)
    scale = size / crop
    with Mp4Sink(path, fps=fps) as sink:
        for i in range(max(2, int(round(seconds * fps)))):
            t = i / fps
            m = cv2.getRotationMatrix2D((cx, cy), 8.0 * np.sin(2 * np.pi * t / 2.0), scale)
            m[0, 2] += size / 2 - cx + 4.0 * np.sin(2 * np.pi * t / 1.3) * scale
            m[1, 2] += size / 2 - cy + 3.0 * np.sin(2 * np.pi * t / 1.7 + 0.5) * scale
            sink.write(cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT101))


def run_stream_bench(cfg: StreamBenchConfig, workdir: Path) -> dict[str, Any]:
    """Run the live runtime on a real-time clock from file sources; its latency report, split.

    The avatar is trtalk/assets/astronaut.png, the audio trtalk/assets/demo_speech.wav (looped if
    shorter than the duration), the pose a synthesised head-motion video (written into
    ``workdir``) or the avatar's own pose. The latency report is the runtime's own
    (`trtalk.runtime.latency`): lookahead = where the frame's audio window ends past the frame's
    time (algorithmic); mic->frame = emission - capture of the last audio sample needed (compute
    + queueing); speech->frame = both.
    """
    from trtalk.audio import audio_lookahead_s
    from trtalk.runtime.clock import RealClock
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.sources import AudioFileSource
    from trtalk.runtime.options import ModelOptions
    from trtalk.runtime.stream import StreamConfig, StreamPipeline, pose_file_source

    assets = Path(__file__).resolve().parents[1] / "assets"
    avatar, speech = assets / "astronaut.png", assets / "demo_speech.wav"
    # The checkpoint's family (PC-AVS or PD-FGC) when one is given; else --model's (PC-AVS).
    from trtalk.export.exporter import DEFAULT_FAMILY

    model = ModelOptions(model=None if cfg.checkpoint is not None else (cfg.model or DEFAULT_FAMILY), checkpoint=cfg.checkpoint, backend=cfg.backend, device=cfg.device,
                         seed=cfg.seed, model_config=cfg.model_config)
    family = model.open(cfg.fps)
    scfg = StreamConfig(face=avatar, fps=cfg.fps, duration=cfg.duration_s, batch=cfg.batch, model=model)
    audio = AudioFileSource(speech)
    if len(audio.wave) / 16000.0 < cfg.duration_s:  # loop a short file (running gain, then)
        audio.close()
        audio = AudioFileSource(speech, loop=True)
    pose = None
    if cfg.pose == "video":
        video = workdir / "pose.mp4"
        head_motion_video(video, avatar, min(cfg.duration_s, 4.0), cfg.fps)
        pose = pose_file_source(video, scfg)
    t0 = time.perf_counter()
    with NullSink() as sink:
        pipe = StreamPipeline(scfg, family, audio, pose, [sink], RealClock())
        setup_s = time.perf_counter() - t0
        report = pipe.run()
    rep = report.to_dict()
    lookahead_s = audio_lookahead_s(cfg.fps)
    mic = rep["mic_to_frame_ms"]
    compute = rep["compute_ms_per_frame"]
    return {
        "schema": "trtalk-bench-stream/1",
        "command": cfg.command,
        "machine": machine_info(cfg.device),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
                   if k != "command"},
        "inputs": {"avatar": "trtalk/assets/astronaut.png", "audio": "trtalk/assets/demo_speech.wav",
                   "pose": "synthesised head-motion video (rotation +-8 deg), looped" if cfg.pose == "video"
                   else "still: the avatar's own pose", "clock": "real time"},
        "setup_s": round(setup_s, 3),
        "lookahead_s": lookahead_s,
        "latency_ms": {
            "algorithmic_lookahead": rep["lookahead_ms"],
            "mic_to_frame (compute + queueing)": mic,
            "speech_to_frame (lookahead + compute + queueing)": rep["speech_to_frame_ms"],
            "compute_per_frame": compute,
            "queueing_p50_estimate": (round(mic["p50"] - compute, 3)
                                      if mic["p50"] is not None and compute is not None else None),
        },
        "fps": rep["fps_achieved"],
        "frames": rep["frames"],
        "frames_dropped": rep["frames_dropped"],
        "report": rep,
    }

