"""Conformance tests of writing and reading datasets through the Butler, on every registry backend.

put/get/exists/get by ref/get_deferred/remove, put_many in one transaction, ingest of existing
files with every transfer mode, a round trip of every storage class, instrument aliases,
checksums and sizes, ``replace=True``; and concurrent writers on SQLite.
"""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest

from butler import Butler, DatasetRef, DatasetType
from butler.datastore import checksum_file
from butler.errors import (
    ButlerError,
    ConflictError,
    DataIdError,
    DatasetNotFoundError,
    StorageClassError,
)
from butler.testing import make_repo, snapshot_repo

DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}


def _files(butler: Butler) -> list[str]:
    """Dataset files of the repository (relative paths), registry files and run locks excluded."""
    out = []
    for dirpath, dirs, names in os.walk(butler.root):
        if dirpath == butler.root and ".locks" in dirs:
            dirs.remove(".locks")  # process state (butler._run_lock), not content
        for name in names:
            if name.startswith("butler.sqlite3") or name == "butler.yaml":
                continue
            out.append(os.path.relpath(os.path.join(dirpath, name), butler.root))
    return sorted(out)


def _file_records(butler: Butler, ref: DatasetRef):
    registry = butler.registry
    with registry.db.transaction() as conn:
        return registry.datasets.files_of(conn, [ref.id]).get(ref.id, [])


# -- put / get ------------------------------------------------------------------------------------
def test_put_get_exists_by_data_id_and_ref(simcam_repo):
    butler = simcam_repo
    obj = {"a": 1, "nested": {"b": [1, 2, 3]}, "s": "text"}
    ref = butler.put(obj, "metrics", instrument="SimCam", visit=12, detector=3)
    assert isinstance(ref, DatasetRef)
    assert ref.run == "u/tester/run1"
    assert ref.dataset_type.name == "metrics"
    assert ref.data_id == DATA_ID
    assert butler.get("metrics", instrument="SimCam", visit=12, detector=3) == obj
    assert butler.get("metrics", DATA_ID) == obj
    assert butler.get("metrics", {"instrument": "SimCam", "visit": 12}, detector=3) == obj
    assert butler.get(ref) == obj
    assert butler.get(butler.get_dataset_type("metrics"), DATA_ID) == obj
    assert butler.exists(ref)
    assert butler.exists("metrics", DATA_ID)
    assert not butler.exists("metrics", instrument="SimCam", visit=12, detector=4)
    assert butler.find_dataset("metrics", DATA_ID) == ref
    assert butler.find_dataset("metrics", instrument="SimCam", visit=14, detector=3) is None
    # A fresh read-only Butler on the same repository sees the dataset too.
    reader = Butler(butler.root, collections="u/tester/run1")
    assert reader.get("metrics", DATA_ID) == obj
    assert not reader.writeable


def test_integer_values_given_as_strings_are_normalised(simcam_repo):
    ref = simcam_repo.put({"x": 1}, "metrics", instrument="SimCam", visit="12", detector="3")
    assert ref.data_id.values == ("SimCam", 3, 12)
    assert simcam_repo.get("metrics", instrument="SimCam", visit=12, detector=3) == {"x": 1}


@pytest.mark.parametrize("alias", ["ccd", "ccdnum", "sensor"])
def test_simcam_aliases_of_detector(simcam_repo, alias):
    butler = simcam_repo
    ref = butler.put({"alias": alias}, "metrics", instrument="SimCam", visit=12, **{alias: 5})
    assert ref.data_id["detector"] == 5
    assert butler.get("metrics", instrument="SimCam", visit=12, detector=5) == {"alias": alias}
    for other in ("ccd", "ccdnum", "sensor"):
        assert butler.get("metrics", instrument="SimCam", visit=12, **{other: 5}) == {"alias": alias}
    assert [r.id for r in butler.query_datasets("metrics", instrument="SimCam", **{alias: 5})] == [ref.id]
    with pytest.raises(DataIdError, match="alias"):
        butler.get("metrics", instrument="SimCam", visit=12, detector=4, **{alias: 5})


