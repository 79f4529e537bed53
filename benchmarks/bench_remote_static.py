"""Benchmarks of statically hosted repositories (issue 13): a SQLite registry read by HTTP ranges.

* ``remote.static_query_bytes_1m``: the bytes a client receives to open the cached 1M-dataset
  repository (`big_repo`) served by a static file server on 127.0.0.1 (aiohttp's static route:
  Range, ETag) and run one ``find_dataset`` plus one query of 504 refs (56 visits x 9 detectors of
  one run), as a percentage of the registry file; target <= 5 %. The notes give the time of the
  find + query on a freshly opened remote registry (the transfers happen there) against the same
  on the local file (a fresh Registry on the same file, OS cache warm), and that ratio; the same
  once both are warm; and the bytes and requests of the same registry compacted (``VACUUM``, what
  ``prepare_static_hosting(root, compact=True)`` does).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

from ._fixtures import INSTRUMENT, big_repo
from ._runner import Context, Result, benchmark

RUN = "bench/big/03"
QUERY_WHERE = "visit >= 100 AND visit < 156"  # 56 visits x 9 detectors = 504 refs


def _session(registry: object) -> int:
    """One find_dataset and one 504-ref query on ``registry``; the number of refs found."""
    from butler.registry._registry import Registry

    assert isinstance(registry, Registry)
    group = registry.dataset_types.get("metrics").group
    coord = registry.data_ids.standardize(group, {"instrument": INSTRUMENT, "visit": 321, "detector": 4})
    found = registry.find_dataset("metrics", coord, [RUN])
    refs = registry.query_datasets("metrics", collections=[RUN], where=QUERY_WHERE)
    return len(refs) + (found is not None)


def _remote_runs(ctx: Context, root: str, reps: int, tag: str) -> dict[str, list[float]]:
    """``reps`` fresh opens of ``root`` served statically, each running `_session` cold then warm."""
    from butler.remote._http_range import HttpClient
    from butler.remote._static import open_static_registry
    from butler.testing._static_http import StaticServer

    out: dict[str, list[float]] = {"cold_s": [], "warm_s": [], "received": [], "requests": [], "sent": [],
                                   "found": []}
    with StaticServer(root) as server:
        for i in range(reps):
            client = HttpClient()
            registry = open_static_registry(server.url, cache_dir=ctx.scratch(f"static-cache-{tag}-{i}"), client=client)
            t0 = time.perf_counter()
            out["found"].append(_session(registry))
            out["cold_s"].append(time.perf_counter() - t0)
            out["received"].append(client.stats.bytes_received)
            out["requests"].append(client.stats.requests)
            t0 = time.perf_counter()
            _session(registry)
            out["warm_s"].append(time.perf_counter() - t0)
            out["sent"].append(server.bytes_sent)
            registry.db.engine.dispose()
            client.close()
            server.reset_counts()
    return out


@benchmark("remote.static_query_bytes_1m", unit="%", target=5.0, better="lower",
           description="bytes received for open + find_dataset + 504-ref query of a statically hosted 1M registry, "
                       "% of the registry file")
def bench_static_query_bytes(ctx: Context) -> Result:
    import sqlite3

    from butler.registry._database import Database
    from butler.registry._registry import Registry
    from butler.remote._static import prepare_static_hosting

    n = ctx.size(1_000_000, 10_000)
    root = big_repo(ctx, n)
    size = prepare_static_hosting(root).size  # the cached repository may have a log from its build
    reps = ctx.size(5, 2)
    remote = _remote_runs(ctx, root, reps, "as-built")
    db_path = os.path.join(root, "butler.sqlite3")
    local_cold, local_warm, local_found = [], [], 0
    for _ in range(reps):
        local = Registry.open(Database("sqlite:///" + db_path))
        t0 = time.perf_counter()
        local_found = _session(local)
        local_cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _session(local)
        local_warm.append(time.perf_counter() - t0)
    found = remote["found"][0]
    if set(remote["found"]) != {local_found} or (n == 1_000_000 and found != 505) or found < 2:
        raise RuntimeError(f"the remote registry found {remote['found']} refs, the local one {local_found} (1M: 505)")
    # The same registry compacted (prepare_static_hosting(compact=True) runs VACUUM in place; a
    # copy keeps the cached repository as the other benchmarks expect it).
    compacted = ctx.scratch("compacted")
    shutil.copy(os.path.join(root, "butler.yaml"), compacted)
    with sqlite3.connect(db_path) as conn:
        conn.execute("VACUUM INTO ?", (os.path.join(compacted, "butler.sqlite3"),))
    packed = _remote_runs(ctx, compacted, reps, "compacted")
    med = statistics.median
    value = 100.0 * med(remote["received"]) / size
    cold, warm = med(remote["cold_s"]) / med(local_cold), med(remote["warm_s"]) / med(local_warm)
    notes = (f"{found - 1} refs + 1 find: {med(remote['received']) / 1e6:.2f} MB in {med(remote['requests']):.0f} "
             f"requests of a {size / 1e6:.0f} MB registry (server counted {med(remote['sent']) / 1e6:.2f} MB); "
             f"find + query remote/local: cold {med(remote['cold_s']) * 1e3:.0f}/{med(local_cold) * 1e3:.0f} ms "
             f"= {cold:.1f}x, warm {med(remote['warm_s']) * 1e3:.1f}/{med(local_warm) * 1e3:.1f} ms = {warm:.1f}x; "
             f"compacted (VACUUM): {100.0 * med(packed['received']) / size:.2f} % in "
             f"{med(packed['requests']):.0f} requests, cold {med(packed['cold_s']) * 1e3:.0f} ms")
    return Result(value=value, n=reps, baseline=100.0, baseline_label="the whole registry file", notes=notes,
                  extra={"registry_bytes": size, "remote": remote, "compacted": packed, "local_cold_s": local_cold,
                         "local_warm_s": local_warm, "cold_ratio": cold, "warm_ratio": warm})
