"""Orchestration: tasks, pipelines, a set-based planner and a Dask executor over the butler."""

from ._connections import Connection, InitOutput, Input, Output, PrerequisiteInput
from ._context import QuantumContext
from ._executor import DaskExecutor, ExecutionReport, prepare_run
from ._pipeline import Pipeline, PipelineError, TaskDef
from ._plan import Plan, Quantum
from ._planner import Planner, PlanningError
from ._provenance import ProvenanceMismatchError
from ._task import NoWorkFound, Task

__all__ = [
    "Connection",
    "DaskExecutor",
    "ExecutionReport",
    "InitOutput",
    "Input",
    "NoWorkFound",
    "Output",
    "Pipeline",
    "PipelineError",
    "Plan",
    "Planner",
    "PlanningError",
    "PrerequisiteInput",
    "ProvenanceMismatchError",
    "Quantum",
    "QuantumContext",
    "Task",
    "TaskDef",
    "prepare_run",
]
