"""Import a bundle into a repository through the one write path (``butler/_write_path.py``).

Everything that can refuse the import is checked before anything changes, from the committed
state of the destination: the universe, dataset type definitions, collection types and run
ownership, dimension records (same key, other values: refused, naming them), datasets (the same
id already there with other content, or the same type, data ID and run under another id:
refused, naming them), and every file's checksum and size (`Bundle.verify_files`). Then new
dataset types and instruments are registered (DDL, idempotent), and one `JournaledWrite` journals the files,
places them (copy, hard link, or "move" from a directory bundle; a zip's members are extracted
first) and inserts runs, collections, records, datasets, tags, validity ranges, chains and
provenance in one transaction: all or nothing. Datasets whose id is already present with the
same type, data ID, run and checksums are skipped, so importing a bundle twice changes nothing.
Dataset ids and provenance survive.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._dataset_ref import DatasetRef
from .._dataset_type import DatasetType
from .._write_path import JournaledWrite
from ..datastore._directory_io import MANIFEST_PREFIX
from ..dimensions import DataCoordinate
from ..errors import ConflictError
from ..registry._collections import CollectionType
from ..registry._datasets import FileRecord
from ._bundle import Bundle, open_bundle
from ._errors import BundleManifestError
from ._format import BundleCollection

if TYPE_CHECKING:
    import os as _os

    from .._registration import RunAccess
    from ..datastore._interface import Datastore
    from ..registry._collections import CollectionRecord
    from ..registry._registry import Registry

__all__ = ["IMPORT_MODES", "ImportReport", "import_bundle"]

IMPORT_MODES = ("copy", "hardlink", "move", "auto")
"""How files get from a directory bundle into the repository (a zip's members are always extracted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    """What an import added (and what it found already there)."""

    bundle: str
    datasets: int
    skipped: int
    """Datasets already in the repository with the same id, type, data ID, run and checksums."""
    files: int
    records: dict[str, int] = field(default_factory=dict)
    collections: list[str] = field(default_factory=list)
    """Collections created."""
    quanta: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"imported {self.datasets} datasets ({self.files} files; {self.skipped} already there), "
                f"{sum(self.records.values())} dimension records, {len(self.collections)} new collections and "
                f"{self.quanta} quanta from {self.bundle} in {self.seconds:.2f} s")


@dataclass
class _TypePlan:
    dataset_type: DatasetType
    new_refs: dict[str, list[DatasetRef]] = field(default_factory=dict)  # run -> refs to insert
    files: dict[uuid.UUID, list[FileRecord]] = field(default_factory=dict)
    placements: list[tuple[str, str, str, uuid.UUID, str | None, int | None]] = field(default_factory=list)
    """(bundle path, repository path, run, dataset id, checksum, size) of every file to place."""
    refs_by_id: dict[str, DatasetRef] = field(default_factory=dict)
    skipped: int = 0


def import_bundle(registry: Registry, datastore: Datastore, runs: RunAccess, source: str | _os.PathLike[str] | Bundle,
                  *, transfer: str = "copy", allow_foreign_run: bool = False) -> ImportReport:
    """Import the bundle ``source`` (a path or an opened `Bundle`); see `Butler.import_`."""
    if transfer not in IMPORT_MODES:
        raise ValueError(f"transfer must be one of {IMPORT_MODES}, not {transfer!r}")
    start = time.perf_counter()
    bundle = source if isinstance(source, Bundle) else open_bundle(source)
    try:
        return _import(registry, datastore, runs, bundle, transfer=transfer, allow_foreign_run=allow_foreign_run,
                       start=start)
    finally:
        if bundle is not source:
            bundle.close()


