"""An import writes into its runs like put and ingest do, so it holds their locks shared:
while an executor, remove_runs or cleanup holds a run exclusively (cleanup deletes the journaled,
unregistered files of writes it believes dead), an import into that run is refused."""

from __future__ import annotations

import threading

import pytest
from test_transfer_export import RUN1, travel_repo  # noqa: F401 - the fixture
from test_transfer_import import COLLECTIONS

from butler import Butler
from butler.errors import RunLockedError
from butler.testing import snapshot_repo


@pytest.fixture
def held(repo_factory):
    """A destination repository and a thread holding RUN1's lock exclusively (as cleanup does)."""
    dest = Butler(repo_factory("dest").root, writeable=True)
    acquired, release = threading.Event(), threading.Event()

    def hold():
        with dest.lock_run(RUN1, action="clean up"):
            acquired.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    assert acquired.wait(30)
    yield dest
    release.set()
    thread.join()


def test_put_into_a_locked_run_is_refused(travel_repo, held):  # noqa: F811 - the reference behaviour
    from butler import DatasetType

    held.register_dataset_type(DatasetType("blob", (), "StructuredData"))
    with pytest.raises(RunLockedError):
        held.put({"a": 1}, "blob", run=RUN1)


def test_import_into_a_locked_run_is_refused(travel_repo, held, tmp_path):  # noqa: F811
    travel_repo.export(tmp_path / "all", collections=COLLECTIONS)
    before = snapshot_repo(held)
    with pytest.raises(RunLockedError):
        held.import_(tmp_path / "all")
    assert snapshot_repo(held) == before
