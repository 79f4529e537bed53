"""An HTTP client for reading files of a statically hosted repository: whole small files, byte
ranges of big ones, and full downloads streamed to disk.

One urllib3 pool manager per client (keep-alive connections, thread-safe), timeouts on connect
and on each read, a couple of retries of failed connections and of 502/503/504. Failures are
specific errors naming the URL: `RemoteUnavailableError` when the host cannot be reached,
`RemoteTransferError` when the bytes that arrive are not the ones announced (a short body, a range
answered with other bytes, a file that changed between two reads), `RemoteError` otherwise.
Responses are never content-decoded (``Accept-Encoding: identity``): a range is a range of the file.

The client counts the requests it sent and the body bytes it received (`TransferStats`), which
is what the static-hosting benchmark reports.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError, TimeoutError

from ..errors import RemoteAuthError, RemoteError, RemoteTransferError, RemoteUnavailableError

__all__ = ["HttpClient", "RangeReply", "TransferStats", "Validators", "discard", "status_error"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_STREAM_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Validators:
    """What identifies one version of a file on the server: its ETag and Last-Modified headers."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validators:
        return cls(etag=headers.get("ETag"), last_modified=headers.get("Last-Modified"))

    def conditional_headers(self) -> dict[str, str]:
        """Headers asking the server for a body only if the file is no longer this version."""
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out

    def same_version(self, other: Validators) -> bool:
        """False when the two certainly name different versions (a weak ETag still compares)."""
        if self.etag and other.etag:
            return self.etag.removeprefix("W/") == other.etag.removeprefix("W/")
        if self.last_modified and other.last_modified:
            return self.last_modified == other.last_modified
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeReply:
    """The answer to a range request: the bytes, the file's total size and its validators."""

    data: bytes
    start: int
    size: int
    validators: Validators


