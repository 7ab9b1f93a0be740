#!/usr/bin/env python
"""CPU per frame of a face streamed to Chromium over WebRTC: the Pipecat bot of
examples/pipecat_bot.py (`TrtalkVideoService` over Pipecat's SmallWebRTCTransport) against
`trtalk serve` (its own aiortc tracks), the warp avatar at the same size, one session each.

Headless Debian Chromium (Playwright, as the browser tests) plays the stream; after a warm-up the
process's threads' CPU seconds (/proc/self/task/*/stat) and Chromium's (its processes' utime +
stime) are read over ``--seconds`` and divided by the frames the face made. Per-thread CPU is the
number that holds on a loaded machine (wall-clock rates do not); the rates are printed too.
Threads: the event loop (aiohttp, Pipecat's processors and output transport, aiortc's RTP),
``asyncio_N`` (the default executor: aiortc's VP8 and Opus encoders), ``trtalk-serve-worker`` (the
batch scheduler: the model), ``trtalk-session-*`` (the frame pipeline), ``trtalk-agent-ticker``
(the agent face's 20 ms audio clock and resampling). For the Pipecat bot it also reports how many
images/s Pipecat's output sent into the video track (``--video-framerate``, the transport's
``video_out_framerate``: 30 in the example; at 25 its sleep-after-send loop sends ~22/s).

    python benchmarks/webrtc_cpu.py --path pipecat --size 128 --seconds 10
    python benchmarks/webrtc_cpu.py --path pipecat --size 128 --seconds 10 --video-framerate 25
    python benchmarks/webrtc_cpu.py --path serve --size 128 --seconds 10

Needs the agents' requirements (requirements-agents.txt) for ``--path pipecat``, playwright and
/usr/bin/chromium. Prints a table; ``--json FILE`` also writes the numbers with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding"]
COUNT_FRAMES_JS = """() => { window.nf = 0; const v = document.getElementById('video');
  const cb = () => { window.nf++; v.requestVideoFrameCallback(cb); }; v.requestVideoFrameCallback(cb); }"""


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name (numbered pools merged)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
            comm = open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        name = re.sub(r"[_-][0-9a-f]+$", "_N", names.get(int(tid), "native:" + comm))
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / hz
    return out


def chromium_cpu() -> float:
    """CPU seconds of this process's descendant processes (Playwright's driver and Chromium)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # gone meanwhile
            pass
    return total


def run_pipecat(args, page_of) -> dict:
    import pipecat_bot
    from pipecat.transports.smallwebrtc import transport as swt

    sent: list[float] = []
    real_add = swt.RawVideoTrack.add_video_frame

    def add(self, frame) -> None:  # counts the images Pipecat's output sends into the track
        sent.append(time.monotonic())
        real_add(self, frame)

    swt.RawVideoTrack.add_video_frame = add
    params = pipecat_bot.TransportParams
    pipecat_bot.TransportParams = lambda **kw: params(**{**kw, "video_out_framerate": args.video_framerate})
    server = pipecat_bot.BotServer(ROOT / "trtalk/assets/astronaut.png", ROOT / "trtalk/assets/demo_speech.wav",
                                   size=args.size, every_s=args.every, first_s=1.0, pose="still")
    url, _stop = server.start_in_thread()  # the process ends with os._exit (main)
    with page_of(url) as page:
        page.click("#connect")
        page.wait_for_function("window.bot.connected && window.bot.videoTrack", timeout=60000)
        service = server.services[page.evaluate("window.bot.pcId")]
        while service.face.frames_out < 25:
            time.sleep(0.1)
        return measure(args, page, lambda: service.face.frames_out, sent)


def run_serve(args, page_of) -> dict:
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server, ServerLimits
    from trtalk.serve.cli import run_in_thread

    srv = Server(WarpFamily(25.0, size=args.size), PipelineConfig(fps=25.0, size=args.size), token="bench",
                 limits=ServerLimits(stall_timeout_s=5.0, min_fps_ratio=0.0), capacity_fps_override=1000)
    srv.prepare()
    url, stop = run_in_thread(srv)
    try:
        with page_of(f"{url}/?token=bench") as page:
            page.wait_for_function("document.querySelectorAll('#avatar option').length > 0", timeout=15000)
            page.select_option("#pose", "still")
            page.click("#start")
            page.wait_for_function("window.trtalk.session !== null", timeout=60000)
            time.sleep(3)

            def frames() -> int:
                return sum(s.sink.frames_written for s in list(srv.sessions.values()))

            return measure(args, page, frames, None)
    finally:
        stop()


def measure(args, page, frames, sent: list[float] | None) -> dict:
    time.sleep(args.warmup)
    page.evaluate(COUNT_FRAMES_JS)
    c0, ch0, f0, w0 = thread_cpu(), chromium_cpu(), frames(), time.monotonic()
    time.sleep(args.seconds)
    c1, ch1, f1, w1 = thread_cpu(), chromium_cpu(), frames(), time.monotonic()
    shown = page.evaluate("window.nf")
    n, wall = f1 - f0, w1 - w0
    threads = {k: 1000 * (v - c0.get(k, 0.0)) / max(n, 1) for k, v in c1.items() if v - c0.get(k, 0.0) > 0}
    out = {"frames_made_per_s": n / wall, "frames_shown_per_s": shown / wall,
           "process_ms_per_frame": sum(threads.values()), "chromium_ms_per_frame": 1000 * (ch1 - ch0) / max(n, 1),
           "threads_ms_per_frame": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
           "load_1min": os.getloadavg()[0]}
    if sent is not None:
        s = [t for t in sent if w0 <= t <= w1]
        out["images_into_track_per_s"] = len(s) / wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", choices=["pipecat", "serve"], required=True)
    ap.add_argument("--size", type=int, default=128, help="frame size (the browser test's: 128)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--every", type=float, default=3.0, help="pipecat: seconds between utterances")
    ap.add_argument("--video-framerate", type=int, default=30, help="pipecat: the transport's video_out_framerate")
    ap.add_argument("--chromium", default=os.environ.get("TRTALK_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    from contextlib import contextmanager

    from playwright.sync_api import sync_playwright

    @contextmanager
    def page_of(url: str):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(url)
                yield page
            finally:
                browser.close()

    res = (run_pipecat if args.path == "pipecat" else run_serve)(args, page_of)
    res["command"] = "python " + shlex.join(["benchmarks/webrtc_cpu.py", *sys.argv[1:]])
    print(f"{args.path}, warp {args.size} px, {args.seconds:g} s (load {res['load_1min']:.1f}): "
          f"{res['frames_made_per_s']:.1f} frames/s made, {res['frames_shown_per_s']:.1f} shown"
          + (f", {res['images_into_track_per_s']:.1f} images/s into the video track" if "images_into_track_per_s" in res else ""))
    print(f"  CPU per frame: process {res['process_ms_per_frame']:.1f} ms, Chromium {res['chromium_ms_per_frame']:.1f} ms")
    for name, ms in res["threads_ms_per_frame"].items():
        print(f"    {name:34s} {ms:6.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the bot's event loop thread and aiortc's tasks are not torn down one by one


if __name__ == "__main__":
    main()
