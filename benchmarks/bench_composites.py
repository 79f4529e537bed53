"""Composite-dataset benchmarks (issue 5): zarr exposures through the Butler.

One ``calexp`` of three 4096 x 4096 planes (float32 image and variance, int32 mask; 2048 x 2048
with ``--quick``) in a SQLite repository on local disk. The image is a sky of 1000 counts with
Gaussian noise and a few hundred stars, the variance follows it, the mask flags ~1% of pixels:
noise-dominated like real exposures, so compression ratios are realistic rather than flattering.

* ``composites.cutout_bytes``: bytes read for 256 x 256 cutouts of the image (counted by the
  store wrapper of `butler.datastore._zarr_io.io_stats`, metadata and shard index included)
  divided by the size of the chunks the cutout intersects (from the shard index).
* ``composites.cutout_speedup``: time of ``numpy.load`` of the whole image plane from ``.npy``
  divided by the time of ``Butler.get(component="image", parameters={"bbox": ...})``.
* ``composites.wcs_component``: ``Butler.get(component="wcs")`` (registry lookup included).
* ``composites.read_throughput`` / ``write_throughput``: ``Butler.get``/``put`` of the whole
  exposure against ``numpy.load``/``numpy.save`` of the same three planes (page cache, no
  fsync on either side; ``numpy.save`` writes new files each time, as ``put`` does, and both
  sides' files are deleted, untimed, after each pair, so that neither is throttled by the
  writeback of files written before). The two are timed in alternation, one pair after the other, and the value is the
  median of the per-pair ratios of the rates, so load from other processes on the machine hits
  both sides of a pair alike.
* ``composites.layouts``: informational; for the image plane (and the mask), the size and the
  write/read rates of each candidate layout (row strips or square tiles, in one shard file or one
  file per chunk) and compressor, and of zarr-python's own paths, each against
  ``numpy.save``/``numpy.load`` of the same plane timed alongside: how the formatter's layout and
  compressors were chosen.
"""

from __future__ import annotations

import json
import math
import os
import shutil
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


