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
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .._dataset_ref import DatasetRef
from .._dataset_type import DatasetType
from .._run_lock import run_lock
from .._write_path import JournaledWrite
from ..datastore._directory_io import MANIFEST_PREFIX
from ..dimensions import DataCoordinate
from ..errors import ConflictError
from ..registry._collections import CollectionType
from ..registry._datasets import FileRecord
from ..registry._journal import STAGE, new_operation
from ..registry._schema import fast_uuid
from ._bundle import Bundle, open_bundle
from ._errors import BundleManifestError
from ._format import FILE_COLUMNS as _FILE_COLUMNS
from ._format import BundleCollection
from ._import_rows import add_calibs, add_provenance, add_tags

if TYPE_CHECKING:
    import os as _os

    import pyarrow as pa

    from .._registration import RunAccess
    from ..datastore._interface import Datastore
    from ..registry._collections import CollectionRecord
    from ..registry._registry import Registry

__all__ = ["IMPORT_MODES", "ImportReport", "import_bundle"]

_SLICE = 5000
"""Rows of a dataset table turned into Python objects at a time (every pass streams the table)."""
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


class _Dataset(NamedTuple):
    hex_id: str
    ref: DatasetRef
    files: list[FileRecord]
    sources: list[str]
    """The bundle path of each file (its repository path but for files ingested "direct")."""


