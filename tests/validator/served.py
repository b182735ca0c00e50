"""A validator served on a loopback port from a thread of its own, for tests that drive it with a
synchronous client (hypothesis) or from other processes."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Callable


class ServedValidator:
    def __init__(self, make_node: Callable[[], Awaitable[Any]]) -> None:
        self._make_node = make_node
        self._ready: Future = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.url = ""
        self.node: Any = None

    def __enter__(self) -> "ServedValidator":
        self._thread.start()
        self.url = self._ready.result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, coroutine: Awaitable[Any]) -> Any:
        """Run a coroutine on the server's loop (e.g. a ledger read) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web

        from node.validator.app import build_app

        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.node = await self._make_node()
            runner = web.AppRunner(build_app(self.node), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
        except BaseException as error:
            self._ready.set_exception(error)
            raise
        self._ready.set_result(f"http://127.0.0.1:{port}")
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self.node.ledger.close()
