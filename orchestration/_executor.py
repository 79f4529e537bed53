"""The Dask executor: one graph for the whole plan, outputs registered in batches by the driver.

The plan becomes a single dict graph (one task per quantum whose arguments are its upstream
quanta's keys) submitted with one ``Client.get``; the driver polls the futures, gathers what
finished in batches and registers outputs and provenance in batches, so workers never write to the
registry (SQLite works with many workers; PostgreSQL sees few transactions). A failing quantum
errs its downstream quanta ("blocked") while unrelated work continues; the report lists the
failures with their tracebacks and the command that resumes the run.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from butler import Butler, DatasetRef

from ._execute import ButlerConfig, QuantumFailure, QuantumResult, execute_quantum, running_quanta
from ._plan import RUN, Plan
from ._provenance import write_init_outputs

__all__ = ["DaskExecutor", "ExecutionReport", "check_picklable", "prepare_run"]


@dataclass
class ExecutionReport:
    succeeded: int = 0
    no_work: int = 0
    skipped: int = 0
    failed: list[QuantumFailure] = field(default_factory=list)
    blocked: list[int] = field(default_factory=list)
    seconds: float = 0.0
    resume_command: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def summary(self) -> str:
        lines = [(f"{self.succeeded} quanta succeeded ({self.no_work} with nothing to do), {self.skipped} skipped, "
                 f"{len(self.failed)} failed, {len(self.blocked)} blocked by failures, in {self.seconds:.1f} s")]
        for f in self.failed:
            lines.append(f"FAILED {f.task} {f.data_id}: {f.error}")
            lines.append("  " + f.tb.strip().replace("\n", "\n  "))
        if not self.ok and self.resume_command:
            lines.append(f"to retry what failed: {self.resume_command}")
        return "\n".join(lines)


def check_picklable(plan: Plan) -> None:
    """Every task (class and config) must travel to workers: fail before anything is written."""
    import cloudpickle

    from ._pipeline import PipelineError

    for d in plan.tasks:
        try:
            cloudpickle.dumps(d)
        except Exception as err:  # noqa: BLE001 - pickling raises anything (TypeError, PicklingError...)
            raise PipelineError(
                f"{d.label}: the task {d.class_path} with its config cannot be pickled to send it to Dask "
                f"workers ({type(err).__name__}: {err}); config fields must be plain values"
            ) from None


def prepare_run(plan: Plan, butler: Butler) -> None:
    """Check the tasks pickle, register output dataset types, create the run, write init-outputs,
    clean up leftovers (partial outputs to clobber, files a killed execution of this run left).

    Raises :class:`butler.errors.RunLockedError` while another process executes the same run: its
    unregistered outputs would look like leftovers here.
    """
    check_picklable(plan)
    run = plan.output_run
    butler.check_run_access(run)  # an existing run must be ours: checked before any write
    with butler.lock_run(run):
        _prepare_locked(plan, butler)


def _prepare_locked(plan: Plan, butler: Butler) -> None:
    run = plan.output_run
    for d in plan.tasks:
        for conn in d.task_class.outputs().values():
            butler.register_dataset_type(conn.to_dataset_type())
    butler.register_run(run)
    write_init_outputs(plan, butler)
    clobber = [ref for q in plan.quanta if q.status == RUN for ref in q.context.get("clobber", ())]
    if clobber:
        butler.remove(clobber)
    butler.cleanup([run])  # what a killed execution of this run journaled and never registered


PREFETCH_BATCH = 5_000
"""Inputs brought from an upstream per bundle (`prefetch_inputs`)."""


def prefetch_inputs(plan: Plan, butler: Butler) -> int:
    """Bring the inputs of the quanta to run that only the butler's upstream has into its repository
    before execution, a bundle per `PREFETCH_BATCH` refs (verified, ids kept), so that workers read
    everything locally; returns how many were fetched. Nothing to do without an upstream."""
    if butler.upstream is None:
        return 0
    produced = {ref.id for q in plan.quanta for ref in q.outputs.values()}
    wanted = {ref.id: ref for q in plan.quanta if q.status == RUN for refs in q.inputs.values() for ref in refs
              if ref.id not in produced}
    if not wanted:
        return 0
    here = butler.reader.files_of(list(wanted))
    missing = [ref for ref_id, ref in wanted.items() if ref_id not in here]
    for i in range(0, len(missing), PREFETCH_BATCH):
        butler.fetch_from_upstream(missing[i:i + PREFETCH_BATCH])
    return len(missing)


class DaskExecutor:
    """Runs plans on a ``distributed.Client`` (LocalCluster, a scheduler address, dask-jobqueue...)."""

    def __init__(self, client: Any, *, retries: int = 0, batch_size: int = 500, flush_seconds: float = 0.25,
                 poll_seconds: float = 0.05, progress: bool | None = None, resume_command: str = "") -> None:
        self.client = client
        self.poll_seconds = poll_seconds
        self.retries = retries
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.progress = _interactive() if progress is None else progress
        self.resume_command = resume_command

    def graph(self, plan: Plan, config: ButlerConfig, prefix: str = "q") -> tuple[dict[str, Any], list[str]]:
        """The dict graph: ``<prefix>-<index>`` -> (execute_quantum, config, task def, quantum, *upstream keys)."""
        defs = {d.label: d for d in plan.tasks}
        runs = {q.index for q in plan.quanta if q.status == RUN}
        dsk: dict[str, Any] = {}
        for q in plan.quanta:
            if q.index not in runs:
                continue
            deps = [f"{prefix}-{u}" for u in q.upstream if u in runs]
            dsk[f"{prefix}-{q.index}"] = (execute_quantum, config, defs[q.task], q, *deps)
        return dsk, list(dsk)

    def run(self, plan: Plan, butler: Butler) -> ExecutionReport:
        """Execute the plan's quanta to run; raises ``RunLockedError`` while another process runs it."""
        start = time.perf_counter()
        with butler.lock_run(plan.output_run):  # held until every result is registered
            return self._run_locked(plan, butler, start)

    def _run_locked(self, plan: Plan, butler: Butler, start: float) -> ExecutionReport:
        prepare_run(plan, butler)
        prefetch_inputs(plan, butler)
        # Journal every output the workers may write before they start, so that whatever a crash
        # leaves unregistered is known to be this run's (butler.cleanup); registration clears it.
        butler.intend_writes([ref for q in plan.quanta if q.status == RUN for ref in q.outputs.values()])
        config = ButlerConfig(butler.root, (plan.output_run, *plan.input_collections))  # inputs are local by now
        # Keys unique to this execution: a later run on the same client must never be answered
        # with results of an earlier one that the scheduler has not forgotten yet.
        prefix = f"q{uuid.uuid4().hex[:12]}"
        dsk, keys = self.graph(plan, config, prefix)
        report = ExecutionReport(skipped=len(plan.quanta) - len(keys), resume_command=self.resume_command)
        if not keys:
            report.seconds = time.perf_counter() - start
            return report
        futures = self.client.get(dsk, keys, sync=False, retries=self.retries)
        index_of = {f.key: int(f.key.rpartition("-")[2]) for f in futures}
        accounts = _Accounts(plan, report, _Registrar(butler, plan))
        completion = _Completion(futures, self.poll_seconds)
        last_flush = time.monotonic()
        bar = _progress(len(keys)) if self.progress else None
        finished = False
        try:
            for batch in completion.batches():
                # A result lost with a dead worker since the poll sends its future back to pending:
                # Dask recomputes it, so it is waited for again.
                lost = [f for f in batch if f.status not in _TERMINAL]
                if lost:
                    completion.requeue(lost)
                    batch = [f for f in batch if f.status in _TERMINAL]
                batch.sort(key=lambda f: index_of[f.key])  # upstream before downstream: blocked, not failed
                done = [f for f in batch if f.status == "finished"]
                results = dict(zip([f.key for f in done], self.client.gather(done))) if done else {}
                for future in batch:
                    accounts.consume(future, results, index_of[future.key])
                    future.release()
                if bar is not None:
                    bar.update(len(batch))
                if len(accounts.pending) >= self.batch_size or time.monotonic() - last_flush > self.flush_seconds:
                    accounts.flush()
                    last_flush = time.monotonic()
            finished = True
        finally:
            if not finished:  # Ctrl-C or a lost scheduler: stop the run's tasks before the lock goes
                _cancel_and_drain(self.client, futures, butler.root, plan.output_run)
            accounts.flush()
            if bar is not None:
                bar.close()
        butler.cleanup([plan.output_run])  # partial outputs of failed quanta, intents of no-work ones
        report.seconds = time.perf_counter() - start
        return report


