"""The rings skymap: declination rings of tracts plus two polar caps, as in LSST's RingsSkyMap.

The sky is cut into ``num_rings + 1`` bands of declination of height ``ring = 180 / (num_rings + 1)``
degrees; the two half-bands at the poles make the polar caps (tract 0 at the south pole, the last
tract at the north pole). Ring ``r`` (0 = southernmost) spans ``dec`` from ``ring * (r + 0.5) - 90``
to ``ring * (r + 1.5) - 90`` and holds ``int(360 cos(dec_edge) / ring) + 1`` tracts, where
``dec_edge`` is the ring edge nearer the equator, so tracts are at most ``ring`` wide there (roughly
square). Tract ``i`` of ring ``r`` is centred on the ring's middle dec at ``ra_start + 360 i / n``,
and owns the RA half-open cell around it. Ids run from the south cap, ring by ring, to the north cap
(the same numbering and tract centres as LSST's rings skymap for the same ``num_rings``).

The nominal area of a tract is the larger of a circle of radius ``ring / 2`` (LSST's choice) and
the tract's (ra, dec) cell as seen in its tangent plane, so every position's tract, as found by
``find_tract``, holds it in its inner box, and ``find_patch`` always finds a patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _geometry as geo
from ._base import SkyMap, check_float, check_int

__all__ = ["RingsSkyMap"]

_EDGE_SAMPLES = 33  # per cell edge; the extremes are at corners and edge middles, which are sampled


class RingsSkyMap(SkyMap):
    """Declination rings of tracts like LSST's rings skymap (``num_rings=120``: 18,938 tracts)."""

    kind = "rings"

    def __init__(self, name: str, num_rings: int, *, patch_grid: Sequence[int] = (10, 10),
                 pixel_scale_arcsec: float = 0.2, tract_overlap_deg: float = 0.02, patch_border_pixels: int = 100,
                 ra_start_deg: float = 0.0) -> None:
        super().__init__(name, patch_grid=patch_grid, pixel_scale_arcsec=pixel_scale_arcsec,
                         tract_overlap_deg=tract_overlap_deg, patch_border_pixels=patch_border_pixels)
        self.num_rings = check_int("num_rings", num_rings, low=1, high=100_000)
        self.ra_start_deg = check_float("ra_start_deg", ra_start_deg, low=-360.0, high=360.0) % 360.0
        self._ring_size = math.pi / (self.num_rings + 1)
        counts = []
        for r in range(self.num_rings):
            start = self._ring_size * (r + 0.5) - 0.5 * math.pi
            edge = min(abs(start), abs(start + self._ring_size))
            counts.append(int(2.0 * math.pi * math.cos(edge) / self._ring_size) + 1)
        self.ring_counts = np.array(counts, dtype=np.int64)
        """Number of tracts in each ring, south to north."""
        self.ring_offsets = 1 + np.concatenate([[0], np.cumsum(self.ring_counts)[:-1]]).astype(np.int64)
        """Id of the first tract of each ring."""
        self._num_tracts = int(self.ring_counts.sum()) + 2

    def _own_config(self) -> dict[str, Any]:
        return {"num_rings": self.num_rings, "ra_start_deg": self.ra_start_deg}

    @property
    def num_tracts(self) -> int:
        return self._num_tracts

    @property
    def ring_size_deg(self) -> float:
        return math.degrees(self._ring_size)

    def ring_of(self, tract_id: int) -> tuple[int, int | None]:
        """(ring, index in ring) of a tract; the caps are ring -1 and ``num_rings`` with index None."""
        tract_id = self._check_tract(tract_id)
        if tract_id == 0:
            return -1, None
        if tract_id == self._num_tracts - 1:
            return self.num_rings, None
        ring = int(np.searchsorted(self.ring_offsets, tract_id, side="right")) - 1
        return ring, tract_id - int(self.ring_offsets[ring])

    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        ring = np.repeat(np.arange(self.num_rings), self.ring_counts)
        index = np.arange(self._num_tracts - 2) - (self.ring_offsets[ring] - 1)
        ra = (self.ra_start_deg + 360.0 * index / self.ring_counts[ring]) % 360.0
        dec = np.degrees(self._ring_size * (ring + 1) - 0.5 * math.pi)
        return np.concatenate([[0.0], ra, [0.0]]), np.concatenate([[-90.0], dec, [90.0]])

    def _tract_half_extents(self) -> tuple[np.ndarray, np.ndarray]:
        radius = math.tan(0.5 * self._ring_size)
        hx = np.full(self.num_rings, radius)
        hy = np.full(self.num_rings, radius)
        s = np.linspace(-1.0, 1.0, _EDGE_SAMPLES)
        for r in range(self.num_rings):  # one cell shape per ring: tracts of a ring differ only in ra
            dec_c = self._ring_size * (r + 1) - 0.5 * math.pi
            half_ra = math.pi / self.ring_counts[r]
            half_dec = 0.5 * self._ring_size
            ra = np.concatenate([s * half_ra, s * half_ra, np.full_like(s, -half_ra), np.full_like(s, half_ra)])
            dec = dec_c + np.concatenate([np.full_like(s, -half_dec), np.full_like(s, half_dec), s * half_dec,
                                          s * half_dec])
            p, e, n = geo.tangent_basis(0.0, math.degrees(dec_c))
            xi, eta = geo.project(geo.radec_to_vectors(np.degrees(ra), np.degrees(dec)), p, e, n)
            hx[r] = max(hx[r], float(np.max(np.abs(xi))))
            hy[r] = max(hy[r], float(np.max(np.abs(eta))))
        hx = np.repeat(hx, self.ring_counts)
        hy = np.repeat(hy, self.ring_counts)
        return np.concatenate([[radius], hx, [radius]]), np.concatenate([[radius], hy, [radius]])

    def _find_tract(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        first = 0.5 * self._ring_size - 0.5 * math.pi
        ring = np.floor((np.radians(dec) - first) / self._ring_size)
        ring = np.clip(ring, -1, self.num_rings).astype(np.int64)
        r = np.clip(ring, 0, self.num_rings - 1)
        count = self.ring_counts[r]
        offset = np.radians((ra - self.ra_start_deg) % 360.0) / (2.0 * math.pi)
        index = np.floor(offset * count + 0.5).astype(np.int64) % count
        tract = self.ring_offsets[r] + index
        tract = np.where(ring < 0, 0, tract)
        return np.where(ring >= self.num_rings, self._num_tracts - 1, tract)
