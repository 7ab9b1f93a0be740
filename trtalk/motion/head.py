"""Head motion from speech, causally: yaw, pitch, roll per output frame from the audio so far.

Input per frame: the frame's own PC-AVS mel window (80 bands x 20 rows, the window the frame step
already feeds the mouth), nothing later. The newest ``100 / fps`` rows of that window are the
audio that arrived for this frame; everything the generator knows about the audio is what those
rows say plus its own state. So frame t's angles depend only on audio up to the end of frame t's
window (120 ms after t at 25 fps): no lookahead beyond what the lips already wait for, no added
latency, and a replay gives the same angles.

Features (`SpeechFeatures`, per frame): the voice-band level of the new rows (0..1 on the mel's dB
scale), speech activity, a smoothed speaking state with a hangover, onsets (a rise of the level
over its minimum of the last 120 ms), a pitch proxy (the power-weighted centroid of the lowest mel
bands, where the first harmonics of a voice sit: it rises with f0) and prominence (level and
pitch above their running means over speech), phrase starts (an onset after at least 0.2 s of
pause, on top of the speaking state's 0.12 s hangover).

Motion (`HeadMotion`, the sum of three parts, then bounded):

- sway: per-axis smoothed noise (two cascaded Ornstein-Uhlenbeck stages, seeded: it has no period)
  whose amplitude follows the smoothed speech activity (the style's ``pause_sway`` of it in pauses);
- gestures: nods (a pitch impulse through a critically damped spring: down, then back) and small
  turns/tilts at stressed syllables, drawn with probabilities that ``liveliness`` scales;
- posture: at each phrase start (and at some stressed syllables) the head settles, within about
  a second, to a new turned/tilted posture, which drifts back towards the photo's pose during long
  pauses.

- drift: slow posture drift (a slow Ornstein-Uhlenbeck process), whatever the speech, around the
  style's rest posture.

The amplitudes, time constants and gains are a style's (`trtalk.motion.style`: the generic one, or a
person's fitted by `trtalk.motion.fit`). Angles are soft-bounded (``max * tanh(x / max)``) and their per-frame change is capped at
``max_speed`` degrees per second, so angles and angular speeds are bounded whatever the audio.
Angles are degrees relative to the avatar photo's own pose, in the warp avatar's convention
(`trtalk.warp.mesh`: positive pitch moves the nose down, positive yaw towards the image left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from trtalk.configcli import option
from trtalk.errors import TrtalkError

if TYPE_CHECKING:
    from trtalk.motion.style import MotionStyle

#: mel bands averaged for the voice level (as the warp avatar's mouth: ~200 Hz to ~2.3 kHz)
VOICE_BANDS = (4, 48)
#: mel bands of the pitch proxy (55 Hz to ~500 Hz, where a voice's first harmonics sit)
PITCH_BANDS = (0, 14)


@dataclass
class MotionConfig:
    """Speech-driven head motion (`--pose auto`): how much, how lively, which seed, the bounds."""

    amplitude: float = option(1.0, bounds=(0, 10), help="scale of all head angles (0 holds the head still)")
    liveliness: float = option(1.0, bounds=(0, 10), help="how often the head nods and turns with stressed syllables, "
                                         "and how fast it sways (0.5 calm, 2 animated)")
    seed: int = option(0, bounds=(0, 2**32 - 1),
                       help="seed of the head motion (the same seed and audio give the same motion)")
    max_yaw: float = option(15.0, bounds=(0.01, 90), help="largest yaw in degrees")
    max_pitch: float = option(10.0, bounds=(0.01, 90), help="largest pitch in degrees")
    max_roll: float = option(8.0, bounds=(0.01, 90), help="largest roll in degrees")
    max_speed: float = option(80.0, bounds=(0.01, 10000),
                              help="largest angular speed per axis in degrees per second")
    style: str | None = option(None, metavar="STYLE.json",
                               help="a person's head motion style (`trtalk motion fit VIDEO -o STYLE.json`)",
                               default_text="the generic style")
    speech_floor: float = option(0.22, cli=False)  # voice-band mel level of no activity
    speech_ceil: float = option(0.45, cli=False)  # ... of full activity

    def __post_init__(self) -> None:
        for name in ("amplitude", "liveliness"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 10):
                raise TrtalkError(f"--motion-{name.replace('_', '-')} must be a number in [0, 10], got {value}")
        for name in ("max_yaw", "max_pitch", "max_roll", "max_speed"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TrtalkError(f"--motion-{name.replace('_', '-')} must be a positive number, got {value}")
        if not self.speech_ceil > self.speech_floor:
            raise TrtalkError("motion speech_ceil must be above speech_floor")
        if self.style is not None and str(self.style) != "":
            from trtalk.motion.style import load_style

            load_style(self.style)  # a bad file is a one-line error before anything loads

    @property
    def bounds(self) -> np.ndarray:
        """(yaw, pitch, roll) limits in degrees."""
        return np.array([self.max_yaw, self.max_pitch, self.max_roll])


@dataclass(frozen=True)
class FrameFeatures:
    """What one frame's new audio says (see the module docstring)."""

    level: float
    activity: float
    speaking: bool
    onset: float
    pitch: float
    prominence: float
    phrase_start: bool
    mouth_open: float


