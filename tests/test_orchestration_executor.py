"""The Dask executor on a real LocalCluster of worker processes: failures, blocked quanta, retries,
a worker killed mid-run, orphan clean-up."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from butler import Butler
from orchestration import DaskExecutor, Pipeline, Planner
from orchestration.testing import FlakyTask, SumTask, add_sum, files_on_disk, make_metrics_repo, registered_files

OUT = "u/tester/out"


@pytest.fixture(scope="module")
def cluster_client():
    """Two single-threaded worker processes (spawned), shared by the tests of this module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture
def repo(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=5, detectors=9)
    return Butler(butler.root, writeable=True)





def test_run_on_local_cluster(repo, cluster_client):
    plan = Planner(repo).build(add_sum(offset=0.5), inputs=["in"], output_run=OUT, where="visit < 4")
    report = DaskExecutor(cluster_client, progress=False).run(plan, repo)
    assert report.ok and (report.succeeded, report.skipped) == (40, 0)
    assert report.summary().startswith(
        "40 quanta succeeded (0 with nothing to do), 0 skipped, 0 failed, 0 blocked by failures")
    pids = {repo.get(r)["pid"] for r in repo.query_datasets("added", collections=OUT)}
    assert os.getpid() not in pids and len(pids) >= 1  # executed in the worker processes
    for visit in range(4):
        total = repo.get("visit_sum", instrument="SimCam", visit=visit, collections=OUT)
        assert total == {"value": sum(10 * visit + d + 0.5 for d in range(9)), "n": 9, "detectors": list(range(9))}
    assert repo.verify() == []
    assert files_on_disk(repo.root, OUT) == registered_files(repo, OUT)


def test_failing_quantum_blocks_downstream_only(repo, cluster_client):
    plan = Planner(repo).build(add_sum(fail_on_detector=4), inputs=["in"], output_run=OUT, where="visit < 4")
    resume = "butler run repo p.yaml -i in -o u/tester/out --resume"
    report = DaskExecutor(cluster_client, progress=False, resume_command=resume).run(plan, repo)
    assert not report.ok
    assert report.succeeded == 32 and len(report.failed) == 4
    blocked = {plan.quanta[i].data_id["visit"] for i in report.blocked}
    assert blocked == {0, 1, 2, 3} and all(plan.quanta[i].task == "sum" for i in report.blocked)
    for failure in report.failed:
        assert failure.task == "add" and "detector: 4" in failure.data_id
        assert failure.error == "ValueError: detector 4 is configured to fail"
        assert "Traceback (most recent call last)" in failure.tb and "testing.py" in failure.tb
    summary = report.summary()
    assert "32 quanta succeeded (0 with nothing to do), 0 skipped, 4 failed, 4 blocked by failures" in summary
    assert summary.count("FAILED add {instrument: 'SimCam'") == 4
    assert 'raise ValueError(f"detector {self.config.fail_on_detector} is configured to fail")' in summary
    assert summary.rstrip().endswith(f"to retry what failed: {resume}")
    # Unrelated quanta succeeded and are registered; nothing of the failures or blocked quanta is.
    added = repo.query_datasets("added", collections=OUT)
    assert sorted({r.data_id["detector"] for r in added}) == [0, 1, 2, 3, 5, 6, 7, 8] and len(added) == 32
    assert repo.query_datasets("visit_sum", collections=OUT) == []
    assert len(repo.query_provenance(run=OUT, status="failed")) == 4
    assert repo.verify() == [] and files_on_disk(repo.root, OUT) == registered_files(repo, OUT)


def test_failed_quanta_record_host_worker_and_times(repo, cluster_client):
    t0 = time.time_ns()
    plan = Planner(repo).build(add_sum(fail_on_detector=4), inputs=["in"], output_run=OUT, where="visit < 2")
    report = DaskExecutor(cluster_client, progress=False).run(plan, repo)
    t1 = time.time_ns()
    assert len(report.failed) == 2
    workers = set(cluster_client.scheduler_info()["workers"])
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    for failure in report.failed:  # the driver's report knows them too
        assert failure.host == socket.gethostname() and failure.worker in workers
        assert t0 < failure.start_ns < failure.end_ns < t1
    records = repo.query_provenance(run=OUT, status="failed")
    assert sorted(r["data_id"]["visit"] for r in records) == [0, 1]
    for record in records:
        assert record["host"] == socket.gethostname()
        assert record["worker"] in workers
        assert t0 < record["start_ns"] < record["end_ns"] < t1
        assert record["error"] == "ValueError: detector 4 is configured to fail"


