"""Clocks for the streaming runtime: real time, or a virtual clock that runs as fast as possible.

Every timestamp in the streaming runtime is a float of seconds on one clock. With
:class:`RealClock` that is ``time.monotonic()``; with :class:`VirtualClock` it is a number that
only moves when someone calls :meth:`Clock.advance_to`, so a replay from files runs as fast as the
computer allows while the timestamps stay exactly those of a real-time run without compute delay
(frame k emitted at ``t0 + k/fps + lookahead``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic time source in seconds."""

    #: True when sleeping really waits (sources pace themselves and queues may overflow).
    realtime: bool

    def now(self) -> float:
        """The current time in seconds (monotonic, never decreasing)."""
        ...

    def sleep_until(self, t: float, stop: threading.Event | None = None) -> bool:
        """Wait until ``now() >= t`` or ``stop`` is set; return False when stopped."""
        ...

    def advance_to(self, t: float) -> None:
        """Move a virtual clock forward to ``t`` (never back); a no-op on a real clock."""
        ...


class RealClock:
    """``time.monotonic``; ``sleep_until`` really sleeps (waking early when ``stop`` is set)."""

    realtime = True

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float, stop: threading.Event | None = None) -> bool:
        while True:
            left = t - time.monotonic()
            if stop is not None and stop.is_set():
                return False
            if left <= 0:
                return True
            if stop is not None:
                if stop.wait(min(left, 0.1)):
                    return False
            else:
                time.sleep(min(left, 0.1))

    def advance_to(self, t: float) -> None:
        return None


class VirtualClock:
    """A clock that never waits: ``sleep_until`` returns at once, ``now`` moves only by ``advance_to``.

    Thread-safe. Starts at ``start`` (default 0.0).
    """

    realtime = False

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def sleep_until(self, t: float, stop: threading.Event | None = None) -> bool:
        return not (stop is not None and stop.is_set())

    def advance_to(self, t: float) -> None:
        with self._lock:
            if t > self._t:
                self._t = float(t)
