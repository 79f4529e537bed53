"""Remote repositories over ssh stdio (issue 13): ``butler serve --stdio`` and ``ssh://`` URLs.

Part one talks to a local ``python -m butler.cli serve --stdio REPO`` child (no ssh): the framing,
reads, error mapping, byte ranges, what a banner or a stranger on the stream gives, children that
die. Part two runs a real OpenSSH server on 127.0.0.1 (temporary host and client keys) and opens
``Butler("ssh://root@127.0.0.1:PORT/repo")`` through the system ssh client.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from test_exposure import CUT, make_exposure

from butler import Butler, DatasetType
from butler.errors import (
    DatasetNotFoundError,
    DatasetTypeError,
    RemoteAuthError,
    RemoteError,
    RemoteProtocolError,
    RemoteUnavailableError,
    RepositoryNotFoundError,
)
from butler.instrument import SimCam
from butler.remote._client import connect
from butler.remote._protocol import API_PREFIX
from butler.remote._ssh import SshTarget, parse_ssh_url, ssh_command
from butler.remote._stdio import GREETING, StdioTransport, encode_frame
from butler.remote._transport import call, decode_reply
from butler.testing import SIMCAM_VISITS, remote_butler, ssh_server

RUN = "u/tester/run1"
DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 1}


def _make_repo(root: str) -> Butler:
    Butler.create(root)
    butler = Butler(root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type(DatasetType("metrics", dims, "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", dims, "Exposure"))
    for visit in (12, 14):
        for detector in range(3):
            butler.put({"visit": visit, "detector": detector, "payload": list(range(50))}, "metrics",
                       instrument="SimCam", visit=visit, detector=detector)
    butler.put(make_exposure(), "calexp", DATA_ID)
    return butler


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Butler:
    """A SQLite repository with 6 'metrics' dicts and one zarr 'calexp' (visit 12, detector 1)."""
    return _make_repo(str(tmp_path_factory.mktemp("stdio") / "repo"))


def _serve_cmd(root: str) -> list[str]:
    return [sys.executable, "-m", "butler.cli", "serve", "--stdio", root]


@pytest.fixture
def transport(repo):
    t = StdioTransport(_serve_cmd(repo.root), "stdio:test")
    yield t
    t.close()


def _metrics_file(transport, repo) -> tuple[str, bytes]:
    """The server path of a metrics dataset's file, and its bytes as stored."""
    ref = repo.find_dataset("metrics", DATA_ID, collections=RUN)
    (record,) = repo.reader.files_of([ref.id])[ref.id]
    with open(repo.datastore_reader.abspath(record.path), "rb") as stream:
        return f"{API_PREFIX}/datasets/{ref.id.hex}/file", stream.read()


def _coord(remote, dataset_type: str):
    registry = remote.registry
    return registry.data_ids.standardize(registry.dataset_type(dataset_type).group(registry.universe), DATA_ID)


# -- part one: a local stdio child -------------------------------------------------------------------
def test_reads_through_a_stdio_child(repo, transport, tmp_path):
    remote = connect("stdio:test", transport, cache_dir=tmp_path / "cache")
    refs = remote.registry.query_datasets("metrics", collections=RUN, where="visit = 12")
    assert sorted(r.data_id["detector"] for r in refs) == [0, 1, 2]
    assert {r.id for r in refs} == {r.id for r in repo.query_datasets("metrics", collections=RUN, where="visit = 12")}
    coord = _coord(remote, "metrics")
    found = remote.registry.find_dataset("metrics", coord, RUN)
    assert found is not None
    got = remote.datastore.read(found.ref, found.files)
    assert got == repo.get("metrics", DATA_ID, collections=RUN)
    records = remote.registry.query_dimension_records("visit", where="visit = 14")
    assert [r.to_dict()["physical_filter"] for r in records] == ["SimCam-g"]
    assert [c.name for c in remote.registry.query_collections("u/*")] == [RUN]
    # A zarr store travels member by member over the same child.
    coord = _coord(remote, "calexp")
    found = remote.registry.find_dataset("calexp", coord, RUN)
    cut = remote.datastore.read(found.ref, found.files, component="image", parameters={"bbox": CUT})
    np.testing.assert_array_equal(cut, make_exposure().image[200:456, 100:356])
    assert len(transport.pids) == 1  # one request at a time: one child served them all