def _alpha(tau_s: float, dt: float) -> float:
    """Per-step coefficient of an exponential follower with time constant ``tau_s``."""
    return 1.0 - math.exp(-dt / max(tau_s, 1e-6))


class SpeechFeatures:
    """Per-frame speech features from each frame's mel window, in frame order (causal)."""

    def __init__(self, fps: float, cfg: MotionConfig) -> None:
        self.fps = fps
        self.dt = 1.0 / fps
        self.cfg = cfg
        self.new_rows = max(1, int(round(100.0 / fps)))
        self.reset()

    def reset(self) -> None:
        self._recent: list[float] = []  # levels of the last 120 ms
        self._hang = 0.0  # seconds of speaking hangover left
        self._pause = math.inf  # seconds since speech
        self._since_onset = math.inf
        self._lev_mean, self._lev_var = 0.4, 0.01
        self._pitch_mean, self._pitch_var = 5.0, 1.0

    def step(self, window: np.ndarray) -> FrameFeatures:
        """``window``: the frame's (1, 80, 20) freq x time mel window (or (80, 20))."""
        arr = np.asarray(window, dtype=np.float32)
        w = arr.reshape(-1, arr.shape[-1])  # 80 x 20
        rows = w[:, -self.new_rows:].T  # newest rows, time x freq
        cfg, dt = self.cfg, self.dt
        level = float(rows[:, VOICE_BANDS[0]:VOICE_BANDS[1]].mean())
        activity = float(np.clip((level - cfg.speech_floor) / (cfg.speech_ceil - cfg.speech_floor), 0.0, 1.0))
        voiced = activity > 0.25
        self._hang = 0.12 if voiced else max(0.0, self._hang - dt)
        speaking = voiced or self._hang > 0
        # Onset: the level's rise over its minimum in the last 120 ms.
        self._recent.append(level)
        keep = max(2, int(round(0.12 * self.fps)))
        self._recent = self._recent[-keep:]
        rise = level - min(self._recent[:-1]) if len(self._recent) > 1 else 0.0
        onset = float(np.clip((rise - 0.06) / 0.15, 0.0, 1.0)) if voiced else 0.0
        # Pitch proxy: power-weighted centroid of the lowest bands (values are dB / 100 + 1).
        low = rows[:, PITCH_BANDS[0]:PITCH_BANDS[1]].mean(axis=0)
        pw = np.power(10.0, 5.0 * (low - low.max()))
        pitch = float((pw * np.arange(len(low))).sum() / pw.sum()) if voiced else math.nan
        prominence = 0.0
        if voiced:
            a = _alpha(2.0, dt)
            self._lev_mean += a * (level - self._lev_mean)
            self._lev_var += a * ((level - self._lev_mean) ** 2 - self._lev_var)
            self._pitch_mean += a * (pitch - self._pitch_mean)
            self._pitch_var += a * ((pitch - self._pitch_mean) ** 2 - self._pitch_var)
            z_lev = (level - self._lev_mean) / math.sqrt(max(self._lev_var, 1e-4))
            z_pitch = (pitch - self._pitch_mean) / math.sqrt(max(self._pitch_var, 0.25))
            prominence = float(np.clip(0.5 + 0.35 * z_lev + 0.25 * z_pitch, 0.0, 1.0))
        phrase_start = bool(onset > 0 and self._pause >= 0.2 and self._since_onset > 0.3)
        if onset > 0:
            self._since_onset = 0.0
        else:
            self._since_onset += dt
        self._pause = 0.0 if speaking else self._pause + dt
        mouth = float(np.clip((level - 0.28) / (0.55 - 0.28), 0.0, 1.0))
        return FrameFeatures(level, activity, speaking, onset, pitch, prominence, phrase_start, mouth)


