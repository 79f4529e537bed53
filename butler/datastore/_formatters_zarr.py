"""The ``zarr`` formatter: an `Exposure` as a zarr v3 directory store.

Layout (``<dataset>.zarr/``)::

    zarr.json                 group; attributes["butler"]: layout version, shape, origin,
                              WCS as FITS header cards, photo_calib, metadata (JSON)
    image/ mask/ variance/    2-D arrays, one shard file each (c/0/0): full-width row strips
                              of ~1 MiB (64 rows of a 4096-pixel float32 plane), then the index
    psf/                      the PSF kernel, one chunk (absent when the exposure has none)

Every chunk is ``bytes`` (little-endian) -> [compressor] -> ``crc32c``, so each
chunk carries its own checksum and a partial read verifies exactly what it
reads; the shard index has its own crc32c. Float planes are not compressed by
default and masks use blosc-lz4 (the fastest choice measured by
``benchmarks/bench_composites.py``, see docs/composites.md); the
``compressors`` option of `ZarrExposureFormatter` picks others.

Reads fetch only the documents they need (format fixed to zarr v3, parsed by
zarr-python's metadata classes; no probing, no consolidated metadata), so
``component="wcs"``/``"metadata"``/``"photo_calib"`` cost one request (the root
``zarr.json``, read in the caller's thread for local stores); a plane adds its
own ``zarr.json``, its shard index and then only the chunks its ``bbox``
intersects. ``lazy=True`` returns
dask arrays whose tasks read one chunk each. Paths and fsspec URLs
(``memory://``, ``http://``...) go through the same code
(`butler.datastore._zarr_io`).

The datastore writes a store with `ZarrExposureFormatter.stage_to`: into a
temporary directory next to the final path, renamed into place on commit, with
the size and manifest checksum of its files recorded for ``butler verify``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from butler.errors import ChecksumError, StorageClassError
from butler.exposure import PLANES, Box, Exposure
from butler.exposure._formatting import ExposureFormatterBase, ReadRequest, metadata_to_json
from butler.exposure._wcs import slice_wcs, wcs_from_cards, wcs_to_cards

from . import _zarr_io as zio
from ._directory_io import (
    MANIFEST_NAME,
    Manifest,
    StagedDirectory,
    make_staging_dir,
    manifest_bytes,
    manifest_checksum,
    remove_path,
)

__all__ = ["LAYOUT_VERSION", "ZarrExposureFormatter"]

LAYOUT_VERSION = 1
"""Version of the attribute layout; readers refuse versions they do not know."""
_IN_ROOT = frozenset({"wcs", "photo_calib", "metadata"})
"""Components held in the root group's attributes (read with the root ``zarr.json`` only)."""


