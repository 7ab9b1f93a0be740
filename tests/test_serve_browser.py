"""`trtalk serve` in a real browser: Debian's Chromium driven by Playwright's Python API (the system
browser, never `playwright install`), with Chromium's fake devices: the tests' speech wav as the
microphone and a y4m of the face photo as the camera. The warp avatar on the CPU.

Skips (with the reason) where /usr/bin/chromium or playwright is missing; CI installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("aiortc")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                     "(pip install 'trtalk[serve]')")

CHROMIUM = os.environ.get("TRTALK_CHROMIUM", "/usr/bin/chromium")
FPS = 25.0
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it",
                allow_module_level=True)

from test_serve import _envelope  # noqa: E402


def write_y4m(path: Path, image_rgb: np.ndarray, frames: int = 25, size: int = 256) -> Path:
    """A still image as a 4:2:0 y4m clip (Chromium's fake camera reads y4m only)."""
    img = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_AREA)
    yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{size} H{size} F25:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv.tobytes())
    return path


@pytest.fixture(scope="module")
def served(face_image_path, speech_wav_path, tmp_path_factory):
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server, ServerLimits
    from trtalk.serve.cli import run_in_thread

    tmp = tmp_path_factory.mktemp("browser")
    y4m = write_y4m(tmp / "head.y4m", cv2.cvtColor(cv2.imread(str(face_image_path)), cv2.COLOR_BGR2RGB))
    # min_fps_ratio 0: four sessions on two shared cores run below 25 fps, and the live admission
    # check would refuse the later ones (tests/test_serve.py tests admission)
    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS), token="browser-test-token",
                 limits=ServerLimits(stall_timeout_s=5.0, min_fps_ratio=0.0), capacity_fps_override=4 * FPS / 0.9 + 1)
    srv.prepare()
    url, stop = run_in_thread(srv)
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav_path}",
            f"--use-file-for-fake-video-capture={y4m}",
            "--autoplay-policy=no-user-gesture-required",
            # four tabs at once: none of them is throttled as a background tab
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows"]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp / "profile"), executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield srv, f"{url}/?token=browser-test-token", browser, tmp
        finally:
            browser.close()
            stop()


def _start(page, url: str, pose: str = "still") -> None:
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#avatar option').length > 0", timeout=15000, polling=250)
    page.select_option("#pose", pose)
    page.click("#start")


def _rate(page, seconds: float) -> float:
    n0 = page.evaluate("window.trtalk.frames")
    t0 = time.monotonic()
    page.wait_for_timeout(seconds * 1000)
    return (page.evaluate("window.trtalk.frames") - n0) / (time.monotonic() - t0)


def test_browser_session_shows_the_talking_avatar(served, speech_wave) -> None:
    srv, url, browser, tmp = served
    page = browser.new_page()
    _start(page, url, pose="webcam")
    page.wait_for_function("window.trtalk.frames > 25", timeout=20000, polling=250)
    fps = _rate(page, 4.0)
    page.wait_for_function("window.trtalk.stats && window.trtalk.stats.frames > 0", timeout=5000, polling=250)
    latency = page.inner_text("#latency")
    samples = page.evaluate("window.trtalk.samples")
    error = page.evaluate("window.trtalk.error")
    page.screenshot(path=str(tmp / "page.png"))
    if os.environ.get("TRTALK_SCREENSHOT"):
        shutil.copy(tmp / "page.png", os.environ["TRTALK_SCREENSHOT"])
    page.click("#stop")
    page.close()
    assert error is None
    assert 15.0 <= fps <= 32.0, fps  # new frames (the track repeats one only after 0.5 s)
    assert re.search(r"mic→frame \d+ ms \(p95 \d+\) \+ audio lookahead 120 ms", latency), latency
    # The mouth box follows the speech file's envelope: frame k (from its RTP timestamp) shows
    # wave time (k + lag) / 25; Chromium's fake microphone started the file before the session,
    # so the lag is searched (the wave is 3 s, 75 frames, and loops).
    # A canvas draw before the first decoded frame reads black (luma 0): such a sample is no frame
    # of the avatar, and one of them among ~150-grey mouths would decide the correlation alone.
    s = [x for x in samples if x["rtp"] is not None and x["mouth"] > 1.0]
    rtp = np.unwrap(np.asarray([x["rtp"] for x in s], np.float64), period=2 ** 32)
    k = np.round((rtp - rtp[0]) * FPS / 90000).astype(int)
    mouth = np.asarray([x["mouth"] for x in s])
    env = _envelope(speech_wave, FPS)
    rs = [abs(np.corrcoef(mouth, env[(k + lag) % len(env)])[0, 1]) for lag in range(len(env))]
    # Idle machine: best lag 0.85-0.86 (median over lags 0.31), mouth luma std 5.2 (a still mouth:
    # ~0.5). Two fresh-clone CI runs gave 0.483 and 0.489 at the best lag, the neighbouring lags
    # close behind (frame timing smeared in the browser), so the bound is 0.4 and the mouth must
    # also move: at least one loop of the wave.
    assert len(s) >= 75 and np.std(mouth) > 2.0 and max(rs) > 0.4, (len(s), np.std(mouth), max(rs))


