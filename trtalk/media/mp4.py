"""The one mp4 writer: :class:`Mp4Sink`, H.264 video plus AAC audio, written atomically.

Used for every mp4 trtalk writes: ``trtalk render``, ``trtalk demo``, ``trtalk stream
--record``.  The audio track is either given whole up front (offline rendering) or
pushed piece by piece with ``write_audio`` while frames arrive (live recording).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import deque
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output, check_writable, disk_full, disk_full_error
from trtalk.media.frames import check_frame, pad_to_even
from trtalk.media.sinks import FrameSink
from trtalk.signals import raise_if_interrupted

log = logging.getLogger(__name__)

__all__ = ["CONTAINERS", "Mp4Sink", "available_video_encoder", "check_video_path",
           "VIDEO_ENCODER_PREFERENCE"]

#: Output file extensions and the FFmpeg muxer each gets (H.264 + AAC fit all of them).
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def check_video_path(path: str | os.PathLike[str], flag: str = "output") -> str:
    """The muxer for ``path``'s extension; TrtalkError for any other (``x.gif`` would otherwise
    be MP4 data under a GIF name)."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise TrtalkError(f"{flag} {path}: cannot write {suffix or 'a file without extension'}; "
                          f"give a {', '.join(CONTAINERS)} file name")
    return CONTAINERS[suffix]

#: Encoders tried in order; the first one that exists in this PyAV/FFmpeg
#: build *and* opens is used.  ``h264`` resolves to FFmpeg's default H.264
#: encoder, whatever that is in the build.
VIDEO_ENCODER_PREFERENCE: tuple[str, ...] = ("libx264", "h264", "libopenh264", "mpeg4")

_AAC_BIT_RATE = 64_000
_AAC_FALLBACK_RATE = 48_000
_CRF = 18  # x264 quality of offline files
#: Largest frame (pixels) encoded at x264's medium preset; larger ones at veryfast.
_MEDIUM_MAX_PIXELS = 320 * 320
_LIVE_CRF = 20  # and of live recordings (encoded at the veryfast preset)


def _encoder_opens(name: str) -> bool:
    """True when encoder ``name`` exists and opens for a small yuv420p stream.

    Existence alone is not enough: hardware encoders (``h264_nvenc``...) are
    compiled in but fail to open without their device.
    """
    try:
        codec = av.codec.Codec(name, "w")
        ctx = av.CodecContext.create(codec)
        ctx.width = 64
        ctx.height = 64
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25)
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - any failure means "unusable"
        log.debug("video encoder %s unusable: %s", name, exc)
        return False
    return True


@functools.lru_cache(maxsize=1)
def available_video_encoder() -> str:
    """Return the FFmpeg name of the encoder :class:`Mp4Sink` will use.

    Tries :data:`VIDEO_ENCODER_PREFERENCE` in order and logs a warning when
    it has to fall back from ``libx264``.  The answer is cached per process.

    Raises:
        TrtalkError: no usable video encoder in this PyAV build.
    """
    available = av.codecs_available
    for name in VIDEO_ENCODER_PREFERENCE:
        if name not in available:
            continue
        if _encoder_opens(name):
            resolved = av.codec.Codec(name, "w").name
            if resolved != "libx264":
                log.warning(
                    "libx264 is not usable in this PyAV build; encoding video with %s "
                    "(%s) instead, expect larger files or lower quality",
                    name,
                    resolved,
                )
            return name
    raise TrtalkError(
        "this PyAV build has no usable video encoder (tried "
        + ", ".join(VIDEO_ENCODER_PREFERENCE)
        + "); install the PyPI 'av' wheel, which bundles libx264"
    )


def _aac_rate_for(sample_rate: int) -> int:
    """Encoder rate: the input rate if AAC accepts it, else 48 kHz."""
    rates = av.codec.Codec("aac", "w").audio_rates
    if rates is None or sample_rate in rates:
        return sample_rate
    log.info("aac encoder does not take %d Hz; resampling audio to %d Hz",
             sample_rate, _AAC_FALLBACK_RATE)
    return _AAC_FALLBACK_RATE


class _Aborted(Exception):
    """Thrown into ``atomic_output`` to make it discard the temp file."""


