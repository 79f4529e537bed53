"""Skymaps and visit regions in the registry: register a skymap, compute and update regions.

``register_skymap`` stores the skymap (its config, so it can be rebuilt anywhere), one record
per tract (region: the tract's outer boundary) and per patch (region: its outer box), and the
spatial index of all of them, in one transaction, with bulk inserts (millions of rows for a
full-sky skymap). ``define_visits`` turns exposure records and the camera geometry into visit
and visit+detector regions; ``--update`` recomputes them (e.g. after a better WCS).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, DataIdError

if TYPE_CHECKING:
    from ._butler import Butler

__all__ = ["register_skymap", "load_skymap", "define_visits", "detector_corners"]

PIXEL_SIZE_MM = 0.010  # focal-plane pixel pitch assumed by camera YAML offsets (10 um)


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _skymap_record(butler: Butler, name: str) -> Any | None:
    records = butler.query_dimension_records("skymap", skymap=name)
    return records[0] if records else None


def register_skymap(butler: Butler, skymap: Any) -> bool:
    """Register ``skymap``'s tracts and patches; return False if it is already registered.

    Registering a different configuration under an existing name is a ``ConflictError`` that
    says what differs.
    """
    butler._require_writeable()
    registry = butler._registry
    existing = _skymap_record(butler, skymap.name)
    if existing is not None:
        if existing.hash == skymap.digest:
            return False
        old = load_skymap(butler, skymap.name)
        raise ConflictError(
            f"skymap {skymap.name!r} is already registered with a different configuration: "
            f"{old.describe_difference(skymap)}; register the new one under another name"
        )
    stored = json.dumps({"class": _class_path(skymap), "config": skymap.config}, sort_keys=True)
    db = registry.db
    schema = registry.schema
    spatial = registry.records.spatial
    pixels = spatial.pixels
    tract_rows: list[tuple] = []
    tract_index: list[tuple] = []
    patch_rows: list[tuple] = []
    patch_index: list[tuple] = []
    name = skymap.name
    for tract_id, region in skymap.tract_regions():
        tract_rows.append((name, tract_id, bytes(region.encode())))
        tract_index.extend((name, tract_id, p) for p in pixels(region))
    import numpy as np

    from .skymap._geometry import encode_polygons

    pixelization = spatial.pixelization
    max_nx, max_ny = skymap.patch_grid
    patch_ids = np.arange(max_nx * max_ny)
    for start in range(0, skymap.num_tracts, 256):
        tracts = np.arange(start, min(start + 256, skymap.num_tracts))
        vertices = skymap.patch_vertices(tracts).reshape(-1, 4, 3)
        encoded = encode_polygons(vertices)
        tract_of = np.repeat(tracts, len(patch_ids)).tolist()
        patch_of = np.tile(patch_ids, len(tracts)).tolist()
        patch_rows.extend(
            (name, t, p, p % max_nx, p // max_nx, e) for t, p, e in zip(tract_of, patch_of, encoded)
        )
        poly, pix = pixelization.envelopes(vertices)
        pt, pp = np.asarray(tract_of)[poly].tolist(), np.asarray(patch_of)[poly].tolist()
        patch_index.extend(zip([name] * len(pix), pt, pp, pix.tolist()))
    with db.transaction(write=True) as conn:
        conn.execute(schema.elements["skymap"].insert().values(
            name=name, hash=skymap.digest, tract_max=skymap.num_tracts,
            patch_nx_max=max_nx, patch_ny_max=max_ny, config=stored,
        ))
        db.bulk_insert(conn, schema.elements["tract"], ["skymap", "id", "region"], tract_rows)
        db.bulk_insert(conn, schema.skypix["tract"], ["skymap", "id", "pix"], tract_index)
        db.bulk_insert(conn, schema.elements["patch"], ["skymap", "tract", "id", "cell_x", "cell_y", "region"],
                       patch_rows)
        db.bulk_insert(conn, schema.skypix["patch"], ["skymap", "tract", "id", "pix"], patch_index)
    return True


_SKYMAPS: dict[tuple[str, str], Any] = {}


def load_skymap(butler: Butler, name: str) -> Any:
    """Rebuild a registered skymap from the configuration stored with it."""
    record = _skymap_record(butler, name)
    if record is None:
        known = [r.name for r in butler.query_dimension_records("skymap")]
        raise DataIdError(f"skymap {name!r} is not registered; registered skymaps: {known}")
    key = (name, record.hash)
    skymap = _SKYMAPS.get(key)
    if skymap is None:
        stored = json.loads(record.config)
        module, _, cls_name = stored["class"].rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        skymap = cls.from_config(stored["config"])
        _SKYMAPS[key] = skymap
    return skymap


# -- visit regions -----------------------------------------------------------------------------
def detector_corners(detector: Mapping[str, Any]) -> list[tuple[float, float]]:
    """Focal-plane corners of a detector in arcsec offsets from the boresight (x east, y north)."""
    scale = float(detector["pixel_scale_arcsec"])
    width, height = detector["bbox_width"], detector["bbox_height"]
    cx = float(detector["offset_x_mm"]) / PIXEL_SIZE_MM * scale
    cy = float(detector["offset_y_mm"]) / PIXEL_SIZE_MM * scale
    rot = math.radians(float(detector.get("rotation_deg") or 0.0))
    hw, hh = width * scale / 2, height * scale / 2
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = sx * hw, sy * hh
        corners.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
    return corners


def _sky_polygon(ra: float, dec: float, sky_angle: float, offsets: Iterable[tuple[float, float]]) -> Any:
    """Gnomonic projection of focal-plane offsets (arcsec) around a boresight to a ConvexPolygon."""
    import lsst.sphgeom as sg

    ra0, dec0, rot = math.radians(ra), math.radians(dec), math.radians(sky_angle)
    # Tangent-plane basis at the boresight: east, north, and the pointing vector.
    p = (math.cos(dec0) * math.cos(ra0), math.cos(dec0) * math.sin(ra0), math.sin(dec0))
    e = (-math.sin(ra0), math.cos(ra0), 0.0)
    n = (-math.sin(dec0) * math.cos(ra0), -math.sin(dec0) * math.sin(ra0), math.cos(dec0))
    points = []
    for x_as, y_as in offsets:
        x = math.radians(x_as / 3600.0)
        y = math.radians(y_as / 3600.0)
        xr = x * math.cos(rot) - y * math.sin(rot)
        yr = x * math.sin(rot) + y * math.cos(rot)
        v = (p[0] + xr * e[0] + yr * n[0], p[1] + xr * e[1] + yr * n[1], p[2] + xr * e[2] + yr * n[2])
        points.append(sg.UnitVector3d(*v))
    return sg.ConvexPolygon.convexHull(points) if hasattr(sg.ConvexPolygon, "convexHull") else sg.ConvexPolygon(points)


def define_visits(butler: Butler, instrument: str, *, where: str | None = None, update: bool = False,
                  exposures: Iterable[int] | None = None) -> int:
    """Define one visit per exposure (same id) with regions from the boresight and camera geometry.

    Exposures need ``tracking_ra``, ``tracking_dec`` (and ``sky_angle``) in their records. With
    ``update=True``, existing visits get recomputed regions (the spatial index follows at once).
    Returns the number of visits defined or updated.
    """
    butler._require_writeable()
    registry = butler._registry
    data_id: dict[str, Any] = {"instrument": instrument}
    records = butler.query_dimension_records("exposure", where=where, data_id=data_id)
    if exposures is not None:
        wanted = set(exposures)
        records = [r for r in records if r.id in wanted]
    if not records:
        raise DataIdError(f"no exposures of {instrument!r} match {where or 'the request'}; ingest raws first")
    detectors = [d.to_dict() for d in butler.query_dimension_records("detector", instrument=instrument)]
    detectors = [d for d in detectors if d.get("pixel_scale_arcsec") and d.get("bbox_width")]
    missing = [r.id for r in records if r.tracking_ra is None or r.tracking_dec is None]
    if missing:
        raise DataIdError(f"exposures {missing[:10]} have no tracking_ra/tracking_dec; cannot compute regions")
    visit_rows = []
    definition_rows = []
    region_rows = []
    for r in records:
        angle = r.sky_angle or 0.0
        all_corners = []
        for det in detectors:
            corners = detector_corners(det)
            all_corners.extend(corners)
            region_rows.append({"instrument": instrument, "visit": r.id, "detector": det["id"],
                                "region": _sky_polygon(r.tracking_ra, r.tracking_dec, angle, corners)})
        visit_region = _sky_polygon(r.tracking_ra, r.tracking_dec, angle, all_corners)
        visit_rows.append({
            "instrument": instrument, "id": r.id, "physical_filter": r.physical_filter, "day_obs": r.day_obs,
            "name": r.obs_id, "exposure_time": r.exposure_time, "begin": r.begin, "end": r.end,
            "tracking_ra": r.tracking_ra, "tracking_dec": r.tracking_dec, "sky_angle": r.sky_angle,
            "region": visit_region,
        })
        definition_rows.append({"instrument": instrument, "exposure": r.id, "visit": r.id})
    records_mgr = registry.records
    if update:
        existing = {v.id for v in butler.query_dimension_records("visit", instrument=instrument)}
        new = [v for v in visit_rows if v["id"] not in existing]
        with registry.db.transaction(write=True) as conn:
            if new:
                records_mgr.insert("visit", new, conn=conn)
            records_mgr.insert("visit_definition", definition_rows, conflict="skip", conn=conn)
            records_mgr.insert("visit_detector_region", region_rows, conflict="replace", conn=conn)
            records_mgr.update_regions("visit", [{"instrument": instrument, "id": v["id"], "region": v["region"]}
                                                 for v in visit_rows if v["id"] in existing], conn=conn)
        return len(visit_rows)
    with registry.db.transaction(write=True) as conn:
        records_mgr.insert("visit", visit_rows, conn=conn)
        records_mgr.insert("visit_definition", definition_rows, conn=conn)
        records_mgr.insert("visit_detector_region", region_rows, conn=conn)
    return len(visit_rows)