def test_server_errors_arrive_as_their_class(repo, transport):
    with pytest.raises(DatasetTypeError, match="nope"):
        call(transport, "dataset_type", {"name": "nope"})
    missing = uuid.uuid4().hex
    reply = transport.request("GET", f"{API_PREFIX}/datasets/{missing}/file")
    assert reply.status == 404
    with pytest.raises(DatasetNotFoundError, match=missing[:8]):
        decode_reply(transport, reply, "file")
    with pytest.raises(RemoteProtocolError, match="no call"):
        call(transport, "drop_everything")
    assert call(transport, "dataset_type", {"name": "metrics"})[0] == "metrics"  # still in step after errors


def test_range_reads(repo, transport):
    path, data = _metrics_file(transport, repo)
    whole = transport.request("GET", path)
    assert whole.status == 200 and whole.body == data and whole.headers["Content-Length"] == str(len(data))
    part = transport.request("GET", path, headers={"Range": "bytes=2-9"})
    assert part.status == 206 and part.body == data[2:10]
    assert part.headers["Content-Range"] == f"bytes 2-9/{len(data)}"
    tail = transport.request("GET", path, headers={"Range": "bytes=-5"})
    assert tail.status == 206 and tail.body == data[-5:]
    rest = transport.request("GET", path, headers={"Range": f"bytes={len(data) - 3}-"})
    assert rest.body == data[-3:]
    clipped = transport.request("GET", path, headers={"Range": f"bytes=0-{len(data) + 100}"})
    assert clipped.status == 206 and clipped.body == data
    head = transport.request("HEAD", path)
    assert head.status == 200 and head.body == b"" and head.headers["Content-Length"] == str(len(data))
    for bad, why in [(f"bytes={len(data)}-", "outside the file"), ("bytes=1-2,5-6", "not one byte range"),
                     ("lines=1-2", "not one byte range"), ("bytes=9-2", "outside the file")]:
        reply = transport.request("GET", path, headers={"Range": bad})
        assert reply.status == 416, bad
        assert reply.headers["Content-Range"] == f"bytes */{len(data)}"
        assert why in json.loads(reply.body)["message"]
    assert transport.request("GET", path).body == data  # the stream is still in step


def test_concurrent_requests_use_a_bounded_pool_of_children(repo):
    t = StdioTransport(_serve_cmd(repo.root), "stdio:test", max_children=3)
    try:
        results: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)

        def work() -> None:
            try:
                barrier.wait()
                for _ in range(5):
                    results.append(len(call(t, "query_datasets", {"dataset_type": "metrics", "collections": RUN})["refs"]))
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and results == [6] * 30
        assert 1 <= len(t.pids) <= 3
    finally:
        t.close()
    assert t.pids == []


def _fork_child_call(t: StdioTransport, out) -> None:
    out.put((call(t, "dataset_type", {"name": "metrics"})[0], t.pids))


def test_a_forked_process_starts_its_own_children(repo, transport):
    """A fork shares the parent's pipes: the copy must not talk through them."""
    import multiprocessing

    assert call(transport, "dataset_type", {"name": "metrics"})[0] == "metrics"
    (pid,) = transport.pids
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_fork_child_call, args=(transport, out))
    proc.start()
    name, pids = out.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and name == "metrics" and len(pids) == 1 and pids[0] != pid
    assert call(transport, "dataset_type", {"name": "metrics"})[0] == "metrics"
    assert transport.pids == [pid]  # the parent's child was neither used nor stopped by the copy


