"""`trtalk serve`'s web server (aiohttp + aiortc): the page, signalling, uploads, metrics.

Endpoints (every one checks the token when the server has one: ``?token=``, header
``Authorization: Bearer <token>`` or ``X-Trtalk-Token``):

- ``GET /``: the page (``trtalk/serve/static``: HTML + JS, no build step, nothing from a CDN);
- ``GET /api/config``: avatars, pose and lip choices, fps, capacity;
- ``POST /api/avatar``: upload a photo (raw body; byte, header and pixel limits before decoding,
  a face is required) -> ``{"id": ...}``;
- ``POST /api/motion-style``: upload a head motion style (`trtalk motion fit`'s JSON; raw body, at
  most `trtalk.motion.style.MAX_BYTES`, validated) -> ``{"id", "name"}``;
- ``POST /api/offer``: ``{"sdp", "type", "avatar", "pose", "mouth", "paste_back", "motion_style"}`` ->
  the SDP answer, or ``{"error"}`` (503 when the server is full: admission control);
  ``motion_style`` (pose ``auto`` only): an id of ``/api/config``'s ``motion_styles`` or an upload's;
- ``GET /metrics``: Prometheus text; ``GET /healthz``: JSON state and capacity;
  ``POST /api/drain``: stop admitting sessions (running ones go on).

A session's control data channel ("control") carries ``{"type": "bye"}`` from the page and
``stats`` / ``error`` / ``ready`` messages to it. More than ``control_rate`` messages/s (burst
``4 x rate``) or one over 4 KB ends that session ("control channel flooded").
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from trtalk import httpguard
from trtalk.errors import TrtalkError
from trtalk.families.base import Avatar, ModelFamily
from trtalk.motion.style import MAX_BYTES as STYLE_MAX_BYTES
from trtalk.motion.style import MotionStyle, resolve_style
from trtalk.runtime.latency import FrameTiming
from trtalk.runtime.pipeline import PipelineConfig
from trtalk.serve.metrics import Metrics
from trtalk.serve.capacity import Admission, CostModel, FixedCost, MeasuredCost, usable_cores, warmup_cost
from trtalk.serve.scheduler import BatchScheduler, capacity_fps, measure_throughput
from trtalk.serve.session import MOUTH_CHOICES, POSE_CHOICES, Session, mouth_choices, session_plan

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
CONTROL_MAX_BYTES = 4096
#: the largest offer body (an SDP of a few KB and the session's choices)
OFFER_MAX_BYTES = 256 * 1024


@dataclass
class ServerLimits:
    """Per-server limits (each one a `trtalk serve` flag)."""

    max_sessions: int = 8
    max_upload_bytes: int = 8 * 1024 * 1024
    max_upload_pixels: int = 16_000_000
    max_uploads: int = 32
    stall_timeout_s: float = 10.0
    control_rate: float = 20.0
    headroom: float = 0.9
    #: the share of the usable cores the server counts on at start (the interpreter lock, the OS
    #: and other processes take the rest); lowered at run time to what the process reached
    #: whenever a session fell behind (`trtalk.serve.capacity.MeasuredCost`)
    core_share: float = 0.8
    #: a running session below this share of the frame rate (over 2 s) blocks admission
    min_fps_ratio: float = 0.85
    #: a connection gets this long to send its request headers (and stays this long idle)
    header_timeout_s: float = httpguard.HEADER_TIMEOUT_S
    #: a request gets this long to send its body (an upload slot is taken only once it is read)
    body_timeout_s: float = httpguard.BODY_TIMEOUT_S
    #: open connections at most (idle, reading, answering); beyond it a new one gets a 503
    max_connections: int = 64


#: refreshes of a measured cost (0.5 s apart, each over >= 10 served frames) after admitting a
#: session before the next may be admitted
SETTLE_SAMPLES = 3


@dataclass
class Capacity:
    """The warm-up's model throughput (frames/s per batch size) and the frames/s admission
    counts on now (`Admission.frames_per_s`: encoding and the sessions' own work included,
    refreshed as the server runs)."""

    throughput: dict[int, float] = field(default_factory=dict)
    frames_per_s: float = float("inf")


#: the longest side of an uploaded photo as kept (paste-back sends the whole photo every frame)
MAX_PHOTO_SIDE = 1280


def image_from_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB image of an uploaded file: header and pixel checks before decoding (no bombs);
    downscaled to `MAX_PHOTO_SIDE` and even sides."""
    import cv2

    from trtalk.media.read import image_header_size

    size = image_header_size(memoryview(data)) if data else None
    if size is None:
        raise TrtalkError("not an image: upload a PNG, JPEG, BMP or WebP photo")
    w, h = size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise TrtalkError(f"the photo is {w}x{h} pixels; the limit is {max_pixels / 1e6:g} megapixels, "
                          f"downscale it")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise TrtalkError("the photo could not be decoded: upload a valid PNG, JPEG, BMP or WebP file")
    h, w = bgr.shape[:2]
    scale = min(1.0, MAX_PHOTO_SIDE / max(h, w))
    if scale < 1.0 or h % 2 or w % 2:  # paste-back streams the photo: a bounded, even size (H.264)
        size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def freeze_startup_heap() -> None:
    """Move the objects alive now (modules, weights, avatars: the server's lifetime) out of the
    cyclic garbage collector's reach, so that `collect_session_garbage` only walks what sessions
    made since. Call once the server is prepared."""
    gc.collect()
    gc.freeze()


