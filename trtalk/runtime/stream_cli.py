"""`trtalk stream`: microphone (or audio file) + webcam (or pose file) -> virtual camera, preview,
recording or nothing, in real time or as fast as possible."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtalk.errors import TrtalkError

if TYPE_CHECKING:
    from trtalk.media.sinks import FrameSink

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from trtalk.runtime import devices

    p = sub.add_parser(
        "stream", help="live talking face: mic/audio + webcam/pose -> virtual camera, preview or mp4",
        description="Drive the avatar from a microphone (or an audio file) and a webcam (or a pose "
                    "video/image). Without --checkpoint the networks use seeded random weights. "
                    "Ctrl-C (or SIGTERM) stops cleanly; a recording is finalised.")
    p.add_argument("--avatar", type=Path, required=True, help="photo of the face to animate")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="official PC-AVS checkpoint folder or a `trtalk convert` file")
    a = p.add_mutually_exclusive_group()
    a.add_argument("--mic", nargs="?", const="", default=None, metavar="DEV",
                   help="microphone (index or part of its name; default device if bare)")
    a.add_argument("--audio", type=Path, default=None, help="audio file replayed as the microphone")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--webcam", nargs="?", const="", default=None, metavar="DEV",
                   help="camera (/dev/videoN or N on Linux; default if bare)")
    v.add_argument("--pose", type=Path, default=None, help="pose video or image, replayed (looped)")
    v.add_argument("--pose-static", action="store_true", help="keep the avatar's own pose (default)")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--virtual-cam", action="store_true", help="send frames to a virtual camera")
    s.add_argument("--preview", action="store_true", help="show frames in a window")
    s.add_argument("--record", type=Path, default=None, metavar="OUT.mp4", help="record video + audio")
    s.add_argument("--sink", choices=("null",), default=None, help="discard frames (benchmark)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="real-time pace (default with --mic/--webcam)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="files only: as fast as possible on a virtual clock (default for files)")
    p.add_argument("--paste-back", action="store_true", help="paste the face into the camera frame")
    p.add_argument("--batch", type=int, default=4, help="most frames per generator call")
    p.add_argument("--audio-gain", type=float, default=None,
                   help="fixed gain on the audio (default: whole-file for files, running RMS live)")
    p.add_argument("--stats", nargs="?", type=float, const=5.0, default=None, metavar="EVERY_S",
                   help="log latency stats every EVERY_S seconds (default 5)")
    p.add_argument("--stats-json", type=Path, default=None, metavar="PATH", help="write the final report as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint")
    p.add_argument("--model-config", default="full", choices=("full", "small"), help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    devices.register(sub)


def _make_sink(args: argparse.Namespace) -> FrameSink:
    from trtalk.media.mp4 import Mp4Sink
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.livesinks import PreviewSink, VirtualCamSink

    if args.virtual_cam:
        return VirtualCamSink(fps=args.fps)
    if args.preview:
        return PreviewSink()
    if args.record is not None:
        try:
            args.record.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrtalkError(f"cannot write {args.record}: {exc.strerror or exc}") from None
        return Mp4Sink(args.record, fps=args.fps, push_audio=True, live=True)
    return NullSink()


def _run(args: argparse.Namespace) -> int:
    from trtalk.runtime.clock import RealClock, VirtualClock
    from trtalk.runtime.sources import AudioFileSource, MicSource, WebcamSource
    from trtalk.runtime.stream import (
        PoseTracker,
        StreamConfig,
        StreamPipeline,
        make_stream_runner,
        pose_file_source,
    )

    live = args.mic is not None or args.webcam is not None
    realtime = args.realtime if args.realtime is not None else live
    if live and not realtime:
        raise TrtalkError("--fast works with files only; a microphone or webcam runs in real time")
    if args.mic is None and args.audio is None:
        raise TrtalkError("give --mic [DEV] or --audio FILE")
    if args.audio is not None and not args.audio.exists():
        raise TrtalkError(f"--audio {args.audio} does not exist")
    if args.stats_json is not None:
        from trtalk.fsutil import check_writable

        check_writable(args.stats_json)
    cfg = StreamConfig(avatar=args.avatar, fps=args.fps, duration=args.duration, batch=args.batch,
                       paste_back=args.paste_back, audio_gain=args.audio_gain, device=args.device,
                       stats_interval_s=args.stats)
    if not args.avatar.is_file():
        raise TrtalkError(f"--avatar {args.avatar} does not exist; give a photo with one frontal face")
    clock = RealClock() if realtime else VirtualClock()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        log.info("stopping (signal %d)", signum)
        stop.set()

    with contextlib.ExitStack() as stack:
        # Sinks and devices first: a missing backend fails in milliseconds, before the model loads.
        sink = stack.enter_context(_make_sink(args))
        audio = MicSource(args.mic) if args.mic is not None else AudioFileSource(args.audio)
        stack.callback(audio.close)
        pose = None
        if args.webcam is not None:
            pose = WebcamSource(args.webcam, fps=max(args.fps, 25.0))
            pose.processor = PoseTracker(args.fps, keep_frames=args.paste_back)
        elif args.pose is not None:
            pose = pose_file_source(args.pose, cfg)
        if pose is not None:
            stack.callback(pose.close)
        runner, random_weights = make_stream_runner(args.checkpoint, args.backend, args.device,
                                                    args.model_config, args.seed)
        pipeline = StreamPipeline(cfg, runner, audio, pose, [sink], clock, random_weights)
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, on_signal)
        try:
            report = pipeline.run(stop)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    print(report.summary(), file=sys.stderr)
    if args.stats_json is not None:
        report.write_json(args.stats_json)
    if random_weights:
        print("note: RANDOM WEIGHTS (no --checkpoint)", file=sys.stderr)
    return 0
