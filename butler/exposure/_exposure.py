"""The `Exposure`: an image with its mask, variance, WCS, PSF, photometric calibration and metadata.

Planes are 2-D arrays of one shape: numpy arrays, or dask arrays when read with
``parameters={"lazy": True}`` (nothing is converted, so a lazy exposure stays
lazy). ``origin`` is the parent-frame position (x, y) of pixel ``[0, 0]``; an
exposure cut out of a larger one keeps its place, and its WCS is that of the
cut-out pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._box import Box, parse_bbox
from ._wcs import is_wcs, slice_wcs

__all__ = ["COMPONENTS", "PLANES", "STANDALONE_COMPONENTS", "Exposure"]

PLANES = ("image", "mask", "variance")
"""The pixel planes, in storage order."""
COMPONENTS = (*PLANES, "wcs", "psf", "photo_calib", "metadata")
"""Every component of the ``Exposure`` storage class."""
STANDALONE_COMPONENTS = frozenset({"wcs", "psf", "photo_calib", "metadata"})
"""Components a pipeline may write on their own after the exposure (recalibrations)."""


def _plane(name: str, value: Any) -> Any:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        value = np.asarray(value)
    if len(value.shape) != 2:
        raise ValueError(f"Exposure {name} must be a 2-D array, got shape {tuple(value.shape)}")
    if value.dtype.kind not in "biuf":
        raise TypeError(f"Exposure {name} must hold numbers, got dtype {value.dtype}")
    return value


class Exposure:
    """An image with mask, variance, WCS, PSF kernel, photometric calibration and metadata.

    ``mask`` defaults to zeros (int32) and ``variance`` to zeros of the image
    dtype; the other components default to absent (``None``, or ``{}`` for
    metadata).
    """

    __slots__ = ("image", "mask", "metadata", "origin", "photo_calib", "psf", "variance", "wcs")

    def __init__(
        self,
        image: Any,
        mask: Any = None,
        variance: Any = None,
        *,
        wcs: Any = None,
        psf: Any = None,
        photo_calib: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        origin: tuple[int, int] = (0, 0),
    ) -> None:
        image = _plane("image", image)
        shape = tuple(image.shape)
        mask = np.zeros(shape, np.int32) if mask is None else _plane("mask", mask)
        if mask.dtype.kind not in "iu":
            raise TypeError(f"Exposure mask must hold integers (bit flags), got dtype {mask.dtype}")
        variance = np.zeros(shape, image.dtype) if variance is None else _plane("variance", variance)
        for name, plane in (("mask", mask), ("variance", variance)):
            if tuple(plane.shape) != shape:
                raise ValueError(f"Exposure {name} has shape {tuple(plane.shape)}, the image {shape}")
        if wcs is not None and not is_wcs(wcs):
            raise TypeError(f"Exposure wcs must be an astropy.wcs.WCS or None, not {type(wcs).__name__}")
        if psf is not None:
            psf = np.asarray(psf)
            if psf.ndim != 2 or psf.dtype.kind not in "iuf":
                raise ValueError(f"Exposure psf must be a 2-D numeric kernel, got shape {psf.shape} dtype {psf.dtype}")
        if photo_calib is not None:
            if isinstance(photo_calib, bool) or not isinstance(photo_calib, (int, float, np.number)):
                raise TypeError(f"Exposure photo_calib must be a number or None, not {photo_calib!r}")
            photo_calib = float(photo_calib)
            if not math.isfinite(photo_calib):
                raise ValueError(f"Exposure photo_calib must be finite, got {photo_calib}")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, Mapping):
            raise TypeError(f"Exposure metadata must be a mapping, not {type(metadata).__name__}")
        x0, y0 = origin
        self.image = image
        self.mask = mask
        self.variance = variance
        self.wcs = wcs
        self.psf = psf
        self.photo_calib = photo_calib
        self.metadata = dict(metadata)
        self.origin = (int(x0), int(y0))

    @property
    def shape(self) -> tuple[int, int]:
        """numpy shape of the planes, ``(height, width)``."""
        height, width = self.image.shape
        return (height, width)

    @property
    def bbox(self) -> Box:
        """The pixels covered, in the parent frame."""
        return Box.from_shape(self.shape, self.origin)

    @property
    def is_lazy(self) -> bool:
        """Whether the planes are dask arrays (not yet read)."""
        return not isinstance(self.image, np.ndarray)

    def cutout(self, bbox: Box) -> Exposure:
        """The part of this exposure inside ``bbox`` (parent frame); planes are views."""
        parse_bbox(bbox, self.bbox, where="this exposure")
        rows, columns = bbox.local_slices(self.bbox)
        return Exposure(
            self.image[rows, columns], self.mask[rows, columns], self.variance[rows, columns],
            wcs=None if self.wcs is None else slice_wcs(self.wcs, rows, columns),
            psf=self.psf, photo_calib=self.photo_calib, metadata=self.metadata,
            origin=(bbox.x0, bbox.y0),
        )

    def replace(self, **components: Any) -> Exposure:
        """A copy with some components replaced (planes are shared, not copied)."""
        fields = {name: getattr(self, name) for name in (*COMPONENTS, "origin")}
        unknown = sorted(set(components) - set(fields))
        if unknown:
            raise TypeError(f"Exposure has no component(s) {unknown}; components: {sorted(fields)}")
        fields.update(components)
        image = fields.pop("image")
        mask = fields.pop("mask")
        variance = fields.pop("variance")
        return Exposure(image, mask, variance, **fields)

    def get_component(self, name: str) -> Any:
        if name not in COMPONENTS:
            raise AttributeError(f"Exposure has no component {name!r}; components: {list(COMPONENTS)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else str(self.image.dtype)
        return (f"Exposure({self.bbox}, {kind}, wcs={'yes' if self.wcs is not None else 'no'}, "
                f"psf={None if self.psf is None else tuple(self.psf.shape)}, photo_calib={self.photo_calib}, "
                f"metadata keys={len(self.metadata)})")
