"""One model and one batch scheduler per process, shared by every agent face in it.

"Many agents, one GPU": each `trtalk.integrations.face.AgentFace` (a Pipecat service, a LiveKit
video generator) asks `acquire` for its model; faces that name the same model (family, weights,
backend, device, precision, frame rate and size) get the same `SharedModel`, whose
`trtalk.serve.scheduler.BatchScheduler` -- the one `trtalk serve` runs -- generates their frames in
shared batches. The last `release` closes it.

`SharedModel.ticker` is the process's audio clock: every face feeds its pipeline on the same 20 ms
ticks, so the frames of all faces fall due together and go through the generator as one batch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Callable

from trtalk.families.base import Avatar, ModelFamily
from trtalk.runtime.options import ModelOptions
from trtalk.serve.scheduler import BatchScheduler

log = logging.getLogger(__name__)

#: the feeding tick: 20 ms, a WebRTC audio frame
TICK_S = 0.02


class Ticker:
    """One thread calling every subscriber every `TICK_S` on an absolute schedule (a late tick
    is caught up at once, never skipped: each call feeds one tick of audio)."""

    def __init__(self, period_s: float = TICK_S) -> None:
        self.period_s = period_s
        self._subs: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = 0
        #: ticks run so far (faces start on a common frame boundary: `AgentFace` reads it)
        self.count = 0

    def subscribe(self, fn: Callable[[], None]) -> int:
        with self._lock:
            self._ids += 1
            self._subs[self._ids] = fn
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="trtalk-agent-ticker", daemon=True)
                self._thread.start()
            return self._ids

    def unsubscribe(self, sid: int) -> None:
        with self._lock:
            self._subs.pop(sid, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        t_next = time.monotonic()
        while not self._stop.is_set():
            t_next += self.period_s
            self.count += 1
            with self._lock:
                subs = list(self._subs.values())
            for fn in subs:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one face's failure must not stop the others
                    log.exception("agent face tick failed")
            delay = t_next - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:  # a second behind (the process stalled): resume from now
                t_next = time.monotonic()


@dataclass
class SharedModel:
    """A loaded family, its started scheduler, the avatars made so far and the process ticker."""

    key: tuple
    family: ModelFamily
    scheduler: BatchScheduler
    ticker: Ticker = field(default_factory=Ticker)
    users: int = 0
    avatars: dict[str, Avatar] = field(default_factory=dict)

    def avatar(self, path: str | Path) -> Avatar:
        """The avatar of the photo at ``path`` (made once, on the worker thread)."""
        from trtalk.face import read_image

        key = str(Path(path).resolve())
        if key not in self.avatars:
            image = read_image(Path(path))
            self.avatars[key] = self.scheduler.call(lambda: self.family.make_avatar(image, str(path)),
                                                    timeout=600)
        return self.avatars[key]


_LOCK = threading.Lock()
_MODELS: dict[tuple, SharedModel] = {}


def model_key(options: ModelOptions, fps: float, size: int | None) -> tuple:
    """What makes two faces share a model: every model option, the frame rate and the size."""
    return (options.resolved_model(),) + tuple(str(v) for v in astuple(options)) + (float(fps), size)


def acquire(options: ModelOptions, fps: float = 25.0, size: int | None = None,
            max_batch: int = 8) -> SharedModel:
    """The process's shared model for ``options`` (loaded and its scheduler started on first use)."""
    key = model_key(options, fps, size)
    with _LOCK:
        shared = _MODELS.get(key)
        if shared is None:
            family = options.open(fps, size=size)
            scheduler = BatchScheduler(family, max_batch=max_batch)
            scheduler.start()
            shared = SharedModel(key, family, scheduler)
            _MODELS[key] = shared
            log.info("agent model %s loaded (shared by every face in this process)", family.name)
        shared.users += 1
        return shared


def release(shared: SharedModel) -> None:
    """One face is done with ``shared``; the last one closes the scheduler and the ticker."""
    with _LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        _MODELS.pop(shared.key, None)
    shared.ticker.close()
    shared.scheduler.close()


def active() -> list[SharedModel]:
    """The shared models in use (tests and the benchmark read their scheduler statistics)."""
    with _LOCK:
        return list(_MODELS.values())


def options_for(model: str | None, checkpoint: str | Path | None = None, backend: str | None = None,
                device: str | None = None, **controls: Any) -> ModelOptions:
    """`ModelOptions` from an integration's constructor arguments (``controls``: any other
    `ModelOptions` field, e.g. ``model_config="small"``, ``eyes="auto"``)."""
    kw: dict[str, Any] = dict(controls)
    if model is not None:
        kw["model"] = model
    if checkpoint is not None:
        kw["checkpoint"] = Path(checkpoint)
    if backend is not None:
        kw["backend"] = backend
    if device is not None:
        kw["device"] = device
    return ModelOptions(**kw)
