"""What the Butler needs of a registry to read, as a typed interface (the SQL registry is one
implementation; a remote client of `butler serve` is to be another).

Every method here is whole: it opens and closes its own transaction, so an implementation needs
no connection object and may answer over a network. Writes stay with the SQL `Registry`'s
managers, inside the one write path's transaction (``butler/_write_path.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from .._dataset_type import DatasetType
    from ..dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
    from ._collections import CollectionRecord, CollectionType
    from ._data_ids import DataIdNormalizer
    from ._datasets import FileRecord, FoundDataset

__all__ = ["RegistryReader"]


@runtime_checkable
class RegistryReader(Protocol):
    """Finding datasets, dataset types and collections of one repository."""

    universe: DimensionUniverse

    @property
    def data_ids(self) -> DataIdNormalizer:
        """Normalises data IDs (aliases) and query constraints against this registry's universe."""
        ...

    @property
    def instruments(self) -> dict[str, dict[str, Any]]:
        """Registered instruments: digest, class name, aliases and file templates of each."""
        ...

    def dataset_type(self, name: str) -> DatasetType:
        """The registered dataset type ``name`` (`MissingDatasetTypeError` naming the close ones)."""
        ...

    def query_dataset_types(self, pattern: str = "*") -> list[DatasetType]:
        ...

    def collection(self, name: str) -> CollectionRecord:
        """The record of collection ``name`` (`MissingCollectionError` if absent)."""
        ...

    def query_collections(self, pattern: str | Sequence[str] = "*",
                          types: Iterable[CollectionType] | None = None) -> list[CollectionRecord]:
        ...

    def chain_children(self, name: str) -> list[str]:
        ...

    def resolve_collections(self, collections: str | Sequence[str]) -> list[CollectionRecord]:
        """The flattened search path of ``collections`` (globs expanded, chains followed)."""
        ...

    def find_dataset(self, dataset_type: str, data_id: DataCoordinate,
                     collections: str | Sequence[str]) -> FoundDataset | None:
        """The first dataset of the type with that data ID along the search path ``collections``
        (names, globs, chains: resolved in the same snapshot as the lookup), with its files."""
        ...

    def find_datasets(self, dataset_type: str, data_ids: Sequence[DataCoordinate],
                      collections: str | Sequence[str]) -> dict[DataCoordinate, DatasetRef]:
        """`find_dataset` for many data IDs of one type, in one query (those not found are absent)."""
        ...

    def query_datasets(self, dataset_type: str | DatasetType, *, collections: Any, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None, find_first: bool | None = None,
                       **kwargs: Any) -> list[DatasetRef]:
        """Refs of one type in ``collections`` matching data ID constraints (``data_id`` and keywords,
        aliases accepted) and a where-expression; ``find_first`` (default: unless ``collections`` has a
        glob) keeps the first along the search path."""
        ...

    def query_data_ids(self, dimensions: str | Iterable[str], *, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None,
                       datasets: str | Iterable[str] | None = None, collections: Any = None,
                       **kwargs: Any) -> list[DataCoordinate]:
        """Data IDs of ``dimensions`` (with implied values) matching the constraints, and having
        ``datasets`` in ``collections`` when given."""
        ...

    def query_dimension_records(self, element: str, *, where: str | None = None, bind: Mapping[str, Any] | None = None,
                                data_id: Any = None, **kwargs: Any) -> list[DimensionRecord]:
        """Records of ``element`` matching the constraints, in primary-key order."""
        ...

    def files_of(self, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FileRecord]]:
        """The file records of datasets (those not registered are absent from the answer)."""
        ...

    def explain_not_found(self, dataset_type: str, data_id: DataCoordinate, collections: str | Sequence[str]) -> str:
        """The message of a dataset not found: where it was looked for, and the collections that
        do hold it or the dimension record that is missing."""
        ...

    def refresh(self) -> None:
        """See what other processes registered since this registry cached it."""
        ...
