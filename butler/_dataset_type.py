"""Dataset types: a name, the dimensions of its data IDs and the storage class of its objects.

Dataset types are plain values that code defines at import time (``RAW = DatasetType("raw",
("instrument", "exposure", "detector"), "NumpyArray")``) and registers in a repository with
``Butler.register_dataset_type``; no per-camera file lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import DatasetTypeError, InvalidNameError

if TYPE_CHECKING:
    from .dimensions import DimensionGroup, DimensionUniverse

__all__ = ["NAME_LENGTH", "DatasetType", "split_component"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

NAME_LENGTH = 128
"""Longest dataset type name: the registry column's length, the same on every backend."""


def split_component(name: str) -> tuple[str, str | None]:
    """Split ``"calexp.wcs"`` into ``("calexp", "wcs")``; a plain name gives ``(name, None)``."""
    parent, dot, component = name.partition(".")
    return parent, (component if dot else None)


class DatasetType:
    """An immutable dataset type definition; equality compares name, dimensions and storage class."""

    __slots__ = ("_hash", "dimensions", "is_calibration", "name", "storage_class")

    name: str
    dimensions: tuple[str, ...]
    storage_class: str
    is_calibration: bool
    _hash: int

    def __init__(
        self, name: str, dimensions: Iterable[str], storage_class: str, *, is_calibration: bool = False
    ) -> None:
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise DatasetTypeError(
                f"invalid dataset type name {name!r}: use letters, digits and '_', not starting with a digit "
                "(components are named 'parent.component' and come from the storage class)"
            )
        if len(name) > NAME_LENGTH:
            raise InvalidNameError(
                f"dataset type name {name[:40]!r}... is {len(name)} characters long; at most {NAME_LENGTH} "
                "fit in the registry (the same limit on every backend)"
            )
        if isinstance(dimensions, str):
            raise DatasetTypeError(
                f"dimensions of dataset type {name!r} must be a sequence of names, not the string {dimensions!r}"
            )
        dims = tuple(dict.fromkeys(dimensions))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dimensions", dims)
        object.__setattr__(self, "storage_class", storage_class)
        object.__setattr__(self, "is_calibration", bool(is_calibration))
        object.__setattr__(self, "_hash", hash((name, frozenset(dims), storage_class)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("DatasetType is immutable")

    def group(self, universe: DimensionUniverse) -> DimensionGroup:
        """The dimension group of this type's data IDs in ``universe``."""
        try:
            return universe.group(self.dimensions)
        except KeyError as err:
            raise DatasetTypeError(f"dataset type {self.name!r}: {err.args[0]}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetType):
            return NotImplemented
        return (
            self.name == other.name
            and set(self.dimensions) == set(other.dimensions)
            and self.storage_class == other.storage_class
            and self.is_calibration == other.is_calibration
        )

    def __hash__(self) -> int:
        return self._hash

    def describe_difference(self, other: DatasetType) -> str:
        """Human-readable list of what differs between two definitions of the same name."""
        diffs = []
        if set(self.dimensions) != set(other.dimensions):
            diffs.append(f"dimensions {list(self.dimensions)} != {list(other.dimensions)}")
        if self.storage_class != other.storage_class:
            diffs.append(f"storage class {self.storage_class!r} != {other.storage_class!r}")
        if self.is_calibration != other.is_calibration:
            diffs.append(f"is_calibration {self.is_calibration} != {other.is_calibration}")
        return "; ".join(diffs)

    def __repr__(self) -> str:
        calib = ", is_calibration=True" if self.is_calibration else ""
        return f"DatasetType({self.name!r}, {self.dimensions!r}, {self.storage_class!r}{calib})"

    def __reduce__(self) -> tuple[Callable[[str, tuple[str, ...], str, bool], DatasetType],
                                  tuple[str, tuple[str, ...], str, bool]]:
        return (_dataset_type_from_pickle, (self.name, self.dimensions, self.storage_class, self.is_calibration))


def _dataset_type_from_pickle(
    name: str, dimensions: tuple[str, ...], storage_class: str, is_calibration: bool
) -> DatasetType:
    return DatasetType(name, dimensions, storage_class, is_calibration=is_calibration)
