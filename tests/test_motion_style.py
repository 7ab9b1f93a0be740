"""Head motion styles (`trtalk.motion.style`, `trtalk.motion.fit`, ``--motion-style``).

A fit on a synthetic clip whose motion a known style made recovers that style; blinks at known
times give back their rate and duration; a bad style file is a one-line error (at load, on the
command line, and as a server upload); the live path with a style stays causal (the same frames
whether the audio arrives whole or in 20 ms blocks) and the style really changes the motion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_speech_wave, motion_trace
from trtalk.errors import TrtalkError
from trtalk.motion.fit import Track, fit_blinks, fit_motion, motion_stats, simulate, speech_level, distance
from trtalk.motion.head import HeadMotion, MotionConfig, wave_windows
from trtalk.motion.style import MAX_BYTES, MotionStyle, dumps_style, generic_style, load_style, parse_style, save_style

FPS = 25.0
SR = 16000


def _known_style() -> MotionStyle:
    base = MotionStyle()
    amp = np.array([1.8, 0.6, 1.3])
    return base.with_(name="known", sway=tuple(np.array(base.sway) * amp), posture=tuple(np.array(base.posture) * amp),
                      sway_tau=tuple(np.array(base.sway_tau) * np.array([0.6, 1.5, 1.0])))


@pytest.mark.slow  # about 15 s on an idle core (a minute at load 15)
def test_fit_recovers_a_known_style() -> None:
    """Motion made by a known style (amplitudes x1.8 / 0.6 / 1.3, sway time constants x0.6 / 1.5 /
    1) on 40 s of speech: the fit, started from the hand-set style, finds the amplitude factors
    (within 25 %), orders the time constants (yaw's faster than pitch's; their exact values trade
    off with the gestures' speed), and its own motion's spread and median speed match the clip's
    within 20 %."""
    windows = wave_windows(make_speech_wave(40.0, seed=3), FPS)
    known = _known_style()
    angles = simulate(known, windows, FPS, seed=77)  # a seed the fit does not simulate with
    fitted, report = fit_motion([Track(angles, windows)], FPS, MotionStyle(), rest=False)
    base = MotionStyle()
    amp = np.array(fitted.sway) / np.array(base.sway)
    assert np.allclose(amp, [1.8, 0.6, 1.3], rtol=0.25), amp
    assert np.allclose(np.array(fitted.posture) / np.array(base.posture), amp), fitted  # scaled together
    tau = np.array(fitted.sway_tau) / np.array(base.sway_tau)
    assert tau[0] < tau[1], tau
    assert report["distance"] < 0.2, report
    sim, target = report["simulated"], report["target"]
    for key in ("std", "speed_p50"):
        assert np.allclose(sim[key], target[key], rtol=0.2), (key, sim[key], target[key])
    # the hand-set style is clearly farther from the clip than the fit
    target = motion_stats(angles, speech_level(windows), FPS)
    hand = motion_stats(simulate(base, windows, FPS, seed=5), speech_level(windows), FPS)
    mine = motion_stats(simulate(fitted, windows, FPS, seed=5), speech_level(windows), FPS)
    assert distance(mine, target) < 0.5 * distance(hand, target)


def test_fit_shrinks_towards_the_prior_on_short_clips() -> None:
    """``prior_seconds``: 4 s of video weigh 4 / (4 + 10) against the prior's statistics, so the
    shrunk style's motion (simulated with seeds the fits did not use) is closer to the prior's
    than the unshrunk one's is."""
    from trtalk.motion.fit import simulated_stats

    windows = wave_windows(make_speech_wave(4.0, seed=4), FPS)
    angles = simulate(_known_style(), windows, FPS, seed=9)
    track = [Track(angles, windows)]
    few = (1000, 1001, 1002, 1003, 1004, 1005)  # fewer seeds per round than the default 15 (CI time)
    free, _ = fit_motion(track, FPS, MotionStyle(), rest=False, rounds=6, seeds=few)
    shrunk, rep = fit_motion(track, FPS, MotionStyle(), rest=False, rounds=6, prior_seconds=10.0, seeds=few)
    assert rep["weight"] == pytest.approx(4 / 14, abs=0.01)
    seeds = range(8)
    prior = simulated_stats(MotionStyle(), track, FPS, seeds)
    assert distance(simulated_stats(shrunk, track, FPS, seeds), prior) < distance(simulated_stats(free, track, FPS, seeds), prior)


def test_fit_simulates_fresh_seeds_each_round(monkeypatch) -> None:
    """The fit does not fit its simulation seeds' noise: every round simulates with seeds no other
    round used (enough of them that a round covers `SIM_SECONDS`), and the reported distance is
    measured with seeds that no round used."""
    import trtalk.motion.fit as F

    used: list[tuple[int, ...]] = []
    real = F.simulated_stats

    def spy(style, tracks, fps, seeds=F.FIT_SEEDS):
        used.append(tuple(seeds))
        return real(style, tracks, fps, seeds)

    monkeypatch.setattr(F, "simulated_stats", spy)
    windows = wave_windows(make_speech_wave(3.0, seed=6), FPS)
    angles = simulate(MotionStyle(), windows, FPS, seed=11)
    _, rep = F.fit_motion([Track(angles, windows)], FPS, MotionStyle(), rest=False, rounds=4)
    assert len(used) == 5 and rep["seeds_per_round"] == len(used[0]) == 20  # 60 s / 3 s
    seen = [set(u) for u in used]
    for i in range(len(seen)):
        for j in range(i):
            assert not seen[i] & seen[j], (i, j)
    assert len(rep["rounds"]) == 4


def test_fit_keeps_amplitudes_under_the_angle_bounds() -> None:
    """A clip that moves more than the soft bounds allow (roll made with 3x the hand-set amplitude,
    pushed against the 8 degree bound): the fitted roll amplitudes stay at most `AMP_CAP`, scaled
    down together (their ratios kept), instead of growing into a range where the angle only
    saturates."""
    from trtalk.motion.fit import AMP_CAP

    base = MotionStyle()
    wild = base.with_(sway=(base.sway[0], base.sway[1], 25.0), posture=(base.posture[0], base.posture[1], 30.0))
    windows = wave_windows(make_speech_wave(6.0, seed=8), FPS)
    angles = simulate(wild, windows, FPS, seed=5) * np.array([1.0, 1.0, 2.0])  # larger than the bound gives
    fitted, _ = fit_motion([Track(angles, windows)], FPS, base, rest=False, rounds=4)
    for k in ("sway", "posture", "drift"):
        assert np.all(np.array(getattr(fitted, k)) <= AMP_CAP + 1e-9), (k, getattr(fitted, k))
    assert max(fitted.sway[2], fitted.posture[2]) == pytest.approx(AMP_CAP[2])
    assert fitted.posture[2] / fitted.sway[2] == pytest.approx(base.posture[2] / base.sway[2], rel=0.35)


def test_shipped_generic_style_is_inside_the_angle_bounds() -> None:
    """The shipped generic style came from the capped fit (no amplitude beyond the angle bounds)."""
    from trtalk.motion.fit import AMP_CAP

    g = generic_style()
    assert g.name == "generic" and g.seconds > 60
    for k in ("sway", "posture", "drift"):
        assert np.all(np.array(getattr(g, k)) <= AMP_CAP + 1e-6), (k, getattr(g, k))


def test_fit_blinks_recovers_rate_and_duration() -> None:
    """Eye openness with 20 blinks of 6 frames in 60 s (20 / min, 0.24 s): the fit counts them
    all and times them (no prior weight), and its style's blink generator blinks at that rate."""
    rng = np.random.default_rng(0)
    n = int(60 * FPS)
    eye = 0.3 + 0.01 * rng.standard_normal(n)
    starts = np.sort(rng.choice(np.arange(10, n - 10, 60), size=20, replace=False))
    for s in starts:
        eye[s:s + 3] = 0.05  # under 70 % for 3 frames: half of a 6-frame blink
    fields, rep = fit_blinks(eye, np.ones(n, bool), FPS, MotionStyle(), prior_seconds=0.0)
    assert rep["blinks"] == 20
    assert fields["blink_speech_rate_per_min"] == pytest.approx(20.0, rel=0.01)
    assert fields["blink_duration_s"] == pytest.approx((2 * 3 / FPS * 20 + 0.25 * 2) / 22, rel=0.01)


def test_style_file_round_trip(tmp_path: Path) -> None:
    style = _known_style().with_(blink_rate_per_min=9.0)
    path = save_style(style, tmp_path / "me.json")
    assert load_style(path) == style
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind
    assert path.stat().st_size < 2048
    assert generic_style().name == "generic" and generic_style().seconds > 0  # the shipped one is fitted


@pytest.mark.parametrize("text, why", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"format": "other", "version": 1}', "not a motion style"),
    ('{"format": "trtalk-motion-style", "version": 2}', "version 2 is not supported"),
    ('{"format": "trtalk-motion-style", "version": 1, "sway": [1, 2]}', "sway must be a list of 3"),
    ('{"format": "trtalk-motion-style", "version": 1, "sway": [1, NaN, 2]}', "sway must be finite"),
    ('{"format": "trtalk-motion-style", "version": 1, "sway": [1, 1e308, 2]}', "sway must be finite"),
    ('{"format": "trtalk-motion-style", "version": 1, "nod_rate": "x"}', "nod_rate must be finite"),
    ('{"format": "trtalk-motion-style", "version": 1, "nod_rate": true}', "nod_rate must be finite"),
    ('{"format": "trtalk-motion-style", "version": 1, "blink_duration_s": -1}', "blink_duration_s must be"),
    ('{"format": "trtalk-motion-style", "version": 1, "evil": 1}', "unknown field 'evil'"),
    ('{"format": "trtalk-motion-style", "version": 1, "name": 5}', "name must be a string"),
])
def test_bad_style_file_is_one_line_error(tmp_path: Path, text: str, why: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(TrtalkError) as err:
        load_style(bad)
    msg = str(err.value)
    assert why in msg and "\n" not in msg and str(bad) in msg, msg


def test_large_or_missing_style_file(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_BYTES + 1))
    with pytest.raises(TrtalkError, match="too large"):
        load_style(big)
    with pytest.raises(TrtalkError, match="no such file"):
        load_style(tmp_path / "none.json")
    with pytest.raises(TrtalkError, match="too large"):
        parse_style(b"{" * (MAX_BYTES + 1))


