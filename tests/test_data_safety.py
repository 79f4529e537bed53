"""Nothing lost, nothing silently wrong: clean-up deletes only what the journal names, replaced and
removed bytes go only after the registry stops referencing them, concurrent replaces converge.

Each test reproduces a way the butler used to lose or corrupt data (issue 11, item 1 and 5)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from butler import Butler, DatasetType
from butler.errors import ConflictError, ReadOnlyError
from butler.registry._journal import STAGE, new_operation
from butler.testing import run_concurrently, snapshot_repo
from orchestration import Pipeline, Planner, prepare_run
from orchestration.testing import AddTask, files_on_disk, make_metrics_repo, registered_files

DATA = {"instrument": "SimCam", "visit": 12}


def _all_files(root: str) -> dict[str, bytes]:
    out = {}
    for d, dirs, names in os.walk(root):
        if d == root:
            dirs[:] = [x for x in dirs if x != ".locks"]
            names = [n for n in names if not n.startswith("butler.")]
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


def test_an_output_run_named_like_a_prefix_of_an_input_run_deletes_nothing(tmp_path):
    """`butler run -o u` used to delete every file of `u/alice/raw` (walking <root>/u as orphans)."""
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=1, detectors=3, run="u/alice/raw")
    inputs = _all_files(butler.root)
    plan = Planner(butler).build(Pipeline().add_task("add", AddTask), inputs=["u/alice/raw"], output_run="u")
    prepare_run(plan, butler)  # registers run 'u', writes its init-outputs, cleans up its leftovers
    after = _all_files(butler.root)
    assert {path: after.get(path) for path in inputs} == inputs
    assert all(path.startswith(("u/add_config/", "u/packages/")) for path in set(after) - set(inputs))
    assert butler.verify() == []


def test_cleanup_refuses_read_only_butlers_and_touches_nothing_of_chained_collections(tmp_path):
    """`remove_orphans(Butler(root), "SimCam/calib")` used to delete the camera."""
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=1, detectors=2, run="u/tester/raw")  # also certifies the camera
    before = snapshot_repo(butler)
    with pytest.raises(ReadOnlyError):
        Butler(butler.root).cleanup("SimCam/calib")
    assert butler.cleanup("SimCam/calib").removed == []
    assert butler.cleanup().removed == []
    assert snapshot_repo(butler) == before
    assert butler.get("camera", instrument="SimCam", collections="SimCam/calib").name == "SimCam"


def test_cleanup_keeps_journaled_paths_that_a_dataset_references(simcam_repo):
    """A journal entry whose path is registered (by any dataset of any run) is dropped, never its file."""
    ref = simcam_repo.put({"a": 1}, "metrics", DATA, detector=1)
    path = _path_of(simcam_repo, ref)
    simcam_repo.registry.journal.record(new_operation(), "u/tester/other", STAGE, [(path, None, None)])
    report = simcam_repo.cleanup(allow_foreign_run=True)
    assert report.kept == [path] and report.removed == []
    assert simcam_repo.get(ref) == {"a": 1}
    assert simcam_repo.registry.journal.pending() == []


def _path_of(butler: Butler, ref) -> str:
    registry = butler.registry
    with registry.db.transaction() as conn:
        return registry.datasets.files_of(conn, [ref.id])[ref.id][0].path


def test_cleanup_of_another_users_run_is_refused(tmp_path, monkeypatch):
    """On SQLite, users are told apart by BUTLER_USER (on servers by role: tests/test_ownership.py)."""
    butler = Butler.create(tmp_path / "repo", run="u/tester/run1")
    butler.register_dataset_type(DatasetType("cfg", (), "StructuredData"))
    butler.put({"a": 1}, "cfg")
    stray = os.path.join("u", "tester", "run1", "cfg", "stray.json")
    butler.registry.journal.record(new_operation(), "u/tester/run1", STAGE, [(stray, None, None)])
    with open(os.path.join(butler.root, stray), "w") as f:
        f.write("{}")
    monkeypatch.setenv("BUTLER_USER", "mallory")
    report = Butler(butler.root, writeable=True).cleanup()
    assert "u/tester/run1" in report.skipped and "owned by 'tester'" in report.skipped["u/tester/run1"]
    assert os.path.exists(os.path.join(butler.root, stray))
    monkeypatch.setenv("BUTLER_USER", "tester")
    assert Butler(butler.root, writeable=True).cleanup().removed == [stray]


def test_a_file_in_the_way_is_a_conflict_that_names_the_clean_up_and_changes_nothing(simcam_repo):
    ref = simcam_repo.put({"a": 1}, "metrics", DATA, detector=1)
    path = _path_of(simcam_repo, ref)
    simcam_repo.remove([ref])
    full = os.path.join(simcam_repo.root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write("somebody's bytes")
    before = snapshot_repo(simcam_repo)
    with pytest.raises(ConflictError, match=r"already exists but is not registered.*butler verify --orphans.*"
                                            r"butler cleanup"):
        simcam_repo.put({"a": 2}, "metrics", DATA, detector=1)
    assert snapshot_repo(simcam_repo) == before
    assert [p.problem for p in simcam_repo.verify()] == ["unregistered"]


def test_replace_writes_new_bytes_under_a_new_name_and_removes_the_old_after_the_commit(simcam_repo):
    first = simcam_repo.put({"a": 1}, "metrics", DATA, detector=1)
    old = _path_of(simcam_repo, first)
    second = simcam_repo.put({"a": 2}, "metrics", DATA, detector=1, replace=True)
    new = _path_of(simcam_repo, second)
    assert new != old and not os.path.exists(os.path.join(simcam_repo.root, old))
    third = simcam_repo.put({"a": 3}, "metrics", DATA, detector=1, replace=True)
    assert _path_of(simcam_repo, third) != new
    assert simcam_repo.get("metrics", DATA, detector=1) == {"a": 3}
    assert simcam_repo.verify() == [] and simcam_repo.registry.journal.pending() == []


def test_nested_run_names_do_not_share_files(simcam_repo):
    simcam_repo.put({"run": "u"}, "metrics", DATA, detector=1, run="u")
    simcam_repo.put({"run": "nested"}, "metrics", DATA, detector=1)
    nested = files_on_disk(simcam_repo.root, "u/tester/run1")
    assert not registered_files(simcam_repo, "u") & registered_files(simcam_repo, "u/tester/run1")
    simcam_repo.remove_runs("u")
    assert files_on_disk(simcam_repo.root, "u/tester/run1") == nested
    assert simcam_repo.get("metrics", DATA, detector=1) == {"run": "nested"}
    assert simcam_repo.verify() == []


def _replace_many(root: str, worker: int, barrier, queue) -> None:
    import traceback

    try:
        butler = Butler(root, run="u/tester/run1")
        barrier.wait()
        for i in range(15):
            butler.put({"worker": worker, "i": i}, "metrics", DATA, detector=1, replace=True)
        queue.put(("ok", os.getpid(), None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(("error", os.getpid(), traceback.format_exc()))


def test_concurrent_replaces_of_one_dataset_converge_without_spurious_conflicts(simcam_repo):
    """On PostgreSQL a replace racing another used to fail with ConflictError (both deleted the old
    row, both inserted). Now the loser plans again; one dataset remains, with its file intact."""
    simcam_repo.put({"worker": -1}, "metrics", DATA, detector=1)
    run_concurrently(multiprocessing.get_context("spawn"), _replace_many,
                     [(simcam_repo.root, w) for w in range(3)])
    refs = simcam_repo.query_datasets("metrics", collections="u/tester/run1", where="detector = 1")
    assert len(refs) == 1
    assert simcam_repo.get(refs[0])["i"] == 14
    assert simcam_repo.verify() == []
    assert simcam_repo.registry.journal.pending() == []
    assert files_on_disk(simcam_repo.root, "u/tester/run1") == registered_files(simcam_repo, "u/tester/run1")


def _make_pre_journal(butler: Butler) -> None:
    """Turn a new repository into one made before schema minor 2 (no journal, no path index, no
    quantum.worker, no covering index of quantum outputs)."""
    db = butler.registry.db
    prep = db.engine.dialect.identifier_preparer
    ns = f"{prep.quote(db.namespace)}." if db.namespace else ""
    on = {"mysql": lambda table: f" ON {ns}{table}"}.get(db.dialect, lambda table: "")
    index = (lambda name, table: f"DROP INDEX {name}{on(table)}") if db.dialect == "mysql" else \
        (lambda name, table: f"DROP INDEX {ns}{name}")
    with db.transaction(write=True) as conn:
        for sql in (f"DROP TABLE {ns}file_journal", index("file_record_path", "file_record"),
                    f"CREATE INDEX ix_quantum_output_quantum_id ON {ns}quantum_output (quantum_id)",
                    index("quantum_output_by_quantum", "quantum_output"), f"ALTER TABLE {ns}quantum DROP COLUMN worker",
                    f"DELETE FROM {ns}butler_attributes WHERE name IN ('schema_minor', 'collections_generation')"):
            conn.exec_driver_sql(sql)
    from butler.testing import release_repo

    release_repo(butler)


def test_a_repository_made_before_the_journal_gets_it_on_first_write(repo_factory):
    """Old repositories (no journal table, no path index, no quantum.worker) are read as they are
    and upgraded by the first write."""
    import sqlalchemy as sa

    from butler.registry._schema import SCHEMA_MINOR

    butler = repo_factory(run="u/tester/run1")
    _make_pre_journal(butler)
    old = Butler(butler.root, run="u/tester/run1")
    assert old.verify() == []  # reading needs no journal
    assert old.query_provenance() == []
    old.register_dataset_type(DatasetType("cfg", (), "StructuredData"))
    old.put({"a": 1}, "cfg")
    db = old.registry.db
    with db.transaction() as conn:
        inspector = sa.inspect(conn)
        assert inspector.has_table("file_journal", schema=db.namespace)
        assert "worker" in {c["name"] for c in inspector.get_columns("quantum", schema=db.namespace)}
        assert "quantum_output_by_quantum" in {i["name"] for i in inspector.get_indexes("quantum_output",
                                                                                          schema=db.namespace)}
    assert old.registry.schema_minor == SCHEMA_MINOR
    assert old.get("cfg") == {"a": 1} and old.verify() == []


def _first_write(root: str, run: str, barrier, queue) -> None:
    import traceback

    try:
        butler = Butler(root, run=run)
        butler.refresh()
        barrier.wait()
        butler.put({"run": run}, "cfg")
        butler.remove([butler.find_dataset("cfg")])  # a removal journals too
        butler.put({"run": run}, "cfg")
        queue.put(("ok", os.getpid(), None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(("error", os.getpid(), traceback.format_exc()))


def test_processes_upgrading_an_old_repository_at_once_are_serialised(repo_factory):
    """Three first writes at the same moment: one upgrades, the others wait and see it done."""
    butler = repo_factory(run="u/tester/run1")
    butler.register_dataset_type(DatasetType("cfg", (), "StructuredData"))
    _make_pre_journal(butler)
    runs = [f"u/tester/first{i}" for i in range(3)]
    run_concurrently(multiprocessing.get_context("spawn"), _first_write, [(butler.root, run) for run in runs])
    reopened = Butler(butler.root, writeable=True)
    assert [reopened.get("cfg", collections=run) for run in runs] == [{"run": run} for run in runs]
    assert reopened.verify() == [] and reopened.registry.journal.pending() == []


def test_replacing_a_dataset_whose_file_is_missing_repairs_it(simcam_repo):
    """The natural repair of a `missing` report: the new bytes land at the free template path and
    are not mistaken for the replaced file's (which used to delete them after the commit)."""
    ref = simcam_repo.put({"a": 1}, "metrics", DATA, detector=1)
    os.unlink(os.path.join(simcam_repo.root, _path_of(simcam_repo, ref)))
    assert [p.problem for p in simcam_repo.verify()] == ["missing"]
    simcam_repo.put({"a": 2}, "metrics", DATA, detector=1, replace=True)
    assert simcam_repo.get("metrics", DATA, detector=1) == {"a": 2}
    assert simcam_repo.verify() == [] and simcam_repo.registry.journal.pending() == []


