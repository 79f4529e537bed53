"""Chunk-level I/O of zarr v3 arrays: checked reads of any region, parallel writes, byte counts.

zarr-python defines the format here: it writes and parses every ``zarr.json`` and
is the reader of last resort. The chunks of the arrays this project writes
(regular grid, ``/`` keys, ``bytes`` little-endian, at most one ``blosc`` or
``zstd`` compressor, then ``crc32c``) are encoded and decoded by this module
instead, because zarr-python 3 runs every codec on its one event-loop thread:
on a 4096 x 4096 float32 plane it reads at ~0.3x and writes at ~0.15x the speed
of ``numpy.load``/``numpy.save``, while fetching through the same zarr store
and decoding in a thread pool reaches ~0.7x / ~0.4x (see docs/composites.md).
The bytes are the same either way (tests check that zarr-python reads what this
module writes and the other way round).

Every chunk read is verified: a chunk whose crc32c does not match, that is
truncated, whose size after decompression is wrong, or that is missing (every
chunk is written, so a missing one is damage, not fill) raises `ChecksumError`
naming the chunk's file. Arrays with other codecs (e.g. sharded stores written
elsewhere) are read through zarr-python, whose checksum failures are reported
the same way, naming the array.

Stores are opened through zarr's own store classes: `LocalStore` for paths and
``file://`` URLs, `FsspecStore` for every other fsspec URL (``memory://``,
``http(s)://``, ``s3://``...), so the same code reads all of them. `io_stats`
counts the requests and bytes that go through them (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np
import xxhash
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
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
    "io_stats",
    "open_plane",
    "open_store",
    "read_group_attributes",
    "read_region",
    "run",
    "write_plane",
]

_CRC32C_RESIDUE = 0x48674BC7
"""crc32c of any message followed by its own little-endian crc32c (so one pass checks a chunk)."""
_THREAD_MIN = 64 << 10
"""Chunks at least this large are decoded/encoded in a worker thread (smaller ones inline)."""
_CONCURRENCY = 16
"""Chunk requests in flight at once per read or write."""


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


def _count(key: str, nbytes: int) -> None:
    with _stats_lock:
        for stats in _active_stats:
            stats.requests += 1
            stats.bytes_read += nbytes
            stats.keys.append(key)


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
@dataclass(frozen=True, slots=True)
class PlaneInfo:
    """What reading an array needs: shape, dtype, chunk shape and how chunks are encoded.

    Small and picklable: lazy (dask) reads carry it to workers, which then read
    chunks without reading the array metadata again.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    codec: str | None
    """``"blosc"``, ``"zstd"`` or ``None`` (no compressor) for chunks this module decodes."""
    fast: bool
    """False for arrays read through zarr-python (other codecs, sharding...)."""

    @classmethod
    def from_array(cls, name: str, array: Any) -> PlaneInfo:
        meta = array.metadata
        codecs = list(meta.codecs)
        middle = codecs[1:-1]
        fast = (
            getattr(meta, "zarr_format", 3) == 3
            and isinstance(meta.chunk_grid, RegularChunkGrid)
            and isinstance(meta.chunk_key_encoding, DefaultChunkKeyEncoding)
            and meta.chunk_key_encoding.separator == "/"
            and not meta.storage_transformers
            and len(codecs) >= 2
            and isinstance(codecs[0], BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == "little")
            and isinstance(codecs[-1], Crc32cCodec)
            and len(middle) <= 1
            and all(isinstance(c, (BloscCodec, ZstdCodec)) for c in middle)
        )
        codec = None
        if middle:
            codec = "blosc" if isinstance(middle[0], BloscCodec) else "zstd"
        chunks = tuple(meta.chunk_grid.chunk_shape) if isinstance(meta.chunk_grid, RegularChunkGrid) else ()
        return cls(name, tuple(array.shape), np.dtype(array.dtype).str, chunks, codec, fast)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def key(self, index: tuple[int, ...]) -> str:
        return f"{self.name}/c/" + "/".join(str(i) for i in index)


