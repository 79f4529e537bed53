"""How a client's requests reach a butler server: over HTTP(S) (urllib3: a pool of kept-alive
connections, safe across threads) or over the stdin/stdout of a child process (``ssh host butler
serve --stdio REPO``, see ``_stdio.py``). Both return the server's status, headers and body; what the
body means is the client's business (``_client.py``).

Network failures become `RemoteUnavailableError` naming the URL and what to check. Idempotent
requests (every request of the protocol is one: the server only reads) are retried on connection
errors with a short back-off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RemoteProtocolError, RemoteUnavailableError
from ._protocol import API_PREFIX, PAYLOAD_HEADER, decode_error

__all__ = ["HttpTransport", "Reply", "Transport", "call", "call_with_payload", "decode_reply"]


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
    split = _header(reply.headers, PAYLOAD_HEADER)
    if split is not None and reply.status == 200:
        try:
            n = int(split)
        except ValueError:
            raise RemoteProtocolError(f"{transport.where} sent a bad {PAYLOAD_HEADER} header ({split!r})") from None
        head = Reply(reply.status, reply.headers, reply.body[:n])
        return decode_reply(transport, head, name), reply.body[n:]
    return decode_reply(transport, reply, name), b""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


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
    """Requests over HTTP(S) to ``base_url`` (the server's root URL), with an optional bearer token."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0, retries: int = 3,
                 pool_size: int = 16) -> None:
        import urllib3

        self.base = base_url.rstrip("/")
        self.where = base_url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False,
            retries=urllib3.Retry(total=retries, connect=retries, read=retries, status=0, redirect=3,
                                  backoff_factor=0.2, allowed_methods=None, raise_on_status=False),
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
        )

    def request(self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        import urllib3

        url = self.base + path
        if query:
            from urllib.parse import urlencode

            url += "?" + urlencode(query)
        try:
            response = self._pool.request(method, url, body=body or None, headers={**self._headers, **(headers or {})},
                                          preload_content=True, redirect=True)
        except urllib3.exceptions.HTTPError as err:
            reason = getattr(err, "reason", None) or err
            raise RemoteUnavailableError(
                f"cannot reach the butler server {self.where} ({method} {path}): {reason}; check the URL and that "
                "the server runs (`butler serve REPO --port N`)") from None
        return Reply(response.status, dict(response.headers), response.data)

    def close(self) -> None:
        self._pool.clear()
