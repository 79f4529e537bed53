"""Benchmarks of repositories that travel (issue 12): export, compare, memory of export.

* ``transfer.export_10k``: `Butler.export` of 10,000 small datasets (60-byte JSON files, one run)
  to a zip bundle; datasets/s. Baseline: ``shutil.copyfile`` of the same 10,000 files into a fresh
  directory (what any copy must do at least). ``transfer.export_10k_dir``: the same to a
  directory bundle (informational).
* ``transfer.import_10k``: `Butler.import_` of that zip bundle into a new repository (checksums
  verified, files extracted and placed through the write path); datasets/s. Baseline: the same
  ``shutil.copyfile`` of the files.
* ``transfer.transfer_10k``: `Butler.transfer_from` of those 10,000 datasets into a new repository
  (manifest, checks, every file verified against its checksum, hard-linked on one file system,
  registered in one batch); datasets/s. Baseline: the same ``shutil.copyfile`` of the files.
* ``transfer.compare_100k``: `Butler.compare` of two repositories of 100,000 datasets each (same
  content, other ids); seconds. Baseline: a raw sqlite3 SELECT of the same columns (data ID
  values, run, component, checksum) from both registries.
* ``transfer.import_memory_100k``: the same for importing that bundle into a new repository.
* ``transfer.export_memory_100k``: peak RSS (``ru_maxrss``) minus the RSS before, of a fresh interpreter exporting 100,000
  datasets (with their files) to a zip bundle; MB. The export's rate is in the notes.

The repositories are built with bulk SQL and files written directly (``put_many`` of 100k files
would take minutes) and cached under ``.bench/cache/``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
import uuid

from ._fixtures import INSTRUMENT, cached_repo, schema_digest, visit_record
from ._runner import Context, Result, benchmark, rate_result, run_python

TRANSFER_REPO_VERSION = "1"
DETECTORS = tuple(range(9))  # SimCam's
RUN = "bench/transfer"


def _fill(root: str, n: int, *, files: bool, seed: str) -> dict[str, int]:
    """A repository of ``n`` 'metrics' datasets (visits x 9 detectors) in one run; with ``files``
    each has its 60-byte JSON file, checksum and size; without, the same records (no files)."""
    from butler import Butler, DatasetType
    from butler.datastore import checksum_bytes
    from butler.instrument import SimCam

    n_visits = -(-n // len(DETECTORS))
    Butler.create(root)
    butler = Butler(root, writeable=True)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", [visit_record(v) for v in range(1, n_visits + 1)])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.register_run(RUN)
    registry = butler.registry
    schema = registry.schema
    type_rec = registry.dataset_types.get("metrics")
    run_id = registry.collections.get(RUN).id
    dims = type_rec.group.required
    now = time.time_ns()
    ds_rows, tag_rows, file_rows = [], [], []
    made_dirs: set[str] = set()
    for v in range(1, n_visits + 1):
        for d in DETECTORS:
            if len(ds_rows) >= n:
                break
            dataset_id = uuid.uuid4().hex
            values = {"instrument": INSTRUMENT, "visit": v, "detector": d}
            data = f'{{"visit": {v}, "detector": {d}, "payload": "{"x" * 20}"}}'.encode()
            rel = f"{RUN}/metrics/{v}/metrics_{INSTRUMENT}_{v}_{d}.json"
            if files:
                full = os.path.join(root, rel)
                directory = os.path.dirname(full)
                if directory not in made_dirs:
                    os.makedirs(directory, exist_ok=True)
                    made_dirs.add(directory)
                with open(full, "wb") as stream:
                    stream.write(data)
            ds_rows.append((dataset_id, type_rec.id, run_id, now))
            tag_rows.append((dataset_id, type_rec.id, run_id, *[values[x] for x in dims]))
            file_rows.append((dataset_id, "", rel, "json", "StructuredData", checksum_bytes(data), len(data)))
    with registry.db.transaction(write=True) as conn:
        db = registry.db
        db.bulk_insert(conn, schema.dataset, ("dataset_id", "dataset_type_id", "run_id", "ingest_time"), ds_rows)
        db.bulk_insert(conn, type_rec.tags, ("dataset_id", "dataset_type_id", "collection_id", *dims), tag_rows)
        db.bulk_insert(conn, schema.file_record, ("dataset_id", "component", "path", "formatter", "storage_class",
                                                  "checksum", "file_size"), file_rows)
    return {"datasets": len(ds_rows), "seed": len(seed)}


def _repo(ctx: Context, n: int, *, files: bool, copy: str = "a") -> str:
    root, _ = cached_repo(ctx, f"transfer-{n}-{'files' if files else 'records'}-{copy}",
                          f"v{TRANSFER_REPO_VERSION}-{schema_digest()}",
                          lambda building: _fill(building, n, files=files, seed=copy),
                          f"a repository of {n:,} datasets{' with files' if files else ''} ({copy})")
    return root


def _fresh(ctx: Context, name: str) -> str:
    """A new scratch directory on every call: a repository is never created where an earlier one of
    this process was (its engine may still be cached by the Butler)."""
    return tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.tmpdir)


def _run_files(root: str) -> list[str]:
    """The files of the benchmark run, sorted (what each baseline copies)."""
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, RUN)) for f in fs)


def _copy_seconds(paths: list[str], root: str, copy_dir: str) -> float:
    """The baseline: ``shutil.copyfile`` of ``paths`` to their places under ``copy_dir`` (directories
    made once each), in seconds."""
    start = time.perf_counter()
    made: set[str] = set()
    for p in paths:
        dst = os.path.join(copy_dir, os.path.relpath(p, root))
        d = os.path.dirname(dst)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        shutil.copyfile(p, dst)
    return time.perf_counter() - start


def _export_rate(ctx: Context, suffix: str, repeats: int) -> Result:
    from butler import Butler

    n = ctx.size(10_000, 2_000)
    root = _repo(ctx, n, files=True)
    butler = Butler(root)
    seconds, base = [], []
    paths = _run_files(root)
    assert len(paths) == n
    for i in range(repeats):
        target = os.path.join(_fresh(ctx, f"export-{suffix}-{i}"), f"bundle{suffix}")
        start = time.perf_counter()
        report = butler.export(target, collections=RUN)
        seconds.append(time.perf_counter() - start)
        assert report.datasets == n, report
        copy_dir = _fresh(ctx, f"copy-{suffix}-{i}")
        base.append(_copy_seconds(paths, root, copy_dir))
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
        shutil.rmtree(copy_dir, ignore_errors=True)
    return rate_result(n, seconds, baseline_seconds=base, baseline_label="shutil.copyfile of the same files",
                       notes=f"{n} datasets of 60 bytes, one run, SQLite")


@benchmark("transfer.export_10k", unit="datasets/s", target=5000, better="higher",
           description="Butler.export of 10,000 small datasets to a zip bundle (baseline: shutil.copyfile)")
def bench_export_zip(ctx: Context) -> Result:
    return _export_rate(ctx, ".zip", ctx.size(3, 1))


@benchmark("transfer.export_10k_dir", unit="datasets/s", better="higher",
           description="Butler.export of 10,000 small datasets to a directory bundle (baseline: shutil.copyfile)")
def bench_export_dir(ctx: Context) -> Result:
    return _export_rate(ctx, "", ctx.size(3, 1))


def _import_rate(ctx: Context, suffix: str, repeats: int) -> Result:
    """`Butler.import_` of the run's bundle (``suffix`` ".zip" or "" for a directory) into new repositories."""
    from butler import Butler

    n = ctx.size(10_000, 2_000)
    root = _repo(ctx, n, files=True)
    bundle = os.path.join(_fresh(ctx, f"import-bundle{suffix}"), f"bundle{suffix}")
    Butler(root).export(bundle, collections=RUN)
    os.sync()  # the bundle's files written back now, not during the timed import (a directory: 10k files)
    paths = _run_files(root)
    seconds, base = [], []
    for i in range(repeats):
        dest = Butler.create(os.path.join(_fresh(ctx, f"import{suffix}-{i}"), "repo"))
        start = time.perf_counter()
        report = dest.import_(bundle)
        seconds.append(time.perf_counter() - start)
        assert report.datasets == n, report
        copy_dir = _fresh(ctx, f"import-copy{suffix}-{i}")
        base.append(_copy_seconds(paths, root, copy_dir))
        shutil.rmtree(os.path.dirname(dest.root), ignore_errors=True)
        shutil.rmtree(copy_dir, ignore_errors=True)
    shutil.rmtree(os.path.dirname(bundle), ignore_errors=True)
    kind = "zip bundle" if suffix == ".zip" else "directory bundle"
    return rate_result(n, seconds, baseline_seconds=base, baseline_label="shutil.copyfile of the same files",
                       notes=f"{n} datasets of 60 bytes from a {kind}, SQLite")


