"""The built-in warp avatar and ``trtalk demo``.

Behaviour is measured the way a viewer would see it: the rendered frames go
back through mediapipe's face mesh (the same detector, but run on *our
output*), and the lip gap / head angles it finds are compared with the
driving audio envelope / pose video.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from trtalk.audio import load_audio
from trtalk.errors import TrtalkError
from trtalk.media.sinks import FrameSink
from trtalk.warp import mesh as M

FPS = 25.0


def _lip_gaps(frames: list[np.ndarray]) -> np.ndarray:
    """Inner-lip gap (mid upper to mid lower lip) per frame, in interocular distances."""
    from trtalk.face import FaceMeshDetector

    gaps = []
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        for f in frames:
            faces = det.detect(f)
            assert faces, "the rendered face was not found by the landmark detector"
            lm = faces[0]
            io = np.linalg.norm(lm[M.EYE_OUTER_RIGHT] - lm[M.EYE_OUTER_LEFT])
            gaps.append(np.linalg.norm(lm[M.LOWER_LIP_MID] - lm[M.UPPER_LIP_MID]) / io)
    return np.array(gaps)


def _poses(frames: list[np.ndarray]) -> np.ndarray:
    """(yaw, pitch, roll) per frame relative to the first frame, degrees, shape (N, 3)."""
    from trtalk.face import FaceMeshDetector
    from trtalk.warp.drive import measure_pose

    out = []
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        meshes = [det.detect3d(f)[0] for f in frames]
    for m in meshes:
        out.append(measure_pose(meshes[0], m))
    return np.array(out)


def _envelope(wave: np.ndarray, n: int, half_s: float = 0.04) -> np.ndarray:
    """RMS of the wave in a +-half_s window around each video frame's time."""
    sr = 16000
    return np.array([
        np.sqrt(np.mean(np.square(wave[max(0, int((i / FPS - half_s) * sr)):max(1, int((i / FPS + half_s) * sr))])))
        for i in range(n)
    ])


@pytest.fixture(scope="module")
def renderer(face_image_path: Path):
    from trtalk.face import read_image
    from trtalk.warp.render import WarpRenderer

    return WarpRenderer(read_image(face_image_path), name=str(face_image_path))


# ---------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtalk.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo.mp4"
    assert main(["demo", "-o", str(out)]) == 0
    return out


def test_demo_writes_playable_mp4_with_audio(demo_mp4: Path) -> None:
    from trtalk.media.mp4 import available_video_encoder

    encoder = av.codec.Codec(available_video_encoder(), "w").name
    with av.open(str(demo_mp4)) as c:
        kinds = {s.type: s.codec_context.name for s in c.streams}
        # the writer's encoder, as the decoder names its format (libx264 and libopenh264 -> h264)
        assert kinds.get("video") == {"libx264": "h264", "libopenh264": "h264"}.get(encoder, encoder)
        assert kinds.get("audio") == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        n = len(frames)
    assert frames[0].shape == (512, 512, 3)  # the photo's own frame
    speech = load_audio(Path(__file__).parent.parent / "trtalk" / "assets" / "demo_speech.wav")
    assert abs(n - len(speech) / 16000 * FPS) <= 1