def test_get_deferred_reads_later(simcam_repo):
    butler = simcam_repo
    ref = butler.put({"deferred": True}, "metrics", DATA_ID)
    handle = butler.get_deferred("metrics", DATA_ID)
    assert handle.ref == ref
    assert handle.get() == {"deferred": True}
    assert butler.get_deferred(ref).get() == {"deferred": True}
    with pytest.raises(DatasetNotFoundError):
        butler.get_deferred("metrics", instrument="SimCam", visit=14, detector=3)


def test_remove_deletes_rows_and_files(simcam_repo):
    butler = simcam_repo
    keep = butler.put({"keep": 1}, "metrics", instrument="SimCam", visit=14, detector=3)
    ref = butler.put({"a": 1}, "metrics", DATA_ID)
    path = os.path.join(butler.root, _file_records(butler, ref)[0].path)
    assert os.path.exists(path)
    assert butler.remove([ref]) == 1
    assert not os.path.exists(path)
    assert not butler.exists(ref)
    assert not butler.exists("metrics", DATA_ID)
    with pytest.raises(DatasetNotFoundError, match="metrics"):
        butler.get("metrics", DATA_ID)
    with pytest.raises(DatasetNotFoundError):
        butler.get(ref)
    assert [r.id for r in butler.query_datasets("metrics")] == [keep.id]
    assert butler.remove([ref]) == 0
    assert butler.remove([]) == 0
    # The data ID is free again.
    again = butler.put({"a": 2}, "metrics", DATA_ID)
    assert again.id != ref.id
    assert butler.get("metrics", DATA_ID) == {"a": 2}
    assert butler.get(keep) == {"keep": 1}


def test_replace_true_overwrites_one_dataset(simcam_repo):
    butler = simcam_repo
    first = butler.put({"v": 1}, "metrics", DATA_ID)
    with pytest.raises(ConflictError, match="already exists"):
        butler.put({"v": 2}, "metrics", DATA_ID)
    assert butler.get("metrics", DATA_ID) == {"v": 1}
    second = butler.put({"v": 2}, "metrics", DATA_ID, replace=True)
    assert second.id != first.id
    assert butler.get("metrics", DATA_ID) == {"v": 2}
    assert butler.get(second) == {"v": 2}
    assert [r.id for r in butler.query_datasets("metrics")] == [second.id]
    assert not butler.exists(first)
    assert len(_files(butler)) == 1
    records = _file_records(butler, second)
    assert records[0].checksum == checksum_file(os.path.join(butler.root, records[0].path))


def test_put_without_a_run_is_refused_clearly(simcam_repo):
    writer = Butler(simcam_repo.root, writeable=True)
    before = snapshot_repo(writer)
    with pytest.raises(ButlerError, match="no run"):
        writer.put({"a": 1}, "metrics", DATA_ID)
    assert snapshot_repo(writer) == before
    ref = writer.put({"a": 1}, "metrics", DATA_ID, run="u/tester/explicit")
    assert ref.run == "u/tester/explicit"
    assert writer.get("metrics", DATA_ID, collections="u/tester/explicit") == {"a": 1}


def test_checksum_and_size_recorded_and_verified(simcam_repo):
    butler = simcam_repo
    ref = butler.put({"payload": list(range(100))}, "metrics", DATA_ID)
    (record,) = _file_records(butler, ref)
    assert not os.path.isabs(record.path)  # relative: repositories are relocatable
    full = os.path.join(butler.root, record.path)
    assert record.file_size == os.path.getsize(full)
    assert record.checksum == checksum_file(full)
    assert record.checksum.split(":", 1)[0] in ("xxh3_128", "xxh3_64", "blake2b", "sha256")
    assert butler.verify() == []
    with open(full, "r+b") as f:  # corrupt one byte, same size
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = butler.verify()
    assert [(p.path, p.problem) for p in problems] == [(record.path, "checksum")]
    os.unlink(full)
    assert [(p.path, p.problem) for p in butler.verify()] == [(record.path, "missing")]
    assert not butler.exists(ref)


