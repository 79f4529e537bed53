"""Crash safety by enumeration: every write path killed (SIGKILL) at each of its crash points.

For each write path the operation first runs to completion in a child process, which counts its
crash points (every file-system step and commit, ``butler._faults``) and gives the state after.
Then, for every n, a fresh copy of the starting repository is handed to a child killed at point n,
and the survivor is checked:

- the registry equals the state before or the state after (the operation is atomic);
- every registered dataset has its files with matching checksums (``verify`` finds no missing,
  checksum or size problem), files of other runs included;
- every file left behind is reported by ``verify`` as a journaled leftover, none as unknown;
- ``cleanup`` (the documented clean-up) removes them all and changes no dataset: afterwards
  ``verify`` reports nothing, the journal is empty and no ``.tmp-`` name is left;
- no source file of an ingest is lost: sources are intact unless a move committed, and then
  they are gone after clean-up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from butler import Butler, DatasetType
from butler.instrument import SimCam
from butler.testing import count_crash_points, crash_at, release_repo, repository_state

RUN = "u/tester/run1"
OTHER = "u/tester/run2"
NESTED = "u"  # a run whose name is a prefix of the others' directories
DATA = {"instrument": "SimCam", "visit": 12}


@dataclass(frozen=True)
class WritePath:
    """One write path: ``operation(root, sources)`` runs in the child."""

    id: str
    operation: Callable[[str, str], None]
    sources: int = 0  # ingest source files made beside the repository
    move: bool = False
    min_points: int = 4
    prepare: Callable[[str], None] | None = field(default=None)
    changes_datasets: bool = True  # clean-up changes files and the journal only
    atomic: bool = True  # False: a sequence of atomic steps (an execution), complete once resumed


def _butler(root: str, run: str | None = RUN) -> Butler:
    return Butler(root, run=run) if run else Butler(root, writeable=True)


def _put_new(root: str, _: str) -> None:
    _butler(root).put({"value": 99}, "metrics", DATA, detector=5)


def _put_many(root: str, _: str) -> None:
    _butler(root).put_many([({"value": d}, "metrics", DATA, {"detector": d}) for d in (5, 6, 7)])


def _put_replace(root: str, _: str) -> None:
    _butler(root).put({"value": -1}, "metrics", DATA, detector=1, replace=True)


def _put_replace_many(root: str, _: str) -> None:
    _butler(root).put_many([({"value": -d}, "metrics", DATA, {"detector": d}) for d in (1, 2)], replace=True)


def _put_nested_run(root: str, _: str) -> None:
    _butler(root, NESTED).put({"value": 7}, "metrics", DATA, detector=1)


def _ingest(transfer: str) -> Callable[[str, str], None]:
    def ingest(root: str, sources: str) -> None:
        files = sorted(os.listdir(sources))
        _butler(root).ingest("metrics", [(os.path.join(sources, name), {**DATA, "detector": 4 + i})
                                         for i, name in enumerate(files)], transfer=transfer)
    return ingest


def _put_exposure(replace: bool) -> Callable[[str, str], None]:
    """A directory dataset (a zarr store: staged as a directory, renamed into place)."""
    def put(root: str, _: str) -> None:
        from test_exposure import make_exposure

        exposure = make_exposure(shape=(64, 48))
        if replace:
            exposure.image[:] = -1.0
        _butler(root).put(exposure, "calexp", DATA, detector=2 if replace else 3, replace=replace)
    return put


def _remove(root: str, _: str) -> None:
    b = _butler(root)
    b.remove([b.find_dataset("metrics", DATA, detector=d, collections=RUN) for d in (1, 2)])


def _remove_runs(root: str, _: str) -> None:
    _butler(root, None).remove_runs(OTHER)


def _certify(root: str, _: str) -> None:
    b = _butler(root)
    b.certify("SimCam/calib/test", [b.find_dataset("bias", instrument="SimCam", detector=1, collections=RUN)],
              "2026-01-01", "2027-01-01")


def _execute(root: str, _: str) -> None:
    """A pipeline execution (resumed if there is already something in its run) on an in-process
    Dask cluster: init-outputs, workers' output files, the driver's registration batches."""
    from distributed import Client, LocalCluster

    from orchestration import DaskExecutor, Pipeline, Planner
    from orchestration.testing import AddTask

    butler = _butler(root, None)
    pipeline = Pipeline().add_task("add", AddTask)
    resume = "u/tester/exec" in butler.query_collections()
    plan = Planner(butler).build(pipeline, inputs=[RUN], output_run="u/tester/exec", where="visit = 12",
                                 resume=resume)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        report = DaskExecutor(client, batch_size=1, progress=False).run(plan, butler)
    assert report.ok, report.summary()


def _interrupted_put(root: str) -> None:
    """The starting state of the clean-up path: a put killed after its files were linked."""
    outcome = crash_at(lambda: _put_many(root, ""), _points_of(_put_many, root, "put: before registry commit"),
                       os.path.dirname(root))
    assert outcome.killed


def _cleanup(root: str, _: str) -> None:
    report = _butler(root, None).cleanup()
    assert report.removed and not report.skipped


def _beside(root: str, name: str) -> str:
    """A file or repository next to the test's copies (``<tmp>/<copy>/repo`` -> ``<tmp>/<name>``)."""
    return os.path.join(os.path.dirname(os.path.dirname(root)), name)


