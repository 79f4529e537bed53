"""The discrete skymap: tracts on a given list of centres (deep fields, test areas).

Each tract is the square tangent-plane box that holds a circle of ``radius_deg`` around its centre,
plus the overlap. A position belongs to the tract with the nearest centre (as in LSST's
BaseSkyMap.findTract); positions far from every centre still get the nearest tract, so
``find_patch`` reports them as outside (an error, or -1 with ``strict=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _geometry as geo
from ._base import SkyMap, check_float

__all__ = ["DiscreteSkyMap"]

_CHUNK = 4_000_000  # positions x tracts per block of the nearest-centre search


class DiscreteSkyMap(SkyMap):
    """Tracts centred on explicit ``centers`` [(ra, dec), ...] in degrees; tract ids follow the list."""

    kind = "discrete"

    def __init__(self, name: str, centers: Sequence[Sequence[float]], *, radius_deg: float,
                 patch_grid: Sequence[int] = (10, 10), pixel_scale_arcsec: float = 0.2,
                 tract_overlap_deg: float = 0.02, patch_border_pixels: int = 100) -> None:
        super().__init__(name, patch_grid=patch_grid, pixel_scale_arcsec=pixel_scale_arcsec,
                         tract_overlap_deg=tract_overlap_deg, patch_border_pixels=patch_border_pixels)
        self.radius_deg = check_float("radius_deg", radius_deg, low=0.0, high=60.0, low_open=True)
        if isinstance(centers, (str, bytes)) or not isinstance(centers, Sequence) or not centers:
            raise ValueError(f"centers must be a non-empty list of (ra, dec) pairs in degrees, got {centers!r}")
        canonical = []
        for i, center in enumerate(centers):
            if not isinstance(center, Sequence) or len(center) != 2:
                raise ValueError(f"centers[{i}] must be an (ra, dec) pair in degrees, got {center!r}")
            ra = check_float(f"centers[{i}] ra", center[0], low=-360.0, high=720.0) % 360.0
            dec = check_float(f"centers[{i}] dec", center[1], low=-90.0, high=90.0)
            canonical.append((ra, dec))
        self.centers: tuple[tuple[float, float], ...] = tuple(canonical)
        self._vectors = geo.radec_to_vectors([c[0] for c in canonical], [c[1] for c in canonical])

    def _own_config(self) -> dict[str, Any]:
        return {"centers": [list(c) for c in self.centers], "radius_deg": self.radius_deg}

    @property
    def num_tracts(self) -> int:
        return len(self.centers)

    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([c[0] for c in self.centers]), np.array([c[1] for c in self.centers])

    def _tract_half_extents(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.full(self.num_tracts, math.tan(math.radians(self.radius_deg)))
        return half, half.copy()

    def _find_tract(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        v = geo.radec_to_vectors(ra.ravel(), dec.ravel())
        out = np.empty(len(v), dtype=np.int64)
        step = max(1, _CHUNK // self.num_tracts)
        for start in range(0, len(v), step):  # blocks bound the (positions x tracts) matrix
            out[start : start + step] = np.argmax(v[start : start + step] @ self._vectors.T, axis=1)
        return out.reshape(ra.shape)
