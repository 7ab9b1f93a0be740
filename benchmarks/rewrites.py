"""Time the exact inference rewrites (trtalk.models.fuse) per stage, before and after.

    python benchmarks/rewrites.py                          # full size, batch 1, 1 thread
    python benchmarks/rewrites.py --stages generator pose --iters 5 --batches 1 8
    python benchmarks/rewrites.py --smoke                  # small config, seconds

For every stage, the variants are: ``grouped`` (the generator's official form, no rewrite; encoders
have no such variant), ``decomposed`` (the stage as before the rewrites), ``fused`` (every rewrite)
and, for the generator, ``fused-no-blur-fold`` (every rewrite but the blur fold: what
`FuseOptions.for_device("cpu")` gives). Each time is the median of ``--iters`` calls after one
warm-up, the variants called in turns (a round of one call each, ``--iters`` rounds) so that load
from other processes falls on all of them alike; the max abs difference of every variant from the first one is recorded with it.
Writes ``rewrites_<tag>.json`` and ``.md`` into --out (default benchmarks/results/<tag>/).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trtalk.bench.peaks import machine_info, machine_tag  # noqa: E402
from trtalk.export.stages import STAGES, example_inputs, stage_module, stage_specs  # noqa: E402
from trtalk.families.pcavs import PCAVS, PCAVSConfig  # noqa: E402
from trtalk.fsutil import atomic_output  # noqa: E402
from trtalk.models.fuse import FuseOptions  # noqa: E402

log = logging.getLogger("benchmarks.rewrites")


def variants(stage: str) -> dict[str, dict]:
    """Variant name -> stage_module keyword arguments."""
    out = {}
    if stage == "generator":
        out["grouped"] = {"modconv": "grouped"}
    out["decomposed"] = {"modconv": "decomposed", "fuse": False}
    out["fused"] = {"modconv": "decomposed", "fuse": True}
    if stage == "generator":
        out["fused-no-blur-fold"] = {"modconv": "decomposed", "fuse": FuseOptions(fold_up_blur=False)}
    return out


def time_round_robin(fns: dict[str, Callable[[], object]], iters: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Milliseconds of ``iters`` calls of each fn, taken in turns (one call of each per round), so
    load from other processes on a shared machine falls on every variant alike."""
    for fn in fns.values():
        fn()  # warm-up (oneDNN primitive creation, allocator)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    config = PCAVSConfig.small() if args.smoke else PCAVSConfig()
    model = PCAVS.random(0, config)
    specs = stage_specs(model)
    info = machine_info(str(device))
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": info,
              "device": str(device), "threads": args.threads, "iters": args.iters,
              "config": "small" if args.smoke else "official",
              "loadavg_start": list(os.getloadavg()), "rows": []}
    for stage in args.stages:
        for b in args.batches:
            inputs = tuple(x.to(device) for x in example_inputs(specs[stage], batch=b, seed=1))
            mods = {name: stage_module(model, stage, **kw).to(device)
                    for name, kw in variants(stage).items()}
            with torch.inference_mode():
                outs = {}
                for name, mod in mods.items():
                    out = mod(*inputs)
                    outs[name] = out if isinstance(out, tuple) else (out,)
                fns = {name: (lambda m=mod: m(*inputs)) for name, mod in mods.items()}
                times = time_round_robin(fns, args.iters, device)
            ref = next(iter(outs.values()))
            for name, t in times.items():
                err = max(float((o - r).abs().max()) for o, r in zip(outs[name], ref))
                row = {"stage": stage, "batch": b, "variant": name, "median_ms": statistics.median(t),
                       "min_ms": min(t), "times_ms": [round(x, 2) for x in t],
                       "max_abs_diff_vs_first": err}
                result["rows"].append(row)
                log.info("%-9s b=%-3d %-20s median %8.1f ms  min %8.1f ms  max|diff| %.3g",
                         stage, b, name, row["median_ms"], row["min_ms"], err)
            del mods, fns
    result["loadavg_end"] = list(os.getloadavg())  # other processes on a shared machine
    return result


def markdown(r: dict) -> str:
    lines = ["# Exact rewrites: before / after", "", f"Command: `{r['command']}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in r["machine"].items()), "",
             f"device {r['device']}, {r['threads']} thread(s), config {r['config']}, "
             f"median of {r['iters']} calls after 1 warm-up, "
             "variants timed in turns; 1/5/15-min load average at start "
             f"{r['loadavg_start']}, at end {r['loadavg_end']}", "",
             "| stage | batch | variant | median ms | min ms | max abs diff vs first row |",
             "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['stage']} | {x['batch']} | {x['variant']} | {x['median_ms']:.1f} | "
                     f"{x['min_ms']:.1f} | {x['max_abs_diff_vs_first']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", choices=STAGES, default=["generator", "pose"])
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="small config (seconds)")
    p.add_argument("--out", help="output directory (default benchmarks/results/<machine tag>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = run(args)
    tag = "smoke" if args.smoke else machine_tag(r["machine"])
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / tag
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(r, indent=1)), (".md", markdown(r))):
        path = out / f"rewrites_{tag}{suffix}"
        with atomic_output(path) as tmp:
            tmp.write_text(text)
    log.info("wrote %s", out / f"rewrites_{tag}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