def _without_other(start: str, keep: str) -> None:
    """The starting state of import and transfer: ``OTHER`` kept in ``keep`` (a bundle or a
    repository beside the start), then removed from the start."""
    if keep.endswith(".zip"):
        Butler(start).export(keep, collections=[OTHER])
    else:
        shutil.copytree(start, keep, symlinks=True)
    _remove_runs(start, "")


def _import_zip(root: str, _: str) -> None:
    _butler(root, None).import_(_beside(root, "other.zip"))


def _transfer(root: str, _: str, batch_size: int | None = None) -> None:
    _butler(root, None).transfer_from(Butler(_beside(root, "source")), collections=[OTHER], batch_size=batch_size)


def _points_of(operation: Callable[[str, str], None], root: str, label: str) -> int:
    """The number of the crash point ``label`` of ``operation`` on a scratch copy of ``root``."""
    scratch = root + "-count"
    shutil.copytree(root, scratch, symlinks=True)
    try:
        trail = count_crash_points(lambda: operation(scratch, ""), os.path.dirname(root)).trail
    finally:
        shutil.rmtree(scratch)
    return trail.index(label) + 1


WRITE_PATHS = [
    WritePath("put", _put_new),
    WritePath("put_many", _put_many, min_points=8),
    WritePath("put_replace", _put_replace, min_points=8),
    WritePath("put_many_replace", _put_replace_many, min_points=10),
    WritePath("put_nested_run_name", _put_nested_run),
    WritePath("ingest_copy", _ingest("copy"), sources=3),
    WritePath("ingest_hardlink", _ingest("hardlink"), sources=3),
    WritePath("ingest_symlink", _ingest("symlink"), sources=3),
    WritePath("ingest_move", _ingest("move"), sources=3, move=True, min_points=10),
    WritePath("ingest_direct", _ingest("direct"), sources=3, min_points=2),
    WritePath("put_exposure", _put_exposure(replace=False)),
    WritePath("put_exposure_replace", _put_exposure(replace=True), min_points=8),
    WritePath("remove", _remove),
    WritePath("remove_runs", _remove_runs),
    WritePath("certify", _certify, min_points=2),
    WritePath("cleanup", _cleanup, prepare=_interrupted_put, min_points=3, changes_datasets=False),
    WritePath("execute", _execute, min_points=12, atomic=False),
    WritePath("import_zip", _import_zip, min_points=4,
              prepare=lambda start: _without_other(start, os.path.join(os.path.dirname(start), "other.zip"))),
    WritePath("transfer", _transfer, min_points=4,
              prepare=lambda start: _without_other(start, os.path.join(os.path.dirname(start), "source"))),
]


