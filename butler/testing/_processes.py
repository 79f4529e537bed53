"""Starting many real processes at the same moment, for concurrency tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_concurrently"]


def run_concurrently(ctx: Any, target: Callable[..., None], arguments: Sequence[tuple[Any, ...]], *,
                     timeout: float = 120.0) -> list[tuple[str, int, Any]]:
    """One process of ``ctx`` (a multiprocessing context) per tuple of ``arguments``, each called as
    ``target(*args, barrier, queue)``: all wait at the barrier, so they race, and each puts one
    ``("ok" | "error", pid, payload)`` on the queue. Returns those tuples; fails on any "error"
    (its payload, a traceback, is the message)."""
    barrier = ctx.Barrier(len(arguments))
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, queue)) for args in arguments]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [r[2] for r in results if r[0] != "ok"]
    if errors:
        raise AssertionError(errors[0])
    return results