def _import(registry: Registry, datastore: Datastore, runs: RunAccess, bundle: Bundle, *, transfer: str,
            allow_foreign_run: bool, start: float) -> ImportReport:
    if not bundle.include_files:
        raise BundleManifestError(f"{bundle.path} was exported without its files (include_files=False); "
                                  "export it again with the files to import it")
    universe = registry.universe
    bundle.check_universe(universe)
    new_types = _check_dataset_types(registry, bundle)
    run_records = _check_collections(registry, runs, bundle, allow_foreign_run)
    bulk = registry.bulk_reads
    with registry.db.transaction() as conn:
        new_records = _check_records(registry, conn, bundle)
        plans = [_plan_type(registry, conn, bundle, dt, new=dt.name in {t.name for t in new_types})
                 for dt in bundle.dataset_types]
        quanta_present = bulk.quanta_by_id(conn, bundle.table("quanta").column("quantum_id").to_pylist())
    scratch = None
    try:
        if bundle.is_zip:  # extracted beside the repository's files (so they can be linked), verified on the way
            scratch = tempfile.mkdtemp(prefix=".tmp-import-", dir=datastore.root)
            extracted = {}
            for plan in plans:
                name = plan.dataset_type.name
                for bundle_path, _, _, dataset_id, checksum, size in plan.placements:
                    extracted.update(bundle.extract_verified(name, dataset_id.hex, bundle_path, checksum, size,
                                                             scratch))
        else:
            bundle.verify_files()  # every byte, before anything is registered
            extracted = None
        return _write(registry, datastore, runs, bundle, plans, run_records, new_records, quanta_present, new_types,
                      extracted, transfer=transfer, allow_foreign_run=allow_foreign_run, start=start)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _write(registry: Registry, datastore: Datastore, runs: RunAccess, bundle: Bundle, plans: Sequence[_TypePlan],
           run_records: dict[str, CollectionRecord | None], new_records: dict[str, list[dict[str, Any]]],
           quanta_present: set[str], new_types: Sequence[DatasetType], extracted: dict[str, str] | None, *,
           transfer: str, allow_foreign_run: bool, start: float) -> ImportReport:
    # -- changes from here on ------------------------------------------------------------------------
    from .._registration import register_dataset_type

    for dt in new_types:
        register_dataset_type(registry, datastore, dt)
    for name, info in bundle.instruments.items():  # aliases and file templates of instruments new here
        if name not in registry.instruments:
            registry.set_attribute(f"instrument:{name}", info)
    if len(bundle.table("calibs")):
        from ..registry._calibrations import calibrations_of

        calibrations_of(registry).ensure_table()
    created: list[str] = []
    n_files = 0
    with JournaledWrite(registry, datastore, "import") as write:
        for plan in plans:
            by_run: dict[str, list[tuple[str, uuid.UUID | None, str | None]]] = {}
            for _, rel, run, dataset_id, _, _ in plan.placements:
                by_run.setdefault(run, []).append((rel, dataset_id, None))
            for run, items in by_run.items():
                write.intend(run, items, move=transfer == "move" and extracted is None)
            for bundle_path, rel, _, _, checksum, _ in plan.placements:
                n_files += _place(write, bundle, datastore, bundle_path, rel, checksum, transfer, extracted)
        try:
            with write.registering() as conn:
                created = _register(registry, runs, conn, bundle, plans, run_records, new_records,
                                    quanta_present, allow_foreign_run)
        except BaseException:
            for name in [*run_records, *(c.name for c in bundle.collections)]:
                runs.forget(name)
            raise
    return ImportReport(bundle=bundle.path, datasets=sum(len(r) for p in plans for r in p.new_refs.values()),
                        skipped=sum(p.skipped for p in plans), files=n_files,
                        records={k: len(v) for k, v in new_records.items() if v}, collections=created,
                        quanta=len(_quanta_to_insert(bundle, plans, quanta_present)),
                        seconds=time.perf_counter() - start)


