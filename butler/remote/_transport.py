"""How a client's requests reach a butler server: over HTTP(S) (a kept-alive connection per
thread) or over the stdin/stdout of a child process (``ssh host butler
serve --stdio REPO``, see ``_stdio.py``). Both return the server's status, headers and body; what the
body means is the client's business (``_client.py``).

Network failures become `RemoteUnavailableError` naming the URL and what to check. Idempotent
requests (every request of the protocol is one: the server only reads) are retried on connection
errors with a short back-off.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RemoteProtocolError, RemoteUnavailableError
from ._protocol import API_PREFIX, PAYLOAD_HEADER, decode_error, header

__all__ = ["HttpTransport", "Reply", "Transport", "call", "call_with_payload", "decode_reply", "download"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class Transport(Protocol):
    """Carries one request to the server and brings its reply back."""

    where: str
    """The server as error messages name it (a URL)."""

    def request(self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        ...

    def close(self) -> None:
        ...


def call(transport: Transport, name: str, args: Mapping[str, Any] | None = None) -> Any:
    """Call ``name`` on the server with JSON ``args``; its result, or the server's error raised here."""
    return call_with_payload(transport, name, args)[0]


def call_with_payload(transport: Transport, name: str, args: Mapping[str, Any] | None = None) -> tuple[Any, bytes]:
    """`call`, and the raw bytes that follow the JSON result (empty when there are none)."""
    body = json.dumps(args or {}, separators=(",", ":")).encode()
    reply = transport.request("POST", f"{API_PREFIX}/{name}", body=body,
                              headers={"Content-Type": "application/json"})
    split = header(reply.headers, PAYLOAD_HEADER)
    if split is not None and reply.status == 200:
        try:
            n = int(split)
        except ValueError:
            raise RemoteProtocolError(f"{transport.where} sent a bad {PAYLOAD_HEADER} header ({split!r})") from None
        head = Reply(reply.status, reply.headers, reply.body[:n])
        return decode_reply(transport, head, name), reply.body[n:]
    return decode_reply(transport, reply, name), b""


def download(transport: Transport, name: str, args: Mapping[str, Any], target: str) -> Reply:
    """Call ``name``, whose answer is a file, into ``target`` (streamed where the transport can)."""
    body = json.dumps(args, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    stream = getattr(transport, "download", None)
    if stream is not None:
        reply: Reply = stream("POST", f"{API_PREFIX}/{name}", target, body=body, headers=headers)
    else:
        reply = transport.request("POST", f"{API_PREFIX}/{name}", body=body, headers=headers)
        if reply.status == 200:
            with open(target, "wb") as out:
                out.write(reply.body)
    if reply.status != 200:
        decode_reply(transport, reply, name)  # raises the server's error
    return reply


def decode_reply(transport: Transport, reply: Reply, what: str) -> Any:
    """The ``result`` of a JSON reply, or the error it carries raised as its `butler.errors` class."""
    try:
        data = json.loads(reply.body) if reply.body else None
    except ValueError:
        data = None
    if reply.status == 200 and isinstance(data, dict) and "result" in data:
        return data["result"]
    if reply.status == 200:
        raise RemoteProtocolError(f"{transport.where} answered {what} with something that is not a butler reply "
                                  f"({reply.body[:80]!r}); is it a butler server (`butler serve`)?")
    raise decode_error(reply.status, data, transport.where)


class HttpTransport:
    """Requests over HTTP(S) to ``base_url`` (the server's root URL), with an optional bearer token.

    One kept-alive `http.client` connection per thread (the stdlib's HTTP, a hundred microseconds
    a request cheaper than a pooling library; the protocol needs no redirects or cookies). A request
    that fails on a connection error is sent again on a new connection (every request of the
    protocol is a read, so repeating one is safe), up to ``retries`` times.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0, retries: int = 2) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteProtocolError(f"{base_url!r} is not an http(s):// URL with a host (e.g. http://host:8080/)")
        self.where = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._retries = retries
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def url_for(self, path: str) -> str:
        """The full URL of ``path`` on this server (for readers that make their own requests: zarr)."""
        return self.where.rstrip("/") + path

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec's options for requests to this server (the bearer token)."""
        return {"headers": dict(self._headers)} if self._headers else {}

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def request(self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        target = self._prefix + path
        if query:
            from urllib.parse import urlencode

            target += "?" + urlencode(query)
        sent = {**self._headers, **(headers or {})}
        problem: BaseException | None = None
        for _ in range(self._retries + 1):
            try:
                conn = self._connection()
            except OSError as err:  # refused, unreachable, no route, connect timed out
                problem = err
                continue
            try:
                conn.request(method, target, body=body or None, headers=sent)
                response = conn.getresponse()
                data = response.read()
            except TimeoutError:  # sent, and no answer in time: asking again would only repeat a slow call
                self._drop()
                raise RemoteUnavailableError(
                    f"the butler server {self.where} did not answer {method} {path} within {self._timeout:.0f} s "
                    "(busy or stuck; a query that slow may need narrowing)") from None
            except (OSError, http.client.HTTPException) as err:  # refused, reset, stale keep-alive, cut off
                self._drop()
                problem = err
                continue
            if response.will_close:
                self._drop()
            return Reply(response.status, dict(response.getheaders()), data)
        raise RemoteUnavailableError(
            f"cannot reach the butler server {self.where}, or it stopped answering ({method} {path}, "
            f"{self._retries + 1} attempts: {type(problem).__name__}: {problem}); check the URL and that the server "
            "runs (`butler serve REPO --port N`)") from None

    def download(self, method: str, path: str, target: str, *, body: bytes = b"",
                 headers: Mapping[str, str] | None = None) -> Reply:
        """`request`, with a 200 answer's body written to the file ``target`` in blocks (not kept in
        memory); the reply's body is then empty. Not retried: a partial file is the caller's to remove."""
        try:
            conn = self._connection()
            conn.request(method, self._prefix + path, body=body or None, headers={**self._headers, **(headers or {})})
            response = conn.getresponse()
            if response.status != 200:
                return Reply(response.status, dict(response.getheaders()), response.read())
            expected = response.length  # the Content-Length (None when the server streams without one)
            written = 0
            with open(target, "wb") as stream:
                while block := response.read(1 << 20):
                    stream.write(block)
                    written += len(block)
            if expected is not None and written != expected:  # http.client ends short reads quietly
                self._drop()
                raise http.client.IncompleteRead(b"", expected - written)
            if response.will_close:
                self._drop()
            return Reply(response.status, dict(response.getheaders()))
        except (OSError, http.client.HTTPException) as err:
            self._drop()
            raise RemoteUnavailableError(f"the download of {path} from {self.where} failed: {type(err).__name__}: "
                                         f"{err}") from None

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
