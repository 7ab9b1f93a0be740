"""Fit a head motion style (`trtalk.motion.style`) to a talking video of the person.

1. Track: head angles per frame (mediapipe face mesh, upper-face rigid fit relative to the first
   face, the landmark tracker's light smoothing: `trtalk.warp.drive.MeshRotation`) and eye
   openness (lid gap over eye width, both eyes) per frame; the video's own audio gives the mel
   windows `HeadMotion` hears (`trtalk.motion.head.wave_windows`).
2. Measure (`motion_stats`): per axis the angle spread, the angular speed's median, 90th and 99th
   percentile, the RMS in three frequency bands (below 0.5 Hz, 0.5-2 Hz, above 2 Hz: the
   spectral shape), and the coupling to speech: the correlation of head speed with the speech
   level (both smoothed over 0.2 s) and head speed in pauses over head speed in speech.
3. Match by simulation (the method of simulated moments): `HeadMotion` with the current style is
   run on the same audio (at least four seeds, at least `SIM_SECONDS` of motion, fresh seeds every
   round), the same statistics are measured, and each parameter is
   moved (in the log domain, damped, bounded) towards what closes the gap of the statistic it
   drives most: amplitudes <- spread, sway time constants <- median speed over spread, gesture
   gains <- p99 over median speed, drift <- the slow band's share, pause sway <- the pause/speech
   speed ratio, nod rate <- the speed/level correlation. The rest posture (optional: angles are
   relative to the video's first frame) is the median angle. The target statistics are first shrunk
   towards what the prior (generic) style does on the same audio, by `PRIOR_SECONDS` worth of
   it: on a few seconds of video the statistics are mostly noise. Twelve rounds (smaller steps in
   the second half); the style is the average of the second half's (picking the round that came
   closest with its seeds fits their noise), its amplitudes capped at the angles' soft bounds.
4. Blinks (`fit_blinks`): dips of the eye openness under 70 % of its running median, counted
   and timed, shrunk towards the prior style by 20 s worth of its rate.

A fit of a minute of video takes a few seconds after the tracking (the tracking runs at the
face mesh's speed, a few ms a frame on a CPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from trtalk.errors import TrtalkError
from trtalk.motion.head import VOICE_BANDS, HeadMotion, MotionConfig
from trtalk.motion.style import BOUNDS, MotionStyle

log = logging.getLogger(__name__)

AXES = ("yaw", "pitch", "roll")
#: frequency bands of the spectral shape (Hz): [0, 0.5), [0.5, 2), [2, Nyquist]
BAND_EDGES = (0.5, 2.0)
#: the first seeds the fit simulates with (the benchmark evaluates with others: 0-7)
FIT_SEEDS = (1000, 1001, 1002, 1003)
#: a fit round simulates at least this many seconds (more seeds on a short clip)
SIM_SECONDS = 60.0
#: round r of a fit simulates with its first round's seeds + r * SEED_STRIDE
SEED_STRIDE = 100
#: the seeds of a fit's final check: its first round's + this (no round uses them)
CHECK_SEED_OFFSET = 50
#: largest sway, posture and drift amplitude per axis: `MotionConfig`'s soft bounds of the angles
#: (yaw, pitch, roll; beyond them a larger amplitude only saturates the angle)
AMP_CAP = np.array([15.0, 10.0, 8.0])
#: how many seconds of the prior style `trtalk motion fit` weighs against the video's statistics
PRIOR_SECONDS = 10.0
#: statistics below this are treated as this (degrees or deg/s) in log ratios
EPS = 0.05
#: mel level under which a frame counts as a pause (the voice-band mean, as `SpeechFeatures`)
PAUSE_LEVEL = 0.28
MIN_SECONDS = 2.0
MAX_SECONDS = 600.0


@dataclass
class Stats:
    """Statistics of one angle track (module docstring, step 2)."""

    std: np.ndarray  # (3,)
    p50: np.ndarray
    p90: np.ndarray
    p99: np.ndarray
    band: np.ndarray  # (3 bands, 3 axes)
    corr: float  # corr(speed, level), nan when undefined
    pause_ratio: float  # mean speed in pauses / in speech, nan when either is under 0.4 s

    @staticmethod
    def mean(items: Sequence["Stats"]) -> "Stats":
        def nanmean(xs: list[float]) -> float:
            xs = [x for x in xs if math.isfinite(x)]
            return float(np.mean(xs)) if xs else math.nan

        return Stats(*(np.mean([getattr(s, k) for s in items], axis=0) for k in ("std", "p50", "p90", "p99", "band")),
                     nanmean([s.corr for s in items]), nanmean([s.pause_ratio for s in items]))

    def as_dict(self) -> dict:
        return {"std": self.std.round(3).tolist(), "speed_p50": self.p50.round(3).tolist(),
                "speed_p90": self.p90.round(3).tolist(), "speed_p99": self.p99.round(3).tolist(),
                "band_rms": self.band.round(3).tolist(),
                "corr_speed_level": None if not math.isfinite(self.corr) else round(self.corr, 3),
                "pause_speech_speed": None if not math.isfinite(self.pause_ratio) else round(self.pause_ratio, 3)}


def speech_level(windows: np.ndarray) -> np.ndarray:
    """Voice-band mel level of each frame's newest audio (N,), from (N, 1, 80, 20) windows."""
    w = np.asarray(windows, dtype=np.float32)
    w = w.reshape(len(w), -1, w.shape[-1])
    return w[:, VOICE_BANDS[0]:VOICE_BANDS[1], -4:].mean(axis=(1, 2))


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    return np.convolve(x, np.ones(n) / n, mode="same") if n > 1 and len(x) >= n else x


