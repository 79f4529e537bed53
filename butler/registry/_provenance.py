"""The quantum tables: one row per executed quantum (task, data ID, inputs, host, times, status)
and one row per output dataset of each quantum.

Executors insert these rows in the transactions that register the outputs (`insert` takes their
``conn``); reads are one SELECT each, or one per 5000 quanta for their outputs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ._collections import CollectionManager
from ._database import Database
from ._schema import RegistrySchema

__all__ = ["ProvenanceManager", "encode_inputs"]

_IN_LIST_LIMIT = 5000  # above this many ids, select by run and match in Python


def encode_inputs(ids: Iterable[uuid.UUID]) -> str:
    """The stored form of a quantum's input ids (a JSON list of hex ids): written by
    `ProvenanceManager.insert`, compared as text by restart checks (no JSON parsing when equal)."""
    hexes = [i.hex for i in ids]
    return '["' + '", "'.join(hexes) + '"]' if hexes else "[]"


class ProvenanceManager:
    """Writes and reads ``quantum`` and ``quantum_output``."""

    def __init__(self, db: Database, schema: RegistrySchema, collections: CollectionManager,
                 quantum_columns: Callable[[], list[sa.Column[Any]]]):
        self._db = db
        self._schema = schema
        self._collections = collections
        self._quantum_columns = quantum_columns  # the columns this repository has (schema_minor)

    def insert(self, conn: sa.Connection, run_id: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert quantum records in ``conn``: each has quantum_id, task, data_id (dict), inputs (ids),
        outputs (ids), config_digest, host, worker (Dask address, optional), start_ns, end_ns, status,
        error. Two multi-row INSERTs."""
        if not records:
            return
        rows = []
        outputs: list[dict[str, Any]] = []
        for r in records:
            rows.append({
                "quantum_id": r["quantum_id"], "run_id": run_id, "task": r["task"],
                "data_id": json.dumps(r["data_id"], sort_keys=True, default=str),
                "config_digest": r.get("config_digest"), "host": r.get("host"), "worker": r.get("worker"),
                "start_ns": r.get("start_ns"), "end_ns": r.get("end_ns"), "status": r["status"],
                "error": r.get("error"), "inputs": encode_inputs(r.get("inputs", ())),
            })
            outputs.extend({"dataset_id": d, "quantum_id": r["quantum_id"]} for d in r.get("outputs", ()))
        conn.execute(self._schema.quantum.insert(), rows)
        if outputs:
            conn.execute(self._schema.quantum_output.insert(), outputs)

    def _record(self, row: Any) -> dict[str, Any]:
        d = dict(row._mapping)
        d.setdefault("worker", None)  # repositories before schema_minor 2
        d["data_id"] = json.loads(d["data_id"])
        d["inputs"] = [uuid.UUID(h) for h in json.loads(d["inputs"] or "[]")]
        d["run"] = self._collections.by_id(d.pop("run_id")).name
        return d

    def of_dataset(self, dataset_id: uuid.UUID) -> dict[str, Any] | None:
        """The record of the quantum that wrote ``dataset_id``, with its ``outputs`` (None if none did)."""
        q, o = self._schema.quantum, self._schema.quantum_output
        stmt = (sa.select(*self._quantum_columns()).select_from(q.join(o, o.c.quantum_id == q.c.quantum_id))
                .where(o.c.dataset_id == dataset_id))
        with self._db.transaction() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            record = self._record(row)
            record["outputs"] = list(conn.execute(
                sa.select(o.c.dataset_id).where(o.c.quantum_id == record["quantum_id"])).scalars())
        return record

    def query(self, *, run_id: int | None = None, task: str | None = None,
              statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Quantum records (of a run, a task, with a status), by start time, with their ``outputs``."""
        q, o = self._schema.quantum, self._schema.quantum_output
        stmt = sa.select(*self._quantum_columns())
        if run_id is not None:
            stmt = stmt.where(q.c.run_id == run_id)
        if task is not None:
            stmt = stmt.where(q.c.task == task)
        if statuses is not None:
            stmt = stmt.where(q.c.status.in_(list(statuses)))
        with self._db.transaction() as conn:
            records = [self._record(r) for r in conn.execute(stmt.order_by(q.c.start_ns))]
            by_id = {r["quantum_id"]: r for r in records}
            for r in records:
                r["outputs"] = []
            ids = list(by_id)
            for start in range(0, len(ids), 5000):  # the output dataset ids of those quanta, one query per 5k
                for quantum_id, dataset_id in conn.execute(
                        sa.select(o.c.quantum_id, o.c.dataset_id).where(o.c.quantum_id.in_(ids[start:start + 5000]))):
                    by_id[quantum_id]["outputs"].append(dataset_id)
        return records

    def recorded_inputs(self, dataset_ids: Sequence[uuid.UUID], run_ids: Callable[[], Iterable[int]]
                        ) -> dict[int, str]:
        """The encoded inputs (`encode_inputs`) of the quanta that wrote ``dataset_ids``, by the
        dataset id's integer (``UUID.int``); ids no quantum names are absent.

        One query whatever the number of ids: up to a few thousand it names them; beyond, it selects
        the records of the runs ``run_ids()`` (a quantum's outputs are in its run) and the caller keeps
        those it asked for (no parameter limit is reached). The inputs stay text, and rows are read
        as the driver's plain tuples (Row objects cost 0.2 s per 100k).
        """
        q, o = self._schema.quantum, self._schema.quantum_output
        raw_id = sa.type_coerce(o.c.dataset_id, sa.types.NullType())  # hex text, or a UUID on PostgreSQL
        stmt = sa.select(raw_id, q.c.inputs).select_from(o.join(q, q.c.quantum_id == o.c.quantum_id))
        if len(dataset_ids) <= _IN_LIST_LIMIT:
            stmt = stmt.where(o.c.dataset_id.in_(list(dataset_ids)))
        else:
            stmt = stmt.where(q.c.run_id.in_(sorted(run_ids())))
        with self._db.transaction() as conn:
            result = conn.execute(stmt)
            try:
                rows = result.cursor.fetchall()
            finally:
                result.close()
        if rows and isinstance(rows[0][0], uuid.UUID):
            return {raw.int: inputs for raw, inputs in rows}
        # keyed by the id's integer: int(hex, 16) costs a fifth of formatting each ref's id as hex
        return {int(raw, 16): inputs for raw, inputs in rows}
