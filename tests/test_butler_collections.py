"""Conformance tests of collections on every registry backend.

RUN, TAGGED and CHAINED collections; chains (cycles refused); associate; remove_runs; read-only
butlers refusing every write. Run ownership has its own file, tests/test_ownership.py.
"""

from __future__ import annotations

import os

import pytest

from butler import Butler, CollectionType, DatasetType
from butler.errors import (
    ButlerError,
    CollectionError,
    ConflictError,
    InvalidNameError,
    ReadOnlyError,
)
from butler.testing import snapshot_repo

RUN1 = "u/tester/run1"


def _put_some(butler: Butler, run: str, visits=(12, 14), detectors=range(3), tag: str = ""):
    return butler.put_many([({"run": run, "tag": tag, "v": v, "d": d}, "metrics",
                             {"instrument": "SimCam", "visit": v, "detector": d})
                            for v in visits for d in detectors], run=run)


def _dataset_files(root: str) -> set[str]:
    out = set()
    for dirpath, dirs, names in os.walk(root):
        if dirpath == root and ".locks" in dirs:
            dirs.remove(".locks")  # process state (butler._run_lock), not content
        for name in names:
            if not name.startswith("butler."):
                out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


# -- types -----------------------------------------------------------------------------------------
def test_collection_types_and_registration(simcam_repo):
    butler = simcam_repo
    assert butler.register_collection("u/tester/tagged", "tagged") is True
    assert butler.register_collection("u/tester/tagged", CollectionType.TAGGED) is False
    butler.register_run("u/tester/run9", doc="a run made on purpose")
    butler.set_chain("u/tester/chain", ["u/tester/run9"])
    assert butler.collection_info("u/tester/tagged").type == CollectionType.TAGGED
    info = butler.collection_info("u/tester/run9")
    assert info.type == CollectionType.RUN and info.owner == butler.user and info.doc == "a run made on purpose"
    assert butler.collection_info("u/tester/chain").type == CollectionType.CHAINED
    assert butler.query_collections("*", types=["RUN"]) == ["u/tester/run9"]
    assert butler.query_collections("*", types=[CollectionType.TAGGED, CollectionType.CHAINED]) == [
        "u/tester/chain", "u/tester/tagged"]
    before = snapshot_repo(butler)
    with pytest.raises(ConflictError, match="already exists as a TAGGED collection, not RUN"):
        butler.register_run("u/tester/tagged")
    with pytest.raises(ConflictError, match="RUN"):
        butler.register_collection("u/tester/run9", "chained")
    with pytest.raises(CollectionError, match="does not exist.*did you mean 'u/tester/run9'"):
        butler.collection_info("u/tester/run8x")
    assert snapshot_repo(butler) == before


BAD_NAMES = ["../escape", "u/../../etc", "/abs/run", "u//double", "trailing/", "with space", "u/tester/.hidden",
             "tab\there", "x" * 300, ""]


def test_invalid_collection_names_are_refused(simcam_repo):
    butler = simcam_repo
    before = snapshot_repo(butler)
    for name in BAD_NAMES:
        for what, call in (
            ("register_run", lambda name=name: butler.register_run(name)),
            ("register_collection", lambda name=name: butler.register_collection(name, "TAGGED")),
            ("put", lambda name=name: butler.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=0,
                                               run=name)),
        ):
            try:
                call()
            except InvalidNameError as err:  # a bad value (ValueError), not a missing collection
                assert "invalid collection name" in str(err), (what, name, str(err))
            else:
                raise AssertionError(f"{what} accepted the collection name {name!r}")
    with pytest.raises(InvalidNameError, match="invalid collection name"):
        Butler(butler.root, run="../escape")
    assert snapshot_repo(butler) == before
    assert not os.path.exists(os.path.join(butler.root, "..", "escape"))


def test_writing_into_a_non_run_collection_is_refused(simcam_repo):
    butler = simcam_repo
    butler.register_collection("u/tester/tagged", "TAGGED")
    before = snapshot_repo(butler)
    with pytest.raises(CollectionError, match="TAGGED collection, not a RUN"):
        butler.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=0, run="u/tester/tagged")
    assert snapshot_repo(butler) == before


# -- chains ----------------------------------------------------------------------------------------
def test_chains_nest_and_search_in_order(simcam_repo):
    butler = simcam_repo
    _put_some(butler, "u/tester/a", detectors=[0, 1])
    _put_some(butler, "u/tester/b", detectors=[1, 2])
    _put_some(butler, "u/tester/c", detectors=[2, 3])
    butler.set_chain("u/tester/inner", ["u/tester/b", "u/tester/a"])
    butler.set_chain("u/tester/outer", ["u/tester/c", "u/tester/inner"])
    assert butler.get_chain("u/tester/outer") == ["u/tester/c", "u/tester/inner"]
    winners = {(r.data_id["visit"], r.data_id["detector"]): r.run
               for r in butler.query_datasets("metrics", collections="u/tester/outer")}
    assert winners == {(v, 0): "u/tester/a" for v in (12, 14)} | {(v, 1): "u/tester/b" for v in (12, 14)} | {
        (v, d): "u/tester/c" for v in (12, 14) for d in (2, 3)}
    assert butler.get("metrics", instrument="SimCam", visit=12, detector=1, collections="u/tester/outer")["run"] == \
        "u/tester/b"
    # Redefining a chain changes the search order.
    butler.set_chain("u/tester/inner", ["u/tester/a", "u/tester/b"])
    assert butler.get_chain("u/tester/inner") == ["u/tester/a", "u/tester/b"]
    assert butler.get("metrics", instrument="SimCam", visit=12, detector=1, collections="u/tester/outer")["run"] == \
        "u/tester/a"
    # Another Butler on the same repository sees the new order.
    reader = Butler(butler.root, collections="u/tester/outer")
    assert reader.get("metrics", instrument="SimCam", visit=12, detector=1)["run"] == "u/tester/a"


