"""Fixtures shared by the test suite: repositories on every configured registry backend."""

from __future__ import annotations

import os

import pytest

from butler.testing import BACKENDS, RepoFactory, backend_url

os.environ.setdefault("BUTLER_USER", "tester")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each registry backend; PostgreSQL/MySQL are skipped when their URL variable is unset."""
    name = request.param
    if name != "sqlite" and backend_url(name) is None:
        pytest.skip(f"{name} backend not configured (set BUTLER_TEST_{'POSTGRES' if name == 'postgresql' else 'MYSQL'}_URL)")
    return name


@pytest.fixture
def repo_factory(tmp_path, backend):
    factory = RepoFactory(str(tmp_path), backend)
    yield factory
    factory.cleanup()


@pytest.fixture
def simcam_repo(repo_factory):
    """A writeable Butler (run u/tester/run1) on a repo with SimCam, two visits and 'metrics'."""
    from butler import Butler, DatasetType
    from butler.instrument import SimCam

    repo = repo_factory()
    butler = Butler(repo.root, run="u/tester/run1")
    butler.register_instrument(SimCam(), calibs=False)  # no <instrument>/calib chain nor camera dataset
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
        {"instrument": "SimCam", "id": 14, "physical_filter": "SimCam-g", "day_obs": 20261124,
         "exposure_time": 5.0, "begin": "2026-11-24T04:00:00", "end": "2026-11-24T04:00:05"},
    ])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    return butler
