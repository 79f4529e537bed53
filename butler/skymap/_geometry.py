"""Tangent-plane (gnomonic) geometry for skymaps, written by hand with numpy.

Why by hand: registering a full-sky skymap needs the corners of about two million patches;
astropy's WCS costs microseconds per call and is slow to import, while the gnomonic
projection is three dot products per point and vectorises over whole tracts.

Conventions (they match the astropy WCS built by ``make_tan_wcs``, which the tests check):
pixel centres are at integer, 0-based coordinates; ``x`` grows towards the west (RA decreases)
and ``y`` towards the north, i.e. ``CD = diag(-scale, +scale)``. For a tract centred on unit
vector ``p`` with east/north unit vectors ``e``/``n``, the tangent-plane coordinates of a pixel
are ``xi = -(x - crpix_x) * scale`` and ``eta = (y - crpix_y) * scale`` (radians), and its sky
position is ``normalise(p + xi * e + eta * n)``.

Gnomonic projection maps great circles to straight lines, so a pixel box is *exactly* the
spherical quadrilateral whose great-circle edges join its four corners: a sphgeom
``ConvexPolygon`` of four vertices, built here without a convex-hull computation by encoding
the (already counter-clockwise) vertices and decoding them, which is 4-5x faster than the
constructor.

``TractInfo`` and ``PatchInfo`` are light views (a skymap and an id) over these helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from lsst.sphgeom import ConvexPolygon

if TYPE_CHECKING:
    from astropy.wcs import WCS

    from ._base import SkyMap

__all__ = [
    "Box",
    "PatchInfo",
    "TractInfo",
    "box_corners",
    "deproject",
    "encode_polygons",
    "make_tan_wcs",
    "polygons_from_vertices",
    "project",
    "radec_to_vectors",
    "tangent_basis",
    "vectors_to_radec",
]

_TYPE_CODE = ord("p")  # sphgeom's ConvexPolygon encoding: type byte, then 3 little-endian doubles per vertex


@dataclass(frozen=True, slots=True)
class Box:
    """An integer pixel box, half-open: pixels ``x_min <= x < x_max`` and ``y_min <= y < y_max``.

    Its continuous extent runs from ``x_min - 0.5`` to ``x_max - 0.5`` (pixel centres are integers).
    """

    x_min: int
    y_min: int
    x_max: int
    y_max: int

    @property
    def width(self) -> int:
        return self.x_max - self.x_min

    @property
    def height(self) -> int:
        return self.y_max - self.y_min

    def contains(self, x: Any, y: Any) -> Any:
        """Whether continuous pixel positions fall in the box (vectorised)."""
        ix = np.floor(np.asarray(x, dtype=float) + 0.5)
        iy = np.floor(np.asarray(y, dtype=float) + 0.5)
        return (ix >= self.x_min) & (ix < self.x_max) & (iy >= self.y_min) & (iy < self.y_max)

    def corners(self) -> np.ndarray:
        """The four continuous corners, shape (4, 2), in the order that is counter-clockwise on the sky."""
        return box_corners(np.array(self.x_min), np.array(self.y_min), np.array(self.x_max), np.array(self.y_max))

    def to_tuple(self) -> tuple[int, int, int, int]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


def box_corners(x_min: np.ndarray, y_min: np.ndarray, x_max: np.ndarray, y_max: np.ndarray) -> np.ndarray:
    """Continuous corners (..., 4, 2) of integer boxes, counter-clockwise on the sky seen from outside.

    With x towards the west, (x0, y0) -> (x0, y1) -> (x1, y1) -> (x1, y0) runs counter-clockwise in
    the (east, north) tangent plane, which is what sphgeom expects for polygon vertices.
    """
    x0 = np.asarray(x_min, dtype=float) - 0.5
    y0 = np.asarray(y_min, dtype=float) - 0.5
    x1 = np.asarray(x_max, dtype=float) - 0.5
    y1 = np.asarray(y_max, dtype=float) - 0.5
    xs = np.stack([x0, x0, x1, x1], axis=-1)
    ys = np.stack([y0, y1, y1, y0], axis=-1)
    return np.stack([xs, ys], axis=-1)


def radec_to_vectors(ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Unit vectors (..., 3) for positions in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def vectors_to_radec(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees, ra in [0, 360), of vectors (..., 3) (need not be normalised)."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return ra, dec


def tangent_basis(ra_deg: Any, dec_deg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``p``, east ``e`` and north ``n`` unit vectors (..., 3) of tangent planes.

    At the poles the basis follows the ``ra_deg`` meridian (north of the north pole is away from
    that meridian), the limit of the basis as dec approaches the pole, and what astropy does with
    ``LONPOLE = 180``.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    sin_ra, cos_ra = np.sin(ra), np.cos(ra)
    sin_dec, cos_dec = np.sin(dec), np.cos(dec)
    p = np.stack([cos_dec * cos_ra, cos_dec * sin_ra, sin_dec], axis=-1)
    e = np.stack([-sin_ra, cos_ra, np.zeros_like(ra)], axis=-1)
    n = np.stack([-sin_dec * cos_ra, -sin_dec * sin_ra, cos_dec], axis=-1)
    return p, e, n


def project(v: np.ndarray, p: np.ndarray, e: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic tangent-plane coordinates (xi east, eta north; radians-like) of vectors ``v``.

    Points on or behind the plane's horizon (90 degrees or more from ``p``) come back as NaN.
    """
    d = np.einsum("...i,...i->...", v, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d > 0, 1.0 / d, np.nan)
    return np.einsum("...i,...i->...", v, e) * inv, np.einsum("...i,...i->...", v, n) * inv


