"""Dataset rows: insertion in bulk, lookup by data ID, and queries.

A dataset is one row in ``dataset`` (id, type, run), one row per collection it belongs to in its
type's tags table, and one row per stored file in ``file_record``. Inserting N datasets is
three multi-row INSERTs; a lookup by data ID is one indexed SELECT with a cached statement.
"""

from __future__ import annotations

import operator
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from .._dataset_ref import DatasetRef
from .._gc import gc_paused
from ..dimensions import DataCoordinate
from ..errors import ConflictError, DataIdError
from ._collections import CollectionManager, CollectionRecord, CollectionType
from ._database import Database, dbapi_connection
from ._dataset_types import DatasetTypeManager, DatasetTypeRecord
from ._dimension_records import DimensionRecordManager
from ._schema import RegistrySchema, fast_uuid

__all__ = ["DatasetManager", "FileRecord", "FoundDataset"]

_CHUNK = 50_000
_first = operator.itemgetter(0)
_DATASET_COLUMNS = ("dataset_id", "dataset_type_id", "run_id", "ingest_time")
_FILE_COLUMNS = ("dataset_id", "component", "path", "formatter", "storage_class", "checksum", "file_size")


def _uuid_decoder(sample: Any) -> Any:
    """How to turn raw id values of this backend into UUIDs: hex text is decoded, UUIDs pass."""
    if sample is None or isinstance(sample, uuid.UUID):
        return _identity
    return fast_uuid


def _identity(value: Any) -> Any:
    return value


class FileRecord(NamedTuple):
    """Where and how one file of a dataset is stored (path relative to the repository root).

    A named tuple (immutable, compares by value): made by the ten thousand in ingest and
    queries, where it costs a third of a frozen dataclass.
    """

    component: str
    path: str
    formatter: str
    storage_class: str
    checksum: str | None
    file_size: int | None

    def to_row(self, dataset_id: uuid.UUID) -> dict[str, Any]:
        return {
            "dataset_id": dataset_id,
            "component": self.component,
            "path": self.path,
            "formatter": self.formatter,
            "storage_class": self.storage_class,
            "checksum": self.checksum,
            "file_size": self.file_size,
        }


class FoundDataset(NamedTuple):
    """A dataset found by a lookup, with its file records."""

    ref: DatasetRef
    files: tuple[FileRecord, ...]