def motion_stats(angles: np.ndarray, level: np.ndarray, fps: float) -> Stats:
    """`Stats` of an (N, 3) angle track (degrees) with its speech level (N,) at ``fps``."""
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) < 8:
        raise TrtalkError(f"motion statistics need at least 8 frames of (yaw, pitch, roll), got {a.shape}")
    d = np.diff(a, axis=0) * fps
    sp = np.abs(d)
    x = a - a.mean(axis=0)
    spec = np.abs(np.fft.rfft(x, axis=0)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / fps)
    # Parseval: the mean square of x is the sum over bins (doubled except DC/Nyquist) / N^2
    weight = np.where((freqs > 0) & (freqs < fps / 2), 2.0, 1.0)[:, None] / len(x) ** 2
    power = spec * weight
    edges = (0.0, *BAND_EDGES, math.inf)
    band = np.stack([np.sqrt(power[(freqs >= lo) & (freqs < hi)].sum(axis=0)) for lo, hi in zip(edges, edges[1:])])
    norm = np.linalg.norm(d, axis=1)
    lev = np.asarray(level, dtype=np.float64)[1:len(a)]
    norm = norm[:len(lev)]
    n = max(1, int(round(0.2 * fps)))
    s_sp, s_lev = _smooth(norm, n), _smooth(lev, n)
    corr = float(np.corrcoef(s_sp, s_lev)[0, 1]) if len(lev) > 10 and s_sp.std() > 1e-9 and s_lev.std() > 1e-9 else math.nan
    pause = lev < PAUSE_LEVEL
    need = max(2, int(round(0.4 * fps)))
    ratio = (float(norm[pause].mean() / max(norm[~pause].mean(), 1e-6))
             if pause.sum() >= need and (~pause).sum() >= need else math.nan)
    return Stats(a.std(axis=0), np.percentile(sp, 50, axis=0), np.percentile(sp, 90, axis=0),
                 np.percentile(sp, 99, axis=0), band, corr, ratio)


