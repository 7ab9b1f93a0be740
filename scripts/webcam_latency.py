"""Camera-to-frame latency of the webcam-only stream (``--mouth webcam``, no microphone).

A video file stands in for the camera (`FileCamera`): replayed on the real clock like a webcam
-- a frame is stamped when it is read, and frames whose time passed while the tracker was busy
are skipped, as a camera delivers only its newest -- and tracked live (mediapipe in the capture
thread, as `trtalk stream --webcam` does); the audio is `SilenceSource` (released one lookahead
early, so no frame waits for audio); frames go to a null sink. Prints the stream report and the
camera->frame p50/p95/p99 of the frames after ``--warmup`` seconds (model and tracker start-up
excluded), with the compute per frame.

    python scripts/webcam_latency.py VIDEO [--model pcavs|warp] [--seconds 8] [--fps 25]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from trtalk.runtime.sources import VideoFileSource, VideoFrame


class FileCamera(VideoFileSource):
    """A video replayed as a webcam: newest frame only, stamped at read time."""

    def _replay(self, proc) -> None:
        assert self.clock is not None
        i = 0
        for key, image in self._frames():
            if self.stopping:
                return
            t = self.t0 + i / self.fps
            i += 1
            now = self.clock.now()
            if now > t + 1.0 / self.fps:  # the camera moved on while we were busy
                continue
            if not self.clock.sleep_until(t, self._stop):
                return
            now = self.clock.now()
            frame = VideoFrame(now, image, now, i - 1, key)
            self.queue.put(proc(frame) if proc is not None else frame)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--model", default="pcavs", choices=("pcavs", "warp"))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from trtalk.audio import audio_lookahead_s
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.clock import RealClock
    from trtalk.runtime.mouth_path import MouthOptions, SilenceSource
    from trtalk.runtime.options import ModelOptions
    from trtalk.runtime.sources import DEFAULT_BLOCK, SAMPLE_RATE
    from trtalk.runtime.pose_path import FaceTracker
    from trtalk.runtime.stream import StreamConfig, StreamPipeline

    model = ModelOptions(model=args.model, model_config="small" if args.model == "pcavs" else "official")
    cfg = StreamConfig(fps=args.fps, batch=args.batch, duration=args.seconds, model=model,
                       mouth_source=MouthOptions(("webcam",)))
    family = model.open(args.fps)
    camera = FileCamera(args.video, loop=True)
    camera.processor = FaceTracker(camera.fps)
    audio = SilenceSource(audio_lookahead_s(args.fps) + DEFAULT_BLOCK / SAMPLE_RATE, args.seconds)
    sink = NullSink()
    pipe = StreamPipeline(cfg, family, audio, camera, [sink], RealClock())
    try:
        report = pipe.run()
    finally:
        camera.close()
        audio.close()
    print(report.summary())
    steady = [1000 * (r.emitted - r.pose_captured) for r in pipe.latency.records
              if r.pose_captured is not None and r.t_frame - pipe.t0 >= args.warmup]
    pct = {f"p{q}": round(float(np.percentile(steady, q)), 1) for q in (50, 95, 99)} if steady else {}
    out = {"model": args.model, "fps": args.fps, "camera_to_frame_ms_after_warmup": pct,
           "frames_after_warmup": len(steady), "camera_to_frame_ms_all": report.camera_to_frame_ms,
           "compute_ms_per_frame": report.compute_ms_per_frame, "frames": report.frames,
           "frames_dropped": report.frames_dropped}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
