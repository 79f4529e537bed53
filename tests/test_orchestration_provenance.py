"""Provenance: init-outputs written once per run and compared (also under concurrency), quantum records."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback

import pytest

from butler import Butler, DatasetType
from butler.testing import run_concurrently
from orchestration import DaskExecutor, Plan, Planner, ProvenanceMismatchError
from orchestration._provenance import package_versions, write_init_outputs, write_once_and_compare
from orchestration.testing import add_sum, make_metrics_repo

OUT = "u/tester/out"
WRITERS = 16


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=4, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def repo(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=3, detectors=9)
    return Butler(butler.root, writeable=True)



def run(client, butler, plan):
    return DaskExecutor(client, progress=False).run(plan, butler)


def test_init_outputs_written_once_and_compared(repo, client):
    plan = Planner(repo).build(add_sum(offset=2.0), inputs=["in"], output_run=OUT, where="visit < 2")
    assert run(client, repo, plan).ok
    assert repo.get("add_config", {}, collections=OUT) == {"offset": 2.0, "fail_on_detector": -1, "sleep": 0.0,
                                                           "log": "", "gate": ""}
    assert repo.get("sum_config", {}, collections=OUT) == {}
    packages = repo.get("packages", {}, collections=OUT)
    assert packages == package_versions() and "python" in packages and "numpy" in packages
    ids = {name: repo.find_dataset(name, {}, collections=OUT).id for name in ("add_config", "sum_config", "packages")}

    # Resume with the same configuration: compared, not rewritten.
    plan = Planner(repo).build(add_sum(offset=2.0), inputs=["in"], output_run=OUT, resume=True)
    assert run(client, repo, plan).succeeded == 10
    assert {name: repo.find_dataset(name, {}, collections=OUT).id for name in ids} == ids
    for name in ids:
        assert len(repo.query_datasets(name, collections=OUT)) == 1
    plan.write_init_outputs(repo)  # the public spelling: compares again

    # Resume with another configuration: fails fast naming the field, before any quantum runs.
    repo.remove(repo.query_datasets("visit_sum", collections=OUT, where="visit = 2"))
    plan = Planner(repo).build(add_sum(offset=3.0), inputs=["in"], output_run=OUT, resume=True)
    assert len(plan.to_run()) == 1
    with pytest.raises(ProvenanceMismatchError) as info:
        run(client, repo, plan)
    message = str(info.value)
    assert "'add_config' of run 'u/tester/out' differs from this execution's: offset: was 2.0, now 3.0" in message
    assert "use a new output run" in message
    assert isinstance(info.value, ValueError)
    assert repo.query_datasets("visit_sum", collections=OUT, where="visit = 2") == []


def test_mismatch_names_every_difference(repo):
    dt = DatasetType("thing_config", (), "StructuredData")
    assert write_once_and_compare(repo, dt, {"a": 1, "b": {"c": [1, 2]}, "d": "x"}, OUT) is True
    assert write_once_and_compare(repo, dt, {"d": "x", "b": {"c": [1, 2]}, "a": 1}, OUT) is False  # key order
    with pytest.raises(ProvenanceMismatchError) as info:
        write_once_and_compare(repo, dt, {"a": 2, "b": {"c": [1]}, "e": None}, OUT)
    message = str(info.value)
    for part in ("a: was 1, now 2", "b.c: was [1, 2], now [1]", "d: was 'x', now absent", "e: absent before, now None"):
        assert part in message


def test_changed_package_versions_are_a_mismatch(repo, monkeypatch):
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 0")
    repo.register_run(OUT)
    write_init_outputs(plan, repo)
    import orchestration._provenance as prov

    monkeypatch.setattr(prov, "package_versions", lambda: {**package_versions(), "numpy": "0.0.1"})
    with pytest.raises(ProvenanceMismatchError, match="'packages' of run .*numpy: was '.*', now '0.0.1'"):
        write_init_outputs(plan, repo)


# -- concurrency -----------------------------------------------------------------------------------
def _concurrent_writer(root: str, plan_path: str, barrier, queue) -> None:
    """One of many processes writing the same run's init-outputs at the same moment."""
    os.environ["BUTLER_USER"] = "tester"
    try:
        butler = Butler(root, writeable=True)
        plan = Plan.load(plan_path)
        barrier.wait(timeout=60)
        wrote = [write_once_and_compare(butler, DatasetType("race_config", (), "StructuredData"),
                                        {"value": 42, "nested": {"x": [1, 2, 3]}}, plan.output_run)]
        write_init_outputs(plan, butler)
        queue.put(("ok", os.getpid(), wrote))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put(("error", os.getpid(), traceback.format_exc()))


