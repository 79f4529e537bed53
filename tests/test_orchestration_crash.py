"""Crash safety with real processes: SIGKILL the ``butler run`` driver mid-run, then ``--resume``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from butler import Butler
from butler._run_lock import run_lock_holder
from orchestration.testing import files_on_disk, make_metrics_repo, registered_files

OUT = "u/tester/crash"
VISITS, DETECTORS = 12, 9
N_ADD = VISITS * DETECTORS


def butler_command() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "butler")
    if not os.path.exists(exe):
        pytest.skip("the butler script is not installed next to the interpreter")
    return exe




def succeeded_quanta(root: str) -> int:
    """AddTask quanta registered so far (provenance rows are inserted with the outputs), read with plain sqlite3."""
    con = sqlite3.connect(f"file:{os.path.join(root, 'butler.sqlite3')}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM quantum WHERE status = 'succeeded' AND task = 'add'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def executions(log: str) -> list[int]:
    """Input values of every AddTask execution (one line each), in order."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [int(float(line.split()[0])) for line in f if line.strip()]


@pytest.mark.slow
def test_sigkill_driver_then_resume(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=VISITS, detectors=DETECTORS)
    root = butler.root
    log = str(tmp_path / "executions.log")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        tasks:
          add:
            class: orchestration.testing.AddTask
            config: {{sleep: 0.05, log: {log}}}
          sum: orchestration.testing.SumTask
    """))
    command = [butler_command(), "run", root, str(pipeline), "-i", "in", "-o", OUT, "--cluster", "local:2",
               "--retries", "1", "--no-progress"]
    env = dict(os.environ, BUTLER_USER="tester")

    with open(tmp_path / "first.out", "w") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while succeeded_quanta(root) < 40 and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)  # between two registration batches: some outputs are written but not registered
            assert driver.poll() is None, (tmp_path / "first.out").read_text()
            workers = psutil.Process(driver.pid).children(recursive=True)
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
        # Worker processes notice their parent died and exit; make sure of it (they are ours).
        _, alive = psutil.wait_procs(workers, timeout=20)
        for p in alive:
            p.kill()
        assert not alive, f"worker processes outlived the killed driver: {alive}"

    butler = Butler(root, writeable=True)
    before = {r.data_id["visit"] * 10 + r.data_id["detector"]: r.id
              for r in butler.query_datasets("added", collections=OUT)}
    sums_before = {r.data_id["visit"]: r.id for r in butler.query_datasets("visit_sum", collections=OUT)}
    executed_before = executions(log)
    assert 40 <= len(before) < N_ADD, len(before)
    assert set(before) <= set(executed_before)
    orphans = files_on_disk(root, OUT) - registered_files(butler, OUT)
    completed_unregistered = set(executed_before) - set(before)

    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(before)}" in result.stdout and "outputs exist (resume)" in result.stdout

    butler = Butler(root, writeable=True)
    after = {r.data_id["visit"] * 10 + r.data_id["detector"]: r.id
             for r in butler.query_datasets("added", collections=OUT)}
    assert len(after) == N_ADD and all(after[k] == v for k, v in before.items())  # completed ones kept
    sums = {r.data_id["visit"]: r.id for r in butler.query_datasets("visit_sum", collections=OUT)}
    assert len(sums) == VISITS and all(sums[k] == v for k, v in sums_before.items())
    executed_after = executions(log)[len(executed_before):]
    assert not set(executed_after) & set(before), "a completed quantum ran again"
    assert sorted(executed_after) == sorted(set(range(10 * VISITS)) - set(before)
                                            - {v * 10 + d for v in range(VISITS) for d in range(DETECTORS, 10)})
    # Every output exists once, every file is registered (orphans removed), and the checksums hold.
    assert butler.verify() == []
    assert files_on_disk(root, OUT) == registered_files(butler, OUT)
    for name in ("add_config", "sum_config", "packages"):
        assert len(butler.query_datasets(name, collections=OUT)) == 1
    records = butler.query_provenance(run=OUT, task="add", status="succeeded")
    assert len(records) == N_ADD and len({tuple(sorted(r["data_id"].items())) for r in records}) == N_ADD

    extra = len(set(executed_before) & set(executed_after))
    in_flight = len(completed_unregistered) + 2  # finished but not yet registered, plus one running per worker
    print(f"\ncrash at {len(before)}/{N_ADD} registered add quanta: {len(orphans)} orphan files removed, "
          f"{len(completed_unregistered)} quanta finished but unregistered; extra work on resume: {extra} "
          f"quanta (in flight at the kill: <= {in_flight})")
    assert extra <= in_flight


@pytest.mark.slow
def test_second_executor_on_a_running_run_is_refused(tmp_path):
    """While one driver executes a run, a second ``butler run`` (or ``remove-runs``) on it fails at
    once naming the holder, and removes none of the first driver's not-yet-registered outputs."""
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=4, detectors=DETECTORS)
    root = butler.root
    pipeline = tmp_path / "pipeline.yaml"
    gate = tmp_path / "gate"
    pipeline.write_text(textwrap.dedent(f"""
        tasks:
          add:
            class: orchestration.testing.AddTask
            config: {{gate: {gate}}}
    """))
    command = [butler_command(), "run", root, str(pipeline), "-i", "in", "-o", OUT, "--cluster", "local:2",
               "--no-progress"]
    env = dict(os.environ, BUTLER_USER="tester")
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:  # quanta of detectors other than 0 wait for the gate: the run stays open
            deadline = time.monotonic() + 120
            while (run_lock_holder(root, OUT) is None or not files_on_disk(root, OUT)) and first.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)  # let the workers start on quanta: some detector-0 outputs get written
            assert first.poll() is None, (tmp_path / "first.out").read_text()
            second = subprocess.run([*command, "--resume"], check=False, capture_output=True, text=True, env=env,
                                    timeout=120)
            removal = subprocess.run([butler_command(), "remove-runs", root, OUT, "--yes"], check=False,
                                     capture_output=True, text=True, env=env, timeout=60)
            gate.write_text("open")
            first_rc = first.wait(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
    assert second.returncode != 0
    assert f"cannot execute run {OUT!r}: it is locked by pid {first.pid}" in second.stdout + second.stderr
    assert removal.returncode != 0
    assert f"cannot remove run {OUT!r}: it is locked by pid {first.pid}" in removal.stdout + removal.stderr
    assert first_rc == 0, (tmp_path / "first.out").read_text()
    butler = Butler(root, writeable=True)
    assert len(butler.query_datasets("added", collections=OUT)) == 4 * DETECTORS
    assert butler.verify() == []
    assert files_on_disk(root, OUT) == registered_files(butler, OUT)
