"""Small tasks and repositories for tests and benchmarks of the framework.

Everything here is importable by Dask workers (tasks must be importable by class path).

* ``AddTask`` -> ``SumTask``: metrics_in (visit, detector) -> added (visit, detector) -> visit_sum (visit).
* ``NoOpTask``, ``FailingTask``, ``FlakyTask`` (fails once per quantum, then succeeds: for retries),
  ``SplitTask`` (two outputs per quantum: for partial-output restarts), ``UnpicklableConfigTask``.
* ``CalibrateTask`` -> ``WarpTask`` -> ``CoaddTask``: no-op tasks with the demo pipeline's
  connection shapes (raw -> calexp (visit, detector) -> warp (visit, patch) -> coadd (patch, band)),
  for planning benchmarks.
* ``make_metrics_repo``: SimCam, visit records and ``metrics_in`` datasets in one run.
* ``add_sum`` (the add -> sum pipeline), ``registered_files`` / ``files_on_disk`` of a run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._connections import Input, Output
from ._task import Task

if TYPE_CHECKING:
    from butler import Butler, DataCoordinate, DatasetRef

    from ._context import QuantumContext
    from ._pipeline import Pipeline

__all__ = ["AddTask", "CalibrateTask", "CoaddTask", "CrashingTask", "FailingTask", "FlakyTask", "NoOpTask",
           "SplitTask", "SumTask", "UnpicklableConfigTask", "WarpTask", "add_sum", "files_on_disk",
           "make_metrics_repo", "registered_files"]


class AddTask(Task):
    """metrics_in (visit, detector) -> added (visit, detector): value + offset.

    ``sleep`` makes each quantum slow; ``fail_on_detector`` makes one detector fail; ``log`` is a
    file to which each execution appends ``"<input value> <pid>"`` (to count executions);
    ``gate`` is a file that quanta of detectors other than 0 wait for (a test holds a run open).
    """

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        offset: float = 1.0
        fail_on_detector: int = -1
        sleep: float = 0.0
        log: str = ""
        gate: str = ""

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"))
    added = Output(dataset_type="added", dimensions=("instrument", "visit", "detector"))

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        if self.config.sleep:
            time.sleep(self.config.sleep)
        while self.config.gate and source.get("detector") != 0 and not os.path.exists(self.config.gate):
            time.sleep(0.01)
        if source.get("detector") == self.config.fail_on_detector:
            raise ValueError(f"detector {self.config.fail_on_detector} is configured to fail")
        if self.config.log:
            with open(self.config.log, "a") as f:  # one short O_APPEND write per line: atomic
                f.write(f"{source['value']} {os.getpid()}\n")
        return {"added": {**source, "value": source["value"] + self.config.offset, "pid": os.getpid()}}


class SumTask(Task):
    """added of all detectors of a visit -> visit_sum (visit)."""

    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    added = Input(dataset_type="added", dimensions=("instrument", "visit", "detector"), multiple=True)
    total = Output(dataset_type="visit_sum", dimensions=("instrument", "visit"))

    def run(self, added: Mapping[DataCoordinate, dict[str, Any]]) -> dict[str, Any]:
        return {"total": {"value": sum(v["value"] for v in added.values()), "n": len(added),
                          "detectors": sorted(d["detector"] for d in added)}}


class NoOpTask(Task):
    """For executor-overhead benchmarks: reads nothing, writes a tiny dict."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        pass

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"))
    out = Output(dataset_type="noop_out", dimensions=("instrument", "visit", "detector"))

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        return {"out": {}}


class CrashingTask(AddTask):
    """AddTask whose detector-2 quanta kill their worker process (``os._exit``): Dask gives up on
    them with ``KilledWorker``, which it hands to their dependents too."""

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        if source.get("detector") == 2:
            os._exit(13)
        return super().run(source)


class FailingTask(AddTask):
    """AddTask that always fails (for failure reports)."""

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("this task always fails")


