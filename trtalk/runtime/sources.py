"""Live and replayed sources for the streaming runtime: microphone, webcam, audio and video files.

Every source runs one capture thread that puts timestamped items into its own
:class:`BoundedQueue`:

* :class:`AudioChunk` -- mono float32 samples at 16 kHz, with the clock time of the first sample
  (``t``) and the time the last sample became available (``captured``);
* :class:`VideoFrame` -- an RGB frame with its capture time (or whatever a ``FrameProcessor``
  turned it into, e.g. the pose tracker's sample);
* :class:`SourceEvent` -- ``lost`` / ``recovered`` (device unplugged / back) and ``end``.

Timestamps are on the session's :class:`~trtalk.runtime.clock.Clock`, starting at ``t0`` given to
``start``. A lost stretch shows up as a ``lost`` event followed, on recovery, by items whose
timestamps jump over the missing time: consumers fill gaps from the timestamps, never by counting.

Audio queues hold 512 chunks (~10 s of 20 ms blocks, ~650 KB): audio is cheap to keep and
losing it turns speech into silence, so the ring only overflows when inference stalls for 10 s.
Video queues are short (a few frames): only the newest pose matters.

Queue policy: on a real-time clock a full queue drops its *oldest* item (a live device cannot wait;
stale data is worth least) and counts it; on a virtual clock ``put`` blocks (a replay loses nothing).

File sources take ``fail_at_s`` / ``resume_at_s`` (seconds of media time) to simulate a device
being unplugged and plugged back, for testing the consumers' fault handling.

``sounddevice`` (PortAudio) is imported only by :class:`MicSource`; PyAV devices only by
:class:`WebcamSource`.
"""

from __future__ import annotations

import abc
import collections
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from trtalk.errors import TrtalkError
from trtalk.runtime.clock import Clock

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Default audio block: 20 ms. Frame windows end on multiples of 40 ms at 25 fps, so 20 ms blocks
#: add no extra latency there; any block adds at most its own length.
DEFAULT_BLOCK = 320

T = TypeVar("T")


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class AudioChunk:
    """``samples`` (float32, 16 kHz mono) starting at clock time ``t``; all available at ``captured``."""

    t: float
    samples: np.ndarray
    captured: float

    @property
    def end(self) -> float:
        return self.t + len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class VideoFrame:
    """One RGB uint8 frame captured at clock time ``t`` (``captured`` = when it reached us).

    ``index`` counts frames of the source; ``key`` identifies identical content (a file's frame
    index, the same on every loop; None for cameras).
    """

    t: float
    image: np.ndarray
    captured: float
    index: int
    key: int | None = None


@dataclass(frozen=True)
class SourceEvent:
    """A change of a source's state at clock time ``t``: ``lost``, ``recovered`` or ``end``."""

    kind: Literal["lost", "recovered", "end"]
    t: float
    detail: str = ""


# --------------------------------------------------------------------------- queue


class QueueClosed(Exception):
    """Raised by ``put`` on a closed queue."""


