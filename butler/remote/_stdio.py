"""The butler protocol over a byte stream: `butler serve --stdio` and its client, `StdioTransport`.

This is how ``ssh host butler serve --stdio REPO`` carries the same requests and answers as HTTP
(``_protocol.py``; like git, the server is whatever program the command starts). The stream is:

* the server's greeting, one line: ``butler-stdio/<protocol version>\\n``. A client reads it first,
  so a login script that prints a banner on stdout, or a program that is not a butler, is reported
  (`RemoteProtocolError` quoting what arrived) instead of being parsed as an answer;
* then requests and answers, one at a time, each a frame: 4 bytes (big-endian) giving the length of
  a JSON head, the head, then ``head["length"]`` body bytes. A request's head holds its method,
  path, query and headers; an answer's its status and headers. File answers are sent in blocks of
  `BLOCK` bytes (the server never holds a whole big file), honouring a single ``Range: bytes=a-b``.

The client keeps a small pool of children (one per request in flight, at most ``max_children``):
a child answers one request at a time, and threads reading through one Butler would otherwise
queue behind each other on a slow link. A child that died while idle (a dropped ssh connection)
is replaced and the request sent again, once, which is safe because every request only reads; a
child that dies mid-answer, or that cannot be started, is a `RemoteUnavailableError` naming the
command and the end of what it wrote on stderr.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, BinaryIO

from ..errors import ButlerError, RemoteError, RemoteProtocolError, RemoteUnavailableError
from ._protocol import PROTOCOL_VERSION, Answer, Request, encode_error, header
from ._transport import Reply

__all__ = ["BLOCK", "GREETING", "StdioTransport", "serve_stdio", "serve_stdio_process"]

GREETING = f"butler-stdio/{PROTOCOL_VERSION}\n".encode()
"""The first line a server writes."""

_MAGIC = b"butler-stdio/"
BLOCK = 1 << 20
"""Bytes of a file written (server) or read (client) at a time."""

MAX_HEAD_BYTES = 1 << 20
"""Largest JSON head of a frame; a bigger length prefix means the stream is not this protocol."""

MAX_REQUEST_BYTES = 64 << 20
"""Largest request body a server accepts (as ``butler serve`` over HTTP)."""

_LENGTH = struct.Struct(">I")
_STDERR_TAIL = 2000
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


# -- framing -------------------------------------------------------------------------------------
def encode_frame(head: Mapping[str, Any], body: bytes = b"") -> bytes:
    """A frame's prefix and head (the caller sends ``body`` after it, ``head["length"]`` bytes)."""
    text = json.dumps({**head, "length": len(body)}, separators=(",", ":")).encode()
    return _LENGTH.pack(len(text)) + text


def _parse_head(raw: bytes, what: str) -> dict[str, Any]:
    try:
        head = json.loads(raw)
    except ValueError:
        raise RemoteProtocolError(f"{what} is not a JSON frame head: {raw[:80]!r}") from None
    if not isinstance(head, dict) or not isinstance(head.get("length"), int) or head["length"] < 0:
        raise RemoteProtocolError(f"{what} has no valid 'length': {raw[:80]!r}")
    return head