def deproject(xi: np.ndarray, eta: np.ndarray, p: np.ndarray, e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) of tangent-plane coordinates; ``p``, ``e``, ``n`` broadcast against them."""
    v: np.ndarray = p + xi[..., None] * e + eta[..., None] * n
    v /= np.sqrt(np.einsum("...i,...i->...", v, v))[..., None]
    return v


def encode_polygons(vertices: np.ndarray) -> list[bytes]:
    """sphgeom encodings of convex polygons given as counter-clockwise unit vectors (N, K, 3).

    The registry stores these bytes; producing them directly avoids a Python call per vertex.
    """
    raw, size = _encode(vertices)
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def polygons_from_vertices(vertices: np.ndarray) -> list[ConvexPolygon]:
    """ConvexPolygons of counter-clockwise unit vectors (N, K, 3), without a convex-hull pass."""
    raw, size = _encode(vertices)
    decode = ConvexPolygon.decode
    # sphgeom's stubs say decode returns a Region; it returns the encoded subclass, here ConvexPolygon.
    return [decode(raw[i : i + size]) for i in range(0, len(raw), size)]  # type: ignore[misc]


def _encode(vertices: np.ndarray) -> tuple[bytes, int]:
    v = np.ascontiguousarray(vertices, dtype="<f8")
    if v.ndim != 3 or v.shape[2] != 3 or v.shape[1] < 3:
        raise ValueError(f"polygon vertices must have shape (N, K >= 3, 3), got {v.shape}")
    count, k = v.shape[0], v.shape[1]
    size = 1 + 24 * k
    buf = np.empty((count, size), dtype=np.uint8)
    buf[:, 0] = _TYPE_CODE
    buf[:, 1:] = v.reshape(count, 3 * k).view(np.uint8)
    return buf.tobytes(), size


def make_tan_wcs(ra_deg: float, dec_deg: float, crpix_x: float, crpix_y: float, scale_deg: float,
                 width: int, height: int) -> WCS:
    """An astropy TAN WCS with this module's conventions (0-based ``crpix`` in, FITS 1-based stored)."""
    from astropy.wcs import WCS  # lazy: importing the skymap package must not import astropy

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [ra_deg, dec_deg]
    wcs.wcs.crpix = [crpix_x + 1.0, crpix_y + 1.0]
    wcs.wcs.cd = [[-scale_deg, 0.0], [0.0, scale_deg]]
    wcs.wcs.lonpole = 180.0
    wcs.wcs.set()
    wcs.pixel_shape = (width, height)
    return wcs


