"""The warp avatar's mouth: audio -> opening (closures, proportion), the rig and teeth, the model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtalk.errors import TrtalkError
from trtalk.warp import mesh as M

SR = 16000
FPS = 25.0


@pytest.fixture(scope="module")
def renderer(face_image_path: Path):
    from trtalk.face import read_image
    from trtalk.warp.render import WarpRenderer

    return WarpRenderer(read_image(face_image_path), name=str(face_image_path))


def _vowel(seconds: float, amp: float, f0: float = 120.0) -> np.ndarray:
    """A steady voiced sound: harmonics of f0 with a formant-like boost."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k * (1.5 if 5 <= k <= 7 else 1.0) for k in range(1, 30))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def _frames(wave: np.ndarray) -> int:
    return int(len(wave) / SR * FPS)


def test_silence_closes_the_lips() -> None:
    from trtalk.warp.drive import mouth_params

    assert not mouth_params(_silence(1.0), 25).any()
    wave = np.concatenate([_silence(0.4), _vowel(0.6, 0.3), _silence(0.6)])
    mp = mouth_params(wave, _frames(wave))
    assert mp[12:18, 0].min() > 0.3  # inside the vowel
    assert not mp[-8:].any()  # the pause after it: shut (not merely nearly shut)


def test_stop_gap_and_burst_close_the_lips() -> None:
    """/ama/-like: vowel, 100 ms near-silent hold, a noise burst, vowel. The lips shut during the
    hold (a frame at exactly 0) and open again on both sides."""
    from trtalk.warp.drive import mouth_params

    rng = np.random.default_rng(0)
    hold = (0.003 * rng.standard_normal(int(0.1 * SR))).astype(np.float32)
    burst = (0.2 * rng.standard_normal(int(0.02 * SR))).astype(np.float32)
    wave = np.concatenate([_silence(0.3), _vowel(0.5, 0.3), hold, burst, _vowel(0.5, 0.3), _silence(0.5)])
    op = mouth_params(wave, _frames(wave))[:, 0]
    hold_frames = op[int(0.75 * FPS):int(0.95 * FPS)]
    assert hold_frames.min() == 0.0, op
    assert op[int(0.5 * FPS):int(0.75 * FPS)].max() > 0.5 and op[int(1.05 * FPS):int(1.35 * FPS)].max() > 0.5


def test_louder_opens_more_without_saturating() -> None:
    from trtalk.warp.drive import mouth_params

    wave = np.concatenate([_silence(0.3), _vowel(1.0, 0.03), _vowel(1.0, 0.3), _silence(0.3)])
    op = mouth_params(wave, _frames(wave))[:, 0]
    quiet, loud = op[int(0.6 * FPS):int(1.2 * FPS)], op[int(1.6 * FPS):int(2.2 * FPS)]
    assert quiet.min() > 0.05 and loud.min() > quiet.max() + 0.2
    assert loud.max() < 0.98  # not pinned at fully open


def test_shipped_model_loads_and_round_trips(tmp_path: Path) -> None:
    from trtalk.warp.drive import MOUTH_MODEL_PATH, load_mouth_model, save_mouth_model

    assert MOUTH_MODEL_PATH.stat().st_size < 16_000
    m = load_mouth_model(MOUTH_MODEL_PATH)
    assert m.weight.size == (m.rows[1] - m.rows[0]) * m.bands
    assert np.all(np.diff(m.score_points) > 0) and m.open_points.min() == 0.0 and m.open_points.max() <= 1.0
    p = save_mouth_model(m, tmp_path / "m.safetensors")
    m2 = load_mouth_model(p)
    w = np.random.default_rng(0).random((20, 80))
    assert abs(m.opening(w) - m2.opening(w)) < 1e-5


