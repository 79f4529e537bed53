"""Orchestration benchmarks (issue 6): planning a coadd build, per-quantum overhead, the completion
check of a resume, and the Dask executor's overhead over a bare ``client.map``.

* ``orchestration.plan_coadd`` / ``orchestration.plan_coadd_memory``: plan calibrate -> warp -> coadd
  (the no-op tasks of ``orchestration.testing`` with the demo's connection shapes) for one tract of
  100 patches from 500 one-degree visits x 9 detectors in 6 bands scattered over the tract. The
  repository (one ~6.7-degree tract of a 26-ring rings skymap, a 1-degree 3x3 camera
  "BenchCam" with filters ugrizy, 500 exposures/visits and 4,500 tiny ``raw`` datasets) is built
  once and cached under ``.bench/cache/``. ``--quick``: 100 visits on a one-tract discrete skymap.
* ``orchestration.quantum_overhead``: AddTask quanta run one after another in this process through
  the worker function (read the input, run, write the output file) and registered in batches of
  500 like the executor does; the task's own ``run`` time is subtracted.
* ``orchestration.completion_check_100k``: the resume check (``Planner._apply_existing``, one
  ``find_many`` per output type, then one query of the provenance records of the quanta that
  wrote those outputs, compared with each quantum's inputs) of 100k quanta whose outputs all
  exist in the output run with matching provenance (a cached registry filled with bulk SQL).
* ``orchestration.executor_overhead``: 10k no-op quanta (1k with ``--quick``) on a LocalCluster
  of 2 worker processes: ``DaskExecutor.run`` (graph, as_completed, batched registration,
  provenance) over a bare ``client.map`` of the same worker function on the same quanta, same
  cluster, same run of the benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ._fixtures import cached_repo, schema_digest
from ._runner import Context, Result, benchmark, percentile

COADD_VERSION = "3"  # 3: repos built since the butler ANALYZEs after bulk loads
COMPLETION_VERSION = "3"  # 2: with the quantum records of the outputs (provenance check); 3: covering index
RAW_RUN = "BenchCam/raw/all"
BANDS = "ugrizy"


# -- the coadd-planning repository -------------------------------------------------------------
def bench_camera() -> Any:
    """SimCam's 3x3 layout at 1.2 arcsec/pixel (about 1.05 degrees across) with six filters."""
    from butler.instrument import SimCam
    from butler.instrument._instrument import VisitDetectorInstrument

    definition = SimCam().definition()
    definition["name"] = "BenchCam"
    definition["class_name"] = None
    definition["filters"] = [{"name": f"BenchCam-{b}", "band": b} for b in BANDS]
    for det in definition["detectors"]:
        det["pixel_scale_arcsec"] = 1.2
    return VisitDetectorInstrument.from_definition(definition)


@dataclass
class CoaddRepo:
    root: str
    tract: int
    n_visits: int

    @property
    def where(self) -> str:
        return f"skymap = 'bench' AND tract = {self.tract}"


def _fill_coadd(root: str, quick: bool, log: Any) -> tuple[int, int]:
    import numpy as np

    from butler import Butler, DatasetType
    from butler.skymap import DiscreteSkyMap, RingsSkyMap

    butler = Butler.create(root)
    butler.register_instrument(bench_camera())
    if quick:
        skymap = DiscreteSkyMap("bench", [(32.727273, 3.333333)], radius_deg=3.3, patch_grid=(10, 10))
        tract = 0
    else:
        skymap = RingsSkyMap("bench", 26, patch_grid=(10, 10))  # 995 tracts of about 6.7 x 6.7 degrees
        tract = int(skymap.find_tract(30.0, 0.0))
    t0 = time.perf_counter()
    try:
        butler.register_skymap(skymap, tracts=[tract])  # only the tract we plan on
    except TypeError:  # a butler without incremental registration: every tract
        butler.register_skymap(skymap)
    log(f"registered skymap {skymap!r} in {time.perf_counter() - t0:.1f} s")
    n_visits = 100 if quick else 500
    rng = np.random.default_rng(20261124)
    info = skymap[tract]
    inner = info.inner_bbox
    x = rng.uniform(inner.x_min, inner.x_max, n_visits)
    y = rng.uniform(inner.y_min, inner.y_max, n_visits)
    ra, dec = info.pixel_to_sky(x, y)
    bands = rng.choice(list(BANDS), n_visits)
    angles = rng.uniform(0.0, 90.0, n_visits)
    exposures = []
    for i in range(n_visits):
        minute = i * 2
        begin = f"2026-11-24T{minute // 60 % 24:02d}:{minute % 60:02d}:00"
        end = f"2026-11-24T{minute // 60 % 24:02d}:{minute % 60:02d}:30"
        exposures.append({"instrument": "BenchCam", "id": i, "obs_id": f"BC{i:06d}", "exposure_time": 30.0,
                          "physical_filter": f"BenchCam-{bands[i]}", "day_obs": 20261124, "begin": begin,
                          "end": end, "observation_type": "science", "tracking_ra": float(ra[i]),
                          "tracking_dec": float(dec[i]), "sky_angle": float(angles[i])})
    butler.insert_dimension_records("exposure", exposures)
    butler.define_visits("BenchCam")
    butler.register_dataset_type(DatasetType("raw", ("instrument", "exposure", "detector"), "StructuredData"))
    butler.put_many([({"exposure": i, "detector": d}, "raw", {"instrument": "BenchCam", "exposure": i, "detector": d})
                     for i in range(n_visits) for d in range(9)], run=RAW_RUN)
    return tract, n_visits


