"""Connections: what a task reads and writes, declared on the task class.

A connection names a dataset type with its dimensions and storage class. The planner matches
a quantum's data ID to each connection's dimensions: an input whose dimensions are a subset of
the quantum's gets exactly one dataset; one with other dimensions (``multiple=True``) gets every
dataset related to the quantum (the calexps of all detectors that overlap a patch).
"""

from __future__ import annotations

from dataclasses import dataclass

from butler import DatasetType

__all__ = ["Connection", "InitOutput", "Input", "Output", "PrerequisiteInput"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    dataset_type: str
    dimensions: tuple[str, ...] = ()
    storage_class: str = "StructuredData"
    doc: str = ""
    name: str = ""  # the attribute name on the task class, filled in by Task.__init_subclass__

    def to_dataset_type(self) -> DatasetType:
        return DatasetType(self.dataset_type, self.dimensions, self.storage_class)


@dataclass(frozen=True, slots=True, kw_only=True)
class Input(Connection):
    """A dataset the task reads; ``multiple`` for a list of related datasets."""

    multiple: bool = False
    minimum: int = 1  # fewer datasets than this and the quantum cannot run (skipped, with the reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrerequisiteInput(Input):
    """An input that must already exist (calibrations, reference catalogs); never produced here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Output(Connection):
    """A dataset the task writes, one per quantum (its dimensions must be the quantum's)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InitOutput(Connection):
    """A dataset written once per run (a schema, a configuration); no dimensions."""
