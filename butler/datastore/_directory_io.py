"""Datasets stored as directories (zarr stores): atomic staging, manifest checksums, verification.

A directory dataset is written into a temporary directory next to its final
path (``.tmp-<random>-<name>``, the prefix cleanup looks for) and renamed into
place on commit, so readers never see half a store. A rename onto an existing
non-empty directory fails atomically on POSIX, which gives the same
no-overwrite guarantee as `StagedFile` (a store always holds ``zarr.json``, so
it is never empty). ``overwrite`` moves the old directory aside first, then
removes it: a reader can find the path missing for that instant, never mixed.

The record of a directory keeps the *total size* of its files and a *manifest
checksum*, written as ``"manifest:<algorithm>:<hex>"`` so `verify_path` knows
to walk a directory. The manifest is a file at the store's root,
`MANIFEST_NAME`: a header line, then the sorted ``path<TAB>size<TAB>checksum``
lines of every other file (paths relative, ``/``-separated); the recorded
checksum is the checksum of that file. So a reader that checks the one small
file against the registry gets a trusted size and checksum of every member:
reads check the metadata documents they parse with it (`Manifest.check`;
chunks carry their own crc32c), and `directory_problems` names the changed,
truncated, missing or extra member. A lost or damaged manifest file is told
apart from damage elsewhere by recomputing the manifest from the files.

Stores written before manifest files recorded the checksum of the lines alone
(no header, no file). They are verified as far as they can be: by their chunk
checksums on reads, and by the recomputed manifest in ``verify``, which then
cannot say which member changed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from butler.errors import ChecksumError

from .._faults import crash_point
from ._file_io import (
    _TMP_PREFIX,
    CHECKSUM_ALGORITHM,
    StagedFile,
    _ensure_dir,
    checksum_bytes,
    checksum_file,
    verify_file,
)

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_PREFIX",
    "Manifest",
    "StagedDirectory",
    "checksum_directory",
    "directory_problems",
    "load_manifest",
    "make_staging_dir",
    "manifest_bytes",
    "manifest_checksum",
    "parse_manifest",
    "remove_path",
    "verify_directory",
    "verify_path",
]

MANIFEST_PREFIX = "manifest:"
"""Prefix of the checksum recorded for a directory dataset."""
MANIFEST_NAME = "butler-manifest.tsv"
"""The file at the root of a directory dataset holding its manifest lines (not listed in them)."""

Entries = Mapping[str, tuple[int, str]]


_HEADER = b"butler manifest 1: path, size, checksum of every other file\n"
"""First line of a manifest file (so a store that lost its manifest file fails its recorded checksum)."""


def _lines(entries: Entries) -> bytes:
    return "".join(f"{path}\t{size}\t{checksum}\n" for path, (size, checksum) in sorted(entries.items())).encode()


def manifest_bytes(entries: Entries) -> bytes:
    """The content of the `MANIFEST_NAME` file: a header, then the sorted ``path<TAB>size<TAB>checksum`` lines."""
    return _HEADER + _lines(entries)


def manifest_checksum(entries: Entries) -> tuple[int, str]:
    """``(total size, "manifest:<checksum>")`` of ``{relative path: (size, checksum)}``: what the record holds.

    The checksum is that of `manifest_bytes`, the store's manifest file.
    """
    return sum(size for size, _ in entries.values()), MANIFEST_PREFIX + checksum_bytes(manifest_bytes(entries))


def _legacy_checksum(entries: Entries, algorithm: str) -> str:
    """The record of a store written before manifest files: the checksum of the lines alone."""
    return MANIFEST_PREFIX + checksum_bytes(_lines(entries), algorithm)


def _parse_manifest(data: bytes, where: str) -> dict[str, tuple[int, str]]:
    if not data.startswith(_HEADER):
        raise ChecksumError(f"the manifest {where} does not start with {_HEADER.decode().strip()!r}")
    entries = {}
    try:
        for line in data[len(_HEADER):].decode().splitlines():
            path, size, checksum = line.split("\t")
            entries[path] = (int(size), checksum)
    except ValueError as err:
        raise ChecksumError(f"the manifest {where} is not a list of path, size, checksum lines: {err}") from None
    return entries


def parse_manifest(data: bytes, expected_checksum: str, where: str) -> dict[str, tuple[int, str]]:
    """``{member: (size, checksum)}`` of a manifest file's bytes, checked against the recorded
    ``"manifest:..."`` checksum first (`ChecksumError` if they differ): how a reader that fetches a
    store's files one by one (a remote client) learns what each must be."""
    algorithm = expected_checksum[len(MANIFEST_PREFIX):].partition(":")[0]
    found = MANIFEST_PREFIX + checksum_bytes(data, algorithm)
    if found != expected_checksum:
        raise ChecksumError(f"the manifest {where} does not match the recorded checksum ({found} != "
                            f"{expected_checksum})")
    return _parse_manifest(data, where)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the registry vouches for in a directory dataset, for readers to check the files they parse.

    ``entries`` is ``{relative path: (size, checksum)}`` from a `MANIFEST_NAME` file that matched the
    recorded checksum, or None for a store written without one (then only chunk checksums apply).
    """

    where: str
    entries: Mapping[str, tuple[int, str]] | None

    def check(self, key: str, data: bytes | bytearray | memoryview, where: str) -> None:
        """Raise `ChecksumError` (naming ``where``) if ``data``, the file ``key``, is not what was written."""
        if self.entries is None:
            return
        expected = self.entries.get(key)
        if expected is None:
            raise ChecksumError(f"{where} is not in the manifest of {self.where} (a file added after the write?)")
        size, checksum = expected
        if len(data) != size:
            raise ChecksumError(f"size mismatch for {where}: recorded {size} bytes, found {len(data)}")
        algorithm = checksum.partition(":")[0]
        found = checksum_bytes(data, algorithm)
        if found != checksum:
            raise ChecksumError(f"checksum mismatch for {where}: recorded {checksum}, found {found}")


def _read_manifest(root: str, expected_checksum: str) -> tuple[dict[str, tuple[int, str]] | None, str | None]:
    """The entries of the store's manifest file (None if it has none) and, if it does not match, why."""
    path = os.path.join(root, MANIFEST_NAME)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"directory {root} does not exist") from None
        return None, None
    inner = expected_checksum.removeprefix(MANIFEST_PREFIX)
    found = checksum_bytes(data, inner.partition(":")[0])
    if found != inner:
        return None, (f"checksum mismatch for {path}: recorded {inner}, found {found} "
                      "(the store's list of files and checksums was changed)")
    return _parse_manifest(data, path), None


