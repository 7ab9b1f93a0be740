"""The streaming runtime: live (or replayed) audio and pose in, talking-face frames out.

Threads: one capture thread per source (:mod:`trtalk.runtime.sources`; the camera's thread also
runs face tracking, so mediapipe lives in one thread) and one inference thread -- the caller of
:meth:`StreamPipeline.run` -- which turns audio into mel, picks poses, runs the networks and
writes the sinks. Every hand-over is a :class:`~trtalk.runtime.sources.BoundedQueue`.

Timeline. ``t0`` is the clock time the sources start. Output frame k shows time
``t_k = t0 + k / fps``; its audio window is the official one, mel rows
``[window_start(k), window_start(k) + 20)``, which ends ``audio_lookahead_s(fps)`` after
``t_k`` (120 ms at 25 fps). So a frame can only be made once audio up to ``t_k + 0.12 s`` has
been captured: the stream's built-in audio latency is the 120 ms lookahead plus the audio block
(20 ms by default, which at 25 fps adds nothing because windows end on 40 ms boundaries).
Audio sample n sits at ``t0 + n / 16000``; chunks are placed by their timestamps, gaps (device
lost, ring overflow) are filled with silence -- a closed mouth -- and overlaps trimmed. The audio
that drove the lips is what audio sinks (the recorder) get, so recordings stay in sync.

Audio gain. The official frontend scales the whole file to RMS 0.1, which a live stream cannot
know in advance. ``StreamConfig.audio_gain``: a number fixes the gain; ``None`` (default) uses
the exact whole-file gain when the source is a (non-looping) file -- then the stream's mel equals
the offline renderer's bit for bit -- and otherwise a running estimate: an exponential average
(time constant 3 s) of the mean square of blocks louder than -50 dBFS (so pauses do not pull the
gain up), RMS floored at 0.01 (gain at most 10) and starting at 0.05. Speech-only RMS is higher
than the official whole-file RMS, which includes pauses, so live mouths open slightly less.

Pose. Per camera frame: mediapipe landmarks -> three points -> a running alignment. The official
alignment fits one similarity to the *clip's average* three points; live, the average is unknown,
so the similarity is fitted to a running average of the three points (cumulative over the first
2 s, then exponential with a 2 s time constant) and, as officially, each frame's translation puts
its own mouth on the template mouth, smoothed 0.2 old / 0.8 new. (A per-frame similarity would
also cancel the head's roll, which the pose encoder must see.) The aligned crop goes through the
pose encoder (cached by crop content, so a looping file or a still costs one encoding per distinct
frame); codes are smoothed exponentially (``pose_smoothing``). When the face or the camera is
lost, the last pose is held for ``lost_hold_s`` and then eased (smoothstep) to the avatar's own
pose over ``lost_ease_s``.

Falling behind. On a real-time clock, frames whose due time passed by more than ``max_delay_s``
are dropped (counted as ``frames_late``), at most ``batch`` frames go through the generator at
once (fewer when the measured cost per frame would make a batch outlast ``max_delay_s``), and full
source queues drop their oldest items. On a virtual clock nothing is dropped:
sources wait for room, and the frames are emitted at their ideal times
(``t_k + lookahead``), so a replay runs as fast as the CPU allows with the timestamps of a
real-time run without compute delay.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from trtalk.audio import (
    MelConfig,
    StreamingMel,
    audio_lookahead_s,
    rms_gain,
    window_start,
)
from trtalk.audio.mel import MEL_WINDOW_FRAMES
from trtalk.errors import TrtalkError
from trtalk.face import (
    TEMPLATE,
    PasteBack,
    align_image,
    apply_affine,
    crop_matrix,
    similarity_transform,
    three_points,
    to_tensor,
)
from trtalk.runtime.clock import Clock, RealClock
from trtalk.runtime.latency import FrameTiming, LatencyRecorder, LatencyReport
from trtalk.runtime.sources import (
    SAMPLE_RATE,
    AudioChunk,
    AudioFileSource,
    Source,
    SourceEvent,
    VideoFileSource,
    VideoFrame,
)

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random weights - no checkpoint"


@dataclass
class StreamConfig:
    """Options of the streaming pipeline; see the module docstring for what they mean."""

    avatar: Path
    fps: float = 25.0
    duration: float | None = None
    batch: int = 4
    paste_back: bool = False
    audio_gain: float | None = None
    pose_smoothing: float = 0.5
    lost_hold_s: float = 0.3
    lost_ease_s: float = 1.0
    audio_timeout_s: float = 0.25
    camera_timeout_s: float = 0.5
    max_delay_s: float = 0.5
    device: str = "cpu"
    stats_interval_s: float | None = None
    pose_cache: int = 256
    # Running-gain parameters (live audio).
    gain_tau_s: float = 3.0
    gain_gate_rms: float = 10 ** (-50 / 20)
    gain_floor_rms: float = 0.01
    gain_start_rms: float = 0.05

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise TrtalkError(f"--fps must be a positive number, got {self.fps}")
        if self.batch < 1:
            raise TrtalkError("batch must be >= 1")
        if self.duration is not None and self.duration <= 0:
            raise TrtalkError("--duration must be > 0 seconds")
        if self.audio_gain is not None and not self.audio_gain > 0:
            raise TrtalkError("the audio gain must be > 0")


# --------------------------------------------------------------------------- pose tracking


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
    """A tracked camera frame: the 224 crop (None without a face), its crop matrix, the frame."""

    t: float
    captured: float
    index: int
    found: bool
    crop: np.ndarray | None
    crop_m: np.ndarray | None
    frame: np.ndarray | None


class PoseTracker:
    """FrameProcessor for video sources: face tracking + running alignment -> PoseSample.

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
            prev = self._last[1]
            return PoseSample(frame.t, frame.captured, frame.index, prev.found, prev.crop, prev.crop_m,
                              prev.frame)
        faces = self._det.detect3d(frame.image)
        if not faces:
            self._aligner.reset_smoothing()
            sample = PoseSample(frame.t, frame.captured, frame.index, False, None, None,
                                frame.image if self.keep_frames else None)
        else:
            m = self._aligner.update(three_points(faces[0]))
            sample = PoseSample(frame.t, frame.captured, frame.index, True, align_image(frame.image, m),
                                crop_matrix(m), frame.image if self.keep_frames else None)
        self._last = (frame.image, sample)
        return sample


