"""Admission from measurement: how many sessions this server can serve at their frame rate.

A served frame costs CPU in many places: the shared scheduler's networks, each session's
pipeline (audio, mel, compose), and the video encoder of its WebRTC track (aiortc encodes on the
host CPU, in its own threads). `CostModel` is what admission reads:

- ``frame_cost_s``: CPU seconds per served frame, everything included;
- ``cpu_rate``: CPU seconds per second the process can actually spend (the usable cores less
  what the interpreter lock, the OS and other processes leave it);
- ``model_fps``: the most frames/s the scheduler's single worker thread can produce.

The room is ``headroom * min(model_fps, cpu_rate / frame_cost_s)`` frames/s, and a session is
admitted only when every admitted session, the new one included, keeps its frame rate within it
(`Admission`).

`MeasuredCost` is the server's model. It starts from a warm-up measurement (`warmup_cost`: the
scheduler's batch-1 frame and one encoded frame, in process CPU seconds) and is refreshed while
it runs: every tick the process's CPU seconds over the frames all sessions made since the last
tick update an EWMA of the per-frame cost; while some session falls behind its frame rate, the
CPU rate the process reached then is taken as the ceiling (``cpu_rate`` only goes down that way,
and back up slowly while everyone keeps up). Tests inject their own `CostModel` (no timing).
"""

from __future__ import annotations

import fractions
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

log = logging.getLogger(__name__)


class CostModel(Protocol):
    """What admission needs to know about this machine and model (see the module docstring)."""

    def frame_cost_s(self) -> float: ...

    def cpu_rate(self) -> float: ...

    def model_fps(self) -> float: ...


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class FixedCost:
    """A cost model of given numbers (``--capacity-fps``, and tests)."""

    cost_s: float
    rate: float = 1.0
    model: float = math.inf

    def frame_cost_s(self) -> float:
        return self.cost_s

    def cpu_rate(self) -> float:
        return self.rate

    def model_fps(self) -> float:
        return self.model


class MeasuredCost:
    """Per-frame CPU cost from a warm-up, refreshed from the running sessions (module docstring).

    ``initial_cost_s``: the warm-up's CPU seconds per frame; ``cores``: the CPU rate to start
    from (the usable cores times ``core_share``); ``model_fps``: a callable giving the scheduler's
    current best frames/s (its measured batch costs); ``alpha``: the EWMA weight of a new tick.
    ``cpu_clock`` / ``wall_clock`` are injectable (tests).
    """

    def __init__(self, initial_cost_s: float, cores: float, model_fps: Callable[[], float] | None = None,
                 alpha: float = 0.2, min_frames: int = 10,
                 cpu_clock: Callable[[], float] = time.process_time,
                 wall_clock: Callable[[], float] = time.monotonic) -> None:
        self._cost = max(initial_cost_s, 1e-6)
        self._rate = max(cores, 0.05)
        self._max_rate = self._rate
        self._model_fps = model_fps or (lambda: math.inf)
        self.alpha = alpha
        self.min_frames = min_frames
        self._cpu_clock, self._wall_clock = cpu_clock, wall_clock
        self._cpu0, self._wall0 = cpu_clock(), wall_clock()
        self._frames = 0
        self.samples = 0

    def frame_cost_s(self) -> float:
        return self._cost

    def cpu_rate(self) -> float:
        return self._rate

    def model_fps(self) -> float:
        return self._model_fps()

    def observe(self, frames: int, behind: bool) -> None:
        """``frames`` more frames were served since the last call; ``behind``: some session is
        below its frame rate. Updates the cost once ``min_frames`` frames have accumulated."""
        self._frames += max(0, frames)
        if self._frames < self.min_frames:
            if self._frames == 0:  # idle: restart the window, idle CPU is not a frame's cost
                self._cpu0, self._wall0 = self._cpu_clock(), self._wall_clock()
            return
        cpu, wall = self._cpu_clock(), self._wall_clock()
        d_cpu, d_wall = cpu - self._cpu0, wall - self._wall0
        if d_cpu >= 0 and d_wall > 0:
            per_frame = d_cpu / self._frames
            self._cost = (1 - self.alpha) * self._cost + self.alpha * per_frame
            reached = d_cpu / d_wall
            if behind:  # the process could not spend more than this: that is the ceiling
                self._rate = max(0.05, min(self._rate, reached))
            else:  # everyone keeps up: let the ceiling recover slowly
                self._rate = min(self._max_rate, self._rate * 1.02)
            self.samples += 1
        self._cpu0, self._wall0, self._frames = cpu, wall, 0


@dataclass
class Admission:
    """Sessions that fit at ``fps`` each within ``headroom`` of the measured room."""

    cost: CostModel
    fps: float
    headroom: float = 0.9
    max_sessions: int = 8

    def frames_per_s(self) -> float:
        """The frames/s this server can make for its sessions, encoding included."""
        c = self.cost.frame_cost_s()
        by_cpu = self.cost.cpu_rate() / c if c > 0 else math.inf
        return min(by_cpu, self.cost.model_fps())

    def sessions(self) -> int:
        """How many sessions fit (each at ``fps``), at most ``max_sessions``."""
        room = self.frames_per_s() * self.headroom
        if not math.isfinite(room):
            return self.max_sessions
        return max(0, min(self.max_sessions, int(room / self.fps + 1e-9)))

    def admits(self, running: int) -> bool:
        """Whether one more session keeps every session (``running`` + 1) at ``fps``."""
        return running + 1 <= self.sessions()


def encode_cost_s(frame_rgb: np.ndarray, frames: int = 10) -> float:
    """Process CPU seconds to encode one frame of this size with the WebRTC video encoder the
    sessions use (aiortc's VP8); 0.0 when aiortc is not installed."""
    try:
        import av
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    except ImportError:  # pragma: no cover - serve needs aiortc anyway
        return 0.0
    enc = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    h, w = frame_rgb.shape[:2]
    base = np.ascontiguousarray(frame_rgb[: h - h % 2, : w - w % 2])
    rng = np.random.default_rng(0)
    first = av.VideoFrame.from_ndarray(base, format="rgb24")
    first.pts, first.time_base = 0, fractions.Fraction(1, 90000)
    enc.encode(first)  # the key frame and the encoder's set-up are not a steady frame's cost
    t = time.process_time()
    for i in range(frames):
        img = base.copy()  # a little motion, as a talking face has
        y = int(rng.integers(0, max(1, img.shape[0] - 16)))
        img[y:y + 16] = 255 - img[y:y + 16]
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = (i + 1) * 3600, fractions.Fraction(1, 90000)
        enc.encode(vf)
    return (time.process_time() - t) / frames


def warmup_cost(run_frame: Callable[[], Any], frame_rgb: np.ndarray, repeats: int = 5) -> float:
    """The warm-up estimate of one served frame's CPU seconds: ``run_frame()`` (one frame through
    the scheduler's networks, batch 1) timed in process CPU seconds (best of ``repeats`` after one
    call), plus `encode_cost_s` of ``frame_rgb``."""
    run_frame()
    best = math.inf
    for _ in range(repeats):
        t = time.process_time()
        run_frame()
        best = min(best, time.process_time() - t)
    return best + encode_cost_s(frame_rgb)
