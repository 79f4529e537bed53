"""Benchmarks of repositories over ssh (issue 13): `Butler("ssh://...")` through a real sshd on
127.0.0.1 (``butler.testing.ssh_server``), measured against the same calls on the local repository in
the same run (ratios of medians, in alternating blocks so machine load hits both).

* ``ssh.get_small``: `Butler.get` by data ID of a small dict over ssh stdio / the same local get
  (the file comes inline with its lookup: one round trip over an already open connection).
* ``ssh.query_500``: `query_datasets` returning 500 refs over ssh / locally.
* ``ssh.open``: opening the Butler (an ssh connection, the remote `butler serve --stdio` start-up
  and its info call), in seconds, once per sample; no local baseline (it is the cost of a session).

The repository is the core benchmarks' (500 small datasets, `benchmarks/_fixtures.py`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ._fixtures import INSTRUMENT, QUERY_DETECTORS, QUERY_RUN, QUERY_VISITS, core_repo
from ._runner import Context, Result, benchmark, measure, percentile

if TYPE_CHECKING:
    from butler import Butler
    from butler.testing import SshServer


def _sshd(ctx: Context) -> SshServer:
    from butler.testing import ssh_server

    server: SshServer = ctx.enter(ssh_server(ctx.scratch("sshd")))
    return server


def _open(ctx: Context, cache: str) -> tuple[Butler, Butler]:
    from butler import Butler
    from butler.testing import remote_butler

    server: SshServer = ctx.fixture("sshd", _sshd)
    repo = core_repo(ctx)
    os.environ["BUTLER_SSH_OPTIONS"] = server.options()
    os.environ["BUTLER_SSH_REMOTE_BUTLER"] = remote_butler()
    remote = Butler(server.url(repo.root), collections=QUERY_RUN, cache_dir=ctx.scratch(cache))
    return remote, Butler(repo.root, collections=QUERY_RUN)


def _ratio(remote_call: Any, local_call: Any, per_block: int, what: str, blocks: int = 8) -> Result:
    remote: list[int] = []
    local: list[int] = []
    for _ in range(blocks):
        remote += measure(remote_call, per_block, warmup=10)
        local += measure(local_call, per_block, warmup=10)
    r50, l50 = percentile(remote, 50), percentile(local, 50)
    return Result(value=r50 / l50, p90=percentile(remote, 90) / percentile(local, 90), n=len(remote),
                  notes=f"{what}: median {r50 / 1e3:.0f} us over ssh vs {l50 / 1e3:.0f} us local; p90 column: "
                        "ratio of the p90s", extra={"remote_us": r50 / 1e3, "local_us": l50 / 1e3})


@benchmark("ssh.get_small", unit="x", target=3.0,
           description="Butler.get by data ID of a small dict over ssh (sshd on 127.0.0.1) / the same local get")
def bench_ssh_get(ctx: Context) -> Result:
    remote, local = _open(ctx, "ssh-cache-get")
    keys = [(v, d) for v in QUERY_VISITS for d in QUERY_DETECTORS]

    def get(butler: Butler, i: int) -> object:
        v, d = keys[i % len(keys)]
        return butler.get("metrics", instrument=INSTRUMENT, visit=v, detector=d)

    assert get(remote, 3) == get(local, 3)
    return _ratio(lambda i: get(remote, i), lambda i: get(local, i), ctx.size(200, 30), "get")


@benchmark("ssh.query_500", unit="x", target=3.0,
           description="query_datasets of 500 refs over ssh (sshd on 127.0.0.1) / the same local query")
def bench_ssh_query(ctx: Context) -> Result:
    remote, local = _open(ctx, "ssh-cache-query")
    assert len(remote.query_datasets("metrics")) == len(local.query_datasets("metrics")) == 500
    return _ratio(lambda i: remote.query_datasets("metrics"), lambda i: local.query_datasets("metrics"),
                  ctx.size(20, 4), "query of 500 refs")


@benchmark("ssh.open", unit="s", target=2.0,
           description="Butler('ssh://...') open: ssh connection + remote `butler serve --stdio` start + info; "
                       "baseline: `ssh host true` (the connection alone)")
def bench_ssh_open(ctx: Context) -> Result:
    import shlex
    import subprocess

    server: SshServer = ctx.fixture("sshd", _sshd)
    _open(ctx, "ssh-cache-open")  # warm: the repository and the interpreter's files in the page cache
    ssh = ["ssh", *shlex.split(server.options()), "-o", "BatchMode=yes", "-p", str(server.port), "-l", server.user,
           "--", server.host, "true"]
    opens, connects = [], []
    for _ in range(ctx.size(8, 2)):
        start = time.perf_counter()
        _open(ctx, "ssh-cache-open")  # the Butler is dropped at once: its connection is closed then
        opens.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(ssh, check=True, capture_output=True, timeout=60)
        connects.append(time.perf_counter() - start)
    o50, c50 = percentile(opens, 50), percentile(connects, 50)
    return Result(value=o50, p90=percentile(opens, 90), baseline=c50, baseline_p90=percentile(connects, 90),
                  n=len(opens), baseline_label="ssh host true",
                  notes=f"open {o50:.2f} s, of which the ssh connection alone takes {c50:.2f} s ({o50 / c50:.1f}x)")
