"""Run locks: one executor or remover per run at a time, released by the kernel when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from butler import Butler
from butler._run_lock import run_lock, run_lock_holder
from butler.errors import ConflictError, RunLockedError
from butler.testing import snapshot_repo

HOLD = textwrap.dedent("""
    import sys, time
    from butler._run_lock import run_lock
    with run_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        time.sleep(600)
""")


def hold_in_subprocess(root: str, run: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, root, run], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_reentrant_in_one_process_and_released_after(tmp_path):
    root = str(tmp_path)
    assert run_lock_holder(root, "u/a/run") is None
    with run_lock(root, "u/a/run"):
        with run_lock(root, "u/a/run", action="remove"):  # the executor calls remove/prepare while holding it
            holder = run_lock_holder(root, "u/a/run")
            assert holder["pid"] == os.getpid() and holder["action"] == "execute"
        assert run_lock_holder(root, "u/a/run") is not None
    assert run_lock_holder(root, "u/a/run") is None
    with run_lock(root, "u/a/run"):  # can be taken again
        pass


def test_other_process_holding_the_lock_is_named_and_sigkill_releases_it(tmp_path):
    root = str(tmp_path)
    proc = hold_in_subprocess(root, "u/a/run")
    try:
        with (pytest.raises(RunLockedError, match=rf"cannot execute run 'u/a/run': it is locked by pid {proc.pid} on "),
              run_lock(root, "u/a/run")):
            pass
        assert issubclass(RunLockedError, ConflictError)
        with run_lock(root, "u/a/other"):  # other runs are independent
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while run_lock_holder(root, "u/a/run") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    with run_lock(root, "u/a/run"):  # the kernel released the dead holder's lock: nothing stale to clean
        assert run_lock_holder(root, "u/a/run")["pid"] == os.getpid()


def test_remove_runs_refuses_a_locked_run_and_changes_nothing(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    butler.register_run("u/a/run")
    butler.register_run("u/a/other")
    before = snapshot_repo(butler)
    proc = hold_in_subprocess(butler.root, "u/a/run")
    try:
        with pytest.raises(RunLockedError, match=r"cannot remove run 'u/a/run': it is locked by pid"):
            butler.remove_runs("u/a/*")
        assert snapshot_repo(butler) == before  # not even the unlocked run matched by the glob is removed
    finally:
        proc.kill()
        proc.wait()
    assert sorted(butler.remove_runs("u/a/*")) == ["u/a/other", "u/a/run"]


def test_lock_files_do_not_pile_up(tmp_path):
    root = str(tmp_path)
    for i in range(3):
        with run_lock(root, f"u/a/run{i}"):
            assert len(os.listdir(tmp_path / ".locks")) == 1
    assert os.listdir(tmp_path / ".locks") == []


CONTEND = textwrap.dedent("""
    import os, sys
    from butler._run_lock import run_lock
    from butler.errors import RunLockedError
    root, marker = sys.argv[1], sys.argv[2]
    held = overlaps = 0
    for _ in range(300):
        try:
            with run_lock(root, "u/a/run"):
                try:  # a second holder at the same time would find the marker
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    overlaps += 1
                    continue
                held += 1
                os.close(fd)
                os.unlink(marker)
        except RunLockedError:
            pass
    print(held, overlaps)
""")


def test_mutual_exclusion_under_contention(tmp_path):
    """Processes taking and releasing (and unlinking) the same lock never hold it together."""
    marker = str(tmp_path / "inside")
    procs = [subprocess.Popen([sys.executable, "-c", CONTEND, str(tmp_path), marker], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    results = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(overlaps for _, overlaps in results) == 0
    assert sum(held for held, _ in results) > 0


def test_another_thread_of_the_process_is_refused(tmp_path):
    """An executor running in a thread (a notebook) is protected from the next cell's remove_runs."""
    import threading

    root = str(tmp_path)
    held, release = threading.Event(), threading.Event()

    def executor():
        with run_lock(root, "u/a/run"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=executor)
    thread.start()
    try:
        assert held.wait(30)
        with (pytest.raises(RunLockedError, match=r"cannot remove run 'u/a/run': it is locked by another thread "
                                                  rf"of this process \(pid {os.getpid()}\)"),
              run_lock(root, "u/a/run", action="remove")):
            pass
    finally:
        release.set()
        thread.join()
    with run_lock(root, "u/a/run", action="remove"):  # free again once that thread is done
        pass


