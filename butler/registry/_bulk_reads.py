"""Bulk reads for export, comparison and URIs: one query per dataset type, streamed in batches.

Export selects the datasets of one type found in some collections (RUN and TAGGED through the
tags table, CALIBRATION through ``dataset_calibs``) and matching a where-expression, as one
``SELECT dataset_id`` that every other query of the export uses as ``IN (subquery)``: the rows
(dataset, data ID, run, files), the TAGGED memberships, the validity ranges, the provenance.
Only a where-expression that needs the exact spatial refinement (done in Python) materialises
the ids, which are then sent in chunks. Rows come in partitions (a server-side cursor on
PostgreSQL) turned into columns, never as one Python object per dataset.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ._collections import CollectionManager, CollectionRecord, CollectionType
from ._database import Database
from ._dataset_types import DatasetTypeRecord
from ._schema import RegistrySchema

if TYPE_CHECKING:
    from ..dimensions import DimensionElement
    from ._query import QueryBuilder

__all__ = ["BulkReadManager", "DatasetSelection"]

_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class DatasetSelection:
    """The datasets of one type chosen for an export: a ``SELECT dataset_id`` or a list of ids."""

    type_rec: DatasetTypeRecord
    subquery: sa.Select[Any] | None
    ids: tuple[Any, ...] | None = None

    def conditions(self, column: sa.ColumnElement[Any]) -> Iterator[sa.ColumnElement[bool]]:
        """``column IN (selection)``: one condition, or one per chunk of materialised ids."""
        if self.subquery is not None:
            yield column.in_(self.subquery)
            return
        ids = self.ids or ()
        for start in range(0, len(ids), _CHUNK):
            yield column.in_(list(ids[start:start + _CHUNK]))

    @property
    def empty(self) -> bool:
        return self.subquery is None and not self.ids


def hex_ids(values: Sequence[Any]) -> list[str]:
    """Raw id column values (hex text, or UUIDs on PostgreSQL) as 32-character hex strings."""
    if values and isinstance(values[0], uuid.UUID):
        return [v.hex for v in values]
    return list(values)


def _raw(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.type_coerce(column, sa.types.NullType())


class BulkReadManager:
    """Set-based reads of many datasets, records and quanta at once (export, compare, URIs)."""

    def __init__(self, db: Database, schema: RegistrySchema, collections: CollectionManager):
        self._db = db
        self._schema = schema
        self._collections = collections

    # -- the selection -----------------------------------------------------------------------------
    def select_datasets(self, conn: sa.Connection, type_rec: DatasetTypeRecord,
                        collections: Sequence[CollectionRecord], builder: QueryBuilder, *,
                        where: str | None = None, bind: Mapping[str, Any] | None = None) -> DatasetSelection:
        """The datasets of ``type_rec`` in any of ``collections`` (flattened) matching ``where``."""
        from .expressions import parse_expression

        tags = type_rec.tags
        tag_ids = [c.id for c in collections if c.type in (CollectionType.RUN, CollectionType.TAGGED)]
        calib_ids = [c.id for c in collections if c.type == CollectionType.CALIBRATION]
        member: list[sa.ColumnElement[bool]] = []
        if tag_ids:
            member.append(tags.c.collection_id.in_(tag_ids))
        if calib_ids:
            c = self._schema.calibs
            member.append(tags.c.dataset_id.in_(sa.select(c.c.dataset_id).where(
                c.c.collection_id.in_(calib_ids), c.c.dataset_type_id == type_rec.id)))
        if not member:
            return DatasetSelection(type_rec, None, ())
        tree = parse_expression(where) if where else None
        built = builder.build(dimensions=type_rec.group, where=tree, bind=bind, tags=(tags, type_rec.group),
                              where_text=where or "")
        built.where.append(tags.c.dataset_type_id == type_rec.id)
        built.where.append(sa.or_(*member) if len(member) > 1 else member[0])
        if built.refine:  # exact region overlaps are tested in Python: materialise the ids
            rows = built.execute(conn, [_raw(tags.c.dataset_id)], distinct=True)
            return DatasetSelection(type_rec, None, tuple(dict.fromkeys(r[0] for r in rows)))
        return DatasetSelection(type_rec, built.select(tags.c.dataset_id))

    # -- per-dataset rows ------------------------------------------------------------------------
    def iter_dataset_files(self, conn: sa.Connection, selection: DatasetSelection, batch_size: int = 5000
                           ) -> Iterator[list[list[Any]]]:
        """Columns of (dataset_id hex, run name, *required data ID values, component, path, formatter,
        storage_class, checksum, file_size), one row per file (null file columns for a dataset
        without files), in batches of ``batch_size`` rows."""
        type_rec = selection.type_rec
        s = self._schema
        d, t, f, c = s.dataset, type_rec.tags, s.file_record, s.collection
        stmt = (
            sa.select(_raw(d.c.dataset_id), c.c.name, *[t.c[x] for x in type_rec.group.required], f.c.component,
                      f.c.path, f.c.formatter, f.c.storage_class, f.c.checksum, f.c.file_size)
            .select_from(d.join(t, sa.and_(t.c.dataset_id == d.c.dataset_id, t.c.collection_id == d.c.run_id))
                         .join(c, c.c.collection_id == d.c.run_id)
                         .outerjoin(f, f.c.dataset_id == d.c.dataset_id))
            .where(d.c.dataset_type_id == type_rec.id)
            .execution_options(stream_results=True)
        )
        for condition in selection.conditions(d.c.dataset_id):
            # SQLAlchemy's partitions, not the driver's cursor: with stream_results it buffers rows ahead.
            result = conn.execute(stmt.where(condition))
            try:
                for rows in result.partitions(batch_size):
                    columns = [list(col) for col in zip(*rows)]
                    columns[0] = hex_ids(columns[0])
                    yield columns
            finally:
                result.close()

    def tag_memberships(self, conn: sa.Connection, selection: DatasetSelection,
                        collections: Sequence[CollectionRecord]) -> list[tuple[str, str]]:
        """(collection name, dataset id hex) of the selected datasets in these TAGGED collections."""
        ids = [r.id for r in collections if r.type == CollectionType.TAGGED]
        if not ids or selection.empty:
            return []
        t = selection.type_rec.tags
        out: list[tuple[str, str]] = []
        for condition in selection.conditions(t.c.dataset_id):
            stmt = sa.select(t.c.collection_id, _raw(t.c.dataset_id)).where(
                t.c.dataset_type_id == selection.type_rec.id, t.c.collection_id.in_(ids), condition)
            rows = conn.execute(stmt).all()
            names = [self._collections.by_id(r[0]).name for r in rows]
            out += zip(names, hex_ids([r[1] for r in rows]))
        return out

    def calib_ranges(self, conn: sa.Connection, selection: DatasetSelection,
                     collections: Sequence[CollectionRecord]) -> list[tuple[str, str, int, int]]:
        """(collection name, dataset id hex, begin_ns, end_ns) of the selected datasets' validity
        ranges in these CALIBRATION collections."""
        ids = [r.id for r in collections if r.type == CollectionType.CALIBRATION]
        if not ids or selection.empty:
            return []
        c = self._schema.calibs
        out: list[tuple[str, str, int, int]] = []
        for condition in selection.conditions(c.c.dataset_id):
            rows = conn.execute(sa.select(c.c.collection_id, _raw(c.c.dataset_id), c.c.begin_ns, c.c.end_ns).where(
                c.c.collection_id.in_(ids), c.c.dataset_type_id == selection.type_rec.id, condition)).all()
            hexes = hex_ids([r[1] for r in rows])
            out += [(self._collections.by_id(r[0]).name, h, r[2], r[3]) for r, h in zip(rows, hexes)]
        return out

    def quantum_outputs(self, conn: sa.Connection, selection: DatasetSelection) -> list[tuple[str, str]]:
        """(dataset id hex, quantum id hex) of the selected datasets that a pipeline wrote."""
        if selection.empty:
            return []
        o = self._schema.quantum_output
        out: list[tuple[str, str]] = []
        for condition in selection.conditions(o.c.dataset_id):
            rows = conn.execute(sa.select(_raw(o.c.dataset_id), _raw(o.c.quantum_id)).where(condition)).all()
            out += zip(hex_ids([r[0] for r in rows]), hex_ids([r[1] for r in rows]))
        return out

    def quanta(self, conn: sa.Connection, quantum_ids: Sequence[str], columns: Sequence[sa.Column[Any]]
               ) -> Iterator[dict[str, Any]]:
        """The quantum rows of these ids (hex), as column -> value (run as its name)."""
        q = self._schema.quantum
        ids = sorted(quantum_ids)
        for start in range(0, len(ids), _CHUNK):
            chunk = [uuid.UUID(i) for i in ids[start:start + _CHUNK]]
            for row in conn.execute(sa.select(*columns).where(q.c.quantum_id.in_(chunk))):
                d = dict(row._mapping)
                d["quantum_id"] = d["quantum_id"].hex
                d["run"] = self._collections.by_id(d.pop("run_id")).name
                yield d

    # -- import: what the destination has already ------------------------------------------------
    def datasets_by_id(self, conn: sa.Connection, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """{id hex: (dataset type id, run name)} of those of these datasets that exist."""
        d = self._schema.dataset
        out: dict[str, tuple[int, str]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [uuid.UUID(i) for i in ids[start:start + _CHUNK]]
            rows = conn.execute(sa.select(_raw(d.c.dataset_id), d.c.dataset_type_id, d.c.run_id)
                                .where(d.c.dataset_id.in_(chunk))).all()
            for h, row in zip(hex_ids([r[0] for r in rows]), rows):
                out[h] = (row[1], self._collections.by_id(row[2]).name)
        return out

    def quanta_by_id(self, conn: sa.Connection, ids: Sequence[str]) -> set[str]:
        """The hex ids of those of these quanta that exist."""
        q = self._schema.quantum
        out: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = [uuid.UUID(i) for i in ids[start:start + _CHUNK]]
            out.update(hex_ids(list(conn.execute(sa.select(_raw(q.c.quantum_id)).where(
                q.c.quantum_id.in_(chunk))).scalars())))
        return out

    def tagged_ids(self, conn: sa.Connection, type_rec: DatasetTypeRecord, collection_id: int) -> set[str]:
        """The hex ids of the datasets of a type in one (TAGGED) collection."""
        t = type_rec.tags
        rows: list[Any] = list(conn.execute(sa.select(_raw(t.c.dataset_id)).where(
            t.c.dataset_type_id == type_rec.id, t.c.collection_id == collection_id)).scalars())
        return set(hex_ids(rows))

    # -- dimension records -------------------------------------------------------------------------
    def records_for_keys(self, conn: sa.Connection, element: DimensionElement, keys: set[tuple[Any, ...]]
                         ) -> list[dict[str, Any]]:
        """The records of ``element`` whose primary key is in ``keys`` (tuples in key-column order)."""
        if not keys:
            return []
        table = self._schema.elements[element.name]
        pk = element.primary_key_columns
        last = sorted({k[-1] for k in keys})
        out = []
        for start in range(0, len(last), _CHUNK):
            stmt = sa.select(*table.c).where(table.c[pk[-1]].in_(last[start:start + _CHUNK]))
            for row in conn.execute(stmt):
                m = row._mapping
                if tuple(m[c] for c in pk) in keys:
                    out.append(dict(m))
        return out

    def join_records(self, conn: sa.Connection, element: DimensionElement,
                     exported: Mapping[str, set[tuple[Any, ...]]]) -> list[dict[str, Any]]:
        """Records of a join element (not a dimension: visit_definition, visit_detector_region) whose
        every required dimension is among the ``exported`` keys ({dimension: {key tuple}})."""
        universe = self._schema.universe
        required = element.required
        if not required or any(not exported.get(d) for d in required):
            return []
        table = self._schema.elements[element.name]
        last = required[-1]
        values = sorted({k[-1] for k in exported[last]})
        positions = {d: [required.index(x) for x in universe[d].required] for d in required}
        out = []
        for start in range(0, len(values), _CHUNK):
            stmt = sa.select(*table.c).where(table.c[last].in_(values[start:start + _CHUNK]))
            for row in conn.execute(stmt):
                m = row._mapping
                key = tuple(m[c] for c in required)
                if all(tuple(key[i] for i in positions[d]) in exported[d] for d in required):
                    out.append(dict(m))
        return out

    # -- comparison ------------------------------------------------------------------------------
    def content_rows(self, conn: sa.Connection, type_rec: DatasetTypeRecord,
                     collections: Sequence[CollectionRecord] | None) -> list[tuple[Any, ...]]:
        """(*required data ID values, run name, component, checksum) of every file of the type's
        datasets (in ``collections``, else in the repository): one query, the driver's tuples.

        A dataset's data ID and run come from its tags row in its RUN (the only RUN row it has),
        read through the tags table's (type, collection, data ID) index: no join with ``dataset``."""
        s = self._schema
        t, f, c = type_rec.tags, s.file_record, s.collection
        stmt = (
            sa.select(*[t.c[x] for x in type_rec.group.required], c.c.name, f.c.component, f.c.checksum)
            .select_from(t.join(c, c.c.collection_id == t.c.collection_id)
                         .outerjoin(f, f.c.dataset_id == t.c.dataset_id))
            .where(t.c.dataset_type_id == type_rec.id, c.c.type == int(CollectionType.RUN))
        )
        if collections is not None:
            tag_ids = [r.id for r in collections if r.type in (CollectionType.RUN, CollectionType.TAGGED)]
            calib_ids = [r.id for r in collections if r.type == CollectionType.CALIBRATION]
            member = []
            if tag_ids:
                if all(r.type == CollectionType.RUN for r in collections):
                    member.append(t.c.collection_id.in_(tag_ids))
                else:
                    m = type_rec.tags.alias("member")
                    member.append(t.c.dataset_id.in_(sa.select(m.c.dataset_id).where(
                        m.c.collection_id.in_(tag_ids), m.c.dataset_type_id == type_rec.id)))
            if calib_ids:
                cal = s.calibs
                member.append(t.c.dataset_id.in_(sa.select(cal.c.dataset_id).where(
                    cal.c.collection_id.in_(calib_ids), cal.c.dataset_type_id == type_rec.id)))
            if not member:
                return []
            stmt = stmt.where(sa.or_(*member))
        result = conn.execute(stmt)
        try:
            return list(result.cursor.fetchall())
        finally:
            result.close()
