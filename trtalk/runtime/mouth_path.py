"""The pipeline's mouth path: where each output frame's mouth code comes from.

``--mouth`` picks the source (`MouthOptions`):

- ``audio`` (default): the family's audio mouth from the frame's mel window (nothing changes: the
  frame step runs audio + style + generator as before);
- ``video PATH``: lips from another video, aligned as a whole clip like a pose file; output frame
  k at time ``k / fps`` shows the clip's frame at that time (held at its last frame), and the
  audio the sinks get is the clip's own track (silence when it has none), so a recording stays in
  sync with the driving frames (`video_audio`, `MouthClip`);
- ``webcam``: lips from the stream's video source -- the webcam, or the pose file replayed as a
  camera -- the same tracked frame the pose comes from; no microphone is needed (`SilenceSource`
  stands in for it and is released one audio lookahead early, so no frame waits for audio);
- ``blend``: ``W * webcam + (1 - W) * audio`` (``--mouth-blend W``).

The visual mouth is the family's (`ModelFamily.visual_mouth`): for PC-AVS the pose encoder's
visual mouth branch, ``mouth_embed(to_mouth(trunk(crop)))`` from the same trunk pass as the pose
code (`trtalk.engine.Runner.encode_pose_mouth`); for the warp avatar the lip opening and rounding
measured on the tracked face mesh (`LipMeter`). When the face is lost the last mouth is held
for the pose path's hold time, then eased to the avatar's rest mouth.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.families.base import Avatar, FamilyState, ModelFamily, NetworkCall, PoseInput, direct_call
from trtalk.warp.lips import LipMeter  # noqa: F401  (re-exported: the mouth clip measures lips with it)
from trtalk.runtime.sources import DEFAULT_BLOCK, SAMPLE_RATE, AudioChunk, AudioFileSource, AudioSource, SourceEvent

log = logging.getLogger(__name__)

MOUTH_SOURCES = ("audio", "video", "webcam", "blend")
#: Default weight of the webcam mouth in ``--mouth blend``: inverse-variance weighting of the two
#: estimates of the lips (scripts/mouth_blend_weight.py): on a talking clip the audio mouth's
#: residual against the lips seen was 0.16 RMS (mouth opening, warp avatar), the webcam mouth's
#: jitter on a still mouth under head motion 0.04 RMS -> 0.94, rounded down to 0.9 (the audio
#: keeps a share for occluded or badly lit lips).
DEFAULT_BLEND = 0.9


@dataclass
class MouthOptions:
    """``--mouth`` and ``--mouth-blend`` (render and stream)."""

    mouth: tuple[str, ...] = option(
        ("audio",), nargs="+", metavar="SOURCE",
        help="where the lips come from: audio (the speech), video PATH (another video's mouth; its "
             "own audio track is played), webcam (the webcam or --pose video; no microphone needed) "
             "or blend (audio and webcam mixed, see --mouth-blend)")
    mouth_blend: float = option(DEFAULT_BLEND, metavar="W", bounds=(0, 1),
                                help="--mouth blend: weight of the webcam's mouth, 0 (audio only) to "
                                     "1 (webcam only)")

    def __post_init__(self) -> None:
        words = tuple(str(w) for w in (self.mouth if not isinstance(self.mouth, str) else (self.mouth,)))
        self.mouth = words
        if not words or words[0] not in MOUTH_SOURCES:
            raise TrtalkError(f"--mouth {' '.join(words) or '(nothing)'}: choose audio, video PATH, "
                              f"webcam or blend")
        if words[0] == "video" and len(words) != 2:
            raise TrtalkError("--mouth video needs the video's path: --mouth video speaker.mp4")
        if words[0] == "video" and Path(words[1]).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
            raise TrtalkError(f"--mouth video {words[1]} is an image; the lips follow a video's frames over "
                              f"time: give a video (or --mouth audio)")
        if words[0] != "video" and len(words) != 1:
            raise TrtalkError(f"--mouth {words[0]} takes no path (only --mouth video PATH does)")
        if not (0.0 <= self.mouth_blend <= 1.0):
            raise TrtalkError(f"--mouth-blend must be in [0, 1], got {self.mouth_blend:g}")

    @property
    def source(self) -> str:
        return self.mouth[0]

    @property
    def path(self) -> Path | None:
        return Path(self.mouth[1]) if self.source == "video" else None

    @property
    def visual(self) -> bool:
        """Whether any mouth is read from video frames."""
        return self.source != "audio"


# ----------------------------------------------------------------------------- sources


class SilenceSource(AudioSource):
    """The audio of a stream with no microphone (``--mouth webcam``): 16 kHz silence in blocks.

    Each block is released ``lead_s`` before its end time (the audio lookahead plus a block), so
    the pipeline never holds a frame for audio: the frame is due at its own time, and its latency
    is the camera's. ``duration_s`` None: endless.
    """

    def __init__(self, lead_s: float, duration_s: float | None = None, block: int = DEFAULT_BLOCK,
                 capacity: int = 512) -> None:
        super().__init__("audio:none", capacity, block)
        self.lead_s = max(0.0, lead_s)
        self.duration_s = duration_s
        self.loop = duration_s is None

    def _run(self) -> None:
        assert self.clock is not None
        n = None if self.duration_s is None else int(round(self.duration_s * SAMPLE_RATE))
        zeros = np.zeros(self.block, dtype=np.float32)
        pos = 0
        while not self.stopping:
            if n is not None and pos >= n:
                break
            end = pos + self.block if n is None else min(pos + self.block, n)
            release = self.t0 + end / SAMPLE_RATE - self.lead_s
            if not self.clock.sleep_until(release, self._stop):
                return
            self.queue.put(AudioChunk(self.t0 + pos / SAMPLE_RATE, zeros[: end - pos],
                                      max(release, self.t0)))
            pos = end
        self.queue.put(SourceEvent("end", self.t0 + pos / SAMPLE_RATE))


def video_audio(path: str | Path, frames: int | None = None, fps: float | None = None) -> AudioFileSource:
    """The audio the sinks get with ``--mouth video PATH``: the video's own track, else silence as
    long as the video (``frames`` at ``fps``, from its header when not given)."""
    from trtalk.media.read import probe

    info = probe(path)
    if info.has_audio:
        return AudioFileSource(path)
    if frames is None:
        frames = info.num_frames or 1
    if fps is None:
        fps = info.fps or 25.0
    log.info("%s has no audio track: the output is silent", path)
    return AudioFileSource(wave=np.zeros(int(round(frames / fps * SAMPLE_RATE)), dtype=np.float32))


class MouthClip:
    """A video aligned as a whole (`trtalk.runtime.pose_path.align_clip`), read by time: output
    frame k shows the clip frame at ``k / fps`` (its last one after the end)."""

    def __init__(self, path: str | Path, clip: Any | None = None) -> None:
        from trtalk.runtime.pose_path import align_clip

        self.path = Path(path)
        self.clip = clip if clip is not None else align_clip(path)[0]
        self.fps = float(self.clip.fps or 25.0)

    def __len__(self) -> int:
        return len(self.clip)

    def index(self, k: int, fps: float) -> int:
        return min(len(self.clip) - 1, int(math.floor(k * self.fps / fps + 1e-6)))

    def inputs(self, frames: Sequence[int], fps: float) -> tuple[list[PoseInput | None], list[int]]:
        c = self.clip
        out: list[PoseInput | None] = []
        idx = []
        for k in frames:
            j = self.index(k, fps)
            idx.append(j)
            if not bool(c.found[j]):
                out.append(None)
                continue
            mesh = c.landmarks[j] if c.landmarks is not None else None
            out.append(PoseInput(c.crops[j], mesh))
        return out, idx


# ----------------------------------------------------------------------------- the path


class MouthPath:
    """Mouth codes per output frame from the source of `MouthOptions` (see the module docstring).

    ``codes`` returns None for ``--mouth audio`` (the frame step's own audio path runs).
    """

    def __init__(self, opts: MouthOptions, family: ModelFamily, avatar: Avatar, fps: float,
                 clip: MouthClip | None = None, hold_s: float = 0.3, ease_s: float = 1.0, *,
                 family_state: FamilyState | None = None, call: NetworkCall = direct_call) -> None:
        from trtalk.runtime.pose_path import PoseState

        self.opts = opts
        self.family = family
        #: the stream's family state; ``call(fn)`` runs a network call (`trtalk serve`: on its worker)
        self.family_state = family_state if family_state is not None else family.new_state()
        self.call = call
        self.avatar = avatar
        self.fps = fps
        self.clip = clip
        if opts.source == "video" and clip is None:
            self.clip = MouthClip(opts.path)  # type: ignore[arg-type]
        self.state: Any = None
        if opts.visual:
            rest = call(lambda: family.rest_mouth(avatar))
            self.state = PoseState(rest, 0.0, hold_s, ease_s)
        #: frames whose mouth was read from a video frame (not held or eased)
        self.visual_frames = 0
        #: the mouth source's crop of each frame of the last `codes` call (--mouth video), for the
        #: side-by-side layout
        self.panels: list[np.ndarray | None] = []

    def reset(self) -> None:
        if self.state is not None:
            self.state = type(self.state)(self.state.ref, 0.0, self.state.hold_s, self.state.ease_s)

    def _visual(self, frames: Sequence[int], inputs: Sequence[PoseInput | None]) -> torch.Tensor:
        use = [i for i, p in enumerate(inputs) if p is not None and p.crop is not None]
        st = self.family_state
        codes = self.call(lambda: self.family.visual_mouth(st, [inputs[i] for i in use])) if use else None  # type: ignore[misc]
        by = dict(zip(use, codes)) if codes is not None else {}
        self.visual_frames += len(use)
        out = []
        for i, k in enumerate(frames):
            out.append(self.state.update(k / self.fps, by.get(i)))
        return torch.stack(out)

    def codes(self, frames: Sequence[int], mel: torch.Tensor, samples: Sequence[Any],
              held: Sequence[bool] | None = None) -> torch.Tensor | None:
        """Mouth codes B x M of ``frames`` (None: the audio path, as without this module).

        ``samples``/``held``: the pose path's tracked sample of each frame and whether its pose
        was held (face or camera lost): the webcam mouth reads the same frames.
        """
        src = self.opts.source
        if src == "audio":
            return None
        self.panels = [None] * len(frames)
        if src == "video":
            assert self.clip is not None
            inputs, idx = self.clip.inputs(frames, self.fps)
            self.panels = [self.clip.clip.crops[j] for j in idx]
        else:
            held = held if held is not None else [False] * len(frames)
            inputs = [PoseInput(s.crop, s.mesh) if s is not None and s.crop is not None and not h
                      else None for s, h in zip(samples, held)]
        visual = self._visual(frames, inputs)
        if src != "blend":
            return visual
        w = float(self.opts.mouth_blend)
        st = self.family_state
        audio = self.call(lambda: self.family.mouth(st, mel, frames)).to(visual.device, visual.dtype)
        return w * visual.to(audio.dtype) + (1.0 - w) * audio

