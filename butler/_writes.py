"""Write operations of the Butler: put, remove, tag.

``put_many`` is the one write path: validate and serialise every object, stage the files,
insert all registry rows in one transaction, then move the files into place before the commit.
Any failure discards the staged files and rolls the transaction back, so the repository is
left exactly as it was.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from ._run_lock import run_lock
from .errors import CollectionError, ConflictError
from .registry._datasets import FileRecord

if TYPE_CHECKING:
    from ._butler import Butler
    from .registry._collections import CollectionRecord

__all__ = ["associate", "put_many", "remove", "remove_runs"]


def associate(butler: Butler, collection: str, refs: Iterable[DatasetRef]) -> None:
    """Add refs to a TAGGED collection (set-based); a different ref for the same data ID conflicts."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    registry = butler._registry
    rec = registry.collections.get(collection)
    if rec.type != CollectionType.TAGGED:
        raise CollectionError(f"{collection!r} is a {rec.type.name} collection; only TAGGED ones take refs")
    by_type: dict[str, list[DatasetRef]] = {}
    for ref in refs:
        by_type.setdefault(ref.dataset_type.name, []).append(ref)
    with registry.db.transaction(write=True) as conn:
        for name, group_refs in by_type.items():
            type_rec = registry.dataset_types.get(name)
            existing = registry.datasets.find_many(conn, type_rec, [r.data_id for r in group_refs], [rec])
            rows = []
            for ref in group_refs:
                present = existing.get(ref.data_id)
                if present is not None:
                    if present.id != ref.id:
                        raise ConflictError(
                            f"{collection!r} already holds a different {name!r} for {ref.data_id} "
                            f"(id {present.id} from run {present.run!r}); disassociate it first"
                        )
                    continue
                row = dict(zip(type_rec.group.required, ref.data_id.values))
                row.update(dataset_type_id=type_rec.id, dataset_id=ref.id, collection_id=rec.id)
                rows.append(row)
                existing[ref.data_id] = ref
            if rows:
                try:
                    conn.execute(type_rec.tags.insert(), rows)
                except sa.exc.IntegrityError as err:
                    raise ConflictError(f"cannot tag {name!r} refs into {collection!r}: {err.orig}") from None


def put_many(butler: Butler, items: Iterable[tuple[Any, ...]], *, run: str | None = None, replace: bool = False,
             allow_foreign_run: bool = False) -> list[DatasetRef]:
    """Store many objects in one transaction: ``items`` are ``(obj, dataset_type, data_id[, kwargs])``."""
    butler._require_writeable()
    registry = butler._registry
    datastore = butler._datastore
    run_name, run_rec = butler._run_record(run, allow_foreign_run)
    prepared_by_type: dict[str, tuple[Any, list[DatasetRef], dict[uuid.UUID, list]]] = {}
    all_prepared = []
    refs: list[DatasetRef | None] = []
    component_items: list[tuple[int, Any, str, str, Any, dict]] = []

    try:
        for item in items:
            obj, dataset_type, data_id = item[0], item[1], item[2]
            extra = item[3] if len(item) > 3 else {}
            name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
            parent, component = split_component(name)
            if component:  # a component of an existing composite, written on its own (see _stage_components)
                component_items.append((len(refs), obj, parent, component, data_id, extra))
                refs.append(None)
                continue
            type_rec = registry.dataset_types.get(name)
            if isinstance(dataset_type, DatasetType) and dataset_type != type_rec.dataset_type:
                raise ConflictError(
                    f"dataset type {name!r} given differs from the registered one: "
                    f"{type_rec.dataset_type.describe_difference(dataset_type)}"
                )
            coord = butler._standardize(type_rec.group, data_id, extra)
            ref = DatasetRef._trusted(type_rec.dataset_type, coord, run_name, uuid.uuid4())
            prepared = datastore.prepare(ref, obj, butler._template_values(ref))
            all_prepared.extend(prepared)
            entry = prepared_by_type.setdefault(name, (type_rec, [], {}))
            entry[1].append(ref)
            entry[2][ref.id] = [FileRecord(p.component, p.path, p.formatter, p.storage_class, p.staged.checksum,
                                           p.staged.size) for p in prepared]
            refs.append(ref)
        batch_formatters = {rid: fs[0].formatter for _, _, by_id in prepared_by_type.values()
                            for rid, fs in by_id.items()}
        component_writes = _stage_components(butler, component_items, refs, run_name, run_rec, replace,
                                             batch_formatters)
        all_prepared.extend(w[1] for w in component_writes)
        with registry.db.transaction(write=True) as conn:
            try:
                run_rec = butler._ensure_run(conn, run_name, run_rec)
                old_paths: list[str] = []
                for type_rec, type_refs, files in prepared_by_type.values():
                    if replace:
                        old_paths += _remove_same(butler, conn, type_rec, run_rec, type_refs)
                    registry.datasets.insert(conn, type_rec, run_rec, type_refs, files)
                old_paths += _insert_components(butler, conn, component_writes, replace)
                datastore.commit(all_prepared, overwrite=replace)
            except BaseException:
                butler._checked_runs.pop(run_name, None)
                registry.collections.forget(run_name)
                raise
        butler._checked_runs[run_name] = run_rec
    except BaseException:
        datastore.discard(all_prepared)
        raise
    if replace:
        stale = set(old_paths) - {p.path for p in all_prepared}
        datastore.remove_files(stale)
    return refs  # type: ignore[return-value]  # every None was filled by _stage_components


