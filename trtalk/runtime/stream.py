"""The live front end of the pipeline: microphone (or a replayed file) and webcam (or a pose file)
in, frames out to a virtual camera, a preview, a recording or nothing.

Everything that makes frames is `trtalk.runtime.pipeline.Pipeline` with the frame step of
`trtalk.runtime.step`; this module only picks the live defaults: a real-time clock when a
device is involved, the running aligner for cameras, and a running audio gain for a microphone.
`trtalk render` is the same pipeline on a virtual clock with the whole-clip alignment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.media.sinks import FrameSink
from trtalk.runtime.clock import Clock
from trtalk.families.base import Avatar, FamilyState, ModelFamily
from trtalk.families.pcavs.runtime import PCAVSFamily
from trtalk.runtime.inputs import InputPlan
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.pipeline import BackgroundFn, Pipeline, PipelineConfig
from trtalk.runtime.pose_path import PoseSample, PoseState, FaceTracker, RunningAligner
from trtalk.runtime.sources import AudioSource, Source, VideoFileSource

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_AVATAR = ASSETS / "astronaut.png"


@dataclass
class StreamConfig(PipelineConfig):
    """Options of a stream: the pipeline's, the avatar photo and the model."""

    face: Path = option(DEFAULT_AVATAR, metavar="FILE", help="photo of the face to animate", default_text="the built-in photo",
                        aliases=("--avatar",))
    model: ModelOptions = option(default_factory=ModelOptions, prefix="")
    pose_cache: int = option(256, cli=False)


def load_avatar(path: str | Path, family: ModelFamily) -> Avatar:
    """The avatar of the photo at ``path`` for ``family``; TrtalkError before any stream starts
    when the file is missing or has no face."""
    from trtalk.face import read_image

    path = Path(path)
    if not path.is_file():
        raise TrtalkError(f"--avatar {path} does not exist; give a photo with one frontal face")
    return family.make_avatar(read_image(path), str(path))


def as_family(runner_or_family: Any, cfg: StreamConfig, random_weights: bool | None = None) -> ModelFamily:
    """A family as is; a PC-AVS runner (anything with encode_* and generate) wrapped in one."""
    if isinstance(runner_or_family, ModelFamily):
        return runner_or_family
    return PCAVSFamily(runner_or_family, random_weights, device=cfg.model.device, pose_cache=cfg.pose_cache)


class StreamPipeline(Pipeline):
    """`Pipeline` for the avatar photo of ``cfg`` (see `trtalk.runtime.pipeline`).

    ``runner`` is a `ModelFamily` or a PC-AVS runner (wrapped in `PCAVSFamily`).
    """

    def __init__(self, cfg: StreamConfig, runner: Any, audio: AudioSource, pose_source: Source | None,
                 sinks: Sequence[FrameSink], clock: Clock | None = None, random_weights: bool | None = None,
                 background: BackgroundFn | None = None, motion: bool = False, *,
                 family_state: FamilyState | None = None, plan: InputPlan | None = None) -> None:
        family = as_family(runner, cfg, random_weights)
        super().__init__(cfg, family, load_avatar(cfg.face, family), audio, pose_source, sinks,
                         clock, background, motion, family_state=family_state, plan=plan)


def pose_file_source(path: str | Path, cfg: PipelineConfig, loop: bool = True, **kw: Any) -> VideoFileSource:
    """A replayed pose video or image, tracked live (running alignment; frames kept for
    paste-back). `trtalk render` uses `trtalk.runtime.pose_path.ClipPoseSource` instead."""
    src = VideoFileSource(path, loop=loop, **kw)
    src.processor = FaceTracker(src.fps, keep_frames=cfg.paste_back)
    return src


__all__ = ["Avatar", "PoseSample", "PoseState", "FaceTracker", "RunningAligner", "StreamConfig",
           "StreamPipeline", "load_avatar", "pose_file_source"]
