"""The pipeline's audio path: timestamped chunks in, mel windows of due frames out.

Audio sample n sits at ``t0 + n / 16000``; chunks are placed by their timestamps, gaps (device
lost, ring overflow) are filled with silence -- a closed mouth -- and overlaps trimmed. The audio
that drove the lips is handed to the audio sinks (the recorder), so recordings stay in sync.

Gain. The official frontend scales the whole file to RMS 0.1, which a live stream cannot know in
advance: a fixed gain (given, or the exact whole-file gain of a non-looping file: then the mel
equals the offline one bit for bit) or a running estimate (`GainControl`).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from trtalk.audio import MelConfig, StreamingMel, window_start
from trtalk.audio.mel import MEL_WINDOW_FRAMES
from trtalk.runtime.sources import SAMPLE_RATE, AudioChunk, SourceEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GainConfig:
    """Running-gain parameters (live audio): an exponential average (``tau_s``) of the mean square
    of blocks louder than ``gate_rms`` (pauses do not pull the gain up), RMS floored at
    ``floor_rms`` (gain at most 10), starting at ``start_rms``."""

    tau_s: float = 3.0
    gate_rms: float = 10 ** (-50 / 20)
    floor_rms: float = 0.01
    start_rms: float = 0.05


class GainControl:
    """The gain that brings speech to the official RMS 0.1: fixed, or running (see `GainConfig`)."""

    def __init__(self, cfg: GainConfig, fixed: float | None) -> None:
        self.cfg = cfg
        self.fixed = fixed
        self.ms = cfg.start_rms ** 2

    def gain(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return 0.1 / max(self.cfg.floor_rms, math.sqrt(self.ms))

    def observe(self, x: np.ndarray) -> None:
        if self.fixed is not None or x.size == 0:
            return
        ms = float(np.mean(np.square(x, dtype=np.float64)))
        if ms > self.cfg.gate_rms ** 2:
            alpha = min(1.0, x.size / (self.cfg.tau_s * SAMPLE_RATE))
            self.ms += alpha * (ms - self.ms)


class AudioPath:
    """Mel rows of the audio received so far, and the frames they complete.

    ``audio_sinks`` get every sample that drove the lips (silence fills included);
    ``on_lost(detail)`` is called when the microphone goes quiet or reports a loss.
    """

    def __init__(self, fps: float, gain: GainControl, name: str,
                 audio_sinks: Sequence[Any] = ()) -> None:
        self.fps = fps
        self.name = name
        self.gain = gain
        self.mel_cfg = MelConfig()
        self.mel = StreamingMel(self.mel_cfg, gain=gain.gain())
        self.audio_sinks = list(audio_sinks)
        self.t0 = 0.0
        self._rows = np.zeros((0, self.mel_cfg.n_mels), np.float32)
        self._row_base = 0
        self.pos = 0  # samples received (incl. silence fills)
        self.last_arrival = 0.0  # clock time the latest audio item arrived (its ``captured``)
        self._captured: collections.deque[tuple[int, float]] = collections.deque()
        self.ended = False
        self.lost = False
        self.silence_samples = 0
        self.clock_offset_max = 0.0
        self.lost_episodes = 0
        self.final_frames: int | None = None

    def need_samples(self, k: int) -> int:
        """Audio samples (from t0) that frame k's mel window needs."""
        return (window_start(k, self.fps) + MEL_WINDOW_FRAMES) * self.mel_cfg.hop

    # -- input -------------------------------------------------------------

    def _push(self, x: np.ndarray, captured: float) -> None:
        self.gain.observe(x)
        self.mel.gain = self.gain.gain()
        rows = self.mel.push(x)
        if len(rows):
            self._rows = np.concatenate([self._rows, rows])
        self.pos += len(x)
        self._captured.append((self.pos, captured))
        for s in self.audio_sinks:
            s.write_audio(x)

    def fill_silence(self, until: int, captured: float) -> None:
        n = until - self.pos
        if n > 0:
            self.silence_samples += n
            self._push(np.zeros(n, np.float32), captured)

    def on_item(self, item: Any) -> None:
        """Take one queue item: an `AudioChunk` or a `SourceEvent`."""
        tol = int(0.05 * SAMPLE_RATE)
        if isinstance(item, AudioChunk):
            self.last_arrival = max(self.last_arrival, item.captured)
            x = item.samples
            n0 = int(round((item.t - self.t0) * SAMPLE_RATE))
            delta = n0 - self.pos
            if delta > tol:
                self.fill_silence(n0, item.captured)
            elif delta < -tol:
                x = x[min(len(x), -delta):]
            else:
                self.clock_offset_max = max(self.clock_offset_max, abs(delta) / SAMPLE_RATE)
            if self.lost:
                self.lost = False
                log.info("microphone recovered; lips follow the audio again")
            if len(x):
                self._push(x, item.captured)
        elif isinstance(item, SourceEvent):
            if item.kind == "lost":
                self.warn_lost(item.detail)
            elif item.kind == "recovered":
                log.info("%s is back", self.name)
            elif item.kind == "end":
                self.end()

    def warn_lost(self, detail: str) -> None:
        if not self.lost:
            self.lost = True
            self.lost_episodes += 1
            log.warning("microphone %s lost%s: continuing with silence (closed mouth) until it is back",
                        self.name, f" ({detail})" if detail else "")

    def end(self) -> None:
        """The audio ended: flush the mel and fix the frame count (floor(seconds * fps + 0.5))."""
        if self.ended:
            return
        self.ended = True
        rows = self.mel.flush()
        if len(rows):
            self._rows = np.concatenate([self._rows, rows])
        if self.pos * 100 < MEL_WINDOW_FRAMES * SAMPLE_RATE:
            self.final_frames = 0
        else:
            self.final_frames = int(math.floor(self.pos * self.fps / SAMPLE_RATE + 0.5))

    # -- output ------------------------------------------------------------

    def complete(self, k: int) -> bool:
        """Whether frame k's window is complete (or the audio ended)."""
        return self.ended or self.need_samples(k) <= self.pos

    def window(self, k: int) -> np.ndarray:
        """Frame k's network input (1, 80, 20) freq x time; rows outside the audio are silence."""
        ws = window_start(k, self.fps)
        out = np.zeros((MEL_WINDOW_FRAMES, self.mel_cfg.n_mels), np.float32)
        lo, hi = max(ws, self._row_base), min(ws + MEL_WINDOW_FRAMES, self._row_base + len(self._rows))
        if hi > lo:
            out[lo - ws: hi - ws] = self._rows[lo - self._row_base: hi - self._row_base]
        return out.T[None]

    def captured(self, k: int, now: Callable[[], float]) -> float:
        """Capture time of the last sample frame k needs."""
        need = self.need_samples(k)
        for end, cap in self._captured:
            if end >= need:
                return cap
        return self._captured[-1][1] if self._captured else now()

    def prune(self, k: int) -> None:
        """Forget rows and capture marks that frames before k needed."""
        keep_from = window_start(k, self.fps)
        if keep_from - self._row_base > 256:
            cut = keep_from - self._row_base
            self._rows = self._rows[cut:]
            self._row_base += cut
        need = self.need_samples(k)
        while len(self._captured) > 1 and self._captured[1][0] < need:
            self._captured.popleft()
