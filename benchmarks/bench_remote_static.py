"""Benchmarks of statically hosted repositories (issue 13): a SQLite registry read by HTTP ranges.

* ``remote.static_query_bytes_1m``: the bytes a client receives to open the cached 1M-dataset
  repository (`big_repo`) served by a static file server on 127.0.0.1 (aiohttp's static route:
  Range, ETag) and run one ``find_dataset`` plus one query of 504 refs (56 visits x 9 detectors of
  one run), as a percentage of the registry file; target <= 5 %. The notes give the time of the
  find + query on a freshly opened remote registry (the transfers happen there) against the same
  on the local file (a fresh Registry on the same file, OS cache warm), and that ratio; and the
  same once the block cache is warm.
"""

from __future__ import annotations

import os
import statistics
import time

from ._fixtures import INSTRUMENT, big_repo
from ._runner import Context, Result, benchmark

RUN = "bench/big/03"
QUERY_WHERE = "visit >= 100 AND visit < 156"  # 56 visits x 9 detectors = 504 refs


def _session(registry: object) -> int:
    """One find_dataset and one 504-ref query on ``registry``; the number of refs found."""
    from butler._queries import query_datasets
    from butler.registry._registry import Registry

    assert isinstance(registry, Registry)
    group = registry.dataset_types.get("metrics").group
    coord = registry.data_ids.standardize(group, {"instrument": INSTRUMENT, "visit": 321, "detector": 4})
    found = registry.find_dataset("metrics", coord, [RUN])
    refs = query_datasets(registry, "metrics", collections=[RUN], where=QUERY_WHERE)
    return len(refs) + (found is not None)


@benchmark("remote.static_query_bytes_1m", unit="%", target=5.0, better="lower",
           description="bytes received for open + find_dataset + 504-ref query of a statically hosted 1M registry, "
                       "% of the registry file")
def bench_static_query_bytes(ctx: Context) -> Result:
    from butler.registry._database import Database
    from butler.registry._registry import Registry
    from butler.remote._http_range import HttpClient
    from butler.remote._static import open_static_registry, prepare_static_hosting
    from butler.testing._static_http import StaticServer

    n = ctx.size(1_000_000, 10_000)
    root = big_repo(ctx, n)
    report = prepare_static_hosting(root)  # the cached repository may have a log from its build
    size = report.size
    reps = ctx.size(5, 2)
    remote_s, warm_s, local_s, received, requests = [], [], [], [], []
    with StaticServer(root) as server:
        for i in range(reps):
            client = HttpClient()
            registry = open_static_registry(server.url, cache_dir=ctx.scratch(f"static-cache-{i}"), client=client)
            t0 = time.perf_counter()
            found = _session(registry)
            remote_s.append(time.perf_counter() - t0)
            received.append(client.stats.bytes_received)
            requests.append(client.stats.requests)
            t0 = time.perf_counter()
            _session(registry)
            warm_s.append(time.perf_counter() - t0)
            registry.db.engine.dispose()
            client.close()
            sent = server.bytes_sent
            server.reset_counts()
    db_path = os.path.join(root, "butler.sqlite3")
    for _ in range(reps):
        local = Registry.open(Database("sqlite:///" + db_path))
        t0 = time.perf_counter()
        local_found = _session(local)
        local_s.append(time.perf_counter() - t0)
    if found != local_found or found != (505 if n == 1_000_000 else found) or found < 2:
        raise RuntimeError(f"the remote registry found {found} refs, the local one {local_found} (1M: 505)")
    value = 100.0 * statistics.median(received) / size
    remote, warm, loc = statistics.median(remote_s), statistics.median(warm_s), statistics.median(local_s)
    notes = (f"{found - 1} refs + 1 find: {statistics.median(received) / 1e6:.2f} MB in {statistics.median(requests)} requests of a "
             f"{size / 1e6:.0f} MB registry (server counted {sent / 1e6:.2f} MB); find + query: remote cold "
             f"{remote * 1e3:.0f} ms, warm {warm * 1e3:.1f} ms, local {loc * 1e3:.1f} ms "
             f"(cold {remote / loc:.1f}x, warm {warm / loc:.1f}x local)")
    return Result(value=value, n=reps, baseline=100.0, baseline_label="the whole registry file", notes=notes,
                  extra={"registry_bytes": size, "received_bytes": received, "requests": requests,
                         "remote_cold_s": remote_s, "remote_warm_s": warm_s, "local_s": local_s,
                         "cold_ratio": remote / loc, "warm_ratio": warm / loc})
