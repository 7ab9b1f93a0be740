"""The frame-sink contract (:class:`FrameSink`) and :class:`NullSink`.

A sink takes generated RGB frames one at a time (``write``) and finishes with
``close``.  Implementations: :class:`NullSink` here, :class:`trtalk.media.mp4.Mp4Sink`
(H.264/AAC file), and the live outputs in :mod:`trtalk.runtime.livesinks` (virtual
camera, preview window).

Frames are ``H x W x 3`` RGB ``uint8`` arrays, C-contiguous or not.
"""

from __future__ import annotations

import abc
import os

import numpy as np

from trtalk.media.frames import check_frame

__all__ = ["FrameSink", "NullSink"]


class FrameSink(abc.ABC):
    """Where generated frames go: ``write`` frames in order, then ``close`` (idempotent).

    Every sink is a context manager; leaving the ``with`` block closes it (a sink may
    discard its output instead when the block raised, as :class:`~trtalk.media.mp4.Mp4Sink`
    does).

    Audio capability: a sink whose :attr:`accepts_audio` is True also takes the audio
    that drove the frames through :meth:`write_audio` (float32 mono samples at the sink's
    sample rate, in order, starting at output time 0), so that its audio and video share
    one timeline.  A producer feeds audio to exactly the sinks that accept it.  The base
    class accepts none: ``accepts_audio`` is False and ``write_audio`` raises.

    Stop requests: :attr:`stop_requested` turns True when the sink's user asked to stop
    (a preview window closed with q); a live producer then ends the stream.  Base: never.
    """

    #: counters a sink keeps; the base reads them (subclasses update them)
    _frames_written: int = 0
    _closed: bool = False

    @property
    def frames_written(self) -> int:
        """Frames accepted by ``write`` so far."""
        return self._frames_written

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self._closed

    @abc.abstractmethod
    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        """Consume one ``H x W x 3`` RGB uint8 frame shown at ``pts_s`` seconds (None: next)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish; idempotent."""

    #: True when :meth:`write_audio` takes the driving audio (a sink sets it on itself)
    accepts_audio: bool = False
    #: True once the sink's user asked to stop the stream (a sink sets it on itself)
    stop_requested: bool = False

    def write_audio(self, samples: np.ndarray) -> None:
        """Append float32 mono samples to the sink's audio (only when :attr:`accepts_audio`)."""
        raise TypeError(f"{type(self).__name__} takes no audio (accepts_audio is False)")

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullSink(FrameSink):
    """A sink that counts frames and throws them away (benchmarks, dry runs).

    Takes :class:`~trtalk.media.mp4.Mp4Sink`'s constructor arguments so the two are
    interchangeable; ``path`` and the encoding arguments are ignored.  Frames are still
    checked to be ``H x W x 3`` uint8 so bugs show up in dry runs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        fps: float = 25.0,
        size: tuple[int, int] | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        crf: int | None = None,
    ) -> None:
        self._fps = float(fps)
        self._frames_written = 0
        self._closed = False

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        """Check and count one frame."""
        if self._closed:
            raise ValueError("write() on a closed NullSink")
        check_frame(frame_rgb)
        self._frames_written += 1

    def close(self) -> None:
        self._closed = True

    def abort(self) -> None:
        self._closed = True
