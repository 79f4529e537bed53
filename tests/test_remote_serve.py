"""Remote repositories over HTTP (issue 13): a real `butler serve` child on 127.0.0.1 and
`Butler("http://...")` reading through it, compared with the same reads of the local repository;
read-only, tokens, paths that try to escape, bytes damaged in transit, servers that are gone."""

from __future__ import annotations

import http.client
import os
import pickle
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from test_exposure import CUT, make_exposure

from butler import Butler, DatasetType
from butler.errors import (
    ChecksumError,
    CollectionError,
    DataIdError,
    DatasetNotFoundError,
    DatasetTypeError,
    ReadOnlyError,
    RemoteAuthError,
    RemoteError,
    RemoteProtocolError,
    RemoteUnavailableError,
)
from butler.skymap import RingsSkyMap
from butler.testing import SIMCAM_VISITS, FlippingProxy, make_repo, served_repository

RUN = "u/tester/run1"
VISITS = [v["id"] for v in SIMCAM_VISITS]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Butler:
    """A SQLite repository with SimCam, 'metrics' for every visit x 3 detectors, a zarr 'calexp', a
    TAGGED and a CHAINED collection."""
    from butler.instrument import SimCam

    root = str(tmp_path_factory.mktemp("remote") / "repo")
    make_repo(root)
    butler = Butler(root, run=RUN)
    butler.register_instrument(SimCam())  # with its SimCam/calib chain and the camera certified there
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_skymap(RingsSkyMap("rings6", num_rings=6), tracts=[3])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    refs = butler.put_many([({"visit": v, "detector": d}, "metrics", {"instrument": "SimCam", "visit": v,
                                                                      "detector": d})
                            for v in VISITS for d in range(3)])
    butler.put(make_exposure(), "calexp", instrument="SimCam", visit=VISITS[0], detector=1)
    butler.register_collection("u/tester/tagged", "TAGGED")
    butler.associate("u/tester/tagged", refs[:2])
    butler.set_chain("u/tester/chain", ["u/tester/tagged", RUN])
    return butler


@pytest.fixture(scope="module")
def server(repo: Butler) -> Iterator[str]:
    with served_repository(repo.root) as served:
        yield served.url


@pytest.fixture
def remote(server: str, tmp_path) -> Butler:
    return Butler(server, collections=RUN, cache_dir=str(tmp_path / "cache"))


def _local(repo: Butler) -> Butler:
    return Butler(repo.root, collections=RUN)


def test_queries_answer_as_locally(repo, remote):
    local = _local(repo)
    assert remote.is_remote and not local.is_remote
    assert remote.root.startswith("http://127.0.0.1:")
    for kwargs in ({}, {"where": "visit = 12"}, {"instrument": "SimCam", "detector": 2},
                   {"collections": "u/tester/chain"}, {"collections": "u/tester/*"}):
        got = remote.query_datasets("metrics", **kwargs)
        want = local.query_datasets("metrics", **kwargs)
        assert sorted(got, key=str) == sorted(want, key=str) and got
        assert {r.run for r in got} == {r.run for r in want}
        assert sorted(str(r.data_id) for r in got) == sorted(str(r.data_id) for r in want)
    assert remote.query_data_ids(["visit"], instrument="SimCam") == local.query_data_ids(["visit"], instrument="SimCam")
    assert [c.to_dict(implied=True) for c in remote.query_data_ids("visit", where="visit > 12")] == \
        [c.to_dict(implied=True) for c in local.query_data_ids("visit", where="visit > 12")]
    assert remote.query_dimension_records("visit") == local.query_dimension_records("visit")
    assert remote.query_dimension_records("detector", instrument="SimCam")[:3] == \
        local.query_dimension_records("detector", instrument="SimCam")[:3]
    assert remote.query_collections() == local.query_collections()
    assert remote.query_collections("u/*", types=["CHAINED"]) == ["u/tester/chain"]
    assert remote.query_dataset_types() == local.query_dataset_types()
    assert remote.get_dataset_type("calexp") == local.get_dataset_type("calexp")
    assert remote.collection_info(RUN) == local.collection_info(RUN)
    assert remote.get_chain("u/tester/chain") == ["u/tester/tagged", RUN]
    assert remote.universe is local.universe


