"""A static file server on 127.0.0.1 for tests and benchmarks of statically hosted repositories.

`StaticServer` serves a directory with aiohttp's static route (which honours ``Range``,
``If-None-Match`` and ``If-Modified-Since``, as nginx does) on an ephemeral port, from an event
loop in a daemon thread; it counts the requests and the body bytes it sends (the Content-Length
of each response, which is what goes on the wire for files). `start` returns once the port is
bound; `stop` closes the server and its thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Self

__all__ = ["StaticServer"]


class StaticServer:
    """Serve ``directory`` as static files at ``http://127.0.0.1:PORT/``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.bytes_sent = 0
        self.requests: list[tuple[str, str, int]] = []  # (path, Range header, status)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_sent = 0
            self.requests.clear()

    def start(self) -> Self:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="static-http", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=30)
        return self

    async def _start(self) -> int:
        from aiohttp import web

        async def count(request: web.Request, response: web.StreamResponse) -> None:
            length = response.headers.get("Content-Length")
            with self._lock:
                self.requests.append((request.path, request.headers.get("Range", ""), response.status))
                if request.method == "GET" and length is not None and length.isdigit():
                    self.bytes_sent += int(length)

        app = web.Application()
        app.on_response_prepare.append(count)
        app.router.add_static("/", self.directory)
        runner = self._runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # an ephemeral port, known before serving
        port: int = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        return port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
