"""`trtalk bench`: all backends side by side (latency, throughput, FLOPs, fraction of peak, plots),
or with ``--stream`` the live runtime's mic-to-frame latency."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)


def _csv(kind: type, what: str):
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list, got {text!r}") from None
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    from trtalk.bench.run import BACKENDS

    p = sub.add_parser(
        "bench", help="benchmark every backend side by side (tables, plots), or the live stream",
        description="Time identity / pose / audio / generator and whole frames on each backend and "
                    "batch, with FLOPs and fraction of peak; write results.json, results.md and PNG "
                    "plots into --out (default benchmarks/results/<cpu|gpu name>). Seeded random "
                    "weights unless --checkpoint. Backends that cannot run here are listed with the "
                    "reason. --stream instead measures the streaming runtime's latency.")
    p.add_argument("--backends", type=_csv(str, "--backends"), default=list(BACKENDS),
                   help=f"comma-separated, from {','.join(BACKENDS)} (default: all)")
    p.add_argument("--batch", type=_csv(int, "--batch"), default=[1, 8, 32, 64], help="batch sizes (1,8,32,64)")
    p.add_argument("--precision", type=_csv(str, "--precision"), default=None,
                   help="fp32,fp16 for the backends whose precision is a choice (default: fp32 on CPU, "
                        "fp16,fp32 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per batch (3 CPU, 10 CUDA)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per batch (10 CPU, 100 CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when visible)")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="official checkpoint folder or converted file")
    p.add_argument("--model-config", default=None, choices=("official", "small"),
                   help="official networks (default), or the small dev generator (tests; the default "
                        "of --stream on CPU)")
    p.add_argument("--cache-dir", type=Path, default=None, help="export / engine cache (default trtalk's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and onnxruntime (default: theirs; 1 is steadier on a busy machine)")
    s = p.add_argument_group("streaming (--stream)")
    s.add_argument("--stream", action="store_true", help="measure the live runtime instead (stream.json/.md)")
    s.add_argument("--stream-duration", type=float, default=5.0, metavar="S", help="seconds of stream (5)")
    s.add_argument("--stream-pose", default="video", choices=("video", "still"),
                   help="synthesised head-motion video or the avatar's still pose")
    s.add_argument("--stream-backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"))
    s.add_argument("--stream-batch", type=int, default=4, help="most frames per generator call")
    p.set_defaults(func=_run)


def _command(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "trtalk " + " ".join(shlex.quote(a) for a in args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from trtalk.bench.peaks import machine_info, machine_tag
    from trtalk.bench.report import write_report, write_stream_report
    from trtalk.bench.run import BenchConfig, StreamBenchConfig, run_bench, run_stream_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise TrtalkError(f"--checkpoint {args.checkpoint} does not exist")
    out = args.out or Path("benchmarks") / "results" / machine_tag(machine_info(device))
    command = _command()
    if args.stream:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        mc = args.model_config or ("official" if device.startswith("cuda") else "small")
        cfg = StreamBenchConfig(duration_s=args.stream_duration, pose=args.stream_pose,
                                backend=args.stream_backend, device=device, model_config=mc,
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
    cuda = device.startswith("cuda")
    cfg = BenchConfig(backends=args.backends, batches=args.batch, precisions=args.precision,
                      warmup=args.warmup if args.warmup is not None else (10 if cuda else 3),
                      iters=args.iters if args.iters is not None else (100 if cuda else 10),
                      device=device, checkpoint=args.checkpoint, model_config=args.model_config or "official",
                      seed=args.seed, cache_dir=args.cache_dir, threads=args.threads,
                      command=command)
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