def _sorted_tables(bundle: Bundle) -> dict[str, pa.Table]:
    """Each dataset type's table, read once, with a dataset's files adjacent (sorted by id unless
    they are already, as export writes them)."""
    import pyarrow.compute as pc

    out = {}
    for dt in bundle.dataset_types:
        table = bundle.datasets(dt.name)
        ids = table.column("dataset_id")
        if len(ids) > 1:
            changes = pc.sum(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py() or 0
            if changes + 1 != len(pc.unique(ids)):
                table = table.sort_by("dataset_id")
        out[dt.name] = table
    return out


def _datasets(tables: dict[str, pa.Table], dt: DatasetType, group: Any) -> Iterator[list[_Dataset]]:
    """The datasets of one type in batches (a dataset's files are adjacent in its table), turned
    into Python objects a slice at a time: never one object per dataset for all of them."""
    table = tables[dt.name]
    names = ("dataset_id", "run", *group.required, *_FILE_COLUMNS)
    n_dims = len(group.required)
    batch: list[_Dataset] = []
    rows: list[tuple[Any, ...]] = []

    def make(rows: list[tuple[Any, ...]]) -> _Dataset:
        hex_id, run = rows[0][0], rows[0][1]
        data_id = DataCoordinate.from_values(group, tuple(rows[0][2:2 + n_dims]))
        ref = DatasetRef._trusted(dt, data_id, run, fast_uuid(hex_id))  # ids and values as the bundle holds them
        files, sources = [], []
        for r in rows:
            component, path, formatter, storage_class, checksum, size, direct_path = r[2 + n_dims:]
            if path is None:
                continue
            rel = path if direct_path is None else f"{run}/{path}"  # a "direct" file moves into its run
            files.append(FileRecord(component or "", rel, formatter, storage_class, checksum, size))
            sources.append(path)
        return _Dataset(hex_id, ref, files, sources)

    for offset in range(0, table.num_rows, _SLICE):
        part = table.slice(offset, _SLICE)
        for row in zip(*[part.column(c).to_pylist() for c in names]):
            if rows and row[0] != rows[0][0]:
                batch.append(make(rows))
                rows = []
            rows.append(row)
        yield batch
        batch = []
    if rows:
        yield [make(rows)]


def import_bundle(registry: Registry, datastore: Datastore, runs: RunAccess, source: str | _os.PathLike[str] | Bundle,
                  *, transfer: str = "copy", allow_foreign_run: bool = False) -> ImportReport:
    """Import the bundle ``source`` (a path or an opened `Bundle`); see `Butler.import_`."""
    if transfer not in IMPORT_MODES:
        raise ValueError(f"transfer must be one of {IMPORT_MODES}, not {transfer!r}")
    start = time.perf_counter()
    bundle = source if isinstance(source, Bundle) else open_bundle(source)
    try:
        with ExitStack() as locks:  # shared, as every write: `cleanup` of these runs waits for the import
            for name in sorted({c.name for c in bundle.collections if c.type == "RUN"}):
                locks.enter_context(run_lock(datastore.root, name, action="import into", shared=True))
            return _import(registry, datastore, runs, bundle, transfer=transfer,
                           allow_foreign_run=allow_foreign_run, start=start)
    finally:
        if bundle is not source:
            bundle.close()


def _import(registry: Registry, datastore: Datastore, runs: RunAccess, bundle: Bundle, *, transfer: str,
            allow_foreign_run: bool, start: float) -> ImportReport:
    if not bundle.include_files:
        raise BundleManifestError(f"{bundle.path} was exported without its files (include_files=False); "
                                  "export it again with the files to import it")
    bundle.check_universe(registry.universe)
    new_types = _check_dataset_types(registry, bundle)
    run_records = _check_collections(registry, runs, bundle, allow_foreign_run)
    tables = _sorted_tables(bundle)
    with registry.transaction() as conn:
        new_records = _check_records(registry, conn, bundle)
        skipped: set[str] = set()
        for dt in bundle.dataset_types:
            if dt.name not in {t.name for t in new_types}:
                skipped |= _check_datasets(registry, conn, bundle, tables, dt)
        quanta_present = registry.bulk_reads.quanta_by_id(conn, bundle.table("quanta").column("quantum_id").to_pylist())
    scratch = None
    scratch_op = None
    try:
        if bundle.is_zip:  # extracted beside the repository's files (so they can be linked), verified on the way
            scratch, scratch_op = _make_scratch(registry, datastore, bundle)
            for dt in bundle.dataset_types:
                for batch in _datasets(tables, dt, dt.group(registry.universe)):
                    for d in batch:
                        if d.hex_id not in skipped:
                            for j, (source, record) in enumerate(zip(d.sources, d.files)):
                                # one directory per file of a dataset (a composite and its components
                                # written on their own): their extracted names must not collide
                                bundle.extract_verified(dt.name, d.hex_id, source, record.checksum, record.file_size,
                                                        _extracted_dir(scratch, j))
        else:
            bundle.verify_files()  # every byte, before anything is registered
        return _write(registry, datastore, runs, bundle, tables, run_records, new_records, skipped, quanta_present,
                      new_types, scratch, transfer=transfer, allow_foreign_run=allow_foreign_run, start=start)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if scratch_op is not None:
            registry.journal.clear_now(scratch_op)


def _make_scratch(registry: Registry, datastore: Datastore, bundle: Bundle) -> tuple[str, str | None]:
    """The directory a zip's members are extracted into, journaled first (a ``stage`` intent of a
    run of the bundle) so that `butler cleanup` removes it if a crash leaves it behind."""
    op = new_operation()
    name = f".tmp-import-{op[:16]}"
    run = next((c.name for c in bundle.collections if c.type == "RUN"), None)
    if run is not None:
        registry.upgrade_for_writes()
        registry.journal.record(op, run, STAGE, [(name, None, None)])
    path = os.path.join(datastore.root, name)
    try:
        os.mkdir(path)
    except BaseException:
        if run is not None:
            registry.journal.clear_now(op)
        raise
    return path, op if run is not None else None


def _write(registry: Registry, datastore: Datastore, runs: RunAccess, bundle: Bundle, tables: dict[str, pa.Table],
           run_records: dict[str, CollectionRecord | None], new_records: dict[str, list[dict[str, Any]]],
           skipped: set[str], quanta_present: set[str], new_types: Sequence[DatasetType], extracted: str | None, *,
           transfer: str, allow_foreign_run: bool, start: float) -> ImportReport:
    """The changes, in one `JournaledWrite`: journal and place the files, then register the new dataset
    types (DDL, which cannot join a transaction on MySQL: after every file is placed, so a refusal
    while placing changes nothing), then one registering transaction (rows, instruments' attributes)."""
    from .._registration import register_dataset_type

    universe = registry.universe
    n_files = 0
    with JournaledWrite(registry, datastore, "import") as write:
        for dt in bundle.dataset_types:
            for batch in _datasets(tables, dt, dt.group(universe)):
                new = [d for d in batch if d.hex_id not in skipped]
                by_run: dict[str, list[tuple[str, uuid.UUID | None, str | None]]] = {}
                for d in new:
                    by_run.setdefault(d.ref.run, []).extend((f.path, d.ref.id, None) for f in d.files)
                for run, items in by_run.items():
                    write.intend(run, items, move=transfer == "move" and extracted is None)
                for d in new:
                    for j, (source, record) in enumerate(zip(d.sources, d.files)):
                        n_files += _place(write, bundle, datastore, source, record.path, d.ref.id, record.checksum,
                                          transfer, None if extracted is None else _extracted_dir(extracted, j))
        for dt in new_types:
            register_dataset_type(registry, datastore, dt)
        if len(bundle.table("calibs")):
            registry.calibrations.ensure_table()
        instruments = {f"instrument:{name}": info if isinstance(info, str) else json.dumps(info)
                       for name, info in bundle.instruments.items() if name not in registry.instruments}
        try:
            with write.registering() as conn:
                registry.insert_attributes(instruments, conn)  # aliases and templates of instruments new here
                created, n_datasets, n_quanta = _register(registry, runs, conn, bundle, tables, run_records,
                                                          new_records, skipped, quanta_present, allow_foreign_run)
        except BaseException:
            for name in [*run_records, *(c.name for c in bundle.collections)]:
                runs.forget(name)
            raise
    if instruments:
        registry.refresh_attributes()
    return ImportReport(bundle=bundle.path, datasets=n_datasets, skipped=len(skipped), files=n_files,
                        records={k: len(v) for k, v in new_records.items() if v}, collections=created,
                        quanta=n_quanta, seconds=time.perf_counter() - start)


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


def _check_datasets(registry: Registry, conn: Any, bundle: Bundle, tables: dict[str, pa.Table], dt: DatasetType
                    ) -> set[str]:
    """The ids of the bundle's datasets of a registered type that the destination has already,
    with the same type, run and checksums (skipped); any other overlap is refused, naming it: the
    same id with other content, or the same (type, data ID, run) under another id."""
    type_rec = registry.dataset_types.get(dt.name)
    skipped: set[str] = set()
    for batch in _datasets(tables, dt, type_rec.group):
        present = registry.bulk_reads.datasets_by_id(conn, [d.hex_id for d in batch])
        files = registry.datasets.files_of(conn, [fast_uuid(h) for h in present]) if present else {}
        by_run: dict[str, list[_Dataset]] = {}
        for d in batch:
            if d.hex_id not in present:
                by_run.setdefault(d.ref.run, []).append(d)
                continue
            type_id, here_run = present[d.hex_id]
            here = {f.component: f.checksum for f in files.get(d.ref.id, [])}
            theirs = {f.component: f.checksum for f in d.files}
            if type_id != type_rec.id or here_run != d.ref.run or here != theirs:
                raise ConflictError(
                    f"cannot import {bundle.path}: dataset {d.hex_id} ({dt.name} {d.ref.data_id} in run "
                    f"{d.ref.run!r}) is already in the repository with other content (run {here_run!r}, files "
                    f"{here or 'none'}); nothing was imported")
            skipped.add(d.hex_id)
        for run, new in by_run.items():
            run_rec = registry.collections.find(run)
            if run_rec is None:
                continue
            found = registry.datasets.find_many(conn, type_rec, [d.ref.data_id for d in new], [run_rec])
            if found:
                data_id, other = next(iter(found.items()))
                mine = next(d.ref for d in new if d.ref.data_id == data_id)
                raise ConflictError(
                    f"cannot import {bundle.path}: {dt.name} {data_id} in run {run!r} is already in the repository "
                    f"as dataset {other.id}, the bundle has it as {mine.id}; nothing was imported (remove one, or "
                    "import into a repository without that run)")
    return skipped


# -- changes ---------------------------------------------------------------------------------------------
def _extracted_dir(scratch: str, file_index: int) -> str:
    """Where the ``file_index``-th file of each dataset of a zip is extracted: the first (usually the
    only one) in ``scratch`` itself, the others in a subdirectory each (made on first use)."""
    if file_index == 0:
        return scratch
    path = os.path.join(scratch, str(file_index))
    os.makedirs(path, exist_ok=True)
    return path


def _place(write: JournaledWrite, bundle: Bundle, datastore: Datastore, bundle_path: str, rel: str,
           dataset_id: uuid.UUID, checksum: str | None, transfer: str, extracted: str | None) -> int:
    """Place one file (or a directory dataset's members); returns how many files. Files of a zip
    were extracted (and verified) into the directory ``extracted``, beside the repository's files,
    as ``<dataset id>-<member index>`` (see `Bundle.extract_verified`): they are linked into place."""
    members = ([bundle_path] if not (checksum or "").startswith(MANIFEST_PREFIX)
               else bundle.member_paths(bundle_path))
    for i, member in enumerate(members):
        dest = os.path.join(datastore.root, rel + member[len(bundle_path):])
        if extracted is None:
            write.place(bundle.local_path(member), dest, transfer)
        else:
            write.place(os.path.join(extracted, f"{dataset_id.hex}-{i}"), dest, "auto")
    return len(members)


def _register(registry: Registry, runs: RunAccess, conn: Any, bundle: Bundle, tables: dict[str, pa.Table],
              run_records: dict[str, CollectionRecord | None], new_records: dict[str, list[dict[str, Any]]],
              skipped: set[str], quanta_present: set[str], allow_foreign_run: bool) -> tuple[list[str], int, int]:
    """Every row of the import, in the one registering transaction; returns the collections created,
    how many datasets and quanta were inserted."""
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
    wanted = {*bundle.table("tags").column("dataset_id").to_pylist(),
              *bundle.table("calibs").column("dataset_id").to_pylist()}
    refs_by_id: dict[str, DatasetRef] = {}  # the refs memberships and validity ranges need
    n = 0
    for dt in bundle.dataset_types:
        type_rec = registry.dataset_types.get(dt.name)
        for batch in _datasets(tables, dt, type_rec.group):
            by_run: dict[str, list[_Dataset]] = {}
            for d in batch:
                if d.hex_id in wanted:
                    refs_by_id[d.hex_id] = d.ref
                if d.hex_id not in skipped:
                    by_run.setdefault(d.ref.run, []).append(d)
            for run, datasets in by_run.items():
                registry.datasets.insert(conn, type_rec, collections[run], [d.ref for d in datasets],
                                         {d.ref.id: d.files for d in datasets})
                n += len(datasets)
    add_tags(registry, conn, bundle, collections, refs_by_id)
    add_calibs(registry, conn, bundle, collections, refs_by_id)
    for c in chains:
        rec, new = registry.collections.register(c.name, CollectionType.CHAINED, doc=c.doc, conn=conn)
        if new:
            registry.collections.set_chain(c.name, list(c.children), conn)
            created.append(c.name)
    n_quanta = add_provenance(registry, conn, bundle, skipped, collections, quanta_present)
    return created, n, n_quanta
