"""One inference worker for every session: earliest-deadline-first batches across sessions.

Each session's frame step submits its due frames as `WorkItem`s (mel window, pose code, avatar,
the session's family state and a deadline on ``time.monotonic``). The worker thread owns the
model (one family, shared by every session):

1. it waits for items; when fewer than ``max_batch`` are queued it may wait up to ``gather_s``
   for more, but never past the earliest deadline less the measured cost of the batch;
2. items whose deadline already passed are dropped (resolved as ``None``: the session repeats
   its last frame and counts a drop) -- a frame is never held past its deadline;
3. the ``max_batch`` earliest deadlines form one batch: mouth codes by `ModelFamily.mouth_many`
   (PC-AVS: one audio-encoder call; the warp avatar: each session's own follower), then one
   `ModelFamily.generate_many` over all avatars.

A batch that raises is retried one session at a time, so the error reaches only the session whose
items fail; the others get their frames. Other model work (making an avatar, encoding webcam
poses) goes through `call`, on the same thread, so the networks are only ever used by one thread.

`measure_throughput` times batches of 1, 2, 4, ... on a warm-up avatar: the admission check uses
the best frames/s a batch reaches within the latency budget.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trtalk.families.base import Avatar, FamilyState, ModelFamily, PoseInput

log = logging.getLogger(__name__)

#: A batch-size histogram's buckets and the mic-to-frame latency histogram's (seconds).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class WorkerError(Exception):
    """The model raised on one session's frames; ``str`` is the message for that session."""


@dataclass(order=True)
class WorkItem:
    """One frame of one session, ordered by deadline (then submission)."""

    deadline: float
    seq: int
    session: str = field(compare=False)
    state: FamilyState = field(compare=False)  # its stream's, in the scheduler's (shared) family
    avatar: Avatar = field(compare=False)
    mel: torch.Tensor = field(compare=False)  # 1 x 80 x 20
    frame: int = field(compare=False)
    pose: torch.Tensor = field(compare=False)  # P
    future: Future = field(compare=False, default_factory=Future)
    #: the mouth code when it comes from elsewhere (`trtalk.runtime.mouth_path`); ``mel`` is then unused
    mouth: torch.Tensor | None = field(compare=False, default=None)
    #: the tracked input the pose was encoded from (None: held, or no camera), for a family that
    #: reads more from it (PD-FGC's webcam eyes and emotion)
    camera: PoseInput | None = field(compare=False, default=None)


@dataclass
class SchedulerStats:
    """Counters for /metrics (read without the lock: ints and a dict, good enough for a scrape)."""

    batches: int = 0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)
    busy_s: float = 0.0


