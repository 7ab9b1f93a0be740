"""Render a talking clip with the warp avatar: photo + speech (+ pose video) -> frames / mp4.

Per frame: mouth parameters (precomputed from the whole wave's mel, cheap)
and a head rotation (pose tracking on the pose video's frame, or the idle
motion) -> :meth:`Avatar.deform` -> :meth:`Avatar.warp_inputs` -> the warp
network (torch or ONNX Runtime) -> optional paste-back into the photo.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trtalk.errors import TrtalkError
from trtalk.warp.avatar import Avatar, AvatarConfig, rotation_clamped
from trtalk.warp.drive import MouthConfig, PoseTracker, idle_motion, mouth_params

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE = ASSETS / "astronaut.png"
DEFAULT_AUDIO = ASSETS / "demo_speech.wav"
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class WarpRenderConfig:
    """Rendering options. ``backend``: "torch" or "onnxruntime" for the warp network."""

    fps: float = 25.0
    paste_back: bool = False
    backend: str = "torch"
    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    mouth: MouthConfig = field(default_factory=MouthConfig)


@dataclass
class RenderStats:
    """What a render did: frames written, wall time, and the frames' mouth/pose drive."""

    frames: int = 0
    seconds: float = 0.0
    mouth: np.ndarray | None = None
    pose_missed: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def detect_avatar_mesh(photo_rgb: np.ndarray, name: str) -> np.ndarray:
    """The largest face's 468x3 mesh in ``photo_rgb``; TrtalkError when there is none."""
    from trtalk.face import FaceMeshDetector

    with FaceMeshDetector(static_image_mode=True, max_num_faces=2) as det:
        faces = det.detect3d(photo_rgb)
    if not faces:
        raise TrtalkError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
    if len(faces) > 1:
        logger.info("%s has %d faces; animating the largest", name, len(faces))
    return faces[0]


class WarpRenderer:
    """Turns (open, rounding, rotation) into an RGB uint8 frame of one avatar photo.

    Frames are ``size x size`` crops, or the whole photo when ``paste_back``.
    """

    def __init__(self, photo_rgb: np.ndarray, cfg: WarpRenderConfig = WarpRenderConfig(),
                 name: str = "the avatar photo") -> None:
        if cfg.backend not in BACKENDS:
            raise TrtalkError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.cfg = cfg
        self.avatar = Avatar(photo_rgb, detect_avatar_mesh(photo_rgb, name), cfg.avatar, name)
        if cfg.backend == "torch":
            from trtalk.warp.net import TorchWarp

            self.net: Callable[..., np.ndarray] = TorchWarp(self.avatar.crop)
        else:
            from trtalk.warp.net import OrtWarp

            self.net = OrtWarp(self.avatar.crop)
        self._paste = None
        if cfg.paste_back:
            from trtalk.face import PasteBack

            self._paste = PasteBack(crop_size=cfg.avatar.size)

    def frame(self, open_: float, rounding: float, rotation: np.ndarray) -> np.ndarray:
        rot = rotation_clamped(rotation, self.cfg.avatar)
        pts = self.avatar.deform(open_, rounding, rot)
        w = self.avatar.warp_inputs(pts, open_)
        out = self.net(w.grid, w.cavity, w.teeth)
        if self._paste is not None:
            out = self._paste(self.avatar.photo, out, self.avatar.crop_M)
        return out


def _pose_stream(pose_path: Path | None, num_frames: int, fps: float) -> tuple[Iterator[np.ndarray], PoseTracker | None]:
    """One head rotation per output frame: the idle motion, or the pose video's frame at that time.

    The pose video is read at its own frame rate (frames are skipped or held
    to match ``fps``); past its end the last pose is held. An image as pose
    source gives a constant pose.
    """
    if pose_path is None:
        return idle_motion(num_frames, fps), None
    from trtalk.media.read import iter_frames, probe

    info = probe(pose_path)
    if not info.has_video:
        raise TrtalkError(f"{pose_path} has no video frames; give a video of a face for --pose")
    src_fps = info.fps or fps
    tracker = PoseTracker()
    frames = iter_frames(pose_path)

    def gen() -> Iterator[np.ndarray]:
        rot = np.eye(3)
        read = 0  # pose-video frames consumed so far
        frame = None
        for i in range(num_frames):
            want = int(i / fps * src_fps + 1e-6)  # index of the pose frame shown at output time i/fps
            fresh = False
            while read <= want:
                nxt = next(frames, None)
                if nxt is None:
                    break
                frame, read, fresh = nxt, read + 1, True
            # Only track frames we show; the tracker's smoothing runs at the output rate.
            if fresh and frame is not None:
                rot = tracker.update(frame)
            yield rot

    return gen(), tracker


def render_frames(photo_rgb: np.ndarray, wave: np.ndarray, pose_path: Path | None = None,
                  cfg: WarpRenderConfig = WarpRenderConfig(), name: str = "the avatar photo",
                  stats: RenderStats | None = None) -> Iterator[np.ndarray]:
    """Yield the clip's frames (RGB uint8), one per 1/fps of ``wave`` (16 kHz mono)."""
    from trtalk.audio import num_video_frames

    stats = stats if stats is not None else RenderStats()
    renderer = WarpRenderer(photo_rgb, cfg, name)
    n = num_video_frames(len(wave), cfg.fps)
    t0 = time.perf_counter()
    mouth = mouth_params(wave, n, cfg.fps, cfg.mouth)
    stats.mouth = mouth
    poses, tracker = _pose_stream(pose_path, n, cfg.fps)
    try:
        for i, rot in enumerate(poses):
            frame = renderer.frame(float(mouth[i, 0]), float(mouth[i, 1]), rot)
            stats.frames = i + 1
            stats.seconds = time.perf_counter() - t0
            yield frame
    finally:
        if tracker is not None:
            stats.pose_missed = tracker.missed
            tracker.close()


def render_demo(out_path: Path, face_path: Path = DEFAULT_FACE, audio_path: Path = DEFAULT_AUDIO,
                pose_path: Path | None = None, cfg: WarpRenderConfig = WarpRenderConfig(),
                progress: Callable[[int, int], None] | None = None) -> RenderStats:
    """Render the talking clip to an H.264/AAC mp4 at ``out_path``; returns the stats.

    Raises TrtalkError for unreadable inputs, no face, a too-small face or an unwritable output.
    """
    from trtalk.audio import load_audio, num_video_frames
    from trtalk.face import read_image
    from trtalk.fsutil import check_writable
    from trtalk.media.mp4 import Mp4Sink

    for p, what in ((face_path, "face image"), (audio_path, "audio file"), (pose_path, "pose video")):
        if p is not None and not Path(p).exists():
            raise TrtalkError(f"{what} {p} does not exist")
    check_writable(out_path)
    photo = read_image(face_path)
    try:
        wave = load_audio(audio_path)
    except TrtalkError:
        raise
    except Exception as exc:  # PyAV's errors for non-audio files
        raise TrtalkError(f"cannot read audio from {audio_path}: {exc}") from exc
    if len(wave) == 0:
        raise TrtalkError(f"{audio_path} has no audio samples")
    n = num_video_frames(len(wave), cfg.fps)
    stats = RenderStats()
    with Mp4Sink(out_path, fps=cfg.fps, audio=wave, sample_rate=16000) as sink:
        for i, frame in enumerate(render_frames(photo, wave, pose_path, cfg, str(face_path), stats)):
            sink.write(frame)
            if progress is not None:
                progress(i + 1, n)
    if stats.pose_missed:
        logger.warning("no face in %d pose-video frame(s); the previous pose was held", stats.pose_missed)
    return stats