def test_bad_model_files_are_user_errors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from trtalk.warp.drive import load_mouth_model

    with pytest.raises(TrtalkError, match="not found"):
        load_mouth_model(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(TrtalkError, match="mouth model"):
        load_mouth_model(junk)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": np.zeros(7, np.float32), "bias": np.zeros(1, np.float32), "bands": np.array([10]),
               "rows": np.array([8, 20]), "score_points": np.arange(3, dtype=np.float32),
               "open_points": np.zeros(3, np.float32)}, str(wrong))
    with pytest.raises(TrtalkError, match="inconsistent"):
        load_mouth_model(wrong)


def test_model_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtalk.warp import drive

    m = drive.load_mouth_model(drive.MOUTH_MODEL_PATH)
    opened = drive.MouthModel(m.weight, m.bias, m.bands, m.rows, m.score_points, np.ones_like(m.open_points))
    p = drive.save_mouth_model(opened, tmp_path / "open.safetensors")
    monkeypatch.setenv(drive.MOUTH_MODEL_ENV, str(p))
    wave = np.concatenate([_silence(0.3), _vowel(1.0, 0.3)])
    assert drive.mouth_params(wave, _frames(wave))[-5:, 0].min() > 0.99


def test_open_zero_closes_the_photos_parted_lips(renderer) -> None:
    """The astronaut smiles with parted lips: open 0 brings the inner lips together; rest_open is
    the photo itself; opening further drops the jaw and chin."""
    a = renderer.avatar
    assert a.rest_gap > 0 and 0 < a.rest_open() < 1
    eye = np.eye(3)
    shut = a.deform(0.0, 0.0, eye)
    gap = np.linalg.norm(shut[list(M.INNER_UPPER_LIP), :2] - shut[list(M.INNER_LOWER_LIP), :2], axis=1)
    assert gap.max() < 1e-6
    np.testing.assert_allclose(a.deform(a.rest_open(), 0.0, eye), a.rest, atol=1e-9)
    wide = a.deform(1.0, 0.0, eye)
    mid_gap = np.linalg.norm(wide[M.LOWER_LIP_MID, :2] - wide[M.UPPER_LIP_MID, :2])
    assert abs(mid_gap - a.open_gap) < 0.05 * a.open_gap
    chin = 152
    assert (wide[chin, :2] - a.rest[chin, :2]) @ a._v > 0.5 * (a.open_gap - a.rest_gap)


