"""Reading a remote repository's files: fetched by dataset id, verified, cached, then read locally.

A file crosses a trust boundary when it is fetched, so its bytes are checked against the size and
checksum of its file record (from the registry, not from the server's file reply) before they are
kept: a damaged or truncated transfer is refused (`ChecksumError`) and fetched once more, never
cached. A directory dataset (a zarr store) is fetched member by member: its manifest first,
checked against the recorded checksum, then every member against the manifest, into a temporary
directory renamed into place when complete, so the cache never holds half a store.

The cache is a directory of files named by dataset id, component and file name, in 256
subdirectories (a dataset's content never changes; one directory level keeps a first fetch to one
file creation), read with the ordinary file datastore: a re-read is a local read, verified like any other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..datastore._directory_io import MANIFEST_NAME, MANIFEST_PREFIX, parse_manifest, remove_path
from ..datastore._file_io import verify_bytes, write_atomic
from ..errors import ChecksumError, DatasetNotFoundError, RemoteError, RemoteProtocolError
from ._protocol import API_PREFIX, component_problem, member_problem
from ._transport import Transport, decode_reply

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from ..datastore._datastore import FileDatastore, VerifyProblem
    from ..registry._datasets import FileRecord

__all__ = ["RemoteDatastore", "StaticDatastore", "cache_record"]

_NOT_REMOTE = object()
"""`RemoteDatastore._read_store_remotely`'s answer when the store is to be fetched whole instead."""

_OFFERED = 32
"""Inline file bytes kept for the reads that follow their lookups."""

_ATTEMPTS = 2
"""Fetches of one file before a damaged transfer is reported (the second one is a retry)."""


