"""`SampleQueue`: a first-in first-out queue of mono float32 samples.

Audio arrives in chunks of whatever size its producer chose (a WebRTC frame, a TTS chunk, a
resampler's output) and leaves in blocks of the consumer's size (a tick, an output packet). The
queue keeps the pushed chunks as they are and an offset into the oldest one, so pushing, taking
and dropping cost time in proportion to the samples they move, never to what is queued.
"""

from __future__ import annotations

import collections

import numpy as np

__all__ = ["SampleQueue"]


class SampleQueue:
    """FIFO of mono float32 samples: `push` chunks of any size, `take` blocks of a fixed size.

    Not thread-safe: callers hold their own lock (both users already do for their counters).
    """

    def __init__(self) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._head = 0  # samples of _chunks[0] already taken
        self._n = 0  # samples queued

    def __len__(self) -> int:
        """Samples queued."""
        return self._n

    def push(self, samples: np.ndarray) -> None:
        """Append ``samples`` (any shape, flattened; converted to float32 and copied, so the
        caller may reuse its buffer)."""
        x = np.array(samples, dtype=np.float32).reshape(-1)
        if len(x):
            self._chunks.append(x)
            self._n += len(x)

    def take(self, n: int) -> tuple[np.ndarray, int]:
        """The ``n`` oldest samples, removed from the queue, and how many of them were queued:
        a float32 array of length ``n`` whose tail past the queued samples is zeros."""
        out = np.zeros(max(0, n), np.float32)
        got = self._pop(len(out), out)
        return out, got

    def drop(self, n: int) -> int:
        """Discard up to ``n`` of the oldest samples; returns how many were discarded."""
        return self._pop(max(0, n), None)

    def clear(self) -> None:
        """Discard everything queued."""
        self._chunks.clear()
        self._head = 0
        self._n = 0

    def _pop(self, n: int, out: np.ndarray | None) -> int:
        got = 0
        while got < n and self._chunks:
            head = self._chunks[0]
            m = min(n - got, len(head) - self._head)
            if out is not None:
                out[got:got + m] = head[self._head:self._head + m]
            got += m
            self._head += m
            if self._head == len(head):
                self._chunks.popleft()
                self._head = 0
        self._n -= got
        return got