def _stage_components(butler: Butler, items: list[tuple[int, Any, str, str, Any, dict]],
                      refs: list[DatasetRef | None], run_name: str, run_rec: CollectionRecord | None,
                      replace: bool, batch_formatters: dict[Any, str]) -> list[tuple[DatasetRef, Any, Any]]:
    """Stage components written on their own (``put(wcs, "calexp.wcs", ...)``).

    The composite must already be in the run (or earlier in the same ``put_many``); the component
    becomes one more file of that dataset, and reads of the composite use it instead of the copy
    inside the composite's file. Returns ``(parent ref, prepared write, existing record or None)``.
    """
    if not items:
        return []
    from .errors import DatasetNotFoundError

    registry = butler._registry
    datastore = butler._datastore
    batch = {(r.dataset_type.name, r.data_id): r for r in refs if r is not None}
    out = []
    try:
        for index, obj, parent, component, data_id, extra in items:
            type_rec = registry.dataset_types.get(parent)
            coord = butler._standardize(type_rec.group, data_id, extra)
            ref = batch.get((parent, coord))
            existing = None
            if ref is not None:  # the composite is earlier in this put_many
                parent_formatter = batch_formatters[ref.id]
            else:
                with registry.db.transaction() as conn:
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
            prepared = datastore.prepare_component(ref, component, obj, butler._template_values(ref),
                                                   parent_formatter)
            out.append((ref, prepared, existing))
            refs[index] = ref
    except BaseException:
        datastore.discard(w[1] for w in out)
        raise
    return out


def _insert_components(butler: Butler, conn: Any, writes: list[tuple[DatasetRef, Any, Any]], replace: bool
                       ) -> list[str]:
    """Insert the file records of staged components; return the paths of records they replace."""
    if not writes:
        return []
    f = butler._registry.schema.file_record
    old_paths = []
    rows = []
    for ref, p, existing in writes:
        if existing is not None and replace:
            conn.execute(f.delete().where(f.c.dataset_id == ref.id).where(f.c.component == p.component))
            old_paths.append(existing.path)
        rows.append({"dataset_id": ref.id, "component": p.component, "path": p.path, "formatter": p.formatter,
                     "storage_class": p.storage_class, "checksum": p.staged.checksum, "file_size": p.staged.size})
    try:
        conn.execute(f.insert(), rows)
    except sa.exc.IntegrityError as err:
        raise ConflictError(f"component file records conflict (written twice, or concurrently?): {err.orig}") from None
    return old_paths


def _remove_same(butler: Butler, conn: Any, type_rec: Any, run_rec: CollectionRecord, refs: Sequence[DatasetRef]
                 ) -> list[str]:
    registry = butler._registry
    existing = registry.datasets.find_many(conn, type_rec, [r.data_id for r in refs], [run_rec])
    if not existing:
        return []
    _, paths = _delete_datasets(registry, conn, [r.id for r in existing.values()])
    return paths


def _delete_datasets(registry: Any, conn: Any, ids: Sequence[Any]) -> tuple[int, list[str]]:
    """Delete dataset rows (cascading to tags and file records) in chunks; return the count and
    the paths of their files, for the caller to remove once the transaction commits."""
    paths = [f.path for fs in registry.datasets.files_of(conn, ids).values() for f in fs]
    table = registry.schema.dataset
    n = 0
    for start in range(0, len(ids), 5000):
        n += conn.execute(table.delete().where(table.c.dataset_id.in_(ids[start:start + 5000]))).rowcount
    return n, paths


def remove(butler: Butler, refs: Iterable[DatasetRef], *, allow_foreign_run: bool = False) -> int:
    """Delete datasets (rows and files); returns how many were removed. Their runs must be the caller's."""
    butler._require_writeable()
    from ._ownership import check_runs_of_datasets

    registry = butler._registry
    ids = list({r.id for r in refs})
    if not ids:
        return 0
    with registry.db.transaction(write=True) as conn:
        check_runs_of_datasets(registry, conn, ids, allow_foreign=allow_foreign_run)
        n, paths = _delete_datasets(registry, conn, ids)
    butler._datastore.remove_files(p for p in paths if not os.path.isabs(p))
    return n


def remove_runs(butler: Butler, pattern: str | Sequence[str], *, allow_foreign_run: bool = False) -> list[str]:
    """Delete RUN collections matching the glob(s), with their datasets and files."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    registry = butler._registry
    runs = registry.collections.query(pattern, types=[CollectionType.RUN])
    if not runs:
        return []
    with ExitStack() as locks:  # never delete a run an executor is writing into right now
        for r in runs:
            locks.enter_context(run_lock(butler.root, r.name, action="remove"))
        return _remove_runs(butler, runs, allow_foreign_run)


def _remove_runs(butler: Butler, runs: list[Any], allow_foreign_run: bool = False) -> list[str]:
    from ._ownership import check_run_owner

    registry = butler._registry
    d = registry.schema.dataset
    with registry.db.transaction(write=True) as conn:
        locked = {r.name: check_run_owner(registry, conn, r, action="remove it", allow_foreign=allow_foreign_run,
                                          exclusive=True) for r in sorted(runs, key=lambda r: r.id)}  # lock order
        runs = [locked[r.name] for r in runs]
        ids = [r.id for r in runs]
        paths = registry.datasets.paths_in_runs(conn, ids)
        conn.execute(d.delete().where(d.c.run_id.in_(ids)))
        registry.collections.remove(runs, conn)
    for r in runs:
        butler._checked_runs.pop(r.name, None)
    butler._datastore.remove_files(p for p in paths if not os.path.isabs(p))
    for r in runs:
        run_dir = os.path.join(butler.root, r.name)
        if os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)
    return [r.name for r in runs]

