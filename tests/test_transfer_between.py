"""Butler.transfer_from and ``butler transfer``: round trips between backends keep ids, provenance,
tags, chains and validity ranges; hard links on one file system; a second transfer changes nothing;
refusals (read-only destination, a run of somebody else, a conflicting dataset, a damaged source
file) name what is wrong and leave the destination exactly as it was; batches commit one by one."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler, DatasetType
from butler.cli import cli
from butler.errors import ChecksumError, ConflictError, ReadOnlyError, RunOwnershipError
from butler.exposure import Exposure
from butler.instrument import SimCam
from butler.testing import SIMCAM_VISITS, RepoFactory, backend_url, snapshot_repo
from butler.transfer import TransferReport

RUN1, RUN2 = "u/tester/run1", "u/tester/run2"
COLLECTIONS = ["u/tester/all", RUN2, "SimCam/calib/flats"]
DIMS = ("instrument", "visit", "detector")


def _factory(tmp_path, backend: str, name: str) -> RepoFactory:
    if backend != "sqlite" and backend_url(backend) is None:
        pytest.skip(f"{backend} backend not configured")
    return RepoFactory(str(tmp_path / name), backend)


@pytest.fixture
def factories(tmp_path):
    made: list[RepoFactory] = []

    def make(backend: str, name: str):
        factory = _factory(tmp_path, backend, name)
        made.append(factory)
        return factory(name)

    yield make
    for f in made:
        f.cleanup()


def fill(butler: Butler, outside: str) -> dict:
    """Two runs of 'metrics', a zarr calexp, a direct-ingested file, a TAGGED and a CHAINED
    collection, a certified flat and a quantum record: what a transfer must carry."""
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_dataset_type(DatasetType("metrics", DIMS, "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", DIMS, "Exposure"))
    butler.register_dataset_type(DatasetType("raw_text", DIMS, "Bytes"))
    butler.register_dataset_type(DatasetType("flat", ("instrument", "detector"), "StructuredData",
                                             is_calibration=True))
    refs = {run: butler.put_many([({"v": v, "d": d, "run": run}, "metrics",
                                   {"instrument": "SimCam", "visit": v, "detector": d})
                                  for v in (12, 14) for d in (0, 1)], run=run) for run in (RUN1, RUN2)}
    butler.put(Exposure(np.arange(16, dtype=np.float32).reshape(4, 4)), "calexp",
               {"instrument": "SimCam", "visit": 12, "detector": 0}, run=RUN1)
    os.makedirs(outside, exist_ok=True)
    raw = os.path.join(outside, "raw_12_2.bin")
    with open(raw, "wb") as f:
        f.write(b"raw bytes of visit 12 detector 2")
    direct = butler.ingest("raw_text", [(raw, {"instrument": "SimCam", "visit": 12, "detector": 2})], run=RUN1,
                           transfer="direct")[0]
    butler.register_collection("u/tester/best", "TAGGED", doc="hand-picked")
    butler.associate("u/tester/best", [refs[RUN2][0]])
    butler.set_chain("u/tester/all", ["u/tester/best", RUN1])
    flat = butler.put({"flat": 1}, "flat", {"instrument": "SimCam", "detector": 0}, run="SimCam/calib/run")
    butler.certify("SimCam/calib/flats", [flat], "2026-01-01", "2027-01-01")
    quantum = uuid.uuid4()
    registry = butler.registry
    with registry.transaction(write=True) as conn:
        registry.provenance.insert(conn, registry.collections.get(RUN1).id, [{
            "quantum_id": quantum, "task": "measure", "data_id": {"instrument": "SimCam", "visit": 12},
            "inputs": [direct.id], "outputs": [refs[RUN1][0].id], "status": "succeeded", "host": "h1",
            "start_ns": 1, "end_ns": 2, "config_digest": "abc"}])
    return {"refs": refs, "direct": direct, "flat": flat, "quantum": quantum}


@pytest.fixture
def sqlite_pair(factories, tmp_path):
    src = factories("sqlite", "src")
    made = fill(src, str(tmp_path / "outside"))
    dst = factories("sqlite", "dst")
    return Butler(src.root), Butler(dst.root, writeable=True), made


def _check_round_trip(src: Butler, dst: Butler, made: dict) -> None:
    comparison = Butler.compare(src, dst, collections=COLLECTIONS)
    assert comparison.identical and comparison.same == 11, comparison
    for run in (RUN1, RUN2):
        assert {r.id for r in dst.query_datasets("metrics", collections=run)} == {r.id for r in made["refs"][run]}
        for ref in made["refs"][run]:
            assert dst.get(ref) == src.get(ref)
    assert dst.get_chain("u/tester/all") == ["u/tester/best", RUN1]
    assert [r.id for r in dst.query_datasets("metrics", collections="u/tester/best")] == [made["refs"][RUN2][0].id]
    assert dst.collection_info("u/tester/best").doc == "hand-picked"
    found = dst.find_calibs("flat", [(made["flat"].data_id, "2026-06-01")], collections="SimCam/calib/flats")
    assert [r.id for r in found.values()] == [made["flat"].id]
    provenance = dst.provenance(made["refs"][RUN1][0])
    assert provenance is not None and provenance["quantum_id"] == made["quantum"]
    assert provenance["inputs"] == [made["direct"].id] and provenance["task"] == "measure"
    assert dst.get(made["direct"]) == b"raw bytes of visit 12 detector 2"
    assert dst.get_uri(made["direct"]).startswith(dst.root + os.sep)  # a direct file lands inside its run
    calexp = dst.get("calexp", instrument="SimCam", visit=12, detector=0, collections=RUN1)
    assert np.array_equal(calexp.image, np.arange(16, dtype=np.float32).reshape(4, 4))
    assert dst.verify() == []


PAIRS = [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "mysql")]


@pytest.mark.parametrize(("source", "dest"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_round_trip_between_backends_keeps_ids_provenance_and_collections(factories, tmp_path, source, dest):
    src = factories(source, "src")
    made = fill(src, str(tmp_path / "outside"))
    dst = factories(dest, "dst")
    report = dst.transfer_from(src, collections=COLLECTIONS)
    assert isinstance(report, TransferReport)
    assert (report.datasets, report.skipped, report.batches, report.quanta) == (11, 0, 1, 1)
    assert set(report.collections) >= {RUN1, RUN2, "u/tester/all", "u/tester/best", "SimCam/calib/flats"}
    _check_round_trip(Butler(src.root), dst, made)


def test_auto_hard_links_on_one_file_system_and_copy_copies(sqlite_pair, factories):
    src, dst, made = sqlite_pair
    dst.transfer_from(src, made["refs"][RUN1])  # auto
    ref = made["refs"][RUN1][0]
    assert os.stat(src.get_uri(ref)).st_ino == os.stat(dst.get_uri(ref)).st_ino
    other = Butler(factories("sqlite", "copy").root, writeable=True)
    other.transfer_from(src, made["refs"][RUN1], transfer="copy")
    assert os.stat(src.get_uri(ref)).st_ino != os.stat(other.get_uri(ref)).st_ino
    assert other.get(ref) == src.get(ref) and other.verify() == []


def test_refs_form_brings_their_tags_and_validity_ranges(sqlite_pair):
    src, dst, made = sqlite_pair
    refs = src.query_datasets("metrics", collections=RUN2) + [made["flat"]]
    report = dst.transfer_from(src, refs)
    assert report.datasets == 5
    assert sorted(dst.query_collections()) == sorted([RUN2, "SimCam/calib/run", "u/tester/best",
                                                      "SimCam/calib/flats"])
    assert [r.id for r in dst.query_datasets("metrics", collections="u/tester/best")] == [made["refs"][RUN2][0].id]
    assert len(dst.query_calibrations("SimCam/calib/flats", "flat")) == 1
    assert Butler.compare(src, dst, collections=[RUN2]).identical


def test_second_transfer_is_a_no_op(sqlite_pair):
    src, dst, _ = sqlite_pair
    dst.transfer_from(src, collections=COLLECTIONS)
    before = snapshot_repo(dst)
    again = dst.transfer_from(src, collections=COLLECTIONS)
    assert (again.datasets, again.skipped, again.files, again.collections) == (0, 11, 0, [])
    assert snapshot_repo(dst) == before


def test_batches_commit_one_by_one_and_a_rerun_copies_only_what_is_missing(sqlite_pair):
    src, dst, made = sqlite_pair
    first = dst.transfer_from(src, made["refs"][RUN1][:2])  # as if a transfer had stopped after a batch
    assert first.datasets == 2
    report = dst.transfer_from(src, collections=COLLECTIONS, batch_size=3)
    assert (report.batches, report.datasets, report.skipped) == (4, 9, 2)
    _check_round_trip(src, dst, made)


def _refused(dst: Butler, src: Butler, error: type[Exception], match: str, **kwargs) -> None:
    before = snapshot_repo(dst)
    with pytest.raises(error, match=match):
        dst.transfer_from(src, **{"collections": COLLECTIONS, **kwargs})
    assert snapshot_repo(dst) == before


def test_read_only_destination_is_refused(sqlite_pair):
    src, dst, _ = sqlite_pair
    _refused(Butler(dst.root), src, ReadOnlyError, "read-only")


def test_foreign_run_in_destination_is_refused(sqlite_pair, monkeypatch):
    src, dst, _ = sqlite_pair
    monkeypatch.setenv("BUTLER_USER", "somebody_else")
    Butler(dst.root, writeable=True).register_run(RUN2)
    monkeypatch.setenv("BUTLER_USER", "tester")
    _refused(Butler(dst.root, writeable=True), src, RunOwnershipError, "somebody_else")


def test_conflicting_dataset_is_refused_naming_it(sqlite_pair):
    src, dst, made = sqlite_pair
    dst.transfer_from(src, [made["refs"][RUN1][0]])
    ref = made["refs"][RUN2][0]  # visit 12, detector 0: its records came with the first transfer
    dst.put({"other": True}, "metrics", ref.data_id, run=RUN2)  # same type, data ID and run, another id
    _refused(dst, src, ConflictError, rf"metrics .* in run '{RUN2}' is already in the repository as dataset")


def test_damaged_source_file_is_refused_naming_it(sqlite_pair):
    src, dst, made = sqlite_pair
    path = src.get_uri(made["refs"][RUN2][1])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-1] + b"#")
    _refused(dst, src, ChecksumError, rf"{made['refs'][RUN2][1].id.hex} is damaged in the repository {src.root}: "
                                      rf"checksum mismatch for {src.root}/{RUN2}/metrics/")


def test_refs_of_another_repository_are_refused_naming_them(sqlite_pair, factories):
    src, dst, made = sqlite_pair
    other = factories("sqlite", "other")
    other.register_instrument(SimCam(), calibs=False)
    other.insert_dimension_records("visit", SIMCAM_VISITS)
    other.register_dataset_type(DatasetType("metrics", DIMS, "StructuredData"))
    foreign = other.put({"x": 1}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": 0}, run=RUN1)
    before = snapshot_repo(dst)
    with pytest.raises(LookupError, match=rf"1 of the refs are not datasets of that repository \(metrics {foreign.id} "):
        dst.transfer_from(src, [made["refs"][RUN1][0], foreign])
    assert snapshot_repo(dst) == before


def test_bad_arguments_are_refused(sqlite_pair):
    src, dst, made = sqlite_pair
    with pytest.raises(ValueError, match="transfer must be one of"):
        dst.transfer_from(src, made["refs"][RUN1], transfer="move")
    with pytest.raises(ValueError, match="into itself"):
        dst.transfer_from(Butler(dst.root), collections=COLLECTIONS)
    with pytest.raises(ValueError, match="pass one or the other"):
        dst.transfer_from(src, made["refs"][RUN1], where="visit = 12")


def test_cli_transfer(sqlite_pair):
    src, dst, _ = sqlite_pair
    runner = CliRunner()
    result = runner.invoke(cli, ["transfer", src.root, dst.root, "-c", RUN1, "--where", "visit = 12",
                                 "-t", "metrics", "--transfer", "copy"])
    assert result.exit_code == 0, result.output
    assert "transferred 2 datasets" in result.output
    assert len(dst.query_datasets("metrics", collections=RUN1)) == 2
    result = runner.invoke(cli, ["transfer", src.root, dst.root])
    assert result.exit_code == 2 and "-c COLLECTION" in result.output


def test_a_run_locked_by_another_process_is_refused(sqlite_pair):
    """Import and transfer hold the runs they write shared, as every write: an executor (or a
    clean-up) holding one exclusively refuses them, naming it, and nothing changes."""
    import signal

    from test_run_lock import hold_in_subprocess

    from butler.errors import RunLockedError

    src, dst, _ = sqlite_pair
    proc = hold_in_subprocess(dst.root, RUN1)
    try:
        _refused(dst, src, RunLockedError, rf"cannot import into run '{RUN1}': it is locked by pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_any_partial_transfers_then_a_full_one_give_the_same_repository(sqlite_pair, tmp_path):
    """Property: whatever subset was transferred before, in whatever batch size, a transfer of
    everything completes the copy, adds only what was missing and leaves nothing behind."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    src = sqlite_pair[0]
    everything = sorted(src.query_datasets("metrics", collections=[RUN1, RUN2]), key=lambda r: r.id.hex)
    counter = iter(range(10**6))

    @settings(max_examples=5, deadline=None, derandomize=True)
    @given(first=st.sets(st.integers(0, len(everything) - 1)), batch_size=st.integers(1, 12))
    def check(first, batch_size):
        dst = Butler(Butler.create(str(tmp_path / f"dst{next(counter)}")).root, writeable=True)
        if first:
            dst.transfer_from(src, [everything[i] for i in sorted(first)], batch_size=batch_size)
        report = dst.transfer_from(src, collections=COLLECTIONS, batch_size=batch_size)
        assert report.skipped == len(first) and report.datasets == 11 - len(first)
        assert Butler.compare(src, dst, collections=COLLECTIONS).identical
        assert dst.verify() == [] and dst.registry.journal.pending() == []

    check()
