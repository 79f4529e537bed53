"""The registry's queries of datasets, data IDs and dimension records, as the Butler asks them.

They normalise the data ID constraints (``registry.data_ids``), resolve collections and hand the
rest to the registry's query runner (``registry.queries``: one SELECT per query, rows turned into
refs, data IDs or records with trusted constructors). The Butler passes its default collections;
`Registry.query_datasets` and its siblings (the `RegistryReader` calls) are these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._dataset_ref import DatasetRef
from .._dataset_type import DatasetType
from ..dimensions import DataCoordinate, DimensionRecord
from ..errors import CollectionError, DataIdError
from .expressions import parse_expression

if TYPE_CHECKING:
    from ._collections import CollectionRecord
    from ._registry import Registry

__all__ = ["query_data_ids", "query_datasets", "query_dimension_records", "resolve_collections"]


def _has_glob(collections: Any) -> bool:
    items = [collections] if isinstance(collections, str) else list(collections or ())
    return any(any(ch in c for ch in "*?[") for c in items)


def resolve_collections(registry: Registry, collections: Any, conn: Any = None) -> list[CollectionRecord]:
    """The flattened search path of ``collections`` (an error when there is none to search)."""
    if not collections:
        raise CollectionError("no collections to search: pass collections=... to this call or to Butler(...)")
    return registry.collections.resolve(collections, conn)


def query_datasets(registry: Registry, dataset_type: str | DatasetType, *, collections: Any,
                   where: str | None = None, bind: Mapping[str, Any] | None = None, data_id: Any = None,
                   find_first: bool | None = None, **kwargs: Any) -> list[DatasetRef]:
    """Refs of one type in ``collections`` (the call's, else the Butler's) matching the constraints."""
    name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
    type_rec = registry.dataset_types.get(name)
    with registry.transaction() as conn:
        colls = resolve_collections(registry, collections, conn)  # as of this query's snapshot
        if find_first is None:
            find_first = not _has_glob(collections)
        constraints = registry.data_ids.constraints(data_id, kwargs)
        tree = parse_expression(where) if where else None
        return registry.queries.datasets(type_rec, colls, constraints=constraints, where=where, bind=bind,
                                         find_first=find_first, tree=tree, conn=conn)


def query_data_ids(registry: Registry, dimensions: str | Iterable[str], *, where: str | None = None,
                   bind: Mapping[str, Any] | None = None, data_id: Any = None,
                   datasets: str | Iterable[str] | None = None, collections: Any = None,
                   **kwargs: Any) -> list[DataCoordinate]:
    """Data IDs of ``dimensions`` matching the constraints (and having ``datasets`` in ``collections``:
    the call's, else the Butler's)."""
    dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
    try:
        group = registry.universe.group(dims)
    except KeyError as err:
        raise DataIdError(str(err.args[0])) from None
    constraints = registry.data_ids.constraints(data_id, kwargs)
    tree = parse_expression(where) if where else None
    type_recs = []
    colls: list[CollectionRecord] = []
    if datasets is not None:
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        type_recs = [registry.dataset_types.get(n) for n in names]
        colls = resolve_collections(registry, collections)
    return registry.queries.data_ids(group, constraints=constraints, where=where, bind=bind, dataset_types=type_recs,
                                     collections=colls, tree=tree)


def query_dimension_records(registry: Registry, element: str, *, where: str | None = None,
                            bind: Mapping[str, Any] | None = None, data_id: Any = None,
                            **kwargs: Any) -> list[DimensionRecord]:
    """Records of ``element`` matching the constraints, in primary-key order."""
    universe = registry.universe
    if element not in universe:
        raise DataIdError(f"unknown dimension element {element!r}; known: {[e.name for e in universe.elements]}")
    constraints = registry.data_ids.constraints(data_id, kwargs)
    tree = parse_expression(where) if where else None
    return registry.queries.dimension_records(element, constraints=constraints, where=where, bind=bind, tree=tree)
