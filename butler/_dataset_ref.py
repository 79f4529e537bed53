"""Dataset refs: the (dataset type, data ID, run, id) that names one stored dataset.

Refs are small and immutable so they can be shipped to workers by the thousand; a pickled ref
holds only names, the data ID values and the 16-byte id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ._dataset_type import DatasetType
from .dimensions import DataCoordinate, DimensionUniverse

__all__ = ["DatasetRef"]


class DatasetRef:
    """A reference to one dataset; ``component`` set means a component of it (``calexp.wcs``)."""

    # Order matters: registry/_datasets.py's fast ref construction checks this exact layout.
    __slots__ = ("dataset_type", "data_id", "run", "id", "component")  # noqa: RUF023

    dataset_type: DatasetType
    data_id: DataCoordinate
    run: str
    id: uuid.UUID
    component: str | None

    def __init__(
        self,
        dataset_type: DatasetType,
        data_id: DataCoordinate,
        run: str,
        id: uuid.UUID | None = None,
        component: str | None = None,
    ) -> None:
        object.__setattr__(self, "dataset_type", dataset_type)
        object.__setattr__(self, "data_id", data_id)
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "id", id if id is not None else uuid.uuid4())
        object.__setattr__(self, "component", component)

    @classmethod
    def _trusted(
        cls, dataset_type: DatasetType, data_id: DataCoordinate, run: str, id: uuid.UUID
    ) -> DatasetRef:
        self = object.__new__(cls)
        sa = object.__setattr__
        sa(self, "dataset_type", dataset_type)
        sa(self, "data_id", data_id)
        sa(self, "run", run)
        sa(self, "id", id)
        sa(self, "component", None)
        return self

    @classmethod
    def unchecked(cls, dataset_type: DatasetType, data_id: DataCoordinate, run: str, id: uuid.UUID) -> DatasetRef:
        """A ref from parts already known to be valid (a normalised data ID of the type's dimensions, a
        validated run name), without checking them again: for bulk paths (planners predicting
        thousands of outputs) where the checks would cost more than the rest."""
        return cls._trusted(dataset_type, data_id, run, id)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DatasetRef is immutable")

    @property
    def dataset_type_name(self) -> str:
        return self.dataset_type.name

    def make_component(self, component: str) -> DatasetRef:
        return DatasetRef(self.dataset_type, self.data_id, self.run, self.id, component)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetRef):
            return NotImplemented
        return self.id == other.id and self.component == other.component

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        name = self.dataset_type.name + (f".{self.component}" if self.component else "")
        return f"DatasetRef({name!r}, {self.data_id}, run={self.run!r}, id={self.id})"

    def __reduce__(self) -> tuple[Callable[..., DatasetRef], _PickledRef]:
        dt = self.dataset_type
        return (
            _ref_from_pickle,
            (
                dt.name,
                dt.dimensions,
                dt.storage_class,
                self.data_id.group.universe.version,
                self.data_id.values,
                self.run,
                self.id.bytes,
                self.component,
            ),
        )


_PickledRef = tuple[str, tuple[str, ...], str, int, tuple[Any, ...], str, bytes, str | None]
"""What a pickled ref holds: type name, dimensions, storage class, universe version, data ID values,
run, id bytes, component."""


def _ref_from_pickle(
    name: str,
    dimensions: tuple[str, ...],
    storage_class: str,
    version: int,
    values: tuple[Any, ...],
    run: str,
    id_bytes: bytes,
    component: str | None,
) -> DatasetRef:
    universe = DimensionUniverse.from_version(version)
    dt = DatasetType(name, dimensions, storage_class)
    data_id = DataCoordinate.from_values(dt.group(universe), values)
    ref = DatasetRef._trusted(dt, data_id, run, uuid.UUID(bytes=id_bytes))
    if component:
        object.__setattr__(ref, "component", component)
    return ref