# -- server ----------------------------------------------------------------------------------------
class _FailedService:
    """Answers every request with the error that stopped the repository from opening, so the client
    reports it (``RepositoryNotFoundError`` naming the path) instead of a dead connection."""

    def __init__(self, err: ButlerError) -> None:
        self.err = err

    def handle(self, request: Request) -> Answer:
        status, body = encode_error(self.err)
        return Answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def serve_stdio(root: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer requests read from ``stdin`` on ``stdout`` until ``stdin`` ends (the client left)."""
    from ._service import RepositoryService

    service: RepositoryService | _FailedService
    try:
        service = RepositoryService(root)
    except ButlerError as err:
        service = _FailedService(err)
    stdout.write(GREETING)
    stdout.flush()
    while True:
        prefix = stdin.read(_LENGTH.size)
        if not prefix:
            return
        try:
            request = _read_request(stdin, prefix)
        except RemoteProtocolError as err:  # the stream cannot be resynchronised: say why, then stop
            status, body = encode_error(err)
            data = json.dumps(body).encode()
            stdout.write(encode_frame({"status": status, "headers": {"Content-Type": "application/json"}}, data) + data)
            stdout.flush()
            raise
        _send_answer(stdout, request, service.handle(request))


def _read_request(stdin: BinaryIO, prefix: bytes) -> Request:
    what = "a request on stdin"
    if len(prefix) < _LENGTH.size:
        raise RemoteProtocolError(f"{what} ended inside its length prefix ({prefix!r})")
    (n,) = _LENGTH.unpack(prefix)
    if n > MAX_HEAD_BYTES:
        raise RemoteProtocolError(f"{what} starts with {prefix!r}, not a frame of the butler stdio protocol "
                                  "(is the client a butler?)")
    raw = stdin.read(n)
    if len(raw) < n:
        raise RemoteProtocolError(f"{what} ended inside its head")
    head = _parse_head(raw, what)
    if head["length"] > MAX_REQUEST_BYTES:
        raise RemoteProtocolError(f"{what} has a {head['length']}-byte body; at most {MAX_REQUEST_BYTES} are taken")
    body = stdin.read(head["length"]) if head["length"] else b""
    if len(body) < head["length"]:
        raise RemoteProtocolError(f"{what} ended inside its body")
    method, path = head.get("method"), head.get("path")
    query, headers = head.get("query") or {}, head.get("headers") or {}
    if not isinstance(method, str) or not isinstance(path, str) or not isinstance(query, dict) \
            or not isinstance(headers, dict):
        raise RemoteProtocolError(f"{what} lacks a method and path, or has a query or headers that are not "
                                  f"objects: {raw[:120]!r}")
    return Request(method, path, {str(k): str(v) for k, v in query.items()},
                   {str(k): str(v) for k, v in headers.items()}, body)


def _send_answer(stdout: BinaryIO, request: Request, answer: Answer) -> None:
    try:
        _send(stdout, request, answer)
    finally:
        if answer.remove_after is not None:  # a file made for this answer (an export's bundle)
            shutil.rmtree(answer.remove_after, ignore_errors=True)


def _send(stdout: BinaryIO, request: Request, answer: Answer) -> None:
    if answer.file is None:
        stdout.write(encode_frame({"status": answer.status, "headers": dict(answer.headers)}, answer.body))
        stdout.write(answer.body)
        stdout.flush()
        return
    try:
        stream = open(answer.file, "rb")  # noqa: SIM115 - a failure to open is answered, then `with` below
    except OSError as err:
        body = json.dumps({"error": "DatasetNotFoundError",
                           "message": f"the file of {request.path} cannot be read on the server: {err}"}).encode()
        stdout.write(encode_frame({"status": 404, "headers": {"Content-Type": "application/json"}}, body) + body)
        stdout.flush()
        return
    with stream:
        size = os.fstat(stream.fileno()).st_size
        status, start, length, extra = _file_part(request.headers, size)
        headers = {**answer.headers, **extra, "Accept-Ranges": "bytes", "Content-Length": str(length)}
        if status == 416:
            body = json.dumps({"error": "RemoteProtocolError", "message": extra.pop("X-Reason")}).encode()
            headers = {"Content-Type": "application/json", "Content-Range": f"bytes */{size}"}
            stdout.write(encode_frame({"status": 416, "headers": headers}, body) + body)
            stdout.flush()
            return
        send = 0 if request.method == "HEAD" else length
        text = json.dumps({"status": status, "headers": headers, "length": send}, separators=(",", ":")).encode()
        stdout.write(_LENGTH.pack(len(text)) + text)
        stream.seek(start)
        left = send
        while left > 0:
            block = stream.read(min(BLOCK, left))
            if not block:  # the file shrank while it was sent: the client sees a cut answer, not bad bytes
                raise OSError(f"{answer.file} shrank while it was being sent")
            stdout.write(block)
            left -= len(block)
        stdout.flush()


def _file_part(headers: Mapping[str, str], size: int) -> tuple[int, int, int, dict[str, str]]:
    """(status, start, length, extra headers) of a file answer, from the request's ``Range`` header
    (one range; 416 with ``X-Reason`` when it cannot be served)."""
    given = header(headers, "Range")
    if given is None:
        return 200, 0, size, {}
    match = _RANGE.fullmatch(given.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return 416, 0, 0, {"X-Reason": f"the Range header {given!r} is not one byte range: give bytes=START-END, "
                                       "bytes=START- or bytes=-SUFFIX"}
    first, last = match.group(1), match.group(2)
    if first == "":
        start = max(0, size - int(last))
        end = size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return 416, 0, 0, {"X-Reason": f"the range {given!r} is outside the file ({size} bytes)"}
    length = end - start + 1
    return 206, start, length, {"Content-Range": f"bytes {start}-{end}/{size}"}


def serve_stdio_process(root: str) -> None:
    """`serve_stdio` on this process's stdin/stdout; anything else printed (by any library, even C
    code) goes to stderr, so the protocol stream stays clean."""
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=BLOCK)
    os.dup2(2, 1)
    protocol_in = os.fdopen(os.dup(0), "rb", buffering=BLOCK)
    try:
        serve_stdio(root, protocol_in, protocol_out)
    except BrokenPipeError:  # the client left mid-answer
        pass
    finally:
        for stream in (protocol_in, protocol_out):
            try:
                stream.close()
            except OSError:
                pass


# -- client ----------------------------------------------------------------------------------------
class _Lost(Exception):
    """The child's stream ended or broke; ``partial`` if part of the answer had arrived."""

    def __init__(self, partial: bool, what: str) -> None:
        super().__init__(what)
        self.partial = partial