def collect_session_garbage() -> int:
    """Free an ended session's reference cycles now; returns the number of objects collected.

    A session's peer connection (aiortc's transports, receivers with their decoders and decoded
    camera frames, the jitter buffers) and the session's own pipeline form reference cycles, which
    only Python's full collection frees. That collection runs on its own only once the objects
    awaiting it number a quarter of the long-lived ones, which in a server holding a model is
    rarely (issue 24, 8: the RSS grew +12 to +17 MB with every 640x360 camera session and never
    came back; `gc.collect()` after each session held it flat). After `freeze_startup_heap` this
    walks only the sessions' objects: 8 to 50 ms on 2 loaded cores (a full collection without
    the freeze took 730 to 810 ms there)."""
    return gc.collect()


#: allocations from this size up get their own mapping, returned to the system when freed
MMAP_THRESHOLD = 256 * 1024
_HEAP_BOUNDED = False


def bound_heap_growth() -> bool:
    """Slow the server's memory growth per camera session (glibc only; False elsewhere or when
    it cannot be set). A mitigation; the leak itself was garbage cycles (`collect_session_garbage`).

    Each camera session decodes, tracks and pastes frames of hundreds of KB on threads of its
    own. glibc's malloc raises its mmap threshold each time such a buffer is freed, so later
    frames come from the threads' arenas, whose pages stay resident. Fixing the threshold at
    `MMAP_THRESHOLD` (which stops the dynamic raise) maps them on their own and returns them when
    freed. Measured (tests/test_serve.py ``test_camera_sessions_give_their_memory_back``, ten 3 s
    sessions of a 640x360 camera, webcam pose, blended lips, paste-back, 2 CPU cores): RSS
    573 -> 1001 MB without it (+48 MB a session), 506 -> 859 MB with it (+35 MB a session),
    before sessions' garbage was collected as they end."""
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return True
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        _HEAP_BOUNDED = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
    if _HEAP_BOUNDED:
        log.debug("malloc: allocations of %d KB and more are mapped on their own", MMAP_THRESHOLD // 1024)
    return _HEAP_BOUNDED


class _Bucket:
    """Token bucket: ``rate`` per second, ``burst`` at most."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.level, self.t = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level < 1:
            return False
        self.level -= 1
        return True


class Server:
    """The state behind the endpoints: one family and scheduler, the avatars, the sessions."""

    def __init__(self, family: ModelFamily, cfg: PipelineConfig, *, token: str | None = None,
                 limits: ServerLimits | None = None, max_batch: int = 8,
                 capacity_fps_override: float | None = None, warmup: bool = True) -> None:
        self.family = family
        self.cfg = cfg
        self.token = token
        self.limits = limits or ServerLimits()
        self.scheduler = BatchScheduler(family, max_batch=max_batch)
        self.metrics = Metrics()
        self.sessions: dict[str, Session] = {}
        self.closing: set[str] = set()  # left `sessions`, still closing (threads, metrics, peer)
        self.pcs: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.tasks: dict[str, list[asyncio.Task]] = {}
        self.avatars: dict[str, Avatar] = {}
        self.uploads: list[str] = []
        #: head motion styles for pose "auto": "default" (``--motion-style``, else the generic
        #: style) and uploads (at most ``max_uploads``, oldest dropped first)
        self.styles: dict[str, MotionStyle] = {"default": resolve_style(cfg.motion.style)}
        self.style_uploads: list[str] = []
        self.builtin = {p.stem: p for p in sorted(ASSETS.glob("*.png"))}
        self.capacity = Capacity()
        self.draining = False
        self._warmup = warmup
        self._capacity_override = capacity_fps_override
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task | None = None
        #: uploads decoded at once (each may hold a 16-megapixel image while it is checked)
        self.upload_slots = 2
        self._uploading = 0
        self._starting = 0  # sessions admitted and being built (counted by `admit`)
        #: what admission reads (`trtalk.serve.capacity`); measured in `prepare`
        self.cost: CostModel = FixedCost(0.0)
        self.admission = Admission(self.cost, cfg.fps, self.limits.headroom, self.limits.max_sessions)
        self._frames_seen: dict[str, int] = {}
        self._admitted_at = -SETTLE_SAMPLES  # the cost model's samples when the last session was admitted

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the built-in avatars and measure throughput (before the worker starts)."""
        from trtalk.face import read_image

        bound_heap_growth()

        for name, path in self.builtin.items():
            self.avatars[name] = self.family.make_avatar(read_image(path), str(path))
        if self._capacity_override is not None:
            self.set_cost(FixedCost(1.0 / self._capacity_override))
        elif self._warmup and self.avatars:
            avatar = next(iter(self.avatars.values()))
            budget = self.cfg.max_delay_s / 2
            tp = measure_throughput(self.scheduler, avatar, self.cfg.fps, budget)
            self.capacity.throughput = tp
            run_frame, frame = self._one_frame(avatar)
            cost = MeasuredCost(warmup_cost(run_frame, frame), usable_cores() * self.limits.core_share,
                                model_fps=lambda: capacity_fps(
                                    {b: b / c for b, c in self.scheduler.cost_s.items() if c > 0},
                                    self.scheduler.cost_s, budget))
            self.set_cost(cost)
            log.info("capacity: %.1f frames/s (%.1f ms CPU a frame with encoding, %.1f cores, model "
                     "%.0f frames/s): %d session(s) at %g fps", self.capacity.frames_per_s,
                     1000 * cost.frame_cost_s(), cost.cpu_rate(), cost.model_fps(),
                     self.capacity_sessions(), self.cfg.fps)
        freeze_startup_heap()
        self.scheduler.start()

    def _one_frame(self, avatar: Avatar) -> tuple[Any, np.ndarray]:
        """One frame through the scheduler's networks (batch 1) as a callable, and its frame."""
        import torch

        from trtalk.audio.mel import MEL_WINDOW_FRAMES
        from trtalk.serve.scheduler import WorkItem

        fam = self.scheduler.family
        pose = fam.still_pose(avatar, [0], self.cfg.fps)
        item = WorkItem(0.0, 0, "warmup", fam.new_state(), avatar, torch.zeros(1, 80, MEL_WINDOW_FRAMES), 0, pose[0])
        frame = self.scheduler.run_batch([item])[0]
        return (lambda: self.scheduler.run_batch([item])), np.asarray(frame)

    def set_cost(self, cost: CostModel) -> None:
        """Admit by ``cost`` from now on (tests inject theirs)."""
        self.cost = cost
        self.admission = Admission(cost, self.cfg.fps, self.limits.headroom, self.limits.max_sessions)
        self.capacity.frames_per_s = self.admission.frames_per_s()

    def observe_load(self) -> None:
        """Feed the frames the sessions made since the last call (and whether any fell behind)
        to a measured cost model; refresh the capacity shown on the page and /metrics."""
        frames = 0
        seen: dict[str, int] = {}
        for sid, s in list(self.sessions.items()):
            n = s.sink.frames_written
            frames += max(0, n - self._frames_seen.get(sid, 0))
            seen[sid] = n
        self._frames_seen = seen
        behind = any(s.recent_fps is not None and s.recent_fps < self.limits.min_fps_ratio * self.cfg.fps
                     for s in self.sessions.values())
        if isinstance(self.cost, MeasuredCost):
            self.cost.observe(frames, behind)
        self.capacity.frames_per_s = self.admission.frames_per_s()

    def _cost_samples(self) -> int:
        """Refreshes of a measured cost model so far (0 for a fixed one, which never settles)."""
        return self.cost.samples if isinstance(self.cost, MeasuredCost) else 0

    def room(self) -> int:
        """Sessions that can still start (the measured capacity less those running or starting)."""
        return max(0, self.capacity_sessions() - len(self.sessions) - self._starting)

    async def on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick())

    async def on_shutdown(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for sid in list(self.sessions):
            await self.end_session(sid, "the server is shutting down")
        self.scheduler.close()

    def capacity_sessions(self) -> int:
        """Sessions that fit at the frame rate (`Admission.sessions`), at most --max-sessions."""
        return self.admission.sessions()

    # -- sessions -----------------------------------------------------------------------------

    def admit(self) -> str | None:
        """None when one more session fits, else the message for the page."""
        if self.draining:
            return "this server is draining (about to restart): try again in a moment"
        slow = [s for s in self.sessions.values() if s.recent_fps is not None
                 and s.recent_fps < self.limits.min_fps_ratio * self.cfg.fps]
        if slow:
            return (f"the server is not keeping up with its {len(self.sessions)} session(s) (one gets "
                    f"{slow[0].recent_fps:.1f} of {self.cfg.fps:g} frames/s): try again later")
        n = len(self.sessions) + self._starting
        if n and isinstance(self.cost, MeasuredCost) and self.cost.samples < self._admitted_at + SETTLE_SAMPLES:
            # the last session's load is not measured yet: admitting on the older figure could
            # overfill the server (a burst of offers), so the next waits for the refresh
            return ("the server is measuring the load of its newest session: try again in a "
                    "few seconds")
        cap = self.capacity_sessions()
        if not self.admission.admits(n):
            if cap < self.limits.max_sessions:
                return (f"the server is full: it makes about {self.capacity.frames_per_s:.0f} frames/s, "
                        f"enough for {cap} session(s) at {self.cfg.fps:g} fps, and {n} are running; "
                        f"try again later")
            return f"the server is full: {n} sessions are running (--max-sessions {cap}); try again later"
        return None

    def _on_frame(self, session: Session, rec: FrameTiming) -> None:
        self.metrics.frame(session.id, rec.emitted - rec.audio_captured)

    def _on_end(self, session: Session) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.end_session(session.id, session.error), self._loop)
            except RuntimeError:  # the loop closed meanwhile (server shutting down)
                pass

    def send(self, sid: str, message: dict[str, Any]) -> None:
        ch = self.channels.get(sid)
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(json.dumps(message))
            except Exception:  # noqa: BLE001 - the browser went away
                pass

    async def end_session(self, sid: str, error: str | None = None) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        self.closing.add(sid)
        try:
            if error:
                session.fail(error)
            message = session.error
            if message:
                self.metrics.error()
                self.send(sid, {"type": "error", "message": message})
            else:
                self.send(sid, {"type": "ended"})
            for task in self.tasks.pop(sid, []):
                task.cancel()
            try:
                await asyncio.get_running_loop().run_in_executor(None, session.close)
            finally:
                self.metrics.session_ended(sid, session.pipeline.latency.drops)
                pc = self.pcs.pop(sid, None)
                self.channels.pop(sid, None)
                if pc is not None:
                    await asyncio.sleep(0.05)  # let the error message leave
                    await pc.close()
            log.info("session %s ended%s", sid, f": {message}" if message else "")
        finally:
            session = pc = None
            t0 = time.perf_counter()
            n = collect_session_garbage()
            log.debug("session %s: %d objects collected in %.0f ms", sid, n, (time.perf_counter() - t0) * 1e3)
            self.closing.discard(sid)

    @property
    def idle(self) -> bool:
        """No session running or still closing (its threads joined, its metrics settled)."""
        return not self.sessions and not self.closing

    async def _tick(self) -> None:
        """Every 0.5 s: stalled tracks end their session; every 1 s the page gets its latency."""
        n = 0
        while True:
            await asyncio.sleep(0.5)
            n += 1
            now = time.monotonic()
            for sid, s in list(self.sessions.items()):
                try:
                    s.sample_rate(now)
                except Exception:  # noqa: BLE001 - one session's trouble must not stop the ticker
                    log.warning("session %s: rate sampling failed", sid, exc_info=True)
            try:
                self.observe_load()
            except Exception:  # noqa: BLE001
                log.warning("capacity refresh failed", exc_info=True)
            for sid, s in list(self.sessions.items()):
                try:
                    if now - s.audio.last_push > self.limits.stall_timeout_s:
                        await self.end_session(sid, f"no audio from the microphone for "
                                                    f"{self.limits.stall_timeout_s:g} s: the session was "
                                                    f"closed (reload the page to start again)")
                    elif n % 2 == 0:
                        self.send(sid, s.stats())
                except Exception:  # noqa: BLE001 - one session's trouble must not stop the ticker
                    log.warning("session %s: housekeeping failed", sid, exc_info=True)

    def add_style(self, data: bytes) -> tuple[str, MotionStyle]:
        """Validate an uploaded style file (`trtalk.motion.style.parse_style`) and keep it."""
        from trtalk.motion.style import parse_style

        style = parse_style(data, "(upload)")
        key = f"style-{hashlib.sha256(data).hexdigest()[:16]}"
        if key not in self.styles:
            self.styles[key] = style
            self.style_uploads.append(key)
            while len(self.style_uploads) > self.limits.max_uploads:
                self.styles.pop(self.style_uploads.pop(0), None)
        return key, style

    async def get_avatar(self, key: str) -> Avatar | None:
        return self.avatars.get(key)

    async def add_upload(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()[:16]
        key = f"upload-{digest}"
        if key in self.avatars:
            return key
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, image_from_bytes, data, self.limits.max_upload_pixels)
        avatar = await loop.run_in_executor(None, self._make_avatar, image)
        self.avatars[key] = avatar
        self.uploads.append(key)
        while len(self.uploads) > self.limits.max_uploads:
            old = self.uploads.pop(0)
            self.avatars.pop(old, None)
        return key

    def _make_avatar(self, image: np.ndarray) -> Avatar:
        """Face detection here (an executor thread); the networks on the worker thread."""
        if not self.family.capabilities.shared_networks:  # no shared network: all of it here
            return self.family.make_avatar(image, "the uploaded photo")
        from trtalk.face import align_frames

        clip = align_frames([image], name="the uploaded photo")
        if not bool(clip.found[0]):
            raise TrtalkError("no face found in the uploaded photo; use one with a clearly visible, "
                              "frontal face")
        crop, crop_m = clip.crops[0], clip.crop_matrices[0]
        return self.scheduler.call(lambda: self.family.make_avatar(image, "the uploaded photo",
                                                                   crop=crop, crop_m=crop_m))

    async def start_session(self, params: dict[str, Any]) -> dict[str, Any]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from trtalk.serve.tracks import AvatarVideoTrack, DelayedAudioTrack, pump_audio, pump_video

        avatar = await self.get_avatar(str(params.get("avatar", "")))
        if avatar is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "unknown avatar: pick one or upload a photo"}),
                                   content_type="application/json")
        pose = str(params.get("pose") or next(iter(POSE_CHOICES)))
        if pose not in POSE_CHOICES:
            raise _bad(f"unknown pose source {pose!r}; choose {', '.join(POSE_CHOICES)}")
        mouth = str(params.get("mouth") or next(iter(MOUTH_CHOICES)))
        offered = mouth_choices(self.family)
        if mouth not in offered:
            why = (f"the {self.family.name} model cannot read lips from the camera ({mouth!r})"
                   if mouth in MOUTH_CHOICES else f"unknown lip source {mouth!r}")
            raise _bad(f"{why}; choose {', '.join(offered)}")
        from trtalk.runtime.mouth_path import MouthOptions

        mouth_opts = MouthOptions((mouth,), self.cfg.mouth_source.mouth_blend)
        try:
            plan = session_plan(self.family, pose, mouth_opts)
        except TrtalkError as exc:
            raise _bad(str(exc)) from None
        style_key = params.get("motion_style") or "default"
        if not isinstance(style_key, str) or style_key not in self.styles:
            raise _bad("unknown motion style: pick one of the list or upload a style file")
        motion_style = self.styles[style_key] if plan.motion else None
        refusal = self.admit()
        if refusal:
            self.metrics.session_refused()
            raise web.HTTPServiceUnavailable(text=json.dumps({"error": refusal}),
                                             content_type="application/json")
        sdp, kind = params.get("sdp"), params.get("type")
        if not isinstance(sdp, str) or kind != "offer" or len(sdp) > 64 * 1024:
            raise _bad("expected {sdp, type: 'offer'} from RTCPeerConnection.createOffer")
        sid = secrets.token_hex(6)
        from dataclasses import replace

        paste_back = params.get("paste_back", False)
        if paste_back is None:
            paste_back = False
        if not isinstance(paste_back, bool):
            raise _bad("paste_back must be true or false (a JSON boolean)")
        cfg = replace(self.cfg, paste_back=paste_back, mouth_source=mouth_opts)
        # off the event loop (a camera lip source encodes the avatar's rest mouth on the worker);
        # the admitted slot is held meanwhile, so concurrent offers cannot overfill the server
        self._starting += 1
        self._admitted_at = self._cost_samples()
        try:
            session = await asyncio.get_running_loop().run_in_executor(None, lambda: Session(
                sid, cfg, self.family, avatar, self.scheduler, pose,
                on_end=self._on_end, on_frame=self._on_frame, plan=plan, motion_style=motion_style))
        except TrtalkError as exc:
            raise _bad(str(exc)) from None
        finally:
            self._starting -= 1
        pc = RTCPeerConnection()
        self.pcs[sid] = pc
        self.sessions[sid] = session
        self.tasks[sid] = []
        self.metrics.session_started(sid)
        bucket = _Bucket(self.limits.control_rate, 4 * self.limits.control_rate)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self.channels[sid] = channel
            channel.send(json.dumps({"type": "ready", "session": sid, "pose": pose, "mouth": mouth,
                                     "mouth_box": mouth_box(session.avatar, cfg.paste_back)}))

            @channel.on("message")
            def on_message(message: Any) -> None:
                if not bucket.take() or len(message) > CONTROL_MAX_BYTES:
                    asyncio.ensure_future(self.end_session(
                        sid, f"control channel flooded (more than {self.limits.control_rate:g} "
                             f"messages/s or one over {CONTROL_MAX_BYTES} bytes): the session was closed"))
                    return
                try:
                    msg = json.loads(message)
                except (ValueError, TypeError):
                    return
                if isinstance(msg, dict) and msg.get("type") == "bye":
                    asyncio.ensure_future(self.end_session(sid))
                elif isinstance(msg, dict) and msg.get("type") == "ping":
                    channel.send(json.dumps({"type": "pong", "t": msg.get("t")}))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and sid in self.sessions:
                await self.end_session(sid, None if pc.connectionState == "closed" else
                                       "the connection to the browser failed")

        @pc.on("track")
        def on_track(track: Any) -> None:
            pump = pump_audio if track.kind == "audio" else pump_video
            self.tasks[sid].append(asyncio.ensure_future(pump(track, session)))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            first = avatar.crop if not cfg.paste_back else avatar.image
            kinds = [t.kind for t in pc.getTransceivers()]
            if kinds.count("audio") != 1 or kinds.count("video") != 1:
                raise ValueError(f"expected one audio and one video track, got {kinds}")
            pc.addTrack(DelayedAudioTrack(session.sink))
            pc.addTrack(AvatarVideoTrack(session.sink, cfg.fps, first))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            await self.end_session(sid)
            raise _bad(f"could not negotiate WebRTC: {exc}") from None
        session.start()
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": sid}


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body of ``request``, however it arrives (chunked too); HttpRefusal 413 as soon
    as it passes ``limit`` bytes (nothing more is read), 408 when it takes over ``timeout_s``."""
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    try:
        while True:
            left = end - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(request.content.readany(), left)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise httpguard.HttpRefusal(413, f"the body is over {limit} bytes")
            chunks.append(chunk)
    except asyncio.TimeoutError:
        raise httpguard.HttpRefusal(408, f"the body took over {timeout_s:g} s to arrive") from None
    except (ConnectionError, EOFError) as exc:  # aiohttp: the client left mid-body
        raise httpguard.HttpRefusal(400, f"the body ended early ({type(exc).__name__})") from None
    except Exception as exc:  # aiohttp's ClientPayloadError (a malformed chunked body)
        from aiohttp import ClientPayloadError

        if isinstance(exc, ClientPayloadError):
            raise httpguard.HttpRefusal(400, "the body is malformed") from None
        raise


class _QuietClientErrors(logging.Filter):
    """aiohttp logs an ERROR with a traceback for each malformed request or client that leaves
    mid-body: those become one INFO line (a bug in trtalk's handlers keeps its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from aiohttp import ClientPayloadError
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, (HttpProcessingError, ClientPayloadError, ConnectionError, asyncio.TimeoutError)):
            first = str(exc).splitlines()[0] if str(exc) else ""
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {first}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_QUIET = _QuietClientErrors()


