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
from .instrument._focal_plane import detector_corners

if TYPE_CHECKING:
    from ._butler import Butler
    from .registry._interface import RegistryReader
    from .registry._registry import Registry

__all__ = ["define_visits", "load_skymap", "register_skymap", "sky_vectors"]



def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _records(registry: Registry, element: str, **constraints: Any) -> list[Any]:
    return registry.queries.dimension_records(element, constraints=registry.data_ids.constraints(None, constraints))


def _skymap_record(registry: Registry, name: str) -> Any | None:
    records = _records(registry, "skymap", skymap=name)
    return records[0] if records else None


def _conflict(registry: Registry, skymap: Any) -> ConflictError:
    old = load_skymap(registry, skymap.name)
    return ConflictError(
        f"skymap {skymap.name!r} is already registered with a different configuration: "
        f"{old.describe_difference(skymap)}; register the new one under another name"
    )


BATCH_TRACTS = 256  # tracts whose rows are computed and inserted together (bounded memory)


def register_skymap(registry: Registry, skymap: Any, tracts: Iterable[int] | int | None = None) -> int:
    """Register ``skymap``'s tracts and patches; return how many tracts were added.

    ``tracts`` (tract ids) limits the registration to those tracts and their patches; tracts
    already registered are skipped, so registering more tracts later, or the whole skymap
    after a few tracts, adds only what is missing (0 when there is nothing to add). A tract id
    outside the skymap is an error naming the valid range; registering a different
    configuration under an existing name is a ``ConflictError`` that says what differs. Either
    way nothing is written. The caller checks that the registry may be written.
    """
    wanted = skymap.check_tracts(tracts) if tracts is not None else None
    existing = _skymap_record(registry, skymap.name)
    if existing is not None and existing.hash != skymap.digest:
        raise _conflict(registry, skymap)
    return registry.skymaps.register(lambda conn: _register_tracts(registry, conn, skymap, wanted))


def _register_tracts(registry: Registry, conn: Any, skymap: Any, wanted: Any) -> int:
    import numpy as np

    skymaps = registry.skymaps
    name = skymap.name
    stored_hash = skymaps.hash_of(conn, name)
    if stored_hash is None:
        stored = json.dumps({"class": _class_path(skymap), "config": skymap.config}, sort_keys=True)
        max_nx, max_ny = skymap.patch_grid
        skymaps.insert_skymap(conn, name=name, digest=skymap.digest, tract_max=skymap.num_tracts,
                              patch_nx_max=max_nx, patch_ny_max=max_ny, config=stored)
        registered = np.zeros(0, dtype=np.int64)
    elif stored_hash != skymap.digest:
        raise _conflict(registry, skymap)
    else:
        registered = np.asarray(skymaps.tract_ids(conn, name), dtype=np.int64)
    todo = np.arange(skymap.num_tracts, dtype=np.int64) if wanted is None else wanted
    if len(registered):
        todo = todo[~np.isin(todo, registered)]
    with skymaps.bulk_load(conn, len(todo) * skymap.num_patches):
        for start in range(0, len(todo), BATCH_TRACTS):
            _insert_tract_batch(registry, conn, skymap, todo[start:start + BATCH_TRACTS])
    return len(todo)


