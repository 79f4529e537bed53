"""A vectorised cube-face pixelization for the registry's spatial index.

The sphere is split into the 6 faces of a cube; each face is a ``2**level x 2**level`` grid in
gnomonic (tangent-plane) coordinates, the layout Q3C uses (level 9: cells of 0.1-0.2 degrees).
Gnomonic projection maps great circles to straight lines, so a convex polygon on one face
projects to a convex polygon whose bounding box is the bounding box of its vertices: the cells
of that box are a conservative envelope, computed for millions of polygons at once with numpy.
A face is skipped when a linear inequality that bounds it is false at every vertex (then it is
false on the whole polygon, whose points are normalised positive combinations of its vertices).
Envelopes may contain extra cells; spatial joins refine candidates with exact overlap tests.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lsst.sphgeom import Region

__all__ = ["CubeFacePixelization", "region_vertices"]


class CubeFacePixelization:
    """Pixel ids ``face * n**2 + j * n + i`` for a cube-face grid of ``n = 2**level`` cells a side."""

    def __init__(self, level: int):
        if not 1 <= level <= 20:
            raise ValueError(f"cube-face pixelization level must be in [1, 20], got {level}")
        self.level = level
        self.n = 1 << level

    def envelopes(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells touched by convex polygons given as unit vectors (M, K, 3).

        Returns ``(polygon_index, pixel)`` arrays: one entry per (polygon, cell) pair, sorted.

        Most polygons (patches, detectors) lie strictly inside one face: those take a fast path
        that projects them on that face only (the other faces' tests would reject them anyway,
        so the result is the same); the others go through every face.
        """
        vertices = np.asarray(vertices, dtype=np.float64)
        if vertices.ndim != 3 or len(vertices) == 0:
            return self._envelopes_all_faces(vertices)
        absolute = np.abs(vertices)
        axis = absolute[:, 0, :].argmax(axis=1)  # dominant axis of each polygon's first vertex
        rows = np.arange(len(vertices))
        dominant = absolute[rows, :, axis]  # (M, K)
        others = np.maximum(absolute[rows, :, (axis + 1) % 3], absolute[rows, :, (axis + 2) % 3])
        signed = vertices[rows, :, axis]
        inside = ((dominant - others) > 1e-9).all(axis=1) & ((signed > 0).all(axis=1) | (signed < 0).all(axis=1))
        if inside.all():
            return self._envelopes_one_face(vertices, axis + 3 * (signed[:, 0] < 0))
        if not inside.any():
            return self._envelopes_all_faces(vertices)
        fast, slow = np.flatnonzero(inside), np.flatnonzero(~inside)
        p1, x1 = self._envelopes_one_face(vertices[fast], (axis + 3 * (signed[:, 0] < 0))[fast])
        p2, x2 = self._envelopes_all_faces(vertices[slow])
        poly = np.concatenate([fast[p1], slow[p2]])
        pix = np.concatenate([x1, x2])
        order = np.lexsort((pix, poly))
        return poly[order], pix[order]

    def _envelopes_one_face(self, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells of polygons that lie strictly inside their face ``faces`` (M,) (face = axis + 3 * negative)."""
        n = self.n
        eps = 1e-9
        k = faces % 3
        sign = np.where(faces < 3, 1.0, -1.0)
        rows, cols = np.arange(len(vertices))[:, None], np.arange(vertices.shape[1])[None, :]
        d = sign[:, None] * vertices[rows, cols, k[:, None]]
        a = vertices[rows, cols, ((k + 1) % 3)[:, None]]
        b = vertices[rows, cols, ((k + 2) % 3)[:, None]]
        u, v = a / d, b / d
        i0 = np.clip(np.floor((u.min(axis=1) + 1) * 0.5 * n - eps), 0, n - 1).astype(np.int64)
        i1 = np.clip(np.floor((u.max(axis=1) + 1) * 0.5 * n + eps), 0, n - 1).astype(np.int64)
        j0 = np.clip(np.floor((v.min(axis=1) + 1) * 0.5 * n - eps), 0, n - 1).astype(np.int64)
        j1 = np.clip(np.floor((v.max(axis=1) + 1) * 0.5 * n + eps), 0, n - 1).astype(np.int64)
        ni = i1 - i0 + 1
        counts = ni * (j1 - j0 + 1)
        total = int(counts.sum())
        poly = np.repeat(np.arange(len(vertices)), counts)
        offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        ni_r = np.repeat(ni, counts)
        ii = np.repeat(i0, counts) + offset % ni_r
        jj = np.repeat(j0, counts) + offset // ni_r
        pix = np.repeat(faces.astype(np.int64), counts) * n * n + jj * n + ii
        return poly, pix  # already sorted: by polygon, then row-major within one face

    def _envelopes_all_faces(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells of any convex polygons: every face is tested (the general path)."""
        n = self.n
        out_poly = []
        out_pix = []
        eps = 1e-9
        for face in range(6):
            k, sign = face % 3, (1.0 if face < 3 else -1.0)
            d = sign * vertices[:, :, k]
            a = vertices[:, :, (k + 1) % 3]
            b = vertices[:, :, (k + 2) % 3]
            candidate = (
                (d > 0).any(axis=1)
                & ~((d - a) < 0).all(axis=1) & ~((d + a) < 0).all(axis=1)
                & ~((d - b) < 0).all(axis=1) & ~((d + b) < 0).all(axis=1)
            )
            if not candidate.any():
                continue
            idx = np.nonzero(candidate)[0]
            dd, aa, bb = d[idx], a[idx], b[idx]
            projectable = np.asarray((dd > 1e-12).all(axis=1))  # asarray: an array, not a scalar, for numpy's types
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.where(projectable[:, None], aa / dd, 0.0)
                v = np.where(projectable[:, None], bb / dd, 0.0)
            umin = np.where(projectable, u.min(axis=1), -1.0)
            umax = np.where(projectable, u.max(axis=1), 1.0)
            vmin = np.where(projectable, v.min(axis=1), -1.0)
            vmax = np.where(projectable, v.max(axis=1), 1.0)
            i0 = np.clip(np.floor((umin + 1) * 0.5 * n - eps), 0, n - 1).astype(np.int64)
            i1 = np.clip(np.floor((umax + 1) * 0.5 * n + eps), 0, n - 1).astype(np.int64)
            j0 = np.clip(np.floor((vmin + 1) * 0.5 * n - eps), 0, n - 1).astype(np.int64)
            j1 = np.clip(np.floor((vmax + 1) * 0.5 * n + eps), 0, n - 1).astype(np.int64)
            # A face box outside [-1, 1] (polygon beyond the face) has no cells on this face.
            inside = (umax >= -1) & (umin <= 1) & (vmax >= -1) & (vmin <= 1)
            idx, i0, i1, j0, j1 = idx[inside], i0[inside], i1[inside], j0[inside], j1[inside]
            ni = i1 - i0 + 1
            nj = j1 - j0 + 1
            counts = ni * nj
            total = int(counts.sum())
            if total == 0:
                continue
            poly = np.repeat(idx, counts)
            start = np.repeat(np.cumsum(counts) - counts, counts)
            offset = np.arange(total, dtype=np.int64) - start
            ni_r = np.repeat(ni, counts)
            ii = np.repeat(i0, counts) + offset % ni_r
            jj = np.repeat(j0, counts) + offset // ni_r
            out_poly.append(poly)
            out_pix.append(face * n * n + jj * n + ii)
        if not out_poly:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        poly = np.concatenate(out_poly)
        pix = np.concatenate(out_pix)
        order = np.lexsort((pix, poly))
        return poly[order], pix[order]

    def envelope(self, region: Region) -> list[int]:
        """Cells touched by one sphgeom region."""
        _, pix = self.envelopes(region_vertices(region)[None, :, :])
        cells: list[int] = pix.tolist()
        return cells


def region_vertices(region: Region) -> np.ndarray:
    """Vertices (K, 3) of a convex polygon that contains ``region``.

    Polygons give their own vertices; other regions are bounded by an octagon around their
    bounding circle (radius enlarged so the octagon's edges stay outside the circle).
    """
    import lsst.sphgeom as sg

    if isinstance(region, sg.ConvexPolygon):
        return np.array([[v.x(), v.y(), v.z()] for v in region.getVertices()])
    circle = region if isinstance(region, sg.Circle) else region.getBoundingCircle()
    center = circle.getCenter()
    c = np.array([center.x(), center.y(), center.z()])
    theta = min(circle.getOpeningAngle().asRadians() / math.cos(math.pi / 8) * 1.01 + 1e-9, math.pi / 3)
    helper = np.array([0.0, 0.0, 1.0]) if abs(c[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(c, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)
    angles = np.arange(8) * (2 * math.pi / 8)
    pts: np.ndarray = (np.cos(theta) * c[None, :]
           + np.sin(theta) * (np.cos(angles)[:, None] * e1[None, :] + np.sin(angles)[:, None] * e2[None, :]))
    return pts
