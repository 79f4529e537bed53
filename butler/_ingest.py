"""Ingest: register files that already exist as datasets, in one transaction.

Files are transferred into the repository layout (copy, move, hardlink or symlink) or left in
place ("direct", recording the absolute path). Checksums and sizes are computed from the files.
All registry rows are inserted with three multi-row INSERTs; if anything fails, transferred
files are removed (or moved back) and the registry is untouched.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from .datastore import checksum_file, get_storage_class
from .datastore._formatters import get_formatter
from .errors import ConflictError, StorageClassError

if TYPE_CHECKING:
    from ._butler import Butler

__all__ = ["ingest_files", "TRANSFER_MODES"]

TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct")


def _formatter_for_extension(storage_class: Any, path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gz":
        ext = os.path.splitext(path[:-3])[1].lower() + ".gz"
    for name in storage_class.allowed_formatters:
        if get_formatter(name).extension.lower() == ext:
            return name
    allowed = {n: get_formatter(n).extension for n in storage_class.allowed_formatters}
    raise StorageClassError(
        f"cannot ingest {path}: storage class {storage_class.name!r} has no formatter for {ext or 'no extension'!r}; "
        f"known extensions: {allowed}"
    )


def ingest_files(butler: Butler, dataset_type: str, files: Iterable[tuple[Any, Any]], *, run: str | None,
                 transfer: str, allow_foreign_run: bool) -> list[DatasetRef]:
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
    registry = butler._registry
    datastore = butler._datastore
    type_rec = registry.dataset_types.get(dataset_type)
    storage_class = get_storage_class(type_rec.dataset_type.storage_class)
    run_name, run_rec = butler._run_record(run, allow_foreign_run)
    from .registry._datasets import FileRecord

    refs: list[DatasetRef] = []
    records: dict[uuid.UUID, list[FileRecord]] = {}
    plan: list[tuple[str, str]] = []  # (source, absolute destination)
    formatter_cache: dict[str, str] = {}
    items = []
    for source, data_id in files:
        source = os.path.abspath(os.fspath(source))
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise FileNotFoundError(f"cannot ingest {source}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"cannot ingest {source}: not a regular file")
        items.append((source, st.st_size, butler._standardize(type_rec.group, data_id, {})))
    if transfer != "direct":
        butler._prime_implied([coord for _, _, coord in items])
    for source, size, coord in items:
        ref = DatasetRef._trusted(type_rec.dataset_type, coord, run_name, uuid.uuid4())
        ext = os.path.splitext(source)[1].lower()
        fmt = formatter_cache.get(ext)
        if fmt is None:
            fmt = formatter_cache[ext] = _formatter_for_extension(storage_class, source)
        if transfer == "direct":
            rel = dest = source
        else:
            rel = datastore.relative_path(ref, butler._template_values(ref), get_formatter(fmt).extension)
            dest = datastore.abspath(rel)
        plan.append((source, dest))
        records[ref.id] = [FileRecord("", rel, fmt, storage_class.name, checksum_file(source), size)]
        refs.append(ref)
    done: list[tuple[str, str]] = []
    try:
        if transfer != "direct":
            made: set[str] = set()
            for source, dest in plan:
                d = os.path.dirname(dest)
                if d not in made:
                    os.makedirs(d, exist_ok=True)
                    made.add(d)
                if transfer != "hardlink" and os.path.lexists(dest):
                    raise ConflictError(f"cannot ingest {source}: {dest} already exists")
                try:
                    _transfer(source, dest, transfer)
                except FileExistsError:
                    raise ConflictError(f"cannot ingest {source}: {dest} already exists") from None
                done.append((source, dest))
        with registry.db.transaction(write=True) as conn:
            try:
                run_rec = butler._ensure_run(conn, run_name, run_rec)
                registry.datasets.insert(conn, type_rec, run_rec, refs, records)
            except BaseException:
                registry.collections.forget(run_name)
                raise
    except BaseException:
        for source, dest in reversed(done):
            if transfer == "move":
                shutil.move(dest, source)
            else:
                try:
                    os.unlink(dest)
                except FileNotFoundError:
                    pass
        raise
    return refs


def _transfer(source: str, dest: str, mode: str) -> None:
    if mode == "copy":
        shutil.copyfile(source, dest)
    elif mode == "move":
        shutil.move(source, dest)
    elif mode == "hardlink":
        os.link(source, dest)
    elif mode == "symlink":
        os.symlink(source, dest)