def test_teeth_rows_follow_the_jaws_and_taper(renderer) -> None:
    """Drawn rows (a photo without teeth showing; the astronaut's own teeth switched off): upper
    teeth under the upper lip, lower teeth on the lower lip, inside the cavity; the lower row moves
    down with the chin while the upper stays with the upper jaw; nothing at the corners."""
    import copy

    a = copy.copy(renderer.avatar)
    a.photo_teeth = False
    eye = np.eye(3)

    def rows(open_: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = a.deform(open_, 0.0, eye)
        cav, teeth = a._mouth_masks(pts[:, :2], open_)
        return pts, cav, teeth

    pts, cav, teeth = rows(1.0)
    assert cav.max() > 0.9 and teeth.max() > 0.5
    assert np.all(teeth <= cav + 1e-6 + 0.05)  # teeth only inside the mouth (blur margin)
    ys, xs = np.nonzero(teeth > 0.3)
    mid_y = (pts[M.UPPER_LIP_MID, 1] + pts[M.LOWER_LIP_MID, 1]) / 2
    upper, lower = ys < mid_y, ys >= mid_y
    assert upper.sum() > 10 and lower.sum() > 5
    # Dark cavity between the rows in the middle of the mouth.
    cx = int(round((pts[M.UPPER_LIP_MID, 0] + pts[M.LOWER_LIP_MID, 0]) / 2))
    col_t, col_c = teeth[:, cx], cav[:, cx]
    between = (col_c > 0.9) & (col_t < 0.2)
    assert between.any()
    # Corners: the rows taper and darken; within 10 % of the mouth width of each inner corner they
    # are at most 60 % as bright as in the middle, and next to the corner (3 px) under 45 %.
    yy, xx = np.mgrid[0:teeth.shape[0], 0:teeth.shape[1]]
    width = np.linalg.norm(pts[M.INNER_UPPER_LIP[-1], :2] - pts[M.INNER_UPPER_LIP[0], :2])
    for k in (M.INNER_UPPER_LIP[0], M.INNER_UPPER_LIP[-1]):
        d2 = (xx - pts[k, 0]) ** 2 + (yy - pts[k, 1]) ** 2
        assert teeth[d2 < (0.1 * width) ** 2].max() < 0.6 * teeth.max()
        assert teeth[d2 < 9].max() < 0.45 * teeth.max()
    # The lower row follows the chin; the upper row's bottom edge stays with the upper jaw.
    pts2, _, teeth2 = rows(0.7)
    ys2, _ = np.nonzero(teeth2 > 0.3)
    lower_bottom_1 = ys[lower].max()
    lower_bottom_2 = ys2[ys2 >= (pts2[M.UPPER_LIP_MID, 1] + pts2[M.LOWER_LIP_MID, 1]) / 2].max()
    drop = pts[M.LOWER_LIP_MID, 1] - pts2[M.LOWER_LIP_MID, 1]
    assert drop > 2 and abs((lower_bottom_1 - lower_bottom_2) - drop) <= 2
    upper_bottom_1 = ys[upper].max()
    upper_bottom_2 = ys2[ys2 < (pts2[M.UPPER_LIP_MID, 1] + pts2[M.LOWER_LIP_MID, 1]) / 2].max()
    assert abs(upper_bottom_1 - upper_bottom_2) <= 1.5


def test_closed_mouth_has_no_shading(renderer) -> None:
    a = renderer.avatar
    pts = a.deform(0.0, 0.0, np.eye(3))
    cav, teeth = a._mouth_masks(pts[:, :2], 0.0)
    assert not cav.any() and not teeth.any()


def test_photo_teeth_are_kept_and_move_with_the_jaws(renderer, face_image_path: Path) -> None:
    """The astronaut smiles with teeth: the open mouth shows them (no drawn rows, the photo's pale
    pixels under the upper lip), darkens between the rows, and the upper band stays with the upper
    lip while the lower lip drops. The same photo with the inside of its lips painted lip-red draws
    rows instead."""
    from trtalk.face import read_image
    from trtalk.warp.avatar import AvatarConfig, WarpAvatar
    from trtalk.warp.render import WarpRenderConfig, WarpRenderer

    # The avatar's frame is the whole photo; at 672 px its face is as large as in the 256 px face
    # crop these levels were measured on (interocular 81 px; 62 at the photo's own 512, where the
    # fixed 5 px blur of the cavity's edge reaches the middle of a 15 px gap).
    renderer = WarpRenderer(renderer.avatar.photo, WarpRenderConfig(avatar=AvatarConfig(size=672)),
                            mesh=renderer.avatar.mesh)
    a = renderer.avatar
    assert a.photo_teeth
    eye = np.eye(3)
    pts = a.deform(1.0, 0.0, eye)
    cav, teeth = a._mouth_masks(pts[:, :2], 1.0)
    assert not teeth.any() and cav.max() > 0.9
    frame = renderer.frame(1.0, 0.0, eye)
    cx = int(round((pts[M.UPPER_LIP_MID, 0] + pts[M.LOWER_LIP_MID, 0]) / 2))
    y_up, y_lo = pts[M.UPPER_LIP_MID, 1], pts[M.LOWER_LIP_MID, 1]
    assert y_lo - y_up > 2 * a.rest_gap
    col = frame[:, cx].astype(np.float32).mean(axis=1)
    band = col[int(np.ceil(y_up)) + 1:int(y_up + 0.5 * a.rest_gap) + 1]
    middle = col[int(y_up + 0.5 * (y_lo - y_up))]
    # The photo's own teeth: the upper half of its gap at the same column.
    y0 = a.mesh[M.UPPER_LIP_MID, 1]
    own = a.crop[int(np.ceil(y0)) + 1:int(y0 + 0.5 * a.rest_gap) + 1, cx].astype(np.float32).mean()
    assert band.size and own > 140 and abs(band.mean() - own) < 40  # the photo's pale teeth
    assert middle < 60 and middle < band.mean() - 80  # dark between the rows
    # The uncovered band hangs from the upper lip: at a smaller opening it starts at the same place.
    pts2 = a.deform(0.8, 0.0, eye)
    cav2, _ = a._mouth_masks(pts2[:, :2], 0.8)
    top1 = np.nonzero(cav[:, cx] > 0.5)[0].min()
    top2 = np.nonzero(cav2[:, cx] > 0.5)[0].min()
    assert abs((top1 - y_up) - (top2 - pts2[M.UPPER_LIP_MID, 1])) <= 1.5

    photo = read_image(face_image_path).copy()
    inner = np.concatenate([a.mesh[list(M.INNER_UPPER_LIP), :2], a.mesh[list(M.INNER_LOWER_LIP), :2][::-1]])
    inv = np.linalg.inv(np.vstack([a.crop_m, [0, 0, 1]]))[:2]
    poly = inner @ inv[:, :2].T + inv[:, 2]
    import cv2

    cv2.fillPoly(photo, [np.round(poly).astype(np.int32)], (150, 60, 60))
    red = WarpAvatar(photo, renderer.avatar.photo_mesh if hasattr(renderer.avatar, "photo_mesh") else _photo_mesh(a))
    assert red.rest_gap > 0 and not red.photo_teeth


def _photo_mesh(a) -> np.ndarray:
    """The avatar's mesh back in photo pixels (its crop transform inverted)."""
    inv = np.linalg.inv(np.vstack([a.crop_m, [0, 0, 1]]))[:2]
    mesh = a.mesh.copy()
    mesh[:, :2] = a.mesh[:, :2] @ inv[:, :2].T + inv[:, 2]
    mesh[:, 2] = a.mesh[:, 2] / a.crop_m[0, 0]
    return mesh


def _train_script():
    import importlib.util
    import sys

    if "train_mouth_model" in sys.modules:
        return sys.modules["train_mouth_model"]
    path = Path(__file__).resolve().parent.parent / "scripts" / "train_mouth_model.py"
    spec = importlib.util.spec_from_file_location("train_mouth_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_mouth_model"] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def test_training_clips_are_resampled_to_25_fps_and_parsed(tmp_path: Path) -> None:
    """scripts/train_mouth_model.py: a 30 fps lip track lands on the 25 fps grid by linear
    interpolation (NaN where a neighbour has no face); 25 fps tracks pass unchanged; clip specs
    carry a panel crop and a speaker group."""
    T = _train_script()
    ramp = np.arange(30, dtype=np.float64)  # value = source frame index at 30 fps
    grid = T.to_frame_grid(ramp, 30.0, 26)
    np.testing.assert_allclose(grid[:25], np.arange(25) * 30 / 25)  # 25 fps frame k = source frame 1.2 k
    assert np.isnan(grid[25])  # 1 s: past the last source frame
    holed = ramp.copy()
    holed[6] = np.nan  # 25 fps frame 5 is source frame 6 exactly; frames 4 and 6 (4.8, 7.2) avoid it
    g = T.to_frame_grid(holed, 30.0, 10)
    assert np.isnan(g[5]) and np.isfinite(np.delete(g, 5)).all()
    same = T.to_frame_grid(np.array([0.1, np.nan, 0.3]), 25.0, 3)
    assert same[0] == 0.1 and np.isnan(same[1]) and same[2] == 0.3
    clip = tmp_path / "panels.mp4"
    clip.write_bytes(b"")
    (spec,) = T.parse_specs(f"{clip}#crop=896,0,224,224#group=spk")
    assert spec.crop == (896, 0, 224, 224) and spec.group == "spk" and "crop896x0x224x224" in spec.key
    with pytest.raises(SystemExit):
        T.parse_specs(f"{clip}#size=3")