def test_lips_from_the_camera_in_the_page(served) -> None:
    """The page's Lips choice: a camera choice brings the webcam pose with it (the lips are read
    from the frames it tracks), a camera-less pose brings the voice back; a session with camera
    lips reports frames whose mouth the camera gave."""
    srv, url, browser, tmp = served
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#mouth option').length > 0", timeout=15000, polling=250)
    assert page.is_visible("#mouth")
    page.select_option("#pose", "still")
    page.select_option("#mouth", "webcam")
    assert page.input_value("#pose") == "webcam"
    page.select_option("#pose", "auto")
    assert page.input_value("#mouth") == "audio"
    page.select_option("#mouth", "blend")
    assert page.input_value("#pose") == "webcam"
    page.click("#start")
    page.wait_for_function("window.trtalk.stats && window.trtalk.stats.mouth_camera_frames > 25 "
                           "|| window.trtalk.error", timeout=30000, polling=250)
    stats, error = page.evaluate("window.trtalk.stats"), page.evaluate("window.trtalk.error")
    page.click("#stop")
    page.close()
    assert error is None and stats["mouth"] == "blend", (error, stats)


def test_four_browser_sessions_at_once(served) -> None:
    srv, url, browser, tmp = served
    pages = [browser.new_page() for _ in range(4)]
    for page in pages:
        _start(page, url)
    for page in pages:
        page.wait_for_function("window.trtalk.decoded > 10 || window.trtalk.error", timeout=30000,
                               polling=250)
    sessions = list(srv.sessions.values())
    n0 = [s.sink.frames_written for s in sessions]
    d0 = [p.evaluate("window.trtalk.decoded") for p in pages]
    t0 = time.monotonic()
    time.sleep(4.0)
    dt = time.monotonic() - t0
    made = [(s.sink.frames_written - n) / dt for s, n in zip(sessions, n0)]
    shown = [(p.evaluate("window.trtalk.decoded") - n) / dt for p, n in zip(pages, d0)]
    for page in pages:
        page.wait_for_function("window.trtalk.stats && window.trtalk.stats.frames > 0", timeout=5000, polling=250)
    latencies = [p.inner_text("#latency") for p in pages]
    errors = [p.evaluate("window.trtalk.error") for p in pages]
    assert len(srv.sessions) == 4
    batched = max(srv.scheduler.stats.batch_sizes)
    for page in pages:
        page.click("#stop")
        page.close()
    deadline = time.monotonic() + 15
    while (not srv.idle or any(t.name.startswith("trtalk-session") for t in threading.enumerate())) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert errors == [None] * 4
    assert all(re.search(r"mic→frame \d+ ms", t) for t in latencies), latencies
    # Every page plays a live stream and every session makes new frames. Four sessions plus the browser rendering all four on two shared
    # CPU cores are CPU-bound (warp frames are numpy work under the GIL): the rate is reported,
    # not asserted; the load benchmark measures it.
    print(f"4 browser sessions: new frames/s {[round(x, 1) for x in made]}, "
          f"decoded frames/s {[round(x, 1) for x in shown]}")
    assert min(shown) >= 1.0, shown
    assert min(made) > 0.5, made
    assert batched >= 2  # frames of different sessions shared generator batches
    assert not srv.sessions
    assert not [t for t in threading.enumerate() if t.name.startswith("trtalk-session")]
