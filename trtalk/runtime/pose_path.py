"""The pipeline's pose path: tracked frames in, one pose code per output frame out.

Alignment. The official alignment fits one similarity to the *clip's average* three points
(`trtalk.face.align_frames`); a file is aligned that way (`clip_pose_source`: the whole clip is
known before the first frame). Live, the average is unknown, so `RunningAligner` fits the
similarity to a running average of the three points (cumulative over the first 2 s, then
exponential with a 2 s time constant) and, as officially, each frame's translation puts its own
mouth on the template mouth, smoothed 0.2 old / 0.8 new. (A per-frame similarity would also cancel
the head's roll, which the pose encoder must see.)

Codes. Per output frame at time t the newest sample at or before t is used; the family encodes
it (`ModelFamily.pose`); `PoseState` smooths codes exponentially (``smoothing``) and, when the
face or the camera is lost, holds the last pose for ``hold_s`` and then eases (smoothstep) to the
avatar's own pose over ``ease_s``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from trtalk.face import TEMPLATE, align_clip, align_image, apply_affine, crop_matrix, similarity_transform, three_points
from trtalk.families.base import Avatar, FamilyState, ModelFamily, NetworkCall, PoseInput, direct_call
from trtalk.runtime.sources import Source, SourceEvent, VideoFileSource, VideoFrame

log = logging.getLogger(__name__)


class RunningAligner:
    """The live version of the PC-AVS clip alignment (see the module docstring).

    ``update(points)`` takes one frame's (3, 2) three points and returns its 2x3 ``M_i``;
    ``reset_smoothing()`` restarts the mouth-offset smoothing (after the face was lost).
    """

    def __init__(self, fps: float, tau_s: float = 2.0) -> None:
        self.n_max = max(1, int(round(tau_s * fps)))
        self.count = 0
        self.mean: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    def update(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        self.count = min(self.count + 1, self.n_max)
        # 1/count: cumulative mean until n_max frames, then an exponential average.
        self.mean = pts.copy() if self.mean is None else self.mean + (pts - self.mean) / self.count
        base = similarity_transform(self.mean, TEMPLATE)
        bias = TEMPLATE[2] - apply_affine(base, pts[2])
        self.bias = bias if self.bias is None else 0.2 * self.bias + 0.8 * bias
        m = base.copy()
        m[:, 2] += self.bias
        return m

    def reset_smoothing(self) -> None:
        self.bias = None


@dataclass(frozen=True)
class PoseSample:
    """A tracked frame: the 224 crop and face mesh (None without a face), the crop matrix, and the
    full frame when kept (paste-back)."""

    t: float
    captured: float
    index: int
    found: bool
    crop: np.ndarray | None
    crop_m: np.ndarray | None
    frame: np.ndarray | None
    mesh: np.ndarray | None = None

    def at(self, frame: VideoFrame) -> "PoseSample":
        """The same tracking result for another (identical) frame's time and index."""
        return PoseSample(frame.t, frame.captured, frame.index, self.found, self.crop, self.crop_m,
                          self.frame, self.mesh)


class FaceTracker:
    """FrameProcessor for live video: face tracking + running alignment -> `PoseSample`.

    Runs in the source's capture thread (mediapipe's graph is created there, in ``open``).
    A frame that is the very same array as the previous one (a still image replayed) reuses the
    previous result. ``keep_frames`` keeps the full frame in the sample (for paste-back).
    """

    def __init__(self, fps: float, keep_frames: bool = False) -> None:
        self.fps = fps
        self.keep_frames = keep_frames
        self._det: Any = None
        self._aligner = RunningAligner(fps)
        # The previous frame itself (not its id: a freed array's id can be reused by the next).
        self._last: tuple[np.ndarray, PoseSample] | None = None

    def open(self) -> None:
        from trtalk.face import FaceMeshDetector

        self._det = FaceMeshDetector(static_image_mode=False, max_num_faces=1)

    def close(self) -> None:
        if self._det is not None:
            self._det.close()
            self._det = None

    def __call__(self, frame: VideoFrame) -> PoseSample:
        if self._last is not None and self._last[0] is frame.image:
            return self._last[1].at(frame)
        faces = self._det.detect3d(frame.image)
        kept = frame.image if self.keep_frames else None
        if not faces:
            self._aligner.reset_smoothing()
            sample = PoseSample(frame.t, frame.captured, frame.index, False, None, None, kept)
        else:
            m = self._aligner.update(three_points(faces[0]))
            sample = PoseSample(frame.t, frame.captured, frame.index, True, align_image(frame.image, m),
                                crop_matrix(m), kept, faces[0])
        self._last = (frame.image, sample)
        return sample


