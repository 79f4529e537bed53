"""Chunk-level I/O of zarr v3 arrays: checked reads of any region, parallel writes, byte counts.

zarr-python defines the format here: it lays out and parses every ``zarr.json``
(`ArrayV3Metadata`, `GroupMetadata`) and is the reader of last resort. The
chunks of arrays with a plain layout (regular grid, ``/`` keys, chunks encoded as
``bytes`` little-endian, at most one ``blosc`` or ``zstd`` compressor, then
``crc32c``; optionally inside ``sharding_indexed`` shards whose index is
``bytes`` + ``crc32c``) are read and written by this module instead, in worker
threads: zarr-python 3 runs every codec on its one event-loop thread (~0.3x the
speed of ``numpy.load``). The bytes are the same either way: tests check that
zarr-python reads what this module writes and the other way round.

The planes of an exposure are written as one shard file per plane (``image/c/0/0``)
holding full-width row strips of ~1 MiB (`plane_layout`), each followed by its
crc32c, then the shard index (offset and size of every chunk) and its crc32c.
A local shard is written with one ``writev`` per chunk straight from the
caller's array and read with one ``preadv`` per chunk straight into the output
array (no intermediate copies); the crc32c of a chunk is computed while it is
in the CPU cache. Local stores are read from the caller's thread
(`read_regions_local`), not through zarr's event loop. docs/composites.md has
the measurements behind these choices.

Every chunk read is verified: a chunk or shard index whose crc32c does not
match, that is truncated, whose size after decompression is wrong, or that is
missing (every chunk is written, so a missing one is damage, not fill) raises
`ChecksumError` naming the file (and the chunk inside a shard). Arrays with
other codecs are read through zarr-python, whose checksum failures are reported
the same way, naming the array.

Local paths and ``file://`` URLs are read and written with plain file calls;
every other fsspec URL (``memory://``, ``http(s)://``, ``s3://``...) goes through
zarr's `FsspecStore` with the same chunk code; shards are read with byte-range
requests (a server that ignores ranges still works: the whole file arrives and
the range is cut from it). `io_stats` counts the requests and bytes (tests,
benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np
import xxhash
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from butler.errors import ChecksumError

from ._file_io import CHECKSUM_ALGORITHM

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "IOStats",
    "PlaneInfo",
    "StoreHandle",
    "create_group",
    "gather_all",
    "io_stats",
    "open_plane",
    "open_plane_local",
    "open_store",
    "plane_layout",
    "read_group_attributes",
    "read_group_attributes_local",
    "read_region",
    "read_regions_local",
    "run",
    "write_metadata",
    "write_plane",
]

_CRC32C_RESIDUE = 0x48674BC7
"""crc32c of any message followed by its own little-endian crc32c (so one pass checks a chunk)."""
_NO_CHUNK = 2**64 - 1
"""Offset and size of an absent chunk in a shard index."""
CHUNK_BYTES = 1 << 20
"""Target size of an uncompressed chunk: a 4096-pixel float32 row strip of 64 rows (fits the L2 cache)."""
SHARD_BYTES = 64 << 20
"""Largest uncompressed shard: a 4096 x 4096 float32 plane is one file."""
_TASK_BYTES = 8 << 20
"""Local I/O: chunks handed to a worker thread at a time (amortises the dispatch)."""
_INLINE_BYTES = 256 << 10
"""Local reads of at most this many bytes run in the event-loop thread (no hop to a worker)."""
_THREAD_MIN = 64 << 10
"""Remote reads: chunks at least this large are checked and decoded in a worker thread."""
_CONCURRENCY = 16
"""Remote requests in flight at once per read or write."""


# -- worker threads ---------------------------------------------------------------------------
_pool_lock = threading.Lock()
_pool_instance: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def _pool() -> ThreadPoolExecutor:
    global _pool_instance
    if _pool_instance is None:
        with _pool_lock:
            if _pool_instance is None:
                _pool_instance = ThreadPoolExecutor(_workers(), thread_name_prefix="butler-zarr")
    return _pool_instance


def _forget_pool() -> None:  # a forked child has no pool threads: make a new pool there
    global _pool_instance
    _pool_instance = None


os.register_at_fork(after_in_child=_forget_pool)


async def _in_pool(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


async def gather_all(coros: Sequence[Any]) -> list[Any]:
    """Run all and wait for all (worker threads cannot be cancelled); then raise the first failure."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


_local = threading.local()


def _scratch(nbytes: int, slot: str = "a") -> np.ndarray:
    """A per-thread reusable byte buffer (no allocation, no page faults per chunk)."""
    buf = getattr(_local, slot, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 1 << 16), np.uint8)
        setattr(_local, slot, buf)
    return buf[:nbytes]


def _crc32c(data: Any, value: int = 0) -> int:
    """The crc32c of a buffer (continuing from ``value``); google_crc32c, zarr-python's own dependency.

    It takes ``bytes`` and numpy arrays, not memoryviews, and releases the GIL only for ``bytes``
    of 1 MiB or more. The ``crc32c`` package (4x faster on cold data, releases the GIL for any
    buffer) was measured in this module's loops and gained nothing: the crc32c runs on chunks
    already in the CPU cache (after the xxh3 of a write, after the kernel's copy of a read), at
    ~25 GB/s with either library.
    """
    if not isinstance(data, (bytes, np.ndarray)):
        data = np.frombuffer(data, np.uint8)
    return google_crc32c.extend(value, data) if value else google_crc32c.value(data)


