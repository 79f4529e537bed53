"""`butler serve` over HTTP: an aiohttp.web adapter of `RepositoryService`.

aiohttp parses HTTP (no hand-written parser here); each request is answered by the service in a
thread pool (the registry's reads are blocking SQL), and files go out through aiohttp's
`FileResponse`, which honours ``Range``, ``HEAD`` and conditional requests and sends with
``sendfile``. The server binds 127.0.0.1 unless told otherwise and only reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._protocol import Request
from ._service import RepositoryService

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["make_app", "serve"]

MAX_REQUEST_BYTES = 64 << 20
"""Largest request body accepted (a `find_datasets` of a few hundred thousand data IDs)."""


def make_app(service: RepositoryService, *, threads: int = 8) -> web.Application:
    """The aiohttp application answering ``service``'s protocol."""
    from aiohttp import web

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="butler-serve")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = Request(request.method, request.path, dict(request.query), dict(request.headers), body)
        if _is_quick(req.path):  # a thread hop would cost more than the answer
            answer = service.handle(req)
        else:
            answer = await asyncio.get_running_loop().run_in_executor(pool, service.handle, req)
        if answer.file is not None:
            response = web.FileResponse(answer.file, headers=dict(answer.headers))
            if answer.remove_after is None:
                return response
            try:  # a file made for this answer: send it now, then remove it
                await response.prepare(request)
                await response.write_eof()
            finally:
                shutil.rmtree(answer.remove_after, ignore_errors=True)
            return response
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    async def shutdown(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(shutdown)
    return app


_QUICK_CALLS = frozenset({"info", "dataset_type", "collection", "chain_children", "find_dataset"})
"""Calls answered on the event loop: one indexed lookup each (a thread hop would cost more than the
answer; `find_dataset` reads at most the small files it inlines). Everything else, exports and
queries of unbounded size included, goes to the threads."""


def _is_quick(path: str) -> bool:
    """Whether a request is answered on the event loop (see `_QUICK_CALLS`; file answers are
    streamed by aiohttp itself)."""
    name = path.rsplit("/", 1)[-1]
    return name in _QUICK_CALLS or name == "file"


def serve(root: str, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve the repository at ``root`` until interrupted; ``announce`` gets the URL once listening
    (port 0 picks a free port: the URL names the one chosen)."""
    from aiohttp import web

    service = RepositoryService(root, token=token)
    app = make_app(service)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        (announce or _print)(f"http://{shown}:{bound_port}/")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def _print(url: str) -> None:
    print(f"serving at {url} (read-only; Ctrl-C stops)", flush=True)
    sys.stdout.flush()
