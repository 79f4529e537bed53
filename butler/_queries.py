"""Query methods of the Butler: datasets, data IDs and dimension records.

Each query is one SELECT built by the registry's query builder; the rows are turned into
refs, data IDs or records with trusted constructors (no re-validation per row).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType
from .dimensions import DataCoordinate, DimensionRecord
from .errors import DataIdError
from .registry.expressions import parse_expression

if TYPE_CHECKING:
    from ._butler import Butler

__all__ = ["query_datasets", "query_data_ids", "query_dimension_records"]


def _has_glob(collections: Any) -> bool:
    items = [collections] if isinstance(collections, str) else list(collections or ())
    return any(any(ch in c for ch in "*?[") for c in items)


def query_datasets(butler: Butler, dataset_type: str | DatasetType, *, collections: Any = None,
                   where: str | None = None, bind: Mapping[str, Any] | None = None, data_id: Any = None,
                   find_first: bool | None = None, **kwargs: Any) -> list[DatasetRef]:
    registry = butler._registry
    name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
    type_rec = registry.dataset_types.get(name)
    wanted = collections if collections is not None else butler.collections
    with registry.db.transaction() as conn:
        colls = butler._resolve_collections(wanted, conn)  # as of this query's snapshot
        if find_first is None:
            find_first = not _has_glob(wanted)
        constraints = butler.registry.data_ids.constraints(data_id, kwargs)
        tree = parse_expression(where) if where else None
        tags = type_rec.tags
        built = registry.query_builder.build(dimensions=type_rec.group, data_id=constraints, where=tree, bind=bind,
                                             tags=(tags, type_rec.group), where_text=where or "")
        coll_ids = [c.id for c in colls]
        built.where.append(tags.c.dataset_type_id == type_rec.id)
        built.where.append(tags.c.collection_id.in_(coll_ids) if len(coll_ids) > 1 else tags.c.collection_id == coll_ids[0])
        if registry.datasets.run_ids_only(colls):
            run_col = tags.c.collection_id
        else:
            d = registry.schema.dataset
            built.froms.append(d)
            built.where.append(d.c.dataset_id == tags.c.dataset_id)
            run_col = d.c.run_id
        columns = [tags.c.dataset_id, tags.c.collection_id, run_col, *[tags.c[dim] for dim in type_rec.group.required]]
        rows = built.execute(conn, columns)
    return registry.datasets.rows_to_refs(type_rec, rows, colls, find_first=find_first)


def query_data_ids(butler: Butler, dimensions: str | Iterable[str], *, where: str | None = None,
                   bind: Mapping[str, Any] | None = None, data_id: Any = None,
                   datasets: str | Iterable[str] | None = None, collections: Any = None,
                   **kwargs: Any) -> list[DataCoordinate]:
    registry = butler._registry
    universe = registry.universe
    dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
    try:
        group = universe.group(dims)
    except KeyError as err:
        raise DataIdError(str(err.args[0])) from None
    constraints = butler.registry.data_ids.constraints(data_id, kwargs)
    tree = parse_expression(where) if where else None
    type_recs = []
    colls = []
    if datasets is not None:
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        type_recs = [registry.dataset_types.get(n) for n in names]
        colls = butler._resolve_collections(collections)
    tags = None
    if type_recs:
        first = type_recs[0]
        tags = (first.tags, first.group)
    built = registry.query_builder.build(dimensions=group, data_id=constraints, where=tree, bind=bind, tags=tags,
                                         with_implied=True, where_text=where or "")
    for i, type_rec in enumerate(type_recs):
        if i == 0:
            t = type_rec.tags
        else:
            t = type_rec.tags.alias(f"tags_{i}")
            built.froms.append(t)
            for dim in type_rec.group.required:
                built.columns.setdefault(dim, []).append(t.c[dim])
        built.where.append(t.c.dataset_type_id == type_rec.id)
        built.where.append(t.c.collection_id.in_([c.id for c in colls]))
    implied = [n for n in group.implied if n in built.columns]
    cols = [built.dimension_column(n) for n in group.required] + [built.dimension_column(n) for n in implied]
    n_req = len(group.required)
    from_values = DataCoordinate.from_values
    with registry.db.transaction() as conn:
        rows = built.execute(conn, cols, distinct=bool(type_recs), order_by=cols[:n_req])
        if not rows and constraints:
            _check_constraints_exist(registry, constraints, conn)
    if implied:
        return [from_values(group, tuple(r[:n_req]), dict(zip(implied, r[n_req:]))) for r in rows]
    return [from_values(group, tuple(r)) for r in rows]


def _check_constraints_exist(registry: Any, constraints: Mapping[str, Any], conn: Any) -> None:
    """After an empty result, raise `DataIdError` for a constraint value that is not in the registry
    (``tract=999`` of a skymap with 100 tracts), so a typo is not read as "no data": one small query
    per constrained dimension, and only when nothing was found."""
    import sqlalchemy as sa

    universe = registry.universe
    for key in universe.dimensions:
        if key not in constraints:
            continue
        element = universe[key]
        if not all(d in constraints for d in element.required):
            continue
        table = registry.schema.elements[key]
        conditions = [table.c[element.key.name if d == key else d] == constraints[d] for d in element.required]
        if conn.execute(sa.select(sa.literal(1)).select_from(table).where(*conditions).limit(1)).first():
            continue
        given = ", ".join(f"{d}={constraints[d]!r}" for d in element.required)
        hint = ""
        if key == "tract":
            skymaps = registry.schema.elements["skymap"]
            row = conn.execute(sa.select(skymaps.c.tract_max).where(skymaps.c.name == constraints["skymap"])).first()
            if row is not None and 0 <= constraints["tract"] < row[0]:
                hint = (f"; tract {constraints['tract']} of skymap {constraints['skymap']!r} (tracts 0..{row[0] - 1}) "
                        "is not registered: register it with register_skymap(..., tracts=[...])")
            elif row is not None:
                hint = f"; skymap {constraints['skymap']!r} has tracts 0..{row[0] - 1}"
        raise DataIdError(f"no {key} record matches {given}{hint}; the constraint names a {key} that does not exist")


def query_dimension_records(butler: Butler, element: str, *, where: str | None = None,
                            bind: Mapping[str, Any] | None = None, data_id: Any = None,
                            **kwargs: Any) -> list[DimensionRecord]:
    registry = butler._registry
    universe = registry.universe
    if element not in universe:
        raise DataIdError(f"unknown dimension element {element!r}; known: {[e.name for e in universe.elements]}")
    el = universe[element]
    group = universe.group(el.required)
    constraints = butler.registry.data_ids.constraints(data_id, kwargs)
    tree = parse_expression(where) if where else None
    built = registry.query_builder.build(dimensions=group, data_id=constraints, where=tree, bind=bind, element=el,
                                         where_text=where or "")
    table = built.element_tables[el.name]
    columns = list(table.c)
    names = [c.name for c in columns]
    with registry.db.transaction() as conn:
        rows = built.execute(conn, columns, order_by=[table.c[c] for c in el.primary_key_columns])
    return [registry.records.from_row(el, dict(zip(names, row))) for row in rows]

