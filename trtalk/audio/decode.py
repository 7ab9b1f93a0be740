"""Decode any common audio or video file to a mono float32 wave with PyAV.

Promise: ``load_audio`` returns a 1-D float32 array (samples,) in [-1, 1] at
``sample_rate`` Hz (16 kHz by default, what the PC-AVS mel frontend expects),
from wav, mp3, m4a/aac, or the first audio track of mp4/mov/mkv. Problems the
user can fix (missing file, not media, no audio track, no samples) raise
:class:`trtalk.errors.TrtalkError` with a one-line message naming the file.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import av
import av.error
import numpy as np

from trtalk.errors import TrtalkError

logger = logging.getLogger(__name__)

__all__ = ["load_audio", "audio_duration"]

_FORMATS_HINT = "use wav, mp3, m4a/aac, or a video (mp4/mov) with sound"


def _open(path: str | os.PathLike) -> tuple[str, av.container.InputContainer]:
    """Open ``path`` for reading, turning every failure into a TrtalkError."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise TrtalkError(f"audio file not found: {name}; check the path")
    if os.path.getsize(name) == 0:
        raise TrtalkError(f"{name} is empty (0 bytes); pass a file with sound")
    try:
        # Metadata is text from the file: undecodable bytes are replaced, not a UnicodeDecodeError.
        container = av.open(name, mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise TrtalkError(f"cannot read {name} as media ({exc.__class__.__name__}); {_FORMATS_HINT}") from exc
    return name, container


def _audio_stream(name: str, container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise TrtalkError(f"{name} has no audio track; {_FORMATS_HINT}")
    return container.streams.audio[0]


def _resampled_chunks(
    name: str, container: av.container.InputContainer, sample_rate: int
) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks at ``sample_rate`` from the first audio track."""
    stream = _audio_stream(name, container)
    # 'flt' is packed float32, so to_ndarray() gives (1, n) for mono.
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)
        # Flushing returns the samples still held inside the resampler's filter
        # (its delay line); skipping it would drop the tail of the file.
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as exc:
        raise TrtalkError(f"cannot decode the audio of {name} ({exc}); re-encode it, e.g. to wav") from exc


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio track of ``path`` to mono float32 at ``sample_rate``.

    Returns an array of shape (samples,), dtype float32, clipped to [-1, 1]
    (lossy decoders can overshoot full scale slightly). Channels are downmixed
    by FFmpeg's resampler. Raises TrtalkError if the file is missing, is not
    readable media, has no audio track, or decodes to zero samples.
    """
    name, container = _open(path)
    with container:
        chunks = list(_resampled_chunks(name, container, sample_rate))
    wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if wave.size == 0:
        raise TrtalkError(f"{name} is empty (no audio samples decoded); pass a file with sound")
    np.clip(wave, -1.0, 1.0, out=wave)
    logger.debug("decoded %s: %d samples at %d Hz (%.3f s)", name, wave.size, sample_rate, wave.size / sample_rate)
    return wave.astype(np.float32, copy=False)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of the first audio track of ``path``, from the header.

    Cheap (no decoding); it is the container's claim, so it can differ from
    ``len(load_audio(path)) / 16000`` by a codec frame or so. Falls back to the
    container duration when the stream has none. Same errors as ``load_audio``
    except the empty check.
    """
    name, container = _open(path)
    with container:
        stream = _audio_stream(name, container)
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    raise TrtalkError(f"cannot tell the duration of {name}; re-encode it, e.g. to wav")
