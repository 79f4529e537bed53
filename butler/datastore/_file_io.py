"""Checksummed, atomic file writes and verification for the datastore.

Writes go to a temporary file in the destination directory (name starting with
``.tmp-`` so clean-up after a crash can find them next to the journaled path) and are then moved into place,
so a reader never sees a half-written dataset.

No-overwrite semantics: the move uses ``os.link`` (fails atomically if the target
exists, on local POSIX filesystems and NFS alike) followed by unlinking the
temporary name. On filesystems without hard links (some FUSE/SMB/object-store
mounts) it falls back to check-then-``os.replace``; there two concurrent writers
of the same path may both succeed and the last one wins. The registry's unique
constraint on (dataset type, data ID, run) is the real arbiter of conflicts; the
file-level check only stops accidents.

`stage` and `StagedFile` split a write in two, so the datastore can insert the
registry rows between writing the bytes and making them visible, and throw the
bytes away if the insert fails.

The checksum is xxh3-128 (many GB/s, so checking is I/O-bound; it guards against
corruption and truncation, not against an adversary), written as
``"xxh3_128:<hex>"`` so the algorithm can change later without ambiguity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import xxhash

from butler._faults import crash_point
from butler.errors import ChecksumError

__all__ = [
    "CHECKSUM_ALGORITHM",
    "StagedFile",
    "checksum_bytes",
    "checksum_file",
    "checksum_stream",
    "stage",
    "unlink_quietly",
    "verify_bytes",
    "verify_file",
    "write_atomic",
]

CHECKSUM_ALGORITHM = "xxh3_128"
"""Algorithm used for new checksums."""

_BLOCK_SIZE = 1 << 20
_TMP_PREFIX = ".tmp-"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

def _sha256() -> Any:
    import hashlib  # lazily: loading OpenSSL costs ~2 ms of import time

    return hashlib.sha256()


_HASHERS: dict[str, Callable[[], Any]] = {
    "xxh3_128": xxhash.xxh3_128,
    "xxh3_64": xxhash.xxh3_64,
    "sha256": _sha256,
}


def _hasher(algorithm: str) -> Any:
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise ValueError(
            f"unsupported checksum algorithm {algorithm!r}; supported: {sorted(_HASHERS)}"
        ) from None


Buffer = bytes | bytearray | memoryview


def checksum_bytes(data: Buffer, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """Checksum of ``data`` as ``"<algorithm>:<hex>"``."""
    if algorithm == "xxh3_128":
        return "xxh3_128:" + xxhash.xxh3_128_hexdigest(data)
    hasher = _hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def checksum_file(path: str | os.PathLike[str], algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """Checksum of a file, read in 1 MiB blocks so memory stays flat for big files."""
    hasher = _hasher(algorithm)
    with open(path, "rb", buffering=0) as stream:
        # Size the buffer to the file so small files cost no 1 MiB allocation.
        buffer = bytearray(min(max(os.fstat(stream.fileno()).st_size, 1), _BLOCK_SIZE))
        view = memoryview(buffer)
        while n := stream.readinto(buffer):
            hasher.update(view[:n])
    return f"{algorithm}:{hasher.hexdigest()}"


def checksum_stream(stream: Any, algorithm: str = CHECKSUM_ALGORITHM) -> tuple[int, str]:
    """``(size, checksum)`` of what a binary stream yields until its end (e.g. a zip member), read
    in 1 MiB blocks so memory stays flat."""
    hasher = _hasher(algorithm)
    size = 0
    while block := stream.read(_BLOCK_SIZE):
        hasher.update(block)
        size += len(block)
    return size, f"{algorithm}:{hasher.hexdigest()}"


def _split(checksum: str) -> str:
    algorithm, sep, _ = checksum.partition(":")
    if not sep:
        raise ValueError(f"checksum {checksum!r} has no '<algorithm>:' prefix")
    return algorithm


def verify_bytes(
    data: bytes | bytearray | memoryview,
    expected_checksum: str,
    expected_size: int | None = None,
    *,
    where: str = "<bytes>",
) -> None:
    """Check bytes that crossed a trust boundary (remote, cache); ``where`` names their origin."""
    if expected_size is not None and len(data) != expected_size:
        raise ChecksumError(
            f"size mismatch for {where}: recorded {expected_size} bytes, found {len(data)}"
        )
    found = checksum_bytes(data, _split(expected_checksum))
    if found != expected_checksum:
        raise ChecksumError(
            f"checksum mismatch for {where}: recorded {expected_checksum}, found {found}"
        )


def verify_file(
    path: str | os.PathLike[str], expected_checksum: str, expected_size: int | None = None
) -> None:
    """Raise `ChecksumError` if the file differs from what was recorded at write time.

    The size is compared first (one ``stat``), so truncation is caught without
    reading the file. A missing file raises `FileNotFoundError`.
    """
    if expected_size is not None:
        size = os.stat(path).st_size
        if size != expected_size:
            raise ChecksumError(
                f"size mismatch for {os.fspath(path)}: recorded {expected_size} bytes, found {size}"
            )
    found = checksum_file(path, _split(expected_checksum))
    if found != expected_checksum:
        raise ChecksumError(
            f"checksum mismatch for {os.fspath(path)}: recorded {expected_checksum}, found {found}"
        )


# Directories this process created or saw; saves a makedirs (several syscalls) per put.
_known_dirs: set[str] = set()


def _ensure_dir(directory: str) -> None:
    if directory and directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_temp(path: str, data: Buffer, *, make_dirs: bool, fsync: bool) -> str:
    """Write ``data`` to a fresh temporary file next to ``path``; return its name."""
    directory, base = os.path.split(path)
    temp = os.path.join(directory, f"{_TMP_PREFIX}{os.urandom(6).hex()}-{base[:200]}")
    if make_dirs:
        _ensure_dir(directory)
    crash_point("stage: write temporary file")
    try:
        fd = os.open(temp, _OPEN_FLAGS, 0o666)
    except FileNotFoundError:
        if not make_dirs:
            raise
        # The directory was removed since we cached it (e.g. a pruned run); recreate once.
        _known_dirs.discard(directory)
        _ensure_dir(directory)
        fd = os.open(temp, _OPEN_FLAGS, 0o666)
    try:
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(temp)
        raise
    return temp


def unlink_quietly(path: str) -> None:
    """Remove a file; one that is already gone is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory: str) -> None:
    # Makes the new directory entry durable; not possible (nor needed) on Windows.
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(temp: str, path: str, *, overwrite: bool) -> None:
    crash_point("stage: link into place")
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite existing file {path}") from None
    except OSError:
        # No hard links here: fall back to check-then-replace (racy, see module docstring).
        if os.path.lexists(path):
            raise FileExistsError(f"refusing to overwrite existing file {path}") from None
        os.replace(temp, path)
        return
    crash_point("stage: unlink temporary name")
    try:
        os.unlink(temp)
    except OSError:
        pass  # committed; the leftover is a second link to the same file, found by cleanup


