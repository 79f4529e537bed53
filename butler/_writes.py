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
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from .errors import ButlerError, CollectionError, ConflictError

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
    refs: list[DatasetRef] = []
    from .registry._datasets import FileRecord

    try:
        for item in items:
            obj, dataset_type, data_id = item[0], item[1], item[2]
            extra = item[3] if len(item) > 3 else {}
            name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
            parent, component = split_component(name)
            if component:
                raise ButlerError(f"cannot put the component {name!r} on its own; put the whole {parent!r}")
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
        with registry.db.transaction(write=True) as conn:
            try:
                run_rec = butler._ensure_run(conn, run_name, run_rec)
                old_paths: list[str] = []
                for type_rec, type_refs, files in prepared_by_type.values():
                    if replace:
                        old_paths += _remove_same(butler, conn, type_rec, run_rec, type_refs)
                    registry.datasets.insert(conn, type_rec, run_rec, type_refs, files)
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
    return refs


def _remove_same(butler: Butler, conn: Any, type_rec: Any, run_rec: CollectionRecord, refs: Sequence[DatasetRef]
                 ) -> list[str]:
    registry = butler._registry
    existing = registry.datasets.find_many(conn, type_rec, [r.data_id for r in refs], [run_rec])
    if not existing:
        return []
    ids = [r.id for r in existing.values()]
    paths = [f.path for fs in registry.datasets.files_of(conn, ids).values() for f in fs]
    conn.execute(registry.schema.dataset.delete().where(registry.schema.dataset.c.dataset_id.in_(ids)))
    return paths


def remove(butler: Butler, refs: Iterable[DatasetRef]) -> int:
    """Delete datasets (rows and files); returns how many were removed."""
    butler._require_writeable()
    registry = butler._registry
    ids = list({r.id for r in refs})
    if not ids:
        return 0
    with registry.db.transaction(write=True) as conn:
        paths = [f.path for fs in registry.datasets.files_of(conn, ids).values() for f in fs]
        n = 0
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            n += conn.execute(
                registry.schema.dataset.delete().where(registry.schema.dataset.c.dataset_id.in_(chunk))
            ).rowcount
    butler._datastore.remove_files(p for p in paths if not os.path.isabs(p))
    return n


def remove_runs(butler: Butler, pattern: str | Sequence[str]) -> list[str]:
    """Delete RUN collections matching the glob(s), with their datasets and files."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    registry = butler._registry
    runs = registry.collections.query(pattern, types=[CollectionType.RUN])
    if not runs:
        return []
    ids = [r.id for r in runs]
    d = registry.schema.dataset
    f = registry.schema.file_record
    with registry.db.transaction(write=True) as conn:
        paths = conn.execute(
            sa.select(f.c.path).select_from(f.join(d, d.c.dataset_id == f.c.dataset_id)).where(d.c.run_id.in_(ids))
        ).scalars().all()
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

