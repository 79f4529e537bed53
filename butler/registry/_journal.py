"""The file journal: what a crash could leave half-done on disk, recorded before it is done.

Every write path records its intent here, in a committed transaction, *before* the first byte
reaches the file system; the transaction that registers the result removes the intent (or turns
it into the next one), and the last step of the operation removes what is left. So after a crash
the journal lists every file that may exist without being registered, and clean-up deletes
exactly those, never a file it was not told about:

``stage``
    ``path`` (relative to the root) may hold a file or directory being written for dataset
    ``dataset_id``, or a ``.tmp-`` staging name next to it. Garbage unless that dataset, or any
    dataset, registers ``path``.
``delete``
    The registry stopped referencing ``path`` (a removed or replaced dataset) and the file is
    to be deleted. Deleted unless registered again.
``move``
    An ingest with ``transfer="move"``: ``path`` is the destination, ``source`` the absolute
    path of the file being moved. Until the registry commit the destination is garbage and the
    source is kept; after it the source is to be unlinked (``committed`` is set in the same
    transaction as the registration).

Rows are small and short-lived: a repository at rest has none. ``pending`` and the clean-up
in ``butler/_cleanup.py`` read them; ``verify`` reports them.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .._faults import crash_point
from ._database import Database
from ._schema import RegistrySchema

__all__ = ["DELETE", "MOVE", "STAGE", "FileJournal", "JournalEntry", "new_operation"]

STAGE = "stage"
DELETE = "delete"
MOVE = "move"

_CHUNK = 5000
_COLUMNS = ("op", "run", "action", "path", "dataset_id", "source", "committed", "created_ns", "host", "pid")
_SINCE_MINOR = 2  # the schema minor version that added the table (see `Registry.schema_minor`)


def new_operation() -> str:
    """A token naming one write operation's journal rows (cleared together)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One recorded intent (see the module docstring for what each action means)."""

    id: int
    op: str
    run: str
    action: str
    path: str
    dataset_id: uuid.UUID | None
    source: str | None
    committed: bool
    created_ns: int
    host: str
    pid: int


