"""A local repository with an upstream (issue 13): inputs read from a remote repository (a real
`butler serve`) or another repository directory, cached verified as local datasets with their ids,
outputs written locally; queries of the upstream's collections answered by the upstream."""

from __future__ import annotations

import pickle

import pytest

from butler import Butler, DatasetType
from butler._upstream import UpstreamUnreachableWarning
from butler.errors import ChecksumError, DatasetNotFoundError, ReadOnlyError, RemoteUnavailableError
from butler.testing import SIMCAM_VISITS, FlippingProxy, make_repo, served_repository, snapshot_repo

RUN = "u/tester/run1"
VISITS = [v["id"] for v in SIMCAM_VISITS]


@pytest.fixture(scope="module")
def upstream_repo(tmp_path_factory: pytest.TempPathFactory) -> Butler:
    from butler.instrument import SimCam

    root = str(tmp_path_factory.mktemp("upstream") / "repo")
    make_repo(root)
    butler = Butler(root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.put_many([({"visit": v, "detector": d}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d})
                     for v in VISITS for d in range(3)])
    return butler


@pytest.fixture(scope="module")
def server(upstream_repo: Butler):
    with served_repository(upstream_repo.root) as served:
        yield served.url


@pytest.fixture
def local_root(tmp_path) -> str:
    root = str(tmp_path / "mine")
    make_repo(root)
    return root


@pytest.fixture(params=["http", "directory"])
def upstream(request, server, upstream_repo) -> str:
    """The upstream as a remote repository (served) and as a repository directory."""
    return server if request.param == "http" else upstream_repo.root


def test_inputs_are_cached_verified_and_outputs_stay_local(upstream, upstream_repo, local_root):
    before = snapshot_repo(upstream_repo)
    mine = Butler(local_root, upstream=upstream, run="u/tester/debug", collections=RUN)
    data_id = {"instrument": "SimCam", "visit": 12, "detector": 1}
    assert mine.exists("metrics", data_id)
    assert not Butler(local_root).query_collections()  # exists asks the upstream, caches nothing
    assert mine.get("metrics", data_id) == {"visit": 12, "detector": 1}
    here = Butler(local_root, collections=RUN)  # no upstream: what was cached is an ordinary local dataset
    cached = here.find_dataset("metrics", data_id)
    assert cached is not None and cached.id == upstream_repo.find_dataset("metrics", data_id, collections=RUN).id
    assert here.get("metrics", data_id) == {"visit": 12, "detector": 1}
    assert here.verify() == []
    assert len(here.query_datasets("metrics")) == 1
    # Queries of the upstream's collections are the upstream's (the cache holds one of 3 x N).
    assert len(mine.query_datasets("metrics")) == 3 * len(VISITS)
    assert len(mine.query_data_ids(["visit"], instrument="SimCam")) == len(VISITS)
    # Outputs are written locally; the upstream is unchanged.
    mine.register_dataset_type(DatasetType("measurement", ("instrument", "visit", "detector"), "StructuredData"))
    out = mine.put({"x": 1}, "measurement", data_id)
    assert mine.query_datasets("measurement", collections="u/tester/debug") == [out]
    assert mine.get(out) == {"x": 1}
    assert snapshot_repo(upstream_repo) == before
    # A second read is local, and fetching again is idempotent.
    assert mine.fetch_from_upstream([cached]).datasets == 0
    assert mine.get_deferred("metrics", data_id, visit=14).get() == {"visit": 14, "detector": 1}
    with pytest.raises(DatasetNotFoundError, match="visit 999 does not exist"):
        mine.get("metrics", data_id, visit=999)


def test_cached_inputs_are_readable_without_the_upstream(upstream_repo, local_root):
    with served_repository(upstream_repo.root) as served:
        mine = Butler(local_root, upstream=served.url, collections=RUN)
        assert mine.get("metrics", instrument="SimCam", visit=14, detector=0) == {"visit": 14, "detector": 0}
    gone = Butler(local_root, upstream=served.url, collections=RUN)  # the server has stopped
    assert gone.get("metrics", instrument="SimCam", visit=14, detector=0) == {"visit": 14, "detector": 0}
    # Found first in the cached run: the upstream is not asked. Behind a collection only the upstream
    # knows, the cached copy is read with a warning (the upstream might have had another there).
    behind = Butler(local_root, upstream=served.url, collections=["u/tester/upstream-only", RUN])
    with pytest.warns(UpstreamUnreachableWarning, match="read from this repository's cache"):
        assert behind.get("metrics", instrument="SimCam", visit=14, detector=0) == {"visit": 14, "detector": 0}
    with pytest.raises(RemoteUnavailableError):
        gone.get("metrics", instrument="SimCam", visit=14, detector=2)


