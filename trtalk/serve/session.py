"""One browser session: the stream's pipeline with the browser as its source and sink.

- `PushAudioSource`: the browser's microphone, pushed in from the WebRTC track (16 kHz mono
  float32), timestamped from its sample counter like `trtalk.runtime.sources.MicSource`.
- `PushVideoSource`: the browser's camera; its thread runs a `FrameProcessor` (the pose tracker)
  on the newest frame only.
- `TrackSink`: the pipeline's frames and the audio that drove them, handed to the WebRTC output
  tracks (`trtalk.serve.tracks`), which send the audio delayed to stay in step with the video.
- `ScheduledStep`: the `FrameStep` whose inference goes through the shared `BatchScheduler`
  instead of calling the family itself (compose, paste-back and layout are the step's own).
- `Session`: a `Pipeline` (audio path, pose path, latency report: the same code `trtalk stream`
  runs) on its own thread, over the server's one family (shared networks) with its own
  `FamilyState` (followers, blinks, controls); its network calls run on the scheduler's worker.

Pose sources are rows of `POSE_CHOICES`: a name, whether it needs the browser's camera, and a
function that makes the pipeline's pose source (None: the family's still pose). Lip sources are
rows of `MOUTH_CHOICES` (the stream's ``--mouth``): the voice, or the lips the camera sees (the
pose's camera frames, so only with the webcam pose), or both mixed. `session_plan` turns the
page's two choices into the session's input plan (`trtalk.runtime.inputs.plan_inputs`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trtalk.audio.fifo import SampleQueue
from trtalk.media.sinks import FrameSink
from trtalk.runtime.clock import RealClock
from trtalk.families.base import Avatar, ModelFamily, PoseInput
from trtalk.motion.style import MotionStyle
from trtalk.runtime.latency import FrameTiming, LatencyRecorder
from trtalk.runtime.inputs import InputPlan, InputRequest, plan_inputs
from trtalk.runtime.mouth_path import MouthOptions
from trtalk.runtime.pipeline import Pipeline, PipelineConfig
from trtalk.runtime.sources import SAMPLE_RATE, AudioChunk, AudioSource, QueueClosed, Source, VideoFrame
from trtalk.runtime.step import FrameStep
from trtalk.serve.scheduler import BatchScheduler, WorkerError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- sources


class PushAudioSource(AudioSource):
    """Audio pushed in by the WebRTC receiver (`push`); the thread only waits for the end."""

    def __init__(self, name: str, capacity: int = 512) -> None:
        super().__init__(name, capacity, block=960)  # a WebRTC audio frame: 20 ms at 48 kHz, 320 samples at 16 kHz
        self.duration_s = None
        self._first: float | None = None
        self._counted = 0
        self._started = threading.Event()
        self.last_push = time.monotonic()
        self.samples_pushed = 0

    def push(self, samples: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples that arrived now."""
        now = self.clock.now() if self.clock else time.monotonic()
        self.last_push = now
        if self.clock is None:  # not started yet: nothing to stamp against
            return
        if self._first is None:
            self._first = now - len(samples) / SAMPLE_RATE
            self._started.set()
        # Behind the clock by more than 0.2 s (packets lost, a stall): jump, the pipeline fills
        # the gap with silence. Never ahead of the clock.
        expected = self._first + (self._counted + len(samples)) / SAMPLE_RATE
        if now - expected > 0.2:
            self._counted += int((now - expected) * SAMPLE_RATE)
        t = self._first + self._counted / SAMPLE_RATE
        self._counted += len(samples)
        self.samples_pushed += len(samples)
        try:
            self.queue.put(AudioChunk(t, samples, now))
        except QueueClosed:
            pass

    @property
    def jumped(self) -> int:
        """Samples jumped over so far (pushes that came more than 0.2 s behind the clock): a
        pusher keeping its own timeline (`trtalk.integrations.face.AgentFace`) follows them."""
        return self._counted - self.samples_pushed

    def first_sample_time(self, timeout: float, stop: threading.Event | None = None) -> float | None:
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.02):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return None
        return self._first

    def _run(self) -> None:
        self._stop.wait()


