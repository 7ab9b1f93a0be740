"""Benchmark the modulated-conv implementations per layer and for the whole generator.

    python benchmarks/kernels.py                 # on a GPU: batches 1, 8, 64, all impls
    python benchmarks/kernels.py --smoke         # anywhere, seconds: CPU reference paths only

Implementations: ``grouped`` (official per-sample weights + grouped conv), ``decomposed``
(input scaling + cuDNN/oneDNN conv + demod scaling), ``cuda`` (the fused kernels of csrc/),
``triton`` (the fused Triton kernels of trtalk/kernels/triton_modconv.py).
Writes ``kernels_<tag>.json`` and ``.md`` (machine, command, per-layer and whole-generator times,
TFLOP/s and % of the GPU's FP16 dense peak for the kernels) into --out, and picks
``default_impl`` = the fastest available impl for the whole generator at the largest batch.
Unavailable impls are listed with the reason instead of failing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trtalk.kernels import ops  # noqa: E402
from trtalk.models import modconv  # noqa: E402
from trtalk.bench.peaks import gpu_peak, machine_info, machine_tag  # noqa: E402
from trtalk.models.generator import OFFICIAL_CHANNELS, Generator, modconv_layers  # noqa: E402
from trtalk.families.pcavs.model import PCAVSConfig  # noqa: E402

log = logging.getLogger("benchmarks.kernels")

IMPLS = ("grouped", "decomposed", "cuda", "triton")
# FP16 dense tensor-core peak, TFLOP/s (vendor data sheets), matched on the device name.
def layer_flops(layer: tuple, batch: int) -> float:
    """Useful multiply-adds x 2 of one layer (the up form counted as its 4 phase convs)."""
    _, cin, cout, k, res, _, up = layer
    return 2.0 * batch * res * res * cout * cin * k * k * (4 if up else 1)


def unavailable(device: torch.device) -> dict[str, str]:
    """impl -> reason it cannot run on ``device``."""
    out = {}
    reason = ops.cuda_unavailable_reason(torch.empty(1, device=device))
    if reason:
        out["cuda"] = reason
    from trtalk.kernels.triton_ops import triton_unavailable_reason

    reason = triton_unavailable_reason(torch.empty(1, device=device))
    if reason:
        out["triton"] = reason
    return out


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def peak_tflops(info: dict) -> float | None:
    """Data-sheet dense FP16 tensor peak of the GPU in ``info`` (the table of trtalk.bench.peaks)."""
    if not info.get("gpu"):
        return None
    flops = gpu_peak(info["gpu"], "fp16", tf32=False).flops
    return None if flops is None else flops / 1e12


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    channels = PCAVSConfig.small().gen_channels if args.smoke else dict(OFFICIAL_CHANNELS)
    batches = args.batches or ([1, 2] if args.smoke else [1, 8, 64])
    warmup, iters = (0, 1) if args.smoke else (args.warmup, args.iters)
    crop = 8 if args.smoke else None
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    skip = unavailable(device)
    impls = [i for i in IMPLS if i not in skip]
    info = machine_info(str(device))
    peak = peak_tflops(info)
    blur = modconv.blur_kernel(gain=4.0).to(device)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": info,
              "dtype": str(dtype), "batches": batches, "unavailable": skip, "layers": [], "generator": []}
    for layer in modconv_layers(channels):
        name, cin, cout, k, res, demod, up = layer
        hw = min(res, crop) if crop else res
        for b in batches:
            x = torch.randn(b, cin, hw, hw, device=device, dtype=dtype)
            w = torch.randn(1, cout, cin, k, k, device=device, dtype=dtype) / math.sqrt(cin * k * k)
            s = torch.randn(b, cin, device=device, dtype=dtype) + 1
            row = {"layer": name, "batch": b, "in": cin, "out": cout, "res": hw, "up": up, "ms": {}}
            for impl in impls:
                fn = (lambda i=impl: modconv.modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=blur, impl=i))
                with torch.no_grad():
                    row["ms"][impl] = round(timed(fn, device, warmup, iters), 4)
            if "cuda" in row["ms"]:
                tflops = layer_flops((name, cin, cout, k, hw, demod, up), b) / row["ms"]["cuda"] / 1e9
                row["cuda_tflops"] = round(tflops, 2)
                if peak:
                    row["cuda_pct_fp16_peak"] = round(100 * tflops / peak, 1)
            result["layers"].append(row)
            log.info("%s b=%d %s", name, b, row["ms"])
    gen = Generator(channels=channels).eval().to(device=device, dtype=dtype)
    for b in batches:
        style = torch.randn(b, 2560, device=device, dtype=dtype)
        id_map = torch.randn(b, 512, 7, 7, device=device, dtype=dtype)
        row = {"batch": b, "ms": {}}
        for impl in impls:
            gen.set_modconv_impl(impl)
            with torch.no_grad():
                row["ms"][impl] = round(timed(lambda: gen(style, id_map), device, warmup, iters), 3)
        result["generator"].append(row)
        log.info("generator b=%d %s", b, row["ms"])
    last = result["generator"][-1]["ms"]
    result["default_impl"] = min(last, key=last.get)
    result["default_rule"] = f"fastest whole generator at batch {batches[-1]}"
    return result


def markdown(r: dict) -> str:
    impls = [i for i in IMPLS if i not in r["unavailable"]]
    lines = ["# Modulated-conv benchmark", "", f"Command: `{r['command']}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in r["machine"].items()), "",
             f"dtype {r['dtype']}; default impl: **{r['default_impl']}** ({r['default_rule']})", ""]
    for impl, why in r["unavailable"].items():
        lines.append(f"- `{impl}` unavailable: {why}")
    lines += ["", "## Whole generator (ms)", "", "| batch | " + " | ".join(impls) + " |",
              "|---|" + "---|" * len(impls)]
    lines += [f"| {g['batch']} | " + " | ".join(str(g["ms"][i]) for i in impls) + " |" for g in r["generator"]]
    lines += ["", "## Per layer (ms)", "", "| layer | batch | res | " + " | ".join(impls) + " | cuda TFLOP/s | % peak |",
              "|---|---|---|" + "---|" * (len(impls) + 2)]
    for row in r["layers"]:
        lines.append(f"| {row['layer']} | {row['batch']} | {row['res']} | " +
                     " | ".join(str(row["ms"][i]) for i in impls) +
                     f" | {row.get('cuda_tflops', '-')} | {row.get('cuda_pct_fp16_peak', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (CI): small generator, 1 iteration")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8 64; smoke 1 2)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    r = run(args)
    tag = "smoke" if args.smoke else machine_tag(r["machine"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kernels_{tag}.json").write_text(json.dumps(r, indent=1))
    (out / f"kernels_{tag}.md").write_text(markdown(r))
    log.info("wrote %s; default impl %s", out / f"kernels_{tag}.json", r["default_impl"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
