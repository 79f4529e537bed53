"""Benchmarks of remote repositories (issue 13): a real `butler serve` on 127.0.0.1, measured
against the same calls on the local repository in the same run.

* ``remote.get_small``: `Butler.get` by data ID of a small dict through the server / the same get
  on the local repository (ratio of medians, in alternating blocks so machine load hits both).
  The file comes inline with its lookup: one round trip.
* ``remote.query_500``: `query_datasets` returning 500 refs through the server / locally.
* ``remote.cached_reget``: a get through `Butler(local, upstream=...)` of a dataset already cached / the
  same get on the repository opened without an upstream (the cost of looking here first: ~1x).
* ``remote.cutout_bytes``: bytes through a counting proxy for a 256x256 cutout of a 4096^2 zarr
  exposure read remotely (range requests of the chunks), over the bytes the same cutout reads locally.
* ``remote.concurrent_16x1000``: 16 client processes each making 1,000 gets at once; the server's
  resident memory growth from after a warm-up to the end (MB; "memory flat"), with the error count
  and the aggregate rate in the notes. Any error fails the benchmark.

The repository is the core benchmarks' (500 small datasets, `benchmarks/_fixtures.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._fixtures import INSTRUMENT, QUERY_DETECTORS, QUERY_RUN, QUERY_VISITS, core_repo
from ._runner import Context, Result, benchmark, measure, percentile, run_python

if TYPE_CHECKING:
    from butler.testing import ServedRepository


def _server(ctx: Context) -> ServedRepository:
    from butler.testing import served_repository

    repo = core_repo(ctx)
    served: ServedRepository = ctx.enter(served_repository(repo.root))
    return served


def _served(ctx: Context) -> ServedRepository:
    served: ServedRepository = ctx.fixture("remote_server", _server)
    return served


def _remote_and_local(ctx: Context) -> tuple[Any, Any]:
    """A Butler of the core repository through the server, and one of the same repository directly."""
    from butler import Butler

    server = _served(ctx)
    repo = core_repo(ctx)
    return (Butler(server.url, collections=QUERY_RUN, cache_dir=ctx.scratch("remote-cache")),
            Butler(repo.root, collections=QUERY_RUN))


def _ratio_of_blocks(remote_call: Callable[[int], Any], local_call: Callable[[int], Any], per_block: int,
                     blocks: int = 8) -> tuple[list[int], list[int]]:
    remote: list[int] = []
    local: list[int] = []
    for _ in range(blocks):  # alternate, so load from elsewhere on the machine hits both sides alike
        remote += measure(remote_call, per_block, warmup=10)
        local += measure(local_call, per_block, warmup=10)
    return remote, local


def _get_ratio(ctx: Context, measured: Any, baseline: Any, keys: list[tuple[int, int]], what: str) -> Result:
    """Gets of the metrics of ``keys`` (visit, detector) through ``measured`` / through ``baseline``."""

    def get(butler: Any, i: int) -> object:
        v, d = keys[i % len(keys)]
        return butler.get("metrics", instrument=INSTRUMENT, visit=v, detector=d)

    assert get(measured, 3) == get(baseline, 3)
    samples, base = _ratio_of_blocks(lambda i: get(measured, i), lambda i: get(baseline, i), ctx.size(200, 30))
    return _ratio_result(samples, base, what)


def _ratio_result(remote: list[int], local: list[int], what: str) -> Result:
    r50, l50 = percentile(remote, 50), percentile(local, 50)
    r90, l90 = percentile(remote, 90), percentile(local, 90)
    return Result(value=r50 / l50, p90=r90 / l90, n=len(remote),
                  notes=f"{what}: median {r50 / 1e3:.0f} us remote vs {l50 / 1e3:.0f} us local; p90 column: ratio "
                        "of the p90s", extra={"remote_us": r50 / 1e3, "local_us": l50 / 1e3})


@benchmark("remote.get_small", unit="x", target=3.0,
           description="Butler.get by data ID of a small dict through `butler serve` on 127.0.0.1 / the same local get")
def bench_remote_get(ctx: Context) -> Result:
    remote, local = _remote_and_local(ctx)
    return _get_ratio(ctx, remote, local, [(v, d) for v in QUERY_VISITS for d in QUERY_DETECTORS], "get")


@benchmark("remote.query_500", unit="x", target=3.0,
           description="query_datasets of 500 refs through `butler serve` on 127.0.0.1 / the same local query")
def bench_remote_query(ctx: Context) -> Result:
    remote, local = _remote_and_local(ctx)
    assert len(remote.query_datasets("metrics")) == len(local.query_datasets("metrics")) == 500
    samples_remote, samples_local = _ratio_of_blocks(lambda i: remote.query_datasets("metrics"),
                                                     lambda i: local.query_datasets("metrics"), ctx.size(20, 4))
    return _ratio_result(samples_remote, samples_local, "query of 500 refs")


_CLIENT = """
import json, os, sys, time
from butler import Butler
b = Butler(os.environ["BENCH_URL"], collections=os.environ["BENCH_RUN"], cache_dir=os.environ["BENCH_CACHE"])
n, errors = int(os.environ["BENCH_N"]), 0
keys = [(v, d) for v in range(1, 101) for d in range(5)]
start = time.perf_counter()
for i in range(n):
    v, d = keys[(i * 7 + int(os.environ["BENCH_SEED"])) % len(keys)]
    try:
        b.get("metrics", instrument="SimCam", visit=v, detector=d)
    except Exception as err:
        errors += 1
        print(repr(err), file=sys.stderr)
