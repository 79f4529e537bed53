"""One coadd from the warps of two instruments (issue 7): SimCam and HexCam in one repository,
sharing band ``r`` through band records, planned together and executed end to end.

The demo pipeline (``pipelines/coadd.yaml``) runs on simulated raws of both cameras that see one
truth catalogue: SimCam (3x3 detectors of 1024x1024 at 0.2 arcsec) and HexCam's central raft
(2048x4096 detectors at 0.26 arcsec, ids 110-113, filter HX-R2). The checks are what a user sees:
the plan's coadd quanta take warps of both instruments, the written coadds are the weighted means
of both instruments' warps pixel by pixel, and their photometry matches the truth.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from butler import Butler, DatasetType
from butler.instrument import HexCam, SimCam
from butler.skymap import DiscreteSkyMap
from butler.testing import snapshot_repo
from orchestration import DaskExecutor, Pipeline, Planner, PlanningError
from orchestration.demo import NO_DATA, coadd_photometry, demo_flavor_records, demo_skymap, simulate_raws
from orchestration.demo.simulate import VisitPlan

PIPELINE = "pipelines/coadd.yaml"
INPUTS = ["SimCam/raw/all", "HexCam/raw/all"]
WHERE = "skymap = 'tiny' AND tract = 0 AND patch = 4 AND band = 'r'"
HEX_RAFT = [110, 111, 112, 113]  # HexCam's central raft covers the patch; the other rafts would only cost time


def _patch_centre() -> tuple[float, float]:
    sky = demo_skymap()
    box = sky[9000].patch(45).inner_bbox
    ra, dec = sky[9000].pixel_to_sky((box.x_min + box.x_max - 1) / 2, (box.y_min + box.y_max - 1) / 2)
    return float(ra), float(dec)


def _two_instrument_repo(butler: Butler) -> DiscreteSkyMap:
    """SimCam + HexCam, one small tract of 1 arcsec pixels (3x3 patches) and the demo flavors."""
    butler.register_instrument(SimCam())
    butler.register_instrument(HexCam())
    sky = DiscreteSkyMap("tiny", [_patch_centre()], radius_deg=0.2, patch_grid=(3, 3), pixel_scale_arcsec=1.0,
                         patch_border_pixels=20)
    butler.register_skymap(sky)
    butler.register_flavors(demo_flavor_records())
    return sky


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """The demo pipeline run on SimCam (2 visits) and HexCam (1 visit) raws over patch 4 in band r."""
    from distributed import Client

    root = str(tmp_path_factory.mktemp("joint") / "repo")
    Butler.create(root)
    butler = Butler(root, writeable=True)
    _two_instrument_repo(butler)
    hexcam = simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",), visits_per_band=1,
                           instrument="HexCam", detectors=HEX_RAFT)
    simcam = simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",), visits_per_band=2,
                           seed=1, truth=hexcam["truth"])  # the same sky, other pointings
    assert (hexcam["raws_written"], simcam["raws_written"]) == (4, 18)
    plan = Planner(butler).build(Pipeline.from_yaml(PIPELINE), inputs=INPUTS, output_run="u/tester/joint",
                                 where=WHERE)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = DaskExecutor(client).run(plan, butler)
    return butler, plan, report, hexcam["truth"]


def _coadd(butler: Butler, flavor: str):
    return butler.get("coadd", skymap="tiny", tract=0, patch=4, band="r", flavor=flavor,
                      collections="u/tester/joint")


def test_plan_takes_warps_of_both_instruments(joint):
    _, plan, report, _ = joint
    by_task: dict[str, list] = {}
    for q in plan.quanta:
        by_task.setdefault(q.task, []).append(q)
    calibrate = sorted((q.data_id["instrument"], q.data_id["detector"]) for q in by_task["calibrate"])
    assert [d for i, d in calibrate if i == "HexCam"] == HEX_RAFT
    assert len([d for i, d in calibrate if i == "SimCam"]) == 18
    warps = sorted((q.data_id["instrument"], q.data_id["visit"]) for q in by_task["warp"])
    assert warps == [("HexCam", 1000), ("SimCam", 1000), ("SimCam", 1001)]  # visit ids repeat across instruments
    warp_index = {q.index: (q.data_id["instrument"], q.data_id["visit"]) for q in by_task["warp"]}
    flavors = set()
    for q in by_task["coadd"]:
        flavors.add(q.data_id["flavor"])
        inputs = sorted((r.data_id["instrument"], r.data_id["visit"]) for r in q.inputs["warp"])
        assert inputs == warps, q.data_id
        assert sorted(warp_index[i] for i in q.upstream) == warps  # the warp quanta of both cameras
    assert flavors == {"deep", "bestSeeing", "nightly-20261124", "nightly-20261125"}
    assert report.ok and report.succeeded == len(plan.quanta) and report.no_work == 0


def test_coadd_is_the_weighted_mean_of_both_instruments_warps(joint):
    butler, _, _, _ = joint
    coadd = _coadd(butler, "deep")
    md = coadd.metadata
    assert md["n_inputs"] == 3 and md["inputs_available"] == 3
    assert sorted(zip(md["instruments"], md["visits"])) == [("HexCam", 1000), ("SimCam", 1000), ("SimCam", 1001)]
    num = np.zeros(coadd.shape)
    den = np.zeros(coadd.shape)
    hexcam_valid = None
    for instrument, visit, weight in zip(md["instruments"], md["visits"], md["weights"]):
        warp = butler.get("warp", instrument=instrument, visit=visit, skymap="tiny", tract=0, patch=4,
                          collections="u/tester/joint")
        assert warp.metadata["instrument"] == instrument and tuple(warp.origin) == tuple(coadd.origin)
        valid = (np.asarray(warp.mask) & NO_DATA) == 0
        num[valid] += weight * np.asarray(warp.image, float)[valid]
        den[valid] += weight
        if instrument == "HexCam":
            hexcam_valid = valid
            assert warp.metadata["detectors"] == HEX_RAFT
    covered = den > 0
    assert np.array_equal(covered, (np.asarray(coadd.mask) & NO_DATA) == 0)
    np.testing.assert_allclose(np.asarray(coadd.image)[covered], (num / np.where(covered, den, 1))[covered],
                               rtol=1e-5, atol=1e-3)
    assert hexcam_valid is not None and hexcam_valid.mean() > 0.8  # HexCam covers most of the patch
    # HexCam carries a real share of the weight (one 0.26" visit against two SimCam visits)
    hex_weight = md["weights"][md["instruments"].index("HexCam")]
    assert 0.2 < hex_weight / sum(md["weights"]) < 0.8


def test_joint_coadd_photometry_matches_the_truth(joint):
    butler, _, _, truth = joint
    result = coadd_photometry(_coadd(butler, "deep"), truth, "r")
    assert result["n"] >= 30
    assert result["ratio"] == pytest.approx(1.0, abs=0.015)
    assert result["offset_pixels"] < 0.2
    hexcam = butler.get("warp", instrument="HexCam", visit=1000, skymap="tiny", tract=0, patch=4,
                        collections="u/tester/joint")
    alone = coadd_photometry(hexcam, truth, "r")  # 0.26 arcsec pixels binned 4x4: calibrated like SimCam's
    assert alone["n"] >= 30 and alone["ratio"] == pytest.approx(1.0, abs=0.015)


def test_nightly_coadds_select_visits_of_both_instruments_by_night(joint):
    butler, _, _, _ = joint
    first = _coadd(butler, "nightly-20261124").metadata
    assert sorted(zip(first["instruments"], first["visits"])) == [("HexCam", 1000), ("SimCam", 1000)]
    second = _coadd(butler, "nightly-20261125").metadata
    assert list(zip(second["instruments"], second["visits"])) == [("SimCam", 1001)]


# -- planning the demo's connection shapes on every backend (no pixels) -----------------------------
def _observe(butler: Butler, instrument: str, filter_name: str, visit: int, ra: float, dec: float) -> None:
    plan = VisitPlan(id=visit, band="r", day_obs=20261124, begin=datetime(2026, 11, 25, 1, tzinfo=UTC), ra=ra,
                     dec=dec, seeing=0.8, calib=1.0, sky=1000.0, shift_pixels=(0.0, 0.0))
    butler.insert_dimension_records("exposure", [plan.exposure_record(instrument, filter_name)])
    butler.define_visits(instrument, exposures=[visit])


def test_joint_plan_and_run_on_every_backend(repo_factory):
    """The no-op demo tasks of ``orchestration.testing``: warps of both cameras feed one coadd."""
    from distributed import Client

    butler = Butler(repo_factory().root, writeable=True)
    _two_instrument_repo(butler)
    ra, dec = _patch_centre()
    _observe(butler, "SimCam", "SimCam-r", 7, ra, dec)
    _observe(butler, "HexCam", "HX-R2", 7, ra, dec)  # the same visit id: distinct through the instrument
    _observe(butler, "HexCam", "HX-N921", 8, ra, dec)  # a band SimCam does not have
    butler.register_dataset_type(DatasetType("raw", ("instrument", "exposure", "detector"), "StructuredData"))
    raws = [({"i": inst, "d": d.id}, "raw", {"instrument": inst, "exposure": e, "detector": d.id})
            for inst, exposures in (("SimCam", [7]), ("HexCam", [7, 8]))
            for d in butler.query_dimension_records("detector", instrument=inst) for e in exposures]
    butler.put_many(raws, run="raw/all")
    pipeline = Pipeline().add_task("calibrate", "orchestration.testing.CalibrateTask") \
        .add_task("warp", "orchestration.testing.WarpTask").add_task("coadd", "orchestration.testing.CoaddTask")
    plan = Planner(butler).build(pipeline, inputs=["raw/all"], output_run="u/tester/noop",
                                 where="skymap = 'tiny' AND tract = 0 AND patch = 4")
    coadds = {q.data_id["band"]: q for q in plan.quanta if q.task == "coadd"}
    assert sorted(coadds) == ["N921", "r"]
    assert sorted((r.data_id["instrument"], r.data_id["visit"]) for r in coadds["r"].inputs["warp"]) == [
        ("HexCam", 7), ("SimCam", 7)]
    assert [(r.data_id["instrument"], r.data_id["visit"]) for r in coadds["N921"].inputs["warp"]] == [("HexCam", 8)]
    hex_warp = next(q for q in plan.quanta if q.task == "warp" and q.data_id["instrument"] == "HexCam"
                    and q.data_id["visit"] == 7)
    # the spatial join picks HexCam's detectors on the patch (its central raft), not all 16
    assert {r.data_id["detector"] for r in hex_warp.inputs["calexp"]} == set(HEX_RAFT)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = DaskExecutor(client).run(plan, butler)
    assert report.ok
    written = butler.get("coadd", skymap="tiny", tract=0, patch=4, band="r", collections="u/tester/noop")
    assert written == {"n": 2}


# -- bad input --------------------------------------------------------------------------------
def test_simulating_a_band_or_detector_the_instrument_lacks_changes_nothing(repo_factory):
    butler = Butler(repo_factory().root, writeable=True)
    _two_instrument_repo(butler)
    before = snapshot_repo(butler)
    with pytest.raises(LookupError, match=r"'HexCam' has no filter in band\(s\) \['z'\]; its bands are "
                                          r"\['N921', 'g', 'i', 'r'\]"):
        simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r", "z"), instrument="HexCam")
    with pytest.raises(LookupError, match=r"'HexCam' has no science detector\(s\) \[130, 'S11'\]"):
        simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",), instrument="HexCam",
                      detectors=[110, 130, "S11"])  # 130 is a wavefront sensor; S11 is a SimCam name
    from astropy.table import Table

    with pytest.raises(ValueError, match=r"no flux_<band> column for band\(s\) \['r'\]"):
        simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",),
                      truth=Table({"id": [1], "ra": [0.0], "dec": [0.0], "flux_g": [1.0]}))
    assert snapshot_repo(butler) == before


def test_planning_a_band_without_raws_of_either_instrument_is_an_error(joint):
    butler, _, _, _ = joint
    with pytest.raises(PlanningError, match="the data query selects nothing"):
        Planner(butler).build(Pipeline.from_yaml(PIPELINE), inputs=INPUTS, output_run="u/tester/none",
                              where="skymap = 'tiny' AND tract = 0 AND patch = 4 AND band = 'N921'")
    assert not butler.query_collections("u/tester/none")
