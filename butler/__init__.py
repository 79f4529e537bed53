"""A data butler for astronomy pipelines: name, store, find and relate datasets.

Importing ``butler`` is cheap: the registry (SQLAlchemy) and formatters (numpy, astropy...)
are imported when first used, so the command line and shell completion start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from ._dataset_type import DatasetType
from ._typing import CollectionsLike, DataIdLike, DatasetTypeLike, RefOrTypeLike, TimeLike

if TYPE_CHECKING:
    from ._butler import Butler, DeferredDatasetHandle
    from ._dataset_ref import DatasetRef
    from .dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
    from .registry._collections import CollectionType

__all__ = [
    "Butler",
    "CollectionType",
    "CollectionsLike",
    "DataCoordinate",
    "DataIdLike",
    "DatasetRef",
    "DatasetType",
    "DatasetTypeLike",
    "DeferredDatasetHandle",
    "DimensionRecord",
    "DimensionUniverse",
    "RefOrTypeLike",
    "TimeLike",
    "errors",
]

_LAZY = {
    "Butler": "._butler",
    "DeferredDatasetHandle": "._butler",
    "DatasetRef": "._dataset_ref",
    "DataCoordinate": ".dimensions",
    "DimensionRecord": ".dimensions",
    "DimensionUniverse": ".dimensions",
    "CollectionType": ".registry._collections",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'butler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
