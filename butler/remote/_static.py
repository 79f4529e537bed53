"""Static hosting: a repository directory served by a plain HTTP file server, opened read-only.

`open_static_registry` reads ``butler.yaml`` at the repository URL, finds the SQLite registry it
names (a path relative to the root, as every SQLite repository has) and opens it through
`butler.remote._http_sqlite`: by range requests, or as a verified full copy in ``cache_dir`` where
the server ignores ``Range``. The registry is the ordinary `Registry` over a read-only `Database`:
every query the Butler runs works, and every write is refused before any SQL.

`prepare_static_hosting` is the publisher's side: it empties the registry's write-ahead log into
the main file, so that the files copied to (or served from) the web server hold every commit.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._config import CONFIG_NAME, RepoConfig
from ..errors import ConflictError, RepositoryConfigError, RepositoryNotFoundError
from ._http_range import HttpClient, status_error
from ._http_sqlite import DEFAULT_BLOCK, DEFAULT_CACHE_BYTES, LocalSqlite, RemoteSqlite, open_sqlite

if TYPE_CHECKING:
    from ..registry._registry import Registry

__all__ = ["StaticReport", "open_static_registry", "prepare_static_hosting", "read_remote_config"]


def _base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"a statically hosted repository is an http:// or https:// URL, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a repository URL has no query or fragment: {url!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))


def read_remote_config(client: HttpClient, url: str) -> RepoConfig:
    """The ``butler.yaml`` of the repository at ``url`` (its root is the URL, with a final '/')."""
    base = _base(url)
    config_url = base + CONFIG_NAME
    status, body = client.get_small(config_url)
    if status in (404, 410):
        raise RepositoryNotFoundError(
            f"{base} is not a butler repository: {config_url} is not there (HTTP {status}); give the URL of the "
            f"directory that holds {CONFIG_NAME}"
        )
    if status != 200:
        raise status_error(config_url, status)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RepositoryConfigError(f"the repository configuration {config_url} is not UTF-8 text") from None
    return RepoConfig.from_text(base, text, config_url)


def registry_url(config: RepoConfig) -> str:
    """The URL of the SQLite registry of a statically hosted repository (inside its root)."""
    rel = config.relative_sqlite
    where = config.root + CONFIG_NAME
    if rel is None:
        raise RepositoryConfigError(
            f"the repository at {config.root} keeps its registry in {config.db!r} ({where}), not in a SQLite file "
            "inside the repository: static hosting serves only SQLite registries; open that database directly, "
            "or use `butler serve`"
        )
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise RepositoryConfigError(
            f"the registry path {rel!r} in {where} is not a plain relative path inside the repository"
        )
    return config.root + "/".join(urllib.parse.quote(p) for p in parts)


def open_static_registry(url: str, *, cache_dir: str, client: HttpClient | None = None,
                         block_size: int = DEFAULT_BLOCK, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Registry:
    """A read-only `Registry` of the repository served as static files at ``url``.

    The registry is read through HTTP range requests (blocks of ``block_size`` bytes, at most
    ``cache_bytes`` of them kept in memory); where the server ignores ``Range`` it is downloaded
    once into ``cache_dir`` and revalidated (ETag, Last-Modified) on later opens. ``client``
    shares connections and counts transfers (a new one by default).
    """
    from ..registry._database import driver_database
    from ..registry._registry import Registry
    from . import _dbapi_apsw

    if block_size <= 0 or block_size & (block_size - 1) or not 512 <= block_size <= 1 << 24:
        raise ValueError(f"block_size must be a power of two between 512 and 16 MiB, not {block_size}")
    client = client or HttpClient()
    config = read_remote_config(client, url)
    db_url = registry_url(config)
    source: RemoteSqlite | LocalSqlite = open_sqlite(client, db_url, cache_dir=cache_dir, block_size=block_size,
                                                     cache_bytes=cache_bytes)
    connect = source.connector()
    database = driver_database(db_url, module=_dbapi_apsw, connect=lambda: _dbapi_apsw.Connection(connect()))
    return Registry.open(database)


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticReport:
    """What `prepare_static_hosting` did: the registry file, its size, and the size of the log it emptied."""

    registry: str
    size: int
    log_bytes: int


def prepare_static_hosting(root: str, *, compact: bool = False, wait_ms: int = 5000) -> StaticReport:
    """Make the repository at ``root`` ready to be served as static files: copy the registry's
    write-ahead log into the main file and truncate the log (``PRAGMA wal_checkpoint(TRUNCATE)``).

    With ``compact``, first rewrite the registry with ``VACUUM``: each table and index then lies in
    consecutive pages, so a remote scan is a few growing range requests instead of one per
    scattered page (a 504-ref query of a 1M-dataset registry: about 20 requests instead of 193, a
    quarter of the bytes). It rewrites the whole file (mirrors copy it all again) and needs its size free.

    Run it after the last write and before copying or serving the directory; a repository written
    again afterwards needs it again. Raises `ConflictError` if another process's transaction keeps
    the log from being emptied for ``wait_ms`` (stop the readers and writers and run it again).
    """
    config = RepoConfig.read(root)
    rel = config.relative_sqlite
    if rel is None:
        raise RepositoryConfigError(
            f"the repository {config.root} keeps its registry in {config.db!r}, not in a SQLite file inside it: "
            "only SQLite repositories can be served as static files"
        )
    path = os.path.join(config.root, rel)
    if not os.path.isfile(path):
        raise RepositoryConfigError(f"the repository's registry file {path} is missing")
    from ..registry._database import Database

    wal = path + "-wal"
    log_bytes = os.path.getsize(wal) if os.path.exists(wal) else 0
    db = Database(config.db_url, config.namespace)
    if compact:
        db.vacuum()
    emptied = db.checkpoint(wait_ms=wait_ms)
    if not emptied or (os.path.exists(wal) and os.path.getsize(wal) > 0):
        raise ConflictError(
            f"the write-ahead log of {path} could not be emptied: another process is reading or writing the "
            "registry; stop it and run this again"
        )
    return StaticReport(registry=path, size=os.path.getsize(path), log_bytes=log_bytes)
