"""Run locks: one executor (or remover, or cleaner) at a time per RUN collection of a repository.

An executor's workers write files into the run before the driver registers them, and at start an
executor cleans up what a killed execution of the run journaled and never registered. Two executors on the
same run would therefore delete each other's fresh outputs (and race to register the same
quanta). The lock makes the second one fail at once, naming the holder.

The lock is an advisory ``flock`` on ``<root>/.locks/run-<digest>.lock``: the kernel releases it
when the holding process dies, even by SIGKILL, so a crashed run can always be resumed and there
is no stale-lock clean-up or heartbeat to get wrong. An exclusive holder removes the file when it
lets go (a killed holder leaves an unlocked one behind, which the next holder reuses). Holding is
re-entrant for the holding thread; other threads of the process are refused. The file holds who
locked it (host, pid, time, command) for the error message.

Ordinary writes (``put``, ``ingest``, ``remove``) take the lock *shared*: any number of them may
write into a run at once, but not while an executor, ``remove_runs`` or clean-up holds it
exclusively, because clean-up deletes the staged files of writes it believes dead (see
``butler/_cleanup.py``); a write in flight must never look dead. Shared holders keep the lock file
instead of removing it (the next write opens it without creating it): a run written by ``put``
leaves one empty file in ``.locks``, removed by the next exclusive holder. ``flock`` works on
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
_shared: dict[tuple[str, int], list[int]] = {}  # (lock path, thread id) -> [fd, depth]
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
def run_lock(root: str, run: str, *, action: str = "execute", shared: bool = False) -> Iterator[None]:
    """Hold the run's lock for the block, or raise :class:`RunLockedError` naming its holder.

    Re-entrant for the thread holding it; another thread of the same process is refused like
    another process (an executor running in a thread of a notebook must be protected from a
    ``remove_runs`` in the next cell as much as from another process). ``shared`` holds it
    alongside other shared holders (ordinary writes); inside the exclusive hold of the same
    thread it is a no-op.
    """
    path = _lock_path(root, run)
    me = threading.get_ident()
    if shared:
        with _shared_lock(path, run, action, me):
            yield
        return
    with _guard:
        nested = _nest_in_exclusive(path, run, action, me)
    if not nested:
        fd = _acquire(path, run, action)  # outside the guard: it may retry for a while
        with _guard:
            _held[path] = [fd, 1, me]
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


def _nest_in_exclusive(path: str, run: str, action: str, me: int) -> bool:
    """Whether this thread holds ``path`` exclusively already (then one level deeper); another
    thread of this process holding it is refused like another process. Called under ``_guard``."""
    entry = _held.get(path)
    if entry is None:
        return False
    if entry[2] != me:
        raise RunLockedError(f"cannot {action} run {run!r}: it is locked by another thread of this process "
                             f"(pid {os.getpid()}); wait for it to finish")
    entry[1] += 1
    return True


@contextmanager
def _shared_lock(path: str, run: str, action: str, me: int) -> Iterator[None]:
    """A shared hold: each thread's on a descriptor of its own (shared flocks coexist), closed
    when its outermost hold ends (the file stays, so the next write opens it without creating it)."""
    key = (path, me)
    with _guard:
        nested = _nest_in_exclusive(path, run, action, me)
        own = None if nested else _shared.get(key)
        if own is not None:
            own[1] += 1
    if not nested and own is None:
        fd = _acquire(path, run, action, shared=True)  # outside the guard: it may retry for a while
        with _guard:
            _shared[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            if nested:
                _held[path][1] -= 1
            else:
                own = _shared[key]
                own[1] -= 1
                if own[1] == 0:
                    del _shared[key]
                    os.close(own[0])  # releases this description's shared flock


_lock_dirs: set[str] = set()


def _forget_after_fork() -> None:
    """A forked child holds nothing: the descriptors it inherited share the parent's flocks, so it
    must neither use nor unlock them (closing its copies leaves the parent's locks held)."""
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    for entry in (*_held.values(), *_shared.values()):
        try:
            os.close(entry[0])
        except OSError:
            pass
    _shared.clear()
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _acquire(path: str, run: str, action: str, *, shared: bool = False) -> int:
    directory = os.path.dirname(path)
    if directory not in _lock_dirs:
        os.makedirs(directory, exist_ok=True)
        _lock_dirs.add(directory)
    attempts = 0
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        except FileNotFoundError:  # .locks was removed (a repository copied without it)
            os.makedirs(directory, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            attempts += 1
            if (not holder or not _alive(holder)) and attempts < 200:
                time.sleep(0.005)  # shared holders (writes, run_lock_holder()) hold it briefly
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                   f"({holder.get('action')}: {holder.get('command')})") if holder and _alive(holder) \
                else "writes in progress in other processes"
            raise RunLockedError(
                f"cannot {action} run {run!r}: it is locked by {who}; wait for that process to finish or stop "
                f"it (a killed process releases the lock), or write to another output run"
            ) from None
        if _is_current(fd, path):
            break
        os.close(fd)  # the holder unlinked this file as we opened it: lock the new one
    if shared:
        return fd  # the file names the exclusive holder only
    info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "action": action, "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _alive(holder: dict[str, object]) -> bool:
    """Whether the recorded exclusive holder may still run (a killed one leaves its record)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid") or 0
    if not isinstance(pid, (int, float, str)):
        return True  # an unreadable pid, as a non-numeric one below: it may still run
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


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
