"""The Pipecat bot of examples/pipecat_bot.py end to end in Debian's Chromium over Pipecat's
SmallWebRTCTransport (headless, Playwright driving the system browser, as tests/test_serve_browser.py).

What the page measures, on one clock (performance.now): the received audio's level (a WebAudio
analyser every 5 ms, shifted by the context's output latency) and, for every displayed video frame
(requestVideoFrameCallback), the mean luma of the mouth box. The bot speaks the shipped demo speech;
the reference is the same avatar drawn offline with the mouth that speech gives
(`trtalk.warp.drive.mouth_params`), laid on the browser's clock at the speech onset found in the
received audio. The shift that best matches the page's mouth to the reference is the audio/video
offset as a viewer sees it: it must be inside ITU-R BT.1359's detectability bounds (sound at most 45
ms ahead of the picture, at most 125 ms behind), at a correlation showing the mouth follows the speech.
Then an interruption: the audio stops, the face goes on with its mouth at rest, and at the service
no speech output follows the InterruptionFrame by more than the one frame in flight.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

pytest.importorskip("pipecat")
pytest.importorskip("aiohttp")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = os.environ.get("TRTALK_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
FPS = 25.0
SIZE = 128

RECORD_JS = """([x0, y0, x1, y1]) => {
  const rec = window.rec = {audio: [], video: []};
  const ctx = new AudioContext();
  ctx.resume();
  const src = ctx.createMediaStreamSource(new MediaStream([window.bot.audioTrack]));
  const an = ctx.createAnalyser(); an.fftSize = 256; src.connect(an);
  const buf = new Float32Array(an.fftSize);
  setInterval(() => {
    an.getFloatTimeDomainData(buf); let s = 0; for (const v of buf) s += v * v;
    const lat = 1000 * ((ctx.outputLatency || 0) + (ctx.baseLatency || 0));
    rec.audio.push([performance.now() + lat, Math.sqrt(s / buf.length)]);
  }, 5);
  const v = document.getElementById('video');
  const c = document.createElement('canvas'); c.width = v.width; c.height = v.height;
  const g = c.getContext('2d', {willReadFrequently: true});
  const cb = (now, meta) => {
    g.drawImage(v, 0, 0, c.width, c.height);
    const d = g.getImageData(x0, y0, x1 - x0, y1 - y0).data; let s = 0;
    for (let i = 0; i < d.length; i += 4) s += 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    rec.video.push([meta.expectedDisplayTime || now, s / (d.length / 4)]);
    v.requestVideoFrameCallback(cb);
  };
  v.requestVideoFrameCallback(cb);
}"""


@pytest.fixture(scope="module")
def bot_server():
    from aiohttp import web
    from pipecat_bot import BotServer

    server = BotServer(ROOT / "trtalk" / "assets" / "astronaut.png", ROOT / "trtalk" / "assets" / "demo_speech.wav",
                       size=SIZE, every_s=4.0, pose="still")  # still: only the mouth moves
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def serve() -> None:
        runner = web.AppRunner(server.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = site._server.sockets[0].getsockname()[1]
        holder["runner"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield server, f"http://127.0.0.1:{holder['port']}/", loop
    finally:
        async def shutdown() -> None:
            for w in list(server.workers.values()):
                await w.cancel()
            await holder["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _onsets(t: np.ndarray, rms: np.ndarray, thr: float, quiet_ms: float = 300.0) -> list[float]:
    """Times where the level rises above ``thr`` after at least ``quiet_ms`` below it."""
    out, last_loud = [], -1e9
    for ti, r in zip(t, rms):
        if r > thr:
            if ti - last_loud > quiet_ms:
                out.append(float(ti))
            last_loud = ti
    return out


@pytest.fixture(scope="module")
def session(bot_server) -> dict:
    """One bot session in Chromium: the page's records, the service's marks, the mouth box."""
    from test_agents import _mouth_box

    server, url, loop = bot_server
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding"]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(url)
            page.click("#connect")
            page.wait_for_function("window.bot.connected && window.bot.audioTrack && window.bot.videoTrack",
                                   timeout=60000, polling=100)
            pc_id = page.evaluate("window.bot.pcId")
            service = server.services[pc_id]
            deadline = time.monotonic() + 120
            while service.face.shared is None or not service.face.shared.avatars:
                assert time.monotonic() < deadline, "the face did not start"
                time.sleep(0.1)
            renderer = next(iter(service.face.shared.avatars.values())).state["renderer"]
            box = _mouth_box(renderer)
            # service-side record: speech outputs and the interruption, on time.monotonic
            marks: dict = {"outputs": []}
            real_out, real_int = service._on_output, service._interrupt

            def on_output(out):
                marks["outputs"].append((time.monotonic(), out.speech))
                real_out(out)

            def interrupt():
                marks["interrupt"] = time.monotonic()
                real_int()

            service.face.on_output = on_output
            service._interrupt = interrupt
            page.evaluate(RECORD_JS, [int(box[1].start), int(box[0].start), int(box[1].stop), int(box[0].stop)])

            # the first utterance whole (4.64 s), then the second interrupted 1 s in
            page.wait_for_function("window.rec.audio.filter((a) => a[1] > 0.01).length > 0", timeout=60000)
            first = page.evaluate("window.rec.audio.find((a) => a[1] > 0.01)[0]")
            page.wait_for_function(f"window.rec.audio.some((a) => a[0] > {first} + 6000 && a[1] > 0.01)",
                                   timeout=60000, polling=50)
            second = page.evaluate(f"window.rec.audio.find((a) => a[0] > {first} + 6000 && a[1] > 0.01)[0]")
            page.wait_for_function(f"performance.now() > {second} + 1000", timeout=10000, polling=10)
            marks["requested"] = time.monotonic()
            t_int = page.evaluate("(() => { const t = performance.now(); "
                                  "fetch('api/interrupt', {method: 'POST', body: JSON.stringify({pc_id: window.bot.pcId})});"
                                  " return t; })()")
            page.wait_for_function(f"performance.now() > {t_int} + 2500", timeout=10000, polling=50)
            rec = page.evaluate("window.rec")
        finally:
            browser.close()
    audio = np.array(rec["audio"]).reshape(-1, 2)
    video = np.array(rec["video"]).reshape(-1, 2)
    print(f"browser: {len(audio)} audio level samples, {len(video)} video frames")
    if os.environ.get("DUMP"):
        np.savez(os.environ["DUMP"], audio=audio, video=video, t_int=t_int)
    return {"ta": audio[:, 0], "rms": audio[:, 1], "tv": video[:, 0], "luma": video[:, 1], "t_int": t_int,
            "marks": marks, "renderer": renderer, "box": box}


def _displayed_fps(ses: dict, t0: float, t1: float) -> float:
    tv = ses["tv"]
    return float(((tv > t0) & (tv < t1)).sum() / ((t1 - t0) / 1000))


def _realtime(ses: dict) -> tuple[bool, str]:
    """Whether the page got the first utterance in real time: at least 80 % of the frame rate and
    its speech at 0.9-1.1x its length (a loaded machine stretches the stream)."""
    from trtalk.audio.decode import load_audio

    ta, rms = ses["ta"], ses["rms"]
    wav = load_audio(ROOT / "trtalk" / "assets" / "demo_speech.wav", 24000)
    dur_ms = 1000 * len(wav) / 24000
    onset = _onsets(ta, rms, 0.1 * rms.max())[0]
    fps = _displayed_fps(ses, onset, onset + dur_ms)
    wav_loud = np.flatnonzero(np.abs(wav) > 0.1 * np.abs(wav).max())
    page_loud = ta[(ta >= onset) & (ta < onset + dur_ms + 1500) & (rms > 0.1 * rms.max())]
    stretch = (page_loud.max() - page_loud.min()) / (1000 * (wav_loud[-1] - wav_loud[0]) / 24000)
    ok = fps >= 0.8 * FPS and 0.9 < stretch < 1.1
    return ok, (f"the page showed {fps:.1f} frames/s (of {FPS:g}) and the speech at {stretch:.2f}x its length: "
                f"this machine cannot stream in real time now (load {os.getloadavg()[0]:.0f})")


def test_pipecat_bot_in_chromium_interruption(session) -> None:
    """The page gets the face and the bot's speech; after an interruption no speech output leaves
    the service but the one frame in flight, the face goes on with its mouth at rest, and (where the
    stream ran in real time) the page's sound is silent from 250 ms after the request (HTTP and
    Chromium's jitter buffer included) on."""
    ta, rms, tv, luma, t_int = session["ta"], session["rms"], session["tv"], session["luma"], session["t_int"]
    marks = session["marks"]
    assert len(tv) > 0, "no video frame was displayed"
    assert rms.max() > 0.05  # the speech arrived
    assert "interrupt" in marks, "the InterruptionFrame never reached the service"
    speech_after = [t for t, sp in marks["outputs"] if sp and t > marks["interrupt"]]
    assert len(speech_after) <= 1, speech_after
    assert (tv > t_int).sum() >= 0.3 * FPS * 2.5  # the face goes on
    # the page's sound and mouth: only meaningful where the stream ran in real time (a stretched
    # stream fills Chromium's jitter buffer and the frame queue, which then play on)
    fps = _displayed_fps(session, t_int - 2000, t_int)
    loud = ta[(ta > t_int) & (rms > 0.01)]
    last_ms = float(loud.max() - t_int) if len(loud) else 0.0
    req_ms = 1000 * (marks["interrupt"] - marks["requested"])
    print(f"browser: last speech sound {last_ms:.0f} ms after the interrupt request; the service got it "
          f"{req_ms:.0f} ms after it; {fps:.1f} frames/s shown before it")
    ok, why = _realtime(session)
    if not ok:
        pytest.skip(why + "; the service-side checks passed")
    after = ta > t_int + 250
    assert after.sum() > 100 and rms[after].max() < 0.01, (last_ms, req_ms)
    # the mouth at rest: steady after the interruption, against how it moved while speaking
    onset = _onsets(ta, rms, 0.1 * rms.max())[0]
    speaking = np.std(luma[(tv > onset) & (tv < onset + 4000)])
    late = tv > t_int + 1000
    assert late.sum() >= 5 and np.std(luma[late]) < 0.3 * speaking, (np.std(luma[late]), speaking)


