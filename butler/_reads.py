"""Finding one dataset for the Butler's reads (``get``, ``get_deferred``, ``exists``, ``find_dataset``).

A dataset is found by its ref (its file records, one query), by dataset type and data ID in a
collection search path (one indexed query on the type's tags table), or, for a calibration
type, by validity time (`butler._calibs.find_calib`). A dataset that is not found is reported
with where it was looked for and what is close: the collections that do hold it, or the
dimension record missing from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from .errors import DatasetNotFoundError

if TYPE_CHECKING:
    from ._butler import Butler
    from ._typing import CollectionsLike, DataIdLike, RefOrTypeLike
    from .registry._datasets import FoundDataset
    from .registry._interface import RegistryReader

__all__ = ["find"]


def find(butler: Butler, dataset_type: RefOrTypeLike, data_id: DataIdLike, collections: CollectionsLike,
         kwargs: Mapping[str, Any], *, required: bool = True) -> FoundDataset | None:
    """The dataset and its file records; None if it is not there and not ``required`` (else raise)."""
    registry: RegistryReader = butler.reader
    if isinstance(dataset_type, DatasetRef):
        from .registry._datasets import FoundDataset

        ref = dataset_type
        files = registry.files_of([ref.id]).get(ref.id)
        if files is None:
            if required:
                raise DatasetNotFoundError(f"{ref} is not in the repository {butler.root} (removed?)")
            return None
        return FoundDataset(ref, tuple(files))
    name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
    parent, _ = split_component(name)
    dt = registry.dataset_type(parent)
    if dt.is_calibration:  # found by validity time (issue 7)
        from ._calibs import find_calib

        return find_calib(butler, butler.registry.dataset_types.get(parent), data_id, kwargs, collections,
                          required=required)
    coord = registry.data_ids.standardize(dt.group(registry.universe), data_id, kwargs)
    search = butler.search_path(collections)
    found = registry.find_dataset(parent, coord, search)
    if found is None and required:
        raise DatasetNotFoundError(registry.explain_not_found(parent, coord, search))
    return found