def pingpong(t: int, n: int) -> int:
    """Index into ``n`` frames that runs 0..n-1, n-1..0, 0.. (the official pose loop)."""
    if n <= 1:
        return 0
    period, r = divmod(t, n)
    return r if period % 2 == 0 else n - 1 - r


class _ClipFrames:
    """FrameProcessor that looks up the pre-aligned clip's sample of each replayed frame."""

    def __init__(self, clip: Any, frames: Sequence[np.ndarray] | None) -> None:
        self.clip = clip
        self.frames = frames

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, frame: VideoFrame) -> PoseSample:
        j = frame.key
        c = self.clip
        mesh = c.landmarks[j] if c.landmarks is not None and bool(c.found[j]) else None
        return PoseSample(frame.t, frame.captured, frame.index, True, c.crops[j], c.crop_matrices[j],
                          self.frames[j] if self.frames else None, mesh)


class ClipPoseSource(VideoFileSource):
    """Replays a clip aligned as a whole (the official alignment) as pose samples, looping
    forward and backward (the official loader's loop) at the clip's frame rate (25 for stills)."""

    def __init__(self, path: str | Path, clip: Any, frames: Sequence[np.ndarray] | None = None,
                 capacity: int = 8, **kw: Any) -> None:
        super().__init__(path, fps=clip.fps or 25.0, loop=True, capacity=capacity, **kw)
        self.clip = clip
        self.processor = _ClipFrames(clip, frames)

    def _frames(self):
        n = len(self.clip)
        i = 0
        while True:
            yield pingpong(i, n), None
            i += 1


def clip_pose_source(path: str | Path, keep_frames: bool = False, **kw: Any) -> ClipPoseSource:
    """A pose file (video, image or folder) aligned as a whole and replayed as pose samples."""
    clip, frames = align_clip(path, keep_frames)
    return ClipPoseSource(path, clip, frames or None, **kw)


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


class PoseState:
    """Temporal smoothing of pose codes and the hold-then-ease fallback when the face is lost."""

    def __init__(self, ref: torch.Tensor, smoothing: float, hold_s: float, ease_s: float) -> None:
        self.ref = ref.reshape(-1)
        self.a = smoothing
        self.hold_s = hold_s
        self.ease_s = ease_s
        self.current: torch.Tensor | None = None
        self.last_good: torch.Tensor | None = None
        self.lost_since: float | None = None

    def update(self, t: float, code: torch.Tensor | None) -> torch.Tensor:
        if code is not None:
            code = code.reshape(-1)
            if self.current is None or self.a == 0:
                self.current = code
            else:
                self.current = self.a * self.current + (1 - self.a) * code
            self.last_good = self.current
            self.lost_since = None
            return self.current
        if self.lost_since is None:
            self.lost_since = t
        held = self.last_good if self.last_good is not None else self.ref
        w = _smoothstep((t - self.lost_since - self.hold_s) / self.ease_s) if self.ease_s > 0 else 1.0
        self.current = (1 - w) * held + w * self.ref
        return self.current


@dataclass(frozen=True)
class PoseConfig:
    """Pose-path options: code smoothing (0 = none; default 0.5 live, 0 for pre-aligned files),
    hold and ease times when the face is lost, how old a sample may be before the camera counts as
    lost."""

    smoothing: float | None = None
    hold_s: float = 0.3
    ease_s: float = 1.0
    camera_timeout_s: float = 0.5


