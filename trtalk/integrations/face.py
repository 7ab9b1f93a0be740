"""The face of a voice agent, framework-neutral: TTS audio in, frames with the same audio out.

`AgentFace` runs one `trtalk.serve.session.Session` (the pipeline `trtalk serve` runs for a
browser) on the process's shared model and scheduler (`trtalk.integrations.shared`). It keeps a
real-time audio timeline: every 20 ms tick of the process ticker takes the next 20 ms of the TTS
audio pushed so far -- or silence when there is none, so the face stays alive between utterances
(speech-driven head motion and blinks with ``pose="auto"``, mouth closed) -- and feeds it, at
16 kHz, to the pipeline. The pipeline makes frame k once its audio window is complete (the audio
lookahead, 120 ms at 25 fps); `on_output` then gets frame k together with exactly the TTS audio of
frame k's slot, at the TTS's own sample rate. Sound and picture leave together, so the audio is
delayed by the lookahead (plus the frame's compute) and nothing else.

A stall of the process (the machine overloaded, a long pause of the interpreter) delays the ticks;
they are caught up at once, and the session places audio that comes more than 0.2 s late after the
gap (`PushAudioSource`), making the gap's frames from silence. The face follows: the same gap of
silence goes into the output audio at the same place, so the speech after a stall is delayed with
its lips, never ahead of them.

`interrupt` drops the audio not yet fed, silences the audio fed but not yet sent out, and holds the
last sent frame over the slots whose frames were made from the dropped speech: from the next frame
on neither the sound nor the lips of the interrupted speech are sent. `flush` marks the end of an
utterance (LiveKit's ``AudioSegmentEnd``); the output carries the mark with the frame whose audio
holds the segment's last sample.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trtalk.audio.fifo import SampleQueue
from trtalk.errors import TrtalkError
from trtalk.integrations import shared as shared_mod
from trtalk.runtime.pipeline import PipelineConfig
from trtalk.runtime.sources import SAMPLE_RATE

log = logging.getLogger(__name__)

_IDS = itertools.count(1)


@dataclass
class FaceOutput:
    """One output frame and the audio that plays with it.

    ``slot``: the frame's index on the face's timeline (time ``slot / fps`` after the face
    started); ``image``: H x W x 3 uint8 RGB; ``audio``: int16 mono at ``sample_rate``, the audio of
    this frame's slot (and of earlier slots whose frames the pipeline dropped); ``speech``: whether
    that audio holds pushed (TTS) audio; ``segment_ends``: utterances (`AgentFace.flush`) whose last
    sample is in ``audio``; ``held``: the frame is the last one repeated (after an interruption).
    """

    slot: int
    image: np.ndarray
    audio: np.ndarray
    sample_rate: int
    speech: bool
    segment_ends: int = 0
    held: bool = False


def _to_float(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    return x.astype(np.float32, copy=False)


class _Resampler:
    """Streaming mono resampler (FFmpeg's, through PyAV) from ``src`` to ``dst`` Hz."""

    def __init__(self, src: int, dst: int) -> None:
        import av

        self.src, self.dst = src, dst
        self._r = av.AudioResampler(format="flt", layout="mono", rate=dst) if src != dst else None
        self._pts = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._r is None or len(x) == 0:
            return x
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = self.src
        frame.pts = self._pts
        self._pts += len(x)
        outs = [o.to_ndarray().reshape(-1) for o in self._r.resample(frame)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, np.float32)


class AgentFace:
    """A talking face driven by pushed speech (see the module docstring).

    ``avatar``: the photo; ``model``/``checkpoint``/``backend``/``device`` and ``controls`` (any
    other `trtalk.runtime.options.ModelOptions` field: ``model_config``, ``eyes``, ...) choose the
    model, shared with every face in the process that chooses the same; ``fps`` the frame rate;
    ``pose``: ``auto`` (head motion and blinks from the speech) or ``still``; ``sample_rate`` the
    output audio's rate (pushed audio at another rate is resampled to it); ``stream``: pipeline options beyond
    these (`PipelineConfig`); ``motion_style``: a head motion style file for ``pose="auto"``
    (`trtalk motion fit`; None: the generic style; the LiveKit and Pipecat wrappers pass it on as
    one of their keyword arguments); ``on_output(FaceOutput)`` is called on the pipeline's thread for
    every frame and must return quickly.
    """

    def __init__(self, avatar: str | Path, model: str | None = "warp", checkpoint: str | Path | None = None,
                 fps: float = 25.0, backend: str | None = None, device: str | None = None, *,
                 pose: str = "auto", sample_rate: int = 24000, size: int | None = None,
                 stream: PipelineConfig | None = None, max_batch: int = 8,
                 motion_style: str | Path | None = None,
                 on_output: Callable[[FaceOutput], None] = lambda out: None, **controls: Any) -> None:
        if pose not in ("auto", "still"):
            raise TrtalkError(f"pose must be auto or still, got {pose!r}")
        if not Path(avatar).is_file():
            raise TrtalkError(f"avatar photo {avatar} does not exist; give the path of a portrait photo")
        self.avatar_path = Path(avatar)
        self.options = shared_mod.options_for(model, checkpoint, backend, device, **controls)
        self.cfg = replace(stream or PipelineConfig(), fps=fps, size=size)
        if motion_style is not None:  # validated now: a bad file is a one-line error here
            self.cfg = replace(self.cfg, motion=replace(self.cfg.motion, style=str(motion_style)))
        self.fps = float(fps)
        # ticks from one frame boundary to the next common one (25 fps: 2 ticks, 30 fps: 5)
        self._align = (Fraction(self.fps).limit_denominator(1000) * Fraction(str(shared_mod.TICK_S))).denominator
        self.pose = pose
        if not 8000 <= int(sample_rate) <= 192000:
            raise TrtalkError(f"sample_rate {sample_rate} is out of range: 8000 to 192000 Hz")
        self.sample_rate = int(sample_rate)
        self._resamplers: dict[int, _Resampler] = {}
        self.max_batch = max_batch
        self.on_output = on_output
        self.id = f"agent-{next(_IDS)}"
        self.shared: shared_mod.SharedModel | None = None
        self.session: Any = None
        self._lock = threading.Lock()
        self._tick_id: int | None = None
        self._pending = SampleQueue()  # pushed audio at the output rate, not yet fed
        self._marks: list[int] = []  # output-rate positions where an utterance ends
        self._pos16 = 0  # 16 kHz samples fed
        self._out_pos = 0  # output-rate samples fed
        self._carry16 = np.zeros(0, np.float32)
        self._jumped16 = 0  # 16 kHz samples the session jumped over (a stall), also in _pos16
        self._to16: _Resampler | None = None
        self._tl = np.zeros(0, np.float32)  # fed output-rate audio not yet sent, from _tl_base
        self._tl_speech = np.zeros(0, bool)
        self._tl_base = 0
        self._next_slot = 0
        self._hold_until = -1
        self._last_image: np.ndarray | None = None
        self.closed = False
        #: counters for tests and the benchmark
        self.frames_out = 0
        self.interruptions = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Load (or share) the model, make the avatar and start the face: frames flow from now on."""
        from trtalk.serve.session import Session

        self.shared = shared_mod.acquire(self.options, self.fps, self.cfg.size, self.max_batch)
        try:
            avatar = self.shared.avatar(self.avatar_path)
            self.session = Session(self.id, self.cfg, self.shared.family, avatar,
                                   self.shared.scheduler, self.pose)
            self.session.sink.notify = self._drain
            self.session.start()
            self._tick_id = self.shared.ticker.subscribe(self._tick)
        except BaseException:
            shared_mod.release(self.shared)
            self.shared = None
            raise

    def close(self) -> None:
        """Stop the face and release the shared model (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.shared is not None and self._tick_id is not None:
            self.shared.ticker.unsubscribe(self._tick_id)
        if self.session is not None:
            self.session.close()
        if self.shared is not None:
            shared_mod.release(self.shared)

    @property
    def error(self) -> str | None:
        return None if self.session is None else self.session.error

    # -- input --------------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Append speech (int16 or float mono at ``sample_rate``) to the timeline: it is fed from
        the next tick on, after anything pushed before it."""
        x = _to_float(samples).reshape(-1)
        with self._lock:
            if sample_rate != self.sample_rate:
                r = self._resamplers.get(int(sample_rate))
                if r is None:
                    r = self._resamplers[int(sample_rate)] = _Resampler(int(sample_rate), self.sample_rate)
                x = r(x)
            self._pending.push(x)

    def flush(self) -> None:
        """The utterance pushed so far is complete: mark its end (see `FaceOutput.segment_ends`)."""
        with self._lock:
            self._marks.append(self._out_pos + len(self._pending))

    def interrupt(self) -> None:
        """Drop the speech not yet sent: no more of its sound or its lips from the next frame on."""
        with self._lock:
            self.interruptions += 1
            self._pending.clear()
            if self._tl_speech.any():
                self._tl[:] = 0.0
                self._tl_speech[:] = False
                # frames up to the fed position (and two slots on: a mel window starts 80 ms back)
                # were made from the dropped speech
                spf16 = SAMPLE_RATE / self.fps
                self._hold_until = int(math.ceil(self._pos16 / spf16)) + 2
            self._marks = [min(m, self._tl_base) for m in self._marks]

    # -- the tick (process ticker thread) ------------------------------------------------------

    def _tick(self) -> None:
        if self.closed or self.session is None:
            return
        if self._pos16 == 0 and self.shared is not None and self.shared.ticker.count % self._align:
            # start on a common frame boundary: every face's frames then fall due on the same
            # ticks and the scheduler batches them
            return
        block = SAMPLE_RATE * shared_mod.TICK_S
        with self._lock:
            rate = self.sample_rate
            before = self._out_pos  # where this tick's audio goes on the output timeline
            self._pos16 += int(block)
            target = int(round(self._pos16 * rate / SAMPLE_RATE))
            x, got = self._pending.take(target - self._out_pos)
            speech = got > 0
            self._out_pos = target
            interruptions = self.interruptions
            if self._to16 is None:
                self._to16 = _Resampler(rate, SAMPLE_RATE)
            self._carry16 = np.concatenate([self._carry16, self._to16(x)])
            y = np.zeros(int(block), np.float32)
            m = min(len(y), len(self._carry16))
            y[:m] = self._carry16[:m]
            self._carry16 = self._carry16[m:]
        self.session.audio.push(y)
        jump = self.session.audio.jumped - self._jumped16  # > 0: the push came late, after a stall
        with self._lock:
            gap = 0
            if jump > 0:  # the session put silence before this tick's audio: so does the output
                self._jumped16 += jump
                self._pos16 += jump
                target = int(round(self._pos16 * rate / SAMPLE_RATE))
                gap = target - self._out_pos
                self._out_pos = target
                self._marks = [m + gap if m > before else m for m in self._marks]
                log.debug("%s: a stall: the session placed its audio %d ms late, the output audio gets "
                          "the same gap", self.id, 1000 * jump // SAMPLE_RATE)
            if interruptions != self.interruptions:  # interrupted meanwhile: this speech is dropped too
                x, speech = np.zeros_like(x), False
            seg = np.concatenate([np.zeros(gap, np.float32), x])
            flags = np.concatenate([np.zeros(gap, bool), np.full(len(x), speech)])
            # frames that ran ahead of the fed audio (the session filled a stall's silence) went out
            # with zeros for it: skip what they covered
            drop = max(0, self._tl_base + len(self._tl) - before)
            self._tl = np.concatenate([self._tl, seg[drop:]])
            self._tl_speech = np.concatenate([self._tl_speech, flags[drop:]])

    # -- output (pipeline thread) --------------------------------------------------------------

    def _drain(self) -> None:
        sink = self.session.sink
        while (item := sink.next_frame()) is not None:
            k, image = item
            if k < self._next_slot:
                continue
            with self._lock:
                rate = self.sample_rate
                end = int(round((k + 1) * rate / self.fps))
                n = max(0, min(end, self._tl_base + len(self._tl)) - self._tl_base)
                audio = self._tl[:n]
                speech = bool(self._tl_speech[:n].any())
                self._tl, self._tl_speech = self._tl[n:], self._tl_speech[n:]
                self._tl_base += n
                if end > self._tl_base:  # the frame ran ahead of the fed audio (not expected): pad
                    audio = np.concatenate([audio, np.zeros(end - self._tl_base, np.float32)])
                    self._tl_base = end
                ends = sum(1 for m in self._marks if m <= self._tl_base)
                self._marks = [m for m in self._marks if m > self._tl_base]
                held = k < self._hold_until and self._last_image is not None
            if held:
                image = self._last_image
            else:
                self._last_image = image
            self._next_slot = k + 1
            self.frames_out += 1
            pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)  # int16 in, the same out
            self.on_output(FaceOutput(k, image, pcm, rate, speech, ends, held))
