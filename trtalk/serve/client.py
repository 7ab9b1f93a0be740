"""A headless `trtalk serve` client (aiortc): what the page does, from Python -- for the protocol
tests and the load benchmark (`benchmarks/serve_load.py`).

`run_client` sends a wave (looped) as the microphone, optionally a still image as the camera,
receives the avatar's video and audio, and returns what arrived: frame arrival times, the
frames' mouth-box means, the server's control messages and its last stats.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 48000
BLOCK = 960


class WaveTrack(MediaStreamTrack):
    """A 16 kHz wave looped as a 48 kHz microphone, paced in real time; ``stall_after_s`` stops
    sending (the track stays open) to simulate a stalled microphone."""

    kind = "audio"

    def __init__(self, wave16k: np.ndarray, stall_after_s: float | None = None) -> None:
        super().__init__()
        up = np.repeat(np.asarray(wave16k, np.float32), 3)
        self.pcm = (np.clip(up, -1, 1) * 32767).astype(np.int16)
        self.pos = 0
        self.pts = 0
        self.start: float | None = None
        self.stall_after_s = stall_after_s

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        if self.stall_after_s is not None and self.pts / RATE >= self.stall_after_s:
            await asyncio.sleep(3600)
        wait = self.start + self.pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        idx = (self.pos + np.arange(BLOCK)) % len(self.pcm)
        self.pos = (self.pos + BLOCK) % len(self.pcm)
        frame = av.AudioFrame.from_ndarray(self.pcm[idx][None], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += BLOCK
        return frame


class StillTrack(MediaStreamTrack):
    """An RGB image as a 25 fps camera."""

    kind = "video"

    def __init__(self, image: np.ndarray, fps: float = 25.0) -> None:
        super().__init__()
        self.image = np.ascontiguousarray(image)
        self.fps = fps
        self.n = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.n / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts = int(self.n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


@dataclass
class ClientResult:
    """What one client saw: ``status`` of the offer, ``error`` (refusal or a control message),
    frame arrival times (monotonic s), mouth-box mean luma per frame, control messages."""

    status: int = 0
    error: str | None = None
    session: str | None = None
    frame_times: list[float] = field(default_factory=list)
    frame_pts: list[int] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_frames: int = 0
    audio_rms: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: the peer connection, left open by ``vanish`` (the caller closes it)
    pc: Any = None

    @property
    def stats(self) -> dict[str, Any] | None:
        s = [m for m in self.messages if m.get("type") == "stats"]
        return s[-1] if s else None

    def fps(self, skip_s: float = 1.0) -> float:
        """Frames/s after the first ``skip_s`` seconds of video."""
        t = [x for x in self.frame_times if x >= (self.frame_times[0] + skip_s)] if self.frame_times else []
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0


#: Where the mouth is in an aligned crop (x0, y0, x1, y1 as fractions of the frame).
CROP_MOUTH_BOX = (0.35, 0.62, 0.65, 0.82)


def mouth_luma(image: np.ndarray, box: tuple[float, float, float, float] = CROP_MOUTH_BOX) -> float:
    """Mean luma of the mouth ``box`` (x0, y0, x1, y1 as fractions of the frame; default: where an
    aligned crop has it; the warp avatar's frames are the photo's, so give its own)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    box = image[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].astype(np.float32)
    return float((0.299 * box[..., 0] + 0.587 * box[..., 1] + 0.114 * box[..., 2]).mean())


async def run_client(url: str, wave16k: np.ndarray, seconds: float, *, avatar: str = "astronaut",
                     pose: str = "still", token: str | None = None, camera: np.ndarray | None = None,
                     stall_after_s: float | None = None, flood: int = 0, bye: bool = True,
                     vanish: bool = False, extra: dict[str, Any] | None = None,
                     mouth_box: tuple[float, float, float, float] | None = None) -> ClientResult:
    """One session for ``seconds`` (see the module docstring). ``flood`` sends that many control
    messages at once after connecting; ``vanish`` leaves without a bye and without closing;
    ``mouth_box``: where `mouth_luma` looks (fractions of the frame; None: where the server's
    "ready" message says the mouth is, an aligned crop's box until then)."""
    res = ClientResult()
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("control")
    done = asyncio.Event()
    box: list[Any] = [mouth_box, mouth_box or CROP_MOUTH_BOX]  # (asked, in use)

    @channel.on("message")
    def on_message(msg: Any) -> None:
        m = json.loads(msg)
        res.messages.append(m)
        if m.get("type") == "ready":
            res.session = m.get("session")
            if box[0] is None and m.get("mouth_box"):
                box[1] = tuple(m["mouth_box"])
        if m.get("type") == "error":
            res.error = m.get("message")
            done.set()

    mic = WaveTrack(wave16k, stall_after_s)
    pc.addTrack(mic)
    if camera is not None:
        pc.addTrack(StillTrack(camera))
    else:
        pc.addTransceiver("video", direction="recvonly")
    tasks: list[asyncio.Task] = []

    async def read_video(track: Any) -> None:
        try:
            while True:
                f = await track.recv()
                res.frame_times.append(time.monotonic())
                res.frame_pts.append(int(f.pts or 0))
                res.mouth.append(mouth_luma(f.to_ndarray(format="rgb24"), box[1]))
        except MediaStreamError:
            pass

    async def read_audio(track: Any) -> None:
        try:
            while True:
                f = await track.recv()
                res.audio_frames += 1
                x = f.to_ndarray().astype(np.float32) / 32768
                res.audio_rms.append(float(np.sqrt(np.mean(x * x))))
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track: Any) -> None:
        tasks.append(asyncio.ensure_future(read_video(track) if track.kind == "video" else read_audio(track)))

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"X-Trtalk-Token": token} if token else {}
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "avatar": avatar, "pose": pose}
    body.update(extra or {})
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/offer", json=body, headers=headers) as r:
            res.status = r.status
            answer = await r.json()
    if res.status != 200:
        res.error = answer.get("error")
        await pc.close()
        return res
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    if flood:
        for _ in range(200):
            if channel.readyState == "open":
                break
            await asyncio.sleep(0.05)
        for i in range(flood):
            channel.send(json.dumps({"type": "ping", "t": i}))
    try:
        await asyncio.wait_for(done.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    if vanish:  # leave without a word: stop sending, keep the transport open but silent
        mic.stall_after_s = 0.0
        for t in tasks:
            t.cancel()
        res.pc = pc
        return res
    if bye and channel.readyState == "open":
        channel.send(json.dumps({"type": "bye"}))
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await pc.close()
    return res
