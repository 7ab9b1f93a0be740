"""`/metrics` in the Prometheus text format (0.0.4), written by hand (no client library).

Series: sessions (active, started, refused, failed), frames and drops, the scheduler's batch
sizes (histogram), mic-to-frame latency (histogram, overall and per active session: a session's
series disappear when it ends, so the label set stays bounded), the worker's busy seconds and the
measured capacity.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(list(self.buckets) + [float("inf")], self.counts):
            acc += c
            le = "+Inf" if b == float("inf") else f"{b:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {acc}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]
        return out


class Metrics:
    """The server's counters; `render` writes them with the scheduler's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.refused = 0
        self.failed = 0
        self.frames = 0
        self.drops: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.per_session: dict[str, Histogram] = {}

    def session_started(self, sid: str) -> None:
        with self._lock:
            self.started += 1
            self.per_session[sid] = Histogram(LATENCY_BUCKETS)

    def session_ended(self, sid: str, drops: dict[str, int]) -> None:
        with self._lock:
            self.per_session.pop(sid, None)
            for k, v in drops.items():
                self.drops[k] = self.drops.get(k, 0) + v

    def error(self) -> None:
        with self._lock:
            self.failed += 1

    def frame(self, sid: str, mic_to_frame_s: float) -> None:
        with self._lock:
            self.frames += 1
            self.latency.observe(mic_to_frame_s)
            h = self.per_session.get(sid)
            if h is not None:
                h.observe(mic_to_frame_s)

    def render(self, server: Any) -> str:
        st = server.scheduler.stats
        live_drops: dict[str, int] = {}
        for s in list(server.sessions.values()):
            for k, v in dict(s.pipeline.latency.drops).items():  # a snapshot: the session writes it
                live_drops[k] = live_drops.get(k, 0) + v
        with self._lock:
            drops = dict(self.drops)
            for k, v in live_drops.items():
                drops[k] = drops.get(k, 0) + v
            lines = [
                "# HELP trtalk_sessions_active Sessions running now.",
                "# TYPE trtalk_sessions_active gauge",
                f"trtalk_sessions_active {len(server.sessions)}",
                "# HELP trtalk_sessions_capacity Sessions the measured throughput admits.",
                "# TYPE trtalk_sessions_capacity gauge",
                f"trtalk_sessions_capacity {server.capacity_sessions()}",
                "# HELP trtalk_capacity_frames_per_second Measured generator frames/s (best batch).",
                "# TYPE trtalk_capacity_frames_per_second gauge",
                f"trtalk_capacity_frames_per_second {min(server.capacity.frames_per_s, 1e9):.3f}",
                "# HELP trtalk_draining 1 while the server admits no new session.",
                "# TYPE trtalk_draining gauge",
                f"trtalk_draining {int(server.draining)}",
                "# HELP trtalk_sessions_started_total Sessions admitted.",
                "# TYPE trtalk_sessions_started_total counter",
                f"trtalk_sessions_started_total {self.started}",
                "# HELP trtalk_sessions_refused_total Sessions refused by admission control.",
                "# TYPE trtalk_sessions_refused_total counter",
                f"trtalk_sessions_refused_total {self.refused}",
                "# HELP trtalk_sessions_failed_total Sessions ended by an error.",
                "# TYPE trtalk_sessions_failed_total counter",
                f"trtalk_sessions_failed_total {self.failed}",
                "# HELP trtalk_frames_total Frames sent to browsers.",
                "# TYPE trtalk_frames_total counter",
                f"trtalk_frames_total {self.frames}",
                "# HELP trtalk_frames_dropped_total Frames dropped, by reason.",
                "# TYPE trtalk_frames_dropped_total counter",
            ]
            lines += [f'trtalk_frames_dropped_total{{reason="{k}"}} {v}' for k, v in sorted(drops.items())]
            lines += [f'trtalk_frames_dropped_total{{reason="scheduler_deadline"}} {st.dropped}',
                      "# HELP trtalk_worker_batches_total Generator batches run.",
                      "# TYPE trtalk_worker_batches_total counter",
                      f"trtalk_worker_batches_total {st.batches}",
                      "# HELP trtalk_worker_errors_total Sessions whose frames made the model raise.",
                      "# TYPE trtalk_worker_errors_total counter",
                      f"trtalk_worker_errors_total {st.errors}",
                      "# HELP trtalk_worker_busy_seconds_total Seconds the worker spent in batches.",
                      "# TYPE trtalk_worker_busy_seconds_total counter",
                      f"trtalk_worker_busy_seconds_total {st.busy_s:.6f}",
                      "# HELP trtalk_batch_size Frames per generator batch.",
                      "# TYPE trtalk_batch_size histogram"]
            bs = Histogram((1, 2, 4, 8, 16, 32))
            for size, n in sorted(dict(st.batch_sizes).items()):  # a snapshot: the worker writes it
                bs.counts[bisect.bisect_left(bs.buckets, size)] += n
                bs.sum += size * n
                bs.count += n
            lines += bs.lines("trtalk_batch_size")
            lines += ["# HELP trtalk_mic_to_frame_seconds Last needed mic sample to frame sent, all sessions.",
                      "# TYPE trtalk_mic_to_frame_seconds histogram"]
            lines += self.latency.lines("trtalk_mic_to_frame_seconds")
            lines += ["# HELP trtalk_session_mic_to_frame_seconds Mic-to-frame latency per active session.",
                      "# TYPE trtalk_session_mic_to_frame_seconds histogram"]
            for sid, h in sorted(self.per_session.items()):
                lines += h.lines("trtalk_session_mic_to_frame_seconds", f'session="{sid}"')
        return "\n".join(lines) + "\n"