class TransferStats:
    """Requests sent and body bytes received by one client (thread-safe counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_received = 0

    def add(self, *, requests: int = 0, received: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_received += received


class HttpClient:
    """A keep-alive HTTP(S) client for one process's static-hosting reads."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 60.0, retries: int = 2,
                 maxsize: int = 8, headers: Mapping[str, str] | None = None) -> None:
        retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, redirect=5,
                              backoff_factor=0.2, status_forcelist=(502, 503, 504),
                              allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)
        self._pool = urllib3.PoolManager(
            num_pools=16, maxsize=maxsize, block=False, retries=retry,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            headers={"Accept-Encoding": "identity", "User-Agent": "butler-static", **(headers or {})},
        )
        self.stats = TransferStats()

    def close(self) -> None:
        self._pool.clear()

    # -- requests ------------------------------------------------------------------------------
    def open(self, url: str, headers: Mapping[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """A GET whose body is not read yet (the caller reads it, or releases it)."""
        try:
            response = self._pool.request("GET", url, headers=dict(headers or {}), preload_content=False,
                                          decode_content=False)
        except MaxRetryError as err:
            raise _connection_error(url, err.reason or err) from None
        except (TimeoutError, NewConnectionError) as err:
            raise _connection_error(url, err) from None
        except HTTPError as err:
            raise RemoteError(f"GET {url} failed: {err}") from None
        self.stats.add(requests=1)
        return response

    def read_body(self, url: str, response: urllib3.BaseHTTPResponse) -> bytes:
        """The whole body of ``response``; a body shorter than its Content-Length is refused."""
        try:
            data = response.read(decode_content=False)
        except (ProtocolError, HTTPError, OSError) as err:
            raise _body_error(url, err) from None
        finally:
            response.release_conn()
        self.stats.add(received=len(data))
        return data

    def get_small(self, url: str) -> tuple[int, bytes]:
        """Status and body of a small file (a configuration); the body of an error is discarded."""
        response = self.open(url)
        body = self.read_body(url, response)
        return response.status, body if response.status == 200 else b""

    def get_range(self, url: str, start: int, length: int, *, expect: Validators | None = None,
                  size: int | None = None) -> RangeReply:
        """Bytes ``start .. start+length-1`` of ``url`` (fewer only at the end of the file).

        ``expect`` and ``size`` describe the version read so far: a reply from another version
        (other validators, other total size) is a `RemoteTransferError`, never mixed in.
        """
        response = self.open(url, {"Range": f"bytes={start}-{start + length - 1}"})
        return self.range_reply(url, response, start, length, expect=expect, size=size)

    def range_reply(self, url: str, response: urllib3.BaseHTTPResponse, start: int, length: int, *,
                    expect: Validators | None = None, size: int | None = None) -> RangeReply:
        """Check and read the 206 answer to a request for ``length`` bytes at ``start``."""
        if response.status != 206:
            discard(response)
            if response.status == 200:
                raise RemoteTransferError(
                    f"{url} answered a range request with the whole file (HTTP 200): the server stopped "
                    "honouring Range requests while the registry was being read; open the repository again"
                )
            raise status_error(url, response.status)
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        data = self.read_body(url, response)
        if match is None or match.group(3) == "*":
            raise RemoteTransferError(f"{url} answered a range request without a usable Content-Range header "
                                      f"({response.headers.get('Content-Range')!r})")
        first, last, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
        validators = Validators.of(response.headers)
        if (size is not None and total != size) or (expect is not None and not expect.same_version(validators)):
            raise RemoteTransferError(
                f"{url} changed on the server while it was being read (now {total} bytes, {validators}); "
                "open the repository again to read the new version"
            )
        wanted_last = min(start + length, total) - 1
        if first != start or last != wanted_last or len(data) != last - first + 1:
            raise RemoteTransferError(
                f"{url} answered the range {start}-{start + length - 1} with bytes {first}-{last} "
                f"({len(data)} bytes received): the answer is refused"
            )
        return RangeReply(data=data, start=start, size=total, validators=validators)

    def stream_to(self, url: str, response: urllib3.BaseHTTPResponse, out: IO[bytes]) -> int:
        """Copy the body of ``response`` (a 200) into ``out``: the number of bytes, which must be the
        Content-Length when the server sent one (`RemoteTransferError` otherwise)."""
        announced = response.headers.get("Content-Length")
        total = 0
        try:
            while True:
                chunk = response.read(_STREAM_CHUNK, decode_content=False)
                if not chunk:
                    break
                out.write(chunk)
                total += len(chunk)
                self.stats.add(received=len(chunk))
        except (ProtocolError, HTTPError, OSError) as err:
            raise _body_error(url, err) from None
        finally:
            response.release_conn()
        if announced is not None and announced.isdigit() and int(announced) != total:
            raise RemoteTransferError(
                f"the download of {url} is incomplete: {total} of {announced} bytes arrived; nothing was kept "
                "(retry; if it keeps failing, the server or a proxy cuts the transfer)"
            )
        return total


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Let go of a response whose body is not wanted: a short one is drained (the connection stays
    alive), a long one (a whole registry answering a range) closes its connection."""
    length = response.headers.get("Content-Length")
    try:
        if length is not None and length.isdigit() and int(length) <= 65536:
            response.drain_conn()
        else:
            response.close()
    except (HTTPError, OSError):
        response.close()
    finally:
        response.release_conn()


def status_error(url: str, status: int) -> RemoteError:
    """The error for an unexpected HTTP status (404 and friends are handled by callers that know
    what the file is)."""
    if status in (401, 403):
        return RemoteAuthError(f"{url} refused access (HTTP {status}): the static host needs credentials or does "
                           "not publish this file")
    if status >= 500:
        return RemoteError(f"{url} failed on the server (HTTP {status}); retry later or ask its operator")
    return RemoteError(f"{url} answered HTTP {status}, not the file")


def _connection_error(url: str, err: BaseException) -> RemoteError:
    if isinstance(err, (NewConnectionError, TimeoutError, OSError)):
        return RemoteUnavailableError(
            f"cannot reach {url}: {_reason(err)}; check the URL and that the host is up and reachable from here"
        )
    return RemoteError(f"GET {url} failed: {_reason(err)}")


def _body_error(url: str, err: BaseException) -> RemoteError:
    if isinstance(err, TimeoutError):
        return RemoteUnavailableError(f"{url} stopped sending data ({_reason(err)}); retry later")
    return RemoteTransferError(
        f"the transfer of {url} broke off ({_reason(err)}): the bytes received are refused; retry"
    )


def _reason(err: BaseException) -> str:
    text = str(err)
    # urllib3's messages repeat the connection object's repr: keep what the OS or the server said.
    return text.split(": ", 1)[1] if text.startswith("<") and ": " in text else text
