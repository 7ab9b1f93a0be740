"""`/metrics` in the Prometheus text format, with `prometheus_client` (the serve extra).

Series: sessions (active, started, refused, failed), frames and drops, the scheduler's batch
sizes (histogram), mic-to-frame latency (histogram, overall and per active session: a session's
series disappear when it ends, so the label set stays bounded), the worker's busy seconds and the
measured capacity.

Each server has its own `CollectorRegistry` (never the process-wide default one), so two servers
in one process keep separate counts. The event counters and latency histograms are
`prometheus_client` metrics updated as things happen; what the server and the scheduler already
count (sessions running, capacity, drops, batches) is read at scrape time by `_ServerCollector`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class Metrics:
    """One server's series (see the module docstring); `render` writes them for a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the per-session label set and the ended sessions' drops
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: Any = None
        r = self.registry
        self._started = Counter("trtalk_sessions_started", "Sessions admitted.", registry=r)
        self._refused = Counter("trtalk_sessions_refused", "Sessions refused by admission control.",
                                registry=r)
        self._failed = Counter("trtalk_sessions_failed", "Sessions ended by an error.", registry=r)
        self._frames = Counter("trtalk_frames", "Frames sent to browsers.", registry=r)
        self._latency = Histogram("trtalk_mic_to_frame_seconds",
                                  "Last needed mic sample to frame sent, all sessions.",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._session_latency = Histogram("trtalk_session_mic_to_frame_seconds",
                                          "Mic-to-frame latency per active session.", ["session"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.per_session: dict[str, Any] = {}  # sid -> its labelled latency histogram
        self.drops: dict[str, int] = {}  # frames dropped by sessions that have ended, by reason
        r.register(_ServerCollector(self))

    # ------------------------------------------------------------------ events

    def session_started(self, sid: str) -> None:
        with self._lock:
            self._started.inc()
            self.per_session[sid] = self._session_latency.labels(session=sid)

    def session_refused(self) -> None:
        self._refused.inc()

    def session_ended(self, sid: str, drops: dict[str, int]) -> None:
        with self._lock:
            if self.per_session.pop(sid, None) is not None:
                self._session_latency.remove(sid)
            for k, v in drops.items():
                self.drops[k] = self.drops.get(k, 0) + v

    def error(self) -> None:
        self._failed.inc()

    def frame(self, sid: str, mic_to_frame_s: float) -> None:
        self._frames.inc()
        self._latency.observe(mic_to_frame_s)
        with self._lock:
            h = self.per_session.get(sid)
        if h is not None:
            h.observe(mic_to_frame_s)

    # ------------------------------------------------------------------ reads

    def _count(self, series: str) -> int:
        return int(self.registry.get_sample_value(series) or 0)

    @property
    def started(self) -> int:
        return self._count("trtalk_sessions_started_total")

    @property
    def refused(self) -> int:
        return self._count("trtalk_sessions_refused_total")

    @property
    def failed(self) -> int:
        return self._count("trtalk_sessions_failed_total")

    @property
    def frames(self) -> int:
        return self._count("trtalk_frames_total")

    def render(self, server: Any) -> str:
        """The exposition text of every series, ``server``'s state read now."""
        self._server = server
        return generate_latest(self.registry).decode("utf-8")


class _ServerCollector(Collector):
    """The series read at scrape time from the server and its scheduler."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        return []  # values come from a server bound at render time; nothing to describe before

    def collect(self) -> Iterator[Any]:
        server = self.metrics._server
        if server is None:
            return
        st = server.scheduler.stats
        yield GaugeMetricFamily("trtalk_sessions_active", "Sessions running now.",
                                value=len(server.sessions))
        yield GaugeMetricFamily("trtalk_sessions_capacity",
                                "Sessions that fit at the frame rate (measured cost, refreshed as it runs).",
                                value=server.capacity_sessions())
        yield GaugeMetricFamily("trtalk_sessions_room", "Sessions that can still start now.",
                                value=server.room())
        yield GaugeMetricFamily("trtalk_capacity_frames_per_second",
                                "Frames/s the server can make for its sessions, encoding included "
                                "(before the admission headroom).",
                                value=min(server.capacity.frames_per_s, 1e9))
        yield GaugeMetricFamily("trtalk_frame_cost_seconds",
                                "Measured process CPU seconds per served frame (EWMA; networks, "
                                "sessions and video encoding).", value=server.cost.frame_cost_s())
        yield GaugeMetricFamily("trtalk_cpu_rate",
                                "CPU seconds per second the server counts on (usable cores, lowered "
                                "to what it reached when a session fell behind).",
                                value=min(server.cost.cpu_rate(), 1e9))
        yield GaugeMetricFamily("trtalk_draining", "1 while the server admits no new session.",
                                value=int(server.draining))
        drops: dict[str, int] = {}
        for s in list(server.sessions.values()):
            for k, v in dict(s.pipeline.latency.drops).items():  # a snapshot: the session writes it
                drops[k] = drops.get(k, 0) + v
        with self.metrics._lock:
            for k, v in self.metrics.drops.items():
                drops[k] = drops.get(k, 0) + v
        drops["scheduler_deadline"] = drops.get("scheduler_deadline", 0) + st.dropped
        fam = CounterMetricFamily("trtalk_frames_dropped", "Frames dropped, by reason.", labels=["reason"])
        for k, v in sorted(drops.items()):
            fam.add_metric([k], v)
        yield fam
        yield CounterMetricFamily("trtalk_worker_batches", "Generator batches run.", value=st.batches)
        yield CounterMetricFamily("trtalk_worker_errors", "Sessions whose frames made the model raise.",
                                  value=st.errors)
        yield CounterMetricFamily("trtalk_worker_busy_seconds", "Seconds the worker spent in batches.",
                                  value=st.busy_s)
        counts = [0] * (len(BATCH_BUCKETS) + 1)
        total = 0
        for size, n in sorted(dict(st.batch_sizes).items()):  # a snapshot: the worker writes it
            counts[bisect.bisect_left(BATCH_BUCKETS, size)] += n
            total += size * n
        cumulative, acc = [], 0
        for b, c in zip([str(b) for b in BATCH_BUCKETS] + ["+Inf"], counts):
            acc += c
            cumulative.append((b, acc))
        yield HistogramMetricFamily("trtalk_batch_size", "Frames per generator batch.",
                                    buckets=cumulative, sum_value=total)