def test_demo_mouth_follows_speech(demo_mp4: Path) -> None:
    """The lip gap seen by mediapipe on the output tracks the speech envelope.

    Threshold: with ~116 frames, |r| > 0.18 is already significant at p < 0.05;
    we measure r ~= 0.48 (the mouth model's opening against linear RMS, read
    by mediapipe on the whole 512 px photo) and ask for 0.4. In silence (envelope < 1% of its peak over +-120 ms) the
    lips are closed: the gap is under 0.08 interocular distances, and speech
    opens it at least 0.07 beyond the closed mouth. The demo's frame is the whole
    photo (512 px, the face ~120 px across), where mediapipe reads the same lips
    a little differently than in a 256 px face crop: closed lips 0.041-0.060
    (0.033 in the crop), the photo's own parted lips (the astronaut smiles)
    0.111, fully open readings saturate near 0.13 (0.16 in the crop). Since the generic motion
    style (issue 25) moves the head more (pitch especially), the closed lips of the pauses read
    0.053-0.072 (the mouth's target is exactly closed there: the pause gate); 0.08 keeps a margin
    under the photo's own parted lips (0.111), which a mouth left open in a pause would show.
    """
    from trtalk.media.read import iter_frames

    frames = list(iter_frames(demo_mp4))
    gaps = _lip_gaps(frames)
    speech = load_audio(Path(__file__).parent.parent / "trtalk" / "assets" / "demo_speech.wav")
    env = _envelope(speech, len(frames))
    r = float(np.corrcoef(gaps, env)[0, 1])
    logging.getLogger(__name__).info("lip gap vs envelope r = %.3f", r)
    # 0.48 measured on the whole-photo frame (the face ~120 px; the 256 px face crop read higher).
    assert r > 0.4, f"lip gap correlates with the speech envelope only at r={r:.2f}"
    silent = _envelope(speech, len(frames), half_s=0.12) < 0.01 * env.max()
    assert silent.sum() >= 5, "the demo speech should contain pauses"
    assert np.all(gaps[silent] < 0.08), gaps[silent]
    assert gaps.max() > float(np.median(gaps[silent])) + 0.07, "the mouth never visibly opens"


# ---------------------------------------------------------------- head pose