# --------------------------------------------------------------------------- avatar


@dataclass
class Avatar:
    """The identity: image, aligned crop, crop matrix, and its encodings (computed once)."""

    image: np.ndarray
    crop: np.ndarray
    crop_m: np.ndarray
    id_vec: torch.Tensor
    id_map: torch.Tensor
    ref_pose: torch.Tensor


_AVATAR_CACHE: dict[tuple[str, int], tuple[Any, Avatar]] = {}
_AVATAR_LOCK = threading.Lock()


def load_avatar(path: str | Path, runner: Any, device: str = "cpu") -> Avatar:
    """Align ``path`` (an image) and encode identity and reference pose, cached per image content
    and runner. No face -> TrtalkError (before any stream starts)."""
    from trtalk.face import align_frames
    from trtalk.media.read import iter_frames

    path = Path(path)
    if not path.is_file():
        raise TrtalkError(f"--avatar {path} does not exist; give a photo with one frontal face")
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    key = (digest, id(runner))
    with _AVATAR_LOCK:
        hit = _AVATAR_CACHE.get(key)
        # id() of a dead runner can be reused by a new one: check it is the same object.
        if hit is not None and hit[0] is runner:
            return hit[1]
    image = next(iter(iter_frames(path)))
    clip = align_frames([image], name=str(path))
    if not bool(clip.found[0]):
        raise TrtalkError(f"no face found in {path}; use a photo with one clearly visible, frontal face")
    x = to_tensor(clip.crops[:1]).to(device)
    id_vec, id_map = runner.encode_identity(x)
    ref_pose = runner.encode_pose(x)
    av = Avatar(image, clip.crops[0], clip.crop_matrices[0], id_vec, id_map, ref_pose)
    with _AVATAR_LOCK:
        _AVATAR_CACHE[key] = (runner, av)
    return av


