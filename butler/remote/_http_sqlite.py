"""A SQLite database file on a static HTTP server, read by SQLite itself through range requests.

An apsw VFS whose main-database file is a `RemoteFile`: each ``xRead`` is served from an LRU cache
of aligned blocks (a multiple of the database page size, 64 KiB by default) shared by every
connection of the database, and a miss fetches the missing blocks in one ``Range`` request, with
a readahead that doubles on sequential misses (table scans) and falls back to one block on random
ones (index lookups). The database is opened with ``immutable=1``: no locks, no journal, no -shm,
no write. Every reply is checked against the version first read (size, ETag/Last-Modified), so a
file replaced on the server mid-session is an error, never a mix of two versions.

`open_sqlite` probes the file with its first range request. A 206 means range reads; a 200 means
the server ignores ``Range``, and the body already arriving is the full download
(`butler.remote._registry_copy`), opened as a local file. Either way the header is checked (a
SQLite file, not truncated) and so is the state of its log: a database in WAL mode whose -wal file
on the server is not empty holds commits the main file lacks, and is refused (reading it alone
would be silently stale), as is a hot rollback journal.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import apsw

from ..errors import RepositoryConfigError
from ._http_range import HttpClient, Validators, discard, status_error
from ._registry_copy import RegistryCopies

__all__ = ["BlockCache", "LocalSqlite", "RemoteFile", "RemoteSqlite", "SqliteHeader", "open_sqlite"]

DEFAULT_BLOCK = 64 * 1024
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
MAX_READAHEAD_BLOCKS = 16
_STREAMS = 8  # sequential streams followed at once (readahead)
_MAGIC = b"SQLite format 3\x00"
_ASK_PUBLISHER = ("ask the publisher to empty the log into the registry after the last write and publish it again: "
                  "`from butler.remote._static import prepare_static_hosting; prepare_static_hosting(ROOT)`, "
                  "or `sqlite3 REGISTRY 'PRAGMA wal_checkpoint(TRUNCATE)'`")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteHeader:
    """What the first 100 bytes of a SQLite file say about it."""

    page_size: int
    wal: bool
    pages: int | None  # the in-header database size, when it is valid

    @classmethod
    def parse(cls, data: bytes, where: str) -> SqliteHeader:
        if len(data) < 100 or not data.startswith(_MAGIC):
            raise RepositoryConfigError(
                f"{where} is not a SQLite database ({len(data)} bytes, starting {data[:16]!r}); the repository's "
                "registry must be its SQLite file"
            )
        raw = int.from_bytes(data[16:18], "big")
        page_size = 65536 if raw == 1 else raw
        change, valid_for = int.from_bytes(data[24:28], "big"), int.from_bytes(data[92:96], "big")
        pages = int.from_bytes(data[28:32], "big")
        return cls(page_size=page_size, wal=data[18] == 2 or data[19] == 2,
                   pages=pages if pages and change == valid_for else None)

    def check_size(self, size: int, where: str) -> None:
        if self.pages is not None and size < self.pages * self.page_size:
            raise RepositoryConfigError(
                f"{where} is truncated: {size} bytes where its header says {self.pages} pages of {self.page_size}; "
                "the copy on the server is incomplete: ask the publisher to copy the registry again"
            )


class BlockCache:
    """An LRU map of block index -> bytes within a byte budget (thread-safe)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: int) -> bytes | None:
        with self._lock:
            data = self._blocks.get(index)
            if data is not None:
                self._blocks.move_to_end(index)
            return data

    def __contains__(self, index: int) -> bool:
        with self._lock:
            return index in self._blocks

    def put(self, index: int, data: bytes) -> None:
        with self._lock:
            old = self._blocks.pop(index, None)
            if old is not None:
                self.used -= len(old)
            self._blocks[index] = data
            self.used += len(data)
            while self.used > self.budget and len(self._blocks) > 1:
                _, dropped = self._blocks.popitem(last=False)
                self.used -= len(dropped)


