"""Media probing and frame reading for images, image folders, video and audio.

Frames are always ``H x W x 3`` RGB ``uint8``.  Images are read with OpenCV,
everything else with PyAV (imported on first use, so importing this module
does not need it).  Problems a user can cause (missing file, garbage file, a
folder with no images, a video with no frames) raise
:class:`trtalk.errors.TrtalkError` with a one-line message naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from trtalk.errors import TrtalkError

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FRAME_PIXELS",
    "MediaInfo",
    "MediaKind",
    "is_image_path",
    "iter_frames",
    "list_image_folder",
    "natural_sort_key",
    "probe",
    "read_image",
]

#: Extensions treated as still images (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

#: Largest image or video frame read, in pixels (100 megapixels, e.g. 10000 x 10000; the largest
#: camera photos are about this size). Checked from the file's header before anything is decoded,
#: so a file that claims huge dimensions costs nothing; at the limit one RGB frame is 300 MB.
MAX_FRAME_PIXELS: int = 100_000_000

MediaKind = Literal["image", "video", "audio", "folder"]


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found out about a path.

    Attributes:
        path: the probed path.
        kind: ``'image'`` (one still), ``'folder'`` (a directory of stills,
            frames in natural order), ``'video'`` (a container with a video
            stream, audio optional) or ``'audio'`` (audio only).
        has_video: True when :func:`iter_frames` can yield frames (images and
            folders included; cover art in audio files does not count).
        has_audio: True when the container has an audio stream.
        fps: video frame rate (average if variable), None for stills/audio.
        num_frames: frame count (1 for an image, the image count for a
            folder; for video the container's count, or an estimate from
            duration x fps when the container does not store one; None for
            audio).
        duration_s: duration in seconds (video stream if any, else audio;
            None for stills).
        width, height: frame size in pixels as :func:`iter_frames` yields it
            (display rotation applied); 0 for audio-only files.
    """

    path: Path
    kind: MediaKind
    has_video: bool
    has_audio: bool
    fps: float | None
    num_frames: int | None
    duration_s: float | None
    width: int
    height: int


# ---------------------------------------------------------------- images


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True when the extension is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def natural_sort_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``f2`` before ``f10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts if p)


def list_image_folder(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), natural order.

    Raises:
        TrtalkError: ``folder`` holds no image files.
    """
    folder = Path(folder)
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_image_path(p)
    ]
    if not files:
        raise TrtalkError(
            f"folder {folder} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file as ``H x W x 3`` RGB uint8.

    Grey images are expanded to 3 channels, alpha is dropped, 16-bit images
    are scaled to 8 bit.  Reads bytes first so non-ASCII paths work
    everywhere.

    Raises:
        TrtalkError: missing or undecodable file.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise TrtalkError(f"image {path} does not exist") from None
    except OSError as exc:
        raise TrtalkError(f"cannot read image {path}: {exc.strerror or exc}") from None
    size = image_header_size(memoryview(data)) if data.size else None
    if size is None:
        raise TrtalkError(f"cannot read image {path}: not a PNG, JPEG, BMP or WebP file")
    _check_frame_size(path, *size)
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own size limit, a failed allocation, a decoder assertion
        reason = str(exc).strip().splitlines()[-1][:120]
        raise TrtalkError(f"cannot read image {path}: not a valid image file ({reason})") from None
    if bgr is None:
        raise TrtalkError(f"cannot read image {path}: not a valid image file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise TrtalkError(f"{path} is {width}x{height} pixels, more than the "
                          f"{MAX_FRAME_PIXELS // 1_000_000} megapixels trtalk reads; downscale it")


def image_header_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from the header of PNG, JPEG, BMP or WebP bytes; None for anything else.

    Reads only the header (no decoding; for JPEG it hops over the segments before the frame
    header), so it is cheap and safe on untrusted files; the decoder still checks the rest.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"BM" and len(data) >= 26:
        if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
            return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = int.from_bytes(data[22:26], "little", signed=True)
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return (int.from_bytes(data[24:27], "little") + 1,
                    int.from_bytes(data[27:30], "little") + 1)
        if chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                    int.from_bytes(data[28:30], "little") & 0x3FFF)
        return None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


# JPEG start-of-frame markers (SOF0..SOF15 less DHT, JPG and DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # segments without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xDA or length < 2:  # scan data before any frame header, or garbage
            return None
        i += 2 + length
    return None


# ---------------------------------------------------------------- PyAV


def _open_av(path: Path) -> av.container.InputContainer:
    import av

    try:
        # Metadata is text from the file: undecodable bytes are replaced, not a UnicodeDecodeError.
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.FFmpegError as exc:
        raise TrtalkError(f"cannot open {path} as media: {_av_reason(exc)}") from None
    except OSError as exc:
        raise TrtalkError(f"cannot open {path}: {exc.strerror or exc}") from None


def _av_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _real_video_streams(container: av.container.InputContainer) -> list[av.VideoStream]:
    """Video streams that are actual video, not cover art."""
    import av

    out = []
    for s in container.streams.video:
        try:
            if s.disposition & av.stream.Disposition.attached_pic:
                continue
        except (AttributeError, TypeError):  # older PyAV
            pass
        out.append(s)
    return out


def _rotation_quarters(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make ``frame`` upright (0..3).

    ``frame.rotation`` is the counter-clockwise angle the display matrix
    applies (phone portrait videos: -90), so rotating the pixels
    counter-clockwise by it gives what players show.
    """
    try:
        rot = int(frame.rotation)
    except AttributeError:  # older PyAV
        return 0
    return round(rot / 90) % 4