class _Spring:
    """Three critically damped springs (one per axis) pulled to zero; `kick` adds velocity."""

    def __init__(self, freq_hz: float) -> None:
        self.w = 2 * math.pi * freq_hz
        self.x = np.zeros(3)
        self.v = np.zeros(3)

    def kick(self, peak: np.ndarray) -> None:
        # The impulse response v0 t exp(-w t) peaks at v0 / (w e): this kick peaks at ``peak``.
        self.v += np.asarray(peak) * self.w * math.e

    def step(self, dt: float, substeps: int = 4) -> np.ndarray:
        h = dt / substeps
        for _ in range(substeps):  # semi-implicit Euler, stable for w h << 1
            self.v += h * (-self.w * self.w * self.x - 2 * self.w * self.v)
            self.x += h * self.v
        return self.x


class HeadMotion:
    """Yaw, pitch, roll (degrees) per output frame from speech (see the module docstring).

    ``step(window)`` takes frame k's mel window in frame order and returns its angles; ``skip``
    frames (dropped live) advance the clock with the last window. `features` is the last frame's
    `FrameFeatures` (the blink generator reads speaking and mouth opening from it).

    ``style`` (`trtalk.motion.style.MotionStyle`) sets the amplitudes, time constants, gesture
    gains, drift and rest posture; None: ``config.style``'s file, else the generic style. The
    style changes constants only: the cost per frame and the causality are the same.
    """

    def __init__(self, fps: float = 25.0, config: MotionConfig | None = None, style: "MotionStyle | None" = None) -> None:
        from trtalk.motion.style import resolve_style

        if not (fps > 0 and math.isfinite(fps)):
            raise TrtalkError(f"fps must be a positive number, got {fps}")
        self.fps = fps
        self.dt = 1.0 / fps
        self.cfg = config or MotionConfig()
        self.style = style if style is not None else resolve_style(self.cfg.style)
        st = self.style
        #: sway amplitude at full speech before ``amplitude`` (deg) and its time constants (s)
        self.sway_deg = np.array(st.sway, dtype=np.float64)
        self.sway_tau = np.array(st.sway_tau, dtype=np.float64)
        #: spread of the postures taken at phrase starts and some stressed syllables (deg)
        self.posture_deg = np.array(st.posture, dtype=np.float64)
        self.gesture_gain = np.array(st.gesture, dtype=np.float64)
        self.drift_deg = np.array(st.drift, dtype=np.float64)
        self.rest = np.array(st.rest, dtype=np.float64)
        self.speech = SpeechFeatures(fps, self.cfg)
        self.reset()

    def reset(self) -> None:
        """Start over: the same seed and audio give the same angles again."""
        self.speech.reset()
        self._rng = np.random.default_rng(self.cfg.seed)
        self._ou1 = self._rng.standard_normal(3) * 0.5
        self._ou2 = self._ou1.copy()
        self._drift = self._rng.standard_normal(3)
        self._act = 0.0
        self._spring = _Spring(1.1)
        self._posture = np.zeros(3)
        self._posture_target = np.zeros(3)
        self._since_gesture = math.inf
        self._out = np.zeros(3)
        self.features: FrameFeatures | None = None
        self.frames = 0

    def step(self, window: np.ndarray, skip: int = 0) -> np.ndarray:
        """Angles (yaw, pitch, roll) of the next frame from its mel window; ``skip`` frames that
        were dropped before it are advanced too (their audio is unknown here: this window's)."""
        for _ in range(skip):
            self._advance(window)
        return self._advance(window)

    def _advance(self, window: np.ndarray) -> np.ndarray:
        cfg, dt, rng = self.cfg, self.dt, self._rng
        f = self.features = self.speech.step(window)
        self.frames += 1
        live = cfg.liveliness
        # The random draws are the same every frame whatever the audio: the noise stays seeded.
        noise = rng.standard_normal(3)
        u_gesture, u_turn, u_posture = rng.random(3)
        signs = rng.choice([-1.0, 1.0], size=3)
        mags = rng.random(3)
        posture_draw = rng.standard_normal(3)
        drift_noise = rng.standard_normal(3)
        st = self.style
        live_nod = live * st.nod_rate

        # Speech activity envelope: quick to rise, slow to fall.
        target = f.activity if f.speaking else 0.0
        self._act += _alpha(0.25 if target > self._act else 0.9, dt) * (target - self._act)
        # Sway: two cascaded OU stages per axis (unit variance at the first), faster when lively.
        # ... and slower in pauses: a listening head drifts, a speaking one sways.
        tau = self.sway_tau / max(0.25, live) ** 0.5 * (1.0 + 1.5 * (1.0 - self._act))
        a1 = dt / tau
        self._ou1 += -a1 * self._ou1 + np.sqrt(2 * a1) * noise
        self._ou2 += _alpha(0.25, dt) * (self._ou1 - self._ou2)
        sway_gain = st.pause_sway + (1.0 - st.pause_sway) * self._act
        sway = self.sway_deg * sway_gain * self._ou2
        # Drift: slow posture drift (one OU stage of unit variance), whatever the speech.
        a2 = dt / st.drift_tau
        self._drift += -a2 * self._drift + math.sqrt(2 * a2) * drift_noise

        # Gestures at stressed syllables: a nod, sometimes with a small turn and tilt.
        self._since_gesture += dt
        if f.onset > 0 and self._since_gesture > 0.35:
            strength = f.onset * (0.4 + 0.6 * f.prominence)
            p_nod = min(1.0, 0.8 * live_nod * (0.3 + f.prominence))
            if u_gesture < p_nod:
                peak = np.zeros(3)
                peak[1] = (1.5 + 3.0 * mags[0]) * strength
                if u_turn < 0.45 * min(1.0, live_nod):
                    peak[0] = signs[0] * (1.0 + 3.0 * mags[1]) * strength
                    peak[2] = signs[2] * (0.5 + 1.5 * mags[2]) * strength
                self._spring.kick(peak * self.gesture_gain)
                self._since_gesture = 0.0
        # Posture: a new one at each phrase start (and now and then at a stressed syllable: people
        # shift their posture mid-sentence too), back towards the photo's pose in long pauses.
        shift = f.phrase_start or (f.onset > 0 and f.prominence > 0.6 and u_posture < 0.15 * live)
        if shift:
            spread = self.posture_deg
            self._posture_target = np.clip(posture_draw * spread, -2.0 * spread, 2.0 * spread)
        if f.phrase_start:
            self._spring.kick(np.array([0.0, -1.5 * live, 0.0]) * self.gesture_gain)  # a slight lift as a phrase starts
        elif not f.speaking:
            self._posture_target *= 1.0 - _alpha(5.0, dt)
        self._posture += _alpha(0.35, dt) * (self._posture_target - self._posture)
        gesture = self._spring.step(dt)

        raw = cfg.amplitude * (self.rest + sway + gesture + self._posture + self.drift_deg * self._drift)
        b = cfg.bounds
        bounded = b * np.tanh(raw / b)
        step = cfg.max_speed * dt
        self._out = self._out + np.clip(bounded - self._out, -step, step)
        return self._out.copy()

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Angles (N, 3) of N frames' windows (N x 1 x 80 x 20 or N x 80 x 20) from a reset state."""
        self.reset()
        return np.stack([self.step(w) for w in windows]) if len(windows) else np.zeros((0, 3))


def wave_windows(wave: np.ndarray, fps: float = 25.0, num_frames: int | None = None) -> np.ndarray:
    """The frame step's mel windows (N, 1, 80, 20) of a whole 16 kHz wave, with the official
    whole-file gain (as `trtalk render` computes them); rows outside the audio are silence."""
    from trtalk.audio import mel_spectrogram, mel_windows, num_video_frames, rms_gain

    wave = np.asarray(wave, dtype=np.float32)
    n = num_video_frames(len(wave), fps) if num_frames is None else num_frames
    return mel_windows(mel_spectrogram(wave * np.float32(rms_gain(wave))), n, fps)