def blend(measured: Stats, prior: Stats, weight: float) -> Stats:
    """``weight`` of ``measured`` and the rest of ``prior``: geometric for the spreads, speeds and
    bands, arithmetic for the correlation and the pause ratio (either where the other is undefined)."""
    def mix(a: float, b: float) -> float:
        if not math.isfinite(a):
            return b
        return a if not math.isfinite(b) else weight * a + (1 - weight) * b

    geo = {k: np.exp(weight * np.log(np.maximum(getattr(measured, k), EPS))
                     + (1 - weight) * np.log(np.maximum(getattr(prior, k), EPS)))
           for k in ("std", "p50", "p90", "p99", "band")}
    return Stats(**geo, corr=mix(measured.corr, prior.corr), pause_ratio=mix(measured.pause_ratio, prior.pause_ratio))


def distance(gen: Stats, real: Stats) -> float:
    """How far generated motion's statistics are from the real motion's: the mean of
    |ln(generated / real)| over the per-axis spread, speed p50 / p90 / p99 and the three band
    RMS values (21 terms, values floored at `EPS`), and |corr difference| of the speed/level
    correlation (one term; left out where either is undefined). 0: the same statistics; 0.1:
    about 10 % apart on average."""
    terms = []
    for k in ("std", "p50", "p90", "p99", "band"):
        g, r = np.maximum(getattr(gen, k), EPS), np.maximum(getattr(real, k), EPS)
        terms.extend(np.abs(np.log(g / r)).ravel().tolist())
    if math.isfinite(gen.corr) and math.isfinite(real.corr):
        terms.append(abs(gen.corr - real.corr))
    return float(np.mean(terms))


@dataclass
class Track:
    """One stretch of real motion: angles (N, 3) and the mel windows (N, 1, 80, 20) of its frames."""

    angles: np.ndarray
    windows: np.ndarray

    def __post_init__(self) -> None:
        if len(self.angles) != len(self.windows):
            raise TrtalkError(f"{len(self.angles)} angle frames but {len(self.windows)} audio windows")


def simulate(style: MotionStyle, windows: np.ndarray, fps: float, seed: int) -> np.ndarray:
    """`HeadMotion` with ``style`` (default options, ``seed``) on ``windows``: (N, 3) angles."""
    return HeadMotion(fps, MotionConfig(seed=seed), style=style).run(windows)


def simulated_stats(style: MotionStyle, tracks: Sequence[Track], fps: float,
                    seeds: Sequence[int] = FIT_SEEDS) -> Stats:
    return Stats.mean([motion_stats(simulate(style, t.windows, fps, s), speech_level(t.windows), fps)
                       for t in tracks for s in seeds])


def _clip(name: str, value: np.ndarray | float) -> np.ndarray | float:
    lo, hi = BOUNDS[name]
    return np.clip(value, lo, hi)


def _log_ratio(target: np.ndarray | float, sim: np.ndarray | float) -> np.ndarray:
    return np.clip(np.log(np.maximum(target, 1e-4) / np.maximum(sim, 1e-4)), -0.7, 0.7)


def fit_seeds(seconds: float, seeds: Sequence[int] | None = None) -> tuple[int, ...]:
    """The seeds of a fit's first round: ``seeds``, else enough that a round simulates at least
    `SIM_SECONDS` (4 to 32 of them). Each later round shifts them by `SEED_STRIDE` (fresh noise)."""
    if seeds is not None:
        return tuple(int(s) for s in seeds)
    n = int(np.clip(math.ceil(SIM_SECONDS / max(seconds, 1e-6)), 4, 32))
    return tuple(FIT_SEEDS[0] + i for i in range(n))


