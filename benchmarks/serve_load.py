"""Load test of `trtalk serve`: K headless aiortc sessions on the loopback address, admitted
by the server's own measured admission (issue 23: no admitted session below the frame rate).

Starts `trtalk serve` as its own process (so clients and server do not share a GIL). For each K
it starts K clients (`trtalk.serve.client`, the tests' speech wave looped as the microphone)
``--stagger`` seconds apart, so each arrives while the earlier ones run and the server's cost
model has measured them; the server admits or refuses each. Each admitted client runs until
``--seconds`` after the last one started. Reported per K: which sessions were admitted and
refused, each admitted session's frames/s (new frames its pipeline made, from its own report),
mic-to-frame p50/p99, the server's batch-size histogram and its capacity before and after
(/healthz: measured CPU ms a frame, CPU rate, sessions that fit). The run passes when no
admitted session made fewer than ``--min-fps`` frames/s (default: 24 at 25 fps).

``--open`` adds the old sweep with admission opened up (``--capacity-fps``), every K running,
to show what admission protects against.

    python benchmarks/serve_load.py --model warp --out benchmarks/results/serve_load_warp_cpu.json
    python benchmarks/serve_load.py --model pcavs --model-config small --out ...

Bounded: K <= 16, seconds <= 60. Exit status 1 when an admitted session fell below --min-fps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from trtalk.fsutil import atomic_output  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "trtalk.cli", "-q", "serve", "--port", str(port), "--model", args.model,
           "--fps", str(args.fps), "--max-sessions", "16", "--max-batch", str(args.max_batch)] + extra
    if args.model_config:
        cmd += ["--model-config", args.model_config]
    cmd += args.server_args.split()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


def batch_hist(url: str) -> dict[str, int]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'trtalk_batch_size_bucket\{le="([^"]+)"\} (\d+)', text)}


def health(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/healthz", timeout=10).read())


def run_k(url: str, k: int, seconds: float, wave: np.ndarray, stagger: float = 0.0) -> dict:
    """K clients, ``stagger`` s apart, each until ``seconds`` after the last one started."""
    from trtalk.serve.client import run_client

    async def one(i: int):
        await asyncio.sleep(i * stagger)
        return await run_client(url, wave, seconds + (k - 1 - i) * stagger)

    async def main():
        return await asyncio.gather(*[one(i) for i in range(k)])

    before = batch_hist(url)
    health_before = health(url)
    res = asyncio.run(main())
    time.sleep(1.0)
    after = batch_hist(url)
    cum = {le: after[le] - before.get(le, 0) for le in after}
    # cumulative buckets -> counts per bucket
    order = sorted(cum, key=lambda le: float("inf") if le == "+Inf" else float(le))
    hist, prev = {}, 0
    for le in order:
        hist[le] = cum[le] - prev
        prev = cum[le]
    sessions = []
    for r in res:
        st = r.stats or {}
        sessions.append({"status": r.status, "admitted": r.status == 200, "error": r.error,
                         "fps_received": round(r.fps(skip_s=2.0), 2),
                         "server_fps": st.get("fps"), "frames": st.get("frames"),
                         "dropped": st.get("dropped"),
                         "mic_to_frame_ms": st.get("mic_to_frame_ms")})
    ok = [s for s in sessions if s["status"] == 200 and s["mic_to_frame_ms"]]
    p50 = [s["mic_to_frame_ms"]["p50"] for s in ok]
    p99 = [s["mic_to_frame_ms"]["p99"] for s in ok]
    fps = [s["server_fps"] for s in ok if s["server_fps"] is not None]
    return {"k": k, "admitted": sum(s["admitted"] for s in sessions),
            "refused": sum(s["status"] == 503 for s in sessions), "sessions": sessions,
            "batch_size_hist": hist, "health_before": health_before, "health_after": health(url),
            # new frames/s each session's pipeline made (its own report); the video track repeats
            # the last frame when none is new, so frames received (fps_received) can be more
            "fps_min": min(fps, default=None),
            "fps_mean": round(float(np.mean(fps)), 2) if fps else None,
            "mic_to_frame_p50_ms_median": round(float(np.median(p50)), 1) if p50 else None,
            "mic_to_frame_p99_ms_max": round(float(max(p99)), 1) if p99 else None}


def _line(r: dict) -> str:
    h = r["health_after"]
    return (f"K={r['k']}: admitted {r['admitted']}, refused {r['refused']}; fps min {r['fps_min']} "
            f"mean {r['fps_mean']}, mic->frame p50 {r['mic_to_frame_p50_ms_median']} ms, p99 max "
            f"{r['mic_to_frame_p99_ms_max']} ms; capacity {h.get('capacity_sessions')} session(s), "
            f"{h.get('frame_cost_ms', float('nan')):.1f} ms CPU a frame, {h.get('cpu_rate', float('nan')):.2f} "
            f"CPU s/s; batches {r['batch_size_hist']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="warp", choices=("warp", "pcavs"))
    ap.add_argument("--model-config", default=None, choices=("official", "small"))
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--server-args", default="", help="more `trtalk serve` flags, e.g. '--threads 1'")
    ap.add_argument("--stagger", type=float, default=3.0, help="seconds between the clients' arrivals")
    ap.add_argument("--min-fps", type=float, default=None, help="the floor of an admitted session's "
                    "frames/s (default: 24 at 25 fps, i.e. 0.96 of --fps)")
    ap.add_argument("--open", action="store_true", help="also run every K with admission opened up")
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    if args.min_fps is None:
        args.min_fps = 0.96 * args.fps
    if max(ks) > 16 or args.seconds > 60:
        raise SystemExit("K <= 16 and --seconds <= 60")
    from conftest import make_speech_wave

    wave = make_speech_wave()
    runs, opened = [], []
    proc, url = start_server(args, [])
    measured = health(url)
    print(f"measured at start: {measured}", flush=True)
    try:
        for k in ks:
            r = run_k(url, k, args.seconds, wave, args.stagger)
            runs.append(r)
            print(_line(r), flush=True)
            time.sleep(2.0)  # the sessions end and leave the server idle
    finally:
        proc.terminate()
        proc.wait(30)
    if args.open:
        proc, url = start_server(args, ["--capacity-fps", "100000"])
        try:
            for k in ks:
                r = run_k(url, k, args.seconds, wave)
                opened.append(r)
                print("admission opened up: " + _line(r), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    below = [(r["k"], s["server_fps"]) for r in runs for s in r["sessions"]
             if s["admitted"] and (s["server_fps"] is None or s["server_fps"] < args.min_fps)]
    verdict = "PASS" if not below else f"FAIL: admitted sessions below {args.min_fps} frames/s: {below}"
    print(verdict, flush=True)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    result = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "git": git,
              "model": args.model, "model_config": args.model_config, "fps": args.fps,
              "max_batch": args.max_batch, "seconds": args.seconds, "cpus": os.cpu_count(),
              "load_avg_at_end": os.getloadavg(),
              "measured_capacity": measured, "min_fps": args.min_fps, "verdict": verdict,
              "runs": runs, "runs_admission_opened": opened}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not below else 1


if __name__ == "__main__":
    sys.exit(main())
