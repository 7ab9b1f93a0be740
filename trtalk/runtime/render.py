"""Offline rendering: the stream's pipeline on a virtual clock, from files, into an mp4.

`render(cfg)` is `trtalk.runtime.pipeline.Pipeline` with

- audio: the file replayed as a microphone (`AudioFileSource`), with the official whole-file gain,
  so the mel equals the offline PC-AVS frontend bit for bit; one 20-frame window per output frame;
- face: the first frame of the face source, aligned as a whole clip, is the identity;
- pose: the pose file (else the face source itself) aligned as a whole clip (the official
  alignment) and replayed forward and backward at its own frame rate (`ClipPoseSource`); without
  a pose file and with a still face, the avatar's own pose;
- paste-back into the face source's frames (the official loop over them);
- sink: an H.264/AAC mp4 written to a temporary file and renamed at the end.

Frame count = ``floor(audio_seconds * fps + 0.5)``. The official demo drops two frames at each
end (its windows must fit inside the mel); here out-of-range mel rows are silence, so the video
covers the whole audio. `trtalk stream --fast` from the same files gives the same frames.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.fsutil import check_writable
from trtalk.runtime.clock import VirtualClock
from trtalk.runtime.family import ModelFamily
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.pipeline import Pipeline, PipelineConfig
from trtalk.runtime.pose_path import ClipPoseSource, PoseSample, align_clip, pingpong
from trtalk.runtime.sources import AudioFileSource
from trtalk.runtime.step import LAYOUTS, RANDOM_WEIGHTS_NOTE, Background
from trtalk.media.mp4 import Mp4Sink

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE = ASSETS / "astronaut.png"
DEFAULT_AUDIO = ASSETS / "demo_speech.wav"

ProgressFn = Callable[[int, int], None]

__all__ = ["DEFAULT_AUDIO", "DEFAULT_FACE", "LAYOUTS", "RANDOM_WEIGHTS_NOTE", "RenderConfig",
           "RenderResult", "Renderer", "pingpong", "render"]


@dataclass
class RenderConfig(PipelineConfig):
    """Options of `trtalk render` (and `trtalk demo`): the pipeline's, the input files, the model."""

    output: Path = option(Path("out/render.mp4"), short="-o", help="output mp4")
    face: Path = option(DEFAULT_FACE, help="identity: image, folder of frames or video",
                        default_text="the built-in photo")
    audio: Path = option(DEFAULT_AUDIO, help="speech: wav/mp3/m4a or a video's audio track",
                         default_text="the built-in clip")
    pose: Path | None = option(None, help="head pose: video or image, looped forward and backward",
                               default_text="the face source itself")
    batch: int = option(8, help="most frames per generator call")
    model: ModelOptions = option(default_factory=ModelOptions, prefix="")


@dataclass
class RenderResult:
    output: Path
    frames: int
    seconds: float
    random_weights: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _check_inputs(cfg: RenderConfig) -> None:
    if cfg.layout not in LAYOUTS:
        raise TrtalkError(f"unknown layout {cfg.layout!r}; choose {' or '.join(LAYOUTS)}")
    for label, p in (("--face", cfg.face), ("--audio", cfg.audio), ("--pose", cfg.pose)):
        if p is not None and not Path(p).exists():
            raise TrtalkError(f"{label} {p} does not exist")
    check_writable(cfg.output)


class Renderer:
    """One render of ``cfg`` with ``family`` (see the module docstring)."""

    def __init__(self, cfg: RenderConfig, family: ModelFamily) -> None:
        _check_inputs(cfg)
        self.cfg = cfg
        self.family = family

    def run(self, progress: ProgressFn | None = None) -> RenderResult:
        from trtalk.audio import num_video_frames

        cfg = self.cfg
        t0 = time.perf_counter()
        audio = AudioFileSource(cfg.audio)
        n = num_video_frames(len(audio.wave), cfg.fps)
        log.info("audio %s: %.2f s -> %d frames at %g fps", cfg.audio, len(audio.wave) / 16000, n, cfg.fps)

        face, face_frames = align_clip(cfg.face, keep_frames=cfg.paste_back)
        first = face_frames[0] if face_frames else _first_frame(cfg.face)
        mesh = face.landmarks[0] if face.landmarks is not None and bool(face.found[0]) else None
        avatar = self.family.make_avatar(first, str(cfg.face), crop=face.crops[0],
                                         crop_m=face.crop_matrices[0], mesh=mesh)
        if cfg.pose is not None:
            pose_clip, _ = align_clip(cfg.pose)
            pose = ClipPoseSource(cfg.pose, pose_clip)
        elif len(face) > 1:
            pose = ClipPoseSource(cfg.face, face)
        else:
            pose = None  # a still face: its own pose
        log.info("face %s: %d frame(s); pose from %s", cfg.face, len(face),
                 cfg.pose or ("the face" if pose is not None else "the avatar itself"))

        def background(k: int, sample: PoseSample | None) -> Background:
            i = pingpong(k, len(face))
            return Background(face_frames[i], face.crop_matrices[i])

        def report(done: int, total: int | None) -> None:
            if progress is not None:
                progress(done, total if total is not None else n)

        with Mp4Sink(cfg.output, fps=cfg.fps, audio=audio.wave, sample_rate=16000) as sink:
            pipe = Pipeline(cfg, self.family, avatar, audio, pose, [sink], VirtualClock(),
                            background if cfg.paste_back else None)
            pipe.run(progress=report)
            frames = pipe.last_slot + 1
        if frames != n:
            raise TrtalkError(f"rendered {frames} of {n} frames; the inputs ended early")
        return RenderResult(Path(cfg.output), n, time.perf_counter() - t0, self.family.random_weights)


def _first_frame(path: Path):
    from trtalk.face import open_media

    return next(iter(open_media(path)))


def render(cfg: RenderConfig, family: ModelFamily, progress: ProgressFn | None = None) -> RenderResult:
    """Render ``cfg`` to ``cfg.output``; raises TrtalkError on bad input, leaving no output file."""
    return Renderer(cfg, family).run(progress)
