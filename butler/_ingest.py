"""Ingest: register files that already exist as datasets, in one transaction.

Files are transferred into the repository layout (copy, move, hardlink or symlink) or left in
place ("direct", recording the absolute path). Checksums and sizes are computed from the files.
The destinations are journaled before the first transfer (``registry/_journal.py``); all registry
rows are inserted in one transaction with three bulk INSERTs (see ``DatasetManager.insert``); if
anything fails, transferred files are removed and the registry is untouched. A move is a link (or
a copy) until the registry commit, and the sources are unlinked after it: a crash at any instant
loses no source, and leaves only journaled files that `butler cleanup` resolves.

The per-file work is kept to what each file needs (ingest targets >= 20k files/s): one ``stat``
(which also gives the size), one read for the checksum of a small file, the path from the
file template with the implied values (band, day...) of all visits fetched in one query before
the loop, and the transfer itself (``os.link`` and ``os.symlink`` fail atomically on an
existing destination, so they need no existence check first).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._gc import gc_paused
from ._run_lock import run_lock
from ._write_path import JournaledWrite
from .datastore import checksum_bytes, checksum_file, get_storage_class
from .datastore._datastore import FileDatastore
from .datastore._formatters import get_formatter
from .dimensions import DataCoordinate
from .errors import ButlerError, ConflictError, StorageClassError
from .registry._datasets import FileRecord

if TYPE_CHECKING:
    from ._registration import RunAccess
    from .datastore._interface import Datastore
    from .registry._data_ids import DataIdResolver
    from .registry._registry import Registry

__all__ = ["TRANSFER_MODES", "ingest_files"]

TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct")

_SMALL_FILE = 1 << 20  # files up to this size are read whole for their checksum, bigger ones in blocks
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _formatter_for_extension(storage_class: Any, path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gz":
        ext = os.path.splitext(path[:-3])[1].lower() + ".gz"
    for name in storage_class.allowed_formatters:
        if get_formatter(name).extension.lower() == ext:
            return str(name)
    allowed = {n: get_formatter(n).extension for n in storage_class.allowed_formatters}
    raise StorageClassError(
        f"cannot ingest {path}: storage class {storage_class.name!r} has no formatter for {ext or 'no extension'!r}; "
        f"known extensions: {allowed}"
    )


def _checksum_and_size(path: str, size: int) -> tuple[str, int]:
    """Checksum and size of a file whose ``stat`` gave ``size``: small files in one read."""
    if size > _SMALL_FILE:
        return checksum_file(path), size
    fd = os.open(path, _O_READ)
    try:
        data = os.read(fd, size + 1)
        if len(data) > size:  # grew since the stat: read the rest
            chunks = [data]
            while chunk := os.read(fd, _SMALL_FILE):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return checksum_bytes(data), len(data)


_new_uuid = object.__new__
_set_attr = object.__setattr__
_UUID_UNKNOWN = uuid.SafeUUID.unknown
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_V4_SET = (0x8000 << 48) | (4 << 76)


def _uuid4s(n: int) -> list[uuid.UUID]:
    """``n`` random (version 4) UUIDs from one ``os.urandom`` call, as ``uuid.uuid4()`` makes them."""
    raw = os.urandom(16 * n)
    from_bytes = int.from_bytes
    out = []
    for start in range(0, 16 * n, 16):
        u = _new_uuid(uuid.UUID)
        _set_attr(u, "int", from_bytes(raw[start:start + 16], "big") & _V4_CLEAR | _V4_SET)
        _set_attr(u, "is_safe", _UUID_UNKNOWN)
        out.append(u)
    return out


def _coordinate_maker(resolver: DataIdResolver, group: Any) -> Any:
    """``standardize(data_id)`` for the data IDs of one ingest, like ``DataIdResolver.standardize``.

    A plain dict of exactly the group's required keys, with 64-bit ints for integer keys and,
    for string keys, values that the general path has already accepted in this ingest (the
    instrument name, typically), is made into a data ID directly; anything else (aliases,
    implied keys, values to convert, a string not seen yet) takes the general path, whose
    checks and errors therefore apply to every data ID.
    """
    general = resolver.standardize
    no_kwargs: dict[str, Any] = {}
    required = group.required
    universe = group.universe
    kinds = tuple(universe[name].key.type for name in required)
    if any(kind not in ("int", "str") for kind in kinds):
        return lambda data_id: general(group, data_id, no_kwargs)
    accepted: set[tuple[str, str]] = set()  # (key, string value) the general path accepted
    lo, hi = -(2**63), 2**63 - 1
    from_values = DataCoordinate.from_values
    n = len(required)
    str_keys = [(i, name) for i, (name, kind) in enumerate(zip(required, kinds)) if kind == "str"]
    # Aliases that are also dimension names would make a plain dict mean something else.
    clash = bool(set(resolver.aliases(None)) & set(required))

    def standardize(data_id: Any) -> DataCoordinate:
        if type(data_id) is dict and len(data_id) == n and not clash:
            try:
                values = tuple([data_id[name] for name in required])
            except KeyError:
                values = None
            if values is not None:
                for value, kind, name in zip(values, kinds, required):
                    if type(value) is int:
                        if kind != "int" or not lo <= value <= hi:
                            break
                    elif type(value) is not str or kind != "str" or (name, value) not in accepted:
                        break
                else:
                    return from_values(group, values)
        coord = general(group, data_id, no_kwargs)
        values = coord.values
        for i, name in str_keys:
            accepted.add((name, values[i]))
        return coord

    return standardize


def _path_maker(resolver: DataIdResolver, datastore: FileDatastore, dataset_type: str, group: Any, run: str) -> Any:
    """``path(ref, extension)``: ``datastore.relative_path(ref, datastore.template_values(ref), extension)``
    for the refs of one ingest (one dataset type and run, no component), with the template of
    each instrument looked up once, and the values dictionary built once per ref instead of three
    times."""
    templates = datastore.templates
    by_instrument: dict[Any, tuple[Any, tuple[str, ...], bool]] = {}
    required = group.required
    implied = group.implied
    expand_implied = resolver.expand_implied

    def path(ref: DatasetRef, extension: str) -> str:
        coord = ref.data_id
        values = coord.to_dict(implied=True)
        instrument = values.get("instrument")
        entry = by_instrument.get(instrument)
        if entry is None:
            template = templates.lookup(dataset_type, instrument)[0]
            entry = by_instrument[instrument] = (
                template, tuple(n for n in implied if n in template.names), "id" in template.names)
        template, implied_used, uses_id = entry
        if implied_used and any(n not in values for n in implied_used):
            values.update(expand_implied(coord))
        values["run"] = run
        values["dataset_type"] = dataset_type
        if uses_id:
            values["id"] = ref.id.hex
        return template.format(values, required) + extension

    return path


def ingest_files(registry: Registry, datastore: Datastore, runs: RunAccess, dataset_type: str,
                 files: Iterable[tuple[Any, Any]], *, run: str,
                 transfer: str, allow_foreign_run: bool) -> list[DatasetRef]:
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
    runs.check(run, allow_foreign_run)
    # Ingest makes ~10 objects per file, none of them in reference cycles: the cyclic garbage
    # collector would only rescan the whole heap every few thousand files (~5% of the time).
    # The run's lock is held shared, as by every write: clean-up of the run waits for it.
    with gc_paused(), run_lock(datastore.root, run, action="ingest into", shared=True):
        return _ingest(registry, datastore, runs, dataset_type, files, run=run, transfer=transfer,
                       allow_foreign_run=allow_foreign_run)


def _ingest(registry: Registry, datastore: Datastore, runs: RunAccess, dataset_type: str,
            files: Iterable[tuple[Any, Any]], *, run: str,
            transfer: str, allow_foreign_run: bool) -> list[DatasetRef]:
    if not isinstance(datastore, FileDatastore):
        raise ButlerError(f"ingest lays files out in a file datastore; this Butler's is a {type(datastore).__name__}")
    type_rec = registry.dataset_types.get(dataset_type)
    dt = type_rec.dataset_type
    group = type_rec.group
    storage_class = get_storage_class(dt.storage_class)
    run_name = run
    run_rec = runs.check(run_name, allow_foreign_run)

    # Pass 1: validate every source and data ID before anything is transferred.
    items: list[tuple[str, int, Any]] = []
    standardize = _coordinate_maker(registry.data_ids, group)
    for source, data_id in files:
        source = os.path.abspath(os.fspath(source))
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise FileNotFoundError(f"cannot ingest {source}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"cannot ingest {source}: not a regular file")
        items.append((source, st.st_size, standardize(data_id)))
    if transfer != "direct":
        registry.data_ids.prime_implied([coord for _, _, coord in items])

    # Pass 2: refs, destination paths, checksums.
    refs: list[DatasetRef] = []
    records: dict[uuid.UUID, list[FileRecord]] = {}
    plan: list[tuple[str, str, str]] = []  # (source, absolute destination, destination as recorded)
    formatter_cache: dict[str, tuple[str, str]] = {}  # source extension -> (formatter, its extension)
    trusted = DatasetRef._trusted
    relative_path = _path_maker(registry.data_ids, datastore, dt.name, group, run_name)
    prefix = datastore.root.rstrip("/") + "/"
    splitext = os.path.splitext
    sc_name = storage_class.name
    for (source, size, coord), id_ in zip(items, _uuid4s(len(items))):
        ref = trusted(dt, coord, run_name, id_)
        ext = splitext(source)[1].lower()
        fmt = formatter_cache.get(ext)
        if fmt is None:
            name = _formatter_for_extension(storage_class, source)
            fmt = formatter_cache[ext] = (name, get_formatter(name).extension)
        if transfer == "direct":
            rel = dest = source
        else:
            rel = relative_path(ref, fmt[1])
            dest = prefix + rel  # templates are relative and '..'-free (checked when parsed)
        plan.append((source, dest, rel))
        checksum, size = _checksum_and_size(source, size)
        records[id_] = [FileRecord("", rel, fmt[0], sc_name, checksum, size)]
        refs.append(ref)

    # Pass 3: journal the destinations, transfer, then insert every row in one transaction, through
    # the one write path (`butler._write_path`): it undoes the transfers on failure, and a move only
    # links (or copies) until the commit, its sources unlinked after it (no crash loses a source).
    with JournaledWrite(registry, datastore, "ingest") as write:
        if transfer != "direct":
            write.intend(run_name, [(rel, ref.id, source if transfer == "move" else None)
                                    for (source, _, rel), ref in zip(plan, refs)], move=transfer == "move")
            for source, dest, _ in plan:
                try:
                    write.place(source, dest, transfer)
                except ConflictError:
                    raise ConflictError(f"cannot ingest {source}: {dest} already exists") from None
        try:
            with write.registering() as conn:
                run_rec = runs.ensure(conn, run_name, run_rec, allow_foreign_run=allow_foreign_run)
                registry.datasets.insert(conn, type_rec, run_rec, refs, records)
        except BaseException:
            runs.forget(run_name)
            raise
    return refs