def test_retries(repo, cluster_client, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    pipe = Pipeline().add_task("flaky", FlakyTask, marker_dir=str(markers))
    plan = Planner(repo).build(pipe, inputs=["in"], output_run=OUT, where="visit = 0")
    report = DaskExecutor(cluster_client, retries=1, progress=False).run(plan, repo)
    assert report.ok, report.summary()
    assert report.succeeded == 9 and len(os.listdir(markers)) == 9  # each quantum failed once
    assert {repo.get(r)["attempt"] for r in repo.query_datasets("flaky_out", collections=OUT)} == {2}
    # Without retries the first attempt's failure is final.
    plan = Planner(repo).build(pipe, inputs=["in"], output_run="u/tester/noretry", where="visit = 1")
    report = DaskExecutor(cluster_client, retries=0, progress=False).run(plan, repo)
    assert len(report.failed) == 9 and "flaky failure (first attempt" in report.failed[0].error


def test_leftovers_of_a_killed_run_are_removed_and_unknown_files_kept(repo, cluster_client):
    """Clean-up removes what this run journaled and never registered, never a file it does not
    know about (reported by verify instead), and never through a read-only Butler."""
    from butler import Butler
    from butler.errors import ReadOnlyError

    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 0")
    DaskExecutor(cluster_client, progress=False).run(plan, repo)
    before = registered_files(repo, OUT)
    # A killed execution journaled an output and left its file and a staging name.
    leftover = "added-leftover"
    from butler.registry._journal import STAGE, new_operation

    path = os.path.join(OUT, "added", f"{leftover}.json")
    repo.registry.journal.record(new_operation(), OUT, STAGE, [(path, None, None)])
    with open(os.path.join(repo.root, path), "w") as f:
        f.write("{")
    temp = os.path.join(repo.root, OUT, "added", f".tmp-0123456789ab-{leftover}.json")
    with open(temp, "w") as f:
        f.write("{")
    # A file nobody journaled (put there by hand) is not the run's to delete.
    stranger = os.path.join(repo.root, OUT, "added", "notes.txt")
    with open(stranger, "w") as f:
        f.write("mine")
    kinds = {p.path: p.problem for p in repo.verify()}
    assert kinds == {path: "leftover", os.path.relpath(temp, repo.root): "leftover",
                     os.path.relpath(stranger, repo.root): "unregistered"}
    with pytest.raises(ReadOnlyError):
        Butler(repo.root).cleanup()
    report = repo.cleanup([OUT])
    assert sorted(report.removed) == sorted([path, os.path.relpath(temp, repo.root)])
    assert os.path.exists(stranger)
    assert registered_files(repo, OUT) == before
    assert {p.path: p.problem for p in repo.verify()} == {os.path.relpath(stranger, repo.root): "unregistered"}
    assert repo.cleanup(["u/tester/never-ran"]).removed == []


def test_worker_killed_mid_run(repo, cluster_client):
    """Dask re-runs what the dead worker held (also finished quanta whose results dependents still
    needed); the executor keeps already-written outputs, so the run completes and verifies."""
    plan = Planner(repo).build(add_sum(sleep=0.05), inputs=["in"], output_run=OUT)
    assert len(plan.to_run()) == 50
    run_dir = os.path.join(repo.root, OUT, "added")
    result = {}

    def execute():
        try:
            result["report"] = DaskExecutor(cluster_client, retries=1, progress=False).run(plan, repo)
        except BaseException as err:  # noqa: BLE001
            result["error"] = err

    thread = threading.Thread(target=execute)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = sum(len(files) for _, _, files in os.walk(run_dir)) if os.path.isdir(run_dir) else 0
        if done >= 12:
            break
        time.sleep(0.01)
    pids = cluster_client.run(os.getpid)
    victim = min(pids.values())
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.ok, report.summary()
    assert report.succeeded == 50
    assert victim not in cluster_client.run(os.getpid).values()  # the nanny started a new worker
    added = repo.query_datasets("added", collections=OUT)
    assert len(added) == 45 and len({r.data_id for r in added}) == 45
    assert len(repo.query_datasets("visit_sum", collections=OUT)) == 5
    assert repo.verify() == []
    assert files_on_disk(repo.root, OUT) == registered_files(repo, OUT)
    for visit in range(5):
        assert repo.get("visit_sum", instrument="SimCam", visit=visit, collections=OUT)["n"] == 9


def test_a_quantum_that_kills_its_worker_fails_and_blocks_its_downstream(repo):
    """KilledWorker (not a task error) is blamed on the quantum that killed workers; Dask hands it to
    the dependents too, which are reported blocked (not failed, no provenance), and the rest runs."""
    import dask
    from distributed import Client, LocalCluster

    from orchestration.testing import CrashingTask

    pipeline = Pipeline().add_task("add", CrashingTask).add_task("sum", SumTask)
    plan = Planner(repo).build(pipeline, inputs=["in"], output_run=OUT, where="visit < 2 AND detector < 4")
    # One task per single-threaded worker at a time (saturation 1.0): no innocent quantum dies with
    # a crashing one. Each crashing quantum kills 1 + allowed-failures workers, then is KilledWorker.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        report = DaskExecutor(client, progress=False).run(plan, repo)
    failed = {f.index for f in report.failed}
    crashing = {q.index for q in plan.to_run() if q.task == "add" and q.data_id["detector"] == 2}
    assert crashing <= failed  # (a quantum that shared a dying worker may have died with it: Dask's call)
    assert all(plan.quanta[f.index].task == "add" and "KilledWorker" in f.error for f in report.failed)
    sums = [q for q in plan.to_run() if q.task == "sum"]
    assert sorted(report.blocked) == sorted(q.index for q in sums)  # each sum has a failed add upstream
    assert report.succeeded + len(report.failed) + len(report.blocked) == len(plan.to_run())
    records = repo.query_provenance(run=OUT)  # blocked quanta are not recorded
    assert sorted((r["task"], r["status"]) for r in records) == \
        [("add", "failed")] * len(failed) + [("add", "succeeded")] * report.succeeded


def test_ctrl_c_cancels_the_runs_tasks_before_releasing_the_lock(repo, cluster_client):
    """Ctrl-C in a notebook (KeyboardInterrupt in the driver) on a long-lived client: the run's
    tasks are cancelled and drained before the run lock goes, so nothing writes into the run
    afterwards, and a resume completes it."""
    import _thread

    from butler._run_lock import run_lock

    plan = Planner(repo).build(add_sum(sleep=0.2), inputs=["in"], output_run=OUT)
    run_dir = os.path.join(repo.root, OUT, "added")

    def interrupt_when_started():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.isdir(run_dir) and sum(len(f) for _, _, f in os.walk(run_dir)) >= 4:
                break
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        DaskExecutor(cluster_client, progress=False).run(plan, repo)
    processing = {k for ks in cluster_client.processing().values() for k in ks}
    assert not any(str(k).startswith("q") for k in processing), processing
    settled = files_on_disk(repo.root, OUT)
    time.sleep(0.6)  # longer than a quantum: a task still running would write now
    assert files_on_disk(repo.root, OUT) == settled
    with run_lock(repo.root, OUT):  # released
        pass
    plan = Planner(repo).build(add_sum(sleep=0.2), inputs=["in"], output_run=OUT, resume=True)
    report = DaskExecutor(cluster_client, progress=False).run(plan, repo)
    assert report.ok, report.summary()
    assert len(repo.query_datasets("added", collections=OUT)) == 45 and repo.verify() == []
    assert files_on_disk(repo.root, OUT) == registered_files(repo, OUT)


def test_a_foreign_file_at_an_output_path_is_refused_not_adopted(repo, cluster_client):
    """A file the journal does not know, lying where a quantum will write its output (a stale copy,
    a pre-journal leftover), used to be adopted as that quantum's output; now nothing starts."""
    from butler.errors import ConflictError

    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 0")
    DaskExecutor(cluster_client, progress=False).run(plan, repo)
    path = min(registered_files(repo, OUT) - {p for p in registered_files(repo, OUT) if "config" in p
                                              or "packages" in p})
    repo.remove_runs(OUT)
    stale = os.path.join(repo.root, path)
    os.makedirs(os.path.dirname(stale), exist_ok=True)
    with open(stale, "w") as f:
        f.write('{"value": -12345, "stale": true}')
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 0")
    with pytest.raises(ConflictError, match=r"output path\(s\) already hold a file the registry does not know"):
        DaskExecutor(cluster_client, progress=False).run(plan, repo)
    with open(stale) as f:
        assert "stale" in f.read()  # kept: not ours to delete
    assert not repo.query_datasets("added", collections=OUT) and not repo.query_datasets("visit_sum", collections=OUT)