def _insert_tract_batch(registry: Registry, conn: Any, skymap: Any, tracts: Any) -> None:
    """Tract and patch records of ``tracts`` with their regions and spatial index (bulk inserts)."""
    from itertools import repeat

    import numpy as np

    from .skymap._geometry import encode_polygons

    pixelization = registry.records.spatial.pixelization
    name = skymap.name
    nx, ny = skymap.patch_grid
    patch_ids = np.arange(nx * ny, dtype=np.int64)

    vertices = skymap.tract_vertices(tracts)
    poly, pix = pixelization.envelopes(vertices)
    registry.skymaps.insert_tracts(conn, list(zip(repeat(name), tracts.tolist(), encode_polygons(vertices))),
                                   list(zip(repeat(name), tracts[poly].tolist(), pix.tolist())))

    vertices = skymap.patch_vertices(tracts).reshape(-1, 4, 3)
    tract_of = np.repeat(tracts, len(patch_ids))
    patch_of = np.tile(patch_ids, len(tracts))
    poly, pix = pixelization.envelopes(vertices)
    registry.skymaps.insert_patches(
        conn, list(zip(repeat(name), tract_of.tolist(), patch_of.tolist(), (patch_of % nx).tolist(),
                       (patch_of // nx).tolist(), encode_polygons(vertices))),
        list(zip(repeat(name), tract_of[poly].tolist(), patch_of[poly].tolist(), pix.tolist())))


_SKYMAPS: dict[tuple[str, str], Any] = {}


def load_skymap(registry: RegistryReader, name: str) -> Any:
    """Rebuild a registered skymap from the configuration stored with it (its ``skymap`` record: a
    remote registry answers this too)."""
    found = registry.query_dimension_records("skymap", skymap=name)
    record = found[0] if found else None
    if record is None:
        known = [r.name for r in registry.query_dimension_records("skymap")]
        raise DataIdError(f"skymap {name!r} is not registered; registered skymaps: {known}")
    key = (name, record.hash)
    skymap = _SKYMAPS.get(key)
    if skymap is None:
        stored = json.loads(record.config)
        module, _, cls_name = stored["class"].rpartition(".")
        if module.split(".", 1)[0] != "butler":  # a record names the class: only the butler's own skymaps
            raise DataIdError(f"skymap {name!r} names the class {stored['class']!r}, which is not a butler skymap")
        cls = getattr(importlib.import_module(module), cls_name)
        skymap = cls.from_config(stored["config"])
        _SKYMAPS[key] = skymap
    return skymap


# -- packers ----------------------------------------------------------------------------------
SKYMAP_PACKERS = ("tract_patch", "tract_patch_band")
INSTRUMENT_PACKERS = ("visit_detector", "exposure_detector")


def data_id_packer(registry: Registry, kind: str, **data_id: Any) -> Any:
    """The packer ``Butler.packer`` returns (see there); arguments are checked, errors say what is expected."""
    if kind in SKYMAP_PACKERS:
        allowed = {"skymap", "bands"} if kind == "tract_patch_band" else {"skymap"}
        _check_packer_args(kind, data_id, "skymap", allowed)
        skymap = load_skymap(registry, data_id["skymap"])
        if kind == "tract_patch":
            return skymap.packer()
        bands = data_id.get("bands") or sorted(r.name for r in _records(registry, "band"))
        if not bands:
            raise DataIdError("no bands are registered; pass bands=[...] for a tract_patch_band packer")
        return skymap.packer(bands=bands)
    if kind in INSTRUMENT_PACKERS:
        _check_packer_args(kind, data_id, "instrument", {"instrument"})
        name = data_id["instrument"]
        records = _records(registry, "instrument", instrument=name)
        if not records:
            known = [r.name for r in _records(registry, "instrument")]
            raise DataIdError(f"instrument {name!r} is not registered; registered instruments: {known}")
        record = records[0]
        instrument = _registered_instrument(record)
        if instrument is not None:  # the camera class's packer (it may override the default)
            return instrument.packer(kind)
        from .dimensions._packers import packer_for_instrument

        return packer_for_instrument(record.visit_max, record.detector_max, record.exposure_max, kind)
    joint = ["instrument_visit_detector", "instrument_exposure_detector"]  # butler._multi_instrument
    raise ValueError(f"unknown packer kind {kind!r}; kinds: {[*SKYMAP_PACKERS, *INSTRUMENT_PACKERS, *joint]}")


def _check_packer_args(kind: str, given: Mapping[str, Any], needed: str, allowed: set[str]) -> None:
    if needed not in given:
        raise DataIdError(f"a {kind!r} packer needs {needed}=...")
    extra = sorted(set(given) - allowed)
    if extra:
        raise DataIdError(f"a {kind!r} packer takes {sorted(allowed)}, not {extra}")


def _registered_instrument(record: Any) -> Any | None:
    """The instrument class of a registered instrument record, when it loads with the same definition."""
    from .instrument import load_instrument

    try:
        instrument = load_instrument(record.class_name)
    except Exception:  # noqa: BLE001 - a YAML-only camera or a class not importable here: use the record
        return None
    if instrument.name != record.name or instrument.definition_digest() != record.definition_digest:
        return None
    return instrument


# -- visit regions -----------------------------------------------------------------------------
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
    return sg.ConvexPolygon.convexHull(points)


def sky_vectors(ra: Any, dec: Any, sky_angle: Any, offsets: Any) -> Any:
    """Unit vectors (E, ..., 3) of focal-plane offsets (arcsec, x east, y north; shape (..., 2))
    around E boresights (degrees), by the same gnomonic projection as ``_sky_polygon``."""
    import numpy as np

    from .skymap._geometry import tangent_basis

    ra, dec = np.atleast_1d(np.asarray(ra, dtype=float)), np.atleast_1d(np.asarray(dec, dtype=float))
    rot = np.radians(np.atleast_1d(np.asarray(sky_angle, dtype=float)))
    offsets = np.radians(np.asarray(offsets, dtype=float) / 3600.0)
    p, e, n = tangent_basis(ra, dec)
    extra = (None,) * (offsets.ndim - 1)
    cos, sin = np.cos(rot)[(slice(None), *extra)], np.sin(rot)[(slice(None), *extra)]
    x, y = offsets[..., 0][None], offsets[..., 1][None]
    xr, yr = x * cos - y * sin, x * sin + y * cos
    basis = (slice(None), *extra, slice(None))
    v = p[basis] + xr[..., None] * e[basis] + yr[..., None] * n[basis]
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _check_orientation(vertices: Any, what: Any) -> Any:
    """Polygons (N, K, 3) as counter-clockwise vertices; a degenerate one is a RegionError."""
    import numpy as np

    from .registry._spatial import RegionError

    a, b, c = vertices, np.roll(vertices, -1, axis=1), np.roll(vertices, -2, axis=1)
    turns = np.einsum("...i,...i->...", np.cross(a, b), c)  # sign of sphgeom's orientation(a, b, c)
    scale = np.abs(turns).max(axis=1, keepdims=True)
    ok = (turns > 1e-9 * scale).all(axis=1) & (scale[:, 0] > 0)
    flipped = (turns < -1e-9 * scale).all(axis=1)
    vertices = np.where(flipped[:, None, None], vertices[:, ::-1], vertices)
    bad = ~(ok | flipped)
    if bad.any():
        raise RegionError(f"{what(int(np.flatnonzero(bad)[0]))}: the detector polygon is degenerate "
                          "(zero width or height, or collinear corners)")
    return vertices


def define_visits(butler: Butler, instrument: str, *, where: str | None = None, update: bool = False,
                  exposures: Iterable[int] | None = None) -> int:
    """Define one visit per exposure (same id) with regions from the boresight and camera geometry.

    Exposures need ``tracking_ra``, ``tracking_dec`` (and ``sky_angle``) in their records. Exposures
    that already have a visit are left alone unless ``update=True``, which recomputes their
    records and regions from the exposure records (the spatial index follows in the same
    transaction: no stale index rows). Returns the number of visits defined or updated.
    """
    import lsst.sphgeom as sg
    import numpy as np

    from .skymap._geometry import encode_polygons

    butler.require_writeable()
    registry = butler.registry
    if not butler.query_dimension_records("instrument", instrument=instrument):
        known = [r.name for r in butler.query_dimension_records("instrument")]
        raise DataIdError(f"instrument {instrument!r} is not registered; registered instruments: {known}")
    records = butler.query_dimension_records("exposure", where=where, data_id={"instrument": instrument})
    if exposures is not None:
        wanted = set(exposures)
        records = [r for r in records if r.id in wanted]
    if not records:
        what = f"where {where!r}" if where else "the request"
        raise DataIdError(f"no exposures of {instrument!r} match {what}; ingest raws first")
    missing = [r.id for r in records if r.tracking_ra is None or r.tracking_dec is None]
    if missing:
        raise DataIdError(f"exposures {missing[:10]} of {instrument!r} have no tracking_ra/tracking_dec; "
                          "cannot compute regions")
    registered = [d.to_dict() for d in butler.query_dimension_records("detector", instrument=instrument)]
    detectors = [d for d in registered if _has_geometry(d)]
    if not detectors:
        raise DataIdError(f"no detector of {instrument!r} has a geometry (pixel_scale_arcsec, bbox_width, "
                          "bbox_height); cannot compute regions")
    existing = registry.records.ids_of_instrument("visit", instrument)  # records would decode every region
    if not update:
        records = [r for r in records if r.id not in existing]
        if not records:
            return 0
    # Detector polygons of the exposures of each camera version at once: (exposures, detectors, 4 corners, xyz).
    geometry: list[Any] = [None] * len(records)
    for dets, indices in _camera_versions(butler, instrument, records, detectors):
        group = [records[k] for k in indices]
        offsets = np.array([detector_corners(d) for d in dets])
        vectors = sky_vectors([r.tracking_ra for r in group], [r.tracking_dec for r in group],
                              [r.sky_angle or 0.0 for r in group], offsets)
        n_det = len(dets)
        flat = _check_orientation(
            vectors.reshape(-1, 4, 3),
            lambda i, group=group, dets=dets, n_det=n_det:
            f"exposure {group[i // n_det].id}, detector {dets[i % n_det]['id']}")
        encoded = encode_polygons(flat)
        for j, k in enumerate(indices):
            geometry[k] = (vectors[j], dets, encoded[j * n_det:(j + 1) * n_det])
    visit_rows = []
    region_rows: list[dict[str, Any]] = []
    for k, r in enumerate(records):
        exposure_vectors, dets, detector_regions = geometry[k]
        points = [sg.UnitVector3d(*v) for v in exposure_vectors.reshape(-1, 3).tolist()]
        visit_rows.append({
            "instrument": instrument, "id": r.id, "physical_filter": r.physical_filter, "day_obs": r.day_obs,
            "name": r.obs_id, "exposure_time": r.exposure_time, "begin": r.begin, "end": r.end,
            "tracking_ra": r.tracking_ra, "tracking_dec": r.tracking_dec, "sky_angle": r.sky_angle,
            "region": bytes(sg.ConvexPolygon.convexHull(points).encode()),
        })
        region_rows.extend({"instrument": instrument, "visit": r.id, "detector": d["id"],
                            "region": detector_regions[j]} for j, d in enumerate(dets))
    definition_rows = [{"instrument": instrument, "exposure": r.id, "visit": r.id} for r in records]
    records_mgr = registry.records
    new_visits = [v for v in visit_rows if v["id"] not in existing]
    old_visits = [v for v in visit_rows if v["id"] in existing]
    with registry.transaction(write=True) as conn:
        if old_visits:  # their detector regions (and index rows) are recomputed; other fields (seeing...) kept
            records_mgr.delete_detector_regions(conn, instrument, [v["id"] for v in old_visits])
            records_mgr.update_fields("visit", old_visits, conn)
        if new_visits:
            records_mgr.insert("visit", new_visits, conn=conn)
        records_mgr.insert("visit_definition", definition_rows, conflict="skip", conn=conn)
        records_mgr.insert("visit_detector_region", region_rows, conn=conn)
    records_mgr.analyze(["visit", "visit_detector_region"])
    return len(visit_rows)


def _has_geometry(detector: Mapping[str, Any]) -> bool:
    return bool(detector.get("pixel_scale_arcsec") and detector.get("bbox_width") and detector.get("bbox_height"))


def _camera_versions(butler: Butler, instrument: str, records: list[Any], registered: list[dict[str, Any]]
                     ) -> list[tuple[list[dict[str, Any]], list[int]]]:
    """The exposures (indices into ``records``) of each camera version, with its detector geometry.

    The version is the ``camera`` certified for the exposure's begin time (one calibration lookup
    for all exposures, one read per version: docs/calibrations.md), restricted to the registered
    detectors (regions name detector records). Exposures without a begin time, or with no camera
    valid then (a repository registered with ``calibs=False``), use the registered detector
    records, as the first camera version wrote them.
    """
    from ._time import to_nsec
    from .instrument import Camera

    fallback = list(range(len(records)))
    timed = {k: to_nsec(r.begin) for k, r in enumerate(records) if r.begin is not None}
    if not timed or "camera" not in {t.name for t in butler.query_dataset_types("camera")}:
        return [(registered, fallback)]
    try:
        found = butler.find_calibs("camera", [({"instrument": instrument}, t) for t in sorted(set(timed.values()))])
    except LookupError:  # no calibration collections for this instrument
        return [(registered, fallback)]
    by_time = {t: ref for (_, t), ref in found.items()}
    geometry = {d["id"]: d for d in registered}
    versions: dict[Any, tuple[list[dict[str, Any]], list[int]]] = {}
    for k in fallback:
        ref = by_time.get(timed[k]) if k in timed else None
        entry = versions.get(ref.id if ref is not None else None)
        if entry is None:
            if ref is None:
                dets = registered
            else:
                camera = butler.get(ref)
                camera = camera if isinstance(camera, Camera) else Camera.from_dict(camera)  # pre-Camera repos
                dets = [d.to_record(instrument) for d in camera.detectors.values() if d.id in geometry]
                dets = [d for d in dets if _has_geometry(d)]
            entry = versions[ref.id if ref is not None else None] = (dets, [])
        entry[1].append(k)
    return list(versions.values())