def test_reads_answer_as_locally(repo, remote):
    local = _local(repo)
    data_id = {"instrument": "SimCam", "visit": 14, "detector": 2}
    assert remote.get("metrics", data_id) == {"visit": 14, "detector": 2} == local.get("metrics", data_id)
    ref = remote.find_dataset("metrics", data_id)
    assert ref == local.find_dataset("metrics", data_id)
    assert remote.get(ref) == local.get(ref)
    assert remote.exists("metrics", data_id) and not remote.exists("metrics", data_id, visit=999)
    assert remote.get_deferred("metrics", data_id).get() == {"visit": 14, "detector": 2}
    coords = [r.data_id for r in local.query_datasets("metrics", detector=1)]
    assert remote.find_datasets("metrics", coords) == local.find_datasets("metrics", coords)
    # A zarr store (a directory dataset) with components and a cutout.
    exp_id = {"instrument": "SimCam", "visit": VISITS[0], "detector": 1}
    full = remote.get("calexp", exp_id)
    np.testing.assert_array_equal(full.image, local.get("calexp", exp_id).image)
    cut = remote.get("calexp", exp_id, component="image", parameters={"bbox": CUT})
    np.testing.assert_array_equal(cut, local.get("calexp", exp_id, component="image", parameters={"bbox": CUT}))
    assert remote.get("calexp.wcs", exp_id).wcs.to_header() == local.get("calexp.wcs", exp_id).wcs.to_header()
    assert remote.get_uri(ref).endswith(f"/api/v1/datasets/{ref.id.hex}/file")


def test_calibrations_skymaps_and_observations_read_as_locally(repo, remote):
    local = _local(repo)
    camera = remote.get("camera", instrument="SimCam", visit=VISITS[0])  # found by validity time
    assert camera == local.get("camera", instrument="SimCam", visit=VISITS[0])
    assert remote.find_dataset("camera", instrument="SimCam", visit=VISITS[0]) == \
        local.find_dataset("camera", instrument="SimCam", visit=VISITS[0])
    for butler in (local, remote):  # an observation that does not exist: the same error both ways
        with pytest.raises((DataIdError, DatasetNotFoundError), match="999"):
            butler.get("camera", instrument="SimCam", visit=999)
    sky = remote.get_skymap("rings6")
    assert sky.digest == local.get_skymap("rings6").digest
    keys = [("SimCam", v) for v in VISITS]
    assert remote.observation_times("visit", keys) == local.observation_times("visit", keys)


def test_errors_read_as_locally(repo, remote):
    local = _local(repo)
    for butler in (remote, local):
        with pytest.raises(DatasetNotFoundError, match="visit 999 does not exist"):
            butler.get("metrics", instrument="SimCam", visit=999, detector=1)
        with pytest.raises(DataIdError, match="unknown data ID key"):
            butler.get("metrics", instrument="SimCam", visit=12, detector=1, tract=3)
        with pytest.raises(DatasetTypeError):
            butler.get("nothing", instrument="SimCam", visit=12, detector=1)
        with pytest.raises(CollectionError):
            butler.query_datasets("metrics", collections="no/such/collection")
        with pytest.raises(DataIdError):
            butler.query_dimension_records("no_such_element")
    with pytest.raises(DatasetNotFoundError) as remote_err:
        remote.get("metrics", instrument="SimCam", visit=12, detector=7)
    with pytest.raises(DatasetNotFoundError) as local_err:
        local.get("metrics", instrument="SimCam", visit=12, detector=7)
    assert str(remote_err.value) == str(local_err.value)