class TractInfo:
    """One tract of a skymap: centre, TAN WCS, pixel boxes, regions and patches (a light view)."""

    __slots__ = ("_skymap", "_wcs", "id")

    def __init__(self, skymap: SkyMap, tract_id: int) -> None:
        self._skymap = skymap
        self.id = tract_id
        self._wcs: WCS | None = None

    @property
    def center(self) -> tuple[float, float]:
        """(ra, dec) of the tract centre (its WCS reference point), degrees."""
        t = self._skymap._table
        return float(t.ra[self.id]), float(t.dec[self.id])

    @property
    def bbox(self) -> Box:
        """The whole pixel box: the nominal area plus the tract overlap (the outer box)."""
        t = self._skymap._table
        return Box(0, 0, int(t.width[self.id]), int(t.height[self.id]))

    @property
    def inner_bbox(self) -> Box:
        """``bbox`` without the overlap margin on each side."""
        m, b = self._skymap.overlap_pixels, self.bbox
        return Box(m, m, b.x_max - m, b.y_max - m)

    @property
    def crpix(self) -> tuple[float, float]:
        """0-based pixel position of the centre (the middle of ``bbox``)."""
        b = self.bbox
        return (b.width - 1) / 2.0, (b.height - 1) / 2.0

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self._skymap.patch_grid

    @property
    def patch_size(self) -> tuple[int, int]:
        """Inner patch size in pixels (the grid divides ``bbox`` exactly)."""
        t = self._skymap._table
        return int(t.patch_w[self.id]), int(t.patch_h[self.id])

    @property
    def num_patches(self) -> int:
        return self._skymap.num_patches

    @property
    def wcs(self) -> WCS:
        """astropy TAN WCS of the tract (built on first use; 0-based pixels as in astropy's API)."""
        if self._wcs is None:
            ra, dec = self.center
            cx, cy = self.crpix
            b = self.bbox
            self._wcs = make_tan_wcs(ra, dec, cx, cy, self._skymap.pixel_scale_arcsec / 3600.0, b.width, b.height)
        return self._wcs

    def box_region(self, box: Box) -> ConvexPolygon:
        """The sky region of a pixel box of this tract (exact: TAN maps box edges to great circles)."""
        vertices = self._skymap._pixels_to_vectors(np.array(self.id), box.corners())
        return polygons_from_vertices(vertices[None])[0]

    @property
    def inner_region(self) -> ConvexPolygon:
        return self.box_region(self.inner_bbox)

    @property
    def outer_region(self) -> ConvexPolygon:
        """The region the registry stores for the tract."""
        return self.box_region(self.bbox)

    def patch(self, patch: int | tuple[int, int]) -> PatchInfo:
        """A patch by id (``y * nx + x``) or by index ``(x, y)``."""
        nx, ny = self.patch_grid
        if isinstance(patch, tuple):
            x, y = patch
            if not (_is_index(x, nx) and _is_index(y, ny)):
                raise _index_error(f"tract {self.id} has no patch index {patch!r}; "
                                   f"valid indices are x in 0..{nx - 1}, y in 0..{ny - 1}")
            return PatchInfo(self, int(y) * nx + int(x))
        if not _is_index(patch, nx * ny):
            raise _index_error(f"tract {self.id} has no patch {patch!r}; valid patch ids are 0 to {nx * ny - 1}")
        return PatchInfo(self, int(patch))

    def __iter__(self) -> Iterator[PatchInfo]:
        return (PatchInfo(self, i) for i in range(self.num_patches))

    def __len__(self) -> int:
        return self.num_patches

    def sky_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._skymap.sky_to_pixel(self.id, ra, dec)

    def pixel_to_sky(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._skymap.pixel_to_sky(self.id, x, y)

    def find_patch(self, ra: Any, dec: Any, *, strict: bool = True) -> Any:
        return self._skymap.find_patch(self.id, ra, dec, strict=strict)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TractInfo) and other.id == self.id and other._skymap == self._skymap

    def __hash__(self) -> int:
        return hash((self._skymap.name, self.id))

    def __repr__(self) -> str:
        ra, dec = self.center
        return f"TractInfo(id={self.id}, center=({ra:.6f}, {dec:.6f}), bbox={self.bbox.to_tuple()})"


class PatchInfo:
    """One patch of a tract: an inner box from the patch grid and an outer box adding the border."""

    __slots__ = ("id", "tract")

    def __init__(self, tract: TractInfo, patch_id: int) -> None:
        self.tract = tract
        self.id = patch_id

    @property
    def index(self) -> tuple[int, int]:
        """(x, y) in the patch grid; ``id == y * nx + x``."""
        nx = self.tract.patch_grid[0]
        return self.id % nx, self.id // nx

    @property
    def inner_bbox(self) -> Box:
        (x, y), (w, h) = self.index, self.tract.patch_size
        return Box(x * w, y * h, (x + 1) * w, (y + 1) * h)

    @property
    def outer_bbox(self) -> Box:
        """Inner box plus ``patch_border_pixels`` on each side, clipped to the tract's box."""
        inner, tract, border = self.inner_bbox, self.tract.bbox, self.tract._skymap.patch_border_pixels
        return Box(max(inner.x_min - border, 0), max(inner.y_min - border, 0),
                   min(inner.x_max + border, tract.x_max), min(inner.y_max + border, tract.y_max))

    @property
    def inner_region(self) -> ConvexPolygon:
        return self.tract.box_region(self.inner_bbox)

    @property
    def outer_region(self) -> ConvexPolygon:
        """The region the registry stores for the patch."""
        return self.tract.box_region(self.outer_bbox)

    @property
    def wcs(self) -> WCS:
        """The tract's WCS (patches share their tract's pixel grid)."""
        return self.tract.wcs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatchInfo) and other.id == self.id and other.tract == self.tract

    def __hash__(self) -> int:
        return hash((self.tract, self.id))

    def __repr__(self) -> str:
        return f"PatchInfo(tract={self.tract.id}, id={self.id}, index={self.index}, inner={self.inner_bbox.to_tuple()})"


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(0 <= value < size)


def _index_error(message: str) -> Exception:
    from ._base import SkyMapIndexError  # the error class lives with the skymap base

    return SkyMapIndexError(message)