def fit_motion(tracks: Sequence[Track], fps: float, prior: MotionStyle | None = None, *, rounds: int = 12,
               seeds: Sequence[int] | None = None, rest: bool = True, name: str = "fitted",
               source: str = "", prior_seconds: float = 0.0) -> tuple[MotionStyle, dict]:
    """The head motion part of a style fitted to ``tracks`` (their statistics averaged: one clip
    for a person, many for a generic style). ``rest``: fit the rest posture (the median angle;
    False keeps the prior's). ``prior_seconds``: shrink the target statistics towards the
    prior style's on the same audio, as if the prior had been seen for this many seconds
    (weight ``T / (T + prior_seconds)`` of the measured ones, T the tracks' duration; in the log
    domain): a short video's statistics are noisy.

    The simulated statistics are noisy too (a few seconds of a seeded random motion), so every
    round simulates with fresh seeds (`fit_seeds`) and the style returned is the average (in the
    log domain) of the last half of the rounds' styles, not the round that happened to come
    closest with its seeds: picking that one fits the seeds' noise (the generic style fitted so
    matched its 4 seeds' roll spread within 6 % and moved 40 % more with any other seeds). Its
    report's simulated statistics and distance are measured with seeds no round used. The
    amplitudes stay under the soft bounds of the angles (`AMP_CAP`), where more amplitude only
    saturates (the three of an axis scaled down together). Returns the style and a report (target and simulated statistics, the distance per
    round)."""
    if not tracks:
        raise TrtalkError("no motion to fit a style to")
    prior = prior or MotionStyle()
    target = Stats.mean([motion_stats(t.angles, speech_level(t.windows), fps) for t in tracks])
    seconds = sum(len(t.angles) for t in tracks) / fps
    base_seeds = fit_seeds(seconds, seeds)
    weight = 1.0
    if prior_seconds > 0:  # shrink towards what the prior does on this audio
        weight = seconds / (seconds + prior_seconds)
        target = blend(target, simulated_stats(prior, tracks, fps, base_seeds), weight)
    keys = ("sway", "sway_tau", "posture", "gesture", "drift")
    st = {k: np.array(getattr(prior, k), dtype=np.float64) for k in keys}
    st["drift"] = np.maximum(st["drift"], 0.5)  # a multiplicative update cannot leave zero
    pause, nod = prior.pause_sway, prior.nod_rate
    rest_deg = (np.clip(np.median(np.concatenate([t.angles for t in tracks]), axis=0), *BOUNDS["rest"])
                if rest else np.array(prior.rest))

    def make(params: dict, pause_sway: float, nod_rate: float) -> MotionStyle:
        # an axis whose largest amplitude is over the cap has all three scaled down together
        over = np.max([params[k] for k in ("sway", "posture", "drift")], axis=0) / AMP_CAP
        shrink = 1.0 / np.maximum(over, 1.0)
        capped = {k: v * shrink if k in ("sway", "posture", "drift") else v for k, v in params.items()}
        return prior.with_(name=name, source=source, seconds=round(seconds, 2), rest=tuple(float(v) for v in rest_deg),
                           **{k: tuple(float(x) for x in _clip(k, v)) for k, v in capped.items()},
                           pause_sway=float(_clip("pause_sway", pause_sway)), nod_rate=float(_clip("nod_rate", nod_rate)))

    history, iterates = [], []
    for r in range(rounds):
        style = make(st, pause, nod)
        if r >= rounds // 2:
            iterates.append(style)
        round_seeds = tuple(s + r * SEED_STRIDE for s in base_seeds)
        sim = simulated_stats(style, tracks, fps, round_seeds)
        history.append(round(distance(sim, target), 4))
        # the capped values are the ones simulated: the updates start from them
        st = {k: np.array(getattr(style, k), dtype=np.float64) for k in keys}
        st["drift"] = np.maximum(st["drift"], 0.5)
        pause, nod = style.pause_sway, style.nod_rate
        damp = 0.8 if r < rounds // 2 else 0.4  # smaller steps once near: the noise averages out
        # amplitudes <- spread (the whole motion of an axis scales with them)
        r_amp = damp * _log_ratio(target.std, sim.std)
        for k in ("sway", "posture", "drift"):
            st[k] = st[k] * np.exp(r_amp)
        # tempo <- median speed relative to the spread (shorter time constant: faster sway)
        r_tempo = damp * _log_ratio(target.p50 / np.maximum(target.std, EPS), sim.p50 / np.maximum(sim.std, EPS))
        st["sway_tau"] = st["sway_tau"] * np.exp(-r_tempo)
        # gestures <- the fast tail of the speed relative to its median (and the amplitude)
        r_jerk = damp * _log_ratio(target.p99 / np.maximum(target.p50, EPS), sim.p99 / np.maximum(sim.p50, EPS))
        st["gesture"] = st["gesture"] * np.exp(r_amp + 1.5 * r_jerk)
        # drift <- the slow band's share of the spread
        r_slow = damp * _log_ratio(target.band[0] / np.maximum(target.std, EPS), sim.band[0] / np.maximum(sim.std, EPS))
        st["drift"] = st["drift"] * np.exp(1.5 * r_slow)
        if math.isfinite(target.pause_ratio) and math.isfinite(sim.pause_ratio):
            pause = pause * float(np.exp(damp * _log_ratio(target.pause_ratio, sim.pause_ratio)))
        if math.isfinite(target.corr) and math.isfinite(sim.corr):
            nod = nod * math.exp(float(np.clip(2.5 * damp * (target.corr - sim.corr), -0.7, 0.7)))
    if not iterates:
        iterates.append(make(st, pause, nod))
    mean = {k: np.exp(np.mean([np.log(np.maximum(getattr(s, k), 1e-6)) for s in iterates], axis=0)) for k in keys}
    style = make(mean, float(np.exp(np.mean([np.log(max(s.pause_sway, 1e-6)) for s in iterates]))),
                 float(np.exp(np.mean([np.log(max(s.nod_rate, 1e-6)) for s in iterates]))))
    check_seeds = tuple(s + CHECK_SEED_OFFSET for s in base_seeds)
    sim = simulated_stats(style, tracks, fps, check_seeds)
    dist = distance(sim, target)
    report = {"target": target.as_dict(), "weight": round(weight, 3), "simulated": sim.as_dict(), "distance": round(dist, 4),
              "rounds": history, "seconds": round(seconds, 2), "seeds_per_round": len(base_seeds)}
    log.info("fitted motion style %s on %.1f s: distance %.3f on unseen seeds (rounds %s)", name, seconds, dist, history)
    return style, report