def _crc(data: Any) -> bytes:
    return struct.pack("<I", _crc32c(data))


# -- compressors ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Compressor:
    """A compressor this module can encode, as a zarr codec (metadata) and a numcodecs codec (bytes)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def zarr_codecs(self, dtype: np.dtype) -> list[Any]:
        opts = dict(self.options)
        if self.name == "none":
            return [Crc32cCodec()]
        if self.name == "blosc":
            return [BloscCodec(typesize=dtype.itemsize, **opts), Crc32cCodec()]
        if self.name == "zstd":
            return [ZstdCodec(**opts), Crc32cCodec()]
        raise ValueError(f"unknown compressor {self.name!r}")

    def numcodecs_codec(self) -> Any:
        from numcodecs import Blosc, Zstd

        opts = dict(self.options)
        if self.name == "none":
            return None
        if self.name == "blosc":
            shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                       "bitshuffle": Blosc.BITSHUFFLE}[opts.get("shuffle", "shuffle")]
            return Blosc(cname=opts.get("cname", "lz4"), clevel=opts.get("clevel", 5), shuffle=shuffle)
        return Zstd(level=opts.get("level", 1))


COMPRESSORS = {
    "none": Compressor("none"),
    "lz4": Compressor("blosc", (("cname", "lz4"), ("clevel", 5), ("shuffle", "shuffle"))),
    "lz4-noshuffle": Compressor("blosc", (("cname", "lz4"), ("clevel", 5), ("shuffle", "noshuffle"))),
    "zstd": Compressor("zstd", (("level", 1),)),
}
"""Compressors by short name (benchmarked in ``benchmarks/bench_composites.py``)."""

_DECODERS: dict[str, Any] = {}


def _decoder(name: str) -> Any:
    codec = _DECODERS.get(name)
    if codec is None:
        from numcodecs import Blosc, Zstd

        codec = _DECODERS[name] = Blosc() if name == "blosc" else Zstd()
    return codec


# -- byte counting ----------------------------------------------------------------------------
@dataclass
class IOStats:
    """Requests and bytes read through the exposure stores while `io_stats` is active."""

    requests: int = 0
    bytes_read: int = 0
    keys: list[str] = field(default_factory=list)
    """The key (file) of every request, in order (a shard appears once per range read from it)."""
    reads: list[tuple[str, int]] = field(default_factory=list)
    """``(key, bytes)`` of every request."""


_active_stats: list[IOStats] = []
_stats_lock = threading.Lock()


@contextmanager
def io_stats() -> Iterator[IOStats]:
    """Count every request and byte read through exposure stores inside the block."""
    stats = IOStats()
    with _stats_lock:
        _active_stats.append(stats)
    try:
        yield stats
    finally:
        with _stats_lock:
            _active_stats.remove(stats)


def _count(key: str, nbytes: int) -> None:
    with _stats_lock:
        for stats in _active_stats:
            stats.requests += 1
            stats.bytes_read += nbytes
            stats.keys.append(key)
            stats.reads.append((key, nbytes))


# -- stores -----------------------------------------------------------------------------------
class _CountingStore(WrapperStore[Store]):
    """Delegates to a zarr store, counting reads and recording what was written (for manifests)."""

    def __init__(self, store: Store, written: dict[str, tuple[int, str]] | None = None) -> None:
        super().__init__(store)
        self.written = written

    def _with_store(self, store: Store) -> _CountingStore:
        return type(self)(store, self.written)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
                  ) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        if _active_stats and buf is not None:
            _count(key, len(buf))
        return buf

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        if self.written is not None and key not in self.written:
            data = value.as_numpy_array()
            self.written[key] = (data.nbytes, f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}")

    async def set_checked(self, key: str, value: Buffer, size: int, checksum: str) -> None:
        """`set` with the checksum already computed (in the encoding thread)."""
        await self._store.set(key, value)
        if self.written is not None:
            self.written[key] = (size, checksum)


@dataclass(frozen=True, slots=True)
class StoreHandle:
    """An open store and how to name its files in messages."""

    store: _CountingStore
    location: str
    local_root: str | None

    def where(self, key: str = "") -> str:
        """Path or URL of ``key`` (a file of the store), for error messages."""
        if not key:
            return self.location
        if self.local_root is not None:
            return os.path.join(self.local_root, *key.split("/"))
        return f"{self.location.rstrip('/')}/{key}"


def _local_path(location: str) -> str | None:
    if "://" not in location:
        return os.path.abspath(location)
    if location.startswith("file://"):
        return location[len("file://"):]
    return None


def open_store(location: str, *, read_only: bool = True, storage_options: dict[str, Any] | None = None,
               written: dict[str, tuple[int, str]] | None = None) -> StoreHandle:
    """Open the store at a local path or fsspec URL (zarr `LocalStore` / `FsspecStore`)."""
    root = _local_path(location)
    if root is not None:
        if read_only and not os.path.isdir(root):
            raise FileNotFoundError(f"no zarr store at {root}")
        base: Store = LocalStore(root, read_only=read_only)
    else:
        base = FsspecStore.from_url(location, storage_options=storage_options, read_only=read_only)
    return StoreHandle(_CountingStore(base, written), location, root)


def run(coro: Any) -> Any:
    """Run a coroutine on zarr's I/O event loop and return its result."""
    return sync(coro)