async def open_plane(handle: StoreHandle, name: str) -> tuple[PlaneInfo, Any]:
    """Read the metadata of array ``name`` (one request) -> (info, zarr AsyncArray)."""
    from zarr.api.asynchronous import open_array

    try:
        array = await open_array(store=handle.store, path=name, mode="r", zarr_format=3)
    except FileNotFoundError:
        raise
    except Exception as err:  # zarr raises its own NodeNotFound/metadata errors
        if type(err).__name__ in ("ArrayNotFoundError", "NodeNotFoundError", "GroupNotFoundError"):
            raise FileNotFoundError(f"array {name!r} is missing from {handle.where()}: {err}") from None
        raise ChecksumError(f"cannot read the metadata of {handle.where(name + '/zarr.json')}: {err}") from err
    return PlaneInfo.from_array(name, array), array


def _chunk_bytes(buf: Buffer) -> Any:
    """The chunk as ``bytes`` when zarr holds it so (crc32c then releases the GIL), else an array."""
    data = buf.as_numpy_array()
    base = data.base
    if isinstance(base, bytes) and len(base) == data.nbytes:
        return base
    return data


def _read_local_chunk(path: str, info: PlaneInfo, out: np.ndarray, out_slices: tuple[slice, ...],
                      chunk_slices: tuple[slice, ...]) -> int:
    """Read, check and place one chunk of a local store in one worker-thread call; return its size."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise ChecksumError(f"chunk {path} is missing (every chunk is written, so the store is damaged)") from None
    _decode_into(data, info, path, out, out_slices, chunk_slices)
    return len(data)


def _decode_into(data: Any, info: PlaneInfo, where: str, out: np.ndarray, out_slices: tuple[slice, ...],
                 chunk_slices: tuple[slice, ...]) -> None:
    if len(data) < 4 or google_crc32c.value(data) != _CRC32C_RESIDUE:
        raise ChecksumError(
            f"checksum mismatch in chunk {where} ({len(data)} bytes): the chunk is corrupted or truncated"
        )
    raw = memoryview(data)[:-4]
    if info.codec is not None:
        try:
            raw = _decoder(info.codec).decode(raw)
        except Exception as err:
            raise ChecksumError(f"cannot decompress chunk {where} (crc32c matched): {err}") from err
    dtype = info.numpy_dtype.newbyteorder("<")
    expected = int(np.prod(info.chunks)) * dtype.itemsize
    if memoryview(raw).nbytes != expected:
        raise ChecksumError(f"chunk {where} decodes to {memoryview(raw).nbytes} bytes, expected {expected}")
    chunk = np.frombuffer(raw, dtype=dtype).reshape(info.chunks)
    out[out_slices] = chunk[chunk_slices]


async def read_region(handle: StoreHandle, info: PlaneInfo, region: tuple[slice, ...], array: Any = None
                      ) -> np.ndarray:
    """Read ``array[region]`` (slices with explicit start/stop), verifying every chunk it touches."""
    if not info.fast:
        return await _read_region_zarr(handle, info, region, array)
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=info.numpy_dtype)
    if out.size == 0:
        return out
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(region, info.chunks, strict=True)]
    semaphore = asyncio.Semaphore(_CONCURRENCY)
    prototype = default_buffer_prototype()

    async def one(index: tuple[int, ...]) -> None:
        out_slices = []
        chunk_slices = []
        for i, s, c in zip(index, region, info.chunks, strict=True):
            lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
            out_slices.append(slice(lo - s.start, hi - s.start))
            chunk_slices.append(slice(lo - i * c, hi - i * c))
        key = info.key(index)
        where = handle.where(key)
        if handle.local_root is not None:
            # Local files: read, check and copy in one worker-thread call (the chunk stays in cache).
            async with semaphore:
                nbytes = await asyncio.to_thread(_read_local_chunk, where, info, out, tuple(out_slices),
                                                 tuple(chunk_slices))
            if _active_stats:
                _count(key, nbytes)
            return
        async with semaphore:
            buf = await handle.store.get(key, prototype)
        if buf is None:
            raise ChecksumError(f"chunk {where} is missing (every chunk is written, so the store is damaged)")
        data = _chunk_bytes(buf)
        args = (data, info, where, out, tuple(out_slices), tuple(chunk_slices))
        if len(data) >= _THREAD_MIN:
            await asyncio.to_thread(_decode_into, *args)
        else:
            _decode_into(*args)

    await _gather([one(index) for index in itertools.product(*ranges)])
    return out


async def _gather(coros: list[Any]) -> None:
    """Run all; on the first failure cancel the rest and raise it (no orphaned tasks)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _read_region_zarr(handle: StoreHandle, info: PlaneInfo, region: tuple[slice, ...], array: Any
                            ) -> np.ndarray:
    if array is None:
        _, array = await open_plane(handle, info.name)
    try:
        return np.asarray(await array.getitem(region))
    except (ValueError, RuntimeError) as err:
        if "checksum" in str(err).lower():
            raise ChecksumError(f"checksum mismatch in a chunk of {handle.where(info.name)}: {err}") from err
        raise


