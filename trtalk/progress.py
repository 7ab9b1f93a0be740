"""Progress bars with an ETA for long jobs (render, export, AOT builds, bench, motion fits).

One helper for every command::

    from trtalk import progress

    with progress.bar(total=len(stages), desc="export", unit="stage") as bar:
        for stage in stages:
            ...
            bar.update(1)

A bar is drawn only on a terminal and never with ``trtalk -q`` (`set_enabled`): piped or logged
output gets none of tqdm's carriage returns. ``total`` may be 0 and set later (``bar.total = n``).
`trtalk.cli` filters third-party noise out of file descriptor 2 through a pipe; it hands the real
terminal to `set_terminal`, so that bars are drawn there (the pipe is not a TTY, and it forwards
whole lines only).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["Steps", "bar", "enabled", "set_enabled", "set_terminal", "start", "steps"]

_state: dict[str, Any] = {"enabled": True, "terminal": None}


def set_enabled(on: bool) -> None:
    """Allow bars (the default) or turn all of them off (``trtalk -q``)."""
    _state["enabled"] = bool(on)


def set_terminal(stream: IO[str] | None) -> None:
    """Where bars are drawn (None: sys.stderr)."""
    _state["terminal"] = stream


def _stream() -> IO[str]:
    return _state["terminal"] or sys.stderr


def enabled() -> bool:
    """Whether a bar would be drawn now: allowed, and its stream is a terminal."""
    if not _state["enabled"]:
        return False
    try:
        return bool(_stream().isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def bar(total: float | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> Iterator[Any]:
    """A tqdm bar (count, rate, elapsed and ETA) on the terminal; a disabled one (same methods,
    draws nothing) when output is not a terminal or bars are off."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=_stream(), disable=not enabled(),
              dynamic_ncols=True, leave=True, **kwargs) as b:
        yield b


class Steps:
    """Progress through named steps (export stages, bench rows): ``steps.next("generator")``
    advances the bar and shows the step now running."""

    def __init__(self, bar_: Any) -> None:
        self.bar = bar_
        self.started = False

    def next(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name, refresh=True)

    def done(self) -> None:
        if self.started:
            self.bar.update(1)
            self.started = False

    def close(self) -> None:
        """Count the last step and close the bar."""
        self.done()
        self.bar.close()


def start(total: int, desc: str, unit: str = "step") -> Steps:
    """`steps` without a ``with`` (for a loop already inside a try): call ``.close()`` after it."""
    from tqdm import tqdm

    return Steps(tqdm(total=total, desc=desc, unit=unit, file=_stream(), disable=not enabled(),
                      dynamic_ncols=True, leave=True))


@contextlib.contextmanager
def steps(total: int, desc: str, unit: str = "step") -> Iterator[Steps]:
    """`bar` over ``total`` named steps (see `Steps`); the last step is counted on leaving."""
    with bar(total=total, desc=desc, unit=unit) as b:
        s = Steps(b)
        yield s
        s.done()
