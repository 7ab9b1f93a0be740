"""trtalk.serve.background: an aiohttp server on its own event loop in a background thread (the
serve tests', the benchmarks' and the Pipecat example's)."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest

web = pytest.importorskip("aiohttp.web")

from trtalk.serve.background import start_runner_in_thread  # noqa: E402


def _app() -> "web.Application":
    app = web.Application()

    async def hello(request):
        return web.Response(text="hi")

    app.router.add_get("/", hello)
    return app


def test_serves_then_stops_with_its_cleanup_and_thread_gone() -> None:
    calls = []

    async def before() -> None:
        calls.append(threading.current_thread().name)

    port, stop = start_runner_in_thread(lambda: web.AppRunner(_app()), name="bg-test-loop", before_cleanup=before)
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == b"hi"
    assert any(t.name == "bg-test-loop" for t in threading.enumerate())
    stop()
    assert calls == ["bg-test-loop"]  # awaited on the server's own loop
    assert not any(t.name == "bg-test-loop" for t in threading.enumerate())
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_server_that_cannot_start_says_why_at_once() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="did not start: .*"):
            start_runner_in_thread(lambda: web.AppRunner(_app()), "127.0.0.1", port, start_timeout=20)
    finally:
        taken.close()
