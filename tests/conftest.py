"""Fixtures shared by the test suite: repositories on every configured registry backend."""

from __future__ import annotations

import os
import tempfile

import pytest

from butler.testing import BACKENDS, SIMCAM_VISITS, RepoFactory, backend_url

os.environ.setdefault("BUTLER_USER", "tester")
os.environ.setdefault("BUTLER_CACHE_DIR", tempfile.mkdtemp(prefix="butler-test-cache-"))  # remote reads' cache


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
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    return butler
