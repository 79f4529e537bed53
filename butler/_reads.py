"""Finding one dataset for the Butler's reads (``get``, ``get_deferred``, ``exists``, ``find_dataset``).

A dataset is found by its ref (its file records, one query), by dataset type and data ID in a
collection search path (one indexed query on the type's tags table), or, for a calibration
type, by validity time (`butler._calibs.find_calib`). A dataset that is not found is reported
with where it was looked for and what is close: the collections that do hold it, or the
dimension record missing from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from .errors import DatasetNotFoundError

if TYPE_CHECKING:
    from ._butler import Butler
    from .dimensions import DataCoordinate
    from .registry._collections import CollectionRecord
    from .registry._datasets import FoundDataset

__all__ = ["find", "not_found"]


def find(butler: Butler, dataset_type: str | DatasetType | DatasetRef, data_id: Any, collections: Any,
         kwargs: Mapping[str, Any], *, required: bool = True) -> FoundDataset | None:
    """The dataset and its file records; None if it is not there and not ``required`` (else raise)."""
    registry = butler._registry
    if isinstance(dataset_type, DatasetRef):
        from .registry._datasets import FoundDataset

        ref = dataset_type
        with registry.db.transaction() as conn:
            files = registry.datasets.files_of(conn, [ref.id]).get(ref.id)
        if files is None:
            if required:
                raise DatasetNotFoundError(f"{ref} is not in the repository {butler.root} (removed?)")
            return None
        return FoundDataset(ref, tuple(files))
    name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
    parent, _ = split_component(name)
    type_rec = registry.dataset_types.get(parent)
    if type_rec.dataset_type.is_calibration:  # found by validity time (issue 7)
        from ._calibs import find_calib

        return find_calib(butler, type_rec, data_id, kwargs, collections, required=required)
    coord = butler.registry.data_ids.standardize(type_rec.group, data_id, kwargs)
    with registry.db.transaction() as conn:
        colls = butler._resolve_collections(collections, conn)
        found = registry.datasets.find(conn, type_rec, coord, colls)
        if found is None and required:
            raise not_found(butler, conn, type_rec, coord, colls)
    return found


def not_found(butler: Butler, conn: Any, type_rec: Any, coord: DataCoordinate, colls: Sequence[CollectionRecord]
              ) -> DatasetNotFoundError:
    """The error for a dataset missing from ``colls``: where else it is, or which record is missing."""
    registry = butler._registry
    message = (f"no {type_rec.dataset_type.name!r} for {coord} in collections "
               f"{[c.name for c in colls]}")
    elsewhere = registry.datasets.locate_elsewhere(conn, type_rec, coord, colls)
    if elsewhere:
        message += f"; found in {', '.join(elsewhere)}"
    else:
        missing = None
        rows = [coord.to_dict()]
        for dim in coord.group.required:
            missing = registry.records.missing_keys(butler.universe[dim], rows, conn)
            if missing:
                break
        if missing:
            message += f"; {missing}"
    return DatasetNotFoundError(message)
