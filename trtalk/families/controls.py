"""Fine-grained controls of the PD-FGC family: where each factor comes from, and live changes.

Factors and their sources (flags ``--pose``, ``--eyes``, ``--emotion``):

- ``off``: the official switch: a zero pose or emotion code; eyes off = blink and gaze off (the
  official masks together zero the eye code).
- an image: its code, held (an emotion preset: ``--emotion happy.jpg``, scaled by
  ``--emotion-strength``).
- a video: its codes, frame t using clip frame ``2 + (t - 2) mod (len - 2)`` (the official loop,
  in trtalk's frame numbering, where frame t is the official output frame t - 2).
- ``webcam`` (or ``pose``): the frames of the pose source (the camera live); one pass of the motion
  encoder over each tracked crop yields pose, eyes and emotion together.
- ``avatar``: the avatar photo's own code (the default for eyes and emotion).
- ``auto`` (eyes only): natural blinks (`trtalk.motion.blink.BlinkGenerator`) between the
  avatar's open-eye code and a closed-eye code, gaze from the avatar.

`Controls` holds the live state (emotion preset and strength, gaze offset, blink now, frozen
factors, the pose source's name); changes are queued by any thread (`submit`) and applied by the
inference thread before the next frame it makes (`begin_frame`), each logged with that frame's
number. `ControlServer` serves them as JSON over HTTP (standard library, one thread).
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import torch

from trtalk import httpguard
from trtalk.errors import TrtalkError
from trtalk.net import is_loopback

log = logging.getLogger(__name__)

FACTORS = ("pose", "eyes", "emotion")
#: What a live pose_source command can switch to besides a video or image file.
POSE_SWITCHES = ("webcam", "avatar", "off")
KINDS = ("off", "image", "video", "webcam", "avatar", "auto")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class FactorSpec:
    """One factor's source: ``kind`` (see `KINDS`) and, for image/video, the file."""

    kind: str
    path: Path | None = None


def parse_factor(value: str | Path | None, factor: str, default: str = "avatar") -> FactorSpec:
    """``--eyes``/``--emotion``/``--pose`` text -> `FactorSpec`; TrtalkError naming the flag."""
    if value is None:
        return FactorSpec(default)
    text = str(value)
    if not text.strip() or text.strip() == ".":
        raise TrtalkError(f"--{factor} is empty; give a video, an image, webcam, off"
                          f"{', auto' if factor == 'eyes' else ''} or avatar")
    low = text.lower()
    if low in ("off", "webcam", "pose", "avatar", "auto"):
        if low == "auto" and factor != "eyes":
            raise TrtalkError(f"--{factor} auto is for --eyes only (natural blinks)")
        return FactorSpec("webcam" if low == "pose" else low)
    p = Path(text)
    if not p.exists():
        raise TrtalkError(f"--{factor} {text}: no such file; give a video, an image, webcam, off"
                          f"{', auto' if factor == 'eyes' else ''} or avatar")
    if p.is_dir():
        raise TrtalkError(f"--{factor} {text} is a folder; give a video or an image file")
    return FactorSpec("image" if p.suffix.lower() in IMAGE_EXTS else "video", p)


def _is_file(path: str) -> bool:
    try:
        return "\0" not in path and Path(path).is_file()
    except (OSError, ValueError):  # a name too long, ...
        return False


def clip_frame(t: int, length: int) -> int:
    """Clip frame of trtalk frame t (the official ``2 + i mod (len - 2)`` with i = t - 2)."""
    from trtalk.families.pdfgc.model import clip_index

    return clip_index(t - 2, length)


@dataclass
class ControlState:
    """What a control command can change (all applied at a frame boundary)."""

    emotion_preset: str | None = None  # a name from `Controls.presets`
    emotion_strength: float = 1.0
    gaze_offset: tuple[float, float] = (0.0, 0.0)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    pose_source: str | None = None