def test_bad_style_on_the_command_line(tmp_path: Path, capsys) -> None:
    """``--motion-style`` with a bad file: exit 2 and one line, before any model is loaded."""
    from trtalk.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "trtalk-motion-style", "version": 1, "sway": [1, 2, "x"]}')
    rc = main(["render", "--face", str(tmp_path / "nothing.png"), "--audio", str(tmp_path / "none.wav"),
               "--pose", "auto", "--motion-style", str(bad), "-o", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "motion style" in err and "sway" in err, err


def test_live_path_with_a_style_is_causal_in_20ms_blocks() -> None:
    """A style on the live path: the same angles and eye closures whether the audio arrives as one
    block or in 20 ms blocks; and the style is what moves the head (another style, other motion;
    the style's blink rate reaches the blinks)."""
    wave = make_speech_wave(4.0, seed=21)
    style = _known_style().with_(blink_speech_rate_per_min=60.0, blink_rate_per_min=60.0)
    whole = motion_trace(wave, len(wave), style)
    blocks = motion_trace(wave, 320, style)
    assert len(whole) == len(blocks) == 100
    assert whole == blocks
    generic = motion_trace(wave, 320, None)
    a, g = np.array(blocks)[:, 1:4], np.array(generic)[:, 1:4]
    assert np.abs(a - g).max() > 0.5
    blinks = lambda tr: int((np.diff((np.array(tr)[:, 4] > 0.5).astype(int)) == 1).sum())  # noqa: E731
    assert blinks(blocks) > blinks(generic)


def test_style_changes_amplitude_and_tempo_not_the_cost() -> None:
    """Twice the amplitudes: about twice the angle spread; the same number of random draws per
    frame (the cost and the seeded noise stream do not depend on the style)."""
    windows = wave_windows(make_speech_wave(20.0, seed=5), FPS)
    base = MotionStyle()
    big = base.with_(sway=tuple(2 * np.array(base.sway)), posture=tuple(2 * np.array(base.posture)),
                     gesture=tuple(2 * np.array(base.gesture)))
    a = HeadMotion(FPS, MotionConfig(max_yaw=90, max_pitch=90, max_roll=90, max_speed=10000), style=base).run(windows)
    m = HeadMotion(FPS, MotionConfig(max_yaw=90, max_pitch=90, max_roll=90, max_speed=10000), style=big)
    b = m.run(windows)
    assert np.allclose(b.std(axis=0) / a.std(axis=0), 2.0, rtol=0.05)
    h = HeadMotion(FPS, style=base)
    h.run(windows)
    assert m._rng.bit_generator.state == h._rng.bit_generator.state


def test_server_style_upload(tmp_path: Path) -> None:
    """``Server.add_style``: a valid file is kept (by content), a bad one is a one-line error, and
    at most ``max_uploads`` are kept."""
    from trtalk.serve.app import Server, ServerLimits

    class _Fam:
        name = "stub"

    srv = Server.__new__(Server)
    srv.limits = ServerLimits(max_uploads=2)
    srv.styles = {"default": generic_style()}
    srv.style_uploads = []
    key, st = srv.add_style(dumps_style(_known_style()).encode())
    assert st == _known_style() and srv.styles[key] == st
    assert srv.add_style(dumps_style(_known_style()).encode())[0] == key and len(srv.style_uploads) == 1
    for rate in (5.0, 6.0):
        srv.add_style(dumps_style(_known_style().with_(blink_rate_per_min=rate)).encode())
    assert key not in srv.styles and len(srv.style_uploads) == 2 and "default" in srv.styles
    with pytest.raises(TrtalkError) as err:
        srv.add_style(json.dumps({"format": "trtalk-motion-style", "version": 1, "drift_tau": 0}).encode())
    assert "drift_tau" in str(err.value) and "\n" not in str(err.value)


def test_agent_face_takes_a_motion_style(tmp_path: Path) -> None:
    """The agent integrations' `AgentFace(motion_style=...)`: a good file reaches the session's
    pipeline options, a bad one is a one-line error before anything starts."""
    from trtalk.integrations.face import AgentFace

    photo = Path(__file__).resolve().parent.parent / "trtalk" / "assets" / "astronaut.png"
    good = save_style(_known_style(), tmp_path / "me.json")
    face = AgentFace(photo, motion_style=good)
    assert face.cfg.motion.style == str(good)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "trtalk-motion-style", "version": 1, "drift_tau": -1}')
    with pytest.raises(TrtalkError) as err:
        AgentFace(photo, motion_style=bad)
    assert "drift_tau" in str(err.value) and "\n" not in str(err.value)