def make_stream_runner(checkpoint: Path | None, backend: str = "torch", device: str = "cpu",
                       model_config: str = "full", seed: int = 0) -> tuple[Any, bool]:
    """The inference backend and whether it runs on seeded random weights (warned)."""
    if model_config not in ("full", "small"):
        raise TrtalkError(f"unknown --model-config {model_config!r}; use full or small")
    from trtalk.runtime.render import check_device

    check_device(device)
    if model_config == "small" and checkpoint is not None:
        raise TrtalkError("--model-config small is for tests with random weights; drop --checkpoint or the option")
    from trtalk.models.pcavs import PCAVSConfig
    from trtalk.runtime.render import make_runner

    return make_runner(checkpoint, backend, device, seed,
                       config=PCAVSConfig.small() if model_config == "small" else None)


# --------------------------------------------------------------------------- pose state


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
            self.current = code if self.current is None else self.a * self.current + (1 - self.a) * code
            self.last_good = self.current
            self.lost_since = None
            return self.current
        if self.lost_since is None:
            self.lost_since = t
        held = self.last_good if self.last_good is not None else self.ref
        w = _smoothstep((t - self.lost_since - self.hold_s) / self.ease_s) if self.ease_s > 0 else 1.0
        self.current = (1 - w) * held + w * self.ref
        return self.current


# --------------------------------------------------------------------------- pipeline


