"""Blink generator: published rates, lid curve, phrase-end boost, mouth gating, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from trtalk.errors import TrtalkError
from trtalk.motion.blink import BlinkConfig, BlinkGenerator, closure_at

FPS = 25.0


def run(gen: BlinkGenerator, n: int, **inputs) -> np.ndarray:
    return np.array([gen.step(**inputs) for _ in range(n)])


@pytest.mark.parametrize("speaking, rate", [(False, 17.0), (True, 26.0)])
def test_rate_matches_the_configured_rate(speaking: bool, rate: float) -> None:
    minutes = 20
    gen = BlinkGenerator(FPS)
    run(gen, int(FPS * 60 * minutes), speaking=speaking)
    assert len(gen.starts) / minutes == pytest.approx(rate, rel=0.12)


def test_intervals_are_irregular_and_respect_the_refractory_gap() -> None:
    gen = BlinkGenerator(FPS, BlinkConfig(seed=3))
    run(gen, int(FPS * 600))
    gaps = np.diff(gen.starts) / FPS
    assert gaps.min() >= 0.5
    assert gaps.std() / gaps.mean() > 0.5  # not periodic: a jittered renewal process


def test_lid_curve_closes_fast_and_reopens_slowly() -> None:
    d = 0.3
    ts = np.linspace(0, d, 301)
    c = np.array([closure_at(t, d) for t in ts])
    assert c[0] == 0 and c[-1] == 0 and c.max() == pytest.approx(1.0)
    assert ts[c.argmax()] == pytest.approx(d / 3, abs=0.002)
    assert closure_at(-0.1, d) == 0 and closure_at(d + 0.1, d) == 0
    gen = BlinkGenerator(FPS)
    gen.blink_now()
    frames = run(gen, 10)
    assert frames[0] > 0 and frames.max() > 0.9 and frames[-1] == 0
    assert ((frames >= 0) & (frames <= 1)).all()


def test_same_seed_same_blinks_other_seed_other_blinks() -> None:
    inputs = [dict(speaking=bool(i // 50 % 2), mouth_open=0.3) for i in range(3000)]
    a, b, c = BlinkGenerator(FPS), BlinkGenerator(FPS), BlinkGenerator(FPS, BlinkConfig(seed=1))
    ta = [a.step(**x) for x in inputs]
    assert ta == [b.step(**x) for x in inputs]
    assert ta != [c.step(**x) for x in inputs]
    a.reset()
    assert ta == [a.step(**x) for x in inputs]


def test_no_blink_starts_while_the_mouth_is_wide_open() -> None:
    gen = BlinkGenerator(FPS)
    opening = [0.9 if i % 40 < 20 else 0.1 for i in range(25 * 300)]
    for m in opening:
        gen.step(speaking=True, mouth_open=m)
    assert len(gen.starts) > 50
    assert all(opening[s] <= 0.6 for s in gen.starts)
    gen.reset()
    gen.blink_now()
    assert gen.step(mouth_open=0.95) == 0  # a requested blink waits for the mouth too
    assert gen.step(mouth_open=0.1) > 0


def test_more_blinks_just_after_a_phrase_ends() -> None:
    """Phrases of 2 s speech and 2 s pause: blinks start more often in the first 0.6 s of a pause
    than later in it."""
    gen = BlinkGenerator(FPS, BlinkConfig(seed=7))
    period = int(4 * FPS)
    run_len = period * 600
    for i in range(run_len):
        gen.step(speaking=(i % period) < period // 2)
    phase = np.array(gen.starts) % period - period // 2  # frames into the pause
    early = ((phase >= 0) & (phase < 0.6 * FPS)).sum() / 0.6
    late = ((phase >= 0.6 * FPS) & (phase < 2 * FPS)).sum() / 1.4
    assert early > 2 * late


def test_bad_config_is_refused() -> None:
    with pytest.raises(TrtalkError, match="rate_per_min"):
        BlinkConfig(rate_per_min=-1)
    with pytest.raises(TrtalkError, match="duration_s"):
        BlinkConfig(duration_s=float("nan"))
    with pytest.raises(TrtalkError, match="min_interval_s"):
        BlinkConfig(duration_s=0.6, min_interval_s=0.5)
    with pytest.raises(TrtalkError, match="fps"):
        BlinkGenerator(0)
