"""Datasets stored as directories (zarr stores): atomic staging, manifest checksums, verification.

A directory dataset is written into a temporary directory next to its final
path (``.tmp-<random>-<name>``, the prefix cleanup looks for) and renamed into
place on commit, so readers never see half a store. A rename onto an existing
non-empty directory fails atomically on POSIX, which gives the same
no-overwrite guarantee as `StagedFile` (a store always holds ``zarr.json``, so
it is never empty). ``overwrite`` moves the old directory aside first, then
removes it: a reader can find the path missing for that instant, never mixed.

The record of a directory keeps the *total size* of its files and a *manifest
checksum*: the checksum of the sorted ``path<TAB>size<TAB>checksum`` lines of
every file (paths relative, ``/``-separated), written as
``"manifest:<algorithm>:<hex>"`` so `verify_path` knows to walk a directory.
Verification recomputes it from the files on disk, so a changed, truncated,
missing or extra file is reported.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

from butler.errors import ChecksumError

from .._faults import crash_point
from ._file_io import _TMP_PREFIX, StagedFile, _ensure_dir, checksum_bytes, checksum_file, verify_file

__all__ = [
    "MANIFEST_PREFIX",
    "StagedDirectory",
    "checksum_directory",
    "make_staging_dir",
    "manifest_checksum",
    "remove_path",
    "verify_directory",
    "verify_path",
]

MANIFEST_PREFIX = "manifest:"
"""Prefix of the checksum recorded for a directory dataset."""


def manifest_checksum(entries: Mapping[str, tuple[int, str]]) -> tuple[int, str]:
    """``(total size, "manifest:<checksum>")`` of ``{relative path: (size, checksum)}``."""
    lines = "".join(f"{path}\t{size}\t{checksum}\n" for path, (size, checksum) in sorted(entries.items()))
    return sum(size for size, _ in entries.values()), MANIFEST_PREFIX + checksum_bytes(lines.encode())


def _walk(root: str) -> Iterable[tuple[str, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root).replace(os.sep, "/"), full


def checksum_directory(path: str | os.PathLike[str], algorithm: str | None = None) -> tuple[int, str]:
    """Total size and manifest checksum of every file below ``path``."""
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"directory {root} does not exist")
    kwargs = {} if algorithm is None else {"algorithm": algorithm}
    entries = {rel: (os.stat(full).st_size, checksum_file(full, **kwargs)) for rel, full in _walk(root)}
    return manifest_checksum(entries)


def verify_directory(path: str | os.PathLike[str], expected_checksum: str, expected_size: int | None = None) -> None:
    """Raise `ChecksumError` if the files below ``path`` differ from the recorded manifest."""
    root = os.fspath(path)
    inner = expected_checksum.removeprefix(MANIFEST_PREFIX)
    algorithm = inner.partition(":")[0]
    size, found = checksum_directory(root, algorithm)
    if expected_size is not None and size != expected_size:
        raise ChecksumError(f"size mismatch for {root}: recorded {expected_size} bytes in its files, found {size}")
    if found != expected_checksum:
        raise ChecksumError(
            f"manifest checksum mismatch for {root}: recorded {expected_checksum}, found {found} "
            "(a file was changed, added or removed)"
        )


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