class _Frames(FrameSink):
    """Sink that keeps the frames."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    @property
    def frames_written(self) -> int:
        return len(self.frames)

    def write(self, frame: np.ndarray, pts_s: float | None = None) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


def _warp_frames(face: Path, wave: np.ndarray, pose: Path | None = None) -> tuple[list[np.ndarray], list]:
    """The warp avatar through the pipeline (as `trtalk render --model warp`): frames, mouth codes."""
    from trtalk.runtime.clock import VirtualClock
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pose_path import clip_pose_source
    from trtalk.runtime.sources import AudioFileSource
    from trtalk.runtime.stream import StreamConfig, StreamPipeline

    family = WarpFamily()
    mouths: list = []
    inner = family.mouth
    family.mouth = lambda st, mel, frames: mouths.append(inner(st, mel, frames)) or mouths[-1]
    sink = _Frames()
    src = clip_pose_source(pose) if pose is not None else None
    StreamPipeline(StreamConfig(face=face, batch=8), family, AudioFileSource(wave=wave), src, [sink],
                   VirtualClock()).run()
    return sink.frames, mouths


def test_head_follows_pose_video_roll(pose_video_path: Path, face_image_path: Path) -> None:
    """The fixture video rotates the face in-plane by 8 sin(pi t) degrees: output roll must follow."""
    from trtalk.media.read import iter_frames

    silence = np.zeros(int(2.0 * 16000), np.float32)
    out, _ = _warp_frames(face_image_path, silence, pose_video_path)
    src = list(iter_frames(pose_video_path))[: len(out)]
    roll_out, roll_src = _poses(out)[:, 2], _poses(src)[:, 2]
    r = float(np.corrcoef(roll_out, roll_src)[0, 1])
    assert r > 0.9, f"output roll correlates with the pose video's at r={r:.2f}"
    # Same amplitude within 30% (the tracker smooths a little, nothing clamps +-8 deg).
    assert 0.7 < np.ptp(roll_out) / np.ptp(roll_src) < 1.3


def test_head_follows_pose_video_yaw(renderer, tmp_path: Path, face_image_path: Path) -> None:
    """A pose video that turns the head (yaw +-10 deg, rendered by the avatar itself) is followed."""
    from trtalk.media.mp4 import Mp4Sink

    n = 40
    yaw = 10.0 * np.sin(2 * np.pi * np.arange(n) / FPS / 1.6)
    pose_path = tmp_path / "yaw.mp4"
    with Mp4Sink(pose_path, fps=FPS) as sink:
        for y in yaw:
            sink.write(renderer.frame(0.0, 0.0, M.euler_to_matrix(float(y), 0.0, 0.0)))
    silence = np.zeros(int(n / FPS * 16000), np.float32)
    out, _ = _warp_frames(face_image_path, silence, pose_path)
    measured = _poses(out)[:, 0]
    r = float(np.corrcoef(measured, yaw[: len(measured)])[0, 1])
    assert r > 0.8, f"output yaw correlates with the driving yaw at r={r:.2f}"


# ---------------------------------------------------------------- engine path


def test_onnx_runtime_matches_torch(tmp_path: Path, renderer) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    from trtalk.warp.net import WarpNet, example_inputs, export_onnx

    path = export_onnx(tmp_path / "warp.onnx", 256)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {17}
    assert "GridSample" in {n.op_type for n in model.graph.node}
    net = WarpNet().eval()
    # Random inputs, and a real frame's inputs (open mouth, turned head): the whole photo frame as
    # the source, the face's region as the grid.
    a = renderer.avatar
    w = a.warp_inputs(a.deform(0.8, 0.4, M.euler_to_matrix(8, 4, -5)), 0.8)
    src = torch.from_numpy(a.crop.transpose(2, 0, 1).copy()).float()[None] / 255
    real = (src, torch.from_numpy(w.grid)[None], torch.from_numpy(w.cavity)[None, None],
            torch.from_numpy(w.teeth)[None, None])
    real_path = export_onnx(tmp_path / "warp_real.onnx", a.crop.shape[:2], w.grid.shape[:2])
    for inputs, p in ((example_inputs(256), path), (real, real_path)):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = net(*inputs).numpy()
        (got,) = sess.run(None, {k: v.numpy() for k, v in zip(("source", "grid", "cavity", "teeth"), inputs)})
        assert np.abs(got - ref).max() < 1e-4


def test_rest_pose_reproduces_the_crop(renderer) -> None:
    """The photo's own mouth (``Avatar.rest_open``: the astronaut's parted lips), no rotation: the
    warp is the identity (bit-exact crop)."""
    out = renderer.frame(renderer.avatar.rest_open(), 0.0, np.eye(3))
    assert np.array_equal(out, renderer.avatar.crop)


# ---------------------------------------------------------------- bad input


def test_silent_audio_keeps_mouth_closed(face_image_path: Path, pose_video_path: Path) -> None:
    from trtalk.warp.drive import mouth_params

    silence = np.zeros(16000, np.float32)
    assert not mouth_params(silence, 25).any()
    frames, mouths = _warp_frames(face_image_path, silence)
    assert len(frames) == 25 and sum(len(m) for m in mouths) == 25
    assert not np.concatenate([m.numpy() for m in mouths]).any()


def test_mouth_params_track_envelope(speech_wave: np.ndarray) -> None:
    from trtalk.warp.drive import mouth_params

    n = int(len(speech_wave) / 16000 * FPS)
    mp = mouth_params(speech_wave, n)
    env = _envelope(speech_wave, n)
    assert float(np.corrcoef(mp[:, 0], env)[0, 1]) > 0.6
    assert mp.min() >= 0 and mp.max() <= 1
    # Closed in the gaps: once the audio has been silent for 100 ms (+-100 ms window) the
    # release (0.55 of the way shut per 40 ms frame) has let the mouth fall nearly shut.
    silent = _envelope(speech_wave, n, half_s=0.1) == 0
    assert silent.sum() >= 5
    assert np.all(mp[silent, 0] < 0.15), mp[silent, 0]


def test_no_face_is_a_user_error(tmp_path: Path) -> None:
    import cv2

    from trtalk.cli import main

    blank = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(blank), (120 + 10 * rng.standard_normal((256, 256, 3))).clip(0, 255).astype(np.uint8))
    assert main(["demo", "--face", str(blank), "-o", str(tmp_path / "x.mp4")]) == 2
    assert not (tmp_path / "x.mp4").exists()


def test_tiny_face_errors_and_small_face_warns(renderer, caplog: pytest.LogCaptureFixture) -> None:
    from trtalk.warp.avatar import WarpAvatar

    a = renderer.avatar
    photo = a.photo
    # The photo's own mesh, shrunk about its centre to ~30 px and ~80 px across.
    mesh = (a.mesh - np.array([*a.crop_m[:, 2], 0.0])) / a.crop_m[0, 0]
    centre = mesh.mean(axis=0)
    extent = float(np.ptp(mesh[:, :2], axis=0).max())
    with pytest.raises(TrtalkError, match="px"):
        WarpAvatar(photo, centre + (mesh - centre) * 30 / extent)
    with caplog.at_level(logging.WARNING, logger="trtalk.warp.avatar"):
        WarpAvatar(photo, centre + (mesh - centre) * 80 / extent)
    assert "small" in caplog.text


def test_turned_photo_warns(renderer, caplog: pytest.LogCaptureFixture) -> None:
    from trtalk.warp.avatar import WarpAvatar

    a = renderer.avatar
    mesh = (a.mesh - np.array([*a.crop_m[:, 2], 0.0])) / a.crop_m[0, 0]
    centre = mesh.mean(axis=0)
    turned = centre + (mesh - centre) @ M.euler_to_matrix(40.0, 0.0, 0.0).T
    with caplog.at_level(logging.WARNING, logger="trtalk.warp.avatar"):
        WarpAvatar(a.photo, turned)
    assert "turned" in caplog.text


def test_pipeline_mouth_equals_offline_mouth_params(face_image_path: Path, speech_wave: np.ndarray) -> None:
    """The warp family reads its mouth from each frame's PC-AVS mel window in the pipeline; that
    equals the whole-file `mouth_params` except in the last frames, where the window pads silence."""
    from trtalk.warp.drive import mouth_params

    frames, mouths = _warp_frames(face_image_path, speech_wave)
    live = np.concatenate([m.numpy() for m in mouths])
    offline = mouth_params(speech_wave, len(frames))
    assert live.shape == offline.shape == (75, 2)
    np.testing.assert_allclose(live[:-3], offline[:-3], atol=1e-5)
    assert live[:, 0].max() > 0.3  # the mouth does open


# ---------------------------------------------------------------- eyelids


def _box(points: np.ndarray, margin: float) -> tuple[slice, slice]:
    lo = np.floor(points.min(axis=0) - margin).astype(int)
    hi = np.ceil(points.max(axis=0) + margin).astype(int)
    return slice(max(lo[1], 0), hi[1]), slice(max(lo[0], 0), hi[0])


def test_eye_closure_shuts_the_eyes_and_leaves_the_mouth(renderer) -> None:
    """Closure 0 is today's frame bit for bit; closure 1 covers the eyeballs with lid skin (the
    landmark detector, run on our output, finds the lid gap mostly gone) and leaves the mouth
    region's pixels exactly as they were."""
    from trtalk.face import FaceMeshDetector

    a = renderer.avatar
    rot = M.euler_to_matrix(6.0, -3.0, 2.0)
    base = renderer.frame(0.4, 0.2, rot)
    assert np.array_equal(renderer.frame(0.4, 0.2, rot, eye_closure=0.0), base)
    assert np.array_equal(renderer.frame(a.rest_open(), 0.0, np.eye(3), eye_closure=0.0), a.crop)
    shut = renderer.frame(0.4, 0.2, rot, eye_closure=1.0)
    mesh = a.mesh[:, :2]
    mouth = _box(mesh[list(M.OUTER_UPPER_LIP + M.OUTER_LOWER_LIP)], 0.15 * a.interocular)
    assert np.array_equal(shut[mouth], base[mouth])
    for lids in (M.EYE_UPPER_LIDS, M.EYE_LOWER_LIDS):
        for contour in lids:
            eye = _box(mesh[list(contour)], 2.0)
            assert np.abs(shut[eye].astype(int) - base[eye]).mean() > 8.0

    def lid_gap(frame: np.ndarray) -> float:
        with FaceMeshDetector(static_image_mode=True, max_num_faces=1) as det:
            lm = det.detect(frame)[0]
        io = np.linalg.norm(lm[M.EYE_OUTER_RIGHT] - lm[M.EYE_OUTER_LEFT])
        return float(np.mean([np.linalg.norm(lm[u] - lm[lo]) for up, low in zip(M.EYE_UPPER_LIDS, M.EYE_LOWER_LIDS)
                              for u, lo in zip(up[2:-2], low[2:-2])]) / io)

    half = renderer.frame(0.4, 0.2, rot, eye_closure=0.5)
    g0, g5, g1 = lid_gap(base), lid_gap(half), lid_gap(shut)
    # mediapipe's 468-point mesh never closes its lids fully on a shut eye: 0.091 -> 0.052 in a
    # 256 px face crop, 0.077 -> 0.054 in the photo's own 512 px frame (the avatar's frame now).
    assert g1 < 0.75 * g0 and g1 < g5 < g0, (g0, g5, g1)


