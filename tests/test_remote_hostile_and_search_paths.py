"""Remote repositories (issue 13) against a hostile server (paths it sends must not escape the
client's cache), and search paths through an upstream (find-first with a partial cache, local
outputs before upstream inputs, calibrations), exists of a store, the server's slow calls.
Written by the session's independent review; each failed before its fix."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from test_exposure import make_exposure

from butler import Butler, DatasetType
from butler.errors import ButlerError
from butler.testing import SIMCAM_VISITS, Proxy, make_repo, served_repository

V0, V1 = SIMCAM_VISITS[0]["id"], SIMCAM_VISITS[1]["id"]
X = {"instrument": "SimCam", "visit": V0, "detector": 1}
Y = {"instrument": "SimCam", "visit": V1, "detector": 1}


@pytest.fixture(scope="module")
def upstream_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Runs A and B with 'metrics' of X and Y each, chain = [B, A], a zarr calexp, SimCam/calib."""
    from butler.instrument import SimCam

    root = str(tmp_path_factory.mktemp("review") / "up")
    make_repo(root)
    a = Butler(root, run="A")
    a.register_instrument(SimCam())
    a.insert_dimension_records("visit", SIMCAM_VISITS)
    a.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    a.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    a.put_many([({"run": "A"}, "metrics", X), ({"run": "A"}, "metrics", Y)])
    a.put(make_exposure(), "calexp", X)
    b = Butler(root, run="B")
    b.put_many([({"run": "B"}, "metrics", X), ({"run": "B"}, "metrics", Y)])
    b.set_chain("chain", ["B", "A"])
    return root


@pytest.fixture(scope="module")
def server(upstream_root: str) -> Iterator[str]:
    with served_repository(upstream_root) as served:
        yield served.url


# -- a hostile server writes outside the client's cache ---------------------------------------
class _RewritingProxy(Proxy):
    """A `Proxy` that changes the component of the file record in every `find_dataset` answer: what a
    hostile or compromised server (or a man in the middle of http://) sends."""

    def __init__(self, target: str, component: str) -> None:
        super().__init__(target)
        self.component = component

    async def answer(self, request, status, headers, body):
        if request.path.endswith("/find_dataset") and status == 200:
            n = int(headers.get("X-Butler-Json-Length", len(body)))
            data = json.loads(bytes(body[:n]))
            if data["result"]:
                data["result"]["files"][0][0] = self.component
            text = json.dumps(data).encode()
            headers["X-Butler-Json-Length"] = str(len(text))
            body = bytearray(text + bytes(body[n:]))
        return await super().answer(request, status, headers, body)


def test_a_hostile_server_cannot_write_outside_the_cache(server, tmp_path):
    cache = tmp_path / "a" / "b" / "cache"
    with _RewritingProxy(server, "x/../../../../ESCAPED") as proxy:
        remote = Butler(proxy.url, collections="A", cache_dir=str(cache), verify_reads=False)
        with pytest.raises(ButlerError):  # a component that is not a name is refused before any write
            remote.get("metrics", X)
    escaped = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if "ESCAPED" in f]
    assert escaped == []


def test_manifest_members_stay_inside_the_store(tmp_path):
    """A store's manifest (from the server, vouched for only by the server's own registry) names
    ``../../..`` members: the client must refuse them, not write them outside its cache."""
    from butler.datastore._directory_io import MANIFEST_NAME
    from butler.datastore._file_io import checksum_bytes
    from butler.registry._datasets import FileRecord
    from butler.remote._remote_datastore import StaticDatastore
    from butler.remote._transport import Reply

    payload = b"owned\n"
    manifest = (b"butler manifest 1: path, size, checksum of every other file\n"
                + f"../../../ESCAPED\t{len(payload)}\t{checksum_bytes(payload)}\n".encode())

    class HostileHost:  # answers like a static web server whose files were replaced
        where = "https://hostile.example/repo"

        def request(self, method, path, *, body=b"", query=None, headers=None):
            return Reply(200, {}, manifest if path.endswith(MANIFEST_NAME) else payload)

        def close(self) -> None:
            pass

    store = StaticDatastore(HostileHost(), str(tmp_path / "c" / "files"))
    record = FileRecord("", "A/calexp/x.zarr", "", "Exposure", "manifest:" + checksum_bytes(manifest), None)
    with pytest.raises(ButlerError):
        store.fetch(record)
    assert [f for _, _, files in os.walk(tmp_path) for f in files if "ESCAPED" in f] == []


# -- find-first through an upstream with a partial cache ----------------------------------------
def test_find_first_through_an_upstream_is_the_upstreams(upstream_root, tmp_path):
    root = str(tmp_path / "mine")
    make_repo(root)
    mine = Butler(root, upstream=upstream_root)
    up = Butler(upstream_root)
    # Earlier work cached A's X and B's Y: both runs exist here, each partly.
    mine.fetch_from_upstream([up.find_dataset("metrics", X, collections="A"),
                              up.find_dataset("metrics", Y, collections="B")])
    want = up.find_dataset("metrics", X, collections=["B", "A"])
    assert want.run == "B"
    assert mine.find_dataset("metrics", X, collections=["B", "A"]) == want
    assert mine.get("metrics", X, collections=["B", "A"]) == {"run": "B"}


# -- a search path mixing a local output run and an upstream input collection -------------------
def test_a_search_path_of_local_outputs_and_upstream_inputs(upstream_root, tmp_path):
    root = str(tmp_path / "mine")
    make_repo(root)
    mine = Butler(root, upstream=upstream_root, run="u/me/out", collections=["u/me/out", "chain"])
    assert mine.get("metrics", X, collections="A") == {"run": "A"}  # brings SimCam's records here too
    mine.register_dataset_type(DatasetType("measurement", ("instrument", "visit", "detector"), "StructuredData"))
    out = mine.put({"x": 1}, "measurement", X)
    assert mine.find_dataset("measurement", X) == out  # local output, found along the mixed path
    assert mine.get("metrics", X) == {"run": "B"}  # upstream input, found along the same path
    assert mine.query_datasets("measurement") == [out]


# -- calibrations through an upstream --------------------------------------------------------------
def test_calibrations_through_an_upstream_use_the_calibration_search_path(upstream_root, tmp_path):
    root = str(tmp_path / "mine")
    make_repo(root)
    want = Butler(upstream_root).find_dataset("camera", instrument="SimCam", visit=V0)
    assert want is not None
    for collections in (None, "A"):  # <instrument>/calib either way, as for a local repository
        mine = Butler(root, upstream=upstream_root, collections=collections)
        assert mine.find_dataset("camera", instrument="SimCam", visit=V0) == want


# -- exists of a store (a zarr dataset) through butler serve ---------------------------------------
def test_exists_of_a_store_through_serve(server, tmp_path):
    remote = Butler(server, collections="A", cache_dir=str(tmp_path / "cache"))
    assert remote.get("calexp", X).image.shape  # it is there and readable...
    assert remote.exists("calexp", X)  # ...so it exists (the HEAD of a directory dataset is a 400)


# -- a whole-bundle export is answered on the server's event loop ----------------------------------
def test_export_and_unbounded_calls_go_to_the_server_threads():
    from butler.remote._server import _is_quick

    for call in ("export", "recorded_inputs", "observation_times", "explain_not_found"):
        assert not _is_quick(f"/api/v1/{call}"), call
