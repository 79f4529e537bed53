"""Prerequisite calibrations of a plan, found by validity time (issue 7).

For a `PrerequisiteInput` whose registered dataset type is a calibration, each quantum's
calibration is the one valid at the begin time of the quantum's exposure (or visit). All
quanta of a connection cost two queries: one for the observations' begin times, one for the
certified ranges (``Butler.find_calibs``); the pick per (data ID, time) is done in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from butler import Butler, DataCoordinate, DatasetRef

if TYPE_CHECKING:
    from butler.dimensions import DimensionGroup

    from ._plan import Quantum

__all__ = ["resolve_calibs"]


def resolve_calibs(butler: Butler, dataset_type: str, cg: DimensionGroup, quanta: Sequence[Quantum],
                   connection_keys: Callable[[Quantum], Mapping[tuple[Any, ...], Mapping[str, Any]]],
                   calibs: Mapping[str, Any]) -> dict[tuple[int, tuple[Any, ...]], DatasetRef] | None:
    """``{(quantum index, calib data ID key): ref}``, or None when this is not a calibration lookup
    (the type is not a calibration, or the quanta have no exposure/visit to take a time from)."""
    if not butler.get_dataset_type(dataset_type).is_calibration or not quanta:
        return None
    q_group = quanta[0].data_id.group
    element = next((e for e in ("exposure", "visit") if e in q_group.required), None)
    if element is None or "instrument" not in q_group.required:
        return None
    obs = butler.observation_times(element, {(q.data_id["instrument"], q.data_id[element]) for q in quanta})
    pairs: list[tuple[DataCoordinate, int]] = []
    wanted: dict[tuple[int, tuple[Any, ...]], tuple[DataCoordinate, int]] = {}
    coords: dict[tuple[Any, ...], DataCoordinate] = {}
    for q in quanta:
        rec = obs.get((q.data_id["instrument"], q.data_id[element]))
        if rec is None or rec["begin"] is None:
            continue  # no time: the quantum is skipped for a missing input, with the reason
        t = rec["begin"]
        for ckey, imp in connection_keys(q).items():
            coord = coords.get(ckey)
            if coord is None:
                coord = coords[ckey] = DataCoordinate.from_values(cg, ckey, dict(imp) or None)
            wanted[(q.index, ckey)] = (coord, t)
            pairs.append((coord, t))
    found = butler.find_calibs(dataset_type, pairs, calibs.get(dataset_type))
    return {k: found[v] for k, v in wanted.items() if v in found}
