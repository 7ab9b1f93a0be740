"""One input plan: which sources drive the head, the lips and the audio, decided once.

Every front end (`trtalk render`, `trtalk stream`, `trtalk serve`'s sessions, and a `Pipeline`
built directly) turns its options into an `InputRequest` and calls `plan_inputs` with the
family's declared `trtalk.families.spec.Capabilities`; the `InputPlan` it returns (or a one-line
`TrtalkError`) is what the front end opens sources by, and what `Pipeline` and `PosePath` read.

The head (``InputPlan.pose``):

- ``webcam``: a camera tracked live (``stream --webcam``, serve's webcam pose); codes smoothed;
- ``file``: a pose video or image aligned as a whole clip and replayed (``--pose FILE``);
- ``face``: render with a face video and no ``--pose``: the face source's own motion;
- ``factor``: a family with a pose factor of its own (`Capabilities.pose_factor`, PD-FGC) reads
  render's ``--pose FILE`` itself (the official loop and box mean): no pose source;
- ``auto``: head motion and blinks generated from the speech (``--pose auto``; the stream's
  default when nothing else drives the head): `auto_pose` builds it;
- ``off``: PD-FGC's zero pose code (``--pose off``; needs `Capabilities.pose_factor`);
- ``still``: the family's still pose (a still face, ``--pose-static``, serve's still pose).

The lips (``InputPlan.mouth``): the audio's, or read from the pose source's frames (``webcam``,
``blend``: needs `Capabilities.visual_mouth` and a tracked pose source) or from another video
(``video``). The audio (``InputPlan.audio``): a microphone, a file, the mouth video's own track,
or silence (``--mouth webcam`` without a microphone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtalk.errors import TrtalkError
from trtalk.families.spec import Capabilities
from trtalk.runtime.mouth_path import MouthOptions

#: ``InputPlan.pose`` values (module docstring)
POSE_SOURCES = ("webcam", "file", "face", "factor", "auto", "off", "still")
#: pose sources the pipeline tracks frames of (the lips of ``--mouth webcam|blend`` come from them)
TRACKED = ("webcam", "file", "face")
#: ``InputPlan.audio`` values
AUDIO_SOURCES = ("mic", "file", "mouth-video", "silence")

AUTO = "auto"
OFF = "off"


def pose_word(pose: object, word: str) -> bool:
    """Whether a ``--pose`` value is the word ``word`` ("auto", "off") rather than a file (a file
    of that name is given as ``./auto``)."""
    return pose is not None and str(pose) == word and not Path(str(pose)).exists()


@dataclass(frozen=True)
class InputRequest:
    """A front end's input options, as given.

    ``pose``: ``--pose`` (a file, "auto" or "off"; None: not given); ``pose_static``: the
    still pose asked for (``stream --pose-static``, serve's still pose); ``webcam``: a camera
    drives the head; ``face_clip``: render's face source is a video (its motion drives the head
    when there is no ``--pose``); ``mic`` / ``audio``: a microphone / an audio file drives the
    lips; ``offline``: the whole input is known (render: a pose-factor family reads ``--pose
    FILE`` itself); ``auto_default``: generated motion when nothing else drives the head (the
    stream's default); ``realtime``: None for the front end's default (real time when live).
    """

    pose: Path | str | None = None
    pose_static: bool = False
    webcam: bool = False
    face_clip: bool = False
    mic: bool = False
    audio: bool = True
    mouth: MouthOptions = field(default_factory=MouthOptions)
    offline: bool = False
    auto_default: bool = False
    realtime: bool | None = None
    duration: float | None = None
    #: whose options these are: "cli" (render, stream) or "serve" (a browser session's choices),
    #: for the wording of errors
    front: str = "cli"


@dataclass(frozen=True)
class InputPlan:
    """The sources of one stream (see the module docstring)."""

    pose: str
    pose_path: Path | None = None
    mouth: MouthOptions = field(default_factory=MouthOptions)
    audio: str = "file"
    realtime: bool = False

    def __post_init__(self) -> None:
        if self.pose not in POSE_SOURCES:
            raise ValueError(f"pose source {self.pose!r} is not one of {POSE_SOURCES}")
        if self.audio not in AUDIO_SOURCES:
            raise ValueError(f"audio source {self.audio!r} is not one of {AUDIO_SOURCES}")

    @property
    def motion(self) -> bool:
        """Generated head motion (and blinks) drive the head."""
        return self.pose == "auto"

    @property
    def tracked(self) -> bool:
        """A pose source whose frames the pipeline tracks feeds it."""
        return self.pose in TRACKED

    @property
    def pose_smoothing(self) -> float:
        """The pose codes' default smoothing: none for a clip aligned as a whole, 0.5 live."""
        return 0.5 if self.pose == "webcam" else 0.0

    def pose_factor(self) -> Any:
        """The family's pose factor to set (`ModelFamily.set_factor`), or None: ``off``'s zero
        code, or the pose file a ``factor`` plan reads."""
        from trtalk.families.controls import FactorSpec, parse_factor

        if self.pose == "off":
            return FactorSpec("off")
        if self.pose == "factor":
            return parse_factor(str(self.pose_path), "pose")
        return None

    def describe(self) -> str:
        """The head's source in words (the render log)."""
        return {"webcam": "the camera", "file": str(self.pose_path), "face": "the face",
                "factor": str(self.pose_path), "auto": "generated motion", "off": "nothing (--pose off)",
                "still": "the avatar itself"}[self.pose]


def plan_inputs(req: InputRequest, caps: Capabilities, family: str = "this") -> InputPlan:
    """The `InputPlan` of ``req`` for a family with ``caps`` (named ``family`` in errors), or a
    one-line `TrtalkError` saying what to change."""
    mouth = req.mouth
    live = req.mic or req.webcam
    realtime = req.realtime if req.realtime is not None else live
    if live and not realtime:
        raise TrtalkError("--fast works with files only; a microphone or webcam runs in real time")
    # the head
    path: Path | None = None
    if pose_word(req.pose, OFF):
        if not caps.pose_factor:
            raise TrtalkError(f"--pose off is a PD-FGC switch (a zero pose code); the {family} model has "
                              f"no pose switch: give a pose video or image")
        if mouth.source in ("webcam", "blend"):
            raise TrtalkError(f"--mouth {mouth.source} reads the lips from the pose source's frames; "
                              f"--pose off has none (add --webcam, or give a pose video)")
        pose = "off"
    elif req.webcam:
        pose = "webcam"
    elif req.pose is not None and str(req.pose) == AUTO:
        pose = "auto"
    elif req.pose is not None:
        path = Path(req.pose)
        pose = "factor" if req.offline and caps.pose_factor else "file"
    elif req.pose_static:
        pose = "still"
    elif req.face_clip:
        pose = "face"
    else:
        pose = "auto" if req.auto_default else "still"
    # the audio
    if mouth.source == "video":
        if req.mic or (req.audio and not req.offline):
            raise TrtalkError("--mouth video plays the video's own audio track; drop --mic/--audio")
        audio = "mouth-video"
    elif req.mic:
        audio = "mic"
    elif req.audio:
        audio = "file"
    elif mouth.source == "webcam":
        if not req.webcam and req.pose is None:
            raise TrtalkError("--mouth webcam reads the lips from the camera: add --webcam [DEV] "
                              "(or --pose VIDEO)")
        if not realtime and req.duration is None:
            raise TrtalkError("--mouth webcam with --fast and no audio runs until --duration S; add it")
        audio = "silence"
    else:
        raise TrtalkError("give --mic [DEV] or --audio FILE (or --mouth webcam: lips from the camera, "
                          "no audio)")
    # the lips
    _check_mouth(mouth, pose, caps, family, req.front)
    return InputPlan(pose, path, mouth, audio, realtime)


def _check_mouth(mouth: MouthOptions, pose: str, caps: Capabilities, family: str, front: str) -> None:
    """Lips read from the pose source's frames need a tracked pose source and a visual mouth."""
    if mouth.source in ("webcam", "blend") and pose not in TRACKED:
        if front == "serve":
            raise TrtalkError(f"lips from the camera ({mouth.source!r}) read the frames the webcam head "
                              f"pose tracks: pick the webcam pose")
        raise TrtalkError(f"--mouth {mouth.source} reads the lips from the pose video or camera and "
                          f"there is none; add --pose VIDEO (stream: or --webcam)")
    if mouth.visual and not caps.visual_mouth:
        raise TrtalkError(f"the {family} model has no visual mouth; use --mouth audio")


def auto_pose(family: Any, avatar: Any, cfg: Any, blink: Any = None, style: Any = None) -> Any:
    """The generated-motion pose source of ``--pose auto`` (`trtalk.runtime.motion_path.MotionPose`)
    from the pipeline's options ``cfg`` (``fps``, ``motion``), the blinks ``blink`` (None:
    ``cfg.blink``) and the motion style ``style`` (`trtalk.runtime.motion_path.auto_motion`): the
    one place it is built."""
    from trtalk.runtime.motion_path import MotionPose

    return MotionPose(family, avatar, cfg.fps, cfg.motion, blink if blink is not None else cfg.blink, style=style)


def plan_of_source(pose_source: Any, motion: bool, mouth: MouthOptions, realtime: bool,
                   caps: Capabilities | None = None, family: str = "this") -> InputPlan:
    """The plan of a `Pipeline` or `PosePath` built directly from a pose source (benchmarks,
    tests, scripts): a clip aligned as a whole is a ``file``, any other source is tracked live
    (``webcam``); without one, generated motion (``motion``) or the still pose. With ``caps``, the
    lips are checked as `plan_inputs` checks them."""
    from trtalk.runtime.pose_path import ClipPoseSource

    if pose_source is None:
        pose = "auto" if motion else "still"
    else:
        pose = "file" if isinstance(pose_source, ClipPoseSource) else "webcam"
    if caps is not None:
        _check_mouth(mouth, pose, caps, family, "cli")
    return InputPlan(pose, None, mouth, "file", realtime)
