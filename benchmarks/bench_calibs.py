"""Calibration benchmarks (issue 7): validity lookup for 10,000 exposure+detector quanta, certify
of 10,000 refs. SQLite on local disk.

* ``calibs.lookup_10k``: what the planner does for a prerequisite calibration of 10,008 quanta
  (1,112 exposures x 9 detectors): one query for the exposures' begin times, one
  ``Butler.find_calibs`` over 45 flats (9 detectors x 5 filters) x 12 monthly validity ranges.
* ``calibs.certify_10k``: ``Butler.certify`` of 10,000 refs (distinct data IDs) into a new
  CALIBRATION collection (overlap check and insert set-based).
"""

from __future__ import annotations

import os
import time
import uuid

from ._runner import Context, Result, benchmark

N_EXPOSURES = 1112
DETECTORS = range(9)
FILTERS = ("SimCam-g", "SimCam-r", "SimCam-i", "SimCam-z", "SimCam-y")
MONTH_NS = 30 * 86400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01


def _build(ctx: Context):
    from butler import Butler, DatasetRef, DatasetType
    from butler.instrument import SimCam

    root = os.path.join(ctx.tmpdir, "calib-repo")
    Butler.create(root)
    b = Butler(root, writeable=True)
    b.register_instrument(SimCam())
    b.insert_dimension_records("day_obs", [{"instrument": "SimCam", "id": 20260101}])
    b.insert_dimension_records("exposure", [
        {"instrument": "SimCam", "id": e, "physical_filter": FILTERS[e % 5], "day_obs": 20260101,
         "begin": T0 + e * 7 * 3600 * 10**9} for e in range(N_EXPOSURES)])
    flat = DatasetType("flat", ("instrument", "detector", "physical_filter"), "StructuredData", is_calibration=True)
    per_exp = DatasetType("exp_calib", ("instrument", "exposure", "detector"), "StructuredData",
                          is_calibration=True)
    b.register_dataset_type(flat)
    b.register_dataset_type(per_exp)
    registry = b.registry
    from butler.registry._collections import CollectionType

    def insert(dt, run, data_ids):
        rec, _ = registry.collections.register(run, CollectionType.RUN, owner="bench")
        type_rec = registry.dataset_types.get(dt.name)
        refs = [DatasetRef(dt, b.registry.data_ids.standardize(type_rec.group, d, {}), run, uuid.uuid4()) for d in data_ids]
        with registry.db.transaction(write=True) as conn:
            registry.datasets.insert(conn, type_rec, rec, refs)
        return refs

    for month in range(12):
        refs = insert(flat, f"SimCam/calib/flat/m{month}", [
            {"instrument": "SimCam", "detector": d, "physical_filter": f} for d in DETECTORS for f in FILTERS])
        b.certify("SimCam/calib/flats", refs, T0 + month * MONTH_NS, T0 + (month + 1) * MONTH_NS)
    b.set_chain("SimCam/calib", ["SimCam/calib/flats", "SimCam/calib/unbounded"])
    exp_refs = insert(per_exp, "SimCam/calib/exp/1", [
        {"instrument": "SimCam", "exposure": e, "detector": d} for e in range(N_EXPOSURES) for d in DETECTORS])
    return root, exp_refs[:10_000]


def _repo(ctx: Context):
    return ctx.fixture("calib_repo", _build)


@benchmark("calibs.lookup_10k", unit="s", target=1.0,
           description="validity lookup of 'flat' for 10,008 exposure+detector quanta (times + find_calibs)")
def bench_lookup(ctx: Context) -> Result:
    from butler import Butler, DataCoordinate
    from butler._calibs import observation_times

    root, _ = _repo(ctx)
    b = Butler(root)
    group = b.universe.group(("instrument", "detector", "physical_filter"))
    samples = []
    for _ in range(ctx.size(5, 2)):
        start = time.perf_counter_ns()
        obs = observation_times(b.registry, "exposure", [("SimCam", e) for e in range(N_EXPOSURES)])
        pairs = []
        coords = {}
        for e in range(N_EXPOSURES):
            rec = obs[("SimCam", e)]
            for d in DETECTORS:
                values = {"instrument": "SimCam", "detector": d, "physical_filter": rec["physical_filter"]}
                key = tuple(values[n] for n in group.required)
                coord = coords.get(key)
                if coord is None:
                    coord = coords[key] = DataCoordinate.from_values(group, key)
                pairs.append((coord, rec["begin"]))
        found = b.find_calibs("flat", pairs)
        samples.append(time.perf_counter_ns() - start)
        assert len(found) == len(pairs) == N_EXPOSURES * len(DETECTORS), len(found)
    return Result.from_samples(samples, "s", notes=f"{len(pairs)} quanta, 540 certified ranges")


@benchmark("calibs.certify_10k", unit="s", target=2.0,
           description="Butler.certify of 10,000 refs into a new CALIBRATION collection")
def bench_certify(ctx: Context) -> Result:
    from butler import Butler

    root, refs = _repo(ctx)
    b = Butler(root, writeable=True)
    samples = []
    for i in range(ctx.size(4, 2)):
        start = time.perf_counter_ns()
        n = b.certify(f"SimCam/calib/bench{i}-{uuid.uuid4().hex[:6]}", refs, "2026-01-01", "2027-01-01")
        samples.append(time.perf_counter_ns() - start)
        assert n == len(refs) == 10_000
    return Result.from_samples(samples, "s", notes="new collection each run; overlap check + one INSERT")
