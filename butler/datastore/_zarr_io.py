"""Zarr v3 exposure stores: stores, array metadata, and reads and writes of array regions.

zarr-python defines the format here: it lays out and parses every ``zarr.json``
(`ArrayV3Metadata`, `GroupMetadata`) and is the reader of last resort. The
chunks of arrays with a plain layout (regular grid, ``/`` keys, chunks encoded as
``bytes`` little-endian, at most one ``blosc`` or ``zstd`` compressor, then
``crc32c``; optionally inside ``sharding_indexed`` shards whose index is
``bytes`` + ``crc32c``) are read and written by `butler.datastore._zarr_chunks`
instead, in worker threads: zarr-python 3 runs every codec on its one
event-loop thread (~0.3x the speed of ``numpy.load``). The bytes are the same
either way: tests check that zarr-python reads what this package writes and the
other way round.

The planes of an exposure are written as one shard file per plane (``image/c/0/0``)
holding full-width row strips of ~1 MiB (`plane_layout`); `_zarr_chunks` describes
the files and how their chunks are checked. Local stores are read from the
caller's thread (`read_regions_local`), not through zarr's event loop.
docs/composites.md has the measurements behind these choices.

Every chunk read is verified (`_zarr_chunks` raises `ChecksumError` naming the
file and the chunk). Arrays with other codecs are read through zarr-python,
whose checksum failures are reported the same way, naming the array. The
metadata documents (every ``zarr.json``) have no checksum of their own: a handle
opened with the store's verified `Manifest` checks each one it reads against it.

Local paths and ``file://`` URLs are read and written with plain file calls;
every other fsspec URL (``memory://``, ``http(s)://``, ``s3://``...) goes through
zarr's `FsspecStore` with the same chunk code; shards are read with byte-range
requests (a server that ignores ranges still works: the whole file arrives and
the range is cut from it). `io_stats` counts the requests and bytes (tests,
benchmarks).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import xxhash
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from butler.errors import ChecksumError

from ._directory_io import Manifest
from ._file_io import CHECKSUM_ALGORITHM
from ._zarr_chunks import (
    CRC32C_RESIDUE,
    LocalReads,
    PlaneInfo,
    crc32c,
    crc32c_bytes,
    gather_all,
    read_remote,
    write_array,
    write_local_files,
)

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
    "write_unlisted",
]

# The checksum helpers under their former names here (tests check them through this module).
_crc32c = crc32c
_crc = crc32c_bytes
_CRC32C_RESIDUE = CRC32C_RESIDUE
_T = TypeVar("_T")

CHUNK_BYTES = 1 << 20
"""Target size of an uncompressed chunk: a 4096-pixel float32 row strip of 64 rows (fits the L2 cache)."""
SHARD_BYTES = 64 << 20
"""Largest uncompressed shard: a 4096 x 4096 float32 plane is one file."""


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
            # numpy declares ndarray.__buffer__ only for Python >= 3.12 (PEP 688); arrays are buffers on 3.11 too.
            digest = xxhash.xxh3_128_hexdigest(data)  # type: ignore[arg-type]
            self.written[key] = (data.nbytes, f"{CHECKSUM_ALGORITHM}:{digest}")

    async def set_checked(self, key: str, value: Buffer, size: int, checksum: str) -> None:
        """`set` with the checksum already computed (in the encoding thread)."""
        await self._store.set(key, value)
        if self.written is not None:
            self.written[key] = (size, checksum)

    async def set_unlisted(self, key: str, value: Buffer) -> None:
        """`set` of a file that is not part of the manifest (the manifest file itself)."""
        await self._store.set(key, value)


@dataclass(frozen=True, slots=True)
class StoreHandle:
    """An open store and how to name its files in messages.

    With a ``manifest`` (what the datastore verified against the file record), every
    metadata document read through the handle is checked against it (`check`).
    """

    store: _CountingStore
    location: str
    local_root: str | None
    manifest: Manifest | None = None

    def where(self, key: str = "") -> str:
        """Path or URL of ``key`` (a file of the store), for error messages."""
        if not key:
            return self.location
        if self.local_root is not None:
            return os.path.join(self.local_root, *key.split("/"))
        return f"{self.location.rstrip('/')}/{key}"

    def check(self, key: str, data: bytes) -> None:
        """Raise `ChecksumError` if the metadata file ``key`` is not what the manifest recorded."""
        if self.manifest is not None:
            self.manifest.check(key, data, self.where(key))


def _local_path(location: str) -> str | None:
    if "://" not in location:
        return os.path.abspath(location)
    if location.startswith("file://"):
        return location[len("file://"):]
    return None


def open_store(location: str, *, read_only: bool = True, storage_options: dict[str, Any] | None = None,
               written: dict[str, tuple[int, str]] | None = None, manifest: Manifest | None = None) -> StoreHandle:
    """Open the store at a local path or fsspec URL (zarr `LocalStore` / `FsspecStore`)."""
    root = _local_path(location)
    if root is not None:
        if read_only and not os.path.isdir(root):
            raise FileNotFoundError(f"no zarr store at {root}")
        base: Store = LocalStore(root, read_only=read_only)
    else:
        base = FsspecStore.from_url(location, storage_options=storage_options, read_only=read_only)
    return StoreHandle(_CountingStore(base, written), location, root, manifest)


def run(coro: Coroutine[Any, Any, _T]) -> _T:
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


def _plain_codecs(codecs: Sequence[Any]) -> Literal["blosc", "zstd", False] | None:
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




def _plane_info_from_metadata(name: str, meta: Any) -> PlaneInfo:
    """The `PlaneInfo` of an array from zarr-python's parsed metadata (`ArrayV3Metadata`)."""
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
    return PlaneInfo(name, tuple(meta.shape), np.dtype(dtype).str, chunks, codec or None, fast, shards, at_end)


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
    handle.check(key, data)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise ValueError("not the metadata of a zarr v3 array")
        return _plane_info_from_metadata(name, ArrayV3Metadata.from_dict(doc))
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
def read_regions_local(handle: StoreHandle, requests: Sequence[tuple[PlaneInfo, tuple[slice, ...]]]
                       ) -> list[np.ndarray]:
    """Read ``array[region]`` of each ``(info, region)`` of a local store, checking every chunk.

    Runs in the calling thread, which hands batches of chunks to the worker
    threads (all planes' at once) unless the whole read is one chunk or a few
    hundred KiB (`LocalReads`): no round trip through zarr's event loop.
    """
    outs: list[np.ndarray] = []
    reads = LocalReads(handle.where, _count if _active_stats else None)
    for info, region in requests:
        if not info.fast:
            outs.append(run(_read_region_zarr(handle, info, region)))
            continue
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=info.numpy_dtype)
        outs.append(out)
        reads.add(info, region, out)
    reads.run()
    return outs


