"""The rows an import adds after its datasets: TAGGED memberships, validity ranges, provenance.

Run inside the import's one registering transaction (see ``_import``); each skips what the
destination has already, so a second import adds nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from ..registry._collections import CollectionRecord
    from ..registry._registry import Registry
    from ._bundle import Bundle

__all__ = ["add_calibs", "add_provenance", "add_tags", "quanta_to_insert"]


def add_tags(registry: Registry, conn: Any, bundle: Bundle, collections: dict[str, CollectionRecord],
          refs_by_id: dict[str, DatasetRef]) -> None:
    by_key: dict[tuple[str, str], list[DatasetRef]] = {}
    for row in bundle.table("tags").to_pylist():
        ref = refs_by_id[row["dataset_id"]]
        by_key.setdefault((row["collection"], ref.dataset_type.name), []).append(ref)
    for (collection, type_name), refs in by_key.items():
        type_rec = registry.dataset_types.get(type_name)
        rec = collections[collection]
        there = registry.bulk_reads.tagged_ids(conn, type_rec, rec.id)
        registry.datasets.tag(conn, type_rec, rec, [r for r in refs if r.id.hex not in there])


def add_calibs(registry: Registry, conn: Any, bundle: Bundle, collections: dict[str, CollectionRecord],
            refs_by_id: dict[str, DatasetRef]) -> None:
    rows = bundle.table("calibs").to_pylist()
    if not rows:
        return
    manager = registry.calibrations
    groups: dict[tuple[str, str, int, int], list[DatasetRef]] = {}
    for row in rows:
        groups.setdefault((row["collection"], row["dataset_type"], row["begin_ns"], row["end_ns"]), []).append(
            refs_by_id[row["dataset_id"]])
    for (collection, type_name, begin, end), refs in groups.items():
        type_rec = registry.dataset_types.get(type_name)
        items = [(r.data_id.values, r.id, r.data_id) for r in refs]
        manager.certify(conn, type_rec, collections[collection], items, begin, end, split=False)


def quanta_to_insert(bundle: Bundle, skipped: set[str], present: set[str]) -> list[dict[str, Any]]:
    """The bundle's quanta the destination lacks, with their outputs among the datasets imported now."""
    outputs: dict[str, list[uuid.UUID]] = {}
    for row in bundle.table("quantum_outputs").to_pylist():
        if row["dataset_id"] not in skipped:
            outputs.setdefault(row["quantum_id"], []).append(uuid.UUID(row["dataset_id"]))
    out = []
    for q in bundle.table("quanta").to_pylist():
        if q["quantum_id"] in present:
            continue
        out.append({**q, "quantum_id": uuid.UUID(q["quantum_id"]), "data_id": json.loads(q["data_id"]),
                    "inputs": [uuid.UUID(h) for h in json.loads(q["inputs"] or "[]")],
                    "outputs": outputs.get(q["quantum_id"], [])})
    return out


def add_provenance(registry: Registry, conn: Any, bundle: Bundle, skipped: set[str],
                   collections: dict[str, CollectionRecord], present: set[str]) -> int:
    by_run: dict[str, list[dict[str, Any]]] = {}
    records = quanta_to_insert(bundle, skipped, present)
    for q in records:
        if q["run"] in collections:
            by_run.setdefault(q["run"], []).append(q)
    for run, run_records in by_run.items():
        registry.provenance.insert(conn, collections[run].id, run_records)
    return sum(len(r) for r in by_run.values())