HOLD_SHARED = textwrap.dedent("""
    import sys, time
    from butler._run_lock import run_lock
    with run_lock(sys.argv[1], sys.argv[2], shared=True):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_shared_holders_coexist_and_keep_exclusive_holders_out(tmp_path):
    """Writes (shared) run side by side; clean-up, executors and removers (exclusive) wait for none."""
    root = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, root, "u/a/run"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    try:
        with run_lock(root, "u/a/run", shared=True):  # a second writer
            pass
        with (pytest.raises(RunLockedError, match=r"cannot clean up run 'u/a/run': it is locked by writes in progress"),
              run_lock(root, "u/a/run", action="clean up")):
            pass
    finally:
        proc.kill()
        proc.wait()
    with (run_lock(root, "u/a/run", action="clean up"),  # the dead writer's hold went with it
          run_lock(root, "u/a/run", shared=True)):  # nested in our own exclusive hold: a no-op
        pass
    assert os.listdir(tmp_path / ".locks") == []


MIXED = textwrap.dedent("""
    import os, random, sys
    from butler._run_lock import run_lock
    from butler.errors import RunLockedError
    root, inside = sys.argv[1], sys.argv[2]
    me = str(os.getpid())
    overlaps = exclusive = shared = 0
    for i in range(300):
        share = random.random() < 0.7
        try:
            with run_lock(root, "u/a/run", shared=share):
                names = os.listdir(inside)
                if share:
                    if "X" in names:
                        overlaps += 1
                    open(os.path.join(inside, f"{me}-{i}"), "w").close()
                    os.unlink(os.path.join(inside, f"{me}-{i}"))
                    shared += 1
                else:
                    if names:
                        overlaps += 1
                    open(os.path.join(inside, "X"), "w").close()
                    os.unlink(os.path.join(inside, "X"))
                    exclusive += 1
        except RunLockedError:
            pass
    print(shared, exclusive, overlaps)
""")


def test_shared_and_exclusive_never_overlap_under_contention(tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", MIXED, str(tmp_path), str(inside)], stdout=subprocess.PIPE,
                              text=True) for _ in range(5)]
    results = [tuple(map(int, p.communicate(timeout=180)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r[2] for r in results) == 0
    assert sum(r[0] for r in results) > 0 and sum(r[1] for r in results) > 0


def test_a_process_writing_into_many_runs_keeps_no_descriptors(tmp_path):
    """Shared holds close their descriptor when they end (a notebook writing into thousands of
    runs must not run out of file descriptors)."""
    root = str(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(300):
        with run_lock(root, f"u/a/run{i}", shared=True):
            pass
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_child_forked_while_another_thread_waits_for_a_lock_can_lock(tmp_path):
    """The lock table's guard is not held across a wait, and a forked child starts with a fresh one."""
    import threading

    root = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, root, "u/a/busy"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    try:
        waiting = threading.Thread(target=lambda: pytest.raises(RunLockedError, _take, root, "u/a/busy"))
        waiting.start()  # retries for about a second against the other process's shared hold
        with run_lock(root, "u/a/other"):  # meanwhile, other runs lock at once
            pass
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with run_lock(root, "u/a/child"):
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        waiting.join(30)
    finally:
        proc.kill()
        proc.wait()


def _take(root: str, run: str) -> None:
    with run_lock(root, run, action="clean up"):
        pass