# -- writes -----------------------------------------------------------------------------------
def _encode(block: np.ndarray, chunks: tuple[int, ...], codec: Any) -> tuple[Any, int, str]:
    """Encode one chunk: pad to the chunk shape, compress, append crc32c; -> (buffer, size, checksum)."""
    dtype = block.dtype.newbyteorder("<")
    if codec is None:
        nbytes = int(np.prod(chunks)) * dtype.itemsize
        out = np.empty(nbytes + 4, np.uint8)
        view = out[:nbytes].view(dtype).reshape(chunks)
        if block.shape != chunks:
            view[...] = 0
            view[tuple(slice(0, n) for n in block.shape)] = block
        else:
            view[...] = block
        payload = out[:nbytes]
    else:
        if block.shape != chunks:
            padded = np.zeros(chunks, dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        encoded = np.frombuffer(codec.encode(np.ascontiguousarray(block, dtype=dtype)), np.uint8)
        out = np.empty(encoded.nbytes + 4, np.uint8)
        out[:-4] = encoded
        payload = out[:-4]
    out[-4:] = np.frombuffer(np.uint32(google_crc32c.value(payload)).astype("<u4").tobytes(), np.uint8)
    return out, out.nbytes, f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(out)}"


async def write_plane(handle: StoreHandle, group: Any, name: str, data: np.ndarray, chunks: tuple[int, ...],
                      compressor: Compressor) -> None:
    """Create array ``name`` in ``group`` (metadata by zarr) and write every chunk (by this module)."""
    chunks = tuple(min(c, n) if n else c for c, n in zip(chunks, data.shape, strict=True))
    chunks = tuple(max(c, 1) for c in chunks)
    array = await group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressor.zarr_codecs(data.dtype),
        fill_value=0, write_data=False,
    )
    info = PlaneInfo.from_array(name, array)
    assert info.fast, f"array {name} was created with codecs this module cannot write: {array.metadata.codecs}"
    codec = compressor.numcodecs_codec()
    prototype = default_buffer_prototype()
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    made: set[str] = set()

    def write_local(key: str, block: np.ndarray) -> None:
        # Local stores are written straight to files: the whole store is staged in a temporary
        # directory and renamed into place, so a per-chunk temporary file (LocalStore) is not needed.
        buf, size, checksum = _encode(block, chunks, codec)
        path = handle.where(key)
        directory = os.path.dirname(path)
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        with open(path, "wb") as stream:
            stream.write(memoryview(buf))
        if handle.store.written is not None:
            handle.store.written[key] = (size, checksum)

    async def one(index: tuple[int, ...]) -> None:
        block = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))]
        async with semaphore:
            if handle.local_root is not None:
                await asyncio.to_thread(write_local, info.key(index), block)
                return
            if block.nbytes >= _THREAD_MIN:
                buf, size, checksum = await asyncio.to_thread(_encode, block, chunks, codec)
            else:
                buf, size, checksum = _encode(block, chunks, codec)
            await handle.store.set_checked(info.key(index), prototype.buffer.from_array_like(buf), size, checksum)

    grid = [range(-(-n // c)) for n, c in zip(data.shape, chunks, strict=True)]
    await _gather([one(index) for index in itertools.product(*grid)])


async def create_group(handle: StoreHandle, attributes: dict[str, Any]) -> Any:
    from zarr.api.asynchronous import create_group as zarr_create_group

    return await zarr_create_group(store=handle.store, zarr_format=3, attributes=attributes)


async def read_group_attributes(handle: StoreHandle) -> dict[str, Any]:
    """The attributes of the root group (one request, format fixed to v3, no consolidation probe)."""
    from zarr.api.asynchronous import open_group

    try:
        group = await open_group(store=handle.store, mode="r", zarr_format=3, use_consolidated=False)
    except FileNotFoundError:
        raise
    except Exception as err:
        if type(err).__name__ in ("GroupNotFoundError", "NodeNotFoundError"):
            raise FileNotFoundError(f"no zarr group at {handle.where()}") from None
        raise ChecksumError(f"cannot read the metadata {handle.where('zarr.json')}: {err}") from err
    return dict(group.attrs)