# -- checks (read-only) --------------------------------------------------------------------------------
def _check_dataset_types(registry: Registry, bundle: Bundle) -> list[DatasetType]:
    from ..datastore import get_storage_class

    new = []
    for dt in bundle.dataset_types:
        existing = registry.dataset_types.find(dt.name)
        if existing is None:
            get_storage_class(dt.storage_class)  # an unknown storage class names the known ones
            new.append(dt)
        elif existing.dataset_type != dt:
            raise ConflictError(
                f"cannot import {bundle.path}: dataset type {dt.name!r} is registered here with another definition: "
                f"{existing.dataset_type.describe_difference(dt)} (here vs bundle); nothing was imported")
    return new


def _check_collections(registry: Registry, runs: RunAccess, bundle: Bundle, allow_foreign_run: bool
                       ) -> dict[str, CollectionRecord | None]:
    """Refuse collections of another type, chains with other children, and runs not ours; return
    the checked record (None: new) of every RUN."""
    out: dict[str, CollectionRecord | None] = {}
    for c in bundle.collections:
        if c.type == "RUN":
            out[c.name] = runs.check(c.name, allow_foreign_run)  # RunOwnershipError if somebody else's
            continue
        existing = registry.collections.find(c.name)
        if existing is None:
            from ..registry._collections import validate_collection_name

            validate_collection_name(c.name)
            continue
        if existing.type.name != c.type:
            raise ConflictError(f"cannot import {bundle.path}: collection {c.name!r} is a {existing.type.name} "
                                f"collection here, {c.type} in the bundle; nothing was imported")
        if c.type == "CHAINED":
            children = registry.collections.chain_children(c.name)
            if list(children) != list(c.children):
                raise ConflictError(f"cannot import {bundle.path}: chain {c.name!r} has the children {children} here, "
                                    f"{list(c.children)} in the bundle; nothing was imported")
    return out


def _check_records(registry: Registry, conn: Any, bundle: Bundle) -> dict[str, list[dict[str, Any]]]:
    """The bundle's records that the destination lacks, by element (universe order); a record
    with the key of an existing one and other values is refused, naming the key and the fields."""
    universe = registry.universe
    out: dict[str, list[dict[str, Any]]] = {}
    for element in universe.elements:
        if element.name not in bundle.record_counts:
            continue
        rows = bundle.records(element.name).to_pylist()
        pk = element.primary_key_columns
        existing = {tuple(r[c] for c in pk): r for r in
                    registry.bulk_reads.records_for_keys(conn, element, {tuple(r[c] for c in pk) for r in rows})}
        new = []
        for row in rows:
            key = tuple(row[c] for c in pk)
            here = existing.get(key)
            if here is None:
                new.append(row)
                continue
            different = [c for c in row if c in here and here[c] != row[c]]
            if different:
                shown = ", ".join(f"{c}={here[c]!r} here, {row[c]!r} in the bundle" for c in different[:4]
                                  if c != "region") or "region"
                raise ConflictError(
                    f"cannot import {bundle.path}: the {element.name} record {dict(zip(pk, key))} differs from the "
                    f"repository's ({shown}); nothing was imported (records are shared by every dataset that refers "
                    "to them: fix one side first)")
        out[element.name] = new
    return out