# -- planes -----------------------------------------------------------------------------------
def plane_layout(shape: tuple[int, ...], itemsize: int, chunk_bytes: int = CHUNK_BYTES,
                 shard_bytes: int = SHARD_BYTES) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(chunk shape, shard shape)`` of a 2-D plane: full-width row strips of ~``chunk_bytes``.

    Strips make a whole-plane read and write one contiguous copy per chunk (no
    re-tiling) and keep a cutout's reads to the strips its rows cross. A row
    longer than ``chunk_bytes`` gets square tiles instead. Shards are whole
    strips of ~``shard_bytes`` (one file for planes up to that size).
    """
    height, width = (max(n, 1) for n in shape)
    row = width * itemsize
    if row <= chunk_bytes:
        chunks = (min(height, max(1, chunk_bytes // row)), width)
    else:
        side = max(1, math.isqrt(max(1, chunk_bytes // itemsize)))
        chunks = (min(height, side), min(width, side))
    per_shard = max(1, shard_bytes // (chunks[0] * chunks[1] * itemsize))
    grid = (-(-height // chunks[0]), -(-width // chunks[1]))
    if chunks[1] == width:
        shards = (chunks[0] * min(grid[0], per_shard), width)
    else:  # tiles: whole rows of tiles per shard
        rows = max(1, per_shard // grid[1])
        shards = (chunks[0] * min(grid[0], rows), chunks[1] * grid[1])
    return chunks, shards


def _plain_codecs(codecs: Sequence[Any]) -> str | None | bool:
    """The compressor name (or None) of ``bytes[, blosc|zstd], crc32c``; False for anything else."""
    if len(codecs) < 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[-1], Crc32cCodec):
        return False
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return False
    middle = codecs[1:-1]
    if len(middle) > 1 or not all(isinstance(c, (BloscCodec, ZstdCodec)) for c in middle):
        return False
    if not middle:
        return None
    return "blosc" if isinstance(middle[0], BloscCodec) else "zstd"


@dataclass(frozen=True, slots=True)
class PlaneInfo:
    """What reading an array needs: shape, dtype, chunk (and shard) shape and how chunks are encoded.

    Small and picklable: lazy (dask) reads carry it to workers, which then read
    chunks without reading the array metadata again.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    """Shape of a chunk (the inner chunk of a shard)."""
    codec: str | None
    """``"blosc"``, ``"zstd"`` or ``None`` (no compressor) for chunks this module decodes."""
    fast: bool
    """False for arrays read through zarr-python (other codecs...)."""
    shards: tuple[int, ...] = ()
    """Shape of a shard (one file of many chunks with an index), or ``()`` for one file per chunk."""
    index_at_end: bool = True

    @classmethod
    def from_metadata(cls, name: str, meta: Any) -> PlaneInfo:
        """From zarr-python's parsed metadata of the array (`ArrayV3Metadata`)."""
        codecs = list(meta.codecs)
        regular = isinstance(meta.chunk_grid, RegularChunkGrid)
        grid = tuple(meta.chunk_grid.chunk_shape) if regular else ()
        shards: tuple[int, ...] = ()
        at_end = True
        index_ok = True
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            sharding = codecs[0]
            shards, chunks = grid, tuple(sharding.chunk_shape)
            codecs = list(sharding.codecs)
            at_end = sharding.index_location == ShardingCodecIndexLocation.end
            index = list(sharding.index_codecs)
            index_ok = (len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
                        and (index[0].endian is None or index[0].endian.value == "little"))
        else:
            chunks = grid
        codec = _plain_codecs(codecs)
        fast = (
            getattr(meta, "zarr_format", 3) == 3
            and regular
            and isinstance(meta.chunk_key_encoding, DefaultChunkKeyEncoding)
            and meta.chunk_key_encoding.separator == "/"
            and not meta.storage_transformers
            and index_ok
            and codec is not False
        )
        dtype = meta.dtype.to_native_dtype() if hasattr(meta.dtype, "to_native_dtype") else meta.dtype
        return cls(name, tuple(meta.shape), np.dtype(dtype).str, chunks, codec or None, fast, shards, at_end)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunks) * self.numpy_dtype.itemsize

    def key(self, index: tuple[int, ...]) -> str:
        """Key of the file holding the chunk (or, sharded, the shard) at grid ``index``."""
        return f"{self.name}/c/" + "/".join(str(i) for i in index)

    @property
    def per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shards, self.chunks, strict=True))

    @property
    def index_nbytes(self) -> int:
        return 16 * math.prod(self.per_shard) + 4


