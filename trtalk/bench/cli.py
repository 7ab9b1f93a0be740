"""`trtalk bench`: all backends side by side (latency, throughput, FLOPs, fraction of peak, plots),
or with ``--stream`` the live runtime's mic-to-frame latency."""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trtalk.bench.run import PRESETS
from trtalk.configcli import add_command, option
from trtalk.errors import TrtalkError
from trtalk.families.pcavs.model import MODEL_CONFIG_HELP

log = logging.getLogger(__name__)


@dataclass
class BenchCommand:
    """`trtalk bench`: what to compare and where to write it; ``--stream`` measures the live runtime."""

    backends: list[Literal[tuple(PRESETS)]] | None = option(  # type: ignore[valid-type]
        None, help="comma-separated rows to compare",
        default_text="all; on CPU all but torch-compile and aot")
    batch: list[int] | None = option(None, bounds=(1, 256),
                                     help="comma-separated batch sizes, each 1 to 256",
                                     default_text="1,8 on CPU, 1,8,32,64 on CUDA")
    precision: list[Literal["fp32", "fp16"]] | None = option(
        None, help="fp32,fp16 for the backends whose precision is a choice",
        default_text="fp32 on CPU, fp16,fp32 on CUDA")
    warmup: int | None = option(None, bounds=(0, 100000),
                                help="untimed runs per batch", default_text="3 CPU, 10 CUDA")
    iters: int | None = option(None, bounds=(1, 100000),
                               help="timed runs per batch", default_text="10 CPU, 100 CUDA")
    device: str | None = option(None, help="cpu or cuda[:N]", default_text="cuda when visible")
    out: Path | None = option(None, help="output folder", default_text="benchmarks/results/<machine>")
    checkpoint: Path | None = option(None, help="official checkpoint folder, converted file, or a "
                                                "`trtalk export --out` folder (onnxruntime and tensorrt run "
                                                "its graphs as they are; torch and aot the weights it was "
                                                "exported from)")
    model_config: Literal["official", "small"] | None = option(
        None, help=MODEL_CONFIG_HELP,
        default_text="official; small for --stream on CPU")
    model: str | None = option(
        None, help="model family of the seeded random weights (with --checkpoint: the checkpoint's; "
                   "`trtalk models` lists them)",
        default_text="pcavs")
    cache_dir: Path | None = option(None, help="export / engine cache", default_text="trtalk's")
    seed: int = option(0, bounds=(0, 2**32 - 1), help="seed of the random weights")
    threads: int | None = option(None, bounds=(1, 1024), help="CPU threads for torch and onnxruntime "
                                                              "(1 is steadier on a busy machine)")
    stream: bool = option(False, section="streaming (--stream)",
                          help="measure the live runtime instead (stream.json/.md)")
    stream_duration: float = option(5.0, section="streaming (--stream)", bounds=(0.01, 3600), metavar="S",
                                    help="seconds of stream")
    stream_pose: Literal["video", "still"] = option("video", section="streaming (--stream)",
                                                    help="synthesised head-motion video or the avatar's still pose")
    stream_backend: Literal["torch", "onnxruntime", "tensorrt", "aot"] = option(
        "torch", section="streaming (--stream)", help="backend of the streamed networks")
    stream_batch: int = option(4, section="streaming (--stream)", bounds=(1, 256),
                               help="most frames per generator call")


def register(sub) -> None:
    add_command(sub, "bench", BenchCommand, _run,
                help="benchmark every backend side by side (tables, plots), or the live stream",
                description="Time identity / pose / audio / generator and whole frames on each backend and "
                            "batch, with FLOPs and fraction of peak; write results.json, results.md and PNG "
                            "plots into --out (default benchmarks/results/<cpu|gpu name>). Seeded random "
                            "weights unless --checkpoint. Backends that cannot run here are listed with the "
                            "reason. On a CPU the default runs batch 1 and 8 and leaves out torch-compile "
                            "and aot, whose first builds compile C++ (measured, small model, 2 cores: "
                            "torch-compile about 120 CPU s per batch size, aot about 100 CPU s once, then cached); "
                            "--model-config small then takes about 35 s (43 CPU s; 19 s once its ONNX export is "
                            "cached) on an idle 2-core machine. --stream instead measures the streaming runtime's latency.",
                basic=("--backends", "--batch", "--device", "--out", "--checkpoint", "--model",
                       "--model-config", "--threads", "--stream"),
                examples=(("trtalk bench --model-config small",
                           "the small model on the default rows, tables and plots in benchmarks/results/ "
                           "(on a CPU: batch 1 and 8, about a minute of CPU)"),
                          ("trtalk bench --model-config small --backends torch,torch-compile,aot --batch 1",
                           "the compiled rows too (on a CPU: minutes of C++ compilation the first time)"),
                          ("trtalk bench --stream --stream-duration 10",
                           "the live runtime's microphone-to-frame latency")))