# ---------------------------------------------------------------- registration: the photo's own frame


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_own_pose_closed_mouth_gives_the_photo_back(renderer, face_image_path: Path) -> None:
    """The output is the photo's own frame (no crop, no paste): at the photo's own pose with a
    closed mouth it is the photo (PSNR >= 35 dB; the warp is the identity, so exactly), through
    the renderer and through the family the pipeline drives."""
    import torch

    from trtalk.face import read_image
    from trtalk.families.warp.runtime import WarpFamily

    photo = read_image(face_image_path)
    # The photo's own mouth: the astronaut's lips are parted (an opening of 0 closes them).
    rest = renderer.avatar.rest_open()
    out = renderer.frame(rest, 0.0, np.eye(3))
    assert out.shape == photo.shape  # 512 x 512: the photo's own size (the default cap is 512)
    assert _psnr(out, photo) >= 35.0
    family = WarpFamily()
    avatar = family.make_avatar(photo, "astronaut", mesh=renderer.avatar.mesh)
    mouth = torch.tensor([[rest, 0.0]] * 2, dtype=torch.float32)
    frames = family.generate(family.new_state(), avatar, mouth, torch.zeros(2, 3))
    assert frames.shape == (2, *photo.shape)
    assert min(_psnr(f, photo) for f in frames) >= 35.0