def test_a_data_id_given_twice_is_one_clear_conflict_even_with_replace(simcam_repo):
    before = snapshot_repo(simcam_repo)
    for replace in (False, True):
        with pytest.raises(ConflictError, match=r"is given twice"):
            simcam_repo.put_many([({"a": 1}, "metrics", DATA, {"detector": 1}),
                                  ({"a": 2}, "metrics", DATA, {"detector": 1})], replace=replace)
        assert snapshot_repo(simcam_repo) == before


def test_an_ingest_in_flight_holds_off_cleanup(simcam_repo, tmp_path):
    """Clean-up of a run waits for writes into it (shared lock): an ingest between its journal and
    its commit used to lose its files (a move: its data) to a concurrent clean-up."""
    from butler import _faults
    from butler._run_lock import run_lock
    from butler.errors import RunLockedError

    source = tmp_path / "src.json"
    source.write_text('{"a": 1}')
    seen = {}

    def cleanup_now(label: str) -> None:  # a second process's clean-up at the worst moment
        if label == "ingest: transfer a file" and not seen:
            try:
                with run_lock(simcam_repo.root, "u/tester/run1", action="clean up"):
                    seen["locked"] = True
            except RunLockedError as err:
                seen["refused"] = str(err)

    original = _faults.crash_point
    import butler._write_path as ingest_module

    ingest_module.crash_point = cleanup_now
    try:
        simcam_repo.ingest("metrics", [(str(source), {**DATA, "detector": 1})], transfer="move")
    finally:
        ingest_module.crash_point = original
    assert "refused" in seen and "locked" not in seen
    assert simcam_repo.get("metrics", DATA, detector=1) == {"a": 1} and simcam_repo.verify() == []