class Mp4Sink(FrameSink):
    """Write RGB frames and mono audio to an H.264/AAC mp4, atomically.

    Offline, with the whole audio track up front::

        with Mp4Sink("out.mp4", fps=25, audio=wave, sample_rate=16000) as sink:
            for frame in frames:          # HxWx3 RGB uint8
                sink.write(frame)
        # out.mp4 exists only now, and only if the block raised nothing

    Live, with the audio pushed as it arrives (``accepts_audio`` is True)::

        with Mp4Sink("rec.mp4", fps=25, push_audio=True, live=True) as rec:
            rec.write_audio(samples)      # any time, any amount
            rec.write(frame, pts_s=t)

    Promises:

    * **Atomic.**  Everything goes to a hidden temp file next to ``path``
      (see :func:`trtalk.fsutil.atomic_output`); ``close`` after a clean run
      renames it onto ``path``.  An exception in the ``with`` block (Ctrl-C
      included, unless ``live``), or a failure while finishing, removes the
      temp file and leaves ``path`` as it was.  A sink garbage-collected
      without ``close`` is discarded the same way.
    * **Video.**  H.264 via libx264 at ``crf`` (falling back to FFmpeg's
      ``h264``, ``libopenh264`` and finally ``mpeg4`` with a logged warning;
      :func:`available_video_encoder` says which), pixel format yuv420p,
      stream time base ``1/fps``.  Odd widths/heights are padded to even by
      repeating the last column/row (:func:`trtalk.media.frames.pad_to_even`).
      All frames must have the same size: ``size`` (W, H) if given, else the
      first frame's.
    * **Timestamps.**  ``write(frame, pts_s)`` takes an optional presentation
      time in seconds, rounded to the frame grid (``round(pts_s * fps)``); it
      must increase strictly, gaps are allowed (frames dropped live).  Without
      it frames are consecutive.
    * **Audio.**  Float32 mono in [-1, 1] (clipped) at ``sample_rate`` Hz,
      encoded as AAC (at ``sample_rate`` if the encoder takes it, else
      resampled to 48 kHz).  There is an audio track when ``audio`` is given
      or ``push_audio`` is set.  Audio is muxed interleaved with the video, up
      to each frame's end time as far as it is known, and at ``close`` it is
      **trimmed or padded with silence to exactly the video's end time**
      ``(last_slot + 1) / fps`` (``frames_written / fps`` when ``pts_s`` is
      never given).  So audio and video durations agree (the container's
      audio duration is exact; decoders may return up to one AAC frame, 1024
      samples, of trailing padding).  Pushed audio waiting to be encoded is
      bounded by how far the audio runs ahead of the video, not by the
      session length.
    * ``frames_written`` counts frames accepted by ``write``;
      ``audio_samples_written`` the samples encoded so far.

    Args:
        path: the mp4 to write.
        fps: frame rate of the frame grid.
        size: (W, H) every frame must have; default the first frame's.
        audio: the whole audio track, or None.
        sample_rate: rate of ``audio`` / of the pushed samples.
        crf: x264 constant rate factor; default 18, or 20 when ``live``. Offline, frames up to
            320x320 pixels are encoded at x264's medium preset, larger ones at veryfast.
        push_audio: the audio track is fed with :meth:`write_audio` while
            frames are written (then ``accepts_audio`` is True); excludes ``audio``.
        live: a recording of a live session: x264 runs at the veryfast preset
            without lookahead (``tune=zerolatency``, so a killed session loses
            the fewest frames), and a KeyboardInterrupt leaving the ``with``
            block finalises the file instead of discarding it (Ctrl-C is how a
            live session ends; with no frame yet there is nothing to keep and the
            temp file is removed).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = 25.0,
        size: tuple[int, int] | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        crf: int | None = None,
        *,
        push_audio: bool = False,
        live: bool = False,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if size is not None and (len(size) != 2 or min(size) < 2):
            raise ValueError(f"size must be (W, H) with both >= 2, got {size}")
        if audio is not None and push_audio:
            raise ValueError("give the whole audio or push_audio=True, not both")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._path = Path(path)
        self._fps = float(fps)
        self._rate = Fraction(self._fps).limit_denominator(10_000)
        self._size = (int(size[0]), int(size[1])) if size is not None else None
        self._sample_rate = int(sample_rate)
        self._live = bool(live)
        self._crf = int(crf) if crf is not None else (_LIVE_CRF if live else _CRF)
        self._push = bool(push_audio)
        self.accepts_audio = self._push  # the audio track is pushed with write_audio
        self._has_audio = audio is not None or self._push

        self._pending: deque[np.ndarray] = deque()  # audio received, not yet encoded
        self._pending_n = 0
        self._audio_out = 0  # samples at self._sample_rate handed to the encoder
        if audio is not None:
            self._queue_audio(self._mono(audio))

        self._frames_written = 0
        self._last_pts = -1
        self._closed = True  # until the container is open; keeps __del__ quiet on early errors
        self._vstream: av.VideoStream | None = None
        self._astream: av.AudioStream | None = None

        muxer = check_video_path(self._path)
        check_writable(self._path)
        self._atomic = atomic_output(self._path, interruptible=not live)
        self._tmp = self._atomic.__enter__()
        try:
            self._container = av.open(
                str(self._tmp), mode="w", format=muxer,
                options={"movflags": "+faststart"} if muxer in ("mp4", "mov") else {},
            )
        except BaseException:
            with contextlib.suppress(_Aborted):
                self._atomic.__exit__(_Aborted, _Aborted(), None)
            raise
        self._closed = False
        log.debug("Mp4Sink writing %s via %s", self._path, self._tmp)

    # -- properties -----------------------------------------------------
    @property
    def audio_samples_written(self) -> int:
        """Audio samples (at ``sample_rate``) encoded so far."""
        return self._audio_out

    @property
    def video_codec(self) -> str | None:
        """FFmpeg name of the video encoder in use (None before the first frame)."""
        return None if self._vstream is None else self._vstream.codec_context.name

    # -- context manager (entering is the base's) -------------------------
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or (self._live and issubclass(exc_type, KeyboardInterrupt)
                                and self._frames_written > 0):
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        try:
            if not self._closed:
                log.warning("Mp4Sink for %s was never closed; discarding it", self._path)
                self.abort()
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    # -- audio ----------------------------------------------------------
    @staticmethod
    def _mono(samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono 1-D float32, got shape {x.shape}")
        return np.clip(x.astype(np.float32, copy=False), -1.0, 1.0)

    def _queue_audio(self, x: np.ndarray) -> None:
        if x.size:
            self._pending.append(x)
            self._pending_n += x.size

    def _write_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 samples (clipped to [-1, 1]) to the audio track.

        Raises:
            TypeError: the sink was not opened with ``push_audio=True``.
            ValueError: the sink is closed, or the samples are not mono.
        """
        if not self._push:
            raise TypeError(f"this Mp4Sink ({self._path}) was not opened with push_audio=True")
        if self._closed:
            raise ValueError(f"write_audio() on a closed Mp4Sink ({self._path})")
        self._queue_audio(self._mono(samples))

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` pending samples, zeros (silence) past what is pending."""
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
        return out

    def _encode_audio_until(self, t_end: Fraction, pad: bool) -> None:
        """Encode audio up to ``t_end`` seconds; past the pending audio, silence if ``pad``,
        else stop there (pushed audio still to come)."""
        if self._astream is None:
            return
        target = round(t_end * self._sample_rate)
        if not pad:
            target = min(target, self._audio_out + self._pending_n)
        n = target - self._audio_out
        if n <= 0:
            return
        af = av.AudioFrame.from_ndarray(self._take(n)[None, :], format="flt", layout="mono")
        af.sample_rate = self._sample_rate
        af.pts = self._audio_out
        af.time_base = Fraction(1, self._sample_rate)
        for packet in self._astream.encode(af):
            self._container.mux(packet)
        self._audio_out = target

    # -- video ----------------------------------------------------------
    def _open_streams(self, width: int, height: int) -> None:
        enc_w, enc_h = width + width % 2, height + height % 2
        if (enc_w, enc_h) != (width, height):
            log.info("padding %dx%d frames to %dx%d for yuv420p", width, height, enc_w, enc_h)
        name = available_video_encoder()
        vs = self._container.add_stream(name, rate=self._rate)
        vs.width = enc_w
        vs.height = enc_h
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = 1 / self._rate
        vs.time_base = 1 / self._rate
        resolved = vs.codec_context.name
        if resolved == "libx264":
            if self._live:
                vs.options = {"crf": str(self._crf), "preset": "veryfast", "tune": "zerolatency"}
            elif enc_w * enc_h > _MEDIUM_MAX_PIXELS:
                # x264's medium preset costs ~18 ms a 512x512 frame on 2 cores (more than the warp
                # avatar makes it in); veryfast ~7.5 ms, at the same crf a smaller file (measured).
                vs.options = {"crf": str(self._crf), "preset": "veryfast"}
            else:
                vs.options = {"crf": str(self._crf), "preset": "medium"}
        elif resolved == "mpeg4":
            vs.codec_context.bit_rate = max(500_000, int(enc_w * enc_h * self._fps * 0.25))
        else:
            vs.codec_context.bit_rate = max(500_000, int(enc_w * enc_h * self._fps * 0.15))
        self._vstream = vs
        if self._has_audio:
            enc_rate = _aac_rate_for(self._sample_rate)
            aus = self._container.add_stream("aac", rate=enc_rate, layout="mono")
            aus.codec_context.bit_rate = _AAC_BIT_RATE
            self._astream = aus

    def write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        try:
            self._write(frame_rgb, pts_s)
        except OSError as exc:
            if not disk_full(exc):
                raise
            self.abort()  # nothing partial is kept
            raise disk_full_error(self._path) from None

    def write_audio(self, samples: np.ndarray) -> None:
        try:
            self._write_audio(samples)
        except OSError as exc:
            if not disk_full(exc):
                raise
            self.abort()
            raise disk_full_error(self._path) from None

    def _write(self, frame_rgb: np.ndarray, pts_s: float | None = None) -> None:
        """Encode one ``H x W x 3`` RGB uint8 frame.

        Args:
            frame_rgb: the frame; must match ``size`` (or the first frame).
            pts_s: presentation time in seconds; rounded to the ``1/fps``
                grid and must increase strictly.  Default: right after the
                previous frame.

        Raises:
            ValueError: wrong shape/dtype/size, non-increasing ``pts_s``,
                or the sink is closed.
        """
        if self._closed:
            raise ValueError(f"write() on a closed Mp4Sink ({self._path})")
        if not self._live:
            raise_if_interrupted()  # a signal whose exception a library swallowed: stop now
        frame_rgb = check_frame(frame_rgb)
        h, w = frame_rgb.shape[:2]
        if self._size is None:
            self._size = (w, h)
        if (w, h) != self._size:
            raise ValueError(
                f"frame is {w}x{h} but this Mp4Sink was set up for "
                f"{self._size[0]}x{self._size[1]} (W x H)"
            )
        if pts_s is None:
            pts = self._last_pts + 1
        else:
            pts = round(pts_s * self._rate)
            if pts <= self._last_pts:
                raise ValueError(
                    f"pts_s={pts_s} maps to frame slot {pts}, not after the previous "
                    f"slot {self._last_pts} at {float(self._fps)} fps"
                )
        if self._vstream is None:
            self._open_streams(w, h)
        assert self._vstream is not None
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(frame_rgb)), format="rgb24")
        vf.pts = pts
        vf.time_base = 1 / self._rate
        for packet in self._vstream.encode(vf):
            self._container.mux(packet)
        self._last_pts = pts
        self._frames_written += 1
        # Whole audio is known: pad past its end right away. Pushed audio may still come.
        self._encode_audio_until(Fraction(pts + 1) / self._rate, pad=not self._push)

    # -- finishing ------------------------------------------------------
    def close(self) -> None:
        """Equalise the audio to the video's end, flush the encoders and move the file
        into place.  Idempotent.

        On any failure here the temp file is removed and the error propagates.

        Raises:
            TrtalkError: no frame was ever written (nothing is saved).
        """
        if self._closed:
            return
        try:
            if self._frames_written == 0:
                raise TrtalkError(
                    f"no frames were produced for {self._path}; nothing was saved "
                    "(is the input audio empty?)"
                )
            assert self._vstream is not None
            self._encode_audio_until(Fraction(self._last_pts + 1) / self._rate, pad=True)
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
            if self._astream is not None:
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            self._container.close()
        except BaseException as exc:
            self.abort()
            if disk_full(exc):
                raise disk_full_error(self._path) from None
            raise
        self._closed = True
        self._pending.clear()
        self._atomic.__exit__(None, None, None)
        log.info(
            "wrote %s: %d frames at %g fps (%.2f s)%s",
            self._path,
            self._frames_written,
            self._fps,
            (self._last_pts + 1) / self._fps,
            " with audio" if self._astream is not None else "",
        )

    def abort(self) -> None:
        """Stop without saving: close the container and delete the temp file.

        ``path`` is left as it was before this sink was created.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(_Aborted):
            self._atomic.__exit__(_Aborted, _Aborted(), None)
        log.debug("discarded %s", self._tmp)
