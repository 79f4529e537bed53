"""An import refused while placing files (a file the registry does not know is at a
destination path) leaves the destination as it was: no dataset types, no instrument attributes."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from test_transfer_export import travel_repo  # noqa: F401 - the fixture
from test_transfer_import import COLLECTIONS

from butler import Butler
from butler.errors import ConflictError
from butler.testing import snapshot_repo


def test_import_refused_at_placement_changes_nothing(travel_repo, repo_factory, tmp_path):  # noqa: F811
    bundle = tmp_path / "all"
    travel_repo.export(bundle, collections=COLLECTIONS)
    dest = Butler(repo_factory("dest").root, writeable=True)
    path = pq.read_table(bundle / "manifest" / "datasets" / "metrics.parquet").column("path").to_pylist()[-1]
    orphan = os.path.join(dest.root, path)
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "w") as f:
        f.write("left by an interrupted write")
    before = snapshot_repo(dest)
    with pytest.raises(ConflictError, match="already"):
        dest.import_(bundle)
    assert dest.query_dataset_types() == []
    assert snapshot_repo(dest) == before