def _apply_rotation(frame: av.VideoFrame, rgb: np.ndarray) -> np.ndarray:
    """Rotate ``rgb`` (decoded from ``frame``) upright per its display matrix."""
    k = _rotation_quarters(frame)
    return rgb if k == 0 else np.ascontiguousarray(np.rot90(rgb, k))


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _first_frame(container: av.container.InputContainer, stream: av.stream.Stream,
                 path: Path) -> av.frame.Frame:
    import av

    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise TrtalkError(f"cannot decode {path}: {_av_reason(exc)}") from None
    raise TrtalkError(f"{path} has a {stream.type} stream but no decodable frames (empty media?)")


def _probe_av(path: Path) -> MediaInfo:
    import av

    container = _open_av(path)
    try:
        videos = _real_video_streams(container)
        audios = list(container.streams.audio)
        if not videos and not audios:
            raise TrtalkError(f"{path} has no video or audio stream")
        container_dur = (
            container.duration / av.time_base if container.duration is not None else None
        )
        if videos:
            vs = videos[0]
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            fps = float(rate) if rate else None
            duration = _stream_duration(vs) or container_dur
            _check_frame_size(path, vs.codec_context.width, vs.codec_context.height)
            first = _first_frame(container, vs, path)
            width, height = first.width, first.height
            if _rotation_quarters(first) % 2:
                width, height = height, width
            num_frames = int(vs.frames) if vs.frames else None
            if num_frames is None and duration and fps:
                num_frames = max(1, round(duration * fps))
            return MediaInfo(path, "video", True, bool(audios), fps, num_frames,
                             duration, width, height)
        aus = audios[0]
        duration = _stream_duration(aus) or container_dur
        _first_frame(container, aus, path)
        if duration is not None and duration <= 0:
            raise TrtalkError(f"{path} has an empty audio stream")
        return MediaInfo(path, "audio", False, True, None, None, duration, 0, 0)
    finally:
        container.close()


# ---------------------------------------------------------------- public


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Inspect ``path`` and say what it is; cheap (decodes at most one frame).

    Images are recognised by extension (:data:`IMAGE_EXTENSIONS`), a
    directory is a folder of images, anything else is opened with PyAV.  The
    first frame of the chosen stream is decoded so an unreadable or empty
    file fails here rather than mid-run.

    Raises:
        TrtalkError: missing path, unreadable/garbage file, a folder without
            images, media with no streams or no frames.
    """
    path = Path(path)
    if not path.exists():
        raise TrtalkError(f"{path} does not exist")
    if path.is_dir():
        files = list_image_folder(path)
        first = read_image(files[0])
        return MediaInfo(path, "folder", True, False, None, len(files), None,
                         first.shape[1], first.shape[0])
    if is_image_path(path):
        img = read_image(path)
        return MediaInfo(path, "image", True, False, None, 1, None, img.shape[1], img.shape[0])
    return _probe_av(path)


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Return an iterator over the frames of an image, image folder or video.

    Frames are ``H x W x 3`` RGB uint8:

    * image: exactly one frame;
    * folder: every image in natural order (``f2`` before ``f10``); sizes
      are not forced to match;
    * video: every decoded frame of the first video stream, display rotation
      applied; the container is closed when iteration finishes, fails, or the
      iterator is closed / garbage-collected early.

    A missing path, an image-less folder or an unopenable file raise right
    away (at the call), decoding errors while iterating.

    Raises:
        TrtalkError: as :func:`probe`, plus audio-only input and decoding
            errors mid-stream.
    """
    path = Path(path)
    if not path.exists():
        raise TrtalkError(f"{path} does not exist")
    if path.is_dir():
        return (read_image(f) for f in list_image_folder(path))
    if is_image_path(path):
        return iter([read_image(path)])
    container = _open_av(path)
    videos = _real_video_streams(container)
    if not videos:
        container.close()
        raise TrtalkError(f"{path} has no video frames (audio only?); give a video or image")
    try:
        _check_frame_size(path, videos[0].codec_context.width, videos[0].codec_context.height)
    except TrtalkError:
        container.close()
        raise
    return _iter_video(container, path)


def _iter_video(container: av.container.InputContainer, path: Path) -> Iterator[np.ndarray]:
    """Decoded frames; a file of which only some frames decode (truncated, damaged) is used with
    a warning naming how many decoded against the container's count; none is an error."""
    import av

    try:
        stream = _real_video_streams(container)[0]
        stream.thread_type = "AUTO"
        expected = int(stream.frames) if stream.frames else None
        count = 0
        error = None
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                count += 1
                yield _apply_rotation(frame, rgb)
        except av.FFmpegError as exc:
            if count == 0:
                raise TrtalkError(f"cannot decode {path}: {_av_reason(exc)}") from None
            error = _av_reason(exc)
        if count == 0:
            raise TrtalkError(f"{path} has a video stream but no decodable frames")
        if error is not None or (expected is not None and count < expected):
            of = f" of the {expected} its container lists" if expected else ""
            why = f" (decoding stopped: {error})" if error else ""
            log.warning("%s: only %d frame(s)%s decoded%s; the file looks truncated or damaged, "
                        "using those %d", path, count, of, why, count)
    finally:
        container.close()
