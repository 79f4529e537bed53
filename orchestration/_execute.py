"""Worker side of execution: run one quantum, write its output files, return what to register.

Workers never write to the registry: they read inputs (files of upstream quanta straight from
the records those quanta returned, others through the registry), run the task, write output
files atomically, and return refs + file records. The driver registers them in batches.
A Butler is opened once per worker process (by its pickled configuration).
"""

from __future__ import annotations

import inspect
import socket
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from butler import Butler, DatasetRef

from ._context import QuantumContext
from ._pipeline import TaskDef
from ._plan import Quantum
from ._task import NoWorkFound

__all__ = ["ButlerConfig", "QuantumFailure", "QuantumResult", "execute_quantum", "running_quanta", "worker_butler"]

_BUTLERS: dict[Any, Butler] = {}
_TASKS: dict[tuple[Any, ...], Any] = {}
_RUNNING: set[tuple[str, str, int]] = set()  # (root, output run, quantum index) running in this process


def running_quanta() -> list[tuple[str, str, int]]:
    """The quanta this process's threads execute now, as (repository root, output run, quantum index):
    after cancelling a run the driver asks every worker (``client.run``) until none of its quanta is
    left, since Dask cannot interrupt a running task (it only forgets it)."""
    return list(_RUNNING)


@dataclass
class QuantumResult:
    index: int
    quantum_id: uuid.UUID
    # (dataset id, file records) per output: the driver and downstream quanta know the refs from
    # the plan, so only ids travel back (a ref costs ~10x more to unpickle than a UUID).
    outputs: list[tuple[uuid.UUID, list[Any]]] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    host: str = ""
    no_work: str = ""  # why run() found nothing to do (NoWorkFound); then there are no outputs


class QuantumFailure(Exception):
    """A task raised; carries the quantum, the formatted traceback and where and when it ran (host,
    Dask worker address, start and end in ns since the epoch; empty when it never reached a worker)."""

    def __init__(self, index: int, task: str, data_id: str, error: str, tb: str, host: str = "",
                 worker: str = "", start_ns: int = 0, end_ns: int = 0):
        # Everything in args: exceptions travel from workers by pickle, which rebuilds them from args.
        super().__init__(index, task, data_id, error, tb, host, worker, start_ns, end_ns)
        self.index, self.task, self.data_id, self.error, self.tb = index, task, data_id, error, tb
        self.host, self.worker, self.start_ns, self.end_ns = host, worker, start_ns, end_ns

    def __str__(self) -> str:
        return f"{self.task} {self.data_id} failed: {self.error}"


@dataclass(frozen=True)
class ButlerConfig:
    """What a worker needs to open the repository (hashable, tiny when pickled)."""

    root: str
    collections: tuple[str, ...]

    def __dask_tokenize__(self) -> tuple[str, str, tuple[str, ...]]:
        return ("ButlerConfig", self.root, self.collections)


def worker_butler(config: ButlerConfig) -> Butler:
    """The process-wide Butler for a configuration: opened once per worker process."""
    butler = _BUTLERS.get(config)
    if butler is None:
        butler = _BUTLERS[config] = Butler(config.root, collections=list(config.collections), writeable=True)
    return butler


def _task_instance(task_def: TaskDef) -> Any:
    # By value (label, class, config digest): every task sent to a worker unpickles its own copy of
    # the TaskDef, so keying by identity would make (and keep) one task instance per quantum.
    key = task_def._dask_token
    task = _TASKS.get(key)
    if task is None:
        task = _TASKS[key] = task_def.make_task()
    return task


def _read(butler: Butler, ref: DatasetRef, known: Mapping[uuid.UUID, list[Any]]) -> Any:
    files = known.get(ref.id)
    if files is not None:
        return butler.datastore.read(ref, files, verify=butler.verify_reads)
    return butler.get(ref)


def execute_quantum(config: ButlerConfig, task_def: TaskDef, quantum: Quantum, *upstream: QuantumResult
                    ) -> QuantumResult:
    """Run one quantum; raise QuantumFailure (with the traceback) if the task fails."""
    start = time.time_ns()
    running = (config.root, config.collections[0], quantum.index)
    _RUNNING.add(running)
    try:
        return _execute(config, task_def, quantum, upstream, start)
    finally:
        _RUNNING.discard(running)


def _execute(config: ButlerConfig, task_def: TaskDef, quantum: Quantum, upstream: tuple[QuantumResult, ...],
             start: int) -> QuantumResult:
    butler = worker_butler(config)
    known = {ref_id: files for result in upstream if result is not None for ref_id, files in result.outputs}
    upstream_no_work = [r.no_work for r in upstream if r is not None and r.no_work]
    try:
        inputs: dict[str, Any] = {}
        for name, refs in quantum.inputs.items():
            conn = task_def.task_class.connections[name]
            if getattr(conn, "multiple", False):
                inputs[name] = {ref.data_id: _read(butler, ref, known) for ref in refs}
            else:
                inputs[name] = _read(butler, refs[0], known)
        task = _task_instance(task_def)
        try:
            out_run = next((r.run for r in quantum.outputs.values()), None)
            if upstream_no_work and any(ref.id not in known for refs in quantum.inputs.values() for ref in refs
                                        if ref.run == out_run):
                raise NoWorkFound(f"an upstream quantum had nothing to do ({upstream_no_work[0]})")
            if _accepts_context(task):
                context = QuantumContext(quantum.data_id, quantum.context.get("records", {}), butler)
                produced = task.run(context=context, **inputs)
            else:
                produced = task.run(**inputs)
        except NoWorkFound as why:
            return QuantumResult(quantum.index, uuid.uuid4(), start_ns=start, end_ns=time.time_ns(),
                                 host=socket.gethostname(), no_work=str(why) or type(why).__name__)
        missing = set(quantum.outputs) - set(produced or {})
        if missing:
            raise RuntimeError(f"run() returned no {sorted(missing)}; it must return every output connection")
        result = QuantumResult(quantum.index, uuid.uuid4(), start_ns=start, host=socket.gethostname())
        datastore = butler.datastore
        outputs = list(quantum.outputs.items())
        written = datastore.write_unregistered([(ref, produced[name]) for name, ref in outputs])
        result.outputs += [(ref.id, files) for (_, ref), files in zip(outputs, written)]
        result.end_ns = time.time_ns()
        return result
    except QuantumFailure:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a task raises becomes a QuantumFailure
        raise QuantumFailure(quantum.index, quantum.task, str(quantum.data_id), f"{type(err).__name__}: {err}",
                             traceback.format_exc(), socket.gethostname(), _worker_address(), start,
                             time.time_ns()) from None


def _worker_address() -> str:
    """The address of the Dask worker running this task ("" outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


_ACCEPTS: dict[type, bool] = {}


def _accepts_context(task: Any) -> bool:
    cls = type(task)
    accepts = _ACCEPTS.get(cls)
    if accepts is None:
        accepts = _ACCEPTS[cls] = "context" in inspect.signature(task.run).parameters
    return accepts
