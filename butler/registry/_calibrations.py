"""CALIBRATION collections: datasets associated with half-open validity ranges [begin, end).

Storage: one generic table, ``dataset_calibs`` (collection, dataset type, dataset id, begin_ns,
end_ns; times are integer nanoseconds since 1970 UTC, see ``butler._time``). The data ID of a
certified dataset is not repeated there: it is the one of the dataset's row in its type's tags
table for its RUN (``tags.collection_id = dataset.run_id``), so every lookup joins
``dataset_calibs -> dataset -> tags`` on indexed keys. One generic table rather than one per
dimension group keeps the schema static (no DDL at certify time, which MySQL would commit
implicitly) at the price of that one extra join.

Unbounded ends are stored as the extreme 64-bit integers (`MIN_NS`, `MAX_NS`).

Every operation is set-based: certifying N refs is one SELECT of the existing ranges of the
type in the collection (constrained by the data IDs' last dimension), an overlap check in
Python, and one multi-row INSERT; a lookup of M (data ID, time) pairs is one SELECT of the
candidate ranges (data IDs' last dimension IN-list, ``begin <= max(t)`` and ``end > min(t)``),
then a pick per pair in Python (first collection of the search path wins).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._dataset_ref import DatasetRef
from ..errors import ConflictError
from ._collections import CollectionManager, CollectionRecord
from ._database import Database
from ._dataset_types import DatasetTypeRecord
from ._schema import RegistrySchema

if TYPE_CHECKING:
    from ..dimensions import DataCoordinate
    from ._datasets import FoundDataset
    from ._registry import Registry

__all__ = ["MAX_NS", "MIN_NS", "CalibRow", "CalibrationManager", "format_ns", "format_range"]

MIN_NS = -(2**63)
MAX_NS = 2**63 - 1


def format_ns(ns: int) -> str:
    if ns <= MIN_NS:
        return "-inf"
    if ns >= MAX_NS:
        return "+inf"
    from .._time import from_nsec

    try:
        text = from_nsec(ns).isoformat()
    except ValueError:
        return str(ns)
    return text.replace("+00:00", "Z")


def format_range(begin: int, end: int) -> str:
    return f"[{format_ns(begin)}, {format_ns(end)})"


@dataclass(frozen=True, slots=True)
class CalibRow:
    """One certified range: which dataset, where, when, and its data ID values (required dims)."""

    calib_id: int
    dataset_id: uuid.UUID
    collection_id: int
    run_id: int
    begin: int
    end: int
    key: tuple[Any, ...]


class CalibrationManager:
    """Reads and writes ``dataset_calibs`` (one per registry; see `calibrations_of`)."""

    def __init__(self, db: Database, schema: RegistrySchema, collections: CollectionManager,
                 files_of: Callable[[sa.Connection, Sequence[uuid.UUID]], Mapping[uuid.UUID, Sequence[Any]]]):
        self._db = db
        self._schema = schema
        self._collections = collections
        self._files_of = files_of  # DatasetManager.files_of
        self._exists: bool | None = None

    @property
    def table(self) -> sa.Table:
        return self._schema.calibs

    # -- the table of repositories created before it existed -------------------------------
    def ensure_table(self) -> None:
        """Create ``dataset_calibs`` if this repository predates it (DDL in its own transaction)."""
        if self._exists:
            return
        with self._db.transaction(write=True) as conn:
            self.table.create(conn, checkfirst=True)
        self._exists = True

    def has_table(self) -> bool:
        if self._exists is None:
            with self._db.transaction() as conn:
                self._exists = sa.inspect(conn).has_table(self.table.name, schema=self._db.namespace)
        return self._exists

    # -- reads -------------------------------------------------------------------------------
    def rows(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection_ids: Sequence[int], *,
             keys: Iterable[tuple[Any, ...]] | None = None, begin: int | None = None, end: int | None = None,
             for_update: bool = False) -> list[CalibRow]:
        """Certified ranges of one type in some collections, optionally only those of the data ID
        ``keys`` (tuples of required values) and overlapping [begin, end)."""
        if not collection_ids or not self.has_table():
            return []
        c = self.table
        d = self._schema.dataset
        t = type_rec.tags
        dims = type_rec.group.required
        stmt = (
            sa.select(c.c.calib_id, c.c.dataset_id, c.c.collection_id, d.c.run_id, c.c.begin_ns, c.c.end_ns,
                      *[t.c[x] for x in dims])
            .select_from(c.join(d, d.c.dataset_id == c.c.dataset_id)
                         .join(t, sa.and_(t.c.dataset_id == c.c.dataset_id, t.c.collection_id == d.c.run_id)))
            .where(c.c.dataset_type_id == type_rec.id, c.c.collection_id.in_(list(collection_ids)))
        )
        wanted: set[tuple[Any, ...]] | None = None
        if keys is not None:
            wanted = set(keys)
            if not wanted:
                return []
            if dims:
                values = sorted({k[-1] for k in wanted})
                if len(values) <= 5000:
                    stmt = stmt.where(t.c[dims[-1]].in_(values))
        if begin is not None:
            stmt = stmt.where(c.c.end_ns > begin)
        if end is not None:
            stmt = stmt.where(c.c.begin_ns < end)
        out = []
        for row in conn.execute(stmt):
            key = tuple(row[6:])
            if wanted is not None and key not in wanted:
                continue
            out.append(CalibRow(row[0], row[1], row[2], row[3], row[4], row[5], key))
        return out

    def lock_collection(self, conn: sa.Connection, collection: CollectionRecord) -> None:
        """Serialise certify/decertify of one collection across processes (row lock on servers)."""
        if self._db.dialect in ("postgresql", "mysql"):
            col = self._schema.collection
            conn.execute(sa.select(col.c.collection_id).where(col.c.collection_id == collection.id)
                         .with_for_update())

    # -- writes ------------------------------------------------------------------------------
    def certify(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection: CollectionRecord,
                items: Sequence[tuple[tuple[Any, ...], uuid.UUID, Any]], begin: int, end: int, *, split: bool) -> int:
        """Associate ``items`` ((data ID key, dataset id, data ID for messages)) with [begin, end).

        An overlap with a range already certified for the same data ID is a ``ConflictError``
        naming it, unless ``split``: then the existing ranges lose the overlapping part (the new
        certification wins). Re-certifying the same dataset with the same range is a no-op.
        Returns the number of ranges inserted.
        """
        self.lock_collection(conn, collection)
        name = type_rec.dataset_type.name
        seen: dict[tuple[Any, ...], Any] = {}
        for key, _, data_id in items:
            if key in seen:
                raise ConflictError(
                    f"cannot certify two {name!r} datasets with the same data ID {data_id} and overlapping "
                    f"validity {format_range(begin, end)} into {collection.name!r} in one call"
                )
            seen[key] = data_id
        existing: dict[tuple[Any, ...], list[CalibRow]] = {}
        for row in self.rows(conn, type_rec, [collection.id], keys=seen.keys(), begin=begin, end=end):
            existing.setdefault(row.key, []).append(row)
        to_trim: list[CalibRow] = []
        new_rows = []
        for key, dataset_id, data_id in items:
            overlapping = existing.get(key, ())
            if any(r.dataset_id == dataset_id and r.begin == begin and r.end == end for r in overlapping):
                continue  # already certified exactly so
            if overlapping and not split:
                r = overlapping[0]
                run = self._collections.by_id(r.run_id).name
                raise ConflictError(
                    f"cannot certify {name!r} {data_id} for {format_range(begin, end)} in {collection.name!r}: "
                    f"it overlaps the range {format_range(r.begin, r.end)} already certified for dataset "
                    f"{r.dataset_id} (run {run!r}); decertify that range first, or pass split=True to cut "
                    "the existing range where the new one applies"
                )
            to_trim.extend(overlapping)
            new_rows.append({"collection_id": collection.id, "dataset_type_id": type_rec.id,
                             "dataset_id": dataset_id, "begin_ns": begin, "end_ns": end})
        if to_trim:
            self._cut(conn, type_rec, collection, to_trim, begin, end)
        if new_rows:
            conn.execute(self.table.insert(), new_rows)
        return len(new_rows)

    def decertify(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection: CollectionRecord,
                  begin: int, end: int, *, keys: Iterable[tuple[Any, ...]] | None = None) -> int:
        """Remove [begin, end) from the ranges of the type (of the data IDs ``keys``, else all):
        ranges inside it are deleted, ranges across its ends are trimmed or split in two.
        Returns the number of ranges affected."""
        self.lock_collection(conn, collection)
        rows = self.rows(conn, type_rec, [collection.id], keys=keys, begin=begin, end=end)
        self._cut(conn, type_rec, collection, rows, begin, end)
        return len(rows)

    def _cut(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection: CollectionRecord,
             rows: Sequence[CalibRow], begin: int, end: int) -> None:
        if not rows:
            return
        c = self.table
        ids = [r.calib_id for r in rows]
        for start in range(0, len(ids), 5000):
            conn.execute(c.delete().where(c.c.calib_id.in_(ids[start:start + 5000])))
        remnants = []
        for r in rows:
            base = {"collection_id": collection.id, "dataset_type_id": type_rec.id, "dataset_id": r.dataset_id}
            if r.begin < begin:
                remnants.append({**base, "begin_ns": r.begin, "end_ns": begin})
            if end < r.end:
                remnants.append({**base, "begin_ns": end, "end_ns": r.end})
        if remnants:
            conn.execute(c.insert(), remnants)

    # -- lookup ------------------------------------------------------------------------------
    def found_dataset(self, conn: sa.Connection, type_rec: DatasetTypeRecord, data_id: DataCoordinate,
                      row: CalibRow) -> FoundDataset:
        """The dataset of a certified range, with its file records (one indexed SELECT)."""
        from ._datasets import FoundDataset

        run = self._collections.by_id(row.run_id).name
        ref = DatasetRef._trusted(type_rec.dataset_type, data_id, run, row.dataset_id)
        files = self._files_of(conn, [row.dataset_id]).get(row.dataset_id, [])
        return FoundDataset(ref, tuple(files))

    def find_refs(self, conn: sa.Connection, type_rec: DatasetTypeRecord, items: Sequence[tuple[DataCoordinate, int]],
                  collections: Sequence[CollectionRecord]) -> dict[tuple[DataCoordinate, int], DatasetRef]:
        """For each (data ID, time ns): the ref valid then (first collection wins), as `find_many`
        (one query); pairs with no valid calib are absent."""
        coords = {c.values: c for c, _ in items}
        found = self.find_many(conn, type_rec, [(c.values, t) for c, t in items], collections)
        dt = type_rec.dataset_type
        run_names: dict[int, str] = {}
        out: dict[tuple[DataCoordinate, int], DatasetRef] = {}
        for (key, t), row in found.items():
            run = run_names.get(row.run_id)
            if run is None:
                run = run_names[row.run_id] = self._collections.by_id(row.run_id).name
            out[(coords[key], t)] = DatasetRef._trusted(dt, coords[key], run, row.dataset_id)
        return out


    def find_many(self, conn: sa.Connection, type_rec: DatasetTypeRecord, pairs: Sequence[tuple[tuple[Any, ...], int]],
                  collections: Sequence[CollectionRecord]) -> dict[tuple[tuple[Any, ...], int], CalibRow]:
        """For each (data ID key, time ns): the range valid then, from the first collection that has
        one. One query; pairs with no valid calib are absent from the result."""
        if not pairs or not collections:
            return {}
        times = [t for _, t in pairs]
        rows = self.rows(conn, type_rec, [c.id for c in collections], keys={k for k, _ in pairs},
                         begin=min(times), end=max(times) + 1)
        rank = {c.id: i for i, c in enumerate(collections)}
        by_key: dict[tuple[Any, ...], list[tuple[int, CalibRow]]] = {}
        for r in rows:
            by_key.setdefault(r.key, []).append((rank[r.collection_id], r))
        for candidates in by_key.values():
            candidates.sort(key=lambda x: (x[0], x[1].begin))
        out: dict[tuple[tuple[Any, ...], int], CalibRow] = {}
        for key, t in pairs:
            for _, r in by_key.get(key, ()):
                if r.begin <= t < r.end:
                    out[(key, t)] = r
                    break
        return out


def calibrations_of(registry: Registry) -> CalibrationManager:
    """The calibration manager of a registry (``registry.calibrations``)."""
    return registry.calibrations
