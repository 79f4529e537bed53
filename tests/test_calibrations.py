"""CALIBRATION collections: certify/decertify, validity lookups, per-type calib choice, cameras (issue 7)."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest

from butler import Butler, DatasetType
from butler.errors import CollectionError, ConflictError, DatasetNotFoundError, DatasetTypeError
from butler.testing import snapshot_repo

FLAT = DatasetType("flat", ("instrument", "detector", "physical_filter"), "StructuredData", is_calibration=True)
BIAS = DatasetType("bias", ("instrument", "detector"), "StructuredData", is_calibration=True)
NS_DAY = 86400 * 10**9


@contextlib.contextmanager
def unchanged(butler):
    before = snapshot_repo(butler)
    yield
    after = snapshot_repo(butler)
    assert after[0] == before[0], "registry changed"
    assert after[1] == before[1], "files changed"


@pytest.fixture
def calib_repo(repo_factory):
    from butler.instrument import SimCam

    repo = repo_factory()
    butler = Butler(repo.root, writeable=True)
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("day_obs", [{"instrument": "SimCam", "id": 20261124},
                                                {"instrument": "SimCam", "id": 20261210}])
    butler.insert_dimension_records("exposure", [
        {"instrument": "SimCam", "id": 1234, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
        {"instrument": "SimCam", "id": 1300, "physical_filter": "SimCam-r", "day_obs": 20261210,
         "begin": "2026-12-10T03:00:00", "end": "2026-12-10T03:00:30"},
    ])
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 1234, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
    ])
    butler.register_dataset_type(FLAT)
    butler.register_dataset_type(BIAS)
    return butler


def _flats(butler, run, value, detectors=range(3), physical_filter="SimCam-r"):
    return butler.put_many([({"v": value, "d": d}, "flat", {"instrument": "SimCam", "detector": d,
                                                            "physical_filter": physical_filter})
                            for d in detectors], run=run)


def test_certify_and_lookup_by_exposure_time(calib_repo):
    b = calib_repo
    nov = _flats(b, "SimCam/calib/flats/nov", "nov")
    dec = _flats(b, "SimCam/calib/flats/dec", "dec")
    assert b.certify("SimCam/calib/flats-v2", nov, valid_from="2026-11-01", valid_to="2026-12-01") == 3
    assert b.certify("SimCam/calib/flats-v2", dec, valid_from=datetime(2026, 12, 1), valid_to="2027-01-01") == 3
    assert b.collection_info("SimCam/calib/flats-v2").type.name == "CALIBRATION"
    got = b.get("flat", instrument="SimCam", detector=1, physical_filter="SimCam-r", exposure=1234,
                collections="SimCam/calib/flats-v2")
    assert got == {"v": "nov", "d": 1}
    # physical_filter comes from the exposure record; visits work too; explicit time=
    assert b.get("flat", instrument="SimCam", detector=1, exposure=1300, collections="SimCam/calib/flats-v2")["v"] == "dec"
    assert b.get("flat", instrument="SimCam", detector=1, visit=1234, collections="SimCam/calib/flats-v2")["v"] == "nov"
    assert b.get("flat", instrument="SimCam", detector=2, physical_filter="SimCam-r", time="2026-12-31T23:59:59",
                 collections="SimCam/calib/flats-v2")["v"] == "dec"
    # half-open: the end instant belongs to the next range
    assert b.get("flat", instrument="SimCam", detector=2, physical_filter="SimCam-r", time="2026-12-01",
                 collections="SimCam/calib/flats-v2")["v"] == "dec"
    # re-certifying the same thing is a no-op
    assert b.certify("SimCam/calib/flats-v2", nov, valid_from="2026-11-01", valid_to="2026-12-01") == 0
    # the chain: search order, first match wins
    b.set_chain("SimCam/calib", ["SimCam/calib/flats-v2", "SimCam/calib/unbounded"])
    assert b.get("flat", instrument="SimCam", detector=1, exposure=1234)["v"] == "nov"
    ref = b.find_dataset("flat", instrument="SimCam", detector=1, exposure=1234)
    assert ref.run == "SimCam/calib/flats/nov" and ref.data_id["physical_filter"] == "SimCam-r"
    rows = b.query_calibrations("SimCam/calib", "flat", instrument="SimCam", exposure=1234)
    assert len(rows) == 3 and {r["run"] for r in rows} == {"SimCam/calib/flats/nov"}


def test_overlap_refused_naming_the_range_then_split(calib_repo):
    b = calib_repo
    nov = _flats(b, "SimCam/calib/flats/nov", "nov")
    fix = _flats(b, "SimCam/calib/flats/fix", "fix", detectors=[1])
    b.certify("SimCam/calib/flats", nov, "2026-11-01", "2026-12-01")
    with unchanged(b), pytest.raises(ConflictError,
                                     match=r"overlaps the range \[2026-11-01T00:00:00Z, 2026-12-01T00:00:00Z\)"):
        b.certify("SimCam/calib/flats", fix, "2026-11-20", "2026-11-25")
    b.certify("SimCam/calib/flats", fix, "2026-11-20", "2026-11-25", split=True)
    get = lambda t: b.get("flat", instrument="SimCam", detector=1, physical_filter="SimCam-r", time=t,
                          collections="SimCam/calib/flats")["v"]
    assert [get("2026-11-19"), get("2026-11-22"), get("2026-11-26")] == ["nov", "fix", "nov"]
    assert get("2026-11-25") == "nov"
    # other detectors untouched
    assert b.get("flat", instrument="SimCam", detector=0, physical_filter="SimCam-r", time="2026-11-22",
                 collections="SimCam/calib/flats")["v"] == "nov"


def test_decertify_splits_ranges(calib_repo):
    b = calib_repo
    nov = _flats(b, "SimCam/calib/flats/nov", "nov")
    b.certify("SimCam/calib/flats", nov, "2026-11-01", "2026-12-01")
    assert b.decertify("SimCam/calib/flats", "flat", "2026-11-10", "2026-11-20", instrument="SimCam", detector=1,
                       physical_filter="SimCam-r") == 1
    ranges = [r["valid"] for r in b.query_calibrations("SimCam/calib/flats", "flat", detector=1)]
    assert ranges == ["[2026-11-01T00:00:00Z, 2026-11-10T00:00:00Z)", "[2026-11-20T00:00:00Z, 2026-12-01T00:00:00Z)"]
    with pytest.raises(DatasetNotFoundError, match=r"nearest in time: \[2026-11-20T00:00:00Z, 2026-12-01T00:00:00Z\) "
                                                   r"in 'SimCam/calib/flats'"):
        b.get("flat", instrument="SimCam", detector=1, physical_filter="SimCam-r", time="2026-11-15T12:00",
              collections="SimCam/calib/flats")
    # without a data ID: every data ID of the type
    assert b.decertify("SimCam/calib/flats", "flat", None, None) == 4
    assert b.query_calibrations("SimCam/calib/flats", "flat") == []


def test_empty_lookup_names_the_nearest_range_and_where(calib_repo):
    b = calib_repo
    nov = _flats(b, "SimCam/calib/flats/nov", "nov")
    b.certify("SimCam/calib/flats-old", nov, "2025-01-01", "2025-02-01")
    b.certify("SimCam/calib/flats-v3", nov, "2026-12-05", "2026-12-06")
    with pytest.raises(DatasetNotFoundError) as info:
        b.get("flat", instrument="SimCam", detector=1, exposure=1234, collections="SimCam/calib/flats-v3")
    msg = str(info.value)
    assert "no 'flat'" in msg and "exposure 1234 (2026-11-24T03:00:00Z)" in msg
    assert "nearest in time: [2026-12-05T00:00:00Z, 2026-12-06T00:00:00Z) in 'SimCam/calib/flats-v3'" in msg
    with pytest.raises(DatasetNotFoundError, match="outside the search path"):
        b.get("flat", instrument="SimCam", detector=1, exposure=1234, collections="SimCam/calib/unbounded")
    with pytest.raises(DatasetNotFoundError, match="no 'flat' is certified for this data ID"):
        b.get("flat", instrument="SimCam", detector=7, exposure=1234, collections="SimCam/calib/flats-v3")


def test_per_dataset_type_calib_collections(calib_repo):
    b = calib_repo
    flats_a = _flats(b, "SimCam/calib/flats/a", "A")
    flats_b = _flats(b, "SimCam/calib/flats/b", "B")
    biases = b.put_many([({"bias": d}, "bias", {"instrument": "SimCam", "detector": d}) for d in range(3)],
                        run="SimCam/calib/biases/run")
    # two flats valid the same night, side by side in two collections
    b.certify("SimCam/calib/flats-v1", flats_a, "2026-11-01", "2026-12-01")
    b.certify("SimCam/calib/flats-v2", flats_b, "2026-11-01", "2026-12-01")
    b.certify("SimCam/calib/biases-A", biases, "2026-01-01", None)
    user = Butler(b.root, collections=["SimCam/raw/all"],
                  calibs={"bias": "SimCam/calib/biases-A", "flat": "SimCam/calib/flats-v2"})
    assert user.get("flat", instrument="SimCam", detector=1, exposure=1234)["v"] == "B"
    assert user.get("bias", instrument="SimCam", detector=1, exposure=1234) == {"bias": 1}
    other = Butler(b.root, calibs={"flat": "SimCam/calib/flats-v1"})
    assert other.get("flat", instrument="SimCam", detector=1, exposure=1234)["v"] == "A"
    # set-based lookup
    pairs = [({"instrument": "SimCam", "detector": d, "physical_filter": "SimCam-r"}, t)
             for d in range(3) for t in ("2026-11-05", "2026-12-05")]
    found = user.find_calibs("flat", pairs)
    assert len(found) == 3 and all(r.run == "SimCam/calib/flats/b" for r in found.values())
    import pickle

    assert pickle.loads(pickle.dumps(user)).calibs == user.calibs


def test_bad_inputs_leave_repository_unchanged(calib_repo):
    b = calib_repo
    nov = _flats(b, "SimCam/calib/flats/nov", "nov")
    b.register_collection("SimCam/tagged", "TAGGED")
    b.register_dataset_type(DatasetType("notcalib", ("instrument", "detector"), "StructuredData"))
    notcalib = b.put({"x": 1}, "notcalib", instrument="SimCam", detector=0, run="SimCam/raw/x")
    with unchanged(b):
        with pytest.raises(ValueError, match="ends before it begins"):
            b.certify("SimCam/calib/new", nov, "2026-12-01", "2026-11-01")
        with pytest.raises(ValueError, match="ends before it begins"):
            b.certify("SimCam/calib/new", nov, "2026-12-01", "2026-12-01")
        with pytest.raises(ValueError, match="cannot convert"):
            b.certify("SimCam/calib/new", nov, "yesterday", None)
        with pytest.raises(CollectionError, match="is a TAGGED collection, not a CALIBRATION"):
            b.certify("SimCam/tagged", nov, "2026-11-01", "2026-12-01")
        with pytest.raises(CollectionError, match="is a RUN collection, not a CALIBRATION"):
            b.certify("SimCam/calib/flats/nov", nov, "2026-11-01", "2026-12-01")
        with pytest.raises(CollectionError, match="not a CALIBRATION"):
            b.decertify("SimCam/tagged", "flat", None, None)
        with pytest.raises(DatasetTypeError, match="not a calibration type"):
            b.certify("SimCam/calib/new", [notcalib], None, None)
        with pytest.raises(ConflictError, match="same data ID"):
            b.certify("SimCam/calib/new", [nov[0], nov[0]], "2026-11-01", "2026-12-01")
        with pytest.raises(CollectionError, match="not a CALIBRATION"):
            b.query_calibrations("SimCam/tagged", "flat")
    b.certify("SimCam/calib/new", nov, "2026-11-01", "2026-12-01")
    with unchanged(b), pytest.raises(ConflictError, match="overlaps"):
        b.certify("SimCam/calib/new", nov[:1] + _dummy(nov[1:]), "2026-11-15", "2026-11-16")
    with pytest.raises(PermissionError):
        Butler(b.root).certify("SimCam/calib/new", nov, None, None)


def _dummy(refs):
    return list(refs)


def test_instrument_calib_chain_and_camera_versions(calib_repo, tmp_path):
    b = calib_repo
    assert b.get_chain("SimCam/calib") == ["SimCam/calib/unbounded"]
    camera = b.get("camera", instrument="SimCam", exposure=1234)
    assert camera.name == "SimCam" and len(camera.detectors) == 9
    assert b.get("camera", instrument="SimCam").name == "SimCam"  # one range: no time needed
    from butler.instrument import SimCam

    definition = SimCam().definition()
    definition["detectors"][4]["rotation_deg"] = 0.5  # re-mounted detector from December on
    newer = SimCam.from_definition(definition)
    b.certify_camera(newer, "2026-12-01")
    assert b.get("camera", instrument="SimCam", exposure=1234).detector(4).rotation_deg == 0.0
    assert b.get("camera", instrument="SimCam", exposure=1300).detector(4).rotation_deg == 0.5
    with pytest.raises(ValueError, match="give exposure=, visit= or time="):
        b.get("camera", instrument="SimCam")
    # re-registering the same instrument is a no-op; a different definition is a conflict
    with unchanged(b):
        b.register_instrument(SimCam())
        with pytest.raises(ConflictError, match="already registered with a different definition"):
            b.register_instrument(newer)


def test_certify_is_set_based(calib_repo):
    """Many refs in one certify; lookups of many (data ID, time) pairs at once."""
    b = calib_repo
    refs = b.put_many([({"d": d}, "bias", {"instrument": "SimCam", "detector": d}) for d in range(9)],
                      run="SimCam/calib/biases/1")
    assert b.certify("SimCam/calib/biases", refs, "2026-01-01", "2027-01-01") == 9
    pairs = [({"instrument": "SimCam", "detector": d}, 1_790_000_000 * 10**9 + i * NS_DAY)
             for d in range(9) for i in range(20)]
    found = b.find_calibs("bias", pairs, collections="SimCam/calib/biases")
    assert len(found) == 9 * 20


def test_cli_certify_and_query_calibrations(calib_repo):
    from click.testing import CliRunner

    from butler.cli import cli

    b = calib_repo
    _flats(b, "SimCam/calib/flats/nov", "nov")
    runner = CliRunner()
    res = runner.invoke(cli, ["certify-calibrations", b.root, "SimCam/calib/flats/nov", "SimCam/calib/flats-v2",
                              "--dataset-type", "flat", "--begin-date", "2026-11-01", "--end-date", "2026-12-01"])
    assert res.exit_code == 0, res.output
    assert "certified 3 'flat'" in res.output
    res = runner.invoke(cli, ["query-calibrations", b.root, "SimCam/calib/flats-v2", "--dataset-type", "flat",
                              "--exposure", "1234", "--instrument", "SimCam", "-f", "json"])
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads(res.output)
    assert len(rows) == 3 and rows[0]["valid"] == "[2026-11-01T00:00:00Z, 2026-12-01T00:00:00Z)"
    res = runner.invoke(cli, ["certify-calibrations", b.root, "SimCam/calib/flats/nov", "SimCam/calib/flats-v2",
                              "--dataset-type", "flat", "--begin-date", "2026-11-15"])
    assert res.exit_code == 2 and "overlaps the range" in res.output
    res = runner.invoke(cli, ["certify-calibrations", b.root, "SimCam/calib/flats/nov", "SimCam/calib/flats-v2",
                              "--dataset-type", "flat", "--begin-date", "2026-12-01", "--end-date", "2026-11-01"])
    assert res.exit_code == 2 and "ends before it begins" in res.output
