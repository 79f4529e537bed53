"""Relocation: a repository directory moved elsewhere (os.rename to another parent) keeps every
dataset readable and `verify` clean; a file ingested with transfer="direct" stays where it was and
is listed by `verify` when it goes missing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler, DatasetType
from butler.cli import cli
from butler.testing import SIMCAM_VISITS, release_repo

RUN = "u/tester/run1"


@pytest.fixture
def moved(repo_factory, tmp_path):
    """A repository with json, zarr and direct-ingested datasets, then moved to another parent."""
    from butler.exposure import Exposure
    from butler.instrument import SimCam

    created = repo_factory("site_a/repo")
    butler = Butler(created.root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type(DatasetType("metrics", dims, "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", dims, "Exposure"))
    butler.register_dataset_type(DatasetType("raw_bytes", dims, "Bytes"))
    expected = {}
    for v in (12, 14):
        for d in (0, 1):
            butler.put({"v": v, "d": d}, "metrics", instrument="SimCam", visit=v, detector=d)
            expected[("metrics", v, d)] = {"v": v, "d": d}
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    butler.put(Exposure(image), "calexp", instrument="SimCam", visit=12, detector=0)
    outside = tmp_path / "external" / "raw_12_3.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"direct bytes")
    butler.ingest("raw_bytes", [(str(outside), {"instrument": "SimCam", "visit": 12, "detector": 3})],
                  transfer="direct")
    old_root = butler.root
    release_repo(butler)  # the process forgets the repository (as a new process would not know it)
    new_parent = tmp_path / "site_b"
    new_parent.mkdir()
    new_root = str(new_parent / "repo")
    os.rename(old_root, new_root)
    return new_root, old_root, expected, image, outside


def test_moved_repository_reads_everything_and_verifies_clean(moved):
    new_root, old_root, expected, image, _ = moved
    assert not os.path.exists(old_root)
    butler = Butler(new_root, collections=RUN)
    for (name, v, d), value in expected.items():
        assert butler.get(name, instrument="SimCam", visit=v, detector=d) == value
        ref = butler.find_dataset(name, instrument="SimCam", visit=v, detector=d)
        assert butler.get_uri(ref).startswith(new_root + os.sep)
    exposure = butler.get("calexp", instrument="SimCam", visit=12, detector=0)
    assert np.array_equal(exposure.image, image)
    assert butler.get("raw_bytes", instrument="SimCam", visit=12, detector=3) == b"direct bytes"
    assert butler.verify() == []
    result = CliRunner().invoke(cli, ["verify", new_root])
    assert result.exit_code == 0 and "no problems" in result.output, result.output
    writer = Butler(new_root, run=RUN)  # and writes go to the new place
    ref = writer.put({"new": 1}, "metrics", instrument="SimCam", visit=14, detector=2)
    assert writer.get_uri(ref).startswith(new_root + os.sep) and os.path.isfile(writer.get_uri(ref))


def test_missing_direct_file_is_listed_by_verify(moved):
    new_root, _, _, _, outside = moved
    os.unlink(outside)
    butler = Butler(new_root, collections=RUN)
    problems = butler.verify()
    assert [(p.path, p.problem) for p in problems] == [(str(outside), "missing")]
    result = CliRunner().invoke(cli, ["verify", new_root])
    assert result.exit_code == 1 and str(outside) in result.output and "missing" in result.output
