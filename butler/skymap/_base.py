"""The skymap base class: tracts with tangent-plane pixel grids, cut into a grid of patches.

A subclass says only where its tracts are and how big their nominal (inner) areas are, and how a
sky position picks a tract. Everything else is shared and vectorised over a *tract table* (numpy
arrays of centres, tangent-plane bases and pixel sizes, one row per tract):

- a tract's pixel box is its nominal half-extent plus ``tract_overlap_deg`` on each side, rounded
  up so the ``patch_grid`` divides it; its WCS is TAN, centred on the tract centre;
- patch ``(x, y)`` (id ``y * nx + x``) has an inner box from the grid and an outer box that adds
  ``patch_border_pixels`` (clipped to the tract);
- registry regions are the outer boxes (a tract's whole pixel box, a patch's outer box), computed
  for all patches with numpy and turned into ConvexPolygons without a Python call per vertex.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from ..errors import DataIdError
from . import _geometry as geo
from ._geometry import TractInfo

if TYPE_CHECKING:
    from lsst.sphgeom import ConvexPolygon

    from ..dimensions._packers import DataIdPacker

__all__ = ["SkyMap", "SkyMapIndexError", "skymap_from_config"]

CONFIG_VERSION = 1
MAX_HALF_EXTENT_DEG = 80.0  # a gnomonic tract must stay well inside its hemisphere


class SkyMapIndexError(DataIdError, IndexError):
    """A tract or patch id outside the skymap (a ``ValueError`` and an ``IndexError``)."""


@dataclass(frozen=True, slots=True)
class TractTable:
    """Per-tract arrays (one row per tract id) that every vectorised operation indexes."""

    ra: np.ndarray  # centre, degrees
    dec: np.ndarray
    p: np.ndarray  # (T, 3) centre, east and north unit vectors
    e: np.ndarray
    n: np.ndarray
    width: np.ndarray  # tract box size in pixels (int64)
    height: np.ndarray
    patch_w: np.ndarray  # inner patch size in pixels (int64)
    patch_h: np.ndarray


class SkyMap(ABC):
    """A tessellation of the sky into tracts and patches, deterministic from its ``config``."""

    kind: ClassVar[str]
    _KINDS: ClassVar[dict[str, type[SkyMap]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            SkyMap._KINDS[cls.kind] = cls

    def __init__(self, name: str, *, patch_grid: Sequence[int], pixel_scale_arcsec: float,
                 tract_overlap_deg: float, patch_border_pixels: int) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        if (not isinstance(patch_grid, Sequence) or len(patch_grid) != 2
                or not all(_is_int(v) and v >= 1 for v in patch_grid)):
            raise ValueError(f"patch_grid must be two positive integers (nx >= 1, ny >= 1), got {patch_grid!r}")
        self.patch_grid: tuple[int, int] = (int(patch_grid[0]), int(patch_grid[1]))
        self.pixel_scale_arcsec = check_float("pixel_scale_arcsec", pixel_scale_arcsec, low=0.0, low_open=True,
                                              high=3600.0)
        self.tract_overlap_deg = check_float("tract_overlap_deg", tract_overlap_deg, low=0.0, high=10.0)
        self.patch_border_pixels = check_int("patch_border_pixels", patch_border_pixels, low=0)

    # -- configuration ---------------------------------------------------------------------
    @abstractmethod
    def _own_config(self) -> dict[str, Any]:
        """The subclass's canonical, JSON-able parameters (besides the common ones)."""

    @property
    def config(self) -> dict[str, Any]:
        """Canonical, JSON-able configuration; ``type(self).from_config(config)`` rebuilds the skymap."""
        return {
            "type": self.kind, "version": CONFIG_VERSION, "name": self.name,
            "patch_grid": list(self.patch_grid), "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "tract_overlap_deg": self.tract_overlap_deg, "patch_border_pixels": self.patch_border_pixels,
            **self._own_config(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        params = dict(config)
        kind, version = params.pop("type", cls.kind), params.pop("version", CONFIG_VERSION)
        if kind != cls.kind:
            raise ValueError(f"config is for a {kind!r} skymap, not {cls.kind!r}")
        if version != CONFIG_VERSION:
            raise ValueError(f"skymap config version {version} is not supported (this code reads {CONFIG_VERSION})")
        return cls(**params)

    @cached_property
    def digest(self) -> str:
        """Hex blake2b (32 bytes, 64 characters) of the canonical JSON of ``config``."""
        text = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()

    def describe_difference(self, other: SkyMap) -> str:
        """What differs between two skymaps' configurations, e.g. ``num_rings: 120 != 60``."""
        mine, theirs = self.config, other.config
        parts = []
        for key in sorted(set(mine) | set(theirs)):
            a, b = mine.get(key), theirs.get(key)
            if a == b:
                continue
            if isinstance(a, list) and isinstance(b, list) and key == "centers":
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                detail = f"{len(a)} != {len(b)} centres" if len(a) != len(b) else f"{len(a)} centres"
                shown = (a[first] if first < len(a) else None, b[first] if first < len(b) else None)
                parts.append(f"{key}: {detail}, first difference at index {first}: {shown[0]} != {shown[1]}")
            else:
                parts.append(f"{key}: {a!r} != {b!r}")
        return "; ".join(parts) if parts else "no difference"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkyMap) and self.config == other.config

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, num_tracts={self.num_tracts}, patch_grid={self.patch_grid})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).from_config, (self.config,))  # pickle as configuration, never the tables

    # -- what subclasses define ------------------------------------------------------------
    @property
    @abstractmethod
    def num_tracts(self) -> int:
        """Number of tracts; ids are ``0 .. num_tracts - 1``."""

    @abstractmethod
    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) of every tract centre, degrees."""

    @abstractmethod
    def _tract_half_extents(self) -> tuple[np.ndarray, np.ndarray]:
        """Half-extents (east-west, north-south) of every tract's nominal area, tangent-plane units."""

    @abstractmethod
    def _find_tract(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Tract ids (int64) of positions in degrees (arrays of one shape)."""

    # -- tracts ----------------------------------------------------------------------------
    @cached_property
    def _table(self) -> TractTable:
        ra, dec = (np.asarray(a, dtype=float) for a in self._tract_centers())
        hx, hy = (np.asarray(a, dtype=float) for a in self._tract_half_extents())
        limit = math.tan(math.radians(MAX_HALF_EXTENT_DEG))
        if np.any(hx + self._overlap_tan > limit) or np.any(hy + self._overlap_tan > limit):
            raise ValueError(f"tracts of {self.name!r} would reach more than {MAX_HALF_EXTENT_DEG} degrees "
                             "from their centres; use smaller tracts (more rings or a smaller radius)")
        scale = self.pixel_scale_arcsec
        overlap = self.overlap_pixels
        nx, ny = self.patch_grid
        half_x = np.ceil(np.degrees(hx) * 3600.0 / scale).astype(np.int64) + overlap
        half_y = np.ceil(np.degrees(hy) * 3600.0 / scale).astype(np.int64) + overlap
        patch_w = -(-2 * half_x // nx)
        patch_h = -(-2 * half_y // ny)
        p, e, n = geo.tangent_basis(ra, dec)
        return TractTable(ra=ra, dec=dec, p=p, e=e, n=n, width=patch_w * nx, height=patch_h * ny,
                          patch_w=patch_w, patch_h=patch_h)

    @property
    def _overlap_tan(self) -> float:
        return math.tan(math.radians(self.tract_overlap_deg))

    @property
    def overlap_pixels(self) -> int:
        """Tract overlap in pixels (rounded up): the margin between a tract's inner and outer box."""
        return math.ceil(self.tract_overlap_deg * 3600.0 / self.pixel_scale_arcsec - 1e-9)

    @property
    def num_patches(self) -> int:
        """Patches per tract (every tract has the same grid)."""
        return self.patch_grid[0] * self.patch_grid[1]

    def __len__(self) -> int:
        return self.num_tracts

    def __getitem__(self, tract_id: int) -> TractInfo:
        tract_id = self._check_tract(tract_id)
        return TractInfo(self, tract_id)

    def __iter__(self) -> Iterator[TractInfo]:
        return (TractInfo(self, i) for i in range(self.num_tracts))

    def _check_tract(self, tract_id: Any) -> int:
        if not _is_int(tract_id) or not 0 <= tract_id < self.num_tracts:
            raise SkyMapIndexError(f"skymap {self.name!r} has no tract {tract_id!r}; "
                                   f"valid tract ids are 0 to {self.num_tracts - 1}")
        return int(tract_id)

    # -- regions for the registry ----------------------------------------------------------
    def tract_regions(self) -> Iterator[tuple[int, ConvexPolygon]]:
        """(tract id, outer region) of every tract: the region the registry stores."""
        polygons = geo.polygons_from_vertices(self.tract_vertices(np.arange(self.num_tracts)))
        return iter(enumerate(polygons))

    def tract_vertices(self, tracts: Any) -> np.ndarray:
        """Counter-clockwise corner unit vectors (len(tracts), 4, 3) of tracts' outer boxes."""
        tracts = np.atleast_1d(np.asarray(tracts, dtype=np.int64))
        t = self._table
        zeros = np.zeros(len(tracts), dtype=np.int64)
        corners = geo.box_corners(zeros, zeros, t.width[tracts], t.height[tracts])
        return self._pixels_to_vectors(tracts, corners)

    def check_tracts(self, tracts: Any) -> np.ndarray:
        """Sorted distinct tract ids (int64 array) of an int or an iterable of ints, all in the skymap.

        Anything else (an id outside ``0 .. num_tracts - 1``, a non-integer, an empty selection)
        is an error naming the first offending value and the valid range.
        """
        if _is_int(tracts):
            tracts = [tracts]
        if isinstance(tracts, (str, bytes)) or not isinstance(tracts, Iterable):
            raise SkyMapIndexError(f"tracts must be an iterable of tract ids of skymap {self.name!r}, got {tracts!r}")
        values = list(tracts)
        if not values:
            raise SkyMapIndexError(f"no tracts given for skymap {self.name!r} (pass None for all tracts); "
                                   f"valid tract ids are 0 to {self.num_tracts - 1}")
        for i, value in enumerate(values):
            if not _is_int(value) or not 0 <= value < self.num_tracts:
                raise SkyMapIndexError(f"skymap {self.name!r} has no tract {value!r} (tracts[{i}]); "
                                       f"valid tract ids are 0 to {self.num_tracts - 1}")
        return np.unique(np.asarray(values, dtype=np.int64))

    def patch_regions(self, tract_id: int) -> list[tuple[int, int, int, ConvexPolygon]]:
        """(patch id, x, y, outer region) of every patch of one tract, in patch-id order."""
        tract_id = self._check_tract(tract_id)
        return next(self._patch_region_batches(np.array([tract_id])))[1]

    def iter_patch_regions(self, batch: int = 256) -> Iterator[tuple[int, list[tuple[int, int, int, ConvexPolygon]]]]:
        """(tract id, ``patch_regions(tract id)``) for every tract, vectorised over batches of tracts."""
        for start in range(0, self.num_tracts, batch):
            tracts = np.arange(start, min(start + batch, self.num_tracts))
            yield from self._patch_region_batches(tracts)

    def patch_vertices(self, tracts: Any, *, outer: bool = True) -> np.ndarray:
        """Counter-clockwise corner unit vectors (len(tracts), num_patches, 4, 3) of patch boxes."""
        tracts = np.atleast_1d(np.asarray(tracts, dtype=np.int64))
        return self._pixels_to_vectors(tracts[:, None], self.patch_corners(tracts, outer=outer))

    def patch_corners(self, tracts: np.ndarray, *, outer: bool) -> np.ndarray:
        """Continuous pixel corners (len(tracts), num_patches, 4, 2) of inner or outer patch boxes."""
        t = self._table
        nx, ny = self.patch_grid
        pw, ph = t.patch_w[tracts][:, None], t.patch_h[tracts][:, None]
        x0, y0 = np.arange(nx) * pw, np.arange(ny) * ph  # (B, nx), (B, ny)
        x1, y1 = x0 + pw, y0 + ph
        if outer:
            border = self.patch_border_pixels
            x0, y0 = np.maximum(x0 - border, 0), np.maximum(y0 - border, 0)
            x1 = np.minimum(x1 + border, t.width[tracts][:, None])
            y1 = np.minimum(y1 + border, t.height[tracts][:, None])
        shape = (len(tracts), ny, nx)
        corners = geo.box_corners(np.broadcast_to(x0[:, None, :], shape), np.broadcast_to(y0[:, :, None], shape),
                                  np.broadcast_to(x1[:, None, :], shape), np.broadcast_to(y1[:, :, None], shape))
        return corners.reshape(len(tracts), nx * ny, 4, 2)

    def _patch_region_batches(self, tracts: np.ndarray) -> Iterator[tuple[int, list[tuple[int, int, int, Any]]]]:
        nx, ny = self.patch_grid
        count = nx * ny
        polygons = geo.polygons_from_vertices(self.patch_vertices(tracts).reshape(-1, 4, 3))
        index = [(i, i % nx, i // nx) for i in range(count)]
        for k, tract_id in enumerate(tracts.tolist()):
            chunk = polygons[k * count : (k + 1) * count]
            yield tract_id, [(i, x, y, poly) for (i, x, y), poly in zip(index, chunk)]

    def _pixels_to_vectors(self, tracts: np.ndarray, corners: np.ndarray) -> np.ndarray:
        """Unit vectors of continuous pixel positions (..., 2); ``tracts`` broadcasts against (...)."""
        t = self._table
        scale = math.radians(self.pixel_scale_arcsec / 3600.0)
        cx, cy = (t.width[tracts] - 1) / 2.0, (t.height[tracts] - 1) / 2.0
        xi = -(corners[..., 0] - cx[..., None]) * scale
        eta = (corners[..., 1] - cy[..., None]) * scale
        return geo.deproject(xi, eta, t.p[tracts][..., None, :], t.e[tracts][..., None, :], t.n[tracts][..., None, :])

    def sky_to_pixel(self, tract_id: Any, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates in tracts' pixel grids (NaN beyond the tangent plane's horizon)."""
        t = self._table
        tracts = np.asarray(tract_id, dtype=np.int64)
        scale = math.radians(self.pixel_scale_arcsec / 3600.0)
        xi, eta = geo.project(geo.radec_to_vectors(ra, dec), t.p[tracts], t.e[tracts], t.n[tracts])
        return (t.width[tracts] - 1) / 2.0 - xi / scale, (t.height[tracts] - 1) / 2.0 + eta / scale

    def pixel_to_sky(self, tract_id: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees of continuous pixel coordinates in tracts' pixel grids."""
        tracts = np.asarray(tract_id, dtype=np.int64)
        xy = np.stack(np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float)), axis=-1)
        return geo.vectors_to_radec(self._pixels_to_vectors(tracts, xy[..., None, :])[..., 0, :])

    # -- lookups ---------------------------------------------------------------------------
    def find_tract(self, ra: Any, dec: Any) -> Any:
        """Tract id(s) of sky positions in degrees: an int for scalars, an int64 array for arrays."""
        ra_a, dec_a = np.broadcast_arrays(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        _check_positions(ra_a, dec_a)
        found = self._find_tract(ra_a % 360.0, dec_a)
        return int(found) if found.ndim == 0 else found

    def find_patch(self, tract_id: Any, ra: Any, dec: Any, *, strict: bool = True) -> Any:
        """Patch id(s) whose inner box holds each position, in the given tract(s).

        A position outside its tract's pixel box is an error, or ``-1`` with ``strict=False``.
        """
        tracts = np.asarray(tract_id)
        if tracts.dtype.kind not in "iu":
            raise SkyMapIndexError(f"tract ids must be integers, got {tracts.dtype}")
        bad = (tracts < 0) | (tracts >= self.num_tracts)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0]) if tracts.ndim else 0
            raise SkyMapIndexError(f"skymap {self.name!r} has no tract {int(tracts.flat[i])} (index {i}); "
                                   f"valid tract ids are 0 to {self.num_tracts - 1}")
        ra_a, dec_a = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
        _check_positions(ra_a, dec_a)
        x, y = self.sky_to_pixel(tracts, ra_a, dec_a)
        t = self._table
        with np.errstate(invalid="ignore"):
            ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
            inside = (ix >= 0) & (ix < t.width[tracts]) & (iy >= 0) & (iy < t.height[tracts])
        ix, iy = np.where(inside, ix, 0).astype(np.int64), np.where(inside, iy, 0).astype(np.int64)
        patch = (iy // t.patch_h[tracts]) * self.patch_grid[0] + ix // t.patch_w[tracts]
        patch = np.where(inside, patch, -1)
        if strict and not np.all(inside):
            i = int(np.flatnonzero(~inside.ravel())[0])
            ra_i, dec_i = np.broadcast_to(ra_a, inside.shape).flat[i], np.broadcast_to(dec_a, inside.shape).flat[i]
            tract_i = int(np.broadcast_to(tracts, inside.shape).flat[i])
            raise SkyMapIndexError(f"position (ra={ra_i:.6f}, dec={dec_i:.6f}) at index {i} is outside tract "
                                   f"{tract_i} of skymap {self.name!r}; pass strict=False to get -1 instead")
        return int(patch) if patch.ndim == 0 else patch

    def find_tract_patch(self, ra: Any, dec: Any, *, strict: bool = True) -> tuple[Any, Any]:
        """(tract id(s), patch id(s)) of sky positions in degrees."""
        tract = self.find_tract(ra, dec)
        return tract, self.find_patch(tract, ra, dec, strict=strict)

    # -- packing ---------------------------------------------------------------------------
    def packer(self, bands: Sequence[str] | Mapping[str, int] | None = None) -> DataIdPacker:
        """A packer of (tract, patch) data IDs, or (tract, patch, band) when ``bands`` are given."""
        from ..dimensions._packers import TractPatchBandPacker, TractPatchPacker

        if bands is None:
            return TractPatchPacker(self.num_tracts, self.num_patches)
        return TractPatchBandPacker(self.num_tracts, self.num_patches, bands)


# -- validation helpers (shared by the subclasses) ---------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or a ValueError naming the parameter and the range."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        valid = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (or (low, high]), or a ValueError saying so."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not (math.isfinite(number) and (number > low if low_open else number >= low) and number <= high):
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return number


def _check_positions(ra: np.ndarray, dec: np.ndarray) -> None:
    bad = ~np.isfinite(ra) | ~np.isfinite(dec) | (np.abs(dec) > 90.0)
    if np.any(bad):
        i = int(np.flatnonzero(np.broadcast_to(bad, np.broadcast_shapes(ra.shape, dec.shape)).ravel())[0])
        raise ValueError(f"position at index {i} is not on the sky (ra finite, -90 <= dec <= 90): "
                         f"ra={np.broadcast_to(ra, bad.shape).flat[i]}, dec={np.broadcast_to(dec, bad.shape).flat[i]}")


def skymap_from_config(config: Mapping[str, Any]) -> SkyMap:
    """Rebuild any kind of skymap from its ``config`` (dispatching on ``config["type"]``)."""
    kind = config.get("type")
    if kind not in SkyMap._KINDS:
        raise ValueError(f"unknown skymap type {kind!r}; known types: {sorted(SkyMap._KINDS)}")
    return SkyMap._KINDS[kind].from_config(config)