def quiet_aiohttp_errors() -> None:
    """Install `_QuietClientErrors` on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


def _access_logger():  # -> an aiohttp AbstractAccessLogger subclass (aiohttp imported lazily)
    from aiohttp.abc import AbstractAccessLogger

    class RedactingAccessLogger(AbstractAccessLogger):
        """One line a request, ``?token=`` values redacted."""

        def log(self, request: Any, response: Any, time: float) -> None:
            self.logger.info('%s "%s %s" %d %.3fs', request.remote, request.method,
                             httpguard.redact(request.path_qs[:300]), response.status, time)

    return RedactingAccessLogger


def runner_kwargs(limits: ServerLimits) -> dict[str, Any]:
    """`web.AppRunner` arguments: the header timeout (aiohttp closes a connection that has not
    sent a whole request within its keep-alive timeout), the redacting access log, and a short
    linger after a refused body (aiohttp's default reads the rest for 10 s)."""
    return {"keepalive_timeout": limits.header_timeout_s, "access_log_class": _access_logger(),
            "lingering_time": 1.0}  # after a refusal, wait at most 1 s for the rest of a body


class _Busy(asyncio.Protocol):
    """A connection over `ServerLimits.max_connections`: a 503 at once, the request unread; the
    connection closes when the client does or after a second (closing with the request unread
    at once could reset the connection before the client reads the answer)."""

    BODY = b'{"error": "the server has too many connections open; try again shortly"}'
    REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    LINGER_S = 1.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.write(self.REPLY)  # type: ignore[attr-defined]
        self._timer = asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read

    def eof_received(self) -> bool:
        self._transport.close()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


class _CappedServer(web.Server):
    """aiohttp's connection manager (`web.Server`) with a cap on open connections: the protocol
    factory hands out `_Busy` instead of a request handler once ``limits.max_connections`` are
    open or being opened (a handler made but not yet connected counts for `PENDING_S`)."""

    limits = ServerLimits()
    PENDING_S = 5.0

    def __call__(self) -> Any:
        now = time.monotonic()
        pending: dict[Any, float] = self.__dict__.setdefault("_pending", {})
        for handler, t in list(pending.items()):
            if now - t > self.PENDING_S:
                del pending[handler]
        if len(self.connections) + len(pending) >= self.limits.max_connections:
            _log_busy(self.limits.max_connections)
            return _Busy()
        handler = super().__call__()
        pending[handler] = now
        return handler

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self.__dict__.setdefault("_pending", {}).pop(handler, None)
        super().connection_made(handler, transport)


_busy_log = {"at": 0.0, "count": 0}


def _log_busy(limit: int) -> None:
    """One INFO line at most every 10 s for connections refused over the cap (a flood of them
    must not flood the log)."""
    _busy_log["count"] += 1
    now = time.monotonic()
    if now - _busy_log["at"] >= 10.0:
        log.info("%d connection(s) refused (503): %d open, the --max-connections limit",
                 _busy_log["count"], limit)
        _busy_log["at"], _busy_log["count"] = now, 0


class CappedAppRunner(web.AppRunner):
    """`web.AppRunner` whose server refuses connections over ``limits.max_connections`` (read
    for each new connection; `_CappedServer`)."""

    def __init__(self, app: web.Application, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app's own manager (its handler, request factory and options as aiohttp made them),
        # given the cap: `_CappedServer` only adds to the protocol factory and connection_made.
        server.__class__ = _CappedServer
        server.limits = self.limits  # type: ignore[attr-defined]
        return server


def make_runner(app: web.Application, limits: ServerLimits, **kwargs: Any) -> web.AppRunner:
    """The runner `trtalk serve` uses: `runner_kwargs` and the connection cap of ``limits``."""
    return CappedAppRunner(app, limits=limits, **runner_kwargs(limits), **kwargs)


TOKEN_COOKIE = "trtalk_token"


def _token_ok(request: web.Request, token: str) -> bool:
    given = (request.query.get("token") or request.headers.get("X-Trtalk-Token")
             or request.cookies.get(TOKEN_COOKIE) or "")
    auth = request.headers.get("Authorization", "")
    if not given and auth.startswith("Bearer "):
        given = auth[7:]
    return hmac.compare_digest(given.encode(), token.encode())


SERVER_KEY = web.AppKey("server", Server)


def mouth_box(avatar: Avatar, paste_back: bool = False) -> list[float]:
    """Where the mouth is in the frames a session sends, (x0, y0, x1, y1) as fractions of the frame
    (the page's frame probe reads it there): from the warp avatar's mesh (its frames are the whole
    photo), from the photo's mesh and its size with paste-back, else an aligned crop's."""
    from trtalk.serve.client import CROP_MOUTH_BOX

    a = getattr(avatar.state.get("renderer"), "avatar", None)
    if a is not None and hasattr(a, "frame_hw"):
        mesh, (h, w), io = a.mesh[:, :2], a.frame_hw, a.interocular
    elif paste_back and avatar.state.get("mesh") is not None:
        mesh = np.asarray(avatar.state["mesh"])[:, :2]
        h, w = avatar.image.shape[:2]
        io = float(np.linalg.norm(mesh[263] - mesh[33]))
    else:
        return list(CROP_MOUTH_BOX)
    lips = mesh[[61, 291, 13, 14, 0, 17]]
    box = [(lips[:, 0].min() - 0.1 * io) / w, (lips[:, 1].min() - 0.1 * io) / h,
           (lips[:, 0].max() + 0.1 * io) / w, (lips[:, 1].max() + 0.35 * io) / h]
    return [float(np.clip(v, 0.0, 1.0)) for v in box]


def make_app(server: Server) -> web.Application:
    """The aiohttp application of ``server`` (already prepared)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        """Token, Host/Origin and Content-Length rules (`trtalk.httpguard`) before any handler;
        a refusal is a 4xx with a one-line JSON reason and one log line."""
        try:
            if server.token and not _token_ok(request, server.token):
                raise httpguard.HttpRefusal(401, "missing or wrong token: open the link with ?token=...")
            host = request.headers.get("Host")
            httpguard.check_host(host, server.token)
            httpguard.check_origin(request.method, request.headers.get("Origin"), host, server.token)
            httpguard.content_length(request.headers.get("Content-Length"), max_body)
            return await handler(request)
        except httpguard.HttpRefusal as exc:
            log.info("%s %s refused (%d): %s", request.method, httpguard.redact(request.path_qs[:200]),
                     exc.status, exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.status,
                                     headers={"Connection": "close"} if exc.status in (408, 413) else None)

    max_body = server.limits.max_upload_bytes + 1024
    app = web.Application(middlewares=[guard], client_max_size=max_body)
    quiet_aiohttp_errors()
    app[SERVER_KEY] = server

    async def index(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if server.token:  # the page's own script and requests carry it from here on
            resp.set_cookie(TOKEN_COOKIE, server.token, httponly=True, samesite="Strict")
        return resp

    async def config(request: web.Request) -> web.Response:
        return web.json_response({
            "avatars": [{"id": k, "label": k} for k in server.builtin],
            "poses": [{"id": k, "label": c.label, "camera": c.camera} for k, c in POSE_CHOICES.items()],
            "mouths": [{"id": k, "label": c.label, "camera": c.camera}
                       for k, c in mouth_choices(server.family).items()],
            "fps": server.cfg.fps, "model": server.family.name,
            "random_weights": server.family.random_weights,
            "max_upload_bytes": server.limits.max_upload_bytes,
            "motion_styles": [{"id": k, "label": ("default: " if k == "default" else "uploaded: ") + st.name}
                              for k, st in server.styles.items()],
            "max_style_bytes": STYLE_MAX_BYTES,
            "capacity_sessions": server.capacity_sessions(), "sessions": len(server.sessions),
            "room": server.room()})

    async def upload(request: web.Request) -> web.Response:
        limit = server.limits.max_upload_bytes
        too_big = f"the photo is over {limit // (1024 * 1024)} MB; use a smaller one"
        try:  # read before taking a slot: a slow client holds only its own connection
            httpguard.content_length(request.headers.get("Content-Length"), limit)
            data = await read_body(request, limit, server.limits.body_timeout_s)
        except httpguard.HttpRefusal as exc:
            if exc.status == 413:
                raise httpguard.HttpRefusal(413, too_big) from None
            raise
        if server._uploading >= server.upload_slots:
            return web.json_response({"error": "the server is checking other photos: try again in a "
                                               "moment"}, status=429)
        server._uploading += 1
        try:
            key = await server.add_upload(data)
        except TrtalkError as exc:
            status = 415 if str(exc).startswith("not an image") else 413 if "megapixels" in str(exc) else 422
            return web.json_response({"error": str(exc)}, status=status)
        finally:
            server._uploading -= 1
        return web.json_response({"id": key})

    async def upload_style(request: web.Request) -> web.Response:
        try:
            httpguard.content_length(request.headers.get("Content-Length"), STYLE_MAX_BYTES)
            data = await read_body(request, STYLE_MAX_BYTES, server.limits.body_timeout_s)
        except httpguard.HttpRefusal as exc:
            if exc.status == 413:
                raise httpguard.HttpRefusal(413, f"a motion style file is at most {STYLE_MAX_BYTES} bytes") from None
            raise
        try:
            key, style = server.add_style(data)
        except TrtalkError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        return web.json_response({"id": key, "name": style.name})

    async def offer(request: web.Request) -> web.Response:
        httpguard.require_json(request.headers.get("Content-Type"))
        params = httpguard.json_body(await read_body(request, OFFER_MAX_BYTES, server.limits.body_timeout_s))
        if not isinstance(params, dict):
            raise _bad("the body must be a JSON object")
        return web.json_response(await server.start_session(params))

    async def metrics(request: web.Request) -> web.Response:
        text = server.metrics.render(server)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({
            "status": "draining" if server.draining else "ok",
            "sessions": len(server.sessions), "closing": len(server.closing),
            "capacity_sessions": server.capacity_sessions(), "room": server.room(),
            "capacity_fps": server.capacity.frames_per_s, "frame_cost_ms": 1000 * server.cost.frame_cost_s(),
            "cpu_rate": server.cost.cpu_rate(), "worker_alive": server.scheduler._thread is not None
            and server.scheduler._thread.is_alive()})

    async def drain(request: web.Request) -> web.Response:
        server.draining = True
        return web.json_response({"status": "draining", "sessions": len(server.sessions)})

    app.router.add_get("/", index)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/avatar", upload)
    app.router.add_post("/api/motion-style", upload_style)
    app.router.add_post("/api/offer", offer)
    app.router.add_post("/api/drain", drain)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC)
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    return app
