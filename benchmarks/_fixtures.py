"""Repositories the benchmarks run against (SQLite on local disk).

* `core_repo`: a fresh repository in the run's scratch directory with SimCam, 1200 visits
  (every fifth one in band g, the others in r), the ``metrics`` dataset type
  (instrument, visit, detector; StructuredData) and 500 datasets in the run ``bench/query``
  (visits 1..100 x detectors 0..4) written with ``put_many``.
* `big_repo`: a repository holding N datasets (10k, 100k or 1M) for the open-scaling benchmark,
  cached under ``.bench/cache/`` and rebuilt only when `BIG_REPO_VERSION` or the registry
  schema changes. Its datasets are inserted with bulk SQL through ``butler.registry.schema``
  tables (``dataset``, the tags table, ``file_record``: one multi-row INSERT per table per
  50k rows), because writing 1M files through ``put_many``/``ingest`` would take minutes. The
  file records point at paths that do not exist: only the registry matters for opening.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._runner import Context

__all__ = ["BIG_REPO_VERSION", "PAYLOAD", "CoreRepo", "big_repo", "core_repo", "visit_record"]

BIG_REPO_VERSION = "1"
"""Bump to force the cached big repositories to be rebuilt (also keyed by a schema digest)."""

PAYLOAD = {"a": 1, "b": [1.0, 2.0, 3.0], "name": "metric", "ok": True}
"""The small dict every put/get benchmark stores (about 60 bytes of JSON)."""

INSTRUMENT = "SimCam"
DETECTORS = tuple(range(9))
N_VISITS = 1200
QUERY_RUN = "bench/query"
QUERY_VISITS = tuple(range(1, 101))
QUERY_DETECTORS = tuple(range(5))


def visit_record(visit: int) -> dict[str, Any]:
    band = "g" if visit % 5 == 0 else "r"
    seconds = visit * 60
    hh, mm, ss = seconds // 3600 % 24, seconds // 60 % 60, seconds % 60
    return {
        "instrument": INSTRUMENT, "id": visit, "physical_filter": f"SimCam-{band}", "day_obs": 20261124,
        "exposure_time": 30.0, "begin": f"2026-11-24T{hh:02d}:{mm:02d}:{ss:02d}",
        "end": f"2026-11-24T{hh:02d}:{mm:02d}:{min(ss + 30, 59):02d}",
    }


@dataclass
class CoreRepo:
    root: str
    query_refs: list[Any]

    @property
    def sqlite_path(self) -> str:
        return os.path.join(self.root, "butler.sqlite3")


def _setup_repo(root: str, n_visits: int) -> Any:
    from butler import Butler, DatasetType
    from butler.instrument import SimCam

    Butler.create(root)
    butler = Butler(root, writeable=True)
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("visit", [visit_record(v) for v in range(1, n_visits + 1)])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    return butler


def _build_core(ctx: Context) -> CoreRepo:
    root = os.path.join(ctx.tmpdir, "core-repo")
    butler = _setup_repo(root, N_VISITS)
    items = [(PAYLOAD, "metrics", {"instrument": INSTRUMENT, "visit": v, "detector": d})
             for v in QUERY_VISITS for d in QUERY_DETECTORS]
    refs = butler.put_many(items, run=QUERY_RUN)
    return CoreRepo(root, refs)


def core_repo(ctx: Context) -> CoreRepo:
    return ctx.fixture("core_repo", _build_core)


# -- the big registry -------------------------------------------------------------------------
def schema_digest() -> str:
    """A digest of the registry DDL (SQLite dialect), so a schema change rebuilds cached repos."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateTable

    from butler import DatasetType
    from butler.dimensions import DimensionUniverse
    from butler.registry._schema import SCHEMA_VERSION, RegistrySchema

    universe = DimensionUniverse.default()
    schema = RegistrySchema(universe, None)
    tags = schema.tags_table(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData")
                             .group(universe))
    h = hashlib.blake2b(digest_size=6)
    h.update(f"{SCHEMA_VERSION}:{universe.version}:{sa.__version__}".encode())
    for table in [*schema.static_tables(), tags]:
        h.update(str(CreateTable(table).compile(dialect=sqlite.dialect())).encode())
    return h.hexdigest()


