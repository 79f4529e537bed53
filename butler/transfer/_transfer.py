"""Transfer datasets from one repository to another: export's manifest, import's write path.

A transfer is an export without files followed by an import that reads the files from the
source repository: for each batch of refs, `export_bundle` writes the manifest (records, dataset
types, collections, refs with ids, provenance, checksums) to a temporary directory, and
`import_bundle` opens it with the source's root as the files' root (a repository's files are at
the repository-relative paths a bundle uses; "direct" files at their recorded absolute paths).
So a transfer checks and refuses exactly what an import does, verifies every file against its
recorded checksum before anything of the batch is registered, and registers each batch through
one `JournaledWrite`.

Large transfers commit in batches (``batch_size`` datasets each), so the progress of a killed
transfer survives it; a rerun first resolves what the killed one journaled in the destination
(`butler cleanup` of the runs it writes) and then skips the datasets already there (same ids
and checksums), so it copies only what is missing, and no registered dataset is ever without its
file. Either side may be SQLite, PostgreSQL or MariaDB.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import CollectionError, DatasetNotFoundError
from ._bundle import Bundle, open_bundle
from ._export import export_bundle
from ._import import import_bundle

if TYPE_CHECKING:
    from .._cleanup import CleanupReport
    from .._dataset_ref import DatasetRef
    from .._registration import RunAccess
    from ..datastore._interface import Datastore
    from ..registry._registry import Registry

__all__ = ["TRANSFER_MODES", "TransferReport", "transfer_datasets"]

TRANSFER_MODES = ("auto", "copy", "hardlink")
"""How files get into the destination: "auto" hard-links where both repositories are on one file
system and copies elsewhere."""
BATCH_SIZE = 10_000
"""Datasets registered per `JournaledWrite` (one committed step of a resumable transfer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferReport:
    """What a transfer added (and what it found already there)."""

    source: str
    destination: str
    datasets: int
    skipped: int
    """Datasets already in the destination with the same id, type, data ID, run and checksums."""
    files: int
    records: dict[str, int] = field(default_factory=dict)
    collections: list[str] = field(default_factory=list)
    """Collections created in the destination."""
    quanta: int = 0
    batches: int = 0
    cleaned: list[str] = field(default_factory=list)
    """Files a killed earlier transfer (or other write) had left, removed before starting."""
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"transferred {self.datasets} datasets ({self.files} files; {self.skipped} already there), "
                f"{sum(self.records.values())} dimension records, {len(self.collections)} new collections and "
                f"{self.quanta} quanta from {self.source} to {self.destination} in {self.batches} batch(es), "
                f"{self.seconds:.2f} s")


