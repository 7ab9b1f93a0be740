"""Speech-driven head motion and blinks (`trtalk.motion`, `--pose auto`).

The properties that must hold whatever the tuning: more motion in speech than in silence, bounded
angles and angular speeds, no lookahead (frame t's angles do not change when the audio after t's
window changes), an angle -> pose code map that predicts held-out renders, and a stream with no
pose source whose head visibly moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_speech_wave, motion_trace, write_wav
from trtalk.motion.head import HeadMotion, MotionConfig, wave_windows

FPS = 25.0
SR = 16000


def _speech_silence_speech() -> tuple[np.ndarray, slice, slice]:
    """3 s speech, 3 s silence, 3 s speech; (wave, speech frames, silence frames) judged from the
    middle of each part (the generator's envelopes need a moment to settle)."""
    a, b = make_speech_wave(3.0, seed=1), make_speech_wave(3.0, seed=2)
    wave = np.concatenate([a, np.zeros(3 * SR, np.float32), b])
    return wave, slice(int(6.5 * FPS), int(9 * FPS)), slice(int(4 * FPS), int(6 * FPS))


def _speed(angles: np.ndarray) -> np.ndarray:
    """Angular speed per frame (deg/s, norm over the three axes)."""
    return np.linalg.norm(np.diff(angles, axis=0), axis=1) * FPS


def test_more_motion_in_speech_than_in_silence() -> None:
    wave, speech, silence = _speech_silence_speech()
    for seed in range(3):
        ang = HeadMotion(FPS, MotionConfig(seed=seed)).run(wave_windows(wave, FPS))
        sp = _speed(ang)
        assert sp[speech].mean() > 2.0 * sp[silence].mean(), (seed, sp[speech].mean(), sp[silence].mean())
        assert ang[speech].std(axis=0).sum() > 1.5 * ang[silence].std(axis=0).sum()
        assert ang[speech].std(axis=0)[0] > 0.8  # the head really moves in speech (yaw, degrees)
    # Pure silence: a calm but living head (slow sway), far below speech.
    calm = HeadMotion(FPS).run(wave_windows(np.zeros(6 * SR, np.float32), FPS))
    assert 0.0 < _speed(calm).mean() < 0.5 * _speed(HeadMotion(FPS).run(wave_windows(wave, FPS)))[speech].mean()


def test_angles_and_speeds_are_bounded() -> None:
    """Loud speech, noise and nonsense mel windows, exaggerated amplitude and liveliness: the
    angles stay within the limits and no axis moves faster than ``max_speed``."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (300, 1, 80, 20)).astype(np.float32)
    blocks = np.repeat(rng.uniform(0, 1, (30, 1, 80, 1)), 20, axis=3).repeat(10, axis=0).astype(np.float32)
    speech = wave_windows(make_speech_wave(6.0, seed=7) * 2.0, FPS)
    for cfg in (MotionConfig(), MotionConfig(amplitude=5.0, liveliness=4.0, seed=3),
                MotionConfig(amplitude=10.0, liveliness=10.0, max_yaw=5.0, max_speed=20.0)):
        for windows in (noise, blocks, speech):
            ang = HeadMotion(FPS, cfg).run(windows)
            assert np.isfinite(ang).all()
            assert (np.abs(ang) <= cfg.bounds + 1e-9).all()
            assert np.abs(np.diff(ang, axis=0)).max() * FPS <= cfg.max_speed + 1e-6
    # The amplitude really scales (so the bound above is not trivially met by a still head).
    big = HeadMotion(FPS, MotionConfig(amplitude=5.0, liveliness=4.0, seed=3)).run(speech)
    assert np.abs(big[:, 0]).max() > 0.7 * MotionConfig().max_yaw


def test_same_seed_same_motion_other_seed_other_motion() -> None:
    w = wave_windows(make_speech_wave(3.0), FPS)
    a = HeadMotion(FPS, MotionConfig(seed=5)).run(w)
    assert np.array_equal(a, HeadMotion(FPS, MotionConfig(seed=5)).run(w))
    assert np.abs(a - HeadMotion(FPS, MotionConfig(seed=6)).run(w)).max() > 0.5


def test_no_lookahead_through_the_pipeline() -> None:
    """Frames 0..t keep their angles and eye closure when every sample after frame t's mel window
    changes; later frames do change (so the check can fail)."""
    from trtalk.audio import MEL_WINDOW_FRAMES, window_start

    a = make_speech_wave(4.0, seed=11)
    t = 40
    cut = (window_start(t, FPS) + MEL_WINDOW_FRAMES) * 160  # samples frame t's window needs
    b = a.copy()
    b[cut:] = make_speech_wave(4.0, seed=12)[cut:] * 1.5
    ta, tb = motion_trace(a), motion_trace(b)
    assert len(ta) == len(tb) == 100
    assert ta[: t + 1] == tb[: t + 1]
    later = np.abs(np.array(ta[t + 1:])[:, 1:4] - np.array(tb[t + 1:])[:, 1:4]).max()
    assert later > 0.1


def test_blinks_on_the_frame_clock() -> None:
    """12 s of speech: the eye-closure stream blinks at a natural rate (the generator's 26/min in
    speech is ~5 in 12 s), each blink shuts the eyes (closure near 1) and lasts 4-10 frames."""
    eye = np.array([row[4] for row in motion_trace(make_speech_wave(12.0, seed=4))])
    closed = eye > 0.05
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert 2 <= len(starts) <= 12, len(starts)
    for s in starts:
        run = closed[s:]
        if run.all():
            continue  # cut off by the end of the audio
        n = int(np.argmin(run))
        assert 3 <= n <= 12 and eye[s:s + n].max() > 0.85, (s, eye[s:s + n])


# ---------------------------------------------------------------- angle -> pose code map


@pytest.fixture(scope="module")
def pcavs_small():
    from trtalk.runtime.options import ModelOptions

    return ModelOptions(model="pcavs", model_config="small").open(FPS)


SMALL_GRID = dict(yaw=(-12.0, 0.0, 12.0), pitch=(-8.0, 0.0, 8.0), roll=(-6.0, 6.0), held_out=8)


def test_angle_map_predicts_held_out_renders(pcavs_small, face_image_path: Path, tmp_path: Path) -> None:
    """PC-AVS small, random weights, a 3 x 3 x 2 grid: the thin-plate map predicts the pose codes
    of 8 random held-out angles' renders far better than their mean does; it is cached by photo
    and weights, and the cached map is the same map."""
    from trtalk.face import read_image
    from trtalk.motion.posemap import GridSpec, build_angle_map
    from trtalk.families.base import PoseInput

    fam = pcavs_small
    img = read_image(face_image_path)
    avatar = fam.make_avatar(img, "astronaut")
    grid = GridSpec(**SMALL_GRID)

    def encode(crops, meshes):
        return fam.pose(fam.new_state(), [PoseInput(c, m) for c, m in zip(crops, meshes)]).numpy()

    amap = build_angle_map(img, encode, mesh=avatar.state["mesh"], family="pcavs", weights_id="w1",
                           grid=grid, cache_dir=tmp_path)
    info = amap.info
    # Measured: held-out RMS 0.49 of the codes' spread (2.5e-4 absolute), against 0.90 for the
    # codes' mean (the default 5 x 5 x 3 grid: 0.28 vs 0.86); with the small config's small pose
    # encoder (issue 23) 0.556 vs 0.903 (seeded, deterministic); since the warp renders take a
    # smoothed silhouette depth on the side a turn exposes (issue 20: the grid's turned renders
    # changed at the cheek edge) 0.636 vs 0.958. Random weights respond to pixels more than to
    # pose, so these are loose bounds: 0.7 of the mean's error, and 0.7 absolute (10 % over 0.636).
    assert info["heldout_rel"] < 0.7 * info["heldout_rel_mean"], info
    assert info["heldout_rel"] < 0.7, info
    # Angle 0 is the photo itself: the map gives (nearly) the avatar's own pose code.
    ref = avatar.ref_pose.numpy()
    err0 = np.abs(amap(np.zeros((1, 3)))[0] - ref)
    assert err0.max() < 0.5 * np.abs(amap(grid.train_angles()) - ref).max()
    # Cache: the same photo and weights load the same map without encoding anything.
    again = build_angle_map(img, lambda c, m: pytest.fail("encoded again"), mesh=avatar.state["mesh"],
                            family="pcavs", weights_id="w1", grid=grid, cache_dir=tmp_path)
    assert np.array_equal(again.coef, amap.coef)
    assert len(list((tmp_path / "posemaps").glob("*.npz"))) == 1
    calls = []
    build_angle_map(img, lambda c, m: calls.append(len(c)) or encode(c, m), mesh=avatar.state["mesh"],
                    family="pcavs", weights_id="w2", grid=grid, cache_dir=tmp_path)
    assert calls == [26]  # other weights: fitted again
    # A damaged cache entry (a cut zip) is fitted again, not an error.
    (cached,) = [p for p in (tmp_path / "posemaps").glob("*.npz") if p.stat().st_mtime == min(
        q.stat().st_mtime for q in (tmp_path / "posemaps").glob("*.npz"))]
    cached.write_bytes(cached.read_bytes()[:100])
    calls.clear()
    again = build_angle_map(img, lambda c, m: calls.append(len(c)) or encode(c, m), mesh=avatar.state["mesh"],
                            family="pcavs", weights_id="w1", grid=grid, cache_dir=tmp_path)
    assert calls == [26] and np.allclose(again.coef, amap.coef)


def test_angle_map_fit_recovers_a_smooth_function() -> None:
    """The fit itself, without rendering: a smooth 6-d function of the angles (as a PD-FGC pose
    code would be) is recovered on held-out angles to within 5 % of its spread, better than by the cubic ridge."""
    from trtalk.motion.posemap import GridSpec, fit_angle_map, heldout_error

    g = GridSpec()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 6))

    def f(a: np.ndarray) -> np.ndarray:
        x = np.radians(a)
        return np.concatenate([np.sin(x @ w[:, :3]), np.cos(2 * x @ w[:, 3:])], axis=1)

    tr, te = g.train_angles(), g.test_angles()
    y = f(tr)
    errs = {}
    for kind in ("tps", "poly"):
        m = fit_angle_map(tr, y, g.low, g.high, kind)
        errs[kind] = heldout_error(m, te, f(te), y.std(axis=0))["heldout_rel"]
    # Measured: spline 0.034, cubic ridge 0.067.
    assert errs["tps"] < 0.05 and errs["tps"] < errs["poly"], errs
    out_of_box = m(np.array([[90.0, -90.0, 45.0]]))
    assert np.array_equal(out_of_box, m(np.array([[g.yaw[-1], g.pitch[0], g.roll[-1]]])))  # clipped


# ---------------------------------------------------------------- end to end


def test_stream_without_pose_source_moves_the_head(
        face_image_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`trtalk stream --avatar a.png --audio speech.wav --record out.mp4 --fast`, no pose source:
    the warp avatar's head turns (landmarks of the recording, relative to frame 0) and the
    recording equals `trtalk render --pose auto` frame for frame."""
    import trtalk.media.mp4
    import trtalk.runtime.render
    from trtalk.cli import main
    from trtalk.face import FaceMeshDetector
    from trtalk.warp.drive import measure_pose

    frames: dict[str, list[np.ndarray]] = {}

    class Capture:
        accepts_audio = False
        stop_requested = False

        def __init__(self, path, *a, **kw) -> None:
            self.key = str(path)
            frames[self.key] = []

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        @property
        def frames_written(self) -> int:
            return len(frames[self.key])

        def write(self, frame, pts_s=None) -> None:
            frames[self.key].append(frame)

        def close(self) -> None:
            pass

    monkeypatch.setattr(trtalk.media.mp4, "Mp4Sink", Capture)
    monkeypatch.setattr(trtalk.runtime.render, "Mp4Sink", Capture)
    wav = write_wav(tmp_path / "speech.wav", make_speech_wave(4.0, seed=3))
    s_out, r_out = tmp_path / "out.mp4", tmp_path / "render.mp4"
    assert main(["stream", "--avatar", str(face_image_path), "--audio", str(wav), "--record", str(s_out),
                 "--fast"]) == 0
    assert main(["render", "--face", str(face_image_path), "--audio", str(wav), "--pose", "auto",
                 "-o", str(r_out), "--model", "warp"]) == 0
    streamed, rendered = frames[str(s_out)], frames[str(r_out)]
    assert len(streamed) == len(rendered) == 100
    assert all(np.array_equal(a, b) for a, b in zip(streamed, rendered))
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        meshes = [det.detect3d(f)[0] for f in streamed[::4]]
    poses = np.array([measure_pose(meshes[0], m) for m in meshes])
    assert np.abs(poses[:, :2]).max() > 2.0, poses  # degrees of yaw or pitch, seen by the detector
