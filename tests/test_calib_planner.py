"""The planner resolves prerequisite calibrations by validity time, set-based (issue 7)."""

from __future__ import annotations

import pytest

from butler import Butler, DatasetType
from orchestration import Input, Output, Pipeline, Planner, PrerequisiteInput, Task

FLAT = DatasetType("flat", ("instrument", "detector", "physical_filter"), "StructuredData", is_calibration=True)


class ApplyFlatTask(Task):
    dimensions = ("instrument", "exposure", "detector")
    raw = Input(dataset_type="raw_exp", dimensions=("instrument", "exposure", "detector"))
    flat = PrerequisiteInput(dataset_type="flat", dimensions=("instrument", "detector", "physical_filter"))
    out = Output(dataset_type="flattened", dimensions=("instrument", "exposure", "detector"))

    def run(self, raw, flat):
        return {"out": {"raw": raw, "flat": flat}}


@pytest.fixture
def repo(repo_factory):
    from butler.instrument import SimCam

    butler = Butler(repo_factory().root, writeable=True)
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("day_obs", [{"instrument": "SimCam", "id": 20261124}])
    # exposures 1, 2 in November, 3 in December, 4 in 2025 (no flat valid then)
    times = {1: "2026-11-24T03:00", 2: "2026-11-24T04:00", 3: "2026-12-10T03:00", 4: "2025-06-01T00:00"}
    butler.insert_dimension_records("exposure", [
        {"instrument": "SimCam", "id": e, "physical_filter": "SimCam-r", "day_obs": 20261124, "begin": t}
        for e, t in times.items()])
    butler.register_dataset_type(DatasetType("raw_exp", ("instrument", "exposure", "detector"), "StructuredData"))
    butler.register_dataset_type(FLAT)
    butler.put_many([({"e": e, "d": d}, "raw_exp", {"instrument": "SimCam", "exposure": e, "detector": d})
                     for e in times for d in range(3)], run="raw")
    for name in ("nov", "dec", "alt"):
        refs = butler.put_many([({"flat": name, "d": d}, "flat", {"instrument": "SimCam", "detector": d,
                                                                  "physical_filter": "SimCam-r"}) for d in range(3)],
                               run=f"SimCam/calib/flat/{name}")
        if name == "alt":
            butler.certify("SimCam/calib/flats-alt", refs, "2026-01-01", "2027-01-01")
        else:
            butler.certify("SimCam/calib/flats", refs, *(("2026-11-01", "2026-12-01") if name == "nov"
                                                         else ("2026-12-01", "2027-01-01")))
    butler.set_chain("SimCam/calib", ["SimCam/calib/flats", "SimCam/calib/unbounded"])
    return butler


def test_prerequisite_calibs_by_exposure_time(repo):
    pipe = Pipeline().add_task("flat", ApplyFlatTask)
    plan = Planner(repo).build(pipe, inputs=["raw"], output_run="u/tester/out")
    by_exp = {}
    for q in plan.quanta:
        refs = q.inputs["flat"]
        by_exp.setdefault(q.data_id["exposure"], set()).update(r.run for r in refs)
        if q.data_id["exposure"] == 4:
            assert q.status == "skip" and "missing input flat" in q.reason
        else:
            assert q.status == "run" and len(refs) == 1 and refs[0].data_id["detector"] == q.data_id["detector"]
    assert by_exp == {1: {"SimCam/calib/flat/nov"}, 2: {"SimCam/calib/flat/nov"}, 3: {"SimCam/calib/flat/dec"},
                      4: set()}
    # per dataset type choice, in the planner
    plan = Planner(repo).build(pipe, inputs=["raw"], output_run="u/tester/out2",
                               calibs={"flat": "SimCam/calib/flats-alt"})
    assert {r.run for q in plan.quanta for r in q.inputs["flat"]} == {"SimCam/calib/flat/alt"}
