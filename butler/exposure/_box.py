"""Integer pixel boxes: the ``bbox`` read parameter of images and exposures.

A `Box` is in the coordinates of the *parent* image: an exposure cut out at
``Box(x0=100, y0=200, ...)`` keeps that origin, and a box given to read a part of
it is in the same frame (the LSST "PARENT" convention). ``x`` is the column
(second numpy axis), ``y`` the row (first numpy axis).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

__all__ = ["Box", "parse_bbox"]


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"Box {name} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"Box {name} must be an integer, not {value!r} ({type(value).__name__})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Box:
    """A rectangle of whole pixels: ``[x0, x0 + width) x [y0, y0 + height)``.

    Raises ``ValueError`` for a negative or zero size and ``TypeError`` for
    non-integer values, so a box that could never select pixels fails where it is
    made, not deep inside a read.
    """

    x0: int
    y0: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "width", "height"):
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self} has a non-positive size; width and height must be >= 1")

    def __repr__(self) -> str:
        return f"Box(x0={self.x0}, y0={self.y0}, width={self.width}, height={self.height})"

    @property
    def x1(self) -> int:
        """One past the last column."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """One past the last row."""
        return self.y0 + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """numpy shape ``(height, width)``."""
        return (self.height, self.width)

    def contains(self, other: Box) -> bool:
        return (self.x0 <= other.x0 and other.x1 <= self.x1
                and self.y0 <= other.y0 and other.y1 <= self.y1)

    def local_slices(self, parent: Box) -> tuple[slice, slice]:
        """numpy slices selecting this box in an array that covers ``parent``."""
        return (slice(self.y0 - parent.y0, self.y1 - parent.y0),
                slice(self.x0 - parent.x0, self.x1 - parent.x0))

    def to_dict(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Box:
        return cls(x0=data["x0"], y0=data["y0"], width=data["width"], height=data["height"])

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], origin: tuple[int, int] = (0, 0)) -> Box:
        """The box of an array of numpy ``shape`` whose first pixel is at ``origin`` (x, y)."""
        return cls(x0=origin[0], y0=origin[1], width=shape[1], height=shape[0])


def parse_bbox(value: Any, bounds: Box, *, where: str) -> Box:
    """Validate the ``bbox`` read parameter against the image ``bounds``.

    A box not wholly inside the image is a ``ValueError`` naming both (no
    silent clipping: a caller asking for pixels that do not exist has a bug).
    """
    if not isinstance(value, Box):
        raise TypeError(f"parameter 'bbox' of {where} must be a butler.exposure.Box, not {type(value).__name__}")
    if not bounds.contains(value):
        raise ValueError(f"bbox {value} is not inside the image bounds {bounds} of {where}")
    return value
