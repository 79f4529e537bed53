"""Dimension records: one row of an element's table, returned by record queries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._coordinate import DataCoordinate
from ._universe import DimensionElement, DimensionUniverse

__all__ = ["DimensionRecord"]


class DimensionRecord:
    """A read-only record with attribute access to its fields (``record.exposure_time``)."""

    __slots__ = ("_values", "element")

    def __init__(self, element: DimensionElement, values: dict[str, Any]):
        self.element = element
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"{self.element.name} record has no field {name!r}; fields: {list(self._values)}"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    @property
    def data_id(self) -> DataCoordinate:
        """The data ID of this record's element (dimension elements only)."""
        element = self.element
        group = element.universe.group(element.required)
        key = element.key.name if element.is_dimension and element.key is not None else None
        values = tuple(self._values[key if (n == element.name and key) else n] for n in group.required)
        return DataCoordinate.from_values(group, values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DimensionRecord) and other.element is self.element and other._values == self._values

    def __hash__(self) -> int:
        return hash((self.element.name, tuple(self._values.get(k) for k in self.element.primary_key_columns)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if k != "region")
        return f"{self.element.name}({fields})"

    def __reduce__(self) -> tuple[Callable[..., DimensionRecord], tuple[DimensionUniverse, str, dict[str, Any]]]:
        return (_record_from_pickle, (self.element.universe, self.element.name, self._values))


def _record_from_pickle(universe: DimensionUniverse, name: str, values: dict[str, Any]) -> DimensionRecord:
    return DimensionRecord(universe[name], values)