def transfer_datasets(src_registry: Registry, src_datastore: Datastore, dst_registry: Registry,
                      dst_datastore: Datastore, runs: RunAccess, refs: Sequence[DatasetRef] | None, *,
                      collections: str | Sequence[str] | None = None, where: str | None = None,
                      bind: Mapping[str, Any] | None = None, dataset_types: str | Iterable[str] | None = None,
                      transfer: str = "auto", allow_foreign_run: bool = False, batch_size: int = BATCH_SIZE,
                      cleanup: Callable[[Sequence[str]], CleanupReport] | None = None) -> TransferReport:
    """Transfer ``refs`` (or the datasets ``collections``/``where``/``dataset_types`` select) from
    the source to the destination; see `Butler.transfer_from`. ``cleanup(runs)`` resolves the
    destination's journal of these runs before anything is written (a killed transfer's files)."""
    start = time.perf_counter()
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    src_root, dst_root = os.path.realpath(src_datastore.root), os.path.realpath(dst_datastore.root)
    if src_root == dst_root:
        raise ValueError(f"cannot transfer from {src_root} into itself")
    if refs is None:
        if collections is None:
            raise CollectionError("transfer_from needs refs, or the collections to transfer from "
                                  "(collections=[...], -c ...)")
        chosen = _select(src_registry, collections, where=where, bind=bind, dataset_types=dataset_types)
    elif where is not None or dataset_types is not None:
        raise ValueError("where and dataset_types select datasets when no refs are given; pass one or the other")
    else:
        chosen = sorted({_Chosen(r.dataset_type.name, r.id, r.run) for r in refs})
    cleaned: list[str] = []
    pending = sorted({e.run for e in dst_registry.journal.pending(sorted({r.run for r in chosen}))})
    if pending and cleanup is not None:
        cleaned = list(cleanup(pending).removed)
    totals = {"datasets": 0, "skipped": 0, "files": 0, "quanta": 0}
    records: dict[str, int] = {}
    created: list[str] = []
    batches = 0
    scratch = tempfile.mkdtemp(prefix="butler-transfer-")
    try:
        for offset in range(0, max(len(chosen), 1), batch_size):
            batch = chosen[offset:offset + batch_size]
            manifest = os.path.join(scratch, f"batch-{batches}")
            exported = export_bundle(src_registry, src_datastore, manifest, collections=collections, refs=batch,
                                     include_files=False)
            with open_bundle(manifest, files_root=src_datastore.root) as bundle:
                if exported.datasets != len(batch):
                    _missing(bundle, batch, src_root)
                done = import_bundle(dst_registry, dst_datastore, runs, bundle, transfer=transfer,
                                     allow_foreign_run=allow_foreign_run)
            shutil.rmtree(manifest, ignore_errors=True)
            batches += 1
            totals["datasets"] += done.datasets
            totals["skipped"] += done.skipped
            totals["files"] += done.files
            totals["quanta"] += done.quanta
            for element, n in done.records.items():
                records[element] = records.get(element, 0) + n
            created += done.collections
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TransferReport(source=src_root, destination=dst_root, records=records, collections=created,
                          batches=batches, cleaned=cleaned, seconds=time.perf_counter() - start, **totals)


def _missing(bundle: Bundle, batch: Sequence[_Chosen], src_root: str) -> None:
    """Raise `DatasetNotFoundError` naming the refs the source does not have."""
    there = {h for t in bundle.dataset_types for h in bundle.datasets(t.name).column("dataset_id").to_pylist()}
    missing = [c for c in batch if c.id.hex not in there]
    shown = ", ".join(f"{c.dataset_type} {c.id} in run {c.run!r}" for c in missing[:3])
    raise DatasetNotFoundError(f"cannot transfer from {src_root}: {len(missing)} of the refs are not datasets of "
                               f"that repository ({shown}{', ...' if len(missing) > 3 else ''}); nothing of this "
                               "batch was transferred (refs must come from the source, e.g. src.query_datasets)")


class _Chosen(NamedTuple):
    """What a batch needs of a dataset to transfer (export selects by type and id); ordered by type
    and id, so batches are the same on a rerun."""

    dataset_type: str
    id: uuid.UUID
    run: str


def _select(registry: Registry, collections: str | Sequence[str], *, where: str | None,
            bind: Mapping[str, Any] | None, dataset_types: str | Iterable[str] | None) -> list[_Chosen]:
    """Every run's copy of the datasets of ``collections`` (RUN, TAGGED, CALIBRATION, through
    chains) matching ``where``: exactly those an export of the same arguments holds."""
    from ..registry._collections import check_collection_names
    from ..registry._schema import fast_uuid
    from ._export import dataset_types_to_export

    bulk = registry.bulk_reads
    out: dict[str, _Chosen] = {}
    with registry.transaction() as conn:
        searched = registry.collections.resolve(check_collection_names(collections), conn)
        for type_rec in dataset_types_to_export(registry, dataset_types):
            name = type_rec.dataset_type.name
            selection = bulk.select_datasets(conn, type_rec, searched, registry.query_builder, where=where, bind=bind)
            for columns in bulk.iter_dataset_files(conn, selection):
                for hex_id, run in zip(columns[0], columns[1]):
                    if hex_id not in out:
                        out[hex_id] = _Chosen(name, fast_uuid(hex_id), run)
    return sorted(out.values())
