"""Reading the face input: one image, a folder of frames, or a video file.

Frames come out as HxWx3 RGB uint8 arrays. A :class:`MediaSource` can be
iterated more than once (each pass decodes again), which lets the two-pass
alignment avoid holding a whole full-resolution video in memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trtalk.errors import TrtalkError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def natural_sort_key(name: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers by value: frame2 before frame10.

    Case is ignored. ``re.split`` with a capturing group always alternates
    text, number, text, ..., so keys of different names compare
    position-by-position without mixing str and int.
    """
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def read_image(path: str | Path) -> np.ndarray:
    """One image file as HxWx3 RGB uint8 (alpha dropped, grey expanded, EXIF rotation applied).

    Raises TrtalkError naming the file when it cannot be decoded.
    """
    path = Path(path)
    # imdecode on the bytes rather than imread: imread fails silently on
    # non-ASCII paths on some platforms, and we want one error path.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise TrtalkError(f"cannot read {path}: {err.strerror or err}") from err
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise TrtalkError(f"cannot decode image {path}; is it a valid PNG/JPEG file?")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class MediaSource:
    """A re-iterable source of RGB frames (HxWx3 uint8), in display order.

    kind is "image" (one still), "folder" (image files sorted naturally by
    name) or "video". ``fps`` is the video's average frame rate, None for
    images and folders. ``files`` lists the image files (empty for video).
    Every ``iter()`` decodes from the start again.
    """

    path: Path
    kind: str
    fps: float | None = None
    files: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return str(self.path)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind == "video":
            yield from _decode_video(self.path)
        else:
            for file in self.files:
                yield read_image(file)


def open_media(path: str | Path) -> MediaSource:
    """Inspect ``path`` and return a :class:`MediaSource` for it (nothing decoded yet
    except a video's header).

    A folder is read as its image files (extensions in IMAGE_EXTENSIONS,
    hidden files skipped) in natural name order. A file with an image
    extension is one still; any other file is opened as a video with PyAV.
    """
    path = Path(path)
    if not path.exists():
        raise TrtalkError(f"{path} does not exist; give an image, a folder of frames or a video file")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: natural_sort_key(p.name),
        )
        if not files:
            exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise TrtalkError(f"no image files ({exts}) in folder {path}")
        return MediaSource(path=path, kind="folder", files=tuple(files))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return MediaSource(path=path, kind="image", files=(path,))
    return MediaSource(path=path, kind="video", fps=_probe_video(path))


def read_frames(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """All frames of an image, folder or video as RGB uint8, and the fps (None for stills).

    Unreadable or empty media raise TrtalkError naming the file.
    """
    source = open_media(path)
    frames = list(source)
    if not frames:  # only a video can get here: open_media rejects empty folders
        raise TrtalkError(f"no frames could be decoded from {path}")
    return frames, source.fps


# -- video ---------------------------------------------------------------


def _open_container(path: Path):  # type: ignore[no-untyped-def]
    import av  # lazy: PyAV loads all of FFmpeg

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise TrtalkError(f"cannot open {path} as an image or video ({err})") from err
    if not container.streams.video:
        container.close()
        raise TrtalkError(f"{path} has no video stream")
    return container


def _probe_video(path: Path) -> float | None:
    with _open_container(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return float(rate) if rate else None


def _decode_video(path: Path) -> Iterator[np.ndarray]:
    import av

    with _open_container(path) as container:
        stream = container.streams.video[0]
        # Frame-threaded decoding: several times faster for H.264 at no cost to us.
        stream.thread_type = "AUTO"
        count = 0
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                # Phone videos are often stored sideways with a display matrix;
                # PyAV does not apply it. frame.rotation is the counterclockwise
                # angle to display, and np.rot90 turns counterclockwise.
                quarter_turns = int(round(frame.rotation / 90.0)) % 4
                if quarter_turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
                count += 1
                yield rgb
        except av.FFmpegError as err:
            raise TrtalkError(f"{path} is damaged: decoding failed after {count} frames ({err})") from err
    if count == 0:
        raise TrtalkError(f"no frames could be decoded from {path}")