def test_remote_is_read_only(repo, server, remote):
    before = _local(repo).query_datasets("metrics")
    with pytest.raises(ReadOnlyError, match="remote repository, which is read-only"):
        remote.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=5)
    with pytest.raises(ReadOnlyError):
        remote.register_dataset_type(DatasetType("other", ("instrument",), "StructuredData"))
    with pytest.raises(ReadOnlyError):
        remote.remove(before[:1])
    with pytest.raises(ReadOnlyError, match="read-only: drop run= and writeable="):
        Butler(server, run="u/tester/other")
    with pytest.raises(RemoteError, match="answers reads only"):
        remote.registry  # noqa: B018 - the SQL registry is not there
    with pytest.raises(RemoteError, match="run `butler verify` where the repository is"):
        remote.datastore_reader.verify([])
    assert _local(repo).query_datasets("metrics") == before


def test_pickled_remote_butler_reconnects(remote):
    copy = pickle.loads(pickle.dumps(remote))
    assert copy.is_remote and copy.root == remote.root and copy.collections == remote.collections
    assert copy.get("metrics", instrument="SimCam", visit=12, detector=0) == {"visit": 12, "detector": 0}


def test_files_are_cached_and_verified(repo, server, tmp_path):
    cache = tmp_path / "cache"
    ref = Butler(server, collections=RUN, cache_dir=str(tmp_path / "other")).find_dataset(
        "metrics", instrument="SimCam", visit=12, detector=0)
    assert ref is not None
    remote = Butler(server, collections=RUN, cache_dir=str(cache))
    assert remote.get(ref) == {"visit": 12, "detector": 0}  # by ref: the file is fetched (not inline) and cached
    cached = [os.path.join(d, f) for d, _, files in os.walk(cache) for f in files]
    assert len(cached) == 1 and ref.id.hex in cached[0]
    with open(cached[0], "r+b") as stream:  # the cached copy is damaged later: fetched again, verified
        stream.write(b"#")
    assert remote.get(ref) == {"visit": 12, "detector": 0}


