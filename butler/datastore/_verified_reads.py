"""Reading a dataset's file checked against its file record, reading each byte once.

Every read of the datastore is verified unless the caller opts out (``Butler(...,
verify_reads=False)``). What a formatter gets to decode (`load_verified`):

* a single file up to `STREAM_BYTES`: its bytes, read once into memory, with the size
  compared first (one ``fstat``: a truncated file is caught before it is read) and then
  the xxh3-128 of those bytes; the formatter decodes the same buffer (`Formatter.read_verified`);
* a bigger file, or a read the formatter must make from the file itself (lazy FITS
  reads): the file is verified in a streaming pass (1 MiB blocks, flat memory), then read
  by path — the one case that reads a file twice;
* a directory (zarr store, ``manifest:`` checksum): its manifest file, checked against the
  recorded checksum; the formatter checks every metadata document it reads against it,
  and chunks carry their own crc32c, so a cutout still reads only what it needs.

Partial reads of single files (a FITS ``bbox`` cutout or header-only component, a parquet
column subset) read the whole file to verify it. A mismatch raises `ChecksumError`;
the datastore adds which dataset the file belongs to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from butler.errors import ChecksumError

from ._directory_io import MANIFEST_PREFIX, load_manifest
from ._file_io import checksum_bytes, verify_file

__all__ = ["STREAM_BYTES", "load_verified", "read_checked"]

STREAM_BYTES = 256 << 20
"""Files larger than this are verified in a streaming pass, then read by path (memory stays flat)."""


def _size_mismatch(path: str, recorded: int, found: int) -> ChecksumError:
    how = "truncated" if found < recorded else "grown"
    return ChecksumError(f"size mismatch for {path}: recorded {recorded} bytes, found {found} (the file was {how} "
                         "after it was written)")


def read_checked(path: str, checksum: str, size: int | None) -> bytearray:
    """The bytes of ``path``, checked against the recorded size and checksum (`ChecksumError` if not)."""
    with open(path, "rb", buffering=0) as stream:
        found = os.fstat(stream.fileno()).st_size
        if size is not None and found != size:
            raise _size_mismatch(path, size, found)
        data = bytearray(found)
        view = memoryview(data)
        filled = 0
        while filled < found:
            n = stream.readinto(view[filled:])
            if not n:
                raise _size_mismatch(path, found, filled)  # shrank while being read
            filled += n
    algorithm = checksum.partition(":")[0]
    digest = checksum_bytes(data, algorithm)
    if digest != checksum:
        raise ChecksumError(f"checksum mismatch for {path}: recorded {checksum}, found {digest} (the file was "
                            "changed or damaged after it was written)")
    return data


def load_verified(path: str, checksum: str | None, size: int | None, formatter: Any,
                  parameters: Mapping[str, Any] | None) -> Any:
    """What ``formatter.read_verified`` decodes, or None when the file is to be read by path.

    None also means "nothing to verify against" for a record without a checksum.
    """
    if not checksum:
        return None
    if checksum.startswith(MANIFEST_PREFIX):
        return load_manifest(path, checksum)
    if formatter.reads_from_file(parameters) or (size is not None and size > STREAM_BYTES):
        found = os.stat(path).st_size
        if size is not None and found != size:
            raise _size_mismatch(path, size, found)
        verify_file(path, checksum, size)  # in 1 MiB blocks
        return None
    return read_checked(path, checksum, size)