def _fill_big(root: str, n: int, log: Any) -> None:
    """Create a repository with ``n`` datasets: 10 runs x 9 detectors x ceil(n/90) visits."""
    n_runs = 10
    n_visits = -(-n // (n_runs * len(DETECTORS)))
    butler = _setup_repo(root, n_visits)
    registry = butler.registry
    schema = registry.schema
    type_rec = registry.dataset_types.get("metrics")
    dims = type_rec.group.required
    chunk = 50_000
    made = 0
    now = time.time_ns()
    for r in range(n_runs):
        run_name = f"bench/big/{r:02d}"
        butler.register_run(run_name)
        run = registry.collections.get(run_name)
        ds_rows, tag_rows, file_rows = [], [], []
        with registry.db.transaction(write=True) as conn:
            for v in range(1, n_visits + 1):
                for d in DETECTORS:
                    if made >= n:
                        break
                    made += 1
                    dataset_id = uuid.uuid4()
                    ds_rows.append({"dataset_id": dataset_id, "dataset_type_id": type_rec.id, "run_id": run.id,
                                    "ingest_time": now})
                    values = {"instrument": INSTRUMENT, "visit": v, "detector": d}
                    row = {dim: values[dim] for dim in dims}
                    row.update(dataset_type_id=type_rec.id, dataset_id=dataset_id, collection_id=run.id)
                    tag_rows.append(row)
                    file_rows.append({"dataset_id": dataset_id, "component": "", "formatter": "json",
                                      "path": f"{run_name}/metrics/{v}/metrics_{INSTRUMENT}_{v}_{d}.json",
                                      "storage_class": "StructuredData", "checksum": None, "file_size": 60})
                    if len(ds_rows) >= chunk:
                        _flush(conn, schema, type_rec.tags, ds_rows, tag_rows, file_rows)
            _flush(conn, schema, type_rec.tags, ds_rows, tag_rows, file_rows)
        log(f"big repo: {made:,}/{n:,} datasets")


def _flush(conn: Any, schema: Any, tags: Any, ds_rows: list, tag_rows: list, file_rows: list) -> None:
    if ds_rows:
        conn.execute(schema.dataset.insert(), ds_rows)
        conn.execute(tags.insert(), tag_rows)
        conn.execute(schema.file_record.insert(), file_rows)
    ds_rows.clear()
    tag_rows.clear()
    file_rows.clear()


def big_repo(ctx: Context, n: int) -> str:
    """Root of a cached repository holding ``n`` datasets (built on first use)."""
    root, _ = cached_repo(ctx, f"open-{n}", f"v{BIG_REPO_VERSION}-{schema_digest()}",
                          lambda building: _fill_big(building, n, ctx.log) or {},
                          f"a registry with {n:,} datasets")
    return root


def cached_repo(ctx: Context, family: str, version: str, fill: Any, what: str, *,
                opened_here: bool = True) -> tuple[str, dict[str, Any]]:
    """A repository cached under ``.bench/cache/<family>-<version>``, built by ``fill(root)`` on first
    use -> (root, the dict ``fill`` returned). Stale versions of the family are dropped; the build
    happens in a temporary directory renamed into place, so an interrupted build is never used.
    ``opened_here=False``: ``fill`` built it in another process (another package's repository), so
    there is no engine of ours to close before the rename."""
    root = ctx.cache_dir / "cache" / f"{family}-{version}"
    marker = root / ".complete"
    if marker.exists():
        try:
            meta = json.loads(marker.read_text())
        except ValueError:  # a plain-text marker of an earlier version of this helper: complete all the same
            meta = {}
        return str(root), meta if isinstance(meta, dict) else {}
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{family}-*"):
        shutil.rmtree(old, ignore_errors=True)
    building = parent / (root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    ctx.log(f"building {what} in {root} (cached for later runs)")
    t0 = time.perf_counter()
    meta = dict(fill(str(building)))
    if opened_here:
        _forget_repo(str(building))
    os.replace(building, root)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps(meta))
    ctx.log(f"built in {meta['seconds']} s")
    return str(root), meta


def _forget_repo(root: str) -> None:
    """Close this process's engine on ``root`` (the directory is about to be renamed)."""
    from butler import _butler
    from butler._config import RepoConfig
    from butler.registry import _database

    url = RepoConfig.read(root).db_url
    for key in [k for k in _butler._REGISTRIES if k[0] == url]:
        _butler._REGISTRIES.pop(key, None)
    engine = _database._ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


def dir_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