def coadd_repo(ctx: Context) -> CoaddRepo:
    def build(ctx: Context) -> CoaddRepo:
        def fill(building: str) -> dict[str, Any]:
            tract, n_visits = _fill_coadd(building, ctx.quick, ctx.log)
            return {"tract": tract, "n_visits": n_visits}

        root, meta = cached_repo(ctx, f"plan-coadd-{'quick' if ctx.quick else 'full'}",
                                 f"v{COADD_VERSION}-{schema_digest()}", fill, "the coadd-planning repository")
        return CoaddRepo(root, meta["tract"], meta["n_visits"])

    return ctx.fixture("coadd_repo", build)


def coadd_pipeline() -> Any:
    from orchestration import Pipeline
    from orchestration.testing import CalibrateTask, CoaddTask, WarpTask

    return (Pipeline("no-op coadd build").add_task("calibrate", CalibrateTask).add_task("warp", WarpTask)
            .add_task("coadd", CoaddTask))


def analyzed_copy(ctx: Context) -> CoaddRepo:
    """The registry of the coadd repository copied to scratch (planning reads no dataset file) with
    SQLite statistics (``ANALYZE``), which the butler does not gather after its bulk loads."""

    def build(ctx: Context) -> CoaddRepo:
        import sqlite3

        repo = coadd_repo(ctx)
        root = ctx.scratch("coadd-analyzed")
        for name in ("butler.yaml", "butler.sqlite3"):
            shutil.copy(os.path.join(repo.root, name), os.path.join(root, name))
        con = sqlite3.connect(os.path.join(root, "butler.sqlite3"))
        try:
            con.execute("ANALYZE")
            con.commit()
        finally:
            con.close()
        return CoaddRepo(root, repo.tract, repo.n_visits)

    return ctx.fixture("coadd_repo_analyzed", build)


def _plan_timing(ctx: Context, repo: CoaddRepo) -> Result:
    from butler import Butler
    from orchestration import Planner

    butler = Butler(repo.root, writeable=True)
    pipeline = coadd_pipeline()

    def build() -> Any:
        return Planner(butler).build(pipeline, inputs=[RAW_RUN], output_run="bench/coadd", where=repo.where)

    t0 = time.perf_counter_ns()
    plan = build()
    first = time.perf_counter_ns() - t0
    samples = []
    for _ in range(ctx.size(5, 3) if first < 5e9 else 1):  # one more when it is hopelessly slow
        t0 = time.perf_counter_ns()
        build()
        samples.append(time.perf_counter_ns() - t0)
    counts = {label: c["run"] for label, c in plan.counts().items()}
    res = Result.from_samples(samples, "s", notes=f"{repo.n_visits} visits; quanta {counts}; first build "
                                                  f"{first / 1e9:.2f} s")
    res.extra.update(quanta=counts, first_build_s=first / 1e9)
    return res


@benchmark("orchestration.plan_coadd", unit="s", target=1.5,
           description="plan calibrate->warp->coadd: 1 tract x 100 patches x 6 bands from 500 1-degree "
                       "visits x 9 detectors, on the repository as the butler leaves it")
def bench_plan_coadd(ctx: Context) -> Result:
    return _plan_timing(ctx, coadd_repo(ctx))