def test_a_banner_before_the_greeting_is_named(repo):
    cmd = ["sh", "-c", f"echo 'Welcome to the cluster!'; exec {shlex.join(_serve_cmd(repo.root))}"]
    t = StdioTransport(cmd, "stdio:banner")
    with pytest.raises(RemoteProtocolError, match=r"Welcome to the cluster!.*login script"):
        t.request("GET", f"{API_PREFIX}/info")


def test_a_program_that_is_not_a_butler(repo):
    t = StdioTransport([sys.executable, "-c", "import sys; sys.stdout.write('SSH-2.0-OpenSSH_9.2'); input()"],
                       "stdio:stranger")
    with pytest.raises(RemoteProtocolError, match="SSH-2.0-OpenSSH_9.2.*not `butler serve --stdio`"):
        t.request("GET", f"{API_PREFIX}/info")
    other = StdioTransport(["sh", "-c", "echo butler-stdio/99; cat"], "stdio:future")
    with pytest.raises(RemoteProtocolError, match="version 99.*upgrade"):
        other.request("GET", f"{API_PREFIX}/info")
    silent = StdioTransport(["cat"], "stdio:silent", timeout=1.0)
    with pytest.raises(RemoteUnavailableError, match="no greeting within 1 s"):
        silent.request("GET", f"{API_PREFIX}/info")
    failing = StdioTransport(["sh", "-c", "echo 'no such repository here' >&2; exit 3"], "stdio:failing")
    with pytest.raises(RemoteUnavailableError, match=r"exit status 3.*ended before its greeting.*no such repository"):
        failing.request("GET", f"{API_PREFIX}/info")
    with pytest.raises(RemoteUnavailableError, match="cannot be started"):
        StdioTransport(["/nonexistent/butler"], "stdio:absent").request("GET", f"{API_PREFIX}/info")


def test_the_server_refuses_a_stream_that_is_not_the_protocol(repo):
    proc = subprocess.run(_serve_cmd(repo.root), check=False, input=b"GET /api/v1/info HTTP/1.1\r\n\r\n", capture_output=True,
                          timeout=120)
    assert proc.returncode != 0
    assert proc.stdout.startswith(GREETING)
    assert b"not a frame of the butler stdio protocol" in proc.stdout  # the error frame, then it stops
    assert b"not a frame of the butler stdio protocol" in proc.stderr
    # A well-formed request after the greeting is answered; end of input ends the server cleanly.
    frame = encode_frame({"method": "GET", "path": f"{API_PREFIX}/info", "query": {}, "headers": {}})
    proc = subprocess.run(_serve_cmd(repo.root), check=False, input=frame, capture_output=True, timeout=120)
    assert proc.returncode == 0 and b'"protocol":1' in proc.stdout


def test_stray_prints_on_the_server_go_to_stderr(repo):
    """A library printing on stdout inside the server would corrupt the stream: it goes to stderr."""
    script = ("import butler.remote._stdio as s\n"
              "loop = s.serve_stdio\n"
              "def chatty(root, stdin, stdout):\n"
              "    print('a chatty library', flush=True)\n"
              "    loop(root, stdin, stdout)\n"
              "s.serve_stdio = chatty\n"
              f"s.serve_stdio_process({repo.root!r})\n")
    t = StdioTransport([sys.executable, "-c", script], "stdio:chatty")
    try:
        assert call(t, "dataset_type", {"name": "metrics"})[0] == "metrics"
    finally:
        t.close()


def test_a_child_that_died_between_requests_is_replaced_once(repo, transport):
    assert call(transport, "dataset_type", {"name": "metrics"})[0] == "metrics"
    (pid,) = transport.pids
    os.kill(pid, signal.SIGKILL)
    assert call(transport, "dataset_type", {"name": "metrics"})[0] == "metrics"  # the documented retry
    (new,) = transport.pids
    assert new != pid


