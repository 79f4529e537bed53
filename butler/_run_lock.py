"""Run locks: one executor (or remover) at a time per RUN collection of a repository.

An executor's workers write files into the run before the driver registers them, and at start an
executor deletes the run's unregistered files as orphans of a killed run. Two executors on the
same run would therefore delete each other's fresh outputs (and race to register the same
quanta). The lock makes the second one fail at once, naming the holder.

The lock is an advisory ``flock`` on ``<root>/.locks/run-<digest>.lock``: the kernel releases it
when the holding process dies, even by SIGKILL, so a crashed run can always be resumed and there
is no stale-lock clean-up or heartbeat to get wrong. The file exists only while held (a killed
holder leaves an unlocked one behind, which the next holder reuses and removes). Holding is
re-entrant for the holding thread; other threads of the process are refused. The file holds who
locked it (host, pid, time, command) for the error message. ``flock`` works on
local file systems and on NFSv4; every executor of a run shares the repository's file system
because its workers write there.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import RunLockedError

__all__ = ["run_lock", "run_lock_holder"]

_held: dict[str, list[int]] = {}  # lock path -> [fd, depth, thread id]: re-entrant for the holding thread
_guard = threading.Lock()


def _lock_path(root: str, run: str) -> str:
    digest = hashlib.sha1(run.encode()).hexdigest()[:20]
    return os.path.join(root, ".locks", f"run-{digest}.lock")


def run_lock_holder(root: str, run: str) -> dict[str, object] | None:
    """Who holds the lock of ``run`` now (host, pid, since, command), or None if nobody does."""
    path = _lock_path(root, run)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def run_lock(root: str, run: str, *, action: str = "execute") -> Iterator[None]:
    """Hold the run's lock for the block, or raise :class:`RunLockedError` naming its holder.

    Re-entrant for the thread holding it; another thread of the same process is refused like
    another process (an executor running in a thread of a notebook must be protected from a
    ``remove_runs`` in the next cell as much as from another process).
    """
    path = _lock_path(root, run)
    me = threading.get_ident()
    with _guard:
        entry = _held.get(path)
        if entry is not None:
            if entry[2] != me:
                raise RunLockedError(f"cannot {action} run {run!r}: it is locked by another thread of this process "
                                     f"(pid {os.getpid()}); wait for it to finish")
            entry[1] += 1
        else:
            _held[path] = [_acquire(path, run, action), 1, me]
    try:
        yield
    finally:
        with _guard:
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                # Unlink while still holding the lock, then close (which releases it): a process
                # that opened the old file meanwhile sees after locking that it is no longer the
                # file at ``path`` and starts over (``_acquire``), so no lock files pile up.
                try:
                    os.unlink(path)
                except OSError:
                    pass  # already gone, or not ours to remove: the next holder reuses it
                finally:
                    os.close(entry[0])


def _acquire(path: str, run: str, action: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    attempts = 0
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            attempts += 1
            if not holder and attempts < 5:  # most likely a brief shared lock of run_lock_holder()
                time.sleep(0.005)
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                   f"({holder.get('action')}: {holder.get('command')})") if holder else "another process"
            raise RunLockedError(
                f"cannot {action} run {run!r}: it is locked by {who}; wait for that process to finish or stop "
                f"it (a killed process releases the lock), or write to another output run"
            ) from None
        if _is_current(fd, path):
            break
        os.close(fd)  # the holder unlinked this file as we opened it: lock the new one
    info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "action": action, "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _is_current(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
