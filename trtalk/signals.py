"""SIGINT and SIGTERM end every trtalk command the same way: the one helper `on_signals`.

``timeout``, ``docker stop`` and systemd send SIGTERM; a person presses Ctrl-C (SIGINT). Both
must leave the same state behind, so both go down the same path:

- **Batch work** (render, demo, export, convert, bench): ``with on_signals():`` turns either
  signal into `Interrupted` (a ``KeyboardInterrupt``) raised in the main thread. Every ``with``
  block unwinds: `trtalk.fsutil.atomic_output` deletes its temp file, `Mp4Sink` discards its
  partial mp4, staging folders are removed. The command then exits ``128 + signal`` (130 for
  SIGINT, 143 for SIGTERM) with one line on stderr; no output and no temp file is left.
- **Live work** (stream): ``with on_signals(stop):`` sets the ``stop`` event on the first signal
  (the pipeline finishes its batch, a recording is finalised and kept) and raises `Interrupted`
  on a second one (give up waiting).

`trtalk.cli.main` wraps every command in ``on_signals()``; a command that stops by event nests
``on_signals(stop)`` inside it. Signal handlers can only be set in the main thread: elsewhere the
helper changes nothing.

An `Interrupted` can be lost on its way up: the handler raises it in whatever Python code the
main thread runs at that instant, and some native extensions discard exceptions raised in code
they call (PyAV's ``err_check`` does, seen as a render that got SIGINT and saved its mp4 anyway).
So the batch handler also records the signal: `raise_if_interrupted` raises it again, and
`trtalk.fsutil.atomic_output` calls it before every rename, so no output is committed after a
signal; the outermost ``on_signals()`` block raises it at its end if nothing did.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

__all__ = ["HANDLED", "Interrupted", "on_signals", "raise_if_interrupted"]

#: The signals that end a command.
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM (``signum`` says which)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + self.signum


#: The signal a batch ``on_signals()`` block turned into `Interrupted` (None: none yet).
_received: int | None = None
#: How many ``on_signals`` blocks the main thread is in.
_depth = 0


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a batch ``on_signals()`` block got SIGINT / SIGTERM, even when the
    exception its handler raised was swallowed on the way. Call it before committing output."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event | None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` (``stop`` None) or set ``stop``
    first and raise on a repeat. The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        global _received
        if stop is not None and not stop.is_set():
            log.info("stopping (%s); send it again to abort", signal.Signals(signum).name)
            stop.set()
            return
        _received = signum
        raise Interrupted(signum)

    global _depth, _received
    if _depth == 0:
        _received = None
    _depth += 1
    old = {}
    try:
        for sig in HANDLED:
            old[sig] = signal.signal(sig, handler)
        yield stop
        if _depth == 1:
            raise_if_interrupted()  # a signal whose exception something swallowed
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        _depth -= 1
        if _depth == 0:
            _received = None