@benchmark("transfer.import_10k", unit="datasets/s", target=5000, better="higher",
           description="Butler.import_ of a 10,000-dataset zip bundle into a new repository (baseline: shutil.copyfile)")
def bench_import(ctx: Context) -> Result:
    return _import_rate(ctx, ".zip", ctx.size(3, 1))


@benchmark("transfer.transfer_10k", unit="datasets/s", target=5000, better="higher",
           description="Butler.transfer_from of 10,000 small datasets into a new repository "
                       "(baseline: shutil.copyfile)")
def bench_transfer(ctx: Context) -> Result:
    return _transfer_rate(ctx, ctx.size(3, 1))


def _transfer_rate(ctx: Context, repeats: int) -> Result:
    """`Butler.transfer_from` of the run into ``repeats`` new repositories (auto: hard links)."""
    from butler import Butler

    n = ctx.size(10_000, 2_000)
    root = _repo(ctx, n, files=True)
    source = Butler(root)
    paths = _run_files(root)
    seconds, base, linked = [], [], []
    for i in range(repeats):
        dest = Butler.create(os.path.join(_fresh(ctx, f"transfer-{i}"), "repo"))
        start = time.perf_counter()
        report = dest.transfer_from(source, collections=RUN)  # auto: hard links (one file system)
        seconds.append(time.perf_counter() - start)
        assert report.datasets == n, report
        linked.append(os.stat(paths[0]).st_nlink > 1)
        copy_dir = _fresh(ctx, f"transfer-copy-{i}")
        base.append(_copy_seconds(paths, root, copy_dir))
        shutil.rmtree(os.path.dirname(dest.root), ignore_errors=True)
        shutil.rmtree(copy_dir, ignore_errors=True)
    return rate_result(n, seconds, baseline_seconds=base, baseline_label="shutil.copyfile of the same files",
                       notes=f"{n} datasets of 60 bytes, SQLite to SQLite, transfer=auto "
                             f"({'hard links' if all(linked) else 'copies'}), every file verified")


