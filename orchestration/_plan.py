"""Plans: the quanta of a pipeline over a data query, with resolved inputs and predicted outputs.

A plan is plain data (task classes by path, configs, refs), so it can be saved, loaded in
another process, summarised, and explained quantum by quantum.
"""

from __future__ import annotations

import gzip
import pickle
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from butler import DataCoordinate, DatasetRef

from ._pipeline import TaskDef

if TYPE_CHECKING:
    from butler import Butler

__all__ = ["RERUN_CHANGED", "RERUN_REMADE", "RUN", "SKIP", "Plan", "Quantum"]

RUN = "run"
SKIP = "skip"
# Why a quantum whose outputs exist runs again (``Quantum.context["rerun"]``, the start of its reason).
RERUN_CHANGED = "inputs changed"
RERUN_REMADE = "inputs re-made in this execution"


@dataclass(slots=True)
class Quantum:
    """One task applied to one data ID."""

    index: int
    task: str
    data_id: DataCoordinate
    inputs: dict[str, tuple[DatasetRef, ...]]
    outputs: dict[str, DatasetRef]
    upstream: tuple[int, ...] = ()
    status: str = RUN
    reason: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        # Cheap and unique: the predicted output ids are fresh UUIDs (dask would otherwise pickle
        # every quantum to name the graph, about 1 ms each).
        return ("Quantum", self.index, self.task, self.data_id.values,
                tuple(ref.id.hex for ref in self.outputs.values()))

    def describe(self) -> str:
        ins = ", ".join(f"{k}: {len(v)}" for k, v in self.inputs.items())
        outs = ", ".join(f"{k}: {r.dataset_type.name}" for k, r in self.outputs.items())
        reason = self.reason
        if self.context.get("clobber"):
            removes = f"removes {len(self.context['clobber'])} existing output(s) first"
            reason = f"{reason}; {removes}" if reason else f"{removes}: --clobber-outputs"
        why = f" ({reason})" if reason else ""
        return (f"{self.task} {self.data_id}: {self.status.upper()}{why}; inputs [{ins}]; "
                f"outputs [{outs}]; upstream quanta {list(self.upstream)}")


@dataclass
class Plan:
    """The graph of quanta to execute, and where its outputs go."""

    tasks: list[TaskDef]
    quanta: list[Quantum]
    output_run: str
    input_collections: list[str]
    init_outputs: dict[str, dict[str, DatasetRef]]
    where: str = ""
    notes: list[str] = field(default_factory=list)

    # -- views ---------------------------------------------------------------------------------
    def task_def(self, label: str) -> TaskDef:
        for d in self.tasks:
            if d.label == label:
                return d
        raise KeyError(f"no task {label!r} in the plan; tasks: {[d.label for d in self.tasks]}")

    def to_run(self) -> list[Quantum]:
        return [q for q in self.quanta if q.status == RUN]

    def counts(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {d.label: Counter() for d in self.tasks}
        for q in self.quanta:
            out[q.task][q.status] += 1
        return out

    def summary(self) -> str:
        """A table: task, quanta to run, to skip, and why they skip."""
        reasons: dict[str, Counter[str]] = {d.label: Counter() for d in self.tasks}
        for q in self.quanta:
            if q.status != RUN:
                reasons[q.task][q.reason] += 1
            elif "rerun" in q.context:
                reasons[q.task][f"run again, {q.context['rerun']}"] += 1
        counts = self.counts()
        width = max([len("task")] + [len(d.label) for d in self.tasks])
        lines = [f"{'task':<{width}}  {'run':>7}  {'skip':>7}  reasons",
                 f"{'-' * width}  {'-' * 7}  {'-' * 7}  {'-' * 7}"]
        for d in self.tasks:
            why = "; ".join(f"{n} {r}" for r, n in reasons[d.label].most_common()) or "-"
            lines.append(f"{d.label:<{width}}  {counts[d.label][RUN]:>7}  {counts[d.label][SKIP]:>7}  {why}")
        lines.append(f"output run: {self.output_run}; inputs: {', '.join(self.input_collections)}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def reruns(self, limit: int = 20) -> str:
        """One line per quantum (the first ``limit``) that runs again although its outputs exist, and why."""
        found = [q for q in self.quanta if q.status == RUN and "rerun" in q.context]
        lines = [f"{q.task} {q.data_id}: RUN ({q.reason}"
                 + (f"; removes {len(q.context['clobber'])} existing output(s) first)" if q.context.get("clobber") else ")")
                 for q in found[:limit]]
        if len(found) > limit:
            lines.append(f"... and {len(found) - limit} more (--explain TASK shows each)")
        return "\n".join(lines)

    def explain(self, task: str, data_id: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        """Why each quantum of ``task`` matching the data ID runs or skips."""
        wanted = dict(data_id or {}, **kwargs)
        found = [q for q in self.quanta if q.task == task
                 and all(k in q.data_id and q.data_id[k] == v for k, v in wanted.items())]
        if not found:
            return f"no quantum of {task!r} matches {wanted}; the plan has {self.counts().get(task)}"
        return "\n".join(q.describe() for q in found)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str) -> None:
        with gzip.open(path, "wb", compresslevel=5) as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: str) -> Plan:
        with gzip.open(path, "rb") as f:
            plan = pickle.load(f)
        if not isinstance(plan, Plan):
            raise TypeError(f"{path} does not hold a Plan")
        return plan

    def write_init_outputs(self, butler: Butler) -> None:
        """Write (or compare) each task's config/schema and the package versions: see provenance."""
        from ._provenance import write_init_outputs

        write_init_outputs(self, butler)
