"""Reading the face input: one image, a folder of frames, or a video file.

A thin re-iterable view over `trtalk.media.read` (which owns image/video decoding): frames
come out as HxWx3 RGB uint8, and a :class:`MediaSource` can be iterated more than once (each
pass decodes again), which lets the two-pass alignment avoid holding a whole full-resolution
video in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtalk.errors import TrtalkError
from trtalk.media.read import (
    IMAGE_EXTENSIONS,
    is_image_path,
    iter_frames,
    list_image_folder,
    natural_sort_key,
    probe,
    read_image,
)

__all__ = ["IMAGE_EXTENSIONS", "MediaSource", "natural_sort_key", "open_media", "read_frames", "read_image"]


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
            return iter_frames(self.path)
        return (read_image(f) for f in self.files)


def open_media(path: str | Path) -> MediaSource:
    """Inspect ``path`` and return a :class:`MediaSource` for it (a video's first frame is
    decoded to check it, nothing else).

    A folder is read as its image files in natural name order; a file with an image extension
    is one still; any other file must be a video. Bad media raise TrtalkError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise TrtalkError(f"{path} does not exist; give an image, a folder of frames or a video file")
    if path.is_dir():
        return MediaSource(path=path, kind="folder", files=tuple(list_image_folder(path)))
    if is_image_path(path):
        return MediaSource(path=path, kind="image", files=(path,))
    info = probe(path)
    if not info.has_video:
        raise TrtalkError(f"{path} has no video stream; give an image, a folder of frames or a video file")
    return MediaSource(path=path, kind="video", fps=info.fps)


def read_frames(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """All frames of an image, folder or video as RGB uint8, and the fps (None for stills).

    Unreadable or empty media raise TrtalkError naming the file.
    """
    source = open_media(path)
    frames = list(source)
    if not frames:
        raise TrtalkError(f"no frames could be decoded from {path}")
    return frames, source.fps