print(json.dumps({"errors": errors, "seconds": time.perf_counter() - start}))
"""


@benchmark("remote.concurrent_16x1000", unit="MB", target=20.0,
           description="16 client processes x 1,000 gets at once through `butler serve`: the server's RSS growth "
                       "after a warm-up (no error allowed)")
def bench_remote_concurrent(ctx: Context) -> Result:
    from concurrent.futures import ThreadPoolExecutor

    server = _served(ctx)
    clients, n = 16, ctx.size(1000, 50)
    env = {"BENCH_URL": server.url, "BENCH_RUN": QUERY_RUN, "BENCH_N": str(n)}

    def one(i: int, count: int) -> dict[str, float]:
        return run_python(_CLIENT, env={**env, "BENCH_SEED": str(i), "BENCH_N": str(count),
                                        "BENCH_CACHE": os.path.join(ctx.scratch("concurrent"), str(i))},
                          timeout=900)

    with ThreadPoolExecutor(clients) as pool:  # warm-up: every client path once, the server's caches filled
        list(pool.map(lambda i: one(i, 20), range(clients)))
    before = server.rss_kb()
    with ThreadPoolExecutor(clients) as pool:
        outs = list(pool.map(lambda i: one(i, n), range(clients)))
    after = server.rss_kb()
    errors = sum(int(o["errors"]) for o in outs)
    if errors:
        raise RuntimeError(f"{errors} of {clients * n} concurrent gets failed")
    wall = max(o["seconds"] for o in outs)
    return Result(value=(after - before) / 1024, n=1,
                  notes=f"{clients} x {n} gets, 0 errors, {clients * n / wall:,.0f} gets/s in all; server RSS "
                        f"{before / 1024:.0f} -> {after / 1024:.0f} MB",
                  extra={"errors": errors, "rate": clients * n / wall, "rss_before_kb": before, "rss_after_kb": after})


@benchmark("remote.cached_reget", unit="x", target=1.2,
           description="Butler(local, upstream=server).get of a small dict already cached / the same get on a "
                       "plain local repository")
def bench_remote_cached_reget(ctx: Context) -> Result:
    from butler import Butler

    server = _served(ctx)
    root = os.path.join(ctx.scratch("cached-reget"), "mine")
    Butler.create(root)
    mine = Butler(root, upstream=server.url, collections=QUERY_RUN)
    keys = [(v, d) for v in QUERY_VISITS[:20] for d in QUERY_DETECTORS]
    refs = mine.query_datasets("metrics", where="visit <= 20")  # the upstream's answer
    mine.fetch_from_upstream(refs)
    return _get_ratio(ctx, mine, Butler(root, collections=QUERY_RUN), keys, "cached re-get")


def _big_exposure_repo(ctx: Context) -> tuple[str, Any]:
    import numpy as np

    from butler import Butler, DatasetType
    from butler.exposure import Exposure
    from butler.instrument import SimCam

    root = os.path.join(ctx.tmpdir, "exposure-repo")
    Butler.create(root)
    butler = Butler(root, run="bench/exposure")
    butler.register_instrument(SimCam(), calibs=False)
    from ._fixtures import visit_record

    butler.insert_dimension_records("visit", [visit_record(1)])
    butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    n = ctx.size(4096, 1024)
    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 30.0, (n, n)).astype(np.float32)
    exposure = Exposure(image, np.zeros((n, n), np.int32), np.abs(image))
    ref = butler.put(exposure, "calexp", instrument=INSTRUMENT, visit=1, detector=0)
    return root, ref


@benchmark("remote.cutout_bytes", unit="x", target=2.0,
           description="bytes moved by a remote 256x256 cutout of a 4096^2 zarr exposure (through `butler serve`) / "
                       "the bytes of the chunks the same cutout reads locally")
def bench_remote_cutout_bytes(ctx: Context) -> Result:
    from butler import Butler
    from butler.datastore._zarr_io import io_stats
    from butler.exposure import Box
    from butler.testing import FlippingProxy, served_repository

    root, ref = ctx.fixture("exposure_repo", _big_exposure_repo)
    box = Box(x0=1000, y0=2000, width=256, height=256) if not ctx.quick else Box(x0=100, y0=200, width=256, height=256)
    local = Butler(root, collections="bench/exposure")
    with io_stats() as stats:
        want = local.get(ref, parameters={"bbox": box})
    chunk_bytes = stats.bytes_read
    with served_repository(root) as served, FlippingProxy(served.url, flips=0) as proxy:
        remote = Butler(proxy.url, collections="bench/exposure", cache_dir=ctx.scratch("cutout-cache"))
        found = remote.find_dataset("calexp", instrument=INSTRUMENT, visit=1, detector=0)
        proxy.bytes_forwarded = 0
        got = remote.get(found, parameters={"bbox": box})
        moved = proxy.bytes_forwarded
    assert (got.image == want.image).all() and (got.variance == want.variance).all()
    return Result(value=moved / chunk_bytes, n=1,
                  notes=f"{moved:,} bytes through the proxy (manifest, metadata, shard indexes, chunks) vs {chunk_bytes:,} "
                        f"bytes of chunks read locally ({stats.requests} reads)",
                  extra={"moved": moved, "chunk_bytes": chunk_bytes})
