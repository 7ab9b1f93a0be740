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
    half = _half_window(cfg)
    follower = MouthFollower(fps, cfg)
    out = np.zeros((num_frames, 2), np.float32)
    for i in range(num_frames):
        c = int(round(i / fps * _MEL_FPS)) + _MEL_CENTRE_OFFSET
        a, b = max(c - half, 0), min(c + half + 1, len(mel))
        out[i] = follower.step(*mouth_targets(mel[a:b] if b > a else mel[:0], cfg))
    return out


#: Row of a frame's 20-row PC-AVS mel window (``trtalk.audio.window_start``) on which the
#: warp avatar's mouth is centred: window_start = round(100 t / fps) - 8, centre = round(100 t /
#: fps) + 3 (the frontend's 3-frame offset), so 11 rows in at every frame rate.
WINDOW_CENTRE_ROW = 11


def mouth_from_window(window_tf: np.ndarray, cfg: MouthConfig = MouthConfig()) -> tuple[float, float]:
    """(open, rounding) targets of one frame from its (20, 80) time x freq PC-AVS mel window."""
    half = _half_window(cfg)
    lo, hi = WINDOW_CENTRE_ROW - half, WINDOW_CENTRE_ROW + half + 1
    return mouth_targets(window_tf[max(lo, 0):hi], cfg)


def _half_window(cfg: MouthConfig) -> int:
    return max(1, int(round(cfg.window_ms / 1000 * _MEL_FPS / 2)))


def mouth_targets(rows_tf: np.ndarray, cfg: MouthConfig = MouthConfig()) -> tuple[float, float]:
    """(open, rounding) targets in [0, 1] from the mel rows around a frame (time x freq)."""
    if len(rows_tf) == 0:
        return 0.0, 0.0
    b0, b1 = cfg.voice_bands
    third = b0 + (b1 - b0) // 3
    lev = float(rows_tf[:, b0:b1].mean())
    shape = float(rows_tf[:, b0:third].mean() - rows_tf[:, third:b1].mean())
    open_t = float(np.clip((lev - cfg.open_floor) / (cfg.open_ceil - cfg.open_floor), 0.0, 1.0))
    round_t = float(np.clip((shape - cfg.round_floor) / (cfg.round_ceil - cfg.round_floor), 0.0, 1.0))
    round_t *= min(1.0, open_t * 3.0)  # only voiced sounds round the lips
    return open_t, round_t


class MouthFollower:
    """Attack/release follower of the mouth targets, one call per video frame in order."""

    def __init__(self, fps: float, cfg: MouthConfig = MouthConfig()) -> None:
        # Follower coefficients were tuned at 25 fps; keep the same time constants at other rates.
        self.att = 1.0 - (1.0 - cfg.attack) ** (25.0 / fps)
        self.rel = 1.0 - (1.0 - cfg.release) ** (25.0 / fps)
        self.state = np.zeros(2)

    def step(self, open_t: float, round_t: float) -> np.ndarray:
        """The smoothed (open, rounding); values under 0.02 snap to exactly closed (rest face)."""
        target = np.array([open_t, round_t])
        k = np.where(target > self.state, self.att, self.rel)
        self.state = self.state + k * (target - self.state)
        out = self.state.astype(np.float32)
        out[out < 0.02] = 0.0
        return out


def idle_euler(t: float) -> tuple[float, float, float]:
    """The built-in head motion at time ``t`` s: (yaw, pitch, roll) sinusoids (+-10, +-5, +-3 deg)."""
    return (10.0 * math.sin(2 * math.pi * t / 4.0),
            5.0 * math.sin(2 * math.pi * t / 3.1 + 1.0),
            3.0 * math.sin(2 * math.pi * t / 5.3 + 2.0))


def idle_motion(num_frames: int, fps: float = 25.0) -> Iterator[np.ndarray]:
    """The built-in head motion as rotation matrices, one per frame."""
    for i in range(num_frames):
        yield M.euler_to_matrix(*idle_euler(i / fps))


class MeshRotation:
    """Head rotation of successive face meshes relative to the first one, as smoothed Euler angles.

    ``update(mesh)`` takes a 468x3 mesh (or None: no face, the previous angles repeat) and
    returns (yaw, pitch, roll) in degrees; the first mesh is the reference (zero angles). A light
    exponential smoothing removes mediapipe's frame-to-frame jitter (about half a degree).
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        self._ref: np.ndarray | None = None
        self._subset: np.ndarray | None = None
        self._euler = np.zeros(3)
        self._smoothing = smoothing
        self.missed = 0

    def update(self, mesh: np.ndarray | None) -> np.ndarray:
        if mesh is None:
            self.missed += 1
            return self._euler.copy()
        if self._ref is None:
            self._ref, self._subset = mesh, M.rigid_subset(mesh)
            return self._euler.copy()
        rot, _, _ = M.rigid_fit(self._ref[self._subset], mesh[self._subset])
        e = np.array(M.matrix_to_euler(rot))
        self._euler = self._smoothing * self._euler + (1 - self._smoothing) * e
        return self._euler.copy()


class PoseTracker:
    """Head rotation of successive frames of one video, relative to its first face.

    Feed frames in order to :meth:`update`; it returns a 3x3 rotation (identity for the first
    frame with a face); frames without a face repeat the previous rotation (see `MeshRotation`).
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        from trtalk.face import FaceMeshDetector

        self._det = FaceMeshDetector(static_image_mode=False, max_num_faces=1)
        self._rot = MeshRotation(smoothing)

    @property
    def missed(self) -> int:
        return self._rot.missed

    def update(self, frame_rgb: np.ndarray) -> np.ndarray:
        faces = self._det.detect3d(frame_rgb)
        return M.euler_to_matrix(*self._rot.update(faces[0] if faces else None))

    def close(self) -> None:
        self._det.close()


def measure_pose(reference: np.ndarray, mesh: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of ``mesh`` relative to ``reference`` (both 468x3, upper face fit)."""
    sub = M.rigid_subset(reference)
    rot, _, _ = M.rigid_fit(reference[sub], mesh[sub])
    return M.matrix_to_euler(rot)