def _shut_lips(renderer, scale: int = 1):
    """The astronaut with shut lips: its mesh with the inner lower lip on the inner upper lip (the
    photo ``scale`` times larger)."""
    from dataclasses import replace

    import cv2

    from trtalk.warp.avatar import WarpAvatar

    a = renderer.avatar
    mesh = a.mesh.copy() * scale
    mesh[list(M.INNER_LOWER_LIP[1:-1]), :2] = mesh[list(M.INNER_UPPER_LIP[1:-1]), :2]
    crop = cv2.resize(a.crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else a.crop
    shut = WarpAvatar(crop, mesh, replace(a.cfg, size=crop.shape[1], max_size=crop.shape[1]))
    assert shut.rest_gap == 0.0 and not shut.photo_teeth
    return shut


def test_shut_lips_open_with_the_whole_lower_lip(renderer) -> None:
    """On a photo with shut lips (inner contours on top of each other) the whole lower lip drops
    with the jaw: every inner lower-lip point between the corners moves down at least half as far
    as the lower lip's middle, and the upper lip does not drop (the lower contour used to fall
    within the upper lip's polygon, so the mouth opened only at its corners)."""
    shut = _shut_lips(renderer)
    up, lo = list(M.INNER_UPPER_LIP[1:-1]), list(M.INNER_LOWER_LIP[1:-1])
    mesh = shut.mesh
    moved = shut.deform(0.6, 0.0, np.eye(3))[:len(mesh), :2] - shut.rest[:len(mesh), :2]
    down = moved @ shut._v
    mid = down[M.LOWER_LIP_MID]
    assert mid > 0.3 * shut.open_gap
    assert (down[lo] > 0.5 * mid).all(), down[lo] / mid
    assert (down[up] < 0.1 * mid).all(), down[up] / mid


def test_small_opening_is_not_one_band_of_teeth(renderer) -> None:
    """Drawn teeth (a photo that shows none): a small opening shows the upper teeth over a dark gap
    (no lower teeth yet, so the column down the middle of the opening reaches the cavity's dark
    before the lower lip), a wide one shows both rows (teeth just above the lower lip)."""
    a = _shut_lips(renderer, scale=2)  # a gap of ~9 px at 0.3: enough pixels to tell its halves apart
    columns = []
    for open_ in (0.3, 1.0):
        dst = a.deform(open_, 0.0, np.eye(3))[:, :2]
        cavity, teeth = a._mouth_masks(dst, open_)
        x = int(round(dst[M.UPPER_LIP_MID, 0]))
        y0, y1 = dst[M.UPPER_LIP_MID, 1], dst[M.LOWER_LIP_MID, 1]
        assert y1 - y0 > 8, (y0, y1)
        columns.append(teeth[int(np.ceil(y0)):int(y1) + 1, x])
    small, wide = columns
    assert small[:len(small) // 2].max() > 0.5, small  # the upper teeth
    assert small[len(small) // 2:-1].min() < 0.1, small  # the dark between them and the lower lip
    assert wide[:len(wide) // 2].max() > 0.5, wide
    assert wide[-(len(wide) // 4) - 1:].max() > 0.3, wide  # the lower teeth on the lower lip


def test_size_is_the_frames_long_side(renderer, face_image_path: Path) -> None:
    """``size`` resizes the photo's frame (long side, even sides); at the own pose the output is
    the resized photo."""
    import cv2

    from trtalk.face import read_image
    from trtalk.warp.avatar import AvatarConfig, frame_size
    from trtalk.warp.render import WarpRenderConfig, WarpRenderer

    photo = read_image(face_image_path)
    wide = np.ascontiguousarray(photo[:381, :])  # 381 x 512: odd height, landscape
    assert frame_size(wide.shape[:2], AvatarConfig()) == (380, 512)
    assert frame_size(wide.shape[:2], AvatarConfig(size=256)) == (190, 256)
    assert frame_size((1200, 900), AvatarConfig()) == (512, 384)
    r = WarpRenderer(wide, WarpRenderConfig(avatar=AvatarConfig(size=256)), mesh=renderer.avatar.mesh)
    out = r.frame(r.avatar.rest_open(), 0.0, np.eye(3))
    assert out.shape == (190, 256, 3)
    ref = cv2.resize(wide, (256, 190), interpolation=cv2.INTER_AREA)
    assert _psnr(out, ref) >= 35.0
    with pytest.raises(TrtalkError, match="--size"):
        AvatarConfig(size=8)


def test_head_motion_carries_hair_and_keeps_the_frame_border(renderer) -> None:
    """A turned head takes its hair along (the region just above the face changes like the face
    does) while the frame's border and the far background stay the photo's: no porthole, no
    pasted ellipse. The face's landmarks, re-detected on the output, rotate by the roll asked."""
    from trtalk.face import FaceMeshDetector

    a = renderer.avatar
    photo = a.crop
    rot = M.euler_to_matrix(0.0, 0.0, 10.0)
    rest = a.rest_open()
    out = renderer.frame(rest, 0.0, rot)
    diff = np.abs(out.astype(int) - photo.astype(int)).sum(axis=2)
    # The frame's border is fixed: its anchors sit on the pixels' outer edges, so the outermost
    # pixel rows move by a small fraction of a pixel at most.
    w = a.warp_inputs(a.deform(rest, 0.0, rot), rest)
    x0, y0, x1, y1 = w.outer_roi
    yy, xx = np.mgrid[y0:y1, x0:x1]
    shift = np.linalg.norm(w.outer - np.stack([xx, yy], axis=2), axis=2)
    fh, fw = a.frame_hw
    edge = np.zeros((fh, fw), bool)
    edge[[0, -1]] = edge[:, [0, -1]] = True
    assert shift[edge[y0:y1, x0:x1]].max() < 0.3
    assert diff[edge].mean() < 1.0
    mesh = a.mesh[:, :2]
    lo, hi = mesh.min(axis=0), mesh.max(axis=0)
    h = hi[1] - lo[1]
    # Hair: the band above the mesh's top, as wide as the face, moves (not a still hat over a
    # rotating face).
    hair = diff[int(lo[1] - 0.25 * h):int(lo[1] - 0.05 * h), int(lo[0]):int(hi[0])]
    face = diff[int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])]
    assert hair.mean() > 0.3 * face.mean() > 0, (hair.mean(), face.mean())
    # Far from the head (the bottom corners): the photo.
    assert diff[-40:, :40].max() == 0 and diff[-40:, -40:].max() == 0
    with FaceMeshDetector(static_image_mode=True, max_num_faces=1) as det:
        m0, m1 = det.detect3d(photo)[0], det.detect3d(out)[0]
    from trtalk.warp.drive import measure_pose

    roll = measure_pose(m0, m1)[2]
    assert 7.0 < abs(roll) < 13.0, roll


def test_grid_on_a_lattice_matches_the_exact_grid(renderer) -> None:
    """The warp field outside the face is computed every other pixel and interpolated: it stays
    within a fraction of a pixel of the exact per-pixel field there (the field is continuous)."""
    from dataclasses import replace

    from trtalk.warp.avatar import WarpAvatar

    a = renderer.avatar
    assert a.grid_step == 2  # 512 px: the lattice is on
    exact = WarpAvatar(a.crop, a.mesh, replace(a.cfg, grid_step=1))
    pts = a.deform(0.5, 0.2, M.euler_to_matrix(12.0, -5.0, 6.0))
    fast, ref = a.warp_inputs(pts, 0.5), exact.warp_inputs(pts, 0.5)
    assert fast.outer_roi == ref.outer_roi and fast.roi == ref.roi
    # The face: exact in both (a few edge pixels differ by cv2's clipping of triangles to the box).
    np.testing.assert_allclose(fast.grid, ref.grid, rtol=0, atol=1e-3)
    assert (np.abs(fast.grid - ref.grid) > 1e-6).mean() < 0.005
    err = np.linalg.norm(fast.outer - ref.outer, axis=2)
    fx0, fy0, fx1, fy1 = a.face_roi
    x0, y0 = a.roi[:2]
    err[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = 0
    assert np.percentile(err, 99.9) < 0.5 and err.mean() < 0.02, (np.percentile(err, 99.9), err.mean())


def test_head_placement_follows_the_pose_sources_shift_and_scale(renderer) -> None:
    """A pose source whose head moves 12 px right and 6 px up (interocular distance io) reads as
    (12/io, -6/io); one whose head grows 10 % reads log 1.1; the avatar moves its head by that
    many of *its* interocular distances, the frame border staying put."""
    from trtalk.warp.placement import HeadPlacement

    a = renderer.avatar
    m0 = a.mesh.copy()
    io = a.interocular
    hp = HeadPlacement(smoothing=0.0)
    assert np.allclose(hp.update(m0), 0.0)
    got = hp.update(m0 + np.array([12.0, -6.0, 0.0]))
    np.testing.assert_allclose(got, [12.0 / io, -6.0 / io, 0.0], atol=1e-6)
    c = m0.mean(axis=0)
    grown = hp.update(c + 1.1 * (m0 - c))
    assert abs(grown[2] - np.log(1.1)) < 1e-6
    assert hp.update(None)[2] == grown[2]  # no face: the last value holds
    rest = a.rest_open()
    pts = a.place(a.deform(rest, 0.0, np.eye(3)), (0.25, -0.1), 0.0)
    np.testing.assert_allclose(pts[:468, :2] - a.mesh[:, :2], np.tile([0.25 * io, -0.1 * io], (468, 1)), atol=1e-9)
    out = renderer.frame(rest, 0.0, np.eye(3), placement=(0.25, -0.1, 0.0))
    assert np.abs(out[0].astype(int) - a.crop[0]).mean() < 1.0 and np.abs(out.astype(int) - a.crop).mean() > 2.0


def test_turn_stretches_the_exposed_cheek_smoothly(renderer) -> None:
    """A turn that brings a cheek into view stretches the triangles along the face's outline on that
    side by amounts that vary smoothly from one triangle to its neighbour. With the photo's raw
    (noisy, steep) silhouette depth, neighbours' stretches differed by up to e^8 (some folded), and
    the skin/background edge inside them became a saw-tooth of spikes at 25 degrees of yaw."""
    from trtalk.face.pasteback import FACE_OVAL

    a = renderer.avatar
    tri = a.triangles
    rim = np.nonzero((tri < len(a.mesh)).all(axis=1) & np.isin(tri, FACE_OVAL).any(axis=1))[0]

    def area(p: np.ndarray) -> np.ndarray:
        q = p[tri]
        e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
        return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])

    centre = a.mesh[:, 0].mean()
    for yaw in (-25.0, 25.0):
        pts = a.deform(0.0, 0.0, M.euler_to_matrix(yaw, 0.0, 0.0))
        stretch = np.log(np.clip(area(pts[:, :2]) / area(a.rest[:, :2]), 1e-3, None))
        # Deeper points move to the sign of sin(yaw) in x: that side is exposed.
        side = rim[(a.rest[tri[rim], 0].mean(axis=1) - centre) * np.sign(yaw) > 0]
        jumps = [abs(stretch[i] - stretch[j]) for k, i in enumerate(side) for j in side[k + 1:]
                 if len(set(tri[i]) & set(tri[j])) == 2]
        assert len(jumps) > 10
        assert max(jumps) < 1.0, (yaw, max(jumps))


def test_closed_parted_lips_leave_no_dark_seam(renderer) -> None:
    """A photo with parted lips whose dark gap reaches past the tracked inner-lip contour (as the
    face mesh tracks real mouths: the contour a pixel or two inside the gap): closed, the lips meet
    with no dark line between them. The inner-lip points used to close onto each other and leave
    the strip of gap above the upper contour as a dark seam (what the tracker read as parted lips)."""
    import cv2

    from trtalk.warp.render import WarpRenderer

    a = renderer.avatar
    mesh = a.mesh.copy()
    up, lo = list(M.INNER_UPPER_LIP), list(M.INNER_LOWER_LIP)
    face_h = float(np.linalg.norm(mesh[M.CHIN, :2] - mesh[M.FOREHEAD, :2]))
    gap = 0.04 * face_h
    # Part the lips: the inner lower lip (and the lower lip under it) goes down by ``gap``.
    mesh[lo[1:-1], 1] = mesh[up[1:-1], 1] + gap
    # and the upper lip is made 6 px thick (the astronaut's is thin).
    mesh[list(M.OUTER_UPPER_LIP[1:-1]), 1] = np.minimum(mesh[list(M.OUTER_UPPER_LIP[1:-1]), 1], mesh[up[1:-1], 1] - 6.0)
    photo = a.crop.copy()
    lip_rgb = np.array([200, 120, 120])
    # Lips in one colour, the gap dark from 2 px above the upper contour to 1 px below the lower one.
    for outer, inner in ((M.OUTER_UPPER_LIP, up), (M.OUTER_LOWER_LIP, lo)):
        poly = np.concatenate([mesh[list(outer), :2], mesh[list(inner)[::-1], :2]])
        cv2.fillPoly(photo, [np.round(poly).astype(np.int32)], [int(c) for c in lip_rgb])
    dark = np.concatenate([mesh[up, :2] - [0, 2.0], mesh[lo[::-1], :2] + [0, 1.0]])
    cv2.fillPoly(photo, [np.round(dark).astype(np.int32)], (25, 12, 12))
    r = WarpRenderer(photo, mesh=mesh)
    assert r.avatar.rest_gap > 0.015 * face_h
    out = r.frame(0.0, 0.0, np.eye(3)).astype(np.float32).mean(axis=2)
    lip = float(np.mean(lip_rgb))
    seam = r.avatar.deform(0.0, 0.0, np.eye(3))[up[2:-2], :2]
    worst = min(float(out[int(round(y)) - 3:int(round(y)) + 4, int(round(x))].min()) for x, y in seam)
    assert worst > 0.6 * lip, (worst, lip)