def _make_base(root: str) -> None:
    b = Butler.create(root, run=RUN)
    b.register_instrument(SimCam(), calibs=False)
    b.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r",
                                          "day_obs": 20261124, "exposure_time": 30.0,
                                          "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"}])
    b.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    b.put_many([({"value": d}, "metrics", DATA, {"detector": d}) for d in range(4)])
    b.register_dataset_type(DatasetType("metrics_in", ("instrument", "visit", "detector"), "StructuredData"))
    b.put_many([({"value": d, "detector": d}, "metrics_in", DATA, {"detector": d}) for d in range(3)])
    from test_exposure import make_exposure

    b.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    b.put(make_exposure(shape=(64, 48)), "calexp", DATA, detector=2)
    b.register_dataset_type(DatasetType("bias", ("instrument", "detector"), "StructuredData", is_calibration=True))
    b.put({"level": 1.0}, "bias", instrument="SimCam", detector=1)
    b.put_many([({"value": 100 + d}, "metrics", DATA, {"detector": d}) for d in range(3)], run=OTHER)
    b.registry.db.engine.dispose()


def _make_sources(directory: str, n: int) -> dict[str, bytes]:
    os.makedirs(directory)
    contents = {}
    for i in range(n):
        data = f'{{"value": {1000 + i}, "source": {i}}}'.encode()
        with open(os.path.join(directory, f"src{i}.json"), "wb") as f:
            f.write(data)
        contents[f"src{i}.json"] = data
    return contents


def _copy(base: str, sources: str, dest: str) -> tuple[str, str]:
    root, src = os.path.join(dest, "repo"), os.path.join(dest, "sources")
    os.makedirs(dest)
    shutil.copytree(base, root, symlinks=True)
    if os.path.isdir(sources):
        shutil.copytree(sources, src)
    return root, src


def _tmp_names(root: str) -> list[str]:
    return [os.path.join(d, n) for d, dirs, names in os.walk(root) for n in names + dirs if n.startswith(".tmp-")]


def _check_survivor(root: str, src: str, sources: dict[str, bytes], before: dict, after: dict,
                    path: WritePath, n: int) -> str:
    """Every invariant of the module docstring; returns "before" or "after"."""
    b = Butler(root, writeable=True)
    try:
        state = repository_state(b)
        if path.atomic:
            assert state in (before, after), f"{path.id} killed at point {n}: the registry is neither before nor after"
        if path.atomic:
            which = "before" if state == before else "after"
        else:  # compared by dataset: an output's bytes may differ between executions (a process id)
            which = "before" if set(state) == set(before) else "after" if set(state) == set(after) else "partial"
        problems = b.verify()
        unexplained = [p for p in problems if p.problem != "leftover"]
        assert not unexplained, f"{path.id} killed at point {n}: {unexplained}"
        report = b.cleanup()
        assert not report.skipped, report.summary()
        assert b.verify() == [], f"{path.id} killed at point {n}: verify after cleanup: {b.verify()}"
        assert repository_state(b) == state, f"{path.id} killed at point {n}: cleanup changed datasets"
        assert b.registry.journal.pending() == []
        assert _tmp_names(root) == []
        for name, data in sources.items():
            full = os.path.join(src, name)
            if path.move and which == "after":
                assert not os.path.exists(full), f"{path.id} at point {n}: moved source {name} still there"
            else:
                with open(full, "rb") as f:
                    assert f.read() == data, f"{path.id} killed at point {n}: source {name} lost or changed"
    finally:
        release_repo(b)
    if not path.atomic:  # resuming completes it, with nothing left over
        assert not crash_at(lambda: path.operation(root, src), 10**9, os.path.dirname(root)).killed
        b = Butler(root, writeable=True)
        try:
            # The same datasets (an output's bytes may differ: a task may record its process id).
            assert set(repository_state(b)) == set(after), f"{path.id} killed at point {n}: resume did not complete"
            assert b.verify() == [] and b.registry.journal.pending() == []
        finally:
            release_repo(b)
    return which


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("crash-base") / "repo")
    _make_base(root)
    return root