# -- security --------------------------------------------------------------------------------
def _raw(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_urls_cannot_escape_the_repository(repo, server):
    with open(os.path.join(repo.root, "butler.sqlite3"), "rb") as stream:
        registry_bytes = stream.read(16)
    ref = _local(repo).query_datasets("metrics")[0]
    exp = _local(repo).find_dataset("calexp", instrument="SimCam", visit=VISITS[0], detector=1)
    base = f"/api/v1/datasets/{ref.id.hex}/file"
    store = f"/api/v1/datasets/{exp.id.hex}/file"
    for path in ("/butler.sqlite3", "/butler.yaml", "/api/v1/../butler.sqlite3", "/api/v1/%2e%2e/butler.sqlite3",
                 "/api/v1/datasets/..%2f..%2fbutler.sqlite3/file", "/api/v1/datasets/../../butler.sqlite3",
                 "//etc/passwd", "/api/v1/datasets/%2fetc%2fpasswd/file", f"{base}/../../../etc/passwd",
                 f"{store}?member=../../butler.sqlite3", f"{store}?member=%2e%2e/%2e%2e/butler.sqlite3",
                 f"{store}?member=/etc/passwd", f"{store}?member=image/../../../butler.sqlite3",
                 f"{store}?member=image%2f..%2f..%2f..%2fbutler.sqlite3", f"{base}?member=x",
                 f"{store}?member=", "/api/v1/datasets/00000000000000000000000000000000/file"):
        status, body = _raw(server, "GET", path)
        assert status in (400, 404), (path, status)
        assert registry_bytes not in body and b"root:" not in body, path
    status, _ = _raw(server, "GET", f"{store}?member=zarr.json")
    assert status == 200
    status, body = _raw(server, "POST", "/api/v1/put")  # no such call: nothing writes
    assert status == 404 and b"no call" in body


def test_bearer_token(repo, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with served_repository(repo.root, args=["--token-file", str(token_file)]) as served:
        monkeypatch.delenv("BUTLER_TOKEN", raising=False)
        with pytest.raises(RemoteAuthError, match="needs a bearer token"):
            Butler(served.url, collections=RUN)
        with pytest.raises(RemoteAuthError):
            Butler(served.url, collections=RUN, token="wrong")
        status, body = _raw(served.url, "GET", "/api/v1/info", {"Authorization": "Bearer wrong"})
        assert status == 401 and b"s3cret" not in body
        good = Butler(served.url, collections=RUN, token="s3cret-token", cache_dir=str(tmp_path / "c1"))
        assert good.get("metrics", instrument="SimCam", visit=12, detector=1) == {"visit": 12, "detector": 1}
        monkeypatch.setenv("BUTLER_TOKEN", "s3cret-token")
        env = Butler(served.url, collections=RUN, cache_dir=str(tmp_path / "c2"))
        assert len(env.query_datasets("metrics")) == 3 * len(VISITS)


# -- failures in transit ---------------------------------------------------------------------------
def test_a_byte_flipped_in_transit_is_fetched_again(server, tmp_path):
    with FlippingProxy(server, flips=1) as proxy:
        remote = Butler(proxy.url, collections=RUN, cache_dir=str(tmp_path / "cache"))
        assert remote.get("metrics", instrument="SimCam", visit=14, detector=1) == {"visit": 14, "detector": 1}
        assert proxy.flipped == 1


def test_a_transfer_damaged_every_time_is_refused_and_not_cached(server, tmp_path):
    cache = tmp_path / "cache"
    with FlippingProxy(server, flips=100) as proxy:
        remote = Butler(proxy.url, collections=RUN, cache_dir=str(cache))
        with pytest.raises(ChecksumError, match="checksum mismatch.*fetched 2 times"):
            remote.get("metrics", instrument="SimCam", visit=14, detector=2)
        with pytest.raises(ChecksumError):
            remote.get("calexp", instrument="SimCam", visit=VISITS[0], detector=1)
    assert not [f for _, _, files in os.walk(cache) for f in files]  # nothing half-cached


def test_unreachable_and_vanished_servers(repo, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteUnavailableError, match=f"cannot reach the butler server http://127.0.0.1:{port}/"):
        Butler(f"http://127.0.0.1:{port}/")
    with served_repository(repo.root) as served:
        remote = Butler(served.url, collections=RUN, cache_dir=str(tmp_path / "cache"))
        assert remote.get("metrics", instrument="SimCam", visit=12, detector=2) == {"visit": 12, "detector": 2}
    with pytest.raises(RemoteUnavailableError):
        remote.get("metrics", instrument="SimCam", visit=12, detector=1)


def test_not_a_butler_server(tmp_path):
    """An HTTP server that is not `butler serve` (nor a repository directory): a specific error."""
    import subprocess
    import sys

    (tmp_path / "index.html").write_text("hello")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        with pytest.raises(RemoteProtocolError, match="is it a butler server"):
            Butler(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


# -- a repository served as static files (any HTTP file server) ------------------------------------
def test_butler_reads_a_repository_served_as_static_files(repo, tmp_path):
    from butler.remote._static import prepare_static_hosting
    from butler.testing._static_http import StaticServer

    prepare_static_hosting(repo.root)  # the publisher empties the registry's log first
    local = _local(repo)
    with StaticServer(repo.root) as static:
        remote = Butler(static.url, collections=RUN, cache_dir=str(tmp_path / "cache"))
        assert remote.is_remote
        assert sorted(map(str, remote.query_datasets("metrics"))) == sorted(map(str, local.query_datasets("metrics")))
        data_id = {"instrument": "SimCam", "visit": 14, "detector": 2}
        assert remote.get("metrics", data_id) == {"visit": 14, "detector": 2}
        assert remote.exists("metrics", data_id)
        exp_id = {"instrument": "SimCam", "visit": VISITS[0], "detector": 1}
        cut = remote.get("calexp", exp_id, component="image", parameters={"bbox": CUT})
        np.testing.assert_array_equal(cut, local.get("calexp", exp_id, component="image", parameters={"bbox": CUT}))
        with pytest.raises(DatasetNotFoundError, match="visit 999 does not exist"):
            remote.get("metrics", data_id, visit=999)
        with pytest.raises(ReadOnlyError):
            remote.put({"a": 1}, "metrics", data_id, detector=5)
        # The whole registry file was not downloaded: only the blocks the queries needed.
        registry_size = os.path.getsize(os.path.join(repo.root, "butler.sqlite3"))
        registry_bytes = sum(1 for path, _, _ in static.requests if path.endswith("butler.sqlite3"))
        assert registry_bytes and static.bytes_sent < 20 * registry_size


def test_a_cutout_of_a_remote_store_moves_only_the_chunks_it_needs(repo, server, tmp_path):
    from butler.exposure import Box

    local = _local(repo)
    exp_id = {"instrument": "SimCam", "visit": VISITS[0], "detector": 1}
    ref = local.find_dataset("calexp", exp_id)
    (record,) = local.registry.files_of([ref.id])[ref.id]
    box = Box(x0=0, y0=0, width=16, height=16)
    with FlippingProxy(server, flips=0) as proxy:
        remote = Butler(proxy.url, collections=RUN, cache_dir=str(tmp_path / "cache"))
        found = remote.find_dataset("calexp", exp_id)
        proxy.bytes_forwarded = 0
        cut = remote.get(found, component="image", parameters={"bbox": box})
        moved = proxy.bytes_forwarded
    np.testing.assert_array_equal(cut, local.get("calexp", exp_id, component="image", parameters={"bbox": box}))
    assert 0 < moved < record.file_size / 4  # the store is not fetched whole
    assert not [f for _, _, files in os.walk(tmp_path / "cache") for f in files]  # nor cached


def test_a_server_that_dies_mid_transfer(server, tmp_path):
    """An answer cut off halfway is asked again on a new connection (reads are safe to repeat); one cut
    off every time is a RemoteUnavailableError, and nothing is cached."""
    with FlippingProxy(server, cuts=1) as proxy:
        remote = Butler(proxy.url, collections=RUN, cache_dir=str(tmp_path / "c1"))
        assert remote.get("metrics", instrument="SimCam", visit=12, detector=2) == {"visit": 12, "detector": 2}
        assert proxy.cut == 1
    cache = tmp_path / "c2"
    ref = Butler(server, collections=RUN, cache_dir=str(tmp_path / "c3")).find_dataset(
        "metrics", instrument="SimCam", visit=14, detector=0)
    with FlippingProxy(server, cuts=100) as proxy:
        remote = Butler(proxy.url, collections=RUN, cache_dir=str(cache))
        with pytest.raises(RemoteUnavailableError, match="IncompleteRead"):
            remote.get("metrics", instrument="SimCam", visit=14, detector=0)  # the lookup with its inline file
        with pytest.raises(RemoteUnavailableError, match="IncompleteRead"):
            remote.get(ref)  # the file alone
        assert proxy.cut == 6  # each request sent three times
    assert not [f for _, _, files in os.walk(cache) for f in files]


def test_a_remote_butler_closes_its_connections(server, tmp_path):
    with Butler(server, collections=RUN, cache_dir=str(tmp_path / "cache")) as remote:
        assert remote.get("metrics", instrument="SimCam", visit=12, detector=0) == {"visit": 12, "detector": 0}
        transport = remote.datastore_reader.transport  # type: ignore[attr-defined]
        assert transport._all  # a kept-alive connection of this thread
    assert not transport._all
