"""PD-FGC with generated motion: speech-conditioned blinks of `--eyes auto` (the motion path's
decisions, mapped into the eye code) and `--pose auto` through the 6-d pose code map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_speech_wave, write_wav
from trtalk.motion.head import MotionConfig, SpeechFeatures, wave_windows
from trtalk.families.controls import FactorSpec
from trtalk.families.base import Avatar
from trtalk.families.pdfgc.runtime import BLINK_DIMS, GAZE_DIMS, PDFGCFamily, blink_eye_code

FPS = 25.0
SR = 16000


def test_eye_code_is_the_open_code_at_closure_0_and_the_closed_code_at_1() -> None:
    g = torch.Generator().manual_seed(0)
    open_, closed = torch.randn(5, 6, generator=g), torch.randn(6, generator=g)
    c = torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0])
    eye = blink_eye_code(open_, closed, c)
    b, gz = list(BLINK_DIMS), list(GAZE_DIMS)
    assert torch.equal(eye[0], open_[0])
    assert torch.equal(eye[1, b], closed[b]) and torch.equal(eye[4, b], closed[b])
    assert torch.allclose(eye[2, b], (open_[2, b] + closed[b]) / 2)
    assert torch.allclose(eye[3, b], 0.75 * open_[3, b] + 0.25 * closed[b])
    assert torch.equal(eye[:, gz], open_[:, gz])  # gaze is never the lids'
    assert torch.equal(blink_eye_code(open_[0], closed, 1.0)[b], closed[b])


def _family(model, **kw) -> tuple[PDFGCFamily, Avatar, Any]:
    """A family with --eyes auto, a stream's state and an avatar made of codes (no photo, no networks)."""
    fam = PDFGCFamily(model, random_weights=True, eyes=FactorSpec("auto"), **kw)
    g = torch.Generator().manual_seed(1)
    open_ = torch.randn(6, generator=g)
    state = {"eyes": open_, "eyes_closed": open_ + torch.tensor([2.0, -2.0, 5.0, 5.0, 2.0, -2.0]),
             "emotion": torch.zeros(30)}
    img = np.zeros((8, 8, 3), np.uint8)
    return fam, Avatar(img, img, np.eye(2, 3), torch.zeros(6), state), fam.new_state()


def _closures(fam: PDFGCFamily, st: Any, avatar: Avatar, windows: np.ndarray, frames: list[int],
              batch: int = 8) -> np.ndarray:
    """Eye closure of ``frames`` as the family draws them (read back from blink dim 0)."""
    open_, closed = avatar.state["eyes"], avatar.state["eyes_closed"]
    out = []
    for s in range(0, len(frames), batch):
        ks = frames[s:s + batch]
        fam.listen(st, windows[ks], ks)
        eyes = fam.factor_codes(st, avatar, ks)["eyes"]
        out.append(((eyes[:, 0] - open_[0]) / (closed[0] - open_[0])).numpy())
    return np.concatenate(out)


