"""Sinks for live streams: an mp4 recorder fed audio incrementally, a virtual camera, a preview.

All follow :class:`trtalk.runtime.sinks.FrameSink` (``write(frame, pts_s)``, ``close``,
``frames_written``) and are context managers. A sink that also has ``write_audio(samples)`` is an
*audio sink*: the streaming pipeline feeds it the exact 16 kHz audio that drove the lips, starting
at output time 0, so audio and video share one timeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import deque
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np

from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output, check_writable
from trtalk.runtime.sinks import available_video_encoder, pad_to_even

log = logging.getLogger(__name__)


class _Abort(Exception):
    pass


class LiveRecorder:
    """H.264 + AAC mp4 of a live stream, audio arriving bit by bit; written atomically.

    Promises: the file appears under ``path`` only after ``close`` (a clean stop, Ctrl-C included,
    when the caller closes rather than aborts); ``abort`` leaves ``path`` untouched. Video frames
    sit on the ``1/fps`` grid at ``round(pts_s * fps)`` (gaps allowed, strictly increasing); audio
    is muxed interleaved up to each frame's end time and, at ``close``, trimmed or padded with
    silence to exactly the video's end ``(last_slot + 1) / fps``, so both tracks have equal length
    (decoders may add up to one AAC frame, 1024 samples, of padding). Audio samples are float32
    mono at ``sample_rate``; audio buffered but not yet written is bounded by how far audio runs
    ahead of video (the pipeline's lookahead), not by the session length.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 25.0, sample_rate: int = 16000,
                 crf: int = 20) -> None:
        self.path = Path(path)
        check_writable(self.path)
        self.fps = float(fps)
        self._rate = Fraction(self.fps).limit_denominator(10_000)
        self.sample_rate = int(sample_rate)
        self.crf = crf
        self._frames = 0
        self._last_slot = -1
        self._size: tuple[int, int] | None = None
        self._vs: Any = None
        self._as: Any = None
        self._pending: deque[np.ndarray] = deque()
        self._pending_n = 0
        self._audio_in = 0  # samples received
        self._audio_out = 0  # samples encoded
        self._atomic = atomic_output(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            self._c = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        except BaseException:
            with contextlib.suppress(_Abort):
                self._atomic.__exit__(_Abort, _Abort(), None)
            raise
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._frames

    @property
    def audio_samples_written(self) -> int:
        return self._audio_out

    def _open_streams(self, w: int, h: int) -> None:
        vs = self._c.add_stream(available_video_encoder(), rate=self._rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = 1 / self._rate
        vs.time_base = 1 / self._rate
        if vs.codec_context.name == "libx264":
            # zerolatency: no lookahead buffering, so a killed session loses the fewest frames
            vs.options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency"}
        else:
            vs.codec_context.bit_rate = max(500_000, int(w * h * self.fps * 0.2))
        self._vs = vs
        aus = self._c.add_stream("aac", rate=self.sample_rate, layout="mono")
        aus.codec_context.bit_rate = 64_000
        self._as = aus

    #: the pipeline hands this sink the audio that drove the lips (`write_audio`)
    accepts_audio = True

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 samples (clipped to [-1, 1]) to the audio track."""
        if self._closed:
            raise ValueError(f"write_audio() on a closed recorder ({self.path})")
        x = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if x.size:
            self._pending.append(x)
            self._pending_n += x.size
            self._audio_in += x.size

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        got = 0
        while got < n and self._pending:
            head = self._pending[0]
            k = min(n - got, head.size)
            out[got: got + k] = head[:k]
            got += k
            if k == head.size:
                self._pending.popleft()
            else:
                self._pending[0] = head[k:]
        self._pending_n -= got
        return out  # zeros past what was available: silence

    def _encode_audio_until(self, target: int, pad: bool) -> None:
        if not pad:
            target = min(target, self._audio_out + self._pending_n)
        n = target - self._audio_out
        if n <= 0:
            return
        af = av.AudioFrame.from_ndarray(self._take(n)[None, :], format="flt", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = self._audio_out
        af.time_base = Fraction(1, self.sample_rate)
        for packet in self._as.encode(af):
            self._c.mux(packet)
        self._audio_out = target

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        """Encode one HxWx3 RGB uint8 frame at ``pts_s`` (default: the next slot)."""
        if self._closed:
            raise ValueError(f"write() on a closed recorder ({self.path})")
        h, w = frame_rgb.shape[:2]
        if self._size is None:
            self._size = (w, h)
            self._open_streams(w + w % 2, h + h % 2)
        if (w, h) != self._size:
            raise ValueError(f"frame is {w}x{h}, the recording is {self._size[0]}x{self._size[1]}")
        slot = self._last_slot + 1 if pts_s is None else round(pts_s * self._rate)
        if slot <= self._last_slot:
            raise ValueError(f"pts_s={pts_s} is not after the previous frame")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(frame_rgb)), format="rgb24")
        vf.pts = slot
        vf.time_base = 1 / self._rate
        for packet in self._vs.encode(vf):
            self._c.mux(packet)
        self._last_slot = slot
        self._frames += 1
        self._encode_audio_until(round(Fraction(slot + 1) / self._rate * self.sample_rate), pad=False)

    def close(self) -> None:
        """Flush, equalise the audio to the video's end, and move the file into place. Idempotent.

        Raises TrtalkError when no frame was written (nothing is saved).
        """
        if self._closed:
            return
        try:
            if self._frames == 0:
                raise TrtalkError(f"no frames were produced for {self.path}; nothing was saved")
            end = round(Fraction(self._last_slot + 1) / self._rate * self.sample_rate)
            self._encode_audio_until(end, pad=True)
            for packet in self._vs.encode(None):
                self._c.mux(packet)
            for packet in self._as.encode(None):
                self._c.mux(packet)
            self._c.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._atomic.__exit__(None, None, None)
        log.info("recorded %s: %d frames, %.2f s", self.path, self._frames, (self._last_slot + 1) / self.fps)

    def abort(self) -> None:
        """Stop without saving; ``path`` is left as it was. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._c.close()
        with contextlib.suppress(_Abort):
            self._atomic.__exit__(_Abort, _Abort(), None)

    def __enter__(self) -> LiveRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A stop request (Ctrl-C) is the normal end of a live session: keep what was recorded.
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.abort()


def virtual_camera_hint() -> str:
    if sys.platform.startswith("linux"):
        return ("load v4l2loopback (apt install v4l2loopback-dkms; "
                "modprobe v4l2loopback devices=1 exclusive_caps=1)")
    return "install OBS Studio and start its Virtual Camera once"


def virtual_camera_status() -> tuple[bool, str]:
    """(available, reason) for a pyvirtualcam backend, without opening a camera for long."""
    try:
        import pyvirtualcam  # noqa: F401
    except ImportError:
        return False, "pyvirtualcam is not installed (pip install pyvirtualcam)"
    if sys.platform.startswith("linux"):
        import glob

        loop = [p for p in glob.glob("/sys/devices/virtual/video4linux/video*/name")
                if "loopback" in Path(p).read_text(errors="ignore").lower()
                or "dummy" in Path(p).read_text(errors="ignore").lower()]
        if not loop:
            return False, f"no v4l2loopback device; {virtual_camera_hint()}"
    return True, "pyvirtualcam backend present"


class VirtualCamSink:
    """Frames to a virtual camera (pyvirtualcam: v4l2loopback on Linux, OBS Virtual Camera on
    Windows/macOS). The camera is opened on the first frame with that frame's size; all frames
    must keep it. No backend -> TrtalkError at construction naming what to install.
    """

    def __init__(self, fps: float = 25.0, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise TrtalkError("--virtual-cam needs pyvirtualcam (pip install pyvirtualcam) and "
                              f"a backend: {virtual_camera_hint()}") from exc
        ok, why = virtual_camera_status()
        if not ok:
            raise TrtalkError(f"no virtual camera backend: {why}")
        self._pvc = pyvirtualcam
        self.fps = fps
        self.device = device
        self._cam: Any = None
        self._frames = 0

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        if self._cam is None:
            h, w = frame_rgb.shape[:2]
            try:
                self._cam = self._pvc.Camera(width=w, height=h, fps=self.fps, device=self.device)
            except RuntimeError as exc:
                raise TrtalkError(f"cannot open the virtual camera ({exc}); {virtual_camera_hint()}") from exc
            log.info("virtual camera %s: %dx%d at %g fps", self._cam.device, w, h, self.fps)
        self._cam.send(np.ascontiguousarray(frame_rgb))
        self._frames += 1

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None

    def __enter__(self) -> VirtualCamSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreviewSink:
    """Shows frames in an OpenCV window (press q or Esc to stop: ``stop_requested`` turns True).

    No display (no $DISPLAY / $WAYLAND_DISPLAY on Linux, or an OpenCV build without GUI) ->
    TrtalkError at construction.
    """

    def __init__(self, title: str = "trtalk") -> None:
        import cv2

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise TrtalkError("--preview needs a display (no $DISPLAY); use --record out.mp4 or --virtual-cam")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise TrtalkError("--preview needs OpenCV with GUI support (this build has none); "
                              "use --record out.mp4") from exc
        self._cv2 = cv2
        self.title = title
        self._frames = 0
        self.stop_requested = False

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True
        self._frames += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cv2.destroyWindow(self.title)

    def __enter__(self) -> PreviewSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
