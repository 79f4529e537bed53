"""Full copies of statically hosted registries, for servers that ignore ``Range`` requests.

One directory per registry URL under ``<cache_dir>/static-registries/``, holding the copy (named
after its validators, so two versions never share a name) and ``copy.json``, which names the
current copy with the URL, size, ETag and Last-Modified it was downloaded with. A download goes to
a temporary file, is checked (every announced byte arrived, a SQLite header that fits the size),
flushed to disk and renamed; only then does ``copy.json`` point at it, so a reader always sees a
complete copy with the validators of exactly that copy, and an interrupted or truncated download
leaves nothing behind. Later opens send those validators (``If-None-Match``, ``If-Modified-Since``)
and reuse the copy on ``304 Not Modified``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RemoteError
from ._http_range import HttpClient, Validators

if TYPE_CHECKING:
    import urllib3

__all__ = ["CachedCopy", "RegistryCopies"]

_META = "copy.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedCopy:
    path: str
    size: int
    validators: Validators

    def header(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(100)


class RegistryCopies:
    """The cached full copy of the registry at ``url``."""

    def __init__(self, cache_dir: str, url: str) -> None:
        self.url = url
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        self.directory = os.path.join(os.path.abspath(cache_dir), "static-registries", key)

    def current(self) -> CachedCopy | None:
        """The copy ``copy.json`` names, if it is there whole; None otherwise."""
        try:
            with open(os.path.join(self.directory, _META), encoding="utf-8") as f:
                meta = json.load(f)
            path = os.path.join(self.directory, os.path.basename(str(meta["file"])))
            size = int(meta["size"])
            if meta.get("url") != self.url or os.path.getsize(path) != size:
                return None
            validators = Validators(etag=meta.get("etag"), last_modified=meta.get("last_modified"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if validators.etag is None and validators.last_modified is None:
            return None  # cannot be revalidated: download again
        return CachedCopy(path=path, size=size, validators=validators)

    def download(self, client: HttpClient, response: urllib3.BaseHTTPResponse,
                 check: Callable[[bytes, int], None]) -> CachedCopy:
        """Store the body of ``response`` (a 200 with the whole file) as the current copy, after
        ``check(first_100_bytes, size)``; nothing is kept if the transfer or the check fails."""
        os.makedirs(self.directory, exist_ok=True)
        validators = Validators.of(response.headers)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as out:
                size = client.stream_to(self.url, response, out)
                out.flush()
                os.fsync(out.fileno())
            with open(tmp, "rb") as f:
                check(f.read(100), size)
            name = "registry-" + hashlib.sha256(
                f"{validators.etag}|{validators.last_modified}|{size}".encode()).hexdigest()[:16] + ".sqlite3"
            final = os.path.join(self.directory, name)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        meta = {"url": self.url, "file": name, "size": size, "etag": validators.etag,
                "last_modified": validators.last_modified}
        self._write_meta(meta)
        self._prune(keep=name)
        return CachedCopy(path=final, size=size, validators=validators)

    def discard(self) -> None:
        """Remove the cached copy (the server serves ranges now)."""
        if os.path.isdir(self.directory):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, _META))
            self._prune(keep=None)

    def _write_meta(self, meta: dict[str, object]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".meta-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.directory, _META))
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RemoteError(f"cannot record the downloaded copy of {self.url} in {self.directory}: {err}") from None

    def _prune(self, keep: str | None) -> None:
        """Remove other copies (best effort: a process still reading one keeps its open file)."""
        for entry in os.listdir(self.directory):
            if entry.startswith("registry-") and entry != keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, entry))