class StagedFile:
    """Bytes written to a temporary file, waiting for `commit` or `discard`.

    Use as a context manager: leaving the block without a commit discards the
    temporary file, so an exception between staging and committing (e.g. a
    failed registry insert) leaves nothing behind. A failed `commit` (target
    exists) keeps the temporary file so the caller may retry with ``overwrite``.
    """

    __slots__ = ("_fsync", "_state", "checksum", "path", "size", "temp_path")

    def __init__(
        self, path: str, temp_path: str, size: int, checksum: str, *, fsync: bool = False
    ) -> None:
        self.path = path
        """Final destination."""
        self.temp_path = temp_path
        """Where the bytes are until `commit`."""
        self.size = size
        self.checksum = checksum
        self._state = "staged"
        self._fsync = fsync

    @property
    def state(self) -> str:
        """``"staged"``, ``"committed"`` or ``"discarded"``."""
        return self._state

    def commit(self, *, overwrite: bool = False) -> None:
        """Move the file into place; refuse to replace an existing file unless ``overwrite``."""
        if self._state != "staged":
            raise RuntimeError(f"cannot commit {self.path}: staged {self._kind} already {self._state}")
        self._move_into_place(overwrite)
        self._state = "committed"
        if self._fsync:
            _fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        """Delete the temporary file; a no-op after commit or a previous discard."""
        if self._state == "staged":
            self._remove_temp()
            self._state = "discarded"

    # Hooks for what is staged (a file here; a directory in StagedDirectory).
    _kind = "file"

    def _move_into_place(self, overwrite: bool) -> None:
        _move_into_place(self.temp_path, self.path, overwrite=overwrite)

    def _remove_temp(self) -> None:
        unlink_quietly(self.temp_path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, size={self.size}, checksum={self.checksum!r}, "
            f"{self._state})"
        )


def stage(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    make_dirs: bool = True,
    fsync: bool = False,
) -> StagedFile:
    """Write ``data`` next to ``path`` under a temporary name; see `StagedFile`."""
    path = os.fspath(path)
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")  # count bytes, not items, for typed buffers
    checksum = checksum_bytes(data)
    temp = _write_temp(path, data, make_dirs=make_dirs, fsync=fsync)
    return StagedFile(path, temp, len(data), checksum, fsync=fsync)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    make_dirs: bool = True,
    overwrite: bool = False,
    fsync: bool = False,
) -> tuple[int, str]:
    """Write ``data`` to ``path`` atomically; return ``(size, checksum)``.

    Raises `FileExistsError` if ``path`` exists and ``overwrite`` is false. No
    temporary file survives an error. ``fsync`` trades speed for durability
    across power loss (a crash of the process alone never loses a committed file).
    """
    staged = stage(path, data, make_dirs=make_dirs, fsync=fsync)
    with staged:
        staged.commit(overwrite=overwrite)
    return staged.size, staged.checksum