class FlakyTask(Task):
    """Fails the first time it runs each quantum, succeeds after (a marker file per data ID)."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        marker_dir: str = ""

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"))
    out = Output(dataset_type="flaky_out", dimensions=("instrument", "visit", "detector"))

    def run(self, source: dict[str, Any], context: QuantumContext) -> dict[str, Any]:
        marker = os.path.join(self.config.marker_dir, f"v{context.data_id['visit']}-d{context.data_id['detector']}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return {"out": {"value": source["value"], "attempt": 2}}
        os.close(fd)
        raise RuntimeError(f"flaky failure (first attempt; marker {marker})")


class SplitTask(Task):
    """Two outputs per quantum (for partial-output restarts): metrics_in -> low, high."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        threshold: float = 20.0

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"))
    low = Output(dataset_type="split_low", dimensions=("instrument", "visit", "detector"))
    high = Output(dataset_type="split_high", dimensions=("instrument", "visit", "detector"))

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        v = source["value"]
        return {"low": {"value": min(v, self.config.threshold)}, "high": {"value": max(v, self.config.threshold)}}


class UnpicklableConfigTask(AddTask):
    """AddTask whose config holds a lock: it cannot be sent to workers."""

    @dataclass
    class Config:
        offset: float = 1.0
        fail_on_detector: int = -1
        sleep: float = 0.0
        log: str = ""
        lock: Any = field(default_factory=threading.Lock)


# -- the demo's connection shapes, doing nothing (planning benchmarks) ----------------------------
class CalibrateTask(Task):
    """raw (exposure, detector) -> calexp (visit, detector)."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        pass

    raw = Input(dataset_type="raw", dimensions=("instrument", "exposure", "detector"))
    calexp = Output(dataset_type="calexp", dimensions=("instrument", "visit", "detector"))

    def run(self, raw: Any) -> dict[str, Any]:
        return {"calexp": {"raw": raw}}


class WarpTask(Task):
    """calexps of the detectors of a visit that overlap a patch -> warp (visit, patch)."""

    dimensions = ("instrument", "visit", "skymap", "tract", "patch")

    @dataclass
    class Config:
        pass

    calexp = Input(dataset_type="calexp", dimensions=("instrument", "visit", "detector"), multiple=True)
    warp = Output(dataset_type="warp", dimensions=("instrument", "visit", "skymap", "tract", "patch"))

    def run(self, calexp: Mapping[DataCoordinate, Any]) -> dict[str, Any]:
        return {"warp": {"n": len(calexp)}}


class CoaddTask(Task):
    """warps of all visits of a band that overlap a patch -> coadd (patch, band)."""

    dimensions = ("skymap", "tract", "patch", "band")

    @dataclass
    class Config:
        pass

    warp = Input(dataset_type="warp", dimensions=("instrument", "visit", "skymap", "tract", "patch"), multiple=True)
    coadd = Output(dataset_type="coadd", dimensions=("skymap", "tract", "patch", "band"))

    def run(self, warp: Mapping[DataCoordinate, Any]) -> dict[str, Any]:
        return {"coadd": {"n": len(warp)}}


# -- repositories --------------------------------------------------------------------------------
def make_metrics_repo(butler: Butler, *, visits: int = 5, detectors: int = 9, run: str = "in") -> list[DatasetRef]:
    """Register SimCam, ``visits`` visit records and ``metrics_in`` datasets
    (``{"value": 10 * visit + detector, "detector": detector}``) in ``run``; return the refs."""
    from butler import DatasetType
    from butler.instrument import SimCam

    butler.register_instrument(SimCam())
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": v, "physical_filter": "SimCam-r", "day_obs": 20261124} for v in range(visits)
    ])
    butler.register_dataset_type(DatasetType("metrics_in", ("instrument", "visit", "detector"), "StructuredData"))
    return butler.put_many([({"value": v * 10 + d, "detector": d}, "metrics_in",
                             {"instrument": "SimCam", "visit": v, "detector": d})
                            for v in range(visits) for d in range(detectors)], run=run)


def add_sum(**add_config: Any) -> Pipeline:
    """The two-task pipeline of most executor tests: ``add`` (with ``add_config``) then ``sum``."""
    from ._pipeline import Pipeline

    return Pipeline().add_task("add", AddTask, **add_config).add_task("sum", SumTask)


def registered_files(butler: Butler, run: str) -> set[str]:
    """Paths (relative to the root) of the files the registry holds for ``run``."""
    registry = butler.registry
    with registry.transaction() as conn:
        return set(registry.datasets.paths_in_runs(conn, [registry.collections.get(run).id]))


def files_on_disk(root: str, run: str) -> set[str]:
    """Paths (relative to ``root``) of every file under the run's directory."""
    out: set[str] = set()
    for dirpath, _, names in os.walk(os.path.join(root, run)):
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in names)
    return out
