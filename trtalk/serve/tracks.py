"""WebRTC media for a session (aiortc): the browser's tracks in, the avatar's tracks out.

- `pump_audio` / `pump_video`: read the browser's microphone and camera tracks and push them into
  the session's sources (audio resampled to 16 kHz mono float32; video as RGB arrays, only the
  newest frame is kept).
- `AvatarVideoTrack`: the session's frames; timestamps from the frame index (90 kHz clock); the
  last frame is repeated only when no new one came for ``KEEPALIVE_S`` (before the first frame, a
  stalled session), so the browser always has a live picture and counts only real frames.
- `DelayedAudioTrack`: the microphone audio that drove the lips, released only once the video
  covering it has been sent (so sound and mouth stay together), 20 ms frames at 48 kHz.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from trtalk.runtime.sources import SAMPLE_RATE

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
OUT_RATE = 48000
OUT_BLOCK = 960  # 20 ms at 48 kHz
KEEPALIVE_S = 0.5


async def pump_audio(track: Any, session: Any) -> None:
    """Browser microphone -> ``session.audio.push`` until the track ends or the session stops."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    try:
        while not session.stop.is_set():
            frame = await track.recv()
            for out in resampler.resample(frame):
                session.audio.push(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    except (MediaStreamError, asyncio.CancelledError):
        pass


async def pump_video(track: Any, session: Any) -> None:
    """Browser camera -> the session's camera source (or discarded when the pose is not the camera:
    an unread track would queue frames without bound)."""
    try:
        while not session.stop.is_set():
            frame = await track.recv()
            video = session.video
            if video is not None and hasattr(video, "push"):
                video.push(frame)  # decoded to RGB on the source's thread, the newest frame only
    except (MediaStreamError, asyncio.CancelledError):
        pass


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar's frames from a `TrackSink` (see the module docstring)."""

    kind = "video"

    def __init__(self, sink: Any, fps: float, first: np.ndarray) -> None:
        super().__init__()
        self.sink = sink
        self.fps = fps
        self._event = asyncio.Event()
        self._last = first
        self._pts = 0
        self._start: float | None = None
        self._frames_sent = 0
        loop = asyncio.get_running_loop()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(self._event.set)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        sink.notify = wake

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        item = self.sink.next_frame()
        if item is None:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout=KEEPALIVE_S)
            except asyncio.TimeoutError:
                pass
            item = self.sink.next_frame()
        if self._start is None:
            self._start = time.monotonic()
        if item is not None:
            k, image = item
            self._last = image
            self._pts = max(self._pts + 1, int(round(k * VIDEO_CLOCK / self.fps)))
        else:  # nothing new: repeat the last frame at the stream's wall-clock time
            self._pts = max(self._pts + 1, int((time.monotonic() - self._start) * VIDEO_CLOCK))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(self._last), format="rgb24")
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._frames_sent += 1
        return frame


class DelayedAudioTrack(MediaStreamTrack):
    """The driving audio, released in step with the video (see the module docstring)."""

    kind = "audio"

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self.sink = sink
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / OUT_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        x = self.sink.read_audio(OUT_BLOCK * SAMPLE_RATE // OUT_RATE)
        if x is None:
            x = np.zeros(OUT_BLOCK * SAMPLE_RATE // OUT_RATE, np.float32)
        up = np.repeat(x, OUT_RATE // SAMPLE_RATE)  # 16 -> 48 kHz; speech has nothing above 8 kHz
        pcm = (np.clip(up, -1.0, 1.0) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        self._pts += OUT_BLOCK
        return frame