class PushVideoSource(Source):
    """Camera frames pushed in by the WebRTC receiver; the thread processes the newest one."""

    kind = "video"

    def __init__(self, name: str, processor: Any = None, capacity: int = 4) -> None:
        super().__init__(name, capacity)
        self.processor = processor
        self._slot: Any = None
        self._slot_t = 0.0
        self._cond = threading.Condition()
        self._index = 0
        self.last_push = time.monotonic()

    def push(self, image: Any) -> None:
        """The newest camera frame: an RGB array or a decoded ``av.VideoFrame`` (converted on
        this source's thread, and only if it is still the newest when the thread takes it)."""
        now = self.clock.now() if self.clock else time.monotonic()
        self.last_push = now
        with self._cond:
            self._slot, self._slot_t = image, now
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._cond.notify_all()
        super().close()

    def _run(self) -> None:
        proc = self.processor
        if proc is not None:
            proc.open()
        try:
            while not self.stopping:
                with self._cond:
                    while self._slot is None and not self.stopping:
                        self._cond.wait(0.2)
                    if self.stopping:
                        return
                    image, t = self._slot, self._slot_t
                    self._slot = None
                if not isinstance(image, np.ndarray):
                    image = image.to_ndarray(format="rgb24")
                frame = VideoFrame(t, image, t, self._index)
                self._index += 1
                self.queue.put(proc(frame) if proc is not None else frame)
        finally:
            if proc is not None:
                proc.close()


# ----------------------------------------------------------------------------- pose choices


@dataclass(frozen=True)
class PoseChoice:
    """A pose source the page offers: ``make(session)`` returns the pipeline's pose source (None:
    none), ``camera`` says whether the page sends its camera, ``pose`` is what it asks of the input
    plan (`session_plan`: ``--pose auto`` for generated motion)."""

    label: str
    camera: bool
    make: Callable[["Session"], Source | None]
    pose: str | None = None


def _webcam(session: "Session") -> Source:
    from trtalk.runtime.pose_path import FaceTracker

    # The camera's frames themselves are not kept: paste-back goes into the avatar's photo.
    return PushVideoSource(f"browser-camera:{session.id}", FaceTracker(session.cfg.fps))


def avatar_background(k: int, sample: Any) -> None:
    """A session's paste-back background for every frame: None, i.e. the avatar's photo."""
    return None


#: The page's pose choices, in order (first: the default).
POSE_CHOICES: dict[str, PoseChoice] = {
    "still": PoseChoice("still: the avatar's own pose", False, lambda s: None),
    "webcam": PoseChoice("webcam: follow your head", True, _webcam),
    "auto": PoseChoice("auto: head motion from your speech", False, lambda s: None, "auto"),
}


@dataclass(frozen=True)
class MouthChoice:
    """A lip source the page offers (``--mouth`` of `trtalk.runtime.mouth_path.MouthOptions`);
    ``camera``: it reads the camera frames the webcam pose tracks."""

    label: str
    camera: bool


#: The page's lip choices, in order (first: the default). The camera ones need a family with a
#: visual mouth (`ModelFamily.has_visual_mouth`) and the webcam pose.
MOUTH_CHOICES: dict[str, MouthChoice] = {
    "audio": MouthChoice("voice: lips from your speech", False),
    "webcam": MouthChoice("camera: lips from your own mouth", True),
    "blend": MouthChoice("both: speech and camera mixed", True),
}


def mouth_choices(family: ModelFamily) -> dict[str, MouthChoice]:
    """The lip choices ``family`` can serve."""
    return {k: c for k, c in MOUTH_CHOICES.items() if not c.camera or family.has_visual_mouth}


def session_plan(family: ModelFamily, pose: str, mouth: MouthOptions) -> InputPlan:
    """The input plan (`trtalk.runtime.inputs`) of a session with the page's ``pose`` choice (a
    `POSE_CHOICES` key) and lip source; a one-line `TrtalkError` for a combination that cannot run."""
    choice = POSE_CHOICES[pose]
    return plan_inputs(InputRequest(pose=choice.pose, pose_static=pose == "still", webcam=choice.camera, mic=True,
                                    mouth=mouth, front="serve"), family.capabilities, family.name)


