"""Joint processing of several instruments in one repository: stable instrument indices and
packers whose IDs never collide across instruments (issue 7).

Instrument records have no integer id, so each repository gives every instrument a stable
index the first time one is needed (by the first joint packer, or `instrument_index`); it is
never reused or changed. The joint packers ("instrument_visit_detector",
"instrument_exposure_detector") pack (instrument index, visit or exposure, detector) with
``INSTRUMENT_BITS`` bits for the index and, for the other fields, the largest maxima of the
registered instruments (so one layout serves every instrument of the repo; it changes only if an
instrument with larger maxima is registered later).

**Allocation is arbitrated by the database**, so any number of processes (on any backend) may
ask at once. An index is two rows of ``butler_attributes`` inserted in one transaction:
``instrument_index:<name>`` = n and ``instrument_index_value:<n>`` = name. The table's primary
key (the attribute name) makes both unique: a name cannot get a second index and an index
cannot go to a second name. A process reads the claimed indices, takes the next one and inserts
both rows; if another process committed either key first, the insert fails on the primary key,
the transaction rolls back (nothing half-written) and the process reads again (where it finds
its name already indexed, or takes the next free index). On SQLite write transactions are
serialised (``BEGIN IMMEDIATE``), so the retry never happens there; on PostgreSQL and MariaDB
the losing insert waits for the winner's commit and then fails. Rows are only ever inserted,
never updated, so an index never changes. No schema change was needed.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from .errors import ButlerError, DataIdError
from .registry._database import lost_race

if TYPE_CHECKING:
    from .dimensions._packers import DataIdPacker
    from .registry._registry import Registry

__all__ = ["INSTRUMENT_BITS", "instrument_index", "instrument_indices", "joint_packer"]

INSTRUMENT_BITS = 4
_PREFIX = "instrument_index:"  # instrument_index:<name> = <n>
_VALUE_PREFIX = "instrument_index_value:"  # instrument_index_value:<n> = <name>: one name per index
_ATTEMPTS = 64


def instrument_indices(registry: Registry) -> dict[str, int]:
    """Every instrument's index assigned so far (as cached by the registry; see `instrument_index`)."""
    return {k[len(_PREFIX):]: int(v) for k, v in registry.attributes.items() if k.startswith(_PREFIX)}


def instrument_index(registry: Registry, name: str) -> int:
    """The repository's stable index of instrument ``name``, assigned on first use.

    Safe under concurrency: of processes asking at once for the same or different names, each
    name ends with exactly one index and no index with two names (see the module docstring).
    """
    index = instrument_indices(registry).get(name)
    if index is not None:
        return index
    registry.refresh_attributes()
    index = instrument_indices(registry).get(name)
    if index is not None:
        return index
    if name not in registry.instruments:
        raise DataIdError(f"instrument {name!r} is not registered, so it has no index; registered instruments: "
                          f"{sorted(registry.instruments)}")
    for attempt in range(_ATTEMPTS):
        try:
            index = _claim(registry, name)
            break
        except Exception as err:
            if not lost_race(err):  # a primary-key conflict with a concurrent claim, or a deadlock
                raise
            time.sleep(random.uniform(0.0, 0.002 * (attempt + 1)))  # de-synchronise the contenders
    else:
        raise ButlerError(f"could not assign an index to instrument {name!r}: {_ATTEMPTS} attempts lost to "
                          "concurrent writers; try again")
    registry.refresh_attributes()
    return index


def _claim(registry: Registry, name: str) -> int:
    """One attempt: read the claimed indices and insert ``name``'s two rows in one transaction."""
    with registry.transaction(write=True) as conn:
        rows = registry.attributes_with_prefix("instrument_index", conn)
        mine = rows.get(_PREFIX + name)
        if mine is not None:  # assigned meanwhile by another process
            return int(mine)
        claimed = {int(v) for k, v in rows.items() if k.startswith(_PREFIX)}
        claimed |= {int(k[len(_VALUE_PREFIX):]) for k in rows if k.startswith(_VALUE_PREFIX)}
        index = max(claimed, default=-1) + 1  # indices are never released, so never reused
        if index >= 1 << INSTRUMENT_BITS:
            taken = {k[len(_PREFIX):]: int(v) for k, v in rows.items() if k.startswith(_PREFIX)}
            raise DataIdError(f"no instrument index left for {name!r}: a repository holds at most "
                              f"{1 << INSTRUMENT_BITS} instruments in joint packers ({INSTRUMENT_BITS} bits), and "
                              f"these have indices: {dict(sorted(taken.items(), key=lambda kv: kv[1]))}")
        registry.insert_attributes({f"{_VALUE_PREFIX}{index}": name, _PREFIX + name: str(index)}, conn)
        return index


def joint_packer(registry: Registry, kind: str, instruments: Any = None) -> DataIdPacker:
    """A packer of (instrument, visit|exposure, detector) over several instruments."""
    from .dimensions._packers import DataIdPacker

    field = {"instrument_visit_detector": "visit", "instrument_exposure_detector": "exposure"}.get(kind)
    if field is None:
        raise ValueError(f"unknown joint packer {kind!r}; use 'instrument_visit_detector' or "
                         "'instrument_exposure_detector'")
    records = registry.queries.dimension_records("instrument", constraints={})
    if instruments is not None:
        wanted = {instruments} if isinstance(instruments, str) else set(instruments)
        missing = wanted - {r.name for r in records}
        if missing:
            raise DataIdError(f"instruments {sorted(missing)} are not registered")
    for r in records:  # every registered instrument gets its index, so the labels are stable
        instrument_index(registry, r.name)
    indices = instrument_indices(registry)
    labels = [f"#unused{i}" for i in range(1 << INSTRUMENT_BITS)]
    for name, i in indices.items():
        labels[i] = name
    maxima = max(getattr(r, f"{field}_max") for r in records)
    detector_max = max(r.detector_max for r in records)
    return DataIdPacker([("instrument", 1 << INSTRUMENT_BITS), (field, maxima), ("detector", detector_max)],
                        labels={"instrument": labels})