_DYING_SERVER = """
import os, sys
import butler.remote._stdio as s

class Dying:  # the server's stdout: the process dies halfway through its {die_at}th write
    def __init__(self, out):
        self.out, self.writes = out, 0
    def write(self, data):
        self.writes += 1
        if self.writes == {die_at}:
            self.out.write(data[:len(data) // 2])
            self.out.flush()
            sys.stderr.write("server gone\\n")
            sys.stderr.flush()
            os._exit(1)
        return self.out.write(data)
    def flush(self):
        self.out.flush()

s.serve_stdio({root!r}, os.fdopen(0, "rb"), Dying(os.fdopen(1, "wb")))
"""


@pytest.mark.parametrize("die_at", [3, 5], ids=["first-answer", "file-of-second-answer"])
def test_a_child_that_dies_mid_answer_is_reported(repo, die_at):
    """Writes: 1 the greeting, 2-3 the head and body of a JSON answer, 4-5 the head and first block of a file."""
    t = StdioTransport([sys.executable, "-c", _DYING_SERVER.format(root=repo.root, die_at=die_at)], "stdio:cut")
    path, _ = _metrics_file(t, repo)
    if die_at == 5:
        assert call(t, "dataset_type", {"name": "metrics"})[0] == "metrics"
        what = f"GET {path}"
        with pytest.raises(RemoteUnavailableError, match=rf"(?s)lost stdio:cut: `.*` \(exit status 1\): the answer was "
                                                         rf"cut during {what}; it said: server gone") as info:
            t.request("GET", path)
    else:
        with pytest.raises(RemoteUnavailableError, match=r"the answer was cut during POST .*server gone") as info:
            call(t, "dataset_type", {"name": "metrics"})
    assert isinstance(info.value, ConnectionError)
    assert t.pids == []  # nothing half-read is kept: the next request starts a new child
    t.close()


def test_a_missing_repository_is_named(tmp_path):
    t = StdioTransport(_serve_cmd(str(tmp_path / "nowhere")), "stdio:nowhere")
    with pytest.raises(RepositoryNotFoundError, match="nowhere"):
        connect("stdio:nowhere", t, cache_dir=tmp_path / "cache")


def test_serve_stdio_takes_no_port_or_token(repo):
    from click.testing import CliRunner

    from butler.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--stdio", "--port", "9000", repo.root])
    assert result.exit_code == 2 and "--port do not apply" in result.output


# -- ssh URLs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "why"), [
    ("ssh://host", "must be absolute"),
    ("ssh://host/", "must be absolute"),
    ("ssh:///data/repo", "names no host"),
    ("ssh://alice:secret@host/data/repo", "holds a password"),
    ("ssh://-oProxyCommand=touch%20x/data/repo", "not a host name"),
    ("ssh://-oProxyCommand=x@host/data/repo", "not a user name"),
    ("ssh://host:0/data/repo", "not a number from 1 to 65535"),
    ("ssh://host:22x/data/repo", "not a number"),
    ("ssh://host:/data/repo", "not a number"),
    ("ssh://host/data/repo?x=1", "query or fragment"),
    ("ssh://host/data/%0Arepo", "newline"),
])
def test_bad_ssh_urls_are_refused_with_an_example(url, why):
    with pytest.raises(RemoteError, match=f"{why}.*write it as ssh://alice@login.example.org/data/repo"):
        parse_ssh_url(url)


