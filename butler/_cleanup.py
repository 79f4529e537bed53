"""Clean-up after interrupted writes, and the leftovers that `butler verify` reports.

Clean-up deletes only what the file journal (``registry/_journal.py``) says an interrupted write
left, and only after checking the registry: a journaled path that some dataset references now is
kept, whoever wrote it. It works run by run, holding the run's lock exclusively (so no write into
that run is in flight: writes hold it shared), through a writeable Butler, on runs the caller
owns (a run that no longer exists, left by an interrupted ``remove_runs``, may be finished by
anyone: its owner already decided its files go).

``leftovers`` lists what clean-up would touch, without touching it; with ``walk=True`` it also
walks the repository for files that neither the registry nor the journal knows (put there by
hand, or by a butler older than the journal), which clean-up never deletes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._faults import crash_point
from ._ownership import require_owner
from ._run_lock import run_lock
from .datastore._directory_io import remove_path
from .datastore._file_io import checksum_file
from .errors import RunLockedError, RunOwnershipError
from .registry._collections import CollectionType
from .registry._journal import DELETE, MOVE, STAGE, JournalEntry

if TYPE_CHECKING:
    from .datastore._datastore import VerifyProblem
    from .datastore._interface import Datastore
    from .registry._registry import Registry

__all__ = ["CleanupReport", "cleanup", "leftovers"]

_TMP_PREFIX = ".tmp-"
_TMP_TOKEN = len(_TMP_PREFIX) + 13  # ".tmp-" + 12 hex digits + "-"
_REPO_FILES = ("butler.yaml", "butler.sqlite3", "butler.sqlite3-wal", "butler.sqlite3-shm",
               "butler.sqlite3-journal", ".locks")


@dataclass
class CleanupReport:
    """What `cleanup` did: files removed, registered files kept, runs it could not clean."""

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    sources_unlinked: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # run -> why

    def summary(self) -> str:
        lines = [(f"removed {len(self.removed)} file(s) left by interrupted writes, finished "
                  f"{len(self.sources_unlinked)} move(s), kept {len(self.kept)} registered file(s)")]
        lines += [f"skipped run {run!r}: {why}" for run, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def cleanup(registry: Registry, datastore: Datastore, runs: Sequence[str] | None = None, *, user: str,
            allow_foreign_run: bool = False) -> CleanupReport:
    """Resolve the journal of ``runs`` (default: every run with entries) as ``user``; see the module
    docstring. The caller checks that the repository may be written."""
    journal = registry.journal
    report = CleanupReport()
    wanted = sorted({e.run for e in journal.pending(runs)})
    for run in wanted:
        rec = registry.collections.find(run)
        if rec is None:
            registry.collections.refresh()
            rec = registry.collections.find(run)
        if rec is not None and rec.type == CollectionType.RUN:  # a removed run's leftovers are anybody's
            # to finish (its owner removed it), even once the name is another collection's
            try:
                require_owner(rec, user, action="clean it up", allow_foreign=allow_foreign_run)
            except RunOwnershipError as err:
                report.skipped[run] = f"owned by {rec.owner!r}: {err}"
                continue
        try:
            with run_lock(datastore.root, run, action="clean up"):
                _clean_run(registry, datastore, run, report)
        except RunLockedError as err:
            report.skipped[run] = str(err)
    return report


def _clean_run(registry: Registry, datastore: Datastore, run: str, report: CleanupReport) -> None:
    journal = registry.journal
    with registry.transaction() as conn:
        entries = journal.pending([run], conn=conn)
        registered = journal.registered_paths(conn, [e.path for e in entries])
    if not entries:
        return
    temps = _temporaries(datastore.root, [e.path for e in entries if e.action != DELETE])
    dirs: set[str] = set()
    for e in entries:
        full = datastore.abspath(e.path)
        dirs.add(os.path.dirname(full))
        for temp in temps.get(e.path, ()):
            remove_path(temp)
            report.removed.append(os.path.relpath(temp, datastore.root))
        if e.action == MOVE and e.committed:
            if e.source and e.path in registered and _same_file(e.source, full):
                crash_point("cleanup: unlink a moved source")
                os.unlink(e.source)
                report.sources_unlinked.append(e.source)
            continue
        if e.path in registered:
            report.kept.append(e.path)
            continue
        if os.path.lexists(full):
            remove_path(full)
            report.removed.append(e.path)
    datastore.prune_empty_dirs(dirs)
    with registry.transaction(write=True) as conn:
        journal.clear_ids(conn, [e.id for e in entries])


def _same_file(source: str | None, dest: str) -> bool:
    """Whether ``source`` still holds the bytes moved to ``dest`` (a link to it, or an equal copy)."""
    if not source:
        return False
    try:
        a, b = os.stat(source), os.stat(dest)
    except FileNotFoundError:
        return False
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    return a.st_size == b.st_size and checksum_file(source) == checksum_file(dest)


def _temporaries(root: str, paths: Iterable[str]) -> dict[str, list[str]]:
    """The ``.tmp-`` staging names next to each journaled path (one directory listing per directory)."""
    by_dir: dict[str, dict[str, str]] = {}
    for rel in paths:
        full = os.path.join(root, rel)
        directory, base = os.path.split(full)
        by_dir.setdefault(directory, {})[base[:200]] = rel
    out: dict[str, list[str]] = {}
    for directory, bases in by_dir.items():
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if not name.startswith(_TMP_PREFIX):
                continue
            rest = name[_TMP_TOKEN:]
            journaled = bases.get(rest) or (bases.get(rest[:-4]) if rest.endswith("-old") else None)
            if journaled is not None:
                out.setdefault(journaled, []).append(os.path.join(directory, name))
    return out


# -- what verify reports ------------------------------------------------------------------------
def leftovers(registry: Registry, datastore: Datastore, *, walk: bool = False) -> list[VerifyProblem]:
    """Files interrupted writes left (journaled; `cleanup` resolves them) and, with ``walk``,
    every other file under the root that the registry does not know."""
    from .datastore._datastore import VerifyProblem

    journal = registry.journal
    with registry.transaction() as conn:
        entries = journal.pending(conn=conn)
        registered = journal.registered_paths(conn, [e.path for e in entries])
    problems: list[VerifyProblem] = []
    known: set[str] = set()
    temps = _temporaries(datastore.root, [e.path for e in entries if e.action != DELETE])
    for e in entries:
        how = _describe(e)
        for temp in temps.get(e.path, ()):
            rel = os.path.relpath(temp, datastore.root)
            known.add(rel)
            problems.append(VerifyProblem(rel, "leftover", f"temporary file of {how}; `butler cleanup` removes it"))
        if e.action == MOVE and e.committed:
            if e.source and os.path.lexists(e.source):
                problems.append(VerifyProblem(e.source, "leftover", f"source of {how}, registered but not yet "
                                              "unlinked; `butler cleanup` finishes the move"))
            continue
        if e.path not in registered and os.path.lexists(datastore.abspath(e.path)):
            known.add(e.path)
            problems.append(VerifyProblem(e.path, "leftover", f"unregistered file of {how}; `butler cleanup` "
                                          "removes it"))
    if walk:
        problems += _unregistered(registry, datastore.root, known)
    return problems


def _describe(e: JournalEntry) -> str:
    import time

    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.created_ns / 1e9))
    what = {STAGE: "an interrupted write", DELETE: "an interrupted removal",
            MOVE: "an interrupted move"}.get(e.action, e.action)
    return f"{what} into run {e.run!r} (pid {e.pid} on {e.host} at {when})"


def _unregistered(registry: Registry, root: str, known: set[str]) -> list[VerifyProblem]:
    """Every file under the root that no file record covers and the journal did not explain."""
    from .datastore._datastore import VerifyProblem

    registered = {p for p in registry.datasets.all_paths() if not os.path.isabs(p)}
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if not rel_dir:
            dirnames[:] = [d for d in dirnames if d not in _REPO_FILES]
            filenames = [n for n in filenames if n not in _REPO_FILES]
        for name in list(dirnames):
            rel = os.path.join(rel_dir, name)
            if rel in registered or rel in known:  # a directory dataset (zarr store), or a journaled one
                dirnames.remove(name)
            elif name.startswith(_TMP_PREFIX):
                dirnames.remove(name)
                if rel not in known:
                    problems.append(VerifyProblem(rel, "unregistered", "temporary directory the journal does not "
                                                  "explain (left by an older butler?); remove it by hand"))
        for name in filenames:
            rel = os.path.join(rel_dir, name)
            if rel in registered or rel in known:
                continue
            kind = "temporary file" if name.startswith(_TMP_PREFIX) else "file"
            problems.append(VerifyProblem(rel, "unregistered", f"{kind} the registry does not know and no write "
                                          "journaled; not removed by `butler cleanup`: remove or ingest it by hand"))
    return problems