async def read_region(handle: StoreHandle, info: PlaneInfo, region: tuple[slice, ...]) -> np.ndarray:
    """Read ``array[region]`` (slices with explicit start/stop), verifying every chunk it touches."""
    if handle.local_root is not None and info.fast:
        return read_regions_local(handle, [(info, region)])[0]  # blocks this loop while the workers read
    if not info.fast:
        return await _read_region_zarr(handle, info, region)
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=info.numpy_dtype)
    await read_remote(handle.store, handle.where, info, region, out)
    return out


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
        info = _plane_info_from_metadata(name, array.metadata)
        assert info.fast, f"array {name} was created with codecs this module cannot write: {array.metadata.codecs}"
        document = await scratch.store_path.store.get(f"{name}/zarr.json", default_buffer_prototype())
        assert document is not None, f"zarr wrote no {name}/zarr.json"  # create_array just wrote it
        cached = (info, document.to_bytes())
        if len(_METADATA) > 256:
            _METADATA.clear()
        _METADATA[key] = cached
    return cached


async def write_plane(handle: StoreHandle, group: Any, name: str, data: np.ndarray, chunks: tuple[int, ...],
                      compressor: Compressor, shards: tuple[int, ...] | None = None) -> None:
    """Create array ``name`` in ``group`` (metadata by zarr) and write every chunk (by `_zarr_chunks`).

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
    root = handle.local_root
    store = handle.store
    prototype = default_buffer_prototype()

    async def store_pieces(key: str, size: int, checksum: str, pieces: list[bytes]) -> None:
        if root is None:
            await store.set_checked(key, prototype.buffer.from_bytes(b"".join(pieces)), size, checksum)
        elif store.written is not None:
            store.written[key] = (size, checksum)

    await write_array(data, info, compressor.numcodecs_codec(), root, store_pieces)


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
    written = write_local_files(handle.local_root, documents)  # a few small files: written in place
    if store.written is not None:
        store.written.update(written)


async def write_unlisted(handle: StoreHandle, key: str, data: bytes) -> None:
    """Write a file the manifest does not list (the manifest file itself)."""
    if handle.local_root is not None:
        write_local_files(handle.local_root, {key: data})
    else:
        await handle.store.set_unlisted(key, default_buffer_prototype().buffer.from_bytes(data))


def _group_attributes(data: bytes | None, handle: StoreHandle) -> dict[str, Any]:
    from zarr.core.group import GroupMetadata

    if data is None:
        raise FileNotFoundError(f"no zarr group at {handle.where()}")
    handle.check("zarr.json", data)
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