def eye_openness(mesh: np.ndarray) -> float:
    """Lid gap over eye width, both eyes averaged (mediapipe face mesh indices)."""
    def ratio(top: int, bottom: int, outer: int, inner: int) -> float:
        width = np.linalg.norm(mesh[outer, :2] - mesh[inner, :2])
        return float(np.linalg.norm(mesh[top, :2] - mesh[bottom, :2]) / max(width, 1e-6))

    return 0.5 * (ratio(159, 145, 33, 133) + ratio(386, 374, 263, 362))


def detect_blinks(openness: np.ndarray, fps: float) -> list[tuple[int, int]]:
    """(start, length) in frames of each dip of ``openness`` under 70 % of its running median
    (over 2 s) that lasts at most 0.6 s (longer: the eyes looked down or closed, not a blink)."""
    o = np.asarray(openness, dtype=np.float64)
    if len(o) == 0:
        return []
    half = max(1, int(round(fps)))
    padded = np.pad(o, half, mode="edge")
    base = np.array([np.median(padded[i:i + 2 * half + 1]) for i in range(len(o))])
    closed = o < 0.7 * base
    out = []
    i = 0
    while i < len(o):
        if closed[i]:
            j = i
            while j < len(o) and closed[j]:
                j += 1
            if (j - i) <= 0.6 * fps:
                out.append((i, j - i))
            i = j
        else:
            i += 1
    return out