def test_ssh_url_and_command():
    assert parse_ssh_url("ssh://alice@login.example.org:2222/data/my%20repo/") == SshTarget(
        user="alice", host="login.example.org", port=2222, path="/data/my repo")
    assert parse_ssh_url("ssh://[::1]/r") == SshTarget(user=None, host="::1", port=None, path="/r")
    target = parse_ssh_url("ssh://alice@host:2222/data/it's; rm -rf x")
    env = {"BUTLER_SSH_OPTIONS": "-i '/keys/my key' -o BatchMode=no",
           "BUTLER_SSH_REMOTE_BUTLER": "/opt/venv/bin/python -m butler.cli"}
    cmd = ssh_command(target, env)
    assert cmd[:5] == ["ssh", "-i", "/keys/my key", "-o", "BatchMode=no"]  # the user's options first: they win
    assert cmd[cmd.index("-p") + 1] == "2222" and cmd[cmd.index("-l") + 1] == "alice"
    assert cmd[-3:-1] == ["--", "host"]
    assert shlex.split(cmd[-1]) == ["/opt/venv/bin/python", "-m", "butler.cli", "serve", "--stdio",
                                    "/data/it's; rm -rf x"]
    assert ssh_command(parse_ssh_url("ssh://h/r"), {})[-1] == "butler serve --stdio /r"


# -- part two: a real OpenSSH server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with ssh_server(str(tmp_path_factory.mktemp("sshd"))) as server:
        yield server


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    monkeypatch.setenv("BUTLER_SSH_OPTIONS", sshd.options())
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", remote_butler())
    return sshd


def test_butler_over_ssh_reads_a_real_repository(repo, ssh_env, tmp_path):
    remote = Butler(ssh_env.url(repo.root), collections=RUN, cache_dir=tmp_path / "cache")
    assert remote.is_remote
    refs = remote.query_datasets("metrics", where="visit = 14")
    assert sorted(r.data_id["detector"] for r in refs) == [0, 1, 2]
    assert remote.get("metrics", DATA_ID) == repo.get("metrics", DATA_ID, collections=RUN)
    assert remote.exists("metrics", DATA_ID)
    assert not remote.exists("metrics", instrument="SimCam", visit=14, detector=7)
    np.testing.assert_array_equal(remote.get("calexp", DATA_ID, component="image", parameters={"bbox": CUT}),
                                  make_exposure().image[200:456, 100:356])
    assert remote.get("calexp", DATA_ID, component="psf").shape == make_exposure().psf.shape
    with pytest.raises(DatasetNotFoundError, match="metrics"):
        remote.get("metrics", instrument="SimCam", visit=14, detector=7)
    with pytest.raises(DatasetTypeError):
        remote.query_datasets("nope")


def test_a_path_needing_quotes_reaches_the_remote_shell_intact(ssh_env, tmp_path):
    root = str(tmp_path / "my repo; touch pwned")
    _make_repo(root)
    remote = Butler(ssh_env.url(root), collections=RUN, cache_dir=tmp_path / "cache")
    assert len(remote.query_datasets("metrics")) == 6
    assert not os.path.exists(os.path.expanduser("~/pwned")) and not os.path.exists(tmp_path / "pwned")


def test_a_missing_repository_over_ssh(ssh_env, tmp_path):
    with pytest.raises(RepositoryNotFoundError, match="does-not-exist"):
        Butler(ssh_env.url(str(tmp_path / "does-not-exist")), cache_dir=tmp_path / "cache")


def test_a_key_the_server_does_not_accept(repo, sshd, monkeypatch, tmp_path):
    monkeypatch.setenv("BUTLER_SSH_OPTIONS", sshd.options(key=sshd.make_key(f"stranger-{uuid.uuid4().hex[:6]}")))
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", remote_butler())
    with pytest.raises(RemoteAuthError, match=r"refused the ssh login \(.*Permission denied.*ssh-add"):
        Butler(sshd.url(repo.root), cache_dir=tmp_path / "cache")


def test_a_host_key_ssh_does_not_trust(repo, sshd, monkeypatch, tmp_path):
    other = sshd.make_key(f"other-host-{uuid.uuid4().hex[:6]}")
    known = tmp_path / "known_hosts"
    with open(other + ".pub") as stream:
        known.write_text(f"[127.0.0.1]:{sshd.port} {stream.read()}")
    monkeypatch.setenv("BUTLER_SSH_OPTIONS", sshd.options(known_hosts=str(known)))
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", remote_butler())
    with pytest.raises(RemoteAuthError, match="does not trust the host key"):
        Butler(sshd.url(repo.root), cache_dir=tmp_path / "cache")


