"""The one staging + registration path of every write: put, ingest, import, transfer, executors.

Every write of files into a repository follows the same order, so that a crash (SIGKILL, power
cut) at any instant leaves the registry describing exactly the bytes on disk, and every other file
it leaves findable by `butler cleanup` (``butler/_cleanup.py``):

1. the caller plans (validates objects and data IDs, chooses paths; no file-system change);
2. `JournaledWrite.intend` journals the paths in a committed transaction (``registry/_journal.py``);
3. files are staged (`stage`: temporary name next to the final path) or placed (`place`: copied,
   linked or "moved" (linked) to the final path, never over an existing file);
4. `registering` opens the one registry transaction: the caller inserts its rows
   (`insert_datasets` and whatever else: tags, records, provenance), and on leaving it the
   staged files are linked into place, the intents are cleared (or, for moves, marked committed)
   and files made unreferenced are journaled as ``delete`` intents (`delete_after_commit`);
5. after the commit (`JournaledWrite` leaving its ``with``), moved sources are unlinked and
   unreferenced files removed, then their intents.

Any failure before the commit undoes steps 2-4 (staged and placed files removed, intents cleared):
the repository is left exactly as it was. Executors journal their outputs ahead (`intend_writes`),
their workers write the files, and the driver registers them here with `adopt_intents`.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._dataset_ref import DatasetRef
from ._faults import crash_point
from .datastore._file_io import unlink_quietly
from .errors import ConflictError
from .registry._journal import DELETE, MOVE, STAGE, new_operation

if TYPE_CHECKING:
    from .datastore._datastore import PlannedWrite, PreparedWrite
    from .datastore._interface import Datastore
    from .registry._collections import CollectionRecord
    from .registry._datasets import FileRecord
    from .registry._registry import Connection, Registry

__all__ = ["PLACE_MODES", "JournaledWrite", "place_file"]

PLACE_MODES = ("copy", "move", "hardlink", "symlink", "auto")
"""How `JournaledWrite.place` puts a file at its final path: "move" links (or copies) until the
commit and unlinks the source after it; "auto" hard-links where it can and copies elsewhere."""


class JournaledWrite:
    """One write of files and rows, all-or-nothing (see the module docstring); a context manager.

    ``label`` names the crash points of the registering transaction (``"<label>: before registry
    commit"``, ``"<label>: registry committed"``).
    """

    def __init__(self, registry: Registry, datastore: Datastore, label: str) -> None:
        self.registry = registry
        self.datastore = datastore
        self.label = label
        self.op = new_operation()
        self._transfer_point = f"{label}: transfer a file"  # formatted once: `place` runs per file
        self._intents = False  # whether this operation journaled intents (then they are cleared)
        self._moves: list[str] = []  # sources of "move" placements, unlinked after the commit
        self._staged: list[PreparedWrite] = []
        self._placed: list[str] = []  # absolute paths placed by this write (removed on failure)
        self._made_dirs: set[str] = set()
        self._deletes: list[tuple[str, str]] = []  # (run, path) of files unreferenced by this write
        self._adopted: list[uuid.UUID] = []
        self._committed = False

    # -- 2: intents ---------------------------------------------------------------------------
    def intend(self, run: str, items: Sequence[tuple[str, uuid.UUID | None, str | None]], *,
               move: bool = False) -> None:
        """Journal (committed now) the paths this write will create in ``run``: ``(path, dataset id,
        source)``; ``move`` for placements whose sources are unlinked after the commit."""
        if not items:
            return
        self.registry.upgrade_for_writes()
        self.registry.journal.record(self.op, run, MOVE if move else STAGE, items)
        self._intents = True

    def adopt_intents(self, dataset_ids: Iterable[uuid.UUID]) -> None:
        """Clear, in the registering transaction, the intents an earlier operation journaled for
        these datasets (`intend_writes`: an executor's outputs, written by its workers)."""
        self._adopted.extend(dataset_ids)

    # -- 3: files -----------------------------------------------------------------------------
    def stage(self, planned: PlannedWrite) -> PreparedWrite:
        """Write ``planned`` under a temporary name; it is linked into place by the registering commit."""
        prepared = self.datastore.stage(planned)
        self._staged.append(prepared)
        return prepared

    def place(self, source: str, dest: str, mode: str) -> None:
        """Put the file ``source`` at the absolute path ``dest`` (never over an existing file); it
        is removed again if the write fails. A "move" leaves the source until after the commit."""
        directory = os.path.dirname(dest)
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        crash_point(self._transfer_point)
        place_file(source, dest, mode)
        self._placed.append(dest)
        if mode == "move":
            self._moves.append(source)

    # -- 4: registration ----------------------------------------------------------------------
    @contextmanager
    def registering(self) -> Iterator[Connection]:
        """The one registry transaction of this write: insert rows in it; on leaving it, staged
        files are linked into place and intents cleared before the commit."""
        registry = self.registry
        registry.upgrade_for_writes()  # the journal (delete intents) and what else writes need; once
        journal = registry.journal
        with registry.transaction(write=True) as conn:
            yield conn
            if self._deletes:
                by_run: dict[str, list[tuple[str, uuid.UUID | None, str | None]]] = {}
                for run, path in self._deletes:
                    by_run.setdefault(run, []).append((path, None, None))
                for run, items in by_run.items():
                    journal.record_in(conn, self.op, run, DELETE, items)
            if self._adopted:
                journal.clear_datasets(conn, self._adopted)
            if self._intents:
                if self._moves:
                    journal.mark_committed(conn, self.op)
                else:
                    journal.clear(conn, self.op, STAGE)
            self.datastore.commit(self._staged)
            crash_point(f"{self.label}: before registry commit")
        self._committed = True
        crash_point(f"{self.label}: registry committed")

    def insert_datasets(self, conn: Connection, run: CollectionRecord, refs: Sequence[DatasetRef],
                        files: Mapping[uuid.UUID, Sequence[FileRecord]]) -> None:
        """Insert refs (of any dataset types, all in ``run``) with their file records."""
        by_type: dict[str, list[DatasetRef]] = {}
        for ref in refs:
            by_type.setdefault(ref.dataset_type.name, []).append(ref)
        for name, type_refs in by_type.items():
            type_rec = self.registry.dataset_types.get(name)
            self.registry.datasets.insert(conn, type_rec, run, type_refs, {r.id: files[r.id] for r in type_refs
                                                                             if r.id in files})

    def delete_after_commit(self, run: str, paths: Iterable[str]) -> None:
        """Files the registering transaction makes unreferenced (replaced or removed datasets):
        journaled in it, removed after the commit. Paths outside the repository ("direct"
        ingests) are never ours to remove."""
        self._deletes.extend((run, p) for p in paths if not os.path.isabs(p))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            if not self._committed:
                self._undo()
            return
        self._finish()

    # -- 5: after the commit ------------------------------------------------------------------
    def _undo(self) -> None:
        self.datastore.discard(self._staged)
        for dest in reversed(self._placed):
            unlink_quietly(dest)  # for a move too: its source is still there
        if self._placed:
            self.datastore.prune_empty_dirs({os.path.dirname(d) for d in self._placed})
        if self._intents:
            self.registry.journal.clear_now(self.op)

    def _finish(self) -> None:
        for source in self._moves:
            crash_point(f"{self.label}: unlink a moved source")
            unlink_quietly(source)
        if self._deletes:
            finish_deletes(self.registry, self.datastore, self.op, [p for _, p in self._deletes])
        elif self._moves:
            self.registry.journal.clear_now(self.op)


def finish_deletes(registry: Registry, datastore: Datastore, op: str, paths: Sequence[str]) -> None:
    """Remove the files the registry no longer references (checked again: never one it does), then
    the intents of ``op``. The change is committed: a file that cannot be removed now (EACCES...)
    is logged and left journaled, for `butler verify` to report and `butler cleanup` to retry."""
    if not paths:
        return
    with registry.transaction() as conn:
        referenced = registry.journal.registered_paths(conn, paths)
    try:
        datastore.remove_files([p for p in paths if p not in referenced])
    except OSError as err:
        logging.getLogger("butler").warning("committed, but could not remove %d replaced or removed file(s) "
                                            "(%s); `butler cleanup` removes them later", len(paths), err)
        return
    registry.journal.clear_now(op)


def place_file(source: str, dest: str, mode: str) -> None:
    """Make ``dest`` a copy (or a link) of ``source``, never replacing an existing ``dest``
    (`ConflictError`); a copy that fails part-way is removed."""
    try:
        if mode == "hardlink":
            os.link(source, dest)
        elif mode == "symlink":
            os.symlink(source, dest)
        elif mode in ("move", "auto"):
            _link_or_copy(source, dest)  # a move's source is unlinked after the registry commit
        elif mode == "copy":
            _copy_new(source, dest)
        else:
            raise ValueError(f"transfer mode must be one of {PLACE_MODES}, not {mode!r}")
    except FileExistsError:
        raise ConflictError(f"cannot write {dest}: a file is already there (from {source})") from None


def _copy_new(source: str, dest: str) -> None:
    """Copy ``source`` to a new file ``dest``: the name is claimed first (``O_EXCL``, so never over
    an existing file, even one made meanwhile), then filled by `shutil.copyfile` (in-kernel copy)."""
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644))
    try:
        shutil.copyfile(source, dest)
    except BaseException:
        unlink_quietly(dest)
        raise


def _link_or_copy(source: str, dest: str) -> None:
    """A second name for ``source`` at ``dest``: a hard link where possible, else a copy."""
    try:
        os.link(source, dest)
    except FileExistsError:
        raise
    except OSError:  # another file system, or no hard links here
        _copy_new(source, dest)

