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


@pytest.fixture()
def bot_server():
    from aiohttp import web
    from pipecat_bot import BotServer

    server = BotServer(ROOT / "trtalk" / "assets" / "astronaut.png", ROOT / "trtalk" / "assets" / "demo_speech.wav",
                       size=SIZE, every_s=4.0)
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


def test_pipecat_bot_in_chromium_lips_in_sync_and_interruption(bot_server) -> None:
    from test_agents import _corr, _expected_mouth, _mouth_box

    from trtalk.audio.decode import load_audio

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
            t_int = page.evaluate("(() => { const t = performance.now(); "
                                  "fetch('api/interrupt', {method: 'POST', body: JSON.stringify({pc_id: window.bot.pcId})});"
                                  " return t; })()")
            page.wait_for_function(f"performance.now() > {t_int} + 2500", timeout=10000, polling=50)
            rec = page.evaluate("window.rec")
            dbg = page.evaluate("""(async () => { const v = document.getElementById('video'); const st = await window.bot.pc.getStats();
              const r = []; st.forEach((x) => { if (x.type === 'inbound-rtp' || x.type === 'transceiver') r.push([x.kind, x.framesDecoded, x.framesReceived, x.packetsReceived, x.bytesReceived]); });
              return [v.readyState, v.videoWidth, v.paused, window.bot.videoTrack.muted, window.bot.videoTrack.readyState, r,
                      window.bot.pc.getTransceivers().map((t) => [t.mid, t.direction, t.currentDirection])]; })()""")
            print("DEBUG", dbg)
        finally:
            browser.close()

    import json; Path("/tmp/rec.json").write_text(json.dumps(rec))  # DEBUG
    audio = np.array(rec["audio"]).reshape(-1, 2)
    video = np.array(rec["video"]).reshape(-1, 2)
    print(f"browser: {len(audio)} audio level samples, {len(video)} video frames")
    assert len(video) > 0, "no video frame was displayed" 
    ta, rms = audio[:, 0], audio[:, 1]
    tv, luma = video[:, 0], video[:, 1]

    # the speech onset on the page's clock: the received level against the file's (both as RMS over
    # 50 ms on a 10 ms grid: the page's timer samples unevenly under load), to 10 ms
    wav = load_audio(ROOT / "trtalk" / "assets" / "demo_speech.wav", 24000)
    env_t = np.arange(0, len(wav) / 24000 - 0.05, 0.01)
    env = np.array([np.sqrt(np.mean(wav[int(t * 24000): int((t + 0.05) * 24000)] ** 2)) for t in env_t])

    def page_env(start_ms: float) -> np.ndarray:
        grid = start_ms + 1000 * env_t
        return np.array([np.sqrt(np.mean(rms[(ta >= g) & (ta < g + 50)] ** 2)) if ((ta >= g) & (ta < g + 50)).any()
                         else 0.0 for g in grid])

    onset0 = _onsets(ta, rms, 0.1 * rms.max())[0] - 1000 * env_t[np.argmax(env > 0.1 * env.max())]
    best_c, t_a = -2.0, onset0
    for shift in np.arange(-200, 201, 10):
        c = _corr(page_env(onset0 + shift), env)
        if c > best_c:
            best_c, t_a = c, onset0 + shift
    assert best_c > 0.8, best_c  # the received audio is the speech

    # the mouth on the page against the offline mouth of that speech laid at t_a
    pcm = np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16)
    n = int(len(wav) / 24000 * FPS) + 10
    ref = _expected_mouth(renderer, pcm, n, box)
    rest = ref[-1]
    sel = (tv > t_a - 500) & (tv < t_a + 1000 * len(wav) / 24000 + 500)
    assert sel.sum() > 0.6 * FPS * (len(wav) / 24000 + 1)  # frames kept coming (at least 60 % of them)

    def corr_at(shift_ms: float) -> float:
        k = np.floor((tv[sel] - shift_ms - t_a) / 1000 * FPS).astype(int)
        r = np.where((k >= 0) & (k < n), ref[np.clip(k, 0, n - 1)], rest)
        return _corr(luma[sel], r)

    shifts = np.arange(-300, 301, 5)
    corrs = np.array([corr_at(s) for s in shifts])
    offset = float(shifts[np.argmax(corrs)])
    print(f"browser: speech onset match r {best_c:.3f}; mouth vs speech r {corrs.max():.3f} at A/V offset "
          f"{offset:+.0f} ms (positive: picture behind sound); {sel.sum()} frames")
    assert corrs.max() > 0.6, corrs.max()
    assert -125 <= offset <= 45, offset

    # the interruption: sound gone within 250 ms of the request (HTTP, jitter buffer) and for good,
    # the face goes on with its mouth at rest
    after = ta > t_int + 250
    assert after.sum() > 100 and rms[after].max() < 0.01, rms[after].max()
    assert (tv > t_int).sum() >= 0.6 * FPS * 2.5
    late = tv > t_int + 800
    assert np.abs(luma[late] - rest).max() < 0.25 * np.abs(ref - rest).max(), np.abs(luma[late] - rest).max()
    # at the service: at most the one frame in flight carries speech after the InterruptionFrame
    speech_after = [t for t, sp in marks["outputs"] if sp and t > marks["interrupt"]]
    assert len(speech_after) <= 1, speech_after