_TERMINAL = ("finished", "error", "cancelled")


class _Accounts:
    """What became of each finished future: a result to register, a failure, or a blocked quantum
    (one whose upstream failed: not run, not recorded)."""

    def __init__(self, plan: Plan, report: ExecutionReport, registrar: _Registrar) -> None:
        self.plan = plan
        self.report = report
        self.registrar = registrar
        self.pending: list[QuantumResult] = []
        self.failed_records: list[dict[str, Any]] = []
        self.failed: set[int] = set()
        self.blocked: set[int] = set()

    def consume(self, future: Any, results: dict[Any, QuantumResult], index: int) -> None:
        if future.key in results:
            result = results[future.key]
            self.pending.append(result)
            self.report.succeeded += 1
            self.report.no_work += bool(result.no_work)
            return
        q = self.plan.quanta[index]
        if future.status == "cancelled":
            exc: BaseException | None = None
            failure = QuantumFailure(index, q.task, str(q.data_id), "CancelledError: cancelled by the Dask scheduler "
                                     "(client restarted or connection lost); --resume runs it again", "")
        else:
            exc = future.exception()
            failure = exc if isinstance(exc, QuantumFailure) else QuantumFailure(
                index, q.task, str(q.data_id), f"{type(exc).__name__}: {exc}", "".join(_format_tb(future)))
        # Dask hands a failure to every dependent: blame the quantum it came from.
        blamed_key = getattr(exc, "task", None) if isinstance(exc, _killed_worker()) else None  # killed the workers
        if (isinstance(exc, QuantumFailure) and exc.index != index) or \
                (blamed_key is not None and blamed_key != future.key) or \
                any(u in self.failed or u in self.blocked for u in q.upstream):
            self.report.blocked.append(index)
            self.blocked.add(index)
            return
        self.report.failed.append(failure)
        self.failed.add(index)
        self.failed_records.append(self.registrar.failure_record(index, failure))

    def flush(self) -> None:
        self.registrar.register(self.pending, self.failed_records)
        self.pending, self.failed_records = [], []


