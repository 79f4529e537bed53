"""A zip bundle of a dataset with a component written on its own imports both files intact."""

from __future__ import annotations

import pytest
from test_composites import DATA_ID, _make_repo
from test_exposure import make_exposure

from butler import Butler


@pytest.mark.parametrize("kind", ["b.zip", "b"])
def test_import_of_composite_with_standalone_component(repo_factory, tmp_path, kind):
    src = _make_repo(repo_factory, "exposure_fits")
    src.put(make_exposure(), "calexp", DATA_ID)
    src.put(2.5, "calexp.photo_calib", DATA_ID)
    src.export(tmp_path / kind, collections=["u/tester/run1"])
    dest = Butler(repo_factory("dest").root, writeable=True)
    dest.import_(tmp_path / kind)
    assert dest.verify() == []
    got = dest.get("calexp", DATA_ID, collections="u/tester/run1")
    assert got.photo_calib == 2.5
