"""Spatial benchmarks (issue 4): skymap registration, visit definition, spatial queries, packers.

The fixture is a SQLite repository on local disk with SimCam (3x3 detectors) and a 120-ring
skymap: all of it (18,938 tracts, 1,893,800 patches) in a full run, 1,000 of its tracts with
``--quick``; registering it is the ``spatial.register_skymap`` figure. Then 1,000 exposures
scattered over 25 tracts get visits (``define_visits``), i.e. 1,000 visits x 9 detector regions.

* ``spatial.visit_detector_to_patches``: ``query_data_ids(["patch"], instrument=, visit=,
  detector=)``; baseline: a sqlite3 SELECT of the pixel-join candidates (no exact refinement).
* ``spatial.patch_to_visit_detectors``: ``query_data_ids(["visit", "detector"], skymap=, tract=,
  patch=)`` over patches that hold detectors; baseline: the same kind of sqlite3 SELECT.
* ``spatial.patches_of_tract``: ``query_data_ids(["patch"], skymap=, tract=)`` (100 data IDs);
  baseline: sqlite3 SELECT of the same rows.
* ``spatial.pack_unpack`` / ``spatial.pack_unpack_ratio``: pack + unpack of 10 million
  (tract, patch, band) IDs with the skymap's packer, and its ratio to bare numpy doing the same
  (shifts, ORs, masks, a code-point lookup table for the band) in the same run.
* ``spatial.define_visits``: ``define_visits`` of 1,000 exposures, each run in a fresh repository.
* ``spatial.register_skymap``: ``register_skymap`` of the whole skymap (one run: under a minute).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._runner import Context, Result, benchmark, measure, percentile

N_EXPOSURES = 1000
N_TRACTS_WITH_VISITS = 25
N_PACKED = 10_000_000
QUICK_TRACTS = 1000
BANDS = ("u", "g", "r", "i", "z", "y")


@dataclass
class SpatialRepo:
    root: str
    skymap: Any
    register_seconds: float
    define_seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    detectors: list[tuple[int, int]] = field(default_factory=list)  # (visit, detector)
    patches: list[tuple[int, int]] = field(default_factory=list)  # (tract, patch) holding detectors
    tracts: list[int] = field(default_factory=list)  # the tracts holding the visits
    registered: list[int] = field(default_factory=list)  # every registered tract
    register_cpu: float = 0.0
    load: float = 0.0  # 1-minute load average after the registration

    @property
    def sqlite_path(self) -> str:
        return os.path.join(self.root, "butler.sqlite3")


def _exposure_records(skymap: Any, n: int, seed: int = 4) -> tuple[list[dict], list[int]]:
    """``n`` SimCam exposures at random positions inside the inner boxes of a spread of tracts."""
    rng = np.random.default_rng(seed)
    tracts = np.unique(np.linspace(1, skymap.num_tracts - 2, N_TRACTS_WITH_VISITS).astype(int)).tolist()
    records = []
    for i in range(n):
        tract = skymap[tracts[i % len(tracts)]]
        inner = tract.inner_bbox
        x = rng.uniform(inner.x_min, inner.x_max)
        y = rng.uniform(inner.y_min, inner.y_max)
        ra, dec = tract.pixel_to_sky(x, y)
        band = BANDS[1 + i % 5]
        seconds = 3 * 3600 + i * 40
        begin = f"2026-11-24T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        records.append({"instrument": "SimCam", "id": i + 1, "physical_filter": f"SimCam-{band}",
                        "day_obs": 20261124, "obs_id": f"SC_{i + 1}", "exposure_time": 30.0, "begin": begin,
                        "end": begin, "tracking_ra": float(ra), "tracking_dec": float(dec),
                        "sky_angle": float(rng.uniform(0, 360))})
    return records, tracts


def _new_repo(root: str) -> Any:
    from butler import Butler
    from butler.instrument import SimCam

    Butler.create(root)
    butler = Butler(root, writeable=True)
    butler.register_instrument(SimCam())
    return butler


def _count(con: sqlite3.Connection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _build(ctx: Context) -> SpatialRepo:
    from butler.skymap import RingsSkyMap

    skymap = RingsSkyMap("rings120", num_rings=120)
    root = os.path.join(ctx.tmpdir, "spatial-repo")
    butler = _new_repo(root)
    records, tracts = _exposure_records(skymap, N_EXPOSURES)
    selection = None
    if ctx.quick:  # the tracts holding the visits and enough neighbours of tract 9000 to reach 1,000
        chosen, extra = set(tracts), iter(range(9000, skymap.num_tracts))
        while len(chosen) < QUICK_TRACTS:
            chosen.add(next(extra))
        selection = sorted(chosen)
    count = skymap.num_tracts if selection is None else len(selection)
    ctx.log(f"registering {count:,} tracts of {skymap} ({count * skymap.num_patches:,} patches)")
    t0, c0 = time.perf_counter(), time.process_time()
    butler.register_skymap(skymap, tracts=selection)
    register_seconds = time.perf_counter() - t0
    register_cpu = time.process_time() - c0  # SQLite works in this process: CPU time is most of the work
    ctx.log(f"registered in {register_seconds:.1f} s; defining {N_EXPOSURES} visits")
    butler.insert_dimension_records("exposure", records)
    t0 = time.perf_counter()
    butler.define_visits("SimCam")
    define_seconds = time.perf_counter() - t0
    repo = SpatialRepo(root, skymap, register_seconds, define_seconds, tracts=tracts,
                       registered=selection or list(range(skymap.num_tracts)), register_cpu=register_cpu,
                       load=os.getloadavg()[0])
    con = sqlite3.connect(repo.sqlite_path)
    try:
        for table in ("tract", "tract_skypix", "patch", "patch_skypix", "visit", "visit_detector_region",
                      "visit_detector_region_skypix"):
            repo.counts[table] = _count(con, table)
    finally:
        con.close()
    rng = np.random.default_rng(7)
    repo.detectors = [(int(v), int(d)) for v, d in zip(rng.integers(1, N_EXPOSURES + 1, 300), rng.integers(0, 9, 300))]
    found = set()
    for visit, detector in repo.detectors[:60]:
        for d in butler.query_data_ids(["patch"], instrument="SimCam", visit=visit, detector=detector):
            found.add((d["tract"], d["patch"]))
    repo.patches = sorted(found)
    return repo


def spatial_repo(ctx: Context) -> SpatialRepo:
    return ctx.fixture("spatial_repo", _build)


def _butler(root: str) -> Any:
    from butler import Butler

    return Butler(root)


def _raw(db_path: str, sql: str, params: list[tuple]) -> tuple[Any, sqlite3.Connection]:
    con = sqlite3.connect(db_path)

    def raw(i: int) -> None:
        con.execute(sql, params[i % len(params)]).fetchall()

    return raw, con


_CANDIDATES_FORWARD = """
SELECT DISTINCT p.skymap, p.tract, p.id, r.region, p.region
FROM visit_detector_region AS r
JOIN visit_detector_region_skypix AS a ON a.instrument = r.instrument AND a.visit = r.visit AND a.detector = r.detector
JOIN patch_skypix AS b ON b.pix = a.pix
JOIN patch AS p ON p.skymap = b.skymap AND p.tract = b.tract AND p.id = b.id
WHERE r.instrument = 'SimCam' AND r.visit = ? AND r.detector = ?
"""

_CANDIDATES_BACKWARD = """
SELECT DISTINCT r.visit, r.detector, r.region, p.region
FROM patch AS p
JOIN patch_skypix AS b ON b.skymap = p.skymap AND b.tract = p.tract AND b.id = p.id
JOIN visit_detector_region_skypix AS a ON a.pix = b.pix
JOIN visit_detector_region AS r ON r.instrument = a.instrument AND r.visit = a.visit AND r.detector = a.detector
WHERE p.skymap = ? AND p.tract = ? AND p.id = ?
"""


def _notes(repo: SpatialRepo) -> str:
    c = repo.counts
    return (f"{repo.skymap.name}: {c['tract']:,} tracts, {c['patch']:,} patches ({c['patch_skypix']:,} index rows); "
            f"{c['visit']:,} visits, {c['visit_detector_region']:,} visit+detector regions")


@benchmark("spatial.visit_detector_to_patches", unit="ms", target=1.0,
           description="query_data_ids(['patch'], instrument=, visit=, detector=) on 1,000 visits x 9 detectors and "
                       "a full rings skymap; baseline sqlite3 SELECT of the pixel-join candidates")
def bench_visit_detector_to_patches(ctx: Context) -> Result:
    repo = spatial_repo(ctx)
    butler = _butler(repo.root)
    pairs = repo.detectors
    n = ctx.size(600, 150)
    sizes = [len(butler.query_data_ids(["patch"], instrument="SimCam", visit=v, detector=d)) for v, d in pairs[:50]]

    def query(i: int) -> None:
        v, d = pairs[i % len(pairs)]
        butler.query_data_ids(["patch"], instrument="SimCam", visit=v, detector=d)

    samples = measure(query, n, warmup=30)
    raw, con = _raw(repo.sqlite_path, _CANDIDATES_FORWARD, pairs)
    try:
        base = measure(raw, n, warmup=30)
    finally:
        con.close()
    return Result.from_samples(samples, "ms", baseline_ns=base, baseline_label="sqlite3 SELECT of the candidates",
                               notes=f"{_notes(repo)}; {np.mean(sizes):.1f} patches per detector on average")


@benchmark("spatial.patch_to_visit_detectors", unit="ms", target=2.0,
           description="query_data_ids(['visit', 'detector'], skymap=, tract=, patch=) for patches holding "
                       "detectors; baseline sqlite3 SELECT of the pixel-join candidates")
def bench_patch_to_visit_detectors(ctx: Context) -> Result:
    repo = spatial_repo(ctx)
    butler = _butler(repo.root)
    patches = repo.patches
    name = repo.skymap.name
    n = ctx.size(600, 150)
    sizes = [len(butler.query_data_ids(["visit", "detector"], skymap=name, tract=t, patch=p)) for t, p in patches]

    def query(i: int) -> None:
        t, p = patches[i % len(patches)]
        butler.query_data_ids(["visit", "detector"], skymap=name, tract=t, patch=p)

    samples = measure(query, n, warmup=30)
    raw, con = _raw(repo.sqlite_path, _CANDIDATES_BACKWARD, [(name, t, p) for t, p in patches])
    try:
        base = measure(raw, n, warmup=30)
    finally:
        con.close()
    return Result.from_samples(samples, "ms", baseline_ns=base, baseline_label="sqlite3 SELECT of the candidates",
                               notes=f"{_notes(repo)}; {len(patches)} patches, {np.mean(sizes):.1f} visit+detectors "
                                     "per patch on average")


@benchmark("spatial.patches_of_tract", unit="ms", target=0.5,
           description="query_data_ids(['patch'], skymap=, tract=) (100 data IDs); baseline sqlite3 SELECT")
def bench_patches_of_tract(ctx: Context) -> Result:
    repo = spatial_repo(ctx)
    butler = _butler(repo.root)
    name = repo.skymap.name
    rng = np.random.default_rng(3)
    tracts = rng.choice(repo.registered, 500).tolist()
    n = ctx.size(1000, 200)
    assert len(butler.query_data_ids(["patch"], skymap=name, tract=tracts[0])) == repo.skymap.num_patches
    samples = measure(lambda i: butler.query_data_ids(["patch"], skymap=name, tract=tracts[i % len(tracts)]), n,
                      warmup=30)
    raw, con = _raw(repo.sqlite_path, "SELECT skymap, tract, id FROM patch WHERE skymap = ? AND tract = ? ORDER BY id",
                    [(name, t) for t in tracts])
    try:
        base = measure(raw, n, warmup=30)
    finally:
        con.close()
    return Result.from_samples(samples, "ms", baseline_ns=base, baseline_label="sqlite3 SELECT of the same rows",
                               notes=_notes(repo))


# -- packers -------------------------------------------------------------------------------------
def _pack_data(ctx: Context) -> dict[str, Any]:
    def build(ctx: Context) -> dict[str, Any]:
        from butler.skymap import RingsSkyMap

        skymap = RingsSkyMap("rings120", num_rings=120)
        packer = skymap.packer(bands=list(BANDS))
        rng = np.random.default_rng(11)
        data = {"tract": rng.integers(0, skymap.num_tracts, N_PACKED),
                "patch": rng.integers(0, skymap.num_patches, N_PACKED),
                "band": np.array(BANDS)[rng.integers(0, len(BANDS), N_PACKED)]}
        reps = ctx.size(7, 3)
        packer.unpack(packer.pack(data))  # warm-up (page faults of the output arrays)
        seconds, base, cpu = [], [], []
        for _ in range(reps):  # interleaved so drift hits both alike
            t0, c0 = time.perf_counter(), time.process_time()
            out = packer.unpack(packer.pack(data))
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            bare = _bare_numpy(data, packer)
            base.append(time.perf_counter() - t0)
        for key, value in data.items():
            if not np.array_equal(out[key], value) or not np.array_equal(bare[key], value):
                raise RuntimeError(f"{key} does not round-trip")
        return {"seconds": seconds, "base": base, "cpu": cpu, "n_bits": packer.n_bits}

    return ctx.fixture("pack_data", build)


def _bare_numpy(data: dict[str, np.ndarray], packer: Any) -> dict[str, np.ndarray]:
    """What the packer does, by hand: shifts, ORs and masks, band codes through a code-point table."""
    (_, patch_max), (_, band_max) = packer.fields[1:]
    patch_bits, band_bits = (patch_max - 1).bit_length(), (band_max - 1).bit_length()
    lut = np.zeros(128, dtype=np.uint64)
    for code, band in enumerate(packer.bands):
        lut[ord(band)] = code
    ids = data["tract"].astype(np.uint64) << np.uint64(patch_bits + band_bits)
    ids |= data["patch"].astype(np.uint64) << np.uint64(band_bits)
    ids |= np.take(lut, data["band"].view(np.uint32))
    return {"tract": (ids >> np.uint64(patch_bits + band_bits)).astype(np.int64),
            "patch": ((ids >> np.uint64(band_bits)) & np.uint64((1 << patch_bits) - 1)).astype(np.int64),
            "band": np.array(packer.bands)[(ids & np.uint64((1 << band_bits) - 1)).astype(np.int64)]}


@benchmark("spatial.pack_unpack", unit="s", target=0.5,
           description="pack + unpack of 10 million (tract, patch, band) IDs with the rings120 skymap's packer; "
                       "baseline bare numpy doing the same")
def bench_pack_unpack(ctx: Context) -> Result:
    data = _pack_data(ctx)
    return Result.from_samples([int(s * 1e9) for s in data["seconds"]], "s",
                               baseline_ns=[int(s * 1e9) for s in data["base"]],
                               baseline_label="bare numpy shifts/ORs/masks + band lookup table",
                               notes=f"{N_PACKED:,} IDs of {data['n_bits']} bits, int64 tract/patch and <U1 band "
                                     f"arrays in, the same out; CPU time median {percentile(data['cpu'], 50):.3f} s, "
                                     f"min {min(data['cpu']):.3f} s; load average {os.getloadavg()[0]:.1f} on "
                                     f"{os.cpu_count()} CPUs",
                               extra={"cpu_seconds": data["cpu"]})


@benchmark("spatial.pack_unpack_ratio", unit="x", target=1.5,
           description="pack + unpack time of 10 million IDs / bare numpy doing the same (same run)")
def bench_pack_unpack_ratio(ctx: Context) -> Result:
    data = _pack_data(ctx)
    mine, base = percentile(data["seconds"], 50), percentile(data["base"], 50)
    return Result(value=mine / base, p90=percentile(data["seconds"], 90) / percentile(data["base"], 10),
                  n=len(data["seconds"]),
                  notes=f"median {mine:.3f} s vs {base:.3f} s (p90 column: p90 of the packer / p10 of numpy)")


# -- bulk ----------------------------------------------------------------------------------------
@benchmark("spatial.define_visits", unit="s", target=5.0,
           description="define_visits of 1,000 SimCam exposures (9,000 detector regions), each run in a fresh "
                       "repository")
def bench_define_visits(ctx: Context) -> Result:
    from butler.skymap import RingsSkyMap

    skymap = RingsSkyMap("rings120", num_rings=120)
    records, _ = _exposure_records(skymap, N_EXPOSURES)
    samples, cpu = [], []
    for rep in range(ctx.size(3, 2)):
        butler = _new_repo(ctx.scratch(f"define-visits-{rep}"))
        butler.insert_dimension_records("exposure", records)
        t0, c0 = time.perf_counter_ns(), time.process_time()
        count = butler.define_visits("SimCam")
        samples.append(time.perf_counter_ns() - t0)
        cpu.append(time.process_time() - c0)
        assert count == N_EXPOSURES
    return Result.from_samples(samples, "s", notes=f"{N_EXPOSURES} visits x 9 detectors; regions, index rows and "
                                                   "visit_definition rows written in one transaction; CPU time "
                                                   f"{percentile(cpu, 50):.2f} s",
                               extra={"cpu_seconds": cpu})


@benchmark("spatial.register_skymap", unit="s", target=60.0,
           description="register_skymap of a whole 120-ring skymap (18,938 tracts, 1,893,800 patches; 1,000 of its "
                       "tracts with --quick), regions and spatial index included; one run")
def bench_register_skymap(ctx: Context) -> Result:
    repo = spatial_repo(ctx)
    c = repo.counts
    return Result(value=repo.register_seconds, n=1,
                  notes=f"{repo.skymap.name}: {c['tract']:,} tracts + {c['tract_skypix']:,} index rows, "
                        f"{c['patch']:,} patches + {c['patch_skypix']:,} index rows; CPU time of this process "
                        f"{repo.register_cpu:.1f} s (SQLite included); load average {repo.load:.1f} on "
                        f"{os.cpu_count()} CPUs",
                  extra={**c, "cpu_seconds": repo.register_cpu, "load_average": repo.load})
