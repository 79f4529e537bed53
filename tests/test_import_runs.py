"""A bundle whose dataset rows name a run the bundle does not list (or an unsafe one) is
refused before anything changes, with an error naming the run; nothing lands outside the repository."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_transfer_export import RUN1, travel_repo  # noqa: F401 - the fixture
from test_transfer_import import COLLECTIONS

from butler import Butler
from butler.testing import snapshot_repo
from butler.transfer import BundleManifestError


def _set_run(bundle, dataset_type, run, *, direct):
    table_path = bundle / "manifest" / "datasets" / f"{dataset_type}.parquet"
    table = pq.read_table(table_path)
    rows = table.to_pylist()
    row = next(r for r in rows if (r["direct_path"] is not None) == direct)
    row["run"] = run
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), table_path)


@pytest.mark.parametrize("run, direct", [("../escaped", True), ("u/tester/unlisted", False)])
def test_dataset_run_not_in_bundle_is_refused(travel_repo, repo_factory, tmp_path, run, direct):  # noqa: F811
    bundle = tmp_path / "all"
    travel_repo.export(bundle, collections=COLLECTIONS)
    _set_run(bundle, "raw_text" if direct else "metrics", run, direct=direct)
    dest = Butler(repo_factory("dest").root, writeable=True)
    assert os.path.dirname(dest.root) == str(tmp_path)
    before = snapshot_repo(dest)
    outside_before = sorted(os.listdir(tmp_path))
    with pytest.raises(BundleManifestError, match="does not list as RUN collections") as info:
        dest.import_(bundle)
    assert snapshot_repo(dest) == before
    assert dest.query_dataset_types() == []
    assert sorted(os.listdir(tmp_path)) == outside_before, "the import made directories outside the repository"
    assert run in str(info.value)