def _command(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "trtalk " + " ".join(shlex.quote(a) for a in args)


def _run(args: BenchCommand) -> int:
    import torch

    from trtalk import threads
    from trtalk.bench.peaks import machine_info, machine_tag
    from trtalk.bench.report import write_report, write_stream_report
    from trtalk.bench.run import BenchConfig, StreamBenchConfig, default_plan, run_bench, run_stream_bench

    from trtalk.runtime.pipeline import MAX_BATCH

    bad = [b for b in list(args.batch or []) + [args.stream_batch] if not 1 <= b <= MAX_BATCH]
    if bad:
        raise TrtalkError(f"batch {bad[0]} is out of range: 1 to {MAX_BATCH}")
    for name, value in (("--warmup", args.warmup), ("--iters", args.iters)):
        if value is not None and not 0 <= value <= 100_000:
            raise TrtalkError(f"{name} {value} is out of range: 0 to 100000")
    if not 0 < args.stream_duration <= 3600:
        raise TrtalkError("--stream-duration must be in (0, 3600] seconds")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise TrtalkError(f"--checkpoint {args.checkpoint} does not exist")
    out = args.out or Path("benchmarks") / "results" / machine_tag(machine_info(device))
    command = _command()
    # trtalk's CPU thread policy, as render and stream apply it: --threads (else $TRTALK_THREADS,
    # else the CPUs this process may use) compute threads for torch and onnxruntime, one
    # inter-op thread, idle workers sleeping (trtalk/threads.py)
    threads.apply(args.threads)
    if args.stream:
        mc = args.model_config or ("official" if device.startswith("cuda") else "small")
        cfg = StreamBenchConfig(duration_s=args.stream_duration, pose=args.stream_pose,
                                backend=args.stream_backend, device=device, model_config=mc,
                                model=args.model,
                                checkpoint=args.checkpoint, batch=args.stream_batch, seed=args.seed,
                                command=command)
        with tempfile.TemporaryDirectory(prefix="trtalk-bench-") as tmp:
            result = run_stream_bench(cfg, Path(tmp))
        paths = write_stream_report(result, out)
        lat = result["latency_ms"]
        mic = lat["mic_to_frame (compute + queueing)"]
        print(f"stream: lookahead {1000 * result['lookahead_s']:.0f} ms (algorithmic); mic->frame "
              f"p50 {mic['p50']} / p99 {mic['p99']} ms (compute + queueing); fps {result['fps']}")
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    plan = default_plan(device)
    left_out = plan.left_out if args.backends is None else {}
    cfg = BenchConfig(backends=list(args.backends or PRESETS), batches=list(args.batch or plan.batches),
                      precisions=args.precision,
                      warmup=args.warmup if args.warmup is not None else plan.warmup,
                      iters=args.iters if args.iters is not None else plan.iters,
                      device=device, checkpoint=args.checkpoint, model_config=args.model_config or "official",
                      model=args.model,
                      seed=args.seed, cache_dir=args.cache_dir, threads=args.threads,
                      command=command, left_out=left_out)
    if left_out:
        everything = ",".join(b for b in PRESETS if not PRESETS[b].cuda_only)
        print(f"bench: {' and '.join(left_out)} left out on {device} (their first build compiles C++ "
              f"for minutes); to include them: --backends {everything}", file=sys.stderr)
    result = run_bench(cfg)
    paths = write_report(result, out)
    for run in result["runs"]:
        if not run["available"]:
            print(f"{run['label']}: not run: {run['reason']}")
            continue
        for row in run["batches"]:
            print(f"{run['label']:>16} b={row['batch']:<3} frame p50 {row['ms']['frame']['p50']:9.3f} ms "
                  f"({row['frames_per_s']:9.2f} frames/s), generator {row['ms']['generator']['p50']:9.3f} ms")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