class _GainControl:
    def __init__(self, cfg: StreamConfig, fixed: float | None) -> None:
        self.cfg = cfg
        self.fixed = fixed
        self.ms = cfg.gain_start_rms ** 2

    def gain(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return 0.1 / max(self.cfg.gain_floor_rms, math.sqrt(self.ms))

    def observe(self, x: np.ndarray) -> None:
        if self.fixed is not None or x.size == 0:
            return
        ms = float(np.mean(np.square(x, dtype=np.float64)))
        if ms > self.cfg.gain_gate_rms ** 2:
            alpha = min(1.0, x.size / (self.cfg.gain_tau_s * SAMPLE_RATE))
            self.ms += alpha * (ms - self.ms)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _stamp(frame: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(frame).copy()
    h, w = out.shape[:2]
    scale = max(0.35, w / 900)
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y0 = h - th - base - 6
    out[y0:] = out[y0:] // 3
    cv2.putText(out, text, (4, h - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class StreamPipeline:
    """Runs one stream: ``run()`` blocks until the audio ends, ``duration`` is reached, ``stop``
    is set, or a sink asks to stop; returns the :class:`LatencyReport`.

    The pipeline starts and closes the sources; it writes but does not close the sinks (their
    owner does, so a recorder is finalised even when ``run`` raises). ``pose_source`` None means
    a static pose: the avatar's own.
    """

    def __init__(self, cfg: StreamConfig, runner: Any, audio: Source, pose_source: Source | None,
                 sinks: Sequence[Any], clock: Clock | None = None, random_weights: bool = False) -> None:
        self.cfg = cfg
        self.runner = runner
        self.audio_src = audio
        self.pose_src = pose_source
        self.sinks = list(sinks)
        self.audio_sinks = [s for s in self.sinks if s.accepts_audio]
        self.clock: Clock = clock or RealClock()
        self.random_weights = random_weights
        self.device = torch.device(cfg.device)
        self.realtime = self.clock.realtime
        self.avatar = load_avatar(cfg.avatar, runner, cfg.device)
        self.mel_cfg = MelConfig()
        fixed = cfg.audio_gain
        if fixed is None and isinstance(audio, AudioFileSource) and not audio.loop:
            fixed = rms_gain(audio.wave, self.mel_cfg)
        self.gain = _GainControl(cfg, fixed)
        self.mel = StreamingMel(self.mel_cfg, gain=self.gain.gain())
        self.lookahead_s = audio_lookahead_s(cfg.fps)
        self.latency = LatencyRecorder(cfg.fps, self.realtime)
        self.paster = PasteBack() if cfg.paste_back else None
        self.pose_state = PoseState(self.avatar.ref_pose, cfg.pose_smoothing, cfg.lost_hold_s, cfg.lost_ease_s)
        self._pose_cache: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self.pose_encodings = 0
        # audio state
        self.t0 = 0.0
        self._rows = np.zeros((0, self.mel_cfg.n_mels), np.float32)
        self._row_base = 0
        self.audio_pos = 0
        self._captured: collections.deque[tuple[int, float]] = collections.deque()
        self.audio_ended = False
        self.audio_lost = False
        self.silence_samples = 0
        self.clock_offset_max = 0.0
        self.audio_lost_episodes = 0
        # pose state
        self._samples: collections.deque[PoseSample] = collections.deque(maxlen=max(8, int(2 * cfg.fps)))
        self._pose_events: collections.deque[SourceEvent] = collections.deque()
        self._pose_horizon = -math.inf  # time of the newest pose item seen
        self.pose_ended = pose_source is None
        self.camera_lost = False
        self.camera_lost_frames = 0
        self.camera_lost_episodes = 0
        #: per emitted frame (pose source only): True where the pose was held/eased, not tracked
        self.pose_held: list[bool] = []
        self.face_lost = False
        self._last_sample: PoseSample | None = None
        self._last_good_sample: PoseSample | None = None
        self.last_slot = -1
        self.final_frames: int | None = None
        self.limit = None if cfg.duration is None else int(math.floor(cfg.duration * cfg.fps + 0.5))

    # -- audio -------------------------------------------------------------

    def need_samples(self, k: int) -> int:
        """Audio samples (from t0) that frame k's mel window needs."""
        return (window_start(k, self.cfg.fps) + MEL_WINDOW_FRAMES) * self.mel_cfg.hop

    def _push_audio(self, x: np.ndarray, captured: float) -> None:
        self.gain.observe(x)
        self.mel.gain = self.gain.gain()
        rows = self.mel.push(x)
        if len(rows):
            self._rows = np.concatenate([self._rows, rows])
        self.audio_pos += len(x)
        self._captured.append((self.audio_pos, captured))
        for s in self.audio_sinks:
            s.write_audio(x)

    def _fill_silence(self, until: int, captured: float) -> None:
        n = until - self.audio_pos
        if n > 0:
            self.silence_samples += n
            self._push_audio(np.zeros(n, np.float32), captured)

    def _on_audio_item(self, item: Any) -> None:
        tol = int(0.05 * SAMPLE_RATE)
        if isinstance(item, AudioChunk):
            x = item.samples
            n0 = int(round((item.t - self.t0) * SAMPLE_RATE))
            delta = n0 - self.audio_pos
            if delta > tol:
                self._fill_silence(n0, item.captured)
            elif delta < -tol:
                x = x[min(len(x), -delta):]
            else:
                self.clock_offset_max = max(self.clock_offset_max, abs(delta) / SAMPLE_RATE)
            if self.audio_lost:
                self.audio_lost = False
                log.info("microphone recovered; lips follow the audio again")
            if len(x):
                self._push_audio(x, item.captured)
        elif isinstance(item, SourceEvent):
            if item.kind == "lost":
                self._audio_lost_warning(item.detail)
            elif item.kind == "recovered":
                log.info("%s is back", self.audio_src.name)
            elif item.kind == "end":
                self._end_audio()

    def _audio_lost_warning(self, detail: str) -> None:
        if not self.audio_lost:
            self.audio_lost = True
            self.audio_lost_episodes += 1
            log.warning("microphone %s lost%s: continuing with silence (closed mouth) until it is back",
                        self.audio_src.name, f" ({detail})" if detail else "")

    def _end_audio(self) -> None:
        if self.audio_ended:
            return
        self.audio_ended = True
        rows = self.mel.flush()
        if len(rows):
            self._rows = np.concatenate([self._rows, rows])
        if self.audio_pos * 100 < MEL_WINDOW_FRAMES * SAMPLE_RATE:
            self.final_frames = 0
        else:
            self.final_frames = int(math.floor(self.audio_pos * self.cfg.fps / SAMPLE_RATE + 0.5))

    def _frames_ready(self, k: int, cap: int) -> int:
        end = self._end_frame()
        n = 0
        while n < cap and (end is None or k + n < end):
            if not self.audio_ended and self.need_samples(k + n) > self.audio_pos:
                break
            n += 1
        return n

    def _end_frame(self) -> int | None:
        ends = [e for e in (self.final_frames, self.limit) if e is not None]
        return min(ends) if ends else None

    def _wait_audio(self, k: int, stop: threading.Event) -> int:
        """Frames k.. whose audio is complete (0 when stopping or at the end)."""
        q = self.audio_src.queue
        cap = self.cfg.batch if not self.realtime else 10 ** 6
        while not stop.is_set():
            # Take audio only as far as the frames we may emit need: on a virtual clock the whole
            # file is available at once, and reading past the end frame would count as drift.
            want = self.need_samples(k + min(cap, 10 ** 4))
            while self.audio_pos < want and (item := q.get_nowait()) is not None:
                self._on_audio_item(item)
            n = self._frames_ready(k, cap)
            end = self._end_frame()
            if end is not None and k >= end:
                return 0
            if n >= cap or (n > 0 and (self.realtime or self.audio_ended)):
                return n
            if n > 0 and end is not None and k + n >= end:
                return n
            item = q.get(timeout=0.02 if self.realtime else 0.1)
            if item is not None:
                self._on_audio_item(item)
            elif self.realtime:
                need = self.need_samples(k)
                due = self.t0 + need / SAMPLE_RATE
                now = self.clock.now()
                if now > due + self.cfg.audio_timeout_s:
                    self._audio_lost_warning("no audio for %.0f ms" % (1000 * (now - due)))
                    self._fill_silence(need, now)
            elif self.audio_src.queue.closed and not len(q):  # source closed under us
                self._end_audio()
        return 0

    def _window(self, k: int) -> np.ndarray:
        ws = window_start(k, self.cfg.fps)
        out = np.zeros((MEL_WINDOW_FRAMES, self.mel_cfg.n_mels), np.float32)
        lo, hi = max(ws, self._row_base), min(ws + MEL_WINDOW_FRAMES, self._row_base + len(self._rows))
        if hi > lo:
            out[lo - ws: hi - ws] = self._rows[lo - self._row_base: hi - self._row_base]
        return out.T[None]  # (1, 80, 20) freq x time

    def _audio_captured(self, k: int) -> float:
        need = self.need_samples(k)
        for end, cap in self._captured:
            if end >= need:
                return cap
        return self._captured[-1][1] if self._captured else self.clock.now()

    def _prune(self, k: int) -> None:
        keep_from = window_start(k, self.cfg.fps)
        if keep_from - self._row_base > 256:
            cut = keep_from - self._row_base
            self._rows = self._rows[cut:]
            self._row_base += cut
        need = self.need_samples(k)
        while len(self._captured) > 1 and self._captured[1][0] < need:
            self._captured.popleft()

    # -- pose --------------------------------------------------------------

    def _on_pose_item(self, item: Any) -> None:
        if isinstance(item, PoseSample):
            self._samples.append(item)
            self._pose_horizon = max(self._pose_horizon, item.t)
        elif isinstance(item, SourceEvent):
            self._pose_horizon = max(self._pose_horizon, item.t)
            if item.kind == "end":
                self.pose_ended = True
            else:
                self._pose_events.append(item)

    def _gather_pose(self, t: float, stop: threading.Event) -> None:
        assert self.pose_src is not None
        q = self.pose_src.queue
        if self.realtime:
            # Live: take whatever arrived; the newest matters (older ones fall off the deque).
            while (item := q.get_nowait()) is not None:
                self._on_pose_item(item)
            return
        # A replay pulls only up to the first item past t: draining "until empty" races with a
        # fast producer and could push the samples frame t needs off the bounded deque.
        # A replay must not decide on a frame's pose before the frames up to its time arrived.
        while not self.pose_ended and self._pose_horizon <= t and not stop.is_set():
            item = q.get(timeout=0.1)
            if item is not None:
                self._on_pose_item(item)
            elif q.closed:
                self.pose_ended = True

    def _select_pose(self, t: float) -> tuple[PoseSample | None, bool]:
        """(sample for time t, lost?) and the camera-lost bookkeeping."""
        while self._pose_events and self._pose_events[0].t <= t:
            ev = self._pose_events.popleft()
            if ev.kind == "lost" and not self.camera_lost:
                self.camera_lost = True
                self.camera_lost_episodes += 1
                log.warning("camera %s lost%s: holding the last pose, easing to the avatar's pose",
                            self.pose_src.name if self.pose_src else "", f" ({ev.detail})" if ev.detail else "")
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
            self._last_sample = chosen
        stale = chosen is None or (t - chosen.t > self.cfg.camera_timeout_s)
        lost_cam = self.camera_lost or (stale and not self.pose_ended)
        if chosen is not None and chosen.found and not lost_cam:
            if self.face_lost:
                self.face_lost = False
                log.info("face found again")
            self._last_good_sample = chosen
            return chosen, False
        if lost_cam:
            self.camera_lost_frames += 1
        elif chosen is not None and not chosen.found and not self.face_lost:
            self.face_lost = True
            log.info("no face in the camera frame: holding the last pose, easing to the avatar's pose")
        if self.pose_ended and chosen is not None and chosen.found:
            return chosen, False  # a finished file holds its last frame
        return chosen, True

    def _pose_codes(self, idx: list[int], stop: threading.Event) -> tuple[torch.Tensor, list[PoseSample | None]]:
        if self.pose_src is None:
            return self.avatar.ref_pose.expand(len(idx), -1), [None] * len(idx)
        picks: list[tuple[PoseSample | None, bool]] = []
        for k in idx:
            t = self.t0 + k / self.cfg.fps
            self._gather_pose(t, stop)
            picks.append(self._select_pose(t))
        keys: list[bytes | None] = []
        todo: dict[bytes, np.ndarray] = {}
        for s, lost in picks:
            if s is None or lost or s.crop is None:
                keys.append(None)
                continue
            key = hashlib.blake2b(s.crop.tobytes(), digest_size=16).digest()
            keys.append(key)
            if key not in self._pose_cache:
                todo[key] = s.crop
        if todo:
            codes = self.runner.encode_pose(to_tensor(np.stack(list(todo.values()))).to(self.device))
            self.pose_encodings += len(todo)
            for key, code in zip(todo, codes):
                self._pose_cache[key] = code
                if len(self._pose_cache) > self.cfg.pose_cache:
                    self._pose_cache.popitem(last=False)
        out = []
        for k, key in zip(idx, keys):
            code = None
            if key is not None:
                code = self._pose_cache[key]
                self._pose_cache.move_to_end(key)
            self.pose_held.append(code is None)
            out.append(self.pose_state.update(self.t0 + k / self.cfg.fps, code))
        return torch.stack(out), [s for s, _ in picks]

    # -- frames ------------------------------------------------------------

    def _compose(self, gen: np.ndarray, sample: PoseSample | None) -> np.ndarray:
        out = gen
        if self.paster is not None:
            if self.pose_src is None:
                out = self.paster(self.avatar.image, gen, self.avatar.crop_m)
            else:
                frame_s = sample if sample is not None and sample.frame is not None else self._last_sample
                good = self._last_good_sample
                if frame_s is not None and frame_s.frame is not None and good is not None:
                    m = sample.crop_m if sample is not None and sample.crop_m is not None else good.crop_m
                    out = self.paster(frame_s.frame, gen, m)
                elif frame_s is not None and frame_s.frame is not None:
                    out = frame_s.frame  # no face seen yet: show the camera
        if self.random_weights:
            out = _stamp(out, RANDOM_WEIGHTS_NOTE)
        return out

    def _process(self, idx: list[int], stop: threading.Event) -> None:
        t_start = time.perf_counter()
        fps = self.cfg.fps
        mel = torch.from_numpy(np.stack([self._window(k) for k in idx])).to(self.device)
        audio_cap = [self._audio_captured(k) for k in idx]
        pose_codes, samples = self._pose_codes(idx, stop)
        b = len(idx)
        with torch.no_grad():
            mouth = self.runner.encode_audio(mel)
            style = torch.cat([self.avatar.id_vec.expand(b, -1), mouth, pose_codes.to(mouth.dtype)], 1)
            images = _to_uint8(self.runner.generate(style, self.avatar.id_map.expand(b, -1, -1, -1)))
        self.latency.compute_s += time.perf_counter() - t_start
        for j, (k, img) in enumerate(zip(idx, images)):
            frame = self._compose(img, samples[j])
            pose_cap = samples[j].captured if samples[j] is not None else None
            if not self.realtime:
                self.clock.advance_to(max(audio_cap[j], pose_cap if pose_cap is not None else -math.inf))
            for s in self.sinks:
                s.write(frame, k / fps)
            self.last_slot = k
            t_k = self.t0 + k / fps
            self.latency.add(FrameTiming(k, t_k, self.t0 + self.need_samples(k) / SAMPLE_RATE,
                                         audio_cap[j], pose_cap, self.clock.now()))
        self._prune(idx[-1] + 1)

    def _realtime_batch(self) -> int:
        """Frames per generator call live: up to ``batch``, but no more than fit in
        ``max_delay_s`` at the measured cost per frame -- batching buys throughput with latency,
        and when even one frame takes longer than a frame interval only the newest is worth it."""
        if self.latency.frames == 0:
            return 1
        per_frame = self.latency.compute_s / self.latency.frames
        if per_frame <= 0:
            return self.cfg.batch
        return max(1, min(self.cfg.batch, int(self.cfg.max_delay_s / per_frame)))

    def _stop_requested(self) -> bool:
        return any(getattr(s, "stop_requested", False) for s in self.sinks)

    def run(self, stop: threading.Event | None = None) -> LatencyReport:
        stop = stop or threading.Event()
        fps = self.cfg.fps
        self.t0 = self.clock.now()
        started: list[Source] = []
        next_stats = time.monotonic() + (self.cfg.stats_interval_s or math.inf)
        try:
            for src in (self.audio_src, self.pose_src):
                if src is not None:
                    src.start(self.t0, self.clock)
                    started.append(src)
            log.info("streaming: audio lookahead %.0f ms at %g fps (+ the audio block)", 1000 * self.lookahead_s, fps)
            k = 0
            while not stop.is_set() and not self._stop_requested():
                n = self._wait_audio(k, stop)
                if n == 0:
                    break
                idx = list(range(k, k + n))
                if self.realtime:
                    now = self.clock.now()
                    late = [j for j in idx[:-1] if now - (self.t0 + self.need_samples(j) / SAMPLE_RATE) > self.cfg.max_delay_s]
                    keep = idx[len(late):]
                    cap = self._realtime_batch()
                    if len(keep) > cap:
                        late += keep[: len(keep) - cap]
                        keep = keep[len(keep) - cap:]
                    if late:
                        self.latency.drop("frames_late", len(late))
                    idx = keep
                self._process(idx, stop)
                k = idx[-1] + 1
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + (self.cfg.stats_interval_s or math.inf)
                    log.info("stats: %s", self.report().summary())
        finally:
            for src in started:
                src.close()
        return self.report()

    def report(self) -> LatencyReport:
        queues = {self.audio_src.name: self.audio_src.queue.stats()}
        if self.pose_src is not None:
            queues[self.pose_src.name] = self.pose_src.queue.stats()
        video_s = (self.last_slot + 1) / self.cfg.fps
        # How far the consumed audio ran past what the last frame needed (bounded buffering).
        drift = 0.0
        if self.last_slot >= 0:
            drift = (self.audio_pos - self.need_samples(self.last_slot)) / SAMPLE_RATE
        return self.latency.report(
            queues=queues,
            audio_s=self.audio_pos / SAMPLE_RATE,
            video_s=video_s,
            audio_silence_s=self.silence_samples / SAMPLE_RATE,
            audio_clock_offset_ms=1000 * self.clock_offset_max,
            camera_lost_s=self.camera_lost_frames / self.cfg.fps,
            extra={"audio_buffered_past_need_ms": round(1000 * drift, 3),
                   "pose_encodings": self.pose_encodings,
                   "audio_lost_episodes": self.audio_lost_episodes,
                   "camera_lost_episodes": self.camera_lost_episodes,
                   "audio_gain": round(self.gain.gain(), 6),
                   "gain_mode": "fixed" if self.gain.fixed is not None else "running",
                   "random_weights": self.random_weights},
        )


def pose_file_source(path: str | Path, cfg: StreamConfig, loop: bool = True, **kw: Any) -> VideoFileSource:
    """A VideoFileSource with the pose tracker attached (frames kept when pasting back)."""
    src = VideoFileSource(path, loop=loop, **kw)
    src.processor = PoseTracker(src.fps, keep_frames=cfg.paste_back)
    return src


__all__ = ["Avatar", "PoseSample", "PoseState", "PoseTracker", "RunningAligner", "StreamConfig",
           "StreamPipeline", "load_avatar", "make_stream_runner", "pose_file_source"]