def test_put_many_in_one_transaction(simcam_repo):
    butler = simcam_repo
    items = [({"d": d, "v": v}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d})
             for v in (12, 14) for d in range(9)]
    refs = butler.put_many(items)
    assert len(refs) == 18 and len({r.id for r in refs}) == 18
    for ref, (obj, _, data_id) in zip(refs, items):
        assert ref.data_id == data_id
        assert butler.get(ref) == obj
    assert {r.id for r in butler.query_datasets("metrics")} == {r.id for r in refs}
    assert len(_files(butler)) == 18


def test_put_many_is_all_or_nothing(simcam_repo):
    butler = simcam_repo
    butler.put({"existing": 1}, "metrics", instrument="SimCam", visit=14, detector=0)
    before = snapshot_repo(butler)
    good = [({"d": d}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": d}) for d in range(4)]
    cases = [
        (good + [([1, 2], "metrics", {"instrument": "SimCam", "visit": 99, "detector": 0})], DataIdError, "visit 99"),
        (good + [({"x": 1}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": 0})], ConflictError,
         "already exists"),
        (good + [(good[0][0], "metrics", good[0][2])], ConflictError, "twice|already exists"),
        (good + [("not a dict", "metrics", {"instrument": "SimCam", "visit": 12, "detector": 8})], StorageClassError,
         "StructuredData"),
    ]
    for items, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            butler.put_many(items)
        assert snapshot_repo(butler) == before, f"put_many failing with {exc.__name__} changed the repository"
    assert butler.query_data_ids(["visit", "detector"], datasets="metrics", collections="u/tester/run1") == [
        {"instrument": "SimCam", "visit": 14, "detector": 0}
    ]


def test_put_many_refuses_a_dataset_given_twice_before_writing_anything(simcam_repo):
    """With or without replace=True, and whether the dataset exists yet or not: replace does not
    pick one of two objects for one dataset (it used to retry 8 times and then blame concurrent
    writers)."""
    butler = simcam_repo
    butler.put({"existing": 1}, "metrics", instrument="SimCam", visit=14, detector=0)
    before = snapshot_repo(butler)
    for detector in (0, 1):  # exists / does not exist yet
        data_id = {"instrument": "SimCam", "visit": 14, "detector": detector}
        for replace in (False, True):
            with pytest.raises(ConflictError, match=rf"dataset 'metrics' \{{.*detector: {detector}.*\}} is given twice "
                                                    r"in one put_many; give each dataset once"):
                butler.put_many([({"a": 1}, "metrics", data_id), ({"a": 2}, "metrics", data_id)], replace=replace)
            assert snapshot_repo(butler) == before
    assert butler.registry.journal.pending() == []


def test_failed_put_into_a_new_run_leaves_nothing_behind(simcam_repo):
    butler = simcam_repo
    butler.put({"a": 1}, "metrics", DATA_ID)
    before = snapshot_repo(butler)
    entries_before = sorted(os.path.relpath(dp, butler.root) for dp, _, _ in os.walk(butler.root))
    with pytest.raises(DataIdError, match="detector 99 does not exist"):
        butler.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=99, run="u/tester/fresh")
    with pytest.raises(DataIdError, match="detector 98 does not exist"):
        butler.put_many([({"a": d}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": d})
                         for d in (0, 98)], run="u/tester/fresh")
    assert snapshot_repo(butler) == before
    assert butler.query_collections("u/tester/fresh") == []
    # No empty directories of the failed writes either.
    assert sorted(os.path.relpath(dp, butler.root) for dp, _, _ in os.walk(butler.root)) == entries_before


def test_put_many_with_two_dataset_types(simcam_repo):
    butler = simcam_repo
    butler.register_dataset_type(DatasetType("counts", ("instrument", "visit"), "StructuredData"))
    refs = butler.put_many([
        ({"m": 1}, "metrics", DATA_ID),
        ({"c": 2}, "counts", {"instrument": "SimCam", "visit": 12}),
        ({"m": 3}, "metrics", {"instrument": "SimCam", "visit": 14, "ccd": 1}, {}),
    ])
    assert [r.dataset_type.name for r in refs] == ["metrics", "counts", "metrics"]
    assert butler.get("counts", instrument="SimCam", visit=12) == {"c": 2}
    assert butler.get("metrics", instrument="SimCam", visit=14, detector=1) == {"m": 3}


# -- storage classes ----------------------------------------------------------------------------
def _storage_class_cases():
    import astropy.units as u
    import pyarrow as pa
    from astropy.table import Table

    table = Table({"id": np.arange(5, dtype=np.int64), "flux": np.linspace(0.0, 1.0, 5)})
    table["flux"].unit = u.nJy
    return [
        ("StructuredData", {"a": 1, "b": [1.5, "x", None], "c": {"d": True}}, lambda a, b: a == b),
        ("StructuredData", [1, 2, {"three": 3}], lambda a, b: a == b),
        ("StructuredDataYaml", {"yaml": [1, 2]}, lambda a, b: a == b),
        ("NumpyArray", np.arange(12, dtype=np.float32).reshape(3, 4),
         lambda a, b: a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)),
        ("NumpyArray", np.array([1, 2, 3], dtype=">i8"), lambda a, b: np.array_equal(a, b)),
        ("ArrowTable", pa.table({"id": [1, 2, 3], "name": ["a", "b", None]}), lambda a, b: a.equals(b)),
        ("AstropyTable", table,
         lambda a, b: a.colnames == b.colnames and np.array_equal(a["id"], b["id"])
         and np.allclose(a["flux"], b["flux"]) and a["flux"].unit == b["flux"].unit),
        ("Bytes", b"\x00\x01binary\xff", lambda a, b: a == b),
    ]


def test_every_storage_class_round_trips(simcam_repo):
    butler = simcam_repo
    for i, (storage_class, obj, same) in enumerate(_storage_class_cases()):
        name = f"sc_{storage_class.lower()}_{i}"
        butler.register_dataset_type(DatasetType(name, ("instrument", "visit", "detector"), storage_class))
        ref = butler.put(obj, name, DATA_ID)
        back = butler.get(name, DATA_ID)
        assert type(back) is type(obj), (storage_class, type(back))
        assert same(back, obj), storage_class
        assert same(butler.get(ref), obj), storage_class
        assert butler.exists(ref)
        (record,) = _file_records(butler, ref)
        assert record.storage_class == storage_class
        assert record.checksum == checksum_file(os.path.join(butler.root, record.path))
    assert butler.verify() == []


def test_storage_class_mismatch_is_refused(simcam_repo):
    butler = simcam_repo
    butler.register_dataset_type(DatasetType("image", ("instrument", "visit", "detector"), "NumpyArray"))
    before = snapshot_repo(butler)
    with pytest.raises(StorageClassError, match=r"'image'.*NumpyArray.*numpy.ndarray.*list") as info:
        butler.put([1, 2, 3], "image", DATA_ID)
    assert isinstance(info.value, TypeError)
    with pytest.raises(StorageClassError, match="StructuredData"):
        butler.put(np.zeros(3), "metrics", DATA_ID)
    assert snapshot_repo(butler) == before


# -- ingest -----------------------------------------------------------------------------------
@pytest.mark.parametrize("transfer", ["copy", "move", "hardlink", "symlink", "direct"])
def test_ingest_with_each_transfer_mode(simcam_repo, tmp_path, transfer):
    butler = simcam_repo
    outside = tmp_path / "outside"
    outside.mkdir()
    sources = []
    for d in range(3):
        path = outside / f"m{d}.json"
        path.write_text(json.dumps({"detector": d}))
        sources.append((path, {"instrument": "SimCam", "visit": 12, "ccd": d}))
    expected = {str(p): checksum_file(str(p)) for p, _ in sources}
    refs = butler.ingest("metrics", sources, transfer=transfer)
    assert [r.data_id["detector"] for r in refs] == [0, 1, 2]
    assert {r.run for r in refs} == {"u/tester/run1"}
    for (src, _), ref in zip(sources, refs):
        assert butler.get(ref) == {"detector": ref.data_id["detector"]}
        assert butler.get("metrics", instrument="SimCam", visit=12, detector=ref.data_id["detector"]) == {
            "detector": ref.data_id["detector"]}
        (record,) = _file_records(butler, ref)
        stored = record.path if os.path.isabs(record.path) else os.path.join(butler.root, record.path)
        assert record.checksum == expected[str(src)]
        assert record.file_size == os.path.getsize(stored)
        if transfer == "direct":
            assert record.path == str(src) and src.exists()
        else:
            assert not os.path.isabs(record.path)
            assert stored.startswith(butler.root + os.sep)
        if transfer == "copy":
            assert src.exists() and not os.path.samefile(src, stored)
        elif transfer == "move":
            assert not src.exists() and os.path.isfile(stored)
        elif transfer == "hardlink":
            assert os.path.samefile(src, stored) and not os.path.islink(stored)
        elif transfer == "symlink":
            assert os.path.islink(stored) and os.path.samefile(src, stored)
    assert {r.id for r in butler.query_datasets("metrics")} == {r.id for r in refs}
    assert butler.verify() == []


def test_ingest_is_all_or_nothing(simcam_repo, tmp_path):
    butler = simcam_repo
    good = tmp_path / "good.json"
    good.write_text('{"ok": 1}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"ok": 0}')
    before = snapshot_repo(butler)
    with pytest.raises(DataIdError, match="detector 42"):
        butler.ingest("metrics", [(good, DATA_ID), (bad, {"instrument": "SimCam", "visit": 12, "detector": 42})],
                      transfer="move")
    assert snapshot_repo(butler) == before
    assert good.read_text() == '{"ok": 1}' and bad.exists()  # moved files went back
    with pytest.raises(FileNotFoundError, match="nothere"):
        butler.ingest("metrics", [(good, DATA_ID), (tmp_path / "nothere.json", DATA_ID)])
    with pytest.raises(ValueError, match="transfer"):
        butler.ingest("metrics", [(good, DATA_ID)], transfer="teleport")
    with pytest.raises(StorageClassError, match="extension"):
        other = tmp_path / "table.csv"
        other.write_text("a,b\n")
        butler.ingest("metrics", [(other, DATA_ID)])
    assert snapshot_repo(butler) == before
    assert good.exists()


# -- concurrency on SQLite -----------------------------------------------------------------------
N_WORKERS, N_EACH = 4, 50
CONC_VISITS = list(range(100, 100 + N_EACH // 2))


def _concurrent_writer(root: str, index: int) -> list[str]:
    """Runs in a spawned process: one put (one transaction) per dataset into this worker's run."""
    os.environ["BUTLER_USER"] = "tester"
    butler = Butler(root, run=f"u/tester/worker{index}")
    refs = []
    for i in range(N_EACH):
        visit, detector = CONC_VISITS[i // 2], i % 2
        refs.append(butler.put({"worker": index, "i": i}, "metrics", instrument="SimCam", visit=visit,
                               detector=detector))
    return [str(r.id) for r in refs]


def test_concurrent_writers_on_sqlite(tmp_path):
    from butler.instrument import SimCam

    butler = make_repo(str(tmp_path / "repo"), "sqlite")
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": v, "physical_filter": "SimCam-r", "day_obs": 20261124} for v in CONC_VISITS])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(N_WORKERS) as pool:
        results = pool.starmap(_concurrent_writer, [(butler.root, i) for i in range(N_WORKERS)])
    assert [len(set(r)) for r in results] == [N_EACH] * N_WORKERS
    reader = Butler(butler.root)
    for i, ids in enumerate(results):
        run = f"u/tester/worker{i}"
        assert {str(r.id) for r in reader.query_datasets("metrics", collections=run)} == set(ids)
        assert reader.get("metrics", instrument="SimCam", visit=CONC_VISITS[-1], detector=1,
                          collections=run) == {"worker": i, "i": N_EACH - 1}
    every = reader.query_datasets("metrics", collections="u/tester/worker*")
    assert len(every) == N_WORKERS * N_EACH
    assert reader.query_collections("u/tester/worker*") == [f"u/tester/worker{i}" for i in range(N_WORKERS)]
    assert reader.verify() == []
