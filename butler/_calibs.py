"""Calibrations for the Butler: certify/decertify, validity lookups, per-type calib collections,
camera versions (see docs/calibrations.md).

A calibration dataset type (``DatasetType(..., is_calibration=True)``) is looked up by validity
time: ``butler.get("flat", instrument=..., detector=..., exposure=1234)`` takes the begin time
of exposure 1234 (or of a visit, or an explicit ``time=``) and finds the dataset certified for
that time. The collections searched are, in order of precedence: ``collections=`` of the call,
``Butler(calibs={"flat": ...})`` for that type, else ``<instrument>/calib``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType
from ._faults import crash_point
from .dimensions import DataCoordinate
from .errors import ButlerError, CollectionError, DataIdError, DatasetNotFoundError, DatasetTypeError
from .registry._calibrations import MAX_NS, MIN_NS, CalibRow, format_ns, format_range

if TYPE_CHECKING:
    from ._butler import Butler
    from .registry._collections import CollectionRecord
    from .registry._dataset_types import DatasetTypeRecord
    from .registry._datasets import FoundDataset
    from .registry._registry import Registry

__all__ = [
    "CAMERA_DATASET_TYPE",
    "ValidityRangeError",
    "calib_search_path",
    "certify",
    "certify_camera",
    "decertify",
    "find_calib",
    "find_calibs",
    "observation_times",
    "query_calibrations",
    "setup_instrument_calibs",
    "time_range",
]

CAMERA_DATASET_TYPE = DatasetType("camera", ("instrument",), "Camera", is_calibration=True)
"""The camera of an instrument (a `butler.instrument.Camera`), certified by validity time."""
LEGACY_CAMERA_STORAGE_CLASS = "StructuredData"
"""How repositories made before the Camera storage class registered ``camera`` (a plain dict)."""

_OBSERVATION_KEYS = ("exposure", "visit")


class ValidityRangeError(ValueError, ButlerError):
    """A validity range is empty or reversed, or a time cannot be read."""


# -- times ---------------------------------------------------------------------------------------
def _ns(value: Any, default: int) -> int:
    from ._time import to_nsec

    if value is None:
        return default
    try:
        return to_nsec(value)
    except ValueError as err:
        raise ValidityRangeError(str(err)) from None


def time_range(valid_from: Any, valid_to: Any) -> tuple[int, int]:
    """[begin, end) in ns from user times (None: unbounded); end must be after begin."""
    begin = _ns(valid_from, MIN_NS)
    end = _ns(valid_to, MAX_NS)
    if end <= begin:
        raise ValidityRangeError(
            f"validity range ends before it begins: valid_from={valid_from!r} ({format_ns(begin)}) is not "
            f"before valid_to={valid_to!r} ({format_ns(end)}); ranges are half-open [begin, end)"
        )
    return begin, end


# -- certify / decertify ---------------------------------------------------------------------------
def _calibration_collection(registry: Registry, name: str, *, create: bool) -> tuple[CollectionRecord | None, bool]:
    from .registry._collections import CollectionType, validate_collection_name

    rec = registry.collections.find(name)
    if rec is None:
        if not create:
            registry.collections.get(name)  # raises CollectionError with close matches
        validate_collection_name(name)
        return None, True
    if rec.type != CollectionType.CALIBRATION:
        raise CollectionError(
            f"{name!r} is a {rec.type.name} collection, not a CALIBRATION collection; certify into (and "
            "decertify from) CALIBRATION collections only"
        )
    return rec, False


def _calibration_type(registry: Registry, name: str) -> DatasetTypeRecord:
    type_rec = registry.dataset_types.get(name)
    if not type_rec.dataset_type.is_calibration:
        raise DatasetTypeError(
            f"dataset type {name!r} is not a calibration type; register it with "
            f"DatasetType({name!r}, ..., is_calibration=True) to certify it"
        )
    return type_rec


def certify(registry: Registry, collection: str, refs: Iterable[DatasetRef], valid_from: Any, valid_to: Any, *,
            split: bool = False, root: str = "") -> int:
    """Certify ``refs`` into the CALIBRATION ``collection`` (created if absent) for [from, to).

    Returns the number of ranges inserted (already identical certifications are skipped). The
    caller checks that the registry may be written; ``root`` names the repository in errors.
    """
    begin, end = time_range(valid_from, valid_to)
    manager = registry.calibrations
    rec, create = _calibration_collection(registry, collection, create=True)
    by_type: dict[str, list[DatasetRef]] = {}
    for ref in refs:
        by_type.setdefault(ref.dataset_type.name, []).append(ref)
    type_recs = {name: _calibration_type(registry, name) for name in by_type}
    manager.ensure_table()
    n = 0
    with registry.transaction(write=True) as conn:
        try:
            if create:
                from .registry._collections import CollectionType

                rec, _ = registry.collections.register(collection, CollectionType.CALIBRATION, conn=conn)
            assert rec is not None
            _check_refs_exist(registry, conn, [r for refs_ in by_type.values() for r in refs_], root)
            for name, type_refs in by_type.items():
                type_rec = type_recs[name]
                items = []
                for ref in type_refs:
                    data_id = ref.data_id
                    if data_id.group is not type_rec.group:
                        data_id = DataCoordinate.standardize(data_id, type_rec.group)
                    items.append((data_id.values, ref.id, data_id))
                n += manager.certify(conn, type_rec, rec, items, begin, end, split=split)
            crash_point("certify: before registry commit")
        except BaseException:
            if create:
                registry.collections.forget(collection)
            raise
    crash_point("certify: registry committed")
    return n


def _check_refs_exist(registry: Registry, conn: Any, refs: Sequence[DatasetRef], root: str) -> None:
    present: set[uuid.UUID] = registry.datasets.existing_ids(conn, [r.id for r in refs])
    for ref in refs:
        if ref.id not in present:
            raise DatasetNotFoundError(f"cannot certify {ref}: it is not in the repository {root} (removed?)")


def decertify(registry: Registry, collection: str, dataset_type: str, valid_from: Any, valid_to: Any, *,
              data_id: Any = None, **kwargs: Any) -> int:
    """Remove [from, to) from the validity of ``dataset_type`` in ``collection`` (of one data ID
    when given): ranges inside are removed, ranges across an end are trimmed or split. The caller
    checks that the registry may be written."""
    begin, end = time_range(valid_from, valid_to)
    rec, _ = _calibration_collection(registry, collection, create=False)
    assert rec is not None
    type_rec = _calibration_type(registry, dataset_type)
    keys = None
    if data_id is not None or kwargs:
        keys = [registry.data_ids.standardize(type_rec.group, data_id, kwargs).values]
    manager = registry.calibrations
    if not manager.has_table():
        return 0
    with registry.transaction(write=True) as conn:
        return manager.decertify(conn, type_rec, rec, begin, end, keys=keys)


# -- search paths and observation times ------------------------------------------------------------
def check_calib_collections(registry: Registry, calibs: Mapping[str, Any]) -> None:
    """``Butler(calibs=...)`` must name CALIBRATION collections (or chains of them): a RUN there
    would be skipped by every calibration lookup, silently finding nothing."""
    from .registry._collections import CollectionType

    collections = registry.collections
    for dataset_type, chosen in calibs.items():
        names = [chosen] if isinstance(chosen, str) else chosen
        for name in names:
            bad = [rec for rec in collections.resolve(name) if rec.type != CollectionType.CALIBRATION]
            if bad:
                inside = f" (in the chain {name!r})" if bad[0].name != name else ""
                raise CollectionError(
                    f"calibs={{{dataset_type!r}: {name!r}}}: {bad[0].name!r}{inside} is a {bad[0].type.name} "
                    "collection, but calibrations are looked up in CALIBRATION collections (or CHAINED collections "
                    "of them); certify the datasets into a CALIBRATION collection and name that"
                )


def calib_search_path(registry: Registry, calibs: Mapping[str, Any], dataset_type: str, instrument: str | None,
                      collections: Any = None) -> list[str]:
    """Collections searched for a calibration type: ``collections`` if given, else
    ``calibs[dataset_type]`` (the Butler's), else ``<instrument>/calib``."""
    if collections is not None:
        return [collections] if isinstance(collections, str) else list(collections)
    chosen = calibs.get(dataset_type)
    if chosen:
        names = [chosen] if isinstance(chosen, str) else list(chosen)
        check_calib_collections(registry, {dataset_type: names})  # in memory: collections are cached
        return names
    if instrument is None:
        raise CollectionError(
            f"no collections to search for the calibration {dataset_type!r}: give instrument= (to search "
            f"'<instrument>/calib'), collections=..., or Butler(calibs={{{dataset_type!r}: ...}})"
        )
    return [f"{instrument}/calib"]


def observation_times(registry: Registry, element: str, keys: Iterable[tuple[str, int]], conn: Any = None
                      ) -> dict[tuple[str, int], dict[str, Any]]:
    """Records (begin time and implied values) of exposures or visits ``(instrument, id)``, set-based."""
    return registry.records.observation_times(element, keys, conn)


def _observation(registry: Registry, constraints: Mapping[str, Any]) -> tuple[int | None, dict[str, Any], str]:
    """Time (ns), implied values and a description of the observation named in a data ID."""
    for element in _OBSERVATION_KEYS:
        if element in constraints:
            inst = constraints.get("instrument")
            if inst is None:
                raise DataIdError(f"{element}={constraints[element]} needs instrument= to pick a calibration")
            rec = observation_times(registry, element, [(inst, constraints[element])]).get((inst, constraints[element]))
            if rec is None:
                raise DataIdError(f"no {element} {constraints[element]} of instrument {inst!r} in the repository")
            if rec["begin"] is None:
                raise DataIdError(
                    f"{element} {constraints[element]} of {inst!r} has no begin time in its record; cannot pick "
                    "a calibration by validity (give time=...)"
                )
            implied = {k: v for k, v in rec.items() if k != "begin" and v is not None}
            return rec["begin"], implied, f"{element} {constraints[element]} ({format_ns(rec['begin'])})"
    return None, {}, ""


# -- single lookup -------------------------------------------------------------------------------
def find_calib(butler: Butler, type_rec: DatasetTypeRecord, data_id: Any, kwargs: Mapping[str, Any],
               collections: Any, *, required: bool = True) -> FoundDataset | None:
    """The dataset of a calibration type valid at the observation (exposure/visit) or ``time=``,
    searched in ``collections``, else the Butler's ``calibs`` for the type, else ``<instrument>/calib``."""
    from .registry._collections import CollectionType

    registry = butler.registry
    merged = dict(data_id) if data_id else {}
    merged.update(kwargs)
    time_value = merged.pop("time", None)
    constraints = registry.data_ids.constraints(merged, {})
    t, implied, what = _observation(registry, constraints)
    if time_value is not None:
        t, what = _ns(time_value, 0), f"time {format_ns(_ns(time_value, 0))}"
    group = type_rec.group
    values = {k: v for k, v in constraints.items() if k in group}
    for k, v in implied.items():
        values.setdefault(k, v) if k in group else None
    extra = [k for k in constraints if k not in group and k not in (*_OBSERVATION_KEYS, "physical_filter", "band",
                                                                    "day_obs")]
    if extra:
        raise DataIdError(f"unknown data ID key(s) {extra} for calibration {type_rec.dataset_type.name!r} "
                          f"(dimensions {list(group.required)}; exposure=, visit= or time= pick the validity time)")
    coord = DataCoordinate.standardize(values, group)
    names = calib_search_path(registry, butler.calibs, type_rec.dataset_type.name, constraints.get("instrument"),
                              collections)
    colls = registry.collections.resolve(names)
    calib_colls = [c for c in colls if c.type == CollectionType.CALIBRATION]
    plain_colls = [c for c in colls if c.type != CollectionType.CALIBRATION]
    manager = registry.calibrations
    name = type_rec.dataset_type.name
    with registry.transaction() as conn:
        row: CalibRow | None = None
        if calib_colls:
            if t is not None:
                row = manager.find_many(conn, type_rec, [(coord.values, t)], calib_colls).get((coord.values, t))
            else:
                rows = manager.rows(conn, type_rec, [c.id for c in calib_colls], keys=[coord.values])
                rank = {c.id: i for i, c in enumerate(calib_colls)}
                if rows:
                    best = min(rank[r.collection_id] for r in rows)
                    first = [r for r in rows if rank[r.collection_id] == best]
                    if len(first) > 1:
                        ranges = ", ".join(format_range(r.begin, r.end) for r in sorted(first, key=lambda r: r.begin))
                        raise DataIdError(
                            f"{name!r} {coord} has {len(first)} validity ranges in "
                            f"{calib_colls[best].name!r} ({ranges}); give exposure=, visit= or "
                            "time= to pick one"
                        )
                    row = first[0]
        if row is not None:
            return manager.found_dataset(conn, type_rec, coord, row)
        if plain_colls:
            found = registry.datasets.find(conn, type_rec, coord, plain_colls)
            if found is not None:
                return found
        if not required:
            return None
        raise _calib_not_found(registry, conn, type_rec, coord, colls, calib_colls, t, what)


def _calib_not_found(registry: Registry, conn: Any, type_rec: DatasetTypeRecord, coord: DataCoordinate,
                     colls: Sequence[CollectionRecord], calib_colls: Sequence[CollectionRecord], t: int | None,
                     what: str) -> DatasetNotFoundError:
    from .registry._collections import CollectionType

    manager = registry.calibrations
    name = type_rec.dataset_type.name
    when = f" valid at {what}" if what else ""
    message = f"no {name!r} for {coord}{when} in collections {[c.name for c in colls]}"
    rows = manager.rows(conn, type_rec, [c.id for c in calib_colls], keys=[coord.values])
    where_else = ""
    if not rows:
        others = [c for c in registry.collections.query("*", [CollectionType.CALIBRATION]) if c not in calib_colls]
        rows = manager.rows(conn, type_rec, [c.id for c in others], keys=[coord.values])
        if rows:
            where_else = " (outside the search path)"
    if rows:
        def distance(r: CalibRow) -> int:
            if t is None:
                return 0
            return r.begin - t if t < r.begin else t - r.end + 1

        near = min(rows, key=distance)
        coll = registry.collections.by_id(near.collection_id).name
        message += (f"; nearest in time: {format_range(near.begin, near.end)} in {coll!r}{where_else} "
                    f"(dataset {near.dataset_id})")
    else:
        message += f"; no {name!r} is certified for this data ID in any CALIBRATION collection"
        if not calib_colls:
            message += " (the search path has no CALIBRATION collection)"
    return DatasetNotFoundError(message)


# -- set-based lookup (the planner) --------------------------------------------------------------
def find_calibs(registry: Registry, calibs: Mapping[str, Any], dataset_type: str, pairs: Sequence[tuple[Any, Any]],
                collections: Any = None) -> dict[tuple[DataCoordinate, int], DatasetRef]:
    """The calibration valid at each (data ID, time) pair, in one query per search path.

    ``pairs`` are (data ID of the calibration type, time: ns or any `to_nsec` form). The result
    maps ``(data ID, time ns)`` to the ref (absent when nothing is valid then). The search path
    is ``collections``, else ``calibs[dataset_type]`` (the Butler's), else ``<instrument>/calib`` per
    instrument of the data IDs.
    """
    from .registry._collections import CollectionType

    type_rec = _calibration_type(registry, dataset_type)
    group = type_rec.group
    by_path: dict[tuple[str, ...], list[tuple[DataCoordinate, int]]] = {}
    paths: dict[Any, tuple[str, ...]] = {}
    for data_id, when in pairs:
        coord = data_id if isinstance(data_id, DataCoordinate) and data_id.group is group else \
            DataCoordinate.standardize(data_id, group)
        t = when if isinstance(when, int) else _ns(when, 0)
        inst = coord.values[group.index["instrument"]] if "instrument" in group.index else None
        path = paths.get(inst)
        if path is None:
            path = paths[inst] = tuple(calib_search_path(registry, calibs, dataset_type, inst, collections))
        by_path.setdefault(path, []).append((coord, t))
    out: dict[tuple[DataCoordinate, int], DatasetRef] = {}
    manager = registry.calibrations
    with registry.transaction() as conn:
        for path, items in by_path.items():
            colls = [c for c in registry.collections.resolve(list(path)) if c.type == CollectionType.CALIBRATION]
            out.update(manager.find_refs(conn, type_rec, items, colls))
    return out


# -- listing ------------------------------------------------------------------------------------
def query_calibrations(registry: Registry, collections: Any, dataset_type: str, *, data_id: Any = None,
                       time: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Certified ranges of a type in collections (chains expanded), optionally of one data ID
    (partial data IDs filter on the keys given) and valid at an exposure/visit or ``time``."""
    from .registry._collections import CollectionType

    type_rec = _calibration_type(registry, dataset_type)
    constraints = registry.data_ids.constraints(data_id, kwargs)
    t, implied, _ = _observation(registry, constraints)
    if time is not None:
        t = _ns(time, 0)
    group = type_rec.group
    filters = {k: v for k, v in constraints.items() if k in group.required}
    for k, v in implied.items():
        if k in group.required:
            filters.setdefault(k, v)
    colls = registry.collections.resolve([collections] if isinstance(collections, str) else list(collections))
    bad = [c.name for c in colls if c.type != CollectionType.CALIBRATION]
    if bad:
        raise CollectionError(f"{bad} {'is not a' if len(bad) == 1 else 'are not'} CALIBRATION collection(s)")
    manager = registry.calibrations
    with registry.transaction() as conn:
        rows = manager.rows(conn, type_rec, [c.id for c in colls],
                            begin=t if t is not None else None, end=t + 1 if t is not None else None)
    index = {n: i for i, n in enumerate(group.required)}
    rank = {c.id: i for i, c in enumerate(colls)}
    out = []
    for r in sorted(rows, key=lambda r: (rank[r.collection_id], r.key, r.begin)):
        if any(r.key[index[k]] != v for k, v in filters.items()):
            continue
        out.append({
            "dataset_type": dataset_type,
            "data_id": DataCoordinate.from_values(group, r.key),
            "collection": registry.collections.by_id(r.collection_id).name,
            "run": registry.collections.by_id(r.run_id).name,
            "id": r.dataset_id,
            "begin": r.begin,
            "end": r.end,
            "valid": format_range(r.begin, r.end),
        })
    return out


# -- instruments: the calib chain and the camera ------------------------------------------------
def unbounded_collection(instrument: str) -> str:
    return f"{instrument}/calib/unbounded"


def setup_instrument_calibs(butler: Butler, inst: Any) -> None:
    """At register_instrument: ``<inst>/calib`` (CHAINED, created if absent) -> ``<inst>/calib/unbounded``
    (CALIBRATION), the ``camera`` dataset type, and the camera certified there for all time unless
    a camera is already certified there (later versions: `certify_camera`)."""
    from .registry._collections import CollectionType

    registry = butler.registry
    name = inst.name
    chain = f"{name}/calib"
    unbounded = unbounded_collection(name)
    _camera_type(registry)
    registry.collections.register(unbounded, CollectionType.CALIBRATION)
    if registry.collections.find(chain) is None:
        with registry.transaction(write=True) as conn:
            registry.collections.register(chain, CollectionType.CHAINED, conn=conn)
            registry.collections.set_chain(chain, [unbounded], conn)
    type_rec = registry.dataset_types.get(CAMERA_DATASET_TYPE.name)
    manager = registry.calibrations
    manager.ensure_table()
    rec = registry.collections.get(unbounded)
    with registry.transaction() as conn:
        present = manager.rows(conn, type_rec, [rec.id], keys=[(name,)])
    if not present:
        certify_camera(butler, inst, None, None)


def _camera_type(registry: Registry) -> DatasetType:
    """The registered ``camera`` type (registered now if absent). Repositories that registered it
    as StructuredData before the Camera storage class keep it: their cameras are dicts."""
    found = registry.dataset_types.find(CAMERA_DATASET_TYPE.name)
    if found is not None and found.dataset_type.storage_class == LEGACY_CAMERA_STORAGE_CLASS \
            and found.dataset_type.dimensions == CAMERA_DATASET_TYPE.dimensions:
        return found.dataset_type
    return registry.dataset_types.register(CAMERA_DATASET_TYPE)[0].dataset_type


def certify_camera(butler: Butler, instrument: Any, valid_from: Any, valid_to: Any = None, *,
                   collection: str | None = None) -> DatasetRef:
    """Store a camera version (a `Camera`, an Instrument, name, class path or camera YAML whose name
    is a registered instrument) and certify it for [from, to) in ``collection`` (default
    ``<instrument>/calib/unbounded``), cutting the ranges of earlier versions it overlaps."""
    from .instrument import Camera, load_instrument

    butler.require_writeable()
    registry = butler.registry
    inst = instrument.instrument() if isinstance(instrument, Camera) else load_instrument(instrument)
    if f"instrument:{inst.name}" not in registry.attributes:
        registry.refresh_attributes()
        if f"instrument:{inst.name}" not in registry.attributes:
            raise DataIdError(f"instrument {inst.name!r} is not registered; register it first")
    begin, end = time_range(valid_from, valid_to)  # validate before anything is written
    run = f"{inst.name}/calib/camera/{inst.definition_digest()[:16]}"
    ref = butler.find_dataset(CAMERA_DATASET_TYPE.name, instrument=inst.name, collections=[run]) \
        if registry.collections.find(run) is not None else None
    if ref is None:
        from ._ownership import identity
        from .registry._collections import CollectionType

        camera_type = _camera_type(registry)
        obj = inst.definition() if camera_type.storage_class == LEGACY_CAMERA_STORAGE_CLASS else \
            Camera.from_instrument(inst)
        registry.collections.register(run, CollectionType.RUN, owner=identity(registry.db))
        ref = butler.put(obj, CAMERA_DATASET_TYPE.name, instrument=inst.name, run=run, allow_foreign_run=True)
    certify(registry, collection or unbounded_collection(inst.name), [ref], begin, end, split=True, root=butler.root)
    return ref