def _read_small_local(handle: StoreHandle, key: str) -> bytes | None:
    """A small file of a local store (metadata), read in place; None if missing; counted by `io_stats`."""
    try:
        with open(handle.where(key), "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return None
    if _active_stats:
        _count(key, len(data))
    return data


def _plane_info(data: bytes | None, handle: StoreHandle, name: str) -> PlaneInfo:
    from zarr.core.metadata.v3 import ArrayV3Metadata

    key = f"{name}/zarr.json"
    if data is None:
        raise FileNotFoundError(f"array {name!r} is missing from {handle.where()} (no {key})")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise ValueError("not the metadata of a zarr v3 array")
        return PlaneInfo.from_metadata(name, ArrayV3Metadata.from_dict(doc))
    except Exception as err:  # json, zarr-python's validation errors
        raise ChecksumError(f"cannot read the metadata of {handle.where(key)}: {err}") from err


async def open_plane(handle: StoreHandle, name: str) -> PlaneInfo:
    """Read the metadata of array ``name`` (one request; parsed by zarr-python's metadata classes)."""
    if handle.local_root is not None:
        return open_plane_local(handle, name)
    buf = await handle.store.get(f"{name}/zarr.json", default_buffer_prototype())
    return _plane_info(None if buf is None else buf.to_bytes(), handle, name)


def open_plane_local(handle: StoreHandle, name: str) -> PlaneInfo:
    """`open_plane` of a local store, in the calling thread."""
    return _plane_info(_read_small_local(handle, f"{name}/zarr.json"), handle, name)


# -- reads ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Job:
    """One chunk of a read: where it is in the grid and which part of it goes where in the output."""

    index: tuple[int, ...]
    out_slices: tuple[slice, ...]
    chunk_slices: tuple[slice, ...]
    where: str = ""
    offset: int = 0
    nbytes: int = -1


def _jobs(info: PlaneInfo, region: tuple[slice, ...]) -> list[_Job]:
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(region, info.chunks, strict=True)]
    jobs = []
    for index in itertools.product(*ranges):
        out_slices, chunk_slices = [], []
        for i, s, c in zip(index, region, info.chunks, strict=True):
            lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
            out_slices.append(slice(lo - s.start, hi - s.start))
            chunk_slices.append(slice(lo - i * c, hi - i * c))
        jobs.append(_Job(index, tuple(out_slices), tuple(chunk_slices)))
    return jobs


def _direct(info: PlaneInfo, job: _Job, out: np.ndarray) -> np.ndarray | None:
    """The output block a whole chunk lands in, when it is contiguous there (then it is read in place)."""
    if any(s.stop - s.start != c for s, c in zip(job.chunk_slices, info.chunks, strict=True)):
        return None
    dst = out[job.out_slices]
    return dst if dst.flags.c_contiguous else None


def _place(data: Any, info: PlaneInfo, job: _Job, out: np.ndarray) -> None:
    """Check the crc32c of an encoded chunk, decode it and copy its part into ``out``."""
    if len(data) < 4 or _crc32c(data) != _CRC32C_RESIDUE:
        raise ChecksumError(
            f"checksum mismatch in {job.where} ({len(data)} bytes): the chunk is corrupted or truncated"
        )
    payload = data[:-4]
    expected = info.chunk_nbytes
    dtype = info.numpy_dtype.newbyteorder("<")
    dst = _direct(info, job, out)
    try:
        if info.codec is not None and dst is not None:
            _decoder(info.codec).decode(payload, out=dst)
            return
        raw = payload if info.codec is None else _decoder(info.codec).decode(payload, out=_scratch(expected, "d"))
    except ChecksumError:
        raise
    except Exception as err:
        raise ChecksumError(f"cannot decompress {job.where} (crc32c matched): {err}") from err
    if memoryview(raw).nbytes != expected:
        raise ChecksumError(f"{job.where} decodes to {memoryview(raw).nbytes} bytes, expected {expected}")
    chunk = np.frombuffer(raw, dtype=dtype).reshape(info.chunks)
    out[job.out_slices] = chunk[job.chunk_slices]


def _read_chunk_at(fd: int, info: PlaneInfo, job: _Job, out: np.ndarray, size: int) -> None:
    """Read one encoded chunk of ``size`` bytes at ``job.offset`` of ``fd``, check it and place it."""
    dst = _direct(info, job, out) if info.codec is None else None
    if dst is not None and size == info.chunk_nbytes + 4:
        # In place: the kernel copies the chunk into the output, the crc32c reads it from the cache.
        tail = bytearray(4)
        got = os.preadv(fd, [dst, tail], job.offset)
        if got != size or _crc32c(bytes(tail), _crc32c(dst)) != _CRC32C_RESIDUE:
            raise ChecksumError(
                f"checksum mismatch in {job.where} ({got} of {size} bytes read): the chunk is corrupted or truncated"
            )
        return
    buf = _scratch(size)
    got = os.preadv(fd, [buf], job.offset) if size else 0
    _place(buf[:got], info, job, out)