def test_pipecat_bot_in_chromium_lips_in_sync(session) -> None:
    """The mouth on the page follows the bot's speech, and the audio/video offset a viewer sees is
    inside ITU-R BT.1359's bounds (picture at most 45 ms behind the sound, 125 ms ahead)."""
    from test_agents import _corr, _expected_mouth

    from trtalk.audio.decode import load_audio

    ta, rms, tv, luma = session["ta"], session["rms"], session["tv"], session["luma"]
    wav = load_audio(ROOT / "trtalk" / "assets" / "demo_speech.wav", 24000)
    dur_ms = 1000 * len(wav) / 24000
    onset = _onsets(ta, rms, 0.1 * rms.max())[0]
    fps = _displayed_fps(session, onset, onset + dur_ms)
    ok, why = _realtime(session)
    if not ok:
        pytest.skip(why + "; the offset of a stretched stream means nothing")
    # the speech onset on the page's clock: the received level against the file's (RMS over 50 ms
    # on a 10 ms grid), to 10 ms
    env_t = np.arange(0, len(wav) / 24000 - 0.05, 0.01)
    env = np.array([np.sqrt(np.mean(wav[int(t * 24000): int((t + 0.05) * 24000)] ** 2)) for t in env_t])

    def page_env(start_ms: float) -> np.ndarray:
        out = []
        for g in start_ms + 1000 * env_t:
            m = (ta >= g) & (ta < g + 50)
            out.append(np.sqrt(np.mean(rms[m] ** 2)) if m.any() else 0.0)
        return np.array(out)

    onset0 = onset - 1000 * env_t[np.argmax(env > 0.1 * env.max())]
    best_c, t_a = max((_corr(page_env(onset0 + sh), env), onset0 + sh) for sh in np.arange(-200, 201, 10))
    assert best_c > 0.8, best_c  # the received audio is the speech, in real time
    # the page's mouth against the avatar's offline mouth for that speech laid at t_a
    pcm = np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16)
    n = int(len(wav) / 24000 * FPS) + 10
    ref = _expected_mouth(session["renderer"], pcm, n, session["box"])
    rest = ref[-1]
    sel = (tv > t_a - 500) & (tv < t_a + dur_ms + 500)

    def corr_at(shift_ms: float) -> float:
        k = np.floor((tv[sel] - shift_ms - t_a) / 1000 * FPS).astype(int)
        return _corr(luma[sel], np.where((k >= 0) & (k < n), ref[np.clip(k, 0, n - 1)], rest))

    shifts = np.arange(-300, 301, 5)
    corrs = np.array([corr_at(sh) for sh in shifts])
    offset = float(shifts[np.argmax(corrs)])
    print(f"browser: speech match r {best_c:.3f}; mouth vs speech r {corrs.max():.3f}; picture {offset:+.0f} ms "
          f"behind the sound; {sel.sum()} frames at {fps:.1f} frames/s")
    assert corrs.max() > 0.6, corrs.max()
    assert -125 <= offset <= 45, offset
