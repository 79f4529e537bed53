"""The registry's spatial index and exact overlap tests.

Every region stored with a record is also stored as the pixels (of the universe's
pixelization, a cube-face grid at level 9 by default: ~0.1-0.2 degree cells) that its
envelope touches. A spatial
join matches pixels in SQL, which yields candidates; candidates are then refined here with an
exact test. Overlap means that the *interiors* intersect: two patches that share an edge, or a
detector touching a patch at a corner, do not overlap. The test shrinks each polygon by a
relative 1e-7 of its size toward its centre (sub-milliarcsecond), so shared boundaries separate
while real overlaps remain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..dimensions import DimensionElement, DimensionUniverse
from ..errors import DataIdError

if TYPE_CHECKING:
    import numpy as np
    from lsst.sphgeom import ConvexPolygon, Region

    from ._pixelization import CubeFacePixelization

__all__ = ["RegionError", "SpatialIndex", "encoded_vertices", "regions_overlap", "validate_region"]

_SHRINK = 1e-7


class RegionError(DataIdError):
    """A region is degenerate, not convex, or given for an element without regions."""


def validate_region(region: object, where: str) -> Region:
    """Check that ``region`` is a usable sphgeom region (non-degenerate convex polygon, circle...)."""
    import lsst.sphgeom as sg

    if isinstance(region, sg.ConvexPolygon):
        vertices = region.getVertices()
        if len(vertices) < 3:
            raise RegionError(f"{where}: a polygon needs at least 3 distinct vertices, got {len(vertices)}")
        n = len(vertices)
        for i in range(n):
            a, b, c = vertices[i], vertices[(i + 1) % n], vertices[(i + 2) % n]
            if sg.orientation(a, b, c) <= 0:
                raise RegionError(
                    f"{where}: polygon vertices {i}..{(i + 2) % n} are collinear or turn the wrong way; "
                    "the polygon is degenerate or not convex (vertices must be counter-clockwise seen from "
                    "outside the sphere)"
                )
        if region.getBoundingCircle().getOpeningAngle().asDegrees() <= 0:
            raise RegionError(f"{where}: the polygon has no area")
    elif isinstance(region, sg.Circle):
        if region.isEmpty() or region.getOpeningAngle().asRadians() <= 0:
            raise RegionError(f"{where}: the circle is empty or has zero radius")
    elif not isinstance(region, sg.Region):
        raise RegionError(f"{where}: a region must be an lsst.sphgeom region, got {type(region).__name__}")
    return region


def polygon_from_lonlat(vertices: Sequence[tuple[float, float]]) -> ConvexPolygon:
    """A ConvexPolygon from (ra, dec) degrees in order, rejecting non-convex or degenerate input."""
    import lsst.sphgeom as sg

    points = [sg.UnitVector3d(sg.LonLat.fromDegrees(ra, dec)) for ra, dec in vertices]
    n = len(points)
    if n >= 3:
        turns = [sg.orientation(points[i], points[(i + 1) % n], points[(i + 2) % n]) for i in range(n)]
        if all(t < 0 for t in turns):
            points.reverse()
        elif not all(t > 0 for t in turns):
            raise RegionError(f"polygon {list(vertices)} is not convex or has collinear vertices")
    else:
        raise RegionError(f"polygon {list(vertices)} needs at least 3 vertices")
    polygon = sg.ConvexPolygon(points)
    validate_region(polygon, "polygon")
    return polygon


@lru_cache(maxsize=65536)
def _interior(data: bytes) -> Region:
    """The decoded region shrunk by a tiny relative margin (cached: regions repeat in joins)."""
    import lsst.sphgeom as sg

    region = sg.Region.decode(data)
    if isinstance(region, sg.ConvexPolygon):
        vertices = region.getVertices()
        cx = sum(v.x() for v in vertices)
        cy = sum(v.y() for v in vertices)
        cz = sum(v.z() for v in vertices)
        shrunk = [
            sg.UnitVector3d(v.x() + (cx / len(vertices) - v.x()) * _SHRINK,
                            v.y() + (cy / len(vertices) - v.y()) * _SHRINK,
                            v.z() + (cz / len(vertices) - v.z()) * _SHRINK)
            for v in vertices
        ]
        return sg.ConvexPolygon(shrunk)
    if isinstance(region, sg.Circle):
        angle = region.getOpeningAngle().asRadians()
        return sg.Circle(region.getCenter(), sg.Angle(angle * (1 - _SHRINK)))
    return region


def regions_overlap(a: bytes, b: bytes) -> bool:
    """Whether the interiors of two encoded regions intersect."""
    return bool(_interior(bytes(a)).overlaps(_interior(bytes(b))))


class SpatialIndex:
    """Maintains the ``<element>_skypix`` tables."""

    def __init__(self, universe: DimensionUniverse, tables: Mapping[str, sa.Table]):
        self.universe = universe
        self.tables = dict(tables)
        self._pixelization: CubeFacePixelization | None = None

    @property
    def pixelization(self) -> CubeFacePixelization:
        if self._pixelization is None:
            self._pixelization = self.universe.pixelization()
        return self._pixelization

    def pixels(self, region: Region) -> list[int]:
        return self.pixelization.envelope(region)

    def index_rows(self, element: DimensionElement, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Index rows for records whose ``region`` is set (regions as encoded bytes).

        Vectorised: polygons with the same number of vertices go through one ``envelopes`` call.
        """
        import numpy as np

        keys = element.primary_key_columns
        with_region = [row for row in rows if row.get("region") is not None]
        groups: dict[int, list[int]] = {}
        vertices = []
        for i, row in enumerate(with_region):
            v = encoded_vertices(row["region"])
            vertices.append(v)
            groups.setdefault(len(v), []).append(i)
        out = []
        for members in groups.values():
            poly, pix = self.pixelization.envelopes(np.stack([vertices[i] for i in members]))
            for p, px in zip(poly.tolist(), pix.tolist()):
                row = with_region[members[p]]
                out.append({**{k: row[k] for k in keys}, "pix": px})
        return out

    def insert(self, conn: sa.Connection, element: DimensionElement, rows: Sequence[Mapping[str, Any]]) -> None:
        index_rows = self.index_rows(element, rows)
        if index_rows:
            conn.execute(self.tables[element.name].insert(), index_rows)

    def delete(self, conn: sa.Connection, element: DimensionElement, rows: Sequence[Mapping[str, Any]]) -> None:
        """Delete the index rows of records (one executemany)."""
        if not rows:
            return
        table = self.tables[element.name]
        keys = element.primary_key_columns
        stmt = table.delete().where(*[table.c[k] == sa.bindparam(f"key_{k}") for k in keys])
        conn.execute(stmt, [{f"key_{k}": row[k] for k in keys} for row in rows])


def encoded_vertices(data: bytes) -> np.ndarray:
    """Vertices (K, 3) of a convex polygon holding an encoded region (read straight from the bytes
    for ConvexPolygons: a type byte then three little-endian doubles per vertex)."""
    import numpy as np

    data = bytes(data)
    if data[:1] == b"p" and (len(data) - 1) % 24 == 0:
        return np.frombuffer(data, dtype="<f8", offset=1).reshape(-1, 3)
    import lsst.sphgeom as sg

    from ._pixelization import region_vertices

    return region_vertices(sg.Region.decode(data))