def _read_local_files(info: PlaneInfo, jobs: list[_Job], out: np.ndarray) -> list[int]:
    """Worker thread: read chunk files (one per chunk, at ``job.where``); return the bytes read from each."""
    sizes = []
    for job in jobs:
        try:
            fd = os.open(job.where, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ChecksumError(f"{job.where} is missing (every chunk is written, so the store is damaged)") from None
        try:
            size = os.fstat(fd).st_size
            _read_chunk_at(fd, info, job, out, size)
        finally:
            os.close(fd)
        sizes.append(size)
    return sizes


def _read_local_shard(path: str, info: PlaneInfo, jobs: list[_Job], out: np.ndarray) -> list[int]:
    """Worker thread: read chunks of one shard file at the offsets of its index; return their sizes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ChecksumError(f"shard {path} is missing (every chunk is written, so the store is damaged)") from None
    try:
        for job in jobs:
            _read_chunk_at(fd, info, job, out, job.nbytes)
    finally:
        os.close(fd)
    return [job.nbytes for job in jobs]


def _load_index_local(path: str, info: PlaneInfo) -> tuple[np.ndarray, int]:
    """Read and check the index of a local shard -> (offsets and sizes, file size)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ChecksumError(f"shard {path} is missing (every chunk is written, so the store is damaged)") from None
    try:
        size = os.fstat(fd).st_size
        n = info.index_nbytes
        data = os.pread(fd, n, size - n if info.index_at_end else 0) if size >= n else b""
    finally:
        os.close(fd)
    return _parse_index(data, info, path, size), size


def _parse_index(data: bytes, info: PlaneInfo, where: str, file_size: int | None) -> np.ndarray:
    if len(data) != info.index_nbytes or _crc32c(data) != _CRC32C_RESIDUE:
        raise ChecksumError(
            f"checksum mismatch in the chunk index of shard {where}: the file is corrupted or truncated"
        )
    index = np.frombuffer(data, "<u8", count=(len(data) - 4) // 8).reshape(info.per_shard + (2,))
    if file_size is not None:
        present = index[..., 0] != _NO_CHUNK
        if np.any(index[..., 0][present] + index[..., 1][present] > file_size):
            raise ChecksumError(f"the chunk index of shard {where} points past its end: the file is truncated")
    return index


def _locate(jobs: list[_Job], info: PlaneInfo, index: np.ndarray, where: str) -> None:
    """Fill each job's offset and size from its shard's index; an absent chunk is damage."""
    for job in jobs:
        local = tuple(i % p for i, p in zip(job.index, info.per_shard, strict=True))
        offset, nbytes = (int(v) for v in index[local])
        job.where = f"chunk {job.index} of shard {where}"
        if offset == _NO_CHUNK:
            raise ChecksumError(f"{job.where} is missing (every chunk is written, so the store is damaged)")
        job.offset, job.nbytes = offset, nbytes


def _batches(jobs: list[_Job], info: PlaneInfo) -> list[list[_Job]]:
    """Split jobs into runs of ~`_TASK_BYTES`, at least one per worker when there are enough."""
    per = max(1, _TASK_BYTES // max(1, info.chunk_nbytes))
    per = max(1, min(per, -(-len(jobs) // _workers())))
    return [jobs[i:i + per] for i in range(0, len(jobs), per)]


def _by_shard(info: PlaneInfo, jobs: list[_Job]) -> dict[tuple[int, ...], list[_Job]]:
    by_shard: dict[tuple[int, ...], list[_Job]] = {}
    for job in jobs:
        by_shard.setdefault(tuple(i // p for i, p in zip(job.index, info.per_shard, strict=True)), []).append(job)
    return by_shard


def read_regions_local(handle: StoreHandle, requests: Sequence[tuple[PlaneInfo, tuple[slice, ...]]]
                       ) -> list[np.ndarray]:
    """Read ``array[region]`` of each ``(info, region)`` of a local store, checking every chunk.

    Runs in the calling thread, which hands batches of chunks to the worker
    threads (all planes' at once) unless the whole read is one chunk or at most
    `_INLINE_BYTES`: no round trip through zarr's event loop.
    """
    outs: list[np.ndarray | None] = []
    calls: list[tuple[Any, ...]] = []
    counted: list[tuple[str | None, PlaneInfo, list[_Job]]] = []  # for io_stats
    total = 0
    for info, region in requests:
        if not info.fast:
            outs.append(run(_read_region_zarr(handle, info, region)))
            continue
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=info.numpy_dtype)
        outs.append(out)
        if out.size == 0:
            continue
        jobs = _jobs(info, region)
        total += len(jobs) * info.chunk_nbytes
        if not info.shards:
            for job in jobs:
                job.where = handle.where(info.key(job.index))
            groups: list[tuple[str | None, list[_Job]]] = [(None, jobs)]
        else:
            groups = []
            for shard, shard_jobs in _by_shard(info, jobs).items():
                key = info.key(shard)
                index, _ = _load_index_local(handle.where(key), info)
                if _active_stats:
                    _count(key, info.index_nbytes)
                _locate(shard_jobs, info, index, handle.where(key))
                groups.append((key, shard_jobs))
        for key, group in groups:
            for batch in _batches(group, info):
                if key is None:
                    calls.append((_read_local_files, info, batch, out))
                else:
                    calls.append((_read_local_shard, handle.where(key), info, batch, out))
                counted.append((key, info, batch))
    if len(calls) <= 1 or total <= _INLINE_BYTES:  # not worth a hop to a worker thread
        sizes = [fn(*args) for fn, *args in calls]
    else:
        futures = [_pool().submit(*call) for call in calls]
        wait(futures)  # all of them, before raising the first failure (they write into the outputs)
        sizes = [f.result() for f in futures]
    if _active_stats:
        for (key, info, batch), batch_sizes in zip(counted, sizes, strict=True):
            for job, size in zip(batch, batch_sizes, strict=True):
                _count(key or info.key(job.index), size)
    return outs  # type: ignore[return-value]


async def read_region(handle: StoreHandle, info: PlaneInfo, region: tuple[slice, ...]) -> np.ndarray:
    """Read ``array[region]`` (slices with explicit start/stop), verifying every chunk it touches."""
    if handle.local_root is not None and info.fast:
        return read_regions_local(handle, [(info, region)])[0]  # blocks this loop while the workers read
    if not info.fast:
        return await _read_region_zarr(handle, info, region)
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=info.numpy_dtype)
    if out.size == 0:
        return out
    jobs = _jobs(info, region)
    if not info.shards:
        semaphore = asyncio.Semaphore(_CONCURRENCY)
        for job in jobs:
            job.where = handle.where(info.key(job.index))
        await gather_all([_read_remote_file(handle, info, job, out, semaphore) for job in jobs])
        return out
    await gather_all([_read_shard(handle, info, shard, shard_jobs, out)
                      for shard, shard_jobs in _by_shard(info, jobs).items()])
    return out


async def _read_shard(handle: StoreHandle, info: PlaneInfo, shard: tuple[int, ...], jobs: list[_Job],
                      out: np.ndarray) -> None:
    """Remote shard: its index with a suffix (or prefix) range request, then runs of adjacent chunks."""
    key = info.key(shard)
    where = handle.where(key)
    n = info.index_nbytes
    request = SuffixByteRequest(n) if info.index_at_end else RangeByteRequest(0, n)
    data = _cut(await handle.store.get(key, default_buffer_prototype(), request), request, where)
    _locate(jobs, info, _parse_index(data, info, where, None), where)
    # Chunks next to each other in the file are fetched with one request.
    jobs = sorted(jobs, key=lambda j: j.offset)
    runs: list[list[_Job]] = []
    for job in jobs:
        if runs and runs[-1][-1].offset + runs[-1][-1].nbytes == job.offset:
            runs[-1].append(job)
        else:
            runs.append([job])
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def fetch(run_jobs: list[_Job]) -> None:
        start = run_jobs[0].offset
        request = RangeByteRequest(start, run_jobs[-1].offset + run_jobs[-1].nbytes)
        async with semaphore:
            buf = await handle.store.get(key, default_buffer_prototype(), request)
        data = memoryview(_cut(buf, request, where))
        for job in run_jobs:
            piece = data[job.offset - start: job.offset - start + job.nbytes]
            if len(piece) >= _THREAD_MIN:
                await _in_pool(_place, piece, info, job, out)
            else:
                _place(piece, info, job, out)

    await gather_all([fetch(r) for r in runs])


def _cut(buf: Buffer | None, request: Any, where: str) -> bytes:
    """The bytes of a range request; a server that ignored the range sent the whole file: cut it."""
    if buf is None:
        raise ChecksumError(f"shard {where} is missing (every chunk is written, so the store is damaged)")
    data = buf.to_bytes()
    if isinstance(request, SuffixByteRequest):
        return data[-request.suffix:] if len(data) >= request.suffix else data
    want = request.end - request.start
    if len(data) > want and len(data) >= request.end:
        return data[request.start:request.end]
    return data


async def _read_remote_file(handle: StoreHandle, info: PlaneInfo, job: _Job, out: np.ndarray,
                            semaphore: asyncio.Semaphore) -> None:
    async with semaphore:
        buf = await handle.store.get(info.key(job.index), default_buffer_prototype())
    if buf is None:
        raise ChecksumError(f"{job.where} is missing (every chunk is written, so the store is damaged)")
    data = buf.to_bytes()
    if len(data) >= _THREAD_MIN:
        await _in_pool(_place, data, info, job, out)
    else:
        _place(data, info, job, out)


async def _read_region_zarr(handle: StoreHandle, info: PlaneInfo, region: tuple[slice, ...]) -> np.ndarray:
    """Arrays with other codecs: zarr-python reads (and checks) them."""
    from zarr.api.asynchronous import open_array

    array = await open_array(store=handle.store, path=info.name, mode="r", zarr_format=3)
    try:
        return np.asarray(await array.getitem(region))
    except (ValueError, RuntimeError) as err:
        if "checksum" in str(err).lower():
            raise ChecksumError(f"checksum mismatch in a chunk of {handle.where(info.name)}: {err}") from err
        raise


# -- writes -----------------------------------------------------------------------------------
def _encode(block: np.ndarray, chunks: tuple[int, ...], codec: Any) -> Any:
    """The encoded payload of one chunk (padded with zeros to the chunk shape, compressed); no crc."""
    if block.shape != chunks:
        padded = np.zeros(chunks, block.dtype)
        padded[tuple(slice(0, n) for n in block.shape)] = block
        block = padded
    elif not block.flags.c_contiguous:
        if codec is None:  # copy into a reusable buffer, not a new array
            dst = _scratch(block.nbytes, "e").view(block.dtype).reshape(chunks)
            dst[...] = block
            return dst
        block = np.ascontiguousarray(block)
    return block if codec is None else codec.encode(block)


class _Sink:
    """Where a file's bytes go, in order: a local file (``writev``) or a list (remote); hashes them."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.pieces: list[bytes] = []
        self.hash = xxhash.xxh3_128()
        self.size = 0

    def write(self, *pieces: Any) -> None:
        views = [v for v in (memoryview(p).cast("B") for p in pieces) if v.nbytes]
        for v in views:  # first: xxh3 streams from memory fastest, and leaves the bytes in cache
            self.hash.update(v)
            self.size += v.nbytes
        if self.fd is None:
            self.pieces.extend(v.tobytes() for v in views)
            return
        while views:
            done = os.writev(self.fd, views)
            while views and done >= views[0].nbytes:
                done -= views[0].nbytes
                views.pop(0)
            if views and done:
                views[0] = views[0][done:]

    @property
    def checksum(self) -> str:
        return f"{CHECKSUM_ALGORITHM}:{self.hash.hexdigest()}"


def _write_chunks(sink: _Sink, data: np.ndarray, info: PlaneInfo, indices: Sequence[tuple[int, ...]],
                  codec: Any) -> list[tuple[int, int]]:
    """Write chunks ``indices`` one after the other, each followed by its crc32c; -> [(offset, size)]."""
    placed = []
    pending = b""  # the crc32c of a chunk written in place, written with the next piece
    for index in indices:
        block = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, info.chunks, strict=True))]
        offset = sink.size + len(pending)
        if codec is None and block.shape == info.chunks and block.flags.c_contiguous:
            # Straight from the caller's array (hashed, then written); the crc32c then reads it from cache.
            sink.write(pending, block)
            pending = _crc(block)
            size = block.nbytes + 4
        else:
            payload = _encode(block, info.chunks, codec)
            sink.write(pending, payload, _crc(payload))
            pending = b""
            size = memoryview(payload).nbytes + 4
        placed.append((offset, size))
    sink.write(pending)
    return placed


def _open_new(path: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def _write_shard(path: str | None, data: np.ndarray, info: PlaneInfo, shard: tuple[int, ...], codec: Any
                 ) -> tuple[int, str, list[bytes]]:
    """Worker thread: write one shard (a new local file, or pieces for a remote store)."""
    per = info.per_shard
    inside = []
    for local in itertools.product(*(range(p) for p in per)):
        index = tuple(s * p + i for s, p, i in zip(shard, per, local, strict=True))
        if all(i * c < n for i, c, n in zip(index, info.chunks, info.shape, strict=True)):
            inside.append((local, index))
    fd = None if path is None else _open_new(path)
    try:
        sink = _Sink(fd)
        placed = _write_chunks(sink, data, info, [index for _, index in inside], codec)
        table = np.full(per + (2,), _NO_CHUNK, "<u8")
        for (local, _), where in zip(inside, placed, strict=True):
            table[local] = where
        raw = table.tobytes()
        sink.write(raw, _crc(raw))
    finally:
        if fd is not None:
            os.close(fd)
    return sink.size, sink.checksum, sink.pieces


def _write_files(root: str | None, data: np.ndarray, info: PlaneInfo, indices: Sequence[tuple[int, ...]],
                 codec: Any) -> list[tuple[str, int, str, list[bytes]]]:
    """Worker thread: write one file per chunk; -> [(key, size, checksum, pieces)]."""
    written = []
    for index in indices:
        key = info.key(index)
        fd = None if root is None else _open_new(os.path.join(root, *key.split("/")))
        try:
            sink = _Sink(fd)
            _write_chunks(sink, data, info, [index], codec)
        finally:
            if fd is not None:
                os.close(fd)
        written.append((key, sink.size, sink.checksum, sink.pieces))
    return written


_METADATA: dict[tuple[Any, ...], tuple[PlaneInfo, bytes]] = {}


async def _array_metadata(name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
                          shards: tuple[int, ...] | None, compressor: Compressor) -> tuple[PlaneInfo, bytes]:
    """The ``zarr.json`` of an array, as zarr-python writes it (cached: it depends on these arguments only)."""
    key = (name, shape, dtype, chunks, shards, compressor)
    cached = _METADATA.get(key)
    if cached is None:
        from zarr.api.asynchronous import create_group as zarr_create_group
        from zarr.storage import MemoryStore

        scratch = await zarr_create_group(store=MemoryStore(), zarr_format=3)
        array = await scratch.create_array(
            name, shape=shape, dtype=np.dtype(dtype), chunks=chunks, shards=shards,
            compressors=compressor.zarr_codecs(np.dtype(dtype)), fill_value=0, write_data=False,
        )
        info = PlaneInfo.from_metadata(name, array.metadata)
        assert info.fast, f"array {name} was created with codecs this module cannot write: {array.metadata.codecs}"
        document = await scratch.store_path.store.get(f"{name}/zarr.json", default_buffer_prototype())
        cached = (info, document.to_bytes())
        if len(_METADATA) > 256:
            _METADATA.clear()
        _METADATA[key] = cached
    return cached


async def write_plane(handle: StoreHandle, group: Any, name: str, data: np.ndarray, chunks: tuple[int, ...],
                      compressor: Compressor, shards: tuple[int, ...] | None = None) -> None:
    """Create array ``name`` in ``group`` (metadata by zarr) and write every chunk (by this module).

    With ``shards``, each shard is one file (chunks, then the index); without,
    each chunk is one file. Every chunk inside the array is written (also
    empty ones), so a missing chunk is damage.
    """
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))  # the one copy, if any
    chunks = tuple(max(1, min(c, n) if n else c) for c, n in zip(chunks, data.shape, strict=True))
    if shards is not None:
        shards = tuple(max(c, -(-s // c) * c) for s, c in zip(shards, chunks, strict=True))
    info, document = await _array_metadata(name, data.shape, data.dtype.str, chunks, shards, compressor)
    await group.store_path.store.set(f"{name}/zarr.json", default_buffer_prototype().buffer.from_bytes(document))
    codec = compressor.numcodecs_codec()
    root = handle.local_root
    store = handle.store
    prototype = default_buffer_prototype()
    grid_of = info.shards or info.chunks
    grid = [range(-(-n // c)) for n, c in zip(data.shape, grid_of, strict=True)]

    async def store_pieces(key: str, size: int, checksum: str, pieces: list[bytes]) -> None:
        if root is None:
            await store.set_checked(key, prototype.buffer.from_bytes(b"".join(pieces)), size, checksum)
        elif store.written is not None:
            store.written[key] = (size, checksum)

    if info.shards:
        async def one(shard: tuple[int, ...]) -> None:
            key = info.key(shard)
            path = None if root is None else handle.where(key)
            size, checksum, pieces = await _in_pool(_write_shard, path, data, info, shard, codec)
            await store_pieces(key, size, checksum, pieces)

        await gather_all([one(shard) for shard in itertools.product(*grid)])
        return
    indices = list(itertools.product(*grid))
    per = max(1, min(_TASK_BYTES // max(1, info.chunk_nbytes), -(-len(indices) // _workers())))

    async def batch(part: list[tuple[int, ...]]) -> None:
        for key, size, checksum, pieces in await _in_pool(_write_files, root, data, info, part, codec):
            await store_pieces(key, size, checksum, pieces)

    await gather_all([batch(indices[i:i + per]) for i in range(0, len(indices), per)])


async def create_group(handle: StoreHandle, attributes: dict[str, Any]) -> Any:
    """Start a new store: its root group, laid out by zarr-python in memory.

    Arrays are created in it with `write_plane` (their chunks go to ``handle``
    straight away); `write_metadata` then writes every ``zarr.json`` into the
    store. zarr-python writing them itself would probe the store for existing
    nodes and hop to a thread per file.
    """
    from zarr.api.asynchronous import create_group as zarr_create_group
    from zarr.storage import MemoryStore

    return await zarr_create_group(store=MemoryStore(), zarr_format=3, attributes=attributes)


def _write_files_local(root: str, documents: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    written = {}
    for key, data in documents.items():
        fd = _open_new(os.path.join(root, *key.split("/")))
        try:
            sink = _Sink(fd)
            sink.write(data)
        finally:
            os.close(fd)
        written[key] = (sink.size, sink.checksum)
    return written


async def write_metadata(handle: StoreHandle, group: Any) -> None:
    """Write the ``zarr.json`` documents of a store made by `create_group` and `write_plane`."""
    memory = group.store_path.store
    prototype = default_buffer_prototype()
    documents = {}
    async for key in memory.list():
        buf = await memory.get(key, prototype)
        if buf is not None:
            documents[key] = buf.to_bytes()
    store = handle.store
    if handle.local_root is None:
        for key, data in documents.items():
            await store.set(key, prototype.buffer.from_bytes(data))
        return
    written = _write_files_local(handle.local_root, documents)  # a few small files: written in place
    if store.written is not None:
        store.written.update(written)


def _group_attributes(data: bytes | None, handle: StoreHandle) -> dict[str, Any]:
    from zarr.core.group import GroupMetadata

    if data is None:
        raise FileNotFoundError(f"no zarr group at {handle.where()}")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
            raise ValueError("not the metadata of a zarr v3 group")
        return dict(GroupMetadata.from_dict(doc).attributes)
    except Exception as err:  # json, zarr-python's validation errors
        raise ChecksumError(f"cannot read the metadata {handle.where('zarr.json')}: {err}") from err


async def read_group_attributes(handle: StoreHandle) -> dict[str, Any]:
    """The attributes of the root group (one request for ``zarr.json``; no probing, no consolidated metadata)."""
    buf = await handle.store.get("zarr.json", default_buffer_prototype())
    return _group_attributes(None if buf is None else buf.to_bytes(), handle)


def read_group_attributes_local(handle: StoreHandle) -> dict[str, Any]:
    """`read_group_attributes` of a local store, in the calling thread (no round trip to zarr's event loop)."""
    assert handle.local_root is not None
    return _group_attributes(_read_small_local(handle, "zarr.json"), handle)