@benchmark("orchestration.plan_coadd_analyzed", unit="s", target=1.5,
           description="the same plan after SQLite ANALYZE of the registry (what the planner itself costs)")
def bench_plan_coadd_analyzed(ctx: Context) -> Result:
    return _plan_timing(ctx, analyzed_copy(ctx))


_MEMORY_CODE = """
import json, os, sys, time, tracemalloc
from butler import Butler
from orchestration import Planner
from benchmarks.bench_orchestration import RAW_RUN, coadd_pipeline

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak_rss():
    # VmHWM is this address space's high-water mark. Not getrusage's ru_maxrss: that survives
    # fork+exec, so a child of a 580 MB benchmark process would report 580 MB whatever it does.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

root, where = sys.argv[1], sys.argv[2]
butler = Butler(root, writeable=True)
pipeline = coadd_pipeline()
import distributed, numpy, sqlalchemy  # noqa: F401 - everything imported before the baseline
base = rss()
plan = Planner(butler).build(pipeline, inputs=[RAW_RUN], output_run="bench/coadd", where=where)
high = peak_rss()
after = rss()
del plan
tracemalloc.start()
plan = Planner(butler).build(pipeline, inputs=[RAW_RUN], output_run="bench/coadd", where=where)
current, peak = tracemalloc.get_traced_memory()
print(json.dumps({"base": base, "high": high, "after": after, "traced_peak": peak, "traced_plan": current,
                  "quanta": len(plan.quanta)}))
"""


@benchmark("orchestration.plan_coadd_memory", unit="MB", target=150,
           description="memory above the process baseline while planning the coadd build (peak RSS in a fresh "
                       "process, repository as the butler leaves it; the analyzed copy in the notes)")
def bench_plan_coadd_memory(ctx: Context) -> Result:
    mb = 1024 * 1024
    out = _run_memory(coadd_repo(ctx))
    analyzed = _run_memory(analyzed_copy(ctx))

    def delta(o: dict[str, Any]) -> float:
        return (max(o["high"], o["after"]) - o["base"]) / mb

    return Result(value=delta(out), n=1,
                  notes=f"RSS {out['base'] / mb:.0f} MB before, peak {out['high'] / mb:.0f} MB; tracemalloc peak "
                        f"{out['traced_peak'] / mb:.0f} MB (the plan itself {out['traced_plan'] / mb:.0f} MB) "
                        f"for {out['quanta']:,} quanta; after ANALYZE: {delta(analyzed):.0f} MB above the baseline",
                  extra={"as_is": out, "analyzed": analyzed})