class BatchScheduler:
    """The shared EDF scheduler and its worker thread (see the module docstring)."""

    def __init__(self, family: ModelFamily, max_batch: int = 8, gather_s: float = 0.005,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.family = family
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.clock = clock
        self.stats = SchedulerStats()
        self._heap: list[WorkItem] = []
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stop = False
        self._thread: threading.Thread | None = None
        #: measured seconds per batch of each size (EMA), used to bound the gather wait
        self.cost_s: dict[int, float] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trtalk-serve-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._cond:
            for item in self._heap:
                item.future.cancel()
            self._heap.clear()
            for _, fut in self._calls:
                fut.cancel()
            self._calls.clear()

    # -- submission ---------------------------------------------------------------------------

    def submit(self, session: str, state: FamilyState, avatar: Avatar, mel: torch.Tensor,
               frames: Sequence[int], pose: torch.Tensor, deadlines: Sequence[float],
               mouth: torch.Tensor | None = None,
               camera: Sequence[PoseInput | None] | None = None) -> list[Future]:
        """Queue frames of one session (``state``: its stream's family state); each future gives
        an H x W x 3 crop, None (dropped past its deadline) or raises `WorkerError`. ``mouth``:
        B x M mouth codes from elsewhere (the mel windows are then unused); ``camera``: per
        frame, the tracked input its pose was encoded from."""
        items = [WorkItem(d, next(self._seq), session, state, avatar, mel[i], k, pose[i],
                          mouth=None if mouth is None else mouth[i],
                          camera=None if camera is None else camera[i])
                 for i, (k, d) in enumerate(zip(frames, deadlines))]
        with self._cond:
            if self._stop:
                raise WorkerError("the server is shutting down")
            for it in items:
                heapq.heappush(self._heap, it)
            self._cond.notify_all()
        return [it.future for it in items]

    def call(self, fn: Callable[[], Any], timeout: float | None = 60.0) -> Any:
        """Run ``fn`` on the worker thread (between batches) and return its result."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()
        with self._cond:
            if self._stop:
                raise WorkerError("the server is shutting down")
            self._calls.append((fn, fut))
            self._cond.notify_all()
        return fut.result(timeout)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    # -- the worker ---------------------------------------------------------------------------

    def _cost(self, n: int) -> float:
        if not self.cost_s:
            return 0.0
        sizes = sorted(self.cost_s)
        le = [s for s in sizes if s <= n]
        base = le[-1] if le else sizes[0]
        return self.cost_s[base] * n / base

    def _take(self) -> list[WorkItem] | None:
        """The next batch (None: stopping). Drops expired items; waits for more up to the gather
        time, never past the earliest deadline less the batch cost."""
        with self._cond:
            gather_until: float | None = None
            while True:
                while not self._heap and not self._calls and not self._stop:
                    self._cond.wait(0.5)
                if self._stop:
                    return None
                if self._calls:
                    return []
                now = self.clock()
                expired = []
                while self._heap and self._heap[0].deadline < now:
                    expired.append(heapq.heappop(self._heap))
                if expired:
                    self.stats.dropped += len(expired)
                    for it in expired:
                        it.future.set_result(None)
                    continue
                if len(self._heap) < self.max_batch:
                    if gather_until is None:
                        gather_until = now + self.gather_s
                    # leave the batch's cost twice over (and 5 ms) before the earliest deadline
                    limit = min(gather_until, self._heap[0].deadline - 2 * self._cost(len(self._heap) + 1) - 0.005)
                    if limit - now > 0.0005:
                        self._cond.wait(limit - now)
                        continue
                n = min(self.max_batch, len(self._heap))
                return [heapq.heappop(self._heap) for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                with self._cond:
                    fn, fut = self._calls.popleft()
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)
                continue
            t = time.perf_counter()
            try:
                crops = self.run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - isolate the failing session(s)
                log.warning("batch of %d failed (%s); retrying per session", len(batch), exc)
                self._retry_per_session(batch)
            else:
                for it, crop in zip(batch, crops):
                    it.future.set_result(crop)
            dt = time.perf_counter() - t
            n = len(batch)
            old = self.cost_s.get(n)
            self.cost_s[n] = dt if old is None else 0.8 * old + 0.2 * dt
            self.stats.batches += 1
            self.stats.frames += n
            self.stats.batch_sizes[n] += 1
            self.stats.busy_s += dt

    def _retry_per_session(self, batch: list[WorkItem]) -> None:
        groups: dict[str, list[WorkItem]] = collections.defaultdict(list)
        for it in batch:
            groups[it.session].append(it)
        for session, items in groups.items():
            try:
                crops = self.run_batch(items)
            except Exception as exc:  # noqa: BLE001 - that session's error, others go on
                self.stats.errors += 1
                log.error("inference failed for session %s: %s", session, exc)
                err = WorkerError(f"inference failed: {type(exc).__name__}: {exc}")
                for it in items:
                    it.future.set_exception(err)
            else:
                for it, crop in zip(items, crops):
                    it.future.set_result(crop)

    def run_batch(self, items: Sequence[WorkItem]) -> np.ndarray:
        """Crops of ``items``: mouth codes per session (its family state), one `generate_many`."""
        with torch.no_grad():
            mouth: list[torch.Tensor | None] = [it.mouth for it in items]
            todo = [i for i, it in enumerate(items) if it.mouth is None]
            if todo:
                # each session's frames in frame order: a follower's state must see them in order
                todo.sort(key=lambda i: (items[i].session, items[i].frame))
                codes = self.family.mouth_many([items[i].state for i in todo],
                                               torch.stack([items[i].mel for i in todo]),
                                               [items[i].frame for i in todo])
                for i, c in zip(todo, codes):
                    mouth[i] = c
            pose = torch.stack([it.pose.float() for it in items])
            # per-stream codes besides mouth and pose (PD-FGC: eyes, emotion, the pose factor),
            # from each session's state, its frames in order
            codes: list[dict[str, torch.Tensor] | None] = [None] * len(items)
            streams: dict[int, list[int]] = collections.defaultdict(list)
            for i, it in enumerate(items):
                streams[id(it.state)].append(i)
            for idx in streams.values():
                idx.sort(key=lambda i: (items[i].session, items[i].frame))
                it0 = items[idx[0]]
                rows = self.family.frame_codes(it0.state, it0.avatar, [items[i].frame for i in idx], pose[idx],
                                               [items[i].camera for i in idx])
                if rows is not None:
                    for j, i in enumerate(idx):
                        codes[i] = {k: v[j] for k, v in rows.items()}
            kw = {"codes": codes} if all(c is not None for c in codes) else {}
            return self.family.generate_many([it.avatar for it in items], torch.stack(mouth), pose, **kw)


def measure_throughput(scheduler: BatchScheduler, avatar: Avatar, fps: float,
                       budget_s: float, sizes: Sequence[int] | None = None,
                       repeats: int = 3) -> dict[int, float]:
    """Frames/s of batches of each size (best of ``repeats`` after one warm-up call), on the
    calling thread before the worker starts. Sizes whose batch takes longer than ``budget_s`` are
    measured but stop the sweep."""
    from trtalk.audio.mel import MEL_WINDOW_FRAMES

    fam = scheduler.family
    state = fam.new_state()  # a warm-up stream's
    sizes = list(sizes or [s for s in BATCH_BUCKETS if s <= scheduler.max_batch])
    if scheduler.max_batch not in sizes:
        sizes.append(scheduler.max_batch)
    out: dict[int, float] = {}
    for b in sorted(set(sizes)):
        mel = torch.zeros(b, 1, 80, MEL_WINDOW_FRAMES)
        pose = fam.still_pose(avatar, list(range(b)), fps)
        items = [WorkItem(0.0, i, "warmup", state, avatar, mel[i], i, pose[i]) for i in range(b)]
        scheduler.run_batch(items)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            scheduler.run_batch(items)
            best = min(best, time.perf_counter() - t)
        scheduler.cost_s[b] = best
        out[b] = b / best if best > 0 else float("inf")
        log.info("warm-up: batch %d: %.1f ms (%.1f frames/s)", b, 1000 * best, out[b])
        if best > budget_s:
            break
    return out


def capacity_fps(throughput: dict[int, float], costs: dict[int, float], budget_s: float) -> float:
    """The best frames/s of a batch size whose batch fits in ``budget_s`` (batch 1 always counts)."""
    ok = [fps for b, fps in throughput.items() if b == 1 or costs.get(b, 0.0) <= budget_s]
    return max(ok) if ok else 0.0