def test_chain_cycles_are_refused(simcam_repo):
    butler = simcam_repo
    _put_some(butler, "u/tester/a", detectors=[0])
    butler.set_chain("u/tester/x", ["u/tester/a"])
    butler.set_chain("u/tester/y", ["u/tester/x"])
    butler.set_chain("u/tester/z", ["u/tester/y"])
    before = snapshot_repo(butler)
    with pytest.raises(CollectionError, match="cycle"):
        butler.set_chain("u/tester/x", ["u/tester/z"])
    with pytest.raises(CollectionError, match="cycle"):
        butler.set_chain("u/tester/x", ["u/tester/a", "u/tester/x"])
    with pytest.raises(CollectionError, match="does not exist"):
        butler.set_chain("u/tester/x", ["u/tester/a", "u/tester/nothere"])
    with pytest.raises(ConflictError, match="'u/tester/a' already exists as a RUN collection, not CHAINED"):
        butler.set_chain("u/tester/a", ["u/tester/x"])
    assert snapshot_repo(butler) == before
    assert butler.get_chain("u/tester/x") == ["u/tester/a"]
    assert len(butler.query_datasets("metrics", collections="u/tester/z")) == 2


# -- tagged collections ----------------------------------------------------------------------------
def test_associate_into_tagged_collection(simcam_repo):
    butler = simcam_repo
    run1 = _put_some(butler, "u/tester/a", detectors=range(4), tag="a")
    run2 = _put_some(butler, "u/tester/b", detectors=range(4), tag="b")
    butler.register_collection("u/tester/best", "TAGGED")
    picked = [r for r in run1 if r.data_id["detector"] < 2] + [r for r in run2 if r.data_id["detector"] >= 2]
    butler.associate("u/tester/best", picked)
    found = butler.query_datasets("metrics", collections="u/tester/best")
    assert sorted(r.id for r in found) == sorted(r.id for r in picked)
    assert {r.id: r.run for r in found} == {r.id: r.run for r in picked}  # refs keep their RUN
    assert butler.get("metrics", instrument="SimCam", visit=14, detector=3, collections="u/tester/best")["tag"] == "b"
    assert butler.get("metrics", instrument="SimCam", visit=14, detector=0, collections="u/tester/best")["tag"] == "a"
    assert len(butler.query_datasets("metrics", collections="u/tester/best", where="detector > 1")) == 4
    # Associating the same refs again is harmless.
    butler.associate("u/tester/best", picked[:2])
    assert len(butler.query_datasets("metrics", collections="u/tester/best")) == len(picked)
    # A TAGGED collection in a chain is searched like any other.
    butler.set_chain("u/tester/chain", ["u/tester/best", "u/tester/a"])
    assert butler.get("metrics", instrument="SimCam", visit=12, detector=3, collections="u/tester/chain")["tag"] == "b"
    # Removing a dataset removes it from every collection it was tagged into.
    gone = picked[0]
    assert butler.remove([gone]) == 1
    assert gone.id not in {r.id for r in butler.query_datasets("metrics", collections="u/tester/best")}
    assert butler.find_dataset("metrics", gone.data_id, collections="u/tester/best") is None
    # Removing a run removes its datasets from the tagged collection too.
    butler.remove_runs("u/tester/b")
    assert {r.run for r in butler.query_datasets("metrics", collections="u/tester/best")} == {"u/tester/a"}


def test_associate_conflicts_and_wrong_collection_type(simcam_repo):
    butler = simcam_repo
    run1 = _put_some(butler, "u/tester/a", detectors=[0], tag="a")
    run2 = _put_some(butler, "u/tester/b", detectors=[0], tag="b")
    butler.register_collection("u/tester/best", "TAGGED")
    butler.associate("u/tester/best", run1)
    before = snapshot_repo(butler)
    with pytest.raises(ConflictError, match="u/tester/best"):
        butler.associate("u/tester/best", run2)  # another dataset with the same data ID
    assert snapshot_repo(butler) == before
    with pytest.raises(CollectionError, match="only TAGGED"):
        butler.associate("u/tester/a", run2)
    with pytest.raises(CollectionError, match="does not exist"):
        butler.associate("u/tester/nothere", run2)
    assert snapshot_repo(butler) == before
    assert {r.id for r in butler.query_datasets("metrics", collections="u/tester/best")} == {r.id for r in run1}