def test_concurrent_writers_end_with_one_write(repo_factory, tmp_path):
    butler = repo_factory()
    make_metrics_repo(butler, visits=1, detectors=1)
    butler = Butler(butler.root, writeable=True)
    plan = Planner(butler).build(add_sum(offset=7.0), inputs=["in"], output_run=OUT)
    butler.register_run(OUT)
    plan_path = str(tmp_path / "plan.gz")
    plan.save(plan_path)

    # Fresh interpreters, not forks of this one (no inherited connections or threads): the forkserver
    # is a spawned process that imports the butler once and forks the writers from that clean state,
    # which starts 16 writers in about a second instead of 16 full interpreter start-ups.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["butler", "orchestration", "orchestration._provenance", "sqlalchemy", __name__])
    else:
        ctx = multiprocessing.get_context("spawn")
    results = run_concurrently(ctx, _concurrent_writer, [(butler.root, plan_path)] * WRITERS)
    assert sum(r[2][0] for r in results) == 1  # exactly one process wrote; the 15 others compared

    butler.refresh()
    for name in ("race_config", "add_config", "sum_config", "packages"):
        refs = butler.query_datasets(name, collections=OUT)
        assert len(refs) == 1, (name, refs)
    assert butler.get("race_config", {}, collections=OUT) == {"value": 42, "nested": {"x": [1, 2, 3]}}
    assert butler.get("add_config", {}, collections=OUT)["offset"] == 7.0
    files = [f for _, _, names in os.walk(os.path.join(butler.root, OUT)) for f in names]
    assert len(files) == 4, files  # one file per init-output, no temporary leftovers
    assert butler.verify() == []


# -- per-quantum records ---------------------------------------------------------------------------
def test_provenance_of_outputs_and_failures(repo, client):
    t0 = time.time_ns()
    plan = Planner(repo).build(add_sum(fail_on_detector=4), inputs=["in"], output_run=OUT, where="visit < 2")
    report = run(client, repo, plan)
    t1 = time.time_ns()
    assert not report.ok and len(report.failed) == 2 and sorted(report.blocked) == sorted(
        q.index for q in plan.quanta if q.task == "sum")

    (ref,) = repo.query_datasets("added", collections=OUT, where="visit = 1 AND detector = 2")
    record = repo.provenance(ref)
    assert record["task"] == "add" and record["data_id"] == {"instrument": "SimCam", "visit": 1, "detector": 2}
    assert record["status"] == "succeeded" and record["error"] is None and record["run"] == OUT
    (source,) = repo.query_datasets("metrics_in", collections="in", where="visit = 1 AND detector = 2")
    assert record["inputs"] == [source.id] and record["outputs"] == [ref.id]
    assert record["host"] == socket.gethostname()
    assert t0 <= record["start_ns"] <= record["end_ns"] <= t1
    assert record["config_digest"] == plan.task_def("add").config_digest
    assert repo.provenance(source) is None  # not made by a pipeline

    failed = repo.query_provenance(run=OUT, status="failed")
    assert sorted(f["data_id"]["visit"] for f in failed) == [0, 1]
    assert {f["data_id"]["detector"] for f in failed} == {4}
    assert all(f["task"] == "add" and "detector 4 is configured to fail" in f["error"] for f in failed)
    assert all(len(f["inputs"]) == 1 for f in failed)
    assert len(repo.query_provenance(run=OUT, status="succeeded")) == 16
    assert len(repo.query_provenance(run=OUT, task="sum")) == 0  # blocked quanta never ran
    assert len(repo.query_provenance(run=OUT, status=["failed", "succeeded"])) == 18

    # Resuming needs the run's configuration: the failure stays a failure (a fix needs a new run).
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, resume=True)
    with pytest.raises(ProvenanceMismatchError, match="fail_on_detector: was 4, now -1"):
        run(client, repo, plan)

    # The sum of a visit records its 9 inputs.
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run="u/tester/ok", where="visit = 0")
    assert run(client, repo, plan).ok
    (total,) = repo.query_datasets("visit_sum", collections="u/tester/ok")
    rec = repo.provenance(total)
    added = {r.id for r in repo.query_datasets("added", collections="u/tester/ok")}
    assert rec["task"] == "sum" and set(rec["inputs"]) == added and len(added) == 9
