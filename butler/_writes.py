"""Write operations of the Butler: put, remove, tag.

Every write goes through the one journaled write path (``butler/_write_path.py``): plan, journal,
stage, one registry transaction that inserts the rows and links the staged files into place, then
removal of what it made unreferenced. A replaced dataset's new bytes go to a new name, so the old
file is never touched before the registry stops referencing it. Writes hold the run's lock shared
(clean-up holds it exclusively), so clean-up never mistakes a write in flight for a dead one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, cast

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from ._run_lock import run_lock
from ._write_path import JournaledWrite
from .errors import CollectionError, ConflictError
from .registry._datasets import FileRecord
from .registry._journal import STAGE, new_operation

if TYPE_CHECKING:
    from ._registration import RunAccess
    from .datastore._interface import Datastore
    from .dimensions import DataCoordinate
    from .registry._collections import CollectionRecord
    from .registry._registry import Registry

__all__ = ["associate", "put_many", "remove", "remove_runs"]


def associate(registry: Registry, collection: str, refs: Iterable[DatasetRef]) -> None:
    """Add refs to a TAGGED collection (set-based); a different ref for the same data ID conflicts."""
    from .registry._collections import CollectionType

    rec = registry.collections.get(collection)
    if rec.type != CollectionType.TAGGED:
        raise CollectionError(f"{collection!r} is a {rec.type.name} collection; only TAGGED ones take refs")
    by_type: dict[str, list[DatasetRef]] = {}
    for ref in refs:
        by_type.setdefault(ref.dataset_type.name, []).append(ref)
    with registry.transaction(write=True) as conn:
        for name, group_refs in by_type.items():
            type_rec = registry.dataset_types.get(name)
            existing = registry.datasets.find_many(conn, type_rec, [r.data_id for r in group_refs], [rec])
            new: list[DatasetRef] = []
            for ref in group_refs:
                present = existing.get(ref.data_id)
                if present is not None:
                    if present.id != ref.id:
                        raise ConflictError(
                            f"{collection!r} already holds a different {name!r} for {ref.data_id} "
                            f"(id {present.id} from run {present.run!r}); disassociate it first"
                        )
                    continue
                new.append(ref)
                existing[ref.data_id] = ref
            registry.datasets.tag(conn, type_rec, rec, new)


def intend_writes(registry: Registry, datastore: Datastore, refs: Sequence[DatasetRef]) -> None:
    """Journal the files other processes (an executor's workers) will write for ``refs``, which the
    caller registers later (clearing the intents in the same transaction, `FileJournal.clear_datasets`);
    what is left unregistered after a crash is then known to be theirs and `cleanup` removes it.
    The caller holds the runs' locks exclusively, so no clean-up runs meanwhile."""
    if not refs:
        return
    by_group: dict[Any, list[Any]] = {}
    for ref in refs:
        by_group.setdefault(ref.data_id.group, []).append(ref.data_id)
    for coords in by_group.values():
        registry.data_ids.prime_implied(coords)
    by_run: dict[str, list[tuple[str, uuid.UUID | None, str | None]]] = {}
    for ref in refs:
        by_run.setdefault(ref.run, []).append((datastore.planned_path(ref), ref.id, None))
    # Whatever the workers find at these paths must be theirs (an earlier attempt of the same
    # quantum): a file that is there already is somebody else's, and would be adopted as an output.
    taken = [path for items in by_run.values() for path, _, _ in items if os.path.lexists(datastore.abspath(path))]
    if taken:
        raise ConflictError(
            f"{len(taken)} output path(s) already hold a file the registry does not know, e.g. "
            f"{', '.join(taken[:3])}; `butler verify --orphans {datastore.root}` lists them: remove them (or "
            "write to another run) and start again"
        )
    op = new_operation()
    registry.upgrade_for_writes()
    for run_name, items in by_run.items():
        registry.journal.record(op, run_name, STAGE, items)


def register_outputs(registry: Registry, datastore: Datastore, run: str, outputs: Sequence[tuple[DatasetRef, Sequence[FileRecord]]], *,
                     provenance: Sequence[Mapping[str, Any]] = ()) -> None:
    """Register, in one transaction, datasets whose files are already in place (written by an
    executor's workers with `FileDatastore.write_unregistered` after `intend_writes`), clearing their
    intents, with the provenance records of the quanta that made them."""
    from ._ownership import check_run_owner
    from ._provenance import insert_provenance

    with JournaledWrite(registry, datastore, "executor") as write:
        write.adopt_intents(ref.id for ref, _ in outputs)
        with write.registering() as conn:
            run_rec = check_run_owner(registry, conn, run, action="write into it", allow_foreign=False)
            write.insert_datasets(conn, run_rec, [ref for ref, _ in outputs], {ref.id: files for ref, files in outputs})
            insert_provenance(registry, conn, run_rec.id, provenance)


def put_many(registry: Registry, datastore: Datastore, runs: RunAccess, items: Iterable[tuple[Any, ...]], *, run: str,
             replace: bool = False, allow_foreign_run: bool = False) -> list[DatasetRef]:
    """Store many objects in one transaction: ``items`` are ``(obj, dataset_type, data_id[, kwargs])``."""
    items = list(items)
    run_name = run
    runs.check(run_name, allow_foreign_run)
    with run_lock(datastore.root, run_name, action="write into", shared=True):
        for attempt in range(_REPLACE_ATTEMPTS):
            try:
                return _put_many(registry, datastore, runs, items, run_name, replace, allow_foreign_run)
            except _Contended:
                if attempt == _REPLACE_ATTEMPTS - 1:
                    raise ConflictError(
                        f"put(replace=True) into run {run_name!r} lost {_REPLACE_ATTEMPTS} races with concurrent "
                        "writers of the same datasets; try again"
                    ) from None
    raise AssertionError("unreachable")


_REPLACE_ATTEMPTS = 8


class _Contended(Exception):
    """A concurrent replace of the same dataset won: plan again against what it left."""


def _put_many(registry: Registry, datastore: Datastore, runs: RunAccess, items: list[tuple[Any, ...]], run_name: str,
              replace: bool, allow_foreign_run: bool) -> list[DatasetRef]:
    """One attempt: plan (no I/O), journal the paths, stage, register + link in one transaction,
    then remove replaced files. A crash at any point leaves only journaled files behind."""
    run_rec = runs.check(run_name, allow_foreign_run)
    planned_by_type: dict[str, tuple[Any, list[DatasetRef], list[tuple[DatasetRef, Any]]]] = {}
    refs: list[DatasetRef | None] = []
    component_items: list[tuple[int, Any, str, str, Any, dict[str, Any]]] = []
    seen: set[tuple[str, Any]] = set()
    for item in items:
        obj, dataset_type, data_id = item[0], item[1], item[2]
        extra = item[3] if len(item) > 3 else {}
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        parent, component = split_component(name)
        if component:  # a component of an existing composite, written on its own (see _plan_components)
            component_items.append((len(refs), obj, parent, component, data_id, extra))
            refs.append(None)
            continue
        type_rec = registry.dataset_types.get(name)
        if isinstance(dataset_type, DatasetType) and dataset_type != type_rec.dataset_type:
            raise ConflictError(
                f"dataset type {name!r} given differs from the registered one: "
                f"{type_rec.dataset_type.describe_difference(dataset_type)}"
            )
        coord = registry.data_ids.standardize(type_rec.group, data_id, extra)
        if (name, coord) in seen:  # before any I/O (with replace=True the insert would fail on every retry)
            raise ConflictError(f"dataset {name!r} {coord} is given twice in one put_many; give each dataset once")
        seen.add((name, coord))
        ref = DatasetRef._trusted(type_rec.dataset_type, coord, run_name, uuid.uuid4())
        entry = planned_by_type.setdefault(name, (type_rec, [], []))
        entry[1].append(ref)
        for planned in datastore.plan(ref, obj, fresh_name=replace):
            entry[2].append((ref, planned))
        refs.append(ref)
    batch_formatters = {ref.id: planned.formatter.name for _, _, plans in planned_by_type.values()
                        for ref, planned in plans if not planned.component}
    component_plans = _plan_components(registry, datastore, component_items, refs, run_name, run_rec, replace, batch_formatters)
    plans = [rp for _, _, type_plans in planned_by_type.values() for rp in type_plans]
    plans += [(ref, planned) for ref, planned, _ in component_plans]

    with JournaledWrite(registry, datastore, "put") as write:
        write.intend(run_name, [(planned.path, ref.id, None) for ref, planned in plans])
        prepared = [write.stage(planned) for _, planned in plans]
        n_plain = sum(len(type_plans) for _, _, type_plans in planned_by_type.values())
        files: dict[uuid.UUID, list[FileRecord]] = {}
        for (ref, _), p in zip(plans[:n_plain], prepared):
            files.setdefault(ref.id, []).append(
                FileRecord(p.component, p.path, p.formatter, p.storage_class, p.staged.checksum, p.staged.size))
        component_writes = [(ref, p, existing) for (ref, _, existing), p in zip(component_plans, prepared[n_plain:])]
        linking = False  # True once the rows are in: a conflict then comes from linking staged files
        try:
            with write.registering() as conn:
                if replace and run_rec is not None:  # replaces in one run run one at a time: the loser of
                    registry.collections.read_locked(conn, run_name, exclusive=True)  # a race would retry forever
                run_rec = runs.ensure(conn, run_name, run_rec, allow_foreign_run=allow_foreign_run)
                old_paths: list[str] = []
                for type_rec, type_refs, _ in planned_by_type.values():
                    if replace:
                        old_paths += _remove_same(registry, conn, type_rec, run_rec, type_refs)
                    try:
                        write.insert_datasets(conn, run_rec, type_refs, files)
                    except ConflictError:
                        if replace:  # a concurrent replace inserted the same data ID first
                            raise _Contended() from None
                        raise
                old_paths += _insert_components(registry, conn, component_writes, replace)
                # Never a path written now: a replaced dataset whose file was missing is rewritten there.
                new_paths = {planned.path for _, planned in plans}
                write.delete_after_commit(run_name, [p for p in old_paths if p not in new_paths])
                linking = True
        except ConflictError:
            runs.forget(run_name)
            if replace and linking:  # a concurrent replace took the fresh name meanwhile: plan again
                raise _Contended() from None
            raise
        except BaseException:
            runs.forget(run_name)
            raise
        runs.remember(run_name, run_rec)
    return cast("list[DatasetRef]", refs)  # every None was filled by _plan_components


def _plan_components(registry: Registry, datastore: Datastore,
                     items: list[tuple[int, Any, str, str, Any, dict[str, Any]]],
                     refs: list[DatasetRef | None], run_name: str, run_rec: CollectionRecord | None,
                     replace: bool, batch_formatters: dict[Any, str]) -> list[tuple[DatasetRef, Any, Any]]:
    """Plan components written on their own (``put(wcs, "calexp.wcs", ...)``).

    The composite must already be in the run (or earlier in the same ``put_many``); the component
    becomes one more file of that dataset, and reads of the composite use it instead of the copy
    inside the composite's file. Returns ``(parent ref, planned write, existing record or None)``.
    """
    if not items:
        return []
    from .errors import DatasetNotFoundError

    batch = {(r.dataset_type.name, r.data_id): r for r in refs if r is not None}
    out = []
    seen: set[tuple[str, DataCoordinate, str]] = set()
    for index, obj, parent, component, data_id, extra in items:
        type_rec = registry.dataset_types.get(parent)
        coord = registry.data_ids.standardize(type_rec.group, data_id, extra)
        if (parent, coord, component) in seen:  # before any I/O, as for whole datasets
            raise ConflictError(f"component {component!r} of {parent!r} {coord} is given twice in one put_many; "
                                "give each component once")
        seen.add((parent, coord, component))
        ref = batch.get((parent, coord))
        existing = None
        if ref is not None:  # the composite is earlier in this put_many
            parent_formatter = batch_formatters[ref.id]
        else:
            with registry.transaction() as conn:
                found = registry.datasets.find_many(conn, type_rec, [coord], [run_rec]) if run_rec else {}
                ref = next(iter(found.values()), None)
                files = registry.datasets.files_of(conn, [ref.id]).get(ref.id, []) if ref else []
            if ref is None:
                raise DatasetNotFoundError(
                    f"cannot write component {component!r} of {parent!r} {coord}: no {parent!r} with that data "
                    f"ID in run {run_name!r}; put the whole {parent!r} first"
                )
            parent_formatter = next((f.formatter for f in files if not f.component), files[0].formatter)
            existing = next((f for f in files if f.component == component), None)
            if existing is not None and not replace:
                raise ConflictError(
                    f"component {component!r} of {parent!r} {coord} in run {run_name!r} was already written on "
                    "its own; pass replace=True to replace it"
                )
        planned = datastore.plan_component(ref, component, obj, parent_formatter,
                                           fresh_name=existing is not None)
        out.append((ref, planned, existing))
        refs[index] = ref
    return out


def _insert_components(registry: Registry, conn: Any, writes: list[tuple[DatasetRef, Any, Any]], replace: bool
                       ) -> list[str]:
    """Insert the file records of staged components; return the paths of records they replace."""
    if not writes:
        return []
    datasets = registry.datasets
    old_paths = []
    records: list[tuple[uuid.UUID, FileRecord]] = []
    for ref, p, existing in writes:
        if existing is not None and replace:
            datasets.delete_file_records(conn, ref.id, p.component)
            old_paths.append(existing.path)
        records.append((ref.id, FileRecord(p.component, p.path, p.formatter, p.storage_class, p.staged.checksum,
                                           p.staged.size)))
    datasets.insert_file_records(conn, records)
    return old_paths


def _remove_same(registry: Registry, conn: Any, type_rec: Any, run_rec: CollectionRecord, refs: Sequence[DatasetRef]
                 ) -> list[str]:
    existing = registry.datasets.find_many(conn, type_rec, [r.data_id for r in refs], [run_rec])
    if not existing:
        return []
    _, paths = registry.datasets.delete(conn, [r.id for r in existing.values()])
    return paths


def remove(registry: Registry, datastore: Datastore, refs: Iterable[DatasetRef], *, allow_foreign_run: bool = False) -> int:
    """Delete datasets (rows, then files); returns how many were removed. Their runs must be the caller's."""
    from ._ownership import check_runs_of_datasets

    by_run: dict[str, list[uuid.UUID]] = {}
    for r in refs:
        by_run.setdefault(r.run, []).append(r.id)
    if not by_run:
        return 0
    n = 0
    with ExitStack() as locks:
        for run_name in sorted(by_run):
            locks.enter_context(run_lock(datastore.root, run_name, action="remove datasets from", shared=True))
        with JournaledWrite(registry, datastore, "remove") as write, write.registering() as conn:
            check_runs_of_datasets(registry, conn, [i for ids in by_run.values() for i in ids],
                                   allow_foreign=allow_foreign_run)
            for run_name, ids in by_run.items():
                removed, run_paths = registry.datasets.delete(conn, list(dict.fromkeys(ids)))
                write.delete_after_commit(run_name, run_paths)
                n += removed
    return n


def remove_runs(registry: Registry, datastore: Datastore, access: RunAccess, pattern: str | Sequence[str], *,
                allow_foreign_run: bool = False) -> list[str]:
    """Delete RUN collections matching the glob(s), with their datasets and files."""
    from .registry._collections import CollectionType

    runs = registry.collections.query(pattern, types=[CollectionType.RUN])
    if not runs:
        return []
    with ExitStack() as locks:  # never delete a run an executor (or a put) is writing into right now
        for r in runs:
            locks.enter_context(run_lock(datastore.root, r.name, action="remove"))
        return _remove_runs(registry, datastore, access, runs, allow_foreign_run)


def _remove_runs(registry: Registry, datastore: Datastore, access: RunAccess, runs: list[Any],
                 allow_foreign_run: bool = False) -> list[str]:
    from ._ownership import check_run_owner

    with JournaledWrite(registry, datastore, "remove_runs") as write:
        with write.registering() as conn:
            locked = {r.name: check_run_owner(registry, conn, r, action="remove it", allow_foreign=allow_foreign_run,
                                              exclusive=True) for r in sorted(runs, key=lambda r: r.id)}  # lock order
            runs = [locked[r.name] for r in runs]
            for r in runs:
                write.delete_after_commit(r.name, registry.datasets.paths_in_runs(conn, [r.id]))
            registry.datasets.delete_runs(conn, [r.id for r in runs])
            registry.collections.remove(runs, conn)
        for r in runs:
            access.forget(r.name)
    for r in runs:
        run_dir = os.path.join(datastore.root, r.name)
        if os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)
    return [r.name for r in runs]