def _chunk_sizes(store: str, plane: str) -> tuple[tuple[int, int], dict[tuple[int, int], int]]:
    """Chunk shape and ``{chunk index: stored size}`` of a plane, from the indexes of its shard files."""
    with open(os.path.join(store, plane, "zarr.json")) as f:
        meta = json.load(f)
    (codec,) = meta["codecs"]
    chunks = tuple(codec["configuration"]["chunk_shape"])
    shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    per = (shard[0] // chunks[0], shard[1] // chunks[1])
    sizes = {}
    for si in range(-(-meta["shape"][0] // shard[0])):
        for sj in range(-(-meta["shape"][1] // shard[1])):
            with open(os.path.join(store, plane, "c", str(si), str(sj)), "rb") as f:
                f.seek(-(16 * per[0] * per[1] + 4), os.SEEK_END)
                index = np.frombuffer(f.read()[:-4], "<u8").reshape(per[0], per[1], 2)
            for i in range(per[0]):
                for j in range(per[1]):
                    sizes[(si * per[0] + i, sj * per[1] + j)] = int(index[i, j, 1])
    return chunks, sizes


@benchmark("composites.cutout_bytes", unit="x", target=2.0, better="lower",
           description="bytes read by a 256x256 cutout of one 4096^2 plane / bytes of the chunks it intersects")
def bench_cutout_bytes(ctx: Context) -> Result:
    from butler.datastore._zarr_io import io_stats

    fx = _fixture(ctx)
    (rows, cols), sizes = _chunk_sizes(fx.path, "image")
    ratios, read = [], []
    for x, y in fx.boxes:
        with io_stats() as stats:
            fx.butler.get("calexp", DATA_ID, component="image", parameters={"bbox": _box(x, y)})
        chunk_bytes = sum(
            sizes[(i, j)]
            for i in range(y // rows, (y + CUTOUT - 1) // rows + 1)
            for j in range(x // cols, (x + CUTOUT - 1) // cols + 1)
        )
        ratios.append(stats.bytes_read / chunk_bytes)
        read.append(stats.bytes_read)
    return Result(value=percentile(ratios, 50), p90=percentile(ratios, 90), n=len(ratios),
                  notes=f"median {percentile(read, 50) / 2**20:.2f} MiB read per cutout, metadata and shard index "
                        f"included (raw cutout {CUTOUT * CUTOUT * 4 / 2**20:.2f} MiB; chunks {rows}x{cols}, "
                        "uncompressed)",
                  extra={"bytes_read_median": percentile(read, 50), "ratio_max": max(ratios),
                         "chunk_shape": [rows, cols]})


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


def _paired(ours: Any, raw: Any, nbytes: int, n: int, *, cleanup: Any = None) -> dict[str, list[float]]:
    """Time ``raw()`` then ``ours()`` ``n`` times: wall-clock rates, per-pair ratios and CPU times.

    ``cleanup()`` runs untimed after each pair (e.g. deletes what the pair wrote). Returns lists
    ``ours``/``raw`` (bytes/s), ``ratio`` (ours/raw per pair) and ``cpu_ratio`` (raw CPU time /
    our CPU time per pair, all threads of the process: less sensitive to other processes' load).
    """
    out: dict[str, list[float]] = {"ours": [], "raw": [], "ratio": [], "cpu_ratio": []}
    for _ in range(n):
        times = []
        for fn in (raw, ours):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        (t_raw, c_raw), (t_ours, c_ours) = times
        out["raw"].append(nbytes / t_raw)
        out["ours"].append(nbytes / t_ours)
        out["ratio"].append(t_raw / t_ours)
        out["cpu_ratio"].append(c_raw / c_ours if c_ours > 0 else math.nan)
        if cleanup is not None:
            cleanup()
    return out


def _throughput(m: dict[str, list[float]], label: str) -> Result:
    ours, raw = percentile(m["ours"], 50), percentile(m["raw"], 50)
    best = max(m["ours"]) / max(m["raw"])
    cpu = percentile(m["cpu_ratio"], 50)
    return Result(value=percentile(m["ratio"], 50), p90=percentile(m["ratio"], 10), n=len(m["ratio"]),
                  notes=f"butler {ours / 1e9:.2f} GB/s, {label} {raw / 1e9:.2f} GB/s (medians; ratio = median of "
                        f"{len(m['ratio'])} pairs timed in alternation); best rates x{best:.2f}; CPU time x{cpu:.2f}",
                  extra={"butler_GBps": ours / 1e9, "numpy_GBps": raw / 1e9, "best_ratio": best,
                         "cpu_ratio": cpu, "ratios": m["ratio"]})


PLANES = ("image", "mask", "variance")


@benchmark("composites.read_throughput", unit="x", target=0.7, better="higher",
           description="Butler.get of the whole exposure / numpy.load of its 3 planes (rate ratio)")
def bench_read(ctx: Context) -> Result:
    fx = _fixture(ctx)
    nbytes = sum(getattr(fx.exposure, p).nbytes for p in PLANES)
    fx.butler.get("calexp", DATA_ID)
    [np.load(p) for p in fx.npy.values()]
    measured = _paired(lambda: fx.butler.get("calexp", DATA_ID), lambda: [np.load(p) for p in fx.npy.values()],
                       nbytes, ctx.size(21, 5))
    return _throughput(measured, "numpy.load")


@benchmark("composites.write_throughput", unit="x", target=0.7, better="higher",
           description="Butler.put of the whole exposure (atomic, manifest) / numpy.save of its 3 planes (rate ratio)")
def bench_write(ctx: Context) -> Result:
    fx = _fixture(ctx)
    from butler import Butler

    butler = Butler(fx.root, run=RUN)
    nbytes = sum(getattr(fx.exposure, p).nbytes for p in PLANES)
    out = ctx.scratch("composites-save")
    last: dict[str, Any] = {}

    def save() -> None:  # new files, as each put writes new files
        directory = last["npy"] = os.path.join(out, "planes")
        os.mkdir(directory)
        for p in PLANES:
            np.save(os.path.join(directory, f"{p}.npy"), getattr(fx.exposure, p))

    def put() -> None:
        last["ref"] = butler.put(fx.exposure, "calexp", DATA_ID | {"visit": 2})

    def cleanup() -> None:  # both sides' files go before the kernel writes them back (page cache only)
        shutil.rmtree(last["npy"])
        butler.remove([last["ref"]])

    put()
    save()
    cleanup()
    return _throughput(_paired(put, save, nbytes, ctx.size(21, 5), cleanup=cleanup), "numpy.save")


# Candidate layouts of one plane: (label, plane, chunk shape or "strips", shards?, compressor).
_LAYOUTS = [
    ("strips 1 MiB, shard, none (chosen)", "image", "strips", True, "none"),
    ("strips 1 MiB, shard, blosc-lz4+shuffle", "image", "strips", True, "lz4"),
    ("strips 1 MiB, shard, zstd-1", "image", "strips", True, "zstd"),
    ("strips 1 MiB, file per chunk, none", "image", "strips", False, "none"),
    ("tiles 512^2, shard, none", "image", (512, 512), True, "none"),
    ("tiles 1024^2, shard, none", "image", (1024, 1024), True, "none"),
    ("tiles 512^2, file per chunk, none", "image", (512, 512), False, "none"),
    ("tiles 512^2, file per chunk, blosc-lz4 (before)", "image", (512, 512), False, "lz4"),
    ("mask: strips, shard, none", "mask", "strips", True, "none"),
    ("mask: strips, shard, blosc-lz4 (chosen)", "mask", "strips", True, "lz4-noshuffle"),
    ("mask: strips, shard, blosc-lz4+shuffle", "mask", "strips", True, "lz4"),
    ("mask: strips, shard, zstd-1", "mask", "strips", True, "zstd"),
]


@benchmark("composites.layouts", unit="x",
           description="informational: write/read rate / numpy.save/load of one plane, per layout and compressor "
                       "(value: the chosen image layout's read ratio)")
def bench_layouts(ctx: Context) -> Result:
    import zarr
    from zarr.codecs import Crc32cCodec

    from butler.datastore import _zarr_io as zio

    fx = _fixture(ctx)
    n = ctx.size(5, 2)
    rows: dict[str, dict[str, float]] = {}
    base = ctx.scratch("composites-layouts")
    npy = os.path.join(base, "plane.npy")

    def measure_case(name: str, data: np.ndarray, write: Any, read: Any, path: str) -> None:
        def fresh_write() -> None:
            shutil.rmtree(path, ignore_errors=True)
            write(path)

        fresh_write()
        np.save(npy, data)
        w = _paired(fresh_write, lambda: np.save(npy, data), data.nbytes, n)
        r = _paired(lambda: read(path), lambda: np.load(npy), data.nbytes, n)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        files = sum(len(fs) for _, _, fs in os.walk(path))
        rows[name] = {"size_ratio": size / data.nbytes, "files": files,
                      "write_GBps": percentile(w["ours"], 50) / 1e9, "read_GBps": percentile(r["ours"], 50) / 1e9,
                      "write_x_numpy": percentile(w["ratio"], 50), "read_x_numpy": percentile(r["ratio"], 50),
                      "write_cpu_x_numpy": percentile(w["cpu_ratio"], 50),
                      "read_cpu_x_numpy": percentile(r["cpu_ratio"], 50)}

    for label, plane, chunking, sharded, key in _LAYOUTS:
        data = getattr(fx.exposure, plane)
        if chunking == "strips":
            chunks, shards = zio.plane_layout(data.shape, data.dtype.itemsize)
        else:
            chunks, shards = chunking, tuple(-(-n // c) * c for n, c in zip(data.shape, chunking))

        def write(path: str, data: Any = data, chunks: Any = chunks, shards: Any = shards if sharded else None,
                  compressor: Any = zio.COMPRESSORS[key]) -> None:
            handle = zio.open_store(path, read_only=False)

            async def go() -> None:
                group = await zio.create_group(handle, {})
                await zio.write_plane(handle, group, "plane", data, chunks, compressor, shards=shards)
                await zio.write_metadata(handle, group)

            zio.run(go())

        def read(path: str, shape: Any = data.shape) -> None:
            handle = zio.open_store(path)

            async def go() -> Any:
                info = await zio.open_plane(handle, "plane")
                return await zio.read_region(handle, info, (slice(0, shape[0]), slice(0, shape[1])))

            zio.run(go())

        measure_case(label, data, write, read, os.path.join(base, "case"))
    image = fx.exposure.image
    for label, kwargs in {"zarr-python: tiles 512^2, file per chunk, none": {},
                          "zarr-python: tiles 512^2, one shard, none": {"shards": image.shape}}.items():
        def zwrite(path: str, kwargs: Any = kwargs) -> None:
            a = zarr.create_array(path, shape=image.shape, dtype=image.dtype, chunks=(512, 512), zarr_format=3,
                                  shards=kwargs.get("shards"), compressors=[Crc32cCodec()],
                                  config={"write_empty_chunks": True})
            a[...] = image

        measure_case(label, image, zwrite, lambda path: zarr.open_array(path, mode="r", zarr_format=3)[...],
                     os.path.join(base, "case"))
    lines = [f"{k:48s} size x{v['size_ratio']:.3f} {v['files']:2d} files  write {v['write_GBps']:.2f} GB/s "
             f"x{v['write_x_numpy']:.2f} (cpu x{v['write_cpu_x_numpy']:.2f})  read {v['read_GBps']:.2f} GB/s "
             f"x{v['read_x_numpy']:.2f} (cpu x{v['read_cpu_x_numpy']:.2f})" for k, v in rows.items()]
    lines.insert(0, "x: rate / numpy.save or numpy.load rate of the same plane (median of pairs); "
                    "cpu: their CPU time / ours")
    chosen = rows[_LAYOUTS[0][0]]
    return Result(value=chosen["read_x_numpy"], n=n, notes="\n".join(lines), extra=rows)