_CONTENT_SQL = """
SELECT t.instrument, t.detector, t.visit, c.name, f.component, f.checksum
FROM dataset_tags_instrument_detector_visit t JOIN collection c ON c.collection_id = t.collection_id
LEFT JOIN file_record f ON f.dataset_id = t.dataset_id
WHERE c.type = 1
"""


@benchmark("transfer.compare_100k", unit="s", target=2.0,
           description="Butler.compare of two 100,000-dataset repositories (baseline: raw sqlite3 SELECTs)")
def bench_compare(ctx: Context) -> Result:
    from butler import Butler

    n = ctx.size(100_000, 10_000)
    a = _repo(ctx, n, files=False, copy="a")
    b = _repo(ctx, n, files=False, copy="b")
    samples, base = [], []
    for _ in range(ctx.size(5, 2)):
        start = time.perf_counter_ns()
        report = Butler.compare(a, b)
        samples.append(time.perf_counter_ns() - start)
        assert report.identical and report.same == n, report
        start = time.perf_counter_ns()
        for root in (a, b):
            with sqlite3.connect(os.path.join(root, "butler.sqlite3")) as conn:
                rows = conn.execute(_CONTENT_SQL).fetchall()
                assert len(rows) == n
        base.append(time.perf_counter_ns() - start)
    return Result.from_samples(samples, "s", baseline_ns=base, baseline_label="raw sqlite3 SELECT of both",
                               notes=f"{n} datasets each side, same content, other ids; includes opening both")


_MEMORY_CODE = """
import json, os, resource, time
from butler import Butler
def rss_kb():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
if os.environ["BENCH_OP"] == "export":
    butler = Butler(os.environ["BENCH_ROOT"])
    operation = lambda: butler.export(os.environ["BENCH_TARGET"], collections=os.environ["BENCH_RUN"])
else:
    butler = Butler.create(os.environ["BENCH_DEST"])
    operation = lambda: butler.import_(os.environ["BENCH_BUNDLE"])
butler.query_dataset_types()
before = rss_kb()
start = time.perf_counter()
report = operation()
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta_kb": after - before, "before_kb": before, "seconds": seconds, "datasets": report.datasets}))
"""
"""Peak RSS growth of one export (``BENCH_OP=export``) or import, in a fresh process."""


@benchmark("transfer.export_memory_100k", unit="MB", target=300,
           description="peak RSS growth of exporting 100,000 datasets with their files to a zip bundle")
def bench_export_memory(ctx: Context) -> Result:
    n = ctx.size(100_000, 10_000)
    root = _repo(ctx, n, files=True)
    target = os.path.join(ctx.scratch("memory"), "bundle.zip")
    out = run_python(_MEMORY_CODE, env={"BENCH_OP": "export", "BENCH_ROOT": root, "BENCH_TARGET": target,
                                     "BENCH_RUN": RUN}, timeout=600)
    assert out["datasets"] == n, out
    mb = out["delta_kb"] / 1024
    rate = n / out["seconds"]
    return Result(value=mb, n=1, notes=f"{n} datasets in {out['seconds']:.1f} s ({rate:,.0f} datasets/s); "
                                       f"RSS before the export {out['before_kb'] / 1024:.0f} MB",
                  extra={"rate": rate, **out})



@benchmark("transfer.import_memory_100k", unit="MB", target=300,
           description="peak RSS growth of importing a 100,000-dataset zip bundle into a new repository")
def bench_import_memory(ctx: Context) -> Result:
    from butler import Butler

    n = ctx.size(100_000, 10_000)
    root = _repo(ctx, n, files=True)
    bundle = os.path.join(ctx.scratch("import-memory"), "bundle.zip")
    Butler(root).export(bundle, collections=RUN)
    dest = os.path.join(ctx.scratch("import-memory-dest"), "repo")
    out = run_python(_MEMORY_CODE, env={"BENCH_OP": "import", "BENCH_DEST": dest, "BENCH_BUNDLE": bundle},
                     timeout=900)
    assert out["datasets"] == n, out
    rate = n / out["seconds"]
    return Result(value=out["delta_kb"] / 1024, n=1,
                  notes=f"{n} datasets in {out['seconds']:.1f} s ({rate:,.0f} datasets/s)", extra={"rate": rate, **out})
