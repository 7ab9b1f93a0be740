"""What drives the warp avatar: mouth parameters from audio, head rotation from a pose source.

Mouth: from the PC-AVS mel frontend (:func:`trtalk.audio.mel_spectrogram`,
100 frames/s, values in [0, 1] that are a dB scale, 0 = silence).
Per video frame, *openness* comes from the level of the voice band (loud
vowels open the mouth, silence closes it) and *rounding* from spectral
shape (energy weighted to the low bands, as in /o/ /u/ whose second
formant is low). Both pass an attack/release follower so the mouth snaps
open at syllable onsets and closes a little more slowly, like speech.

Pose: :class:`PoseTracker` fits each frame's mesh rigidly to the first
frame's (upper face only) and reports the rotation relative to that first
frame; :func:`idle_motion` is the built-in gentle head motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from trtalk.audio import mel_spectrogram
from trtalk.warp import mesh as M

# Mel frame m is centred on sample m*hop - (n_fft - hop) + n_fft/2 = (m - 3) * 160 for the
# PC-AVS frontend (lws pads n_fft - hop samples in front), i.e. 3 frames after its time.
_MEL_CENTRE_OFFSET = 3
_MEL_FPS = 100.0


@dataclass(frozen=True)
class MouthConfig:
    """Audio -> mouth mapping.

    ``open_floor``/``open_ceil``: voice-band mel level (0..1 dB scale) mapped
    to closed / fully open. ``attack``/``release``: per-video-frame follower
    coefficients at 25 fps (fraction of the gap closed per frame).
    ``window_ms``: audio averaged around each video frame.
    """

    open_floor: float = 0.28
    open_ceil: float = 0.55
    round_floor: float = 0.02
    round_ceil: float = 0.14
    attack: float = 0.75
    release: float = 0.55
    window_ms: float = 50.0
    voice_bands: tuple[int, int] = (4, 48)


def mouth_params(wave: np.ndarray, num_frames: int, fps: float = 25.0,
                 cfg: MouthConfig = MouthConfig()) -> np.ndarray:
    """Per-video-frame mouth parameters, (num_frames, 2) float32: column 0 open, 1 rounding, in [0, 1].

    ``wave`` is 16 kHz mono float32. Silence (all-zero mel) gives 0 for both.
    """
    mel = mel_spectrogram(np.asarray(wave, dtype=np.float32)) if len(wave) else np.zeros((0, 80), np.float32)
    return mouth_params_from_mel(mel, num_frames, fps, cfg)


def mouth_params_from_mel(mel: np.ndarray, num_frames: int, fps: float = 25.0,
                          cfg: MouthConfig = MouthConfig()) -> np.ndarray:
    """As :func:`mouth_params`, from a precomputed (T, 80) mel."""
    b0, b1 = cfg.voice_bands
    level = mel[:, b0:b1].mean(axis=1) if len(mel) else np.zeros(0)
    lo_band = mel[:, b0:b0 + (b1 - b0) // 3].mean(axis=1) if len(mel) else np.zeros(0)
    hi_band = mel[:, b0 + (b1 - b0) // 3:b1].mean(axis=1) if len(mel) else np.zeros(0)
    half = max(1, int(round(cfg.window_ms / 1000 * _MEL_FPS / 2)))
    # Follower coefficients were tuned at 25 fps; keep the same time constants at other rates.
    att = 1.0 - (1.0 - cfg.attack) ** (25.0 / fps)
    rel = 1.0 - (1.0 - cfg.release) ** (25.0 / fps)
    out = np.zeros((num_frames, 2), np.float32)
    state = np.zeros(2)
    for i in range(num_frames):
        c = int(round(i / fps * _MEL_FPS)) + _MEL_CENTRE_OFFSET
        a, b = max(c - half, 0), min(c + half + 1, len(level))
        if b > a:
            lev = float(level[a:b].mean())
            shape = float(lo_band[a:b].mean() - hi_band[a:b].mean())
        else:
            lev, shape = 0.0, 0.0
        open_t = float(np.clip((lev - cfg.open_floor) / (cfg.open_ceil - cfg.open_floor), 0.0, 1.0))
        round_t = float(np.clip((shape - cfg.round_floor) / (cfg.round_ceil - cfg.round_floor), 0.0, 1.0))
        round_t *= min(1.0, open_t * 3.0)  # only voiced sounds round the lips
        target = np.array([open_t, round_t])
        k = np.where(target > state, att, rel)
        state = state + k * (target - state)
        out[i] = state
    # Snap the follower's long tail to exactly closed so silence shows the rest face.
    out[out < 0.02] = 0.0
    return out


def idle_motion(num_frames: int, fps: float = 25.0) -> Iterator[np.ndarray]:
    """The built-in head motion: slow yaw/pitch/roll sinusoids (+-10, +-5, +-3 degrees)."""
    for i in range(num_frames):
        t = i / fps
        yield M.euler_to_matrix(
            10.0 * math.sin(2 * math.pi * t / 4.0),
            5.0 * math.sin(2 * math.pi * t / 3.1 + 1.0),
            3.0 * math.sin(2 * math.pi * t / 5.3 + 2.0),
        )


class PoseTracker:
    """Head rotation of successive frames of one video, relative to its first face.

    Feed frames in order to :meth:`update`; it returns a 3x3 rotation
    (identity for the first frame with a face). Frames without a face repeat
    the previous rotation. A light exponential smoothing removes mediapipe's
    frame-to-frame jitter (about half a degree).
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        from trtalk.face import FaceMeshDetector

        self._det = FaceMeshDetector(static_image_mode=False, max_num_faces=1)
        self._ref: np.ndarray | None = None
        self._subset: np.ndarray | None = None
        self._last = np.eye(3)
        self._euler = np.zeros(3)
        self._smoothing = smoothing
        self.missed = 0

    def update(self, frame_rgb: np.ndarray) -> np.ndarray:
        faces = self._det.detect3d(frame_rgb)
        if not faces:
            self.missed += 1
            return self._last
        pts = faces[0]
        if self._ref is None:
            self._ref, self._subset = pts, M.rigid_subset(pts)
            return self._last
        rot, _, _ = M.rigid_fit(self._ref[self._subset], pts[self._subset])
        e = np.array(M.matrix_to_euler(rot))
        self._euler = self._smoothing * self._euler + (1 - self._smoothing) * e
        self._last = M.euler_to_matrix(*self._euler)
        return self._last

    def close(self) -> None:
        self._det.close()


def measure_pose(reference: np.ndarray, mesh: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of ``mesh`` relative to ``reference`` (both 468x3, upper face fit)."""
    sub = M.rigid_subset(reference)
    rot, _, _ = M.rigid_fit(reference[sub], mesh[sub])
    return M.matrix_to_euler(rot)
