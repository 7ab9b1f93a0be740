"""The PC-AVS mel frontend, reimplemented in numpy (no lws, no librosa at run time).

The official PC-AVS code (config/AudioConfig.py) computes, for a 16 kHz wave:

1. ``wave *= 0.1 / max(1e-4, rms(wave))``        whole-file RMS normalisation
2. ``D = lws.lws(1280, 160, mode="speech").stft(wave)``   (M, 641) complex
3. ``S = 20*log10(max(1e-5, mel_basis @ |D|.T)) - 20``   (Slaney mel, 80 bands,
   125..7600 Hz)
4. ``mel = clip((S + 100) / 100, 0, 1).T``           (M, 80)

Layouts: ``mel_tf`` is time x freq, (M frames, 80 bands), 100 frames/s. The
network input for one video frame is a freq x time window, (1, 80, 20).

lws framing (perfectrec=True), which this module reproduces exactly: the wave
is pre-padded with n_fft - hop = 1120 zeros and post-padded to a whole hop;
frame m is ``padded[160m : 160m + 1280]`` (zero-extended past the end) times
the lws analysis window. Hence M = 7 + ceil(L / 160) for L samples, and frame
m depends on wave samples [160m - 1120, 160(m + 1)) only: each new 160-sample
hop completes exactly one frame, and the last 7 frames reach into the zeros
past the end of the wave.

One implementation, :class:`StreamingMel`, serves both whole files
(:func:`mel_spectrogram` = one push + flush) and live streams. The RMS
normalisation is just a linear gain, so a streaming caller supplies its own.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trtalk.errors import TrtalkError

logger = logging.getLogger(__name__)

__all__ = [
    "MEL_WINDOW_FRAMES",
    "MelConfig",
    "StreamingMel",
    "audio_lookahead_s",
    "lws_analysis_window",
    "mel_spectrogram",
    "mel_windows",
    "num_video_frames",
    "rms_gain",
    "slaney_mel_filterbank",
    "window_start",
]

#: Mel frames in one network input window (5 video frames at 25 fps).
MEL_WINDOW_FRAMES = 20
#: Mel frames a window starts before its video frame's own mel frame (2 video
#: frames at 25 fps), so the window is centred on the video frame.
_WINDOW_OFFSET_FRAMES = 8
#: Mel frame rate the window formulas assume (16000 Hz / 160 hop).
_MEL_FPS = 100
#: Frames per FFT block inside one push (memory bound, not a semantic limit).
_BLOCK_FRAMES = 2048


@dataclass(frozen=True)
class MelConfig:
    """Parameters of the PC-AVS mel frontend; the defaults are the official ones."""

    sample_rate: int = 16000
    n_fft: int = 1280
    hop: int = 160
    n_mels: int = 80
    fmin: float = 125.0
    fmax: float = 7600.0
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    target_rms: float = 0.1
    rms_eps: float = 1e-4

    def __post_init__(self) -> None:
        # The streaming core keeps n_fft - hop samples of history, which is the
        # lws pre-pad only when the frame is a whole number of hops.
        if self.n_fft % self.hop != 0:
            raise ValueError(f"n_fft ({self.n_fft}) must be a multiple of hop ({self.hop})")

    @property
    def frames_per_second(self) -> float:
        """Mel frames per second (100 with the defaults)."""
        return self.sample_rate / self.hop

    @property
    def history(self) -> int:
        """Samples of past context a frame needs besides its own hop (1120)."""
        return self.n_fft - self.hop


# --------------------------------------------------------------------------- #
# Fixed tables: analysis window and mel filterbank
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=8)
def _window_cached(n_fft: int, hop: int) -> np.ndarray:
    n = n_fft
    k = np.arange(n, dtype=np.float64)
    # Symmetric Hann sampled at half-integer offsets (lws.hann(symmetric=True)).
    h = 0.5 * (1.0 - np.cos(2.0 * np.pi * (2.0 * k + 1.0) / (2.0 * n)))
    awin0 = np.sqrt(h)
    # lws.synthwin(awin0, hop): normalise so overlap-added awin0*swin sums to 1.
    q = int(math.ceil(n / hop))
    twin = np.concatenate([awin0 * awin0, np.zeros(q * hop - n)])
    w = np.tile(twin.reshape(q, hop).sum(axis=0), q)[:n]
    swin = awin0 / w
    awin = np.sqrt(awin0 * swin)
    awin.setflags(write=False)
    return awin


def lws_analysis_window(n_fft: int = 1280, hop: int = 160) -> np.ndarray:
    """The analysis window ``lws.lws(n_fft, hop).awin``, float64 (n_fft,), read-only."""
    return _window_cached(n_fft, hop)


# Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), mel * _F_SP)


@functools.lru_cache(maxsize=8)
def _filterbank_cached(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    # n_mels + 2 edges equally spaced in mel; filter i spans edges i .. i+2.
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bin_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney area normalisation: each triangle has unit area in Hz.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def slaney_mel_filterbank(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Mel filterbank (n_mels, n_fft//2 + 1) float64, read-only.

    Same as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its
    defaults (htk=False, norm='slaney'), computed in float64.
    """
    return _filterbank_cached(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))