class ZarrExposureFormatter(ExposureFormatterBase):
    """`Exposure` <-> zarr v3 directory store with per-chunk crc32c.

    ``compressors`` maps plane names (``image``, ``mask``, ``variance``) to keys
    of `butler.datastore._zarr_io.COMPRESSORS` (``"none"``, ``"lz4"``,
    ``"lz4-noshuffle"``, ``"zstd"``) replacing the defaults of `plane_compressors`
    for the stores this instance writes (reads need no option: the codecs are in
    the store's metadata).
    """

    name: ClassVar[str] = "zarr"
    extension: ClassVar[str] = ".zarr"
    chunk_bytes: ClassVar[int] = zio.CHUNK_BYTES
    """Target size of an uncompressed chunk (see `butler.datastore._zarr_io.plane_layout`)."""
    shard_bytes: ClassVar[int] = zio.SHARD_BYTES
    """Largest uncompressed shard file (a 4096 x 4096 float32 plane is one shard)."""
    plane_compressors: ClassVar[Mapping[str, str]] = {"image": "none", "mask": "lz4-noshuffle", "variance": "none"}
    """Default compressor of each plane: none for float planes (noise does not compress: x0.75 at
    ~2 GB/s of CPU), blosc-lz4 for masks (x0.02 at ~6 GB/s)."""

    __slots__ = ("_compressors",)

    def __init__(self, storage_class: Any = None, *, compressors: Mapping[str, str] | None = None) -> None:
        super().__init__(storage_class)
        merged = dict(self.plane_compressors)
        for plane, key in (compressors or {}).items():
            if plane not in PLANES:
                raise ValueError(f"compressors: unknown plane {plane!r}; planes: {list(PLANES)}")
            if key not in zio.COMPRESSORS:
                raise ValueError(f"compressors: unknown compressor {key!r} for {plane!r}; "
                                 f"known: {sorted(zio.COMPRESSORS)}")
            merged[plane] = key
        self._compressors = merged

    # -- write ------------------------------------------------------------------------------
    def to_bytes(self, obj: Any) -> bytes:
        raise StorageClassError(
            f"formatter {self.name!r} writes directories, not bytes; use stage_to(), write() or write_to()"
        )

    def _attributes(self, exposure: Exposure, where: str) -> dict[str, Any]:
        """Everything but the pixels, validated before anything is written."""
        return {
            "layout": LAYOUT_VERSION,
            "kind": "Exposure",
            "shape": list(exposure.shape),
            "origin": list(exposure.origin),
            "planes": list(PLANES),
            "psf": exposure.psf is not None,
            "photo_calib": exposure.photo_calib,
            "wcs": None if exposure.wcs is None else wcs_to_cards(exposure.wcs, where=where),
            "metadata": json.loads(metadata_to_json(self, exposure.metadata)),
            "manifest": MANIFEST_NAME,  # readers given a manifest-less store know it lost this file
        }

    @staticmethod
    def _arrays(exposure: Exposure) -> dict[str, np.ndarray]:
        # Lazy (dask) planes are computed here, in the caller's thread: computing them on zarr's
        # event loop would deadlock (their chunk reads need that loop).
        arrays = {name: np.asarray(getattr(exposure, name)) for name in PLANES}
        if exposure.psf is not None:
            arrays["psf"] = np.asarray(exposure.psf)
        return arrays

    async def _write_async(self, handle: zio.StoreHandle, arrays: dict[str, np.ndarray],
                           attributes: dict[str, Any]) -> None:
        group = await zio.create_group(handle, {"butler": attributes})
        writes = []
        for name, data in arrays.items():
            if name == "psf":  # small: one chunk, one file
                writes.append(zio.write_plane(handle, group, name, data, data.shape, zio.COMPRESSORS["none"]))
                continue
            chunks, shards = zio.plane_layout(data.shape, data.dtype.itemsize, self.chunk_bytes, self.shard_bytes)
            compressor = zio.COMPRESSORS[self._compressors.get(name, "none")]
            writes.append(zio.write_plane(handle, group, name, data, chunks, compressor, shards=shards))
        await zio.gather_all(writes)
        await zio.write_metadata(handle, group)
        written = handle.store.written
        if written is not None:  # the per-file list, checked by reads (its checksum is the record's)
            await zio.write_unlisted(handle, MANIFEST_NAME, manifest_bytes(written))

    def write_to(self, obj: Any, location: str, *, storage_options: dict[str, Any] | None = None
                 ) -> tuple[int, str]:
        """Write a store at a path or fsspec URL (not atomic); return ``(size, manifest checksum)``."""
        exposure = self._check_exposure(obj)
        attributes = self._attributes(exposure, location)
        written: dict[str, tuple[int, str]] = {}
        handle = zio.open_store(location, read_only=False, storage_options=storage_options, written=written)
        zio.run(self._write_async(handle, self._arrays(exposure), attributes))
        return manifest_checksum(written)

    def stage_to(self, obj: Any, path: str) -> StagedDirectory:
        """Write the store into a temporary directory next to ``path``; see `StagedDirectory`."""
        exposure = self._check_exposure(obj)
        attributes = self._attributes(exposure, path)
        arrays = self._arrays(exposure)
        temp = make_staging_dir(path)
        try:
            written: dict[str, tuple[int, str]] = {}
            handle = zio.open_store(temp, read_only=False, written=written)
            zio.run(self._write_async(handle, arrays, attributes))
            size, checksum = manifest_checksum(written)
        except BaseException:
            remove_path(temp)
            raise
        return StagedDirectory(path, temp, size, checksum)

    def write(self, obj: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[int, str]:
        # docstring inherited
        with self.stage_to(obj, os.fspath(path)) as staged:
            staged.commit(overwrite=overwrite)
        return staged.size, staged.checksum

    # -- read -------------------------------------------------------------------------------
    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        raise StorageClassError(f"formatter {self.name!r} reads directory stores, not bytes; give read() a path or URL")

    def _layout(self, attributes: Mapping[str, Any], handle: zio.StoreHandle) -> dict[str, Any]:
        where = handle.where()
        manifest = handle.manifest
        if manifest is not None and manifest.entries is None and isinstance(attributes.get("butler"), dict):
            name = attributes["butler"].get("manifest")
            if name:  # written with a manifest file, which is gone: nothing to check the metadata against
                raise ChecksumError(f"{handle.where(name)} is missing (the store was written with it)")
        layout = attributes.get("butler")
        if not isinstance(layout, dict) or layout.get("kind") != "Exposure":
            raise StorageClassError(f"{where} is not an exposure store written by the butler (no 'butler' attributes)")
        if layout.get("layout") != LAYOUT_VERSION:
            raise StorageClassError(
                f"{where} has exposure layout version {layout.get('layout')!r}; this butler reads {LAYOUT_VERSION}"
            )
        return layout

    def _bounds(self, path: str, verified: Any = None) -> Box:
        handle = zio.open_store(path, manifest=verified)
        layout = self._layout(zio.read_group_attributes_local(handle), handle)
        return Box.from_shape(tuple(layout["shape"]), tuple(layout["origin"]))

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self.read_location(path, component=component, parameters=parameters, _checked=True)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self.read_location(path, component=component, parameters=parameters, manifest=verified,
                                  _checked=True)

    def read_location(self, location: str, *, component: str | None = None,
                      parameters: Mapping[str, Any] | None = None, storage_options: dict[str, Any] | None = None,
                      manifest: Manifest | None = None, _checked: bool = False) -> Any:
        """Read from a local path or fsspec URL (``memory://``, ``http://``...).

        With ``manifest`` (the store's `Manifest`, verified against its file record by the
        datastore), every metadata document read is checked against it; chunks are checked by
        their crc32c either way.
        """
        checked = (parameters or {}) if _checked else self.check_request(component, parameters)
        request = ReadRequest.parse(component, checked, location)
        handle = zio.open_store(location, storage_options=storage_options, manifest=manifest)
        if handle.local_root is not None:
            # Local stores are read from this thread (chunks by the worker threads): no round trip
            # through zarr's event loop, so a component held in the root metadata is one file read.
            result = self._read_local(handle, request)
        else:
            result = zio.run(self._read_async(handle, request))
        if not request.lazy or not isinstance(result, _LazyResult):
            return result
        return result.build(location, storage_options)

    def _read_local(self, handle: zio.StoreHandle, request: ReadRequest) -> Any:
        layout = self._layout(zio.read_group_attributes_local(handle), handle)
        if request.component in _IN_ROOT:
            return self._from_root(handle, request, layout)
        if request.component == "psf":
            return self._psf_local(handle, layout)
        names = (request.component,) if request.component is not None else PLANES
        infos = [zio.open_plane_local(handle, name) for name in names]
        planes = psf = None
        _, rows, columns = self._region(handle, request, layout)
        if not request.lazy:
            planes = zio.read_regions_local(handle, [(info, (rows, columns)) for info in infos])
        if request.component is None:
            psf = self._psf_local(handle, layout)
        return self._assemble(handle, request, layout, infos, planes, psf)

    async def _read_async(self, handle: zio.StoreHandle, request: ReadRequest) -> Any:
        layout = self._layout(await zio.read_group_attributes(handle), handle)
        if request.component in _IN_ROOT:
            return self._from_root(handle, request, layout)
        if request.component == "psf":
            return await self._psf(handle, layout)
        names = (request.component,) if request.component is not None else PLANES
        infos = await zio.gather_all([zio.open_plane(handle, name) for name in names])
        planes = psf = None
        _, rows, columns = self._region(handle, request, layout)
        if not request.lazy:
            planes = await zio.gather_all([zio.read_region(handle, info, (rows, columns)) for info in infos])
        if request.component is None:
            psf = await self._psf(handle, layout)
        return self._assemble(handle, request, layout, infos, planes, psf)

    @staticmethod
    def _region(handle: zio.StoreHandle, request: ReadRequest, layout: Mapping[str, Any]) -> tuple[Box, slice, slice]:
        bounds = Box.from_shape(tuple(layout["shape"]), tuple(layout["origin"]))
        return request.region(bounds, handle.where())

    def _from_root(self, handle: zio.StoreHandle, request: ReadRequest, layout: Mapping[str, Any]) -> Any:
        """A component held in the root attributes."""
        _, rows, columns = self._region(handle, request, layout)
        if request.component == "wcs":
            return self._wcs(layout, handle, rows, columns, request.bbox is not None)
        if request.component == "photo_calib":
            return layout["photo_calib"]
        return dict(layout["metadata"])

    def _assemble(self, handle: zio.StoreHandle, request: ReadRequest, layout: Mapping[str, Any],
                  infos: list[zio.PlaneInfo], planes: list[np.ndarray] | None, psf: np.ndarray | None) -> Any:
        """The plane (component) or `Exposure` read, or a `_LazyResult` to build dask arrays from."""
        box, rows, columns = self._region(handle, request, layout)
        if request.component is not None:
            return _LazyResult({info.name: info for info in infos}, rows, columns) if planes is None else planes[0]
        fields = {"wcs": self._wcs(layout, handle, rows, columns, request.bbox is not None), "psf": psf,
                  "photo_calib": layout["photo_calib"], "metadata": layout["metadata"], "origin": (box.x0, box.y0)}
        if planes is None:
            lazy = _LazyResult({info.name: info for info in infos}, rows, columns)
            lazy.exposure_fields = fields
            return lazy
        return Exposure(*planes, **fields)

    def _wcs(self, layout: Mapping[str, Any], handle: zio.StoreHandle, rows: slice, columns: slice,
             cut: bool) -> Any:
        cards = layout.get("wcs")
        if cards is None:
            return None
        wcs = wcs_from_cards(cards, where=handle.where("zarr.json"))
        return slice_wcs(wcs, rows, columns) if cut else wcs

    async def _psf(self, handle: zio.StoreHandle, layout: Mapping[str, Any]) -> np.ndarray | None:
        if not layout.get("psf"):
            return None
        info = await zio.open_plane(handle, "psf")
        return await zio.read_region(handle, info, tuple(slice(0, n) for n in info.shape))

    @staticmethod
    def _psf_local(handle: zio.StoreHandle, layout: Mapping[str, Any]) -> np.ndarray | None:
        if not layout.get("psf"):
            return None
        info = zio.open_plane_local(handle, "psf")
        return zio.read_regions_local(handle, [(info, tuple(slice(0, n) for n in info.shape))])[0]


class _LazyResult:
    """Plane metadata read on zarr's loop; dask arrays are built back in the caller's thread."""

    def __init__(self, infos: dict[str, zio.PlaneInfo], rows: slice, columns: slice) -> None:
        self.infos = infos
        self.rows = rows
        self.columns = columns
        self.exposure_fields: dict[str, Any] | None = None

    def build(self, location: str, storage_options: dict[str, Any] | None) -> Any:
        planes = [_dask_plane(location, info, storage_options)[self.rows, self.columns]
                  for info in self.infos.values()]
        if self.exposure_fields is None:
            return planes[0]
        return Exposure(*planes, **self.exposure_fields)


class ZarrPlaneReader:
    """Array-like over one stored plane: ``reader[rows, columns]`` reads (and checks) those chunks.

    Picklable (a location and a `PlaneInfo`), so dask workers read chunks
    themselves without reading any metadata again.
    """

    __slots__ = ("info", "location", "storage_options")

    def __init__(self, location: str, info: zio.PlaneInfo, storage_options: dict[str, Any] | None = None) -> None:
        self.location = location
        self.info = info
        self.storage_options = storage_options

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def dtype(self) -> np.dtype:
        return self.info.numpy_dtype

    @property
    def ndim(self) -> int:
        return len(self.info.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        region = []
        for k, n in zip(key, self.info.shape, strict=True):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise TypeError(f"ZarrPlaneReader takes contiguous slices, not {key!r}")
            start, stop, _ = k.indices(n)
            region.append(slice(start, max(start, stop)))
        handle = zio.open_store(self.location, storage_options=self.storage_options)
        if handle.local_root is not None:
            return zio.read_regions_local(handle, [(self.info, tuple(region))])[0]
        return zio.run(zio.read_region(handle, self.info, tuple(region)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (ZarrPlaneReader, (self.location, self.info, self.storage_options))


def _dask_plane(location: str, info: zio.PlaneInfo, storage_options: dict[str, Any] | None) -> Any:
    import dask.array as da
    import xxhash

    token = xxhash.xxh3_64_hexdigest(repr((location, info)).encode())
    reader = ZarrPlaneReader(location, info, storage_options)
    return da.from_array(reader, chunks=info.chunks or info.shape, name=f"butler-zarr-{info.name}-{token}",
                         asarray=False, fancy=False, lock=False, meta=np.empty((0,) * len(info.shape), info.dtype))
