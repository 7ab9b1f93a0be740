"""What drives the warp avatar: mouth parameters from audio, head rotation from a pose source.

Mouth: from the PC-AVS mel frontend (:func:`trtalk.audio.mel_spectrogram`,
100 frames/s, values in [0, 1] that are a dB scale, 0 = silence), one 20-row
window per video frame exactly as the pipeline hands it to the family (rows
up to 80 ms past the frame's centre: the stream's lookahead, so the mouth is
causal live).

*Openness* (0 = lips closed, 1 = the avatar's widest opening) comes from a
small linear audio-to-mouth model (:class:`MouthModel`, ``trtalk/assets/
mouth_model.safetensors``, 193 weights) trained by ``scripts/train_mouth_model.py``
on public talking clips (the 14 PC-AVS sample clips and 12 more from public
repositories) with their tracked inner-lip gap: 16 pooled mel bands of the
window's rows 8-19 -> a score, mapped through a monotone table (the PC-AVS
clips' gap distribution) to the opening, so the share of closed
frames matches real speech and a low score closes the lips; pauses and the
near-silent hold of a stop close them whatever the score, judged 50 ms ahead
of the frame (the lips lead the sound). ``scripts/mouth_model_search.py``
holds the leave-one-clip-out comparison with richer features and a small MLP
(neither beat this model held out). *Rounding* comes from spectral shape (energy
weighted to the low bands, as in /o/ /u/ whose second formant is low). Both
pass an attack/release follower.

Pose: :class:`PoseTracker` fits each frame's mesh rigidly to the first
frame's (upper face only) and reports the rotation relative to that first
frame; :func:`idle_motion` is the built-in gentle head motion.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trtalk.audio import mel_spectrogram
from trtalk.errors import TrtalkError
from trtalk.warp import mesh as M

# Mel frame m is centred on sample m*hop - (n_fft - hop) + n_fft/2 = (m - 3) * 160 for the
# PC-AVS frontend (lws pads n_fft - hop samples in front), i.e. 3 frames after its time.
_MEL_CENTRE_OFFSET = 3
_MEL_FPS = 100.0

#: The shipped audio-to-mouth model (made by scripts/train_mouth_model.py).
MOUTH_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "mouth_model.safetensors"
#: Environment variable naming another model file (held-out evaluation: benchmarks/self_reenact.py).
MOUTH_MODEL_ENV = "TRTALK_MOUTH_MODEL"


@dataclass(frozen=True)
class MouthConfig:
    """Audio -> mouth mapping.

    ``model``: "builtin" (the shipped :class:`MouthModel`, or the file named by
    ``$TRTALK_MOUTH_MODEL``), a path to a model file, or "envelope" (the plain voice-band level
    between ``open_floor`` and ``open_ceil``, the mapping before the model).
    ``open_floor``/``open_ceil``: voice-band mel level (0..1 dB scale) mapped
    to closed / fully open by the envelope mapping. ``attack``/``release``: per-video-frame
    follower coefficients at 25 fps (fraction of the gap closed per frame).
    ``window_ms``: audio averaged around each video frame for the rounding (and the envelope).
    ``close_level``: the lips shut whenever the voice band's level over the 30 ms centred
    ``close_lead`` mel rows (10 ms each) after the frame's time is under this (a pause, or the
    near-silent hold of a stop such as /m b p/ before its burst), whatever the model says, or
    ``close_dip`` under the loudest row of the window (the silent hold of a stop between louder
    sounds). The lips lead the sound: on the training clips the tracked lip gap correlates best
    with the voice band 40-60 ms later, and judging the closure 50 ms ahead (inside the window's
    80 ms lookahead, so live stays causal) raised the held-out opening r from 0.29 to 0.34 with
    the same closed-lip agreement (scripts/mouth_model_search.py).
    ``open_curve``: (model opening, shown opening) knots of a monotone perceptual gain applied to
    the model's opening (linear between knots; 0 stays closed, 1 stays 1). The model's table
    reproduces the training clips' interview lip gaps, where an ordinary syllable opens 0.13-0.35
    of the avatar's range: on the avatar that reads as mumbling (the demo's TTS speech: open
    frames' median 0.25, p25 0.18). The curve leaves the table's lowest openings (up to 0.16:
    lips barely apart, often closed in the real clips) as they are and lifts the middle: after
    the follower the demo's open frames open 0.18 (p25), 0.30 (median), 0.48 (p75), 0.67 (p90)
    (judged by eye on the demo speech; without it 0.14, 0.24, 0.40, 0.59); what the table closes
    stays closed. Held out on the self-reenactment clips (benchmarks/self_reenact.py, leave-one-
    out models, main's photo-frame renderer): opening r 0.352 -> 0.352, closed-lip agreement
    0.407 -> 0.392, mouth-box SSIM 0.666 -> 0.664 (knees 0.14 -> 0.14, 0.25 -> 0.34: r 0.341,
    closed 0.389).
    """

    model: str = "builtin"
    close_level: float = 0.28
    close_dip: float = 0.18
    open_floor: float = 0.28
    open_ceil: float = 0.55
    round_floor: float = 0.02
    round_ceil: float = 0.14
    attack: float = 0.6
    release: float = 0.9
    window_ms: float = 50.0
    voice_bands: tuple[int, int] = (4, 48)
    close_lead: int = 5
    open_curve: tuple[tuple[float, float], ...] = (
        (0.0, 0.0), (0.16, 0.16), (0.25, 0.32), (0.5, 0.6), (1.0, 1.0))


@dataclass(frozen=True)
class MouthModel:
    """A linear audio-to-mouth model on one frame's (20, 80) time x freq mel window.

    ``features``: rows ``rows[0]:rows[1]`` of the window, mel bins averaged in ``bands`` equal
    groups, flattened time-major. ``score = features @ weight + bias``; the opening is
    ``interp(score, score_points, open_points)`` (monotone, 0 = closed, clipped to [0, 1]).
    """

    weight: np.ndarray
    bias: float
    bands: int
    rows: tuple[int, int]
    score_points: np.ndarray
    open_points: np.ndarray

    def features(self, window_tf: np.ndarray) -> np.ndarray:
        return window_features(window_tf, self.bands, self.rows)

    def opening(self, window_tf: np.ndarray) -> float:
        score = float(self.features(window_tf) @ self.weight) + self.bias
        return float(np.clip(np.interp(score, self.score_points, self.open_points), 0.0, 1.0))


def window_features(window_tf: np.ndarray, bands: int, rows: tuple[int, int]) -> np.ndarray:
    """The model's input: ``window_tf[rows[0]:rows[1]]`` (time x 80 mel bins) pooled to ``bands``
    groups of bins, flattened time-major; float64. Works on a batch (..., 20, 80) too."""
    w = np.asarray(window_tf, dtype=np.float64)[..., rows[0]:rows[1], :]
    pooled = w.reshape(*w.shape[:-1], bands, w.shape[-1] // bands).mean(axis=-1)
    return pooled.reshape(*w.shape[:-2], -1)


def save_mouth_model(model: MouthModel, path: str | Path) -> Path:
    """Write ``model`` as safetensors (a temporary file renamed into place)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {
        "weight": np.asarray(model.weight, np.float32), "bias": np.array([model.bias], np.float32),
        "bands": np.array([model.bands], np.int64), "rows": np.array(model.rows, np.int64),
        "score_points": np.asarray(model.score_points, np.float32),
        "open_points": np.asarray(model.open_points, np.float32),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "trtalk-mouth-model-1"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def load_mouth_model(path: str | Path) -> MouthModel:
    """Read a model written by :func:`save_mouth_model`; TrtalkError when it is missing or malformed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise TrtalkError(f"mouth model {path} not found; reinstall trtalk or train one with "
                          f"scripts/train_mouth_model.py")
    try:
        t = load_file(str(path))
        bands, rows = int(t["bands"][0]), (int(t["rows"][0]), int(t["rows"][1]))
        weight = t["weight"].astype(np.float64)
        sp, op = t["score_points"].astype(np.float64), t["open_points"].astype(np.float64)
        ok = (bands > 0 and 80 % bands == 0 and 0 <= rows[0] < rows[1] <= 20
              and weight.shape == ((rows[1] - rows[0]) * bands,) and sp.shape == op.shape and sp.ndim == 1
              and len(sp) >= 2 and bool(np.all(np.diff(sp) >= 0)) and np.isfinite(weight).all())
    except (SafetensorError, KeyError, IndexError, ValueError, OSError) as exc:
        raise TrtalkError(f"mouth model {path} is not a trtalk mouth model ({exc}); retrain it with "
                          f"scripts/train_mouth_model.py") from None
    if not ok:
        raise TrtalkError(f"mouth model {path} has inconsistent shapes; retrain it with "
                          f"scripts/train_mouth_model.py")
    return MouthModel(weight, float(t["bias"][0]), bands, rows, sp, op)


@functools.lru_cache(maxsize=4)
def _cached_model(path: str) -> MouthModel:
    return load_mouth_model(path)


def mouth_model(cfg: MouthConfig = MouthConfig()) -> MouthModel | None:
    """The model ``cfg.model`` names (None for "envelope"); loaded once per path."""
    if cfg.model == "envelope":
        return None
    if cfg.model == "builtin":
        return _cached_model(os.environ.get(MOUTH_MODEL_ENV) or str(MOUTH_MODEL_PATH))
    return _cached_model(str(cfg.model))


def mouth_params(wave: np.ndarray, num_frames: int, fps: float = 25.0,
                 cfg: MouthConfig = MouthConfig()) -> np.ndarray:
    """Per-video-frame mouth parameters, (num_frames, 2) float32: column 0 open, 1 rounding, in [0, 1].

    ``wave`` is 16 kHz mono float32, scaled by the official whole-file gain as `trtalk render`
    does. Silence (all-zero mel) gives 0 for both.
    """
    from trtalk.audio import rms_gain

    wave = np.asarray(wave, dtype=np.float32)
    mel = mel_spectrogram(wave * np.float32(rms_gain(wave))) if len(wave) else np.zeros((0, 80), np.float32)
    return mouth_params_from_mel(mel, num_frames, fps, cfg)


def mouth_params_from_mel(mel: np.ndarray, num_frames: int, fps: float = 25.0,
                          cfg: MouthConfig = MouthConfig()) -> np.ndarray:
    """As :func:`mouth_params`, from a precomputed (T, 80) mel: each frame's PC-AVS window, as the
    pipeline hands them to the warp family, through :func:`mouth_from_window` and the follower."""
    from trtalk.audio import mel_windows

    windows = mel_windows(np.asarray(mel, np.float32).reshape(-1, 80), num_frames, fps)[:, 0].transpose(0, 2, 1)
    follower = MouthFollower(fps, cfg)
    out = np.zeros((num_frames, 2), np.float32)
    for i, w in enumerate(windows):
        out[i] = follower.step(*mouth_from_window(w, cfg))
    return out


#: Row of a frame's 20-row PC-AVS mel window (``trtalk.audio.window_start``) on which the
#: warp avatar's mouth is centred: window_start = round(100 t / fps) - 8, centre = round(100 t /
#: fps) + 3 (the frontend's 3-frame offset), so 11 rows in at every frame rate.
WINDOW_CENTRE_ROW = 11


def mouth_from_window(window_tf: np.ndarray, cfg: MouthConfig = MouthConfig()) -> tuple[float, float]:
    """(open, rounding) targets of one frame from its (20, 80) time x freq PC-AVS mel window."""
    half = _half_window(cfg)
    lo, hi = WINDOW_CENTRE_ROW - half, WINDOW_CENTRE_ROW + half + 1
    rows = window_tf[max(lo, 0):hi]
    env_open, round_t = mouth_targets(rows, cfg)
    model = mouth_model(cfg)
    if model is None:
        return env_open, round_t
    b0, b1 = cfg.voice_bands
    c = min(WINDOW_CENTRE_ROW + cfg.close_lead, len(window_tf) - 2)
    centre = window_tf[c - 1:c + 2, b0:b1]
    lev = float(centre.mean())
    if not np.any(window_tf) or lev < cfg.close_level or \
            lev < float(window_tf[:, b0:b1].mean(axis=1).max()) - cfg.close_dip:
        return 0.0, 0.0  # a pause or a stop's hold: closed, whatever the model's bias says
    knots = np.asarray(cfg.open_curve, np.float64)
    open_t = float(np.interp(model.opening(window_tf), knots[:, 0], knots[:, 1]))
    return open_t, round_t * min(1.0, open_t * 3.0)


def _half_window(cfg: MouthConfig) -> int:
    return max(1, int(round(cfg.window_ms / 1000 * _MEL_FPS / 2)))


def mouth_targets(rows_tf: np.ndarray, cfg: MouthConfig = MouthConfig()) -> tuple[float, float]:
    """(open, rounding) targets in [0, 1] from the mel rows around a frame (time x freq), by the
    voice-band level (the envelope mapping) and the spectral tilt."""
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
        """The smoothed (open, rounding); values under 0.02 snap to exactly closed (rest face), and
        a closed target (0: a pause or a bilabial hold) shuts the lips at once."""
        target = np.array([open_t, round_t])
        k = np.where(target > self.state, self.att, self.rel)
        self.state = self.state + k * (target - self.state)
        if open_t <= 0.0:
            self.state[0] = 0.0
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