def test_an_unreachable_port(repo, sshd, monkeypatch, tmp_path):
    import socket

    with socket.socket() as sock:  # a port bound but never listened on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        monkeypatch.setenv("BUTLER_SSH_OPTIONS", sshd.options())
        with pytest.raises(RemoteUnavailableError, match="cannot reach .*Connection refused"):
            Butler(f"ssh://{sshd.user}@127.0.0.1:{port}{repo.root}", cache_dir=tmp_path / "cache")


def test_no_butler_on_the_host(repo, ssh_env, monkeypatch, tmp_path):
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", "/nonexistent/venv/bin/butler")
    with pytest.raises(RemoteUnavailableError, match="BUTLER_SSH_REMOTE_BUTLER"):
        Butler(ssh_env.url(repo.root), cache_dir=tmp_path / "cache")


def test_a_chatty_login_over_ssh(repo, ssh_env, monkeypatch, tmp_path):
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", f"echo 'Last login: yesterday'; {remote_butler()}")
    with pytest.raises(RemoteProtocolError, match="Last login: yesterday"):
        Butler(ssh_env.url(repo.root), cache_dir=tmp_path / "cache")


def test_writes_through_an_ssh_butler_are_refused(repo, ssh_env, tmp_path):
    from butler.errors import ReadOnlyError

    with pytest.raises(ReadOnlyError, match="read-only"):
        Butler(ssh_env.url(repo.root), run="u/me/x", cache_dir=tmp_path / "cache")


def test_a_server_killed_between_requests_over_ssh_is_reconnected(repo, ssh_env, monkeypatch, tmp_path):
    pidfile = tmp_path / "server.pid"
    # The remote shell records its pid, then becomes the server (exec keeps the pid).
    monkeypatch.setenv("BUTLER_SSH_REMOTE_BUTLER", f"echo $$ > {shlex.quote(str(pidfile))}; exec {remote_butler()}")
    remote = Butler(ssh_env.url(repo.root), collections=RUN, cache_dir=tmp_path / "cache")
    assert len(remote.query_datasets("metrics")) == 6
    first = int(pidfile.read_text())
    os.kill(first, signal.SIGKILL)
    assert len(remote.query_datasets("metrics")) == 6  # the documented retry, over a new ssh connection
    assert int(pidfile.read_text()) != first


def test_an_upstream_over_ssh(repo, ssh_env, tmp_path):
    """`Butler(local, upstream="ssh://...")`: inputs fetched through ssh as a bundle (the export's
    temporary file removed on the server once sent), verified, kept; outputs local."""
    mine = Butler(Butler.create(tmp_path / "mine").root, writeable=True, upstream=ssh_env.url(repo.root),
                  collections=RUN)
    assert mine.get("metrics", DATA_ID) == repo.get("metrics", DATA_ID, collections=RUN)
    here = Butler(mine.root, collections=RUN)
    assert here.find_dataset("metrics", DATA_ID) == repo.find_dataset("metrics", DATA_ID, collections=RUN)
    assert here.verify() == []


def test_a_file_made_for_an_answer_is_removed_once_sent(tmp_path):
    """What the server made for one answer (an export's bundle) goes once it has been sent on the stream."""
    import io

    from butler.remote._protocol import Answer, Request
    from butler.remote._stdio import _send_answer

    scratch = tmp_path / "export"
    scratch.mkdir()
    (scratch / "bundle.zip").write_bytes(b"zip bytes")
    out = io.BytesIO()
    _send_answer(out, Request("POST", "/api/v1/export"), Answer(200, {}, file=str(scratch / "bundle.zip"),
                                                               remove_after=str(scratch)))
    assert out.getvalue().endswith(b"zip bytes") and not scratch.exists()
