"""Tests for trtalk.face: landmarks, PC-AVS alignment, media reading, paste-back."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_rejects_file, empty_dir, write_video

from trtalk.errors import TrtalkError
from trtalk.face import (
    CROP_SIZE,
    TEMPLATE,
    FaceMeshDetector,
    PasteBack,
    align_file,
    align_frames,
    align_image,
    apply_affine,
    clip_matrices,
    crop_matrix,
    face_mask,
    interpolate_missing,
    natural_sort_key,
    open_media,
    paste_back,
    read_frames,
    read_image,
    similarity_transform,
    three_points,
    to_tensor,
)

ASSET = Path(__file__).resolve().parent.parent / "trtalk" / "assets" / "astronaut.png"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return read_image(ASSET)


@pytest.fixture(scope="module")
def detector():
    with FaceMeshDetector(static_image_mode=True) as det:
        yield det


@pytest.fixture(scope="module")
def astronaut_points(astronaut: np.ndarray, detector: FaceMeshDetector) -> np.ndarray:
    return three_points(detector.detect(astronaut)[0])


def _is_similarity(m: np.ndarray) -> bool:
    a, b, c, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
    return bool(np.isclose(a, d, atol=1e-9) and np.isclose(b, -c, atol=1e-9) and a * d - b * c > 0)


# -- the asset and landmarks ----------------------------------------------------


def test_asset_is_512_rgb(astronaut: np.ndarray) -> None:
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8


def test_detect_astronaut(astronaut: np.ndarray, detector: FaceMeshDetector) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    assert faces[0].shape == (468, 2) and faces[0].dtype == np.float64
    faces3 = detector.detect3d(astronaut)
    assert faces3[0].shape == (468, 3)
    np.testing.assert_allclose(faces3[0][:, :2], faces[0])

    pts = three_points(faces[0])
    assert pts.shape == (3, 2)
    left_eye, right_eye, mouth = pts
    assert left_eye[0] < right_eye[0]  # image-left eye first
    assert mouth[1] > left_eye[1] + 20 and mouth[1] > right_eye[1] + 20
    assert left_eye[0] < mouth[0] < right_eye[0]
    # Her face is in the upper middle of the photo, eyes ~44 px apart.
    assert 170 < left_eye[0] < 230 and 220 < right_eye[0] < 280
    assert 80 < left_eye[1] < 130 and 120 < mouth[1] < 170
    assert 30 < right_eye[0] - left_eye[0] < 60


def test_small_face_in_wide_frame(astronaut: np.ndarray, detector: FaceMeshDetector, astronaut_points: np.ndarray) -> None:
    # mediapipe's own mesh misses a face this small relative to the frame;
    # the full-range fallback must find it, with the same landmarks.
    wide = np.zeros((512, 900, 3), np.uint8)
    wide[:, 194:706] = astronaut
    faces = detector.detect(wide)
    assert len(faces) == 1
    np.testing.assert_allclose(three_points(faces[0]) - [194, 0], astronaut_points, atol=3.0)


def test_small_face_is_accurate_from_the_first_frame(astronaut: np.ndarray, astronaut_points: np.ndarray) -> None:
    # The astronaut at 720 px in a 1280x720 frame: the face is ~10% of the
    # width. mediapipe's mesh alone finds it but ~15 px off (coarse detector
    # box), and its tracker needs a few frames to settle; the small-face
    # re-measure must make every frame right, in both modes.
    big = cv2.resize(astronaut, (720, 720), interpolation=cv2.INTER_LINEAR)
    scale = 720 / 512
    for static in (True, False):
        with FaceMeshDetector(static_image_mode=static) as det:
            for i in range(3):
                frame = np.zeros((720, 1280, 3), np.uint8)
                x0 = 280 + 10 * i
                frame[:, x0 : x0 + 720] = big
                faces = det.detect(frame)
                assert len(faces) == 1
                truth = astronaut_points * scale + [x0, 0]
                np.testing.assert_allclose(three_points(faces[0]), truth, atol=3.0)


# -- similarity ------------------------------------------------------------------


def test_similarity_recovers_known_transform() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        angle = rng.uniform(-np.pi, np.pi)
        scale = rng.uniform(0.2, 5.0)
        t = rng.uniform(-300, 300, size=2)
        truth = np.array(
            [
                [scale * np.cos(angle), -scale * np.sin(angle), t[0]],
                [scale * np.sin(angle), scale * np.cos(angle), t[1]],
            ]
        )
        src = rng.uniform(0, 512, size=(int(rng.integers(3, 8)), 2))
        np.testing.assert_allclose(similarity_transform(src, apply_affine(truth, src)), truth, atol=1e-9, rtol=0)


def test_similarity_matches_skimage_reference() -> None:
    # Reference from skimage 0.26 SimilarityTransform().estimate(src, dst).params[:2]
    # with a float64 template (computed once in a throwaway environment; skimage
    # is not a dependency). The official script's float32 template moves the
    # translation by ~3e-6 px through a float32 mean -- irrelevant for images.
    src = np.array([[203.79, 101.51], [247.59, 103.69], [223.48, 144.75]])
    expected = np.array(
        [
            [1.3070035744585085e00, 6.7173280667529270e-02, -1.8985057394289026e02],
            [-6.7173280667529270e-02, 1.3070035744585080e00, -5.8017780230155370e01],
        ]
    )
    m = similarity_transform(src, TEMPLATE)
    np.testing.assert_allclose(m, expected, atol=1e-9, rtol=0)
    assert _is_similarity(m)

    # Least squares: no nearby similarity fits better.
    def residual(mat: np.ndarray) -> float:
        return float(((apply_affine(mat, src) - TEMPLATE) ** 2).sum())

    best = residual(m)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.normal(scale=1e-3, size=2)
        tx, ty = rng.normal(scale=1e-1, size=2)
        nudged = m + np.array([[a, -b, tx], [b, a, ty]])
        assert residual(nudged) >= best - 1e-9


def test_similarity_never_reflects() -> None:
    # A mirror image is best matched by a reflection; we (like skimage) must
    # return the best proper similarity instead: here a half-turn at scale 0.5.
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dst = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m, [[-0.5, 0.0, 0.5], [0.0, -0.5, 0.5]], atol=1e-12)
    assert _is_similarity(m)
    with pytest.raises(ValueError):
        similarity_transform(np.ones((3, 2)), dst)


# -- the clip maths ------------------------------------------------------------------


def test_clip_matrices_match_official_loop() -> None:
    # Reference from the official align_68.py loop (float32 template, skimage
    # 0.26) on this track; the float32 template limits agreement to ~1e-6 px.
    src = np.array([[203.79, 101.51], [247.59, 103.69], [223.48, 144.75]])
    track = np.array([src + [i * 3.0, -i * 1.5] for i in range(5)])
    lin = np.array([1.3070035744585080e00, 6.7173280667530130e-02])
    tx = [-1.8981249119661231e02, -1.9286869183851175e02, -1.9653613260879098e02, -2.0032582140474619e02, -2.0413995980583667e02]
    ty = [-5.4176882639289431e01, -5.2447262476337151e01, -5.0371718280794418e01, -4.8226989278733591e01, -4.6068423315369131e01]
    expected = np.array([[[lin[0], lin[1], x], [-lin[1], lin[0], y]] for x, y in zip(tx, ty)])
    np.testing.assert_allclose(clip_matrices(track), expected, atol=1e-5, rtol=0)


def test_clip_matrices_smoothing_recursion() -> None:
    rng = np.random.default_rng(3)
    base = np.array([[200.0, 100.0], [250.0, 100.0], [225.0, 150.0]])
    jitter = rng.normal(scale=4.0, size=(12, 1, 2))
    track = base[None] + jitter
    mats = clip_matrices(track)
    fit = similarity_transform(track.mean(axis=0), TEMPLATE)
    # Rotation and scale are one per clip.
    np.testing.assert_allclose(mats[:, :, :2], np.broadcast_to(fit[:, :2], (12, 2, 2)), atol=1e-12)
    raw_bias = TEMPLATE[2] - apply_affine(fit, track[:, 2])
    b = raw_bias[0]
    np.testing.assert_allclose(mats[0, :, 2], fit[:, 2] + b, atol=1e-9)
    for i in range(1, 12):
        b = 0.2 * b + 0.8 * raw_bias[i]
        np.testing.assert_allclose(mats[i, :, 2], fit[:, 2] + b, atol=1e-9)
    # Frame 0's mouth lands exactly on the template mouth.
    np.testing.assert_allclose(apply_affine(mats[0], track[0, 2]), TEMPLATE[2], atol=1e-9)


def test_interpolate_missing_frames() -> None:
    face = np.array([[200.0, 100.0], [250.0, 100.0], [225.0, 150.0]])
    track = np.full((7, 3, 2), np.nan)
    track[1] = face + 10.0
    track[4] = face + 40.0
    track[5] = face + 50.0
    filled, found = interpolate_missing(track)
    assert found.tolist() == [False, True, False, False, True, True, False]
    np.testing.assert_allclose(filled - face, np.broadcast_to(np.array([10, 10, 20, 30, 40, 50, 50.0])[:, None, None], (7, 3, 2)))  # ends held
    # clip_matrices sees the same filled track.
    np.testing.assert_allclose(clip_matrices(track), clip_matrices(filled), atol=1e-12)


def test_all_missing_raises() -> None:
    with pytest.raises(TrtalkError, match="no face found in clip.mp4"):
        clip_matrices(np.full((5, 3, 2), np.nan), name="clip.mp4")


# -- single image ------------------------------------------------------------------


def test_align_single_image(astronaut: np.ndarray, detector: FaceMeshDetector) -> None:
    clip = align_file(ASSET)
    assert len(clip) == 1 and clip.crops.shape == (1, 224, 224, 3) and clip.crops.dtype == np.uint8
    assert clip.found.tolist() == [True] and clip.source_size == (512, 512) and clip.fps is None
    assert clip.matrices.shape == (1, 2, 3) and clip.crop_matrices.shape == (1, 2, 3)
    assert clip.landmarks is not None and clip.landmarks.shape == (1, 468, 3)
    assert clip.points is not None and clip.points.shape == (1, 3, 2)
    aligned = apply_affine(clip.matrices[0], clip.points[0])
    # The mouth is put on the template by construction; the eyes follow the
    # least-squares fit, shifted by the same mouth correction.
    np.testing.assert_allclose(aligned[2], TEMPLATE[2], atol=1e-9)
    fit = similarity_transform(clip.points[0], TEMPLATE)
    shift = TEMPLATE[2] - apply_affine(fit, clip.points[0, 2])
    np.testing.assert_allclose(aligned[:2], apply_affine(fit, clip.points[0, :2]) + shift, atol=1e-9)
    assert np.abs(aligned[:2] - TEMPLATE[:2]).max() < 10.0
    assert aligned[0, 0] < aligned[1, 0]

    # End to end: the face found in the crop is where crop_matrix says it is.
    in_crop = three_points(detector.detect(clip.crops[0])[0])
    np.testing.assert_allclose(in_crop, apply_affine(clip.crop_matrices[0], clip.points[0]), atol=3.0)


def test_crop_matrix_equals_two_step_crop(astronaut: np.ndarray, astronaut_points: np.ndarray) -> None:
    m = clip_matrices(astronaut_points[None])[0]
    cm = crop_matrix(m)
    # The template mouth (112, 120) in the aligned frame -> crop pixels.
    s = 224 / 192
    np.testing.assert_allclose(apply_affine(cm, astronaut_points[2]), [(112 - 16) * s + (s - 1) / 2, 120 * s + (s - 1) / 2], atol=1e-9)
    two_step = align_image(astronaut, m)
    one_warp = cv2.warpAffine(astronaut, cm, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
    # Equal up to the extra resampling of the two-step path.
    assert np.abs(two_step.astype(int) - one_warp.astype(int)).mean() < 2.0


def test_to_tensor() -> None:
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    crops[1, ..., 0] = 255
    t = to_tensor(crops)
    assert tuple(t.shape) == (2, 3, 224, 224) and str(t.dtype) == "torch.float32"
    assert float(t[0].min()) == -1.0 and float(t[1, 0].min()) == 1.0 and float(t[1, 1].max()) == -1.0
    assert tuple(to_tensor(crops[0]).shape) == (1, 3, 224, 224)


# -- clips from files --------------------------------------------------------------


def test_video_clip(tmp_path: Path, astronaut: np.ndarray, astronaut_points: np.ndarray) -> None:
    n, black = 30, {9, 10, 20}
    centre = tuple(astronaut_points.mean(axis=0))
    moves, frames = [], []
    for i in range(n):
        phase = 2 * np.pi * i / n
        move = cv2.getRotationMatrix2D(centre, 2.0 * np.sin(phase), 1.0)
        move[:, 2] += [8.0 * np.sin(phase), 5.0 * np.cos(phase)]
        moves.append(move)
        frame = cv2.warpAffine(astronaut, move, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.zeros_like(frame) if i in black else frame)
    video = tmp_path / "clip.mp4"
    # High quality so the landmark jitter in the test is the detector's, not the codec's.
    write_video(video, frames, fps=25, crf=12, preset="ultrafast")

    clip = align_file(video)
    assert len(clip) == n and clip.fps == pytest.approx(25.0)
    assert clip.source_size == (512, 512)
    assert set(np.flatnonzero(~clip.found).tolist()) == black

    # Lost frames: their points are interpolated between the neighbours'.
    assert clip.points is not None and clip.points.shape == (n, 3, 2)
    filled, _ = interpolate_missing(clip.points)
    np.testing.assert_allclose(filled[9], filled[8] + (filled[11] - filled[8]) / 3, atol=1e-9)
    np.testing.assert_allclose(filled[20], (filled[19] + filled[21]) / 2, atol=1e-9)

    # The true eye positions, followed through the synthetic motion and the
    # alignment, stay put in the crops (rotation is not undone per frame by
    # design, so allow a few px).
    eyes = np.array([apply_affine(clip.crop_matrices[i], apply_affine(moves[i], astronaut_points[:2])) for i in range(n)])
    raw = np.array([apply_affine(moves[i], astronaut_points[:2]) for i in range(n)])
    spread = np.abs(eyes - np.median(eyes, axis=0)).max()
    assert spread < 5.0, spread
    assert spread < 0.6 * np.abs(raw - np.median(raw, axis=0)).max()
    # And the crops really show the face there.
    assert clip.crops[0].mean() > 60 and clip.crops[9].max() == 0


def test_video_display_rotation_is_applied(tmp_path: Path) -> None:
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:16, :16] = 255  # marker in the stored frame's top-left corner
    video = tmp_path / "rotated.mp4"
    write_video(video, [frame] * 3, rotation=90, crf=12, preset="ultrafast")
    frames, fps = read_frames(video)
    assert fps == pytest.approx(25.0)
    assert len(frames) == 3 and frames[0].shape == (96, 64, 3)
    # A quarter turn counterclockwise takes the top-left corner to the bottom-left.
    assert frames[0][-8:, :8].mean() > 200 and frames[0][:8, :8].mean() < 50


def test_folder_of_frames_natural_order(tmp_path: Path, astronaut: np.ndarray) -> None:
    assert natural_sort_key("frame2.png") < natural_sort_key("frame10.png")
    assert natural_sort_key("F1.png") < natural_sort_key("f1a.png")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 13):
        shifted = np.roll(astronaut, 3 * i, axis=1)  # face moves right with i
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(shifted, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not a frame")
    source = open_media(folder)
    assert [p.name for p in source.files] == [f"f{i}.png" for i in range(1, 13)]
    frames, fps = read_frames(folder)
    assert fps is None and len(frames) == 12
    np.testing.assert_array_equal(frames[0], np.roll(astronaut, 3, axis=1))

    calls: list[tuple[str, int, int | None]] = []
    clip = align_file(folder, progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert len(clip) == 12 and clip.found.all() and clip.fps is None
    assert calls[0] == ("detect", 1, None) and calls[-1] == ("align", 12, 12) and len(calls) == 24
    assert clip.points is not None and clip.points.shape == (12, 3, 2)
    mouth_x = clip.points[:, 2, 0]
    assert np.all(np.diff(mouth_x) > 0), mouth_x  # frames came in name order
    np.testing.assert_allclose(np.diff(mouth_x), 3.0, atol=1.5)


# -- faces: none, several --------------------------------------------------------


def test_no_face_raises(tmp_path: Path) -> None:
    gray = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(TrtalkError, match="no face"):
        align_frames([gray])
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    with pytest.raises(TrtalkError, match="no face found in .*gray.png"):
        align_file(path)


def test_two_faces_uses_largest(astronaut: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    head = astronaut[0:300, 80:380]
    small = cv2.resize(head, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((300, 300 + small.shape[1], 3), np.uint8)
    canvas[:, :300] = head
    canvas[: small.shape[0], 300:] = small
    with caplog.at_level(logging.WARNING, logger="trtalk.face"):
        clip = align_frames([canvas, canvas])  # two frames: warned once
    warnings = [r for r in caplog.records if "faces found; using the largest" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("2 faces")
    assert clip.points is not None and (clip.points[:, :, 0] < 300).all()


# -- bad media ----------------------------------------------------------------------


def test_bad_media_raise_trtalk_errors(tmp_path: Path) -> None:
    assert_rejects_file(read_frames, tmp_path / "missing.mp4", match="does not exist")
    assert_rejects_file(read_frames, empty_dir(tmp_path / "empty"), match="contains no images")
    assert_rejects_file(read_frames, tmp_path / "bad.png", b"not a png at all")
    assert_rejects_file(read_frames, tmp_path / "bad.mp4", b"\x00" * 1000)


# -- paste-back ----------------------------------------------------------------------


def test_face_mask_shape() -> None:
    mask = face_mask(224)
    assert mask.shape == (224, 224) and mask.dtype == np.float32
    assert mask[112, 112] == 1.0 and mask[140, 112] == 1.0  # face centre and mouth
    assert mask[0, 0] == 0.0 and mask[:, 0].max() == 0.0 and mask[-1].max() == 0.0  # edges untouched
    ramp = mask[112, :112]
    # A soft edge: rising monotonically from 0 to 1 over ~24 px.
    assert np.all(np.diff(ramp) >= 0) and ramp[0] == 0.0 and ramp[-1] == 1.0
    assert 15 <= ((ramp > 0) & (ramp < 1)).sum() <= 40


def test_paste_back_round_trip(astronaut: np.ndarray) -> None:
    clip = align_file(ASSET)
    frame = astronaut.copy()
    out = paste_back(frame, clip.crops[0], clip.crop_matrices[0])
    np.testing.assert_array_equal(frame, astronaut)  # input untouched
    assert out.shape == frame.shape and out.dtype == np.uint8

    mask = cv2.warpAffine(
        face_mask(224), clip.crop_matrices[0], (512, 512), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    diff = np.abs(out.astype(int) - astronaut.astype(int))
    inside, outside = mask >= 0.999, mask == 0.0
    assert inside.sum() > 5000  # the face, not a sliver
    # Not zero: the crop was resampled twice (warp + resize) and is resampled
    # once more going back, which blurs fine detail a little.
    assert diff[inside].mean() < 6.0
    assert diff[outside].max() == 0

    with pytest.raises(ValueError, match="224x224x3"):
        paste_back(frame, np.zeros((256, 256, 3), np.uint8), clip.crop_matrices[0])

    # A white crop lands on the face only.
    white = PasteBack()(astronaut, np.full((224, 224, 3), 255, np.uint8), clip.crop_matrices[0])
    mouth = np.round(clip.points[0, 2]).astype(int)  # type: ignore[index]
    assert (white[mouth[1], mouth[0]] == 255).all()
    assert (white[outside] == astronaut[outside]).all()


# -- paste-back with the frame's landmarks: the face only, registered, colour-matched ------------


@pytest.fixture(scope="module")
def astronaut_mesh(astronaut: np.ndarray, detector: FaceMeshDetector) -> np.ndarray:
    return detector.detect(astronaut)[0]


def _smooth_pattern(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A frame of smooth colour blobs (strong gradients, no detail finer than ~3 px): a misplaced
    paste shows as a large difference, a correctly placed one only as resampling error."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.random((*shape, 3)).astype(np.float32), (0, 0), 3.0)
    x = (x - x.min()) / (x.max() - x.min())
    return np.round(255 * x).astype(np.uint8)


def test_paste_back_registers_exactly(astronaut_mesh: np.ndarray) -> None:
    """A crop cut out with crop_M and pasted back unchanged gives the frame back inside the pasted
    region (mean difference under 1 grey level, 99th percentile under 4: two bilinear resamplings
    of a pattern whose gradients reach ~20 levels per pixel; a shift of half a pixel would give
    several levels everywhere) and exactly outside it; the colour match changes nothing when the
    colours already match."""
    from trtalk.face.pasteback import PasteBack, landmark_polygon

    clip = align_file(ASSET)
    m = clip.crop_matrices[0]
    frame = _smooth_pattern((512, 512))
    crop = cv2.warpAffine(frame, m, (224, 224), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = PasteBack()(frame, crop, m, astronaut_mesh)
    face = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(face, [np.round(landmark_polygon(astronaut_mesh)).astype(np.int32)], 1)
    face = face.astype(bool)
    assert face.sum() > 5000  # the face, not a sliver
    diff = np.abs(out.astype(int) - frame.astype(int)).max(axis=2)
    assert diff[face].mean() < 1.0 and np.percentile(diff[face], 99) < 4, (diff[face].mean(),
                                                                            np.percentile(diff[face], 99))
    # For scale: the same crop pasted half a pixel off differs by several levels.
    white = PasteBack(colour_match=False)(frame, np.full_like(crop, 255), m, astronaut_mesh)
    pasted = (white == 255).all(axis=2)
    assert pasted.sum() > 0.5 * face.sum()
    shifted = m.copy()
    shifted[:, 2] += 0.5
    bad = np.abs(PasteBack()(frame, crop, shifted, astronaut_mesh).astype(int) - frame.astype(int)).max(axis=2)
    assert bad[pasted].mean() > 3 * diff[pasted].mean() + 1.0, (bad[pasted].mean(), diff[pasted].mean())


def test_landmark_mask_is_the_face_from_brow_to_chin(astronaut: np.ndarray, astronaut_mesh: np.ndarray) -> None:
    """With the frame's landmarks only the face is pasted: a white crop covers the nose, mouth
    and cheeks, and leaves the hair above the brows, the ears' side and the background exactly as
    they were (so nothing outside the face can show twice when the generated head turns)."""
    from trtalk.face.pasteback import PasteBack, landmark_polygon

    clip = align_file(ASSET)
    white = np.full((224, 224, 3), 255, np.uint8)
    out = PasteBack(colour_match=False)(astronaut, white, clip.crop_matrices[0], astronaut_mesh)
    lm = astronaut_mesh
    io = np.linalg.norm(lm[263] - lm[33])
    for idx in (1, 13, 14, 50, 280, 152 - 0):  # nose tip, lips, both cheeks
        x, y = np.round(lm[idx] if idx != 152 else lm[152] - [0, 0.25 * io]).astype(int)
        assert (out[y, x] >= 250).all(), idx
    # Above the brows (forehead top, hairline, hair) and outside the face oval: untouched.
    poly = landmark_polygon(lm)
    inside = np.zeros(astronaut.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(poly).astype(np.int32)], 1)
    grown = cv2.dilate(inside, np.ones((9, 9), np.uint8)).astype(bool)
    np.testing.assert_array_equal(out[~grown], astronaut[~grown])
    top = np.round(lm[10]).astype(int)
    assert (out[top[1], top[0] - 5:top[0] + 6] == astronaut[top[1], top[0] - 5:top[0] + 6]).all()
    # The brows themselves are in (near the soft edge: mostly).
    brow = np.round(lm[105]).astype(int)
    assert (out[brow[1], brow[0]].astype(int) - astronaut[brow[1], brow[0]] > 0.8 * (255 - astronaut[brow[1], brow[0]].astype(int))).all()


def test_colour_match_moves_the_generated_face_to_the_frames_colours(astronaut: np.ndarray,
                                                                      astronaut_mesh: np.ndarray) -> None:
    """A generated face with a colour cast (+40 red, 0.7x contrast) is pasted with the frame's
    per-channel mean and spread inside the mask; without the match the cast shows."""
    from trtalk.face.pasteback import PasteBack

    clip = align_file(ASSET)
    m = clip.crop_matrices[0]
    crop = cv2.warpAffine(astronaut, m, (224, 224), flags=cv2.INTER_LINEAR).astype(np.float32)
    cast = crop.mean(axis=(0, 1)) + 0.7 * (crop - crop.mean(axis=(0, 1)))
    cast[..., 0] += 40
    cast = np.clip(cast, 0, 255).astype(np.uint8)
    matched = PasteBack()(astronaut, cast, m, astronaut_mesh)
    plain = PasteBack(colour_match=False)(astronaut, cast, m, astronaut_mesh)
    changed = np.abs(plain.astype(int) - astronaut.astype(int)).max(axis=2) > 0
    err_matched = np.abs(matched[changed].astype(float).mean(0) - astronaut[changed].astype(float).mean(0))
    err_plain = np.abs(plain[changed].astype(float).mean(0) - astronaut[changed].astype(float).mean(0))
    assert err_plain[0] > 12 and err_matched.max() < 2, (err_plain, err_matched)
    assert abs(matched[changed].std() - astronaut[changed].std()) < 0.15 * astronaut[changed].std()
