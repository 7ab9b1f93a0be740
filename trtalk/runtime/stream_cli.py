"""`trtalk stream`: microphone (or audio file) + webcam (or pose file) -> virtual camera, preview,
recording or nothing, in real time or as fast as possible. Flags come from `StreamCommand`."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trtalk import threads
from trtalk.configcli import add_command, option
from trtalk.errors import TrtalkError
from trtalk.runtime.inputs import InputRequest, plan_inputs
from trtalk.media.sinks import FrameSink
from trtalk.runtime.stream import StreamConfig
from trtalk.signals import on_signals

log = logging.getLogger(__name__)


@dataclass
class StreamCommand:
    """`trtalk stream`: where the audio and the pose come from, where frames go, and the stream."""

    mic: str | None = option(None, const="", metavar="DEV", exclusive="audio", section="inputs",
                             help="microphone (index or part of its name; the default device if bare)")
    audio: Path | None = option(None, metavar="FILE", exclusive="audio", section="inputs",
                                help="audio file replayed as the microphone")
    webcam: str | None = option(None, const="", metavar="DEV", exclusive="pose", section="inputs",
                                help="camera (/dev/videoN or N on Linux; the default if bare)")
    pose: Path | None = option(None, metavar="SRC", exclusive="pose", section="inputs",
                               help="pose video or image, aligned as a whole and replayed (looped); "
                                    "'auto': head motion and blinks generated from the speech",
                               default_text="auto without --webcam")
    pose_static: bool = option(False, exclusive="pose", section="inputs",
                               help="no generated motion: the avatar's own pose (PC-AVS) or the "
                                    "built-in idle sway (warp)")
    virtual_cam: bool = option(False, exclusive="sink", section="outputs", help="send frames to a virtual camera")
    preview: bool = option(False, exclusive="sink", section="outputs", help="show frames in a window")
    record: Path | None = option(None, exclusive="sink", section="outputs", metavar="OUT.mp4",
                                 help="record video + audio")
    sink: Literal["null"] | None = option(None, exclusive="sink", section="outputs",
                                          help="discard frames (to measure); the default when no "
                                               "output is named (said on start)")
    realtime: bool | None = option(None, negative="--fast", help="real-time pace",
                                   negative_help="files only: as fast as possible on a virtual clock",
                                   default_text="real time with --mic/--webcam, --fast for files")
    stats: float | None = option(None, const=5.0, bounds=(0.1, 86400), metavar="EVERY_S",
                                 help="log latency stats every EVERY_S seconds (5 if bare)")
    stats_json: Path | None = option(None, metavar="PATH", help="write the final report as JSON")
    control: bool = option(False, section="live control",
                           help="PD-FGC: serve the JSON control endpoint (emotion preset and strength, "
                                "gaze offset, blink now, freeze a factor, switch the pose source)")
    control_host: str = option("127.0.0.1", section="live control",
                               help="control endpoint address (beyond loopback a token is required)")
    control_port: int = option(8765, section="live control", bounds=(0, 65535), help="control endpoint port (0: any free one)")
    control_token: str | None = option(None, section="live control",
                                       help="bearer token of the endpoint",
                                       default_text="none on loopback, else a random one (logged)")
    stream: StreamConfig = option(default_factory=StreamConfig, prefix="")


def register(sub) -> None:
    from trtalk.runtime import devices

    add_command(sub, "stream", StreamCommand, _run,
                help="live talking face: mic/audio + webcam/pose -> virtual camera, preview or mp4",
                description="Drive the avatar from a microphone (or an audio file) and a webcam (or a "
                            "pose video/image). Without --checkpoint the built-in warp avatar is used. "
                            "Frames go to one output: --virtual-cam, --preview, --record OUT.mp4 or "
                            "--sink null. Ctrl-C (or SIGTERM) stops cleanly; a recording is finalised.",
                basic=("--face", "--mic", "--audio", "--webcam", "--pose", "--virtual-cam", "--preview",
                       "--record", "--sink", "--checkpoint", "--model", "--device", "--stats"),
                examples=(("trtalk stream --face me.jpg --mic --webcam --virtual-cam",
                           "you, live: microphone and camera drive the avatar in a virtual camera"),
                          ("trtalk stream --face me.jpg --audio talk.wav --record out.mp4 --fast",
                           "a file through the live pipeline, as fast as it goes"),
                          ("trtalk stream --face me.jpg --mic --preview --stats",
                           "a window, with latency figures every 5 s")))
    devices.register(sub)


#: Said when no output is named: the frames are made (and timed) but go nowhere.
NO_SINK_NOTE = ("trtalk stream: no output named, so the frames are made and discarded; add "
                "--virtual-cam, --preview or --record OUT.mp4 (--sink null discards them without this note)")


def _make_sink(cmd: StreamCommand) -> FrameSink:
    from trtalk.media.mp4 import Mp4Sink, check_video_path
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.livesinks import PreviewSink, VirtualCamSink

    fps = cmd.stream.fps
    if cmd.virtual_cam:
        return VirtualCamSink(fps=fps)
    if cmd.preview:
        return PreviewSink()
    if cmd.record is not None:
        check_video_path(cmd.record, "--record")
        return Mp4Sink(cmd.record, fps=fps, push_audio=True, live=True)
    if cmd.sink is None:
        print(NO_SINK_NOTE, file=sys.stderr)
    return NullSink()


def _attach_controls(cmd: StreamCommand, family, state, sink: FrameSink, stack: contextlib.ExitStack) -> None:
    """Live controls of a family that has them (PD-FGC; the stream's ``state``'s): preview
    hotkeys, and the endpoint with --control. TrtalkError for --control on a family without."""
    controls = state.controls if family.capabilities.live_controls else None
    if controls is None:
        if cmd.control:
            raise TrtalkError(f"--control needs a PD-FGC checkpoint; {family.name} has no live controls")
        return
    from trtalk.families.controls import ControlServer, hotkey
    from trtalk.runtime.livesinks import PreviewSink

    if isinstance(sink, PreviewSink):  # the preview window's keys
        def on_key(key: str) -> None:
            try:
                hotkey(controls, key)
            except TrtalkError as exc:
                log.warning("hotkey %r: %s", key, exc)

        sink.on_key = on_key
    if cmd.control:
        if not 0 <= cmd.control_port <= 65535:
            raise TrtalkError("--control-port must be 0 to 65535")
        try:
            server = ControlServer(controls, cmd.control_host, cmd.control_port, cmd.control_token)
        except OSError as exc:
            raise TrtalkError(f"cannot serve the control endpoint on {cmd.control_host}:"
                              f"{cmd.control_port} ({exc.strerror or exc})") from None
        stack.enter_context(server)
        note = f" (token {server.token})" if server.token else ""
        print(f"control endpoint: {server.url}/control{note}", file=sys.stderr)


def _caps(cfg: StreamConfig):
    """(capabilities, name) of the family the stream will open, before it loads."""
    spec = cfg.model.spec()
    return spec.capabilities, spec.name


def _run(cmd: StreamCommand) -> int:
    from trtalk.fsutil import output_parent
    from trtalk.media.mp4 import Mp4Sink
    from trtalk.runtime.clock import RealClock, VirtualClock
    from trtalk.runtime.pose_path import FaceTracker, clip_pose_source
    from trtalk.runtime.sources import AudioFileSource, MicSource, WebcamSource
    from trtalk.runtime.stream import StreamPipeline

    from trtalk.httpguard import check_token

    check_token(cmd.control_token, "--control-token")
    cfg = cmd.stream
    mouth = cfg.mouth_source
    plan = plan_inputs(InputRequest(pose=cmd.pose, pose_static=cmd.pose_static, webcam=cmd.webcam is not None,
                                    mic=cmd.mic is not None, audio=cmd.audio is not None, mouth=mouth,
                                    auto_default=True, realtime=cmd.realtime, duration=cfg.duration),
                       *_caps(cfg))
    realtime = plan.realtime
    if mouth.source == "video" and not mouth.path.exists():  # type: ignore[union-attr]
        raise TrtalkError(f"--mouth video {mouth.path} does not exist")
    if cmd.audio is not None and not cmd.audio.exists():
        raise TrtalkError(f"--audio {cmd.audio} does not exist")
    if cmd.stats_json is not None:
        from trtalk.fsutil import check_writable

        check_writable(cmd.stats_json)
    cfg.stats_interval_s = cmd.stats
    if not cfg.face.is_file():
        raise TrtalkError(f"--face {cfg.face} does not exist; give a photo with one frontal face")
    clock = RealClock() if realtime else VirtualClock()
    stop = threading.Event()

    with contextlib.ExitStack() as stack:
        if cmd.record is not None:  # created when missing, removed again on failure
            stack.enter_context(output_parent(cmd.record))
        # Sinks and devices first: a missing backend fails in milliseconds, before the model loads.
        sink = stack.enter_context(_make_sink(cmd))
        if plan.audio == "mic":
            audio = MicSource(cmd.mic)
        elif plan.audio == "file":
            audio = AudioFileSource(cmd.audio)
        elif plan.audio == "mouth-video":
            from trtalk.runtime.mouth_path import video_audio

            audio = video_audio(mouth.path)  # type: ignore[arg-type]
            from trtalk.media.read import probe

            info = probe(mouth.path)  # its audio runs a little past its last frame: stop there
            if info.num_frames and info.fps:
                clip_s = info.num_frames / info.fps
                cfg.duration = clip_s if cfg.duration is None else min(cfg.duration, clip_s)
        else:  # --mouth webcam, no microphone: silence that never holds a frame back
            from trtalk.audio import audio_lookahead_s
            from trtalk.runtime.mouth_path import SilenceSource
            from trtalk.runtime.sources import DEFAULT_BLOCK, SAMPLE_RATE

            audio = SilenceSource(audio_lookahead_s(cfg.fps) + DEFAULT_BLOCK / SAMPLE_RATE, cfg.duration)
        stack.callback(audio.close)
        pose = None
        if cmd.webcam is not None:  # also with --pose off: tracked, its code zeroed by the family
            pose = WebcamSource(cmd.webcam, fps=max(cfg.fps, 25.0))
            pose.processor = FaceTracker(cfg.fps, keep_frames=cfg.paste_back)
        elif plan.pose == "file":
            pose = clip_pose_source(cmd.pose, keep_frames=cfg.paste_back)
        if pose is not None:
            stack.callback(pose.close)
        threads.apply(cfg.threads, cfg.model.family_threads())
        family = cfg.model.open(cfg.fps, size=cfg.size)
        state = family.new_state()
        factor = plan.pose_factor()  # PD-FGC's official switch: a zero pose code (README, PD-FGC)
        if factor is not None:
            family.set_factor(state, "pose", factor)
        _attach_controls(cmd, family, state, sink, stack)
        pipeline = StreamPipeline(cfg, family, audio, pose, [sink], clock, family_state=state, plan=plan)
        # SIGINT / SIGTERM: the first stops the stream (a recording is finalised), a second aborts.
        with on_signals(stop):
            report = pipeline.run(stop)
        if stop.is_set() and sink.frames_written == 0 and isinstance(sink, Mp4Sink):
            sink.abort()  # stopped before the first frame: nothing to finalise
            print(f"trtalk: stopped before the first frame; nothing was recorded ({cmd.record} "
                  f"not written)", file=sys.stderr)
            return 130
    print(report.summary(), file=sys.stderr)
    if cmd.stats_json is not None:
        report.write_json(cmd.stats_json)
    if family.random_weights:
        print("note: RANDOM WEIGHTS (no --checkpoint)", file=sys.stderr)
    return 0
