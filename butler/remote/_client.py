"""The client of a remote repository: a `RegistryReader` whose every call is one request to the
server, and (``_remote_datastore.py``) a `DatastoreReader` that fetches files into a verified
local cache.

Data IDs are normalised here, against the server's universe and instruments' aliases (fetched once
at open), so a bad data ID fails before any request and reads exactly as a local one; the server
answers with refs and file records in the protocol's compact encoding (``_protocol.py``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
from ..errors import DataIdError, RemoteError, RemoteProtocolError
from ..registry._data_ids import DataIdNormalizer
from ._protocol import (
    API_PREFIX,
    PROTOCOL_VERSION,
    REPORT_HEADER,
    decode_collection,
    decode_data_id,
    decode_dataset_type,
    decode_files,
    decode_found,
    decode_provenance,
    decode_records,
    decode_refs,
    encode_data_id,
    encode_refs,
    header,
)
from ._remote_datastore import RemoteDatastore, cache_record
from ._transport import HttpTransport, Transport, call, call_with_payload, decode_reply, download

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from .._dataset_type import DatasetType
    from ..registry._collections import CollectionRecord, CollectionType
    from ..registry._datasets import FileRecord, FoundDataset
    from ..registry._interface import RegistryReader
    from ..registry._registry import Registry
    from ..transfer._export import ExportReport

__all__ = ["RemoteRegistry", "RemoteRepository", "connect", "open_remote"]

INLINE_BYTES = 64 << 10
"""Files up to this size come with their lookup (`find_dataset`), so a small ``get`` is one round trip."""


class RemoteRegistry:
    """A `RegistryReader` answered by a butler server (see the module docstring)."""

    def __init__(self, transport: Transport, info: Mapping[str, Any], datastore: RemoteDatastore) -> None:
        self.transport = transport
        self._datastore = datastore
        self.universe: DimensionUniverse = DimensionUniverse.from_text(info["universe"])
        self._instruments: dict[str, dict[str, Any]] = dict(info.get("instruments") or {})
        self._types: dict[str, DatasetType] = {}
        self._data_ids = DataIdNormalizer(self)  # aliases and constraints need no server

    @property
    def data_ids(self) -> DataIdNormalizer:
        return self._data_ids

    @property
    def instruments(self) -> dict[str, dict[str, Any]]:
        return self._instruments

    def _call(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        return call(self.transport, name, args)

    def dataset_type(self, name: str) -> DatasetType:
        dt = self._types.get(name)
        if dt is None:
            dt = self._types[name] = decode_dataset_type(self._call("dataset_type", {"name": name}))
        return dt

    def query_dataset_types(self, pattern: str = "*") -> list[DatasetType]:
        types = [decode_dataset_type(t) for t in self._call("query_dataset_types", {"pattern": pattern})]
        self._types.update((t.name, t) for t in types)
        return types

    def collection(self, name: str) -> CollectionRecord:
        return decode_collection(self._call("collection", {"name": name}))

    def query_collections(self, pattern: str | Sequence[str] = "*",
                          types: Iterable[CollectionType] | None = None) -> list[CollectionRecord]:
        kinds = None if types is None else [t.name for t in types]
        pat = pattern if isinstance(pattern, str) else list(pattern)
        return [decode_collection(r) for r in self._call("query_collections", {"pattern": pat, "types": kinds})]

    def chain_children(self, name: str) -> list[str]:
        return list(self._call("chain_children", {"name": name}))

    def resolve_collections(self, collections: str | Sequence[str]) -> list[CollectionRecord]:
        return [decode_collection(r) for r in self._call("resolve_collections",
                                                          {"collections": _collections(collections)})]

    def find_dataset(self, dataset_type: str, data_id: DataCoordinate,
                     collections: str | Sequence[str]) -> FoundDataset | None:
        data, payload = call_with_payload(self.transport, "find_dataset", {
            "dataset_type": dataset_type, "data_id": encode_data_id(data_id),
            "collections": _collections(collections), "inline": INLINE_BYTES})
        found = decode_found(self.universe, data)
        if found is None:
            return None
        files = tuple(cache_record(found.ref.id, f) for f in found.files)
        offset = 0
        for record, size in zip(files, data.get("inline") or ()):
            if size is not None:
                self._datastore.offer(record, payload[offset:offset + size])
                offset += size
        return found._replace(files=files)

    def find_datasets(self, dataset_type: str, data_ids: Sequence[DataCoordinate],
                      collections: str | Sequence[str]) -> dict[DataCoordinate, DatasetRef]:
        coords = list(data_ids)
        data = self._call("find_datasets", {"dataset_type": dataset_type,
                                            "data_ids": [encode_data_id(c) for c in coords],
                                            "collections": _collections(collections)})
        refs = decode_refs(self.universe, data)
        return {coords[i]: ref for i, ref in zip(data["keys"], refs)}

    def files_of(self, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FileRecord]]:
        data = self._call("files_of", {"ids": [i.hex for i in dataset_ids]})
        out = {}
        for key, rows in data.items():
            dataset_id = uuid.UUID(hex=key)
            out[dataset_id] = [cache_record(dataset_id, f) for f in decode_files(rows)]
        return out

    def explain_not_found(self, dataset_type: str, data_id: DataCoordinate, collections: str | Sequence[str]) -> str:
        return str(self._call("explain_not_found", {"dataset_type": dataset_type, "data_id": encode_data_id(data_id),
                                                    "collections": _collections(collections)}))

    def query_datasets(self, dataset_type: str | DatasetType, *, collections: Any, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None, find_first: bool | None = None,
                       **kwargs: Any) -> list[DatasetRef]:
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        constraints = self._data_ids.constraints(data_id, kwargs)  # a bad key fails here, before the request
        data = self._call("query_datasets", {"dataset_type": name, "collections": _collections(collections),
                                             "where": where, "bind": _bind(bind), "data_id": constraints,
                                             "find_first": find_first})
        return decode_refs(self.universe, data)

    def query_data_ids(self, dimensions: str | Iterable[str], *, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None,
                       datasets: str | Iterable[str] | None = None, collections: Any = None,
                       **kwargs: Any) -> list[DataCoordinate]:
        dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        constraints = self._data_ids.constraints(data_id, kwargs)
        data = self._call("query_data_ids", {
            "dimensions": dims, "where": where, "bind": _bind(bind), "data_id": constraints,
            "datasets": None if datasets is None else ([datasets] if isinstance(datasets, str) else list(datasets)),
            "collections": None if not collections else _collections(collections)})
        out = []
        for block in data:
            out += [decode_data_id(self.universe, block["dimensions"], row) for row in block["rows"]]
        return out

    def query_dimension_records(self, element: str, *, where: str | None = None, bind: Mapping[str, Any] | None = None,
                                data_id: Any = None, **kwargs: Any) -> list[DimensionRecord]:
        if element not in self.universe:
            raise DataIdError(f"unknown dimension element {element!r}; known: {[e.name for e in self.universe.elements]}")
        constraints = self._data_ids.constraints(data_id, kwargs)
        data = self._call("query_dimension_records", {"element": element, "where": where, "bind": _bind(bind),
                                                      "data_id": constraints})
        return decode_records(self.universe, data)

    def refresh(self) -> None:
        data = self._call("refresh")
        self._instruments = dict(data.get("instruments") or {})
        self._types.clear()


def _collections(collections: Any) -> str | list[str]:
    from ..registry._collections import check_collection_names

    if isinstance(collections, str):
        return collections
    return check_collection_names(collections)


def _json_data_id(data_id: Mapping[str, Any]) -> dict[str, Any]:
    """A data ID for a request: a ``time`` as ns (it may be an astropy Time or an ISO string here)."""
    out = dict(data_id)
    if out.get("time") is not None:
        from .._time import to_nsec

        out["time"] = to_nsec(out["time"])
    return out


def _bind(bind: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if bind is None:
        return None
    import json

    try:
        json.dumps(dict(bind))
    except TypeError as err:
        raise DataIdError(f"bind values of a remote query travel as JSON (numbers, strings, lists): {err}") from None
    return dict(bind)


class RemoteRepository:
    """A remote repository opened by a Butler: its registry (a client of `butler serve`, or the SQL
    registry of a statically hosted repository read over HTTP) and its datastore client."""

    def __init__(self, url: str, transport: Transport, registry: RegistryReader, datastore: RemoteDatastore, *,
                 sql_registry: Registry | None = None) -> None:
        self.url = url
        self.transport = transport
        self.registry = registry
        self.datastore = datastore
        self.sql_registry = sql_registry
        """The read-only SQL registry of a statically hosted repository (None for `butler serve`)."""

    def unsupported(self, what: str) -> RemoteError:
        """The error of an operation that needs the repository's own registry or files."""
        return RemoteError(
            f"{what} needs the repository's own registry and files, and {self.url} is a remote repository, which "
            "answers reads only (get, get_deferred, exists, find_dataset(s), query_*, collections and dataset "
            "types); run it where the repository is, or copy the data here with transfer_from (docs/remote.md)")

    def export(self, path: str, refs: Sequence[Any]) -> ExportReport:
        """Write a zip bundle of ``refs`` (with their files, records and provenance) made by the server
        to ``path`` (see `Butler.export`; checksums are verified by whoever imports it)."""
        import json
        import time

        from ..transfer._export import ExportReport

        if self.sql_registry is not None:
            raise RemoteError(f"{self.url} is a repository served as static files, which cannot make bundles: to cache "
                              "its datasets (an upstream), serve it with `butler serve` or use its directory")
        start = time.perf_counter()
        wanted = [[r.dataset_type if isinstance(r.dataset_type, str) else r.dataset_type.name, r.id.hex] for r in refs]
        try:
            reply = download(self.transport, "export", {"refs": wanted}, path)
        except BaseException:
            if os.path.exists(path):
                os.remove(path)
            raise
        summary = json.loads(header(reply.headers, REPORT_HEADER) or "{}")
        summary["seconds"] = time.perf_counter() - start
        return ExportReport(path=path, **summary)

    def provenance(self, ref: DatasetRef) -> dict[str, Any] | None:
        """`Butler.provenance`, asked of the server."""
        return decode_provenance(call(self.transport, "provenance", {"ref": encode_refs([ref])}))

    def query_provenance(self, *, run: str | None, task: str | None, status: str | Iterable[str] | None
                         ) -> list[dict[str, Any]]:
        """`Butler.query_provenance`, asked of the server."""
        wanted = status if status is None or isinstance(status, str) else list(status)
        records = call(self.transport, "query_provenance", {"run": run, "task": task, "status": wanted})
        return [r for r in map(decode_provenance, records) if r is not None]

    def recorded_inputs(self, refs: Sequence[DatasetRef]) -> list[str | None]:
        """`Butler.recorded_inputs`, asked of the server."""
        return list(call(self.transport, "recorded_inputs", {"refs": encode_refs(refs)}))

    def observation_times(self, element: str, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """`Butler.observation_times`, asked of the server."""
        rows = call(self.transport, "observation_times", {"element": element, "keys": [list(k) for k in keys]})
        return {(instrument, number): values for instrument, number, values in rows}

    def find_calibration(self, dataset_type: str, data_id: Mapping[str, Any], collections: Any) -> FoundDataset | None:
        """The calibration of ``dataset_type`` valid for ``data_id`` (with its observation or a ``time``
        in ns), found by the server along ``collections`` (None: its ``<instrument>/calib``)."""
        data = call(self.transport, "find_calibration", {
            "dataset_type": dataset_type, "data_id": _json_data_id(data_id),
            "collections": None if collections is None else _collections(collections)})
        found = decode_found(self.registry.universe, data)
        if found is None:
            return None
        return found._replace(files=tuple(cache_record(found.ref.id, f) for f in found.files))

    def uri(self, ref: DatasetRef, component: str = "") -> str:
        """The URL of a dataset's file on the server."""
        base = self.url.rstrip("/")
        return f"{base}{API_PREFIX}/datasets/{ref.id.hex}/file" + (f"?component={component}" if component else "")


def default_cache_dir(url: str) -> str:
    """Where fetched files of ``url`` are kept unless the caller says: ``$BUTLER_CACHE_DIR`` or
    ``~/.cache/butler``, then one directory per repository URL."""
    base = os.environ.get("BUTLER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "butler")
    return os.path.join(base, "remote", hashlib.blake2b(url.encode(), digest_size=8).hexdigest())


def open_remote(url: str, *, token: str | None = None, cache_dir: str | os.PathLike[str] | None = None
                ) -> RemoteRepository:
    """Open the repository a butler server serves at ``url``: ``http(s)://`` (the token, if the server
    needs one, from ``token`` or ``$BUTLER_TOKEN``) or ``ssh://[user@]host[:port]/path`` (ssh
    authenticates; see ``_ssh.py``)."""
    transport: Transport
    if url.lower().startswith("ssh://"):
        from ._ssh import ssh_transport

        transport = ssh_transport(url)
        return connect(url, transport, cache_dir=cache_dir)
    token = token if token is not None else os.environ.get("BUTLER_TOKEN") or None
    transport = HttpTransport(url, token=token)
    return connect(url, transport, cache_dir=cache_dir, static_fallback=True)


def connect(url: str, transport: Transport, *, cache_dir: str | os.PathLike[str] | None = None,
            static_fallback: bool = False) -> RemoteRepository:
    """The repository a butler server answers through ``transport`` (its info asked first, so a
    server of another protocol version is refused before any other request); with
    ``static_fallback``, a URL that is not a butler server is opened as a repository served as
    static files."""
    cache = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(url)
    try:
        reply = transport.request("GET", f"{API_PREFIX}/info")
        if static_fallback and (reply.status != 200 or not _is_json(reply.headers)):
            if reply.status in (401, 403):
                decode_reply(transport, reply, "info")  # the server's refusal
            return _open_static(url, transport, cache, reply.status)
        info = decode_reply(transport, reply, "info")
    except BaseException:
        transport.close()
        raise
    if not isinstance(info, dict) or info.get("protocol") != PROTOCOL_VERSION or "universe" not in info:
        transport.close()
        raise RemoteProtocolError(
            f"{url} speaks butler protocol version {info.get('protocol') if isinstance(info, dict) else '?'}, this "
            f"client speaks version {PROTOCOL_VERSION}: upgrade the older side")
    datastore = RemoteDatastore(transport, cache)
    return RemoteRepository(url, transport, RemoteRegistry(transport, info, datastore), datastore)


def _is_json(headers: Mapping[str, str]) -> bool:
    return (header(headers, "Content-Type") or "").startswith("application/json")


def _open_static(url: str, transport: Transport, cache: str, status: int) -> RemoteRepository:
    """The repository served as static files at ``url`` (see ``_static.py``), or a specific error."""
    from ..errors import RepositoryNotFoundError
    from ._remote_datastore import StaticDatastore
    from ._static import open_static_registry

    try:
        registry = open_static_registry(url, cache_dir=os.path.join(cache, "registry"))
    except RepositoryNotFoundError as err:
        transport.close()
        raise RemoteProtocolError(
            f"{url} is neither a butler server (`butler serve` answers {API_PREFIX}/info; this server answered HTTP "
            f"{status}) nor a repository served as static files ({err}); is it a butler server or a repository "
            "directory?") from None
    return RemoteRepository(url, transport, registry, StaticDatastore(transport, os.path.join(cache, "files")),
                            sql_registry=registry)
