"""Latency accounting for the streaming runtime.

Every emitted frame leaves one :class:`FrameTiming` (all times on the session clock, seconds):

* ``t_frame``   -- the frame's own time on the output timeline, ``t0 + k / fps``;
* ``audio_end`` -- where its 20-row mel window ends (``t_frame`` + the audio lookahead, 120 ms
  at 25 fps);
* ``audio_captured`` -- when the window's last audio sample was captured (reached the program);
* ``pose_captured`` -- when its pose frame was captured (None: static pose / no camera frame);
* ``emitted``   -- when the frame was handed to the sinks.

Derived, per frame: ``mic_to_frame = emitted - audio_captured`` (what the pipeline adds after the
last sample it needed arrived), ``camera_to_frame = emitted - pose_captured``, and
``speech_to_frame = emitted - t_frame`` (the delay a viewer sees between speech and lips; it is
at least the lookahead plus the audio block). The report gives p50/p95/p99 of each in ms,
achieved fps, drops per queue, and audio/video drift: the audio the session read beyond what its
last frame needed (``av_drift_ms``; the pipeline gives it, else ``audio_s - video_s``), so a healthy
stream reports about 0, not its lookahead.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtalk.fsutil import atomic_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameTiming:
    """Times of one emitted frame; see the module docstring."""

    index: int
    t_frame: float
    audio_end: float
    audio_captured: float
    pose_captured: float | None
    emitted: float


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "max": round(float(a.max()), 3)}


@dataclass
class LatencyReport:
    """A summary of a stream (all latencies in ms); ``to_json`` gives the same as a dict."""

    frames: int
    fps_target: float
    fps_achieved: float
    seconds: float
    lookahead_ms: dict[str, float | None]
    mic_to_frame_ms: dict[str, float | None]
    camera_to_frame_ms: dict[str, float | None]
    speech_to_frame_ms: dict[str, float | None]
    frames_dropped: int
    drops: dict[str, int]
    queues: dict[str, dict[str, int]]
    audio_s: float
    video_s: float
    av_drift_ms: float
    audio_silence_s: float
    audio_clock_offset_ms: float
    camera_lost_s: float
    compute_ms_per_frame: float | None
    realtime: bool
    extra: dict[str, Any] = field(default_factory=dict)
    #: Wall-clock seconds from the first to the last frame and the frames/s that makes. On a real
    #: clock they equal ``seconds`` / ``fps_achieved``; on a virtual clock (``--fast``) those are
    #: the output timeline's (always the target rate) and only these say how fast it really ran.
    wall_seconds: float = 0.0
    wall_fps: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""

        def p(d: dict[str, float | None]) -> str:
            if d["p50"] is None:
                return "n/a"
            return f"p50 {d['p50']:.0f} / p95 {d['p95']:.0f} / p99 {d['p99']:.0f} ms"

        drops = ", ".join(f"{k} {v}" for k, v in self.drops.items() if v) or "none"
        compute = f"{self.compute_ms_per_frame:.1f} ms/frame" if self.compute_ms_per_frame else "n/a"
        if self.realtime:
            rate = (f"{self.frames} frames in {self.seconds:.2f} s: {self.fps_achieved:.2f} fps "
                    f"(target {self.fps_target:g}, real time)")
        else:  # the virtual timeline always runs at the target: say the wall-clock rate
            rate = (f"{self.frames} frames in {self.wall_seconds:.2f} s wall time: "
                    f"{self.wall_fps:.2f} frames/s (as fast as possible on a virtual clock; "
                    f"the output is {self.fps_target:g} fps)")
        return (
            f"{rate}; compute {compute}\n"
            f"  mic->frame {p(self.mic_to_frame_ms)}; camera->frame {p(self.camera_to_frame_ms)}; "
            f"speech->frame {p(self.speech_to_frame_ms)} (audio lookahead {self.lookahead_ms['p50']} ms)\n"
            f"  dropped: {drops}; audio {self.audio_s:.2f} s vs video {self.video_s:.2f} s "
            f"(drift {self.av_drift_ms:.1f} ms); silence filled {self.audio_silence_s:.2f} s; "
            f"camera lost {self.camera_lost_s:.2f} s"
        )

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` atomically."""
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