def load_manifest(path: str | os.PathLike[str], expected_checksum: str) -> Manifest:
    """The verified `Manifest` of the store at ``path`` (one small file read).

    Raises `ChecksumError` if the manifest file does not match the recorded checksum, and
    `FileNotFoundError` if the store is missing.
    """
    root = os.fspath(path)
    entries, problem = _read_manifest(root, expected_checksum)
    if problem is not None:
        raise ChecksumError(problem)
    return Manifest(root, entries)


def _walk(root: str) -> Iterable[tuple[str, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        top = dirpath == root
        for name in filenames:
            if top and name == MANIFEST_NAME:
                continue  # the manifest lists the other files, not itself
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root).replace(os.sep, "/"), full


def _disk_entries(root: str, algorithm: str) -> dict[str, tuple[int, str]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"directory {root} does not exist")
    return {rel: (os.stat(full).st_size, checksum_file(full, algorithm)) for rel, full in _walk(root)}


def checksum_directory(path: str | os.PathLike[str], algorithm: str = CHECKSUM_ALGORITHM) -> tuple[int, str]:
    """Total size and manifest checksum of every file below ``path`` (but its manifest file)."""
    return manifest_checksum(_disk_entries(os.fspath(path), algorithm))


def directory_problems(path: str | os.PathLike[str], expected_checksum: str, expected_size: int | None = None
                       ) -> list[tuple[str, str, str]]:
    """Every difference between the files below ``path`` and the record: ``(member, kind, detail)``.

    ``member`` is the relative path of the damaged file inside the store (``""`` when that
    cannot be told); ``kind`` is ``"checksum"`` or ``"size"``. A store whose manifest file
    matches the record is compared file by file (a changed, truncated, missing or extra member
    is named). Otherwise the manifest is recomputed from the files on disk: that tells a lost
    or damaged manifest file from damage elsewhere, and checks a store written before manifest
    files (which then cannot say which member changed).
    """
    root = os.fspath(path)
    entries, problem = _read_manifest(root, expected_checksum)
    if entries is not None:
        return _member_problems(root, entries)
    algorithm = expected_checksum.removeprefix(MANIFEST_PREFIX).partition(":")[0]
    disk = _disk_entries(root, algorithm)
    size = sum(n for n, _ in disk.values())
    with_file = MANIFEST_PREFIX + checksum_bytes(manifest_bytes(disk), algorithm)
    manifest_path = os.path.join(root, MANIFEST_NAME)
    if problem is not None:
        rest = ("every other file matches the record" if with_file == expected_checksum
                else "other files differ from the record too; which cannot be told without it")
        return [(MANIFEST_NAME, "checksum", f"{problem}; {rest}")]
    if with_file == expected_checksum:
        return [(MANIFEST_NAME, "checksum", f"{manifest_path} is missing (every other file matches the record)")]
    if _legacy_checksum(disk, algorithm) == expected_checksum:
        return []  # written before manifest files, intact
    if expected_size is not None and size != expected_size:
        return [("", "size", f"size mismatch for {root}: recorded {expected_size} bytes in its files, found {size}")]
    return [("", "checksum", (f"manifest checksum mismatch for {root}: recorded {expected_checksum} (a file was "
                              "changed, added or removed, or the manifest file was lost; which cannot be told)"))]


def _member_problems(root: str, entries: Entries) -> list[tuple[str, str, str]]:
    problems = []
    on_disk = dict(_walk(root))
    for member in sorted(set(entries) | set(on_disk)):
        full = on_disk.get(member) or os.path.join(root, *member.split("/"))
        if member not in on_disk:
            problems.append((member, "checksum", f"{full} is missing from the store (listed in its manifest)"))
            continue
        if member not in entries:
            problems.append((member, "checksum", f"{full} is not in the store's manifest (added after the write)"))
            continue
        size, checksum = entries[member]
        try:
            verify_file(full, checksum, size)
        except ChecksumError as err:
            problems.append((member, "size" if str(err).startswith("size") else "checksum", str(err)))
    return problems


def verify_directory(path: str | os.PathLike[str], expected_checksum: str, expected_size: int | None = None) -> None:
    """Raise `ChecksumError` (naming the first damaged member) if the files below ``path`` differ from the record."""
    problems = directory_problems(path, expected_checksum, expected_size)
    if problems:
        raise ChecksumError("; ".join(detail for _, _, detail in problems))


def verify_path(path: str | os.PathLike[str], expected_checksum: str, expected_size: int | None = None) -> None:
    """`verify_file` for files, `verify_directory` for manifest checksums."""
    if expected_checksum.startswith(MANIFEST_PREFIX):
        verify_directory(path, expected_checksum, expected_size)
    else:
        verify_file(path, expected_checksum, expected_size)


def make_staging_dir(path: str | os.PathLike[str]) -> str:
    """Create an empty temporary directory next to ``path`` (parents created) and return it."""
    path = os.fspath(path)
    directory, base = os.path.split(path)
    _ensure_dir(directory)
    temp = os.path.join(directory, f"{_TMP_PREFIX}{os.urandom(6).hex()}-{base[:200]}")
    crash_point("stage: make temporary directory")
    try:
        os.mkdir(temp)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        os.mkdir(temp)
    return temp


class StagedDirectory(StagedFile):
    """A directory written under a temporary name, waiting for `commit` or `discard`.

    A `StagedFile` whose payload is a directory (the datastore treats them alike): leaving the
    ``with`` block without a commit deletes the temporary directory.
    """

    __slots__ = ()
    _kind = "directory"

    def _move_into_place(self, overwrite: bool) -> None:
        """Rename into place; an existing path raises `FileExistsError` unless ``overwrite``."""
        crash_point("stage: rename directory into place")
        if os.path.lexists(self.path):
            if not overwrite:
                raise FileExistsError(f"refusing to overwrite existing {self.path}")
            directory, base = os.path.split(self.path)
            trash = os.path.join(directory, f"{_TMP_PREFIX}{os.urandom(6).hex()}-{base[:200]}-old")
            os.rename(self.path, trash)
            os.rename(self.temp_path, self.path)
            _remove_tree(trash)
        else:
            try:
                os.rename(self.temp_path, self.path)
            except OSError as err:  # a directory appeared since the check (ENOTEMPTY/EEXIST/ENOTDIR)
                raise FileExistsError(f"refusing to overwrite existing {self.path}: {err}") from None

    def _remove_temp(self) -> None:
        _remove_tree(self.temp_path)


def _remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_path(path: str) -> None:
    """Delete a dataset's file or directory; a missing one is not an error."""
    crash_point("remove file")
    _remove_tree(path)