class Controls:
    """Live control state of one stream (thread-safe submit, applied at the next frame).

    ``presets``: emotion codes by name (from reference stills). ``on_blink``: called by "blink now"
    (the family's blink generator). ``on_pose_source(source, prepared)``: called with a new pose
    source (a `POSE_SWITCHES` name or a file) when applied. ``prepare_pose(path)``: encodes a pose
    file in the submitting thread (the HTTP one), so applying it never stalls a frame; it calls
    `check_open` as it goes (per frame), so that closing the stream cancels it.
    """

    COMMANDS = ("emotion", "gaze", "blink", "freeze", "unfreeze", "pose_source")

    def __init__(self, presets: dict[str, torch.Tensor] | None = None) -> None:
        self.presets: dict[str, torch.Tensor] = dict(presets or {})
        self.state = ControlState()
        self._pending: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self.on_blink: Callable[[], None] | None = None
        self.on_pose_source: Callable[[str, Any], None] | None = None
        self.prepare_pose: Callable[[str], Any] | None = None
        #: codes of the last frame made, by factor (what "freeze" holds)
        self.current: dict[str, torch.Tensor] = {}
        #: the frame being made (set by `begin_frame`)
        self.frame = 0
        #: (frame, command) of every change applied, in order
        self.log: list[tuple[int, dict]] = []
        #: set when the stream ends (`ControlServer.close`): later commands are refused
        self.closed = False

    # -- any thread ----------------------------------------------------------------------

    def validate(self, cmd: object) -> dict:
        """The command as a dict, or TrtalkError saying what is wrong (never half-applied)."""
        if not isinstance(cmd, dict) or "set" not in cmd:
            raise TrtalkError('a control command is a JSON object with "set": one of '
                              + ", ".join(self.COMMANDS))
        what = cmd["set"]
        if not isinstance(what, str) or what not in self.COMMANDS:
            raise TrtalkError(f"unknown control {what!r:.60}; choose one of {', '.join(self.COMMANDS)}")
        if what == "emotion":
            preset = cmd.get("preset")
            if preset is not None and not isinstance(preset, str):
                raise TrtalkError("emotion preset must be a name (a string) or \"off\"")
            if preset is not None and preset != "off" and preset not in self.presets:
                raise TrtalkError(f"unknown emotion preset {preset!r}; known: "
                                  f"{', '.join(sorted(self.presets)) or 'none (give --emotion-preset)'}")
            s = cmd.get("strength", self.state.emotion_strength)
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 2:
                raise TrtalkError("emotion strength must be a number in [0, 2]")
        elif what == "gaze":
            off = cmd.get("offset")
            if (not isinstance(off, (list, tuple)) or len(off) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 5
                               for v in off)):
                raise TrtalkError("gaze offset must be [dx, dy], each in [-5, 5]")
        elif what in ("freeze", "unfreeze"):
            if not isinstance(cmd.get("factor"), str) or cmd.get("factor") not in FACTORS:
                raise TrtalkError(f"{what} needs factor: one of {', '.join(FACTORS)}")
        elif what == "pose_source":
            src = cmd.get("source")
            if not isinstance(src, str) or (src not in POSE_SWITCHES and not _is_file(src)):
                raise TrtalkError(f'pose_source needs "source": a video or image file on this machine, '
                                  f'or one of {", ".join(POSE_SWITCHES)} (the stream\'s pose source, '
                                  f'the avatar\'s own pose, a zero code)')
        return dict(cmd)

    def check_open(self, *progress: object) -> None:
        """Raise TrtalkError once the stream is ending (``closed``): work done for a command (a
        pose file being encoded) calls this as it goes and stops. Takes and ignores a progress
        callback's arguments, so it can be one."""
        if self.closed:
            raise TrtalkError("the stream is ending: no more commands")

    def submit(self, cmd: object) -> dict:
        """Queue a validated command for the next frame; returns it. A pose file is encoded
        here, in the caller's thread, before it is queued."""
        self.check_open()
        c = self.validate(cmd)
        prepared = None
        if c["set"] == "pose_source" and c["source"] not in POSE_SWITCHES:
            if self.prepare_pose is None:
                raise TrtalkError("this stream cannot switch to a pose file")
            prepared = self.prepare_pose(c["source"])
            self.check_open()  # closed while it was encoded: nothing is queued
        self._pending.put((c, prepared))
        return c

    # -- the inference thread --------------------------------------------------------------

    def begin_frame(self, frame: int) -> list[dict]:
        """Apply every queued command before ``frame`` is made; returns them."""
        applied = []
        self.frame = frame  # what a callback applying a change may read
        while True:
            try:
                c, prepared = self._pending.get_nowait()
            except queue.Empty:
                break
            self._apply(c, prepared)
            self.log.append((frame, c))
            log.info("control at frame %d: %s", frame, json.dumps(c, sort_keys=True))
            applied.append(c)
        return applied

    def _apply(self, c: dict, prepared: Any = None) -> None:
        st = self.state
        what = c["set"]
        if what == "emotion":
            if "preset" in c:
                st.emotion_preset = None if c["preset"] in (None, "off") else c["preset"]
            st.emotion_strength = float(c.get("strength", st.emotion_strength))
        elif what == "gaze":
            st.gaze_offset = (float(c["offset"][0]), float(c["offset"][1]))
        elif what == "blink":
            if self.on_blink is not None:
                self.on_blink()
        elif what == "freeze":
            code = self.current.get(c["factor"])
            if code is not None:
                st.frozen[c["factor"]] = code.clone()
        elif what == "unfreeze":
            st.frozen.pop(c["factor"], None)
        elif what == "pose_source":
            st.pose_source = c["source"]
            if self.on_pose_source is not None:
                self.on_pose_source(c["source"], prepared)

    def snapshot(self) -> dict[str, Any]:
        st = self.state
        return {"emotion_preset": st.emotion_preset, "emotion_strength": st.emotion_strength,
                "gaze_offset": list(st.gaze_offset), "frozen": sorted(st.frozen),
                "pose_source": st.pose_source, "presets": sorted(self.presets),
                "changes": len(self.log)}


