"""A Pipecat bot with a trtalk face, in the browser over Pipecat's SmallWebRTCTransport.

The bot "speaks" a wav file (a stand-in for the TTS, so this runs with no API key): every
``--every`` seconds (and when the page's "Speak" button is pressed) it sends the file as TTS audio,
in 20 ms chunks and faster than real time as a TTS does. `TrtalkVideoService` turns it into the
talking face and passes the audio on in step with the lips. The page's "Interrupt" button sends an
`InterruptionFrame` (what Pipecat sends when the user starts speaking): the speech stops within a
frame, the face goes on.

    pip install -e . && pip install -r requirements-agents.txt
    python examples/pipecat_bot.py --face trtalk/assets/astronaut.png --wav trtalk/assets/demo_speech.wav
    # open http://127.0.0.1:7860/ and press Connect

A real bot puts an STT, an LLM and a TTS before the service:
``Pipeline([transport.input(), stt, context_aggregator.user(), llm, tts,
TrtalkVideoService(avatar=...), transport.output(), context_aggregator.assistant()])``.
Binds 127.0.0.1 (peer-to-peer WebRTC needs no TURN server on one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from aiohttp import web
from pipecat.frames.frames import (Frame, InterruptionFrame, StartFrame, TTSAudioRawFrame, TTSStartedFrame,
                                   TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from trtalk.audio.decode import load_audio
from trtalk.integrations.pipecat import TrtalkVideoService

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("pipecat_bot")

PAGE = """<!doctype html><meta charset=utf-8><title>trtalk + Pipecat</title>
<button id=connect>Connect</button> <button id=speak disabled>Speak</button>
<button id=interrupt disabled>Interrupt</button>
<div><video id=video autoplay playsinline muted width=SIZE height=SIZE></video>
<audio id=audio autoplay></audio></div>
<script>
window.bot = {pcId: null, connected: false};
document.getElementById('connect').onclick = async () => {
  // Open the audio output before any audio arrives: Chromium pulls the jitter buffer only once its
  // audio output runs, and opening the first output stream can take seconds (1.9 s on a machine
  // without a sound card). Audio arriving meanwhile piles up and plays late, then faster. The
  // context's clock jumps a few ms at once, then stands until its output runs: wait for 100 ms.
  const ctx = window.bot.audioCtx = new AudioContext();  // in the click: allowed to start
  const opened = ctx.resume().then(async () => {
    for (const t0 = performance.now(); ctx.currentTime < 0.1 && performance.now() - t0 < 5000;)
      await new Promise((ok) => setTimeout(ok, 10));
  });
  const pc = new RTCPeerConnection();
  window.bot.pc = pc;
  pc.addTransceiver('audio', {direction: 'sendrecv'});
  pc.addTransceiver('video', {direction: 'sendrecv'});  // Pipecat's transport answers both as sendrecv
  pc.ontrack = (e) => {
    const el = document.getElementById(e.track.kind === 'video' ? 'video' : 'audio');
    el.srcObject = new MediaStream([e.track]);
    if (e.track.kind === 'video') window.bot.videoTrack = e.track; else window.bot.audioTrack = e.track;
  };
  const mic = await navigator.mediaDevices.getUserMedia({audio: true}).catch(() => null);
  if (mic) pc.getTransceivers()[0].sender.replaceTrack(mic.getAudioTracks()[0]);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => { if (pc.iceGatheringState === 'complete') ok();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && ok(); });
  await opened;
  const r = await fetch('api/offer', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
  const answer = await r.json();
  window.bot.pcId = answer.pc_id;
  await pc.setRemoteDescription(answer);
  window.bot.connected = true;
  document.getElementById('interrupt').disabled = false;
  document.getElementById('speak').disabled = false;
};
document.getElementById('speak').onclick = () =>
  fetch('api/say', {method: 'POST', body: JSON.stringify({pc_id: window.bot.pcId})});
document.getElementById('interrupt').onclick = () =>
  fetch('api/interrupt', {method: 'POST', body: JSON.stringify({pc_id: window.bot.pcId})});
