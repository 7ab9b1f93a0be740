"""Natural blinks on the output frame clock: when to blink and how far the lids are shut.

Statistics (published, healthy adults): spontaneous blink rate about 17 per minute at rest and 26
in conversation (Bentivoglio et al., Movement Disorders 12(6), 1997); a blink lasts 100-400 ms,
about 250 ms on average, the lid closing in about a third of it and reopening more slowly
(VanderWerf et al., J. Neurophysiol. 89, 2003; Caffier et al., Eur. J. Appl. Physiol. 89, 2003).
People blink more at the end of a phrase and rarely in the middle of a wide-open vowel.

The generator is a hazard process: after a refractory gap, each frame starts a blink with the
probability that gives the configured rate (speaking or not), raised for a moment after speech
stops (a phrase end) and held off while the mouth is wide open. Durations are jittered. It is
causal (frame t depends on inputs up to t only) and seeded, so a replay gives the same blinks.

    gen = BlinkGenerator(fps=25.0)
    closure = gen.step(speaking=True, mouth_open=0.2)   # 0 open .. 1 shut, for the next frame
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trtalk.configcli import option
from trtalk.errors import TrtalkError


@dataclass
class BlinkConfig:
    """Blink timing (each field a flag where a front end exposes blinks)."""

    rate_per_min: float = option(17.0, bounds=(0, 600), help="blinks per minute while silent")
    speech_rate_per_min: float = option(26.0, bounds=(0, 600), help="blinks per minute while speaking")
    duration_s: float = option(0.25, bounds=(0.01, 10), help="mean blink duration in seconds")
    duration_jitter: float = option(0.2, bounds=(0, 0.99), help="relative spread of the blink duration")
    min_interval_s: float = option(0.5, bounds=(0.01, 3600), help="no new blink this soon after one started")
    phrase_end_boost: float = option(4.0, bounds=(0, 100), help="blink rate factor just after speech stops")
    phrase_end_s: float = option(0.6, bounds=(0.01, 60), help="how long the phrase-end boost lasts")
    mouth_open_limit: float = option(0.6, bounds=(0, 10),
                                     help="no blink starts while the mouth opening is above this")
    seed: int = option(0, bounds=(0, 2**32 - 1), help="seed of the blink timing")

    def __post_init__(self) -> None:
        for name in ("rate_per_min", "speech_rate_per_min", "phrase_end_boost"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TrtalkError(f"blink {name} must be a non-negative number, got {value}")
        for name in ("duration_s", "min_interval_s", "phrase_end_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TrtalkError(f"blink {name} must be a positive number of seconds, got {value}")
        if not 0 <= self.duration_jitter < 1:
            raise TrtalkError("blink duration_jitter must be in [0, 1)")
        if self.duration_s > self.min_interval_s:
            raise TrtalkError("blink duration_s must not exceed min_interval_s")


#: Share of a blink spent closing (the rest reopens).
CLOSING_SHARE = 1 / 3


def closure_at(t: float, duration: float) -> float:
    """Lid closure ``t`` seconds into a blink of ``duration``: 0 -> 1 in the first third
    (smoothstep), 1 -> 0 over the rest (smoothstep), 0 outside [0, duration]."""
    if t <= 0 or t >= duration:
        return 0.0
    tc = CLOSING_SHARE * duration
    u = t / tc if t < tc else 1.0 - (t - tc) / (duration - tc)
    return float(u * u * (3 - 2 * u))


class BlinkGenerator:
    """Eye closure per output frame (see the module docstring)."""

    def __init__(self, fps: float = 25.0, config: BlinkConfig | None = None) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise TrtalkError(f"fps must be a positive number, got {fps}")
        self.fps = fps
        self.cfg = config or BlinkConfig()
        self.reset()

    def reset(self) -> None:
        """Start over (same seed: the same blinks for the same inputs)."""
        self._rng = np.random.default_rng(self.cfg.seed)
        self._frame = 0
        self._start: int | None = None  # frame the running (or last) blink started
        self._duration = self.cfg.duration_s
        self._since_speech: float | None = None  # seconds since speech stopped
        self._was_speaking = False
        self._asked = False
        #: frames at which blinks started (for reports and tests)
        self.starts: list[int] = []

    def blink_now(self) -> None:
        """Blink at the next frame (live control), unless a blink is running."""
        self._asked = True

    @property
    def blinking(self) -> bool:
        return self._start is not None and (self._frame - self._start) / self.fps < self._duration

    def _rate(self, speaking: bool | None) -> float:
        cfg = self.cfg
        rate = cfg.speech_rate_per_min if speaking else cfg.rate_per_min
        if not speaking and self._since_speech is not None and self._since_speech < cfg.phrase_end_s:
            rate *= cfg.phrase_end_boost
        # The hazard after the refractory gap that gives ``rate`` blinks per second overall
        # (a dead time tau turns a hazard h into h / (1 + h tau)).
        rate /= 60.0
        return rate / max(1.0 - rate * cfg.min_interval_s, 0.1)

    def step(self, speaking: bool | None = None, mouth_open: float | None = None) -> float:
        """Closure of the next frame in [0, 1]. ``speaking``: whether the frame's audio is speech
        (None: unknown, the resting rate); ``mouth_open``: the mouth opening in [0, 1] if known."""
        cfg = self.cfg
        dt = 1.0 / self.fps
        if speaking:
            self._since_speech = None
        elif self._was_speaking:
            self._since_speech = 0.0
        elif self._since_speech is not None:
            self._since_speech += dt
        self._was_speaking = bool(speaking)

        draw = self._rng.random()  # one draw per frame whatever happens: timing stays seeded
        jitter = self._rng.standard_normal()
        if not self.blinking:
            since = math.inf if self._start is None else (self._frame - self._start) * dt
            wide = mouth_open is not None and mouth_open > cfg.mouth_open_limit
            hazard = 1.0 - math.exp(-self._rate(speaking) * dt)
            if since >= cfg.min_interval_s and not wide and (self._asked or draw < hazard):
                self._start = self._frame
                lo, hi = 0.4 * cfg.duration_s, min(1.6 * cfg.duration_s, cfg.min_interval_s)
                self._duration = float(np.clip(cfg.duration_s * (1 + cfg.duration_jitter * jitter), lo, hi))
                self.starts.append(self._frame)
                self._asked = False
        closure = 0.0
        if self._start is not None:
            # sample the lid curve at the frame's centre so a 6-frame blink reaches ~1
            closure = closure_at((self._frame - self._start + 0.5) * dt, self._duration)
        self._frame += 1
        return closure
