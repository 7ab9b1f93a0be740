"""`trtalk serve`: the live avatar in a web page over WebRTC, sessions batched on one worker.

aiohttp and aiortc are imported only when the command runs (`pip install 'trtalk[serve]'`), so
`trtalk --help` works without them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trtalk import threads
from trtalk.configcli import add_command, option
from trtalk.errors import TrtalkError
from trtalk.httpguard import check_token
from trtalk.net import is_loopback, url_host
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.pipeline import PipelineConfig

log = logging.getLogger(__name__)



@dataclass
class ServeCommand:
    """`trtalk serve`: where it listens, who may use it, how many sessions, and the model."""

    host: str = option("127.0.0.1", help="address to listen on; anything but loopback needs --token")
    port: int = option(8080, bounds=(0, 65535), help="TCP port of the page and signalling")
    token: str | None = option(None, help="secret every request must carry (?token= or a Bearer header)")
    token_file: Path | None = option(None, help="read the token from this file (first line)")
    max_sessions: int = option(8, bounds=(1, 256), section="capacity",
                               help="most sessions at once (admission also refuses a session "
                               "unless every admitted one keeps its frame rate: measured CPU per "
                               "frame, encoding included, refreshed as it runs)")
    max_batch: int = option(8, section="capacity", bounds=(1, 256),
                            help="most frames per generator batch across sessions")
    capacity_fps: float | None = option(None, section="capacity", bounds=(0.1, 1e5), metavar="FPS",
                                        help="frames/s the server can make for its sessions, "
                                             "encoding included, instead of measuring it")
    stall_timeout_s: float = option(10.0, section="limits", bounds=(0.1, 3600),
                                    help="end a session whose microphone sends nothing this long")
    max_upload_mb: float = option(8.0, section="limits", bounds=(0.01, 1024),
                                  help="largest avatar photo upload")
    max_upload_mp: float = option(16.0, section="limits", bounds=(0.01, 1000),
                                  help="largest avatar photo in megapixels")
    control_rate: float = option(20.0, section="limits", bounds=(0.1, 10000),
                                 help="control-channel messages/s a session may send before it is closed")
    max_connections: int = option(64, section="limits", bounds=(1, 10000),
                                  help="open HTTP connections at most; more get 503 at once")
    stream: PipelineConfig = option(default_factory=PipelineConfig, prefix="")
    model: ModelOptions = option(default_factory=ModelOptions, prefix="")


def register(sub) -> None:
    add_command(sub, "serve", ServeCommand, _run,
                help="web page: talk to the avatar in a browser over WebRTC (many sessions, one worker)",
                description="Serve a page where a person picks or uploads an avatar photo, allows the "
                            "microphone (and camera) and sees and hears the avatar. Needs "
                            "`pip install 'trtalk[serve]'`. Listens on 127.0.0.1 unless --host is "
                            "given (then --token or --token-file is required).",
                basic=("--host", "--port", "--token", "--token-file", "--max-sessions", "--checkpoint",
                       "--model", "--device", "--fps"),
                examples=(("trtalk serve", "the warp avatar on http://127.0.0.1:8080/"),
                          ("trtalk serve --host 0.0.0.0 --token-file token.txt --checkpoint pcavs.safetensors",
                           "PC-AVS for the network, every request carrying the token"),
                          ("trtalk serve --device cuda --max-batch 16", "a GPU, up to 16 frames a batch")),
                # the page picks each session's mouth source; sessions run until they end; the
                # scheduler's batch is --max-batch
                omit=("stream.batch", "stream.duration", "stream.mouth_source.mouth"))


def resolve_token(cmd: ServeCommand) -> str | None:
    token = cmd.token
    if cmd.token_file is not None:
        if token is not None:
            raise TrtalkError("give --token or --token-file, not both")
        try:
            token = cmd.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise TrtalkError(f"cannot read the token from --token-file {cmd.token_file}: {exc}") from None
    check_token(token, "--token-file" if cmd.token_file is not None else "--token")
    if not is_loopback(cmd.host) and not token:
        raise TrtalkError(f"--host {cmd.host} exposes the server beyond this machine: give --token "
                          f"or --token-file too")
    return token


def limits_of(cmd: ServeCommand):  # -> ServerLimits (aiohttp imported lazily)
    from trtalk.serve.app import ServerLimits

    for name in ("max_upload_mb", "max_upload_mp", "control_rate", "stall_timeout_s"):
        if not getattr(cmd, name) > 0:
            raise TrtalkError(f"--{name.replace('_', '-')} must be positive")
    if not 1 <= cmd.max_sessions <= 256:
        raise TrtalkError("--max-sessions must be between 1 and 256")
    return ServerLimits(max_sessions=cmd.max_sessions, max_upload_bytes=int(cmd.max_upload_mb * 1024 * 1024),
                        max_upload_pixels=int(cmd.max_upload_mp * 1e6), stall_timeout_s=cmd.stall_timeout_s,
                        control_rate=cmd.control_rate, max_connections=cmd.max_connections)


def _import_serve_deps() -> None:
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise TrtalkError(f"trtalk serve needs aiohttp, aiortc and prometheus_client ({exc.name} is missing): "
                          f"pip install 'trtalk[serve]'") from None


def _run(cmd: ServeCommand) -> int:
    token = resolve_token(cmd)
    _import_serve_deps()
    if not 1 <= cmd.max_batch <= 256:
        raise TrtalkError("--max-batch must be between 1 and 256")
    from trtalk.serve.app import Server, make_app

    limits = limits_of(cmd)
    threads.apply(cmd.stream.threads, cmd.model.family_threads())
    family = cmd.model.open(cmd.stream.fps, size=cmd.stream.size)
    server = Server(family, cmd.stream, token=token, limits=limits, max_batch=cmd.max_batch,
                    capacity_fps_override=cmd.capacity_fps)
    server.prepare()
    app = make_app(server)
    url = f"http://{url_host(cmd.host)}:{cmd.port}/"
    print(f"trtalk serve: open {url}{'?token=' + token if token else ''} "
          f"({server.capacity_sessions()} session(s) at {cmd.stream.fps:g} fps fit)", file=sys.stderr)
    try:
        asyncio.run(_serve(app, cmd.host, cmd.port))
    except OSError as exc:
        raise TrtalkError(f"cannot listen on {cmd.host}:{cmd.port}: {exc.strerror or exc}") from None
    return 0


async def _serve(app, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then end every session (each page gets a message) and stop."""
    import signal

    from aiohttp import web

    from trtalk.serve.app import SERVER_KEY, make_runner

    runner = make_runner(app, app[SERVER_KEY].limits, shutdown_timeout=2.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / Windows
            pass
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
        log.info("stopping: ending %d session(s)", len(app[SERVER_KEY].sessions))
    finally:
        t = time.monotonic()
        await runner.cleanup()
        log.info("stopped in %.1f s", time.monotonic() - t)


def run_in_thread(server, host: str = "127.0.0.1", port: int = 0):
    """Start ``server`` (prepared) on a background event loop; returns (url, stop()) -- for tests
    and the load benchmark."""
    from trtalk.serve.app import make_app, make_runner
    from trtalk.serve.background import start_runner_in_thread

    port, stop = start_runner_in_thread(lambda: make_runner(make_app(server), server.limits), host, port,
                                        name="trtalk-serve-loop")
    return f"http://{host}:{port}", stop