def fit_blinks(openness: np.ndarray, speaking: np.ndarray, fps: float, prior: MotionStyle,
               prior_seconds: float = 20.0) -> tuple[dict, dict]:
    """Blink rates (silent and speaking) and duration from an eye openness track: the counted
    rate, shrunk towards the prior's by ``prior_seconds`` of it; the speaking/silent ratio of the
    prior kept (a few minutes of video hold too few blinks to tell them apart); duration twice
    the mean time under the threshold (a smooth lid curve is under 70 % open about half of a
    blink), shrunk towards the prior by two blinks' worth. Returns (style fields, report)."""
    blinks = detect_blinks(openness, fps)
    seconds = len(openness) / fps
    speaking = np.asarray(speaking, dtype=bool)
    share = float(speaking.mean()) if len(speaking) else 0.5
    prior_rate = share * prior.blink_speech_rate_per_min + (1 - share) * prior.blink_rate_per_min
    rate = (len(blinks) + prior_rate * prior_seconds / 60.0) / ((seconds + prior_seconds) / 60.0)
    k = rate / max(prior_rate, 1e-6)
    if blinks:
        measured = 2.0 * float(np.mean([n for _, n in blinks])) / fps
        duration = (measured * len(blinks) + prior.blink_duration_s * 2) / (len(blinks) + 2)
    else:
        duration = prior.blink_duration_s
    fields = {"blink_rate_per_min": float(_clip("blink_rate_per_min", prior.blink_rate_per_min * k)),
              "blink_speech_rate_per_min": float(_clip("blink_speech_rate_per_min", prior.blink_speech_rate_per_min * k)),
              "blink_duration_s": float(np.clip(duration, 0.1, 0.5))}
    return fields, {"blinks": len(blinks), "seconds": round(seconds, 2),
                    "measured_rate_per_min": round(len(blinks) / max(seconds, 1e-6) * 60, 2), **fields}


def track_video(path: str | Path, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, np.ndarray, float]:
    """Head angles (N, 3), eye openness (N,) and the frame rate of a video (step 1). Frames
    without a face repeat the previous values; a video with a face in under 80 % of its frames
    is refused."""
    from trtalk.face import FaceMeshDetector, open_media
    from trtalk.warp.drive import MeshRotation

    src = open_media(path)
    fps = float(getattr(src, "fps", None) or 0.0)
    if not (fps > 0 and math.isfinite(fps)):
        raise TrtalkError(f"{path}: not a video with a frame rate; give a talking video of the person")
    det = FaceMeshDetector(static_image_mode=False, max_num_faces=1)
    rot = MeshRotation()
    angles, eyes = [], []
    last_eye = math.nan
    try:
        for i, frame in enumerate(src):
            if i >= max_seconds * fps:
                log.warning("%s: fitting on its first %.0f s", path, max_seconds)
                break
            faces = det.detect3d(frame)
            mesh = faces[0] if faces else None
            angles.append(rot.update(mesh))
            if mesh is not None:
                last_eye = eye_openness(mesh)
            eyes.append(last_eye)
    finally:
        det.close()
    n = len(angles)
    if n < MIN_SECONDS * fps:
        raise TrtalkError(f"{path}: {n / fps:.1f} s of video is too short to fit a motion style "
                          f"(at least {MIN_SECONDS:g} s; 30 s or more is better)")
    if rot.missed > 0.2 * n:
        raise TrtalkError(f"{path}: no face in {rot.missed} of {n} frames; give a video where the face is "
                          f"visible throughout")
    eye = np.array(eyes)
    if np.isnan(eye).any():
        first = eye[np.isfinite(eye)][0]
        eye[: int(np.argmax(np.isfinite(eye)))] = first
    return np.array(angles), eye, fps


def fit_style_from_video(path: str | Path, *, name: str | None = None, prior: MotionStyle | None = None,
                         max_seconds: float = MAX_SECONDS,
                         prior_seconds: float = PRIOR_SECONDS, rest: bool = False) -> tuple[MotionStyle, dict]:
    """`trtalk motion fit`: track the video, read its audio, fit the motion and the blinks."""
    from trtalk.audio import load_audio
    from trtalk.motion.head import wave_windows
    from trtalk.motion.style import generic_style

    prior = prior or generic_style()
    angles, eye, fps = track_video(path, max_seconds)
    wave = load_audio(path)
    windows = wave_windows(wave, fps, len(angles))
    name = name or Path(path).stem[:100]
    style, report = fit_motion([Track(angles, windows)], fps, prior, name=name, prior_seconds=prior_seconds, rest=rest,
                               source=f"trtalk motion fit {Path(path).name}"[:200])
    speaking = speech_level(windows) >= PAUSE_LEVEL
    blink, blink_report = fit_blinks(eye, speaking, fps, prior)
    report["blinks"] = blink_report
    return style.with_(**blink), report
