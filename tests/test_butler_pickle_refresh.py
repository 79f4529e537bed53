"""Pickling of Butler and DatasetRef (pickle and cloudpickle, in this process and in another one),
and ``refresh()`` seeing what other processes added, on every registry backend.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import cloudpickle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler import Butler, DataCoordinate, DatasetRef, DatasetType, DimensionUniverse
from butler.errors import CollectionError, DataIdError, DatasetTypeError, RunOwnershipError
from butler.testing import TEST_ROLES, create_login_roles

DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}
NEW_OWNER = TEST_ROLES[1]
PICKLERS = [pickle, cloudpickle]


def _run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (inheriting the environment) and require success."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          check=False, timeout=timeout, env={**os.environ, "BUTLER_USER": "tester"})
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- Butler pickling -------------------------------------------------------------------------------
@pytest.mark.parametrize("module", PICKLERS, ids=["pickle", "cloudpickle"])
def test_butler_pickles_as_its_configuration(simcam_repo, module):
    butler = simcam_repo
    ref = butler.put({"a": 1}, "metrics", DATA_ID)
    data = module.dumps(butler)
    assert len(data) <= 1024, len(data)
    assert b"sqlite3.Connection" not in data and b"Engine" not in data
    copy = module.loads(data)
    assert isinstance(copy, Butler)
    assert (copy.root, copy.run, copy.collections, copy.writeable) == (
        butler.root, butler.run, butler.collections, butler.writeable)
    assert copy.get(ref) == {"a": 1}
    assert copy.get("metrics", DATA_ID) == {"a": 1}
    assert [r.id for r in copy.query_datasets("metrics")] == [ref.id]
    # Still writeable into the same run.
    other = copy.put({"b": 2}, "metrics", instrument="SimCam", visit=14, detector=0)
    assert other.run == butler.run and butler.get(other) == {"b": 2}
    # A read-only butler stays read-only, with its collections.
    reader = module.loads(module.dumps(Butler(butler.root, collections=["u/tester/run1"])))
    assert not reader.writeable and reader.collections == ("u/tester/run1",)
    assert reader.get("metrics", DATA_ID) == {"a": 1}


def test_butler_unpickled_in_another_process(simcam_repo, tmp_path):
    butler = simcam_repo
    refs = butler.put_many([({"d": d}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": d})
                            for d in range(3)])
    (tmp_path / "butler.pkl").write_bytes(pickle.dumps(butler))
    (tmp_path / "ref.pkl").write_bytes(cloudpickle.dumps(refs[1]))
    proc = _run_python("""
        import json, pickle, sys
        import cloudpickle
        with open(sys.argv[1], "rb") as f:
            butler = pickle.load(f)
        with open(sys.argv[2], "rb") as f:
            ref = cloudpickle.load(f)
        out = {
            "by_ref": butler.get(ref),
            "by_data_id": butler.get("metrics", instrument="SimCam", visit=12, ccd=2),
            "query": sorted(str(r.id) for r in butler.query_datasets("metrics")),
            "run": butler.run,
            "ref_id": str(ref.id),
        }
        new = butler.put({"from": "child"}, "metrics", instrument="SimCam", visit=14, detector=8)
        out["new_id"] = str(new.id)
        print(json.dumps(out))
    """, str(tmp_path / "butler.pkl"), str(tmp_path / "ref.pkl"))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["by_ref"] == {"d": 1}
    assert out["by_data_id"] == {"d": 2}
    assert out["query"] == sorted(str(r.id) for r in refs)
    assert out["run"] == "u/tester/run1" and out["ref_id"] == str(refs[1].id)
    # The child's dataset is visible here at once, without refresh().
    assert butler.get("metrics", instrument="SimCam", visit=14, detector=8) == {"from": "child"}
    assert str(uuid.UUID(out["new_id"])) in {str(r.id) for r in butler.query_datasets("metrics")}


# -- DatasetRef pickling ---------------------------------------------------------------------------
@pytest.mark.parametrize("module", PICKLERS, ids=["pickle", "cloudpickle"])
def test_dataset_ref_pickles_small(simcam_repo, module):
    ref = simcam_repo.put({"a": 1}, "metrics", DATA_ID)
    data = module.dumps(ref)
    assert len(data) <= 300, len(data)
    back = module.loads(data)
    assert back == ref and hash(back) == hash(ref)
    assert back.id == ref.id and back.run == ref.run and back.dataset_type == ref.dataset_type
    assert back.data_id == ref.data_id and back.data_id.group is ref.data_id.group
    assert simcam_repo.get(back) == {"a": 1}
    component = module.loads(module.dumps(ref.make_component("wcs")))
    assert component.component == "wcs" and component.id == ref.id and component != ref
    with pytest.raises(AttributeError):
        back.run = "other"  # type: ignore[misc]


UNIVERSE = DimensionUniverse.default()
NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,19}", fullmatch=True)
SAFE = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_+\-]{0,11}", fullmatch=True)
RUN = st.lists(SAFE, min_size=1, max_size=3).map("/".join)
DIMENSION_SETS = [("instrument", "visit", "detector"), ("instrument", "exposure", "detector"), ("instrument",),
                  ("skymap", "tract", "patch", "band"), ("band",), ("flavor", "skymap", "tract"), ()]


@st.composite
def refs(draw):
    dims = draw(st.sampled_from(DIMENSION_SETS))
    dataset_type = DatasetType(draw(NAME), dims, draw(st.sampled_from(["StructuredData", "NumpyArray"])))
    group = dataset_type.group(UNIVERSE)
    values = {n: draw(st.integers(0, 2**40) if UNIVERSE[n].key.type == "int" else SAFE) for n in group.required}
    data_id = DataCoordinate.standardize(values, group)
    return DatasetRef(dataset_type, data_id, draw(RUN), uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))), values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(refs(), st.sampled_from(PICKLERS))
def test_dataset_ref_pickle_round_trip(case, module):
    ref, values = case
    data = module.dumps(ref)
    assert len(pickle.dumps(ref)) <= 300
    back = module.loads(data)
    assert back == ref
    assert back.id == ref.id and back.run == ref.run and back.component is None
    assert back.dataset_type == ref.dataset_type and back.dataset_type.name == ref.dataset_type.name
    assert back.data_id == values and back.data_id.to_dict() == ref.data_id.to_dict()
    assert back.data_id.group is ref.data_id.group


# -- refresh ---------------------------------------------------------------------------------------
def test_refresh_sees_what_another_process_registered(simcam_repo):
    butler = simcam_repo
    butler.put({"a": 1}, "metrics", DATA_ID)
    assert butler.query_dataset_types("*") == [butler.get_dataset_type("metrics")]
    with pytest.raises(DataIdError):
        butler.put({"x": 1}, "metrics", instrument="HexCam", visit=1, chip=100)  # HexCam unknown here so far
    _run_python("""
        import sys
        from butler import Butler, DatasetType
        from butler.instrument import HexCam
        butler = Butler(sys.argv[1], run="u/tester/child")
        butler.register_dataset_type(DatasetType("newtype", ("instrument", "visit"), "StructuredData"))
        butler.register_collection("u/tester/child_tagged", "TAGGED")
        butler.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 16, "physical_filter": "SimCam-i",
                                                   "day_obs": 20261125, "exposure_time": 12.0}])
        butler.register_instrument(HexCam(), calibs=False)
        butler.insert_dimension_records("visit", [{"instrument": "HexCam", "id": 1, "physical_filter": "HX-N921",
                                                   "day_obs": 20261125}])
        butler.put({"child": 1}, "metrics", instrument="SimCam", visit=16, ccd=4)
        butler.set_chain("u/tester/child_chain", ["u/tester/child", "u/tester/run1"])
    """, butler.root)
    # Datasets and records are always read from the database: visible without refresh.
    assert butler.get("metrics", instrument="SimCam", visit=16, detector=4, collections="u/tester/child") == {
        "child": 1}
    assert [r.id for r in butler.query_dimension_records("visit", instrument="SimCam")] == [12, 14, 16]
    butler.refresh()
    assert [t.name for t in butler.query_dataset_types("*")] == ["metrics", "newtype"]
    assert butler.get_dataset_type("newtype") == DatasetType("newtype", ("instrument", "visit"), "StructuredData")
    assert butler.collection_info("u/tester/child_tagged").type.name == "TAGGED"
    assert butler.collection_info("u/tester/child").owner == butler.user
    assert butler.get_chain("u/tester/child_chain") == ["u/tester/child", "u/tester/run1"]
    assert butler.query_collections("u/tester/child*") == ["u/tester/child", "u/tester/child_chain",
                                                           "u/tester/child_tagged"]
    # The new instrument's aliases (HexCam: 'chip') work after refresh.
    butler.register_dataset_type(DatasetType("hexmetrics", ("instrument", "visit", "detector"), "StructuredData"))
    ref = butler.put({"hex": 1}, "hexmetrics", instrument="HexCam", visit=1, chip=100)
    assert ref.data_id["detector"] == 100
    assert butler.get("hexmetrics", instrument="HexCam", visit=1, detector=100) == {"hex": 1}
    # The new dataset type is writable from here, and the chain searches the child's run first.
    butler.put({"n": 16}, "newtype", instrument="SimCam", visit=16)
    assert butler.get("newtype", instrument="SimCam", visit=16) == {"n": 16}
    assert butler.get("metrics", instrument="SimCam", visit=16, detector=4,
                      collections="u/tester/child_chain") == {"child": 1}
    with pytest.raises(DatasetTypeError, match="newtyp' is not registered; did you mean 'newtype'"):
        butler.get_dataset_type("newtyp")


def test_new_datasets_visible_to_queries_without_refresh(simcam_repo):
    writer = simcam_repo
    reader = Butler(writer.root, collections="u/tester/*")
    writer.put({"a": 1}, "metrics", DATA_ID)
    assert len(reader.query_datasets("metrics")) == 1  # caches are warm before the other process writes
    _run_python("""
        import sys
        from butler import Butler
        Butler(sys.argv[1], run="u/tester/run1").put({"b": 2}, "metrics", instrument="SimCam", visit=14, detector=1)
    """, writer.root)
    found = reader.query_datasets("metrics")
    assert sorted((r.data_id["visit"], r.data_id["detector"]) for r in found) == [(12, 3), (14, 1)]
    assert reader.get("metrics", instrument="SimCam", visit=14, detector=1) == {"b": 2}
    assert reader.exists("metrics", instrument="SimCam", visit=14, detector=1)


def test_runs_removed_recreated_or_handed_over_by_another_process_without_refresh(simcam_repo):
    """A removed run is gone for every process at once, a run re-created under the same name is
    read as the new run (never as whichever collection now has the old run's id), and a hand-over
    shows the new owner: no process needs ``refresh()`` after another one changed a run."""
    butler = simcam_repo
    create_login_roles(butler, [NEW_OWNER])  # on servers an owner is a role
    butler.put({"v": "old a"}, "metrics", DATA_ID, run="u/tester/a")
    butler.put({"v": "gone"}, "metrics", DATA_ID, run="u/tester/gone")
    assert butler.get("metrics", DATA_ID, collections="u/tester/a") == {"v": "old a"}
    assert butler.collection_info("u/tester/a").owner == butler.user  # every cache is warm
    _run_python("""
        import sys
        from butler import Butler
        butler = Butler(sys.argv[1], writeable=True)
        data_id = {"instrument": "SimCam", "visit": 12, "detector": 3}
        butler.remove_runs(["u/tester/a", "u/tester/gone"])
        butler.put({"v": "b"}, "metrics", data_id, run="u/tester/b")  # may get a removed run's id
        butler.put({"v": "new a"}, "metrics", data_id, run="u/tester/a")
        butler.chown_run("u/tester/a", sys.argv[2])
    """, butler.root, NEW_OWNER)
    with pytest.raises(CollectionError, match="'u/tester/gone' does not exist"):
        butler.get("metrics", DATA_ID, collections="u/tester/gone")
    with pytest.raises(CollectionError, match="'u/tester/gone' does not exist"):
        butler.query_datasets("metrics", collections="u/tester/gone")
    assert butler.get("metrics", DATA_ID, collections="u/tester/a") == {"v": "new a"}
    assert [butler.get(r) for r in butler.query_datasets("metrics", collections="u/tester/a")] == [{"v": "new a"}]
    assert [r.run for r in butler.query_datasets("metrics", collections="u/tester/a")] == ["u/tester/a"]
    assert butler.collection_info("u/tester/a").owner == NEW_OWNER
    with pytest.raises(RunOwnershipError, match=f"belongs to {NEW_OWNER!r}"):
        butler.put({"v": "mine?"}, "metrics", DATA_ID, run="u/tester/a", replace=True)
