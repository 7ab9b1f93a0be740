"""The one pipeline: sources in, frame step, sinks out; render and stream are its front ends.

Threads: one capture thread per source (:mod:`trtalk.runtime.sources`; a camera's thread also
runs face tracking, so mediapipe lives in one thread) and one inference thread -- the caller of
:meth:`Pipeline.run` -- which turns audio into mel (`AudioPath`), picks poses (`PosePath`), runs
the frame step (`FrameStep`) and writes the sinks. Every hand-over is a bounded queue.

Timeline. ``t0`` is the clock time the sources start -- live, the time of the audio's first
sample: the audio source is opened first and its start-up (PulseAudio: 1-2 s) is waited for, then
the camera starts on the same timeline. Output frame k shows time
``t_k = t0 + k / fps``; its audio window is the official one, mel rows
``[window_start(k), window_start(k) + 20)``, which ends ``audio_lookahead_s(fps)`` after ``t_k``
(120 ms at 25 fps). So a frame can only be made once audio up to ``t_k + 0.12 s`` has been
captured: the built-in audio latency is that lookahead plus the audio block.

Clocks. On a real-time clock, frames whose due time passed by more than ``max_delay_s`` are
dropped (counted as ``frames_late``), at most ``batch`` frames go through the generator at once
(fewer when the measured cost per frame would make a batch outlast ``max_delay_s``), and full
source queues drop their oldest items. On a virtual clock nothing is dropped: sources wait for
room, and frames are emitted at their ideal times (``t_k + lookahead``), so a replay (and
`trtalk render`) runs as fast as the machine allows with the timestamps of a real-time run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.media.sinks import FrameSink
from trtalk.motion.blink import BlinkConfig
from trtalk.motion.head import MotionConfig
from trtalk.motion.style import MotionStyle
from trtalk.runtime.audio_path import AudioPath, GainConfig, GainControl
from trtalk.runtime.clock import Clock, RealClock
from trtalk.families.base import Avatar, FamilyState, ModelFamily, NetworkCall, PoseInput, direct_call
from trtalk.runtime.inputs import InputPlan, auto_pose, plan_of_source
from trtalk.runtime.latency import FrameTiming, LatencyRecorder, LatencyReport
from trtalk.runtime.mouth_path import MouthClip, MouthOptions, MouthPath
from trtalk.runtime.pose_path import PoseConfig, PosePath, PoseSample
from trtalk.runtime.sources import SAMPLE_RATE, AudioFileSource, AudioSource, Source
from trtalk.runtime.step import Background, FrameStep
from trtalk.threads import MAX_THREADS

log = logging.getLogger(__name__)

#: Bounds on the options that scale work or memory (documented in each flag's help and the README).
MAX_FPS = 240.0
MAX_BATCH = 256
MAX_DURATION_S = 24 * 3600.0
#: Largest fixed audio gain: the official frontend's own gain is at most 1000 (RMS floor 1e-4);
#: beyond that the mel overflows to inf/NaN.
MAX_AUDIO_GAIN = 1000.0

#: Background of frame k for paste-back, given the pose sample it used (None: the default).
BackgroundFn = Callable[[int, "PoseSample | None"], "Background | None"]


@dataclass
class PipelineConfig:
    """Options of the pipeline (shared by `trtalk render` and `trtalk stream`: each field is one
    flag of both, with the same meaning)."""

    fps: float = option(25.0, bounds=(0.1, 240), help="output frame rate, at most 240")
    duration: float | None = option(None, metavar="S", bounds=(0.001, 86400),
                                    help="stop after S seconds of output (at most 86400)")
    batch: int = option(4, bounds=(1, 256), help="most frames per generator call, 1 to 256")
    layout: Literal["generated", "side-by-side"] = option(
        "generated", help="the generated frame only, or avatar | generated | pose source")
    paste_back: bool = option(False, help="paste the generated face (the face only, colour-matched) back "
                              "into the face source's frames (render), the camera or pose video frames "
                              "(stream) or the avatar photo; crop models only: the warp avatar's "
                              "frames are the photo already")
    size: int | None = option(None, metavar="PX", bounds=(32, 4096),
                              help="output size: the side of the crop models' square frames, the long "
                                   "side of the warp avatar's photo frame (even sides)",
                              default_text="224 for the crop models; the photo's own, at most 512, for "
                                           "the warp avatar")
    audio_gain: float | None = option(None, bounds=(1e-6, MAX_AUDIO_GAIN), help="fixed gain on the audio",
                                      default_text="the whole-file gain for files, a running RMS "
                                                   "estimate live")
    pose_smoothing: float | None = option(None, bounds=(0, 0.999),
                                          help="exponential smoothing of pose codes in [0, 1)",
                                          default_text="0.5 live, 0 for files aligned as a whole")
    audio_timeout_s: float = option(0.25, section="live timing", bounds=(0.001, 60),
                                    help="seconds without audio before the microphone counts as lost "
                                         "(at least twice the device's latency plus block)")
    audio_start_timeout_s: float = option(5.0, section="live timing", bounds=(0.001, 600),
                                          help="seconds to wait for the microphone's first audio")
    max_delay_s: float = option(0.5, section="live timing", bounds=(0.001, 60),
                                help="frames later than this are dropped")
    lost_hold_s: float = option(0.3, section="live timing", bounds=(0, 3600),
                                help="hold the last pose this long when the face is lost")
    lost_ease_s: float = option(1.0, section="live timing", bounds=(0, 3600),
                                help="then ease to the avatar's pose over this long")
    camera_timeout_s: float = option(0.5, section="live timing", bounds=(0.001, 60),
                                     help="seconds without a camera frame before it counts as lost")
    threads: int | None = option(None, metavar="N", bounds=(1, MAX_THREADS),
                                 help="CPU threads for inference (torch and onnxruntime); "
                                 "idle ones sleep (README: thread settings)",
                                 default_text="$TRTALK_THREADS, else the usable cores")
    motion: MotionConfig = option(default_factory=MotionConfig, prefix="motion-", section="generated motion")
    blink: BlinkConfig = option(default_factory=BlinkConfig, prefix="blink-", section="generated motion")
    mouth_source: MouthOptions = option(default_factory=MouthOptions, prefix="")
    gain: GainConfig = option(default_factory=GainConfig, cli=False)
    stats_interval_s: float | None = option(None, cli=False)  # log stats this often (stream --stats)

    def pose_config(self) -> PoseConfig:
        return PoseConfig(self.pose_smoothing, self.lost_hold_s, self.lost_ease_s, self.camera_timeout_s)

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise TrtalkError(f"--fps must be a positive number, got {self.fps}")
        if self.fps > MAX_FPS:
            raise TrtalkError(f"--fps {self.fps:g} is more than {MAX_FPS:g}; use a video frame rate "
                              f"such as 25 or 30")
        if not 1 <= self.batch <= MAX_BATCH:
            raise TrtalkError(f"--batch {self.batch} is out of range: 1 to {MAX_BATCH}")
        for name in ("audio_timeout_s", "audio_start_timeout_s", "max_delay_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise TrtalkError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise TrtalkError(f"--threads must be between 1 and {MAX_THREADS}")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise TrtalkError("--duration must be a positive number of seconds")
        if self.duration is not None and self.duration > MAX_DURATION_S:
            raise TrtalkError(f"--duration {self.duration:g} is more than {MAX_DURATION_S:g} s (24 h)")
        if self.pose_smoothing is not None and not 0 <= self.pose_smoothing < 1:
            raise TrtalkError("--pose-smoothing must be in [0, 1)")
        if self.size is not None and not 32 <= self.size <= 4096:
            raise TrtalkError(f"--size {self.size} is out of range: 32 to 4096 pixels")
        if self.audio_gain is not None and not 0 < self.audio_gain <= MAX_AUDIO_GAIN:
            raise TrtalkError(f"--audio-gain must be a number in (0, {MAX_AUDIO_GAIN:g}]")


class Pipeline:
    """Runs one session: ``run()`` blocks until the audio ends, ``duration`` is reached, ``stop``
    is set, or a sink asks to stop; returns the :class:`LatencyReport`.

    The pipeline starts and closes the sources; it writes but does not close the sinks (their
    owner does, so a recording is finalised even when ``run`` raises). ``pose_source`` None means
    the family's still pose. ``background`` chooses what paste-back pastes into (default: the pose
    sample's frame when kept, else the avatar photo). ``motion``: with no pose source, generate
    head motion and blinks from the speech (`trtalk.runtime.motion_path`, ``--pose auto``)
    instead of the family's still pose. ``plan``: the front end's `trtalk.runtime.inputs.InputPlan`
    (None: the plan of ``pose_source`` and ``motion``, `plan_of_source`).

    ``family`` is shared (its networks); ``family_state`` is this stream's (None: a new one from
    `ModelFamily.new_state`); ``call(fn)`` runs the pose path's and mouth path's network calls
    (`trtalk serve`: on its worker thread).
    ``motion_style``: the generated motion's style (None: ``cfg.motion.style``'s file, else the
    generic style).
    """

    def __init__(self, cfg: PipelineConfig, family: ModelFamily, avatar: Avatar, audio: AudioSource,
                 pose_source: Source | None, sinks: Sequence[FrameSink], clock: Clock | None = None,
                 background: BackgroundFn | None = None, motion: bool = False,
                 mouth_clip: MouthClip | None = None, motion_style: MotionStyle | None = None, *,
                 family_state: FamilyState | None = None, call: NetworkCall = direct_call,
                 plan: InputPlan | None = None) -> None:
        self.cfg = cfg
        self.family = family
        #: the stream's state in the (shared) family: blinks, smoothing, controls, counters
        self.family_state = state = family_state if family_state is not None else family.new_state()
        self.avatar = avatar
        if not isinstance(audio, AudioSource):  # its block, latency and skipped time are read below
            raise TypeError(f"the pipeline's audio must be an AudioSource, got {type(audio).__name__}")
        self.audio_src = audio
        self.pose_src = pose_source
        self.sinks = list(sinks)
        self.clock: Clock = clock or RealClock()
        self.realtime = self.clock.realtime
        self.step = FrameStep(family, avatar, state=state, layout=cfg.layout, paste_back=cfg.paste_back, size=cfg.size,
                              pose_panel=pose_source is not None)
        fixed = cfg.audio_gain
        if fixed is None and isinstance(audio, AudioFileSource) and not audio.loop:
            from trtalk.audio import rms_gain

            fixed = rms_gain(audio.wave)
        self.gain = GainControl(cfg.gain, fixed)
        self.audio = AudioPath(cfg.fps, self.gain, audio.name,
                               [s for s in self.sinks if s.accepts_audio])
        if plan is None:  # built directly from sources: the plan they make
            plan = plan_of_source(pose_source, motion, cfg.mouth_source, self.realtime, family.capabilities,
                                  family.name)
        #: the stream's sources (`trtalk.runtime.inputs`)
        self.plan = plan
        self.pose = PosePath(cfg.pose_config(), family, avatar, pose_source, cfg.fps, self.realtime,
                             family_state=state, call=call, plan=plan)
        blink, style = cfg.blink, None
        if plan.motion:  # --pose auto: the style and its blinks
            from trtalk.runtime.motion_path import auto_motion

            style, blink = auto_motion(cfg.motion, cfg.blink, motion_style)
        # a family with blinks of its own (PD-FGC's --eyes auto) follows the motion settings
        family.configure_motion(state, cfg.motion, blink, avatar if plan.motion else None)
        if plan.motion:
            self.pose.motion = auto_pose(family, avatar, cfg, blink, style)
        mouth_opts = plan.mouth
        if mouth_opts.source in ("webcam", "blend"):
            family.want_visual_mouth(state, True)  # PC-AVS: pose and lips from one encoder pass
        self.mouth = MouthPath(mouth_opts, family, avatar, cfg.fps, mouth_clip,
                               hold_s=cfg.lost_hold_s, ease_s=cfg.lost_ease_s, family_state=state, call=call)
        self.background = background or self._default_background
        from trtalk.audio import audio_lookahead_s

        self.lookahead_s = audio_lookahead_s(cfg.fps)
        self.latency = LatencyRecorder(cfg.fps, self.realtime)
        self.t0 = 0.0
        self.last_slot = -1
        self.limit = None if cfg.duration is None else int(math.floor(cfg.duration * cfg.fps + 0.5))
        self.audio_timeout_s = cfg.audio_timeout_s
        self.start_delay_s = 0.0  # live: how long the audio device took to deliver its first sample

    # -- scheduling ------------------------------------------------------------------------

    def _end_frame(self) -> int | None:
        ends = [e for e in (self.audio.final_frames, self.limit) if e is not None]
        return min(ends) if ends else None

    def _frames_ready(self, k: int, cap: int) -> int:
        end = self._end_frame()
        n = 0
        while n < cap and (end is None or k + n < end) and self.audio.complete(k + n):
            n += 1
        return n

    def _wait_audio(self, k: int, stop: threading.Event) -> int:
        """Frames k.. whose audio is complete (0 when stopping or at the end)."""
        q = self.audio_src.queue
        cap = self.cfg.batch if not self.realtime else 10 ** 6
        while not stop.is_set():
            # Take audio only as far as the frames we may emit need: on a virtual clock the whole
            # file is available at once, and reading past the end frame would count as drift.
            # Live, never past the last frame's window either (the report's drift is what was read
            # beyond need).
            want = self.audio.need_samples(k + min(cap, 10 ** 4))
            if self.limit is not None and self.limit > 0:
                want = min(want, self.audio.need_samples(self.limit - 1))
            while self.audio.pos < want and (item := q.get_nowait()) is not None:
                self.audio.on_item(item)
            n = self._frames_ready(k, cap)
            end = self._end_frame()
            if end is not None and k >= end:
                return 0
            if n >= cap or (n > 0 and (self.realtime or self.audio.ended)):
                return n
            if n > 0 and end is not None and k + n >= end:
                return n
            item = q.get(timeout=0.02 if self.realtime else 0.1)
            if item is not None:
                self.audio.on_item(item)
            elif self.realtime:
                # Lost = nothing *arrived* for the timeout while a frame waits for it; audio that
                # arrives late but steadily (a device's latency) is waited for, not replaced.
                need = self.audio.need_samples(k)
                due = self.t0 + need / SAMPLE_RATE
                now = self.clock.now()
                quiet = now - self.audio.last_arrival
                if now > due + self.audio_timeout_s and quiet > self.audio_timeout_s:
                    self.audio.warn_lost("no audio for %.0f ms" % (1000 * quiet))
                    self.audio.fill_silence(need, now)
            elif q.closed and not len(q):  # source closed under us
                self.audio.end()
        return 0

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

    def _drop_late(self, idx: list[int]) -> list[int]:
        now = self.clock.now()
        late = [j for j in idx[:-1]
                if now - (self.t0 + self.audio.need_samples(j) / SAMPLE_RATE) > self.cfg.max_delay_s]
        keep = idx[len(late):]
        cap = self._realtime_batch()
        if len(keep) > cap:
            late += keep[: len(keep) - cap]
            keep = keep[len(keep) - cap:]
        if late:
            self.latency.drop("frames_late", len(late))
        return keep

    # -- frames ----------------------------------------------------------------------------

    def _default_background(self, k: int, sample: PoseSample | None) -> Background | None:
        if self.pose_src is None:
            return None  # the avatar photo
        frame_s = sample if sample is not None and sample.frame is not None else self.pose.last_sample
        good = self.pose.last_good_sample
        if frame_s is None or frame_s.frame is None:
            return None
        if good is None:
            # No face seen yet: the camera frame itself.
            return Background(frame_s.frame, None)
        cur = sample is not None and sample.crop_m is not None
        m = sample.crop_m if cur else good.crop_m
        return Background(frame_s.frame, m, sample.mesh if cur else good.mesh)

    def _process(self, idx: list[int], stop: threading.Event) -> None:
        t_start = time.perf_counter()
        fps = self.cfg.fps
        mel = torch.from_numpy(np.stack([self.audio.window(k) for k in idx]))
        audio_cap = [self.audio.captured(k, self.clock.now) for k in idx]
        pose_codes, samples = self.pose.codes(idx, stop, mel)
        held = self.pose.held[-len(idx):] if self.pose_src is not None else None
        mouth = self.mouth.codes(idx, mel, samples, held)
        backgrounds = [self.background(k, s) for k, s in zip(idx, samples)] if self.cfg.paste_back else None
        panels = [s.crop if s is not None else None for s in samples]
        # the tracked input each frame's pose code was encoded from (None: held), for a family
        # that reads more from it (PD-FGC's webcam eyes and emotion)
        camera = ([PoseInput(s.crop, s.mesh) if s is not None and s.crop is not None and not h else None
                   for s, h in zip(samples, held)] if held is not None else None)
        frames = self.step(idx, mel, pose_codes, backgrounds, panels, mouth=mouth,
                           mouth_panels=self.mouth.panels if mouth is not None else None, camera=camera)
        self.latency.compute_s += time.perf_counter() - t_start
        for k, frame, sample, a_cap in zip(idx, frames, samples, audio_cap):
            pose_cap = sample.captured if sample is not None else None
            if not self.realtime:
                self.clock.advance_to(max(a_cap, pose_cap if pose_cap is not None else -math.inf))
            for s in self.sinks:
                s.write(frame, k / fps)
            self.last_slot = k
            t_k = self.t0 + k / fps
            self.latency.add(FrameTiming(k, t_k, self.t0 + self.audio.need_samples(k) / SAMPLE_RATE,
                                         a_cap, pose_cap, self.clock.now()))
        self.audio.prune(idx[-1] + 1)

    def _stop_requested(self) -> bool:
        return any(s.stop_requested for s in self.sinks)

    def run(self, stop: threading.Event | None = None,
            progress: Callable[[int, int | None], None] | None = None) -> LatencyReport:
        """Run to the end; ``progress(frames done, total or None)`` after every batch."""
        stop = stop or threading.Event()
        self.family_state.reset()
        if self.pose.motion is not None:
            self.pose.motion.reset()
        self.mouth.reset()
        self.t0 = self.clock.now()
        started: list[Source] = []
        next_stats = time.monotonic() + (self.cfg.stats_interval_s or math.inf)
        try:
            self.audio_src.start(self.t0, self.clock)
            started.append(self.audio_src)
            if self.realtime:
                self._await_audio(stop)
            self.audio.t0 = self.pose.t0 = self.audio.last_arrival = self.t0
            if self.pose_src is not None:
                self.pose_src.start(self.t0, self.clock)
                started.append(self.pose_src)
            log.info("audio lookahead %.0f ms at %g fps (+ the audio block)", 1000 * self.lookahead_s,
                     self.cfg.fps)
            k = 0
            while not stop.is_set() and not self._stop_requested():
                n = self._wait_audio(k, stop)
                if n == 0:
                    break
                idx = list(range(k, k + n))
                if self.realtime:
                    idx = self._drop_late(idx)
                self._process(idx, stop)
                k = idx[-1] + 1
                if progress is not None:
                    progress(k, self._end_frame())
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + (self.cfg.stats_interval_s or math.inf)
                    log.info("stats: %s", self.report().summary())
        finally:
            for src in started:
                src.close()
        return self.report()

    def _await_audio(self, stop: threading.Event) -> None:
        """Live: start the timeline at the audio's first sample. A device may take a while to
        deliver after it is opened (PulseAudio: 1-2 s); counting that as lost audio would fill the
        start with silence and put every frame behind. The camera starts after it, on the same
        timeline."""
        t_open = self.t0
        first = self.audio_src.first_sample_time(self.cfg.audio_start_timeout_s, stop)
        if first is None:
            if not stop.is_set():
                log.warning("%s delivered no audio within %.1f s; starting with silence until it does",
                            self.audio_src.name, self.cfg.audio_start_timeout_s)
            return
        self.t0 = first
        self.start_delay_s = max(0.0, first - t_open)
        latency = self.audio_src.latency
        if latency is not None:
            self.audio_timeout_s = max(self.cfg.audio_timeout_s, 2 * (latency + self.audio_src.block / SAMPLE_RATE))
        if self.start_delay_s > 0.05:
            log.info("%s delivered its first audio %.0f ms after it was opened; the stream starts there",
                     self.audio_src.name, 1000 * self.start_delay_s)

    def report(self) -> LatencyReport:
        queues = {self.audio_src.name: self.audio_src.queue.stats()}
        if self.pose_src is not None:
            queues[self.pose_src.name] = self.pose_src.queue.stats()
        video_s = (self.last_slot + 1) / self.cfg.fps
        # How far the consumed audio ran past what the last frame needed (bounded buffering).
        drift = 0.0
        if self.last_slot >= 0:
            drift = (self.audio.pos - self.audio.need_samples(self.last_slot)) / SAMPLE_RATE
        return self.latency.report(
            queues=queues,
            audio_s=self.audio.pos / SAMPLE_RATE,
            video_s=video_s,
            audio_silence_s=self.audio.silence_samples / SAMPLE_RATE,
            audio_clock_offset_ms=1000 * self.audio.clock_offset_max,
            camera_lost_s=self.pose.camera_lost_frames / self.cfg.fps,
            drift_s=max(0.0, drift) if self.last_slot >= 0 else None,
            extra={"audio_buffered_past_need_ms": round(1000 * drift, 3),
                   "audio_start_delay_ms": round(1000 * self.start_delay_s, 3),
                   # The session clock's time of frame 0 and audio sample 0 (time.monotonic on a
                   # real clock: comparable with other processes' CLOCK_MONOTONIC on Linux).
                   "t0_clock_s": round(self.t0, 6),
                   "audio_input_latency_ms": (None if self.audio_src.latency is None
                                              else round(1000 * self.audio_src.latency, 3)),
                   "audio_skipped_s": round(self.audio_src.skipped_s, 4),
                   "pose_encodings": self.family_state.pose_encodings,
                   "audio_lost_episodes": self.audio.lost_episodes,
                   "camera_lost_episodes": self.pose.camera_lost_episodes,
                   "audio_gain": round(self.gain.gain(), 6),
                   "gain_mode": "fixed" if self.gain.fixed is not None else "running",
                   "model": self.family.name,
                   "mouth": self.cfg.mouth_source.source,
                   "mouth_visual_frames": self.mouth.visual_frames,
                   "random_weights": self.family.random_weights},
        )