# -- removing runs ---------------------------------------------------------------------------------
def test_remove_runs_removes_rows_and_files(simcam_repo):
    butler = simcam_repo
    keep = _put_some(butler, "u/tester/keep")
    _put_some(butler, "u/tester/old1")
    _put_some(butler, "u/tester/old2", visits=[12])
    files_before = _dataset_files(butler.root)
    assert len(files_before) == 6 + 6 + 3
    assert sorted(butler.remove_runs("u/tester/old*")) == ["u/tester/old1", "u/tester/old2"]
    assert butler.query_collections("u/tester/*") == ["u/tester/keep"]
    remaining = _dataset_files(butler.root)
    assert len(remaining) == 6 and all(p.startswith("u/tester/keep/") for p in remaining)
    assert not os.path.exists(os.path.join(butler.root, "u", "tester", "old1"))
    assert {r.id for r in butler.query_datasets("metrics", collections="u/tester/*")} == {r.id for r in keep}
    with pytest.raises(CollectionError, match="does not exist"):
        butler.query_datasets("metrics", collections="u/tester/old1")
    registry = butler.registry
    import sqlalchemy as sa

    with registry.db.transaction() as conn:
        n_datasets = conn.execute(sa.select(sa.func.count()).select_from(registry.schema.dataset)).scalar_one()
        n_files = conn.execute(sa.select(sa.func.count()).select_from(registry.schema.file_record)).scalar_one()
    assert (n_datasets, n_files) == (6, 6)
    assert butler.remove_runs("u/tester/nothing*") == []
    # The name can be used again, for a fresh run.
    again = _put_some(butler, "u/tester/old1", visits=[14], detectors=[0])
    assert [r.run for r in butler.query_datasets("metrics", collections="u/tester/old1")] == ["u/tester/old1"]
    assert butler.get(again[0])["run"] == "u/tester/old1"


def test_remove_runs_refuses_a_chained_child(simcam_repo):
    butler = simcam_repo
    _put_some(butler, "u/tester/a")
    butler.set_chain("u/tester/chain", ["u/tester/a"])
    before = snapshot_repo(butler)
    with pytest.raises(CollectionError, match="child of chain 'u/tester/chain'"):
        butler.remove_runs("u/tester/a")
    assert snapshot_repo(butler) == before
    assert len(butler.query_datasets("metrics", collections="u/tester/chain")) == 6


# -- ownership: tests/test_ownership.py (identity per backend, every write and removal, races) -------


# -- read-only butlers ---------------------------------------------------------------------------------
def test_read_only_butler_refuses_every_write(simcam_repo, tmp_path):
    from butler.instrument import HexCam

    writer = simcam_repo
    ref = writer.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=0)
    writer.register_collection("u/tester/tagged", "TAGGED")
    reader = Butler(writer.root, collections=RUN1)
    assert not reader.writeable
    assert reader.get(ref) == {"a": 1}  # reading is fine
    src = tmp_path / "f.json"
    src.write_text("{}")
    data_id = {"instrument": "SimCam", "visit": 12, "detector": 1}
    writes = {
        "put": lambda b: b.put({"a": 2}, "metrics", data_id, run=RUN1),
        "put_many": lambda b: b.put_many([({"a": 2}, "metrics", data_id)], run=RUN1),
        "ingest": lambda b: b.ingest("metrics", [(src, data_id)], run=RUN1),
        "remove": lambda b: b.remove([ref]),
        "remove_runs": lambda b: b.remove_runs("*"),
        "register_instrument": lambda b: b.register_instrument(HexCam()),
        "insert_dimension_records": lambda b: b.insert_dimension_records("visit", [
            {"instrument": "SimCam", "id": 99, "physical_filter": "SimCam-r", "day_obs": 20261124}]),
        "register_dataset_type": lambda b: b.register_dataset_type(
            DatasetType("other", ("instrument", "visit"), "StructuredData")),
        "register_run": lambda b: b.register_run("u/tester/new"),
        "register_collection": lambda b: b.register_collection("u/tester/newtag", "TAGGED"),
        "set_chain": lambda b: b.set_chain("u/tester/chain", [RUN1]),
        "associate": lambda b: b.associate("u/tester/tagged", [ref]),
    }
    before = snapshot_repo(writer)
    for name, write in writes.items():
        with pytest.raises(ReadOnlyError, match="read-only") as info:
            write(reader)
        assert isinstance(info.value, PermissionError), name
        assert snapshot_repo(writer) == before, name
    assert src.exists()
    assert reader.get(ref) == {"a": 1}


def test_read_only_and_run_are_contradictory(simcam_repo):
    with pytest.raises(ValueError, match="writeable"):
        Butler(simcam_repo.root, run=RUN1, writeable=False)
    assert Butler(simcam_repo.root, run=RUN1).writeable
    assert Butler(simcam_repo.root, writeable=True).writeable
    assert not Butler(simcam_repo.root).writeable
    assert isinstance(ReadOnlyError("x"), ButlerError)