class PosePath:
    """Selects, encodes, smooths and holds pose codes for output frames (see the module docstring).

    ``source`` None: the family's still pose for every frame. ``family_state``: the stream's
    family state (None: a new one); ``call(fn)`` runs the pose encoder (`trtalk serve`: on its
    worker thread). ``plan``: the stream's `trtalk.runtime.inputs.InputPlan`, whose pose source
    sets the codes' default smoothing (``plan.pose_smoothing``: none for a clip aligned as a
    whole, 0.5 live).
    """

    def __init__(self, cfg: PoseConfig, family: ModelFamily, avatar: Avatar, source: Source | None,
                 fps: float, realtime: bool, *, family_state: FamilyState | None = None,
                 call: NetworkCall = direct_call, plan: Any) -> None:
        self.cfg = cfg
        self.family = family
        self.family_state = family_state if family_state is not None else family.new_state()
        self.call = call
        self.avatar = avatar
        self.src = source
        self.fps = fps
        self.realtime = realtime
        smoothing = cfg.smoothing
        if smoothing is None:
            smoothing = plan.pose_smoothing
        self.state = PoseState(avatar.ref_pose, smoothing, cfg.hold_s, cfg.ease_s)
        self.t0 = 0.0
        self._samples: collections.deque[PoseSample] = collections.deque(maxlen=max(8, int(2 * fps)))
        self._events: collections.deque[SourceEvent] = collections.deque()
        self._horizon = -math.inf  # time of the newest pose item seen
        self.ended = source is None
        self.camera_lost = False
        self.camera_lost_frames = 0
        self.camera_lost_episodes = 0
        #: per emitted frame (pose source only; the last 4096 to 8192 frames): True where the
        #: pose was held/eased, not tracked
        self.held: list[bool] = []
        self.face_lost = False
        self.last_sample: PoseSample | None = None
        self.last_good_sample: PoseSample | None = None
        #: generated motion (`trtalk.runtime.motion_path.MotionPose`) used when there is no source
        self.motion: Any = None

    def _on_item(self, item: Any) -> None:
        if isinstance(item, PoseSample):
            self._samples.append(item)
            self._horizon = max(self._horizon, item.t)
        elif isinstance(item, SourceEvent):
            self._horizon = max(self._horizon, item.t)
            if item.kind == "end":
                self.ended = True
            else:
                self._events.append(item)

    def _gather(self, t: float, stop: threading.Event) -> None:
        assert self.src is not None
        q = self.src.queue
        if self.realtime:
            # Live: take whatever arrived; the newest matters (older ones fall off the deque).
            while (item := q.get_nowait()) is not None:
                self._on_item(item)
            return
        # A replay pulls only up to the first item past t: draining "until empty" races with a
        # fast producer and could push the samples frame t needs off the bounded deque.
        while not self.ended and self._horizon <= t and not stop.is_set():
            item = q.get(timeout=0.1)
            if item is not None:
                self._on_item(item)
            elif q.closed:
                self.ended = True

    def _select(self, t: float) -> tuple[PoseSample | None, bool]:
        """(sample for time t, lost?) and the camera-lost bookkeeping."""
        while self._events and self._events[0].t <= t:
            ev = self._events.popleft()
            if ev.kind == "lost" and not self.camera_lost:
                self.camera_lost = True
                self.camera_lost_episodes += 1
                log.warning("camera %s lost%s: holding the last pose, easing to the avatar's pose",
                            self.src.name if self.src else "", f" ({ev.detail})" if ev.detail else "")
            elif ev.kind == "recovered" and self.camera_lost:
                self.camera_lost = False
                log.info("camera is back; following the head again")
        chosen = None
        for s in self._samples:
            if s.t <= t + 1e-9:
                chosen = s
            else:
                break
        if chosen is None and self.realtime and self._samples:
            chosen = self._samples[0]
        if chosen is not None:
            self.last_sample = chosen
        stale = chosen is None or (t - chosen.t > self.cfg.camera_timeout_s)
        lost_cam = self.camera_lost or (stale and not self.ended)
        if chosen is not None and chosen.found and not lost_cam:
            if self.face_lost:
                self.face_lost = False
                log.info("face found again")
            self.last_good_sample = chosen
            return chosen, False
        if lost_cam:
            self.camera_lost_frames += 1
        elif chosen is not None and not chosen.found and not self.face_lost:
            self.face_lost = True
            log.info("no face in the camera frame: holding the last pose, easing to the avatar's pose")
        if self.ended and chosen is not None and chosen.found:
            return chosen, False  # a finished file holds its last frame
        return chosen, True

    def codes(self, frames: Sequence[int], stop: threading.Event,
              mel: torch.Tensor | None = None) -> tuple[torch.Tensor, list[PoseSample | None]]:
        """Pose codes B x P of ``frames`` and the sample each one used (None: none). ``mel``:
        the frames' mel windows, which generated motion (`motion`) reads."""
        if self.src is None and self.motion is not None:
            if mel is None:
                raise ValueError("generated motion needs the frames' mel windows")
            return self.motion.codes(frames, mel), [None] * len(frames)
        if self.src is None:
            return self.family.still_pose(self.avatar, frames, self.fps), [None] * len(frames)
        picks: list[tuple[PoseSample | None, bool]] = []
        for k in frames:
            t = self.t0 + k / self.fps
            self._gather(t, stop)
            picks.append(self._select(t))
        use = [i for i, (s, lost) in enumerate(picks) if s is not None and not lost and s.crop is not None]
        inputs = [PoseInput(picks[i][0].crop, picks[i][0].mesh) for i in use]  # type: ignore[union-attr]
        st = self.family_state
        encoded = self.call(lambda: self.family.pose(st, inputs)) if use else None
        by_frame = dict(zip(use, encoded)) if encoded is not None else {}
        out = []
        for i, k in enumerate(frames):
            code = by_frame.get(i)
            self.held.append(code is None)
            out.append(self.state.update(self.t0 + k / self.fps, code))
        if len(self.held) > 8192:  # a day-long stream must not grow it without bound
            del self.held[:-4096]
        return torch.stack(out), [s for s, _ in picks]