# --------------------------------------------------------------------------- #
# Mel spectrogram: streaming core and whole-file wrapper
# --------------------------------------------------------------------------- #


def rms_gain(wave: np.ndarray, cfg: MelConfig = MelConfig()) -> float:
    """The official whole-file gain ``target_rms / max(rms_eps, rms(wave))``.

    Silent or empty input gives the largest gain, target_rms / rms_eps (the
    result is still silence: zero mel).
    """
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return cfg.target_rms / max(cfg.rms_eps, rms)


class StreamingMel:
    """Incremental PC-AVS mel: samples in, completed mel frames out.

    ``push(samples)`` multiplies by ``gain`` and returns (n_new, n_mels)
    float32 rows, one per completed hop; ``flush()`` ends the stream and
    returns the remaining rows. The concatenation of all outputs equals the
    whole-file lws-based mel of the concatenated (gain-scaled) input, whatever
    the chunk sizes. Internally float64; only the output is float32.

    ``gain`` is a plain attribute: a live caller may change it between pushes
    (each sample is scaled by the gain in force when it was pushed).
    """

    def __init__(self, cfg: MelConfig = MelConfig(), gain: float = 1.0) -> None:
        self.cfg = cfg
        self.gain = float(gain)
        self._awin = lws_analysis_window(cfg.n_fft, cfg.hop)
        self._basis_t = np.ascontiguousarray(slaney_mel_filterbank(cfg).T)  # (bins, mels)
        self._min_level = 10.0 ** (cfg.min_level_db / 20.0)
        self._buf = np.zeros(cfg.history)  # lws's leading zero pad
        self._frames_out = 0

    @property
    def frames_emitted(self) -> int:
        """Mel frames returned since construction or the last flush."""
        return self._frames_out

    @property
    def pending_samples(self) -> int:
        """Samples pushed but not yet part of an emitted frame (< hop)."""
        return len(self._buf) - self.cfg.history

    def reset(self) -> None:
        """Start a new stream: history back to zeros (gain is kept)."""
        self._buf = np.zeros(self.cfg.history)
        self._frames_out = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append 1-D ``samples`` (any float dtype); return the newly completed frames.

        Returns (n_new, n_mels) float32, n_new = completed hops (may be 0).
        """
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"push expects a 1-D wave, got shape {x.shape}")
        self._buf = np.concatenate([self._buf, x * self.gain])
        return self._emit()

    def flush(self) -> np.ndarray:
        """End the stream; return its last frames and reset for a new stream.

        As lws does: zero-pad the pending partial hop (if any) to a whole hop,
        then emit the n_fft/hop - 1 = 7 final frames whose windows reach into
        the zeros past the end. Returns (n, n_mels) float32, n = 7 or 8.
        """
        cfg = self.cfg
        partial = self.pending_samples % cfg.hop
        tail = np.zeros((cfg.hop - partial if partial else 0) + cfg.history)
        self._buf = np.concatenate([self._buf, tail])
        out = self._emit()
        self.reset()
        return out

    def _emit(self) -> np.ndarray:
        cfg = self.cfg
        n = (len(self._buf) - cfg.history) // cfg.hop
        if n <= 0:
            return np.zeros((0, cfg.n_mels), dtype=np.float32)
        # (n, n_fft) strided view of the buffer: frame i = buf[hop*i : hop*i + n_fft].
        frames = sliding_window_view(self._buf[: (n - 1) * cfg.hop + cfg.n_fft], cfg.n_fft)[:: cfg.hop]
        out = np.empty((n, cfg.n_mels), dtype=np.float32)
        # Blocks bound the float64/complex temporaries (~20 KB per frame) on
        # long files; every op is per frame, so blocking does not change results.
        for lo in range(0, n, _BLOCK_FRAMES):
            hi = min(n, lo + _BLOCK_FRAMES)
            mag = np.abs(np.fft.rfft(frames[lo:hi] * self._awin, n=cfg.n_fft, axis=1))  # (b, bins)
            mel = mag @ self._basis_t  # (b, mels)
            db = 20.0 * np.log10(np.maximum(self._min_level, mel)) - cfg.ref_level_db
            out[lo:hi] = np.clip((db - cfg.min_level_db) / -cfg.min_level_db, 0.0, 1.0)
        # Keep only the history the next frame needs (plus any partial hop).
        self._buf = self._buf[n * cfg.hop :].copy()
        self._frames_out += n
        return out


def mel_spectrogram(wave: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Whole-file PC-AVS mel of a mono wave at ``cfg.sample_rate``.

    Applies the official RMS normalisation, then the lws STFT framing.
    Returns ``mel_tf`` (M, n_mels) float32 in [0, 1], time x freq, with
    M = 7 + ceil(len(wave) / hop). All-zero input gives all zeros.
    """
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    core = StreamingMel(cfg, gain=rms_gain(x, cfg))
    return np.concatenate([core.push(x), core.flush()])


