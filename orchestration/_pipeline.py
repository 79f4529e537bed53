"""Pipelines: labelled tasks with configs, in YAML or Python, validated as a graph.

A pipeline is valid when every dataset type has one definition (same dimensions and storage
class wherever it appears), each is produced by at most one task, and the producer/consumer
graph has no cycle. Tasks are kept in dependency order.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from butler.errors import ButlerError

from ._connections import Connection
from ._task import Task, config_digest, config_to_dict

__all__ = ["Pipeline", "PipelineError", "TaskDef"]


class PipelineError(ValueError, ButlerError):
    """A pipeline definition is inconsistent (connections, configs, cycles)."""


def _import(path: str) -> type[Task]:
    module, _, name = path.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise PipelineError(f"cannot import task class {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise PipelineError(f"{path!r} is not a Task subclass")
    return cls


@dataclass(frozen=True)
class TaskDef:
    """One labelled task of a pipeline with its final config."""

    label: str
    task_class: type[Task]
    config: Any

    @property
    def class_path(self) -> str:
        return f"{self.task_class.__module__}.{self.task_class.__qualname__}"

    @property
    def config_digest(self) -> str:
        return config_digest(self.config)

    @functools.cached_property
    def _dask_token(self) -> tuple[str, str, str, str]:
        return ("TaskDef", self.label, self.class_path, self.config_digest)

    def __dask_tokenize__(self) -> tuple[str, str, str, str]:
        return self._dask_token

    def make_task(self) -> Task:
        return self.task_class(self.config)


class Pipeline:
    """An ordered set of labelled tasks."""

    def __init__(self, description: str = "") -> None:
        self.description = description
        self._tasks: dict[str, tuple[type[Task], dict[str, Any]]] = {}
        self.subsets: dict[str, list[str]] = {}

    # -- construction ---------------------------------------------------------------------------
    def add_task(self, label: str, task_class: type[Task] | str, **config: Any) -> Pipeline:
        if label in self._tasks:
            raise PipelineError(f"the pipeline already has a task labelled {label!r}")
        cls = _import(task_class) if isinstance(task_class, str) else task_class
        self._tasks[label] = (cls, {})
        if config:
            self.configure(label, **config)
        return self

    def configure(self, label: str, **overrides: Any) -> Pipeline:
        """Override config fields of one task (unknown fields are an error naming the valid ones)."""
        if label not in self._tasks:
            raise PipelineError(f"no task labelled {label!r}; labels: {list(self._tasks)}")
        cls, current = self._tasks[label]
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        for key, value in overrides.items():
            if key not in fields:
                raise PipelineError(f"{label}: unknown config field {key!r}; fields: {sorted(fields)}")
            current[key] = _coerce(fields[key], value, f"{label}.{key}")
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Pipeline:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        return cls.from_dict(data, where=os.fspath(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<pipeline>") -> Pipeline:
        tasks = data.get("tasks")
        if not isinstance(tasks, Mapping) or not tasks:
            raise PipelineError(f"{where}: a pipeline needs a 'tasks' mapping of label -> {{class: ..., config: ...}}")
        pipeline = cls(str(data.get("description", "")))
        for label, spec in tasks.items():
            if isinstance(spec, str):
                spec = {"class": spec}
            if "class" not in spec:
                raise PipelineError(f"{where}: task {label!r} has no 'class'")
            pipeline.add_task(label, spec["class"], **(spec.get("config") or {}))
        for name, labels in (data.get("subsets") or {}).items():
            unknown = [x for x in labels if x not in pipeline._tasks]
            if unknown:
                raise PipelineError(f"{where}: subset {name!r} names unknown tasks {unknown}")
            pipeline.subsets[name] = list(labels)
        return pipeline

    def apply_overrides(self, overrides: Iterable[str]) -> Pipeline:
        """Apply ``label:field=value`` strings (the ``--config`` command-line form)."""
        import yaml

        for text in overrides:
            label, sep, rest = text.partition(":")
            key, eq, value = rest.partition("=")
            if not sep or not eq:
                raise PipelineError(f"config override {text!r} must look like label:field=value")
            self.configure(label, **{key.strip(): yaml.safe_load(value)})
        return self

    def subset(self, name_or_labels: str | Iterable[str]) -> Pipeline:
        labels = self.subsets.get(name_or_labels, [name_or_labels]) if isinstance(name_or_labels, str) \
            else list(name_or_labels)
        unknown = [x for x in labels if x not in self._tasks]
        if unknown:
            raise PipelineError(f"unknown task labels or subset {unknown}; labels: {list(self._tasks)}, "
                                f"subsets: {list(self.subsets)}")
        out = Pipeline(self.description)
        for label in labels:
            cls, cfg = self._tasks[label]
            out._tasks[label] = (cls, dict(cfg))
        return out

    # -- resolution -----------------------------------------------------------------------------
    def task_defs(self) -> list[TaskDef]:
        """Tasks with their configs, validated and in dependency order."""
        defs = []
        for label, (cls, overrides) in self._tasks.items():
            try:
                config = cls.Config(**overrides)
            except TypeError as err:
                raise PipelineError(f"{label}: invalid config: {err}") from None
            defs.append(TaskDef(label, cls, config))
        return _sort_and_validate(defs)

    @property
    def labels(self) -> list[str]:
        return list(self._tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "tasks": {d.label: {"class": d.class_path, "config": config_to_dict(d.config)} for d in self.task_defs()},
            "subsets": dict(self.subsets),
        }


def _coerce(field: dataclasses.Field[Any], value: Any, where: str) -> Any:
    kind = field.type if isinstance(field.type, type) else {"float": float, "int": int, "str": str,
                                                              "bool": bool}.get(str(field.type))
    if kind in (float, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and not float(value).is_integer():
            raise PipelineError(f"{where} must be int, got {value!r}")
        return kind(value)
    if kind is not None and not isinstance(value, kind):
        raise PipelineError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def _sort_and_validate(defs: list[TaskDef]) -> list[TaskDef]:
    definitions: dict[str, tuple[str, Connection]] = {}
    producers: dict[str, str] = {}
    for d in defs:
        for conn in d.task_class.connections.values():
            seen = definitions.get(conn.dataset_type)
            if seen is not None:
                other_label, other = seen
                if set(other.dimensions) != set(conn.dimensions) or other.storage_class != conn.storage_class:
                    raise PipelineError(
                        f"dataset type {conn.dataset_type!r} is declared differently by {other_label!r} "
                        f"({list(other.dimensions)}, {other.storage_class}) and {d.label!r} "
                        f"({list(conn.dimensions)}, {conn.storage_class})"
                    )
            else:
                definitions[conn.dataset_type] = (d.label, conn)
        for conn in (*d.task_class.outputs().values(), *d.task_class.init_outputs().values()):
            if conn.dataset_type in producers:
                raise PipelineError(
                    f"dataset type {conn.dataset_type!r} is produced by both {producers[conn.dataset_type]!r} "
                    f"and {d.label!r}"
                )
            producers[conn.dataset_type] = d.label
        for conn in d.task_class.outputs().values():
            if set(conn.dimensions) != set(d.task_class.dimensions):
                raise PipelineError(
                    f"{d.label}: output {conn.name!r} has dimensions {list(conn.dimensions)} but the task's "
                    f"quanta have {list(d.task_class.dimensions)}; outputs must have the quantum's dimensions"
                )
    for d in defs:
        for conn in d.task_class.prerequisites().values():
            if conn.dataset_type in producers:
                raise PipelineError(f"{d.label}: prerequisite {conn.dataset_type!r} is produced by "
                                    f"{producers[conn.dataset_type]!r}; prerequisites must already exist")
    by_label = {d.label: d for d in defs}
    upstream = {d.label: {producers[c.dataset_type] for c in d.task_class.inputs().values()
                          if c.dataset_type in producers} for d in defs}
    ordered: list[TaskDef] = []
    state: dict[str, int] = {}

    def visit(label: str, path: list[str]) -> None:
        if state.get(label) == 2:
            return
        if state.get(label) == 1:
            cycle = path[path.index(label):] + [label]
            raise PipelineError(f"the pipeline has a cycle: {' -> '.join(cycle)}")
        state[label] = 1
        for up in sorted(upstream[label]):
            visit(up, path + [label])
        state[label] = 2
        ordered.append(by_label[label])

    for d in defs:
        visit(d.label, [])
    return ordered
