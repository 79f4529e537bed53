"""Joint processing of several instruments in one repository: stable instrument indices and
packers whose IDs never collide across instruments (issue 7).

Instrument records have no integer id, so each repository gives every instrument a stable
index the first time one is needed (at registration, or by the first joint packer): the
attribute ``instrument_index:<name>`` holds it; it is never reused or changed. The joint packers
("instrument_visit_detector", "instrument_exposure_detector") pack (instrument index, visit or
exposure, detector) with ``INSTRUMENT_BITS`` bits for the index and, for the other fields, the
largest maxima of the registered instruments (so one layout serves every instrument of the repo;
it changes only if an instrument with larger maxima is registered later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DataIdError

if TYPE_CHECKING:
    from ._butler import Butler
    from .dimensions._packers import DataIdPacker

__all__ = ["INSTRUMENT_BITS", "instrument_index", "instrument_indices", "joint_packer"]

INSTRUMENT_BITS = 4
_PREFIX = "instrument_index:"


def instrument_indices(butler: Butler) -> dict[str, int]:
    registry = butler._registry
    return {k[len(_PREFIX):]: int(v) for k, v in registry.attributes.items() if k.startswith(_PREFIX)}


def instrument_index(butler: Butler, name: str) -> int:
    """The repository's stable index of instrument ``name`` (assigned on first use)."""
    import sqlalchemy as sa

    registry = butler._registry
    indices = instrument_indices(butler)
    if name in indices:
        return indices[name]
    registry.refresh_attributes()
    indices = instrument_indices(butler)
    if name in indices:
        return indices[name]
    if name not in registry.instruments:
        raise DataIdError(f"instrument {name!r} is not registered")
    index = max(indices.values(), default=-1) + 1
    if index >= 1 << INSTRUMENT_BITS:
        raise DataIdError(f"more than {1 << INSTRUMENT_BITS} instruments in one repository: no index left for {name!r}")
    t = registry.schema.attributes
    try:
        with registry.db.transaction(write=True) as conn:
            conn.execute(t.insert().values(name=_PREFIX + name, value=str(index)))
    except sa.exc.IntegrityError:  # assigned concurrently: use that one
        pass
    registry.refresh_attributes()
    return instrument_indices(butler)[name]


def joint_packer(butler: Butler, kind: str, instruments: Any = None) -> DataIdPacker:
    """A packer of (instrument, visit|exposure, detector) over several instruments."""
    from .dimensions._packers import DataIdPacker

    field = {"instrument_visit_detector": "visit", "instrument_exposure_detector": "exposure"}.get(kind)
    if field is None:
        raise ValueError(f"unknown joint packer {kind!r}; use 'instrument_visit_detector' or "
                         "'instrument_exposure_detector'")
    records = butler.query_dimension_records("instrument")
    if instruments is not None:
        wanted = {instruments} if isinstance(instruments, str) else set(instruments)
        missing = wanted - {r.name for r in records}
        if missing:
            raise DataIdError(f"instruments {sorted(missing)} are not registered")
    for r in records:  # every registered instrument gets its index, so the labels are stable
        instrument_index(butler, r.name)
    indices = instrument_indices(butler)
    labels = [f"#unused{i}" for i in range(1 << INSTRUMENT_BITS)]
    for name, i in indices.items():
        labels[i] = name
    maxima = max(getattr(r, f"{field}_max") for r in records)
    detector_max = max(r.detector_max for r in records)
    return DataIdPacker([("instrument", 1 << INSTRUMENT_BITS), (field, maxima), ("detector", detector_max)],
                        labels={"instrument": labels})