def _plan_type(registry: Registry, conn: Any, bundle: Bundle, dt: DatasetType, *, new: bool) -> _TypePlan:
    """Which datasets of one type to insert and which files to place; refuse conflicting ones."""
    plan = _TypePlan(dt)
    group = dt.group(registry.universe)
    table = bundle.datasets(dt.name)
    names = ("dataset_id", "run", *group.required, "component", "path", "formatter", "storage_class", "checksum",
             "file_size", "direct_path")
    cols = [table.column(c).to_pylist() for c in names]
    n_dims = len(group.required)
    ids_in_order = list(dict.fromkeys(cols[0]))
    present = {} if new else registry.bulk_reads.datasets_by_id(conn, ids_in_order)
    type_rec = None if new else registry.dataset_types.get(dt.name)
    present_files = ({} if new or not present else
                     registry.datasets.files_of(conn, [uuid.UUID(h) for h in present]))
    files_by_id: dict[str, list[tuple[Any, ...]]] = {}
    for row in zip(*cols):
        files_by_id.setdefault(row[0], []).append(row)
    by_run: dict[str, list[DatasetRef]] = {}
    for hex_id in ids_in_order:
        rows = files_by_id[hex_id]
        first = rows[0]
        run = first[1]
        data_id = DataCoordinate.from_values(group, tuple(first[2:2 + n_dims]))
        ref = DatasetRef(dt, data_id, run, uuid.UUID(hex_id))
        plan.refs_by_id[hex_id] = ref
        bundle_files = {r[2 + n_dims]: r[2 + n_dims + 4] for r in rows if r[2 + n_dims + 1] is not None}
        if hex_id in present:
            type_id, here_run = present[hex_id]
            here = {f.component: f.checksum for f in present_files.get(ref.id, [])}
            if type_rec is None or type_id != type_rec.id or here_run != run or here != bundle_files:
                raise ConflictError(
                    f"cannot import {bundle.path}: dataset {hex_id} ({dt.name} {data_id} in run {run!r}) is already in "
                    f"the repository with other content (run {here_run!r}, files {here or 'none'}); nothing was "
                    "imported")
            plan.skipped += 1
            continue
        by_run.setdefault(run, []).append(ref)
        records = []
        for r in rows:
            component, path, formatter, storage_class, checksum, size, direct_path = r[2 + n_dims:]
            if path is None:
                continue
            rel = path
            if direct_path is not None:  # a file ingested "direct" at the source: it moves into the run
                rel = f"{run}/{path}"
            records.append(FileRecord(component or "", rel, formatter, storage_class, checksum, size))
            plan.placements.append((path, rel, run, ref.id, checksum, size))
        plan.files[ref.id] = records
    if type_rec is not None:  # the same (type, data ID, run) under another id
        for run, refs in by_run.items():
            run_rec = registry.collections.find(run)
            if run_rec is None:
                continue
            found = registry.datasets.find_many(conn, type_rec, [r.data_id for r in refs], [run_rec])
            if found:
                data_id, other = next(iter(found.items()))
                mine = next(r for r in refs if r.data_id == data_id)
                raise ConflictError(
                    f"cannot import {bundle.path}: {dt.name} {data_id} in run {run!r} is already in the repository "
                    f"as dataset {other.id}, the bundle has it as {mine.id}; nothing was imported (remove one, or "
                    "import into a repository without that run)")
    plan.new_refs = by_run
    return plan


# -- changes ---------------------------------------------------------------------------------------------
def _place(write: JournaledWrite, bundle: Bundle, datastore: Datastore, bundle_path: str, rel: str,
           checksum: str | None, transfer: str, extracted: dict[str, str] | None) -> int:
    """Place one file (or a directory dataset's members); returns how many files. Files of a zip
    were extracted (and verified) beside the repository's: they are linked into place."""
    members = ([bundle_path] if not (checksum or "").startswith(MANIFEST_PREFIX)
               else bundle.member_paths(bundle_path))
    for member in members:
        dest = os.path.join(datastore.root, rel + member[len(bundle_path):])
        if extracted is None:
            write.place(bundle.local_path(member), dest, transfer)
        else:
            write.place(extracted[member], dest, "auto")
    return len(members)


