"""Dataset rows: insertion in bulk, lookup by data ID, and queries.

A dataset is one row in ``dataset`` (id, type, run), one row per collection it belongs to in its
type's tags table, and one row per stored file in ``file_record``. Inserting N datasets is
three multi-row INSERTs; a lookup by data ID is one indexed SELECT with a cached statement.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._dataset_ref import DatasetRef
from ..dimensions import DataCoordinate
from ..errors import ConflictError, DataIdError
from ._collections import CollectionManager, CollectionRecord, CollectionType
from ._dataset_types import DatasetTypeManager, DatasetTypeRecord
from ._database import Database
from ._dimension_records import DimensionRecordManager
from ._schema import RegistrySchema

__all__ = ["DatasetManager", "FileRecord", "FoundDataset"]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """Where and how one file of a dataset is stored (path relative to the repository root)."""

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


@dataclass(frozen=True, slots=True)
class FoundDataset:
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
        self._find_cache: dict[tuple[int, int], sa.Select] = {}

    # -- insert -----------------------------------------------------------------------------
    def insert(
        self,
        conn: sa.Connection,
        type_rec: DatasetTypeRecord,
        run: CollectionRecord,
        refs: Sequence[DatasetRef],
        files: Mapping[uuid.UUID, Sequence[FileRecord]] | None = None,
    ) -> None:
        """Insert refs of one type into one run, with their file records, in ``conn``'s transaction."""
        if not refs:
            return
        schema = self._schema
        now = time.time_ns()
        tags = type_rec.tags
        dims = type_rec.group.required
        dataset_rows = []
        tag_rows = []
        for ref in refs:
            dataset_rows.append({"dataset_id": ref.id, "dataset_type_id": type_rec.id, "run_id": run.id,
                                 "ingest_time": now})
            row = dict(zip(dims, ref.data_id.values))
            row["dataset_type_id"] = type_rec.id
            row["dataset_id"] = ref.id
            row["collection_id"] = run.id
            tag_rows.append(row)
        file_rows = [f.to_row(i) for i, fs in (files or {}).items() for f in fs]
        try:
            conn.execute(schema.dataset.insert(), dataset_rows)
            conn.execute(tags.insert(), tag_rows)
            if file_rows:
                conn.execute(schema.file_record.insert(), file_rows)
        except sa.exc.IntegrityError as err:
            raise self._explain(type_rec, run, refs, err) from None

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
    def _find_statement(self, type_rec: DatasetTypeRecord) -> sa.Select:
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

    def find_many(self, conn: sa.Connection, type_rec: DatasetTypeRecord, data_ids: Sequence[DataCoordinate],
                  collections: Sequence[CollectionRecord]) -> dict[DataCoordinate, DatasetRef]:
        """Set-based lookup of many data IDs of one type (first collection wins)."""
        if not data_ids or not collections:
            return {}
        t = type_rec.tags
        dims = type_rec.group.required
        rank = {c.id: i for i, c in enumerate(collections)}
        wanted = {d.values: d for d in data_ids}
        out: dict[DataCoordinate, tuple[int, DatasetRef]] = {}
        d = self._schema.dataset
        base = (
            sa.select(t.c.dataset_id, t.c.collection_id, d.c.run_id, *[t.c[x] for x in dims])
            .select_from(t.join(d, d.c.dataset_id == t.c.dataset_id))
            .where(t.c.dataset_type_id == type_rec.id, t.c.collection_id.in_(list(rank)))
        )
        # Constrain on the most selective single column when it helps; filter exactly in Python.
        if dims:
            last = dims[-1]
            values = sorted({v[-1] for v in wanted})
            if len(values) <= 5000:
                base = base.where(t.c[last].in_(values))
        for row in conn.execute(base):
            key = tuple(row[3:])
            data_id = wanted.get(key)
            if data_id is None:
                continue
            r = rank[row[1]]
            prev = out.get(data_id)
            if prev is None or r < prev[0]:
                run = self._collections.by_id(row[2]).name
                out[data_id] = (r, DatasetRef._trusted(type_rec.dataset_type, data_id, run, row[0]))
        return {k: v[1] for k, v in out.items()}

    def files_of(self, conn: sa.Connection, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FileRecord]]:
        f = self._schema.file_record
        out: dict[uuid.UUID, list[FileRecord]] = {}
        ids = list(dataset_ids)
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
        ids = conn.execute(sa.select(t.c.collection_id).where(*conds).limit(limit)).scalars().all()
        return [self._collections.by_id(i).name for i in ids]

    def rows_to_refs(self, type_rec: DatasetTypeRecord, rows: Sequence[Any], collections: Sequence[CollectionRecord],
                     *, find_first: bool) -> list[DatasetRef]:
        """Rows of (dataset_id, collection_id, run_id, *required dims) to refs (first collection wins)."""
        group = type_rec.group
        dt = type_rec.dataset_type
        from_values = DataCoordinate.from_values
        trusted = DatasetRef._trusted
        by_id = self._collections.by_id
        run_names: dict[int, str] = {}
        if len(collections) <= 1:
            # (dataset_id, collection_id) is a primary key: rows cannot repeat a dataset.
            out = []
            for row in rows:
                run = run_names.get(row[2])
                if run is None:
                    run = run_names[row[2]] = by_id(row[2]).name
                out.append(trusted(dt, from_values(group, tuple(row[3:])), run, row[0]))
            return out
        if not find_first:
            out = []
            seen: set[uuid.UUID] = set()
            for row in rows:
                if row[0] in seen:
                    continue
                seen.add(row[0])
                run = run_names.get(row[2])
                if run is None:
                    run = run_names[row[2]] = by_id(row[2]).name
                out.append(trusted(dt, from_values(group, tuple(row[3:])), run, row[0]))
            return out
        rank = {c.id: i for i, c in enumerate(collections)}
        best: dict[tuple, tuple[int, Any]] = {}
        for row in rows:
            key = tuple(row[3:])
            r = rank[row[1]]
            prev = best.get(key)
            if prev is None or r < prev[0]:
                best[key] = (r, row)
        out = []
        for key, (_, row) in best.items():
            run = run_names.get(row[2])
            if run is None:
                run = run_names[row[2]] = by_id(row[2]).name
            out.append(trusted(dt, from_values(group, key), run, row[0]))
        return out

    def run_ids_only(self, collections: Sequence[CollectionRecord]) -> bool:
        return all(c.type == CollectionType.RUN for c in collections)