class BoundedQueue(Generic[T]):
    """A thread-safe FIFO that never holds more than ``capacity`` items.

    ``policy="drop_oldest"``: ``put`` on a full queue discards the oldest data item (events are
    kept in preference) and counts it in ``dropped``. ``policy="block"``: ``put`` waits for room
    (or for ``close``). ``max_depth`` is the largest size ever observed, always <= capacity.
    """

    def __init__(self, capacity: int, name: str, policy: Literal["drop_oldest", "block"] = "drop_oldest"):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.name = name
        self.policy = policy
        self.dropped = 0
        self.max_depth = 0
        self.puts = 0
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> None:
        with self._cond:
            if self.policy == "block":
                while len(self._items) >= self.capacity and not self._closed:
                    self._cond.wait(0.1)
            if self._closed:
                raise QueueClosed(self.name)
            if len(self._items) >= self.capacity:
                self._drop_one()
            self._items.append(item)
            self.puts += 1
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify_all()

    def _drop_one(self) -> None:
        for i, old in enumerate(self._items):
            if not isinstance(old, SourceEvent):
                del self._items[i]
                break
        else:
            self._items.popleft()
        self.dropped += 1

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` s (None: forever); None on timeout/closed-empty."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> T | None:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Wake every waiter; further ``put`` raises QueueClosed, ``get`` drains what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called (items may still be left to ``get``)."""
        return self._closed

    def stats(self) -> dict[str, int]:
        return {"capacity": self.capacity, "max_depth": self.max_depth, "dropped": self.dropped,
                "items": self.puts}


# --------------------------------------------------------------------------- base


class FrameProcessor(Protocol):
    """Per-frame work done in a video source's capture thread (e.g. face tracking).

    ``open`` and ``close`` run in that thread, so a non-thread-safe detector lives in one thread.
    """

    def open(self) -> None: ...
    def close(self) -> None: ...
    def __call__(self, frame: VideoFrame) -> Any: ...


class Source(abc.ABC):
    """Base of all sources: one capture thread feeding ``queue``; a context manager.

    ``start(t0, clock)`` launches the thread; ``close()`` stops it, joins it and releases the
    device, and is safe to call twice. Errors inside the thread are logged and end the source
    with a ``lost`` then ``end`` event (so the consumer never waits forever).
    """

    kind = "source"

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.queue: BoundedQueue[Any] = BoundedQueue(capacity, name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0
        self.clock: Clock | None = None
        self.error: BaseException | None = None

    def start(self, t0: float, clock: Clock) -> None:
        self.t0 = t0
        self.clock = clock
        self.queue.policy = "drop_oldest" if clock.realtime else "block"
        self._thread = threading.Thread(target=self._guarded, name=f"trtalk-{self.name}", daemon=True)
        self._thread.start()

    def first_sample_time(self, timeout: float, stop: threading.Event | None = None) -> float | None:
        """The clock time of the source's first sample, waiting up to ``timeout`` s for a device to
        deliver it; None when it did not (or ``stop`` was set). File sources know it: ``t0``."""
        return self.t0

    def _guarded(self) -> None:
        try:
            self._run()
        except QueueClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the consumer as a lost device
            self.error = exc
            log.error("%s failed: %s", self.name, exc)
            try:
                now = self.clock.now() if self.clock else 0.0
                self.queue.put(SourceEvent("lost", now, str(exc)))
                self.queue.put(SourceEvent("end", now, str(exc)))
            except QueueClosed:
                pass

    @abc.abstractmethod
    def _run(self) -> None:
        """The capture loop, run on the source's thread until ``stopping`` or the end."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s capture thread did not stop within 5 s", self.name)
        self._thread = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _check_fault_window(fail_at_s: float | None, resume_at_s: float | None) -> None:
    if fail_at_s is not None and fail_at_s < 0:
        raise TrtalkError("fail_at_s must be >= 0")
    if resume_at_s is not None and (fail_at_s is None or resume_at_s <= fail_at_s):
        raise TrtalkError("resume_at_s needs fail_at_s and must be later than it")


# --------------------------------------------------------------------------- audio


class AudioSource(Source):
    """Base of the audio sources: 16 kHz mono float32 `AudioChunk` s, ``block`` samples each
    (the last may be shorter).

    What the pipeline reads from every audio source: ``block``; ``latency``, the device's input
    latency in seconds (None where there is no capture device: a file, pushed or generated
    audio), which widens the lost-audio timeout; ``skipped_s``, the time the source's sample
    counter jumped ahead so far (audio the device lost; 0 where it cannot happen).
    """

    kind = "audio"

    def __init__(self, name: str, capacity: int, block: int, latency: float | None = None) -> None:
        super().__init__(name, capacity)
        if block < 1:
            raise ValueError("block must be >= 1")
        self.block = block
        self.latency: float | None = latency
        self.skipped_s = 0.0


class AudioFileSource(AudioSource):
    """Replays an audio file (wav/mp3/m4a, or a video's audio track) as 16 kHz chunks.

    Chunk i covers media samples [i*block, (i+1)*block) and is stamped ``t = t0 + start/16000``,
    ``captured = t0 + end/16000``; on a real clock it is released at ``captured`` (real-time pace),
    on a virtual clock at once. ``loop`` replays the file forever. ``fail_at_s``/``resume_at_s``
    simulate an unplug: no chunks for that stretch of media time, a ``lost`` event at its start,
    ``recovered`` at its end. ``wave`` gives the samples directly instead of ``path``.
    """

    def __init__(self, path: str | Path | None = None, *, wave: np.ndarray | None = None,
                 block: int = DEFAULT_BLOCK, loop: bool = False, fail_at_s: float | None = None,
                 resume_at_s: float | None = None, capacity: int = 512) -> None:
        from trtalk.audio import load_audio

        super().__init__(f"audio:{Path(path).name if path else 'wave'}", capacity, block)
        if wave is None:
            if path is None:
                raise ValueError("give path or wave")
            wave = load_audio(path)
        self.wave = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(-1))
        _check_fault_window(fail_at_s, resume_at_s)
        self.loop = loop
        self.fail_at_s = fail_at_s
        self.resume_at_s = resume_at_s

    @property
    def duration_s(self) -> float | None:
        """Media length in seconds; None when looping (endless)."""
        return None if self.loop else len(self.wave) / SAMPLE_RATE

    def _run(self) -> None:
        assert self.clock is not None
        n = len(self.wave)
        fail = None if self.fail_at_s is None else round(self.fail_at_s * SAMPLE_RATE)
        resume = None if self.resume_at_s is None else round(self.resume_at_s * SAMPLE_RATE)
        pos = 0  # media sample position on the session timeline (keeps growing when looping)
        lost = False
        while not self.stopping:
            if not self.loop and pos >= n:
                break
            if fail is not None and pos >= fail and (resume is None or pos < resume):
                if not lost:
                    lost = True
                    self.queue.put(SourceEvent("lost", self.t0 + pos / SAMPLE_RATE, "simulated failure"))
                if resume is None:
                    break
                # The device is away: nothing arrives until it is back.
                if not self.clock.sleep_until(self.t0 + resume / SAMPLE_RATE, self._stop):
                    return
                pos = resume
                continue
            if lost:
                lost = False
                self.queue.put(SourceEvent("recovered", self.t0 + pos / SAMPLE_RATE))
            end = pos + self.block
            if fail is not None and pos < fail < end:
                end = fail
            if not self.loop:
                end = min(end, n)
            idx = np.arange(pos, end) % n if self.loop else slice(pos, end)
            samples = self.wave[idx]
            captured = self.t0 + end / SAMPLE_RATE
            if not self.clock.sleep_until(captured, self._stop):
                return
            self.queue.put(AudioChunk(self.t0 + pos / SAMPLE_RATE, samples, captured))
            pos = end
        self.queue.put(SourceEvent("end", self.t0 + pos / SAMPLE_RATE))


def _import_sounddevice() -> Any:
    """sounddevice, or a TrtalkError saying what to install."""
    try:
        import sounddevice
    except ImportError as exc:
        raise TrtalkError("microphone input needs the sounddevice package: pip install sounddevice "
                          "(or pip install 'trtalk[stream]')") from exc
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        hint = "apt install libportaudio2" if sys.platform.startswith("linux") else "install PortAudio"
        raise TrtalkError(f"microphone input needs the PortAudio library ({exc}); {hint}") from exc
    return sounddevice


def resolve_mic(device: str | int | None) -> int | None:
    """An input device index from an index, a (sub)string of a name, or None (the default)."""
    if device is None or device == "":
        return None
    if isinstance(device, int) or str(device).isdigit():
        return int(device)
    sd = _import_sounddevice()
    matches = [i for i, d in enumerate(sd.query_devices())
               if d.get("max_input_channels", 0) > 0 and str(device).lower() in d["name"].lower()]
    if not matches:
        raise TrtalkError(f"no microphone matches {device!r}; run `trtalk devices` to list them")
    return matches[0]


class MicSource(AudioSource):
    """A microphone through PortAudio (sounddevice): 16 kHz mono float32 in ``block``-sample chunks.

    The PortAudio callback only copies the block into the bounded queue (a ring: when the consumer
    falls behind the oldest chunks are dropped and counted). Chunk times come from the sample
    counter (``t = first_time + samples_before / 16000``) so jitter of the callback does not move
    audio around; ``first_time`` is the first callback's time less its block. A device can take a
    while to deliver its first block after it is opened (PulseAudio: 1-2 s measured), so the
    pipeline waits for it (:meth:`first_sample_time`) and starts its timeline there instead of
    counting the start-up as lost audio. The stream asks PortAudio for ``latency_s`` of input
    latency (its actual one is in ``latency``, logged), low enough that blocks arrive steadily well
    within the pipeline's lost-audio timeout.

    Every ``resync_s`` the sample counter is checked against the callbacks' arrival: samples the
    device lost (an input overflow) or a device clock slower than the session's would otherwise
    make the timestamps fall behind the clock for good, and frames would wait for audio that is
    stamped too early. The best (smallest) arrival lag of the last ``resync_s`` is compared with
    the best ever seen; when it is worse by more than ``max_skew_s``, the counter jumps ahead by
    the difference -- a timestamp gap, which the consumer fills with silence. A single late
    callback (the GIL held by inference, a scheduler hiccup) moves nothing: its samples were only
    delayed, not lost. Timestamps never move back (the consumer would trim the overlap).

    A dropped chunk or an overflow leaves a timestamp gap, which the consumer fills with silence.
    If the stream dies (unplugged) the source emits ``lost`` and tries to reopen the device every
    second, then ``recovered``.
    """

    def __init__(self, device: str | int | None = None, block: int = DEFAULT_BLOCK, capacity: int = 512,
                 latency_s: float = 0.04, max_skew_s: float = 0.1, resync_s: float = 1.0) -> None:
        super().__init__(f"mic:{device if device is not None else 'default'}", capacity, block)
        self.sd = _import_sounddevice()
        self.device = resolve_mic(device)
        self.latency_s = latency_s
        self.max_skew_s = max_skew_s
        self.resync_s = resync_s
        self.duration_s = None
        # latency: PortAudio's input latency of the open stream (set when it opens); skipped_s:
        # counted time the sample counter jumped ahead (samples lost)
        self.overflows = 0  # blocks PortAudio flagged as input overflow
        self._counted = 0
        self._first: float | None = None
        self._started = threading.Event()
        self._best_lag = 0.0  # smallest arrival lag seen (the device's delivery floor)
        self._win_lag = float("inf")  # smallest arrival lag in the current window
        self._win_end = 0.0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = self.clock.now() if self.clock else time.monotonic()
        if self._first is None:
            self._first = now - frames / SAMPLE_RATE
            self._started.set()
        if status:
            if getattr(status, "input_overflow", False):
                self.overflows += 1
            log.debug("microphone status: %s", status)
            self._win_end = now + self.resync_s
        self._resync(now, now - (self._first + (self._counted + frames) / SAMPLE_RATE))
        t = self._first + self._counted / SAMPLE_RATE
        self._counted += frames
        try:
            self.queue.put(AudioChunk(t, indata[:, 0].astype(np.float32, copy=True), now))
        except QueueClosed:
            pass

    def _resync(self, now: float, lag: float) -> None:
        """Track the arrival lag of a block (arrival - counted time of its last sample); at the end
        of each window jump the counter ahead if the window's best lag fell behind (see class doc)."""
        self._win_lag = min(self._win_lag, lag)
        if now < self._win_end:
            return
        behind = self._win_lag - self._best_lag
        if behind > self.max_skew_s:
            skip = int(round(behind * SAMPLE_RATE))
            self._counted += skip
            self.skipped_s += skip / SAMPLE_RATE
            log.info("microphone %s: %.0f ms of samples missing (overflow or slow device clock); "
                     "skipping ahead", self.name, 1000 * behind)
        else:
            self._best_lag = min(self._best_lag, self._win_lag)
        self._win_lag = float("inf")
        self._win_end = now + self.resync_s

    def first_sample_time(self, timeout: float, stop: threading.Event | None = None) -> float | None:
        """The clock time of the first sample, once the device delivered its first block."""
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.02):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()) or self.error is not None:
                return None
        return self._first

    def _open_stream(self) -> Any:
        stream = self.sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                     blocksize=self.block, device=self.device, callback=self._callback,
                                     latency=self.latency_s)
        stream.start()
        self.latency = float(stream.latency)
        log.info("microphone %s open: %d-sample blocks, input latency %.0f ms", self.name, self.block,
                 1000 * self.latency)
        return stream

    def _run(self) -> None:
        assert self.clock is not None
        try:
            stream = self._open_stream()
        except Exception as exc:
            raise TrtalkError(f"cannot open microphone {self.device}: {exc}; see `trtalk devices`") from exc
        lost = False
        try:
            while not self.stopping:
                if stream is not None and stream.active:
                    self._stop.wait(0.2)
                    continue
                if not lost:
                    lost = True
                    self.queue.put(SourceEvent("lost", self.clock.now(), "microphone stream stopped"))
                if stream is not None:
                    stream.close(ignore_errors=True)
                    stream = None
                self._stop.wait(1.0)
                try:
                    self._first, self._counted, self._best_lag = None, 0, 0.0
                    self._win_lag = float("inf")
                    stream = self._open_stream()
                    lost = False
                    self.queue.put(SourceEvent("recovered", self.clock.now()))
                except Exception as exc:  # noqa: BLE001 - keep trying until stopped
                    log.debug("microphone reopen failed: %s", exc)
                    stream = None
        finally:
            if stream is not None:
                stream.close(ignore_errors=True)


# --------------------------------------------------------------------------- video


def _media_fps(path: Path) -> float | None:
    from trtalk.media.read import probe

    info = probe(path)
    return getattr(info, "fps", None)


class VideoFileSource(Source):
    """Replays a video (or a still image, or a folder of frames) as camera frames.

    Frame i of the replay is stamped ``t = t0 + i / fps`` (``fps``: given, else the video's, else
    25); on a real clock it is released at that time. ``loop`` restarts the media at its end
    (frame ``key`` = index within the file, so identical frames can share cached work). A still
    image is repeated at ``fps``. ``fail_at_s``/``resume_at_s``: no frames for that stretch of
    time, with ``lost``/``recovered`` events. ``processor`` (see :class:`FrameProcessor`) turns
    each frame into the queued item inside the capture thread.
    """

    kind = "video"

    def __init__(self, path: str | Path, fps: float | None = None, loop: bool = True,
                 fail_at_s: float | None = None, resume_at_s: float | None = None,
                 processor: FrameProcessor | None = None, capacity: int = 8) -> None:
        from trtalk.media.read import is_image_path

        self.path = Path(path)
        super().__init__(f"video:{self.path.name}", capacity)
        if not self.path.exists():
            raise TrtalkError(f"pose source {self.path} does not exist")
        _check_fault_window(fail_at_s, resume_at_s)
        self.still = self.path.is_file() and is_image_path(self.path)
        self.fps = float(fps or (None if self.still or self.path.is_dir() else _media_fps(self.path)) or 25.0)
        self.loop = loop or self.still
        self.fail_at_s = fail_at_s
        self.resume_at_s = resume_at_s
        self.processor = processor

    def _frames(self) -> Iterator[tuple[int, np.ndarray]]:
        from trtalk.media.read import iter_frames

        if self.still:
            image = next(iter(iter_frames(self.path)))
            while True:
                yield 0, image
        while True:
            count = 0
            for key, image in enumerate(iter_frames(self.path)):
                count += 1
                yield key, image
            if not self.loop or count == 0:
                return

    def _run(self) -> None:
        assert self.clock is not None
        proc = self.processor
        if proc is not None:
            proc.open()
        try:
            self._replay(proc)
        finally:
            if proc is not None:
                proc.close()

    def _replay(self, proc: FrameProcessor | None) -> None:
        assert self.clock is not None
        frames = self._frames()
        lost = False
        i = 0
        for key, image in frames:
            if self.stopping:
                return
            t = self.t0 + i / self.fps
            media_t = i / self.fps
            if self.fail_at_s is not None and media_t >= self.fail_at_s and (
                    self.resume_at_s is None or media_t < self.resume_at_s):
                if not lost:
                    lost = True
                    self.queue.put(SourceEvent("lost", t, "simulated failure"))
                if self.resume_at_s is None:
                    break
                i += 1  # the camera's frames during the outage are lost
                continue
            if lost:
                lost = False
                self.queue.put(SourceEvent("recovered", t))
            if not self.clock.sleep_until(t, self._stop):
                return
            frame = VideoFrame(t, image, t, i, key)
            self.queue.put(proc(frame) if proc is not None else frame)
            i += 1
        self.queue.put(SourceEvent("end", self.t0 + i / self.fps))


def _camera_format() -> tuple[str, str]:
    if sys.platform.startswith("linux"):
        return "v4l2", "/dev/video0"
    if sys.platform == "darwin":
        return "avfoundation", "0"
    if sys.platform.startswith("win"):
        return "dshow", "video=Integrated Camera"
    raise TrtalkError(f"no webcam support on {sys.platform}; use --pose FILE")


class WebcamSource(Source):
    """A webcam through PyAV/FFmpeg: v4l2 (Linux, ``/dev/videoN`` or N), avfoundation (macOS,
    index), dshow (Windows, ``video=NAME``).

    ``size`` (W, H) and ``fps`` are requested as device options; the actual ones are in
    ``actual_size``/``actual_fps`` once opened (logged). Frames are stamped with the clock time at
    which they were read. A read error (unplugged) emits ``lost``, then the device is reopened every
    second until it works (``recovered``).
    """

    kind = "video"

    def __init__(self, device: str | int | None = None, size: tuple[int, int] | None = (640, 480),
                 fps: float = 30.0, processor: FrameProcessor | None = None, capacity: int = 4) -> None:
        fmt, default = _camera_format()
        if device is None or device == "":
            device = default
        elif fmt == "v4l2" and str(device).isdigit():
            device = f"/dev/video{device}"
        super().__init__(f"webcam:{device}", capacity)
        self.format = fmt
        self.device = str(device)
        self.size = size
        self.fps = fps
        self.processor = processor
        self.actual_size: tuple[int, int] | None = None
        self.actual_fps: float | None = None
        if fmt == "v4l2" and not Path(self.device).exists():
            raise TrtalkError(f"no camera at {self.device}; run `trtalk devices` to list cameras")

    def _open(self) -> Any:
        import av

        options = {"framerate": f"{self.fps:g}"}
        if self.size:
            options["video_size"] = f"{self.size[0]}x{self.size[1]}"
        container = av.open(self.device, format=self.format, options=options)
        stream = container.streams.video[0]
        self.actual_size = (stream.codec_context.width, stream.codec_context.height)
        rate = stream.average_rate or stream.guessed_rate
        self.actual_fps = float(rate) if rate else None
        log.info("camera %s: %sx%s at %s fps (asked %s at %g)", self.device, *self.actual_size,
                 self.actual_fps, self.size, self.fps)
        return container

    def _run(self) -> None:
        assert self.clock is not None
        proc = self.processor
        if proc is not None:
            proc.open()
        container = None
        lost = False
        i = 0
        try:
            while not self.stopping:
                try:
                    if container is None:
                        container = self._open()
                        if lost:
                            lost = False
                            self.queue.put(SourceEvent("recovered", self.clock.now()))
                    for av_frame in container.decode(video=0):
                        if self.stopping:
                            return
                        now = self.clock.now()
                        frame = VideoFrame(now, av_frame.to_ndarray(format="rgb24"), now, i)
                        self.queue.put(proc(frame) if proc is not None else frame)
                        i += 1
                    raise OSError("camera stream ended")
                except QueueClosed:
                    return
                except Exception as exc:
                    if i == 0 and not lost and container is None:
                        raise TrtalkError(f"cannot open camera {self.device}: {exc}") from exc
                    if not lost:
                        lost = True
                        self.queue.put(SourceEvent("lost", self.clock.now(), str(exc)))
                    if container is not None:
                        container.close()
                        container = None
                    self._stop.wait(1.0)
        finally:
            if container is not None:
                container.close()
            if proc is not None:
                proc.close()


__all__ = [
    "DEFAULT_BLOCK",
    "SAMPLE_RATE",
    "AudioChunk",
    "AudioFileSource",
    "AudioSource",
    "BoundedQueue",
    "FrameProcessor",
    "MicSource",
    "QueueClosed",
    "Source",
    "SourceEvent",
    "VideoFileSource",
    "VideoFrame",
    "WebcamSource",
    "resolve_mic",
]