class DatasetManager:
    def __init__(self, db: Database, schema: RegistrySchema, types: DatasetTypeManager, collections: CollectionManager,
                 records: DimensionRecordManager):
        self._db = db
        self._schema = schema
        self._types = types
        self._collections = collections
        self._records = records
        self._find_cache: dict[tuple[int, int], sa.Select[*tuple[Any, ...]]] = {}
        self._insert_sql_cache: dict[tuple[str, tuple[str, ...]], str] = {}
        self._files_stmt: sa.Select[*tuple[Any, ...]] | None = None
        # Rows inserted through the driver raise the driver's IntegrityError, not SQLAlchemy's.
        dbapi = db.engine.dialect.loaded_dbapi
        self._integrity_errors: tuple[type[Exception], ...] = (
            sa.exc.IntegrityError, *((dbapi.IntegrityError,) if hasattr(dbapi, "IntegrityError") else ()))

    # -- insert -----------------------------------------------------------------------------
    def insert(
        self,
        conn: sa.Connection,
        type_rec: DatasetTypeRecord,
        run: CollectionRecord,
        refs: Sequence[DatasetRef],
        files: Mapping[uuid.UUID, Sequence[FileRecord]] | None = None,
    ) -> None:
        """Insert refs of one type into one run, with their file records, in ``conn``'s transaction.

        Three INSERTs (dataset, tags, file records) through the driver's ``executemany`` with
        prepared tuples: SQLAlchemy's per-row parameter processing costs more than the inserts
        themselves for thousands of rows. Ids are bound in database form (hex on SQLite and MySQL,
        ``uuid.UUID`` on PostgreSQL), as ``DatasetIdType`` would bind them.
        """
        if not refs:
            return
        schema = self._schema
        now = time.time_ns()
        tags = type_rec.tags
        type_id = type_rec.id
        run_id = run.id
        native = self._native_ids
        ids = [r.id for r in refs] if native else [r.id.hex for r in refs]
        dataset_rows = [(i, type_id, run_id, now) for i in ids]
        tag_rows = [(i, type_id, run_id, *r.data_id.values) for i, r in zip(ids, refs)]
        file_rows = []
        if files:
            db_id = {r.id: i for r, i in zip(refs, ids)}
            for rid, fs in files.items():
                key = db_id.get(rid)
                if key is None:  # files of a dataset inserted earlier (or ids given as strings)
                    key = rid if native else (rid.hex if isinstance(rid, uuid.UUID) else uuid.UUID(str(rid)).hex)
                for f in fs:
                    file_rows.append((key, *f) if type(f) is FileRecord else
                                     (key, f.component, f.path, f.formatter, f.storage_class, f.checksum, f.file_size))
        # In id order: the id indexes (random UUIDs) then take their new keys leaf page after leaf
        # page instead of all over the tree, which matters once they outgrow the page cache.
        dataset_rows.sort()
        tag_rows.sort(key=_first)
        file_rows.sort(key=_first)
        try:
            cursor = dbapi_connection(conn).cursor()
            try:
                for start in range(0, len(refs), _CHUNK):
                    cursor.executemany(self._insert_sql(schema.dataset, _DATASET_COLUMNS),
                                       dataset_rows[start:start + _CHUNK])
                tag_sql = self._insert_sql(tags, ("dataset_id", "dataset_type_id", "collection_id",
                                                  *type_rec.group.required))
                for start in range(0, len(refs), _CHUNK):
                    cursor.executemany(tag_sql, tag_rows[start:start + _CHUNK])
                for start in range(0, len(file_rows), _CHUNK):
                    cursor.executemany(self._insert_sql(schema.file_record, _FILE_COLUMNS),
                                       file_rows[start:start + _CHUNK])
            finally:
                cursor.close()
        except self._integrity_errors as err:
            raise self._explain(type_rec, run, refs, err) from None

    def insert_file_records(self, conn: sa.Connection, records: Sequence[tuple[uuid.UUID, FileRecord]]) -> None:
        """Insert more file records of existing datasets (components written on their own)."""
        if not records:
            return
        try:
            conn.execute(self._schema.file_record.insert(), [f.to_row(i) for i, f in records])
        except sa.exc.IntegrityError as err:
            raise ConflictError(f"component file records conflict (written twice, or concurrently?): {err.orig}"
                                ) from None

    def delete_file_records(self, conn: sa.Connection, dataset_id: uuid.UUID, component: str) -> None:
        """Delete the file record of one component of a dataset (replaced by a new one)."""
        f = self._schema.file_record
        conn.execute(f.delete().where(f.c.dataset_id == dataset_id).where(f.c.component == component))

    def tag(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection: CollectionRecord,
            refs: Sequence[DatasetRef]) -> None:
        """Add refs of one type to a TAGGED collection (one INSERT)."""
        if not refs:
            return
        rows = []
        for ref in refs:
            row: dict[str, Any] = dict(zip(type_rec.group.required, ref.data_id.values))
            row.update(dataset_type_id=type_rec.id, dataset_id=ref.id, collection_id=collection.id)
            rows.append(row)
        try:
            conn.execute(type_rec.tags.insert(), rows)
        except sa.exc.IntegrityError as err:
            raise ConflictError(f"cannot tag {type_rec.dataset_type.name!r} refs into {collection.name!r}: {err.orig}"
                                ) from None

    # -- delete -----------------------------------------------------------------------------
    def delete(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> tuple[int, list[str]]:
        """Delete datasets (cascading to tags and file records) in chunks; return how many and the
        paths of their files, for the caller to remove once the transaction commits."""
        paths = [f.path for fs in self.files_of(conn, dataset_ids).values() for f in fs]
        table = self._schema.dataset
        n = 0
        for start in range(0, len(dataset_ids), 5000):  # an IN list within every backend's parameter limit
            n += conn.execute(table.delete().where(table.c.dataset_id.in_(dataset_ids[start:start + 5000]))).rowcount
        return n, paths

    def delete_runs(self, conn: sa.Connection, run_ids: Sequence[int]) -> None:
        """Delete every dataset of these runs (their collections are removed by the caller)."""
        d = self._schema.dataset
        conn.execute(d.delete().where(d.c.run_id.in_(list(run_ids))))

    @property
    def _native_ids(self) -> bool:
        """Whether the driver takes ``uuid.UUID`` ids (PostgreSQL) rather than hex strings."""
        return self._db.dialect == "postgresql"

    def _insert_sql(self, table: sa.Table, columns: Sequence[str]) -> str:
        """A plain ``INSERT INTO t (cols) VALUES (?, ...)`` in the driver's parameter style (cached)."""
        key = (table.name, tuple(columns))
        sql = self._insert_sql_cache.get(key)
        if sql is None:
            dialect = self._db.engine.dialect
            prep = dialect.identifier_preparer
            mark = "?" if dialect.paramstyle == "qmark" else "%s"
            sql = (f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)}) "
                   f"VALUES ({', '.join([mark] * len(columns))})")
            self._insert_sql_cache[key] = sql
        return sql

    def _explain(self, type_rec: DatasetTypeRecord, run: CollectionRecord, refs: Sequence[DatasetRef],
                 err: Exception) -> Exception:
        """Say which ref broke a constraint, looking at committed state from a fresh connection
        (the failed transaction may be unusable, e.g. aborted on PostgreSQL)."""
        with self._db.transaction() as conn:
            existing = self.find_many(conn, type_rec, [r.data_id for r in refs], [run])
            if existing:
                data_id = next(iter(existing))
                return ConflictError(
                    f"dataset {type_rec.dataset_type.name!r} with data ID {data_id} already exists in run "
                    f"{run.name!r}; pass replace=True to replace it, or write to another run"
                )
            seen = set()
            for ref in refs:
                if ref.data_id in seen:
                    return ConflictError(f"dataset {type_rec.dataset_type.name!r} {ref.data_id} is given twice")
                seen.add(ref.data_id)
            rows = [r.data_id.to_dict() for r in refs]
            universe = self._schema.universe
            for dim in type_rec.group.required:
                message = self._records.missing_keys(universe[dim], rows, conn)
                if message:
                    return DataIdError(f"cannot store {type_rec.dataset_type.name!r}: {message}")
        return ConflictError(f"registry rejected datasets of {type_rec.dataset_type.name!r}: {getattr(err, 'orig', err)}")

    # -- lookup -----------------------------------------------------------------------------
    def _find_statement(self, type_rec: DatasetTypeRecord) -> sa.Select[*tuple[Any, ...]]:
        key = (type_rec.id, id(type_rec.tags))
        stmt = self._find_cache.get(key)
        if stmt is None:
            t = type_rec.tags
            d = self._schema.dataset
            f = self._schema.file_record
            conditions = [
                t.c.dataset_type_id == sa.bindparam("dt"),
                t.c.collection_id.in_(sa.bindparam("colls", expanding=True)),
            ]
            conditions += [t.c[dim] == sa.bindparam(f"v_{dim}") for dim in type_rec.group.required]
            stmt = (
                sa.select(t.c.dataset_id, t.c.collection_id, d.c.run_id, f.c.component, f.c.path, f.c.formatter,
                          f.c.storage_class, f.c.checksum, f.c.file_size)
                .select_from(t.join(d, d.c.dataset_id == t.c.dataset_id)
                             .outerjoin(f, f.c.dataset_id == t.c.dataset_id))
                .where(*conditions)
            )
            self._find_cache[key] = stmt
        return stmt

    def find(self, conn: sa.Connection, type_rec: DatasetTypeRecord, data_id: DataCoordinate,
             collections: Sequence[CollectionRecord]) -> FoundDataset | None:
        """The dataset of this type and data ID in the first collection of the search path that has it."""
        if not collections:
            return None
        params: dict[str, Any] = {"dt": type_rec.id, "colls": [c.id for c in collections]}
        for dim, value in zip(type_rec.group.required, data_id.values):
            params[f"v_{dim}"] = value
        rows = conn.execute(self._find_statement(type_rec), params).all()
        if not rows:
            return None
        if len(collections) > 1:
            rank = {c.id: i for i, c in enumerate(collections)}
            best = min(rank[r[1]] for r in rows)
            rows = [r for r in rows if rank[r[1]] == best]
        first = rows[0]
        run_name = self._collections.by_id(first[2]).name
        ref = DatasetRef._trusted(type_rec.dataset_type, data_id, run_name, first[0])
        files = tuple(FileRecord(r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows if r[4] is not None)
        return FoundDataset(ref, files)

    @gc_paused()
    def find_many(self, conn: sa.Connection, type_rec: DatasetTypeRecord, data_ids: Sequence[DataCoordinate],
                  collections: Sequence[CollectionRecord]) -> dict[DataCoordinate, DatasetRef]:
        """Set-based lookup of many data IDs of one type (first collection wins)."""
        if not data_ids or not collections:
            return {}
        t = type_rec.tags
        dims = type_rec.group.required
        rank = {c.id: i for i, c in enumerate(collections)}
        wanted = {d.values: d for d in data_ids}
        # The id column is read raw (hex text, or a UUID on PostgreSQL) and decoded below in one
        # tight loop: the type's per-value result processor costs more than the query at 100k rows.
        raw_id = sa.type_coerce(t.c.dataset_id, sa.types.NullType())
        if all(c.type == CollectionType.RUN for c in collections):  # the collection is the run: no join
            base = sa.select(raw_id, t.c.collection_id, t.c.collection_id, *[t.c[x] for x in dims])
        else:
            d = self._schema.dataset
            base = (
                sa.select(raw_id, t.c.collection_id, d.c.run_id, *[t.c[x] for x in dims])
                .select_from(t.join(d, d.c.dataset_id == t.c.dataset_id))
            )
        base = base.where(t.c.dataset_type_id == type_rec.id, t.c.collection_id.in_(list(rank)))
        # Constrain on the most selective single column when it helps; filter exactly in Python.
        if dims:
            values = sorted({v[-1] for v in wanted})
            if len(values) <= 5000:
                base = base.where(t.c[dims[-1]].in_(values))
        return self._match_found(conn, base, type_rec, wanted, rank)

    def _match_found(self, conn: sa.Connection, stmt: sa.Select[*tuple[Any, ...]], type_rec: DatasetTypeRecord,
                     wanted: dict[tuple[Any, ...], DataCoordinate],
                     rank: dict[int, int]) -> dict[DataCoordinate, DatasetRef]:
        result = conn.execute(stmt)
        try:  # the driver's plain tuples: every column is a plain int/str, and Row objects cost 0.2 s per 100k
            rows = result.cursor.fetchall()
        finally:
            result.close()
        as_uuid = _uuid_decoder(rows[0][0] if rows else None)
        run_names: dict[int, str] = {}
        dataset_type = type_rec.dataset_type
        trusted = DatasetRef._trusted
        get = wanted.get
        found: dict[DataCoordinate, DatasetRef] = {}
        if len(rank) == 1:  # one collection: every match is final
            for row in rows:
                data_id = get(row[3:])
                if data_id is not None:
                    run = run_names.get(row[2])
                    if run is None:
                        run = run_names[row[2]] = self._collections.by_id(row[2]).name
                    found[data_id] = trusted(dataset_type, data_id, run, as_uuid(row[0]))
            return found
        out: dict[DataCoordinate, tuple[int, Any, int]] = {}
        for row in rows:
            data_id = get(row[3:])
            if data_id is None:
                continue
            r = rank[row[1]]
            prev = out.get(data_id)
            if prev is None or r < prev[0]:
                out[data_id] = (r, row[0], row[2])
        found = {}
        for data_id, (_, raw, run_id) in out.items():
            run = run_names.get(run_id)
            if run is None:
                run = run_names[run_id] = self._collections.by_id(run_id).name
            found[data_id] = trusted(dataset_type, data_id, run, as_uuid(raw))
        return found

    def paths_in_runs(self, conn: sa.Connection, run_ids: Sequence[int]) -> list[str]:
        """The stored paths of every file of the datasets of these runs (removal, orphan checks)."""
        f, d = self._schema.file_record, self._schema.dataset
        return list(conn.execute(sa.select(f.c.path).select_from(f.join(d, d.c.dataset_id == f.c.dataset_id))
                                 .where(d.c.run_id.in_(list(run_ids)))).scalars())

    def run_ids_of(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> set[int]:
        """The ids of the runs that hold these datasets (the runs a removal must own)."""
        d = self._schema.dataset
        ids = list(dataset_ids)
        out: set[int] = set()
        for start in range(0, len(ids), 5000):
            out.update(conn.execute(sa.select(d.c.run_id).distinct()
                                    .where(d.c.dataset_id.in_(ids[start:start + 5000]))).scalars())
        return out

    def existing_ids(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these datasets are in the registry (one SELECT per 5000 ids)."""
        d = self._schema.dataset
        ids = list(set(dataset_ids))
        present: set[uuid.UUID] = set()
        for start in range(0, len(ids), 5000):
            present.update(conn.execute(sa.select(d.c.dataset_id).where(d.c.dataset_id.in_(ids[start:start + 5000])))
                           .scalars())
        return present

    def count_files(self, collection_ids: Sequence[int] | None = None, conn: sa.Connection | None = None) -> int:
        """How many file records there are (of the datasets of these runs, when given)."""
        if conn is None:
            with self._db.transaction() as c:
                return self.count_files(collection_ids, c)
        f, d = self._schema.file_record, self._schema.dataset
        stmt = sa.select(sa.func.count()).select_from(f)
        if collection_ids is not None:
            stmt = (sa.select(sa.func.count()).select_from(f.join(d, d.c.dataset_id == f.c.dataset_id))
                    .where(d.c.run_id.in_(list(collection_ids))))
        return int(conn.execute(stmt).scalar_one())

    def count_by_run(self, run_ids: Sequence[int], conn: sa.Connection | None = None) -> dict[int, int]:
        """The number of datasets of each of these runs (runs without any are absent): one GROUP BY."""
        if conn is None:
            with self._db.transaction() as c:
                return self.count_by_run(run_ids, c)
        d = self._schema.dataset
        stmt = sa.select(d.c.run_id, sa.func.count()).where(d.c.run_id.in_(list(run_ids))).group_by(d.c.run_id)
        counts: Sequence[tuple[int, int]] = conn.execute(stmt).all()
        return {run_id: int(n) for run_id, n in counts}

    def ingest_times(self, dataset_ids: Sequence[uuid.UUID], conn: sa.Connection | None = None) -> dict[uuid.UUID, int]:
        """When each of these datasets was registered here (ns since 1970; unknown ones are absent)."""
        if conn is None:
            with self._db.transaction() as c:
                return self.ingest_times(dataset_ids, c)
        d = self._schema.dataset
        out: dict[uuid.UUID, int] = {}
        ids = list(dataset_ids)
        for i in range(0, len(ids), _CHUNK):
            stmt = sa.select(d.c.dataset_id, d.c.ingest_time).where(d.c.dataset_id.in_(ids[i:i + _CHUNK]))
            out.update((row[0], int(row[1] or 0)) for row in conn.execute(stmt))
        return out

    def file_checks(self, collection_ids: Sequence[int] | None = None, conn: sa.Connection | None = None
                    ) -> list[tuple[str, str | None, int | None]]:
        """(path, checksum, size) of every file record, or of the datasets in these collections of any
        type (RUN, TAGGED...: found through the tags tables): what `verify` checks."""
        if conn is None:
            with self._db.transaction() as c:
                return self.file_checks(collection_ids, c)
        f = self._schema.file_record
        stmt = sa.select(f.c.path, f.c.checksum, f.c.file_size)
        if collection_ids is None:
            rows: Sequence[tuple[Any, ...]] = conn.execute(stmt).all()
            return [tuple(r) for r in rows]
        ids = list(collection_ids)
        tags_tables = {r.tags.name: r.tags for r in self._types.all()}
        records: list[tuple[str, str | None, int | None]] = []
        for tags in tags_tables.values():
            member = sa.select(tags.c.dataset_id).where(tags.c.collection_id.in_(ids))
            members: Sequence[tuple[Any, ...]] = conn.execute(stmt.where(f.c.dataset_id.in_(member))).all()
            records += [tuple(r) for r in members]
        return records

    def all_paths(self, conn: sa.Connection | None = None) -> set[str]:
        """The path of every file record (what a walk of the repository compares its files with)."""
        if conn is None:
            with self._db.transaction() as c:
                return self.all_paths(c)
        f = self._schema.file_record
        return set(conn.execute(sa.select(f.c.path)).scalars())

    def files_of(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FileRecord]]:
        f = self._schema.file_record
        out: dict[uuid.UUID, list[FileRecord]] = {}
        ids = list(dataset_ids)
        if len(ids) == 1:  # get(ref), exists(ref): one cached statement, no IN list to expand
            stmt = self._files_stmt
            if stmt is None:
                stmt = self._files_stmt = sa.select(
                    f.c.component, f.c.path, f.c.formatter, f.c.storage_class, f.c.checksum, f.c.file_size
                ).where(f.c.dataset_id == sa.bindparam("id"))
            found: Sequence[tuple[Any, ...]] = conn.execute(stmt, {"id": ids[0]}).all()
            if found:
                out[ids[0]] = [FileRecord(*row) for row in found]
            return out
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            stmt = sa.select(f.c.dataset_id, f.c.component, f.c.path, f.c.formatter, f.c.storage_class,
                             f.c.checksum, f.c.file_size).where(f.c.dataset_id.in_(chunk))
            for row in conn.execute(stmt):
                out.setdefault(row[0], []).append(FileRecord(*row[1:]))
        return out

    def locate_elsewhere(self, conn: sa.Connection, type_rec: DatasetTypeRecord, data_id: DataCoordinate,
                         exclude: Sequence[CollectionRecord], limit: int = 5) -> list[str]:
        """Names of other collections holding this type and data ID (for not-found messages)."""
        t = type_rec.tags
        conds = [t.c.dataset_type_id == type_rec.id]
        conds += [t.c[dim] == v for dim, v in zip(type_rec.group.required, data_id.values)]
        if exclude:
            conds.append(t.c.collection_id.not_in([c.id for c in exclude]))
        ids: Sequence[int] = conn.execute(sa.select(t.c.collection_id).where(*conds).limit(limit)).scalars().all()
        return [self._collections.by_id(i).name for i in ids]

    def rows_to_refs(self, type_rec: DatasetTypeRecord, rows: Sequence[Any], collections: Sequence[CollectionRecord],
                     *, find_first: bool) -> list[DatasetRef]:
        """Rows of (dataset_id, collection_id, run_id, *required dims) to refs (first collection wins)."""
        if len(collections) > 1:
            if find_first:
                rank = {c.id: i for i, c in enumerate(collections)}
                best: dict[tuple[Any, ...], tuple[int, Any]] = {}
                for row in rows:
                    key = tuple(row[3:])
                    r = rank[row[1]]
                    prev = best.get(key)
                    if prev is None or r < prev[0]:
                        best[key] = (r, row)
                rows = [row for _, row in best.values()]
            else:  # keep each dataset once
                first: dict[uuid.UUID, Any] = {}  # insertion-ordered: each dataset's first row, in row order
                for row in rows:
                    first.setdefault(row[0], row)
                rows = list(first.values())
        # With one collection (dataset_id, collection_id) is a primary key: rows cannot repeat a dataset.
        by_id = self._collections.by_id
        run_names: dict[int, str] = {}

        def run_name(run_id: int) -> str:
            name = run_names.get(run_id)
            if name is None:
                name = run_names[run_id] = by_id(run_id).name
            return name

        return _refs_from_rows(type_rec.dataset_type, type_rec.group, rows, run_name)

    def run_ids_only(self, collections: Sequence[CollectionRecord]) -> bool:
        return all(c.type == CollectionType.RUN for c in collections)


# -- fast ref construction ----------------------------------------------------------------------
# A query of 500 refs spends most of its Python time making DataCoordinates and DatasetRefs.
# Their trusted constructors (``from_values``, ``_trusted``) set slots with ``object.__setattr__``,
# which looks each name up on every call; here the slot descriptors are looked up once. Used only
# while the slot layouts are the ones this code was written for (else the trusted constructors).
_DC_SLOTS = ("group", "values", "implied_values", "_hash")
_REF_SLOTS = ("dataset_type", "data_id", "run", "id", "component")


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    if tuple(getattr(cls, "__slots__", ())) != names:
        return None
    return tuple(getattr(cls, n).__set__ for n in names)


_DC_SETTERS = _slot_setters(DataCoordinate, _DC_SLOTS)
_REF_SETTERS = _slot_setters(DatasetRef, _REF_SLOTS)


def _refs_from_rows(dataset_type: Any, group: Any, rows: Sequence[Any], run_name: Any) -> list[DatasetRef]:
    """Refs from rows of (dataset_id, collection_id, run_id, *required values), values already valid."""
    out: list[DatasetRef] = []
    append = out.append
    if _DC_SETTERS is None or _REF_SETTERS is None:
        from_values = DataCoordinate.from_values
        trusted = DatasetRef._trusted
        for row in rows:
            append(trusted(dataset_type, from_values(group, tuple(row[3:])), run_name(row[2]), row[0]))
        return out
    new = object.__new__
    dc_cls, ref_cls = DataCoordinate, DatasetRef
    set_group, set_values, set_implied, set_hash = _DC_SETTERS
    set_type, set_data_id, set_run, set_id, set_component = _REF_SETTERS
    required = group.required
    last_run_id = run = None
    for row in rows:
        values = row[3:]
        if type(values) is not tuple:
            values = tuple(values)
        if row[2] != last_run_id:
            last_run_id = row[2]
            run = run_name(last_run_id)
        data_id = new(dc_cls)
        set_group(data_id, group)
        set_values(data_id, values)
        set_implied(data_id, None)
        set_hash(data_id, hash((required, values)))
        ref = new(ref_cls)
        set_type(ref, dataset_type)
        set_data_id(ref, data_id)
        set_run(ref, run)
        set_id(ref, row[0])
        set_component(ref, None)
        append(ref)
    return out