@pytest.mark.parametrize("path", WRITE_PATHS, ids=lambda p: p.id)
def test_every_crash_point_leaves_a_consistent_repository(path: WritePath, base: str, tmp_path) -> None:
    start = str(tmp_path / "start")
    shutil.copytree(base, start, symlinks=True)
    if path.prepare is not None:
        path.prepare(start)
    sources = _make_sources(str(tmp_path / "sources"), path.sources) if path.sources else {}
    # The whole operation, counted: its crash points and the state after it.
    root, src = _copy(start, str(tmp_path / "sources"), str(tmp_path / "complete"))
    before_butler = Butler(root)
    before = repository_state(before_butler)
    release_repo(before_butler)
    outcome = count_crash_points(lambda: path.operation(root, src), str(tmp_path))
    assert not outcome.killed and outcome.points >= path.min_points, outcome.trail
    after_butler = Butler(root)
    after = repository_state(after_butler)
    release_repo(after_butler)
    assert (after != before) == path.changes_datasets
    seen = set()
    for n in range(1, outcome.points + 1):
        root, src = _copy(start, str(tmp_path / "sources"), str(tmp_path / f"crash{n}"))
        killed = crash_at(lambda root=root, src=src: path.operation(root, src), n, str(tmp_path))
        assert killed.killed, f"{path.id}: point {n} of {outcome.points} was not reached: {outcome.trail}"
        seen.add(_check_survivor(root, src, sources, before, after, path, n))
        shutil.rmtree(str(tmp_path / f"crash{n}"))
    if path.atomic:  # the points straddle the commit
        assert seen == ({"before", "after"} if path.changes_datasets else {"before"})
    else:
        assert {"partial", "after"} <= seen


def test_crash_points_name_every_step_of_a_replace(base: str, tmp_path) -> None:
    """The enumeration is of real steps: journal, stage, link, commit, removal of the old file."""
    root = str(tmp_path / "repo")
    shutil.copytree(base, root, symlinks=True)
    trail = count_crash_points(lambda: _put_replace(root, ""), str(tmp_path)).trail
    assert trail == ("journal: before commit", "journal: committed", "stage: write temporary file",
                     "stage: link into place", "stage: unlink temporary name", "put: before registry commit",
                     "put: registry committed", "remove file", "journal clear: before commit",
                     "journal clear: committed")


def test_a_killed_transfer_resumes_without_help(base: str, tmp_path) -> None:
    """A transfer in batches of one dataset, killed at each of its crash points, then simply run
    again (no `cleanup`): it completes, copying only what is missing; the destination verifies
    clean and holds what the source holds."""
    start = str(tmp_path / "start")
    shutil.copytree(base, start, symlinks=True)
    _without_other(start, str(tmp_path / "source"))
    root, _ = _copy(start, "", str(tmp_path / "complete"))
    outcome = count_crash_points(lambda: _transfer(root, "", batch_size=1), str(tmp_path))
    assert not outcome.killed and outcome.points >= 9, outcome.trail  # three batches
    source = Butler(str(tmp_path / "source"))
    for n in range(1, outcome.points + 1):
        root, _ = _copy(start, "", str(tmp_path / f"crash{n}"))
        assert crash_at(lambda root=root: _transfer(root, "", batch_size=1), n, str(tmp_path)).killed
        b = Butler(root, writeable=True)
        try:
            problems = [p for p in b.verify() if p.problem != "leftover"]
            assert not problems, f"killed at point {n}: {problems}"  # never a registered dataset without its file
            registered = len(b.query_datasets("metrics", collections=OTHER)) if OTHER in b.query_collections() else 0
            report = b.transfer_from(source, collections=[OTHER], batch_size=1)
            assert report.datasets == 3 - registered and report.skipped == registered
            assert b.verify() == [] and b.registry.journal.pending() == [], f"killed at point {n}"
            assert Butler.compare(source, b, collections=[OTHER]).identical, f"killed at point {n}"
            assert _tmp_names(root) == []
        finally:
            release_repo(b)
        shutil.rmtree(str(tmp_path / f"crash{n}"))