def _killed_worker() -> type:
    from distributed.scheduler import KilledWorker

    return KilledWorker


def _cancel_and_drain(client: Any, futures: list[Any], root: str, run: str, timeout: float = 60.0) -> None:
    """Cancel the run's unfinished tasks and wait (up to ``timeout``) until no worker thread still
    executes one of its quanta (Dask cannot interrupt a running task: it only forgets it), so
    nothing writes into the run after its lock is released."""
    unfinished = [f for f in futures if not f.done()]
    if not unfinished:
        return
    indices = {int(f.key.rpartition("-")[2]) for f in unfinished}
    try:
        client.cancel(unfinished)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = {index for quanta in client.run(running_quanta).values()
                       for r, o, index in quanta if r == root and o == run}
            if not running & indices:
                return
            time.sleep(0.05)  # polls the workers; not a synchronisation by sleeping
    except Exception:  # noqa: BLE001 - the scheduler or workers are gone: so are the tasks
        return


class _Registrar:
    """Registers batches of outputs and provenance in one transaction each."""

    def __init__(self, butler: Butler, plan: Plan):
        self.butler = butler
        self.plan = plan
        self.digests = {d.label: d.config_digest for d in plan.tasks}

    def failure_record(self, index: int, failure: QuantumFailure) -> dict[str, Any]:
        import uuid

        q = self.plan.quanta[index]
        return {"quantum_id": uuid.uuid4(), "task": q.task, "data_id": q.data_id.to_dict(),
                "config_digest": self.digests[q.task], "status": "failed", "error": failure.error,
                "host": failure.host or None, "worker": failure.worker or None,
                "start_ns": failure.start_ns or None, "end_ns": failure.end_ns or None,
                "inputs": [r.id for refs in q.inputs.values() for r in refs], "outputs": []}

    def register(self, results: Sequence[QuantumResult], failures: Sequence[dict[str, Any]]) -> None:
        if not results and not failures:
            return
        outputs: list[tuple[DatasetRef, list[Any]]] = []
        records = list(failures)
        for result in results:
            q = self.plan.quanta[result.index]
            refs = {ref.id: ref for ref in q.outputs.values()}
            outputs += [(refs[ref_id], files) for ref_id, files in result.outputs]
            records.append({
                "quantum_id": result.quantum_id, "task": q.task, "data_id": q.data_id.to_dict(),
                "config_digest": self.digests[q.task], "host": result.host, "start_ns": result.start_ns,
                "end_ns": result.end_ns, "status": "no-work" if result.no_work else "succeeded",
                "error": result.no_work or None,
                "inputs": [r.id for refs in q.inputs.values() for r in refs],
                "outputs": [ref_id for ref_id, _ in result.outputs],
            })
        self.butler.register_outputs(self.plan.output_run, outputs, provenance=records)


class _Completion:
    """The futures in batches of those done since the last batch, polled every ``interval`` s or so.

    Polling the futures' states (set by the client's event loop) costs the driver far less than
    ``as_completed``, which runs one coroutine per future on the event loop that the in-process
    scheduler of a LocalCluster shares: that CPU is taken from the workers on a small machine.
    The interval grows with the number still running (10 us each: a scan of 10k states takes
    ~3 ms, so polling costs the driver ~3% of a CPU at most).
    """

    def __init__(self, futures: list[Any], interval: float) -> None:
        self.running = list(futures)
        self.interval = interval

    def requeue(self, futures: list[Any]) -> None:
        self.running.extend(futures)

    def batches(self) -> Iterator[list[Any]]:
        while self.running:
            time.sleep(max(self.interval, len(self.running) * 1e-5))
            still: list[Any] = []
            batch: list[Any] = []
            for f in self.running:
                (batch if f.done() else still).append(f)
            self.running = still
            if batch:
                yield batch


def _interactive() -> bool:
    """Show progress by default in a terminal and in a Jupyter kernel (whose stderr is no TTY)."""
    if sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def _progress(total: int) -> Any:
    """A text bar in a terminal, a widget in Jupyter (``tqdm.auto`` with ipywidgets installed)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="quanta", desc="executing")


def _format_tb(future: Any) -> list[str]:
    import traceback

    tb = future.traceback()
    return traceback.format_tb(tb) if tb is not None else []
