"""Composite-dataset benchmarks (issue 5): zarr exposures through the Butler.

One ``calexp`` of three 4096 x 4096 planes (float32 image and variance, int32 mask; 2048 x 2048
with ``--quick``) in a SQLite repository on local disk. The image is a sky of 1000 counts with
Gaussian noise and a few hundred stars, the variance follows it, the mask flags ~1% of pixels:
noise-dominated like real exposures, so compression ratios are realistic rather than flattering.

* ``composites.cutout_bytes``: bytes read for 256 x 256 cutouts of the image (counted by the
  store wrapper of `butler.datastore._zarr_io.io_stats`, metadata included) divided by the size
  of the chunk files the cutout intersects.
* ``composites.cutout_speedup``: time of ``numpy.load`` of the whole image plane from ``.npy``
  divided by the time of ``Butler.get(component="image", parameters={"bbox": ...})``.
* ``composites.wcs_component``: ``Butler.get(component="wcs")`` (registry lookup included).
* ``composites.read_throughput`` / ``write_throughput``: ``Butler.get``/``put`` of the whole
  exposure against ``numpy.load``/``numpy.save`` of the same three planes (page cache, no
  fsync on either side); the value is the ratio of the rates.
* ``composites.compressors``: informational; size ratio and read/write rates of each candidate
  compressor (and of zarr-python's own sharded and unsharded paths) for the image plane, which
  is how the formatter's compressors were chosen.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ._runner import Context, Result, benchmark, measure, percentile

RUN = "bench/composites"
DATA_ID = {"instrument": "SimCam", "visit": 1, "detector": 0}
CUTOUT = 256


def _exposure(size: int) -> Any:
    from astropy.wcs import WCS

    from butler.exposure import Exposure

    rng = np.random.default_rng(5)
    image = rng.normal(1000.0, 30.0, (size, size)).astype(np.float32)
    ys, xs = rng.integers(0, size, (2, size // 8))
    image[ys, xs] += rng.uniform(1e3, 1e5, ys.size).astype(np.float32)
    variance = (image + rng.normal(0, 1, image.shape)).astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    mask[rng.random(image.shape) < 0.01] = 1 << 3
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cd = [[-5.6e-5, 0.0], [0.0, 5.6e-5]]
    psf = np.outer(np.hanning(25), np.hanning(25))
    return Exposure(image, mask, variance, wcs=wcs, psf=psf / psf.sum(), photo_calib=0.57,
                    metadata={"EXPTIME": 30.0, "FILTER": "r", "AIRMASS": 1.2})


class _Fixture:
    def __init__(self, ctx: Context) -> None:
        from butler import Butler, DatasetType
        from butler.instrument import SimCam

        from ._fixtures import visit_record

        self.size = ctx.size(4096, 2048)
        self.root = os.path.join(ctx.tmpdir, "composites-repo")
        Butler.create(self.root)
        butler = Butler(self.root, run=RUN)
        butler.register_instrument(SimCam())
        butler.insert_dimension_records("visit", [visit_record(v) for v in range(1, 40)])
        butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
        self.exposure = _exposure(self.size)
        self.ref = butler.put(self.exposure, "calexp", DATA_ID)
        self.butler = Butler(self.root, collections=RUN)
        registry = self.butler.registry
        with registry.db.transaction() as conn:
            self.path = os.path.join(self.root, registry.datasets.files_of(conn, [self.ref.id])[self.ref.id][0].path)
        self.npy_dir = ctx.scratch("composites-npy")
        self.npy = {}
        for name in ("image", "mask", "variance"):
            self.npy[name] = os.path.join(self.npy_dir, f"{name}.npy")
            np.save(self.npy[name], getattr(self.exposure, name))
        rng = np.random.default_rng(7)
        self.boxes = [(int(x), int(y)) for x, y in rng.integers(0, self.size - CUTOUT, (64, 2))]


def _fixture(ctx: Context) -> _Fixture:
    return ctx.fixture("composites", _Fixture)


def _box(x: int, y: int) -> Any:
    from butler.exposure import Box

    return Box(x0=x, y0=y, width=CUTOUT, height=CUTOUT)


@benchmark("composites.cutout_bytes", unit="x", target=2.0, better="lower",
           description="bytes read by a 256x256 cutout of one 4096^2 plane / bytes of the chunks it intersects")
def bench_cutout_bytes(ctx: Context) -> Result:
    from butler.datastore._zarr_io import io_stats

    fx = _fixture(ctx)
    chunk = 512
    ratios, read = [], []
    for x, y in fx.boxes:
        with io_stats() as stats:
            fx.butler.get("calexp", DATA_ID, component="image", parameters={"bbox": _box(x, y)})
        chunk_bytes = sum(
            os.path.getsize(os.path.join(fx.path, "image", "c", str(i), str(j)))
            for i in range(y // chunk, (y + CUTOUT - 1) // chunk + 1)
            for j in range(x // chunk, (x + CUTOUT - 1) // chunk + 1)
        )
        ratios.append(stats.bytes_read / chunk_bytes)
        read.append(stats.bytes_read)
    return Result(value=percentile(ratios, 50), p90=percentile(ratios, 90), n=len(ratios),
                  notes=f"median {percentile(read, 50) / 2**20:.2f} MiB read per cutout "
                        f"(raw cutout {CUTOUT * CUTOUT * 4 / 2**20:.2f} MiB; chunks 512x512, compressed)",
                  extra={"bytes_read_median": percentile(read, 50), "ratio_max": max(ratios)})


@benchmark("composites.cutout_speedup", unit="x", target=5.0, better="higher",
           description="numpy.load of the whole image plane (.npy) / Butler.get of a 256x256 bbox of it")
def bench_cutout_speedup(ctx: Context) -> Result:
    fx = _fixture(ctx)
    n = ctx.size(60, 20)
    boxes = fx.boxes

    def cut(i: int) -> None:
        fx.butler.get("calexp", DATA_ID, component="image", parameters={"bbox": _box(*boxes[i % len(boxes)])})

    samples = measure(cut, n, warmup=5)
    base = measure(lambda i: np.load(fx.npy["image"]), ctx.size(20, 8), warmup=2)
    cut_ms, npy_ms = percentile(samples, 50) / 1e6, percentile(base, 50) / 1e6
    return Result(value=npy_ms / cut_ms, p90=percentile(base, 10) / percentile(samples, 90), n=n,
                  baseline=1.0, baseline_label="numpy.load of the plane",
                  notes=f"cutout {cut_ms:.2f} ms (p90 {percentile(samples, 90) / 1e6:.2f}), "
                        f"np.load {npy_ms:.1f} ms", extra={"cutout_ms": cut_ms, "npy_load_ms": npy_ms})


@benchmark("composites.wcs_component", unit="ms", target=3.0,
           description="Butler.get(component='wcs') of a zarr exposure (reads the root zarr.json only)")
def bench_wcs(ctx: Context) -> Result:
    fx = _fixture(ctx)
    samples = measure(lambda i: fx.butler.get("calexp", DATA_ID, component="wcs"), ctx.size(200, 50), warmup=10)
    return Result.from_samples(samples, "ms")


def _rates(fn: Any, nbytes: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(nbytes / (time.perf_counter() - t0))
    return out


@benchmark("composites.read_throughput", unit="x", target=0.7, better="higher",
           description="Butler.get of the whole exposure / numpy.load of its 3 planes (rate ratio)")
def bench_read(ctx: Context) -> Result:
    fx = _fixture(ctx)
    nbytes = sum(getattr(fx.exposure, p).nbytes for p in ("image", "mask", "variance"))
    n = ctx.size(7, 3)
    fx.butler.get("calexp", DATA_ID)
    ours = _rates(lambda: fx.butler.get("calexp", DATA_ID), nbytes, n)
    raw = _rates(lambda: [np.load(p) for p in fx.npy.values()], nbytes, n)
    ratio = percentile(ours, 50) / percentile(raw, 50)
    return Result(value=ratio, p90=percentile(ours, 10) / percentile(raw, 90), n=n,
                  notes=f"butler {percentile(ours, 50) / 1e9:.2f} GB/s, numpy.load {percentile(raw, 50) / 1e9:.2f} GB/s",
                  extra={"butler_GBps": percentile(ours, 50) / 1e9, "numpy_GBps": percentile(raw, 50) / 1e9})


@benchmark("composites.write_throughput", unit="x", target=0.7, better="higher",
           description="Butler.put of the whole exposure (atomic, manifest) / numpy.save of its 3 planes (rate ratio)")
def bench_write(ctx: Context) -> Result:
    fx = _fixture(ctx)
    from butler import Butler

    butler = Butler(fx.root, run=RUN)
    nbytes = sum(getattr(fx.exposure, p).nbytes for p in ("image", "mask", "variance"))
    n = ctx.size(6, 3)
    visits = iter(range(2, 40))
    ours = _rates(lambda: butler.put(fx.exposure, "calexp", DATA_ID | {"visit": next(visits)}), nbytes, n)
    out = ctx.scratch("composites-save")
    raw = _rates(lambda: [np.save(os.path.join(out, f"{p}.npy"), getattr(fx.exposure, p))
                          for p in ("image", "mask", "variance")], nbytes, n)
    ratio = percentile(ours, 50) / percentile(raw, 50)
    return Result(value=ratio, p90=percentile(ours, 10) / percentile(raw, 90), n=n,
                  notes=f"butler {percentile(ours, 50) / 1e9:.2f} GB/s, numpy.save {percentile(raw, 50) / 1e9:.2f} GB/s",
                  extra={"butler_GBps": percentile(ours, 50) / 1e9, "numpy_GBps": percentile(raw, 50) / 1e9})


@benchmark("composites.compressors", unit="x",
           description="informational: size ratio and read/write rates per compressor for the image plane")
def bench_compressors(ctx: Context) -> Result:
    import shutil

    import zarr
    from zarr.codecs import Crc32cCodec

    from butler.datastore import _zarr_io as zio

    fx = _fixture(ctx)
    image = fx.exposure.image
    n = ctx.size(3, 1)
    rows: dict[str, dict[str, float]] = {}
    base = ctx.scratch("composites-compressors")

    def measure_case(name: str, write: Any, read: Any, path: str) -> None:
        w = _rates(lambda: (shutil.rmtree(path, ignore_errors=True), write(path)), image.nbytes, n)
        r = _rates(lambda: read(path), image.nbytes, n)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        rows[name] = {"size_ratio": size / image.nbytes, "write_GBps": percentile(w, 50) / 1e9,
                      "read_GBps": percentile(r, 50) / 1e9}

    for key, compressor in zio.COMPRESSORS.items():
        def write(path: str, compressor: Any = compressor) -> None:
            handle = zio.open_store(path, read_only=False)

            async def go() -> None:
                group = await zio.create_group(handle, {})
                await zio.write_plane(handle, group, "image", image, (512, 512), compressor)

            zio.run(go())

        def read(path: str) -> None:
            handle = zio.open_store(path)

            async def go() -> Any:
                info, array = await zio.open_plane(handle, "image")
                return await zio.read_region(handle, info, (slice(0, image.shape[0]), slice(0, image.shape[1])),
                                             array)

            zio.run(go())

        measure_case(f"butler {key}", write, read, os.path.join(base, key))
    for label, kwargs in {"zarr-python none 512": {}, "zarr-python none shard": {"shards": (4096, 4096)}}.items():
        def zwrite(path: str, kwargs: Any = kwargs) -> None:
            shards = kwargs.get("shards")
            a = zarr.create_array(path, shape=image.shape, dtype=image.dtype, chunks=(512, 512), zarr_format=3,
                                  shards=None if shards is None else tuple(min(s, n) for s, n in zip(shards, image.shape)),
                                  compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
            a[...] = image

        measure_case(label, zwrite, lambda path: zarr.open_array(path, mode="r", zarr_format=3)[...],
                     os.path.join(base, label.replace(" ", "-")))
    lines = [f"{k:24s} size x{v['size_ratio']:.3f}  write {v['write_GBps']:.2f} GB/s  read {v['read_GBps']:.2f} GB/s"
             for k, v in rows.items()]
    chosen = rows["butler lz4"]
    return Result(value=chosen["size_ratio"], n=n, notes="\n".join(lines), extra=rows)
