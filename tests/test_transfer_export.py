"""Butler.export and the bundle it writes: what is in it (datasets of every run, collections, the
dimension records the data IDs need, memberships, validity ranges, provenance, files), and that a
failed export leaves nothing behind."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from butler import Butler, DatasetType
from butler.errors import ChecksumError, CollectionError, ConflictError, DatasetNotFoundError, DatasetTypeError
from butler.testing import SIMCAM_VISITS
from butler.transfer import open_bundle

RUN1, RUN2 = "u/tester/run1", "u/tester/run2"


@pytest.fixture
def travel_repo(repo_factory, tmp_path):
    """SimCam, visits 12 and 14; 'metrics' in two runs, a TAGGED and a CHAINED collection, a
    calibration certified in a CALIBRATION collection, a direct-ingested file, a zarr calexp and a
    quantum record for one dataset."""
    from butler.exposure import Exposure
    from butler.instrument import SimCam

    repo = repo_factory()
    butler = Butler(repo.root, writeable=True)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type(DatasetType("metrics", dims, "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", dims, "Exposure"))
    butler.register_dataset_type(DatasetType("raw_text", ("instrument", "visit", "detector"), "Bytes"))
    butler.register_dataset_type(DatasetType("flat", ("instrument", "detector"), "StructuredData",
                                             is_calibration=True))
    refs = {}
    for run in (RUN1, RUN2):
        refs[run] = butler.put_many([({"v": v, "d": d, "run": run}, "metrics",
                                      {"instrument": "SimCam", "visit": v, "detector": d})
                                     for v in (12, 14) for d in (0, 1)], run=run)
    butler.put(Exposure(np.arange(16, dtype=np.float32).reshape(4, 4)), "calexp",
               {"instrument": "SimCam", "visit": 12, "detector": 0}, run=RUN1)
    outside = tmp_path / "outside" / "raw_12_2.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"raw bytes of visit 12 detector 2")
    direct = butler.ingest("raw_text", [(str(outside), {"instrument": "SimCam", "visit": 12, "detector": 2})],
                           run=RUN1, transfer="direct")
    butler.register_collection("u/tester/best", "TAGGED", doc="hand-picked")
    butler.associate("u/tester/best", [refs[RUN2][0]])
    butler.set_chain("u/tester/all", ["u/tester/best", RUN1])
    flat = butler.put({"flat": 1}, "flat", {"instrument": "SimCam", "detector": 0}, run="SimCam/calib/run")
    butler.certify("SimCam/calib/flats", [flat], "2026-01-01", "2027-01-01")
    quantum = uuid.uuid4()
    registry = butler.registry
    with registry.transaction(write=True) as conn:
        run_id = registry.collections.get(RUN1).id
        registry.provenance.insert(conn, run_id, [{
            "quantum_id": quantum, "task": "measure", "data_id": {"instrument": "SimCam", "visit": 12},
            "inputs": [direct[0].id], "outputs": [refs[RUN1][0].id], "status": "succeeded", "host": "h1",
            "start_ns": 1, "end_ns": 2, "config_digest": "abc"}])
    butler.refs = refs  # for the tests (an attribute of this test object only)
    butler.direct = direct[0]
    butler.flat = flat
    butler.quantum = quantum
    return butler


@pytest.mark.parametrize("suffix", ["bundle.zip", "bundle_dir"])
def test_export_holds_every_run_copy_records_collections_and_files(travel_repo, tmp_path, suffix):
    butler = travel_repo
    path = tmp_path / suffix
    report = butler.export(path, collections=[RUN1, RUN2], dataset_types=["metrics", "calexp"])
    assert report.datasets == 9 and report.dataset_types == {"calexp": 1, "metrics": 8}
    assert os.path.isfile(path) == suffix.endswith(".zip")
    with open_bundle(path) as bundle:
        assert bundle.verify_files() == 9
        refs = {r.id: r for r in bundle.refs("metrics", butler.universe)}
        expected = {r.id: r for run in (RUN1, RUN2) for r in butler.refs[run]}
        assert set(refs) == set(expected)  # ids survive
        for rid, ref in refs.items():
            assert (ref.run, ref.data_id) == (expected[rid].run, expected[rid].data_id)
        collections = {c.name: c for c in bundle.collections}
        assert set(collections) == {RUN1, RUN2}
        assert collections[RUN1].type == "RUN" and collections[RUN1].owner == butler.user
        # The records the data IDs need, transitively, and no others.
        visits = bundle.records("visit").to_pylist()
        assert sorted(v["id"] for v in visits) == [12, 14]
        assert sorted(r["name"] for r in bundle.records("physical_filter").to_pylist()) == ["SimCam-g", "SimCam-r"]
        assert sorted(r["name"] for r in bundle.records("band").to_pylist()) == ["g", "r"]
        assert [r["id"] for r in bundle.records("day_obs").to_pylist()] == [20261124]
        assert sorted(r["id"] for r in bundle.records("detector").to_pylist()) == [0, 1]
        assert [r["name"] for r in bundle.records("instrument").to_pylist()] == ["SimCam"]
        assert "SimCam" in bundle.instruments
        # The files are the repository's bytes, at their repository-relative paths.
        table = bundle.datasets("calexp").to_pylist()
        assert table[0]["checksum"].startswith("manifest:")
        row = bundle.datasets("metrics").to_pylist()[0]
        with bundle.open_file(row["path"]) as stream:
            data = stream.read()
        with open(os.path.join(butler.root, row["path"]), "rb") as stream:
            assert data == stream.read()


def test_export_of_a_chain_exports_the_chain_its_children_tags_and_runs(travel_repo, tmp_path):
    butler = travel_repo
    report = butler.export(tmp_path / "b.zip", collections="u/tester/all", dataset_types="metrics")
    with open_bundle(tmp_path / "b.zip") as bundle:
        collections = {c.name: c for c in bundle.collections}
        assert collections["u/tester/all"].type == "CHAINED"
        assert collections["u/tester/all"].children == ("u/tester/best", RUN1)
        assert collections["u/tester/best"].type == "TAGGED" and collections["u/tester/best"].doc == "hand-picked"
        assert RUN2 in collections  # the run of the tagged dataset
        names = [c.name for c in bundle.collections]
        assert names.index("u/tester/all") > names.index("u/tester/best")  # children first
        tags = bundle.table("tags").to_pylist()
        assert tags == [{"collection": "u/tester/best", "dataset_id": butler.refs[RUN2][0].id.hex}]
        assert {r.id for r in bundle.refs("metrics", butler.universe)} == {
            butler.refs[RUN2][0].id, *(r.id for r in butler.refs[RUN1])}
    assert report.datasets == 5
    plain = butler.export(tmp_path / "nochain.zip", collections="u/tester/all", dataset_types="metrics", chains=False)
    with open_bundle(tmp_path / "nochain.zip") as bundle:
        assert "u/tester/all" not in {c.name for c in bundle.collections}
    assert plain.datasets == 5


def test_export_of_a_calibration_collection_keeps_validity_ranges(travel_repo, tmp_path):
    butler = travel_repo
    report = butler.export(tmp_path / "c.zip", collections="SimCam/calib/flats")
    assert report.dataset_types == {"flat": 1}
    with open_bundle(tmp_path / "c.zip") as bundle:
        (row,) = bundle.table("calibs").to_pylist()
        assert row["collection"] == "SimCam/calib/flats" and row["dataset_id"] == butler.flat.id.hex
        assert row["end_ns"] > row["begin_ns"]
        types = {c.name: c.type for c in bundle.collections}
        assert types == {"SimCam/calib/flats": "CALIBRATION", "SimCam/calib/run": "RUN"}
        assert bundle.dataset_types[0].is_calibration


def test_export_keeps_provenance_of_exported_datasets(travel_repo, tmp_path):
    butler = travel_repo
    butler.export(tmp_path / "p", collections=RUN1, dataset_types="metrics")
    with open_bundle(tmp_path / "p") as bundle:
        (quantum,) = bundle.table("quanta").to_pylist()
        assert quantum["quantum_id"] == butler.quantum.hex and quantum["run"] == RUN1
        assert quantum["task"] == "measure" and quantum["status"] == "succeeded"
        assert json.loads(quantum["inputs"]) == [butler.direct.id.hex]
        assert bundle.table("quantum_outputs").to_pylist() == [
            {"dataset_id": butler.refs[RUN1][0].id.hex, "quantum_id": butler.quantum.hex}]


def test_direct_ingested_file_is_copied_inside_the_bundle(travel_repo, tmp_path):
    butler = travel_repo
    butler.export(tmp_path / "d.zip", collections=RUN1, dataset_types="raw_text")
    with open_bundle(tmp_path / "d.zip") as bundle:
        (row,) = bundle.datasets("raw_text").to_pylist()
        assert row["direct_path"] == str(tmp_path / "outside" / "raw_12_2.bin")
        assert row["path"] == f"direct/{butler.direct.id.hex}/raw_12_2.bin"
        with bundle.open_file(row["path"]) as stream:
            assert stream.read() == b"raw bytes of visit 12 detector 2"
        assert bundle.verify_files() == 1


def test_where_and_dataset_types_restrict_the_export(travel_repo, tmp_path):
    butler = travel_repo
    report = butler.export(tmp_path / "w.zip", collections=[RUN1, RUN2], where="visit = 14 AND detector = 1")
    assert report.dataset_types == {"metrics": 2}
    with open_bundle(tmp_path / "w.zip") as bundle:
        assert [r["id"] for r in bundle.records("visit").to_pylist()] == [14]
        assert [r["id"] for r in bundle.records("detector").to_pylist()] == [1]
        assert [r["name"] for r in bundle.records("physical_filter").to_pylist()] == ["SimCam-g"]
    bound = butler.export(tmp_path / "bind.zip", collections=RUN1, where="visit IN (:v)", bind={"v": [12]},
                          dataset_types="metr*")
    assert bound.dataset_types == {"metrics": 2}


def test_export_without_files_writes_the_manifest_only(travel_repo, tmp_path):
    butler = travel_repo
    report = butler.export(tmp_path / "m", collections=RUN1, include_files=False)
    assert report.files == 0
    files = [os.path.relpath(os.path.join(d, f), tmp_path / "m") for d, _, fs in os.walk(tmp_path / "m") for f in fs]
    assert all(f.startswith("manifest") for f in files)
    with open_bundle(tmp_path / "m") as bundle:
        assert not bundle.include_files and bundle.verify_files() == 0
        assert len(bundle.refs("metrics", butler.universe)) == 4


def test_export_refusals_leave_nothing(travel_repo, tmp_path):
    butler = travel_repo
    with pytest.raises(CollectionError, match="does not exist"):
        butler.export(tmp_path / "x.zip", collections="u/nobody/run")
    with pytest.raises(DatasetTypeError, match="not registered"):
        butler.export(tmp_path / "x.zip", collections=RUN1, dataset_types="nosuchtype")
    (tmp_path / "taken.zip").write_bytes(b"")
    with pytest.raises(ConflictError, match="already exists"):
        butler.export(tmp_path / "taken.zip", collections=RUN1)
    # A damaged file: verify=True refuses it, naming the dataset; a missing one fails any export.
    ref = butler.refs[RUN1][1]
    path = butler.get_uri(ref)
    with open(path, "ab") as stream:
        stream.write(b" ")
    with pytest.raises(ChecksumError, match="metrics dataset"):
        butler.export(tmp_path / "v.zip", collections=RUN1, verify=True)
    os.unlink(path)
    with pytest.raises(DatasetNotFoundError, match="is missing"):
        butler.export(tmp_path / "v", collections=RUN1)
    assert sorted(os.listdir(tmp_path)) == ["outside", "repo", "taken.zip"]  # no temporary left behind


def test_get_uri_points_at_the_file(travel_repo):
    butler = travel_repo
    ref = butler.refs[RUN1][0]
    uri = butler.get_uri(ref)
    assert os.path.isabs(uri) and uri.startswith(butler.root) and os.path.isfile(uri)
    calexp = butler.find_dataset("calexp", instrument="SimCam", visit=12, detector=0, collections=RUN1)
    assert os.path.isdir(butler.get_uri(calexp))  # a zarr store
    assert butler.get_uri(butler.direct) == os.path.abspath(butler.get_uri(butler.direct))
    assert butler.get_uri(butler.direct).endswith(os.path.join("outside", "raw_12_2.bin"))
    assert butler.get_uris(butler.refs[RUN2]) == [butler.get_uri(r) for r in butler.refs[RUN2]]
    from butler import DatasetRef

    stranger = DatasetRef(ref.dataset_type, ref.data_id, RUN1, uuid.uuid4())
    with pytest.raises(DatasetNotFoundError, match="has no stored file"):
        butler.get_uri(stranger)