def _run_memory(repo: CoaddRepo) -> dict[str, Any]:
    import subprocess
    import sys

    from ._runner import PROJECT_ROOT

    env = dict(os.environ, BUTLER_USER=os.environ.get("BUTLER_USER", "bench"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CODE, repo.root, repo.where], capture_output=True,
                          text=True, env=env, timeout=600, cwd=str(PROJECT_ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- per-quantum overhead -------------------------------------------------------------------------
def _metrics_repo(ctx: Context, name: str, n: int) -> Any:
    from butler import Butler
    from orchestration.testing import make_metrics_repo

    root = os.path.join(ctx.tmpdir, name)
    butler = Butler.create(root)
    make_metrics_repo(butler, visits=-(-n // 9), detectors=9)
    return Butler(root, writeable=True)


@benchmark("orchestration.quantum_overhead", unit="ms", target=2.0,
           description="framework time per quantum in one process: read the input, write the output file, "
                       "register in batches of 500 with provenance (task time subtracted)")
def bench_quantum_overhead(ctx: Context) -> Result:
    from orchestration import Pipeline, Planner, prepare_run
    from orchestration._execute import ButlerConfig, execute_quantum
    from orchestration._executor import _Registrar
    from orchestration.testing import AddTask

    n = ctx.size(2_000, 500)
    butler = _metrics_repo(ctx, "overhead-repo", n + 200)
    plan = Planner(butler).build(Pipeline().add_task("add", AddTask), inputs=["in"], output_run="bench/overhead")
    prepare_run(plan, butler)
    config = ButlerConfig(butler.root, (plan.output_run, "in"))
    task_def = plan.task_def("add")
    quanta = plan.to_run()
    registrar = _Registrar(butler, plan)

    def run(batch: list[Any]) -> int:
        t0 = time.perf_counter_ns()
        pending = []
        for q in batch:
            pending.append(execute_quantum(config, task_def, q))
            if len(pending) >= 500:
                registrar.register(pending, [])
                pending = []
        registrar.register(pending, [])
        return time.perf_counter_ns() - t0

    run(quanta[:200])  # warm-up: worker butler, caches, directories
    measured = quanta[200:200 + n]
    total = run(measured)
    task = task_def.make_task()
    source = butler.get(measured[0].inputs["source"][0])
    t0 = time.perf_counter_ns()
    for _ in range(n):
        task.run(source)
    task_ns = (time.perf_counter_ns() - t0) / n
    per = total / n - task_ns
    res = Result(value=per / 1e6, n=n, notes=f"{n} quanta in {total / 1e9:.2f} s; task.run {task_ns / 1e3:.1f} us "
                                          "each (subtracted)")
    res.extra.update(total_s=total / 1e9, task_us=task_ns / 1e3)
    return res


# -- the completion check -------------------------------------------------------------------------
def completion_repo(ctx: Context, n: int) -> str:
    """A cached registry with ``n`` 'added' datasets in the run bench/done (bulk SQL, fake files), each
    with the quantum record that wrote it from the input id ``completion_input_id(i)``."""

    def build(ctx: Context) -> str:
        return cached_repo(ctx, f"completion-{n}", f"v{COMPLETION_VERSION}-{schema_digest()}",
                           lambda building: _fill_completion(building, n) or {},
                           f"a registry with {n:,} existing outputs")[0]

    return ctx.fixture(f"completion_repo_{n}", build)


def completion_input_id(i: int) -> uuid.UUID:
    """The (never registered) input dataset id of the i-th quantum of the completion registry."""
    return uuid.UUID(int=i + 1)


def _fill_completion(root: str, n: int) -> None:
    from butler import Butler, DatasetType
    from butler.instrument import SimCam

    butler = Butler.create(root)
    butler.register_instrument(SimCam())
    n_visits = -(-n // 9)
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": v, "physical_filter": "SimCam-r", "day_obs": 20261124} for v in range(n_visits)
    ])
    butler.register_dataset_type(DatasetType("added", ("instrument", "visit", "detector"), "StructuredData"))
    butler.register_run("bench/done")
    registry = butler.registry
    schema = registry.schema
    type_rec = registry.dataset_types.get("added")
    run = registry.collections.get("bench/done")
    now = time.time_ns()
    ds, tags, files, quanta, written = [], [], [], [], []
    for v in range(n_visits):
        for d in range(9):
            if len(ds) >= n:
                break
            dataset_id, quantum_id = uuid.uuid4(), uuid.uuid4()
            quanta.append({"quantum_id": quantum_id, "run_id": run.id, "task": "add", "status": "succeeded",
                           "data_id": json.dumps({"instrument": "SimCam", "visit": v, "detector": d}),
                           "inputs": json.dumps([completion_input_id(len(ds)).hex])})
            written.append({"dataset_id": dataset_id, "quantum_id": quantum_id})
            ds.append({"dataset_id": dataset_id, "dataset_type_id": type_rec.id, "run_id": run.id, "ingest_time": now})
            tags.append({"dataset_type_id": type_rec.id, "dataset_id": dataset_id, "collection_id": run.id,
                         "instrument": "SimCam", "visit": v, "detector": d})
            files.append({"dataset_id": dataset_id, "component": "", "formatter": "json",
                          "path": f"bench/done/added/{v}/added_{v}_{d}.json", "storage_class": "StructuredData",
                          "checksum": None, "file_size": 60})
    with registry.db.transaction(write=True) as conn:
        for start in range(0, len(ds), 50_000):
            conn.execute(schema.dataset.insert(), ds[start:start + 50_000])
            conn.execute(type_rec.tags.insert(), tags[start:start + 50_000])
            conn.execute(schema.file_record.insert(), files[start:start + 50_000])
            conn.execute(schema.quantum.insert(), quanta[start:start + 50_000])
            conn.execute(schema.quantum_output.insert(), written[start:start + 50_000])


@benchmark("orchestration.completion_check_100k", unit="s", target=1.0,
           description="resume completion check of 100k quanta (10k with --quick) whose outputs all exist "
                       "with matching provenance: Planner._apply_existing, one bulk lookup per output type "
                       "and one of the outputs' quantum records")
def bench_completion_check(ctx: Context) -> Result:
    from butler import Butler, DataCoordinate, DatasetRef
    from orchestration import Pipeline, Planner
    from orchestration._plan import Quantum
    from orchestration.testing import AddTask

    n = ctx.size(100_000, 10_000)
    root = completion_repo(ctx, n)
    butler = Butler(root, writeable=True)
    universe = butler.universe
    group = universe.group(AddTask.dimensions)
    task_def = Pipeline().add_task("add", AddTask).task_defs()[0]
    outputs = AddTask.outputs()
    dataset_type = outputs["added"].to_dataset_type()
    input_type = AddTask.inputs()["source"].to_dataset_type()
    planner = Planner(butler)

    def make_quanta() -> list[Any]:
        quanta = []
        for i in range(n):
            v, d = divmod(i, 9)
            values = {"instrument": "SimCam", "visit": v, "detector": d}
            coord = DataCoordinate.from_values(group, tuple(values[k] for k in group.required))
            source = DatasetRef._trusted(input_type, coord, "in", completion_input_id(i))
            quanta.append(Quantum(i, "add", coord, {"source": (source,)},
                                  {"added": DatasetRef._trusted(dataset_type, coord, "bench/done", uuid.uuid4())}))
        return quanta

    samples = []
    for _ in range(ctx.size(5, 3)):
        quanta = make_quanta()
        t0 = time.perf_counter_ns()
        planner._apply_existing(task_def, quanta, outputs, ["bench/done"], [], resume=True, extend_run=True,
                                clobber_outputs=False)
        samples.append(time.perf_counter_ns() - t0)
        skipped = sum(q.status == "skip" and q.reason == "outputs exist (resume)" for q in quanta)
        if skipped != n:
            raise RuntimeError(f"{skipped} of {n} quanta found complete")
    return Result.from_samples(samples, "s", notes=f"{n:,} quanta, all complete (provenance checked)")


# -- executor overhead ---------------------------------------------------------------------------------
@benchmark("orchestration.executor_overhead", unit="x", target=1.2,
           description="DaskExecutor.run of 10k no-op quanta (1k with --quick) / a bare client.map of the same "
                       "worker function on the same LocalCluster (2 processes)")
def bench_executor_overhead(ctx: Context) -> Result:
    from distributed import Client, LocalCluster, wait

    from orchestration import DaskExecutor, Pipeline, Planner, prepare_run
    from orchestration._execute import ButlerConfig, execute_quantum
    from orchestration.testing import NoOpTask

    n = ctx.size(10_000, 1_000)
    reps = ctx.size(2, 1)
    butler = _metrics_repo(ctx, "executor-repo", n)
    n = -(-n // 9) * 9  # whole visits of 9 detectors
    pipeline = Pipeline().add_task("noop", NoOpTask)

    def plan_for(run: str) -> Any:
        return Planner(butler).build(pipeline, inputs=["in"], output_run=run)

    executor_s, map_s = [], []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        # Warm-up: workers open the butler and import the task.
        DaskExecutor(client, progress=False).run(Planner(butler).build(pipeline, inputs=["in"], output_run="warm",
                                                                       where="visit < 20"), butler)
        for r in range(reps):
            base_plan = plan_for(f"bench/map/{r}")
            prepare_run(base_plan, butler)
            config = ButlerConfig(butler.root, (base_plan.output_run, "in"))
            task_def = base_plan.task_def("noop")
            quanta = base_plan.to_run()
            t0 = time.perf_counter()
            futures = client.map(execute_quantum, [config] * len(quanta), [task_def] * len(quanta), quanta,
                                 pure=False)
            wait(futures)
            map_s.append(time.perf_counter() - t0)
            if any(f.status != "finished" for f in futures):
                raise RuntimeError("the bare client.map had failures")
            del futures

            plan = plan_for(f"bench/executor/{r}")
            t0 = time.perf_counter()
            report = DaskExecutor(client, progress=False).run(plan, butler)
            executor_s.append(time.perf_counter() - t0)
            ctx.log(f"run {r}: bare client.map {map_s[-1]:.2f} s, DaskExecutor.run {executor_s[-1]:.2f} s")
            if not report.ok or report.succeeded != len(quanta):
                raise RuntimeError(report.summary())
    ex, base = percentile(executor_s, 50), percentile(map_s, 50)
    res = Result(value=ex / base, n=reps,
                 notes=f"{n:,} quanta: executor {ex:.2f} s ({ex / n * 1e3:.2f} ms/quantum), bare client.map "
                       f"{base:.2f} s ({base / n * 1e3:.2f} ms/quantum)")
    res.extra.update(executor_s=executor_s, map_s=map_s)
    return res