</script>"""


class WavSpeaker(FrameProcessor):
    """Stand-in for a TTS: the wav as TTSStarted, 20 ms TTSAudioRawFrames at ``speed`` times real
    time, TTSStopped; first after ``first_s`` seconds, then ``every_s`` seconds after each
    utterance's last chunk, and at once on `say` (None: only on `say`)."""

    def __init__(self, wav: Path, rate: int = 24000, every_s: float | None = 8.0, first_s: float | None = 1.5,
                 speed: float = 2.0) -> None:
        super().__init__()
        x = load_audio(wav, rate)
        self.pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
        self.rate, self.every_s, self.first_s, self.speed = rate, every_s, first_s, speed
        self._task: asyncio.Task | None = None
        self._cut = False
        self._asked = asyncio.Event()
        #: loop time of each utterance's start
        self.sent: list[float] = []

    def say(self) -> None:
        """Speak now (after the utterance being sent, if any); call on the event loop's thread."""
        self._asked.set()

    async def _pause(self, seconds: float | None) -> None:
        try:
            await asyncio.wait_for(self._asked.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
        self._asked.clear()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._task is None:
            self._task = self.create_task(self._speak())
        elif isinstance(frame, InterruptionFrame):
            self._cut = True  # as a TTS does: the interrupted utterance is not sent on

    async def cleanup(self) -> None:
        """Pipecat's teardown: the speaking task ends with the pipeline (no task left dangling)."""
        await super().cleanup()
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def _speak(self) -> None:
        await self._pause(self.first_s)
        step = self.rate // 50
        while True:
            self.sent.append(asyncio.get_running_loop().time())
            self._cut = False
            await self.push_frame(TTSStartedFrame())
            for i in range(0, len(self.pcm), step):
                if self._cut:
                    break
                await self.push_frame(TTSAudioRawFrame(audio=self.pcm[i:i + step].tobytes(),
                                                       sample_rate=self.rate, num_channels=1))
                await asyncio.sleep(0.02 / self.speed)
            await self.push_frame(TTSStoppedFrame())
            await self._pause(self.every_s)


class BotServer:
    """The page, the WebRTC offer and the interrupt endpoint; one bot pipeline per connection."""

    def __init__(self, face: Path, wav: Path, size: int = 256, model: str = "warp", every_s: float | None = 8.0,
                 first_s: float | None = 1.5, **controls) -> None:
        self.face, self.wav, self.size, self.model, self.every_s = face, wav, size, model, every_s
        self.first_s = first_s
        self.controls = controls
        self.workers: dict[str, PipelineWorker] = {}
        self.speakers: dict[str, WavSpeaker] = {}
        self.services: dict[str, TrtalkVideoService] = {}
        self.app = web.Application()
        self.app.router.add_get("/", self.page)
        self.app.router.add_post("/api/offer", self.offer)
        self.app.router.add_post("/api/interrupt", self.interrupt)
        self.app.router.add_post("/api/say", self.say)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("SIZE", str(self.size)), content_type="text/html")

    async def offer(self, request: web.Request) -> web.Response:
        body = await request.json()
        conn = SmallWebRTCConnection()
        await conn.initialize(sdp=body["sdp"], type=body["type"])
        answer = conn.get_answer()
        pc_id = answer["pc_id"]
        # video_out_is_live=False: the images are marked sync_with_audio (the live path ignores
        # the mark). That path sends the newest image, then sleeps 1/video_out_framerate: at 25 the
        # sending time adds up and it sends ~22 images/s, skipping some of the face's 25. At 30
        # (aiortc's own video pace) every image is sent, some twice (see TrtalkVideoService).
        transport = SmallWebRTCTransport(webrtc_connection=conn, params=TransportParams(
            audio_in_enabled=True, audio_out_enabled=True, video_out_enabled=True, video_out_is_live=False,
            video_out_width=self.size, video_out_height=self.size, video_out_framerate=30))
        speaker = WavSpeaker(self.wav, every_s=self.every_s, first_s=self.first_s)
        service = TrtalkVideoService(avatar=self.face, model=self.model, size=self.size, **self.controls)
        worker = PipelineWorker(Pipeline([transport.input(), speaker, service, transport.output()]),
                                params=PipelineParams(audio_out_sample_rate=24000), cancel_on_idle_timeout=False)

        @transport.event_handler("on_client_disconnected")
        async def _gone(transport, client) -> None:
            await worker.cancel()

        self.workers[pc_id], self.speakers[pc_id], self.services[pc_id] = worker, speaker, service
        asyncio.create_task(self._run(pc_id, worker))
        return web.json_response(answer)

    async def _run(self, pc_id: str, worker: PipelineWorker) -> None:
        try:
            await WorkerRunner(handle_sigint=False).run(worker)
        finally:
            self.workers.pop(pc_id, None)
            self.speakers.pop(pc_id, None)
            service = self.services.pop(pc_id, None)
            if service is not None:  # the face's session thread and the shared model go with it
                await service.close()

    async def close(self) -> None:
        """End every bot: cancel its pipeline and close its face."""
        for worker in list(self.workers.values()):
            await worker.cancel()
        for service in list(self.services.values()):
            await service.close()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
        """Serve the page from an event loop in a background thread (tests, benchmarks): returns
        the page's URL and a ``stop()`` that ends every bot, the server and the loop."""
        from trtalk.serve.background import start_runner_in_thread

        port, stop = start_runner_in_thread(lambda: web.AppRunner(self.app), host, port, name="bot-event-loop",
                                            before_cleanup=self.close, stop_timeout=30)
        return f"http://{host}:{port}/", stop

    async def say(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text() or "{}")
        speaker = self.speakers.get(body.get("pc_id"))
        if speaker is None or body.get("pc_id") not in self.workers:
            raise web.HTTPNotFound(text="no such bot")
        speaker.say()
        return web.json_response({"ok": True})

    async def interrupt(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text() or "{}")
        worker = self.workers.get(body.get("pc_id"))
        if worker is None:
            raise web.HTTPNotFound(text="no such bot")
        await worker.queue_frame(InterruptionFrame())
        return web.json_response({"ok": True})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", type=Path, default=ROOT / "trtalk" / "assets" / "astronaut.png", help="avatar photo")
    ap.add_argument("--wav", type=Path, default=ROOT / "trtalk" / "assets" / "demo_speech.wav",
                    help="what the bot says (stand-in for the TTS)")
    ap.add_argument("--model", default="warp", help="warp (no checkpoint), pcavs, pdfgc or a plugin family")
    ap.add_argument("--size", type=int, default=256, help="frame size")
    ap.add_argument("--every", type=float, default=8.0, help="seconds between utterances")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = BotServer(args.face, args.wav, args.size, args.model, args.every)
    web.run_app(server.app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
