"""Queries of datasets, data IDs and dimension records: one SELECT each, built by the query builder.

The Butler normalises the data ID constraints and resolves the collections (its defaults); this
runner builds the statement, runs it and turns the rows into refs, data IDs or records with
trusted constructors (no re-validation per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..dimensions import DataCoordinate, DimensionGroup, DimensionRecord
from ..errors import DataIdError
from .expressions import parse_expression

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from ._collections import CollectionRecord
    from ._database import Database
    from ._dataset_types import DatasetTypeRecord
    from ._datasets import DatasetManager
    from ._dimension_records import DimensionRecordManager
    from ._query import QueryBuilder
    from ._schema import RegistrySchema

__all__ = ["QueryRunner"]


class QueryRunner:
    """Runs the Butler's three kinds of query; every method takes an optional ``conn`` (a snapshot
    shared with the collection resolution that preceded it) and an optional ``tree`` (``where``
    parsed already by a caller that validates it before anything else)."""

    def __init__(self, db: Database, schema: RegistrySchema, builder: QueryBuilder, datasets: DatasetManager,
                 records: DimensionRecordManager):
        self._db = db
        self._schema = schema
        self._builder = builder
        self._datasets = datasets
        self._records = records

    def datasets(self, type_rec: DatasetTypeRecord, collections: Sequence[CollectionRecord], *,
                 constraints: Mapping[str, Any], where: str | None = None, bind: Mapping[str, Any] | None = None,
                 find_first: bool, tree: Any = None, conn: sa.Connection | None = None) -> list[DatasetRef]:
        """Refs of one type in ``collections`` (resolved, in search order) matching the constraints
        and ``where``; with ``find_first`` only the first collection's ref of each data ID."""
        if conn is None:
            with self._db.transaction() as c:
                return self.datasets(type_rec, collections, constraints=constraints, where=where, bind=bind,
                                     find_first=find_first, tree=tree, conn=c)
        tree = parse_expression(where) if where and tree is None else tree
        tags = type_rec.tags
        built = self._builder.build(dimensions=type_rec.group, data_id=constraints, where=tree, bind=bind,
                                    tags=(tags, type_rec.group), where_text=where or "")
        coll_ids = [c.id for c in collections]
        built.where.append(tags.c.dataset_type_id == type_rec.id)
        built.where.append(tags.c.collection_id.in_(coll_ids) if len(coll_ids) > 1
                           else tags.c.collection_id == coll_ids[0])
        if self._datasets.run_ids_only(collections):
            run_col = tags.c.collection_id
        else:
            d = self._schema.dataset
            built.froms.append(d)
            built.where.append(d.c.dataset_id == tags.c.dataset_id)
            run_col = d.c.run_id
        columns: list[sa.ColumnElement[Any]] = [tags.c.dataset_id, tags.c.collection_id, run_col,
                                                *[tags.c[dim] for dim in type_rec.group.required]]
        rows = built.execute(conn, columns)
        return self._datasets.rows_to_refs(type_rec, rows, collections, find_first=find_first)

    def data_ids(self, group: DimensionGroup, *, constraints: Mapping[str, Any], where: str | None = None,
                 bind: Mapping[str, Any] | None = None, dataset_types: Sequence[DatasetTypeRecord] = (),
                 collections: Sequence[CollectionRecord] = (), tree: Any = None, conn: sa.Connection | None = None
                 ) -> list[DataCoordinate]:
        """Data IDs of ``group`` (with implied values) matching the constraints and ``where``, and
        having a dataset of each of ``dataset_types`` in ``collections`` when given. An empty
        result for a constraint naming a record that does not exist is a `DataIdError` saying so."""
        if conn is None:
            with self._db.transaction() as c:
                return self.data_ids(group, constraints=constraints, where=where, bind=bind,
                                     dataset_types=dataset_types, collections=collections, tree=tree, conn=c)
        tree = parse_expression(where) if where and tree is None else tree
        tags = (dataset_types[0].tags, dataset_types[0].group) if dataset_types else None
        built = self._builder.build(dimensions=group, data_id=constraints, where=tree, bind=bind, tags=tags,
                                    with_implied=True, where_text=where or "")
        for i, type_rec in enumerate(dataset_types):
            t: sa.FromClause
            if i == 0:
                t = type_rec.tags
            else:
                t = type_rec.tags.alias(f"tags_{i}")
                built.froms.append(t)
                for dim in type_rec.group.required:
                    built.columns.setdefault(dim, []).append(t.c[dim])
            built.where.append(t.c.dataset_type_id == type_rec.id)
            built.where.append(t.c.collection_id.in_([c.id for c in collections]))
        implied = [n for n in group.implied if n in built.columns]
        cols = [built.dimension_column(n) for n in group.required] + [built.dimension_column(n) for n in implied]
        n_req = len(group.required)
        rows = built.execute(conn, cols, distinct=bool(dataset_types), order_by=cols[:n_req])
        if not rows and constraints:
            self._check_constraints_exist(constraints, conn)
        from_values = DataCoordinate.from_values
        if implied:
            return [from_values(group, tuple(r[:n_req]), dict(zip(implied, r[n_req:]))) for r in rows]
        return [from_values(group, tuple(r)) for r in rows]

    def _check_constraints_exist(self, constraints: Mapping[str, Any], conn: sa.Connection) -> None:
        """After an empty result, raise `DataIdError` for a constraint value that is not in the registry
        (``tract=999`` of a skymap with 100 tracts), so a typo is not read as "no data": one small query
        per constrained dimension, and only when nothing was found."""
        universe = self._schema.universe
        elements = self._schema.elements
        for key in universe.dimensions:
            if key not in constraints:
                continue
            element = universe[key]
            if not all(d in constraints for d in element.required):
                continue
            table = elements[key]
            conditions = [table.c[element.key_name if d == key else d] == constraints[d]
                          for d in element.required]
            if conn.execute(sa.select(sa.literal(1)).select_from(table).where(*conditions).limit(1)).first():
                continue
            given = ", ".join(f"{d}={constraints[d]!r}" for d in element.required)
            hint = ""
            if key == "tract":
                skymaps = elements["skymap"]
                row = conn.execute(sa.select(skymaps.c.tract_max).where(skymaps.c.name == constraints["skymap"])
                                   ).first()
                if row is not None and 0 <= constraints["tract"] < row[0]:
                    hint = (f"; tract {constraints['tract']} of skymap {constraints['skymap']!r} (tracts "
                            f"0..{row[0] - 1}) is not registered: register it with register_skymap(..., tracts=[...])")
                elif row is not None:
                    hint = f"; skymap {constraints['skymap']!r} has tracts 0..{row[0] - 1}"
            raise DataIdError(
                f"no {key} record matches {given}{hint}; the constraint names a {key} that does not exist")

    def dimension_records(self, element_name: str, *, constraints: Mapping[str, Any], where: str | None = None,
                          bind: Mapping[str, Any] | None = None, tree: Any = None,
                          conn: sa.Connection | None = None) -> list[DimensionRecord]:
        """Records of one element matching the constraints and ``where``, in primary-key order."""
        universe = self._schema.universe
        if element_name not in universe:
            raise DataIdError(
                f"unknown dimension element {element_name!r}; known: {[e.name for e in universe.elements]}")
        if conn is None:
            with self._db.transaction() as c:
                return self.dimension_records(element_name, constraints=constraints, where=where, bind=bind,
                                              tree=tree, conn=c)
        el = universe[element_name]
        group = universe.group(el.required)
        tree = parse_expression(where) if where and tree is None else tree
        built = self._builder.build(dimensions=group, data_id=constraints, where=tree, bind=bind, element=el,
                                    where_text=where or "")
        table = built.element_tables[el.name]
        columns: list[sa.ColumnElement[Any]] = list(table.c)
        names = [c.name for c in table.c]
        rows = built.execute(conn, columns, order_by=[table.c[c] for c in el.primary_key_columns])
        return [self._records.from_row(el, dict(zip(names, row))) for row in rows]
