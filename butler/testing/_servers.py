"""A real `butler serve` in a child process, for tests and benchmarks of remote repositories."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["FlippingProxy", "Proxy", "ServedRepository", "served_repository"]


@dataclass(frozen=True)
class ServedRepository:
    url: str
    pid: int

    def rss_kb(self) -> int:
        """The server process's resident memory now."""
        with open(f"/proc/{self.pid}/status") as stream:
            return int(next(line for line in stream if line.startswith("VmRSS:")).split()[1])


@contextlib.contextmanager
def served_repository(root: str, *, args: Sequence[str] = (), env: dict[str, str] | None = None,
                      timeout: float = 60.0) -> Iterator[ServedRepository]:
    """Run ``butler serve root --port 0 [args]`` and yield its URL and pid (the URL read from the line
    it prints once listening: no polling); the server is stopped on exit."""
    cmd = [sys.executable, "-m", "butler.cli", "serve", root, "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = ""
        while not line:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"`{' '.join(cmd)}` printed no URL within {timeout} s")
            line = proc.stdout.readline()
            if not line:  # exited
                raise RuntimeError(f"`{' '.join(cmd)}` exited ({proc.wait()}): {proc.stderr.read()}")
        selector.close()
        url = next(word for word in line.split() if word.startswith("http"))
        yield ServedRepository(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class Proxy:
    """A real HTTP proxy on 127.0.0.1 in a thread (aiohttp) in front of a butler server: each answer
    passes through `answer`, which subclasses override to damage it (tests of what crosses the wire)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.bytes_forwarded = 0
        """Bytes of the answers' bodies passed on to clients (what crossed the wire from the server)."""
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def answer(self, request: Any, status: int, headers: dict[str, str], body: bytearray) -> Any:
        """The response sent for the server's answer (``headers`` without the length and encodings)."""
        from aiohttp import web

        return web.Response(status=status, body=bytes(body), headers=headers)

    async def _main(self) -> None:
        import aiohttp
        from aiohttp import web

        # A new connection per request: a kept-alive one the server closed meanwhile would fail the forward.
        session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(force_close=True))

        async def forward(request: web.Request) -> web.StreamResponse:
            async with session.request(request.method, self.target + request.path_qs, data=await request.read(),
                                       headers={k: v for k, v in request.headers.items() if k.lower() != "host"}) as r:
                body = bytearray(await r.read())
                self.bytes_forwarded += len(body)
                headers = {k: v for k, v in r.headers.items() if k.lower() not in ("content-length", "transfer-encoding",
                                                                                    "content-encoding")}
                response: web.StreamResponse = await self.answer(request, r.status, headers, body)
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await session.close()
        await runner.cleanup()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class FlippingProxy(Proxy):
    """A `Proxy` that flips one bit in the middle of the file bytes of the first ``flips`` answers that
    carry some: file answers, export bundles and the inline bytes after a lookup's JSON. With
    ``cuts``, the first ``cuts`` such answers are instead cut off halfway (the connection closed after
    half the announced body: a server that died mid-transfer). For tests of damage in transit."""

    def __init__(self, target: str, flips: int = 0, *, cuts: int = 0, calls: tuple[str, ...] | None = None) -> None:
        super().__init__(target)
        self.flips = flips
        self.cuts = cuts
        self.cut = 0
        self.calls = calls
        """Damage only the answers of requests whose path ends with one of these (None: any)."""
        self.flipped = 0

    async def answer(self, request: Any, status: int, headers: dict[str, str], body: bytearray) -> Any:
        from aiohttp import web

        json_length = int(headers.get("X-Butler-Json-Length", len(body)))
        carries_file = request.path.endswith(("/file", "/export")) or len(body) > json_length  # inline bytes
        if self.calls is not None and not request.path.endswith(self.calls):
            carries_file = False
        if carries_file and status == 200 and self.cut < self.cuts and len(body) > 1:
            self.cut += 1
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(bytes(body[:len(body) // 2]))
            request.transport.close()  # half the body, then the connection is gone
            return response
        if carries_file and status == 200 and self.flipped < self.flips and body:
            start = json_length if json_length < len(body) else 0
            body[start + (len(body) - start) // 2] ^= 0x01  # a byte in the middle of the file bytes
            self.flipped += 1
        return await super().answer(request, status, headers, body)