class RemoteFile:
    """One version of a file on an HTTP server, read in aligned blocks through a `BlockCache`."""

    def __init__(self, client: HttpClient, url: str, *, size: int, validators: Validators, block_size: int,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.client = client
        self.url = url
        self.size = size
        self.validators = validators
        self.block_size = block_size
        self.cache = BlockCache(max(cache_bytes, 2 * block_size))
        self._streams: OrderedDict[int, int] = OrderedDict()  # next block of a sequential stream -> readahead
        self._lock = threading.Lock()

    def read(self, offset: int, amount: int) -> bytes:
        """``amount`` bytes at ``offset`` (fewer only past the end of the file)."""
        end = min(offset + amount, self.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        blocks = [self.cache.get(i) for i in range(first, last + 1)]
        if any(b is None for b in blocks):
            self._fetch([first + k for k, b in enumerate(blocks) if b is None])
            blocks = [self.cache.get(i) or self._fetch([i])[i] for i in range(first, last + 1)]
        data = b"".join(cast(list[bytes], blocks))
        start = offset - first * bs
        return data[start:start + end - offset]

    def _fetch(self, missing: list[int]) -> dict[int, bytes]:
        """Fetch the blocks ``missing[0] .. missing[-1]`` (and a readahead) in one range request."""
        lo, hi = missing[0], missing[-1]
        n_blocks = -(-self.size // self.block_size)
        ahead = self._readahead(lo, hi) - (hi - lo + 1)
        while ahead > 0 and hi + 1 < n_blocks and (hi + 1) not in self.cache:
            hi += 1
            ahead -= 1
        with self._lock:
            self._streams[hi + 1] = hi - lo + 1
        start = lo * self.block_size
        length = min((hi + 1) * self.block_size, self.size) - start
        reply = self.client.get_range(self.url, start, length, expect=self.validators, size=self.size)
        out = {}
        for i in range(lo, hi + 1):
            chunk = reply.data[(i - lo) * self.block_size:(i - lo + 1) * self.block_size]
            self.cache.put(i, chunk)
            out[i] = chunk
        return out


    def _readahead(self, lo: int, hi: int) -> int:
        """How many blocks to fetch from ``lo``: twice the last fetch of the sequential stream this miss
        continues (a scan of a table or an index), else just the blocks asked for (a lookup). Several
        streams are followed at once: a query scans an index and looks rows up in its table in turn."""
        with self._lock:
            last = self._streams.pop(lo, None)
            wanted = hi - lo + 1 if last is None else max(hi - lo + 1, min(2 * last, MAX_READAHEAD_BLOCKS))
            while len(self._streams) >= _STREAMS:
                self._streams.popitem(last=False)
            return wanted


class _ReadOnlyFile:  # the method names are apsw's (SQLite's xRead, xFileSize...)
    """The apsw file object of a `RemoteFile`: reads only, no locks (immutable)."""

    def __init__(self, remote: RemoteFile) -> None:
        self._remote = remote

    def xRead(self, amount: int, offset: int) -> bytes:
        return self._remote.read(offset, amount)

    def xFileSize(self) -> int:
        return self._remote.size

    def xClose(self) -> None:
        pass

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return int(apsw.SQLITE_IOCAP_IMMUTABLE)

    def xSync(self, flags: int) -> None:
        pass

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError(f"{self._remote.url} is read-only (static hosting)")

    def xTruncate(self, size: int) -> None:
        raise apsw.ReadOnlyError(f"{self._remote.url} is read-only (static hosting)")


class _HttpVFS(apsw.VFS):
    """A VFS with one main database, the `RemoteFile`; temporary files (sorts) go to the default VFS."""

    _count = 0
    _count_lock = threading.Lock()
    DB_NAME = "/butler-static/registry.sqlite3"

    def __init__(self, remote: RemoteFile) -> None:
        with _HttpVFS._count_lock:
            _HttpVFS._count += 1
            self.vfs_name = f"butler-http-{_HttpVFS._count}"
        self._remote = remote
        super().__init__(self.vfs_name, "")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if filename == self.DB_NAME:
            flags[1] = int(apsw.SQLITE_OPEN_READONLY)
            return cast(apsw.VFSFile, _ReadOnlyFile(self._remote))
        if filename is None or flags[0] & (apsw.SQLITE_OPEN_TEMP_DB | apsw.SQLITE_OPEN_TEMP_JOURNAL
                                           | apsw.SQLITE_OPEN_TRANSIENT_DB | apsw.SQLITE_OPEN_SUBJOURNAL):
            return super().xOpen(name, flags)
        raise apsw.CantOpenError(f"{filename}: a statically hosted registry has no journal or log to open")

    def xAccess(self, pathname: str, flags: int) -> bool:
        return pathname == self.DB_NAME and flags != apsw.SQLITE_ACCESS_READWRITE

    def xFullPathname(self, name: str) -> str:
        return name

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.startswith("/butler-static/"):
            raise apsw.ReadOnlyError(f"{filename}: a statically hosted registry is read-only")
        super().xDelete(filename, syncdir)


def _configure(conn: apsw.Connection) -> apsw.Connection:
    conn.execute("PRAGMA query_only=1")
    return conn


@dataclass(frozen=True, slots=True)
class RemoteSqlite:
    """A database read through range requests."""

    file: RemoteFile

    def connector(self) -> Callable[[], apsw.Connection]:
        vfs = _HttpVFS(self.file)
        uri = f"file:{_HttpVFS.DB_NAME}?immutable=1"
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI

        def connect() -> apsw.Connection:
            return _configure(apsw.Connection(uri, flags=flags, vfs=vfs.vfs_name))

        return connect


@dataclass(frozen=True, slots=True)
class LocalSqlite:
    """A verified full copy of the database in the cache directory."""

    path: str
    downloaded: bool  # False when a cached copy was revalidated (HTTP 304)

    def connector(self) -> Callable[[], apsw.Connection]:
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?immutable=1"
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI

        def connect() -> apsw.Connection:
            return _configure(apsw.Connection(uri, flags=flags))

        return connect


def open_sqlite(client: HttpClient, url: str, *, cache_dir: str, block_size: int = DEFAULT_BLOCK,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> RemoteSqlite | LocalSqlite:
    """The SQLite file at ``url``: read by ranges if the server honours them, else downloaded (once,
    verified) into ``cache_dir`` and revalidated on later opens."""
    copies = RegistryCopies(cache_dir, url)
    cached = copies.current()
    headers = {"Range": f"bytes=0-{block_size - 1}", **(cached.validators.conditional_headers() if cached else {})}
    response = client.open(url, headers)
    status = response.status
    if status == 304 and cached is not None:
        discard(response)
        _check_log(client, url, SqliteHeader.parse(cached.header(), url))
        return LocalSqlite(cached.path, downloaded=False)
    if status == 206:
        first = client.range_reply(url, response, 0, block_size)
        header = SqliteHeader.parse(first.data, url)
        header.check_size(first.size, url)
        _check_log(client, url, header)
        block = max(block_size, header.page_size)
        remote = RemoteFile(client, url, size=first.size, validators=first.validators, block_size=block,
                            cache_bytes=cache_bytes)
        if block == block_size:
            remote.cache.put(0, first.data)
        copies.discard()  # the server honours ranges now: a full copy is stale weight
        return RemoteSqlite(remote)
    if status == 200:
        copy = copies.download(client, response, check=lambda head, size: SqliteHeader.parse(head, url)
                               .check_size(size, url))
        _check_log(client, url, SqliteHeader.parse(copy.header(), url))
        return LocalSqlite(copy.path, downloaded=True)
    discard(response)
    if status in (404, 410):
        raise RepositoryConfigError(
            f"the repository's registry file {url} is missing on the server (HTTP {status}); the repository "
            "cannot be opened without it (was butler.yaml published without the registry?)"
        )
    raise status_error(url, status)


def _check_log(client: HttpClient, url: str, header: SqliteHeader) -> None:
    """Refuse a database whose WAL file (WAL mode) or hot journal (rollback mode) on the server is
    not empty: immutable reads ignore both, so the main file alone would be stale or torn."""
    log = url + ("-wal" if header.wal else "-journal")
    response = client.open(log, {"Range": "bytes=0-31"})
    status = response.status
    length = response.headers.get("Content-Range", "").rpartition("/")[2] if status == 206 else \
        response.headers.get("Content-Length")
    discard(response)
    if status in (404, 410, 416) or (status in (200, 206) and length == "0"):
        return
    if status in (200, 206):
        what = "write-ahead log" if header.wal else "hot rollback journal"
        consequence = ("holds commits that the main file lacks: reading the main file alone would give stale "
                       "answers" if header.wal else "says a write was interrupted: the main file may be torn")
        raise RepositoryConfigError(
            f"the statically hosted registry {url} has a non-empty {what} ({log}, {length or 'unknown'} bytes) "
            f"that {consequence}; it is not opened. To fix it, {_ASK_PUBLISHER}"
        )
    raise status_error(log, status)
