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


def test_smoke(sqlite_pair):
    src, dst, made = sqlite_pair
    report = dst.transfer_from(src, collections=COLLECTIONS)
    print(report)
    assert Butler.compare(src, dst).identical
    assert dst.verify() == []