class FileJournal:
    """Records and clears intents; each call is one bulk statement."""

    def __init__(self, db: Database, schema: RegistrySchema, attributes: dict[str, str], *,
                 upgrade: Callable[[], None]) -> None:
        self._db = db
        self._table = schema.file_journal
        self._schema = schema
        self._ready = int(attributes.get("schema_minor", "1")) >= _SINCE_MINOR
        self._upgrade = upgrade

    # -- table (created by the first write into a repository made before the journal existed) ---
    def ensure_table(self) -> None:
        """Make sure the journal table exists (`Registry.upgrade_for_writes` creates it)."""
        if not self._ready:
            self._upgrade()

    def mark_ready(self) -> None:
        """The table exists (the registry created it, or saw another process's upgrade)."""
        self._ready = True

    # -- record -------------------------------------------------------------------------------
    def record(self, op: str, run: str, action: str,
               items: Sequence[tuple[str, uuid.UUID | None, str | None]]) -> None:
        """Commit one row per ``(path, dataset_id, source)`` of operation ``op`` (a token made by
        `new_operation`) in a transaction of its own.

        The commit is what makes the intent durable: callers write files only after it returns.
        """
        if not items:
            return
        self.ensure_table()
        crash_point("journal: before commit")
        with self._db.transaction(write=True) as conn:
            self.record_in(conn, op, run, action, items)
        crash_point("journal: committed")

    def record_in(self, conn: sa.Connection, op: str, run: str, action: str,
                  items: Iterable[tuple[str, uuid.UUID | None, str | None]]) -> None:
        """Rows inserted in the caller's transaction (``delete`` intents of the registry change
        that makes those files unreferenced: both commit or neither). Call `ensure_table` before
        that transaction begins (creating a table inside it would wait for the transaction itself
        on SQLite, and commit it implicitly on MySQL)."""
        if not self._ready:
            self._refresh_ready(conn)
        if not self._ready:
            raise RuntimeError("FileJournal.ensure_table() must be called before the transaction that records")
        now, host, pid = time.time_ns(), socket.gethostname()[:128], os.getpid()
        native = self._db.dialect == "postgresql"  # as DatasetIdType binds ids: UUIDs there, hex elsewhere
        rows = [(op, run, action, path, None if dataset_id is None else (dataset_id if native else dataset_id.hex),
                 source, False, now, host, pid) for path, dataset_id, source in items]
        # The driver's executemany with plain tuples: an ingest journals 100k paths at once.
        self._db.bulk_insert(conn, self._table, _COLUMNS, rows)

    # -- clear --------------------------------------------------------------------------------
    def clear(self, conn: sa.Connection, op: str, action: str | None = None) -> None:
        """Delete the rows of operation ``op`` (of one ``action`` if given) in the caller's transaction."""
        if not self._ready:
            return
        t = self._table
        if action is None:
            self._db.execute_compiled(conn, "journal.clear", lambda: t.delete().where(t.c.op == sa.bindparam("op")),
                                      {"op": op})
        else:
            self._db.execute_compiled(
                conn, "journal.clear_action",
                lambda: t.delete().where(t.c.op == sa.bindparam("op")).where(t.c.action == sa.bindparam("action")),
                {"op": op, "action": action})

    def clear_now(self, op: str) -> None:
        """Delete the rows of ``op`` in a transaction of their own (the last step of an operation)."""
        crash_point("journal clear: before commit")
        with self._db.transaction(write=True) as conn:
            self.clear(conn, op)
        crash_point("journal clear: committed")

    def clear_ids(self, conn: sa.Connection, ids: Sequence[int]) -> None:
        """Delete rows by id (clean-up, row by row as it finishes each)."""
        t = self._table
        ids = list(ids)
        for start in range(0, len(ids), _CHUNK):
            conn.execute(t.delete().where(t.c.journal_id.in_(ids[start:start + _CHUNK])))

    def clear_datasets(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> None:
        """Delete the ``stage`` rows of datasets being registered, in the registering transaction."""
        if not self._ready or not dataset_ids:
            return
        t = self._table
        ids = list(dataset_ids)
        for start in range(0, len(ids), _CHUNK):
            conn.execute(t.delete().where(t.c.dataset_id.in_(ids[start:start + _CHUNK])))

    def mark_committed(self, conn: sa.Connection, op: str) -> None:
        """Flag the ``move`` rows of ``op`` as registered, in the registering transaction."""
        t = self._table
        conn.execute(t.update().where(t.c.op == op).where(t.c.action == MOVE).values(committed=True))

    # -- read ---------------------------------------------------------------------------------
    def pending(self, runs: Sequence[str] | None = None, *, conn: sa.Connection | None = None) -> list[JournalEntry]:
        """Rows left (of these runs, or all), oldest first."""
        if not self._ready:
            self._refresh_ready(conn)
            if not self._ready:
                return []
        t = self._table
        stmt = sa.select(t.c.journal_id, t.c.op, t.c.run, t.c.action, t.c.path, t.c.dataset_id, t.c.source,
                         t.c.committed, t.c.created_ns, t.c.host, t.c.pid).order_by(t.c.journal_id)
        if runs is not None:
            stmt = stmt.where(t.c.run.in_(list(runs)))
        if conn is not None:
            rows = conn.execute(stmt).all()
        else:
            with self._db.transaction() as c:
                rows = c.execute(stmt).all()
        return [JournalEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10]) for r in rows]

    def _refresh_ready(self, conn: sa.Connection | None) -> None:
        """Another process may have created the table since this registry was opened."""
        attrs = self._schema.attributes
        stmt = sa.select(attrs.c.value).where(attrs.c.name == "schema_minor")
        if conn is not None:
            value = conn.execute(stmt).scalar()
        else:
            with self._db.transaction() as c:
                value = c.execute(stmt).scalar()
        if value is not None and int(value) >= _SINCE_MINOR:
            self._ready = True

    def registered_paths(self, conn: sa.Connection, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` some file record references (the path index makes this cheap)."""
        f = self._schema.file_record
        paths = list(set(paths))
        found: set[str] = set()
        for start in range(0, len(paths), _CHUNK):
            found.update(conn.execute(sa.select(f.c.path).where(f.c.path.in_(paths[start:start + _CHUNK]))).scalars())
        return found

    def registered_datasets(self, conn: sa.Connection, dataset_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``dataset_ids`` are registered now."""
        d = self._schema.dataset
        ids = list(set(dataset_ids))
        found: set[uuid.UUID] = set()
        for start in range(0, len(ids), _CHUNK):
            found.update(conn.execute(sa.select(d.c.dataset_id).where(d.c.dataset_id.in_(ids[start:start + _CHUNK])))
                         .scalars())
        return found
