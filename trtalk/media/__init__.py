"""trtalk.media: image and video decoding, frame sinks and the mp4 writer.

The bottom layer of the package: it imports nothing from trtalk but `trtalk.errors` and
`trtalk.fsutil`; face/, runtime/ and warp/ build on it.

- `trtalk.media.read`: probe paths, read images, image folders and video frames (PyAV, OpenCV).
- `trtalk.media.frames`: frame checks, even-padding, the side-by-side layout.
- `trtalk.media.sinks`: the `FrameSink` contract (audio capability included) and `NullSink`.
- `trtalk.media.mp4`: `Mp4Sink`, the H.264/AAC writer for render, demo and stream recording.

Importing this package is cheap: PyAV loads when a video is opened or an mp4 written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IMAGE_EXTENSIONS", "FrameSink", "MediaInfo", "Mp4Sink", "NullSink", "check_frame",
           "composite_side_by_side", "is_image_path", "iter_frames", "list_image_folder",
           "natural_sort_key", "pad_to_even", "probe", "read_image"]

_WHERE = {
    "IMAGE_EXTENSIONS": "trtalk.media.read", "MediaInfo": "trtalk.media.read",
    "is_image_path": "trtalk.media.read", "iter_frames": "trtalk.media.read",
    "list_image_folder": "trtalk.media.read", "natural_sort_key": "trtalk.media.read",
    "probe": "trtalk.media.read", "read_image": "trtalk.media.read",
    "check_frame": "trtalk.media.frames", "composite_side_by_side": "trtalk.media.frames",
    "pad_to_even": "trtalk.media.frames",
    "FrameSink": "trtalk.media.sinks", "NullSink": "trtalk.media.sinks",
    "Mp4Sink": "trtalk.media.mp4",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'trtalk.media' has no attribute {name!r}")
