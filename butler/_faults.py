"""Numbered crash points on the write paths, for the fault-injection tests.

Every file-system step and every commit of a write path calls `crash_point` just before it
happens. Normally that is one global lookup. A test child process calls `arm(n)` and then runs
one operation: the n-th crash point reached kills the process with SIGKILL (no clean-up, no
``finally``, as a power cut or the OOM killer would), so a test can enumerate every point of an
operation (count them with ``arm(0)`` and `reached`) instead of sleeping and hoping to hit a
window, as SQLite's crash tests do.
"""

from __future__ import annotations

import os
import signal

__all__ = ["arm", "crash_point", "reached", "trail"]

_target: int | None = None
_count = 0
_trail: list[str] = []


def arm(n: int) -> None:
    """Count crash points from now on and kill this process at the ``n``-th (0: only count)."""
    global _target, _count
    _target, _count = n, 0
    _trail.clear()


def reached() -> int:
    """How many crash points were passed since `arm`."""
    return _count


def trail() -> list[str]:
    """The labels of the crash points passed since `arm` (which step each number is)."""
    return list(_trail)


def crash_point(label: str) -> None:
    """A point where a crash may happen: the next file-system step or commit is ``label``."""
    global _count
    if _target is None:
        return
    _count += 1
    _trail.append(label)
    if _count == _target:
        os.kill(os.getpid(), signal.SIGKILL)
