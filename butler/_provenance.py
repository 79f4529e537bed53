"""Per-quantum provenance records: which task, data ID, inputs, host and times made a dataset.

Executors insert these rows in the same transactions that register the outputs; users ask
``Butler.provenance(ref)`` ("what made this?") or ``Butler.query_provenance`` (failures of a run).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .registry._provenance import encode_inputs

if TYPE_CHECKING:
    from ._dataset_ref import DatasetRef
    from .registry._registry import Registry

__all__ = ["decode_inputs", "encode_inputs", "insert_provenance", "provenance_of", "query_provenance",
           "recorded_inputs", "same_inputs"]


def insert_provenance(registry: Registry, conn: Any, run_id: int, records: Sequence[Mapping[str, Any]]) -> None:
    """Insert quantum records in ``conn`` (the transaction registering the outputs); see
    `ProvenanceManager.insert` for their fields."""
    registry.provenance.insert(conn, run_id, records)


def provenance_of(registry: Registry, ref: DatasetRef) -> dict[str, Any] | None:
    """The record of the quantum that wrote ``ref`` (None for datasets not made by a pipeline)."""
    return registry.provenance.of_dataset(ref.id)


def query_provenance(registry: Registry, *, run: str | None = None, task: str | None = None,
                     status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Quantum records of a run, a task and/or statuses, by start time, with their output ids."""
    run_id = registry.collections.get(run).id if run is not None else None
    statuses = None if status is None else [status] if isinstance(status, str) else list(status)
    return registry.provenance.query(run_id=run_id, task=task, statuses=statuses)


def decode_inputs(text: str | None) -> frozenset[str]:
    """The input ids (hex) of a stored :func:`encode_inputs` list."""
    return frozenset(json.loads(text)) if text else frozenset()


def same_inputs(text: str, ids: Sequence[uuid.UUID]) -> bool:
    """Whether a stored :func:`encode_inputs` list names exactly ``ids`` (in any order).

    Compares integers cut from the text (``int(hex, 16)`` and ``UUID.int`` are C-speed; formatting
    ids as hex or parsing the JSON is not): the restart check does this for every complete quantum.
    """
    if len(ids) == 1 and len(text) == 36:  # one input, the most common case
        try:
            return int(text[2:34], 16) == ids[0].int
        except ValueError:
            pass
    if text == "[]":
        return not ids
    try:
        recorded = [int(h, 16) for h in text[2:-2].split('", "')]
    except ValueError:  # not the compact form: parse it
        return decode_inputs(text) == {i.hex for i in ids}
    current = [i.int for i in ids]
    return recorded == current or (len(recorded) == len(current) and set(recorded) == set(current))


def recorded_inputs(registry: Registry, refs: Sequence[DatasetRef]) -> list[str | None]:
    """For each ref, the encoded input ids (:func:`encode_inputs`) recorded by the quantum that wrote it,
    or None if no quantum record names it (written by hand, ingested).

    One query whatever the number of refs (`ProvenanceManager.recorded_inputs`). The inputs stay
    text: a restart check compares them with the encoding of the inputs it would use now, and
    parses only those that differ (decoding 100k lists, or 100k UUIDs, would cost more than the query).
    """
    if not refs:
        return []
    found = registry.provenance.recorded_inputs(
        [ref.id for ref in refs], lambda: {registry.collections.get(run).id for run in {r.run for r in refs}})
    get = found.get
    return [get(ref.id.int) for ref in refs]
