"""An aiohttp server on an event loop of its own in a background thread: for tests, benchmarks and
examples that drive a server from synchronous code (``trtalk serve`` itself runs in the main
thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable


def start_runner_in_thread(make_runner: Callable[[], object], host: str = "127.0.0.1", port: int = 0, *,
                           name: str = "trtalk-server-loop", before_cleanup: Callable[[], Awaitable[None]] | None = None,
                           start_timeout: float = 30.0, stop_timeout: float = 60.0) -> tuple[int, Callable[[], None]]:
    """Start ``make_runner()`` (an unstarted ``aiohttp.web.AppRunner``, built on the new loop) on
    ``host:port`` (0: a free port) in a daemon thread. Returns (the bound port, ``stop()``);
    ``stop()`` awaits ``before_cleanup()`` (where given) and the runner's cleanup on that loop,
    then ends the loop and the thread. Raises RuntimeError when the server does not start within
    ``start_timeout`` s (with the error that stopped it, where there was one)."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    async def main() -> None:
        runner = make_runner()
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        holder["port"] = site._server.sockets[0].getsockname()[1]
        holder["runner"] = runner

    def target() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the caller, who is waiting for ``ready``
            holder["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    if not ready.wait(start_timeout):
        raise RuntimeError(f"the server on {host}:{port} did not start within {start_timeout:.0f} s")
    if "error" in holder:
        raise RuntimeError(f"the server on {host}:{port} did not start: {holder['error']}") from holder["error"]

    def stop() -> None:
        async def shutdown() -> None:
            if before_cleanup is not None:
                await before_cleanup()
            await holder["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(stop_timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    return holder["port"], stop