def _phrases(n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``n`` phrases of speech (1.5-2.5 s) with pauses (0.8-1.6 s); (wave, [(start, end) s])."""
    rng = np.random.default_rng(seed)
    parts, spans, t = [np.zeros(int(0.5 * SR), np.float32)], [], 0.5
    for i in range(n):
        d, p = rng.uniform(1.5, 2.5), rng.uniform(0.8, 1.6)
        speech = make_speech_wave(d, seed=seed * 1000 + i)
        speech[: int(0.15 * SR)] = 0  # make_speech_wave's own lead-in silence, made exact
        parts += [speech, np.zeros(int(p * SR), np.float32)]
        spans.append((t + 0.15, t + d))
        t += d + p
    return np.concatenate(parts), spans


def test_eyes_auto_blinks_after_phrase_ends_and_never_in_a_wide_mouth(pdfgc_model) -> None:
    """3.4 min of phrases and pauses through the family's own listening: blinks start more often
    just after a phrase ends than during speech, none while the mouth is wide open."""
    wave, spans = _phrases(70)
    windows = wave_windows(wave, FPS)
    frames = list(range(len(windows)))
    fam, avatar, st = _family(pdfgc_model)
    closure = _closures(fam, st, avatar, windows, frames)
    starts = np.array(st.blinker.starts)
    assert closure.max() > 0.9 and closure.min() == 0.0
    assert np.array_equal(np.flatnonzero((closure[1:] > 0) & (closure[:-1] == 0)) + 1, starts)

    t = np.arange(len(frames)) / FPS
    during = np.zeros(len(frames), bool)
    after = np.zeros(len(frames), bool)
    for a, b in spans:
        during |= (t >= a + 0.3) & (t < b - 0.1)
        after |= (t >= b) & (t < b + 0.8)
    rate_during = np.isin(starts, np.flatnonzero(during)).sum() / (during.sum() / FPS / 60)
    rate_after = np.isin(starts, np.flatnonzero(after)).sum() / (after.sum() / FPS / 60)
    print(f"blink starts per minute: during speech {rate_during:.1f}, in the 0.8 s after a phrase "
          f"{rate_after:.1f}, overall {len(starts) / (len(frames) / FPS / 60):.1f}")
    assert rate_after > 1.5 * rate_during
    assert 10 < rate_during < 45

    speech = SpeechFeatures(FPS, MotionConfig())
    mouth = np.array([speech.step(w).mouth_open for w in windows])
    limit = st.blinker.cfg.mouth_open_limit
    assert (mouth > limit).sum() > 100  # wide-open mouths happen in this audio ...
    assert (mouth[starts] <= limit).all()  # ... and no blink starts in one


def test_eyes_auto_makes_the_motion_paths_blink_decisions(pdfgc_model) -> None:
    """The same speech through `--pose auto`'s motion path and through the PD-FGC family (frames
    45-47 dropped, as live): the same eye closure on every frame, with the same --blink-* and
    --motion-* settings."""
    from trtalk.motion.blink import BlinkConfig
    from trtalk.runtime.motion_path import MotionPose

    class Angles:  # the motion path's family stand-in: no pose encoding
        name = "stub"

        def motion_codes(self, avatar, angles, eye_closure=None):
            return angles

    blink, motion = BlinkConfig(seed=5, speech_rate_per_min=40.0), MotionConfig(seed=2)
    windows = wave_windows(make_speech_wave(16.0, seed=8), FPS)
    frames = [k for k in range(len(windows)) if not 45 <= k < 48]
    fam, avatar, st = _family(pdfgc_model)
    fam.configure_motion(st, motion, blink)
    got = _closures(fam, st, avatar, windows, frames, batch=4)
    path = MotionPose(Angles(), avatar, FPS, motion, blink, keep_trace=True)
    for s in range(0, len(frames), 4):
        ks = frames[s:s + 4]
        path.codes(ks, windows[ks])
    want = np.array([row[4] for row in path.trace])
    assert len(st.blinker.starts) >= 4
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_render_pose_auto_eyes_auto(face_image_path: Path, speech_wave: np.ndarray, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`trtalk render --model pdfgc --pose auto --eyes auto` (seeded small weights) end to end: the
    angle -> 6-d pose code map is fitted through the motion encoder and cached under the PD-FGC
    weights' key; a second render takes it from the cache."""
    import av

    from trtalk.cli import main
    from trtalk.motion.posemap import GridSpec
    from trtalk.families.base import ModelFamily

    monkeypatch.setenv("TRTALK_CACHE_DIR", str(tmp_path / "cache"))
    # a 2 x 2 x 2 grid and 2 held-out angles: 10 motion encodings instead of 99
    monkeypatch.setattr(ModelFamily, "motion_grid", GridSpec(yaw=(-10.0, 10.0), pitch=(-6.0, 6.0),
                                                             roll=(-5.0, 5.0), held_out=2))
    audio = write_wav(tmp_path / "s.wav", speech_wave[: int(0.36 * SR)])
    args = ["render", "--model", "pdfgc", "--model-config", "small", "--face", str(face_image_path),
            "--audio", str(audio), "--pose", "auto", "--eyes", "auto", "--batch", "4"]
    assert main(args + ["-o", str(tmp_path / "a.mp4")]) == 0, capsys.readouterr().err
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    maps = sorted((tmp_path / "cache" / "posemaps").glob("*.npz"))
    assert [m.name.split("-")[0] for m in maps] == ["pdfgc"]
    stamp = maps[0].stat().st_mtime_ns
    assert main(args + ["-o", str(tmp_path / "b.mp4")]) == 0
    assert sorted((tmp_path / "cache" / "posemaps").glob("*.npz")) == maps
    assert maps[0].stat().st_mtime_ns == stamp  # read, not refitted


def test_pdfgc_weights_key_the_angle_map(pdfgc_folder) -> None:
    """The map's cache key: the checkpoint's content for a folder, the seed and config for random
    weights, never PC-AVS's key for the same seed."""
    from trtalk.runtime.options import ModelOptions

    def key(**kw) -> str | None:
        opts = ModelOptions(**kw)
        fam = opts.open(FPS)
        return fam.weights_id()

    small0 = key(model="pdfgc", model_config="small")
    assert small0 == key(model="pdfgc", model_config="small")
    assert small0 != key(model="pdfgc", model_config="small", seed=1)
    folder = key(checkpoint=pdfgc_folder)
    assert folder is not None and len(folder) == 64 and folder != small0


def test_generated_motion_blinks_unless_the_eyes_source_was_chosen(pdfgc_model) -> None:
    """With --pose auto and no --eyes, the avatar's eyes blink with the speech (eyes auto); a
    chosen source (--eyes avatar) is kept, and a stream with a pose source changes nothing."""
    from trtalk.motion.blink import BlinkConfig

    fam, avatar, implied = _family(pdfgc_model)
    implied.specs["eyes"], implied.eyes_given = FactorSpec("avatar"), False
    fam.configure_motion(implied, MotionConfig(), BlinkConfig(), None)  # a pose source drives the head
    assert implied.specs["eyes"].kind == "avatar"
    fam.configure_motion(implied, MotionConfig(), BlinkConfig(), avatar)
    assert implied.specs["eyes"].kind == "auto"
    windows = wave_windows(make_speech_wave(12.0, seed=3), FPS)
    assert _closures(fam, implied, avatar, windows, list(range(len(windows)))).max() > 0.9
    chosen_fam = PDFGCFamily(pdfgc_model, random_weights=True, eyes=FactorSpec("avatar"))
    chosen = chosen_fam.new_state()
    chosen_fam.configure_motion(chosen, MotionConfig(), BlinkConfig(), avatar)
    assert chosen.specs["eyes"].kind == "avatar" and chosen.eyes_given
