"""Crash tests by enumeration: run an operation in a child process killed at its n-th crash point.

`count_crash_points` runs the operation once to completion in a child and counts the points it
passes (``butler._faults``); `crash_at` runs it in a fresh child killed by SIGKILL at point n.
Children are forked, so an operation costs milliseconds to start, and start with no open
connection or cached registry of the parent (they open the repository themselves).

`repository_state` is what atomicity is judged by: every dataset (type, data ID, run) with the
checksums of its files.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CrashOutcome", "count_crash_points", "crash_at", "forget_open_repositories", "repository_state"]


@dataclass(frozen=True)
class CrashOutcome:
    """How a child ended: ``killed`` at its crash point, or ``completed`` (n past the last point)."""

    killed: bool
    points: int  # crash points passed (the one that killed it included)
    trail: tuple[str, ...]


def forget_open_repositories(*, close: bool = False) -> None:
    """Drop this process's cached engines, registries and configs, so repositories are opened
    afresh; their connections are closed only with ``close`` (a forked child must not close the
    connections its parent still uses)."""
    from .._butler import _REGISTRIES
    from .._config import _CACHE
    from ..registry._database import forget_engines

    _REGISTRIES.clear()
    _CACHE.clear()
    forget_engines(close=close)


def _run_child(operation: Callable[[], Any], n: int, report_path: str) -> CrashOutcome:
    from .. import _faults

    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            forget_open_repositories()
            _faults.arm(n)
            operation()
            with open(report_path, "w") as f:
                f.write("\n".join([str(_faults.reached()), *_faults.trail()]))
        except BaseException:  # noqa: BLE001 - reported to the parent through the exit code
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return CrashOutcome(True, n, ())
    if os.WEXITSTATUS(status) != 0:
        raise AssertionError(f"the operation failed in the child (exit {os.WEXITSTATUS(status)}) at n={n}; "
                             "its traceback is in the captured stderr")
    with open(report_path) as f:
        lines = f.read().split("\n")
    os.unlink(report_path)
    return CrashOutcome(False, int(lines[0]), tuple(lines[1:]))


def count_crash_points(operation: Callable[[], Any], scratch: str) -> CrashOutcome:
    """Run ``operation`` to completion in a child; how many crash points it passed, and which."""
    return _run_child(operation, 0, os.path.join(scratch, ".crash-count"))


def crash_at(operation: Callable[[], Any], n: int, scratch: str) -> CrashOutcome:
    """Run ``operation`` in a child killed by SIGKILL at its ``n``-th crash point (1-based)."""
    return _run_child(operation, n, os.path.join(scratch, f".crash-{n}"))


def repository_state(butler: Any) -> dict[tuple[str, ...], tuple[Any, ...]]:
    """``{(dataset type, data ID, run): ((component, checksum), ...)}`` of every dataset, plus
    ``("collection", name): (type,)`` of every collection and ``("calib", collection, type,
    data ID): ((begin, end), ...)`` of every certified validity range."""
    from ..registry._inspection import registry_contents

    registry = butler.registry
    out: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}  # (component, checksum) or (begin, end)
    contents = registry_contents(registry)
    ids, files, calibs = contents.datasets, contents.files, contents.calibs
    collections: dict[tuple[str, ...], tuple[Any, ...]] = {
        ("collection", name): (type_,) for name, type_ in contents.collections.items()}
    registry.refresh()
    runs = butler.query_collections(types=["RUN"])
    by_id = {}
    for dataset_type in registry.dataset_types.all() if runs else ():
        refs = butler.query_datasets(dataset_type.dataset_type.name, collections=runs, find_first=False)
        for ref in refs:
            name, run = ids[ref.id]
            out[(name, str(ref.data_id), run)] = sorted(files.get(ref.id, []))
            by_id[ref.id] = (name, str(ref.data_id))
    for collection, dataset_id, begin, end in calibs:
        name, data_id = by_id[dataset_id]
        out.setdefault(("calib", collection, name, data_id), []).append((begin, end))
    result: dict[tuple[str, ...], tuple[Any, ...]] = {key: tuple(sorted(v)) for key, v in out.items()}
    result.update(collections)
    return result