class LatencyRecorder:
    """Collects :class:`FrameTiming` records and drop counts; :meth:`report` summarises them.

    Keeps every record (40 bytes each: a 10-hour stream at 25 fps is ~40 MB); ``window`` > 0
    keeps only the last ``window`` records for the percentiles (counts stay exact).
    """

    def __init__(self, fps: float, realtime: bool, window: int = 0) -> None:
        self.fps = fps
        self.realtime = realtime
        self.window = window
        self.records: list[FrameTiming] = []
        self.frames = 0
        self.first_emit: float | None = None
        self.last_emit: float | None = None
        self.first_wall: float | None = None
        self.last_wall: float | None = None
        self.drops: dict[str, int] = {}
        self.compute_s = 0.0

    def add(self, rec: FrameTiming) -> None:
        self.frames += 1
        if self.first_emit is None:
            self.first_emit = rec.emitted
            self.first_wall = time.perf_counter()
        self.last_emit = rec.emitted
        self.last_wall = time.perf_counter()
        self.records.append(rec)
        if self.window and len(self.records) > 2 * self.window:
            del self.records[: len(self.records) - self.window]

    def drop(self, what: str, n: int = 1) -> None:
        self.drops[what] = self.drops.get(what, 0) + n

    def report(self, *, queues: dict[str, dict[str, int]] | None = None, audio_s: float = 0.0,
               video_s: float = 0.0, audio_silence_s: float = 0.0, audio_clock_offset_ms: float = 0.0,
               camera_lost_s: float = 0.0, extra: dict[str, Any] | None = None,
               drift_s: float | None = None) -> LatencyReport:
        recs = self.records[-self.window:] if self.window else self.records
        if self.frames >= 2 and self.first_emit is not None and self.last_emit is not None:
            span = self.last_emit - self.first_emit
            # frames-1 intervals between the first and last emission
            fps = (self.frames - 1) / span if span > 0 else math.inf
            seconds = span
        else:
            fps, seconds = 0.0, 0.0
        wall_s, wall_fps = 0.0, 0.0
        if self.frames >= 2 and self.first_wall is not None and self.last_wall is not None:
            wall_s = self.last_wall - self.first_wall
            wall_fps = (self.frames - 1) / wall_s if wall_s > 0 else math.inf
        drops = dict(self.drops)
        for name, q in (queues or {}).items():
            if q.get("dropped"):
                drops[f"queue:{name}"] = q["dropped"]
        return LatencyReport(
            frames=self.frames,
            fps_target=self.fps,
            fps_achieved=round(fps, 3) if math.isfinite(fps) else fps,
            seconds=round(seconds, 4),
            lookahead_ms=_percentiles([r.audio_end - r.t_frame for r in recs]),
            mic_to_frame_ms=_percentiles([r.emitted - r.audio_captured for r in recs]),
            camera_to_frame_ms=_percentiles([r.emitted - r.pose_captured for r in recs
                                             if r.pose_captured is not None]),
            speech_to_frame_ms=_percentiles([r.emitted - r.t_frame for r in recs]),
            frames_dropped=sum(v for k, v in self.drops.items() if k.startswith("frame")),
            drops=drops,
            queues=dict(queues or {}),
            audio_s=round(audio_s, 4),
            video_s=round(video_s, 4),
            av_drift_ms=round((audio_s - video_s if drift_s is None else drift_s) * 1000.0, 3),
            audio_silence_s=round(audio_silence_s, 4),
            audio_clock_offset_ms=round(audio_clock_offset_ms, 3),
            camera_lost_s=round(camera_lost_s, 4),
            compute_ms_per_frame=round(1000 * self.compute_s / self.frames, 2) if self.frames else None,
            realtime=self.realtime,
            extra=dict(extra or {}),
            wall_seconds=round(wall_s, 4),
            wall_fps=round(wall_fps, 3) if math.isfinite(wall_fps) else wall_fps,
        )
