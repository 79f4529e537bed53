"""Dimensions: the keys of data IDs, their record tables, and data IDs themselves."""

from ._coordinate import DataCoordinate, coerce_value, validate_path_value
from ._records import DimensionRecord
from ._universe import DimensionElement, DimensionGroup, DimensionUniverse, FieldSpec

__all__ = [
    "DataCoordinate",
    "DimensionElement",
    "DimensionGroup",
    "DimensionRecord",
    "DimensionUniverse",
    "FieldSpec",
    "coerce_value",
    "validate_path_value",
]