# --------------------------------------------------------------------------- #
# Per-video-frame windows
# --------------------------------------------------------------------------- #


def _check_fps(fps: float) -> None:
    if not (fps > 0 and math.isfinite(fps)):
        raise TrtalkError(f"fps must be a positive number, got {fps!r}")


def _window_starts(t: np.ndarray, fps: float) -> np.ndarray:
    # floor(x + 0.5): round half up, the same for every caller (Python's round
    # is half-to-even, which would make the 25 fps formula depend on parity
    # at other rates).
    return np.floor(t * float(_MEL_FPS) / fps + 0.5).astype(np.int64) - _WINDOW_OFFSET_FRAMES


def window_start(t: int, fps: float = 25.0) -> int:
    """First mel row of video frame ``t``'s window: ``round(t * 100 / fps) - 8``.

    Rounding is floor(x + 0.5). At 25 fps this is the official ``4 * (t - 2)``:
    the 20-row window covers video frames t-2 .. t+2, centred on t. May be
    negative (rows before 0 are zeros).
    """
    _check_fps(fps)
    return int(_window_starts(np.array([t], dtype=np.float64), fps)[0])


def mel_windows(mel_tf: np.ndarray, num_frames: int, fps: float = 25.0) -> np.ndarray:
    """Network inputs for video frames 0..num_frames-1.

    ``mel_tf`` is (M, n_mels) time x freq. Returns (num_frames, 1, n_mels, 20)
    float32, freq x time per frame: window t holds rows
    ``[window_start(t), window_start(t) + 20)`` transposed, with rows outside
    [0, M) set to 0 (silence at the min level, as the official code pads).
    """
    _check_fps(fps)
    mel_tf = np.asarray(mel_tf, dtype=np.float32)
    m, n_mels = mel_tf.shape
    starts = _window_starts(np.arange(num_frames, dtype=np.float64), fps)
    rows = starts[:, None] + np.arange(MEL_WINDOW_FRAMES)[None, :]  # (T, 20)
    valid = (rows >= 0) & (rows < m)
    if m == 0:
        win = np.zeros((num_frames, MEL_WINDOW_FRAMES, n_mels), dtype=np.float32)
    else:
        win = mel_tf[np.clip(rows, 0, m - 1)] * valid[:, :, None]  # (T, 20, mels)
    return np.ascontiguousarray(win.transpose(0, 2, 1)[:, None]).astype(np.float32, copy=False)


def num_video_frames(num_samples: int, fps: float, sample_rate: int = 16000) -> int:
    """Video frames to render for ``num_samples`` of audio: floor(dur * fps + 0.5).

    Rounds half up (not Python's half-to-even). Raises TrtalkError when the
    audio is shorter than one 20-mel-frame window (0.2 s).
    """
    _check_fps(fps)
    # Integer test, exact: num_samples / sample_rate < 20 / 100.
    if num_samples * _MEL_FPS < MEL_WINDOW_FRAMES * sample_rate:
        raise TrtalkError(
            f"audio is shorter than one 0.2 s window ({num_samples / sample_rate:.3f} s); use a longer clip"
        )
    return int(math.floor(num_samples * fps / sample_rate + 0.5))


def audio_lookahead_s(fps: float = 25.0) -> float:
    """How far past video frame t's timestamp (t / fps) its mel window reaches, in s.

    The window's last row is ``window_start(t) + 19`` and mel frame m ends at
    sample 160(m + 1), i.e. time (m + 1) / 100 s. So the window ends at
    ``(window_start(t) + 20) / 100 = (round(100 t / fps) + 12) / 100`` s and the
    lookahead is ``0.12 + (round(100 t / fps) - 100 t / fps) / 100``: exactly
    0.12 s at 25 fps (or any fps dividing 100), at most 0.125 s otherwise.
    Returns the maximum over t (t in 0..9999, which covers a full period of
    the rounding for every rate whose 100/fps has a denominator <= 10000,
    e.g. 30000/1001), rounded to 1e-9 s to drop float noise.
    """
    _check_fps(fps)
    t = np.arange(10000, dtype=np.float64)
    end_s = (_window_starts(t, fps) + MEL_WINDOW_FRAMES) / _MEL_FPS
    return round(float(np.max(end_s - t / fps)), 9)
