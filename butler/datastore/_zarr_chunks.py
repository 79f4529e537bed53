"""The bytes of zarr v3 chunks in their files: direct reads and writes, a crc32c per chunk, shard indexes.

`butler.datastore._zarr_io` decides which arrays this module handles (the plain
layout: regular grid, ``/`` keys, chunks encoded as ``bytes`` little-endian, at
most one ``blosc`` or ``zstd`` compressor, then ``crc32c``; optionally inside
``sharding_indexed`` shards whose index is ``bytes`` + ``crc32c``) and describes
each one with a `PlaneInfo`; this module moves the bytes of their chunks, in
worker threads (zarr-python 3 runs every codec on its one event-loop thread).
The bytes are the ones zarr-python reads and writes.

A shard file holds its chunks one after the other, each followed by its
crc32c, then the shard index (offset and size of every chunk, ``<u8``, absent
chunks as ``2**64 - 1``) and its crc32c. A local shard is written with one
``writev`` per chunk straight from the caller's array and read with one
``preadv`` per chunk straight into the output array (no intermediate copies);
the crc32c of a chunk is computed while it is in the CPU cache, and so is the
xxh3 of the whole file recorded for the store's manifest. Remote shards are
read with byte-range requests: the index, then runs of adjacent chunks.

Every chunk read is verified: a chunk or shard index whose crc32c does not
match, that is truncated, whose size after decompression is wrong, or that is
missing (every chunk is written, so a missing one is damage, not fill) raises
`ChecksumError` naming the file (and the chunk inside a shard).

Interface: `LocalReads` (local files, several arrays at once) and `read_remote`
(any zarr store) read; `write_array` writes every chunk of an array and
`write_local_files` writes small files with the same checksums; `gather_all`
waits for work handed to the worker threads.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash
from crc32c import crc32c as _crc32c_value
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from butler.errors import ChecksumError

from ._file_io import CHECKSUM_ALGORITHM

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

__all__ = [
    "CRC32C_RESIDUE",
    "LocalReads",
    "PlaneInfo",
    "crc32c",
    "crc32c_bytes",
    "gather_all",
    "read_remote",
    "write_array",
    "write_local_files",
]

CRC32C_RESIDUE = 0x48674BC7
"""crc32c of any message followed by its own little-endian crc32c (so one pass checks a chunk)."""
_NO_CHUNK = 2**64 - 1
"""Offset and size of an absent chunk in a shard index."""
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


# -- checksums and codecs ---------------------------------------------------------------------
def crc32c(data: Any, value: int = 0) -> int:
    """The crc32c of a buffer (continuing from ``value``), with the ``crc32c`` package.

    It takes any buffer (memoryviews included) and releases the GIL while it runs, so the planes
    of an exposure are checksummed in parallel by the I/O threads; ``google_crc32c`` (zarr's own
    dependency, the tests' independent reference) holds the GIL for anything but ``bytes`` of
    1 MiB or more, which serialised a put's checksums (a 3-plane 4096^2 put: 4.8 -> 5.9 GB/s).
    """
    return _crc32c_value(data, value)


def crc32c_bytes(data: Any) -> bytes:
    """The crc32c of a buffer as the 4 little-endian bytes that follow it in a file."""
    return struct.pack("<I", crc32c(data))


_DECODERS: dict[str, Any] = {}


def _decoder(name: str) -> Any:
    codec = _DECODERS.get(name)
    if codec is None:
        from numcodecs import Blosc, Zstd

        codec = _DECODERS[name] = Blosc() if name == "blosc" else Zstd()
    return codec


# -- layout -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlaneInfo:
    """What reading an array needs: shape, dtype, chunk (and shard) shape and how chunks are encoded.

    Small and picklable: lazy (dask) reads carry it to workers, which then read
    chunks without reading the array metadata again. Made from zarr-python's
    metadata by `butler.datastore._zarr_io`.
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
    if len(data) < 4 or crc32c(data) != CRC32C_RESIDUE:
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
        # numpy declares ndarray.__buffer__ only for Python >= 3.12 (PEP 688); arrays are buffers on 3.11 too.
        got = os.preadv(fd, [dst, tail], job.offset)  # type: ignore[list-item]
        if got != size or crc32c(bytes(tail), crc32c(dst)) != CRC32C_RESIDUE:
            raise ChecksumError(
                f"checksum mismatch in {job.where} ({got} of {size} bytes read): the chunk is corrupted or truncated"
            )
        return
    buf = _scratch(size)
    got = os.preadv(fd, [buf], job.offset) if size else 0  # type: ignore[list-item]  # as above
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
    if len(data) != info.index_nbytes or crc32c(data) != CRC32C_RESIDUE:
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


class LocalReads:
    """Reads of chunks from the files of a local store, gathered over arrays (`add`), then run at once (`run`).

    ``where`` maps a key to its file path. ``count(key, nbytes)``, if given, is
    called for every read: each shard index as `add` reads it, each chunk (or
    run of chunks) after `run`.
    """

    __slots__ = ("_calls", "_count", "_counted", "_total", "_where")

    def __init__(self, where: Callable[[str], str], count: Callable[[str, int], None] | None = None) -> None:
        self._where = where
        self._count = count
        self._calls: list[tuple[Any, ...]] = []
        self._counted: list[tuple[str | None, PlaneInfo, list[_Job]]] = []
        self._total = 0

    def add(self, info: PlaneInfo, region: tuple[slice, ...], out: np.ndarray) -> None:
        """Plan ``out[...] = array[region]`` (``info.fast``); shard indexes are read and checked now."""
        if out.size == 0:
            return
        jobs = _jobs(info, region)
        self._total += len(jobs) * info.chunk_nbytes
        if not info.shards:
            for job in jobs:
                job.where = self._where(info.key(job.index))
            groups: list[tuple[str | None, list[_Job]]] = [(None, jobs)]
        else:
            groups = []
            for shard, shard_jobs in _by_shard(info, jobs).items():
                shard_key = info.key(shard)
                index, _ = _load_index_local(self._where(shard_key), info)
                if self._count is not None:
                    self._count(shard_key, info.index_nbytes)
                _locate(shard_jobs, info, index, self._where(shard_key))
                groups.append((shard_key, shard_jobs))
        for key, group in groups:
            for batch in _batches(group, info):
                if key is None:
                    self._calls.append((_read_local_files, info, batch, out))
                else:
                    self._calls.append((_read_local_shard, self._where(key), info, batch, out))
                self._counted.append((key, info, batch))

    def run(self) -> None:
        """Read (and check) every chunk planned: in the worker threads, unless it is one call or at most
        `_INLINE_BYTES` (then in the calling thread: not worth the hop)."""
        calls = self._calls
        if len(calls) <= 1 or self._total <= _INLINE_BYTES:
            sizes = [fn(*args) for fn, *args in calls]
        else:
            futures = [_pool().submit(*call) for call in calls]
            wait(futures)  # all of them, before raising the first failure (they write into the outputs)
            sizes = [f.result() for f in futures]
        if self._count is not None:
            for (key, info, batch), batch_sizes in zip(self._counted, sizes, strict=True):
                for job, size in zip(batch, batch_sizes, strict=True):
                    self._count(key or info.key(job.index), size)


async def read_remote(store: Store, where: Callable[[str], str], info: PlaneInfo, region: tuple[slice, ...],
                      out: np.ndarray) -> None:
    """``out[...] = array[region]`` (``info.fast``) from any zarr store, checking every chunk it touches.

    One request per chunk file, or per shard: its index (suffix or prefix
    range), then one range per run of adjacent chunks. ``where`` maps a key to
    its path or URL (messages).
    """
    if out.size == 0:
        return
    jobs = _jobs(info, region)
    if not info.shards:
        semaphore = asyncio.Semaphore(_CONCURRENCY)
        for job in jobs:
            job.where = where(info.key(job.index))
        await gather_all([_read_remote_file(store, info, job, out, semaphore) for job in jobs])
        return
    await gather_all([_read_shard(store, where, info, shard, shard_jobs, out)
                      for shard, shard_jobs in _by_shard(info, jobs).items()])


async def _read_shard(store: Store, where_of: Callable[[str], str], info: PlaneInfo, shard: tuple[int, ...],
                      jobs: list[_Job], out: np.ndarray) -> None:
    """Remote shard: its index with a suffix (or prefix) range request, then runs of adjacent chunks."""
    key = info.key(shard)
    where = where_of(key)
    n = info.index_nbytes
    request = SuffixByteRequest(n) if info.index_at_end else RangeByteRequest(0, n)
    data = _cut(await store.get(key, default_buffer_prototype(), request), request, where)
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
            buf = await store.get(key, default_buffer_prototype(), request)
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


async def _read_remote_file(store: Store, info: PlaneInfo, job: _Job, out: np.ndarray,
                            semaphore: asyncio.Semaphore) -> None:
    async with semaphore:
        buf = await store.get(info.key(job.index), default_buffer_prototype())
    if buf is None:
        raise ChecksumError(f"{job.where} is missing (every chunk is written, so the store is damaged)")
    data = buf.to_bytes()
    if len(data) >= _THREAD_MIN:
        await _in_pool(_place, data, info, job, out)
    else:
        _place(data, info, job, out)


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
            pending = crc32c_bytes(block)
            size = block.nbytes + 4
        else:
            payload = _encode(block, info.chunks, codec)
            sink.write(pending, payload, crc32c_bytes(payload))
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
        sink.write(raw, crc32c_bytes(raw))
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


async def write_array(data: np.ndarray, info: PlaneInfo, codec: Any, root: str | None,
                      save: Callable[[str, int, str, list[bytes]], Awaitable[None]]) -> None:
    """Write every chunk of ``data`` (C-contiguous, little-endian, described by ``info``) in worker threads.

    With ``info.shards``, each shard is one file (chunks, then the index);
    without, each chunk is one file. Every chunk inside the array is written
    (also empty ones), so a missing chunk is damage. ``codec`` is the numcodecs
    compressor (or None). Files are new files under ``root`` for a local store;
    for each file, ``save(key, size, checksum, pieces)`` is then awaited, with
    its bytes in ``pieces`` when ``root`` is None (to be stored) and no pieces
    otherwise (already written).
    """
    grid_of = info.shards or info.chunks
    grid = [range(-(-n // c)) for n, c in zip(data.shape, grid_of, strict=True)]
    if info.shards:
        async def one(shard: tuple[int, ...]) -> None:
            key = info.key(shard)
            path = None if root is None else os.path.join(root, *key.split("/"))
            size, checksum, pieces = await _in_pool(_write_shard, path, data, info, shard, codec)
            await save(key, size, checksum, pieces)

        await gather_all([one(shard) for shard in itertools.product(*grid)])
        return
    indices = list(itertools.product(*grid))
    per = max(1, min(_TASK_BYTES // max(1, info.chunk_nbytes), -(-len(indices) // _workers())))

    async def batch(part: list[tuple[int, ...]]) -> None:
        for key, size, checksum, pieces in await _in_pool(_write_files, root, data, info, part, codec):
            await save(key, size, checksum, pieces)

    await gather_all([batch(indices[i:i + per]) for i in range(0, len(indices), per)])


def write_local_files(root: str, documents: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """Write each ``{key: bytes}`` as a new file under ``root``, in this thread -> ``{key: (size, checksum)}``."""
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
