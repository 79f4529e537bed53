"""A repository served as static files opens read-only, its SQLite registry read over HTTP.

Servers are real and on 127.0.0.1: aiohttp's static route (Range, ETag, If-None-Match: what nginx
does) and ``python -m http.server`` (no Range: the full-download fallback, revalidated with
If-Modified-Since), plus a stdlib handler that cuts its body short. Answers are compared with the
same queries on the local file; bytes are counted by the server and by the client.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from butler import Butler, DatasetType
from butler.errors import (
    ReadOnlyError,
    RemoteTransferError,
    RemoteUnavailableError,
    RepositoryConfigError,
    RepositoryNotFoundError,
)
from butler.registry._registry import Registry
from butler.remote._http_range import HttpClient
from butler.remote._static import open_static_registry, prepare_static_hosting
from butler.testing import SIMCAM_VISITS
from butler.testing._static_http import StaticServer

RUN1, RUN2, CHAIN = "u/pub/run1", "u/pub/run2", "u/pub/chain"
DETECTORS = range(9)
EXTRA_VISITS = range(1000, 1040)


def _build(root: str, *, n_visit_records: int = 0) -> Butler:
    """SimCam, its 2 visits + 40 more (+ ``n_visit_records`` bare ones, to make the file big),
    two dataset types, two runs, a chain; datasets written with put_many."""
    from butler.instrument import SimCam

    Butler.create(root)
    butler = Butler(root, writeable=True)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    extra = [*EXTRA_VISITS, *range(100_000, 100_000 + n_visit_records)]
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": v, "physical_filter": "SimCam-z", "day_obs": 20261201, "exposure_time": 1.0}
        for v in extra])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.register_dataset_type(DatasetType("counts", ("instrument", "visit"), "StructuredData"))
    butler.put_many([({"v": v, "d": d}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d})
                     for v in (12, 14, *EXTRA_VISITS) for d in DETECTORS], run=RUN1)
    butler.put_many([({"n": 1}, "counts", {"instrument": "SimCam", "visit": 12})], run=RUN1)
    butler.put_many([({"run": 2}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": d})
                     for d in range(3)], run=RUN2)
    butler.set_chain(CHAIN, [RUN2, RUN1])
    prepare_static_hosting(root)
    return butler


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Butler:
    return _build(str(tmp_path_factory.mktemp("static") / "repo"))


@pytest.fixture(scope="module")
def served(repo: Butler) -> Iterator[StaticServer]:
    with StaticServer(repo.root) as server:
        yield server


def _coord(registry: Registry, name: str, **values: Any) -> Any:
    return registry.data_ids.standardize(registry.dataset_types.get(name).group, {"instrument": "SimCam", **values})


def _open(url: str, tmp_path: Any, **kw: Any) -> tuple[Registry, HttpClient]:
    client = HttpClient(retries=0)
    return open_static_registry(url, cache_dir=str(tmp_path / "cache"), client=client, **kw), client


def _answers(registry: Registry) -> dict[str, Any]:
    """What a user asks of a repository, in comparable form."""
    def find(name: str, collections: Any, **values: Any) -> Any:
        found = registry.find_dataset(name, _coord(registry, name, **values), collections)
        return None if found is None else (str(found.ref.id), found.ref.run, [f.path for f in found.files])

    return {
        "dataset_types": sorted(str(t) for t in registry.query_dataset_types()),
        "collections": sorted((c.name, c.type.name) for c in registry.query_collections()),
        "chain": registry.chain_children(CHAIN),
        "find_chain": [find("metrics", CHAIN, visit=12, detector=d) for d in (0, 2, 5)],
        "find_run": find("counts", RUN1, visit=12),
        "find_missing": find("metrics", RUN2, visit=14, detector=0),
        "refs": sorted((str(r.id), r.run, r.data_id["visit"], r.data_id["detector"])
                       for r in registry.query_datasets("metrics", collections=CHAIN, where="visit > 1010")),
        "refs_all_runs": len(registry.query_datasets("metrics", collections=[RUN1, RUN2], find_first=False)),
        "data_ids": sorted(d["visit"] for d in registry.query_data_ids("visit", where="visit.exposure_time > 4")),
        "records": [(r.id, r.physical_filter) for r in registry.query_dimension_records("visit", where="visit < 20")],
    }


# -- range reads ----------------------------------------------------------------------------------
def test_queries_over_http_ranges_answer_as_the_local_registry(repo: Butler, served: StaticServer,
                                                               tmp_path: Any) -> None:
    registry, client = _open(served.url, tmp_path)
    remote = _answers(registry)
    assert remote == _answers(repo.registry)
    assert remote["find_chain"][0][1] == RUN2 and remote["find_chain"][2][1] == RUN1  # the chain's order holds
    assert remote["find_missing"] is None and len(remote["refs"]) == 29 * 9
    ranges = [r for path, r, status in served.requests if path == "/butler.sqlite3"]
    assert ranges and all(r.startswith("bytes=") for r in ranges)  # read by ranges, never downloaded
    assert not os.path.exists(tmp_path / "cache" / "static-registries")
    assert client.stats.bytes_received <= served.bytes_sent


def test_a_find_on_a_bigger_registry_transfers_a_small_fraction(tmp_path: Any) -> None:
    root = str(tmp_path / "big")
    _build(root, n_visit_records=60_000)
    size = os.path.getsize(os.path.join(root, "butler.sqlite3"))
    assert size > 4_000_000, size
    with StaticServer(root) as server:
        # On a 4 MB file a find's few b-tree pages cost 3-4 blocks of 64 KiB (6 % of the file) or
        # ~17 pages of 4 KiB; the share shrinks with the file (the 1M benchmark: < 3 % for a whole query).
        for block_size, find_share, session_share in ((64 * 1024, 0.12, 0.25), (4096, 0.025, 0.05)):
            server.reset_counts()
            registry, client = _open(server.url, tmp_path, block_size=block_size)
            opened = server.bytes_sent
            found = registry.find_dataset("metrics", _coord(registry, "metrics", visit=1003, detector=7), [RUN1])
            assert found is not None and (found.ref.data_id["visit"], found.ref.data_id["detector"]) == (1003, 7)
            find_bytes = server.bytes_sent - opened
            records = registry.query_dimension_records("visit", instrument="SimCam", visit=100_500)
            assert [r.id for r in records] == [100_500]
            assert find_bytes <= find_share * size, (block_size, find_bytes, size)
            assert server.bytes_sent <= session_share * size, (block_size, server.bytes_sent, size)  # open + both
            assert client.stats.bytes_received == server.bytes_sent


def test_the_block_cache_stays_within_its_budget(repo: Butler, served: StaticServer, tmp_path: Any) -> None:
    from butler.remote._http_sqlite import RemoteSqlite, open_sqlite

    source = open_sqlite(HttpClient(), served.url + "butler.sqlite3", cache_dir=str(tmp_path), block_size=4096,
                         cache_bytes=32 * 1024)
    assert isinstance(source, RemoteSqlite) and source.file.block_size == 4096
    conn = source.connector()()
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    remote = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchall() for t in tables}
    with sqlite3.connect(os.path.join(repo.root, "butler.sqlite3")) as local:
        assert remote == {t: local.execute(f'SELECT count(*) FROM "{t}"').fetchall() for t in tables}
    assert len(tables) > 10 and source.file.cache.used <= 32 * 1024  # the whole file was read, 32 KiB kept
    assert os.path.getsize(os.path.join(repo.root, "butler.sqlite3")) > 10 * 32 * 1024


def test_writes_are_refused_and_change_nothing(repo: Butler, served: StaticServer, tmp_path: Any) -> None:
    from butler.registry._collections import CollectionType

    path = os.path.join(repo.root, "butler.sqlite3")
    before = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    registry, _ = _open(served.url, tmp_path)
    with pytest.raises(ReadOnlyError, match="read-only"):
        registry.set_attribute("note", "x")
    with pytest.raises(ReadOnlyError, match="read-only"):
        registry.collections.register("u/pub/new", CollectionType.RUN)
    with pytest.raises(ReadOnlyError, match="read-only"):
        registry.records.insert("visit", [{"instrument": "SimCam", "id": 7, "physical_filter": "SimCam-z",
                                          "day_obs": 20261201, "exposure_time": 1.0}])
    with registry.transaction() as conn, pytest.raises(sa.exc.OperationalError, match="readonly|read-only"):
        conn.exec_driver_sql("DELETE FROM butler_attributes")  # SQL that skips the check: SQLite refuses it
    assert registry.query_collections("u/pub/new") == []
    assert len(registry.query_dimension_records("visit")) == 2 + len(EXTRA_VISITS)
    assert (os.path.getsize(path), os.stat(path).st_mtime_ns) == before


def test_a_registry_replaced_on_the_server_mid_session_is_an_error_not_a_mix(tmp_path: Any) -> None:
    root = str(tmp_path / "repo")
    butler = _build(root)
    with StaticServer(root) as server:
        registry, _ = _open(server.url, tmp_path, block_size=4096)
        assert registry.query_dataset_types()
        butler.put({"late": 1}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": 8}, run=RUN2)
        butler.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 5000 + i, "physical_filter": "SimCam-z",
                                                   "day_obs": 20261202, "exposure_time": 2.0} for i in range(2000)])
        prepare_static_hosting(root)
        with pytest.raises(RemoteTransferError, match="changed on the server"):
            registry.query_dimension_records("visit")
        again, _ = _open(server.url, tmp_path)  # a new open reads the new version
        assert len(again.query_dimension_records("visit")) == len(butler.registry.query_dimension_records("visit"))


# -- the log of a WAL database --------------------------------------------------------------------
def test_a_registry_with_a_non_empty_wal_is_refused_until_checkpointed(tmp_path: Any) -> None:
    root = str(tmp_path / "repo")
    butler = _build(root)
    butler.put({"late": 1}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": 8}, run=RUN2)
    wal = os.path.join(root, "butler.sqlite3-wal")
    assert os.path.getsize(wal) > 0  # the commit is in the log only
    with StaticServer(root) as server:
        with pytest.raises(RepositoryConfigError, match=r"non-empty write-ahead log .*butler\.sqlite3-wal.*stale") as err:
            _open(server.url, tmp_path)
        assert "prepare_static_hosting" in str(err.value)
        report = prepare_static_hosting(root)
        assert report.log_bytes > 0 and os.path.getsize(wal) == 0
        registry, _ = _open(server.url, tmp_path)
        found = registry.find_dataset("metrics", _coord(registry, "metrics", visit=14, detector=8), [RUN2])
        assert found is not None  # the late commit is visible once it is in the main file


def test_prepare_refuses_while_a_reader_holds_the_log_and_compacts_once_it_is_gone(tmp_path: Any) -> None:
    from butler.errors import ConflictError

    root = str(tmp_path / "repo")
    butler = _build(root)
    reader = sqlite3.connect(os.path.join(root, "butler.sqlite3"), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM butler_attributes").fetchall()  # a snapshot that pins the log
        butler.put({"late": 1}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": 8}, run=RUN2)
        with pytest.raises(ConflictError, match="could not be emptied.*another process"):
            prepare_static_hosting(root, wait_ms=200)
    finally:
        reader.close()
    report = prepare_static_hosting(root, compact=True)
    assert os.path.getsize(os.path.join(root, "butler.sqlite3-wal")) == 0 and report.size > 0
    with StaticServer(root) as server:
        registry, _ = _open(server.url, tmp_path)
        assert _answers(registry) == _answers(butler.registry)
        assert registry.find_dataset("metrics", _coord(registry, "metrics", visit=14, detector=8), [RUN2])


# -- servers that ignore Range: one verified download, revalidated ------------------------------------
@pytest.fixture
def plain_server(repo: Butler) -> Iterator[tuple[str, str]]:
    """``python -m http.server`` (no Range support) over a copy of the repository."""
    root = repo.root + "-plain"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(repo.root, root, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", root],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)": the port is bound
        port = int(line.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}/", root
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_a_server_without_range_support_gives_one_verified_download_then_revalidates(
        repo: Butler, plain_server: tuple[str, str], tmp_path: Any) -> None:
    url, root = plain_server
    size = os.path.getsize(os.path.join(root, "butler.sqlite3"))
    registry, client = _open(url, tmp_path)
    assert client.stats.bytes_received >= size  # the whole file, once
    assert _answers(registry) == _answers(repo.registry)
    copies = list((tmp_path / "cache" / "static-registries").glob("*/registry-*.sqlite3"))
    assert len(copies) == 1 and copies[0].stat().st_size == size

    again, client2 = _open(url, tmp_path)  # If-Modified-Since -> 304: the copy is reused
    assert client2.stats.bytes_received < size / 10
    assert _answers(again) == _answers(repo.registry)

    # The publisher writes and republishes: the next open downloads the new version.
    local = Butler(root, writeable=True)
    local.put({"new": 1}, "metrics", {"instrument": "SimCam", "visit": 14, "detector": 8}, run=RUN2)
    prepare_static_hosting(root)
    st = os.stat(os.path.join(root, "butler.sqlite3"))
    os.utime(os.path.join(root, "butler.sqlite3"), ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third, client3 = _open(url, tmp_path)
    assert client3.stats.bytes_received >= os.path.getsize(os.path.join(root, "butler.sqlite3"))
    assert third.find_dataset("metrics", _coord(third, "metrics", visit=14, detector=8), [RUN2]) is not None
    assert len(list((tmp_path / "cache" / "static-registries").glob("*/registry-*.sqlite3"))) == 1


class _ShortBodyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, but sends only half of the registry after announcing its full length."""

    def do_GET(self) -> None:
        if not self.path.startswith("/butler.sqlite3"):
            return super().do_GET()
        path = os.path.join(self.directory, "butler.sqlite3")
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_truncated_download_is_refused_and_nothing_is_kept(repo: Butler, tmp_path: Any) -> None:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _ShortBodyHandler(*a, directory=repo.root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(RemoteTransferError, match=r"butler\.sqlite3.*(incomplete|broke off)"):
            _open(url, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    cache = tmp_path / "cache" / "static-registries"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no partial copy, no copy.json


# -- bad addresses ------------------------------------------------------------------------------------
def test_an_unreachable_host_is_a_remote_unavailable_error_naming_the_url(tmp_path: Any) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/repo"
    with pytest.raises(RemoteUnavailableError, match=rf"cannot reach http://127\.0\.0\.1:{port}/repo/butler\.yaml"):
        _open(url, tmp_path)


def test_a_url_that_is_not_a_repository_is_a_repository_not_found_error(served: StaticServer, tmp_path: Any) -> None:
    with pytest.raises(RepositoryNotFoundError, match=r"not a butler repository: .*/u/butler\.yaml .*HTTP 404"):
        _open(served.url + "u/", tmp_path)


def test_a_published_config_without_its_registry_is_refused(tmp_path: Any) -> None:
    root = tmp_path / "only-config"
    root.mkdir()
    (root / "butler.yaml").write_text(json.dumps({"registry": {"db": "sqlite:///butler.sqlite3"}}))
    with StaticServer(str(root)) as server:
        with pytest.raises(RepositoryConfigError, match=r"registry file .*butler\.sqlite3 is missing on the server"):
            _open(server.url, tmp_path)
        (root / "butler.yaml").write_text(json.dumps({"registry": {"db": "postgresql://db.example/butler"}}))
        with pytest.raises(RepositoryConfigError, match="static hosting serves only SQLite registries"):
            _open(server.url, tmp_path)
        (root / "butler.yaml").write_text(json.dumps({"registry": {"db": "sqlite:///../elsewhere.sqlite3"}}))
        with pytest.raises(RepositoryConfigError, match="not a plain relative path"):
            _open(server.url, tmp_path)
        (root / "butler.yaml").write_text(json.dumps({"registry": {"db": "sqlite:///butler.yaml"}}))
        with pytest.raises(RepositoryConfigError, match="is not a SQLite database"):
            _open(server.url, tmp_path)


def test_only_http_urls_are_static_repositories(tmp_path: Any) -> None:
    for url in ("ftp://host/repo", "/local/path", "http://host/repo?x=1"):
        with pytest.raises(ValueError, match="URL"):
            open_static_registry(url, cache_dir=str(tmp_path))