def _register(registry: Registry, runs: RunAccess, conn: Any, bundle: Bundle, plans: Sequence[_TypePlan],
              run_records: dict[str, CollectionRecord | None], new_records: dict[str, list[dict[str, Any]]],
              quanta_present: set[str], allow_foreign_run: bool) -> list[str]:
    """Every row of the import, in the one registering transaction; returns the collections created."""
    created = []
    collections: dict[str, CollectionRecord] = {}
    for name, rec in run_records.items():
        collections[name] = runs.ensure(conn, name, rec, allow_foreign_run=allow_foreign_run)
        if rec is None:
            created.append(name)
    chains: list[BundleCollection] = []
    for c in bundle.collections:
        if c.type == "RUN":
            continue
        if c.type == "CHAINED":
            chains.append(c)
            continue
        rec, new = registry.collections.register(c.name, CollectionType[c.type], doc=c.doc, conn=conn)
        collections[c.name] = rec
        if new:
            created.append(c.name)
    for element, rows in new_records.items():
        if rows:
            registry.records.insert(element, rows, conflict="error", conn=conn)
    refs_by_id: dict[str, DatasetRef] = {}
    for plan in plans:
        type_rec = registry.dataset_types.get(plan.dataset_type.name)
        for run, refs in plan.new_refs.items():
            registry.datasets.insert(conn, type_rec, collections[run], refs, {r.id: plan.files[r.id] for r in refs})
        refs_by_id.update(plan.refs_by_id)
    _tags(registry, conn, bundle, collections, refs_by_id)
    _calibs(registry, conn, bundle, collections, refs_by_id)
    for c in chains:
        rec, new = registry.collections.register(c.name, CollectionType.CHAINED, doc=c.doc, conn=conn)
        if new:
            registry.collections.set_chain(c.name, list(c.children), conn)
            created.append(c.name)
    _provenance(registry, conn, bundle, plans, collections, quanta_present)
    return created


def _tags(registry: Registry, conn: Any, bundle: Bundle, collections: dict[str, CollectionRecord],
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


def _calibs(registry: Registry, conn: Any, bundle: Bundle, collections: dict[str, CollectionRecord],
            refs_by_id: dict[str, DatasetRef]) -> None:
    rows = bundle.table("calibs").to_pylist()
    if not rows:
        return
    from ..registry._calibrations import calibrations_of

    manager = calibrations_of(registry)
    groups: dict[tuple[str, str, int, int], list[DatasetRef]] = {}
    for row in rows:
        groups.setdefault((row["collection"], row["dataset_type"], row["begin_ns"], row["end_ns"]), []).append(
            refs_by_id[row["dataset_id"]])
    for (collection, type_name, begin, end), refs in groups.items():
        type_rec = registry.dataset_types.get(type_name)
        items = [(r.data_id.values, r.id, r.data_id) for r in refs]
        manager.certify(conn, type_rec, collections[collection], items, begin, end, split=False)


def _quanta_to_insert(bundle: Bundle, plans: Sequence[_TypePlan], present: set[str]) -> list[dict[str, Any]]:
    inserted = {r.id.hex for p in plans for refs in p.new_refs.values() for r in refs}
    outputs: dict[str, list[uuid.UUID]] = {}
    for row in bundle.table("quantum_outputs").to_pylist():
        if row["dataset_id"] in inserted:
            outputs.setdefault(row["quantum_id"], []).append(uuid.UUID(row["dataset_id"]))
    out = []
    for q in bundle.table("quanta").to_pylist():
        if q["quantum_id"] in present:
            continue
        out.append({**q, "quantum_id": uuid.UUID(q["quantum_id"]), "data_id": json.loads(q["data_id"]),
                    "inputs": [uuid.UUID(h) for h in json.loads(q["inputs"] or "[]")],
                    "outputs": outputs.get(q["quantum_id"], [])})
    return out


def _provenance(registry: Registry, conn: Any, bundle: Bundle, plans: Sequence[_TypePlan],
                collections: dict[str, CollectionRecord], present: set[str]) -> None:
    from .._provenance import insert_provenance

    by_run: dict[str, list[dict[str, Any]]] = {}
    for q in _quanta_to_insert(bundle, plans, present):
        if q["run"] in collections:
            by_run.setdefault(q["run"], []).append(q)
    for run, records in by_run.items():
        insert_provenance(registry, conn, collections[run].id, records)
