"""Sinks for live streams: a virtual camera and a preview window.

Both are frame sinks (:class:`trtalk.media.sinks.FrameSink`) and take no audio. A live recording is an
:class:`trtalk.media.mp4.Mp4Sink` opened with ``push_audio=True, live=True``: the streaming
pipeline feeds it the exact 16 kHz audio that drove the lips, starting at output time 0, so audio
and video share one timeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trtalk.errors import TrtalkError
from trtalk.media.sinks import FrameSink

log = logging.getLogger(__name__)


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


class VirtualCamSink(FrameSink):
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
        self._frames_written = 0

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        if self._cam is None:
            h, w = frame_rgb.shape[:2]
            try:
                self._cam = self._pvc.Camera(width=w, height=h, fps=self.fps, device=self.device)
            except RuntimeError as exc:
                raise TrtalkError(f"cannot open the virtual camera ({exc}); {virtual_camera_hint()}") from exc
            log.info("virtual camera %s: %dx%d at %g fps", self._cam.device, w, h, self.fps)
        self._cam.send(np.ascontiguousarray(frame_rgb))
        self._frames_written += 1

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None



class PreviewSink(FrameSink):
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
        self._frames_written = 0
        self.stop_requested = False  # q or Esc pressed in the window
        #: called with every other key pressed in the window (live controls' hotkeys)
        self.on_key: Callable[[str], None] | None = None

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.stop_requested = True
        elif key != 0xFF and self.on_key is not None:
            self.on_key(chr(key))
        self._frames_written += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cv2.destroyWindow(self.title)