class RemoteDatastore:
    """A `DatastoreReader` of a remote repository's files (see the module docstring)."""

    def __init__(self, transport: Transport, cache_dir: str) -> None:
        self.transport = transport
        self.cache_dir = os.path.abspath(cache_dir)
        self._local: FileDatastore | None = None
        self._offered: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def offer(self, record: FileRecord, data: bytes) -> None:
        """Keep bytes of ``record``'s file that came with its lookup (``find_dataset(inline=...)``)
        for the read that usually follows; the last `_OFFERED` only, and verified when used."""
        with self._lock:
            self._offered[record.path] = data
            while len(self._offered) > _OFFERED:
                self._offered.popitem(last=False)

    @property
    def local(self) -> FileDatastore:
        """The file datastore over the cache directory, which reads what was fetched."""
        store = self._local
        if store is None:
            from ..datastore._datastore import FileDatastore
            from ..datastore._templates import TemplateSet

            store = self._local = FileDatastore(self.cache_dir, TemplateSet())
        return store

    # -- DatastoreReader ------------------------------------------------------------------------
    def read(self, ref: DatasetRef, files: Sequence[FileRecord], *, component: str | None = None,
             parameters: Mapping[str, Any] | None = None, verify: bool = True) -> Any:
        if not files:
            raise DatasetNotFoundError(f"{ref} has no stored file (registered without a file?)")
        if len(files) == 1 and files[0].checksum and files[0].checksum.startswith(MANIFEST_PREFIX) and verify:
            found = self._read_store_remotely(ref, files[0], component, parameters)
            if found is not _NOT_REMOTE:
                return found
        if len(files) == 1 and verify:  # a small file that came with its lookup: decoded from those bytes
            data = self._take_offered(files[0])
            if data is not None:
                decoded = self.local.decode(ref, files[0], data, component=component, parameters=parameters)
                if decoded is not None:
                    return decoded
                self._offer_back(files[0], data)
        for record in files:
            self.fetch(record)
        try:
            return self.local.read(ref, files, component=component, parameters=parameters, verify=verify)
        except ChecksumError:  # the cached copy changed since it was fetched: fetch it again, once
            for record in files:
                remove_path(self.local.abspath(record.path))
                self.fetch(record)
            return self.local.read(ref, files, component=component, parameters=parameters, verify=verify)

    def abspath(self, relative: str) -> str:
        return self.local.abspath(relative)

    def has_files(self, files: Iterable[FileRecord]) -> bool:
        """Whether the server has the files (asked, not fetched, unless they are in the cache)."""
        for record in files:
            if os.path.exists(self.abspath(record.path)):
                continue
            store = record.checksum is not None and record.checksum.startswith(MANIFEST_PREFIX)
            path, query = self.request_for(record, MANIFEST_NAME if store else None)  # a store: is its manifest there
            reply = self.transport.request("HEAD", path, query=query)
            if reply.status != 200:
                return False
        return True

    def verify(self, records: Iterable[tuple[str, str | None, int | None]]) -> list[VerifyProblem]:
        raise RemoteError("verify checks a repository's own files: run `butler verify` where the repository is")

    def request_for(self, record: FileRecord, member: str | None = None) -> tuple[str, dict[str, str]]:
        """The path and query of the request for the file of ``record`` (a `cache_record`), or of one
        ``member`` of a directory dataset: by dataset id, from `butler serve`."""
        return _file_request(record, member)

    def store_path(self, record: FileRecord) -> str:
        """The path (below the server's URL) under which the members of a store are ``/<member>``."""
        path, _ = _file_request(record)
        return path.rsplit("/", 1)[0] + "/store"

    def _read_store_remotely(self, ref: DatasetRef, record: FileRecord, component: str | None,
                             parameters: Mapping[str, Any] | None) -> Any:
        """A read of a store (zarr) straight from the server with range requests, so a cutout moves only
        the chunks it needs: the manifest is fetched and verified first, then every metadata document
        read is checked against it and every chunk by its crc32c. `_NOT_REMOTE` when the store is in
        the cache already or its formatter cannot read a URL (then the whole store is fetched)."""
        from ..datastore._directory_io import Manifest

        if os.path.exists(self.local.abspath(record.path)):
            return _NOT_REMOTE
        formatter = self.local.formatter_of(record)
        read_location = getattr(formatter, "read_location", None)
        base = getattr(self.transport, "url_for", None)
        if read_location is None or base is None:
            return _NOT_REMOTE
        assert record.checksum is not None
        what = f"the store of {ref.dataset_type.name} {ref.data_id} (run {ref.run!r})"
        manifest = self._get(record, MANIFEST_NAME, None, None, what)
        url = base(self.store_path(record))
        entries = parse_manifest(manifest, record.checksum, f"of {what} at {url}")
        options = getattr(self.transport, "storage_options", None)
        return read_location(url, component=component, parameters=parameters, storage_options=options,
                             manifest=Manifest(url, entries))

    def _inside(self, relative: str, what: str) -> str:
        """The cache path of ``relative``, refused (`RemoteProtocolError`) unless it stays inside the cache."""
        full = os.path.realpath(os.path.join(self.cache_dir, relative))
        if not full.startswith(os.path.realpath(self.cache_dir) + os.sep):
            raise RemoteProtocolError(f"{what!r} would be cached outside {self.cache_dir}; refusing it")
        return full

    def _take_offered(self, record: FileRecord) -> bytes | None:
        """The offered bytes of ``record``'s file if they match its record (else None: fetch it)."""
        with self._lock:
            data = self._offered.pop(record.path, None)
        if data is None or record.checksum is None or record.checksum.startswith(MANIFEST_PREFIX):
            return None
        try:
            verify_bytes(data, record.checksum, record.file_size, where=f"{record.path} sent by {self.transport.where}")
        except ChecksumError:
            return None  # damaged on the way: fetched again
        return data

    def _offer_back(self, record: FileRecord, data: bytes) -> None:
        with self._lock:
            self._offered[record.path] = data

    # -- fetching -------------------------------------------------------------------------------
    def fetch(self, record: FileRecord) -> str:
        """The cached file of ``record`` (a record of the remote registry: see `cache_record`),
        fetched and verified first if it is not in the cache."""
        full = self._inside(record.path, record.path)
        with self._lock:
            offered = self._offered.pop(record.path, None)
        if not os.path.exists(full):
            what = f"the {record.component or 'main'} file of the dataset {record.path.split('/')[1][:32]}"
            checksum = record.checksum
            if checksum is not None and checksum.startswith(MANIFEST_PREFIX):
                self._fetch_directory(record, full, what)
                return full
            data = None
            if offered is not None and checksum is not None:
                try:
                    verify_bytes(offered, checksum, record.file_size, where=f"{what} sent by {self.transport.where}")
                    data = offered
                except ChecksumError:
                    data = None  # damaged on the way: fetched again below
            if data is None:
                data = self._get(record, None, record.file_size, checksum, what)
            write_atomic(full, data, overwrite=True)
        return full

    def _get(self, record: FileRecord, member: str | None, size: int | None, checksum: str | None,
             what: str) -> bytes:
        """The verified bytes of one file (or store member), fetched at most `_ATTEMPTS` times."""
        path, query = self.request_for(record, member)
        problem: ChecksumError | None = None
        for _ in range(_ATTEMPTS):
            reply = self.transport.request("GET", path, query=query)
            if reply.status != 200:
                decode_reply(self.transport, reply, what)  # raises the server's error
            if checksum is None:
                return reply.body
            try:
                verify_bytes(reply.body, checksum, size, where=f"{what} fetched from {self.transport.where}")
                return reply.body
            except ChecksumError as err:
                problem = err
        assert problem is not None
        raise ChecksumError(f"{problem} (fetched {_ATTEMPTS} times; the server's copy may be damaged: run "
                            f"`butler verify` there)") from None

    def _fetch_directory(self, record: FileRecord, full: str, what: str) -> None:
        assert record.checksum is not None
        manifest = self._get(record, MANIFEST_NAME, None, None, what)
        entries = parse_manifest(manifest, record.checksum, f"of {what} fetched from {self.transport.where}")
        for member in entries:  # a manifest comes from the server: its members must stay inside the store
            problem = member_problem(member)
            if problem is not None:
                raise RemoteProtocolError(f"the manifest of {what} from {self.transport.where} lists the member "
                                          f"{member!r}, which {problem}; refusing the store")
        parent = os.path.dirname(full)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-fetch-", dir=parent)
        try:
            with open(os.path.join(staging, MANIFEST_NAME), "wb") as stream:
                stream.write(manifest)
            for member, (size, checksum) in entries.items():
                data = self._get(record, member, size, checksum, f"{what}, member {member}")
                target = os.path.join(staging, *member.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as stream:
                    stream.write(data)
            try:
                os.rename(staging, full)
            except OSError:
                if not os.path.isdir(full):  # another process fetched it first: keep theirs
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def cache_record(dataset_id: uuid.UUID, record: FileRecord) -> FileRecord:
    """A file record of the server as the client keeps it: its path is the cache's (by dataset id,
    component and file name), from which the client also knows what to ask the server for. What the
    server sent is not trusted to make paths: a component must be a plain name, the file name one
    safe path component."""
    problem = component_problem(record.component)
    if problem is not None:
        raise RemoteProtocolError(f"the server sent a file record of the dataset {dataset_id} whose component "
                                  f"{problem}; refusing it")
    name = os.path.basename(record.path.rstrip("/")) or "file"
    if name in (".", "..") or "\x00" in name or "\\" in name:
        name = "file"
    return record._replace(path=f"{dataset_id.hex[:2]}/{dataset_id.hex}-{record.component or '_'}-{name}")


def _file_request(record: FileRecord, member: str | None = None) -> tuple[str, dict[str, str]]:
    """The path and query of the server request for the file of a `cache_record`."""
    parts = record.path.split("/")
    if len(parts) != 2 or len(parts[1]) < 33 or parts[1][32] != "-":
        raise RemoteError(f"{record.path!r} is not the cache path of a remote dataset's file")
    query = {"component": record.component} if record.component else {}
    if member is not None:
        query["member"] = member
    return f"{API_PREFIX}/datasets/{parts[1][:32]}/file", query


class StaticDatastore(RemoteDatastore):
    """The files of a repository served as static files: fetched by their path under the repository's
    URL (records keep their repository-relative paths, which are also their paths in the cache)."""

    def store_path(self, record: FileRecord) -> str:
        return self.request_for(record)[0]

    def request_for(self, record: FileRecord, member: str | None = None) -> tuple[str, dict[str, str]]:
        from urllib.parse import quote

        path = record.path
        if os.path.isabs(path) or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
            raise RemoteError(f"the file {path!r} is not inside the repository (ingested with transfer='direct'?): "
                              "static hosting serves only the repository's own files; use `butler serve`")
        if member is not None:
            path = f"{path}/{member}"
        return "/" + "/".join(quote(part) for part in path.split("/")), {}
