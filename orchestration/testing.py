"""Small tasks for tests and benchmarks of the framework (importable by Dask workers)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ._connections import Input, Output
from ._task import Task

__all__ = ["AddTask", "SumTask", "NoOpTask", "FailingTask"]


class AddTask(Task):
    """metrics_in (visit, detector) -> added (visit, detector): value + offset."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        offset: float = 1.0
        fail_on_detector: int = -1
        sleep: float = 0.0

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"))
    added = Output(dataset_type="added", dimensions=("instrument", "visit", "detector"))

    def run(self, source):
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if source.get("detector") == self.config.fail_on_detector:
            raise ValueError(f"detector {self.config.fail_on_detector} is configured to fail")
        return {"added": {**source, "value": source["value"] + self.config.offset, "pid": os.getpid()}}


class SumTask(Task):
    """added of all detectors of a visit -> visit_sum (visit)."""

    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    added = Input(dataset_type="added", dimensions=("instrument", "visit", "detector"), multiple=True)
    total = Output(dataset_type="visit_sum", dimensions=("instrument", "visit"))

    def run(self, added):
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

    def run(self, source):
        return {"out": {}}


class FailingTask(AddTask):
    """AddTask that always fails (for failure reports)."""

    def run(self, source):
        raise RuntimeError("this task always fails")