# ----------------------------------------------------------------------------- endpoint


class ControlServer:
    """``POST /control`` (a JSON command, see `Controls.validate`) and ``GET /state`` on
    ``host:port`` (port 0: any free one). Bound beyond loopback, every request needs
    ``Authorization: Bearer <token>`` (made when not given; see ``token``). The request rules of
    `trtalk.httpguard` apply (loopback Host and same-origin without a token, JSON bodies of at
    most `MAX_BODY` bytes, read timeouts); every refusal is a 4xx with a one-line reason.

    Handler threads are not daemons: `close` joins them (bounded by the read timeouts; a pose
    file being encoded stops at its next frame, `Controls.check_open`), so the process never
    exits while one of them is inside native code. A command refused because the stream is
    ending is a 503."""

    MAX_BODY = 65536

    def __init__(self, controls: Controls, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, read_timeout_s: float = httpguard.HEADER_TIMEOUT_S) -> None:
        self.controls = controls
        loopback = is_loopback(host)
        httpguard.check_token(token, "--control-token")
        self.token = token if token is not None else (None if loopback else secrets.token_urlsafe(16))
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = read_timeout_s  # the socket's: headers and body each (StreamRequestHandler)

            def log_message(self, fmt: str, *args: Any) -> None:  # to logging, not stderr
                log.debug("control endpoint: %s", httpguard.redact(fmt % args))

            def log_error(self, fmt: str, *args: Any) -> None:
                log.info("control endpoint: %s", httpguard.redact(fmt % args))

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code >= 400:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """http.server's own refusals (malformed request line, unknown method, header
                too long) as short JSON answers; an unknown method is a 405, not a 501."""
                from http import HTTPStatus

                if code == 501:
                    code, message = 405, "only GET /state and POST /control"
                try:
                    reason = message or HTTPStatus(code).phrase
                except ValueError:
                    reason = "bad request"
                log.info("control endpoint: refused (%d): %s", code, reason)
                self.close_connection = True
                if len(getattr(self, "requestline", "").split()) >= 3:
                    self.request_version = "HTTP/1.0"  # a bad version still gets a status line
                try:
                    self._reply(code, {"error": reason})
                except OSError:
                    pass

            def _check(self) -> None:
                """HttpRefusal unless the token and the Host/Origin rules pass."""
                if server.token is not None:
                    got = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(got.encode("utf-8", "replace"),
                                               f"Bearer {server.token}".encode()):
                        raise httpguard.HttpRefusal(401, "missing or wrong token")
                httpguard.check_host(self.headers.get("Host"), server.token)
                httpguard.check_origin(self.command, self.headers.get("Origin"), self.headers.get("Host"),
                                       server.token)

            def _refuse(self, exc: httpguard.HttpRefusal) -> None:
                log.info("control endpoint: %s %s refused (%d): %s", self.command,
                         httpguard.redact(self.path[:200]), exc.status, exc.reason)
                self._reply(exc.status, {"error": exc.reason})

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding"):
                    raise httpguard.HttpRefusal(411, "send the command with a Content-Length")
                n = httpguard.content_length(self.headers.get("Content-Length"), server.MAX_BODY) or 0
                data = b""
                while len(data) < n:  # the socket timeout bounds each read
                    chunk = self.rfile.read(n - len(data))
                    if not chunk:
                        raise httpguard.HttpRefusal(400, "the body ended early")
                    data += chunk
                return data

            def do_GET(self) -> None:  # noqa: N802
                try:
                    self._check()
                    if self.path.rstrip("/") != "/state":
                        raise httpguard.HttpRefusal(404, "GET /state or POST /control")
                except httpguard.HttpRefusal as exc:
                    self._refuse(exc)
                    return
                self._reply(200, server.controls.snapshot())

            def do_POST(self) -> None:  # noqa: N802
                try:
                    self._check()
                    if self.path.rstrip("/") != "/control":
                        raise httpguard.HttpRefusal(404, "POST /control")
                    httpguard.require_json(self.headers.get("Content-Type"))
                    cmd = httpguard.json_body(self._read_body())
                    try:
                        applied = server.controls.submit(cmd)
                    except TrtalkError as exc:  # 503: the stream is ending
                        code = 503 if server.controls.closed else 400
                        raise httpguard.HttpRefusal(code, str(exc)) from None
                except httpguard.HttpRefusal as exc:
                    self._refuse(exc)
                    return
                except OSError as exc:  # a timeout or a vanished client: nobody to answer
                    log.info("control endpoint: %s: %s", type(exc).__name__, exc)
                    self.close_connection = True
                    return
                self._reply(200, {"queued": applied})

        class Httpd(ThreadingHTTPServer):
            daemon_threads = False  # joined by close (see the class docstring)
            block_on_close = False  # close joins them itself, with a bound

            def process_request(self, request: Any, client_address: Any) -> None:
                t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                     name="control-request", daemon=False)
                server._handlers = [h for h in server._handlers if h.is_alive()] + [t]
                t.start()

            def handle_error(self, request: Any, client_address: Any) -> None:  # one line
                import sys

                exc = sys.exc_info()[1]
                log.info("control endpoint: request from %s failed: %s: %s", client_address[0],
                         type(exc).__name__, exc)

        self._handlers: list[threading.Thread] = []
        self._httpd = Httpd((host, port), Handler)
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="control-endpoint",
                                         daemon=True)

    @property
    def url(self) -> str:
        from trtalk.net import url_host

        return f"http://{url_host(self.host)}:{self.port}"

    def start(self) -> "ControlServer":
        self.controls.closed = False
        self._thread.start()
        log.info("control endpoint on %s%s", self.url, " (token required)" if self.token else "")
        return self

    def close(self, join_s: float = 5.0) -> None:
        """Stop serving and cancel requests in flight (a pose file being encoded stops at its
        next frame), waiting at most ``join_s`` for them; a thread still running after that
        (stuck in native code that never checks) is left to the interpreter's own join at exit."""
        import time

        self.controls.closed = True  # later commands are refused, not encoded
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)
        end = time.monotonic() + join_s
        for t in list(self._handlers):
            t.join(timeout=max(0.0, end - time.monotonic()))
            if t.is_alive():
                log.warning("control endpoint: a request is still running after %.0f s", join_s)

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Preview-window hotkeys -> commands (`trtalk.runtime.livesinks.PreviewSink` forwards keys).
HOTKEYS: dict[str, dict] = {
    "b": {"set": "blink"},
    "e": {"set": "freeze", "factor": "emotion"},
    "E": {"set": "unfreeze", "factor": "emotion"},
    "y": {"set": "freeze", "factor": "eyes"},
    "Y": {"set": "unfreeze", "factor": "eyes"},
    "p": {"set": "freeze", "factor": "pose"},
    "P": {"set": "unfreeze", "factor": "pose"},
    "0": {"set": "emotion", "preset": "off"},
    "j": {"set": "gaze", "offset": [-0.5, 0.0]},
    "l": {"set": "gaze", "offset": [0.5, 0.0]},
    "i": {"set": "gaze", "offset": [0.0, -0.5]},
    "k": {"set": "gaze", "offset": [0.0, 0.5]},
    "c": {"set": "gaze", "offset": [0.0, 0.0]},
}


def hotkey(controls: Controls, key: str) -> dict | None:
    """Submit the command of preview key ``key`` (1-9 pick the n-th emotion preset); None if unbound."""
    cmd = HOTKEYS.get(key)
    if cmd is None and key.isdigit() and key != "0":
        names = sorted(controls.presets)
        n = int(key) - 1
        cmd = {"set": "emotion", "preset": names[n]} if n < len(names) else None
    return controls.submit(cmd) if cmd is not None else None