class _Child:
    """One running server command, its pipes and a file holding its stderr (no reader thread needed,
    and the whole of it is there to quote once the child has exited)."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile(prefix="butler-stdio-")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, bufsize=0, env=None if env is None else dict(env),
                                     start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.out = self.proc.stdout.fileno()
        self.buffer = bytearray()
        self.served = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def read_exact(self, n: int, deadline: float, partial: bool) -> bytes:
        """``n`` bytes of the child's stdout (fewer: `_Lost`; none by ``deadline``: TimeoutError)."""
        while len(self.buffer) < n:
            self._fill(deadline, min(BLOCK, n - len(self.buffer)), partial or bool(self.buffer))
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_greeting(self, limit: int, deadline: float) -> bytes:
        """Up to and including the first newline, or the first ``limit`` bytes if none comes; sooner
        once the bytes cannot be the greeting and no more are coming (to quote a stranger's words)."""
        while b"\n" not in self.buffer and len(self.buffer) < limit:
            if self.buffer and not GREETING.startswith(self.buffer):
                deadline = min(deadline, time.monotonic() + 0.2)
            try:
                self._fill(deadline, limit, False)
            except _Lost:
                break
            except TimeoutError:
                if self.buffer and not GREETING.startswith(self.buffer):
                    break
                raise
        end = self.buffer.find(b"\n")
        end = len(self.buffer) if end < 0 or end >= limit else end + 1
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    def _fill(self, deadline: float, want: int, partial: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.out], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(self.out, max(want, 1))
        if not chunk:
            raise _Lost(partial, "the stream ended")
        self.buffer += chunk

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        view = memoryview(data)
        try:
            while view:  # an unbuffered pipe may take part of a big request at a time
                view = view[self.proc.stdin.write(view) or 0:]
        except (BrokenPipeError, ConnectionResetError, ValueError):
            raise _Lost(False, "its stdin is closed") from None

    def stderr_tail(self, wait: float = 2.0) -> str:
        """The end of what the child wrote on stderr (after it exits, up to ``wait`` seconds)."""
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - _STDERR_TAIL))
        return self.stderr.read().decode(errors="replace").strip()

    def stop(self, wait: float = 2.0) -> None:
        """Close its stdin (a server exits at end of input), then kill it if it lingers."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()


Diagnose = Callable[[str, int | None, str], RemoteError | None]
"""Turns a failed child's stderr tail, exit status and what failed into a specific error (or None: the
generic one)."""


class StdioTransport:
    """Requests to butler servers run as child processes of ``command`` (see the module docstring).

    ``where`` names the repository in errors (an ``ssh://`` URL); ``diagnose`` may recognise a
    command's own failures (ssh's refused keys or unreachable hosts); ``timeout`` bounds the wait
    for a greeting and for each answer, in seconds.
    """

    def __init__(self, command: Sequence[str], where: str, *, env: Mapping[str, str] | None = None,
                 max_children: int = 4, timeout: float = 60.0, diagnose: Diagnose | None = None) -> None:
        if not command:
            raise ValueError("the command of a stdio transport is empty")
        if max_children < 1:
            raise ValueError(f"max_children must be at least 1, not {max_children}")
        self.command = list(command)
        self.where = where
        self.env = env
        self.max_children = max_children
        self.timeout = timeout
        self._diagnose = diagnose
        self._idle: list[_Child] = []
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _stop_all, self._idle)

    @property
    def shown(self) -> str:
        """The command as a shell would show it."""
        import shlex

        return shlex.join(self.command)

    @property
    def pids(self) -> list[int]:
        """The process ids of the idle children (to see them in ``ps``, or to test a lost one)."""
        with self._cond:
            return [child.proc.pid for child in self._idle]

    # -- Transport ---------------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        frame = encode_frame({"method": method, "path": path, "query": dict(query or {}),
                              "headers": dict(headers or {})}, body) + body
        retried = False
        while True:
            child = self._acquire()
            try:
                reply = self._exchange(child, frame, f"{method} {path}")
            except _Lost as lost:
                self._discard(child)
                if not lost.partial and child.served and not retried:
                    retried = True  # it died between requests (a dropped connection): once more on a new one
                    child.stop(wait=0.5)
                    continue
                raise self._failure(child, f"{'the answer was cut' if lost.partial else 'it ended'} during "
                                           f"{method} {path}") from None
            except TimeoutError:
                self._discard(child)
                child.proc.kill()
                raise self._failure(child, f"no answer to {method} {path} within {self.timeout:g} s") from None
            except BaseException:
                self._discard(child)  # the stream is out of step (interrupted, bad frame): never reuse it
                child.proc.kill()
                child.stop(wait=0.5)
                raise
            child.served += 1
            self._release(child)
            return reply

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle[:] = list(self._idle), []
            self._cond.notify_all()
        for child in idle:
            child.stop()

    # -- children ----------------------------------------------------------------------------
    def _acquire(self) -> _Child:
        with self._cond:
            if os.getpid() != self._pid:  # a forked copy: the children's pipes belong to the parent
                del self._idle[:]
                self._count, self._pid = 0, os.getpid()
            while True:
                if self._closed:
                    raise RemoteError(f"the connection to {self.where} was closed")
                while self._idle:
                    child = self._idle.pop()
                    if child.alive():
                        return child
                    self._count -= 1  # it died while idle (a dropped connection): a new one replaces it
                    _stop_all([child])
                if self._count < self.max_children:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _start(self) -> _Child:
        try:
            child = _Child(self.command, self.env)
        except OSError as err:
            raise RemoteUnavailableError(f"cannot reach {self.where}: `{self.shown}` cannot be started: {err}") from None
        deadline = time.monotonic() + self.timeout
        try:
            line = child.read_greeting(256, deadline)
        except TimeoutError:
            child.proc.kill()
            raise self._failure(child, f"it sent no greeting within {self.timeout:g} s", starting=True) from None
        if line == GREETING:
            return child
        if not line:
            raise self._failure(child, "it ended before its greeting", starting=True)
        child.stop(wait=0.5)
        if line.startswith(_MAGIC):
            version = line[len(_MAGIC):].strip().decode(errors="replace")
            raise RemoteProtocolError(f"{self.where} speaks butler protocol version {version}, this client speaks "
                                      f"version {PROTOCOL_VERSION}: upgrade the older side")
        raise RemoteProtocolError(
            f"{self.where}: `{self.shown}` wrote {line[:120]!r} where the butler's greeting ({GREETING!r}) was "
            "expected; a login script that prints on non-interactive shells (make it print only when the shell "
            "is interactive) or a command that is not `butler serve --stdio`")

    def _exchange(self, child: _Child, frame: bytes, what: str) -> Reply:
        if not child.alive():
            raise _Lost(False, "it had exited")
        child.send(frame)
        deadline = time.monotonic() + self.timeout
        prefix = child.read_exact(_LENGTH.size, deadline, False)
        (n,) = _LENGTH.unpack(prefix)
        if n > MAX_HEAD_BYTES:
            raise RemoteProtocolError(f"{self.where} answered {what} with {prefix!r}..., not a frame of the butler "
                                      "stdio protocol")
        head = _parse_head(child.read_exact(n, deadline, True), f"the answer of {self.where} to {what}")
        parts = []
        left = head["length"]
        while left > 0:  # each block gets its own deadline: a big file is slow, not stuck
            block = child.read_exact(min(BLOCK, left), time.monotonic() + self.timeout, True)
            parts.append(block)
            left -= len(block)
        status, headers = head.get("status"), head.get("headers") or {}
        if not isinstance(status, int) or not isinstance(headers, dict):
            raise RemoteProtocolError(f"the answer of {self.where} to {what} has no status: {head!r}")
        return Reply(status, {str(k): str(v) for k, v in headers.items()}, b"".join(parts))

    def _release(self, child: _Child) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(child)
                self._cond.notify()
                return
            self._count -= 1
        child.stop()

    def _discard(self, child: _Child) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def _failure(self, child: _Child, what: str, *, starting: bool = False) -> RemoteError:
        """The error of a child that failed (it is stopped); ``diagnose`` is told ``what`` happened
        unless the child failed while starting (its stderr then says it all)."""
        tail = child.stderr_tail()
        status = child.proc.poll()
        if status is None:
            child.proc.kill()
        child.stop(wait=0.5)
        known = self._diagnose(tail, status, "" if starting else what) if self._diagnose is not None else None
        if known is not None:
            return known
        said = f"; it said: {tail}" if tail else "; it wrote nothing on stderr"
        ended = f" (exit status {status})" if status is not None else ""
        shown = self.shown if len(self.shown) <= 400 else self.shown[:400] + "..."
        return RemoteUnavailableError(f"lost {self.where}: `{shown}`{ended}: {what}{said}")


def _stop_all(children: list[_Child]) -> None:
    for child in list(children):
        child.stop(wait=0.5)