def test_a_damaged_transfer_caches_nothing(server, local_root):
    before = snapshot_repo(Butler(local_root))
    with FlippingProxy(server, flips=100, calls=("/export",)) as proxy:
        mine = Butler(local_root, upstream=proxy.url, collections=RUN)
        with pytest.raises(ChecksumError, match="arrived damaged 2 times"):
            mine.get("metrics", instrument="SimCam", visit=12, detector=2)
    assert snapshot_repo(Butler(local_root)) == before


def test_remote_repositories_have_no_upstream_and_pickles_keep_it(server, local_root):
    with pytest.raises(ValueError, match="cannot have an upstream"):
        Butler(server, upstream=local_root)
    with pytest.raises(ReadOnlyError):
        Butler(server, writeable=True)
    mine = Butler(local_root, upstream=server, collections=RUN)
    copy = pickle.loads(pickle.dumps(mine))
    assert copy.upstream is not None and copy.upstream.root == server
    assert copy.get("metrics", instrument="SimCam", visit=12, detector=0) == {"visit": 12, "detector": 0}


def test_a_bundle_damaged_once_is_fetched_again(server, local_root):
    with FlippingProxy(server, flips=1, calls=("/export",)) as proxy:
        mine = Butler(local_root, upstream=proxy.url, collections=RUN)
        assert mine.get("metrics", instrument="SimCam", visit=14, detector=2) == {"visit": 14, "detector": 2}
        assert proxy.flipped == 1
    assert Butler(local_root, collections=RUN).verify() == []


def test_cache_list_and_prune(server, upstream_repo, local_root):
    from click.testing import CliRunner

    from butler.cli import cli

    mine = Butler(local_root, upstream=server, run="u/tester/debug", collections=RUN)
    refs = mine.query_datasets("metrics", where="visit = 12")
    mine.fetch_from_upstream(refs)
    mine.register_dataset_type(DatasetType("measurement", ("instrument", "visit", "detector"), "StructuredData"))
    out = mine.put({"x": 1}, "measurement", instrument="SimCam", visit=12, detector=0)
    listed = CliRunner().invoke(cli, ["cache", local_root, "list"])
    assert listed.exit_code == 0 and RUN in listed.output and " 3 " in listed.output, listed.output
    kept = CliRunner().invoke(cli, ["cache", local_root, "prune", "--older-than", "30d", "--yes"])
    assert kept.exit_code == 0 and "removed 0 cached dataset(s)" in kept.output, kept.output
    bad = CliRunner().invoke(cli, ["cache", local_root, "prune", "--older-than", "30 days", "--yes"])
    assert bad.exit_code == 2 and "not a duration" in bad.output
    pruned = CliRunner().invoke(cli, ["cache", local_root, "prune", "--yes"])
    assert pruned.exit_code == 0 and "removed 3 cached dataset(s) and 1 run(s)" in pruned.output, pruned.output
    here = Butler(local_root)
    assert here.query_collections() == ["u/tester/debug"]  # the output run stays
    assert here.get(out) == {"x": 1} and here.verify() == []
    assert "no cached datasets" in CliRunner().invoke(cli, ["cache", local_root, "list"]).output
    # Pruned copies are fetched again when read.
    again = Butler(local_root, upstream=server, collections=RUN)
    assert again.get("metrics", instrument="SimCam", visit=12, detector=1) == {"visit": 12, "detector": 1}


def test_an_upstream_that_dies_mid_transfer_caches_nothing(server, local_root):
    before = snapshot_repo(Butler(local_root))
    with FlippingProxy(server, cuts=100, calls=("/export",)) as proxy:
        mine = Butler(local_root, upstream=proxy.url, collections=RUN)
        with pytest.raises(RemoteUnavailableError, match="2 attempts.*nothing was cached"):
            mine.get("metrics", instrument="SimCam", visit=12, detector=0)
        assert proxy.cut == 2
    assert snapshot_repo(Butler(local_root)) == before
    with FlippingProxy(server, cuts=1, calls=("/export",)) as proxy:  # cut once: the retry brings it
        mine = Butler(local_root, upstream=proxy.url, collections=RUN)
        assert mine.get("metrics", instrument="SimCam", visit=12, detector=0) == {"visit": 12, "detector": 0}
        assert proxy.cut == 1