# ----------------------------------------------------------------------------- sink


class TrackSink(FrameSink):
    """Frames and driving audio for the WebRTC output tracks (thread-safe hand-over).

    ``notify()`` is called (from the pipeline's thread) after every frame; the server sets it to
    wake the video track in the event loop.
    """

    accepts_audio = True

    def __init__(self, fps: float, max_frames: int = 8) -> None:
        self.fps = fps
        self._lock = threading.Lock()
        self._frames: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=max_frames)
        self._audio = SampleQueue()  # written, not yet handed to the audio track
        self._audio_pos = 0  # samples written so far (16 kHz)
        self._audio_read = 0  # samples handed to the audio track (or skipped) so far
        self.video_end_samples = 0  # audio samples the emitted video covers
        self.frames_dropped = 0
        self.notify: Callable[[], None] = lambda: None

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        k = int(round((pts_s or 0.0) * self.fps))
        with self._lock:
            if len(self._frames) == self._frames.maxlen:
                self.frames_dropped += 1
            self._frames.append((k, frame_rgb))
            self._frames_written += 1
            self.video_end_samples = max(self.video_end_samples, int((k + 1) * SAMPLE_RATE / self.fps))
        self.notify()

    def write_audio(self, samples: np.ndarray) -> None:
        with self._lock:
            self._audio.push(samples)
            self._audio_pos += len(samples)
            # keep at most 10 s (a stalled video track must not grow this without bound)
            self._audio_read += self._audio.drop(len(self._audio) - 10 * SAMPLE_RATE)

    def next_frame(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            return self._frames.popleft() if self._frames else None

    def read_audio(self, n: int, max_lag_s: float = 0.3) -> np.ndarray | None:
        """``n`` samples of the driving audio once the video has reached them; None while it has
        not (the track sends silence). Audio more than ``max_lag_s`` behind the video skips ahead."""
        with self._lock:
            if self._audio_read + n > self.video_end_samples or self._audio_read + n > self._audio_pos:
                return None
            lag = self.video_end_samples - (self._audio_read + n)
            if lag > max_lag_s * SAMPLE_RATE:
                self._audio_read += self._audio.drop(min(lag - n, self._audio_pos - self._audio_read - n))
            out, got = self._audio.take(n)
            self._audio_read += got
            return out

    def close(self) -> None:
        self._closed = True
        self.notify()


# ----------------------------------------------------------------------------- step


class ScheduledStep(FrameStep):
    """`FrameStep` whose crops come from the shared scheduler (see the module docstring)."""

    def __init__(self, family: ModelFamily, avatar: Avatar, scheduler: BatchScheduler,
                 session: "Session", **kw: Any) -> None:
        super().__init__(family, avatar, **kw)
        self.scheduler = scheduler
        self.session = session
        self._last: np.ndarray | None = None
        self.deadline_drops = 0

    def infer(self, frames: Sequence[int], mel: torch.Tensor, pose: torch.Tensor,
              mouth: torch.Tensor | None = None,
              camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        p = self.session.pipeline
        deadlines = [p.t0 + p.audio.need_samples(k) / SAMPLE_RATE + p.cfg.max_delay_s for k in frames]
        futures = self.scheduler.submit(self.session.id, self.state, self.avatar, mel, frames, pose,
                                        deadlines, mouth=mouth, camera=camera)
        out = []
        for fut in futures:
            crop = fut.result(timeout=30)
            if crop is None:
                self.deadline_drops += 1
                p.latency.drop("frames_deadline")
                crop = self._last if self._last is not None else self.avatar.crop
            self._last = crop
            out.append(crop)
        return np.stack(out)


class MeteredRecorder(LatencyRecorder):
    """The pipeline's latency recorder that also feeds the server's metrics per frame."""

    def __init__(self, fps: float, on_frame: Callable[[FrameTiming], None]) -> None:
        super().__init__(fps, True, window=500)
        self.on_frame = on_frame

    def add(self, rec: FrameTiming) -> None:
        super().add(rec)
        self.on_frame(rec)


# ----------------------------------------------------------------------------- session


class Session:
    """One browser's stream: a `Pipeline` on its own thread (see the module docstring).

    ``on_end(session)`` runs on that thread when the pipeline stops (``error`` says why, if it
    failed); ``on_frame(session, timing)`` after every frame. ``motion_style``: the head motion
    style of pose "auto" (None: the config's ``--motion-style``, else the generic style).
    """

    def __init__(self, sid: str, cfg: PipelineConfig, family: ModelFamily, avatar: Avatar,
                 scheduler: BatchScheduler, pose: str,
                 on_end: Callable[["Session"], None] = lambda s: None,
                 on_frame: Callable[["Session", FrameTiming], None] = lambda s, r: None,
                 plan: InputPlan | None = None, motion_style: MotionStyle | None = None) -> None:
        self.id = sid
        self.cfg = cfg
        self.family = family
        self.avatar = avatar
        self.scheduler = scheduler
        self.pose_name = pose
        self.choice = POSE_CHOICES[pose]
        self.on_end = on_end
        self.error: str | None = None
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.audio = PushAudioSource(f"browser-mic:{sid}")
        self.video: Source | None = self.choice.make(self)
        self.sink = TrackSink(cfg.fps)
        # Paste-back means into the avatar's photo, never the browser's camera frame (that is the
        # user's own face: pasting the avatar's face, hair and background onto it is a face swap).
        #: this stream's state in the server's shared family (blinks, smoothing, controls)
        self.family_state = family.new_state()
        # what runs a network (pose encoding, the lips read from camera frames, the audio mouth a
        # blend mixes in) runs on the worker thread
        self.pipeline = Pipeline(cfg, family, avatar, self.audio, self.video, [self.sink], RealClock(),
                                 background=avatar_background, family_state=self.family_state,
                                 call=scheduler.call, plan=plan or session_plan(family, pose, cfg.mouth_source),
                                 motion_style=motion_style)
        self.pipeline.step = ScheduledStep(family, avatar, scheduler, self, state=self.family_state,
                                           layout=cfg.layout, paste_back=cfg.paste_back)
        self.pipeline.latency = MeteredRecorder(cfg.fps, lambda rec: on_frame(self, rec))
        self._thread: threading.Thread | None = None
        #: frames/s over the last 2 s, once the session is 3 s old (the admission check reads it)
        self.recent_fps: float | None = None
        self._marks: collections.deque[tuple[float, int]] = collections.deque()

    def sample_rate(self, now: float) -> None:
        """Record the frame count at ``now`` and update `recent_fps`."""
        self._marks.append((now, self.sink.frames_written))
        while len(self._marks) > 1 and now - self._marks[0][0] > 2.0:
            self._marks.popleft()
        t0, n0 = self._marks[0]
        if now - self.started >= 3.0 and now - t0 >= 1.0:
            self.recent_fps = (self.sink.frames_written - n0) / (now - t0)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        # The push sources take audio/video as soon as the tracks deliver, before the pipeline
        # thread has started them.
        self.audio.clock = RealClock()
        if self.video is not None:
            self.video.clock = self.audio.clock
        self._thread = threading.Thread(target=self._run, name=f"trtalk-session-{self.id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.pipeline.run(self.stop)
        except WorkerError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one session's failure, reported to it
            log.exception("session %s failed", self.id)
            self.error = f"the session failed: {type(exc).__name__}: {exc}"
        finally:
            self.sink.close()
            self.on_end(self)

    def fail(self, message: str) -> None:
        """End the session with ``message`` for its page (first reason wins)."""
        if self.error is None:
            self.error = message
        self.stop.set()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.audio.close()
        if self.video is not None:
            self.video.close()

    def stats(self) -> dict[str, Any]:
        """The page's latency figure: the stream report's numbers over the last frames."""
        rep = self.pipeline.report()
        return {"type": "stats", "frames": rep.frames, "fps": rep.fps_achieved,
                "mic_to_frame_ms": rep.mic_to_frame_ms, "speech_to_frame_ms": rep.speech_to_frame_ms,
                "dropped": rep.frames_dropped,
                "lookahead_ms": rep.lookahead_ms.get("p50"),
                "mouth": self.cfg.mouth_source.source,
                "mouth_camera_frames": self.pipeline.mouth.visual_frames}
