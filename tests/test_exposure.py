"""The Exposure type and its two formats (zarr directory store, multi-extension FITS), without a repository.

Both formatters pass the same round-trip, component, cutout, lazy and bad-input tests. Zarr-only
tests cover what only zarr has: a checksum per chunk checked on every read path (full, cutout,
component, lazy), reads through fsspec (``memory://`` and a real local HTTP server), byte counts of
partial reads, and compatibility with stores read or written by zarr-python itself.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import threading
import uuid

import numpy as np
import pytest

from butler.datastore import get_storage_class
from butler.datastore._formatters import formatter_for
from butler.errors import ChecksumError, StorageClassError
from butler.exposure import Box, Exposure, WcsError

SHAPE = (600, 700)  # not a multiple of the chunks (zarr: 374-row strips): edge chunks are exercised
CUT = Box(x0=100, y0=200, width=256, height=256)
CROSS = Box(x0=400, y0=400, width=256, height=150)  # crosses row and column 512 (tile edges)
FORMATS = ["zarr", "exposure_fits"]


def make_wcs(crval=(10.0, 20.0)):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [350.0, 300.0]
    wcs.wcs.crval = list(crval)
    wcs.wcs.cdelt = [-5e-5, 5e-5]
    return wcs


def make_exposure(shape=SHAPE, origin=(0, 0)) -> Exposure:
    rng = np.random.default_rng(42)
    image = rng.normal(1000.0, 30.0, shape).astype(np.float32)
    mask = (rng.random(shape) > 0.99).astype(np.int32) * 4
    variance = np.abs(image) + np.float32(1.0)
    psf = np.outer(np.hanning(7), np.hanning(7))
    return Exposure(image, mask, variance, wcs=make_wcs(), psf=psf / psf.sum(), photo_calib=1.7,
                    metadata={"EXPTIME": 30.0, "FILTER": "r", "long key with spaces": [1, 2, {"a": None}]},
                    origin=origin)


@pytest.fixture(params=FORMATS)
def formatter(request):
    return formatter_for(get_storage_class("Exposure"), request.param)


def write(formatter, exposure, tmp_path, name="calexp"):
    path = os.path.join(tmp_path, name + formatter.extension)
    formatter.write(exposure, path)
    return path


def assert_same_wcs(a, b):
    assert a is not None and b is not None
    np.testing.assert_allclose(a.wcs.crpix, b.wcs.crpix)
    np.testing.assert_allclose(a.wcs.crval, b.wcs.crval)
    np.testing.assert_allclose(a.pixel_scale_matrix, b.pixel_scale_matrix)


# -- Box and Exposure -------------------------------------------------------------------------------
def test_box_validation():
    box = Box(x0=1, y0=2, width=3, height=4)
    assert (box.x1, box.y1, box.shape) == (4, 6, (4, 3))
    assert Box.from_dict(box.to_dict()) == box
    with pytest.raises(ValueError, match=r"Box\(x0=0, y0=0, width=-5, height=3\).*non-positive"):
        Box(x0=0, y0=0, width=-5, height=3)
    with pytest.raises(ValueError):
        Box(x0=0, y0=0, width=5, height=0)
    with pytest.raises(TypeError, match="x0 must be an integer"):
        Box(x0=1.5, y0=0, width=5, height=3)
    assert Box(x0=np.int64(3), y0=0, width=1, height=1).x0 == 3


def test_exposure_validation_and_defaults():
    image = np.zeros((4, 5), np.float32)
    exp = Exposure(image)
    assert exp.mask.dtype == np.int32 and exp.mask.shape == (4, 5)
    assert exp.variance.dtype == np.float32 and exp.wcs is None and exp.metadata == {}
    assert exp.bbox == Box(x0=0, y0=0, width=5, height=4)
    with pytest.raises(ValueError, match="mask has shape"):
        Exposure(image, mask=np.zeros((3, 5), np.int32))
    with pytest.raises(TypeError, match="mask must hold integers"):
        Exposure(image, mask=np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        Exposure(np.zeros(5))
    with pytest.raises(TypeError, match="astropy.wcs.WCS"):
        Exposure(image, wcs="not a wcs")
    with pytest.raises(ValueError, match="finite"):
        Exposure(image, photo_calib=float("nan"))


def test_exposure_cutout_in_memory():
    exp = make_exposure(origin=(10, 20))
    cut = exp.cutout(Box(x0=110, y0=220, width=30, height=40))
    assert cut.origin == (110, 220) and cut.shape == (40, 30)
    np.testing.assert_array_equal(cut.image, exp.image[200:240, 100:130])
    np.testing.assert_allclose(cut.wcs.wcs.crpix, exp.wcs.wcs.crpix - [100, 200])
    with pytest.raises(ValueError, match=r"not inside the image bounds Box\(x0=10, y0=20, width=700, height=600\)"):
        exp.cutout(Box(x0=0, y0=0, width=10, height=10))


# -- both formats -----------------------------------------------------------------------------------
def test_round_trip(formatter, tmp_path):
    exp = make_exposure(origin=(5, 7))
    path = write(formatter, exp, tmp_path)
    got = formatter.read(path)
    assert isinstance(got, Exposure) and not got.is_lazy
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(got, plane), getattr(exp, plane))
        assert getattr(got, plane).dtype == getattr(exp, plane).dtype
    np.testing.assert_array_equal(got.psf, exp.psf)
    assert got.photo_calib == 1.7 and got.origin == (5, 7)
    assert got.metadata == {"EXPTIME": 30.0, "FILTER": "r", "long key with spaces": [1, 2, {"a": None}]}
    assert_same_wcs(got.wcs, exp.wcs)


def test_round_trip_without_optional_components(formatter, tmp_path):
    exp = Exposure(np.arange(12, dtype=np.float64).reshape(3, 4))
    got = formatter.read(write(formatter, exp, tmp_path))
    np.testing.assert_array_equal(got.image, exp.image)
    assert got.wcs is None and got.psf is None and got.photo_calib is None and got.metadata == {}
    assert formatter.read(write(formatter, exp, tmp_path, "b"), component="wcs") is None


def test_components(formatter, tmp_path):
    exp = make_exposure()
    path = write(formatter, exp, tmp_path)
    np.testing.assert_array_equal(formatter.read(path, component="image"), exp.image)
    np.testing.assert_array_equal(formatter.read(path, component="mask"), exp.mask)
    np.testing.assert_array_equal(formatter.read(path, component="variance"), exp.variance)
    np.testing.assert_array_equal(formatter.read(path, component="psf"), exp.psf)
    assert formatter.read(path, component="photo_calib") == 1.7
    assert formatter.read(path, component="metadata")["FILTER"] == "r"
    assert_same_wcs(formatter.read(path, component="wcs"), exp.wcs)


def test_cutouts(formatter, tmp_path):
    exp = make_exposure(origin=(1000, 2000))
    path = write(formatter, exp, tmp_path)
    box = Box(x0=1000 + CUT.x0, y0=2000 + CUT.y0, width=CUT.width, height=CUT.height)
    rows, cols = slice(CUT.y0, CUT.y1), slice(CUT.x0, CUT.x1)
    cut = formatter.read(path, parameters={"bbox": box})
    assert cut.bbox == box and cut.origin == (box.x0, box.y0)
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(cut, plane), getattr(exp, plane)[rows, cols])
    np.testing.assert_allclose(cut.wcs.wcs.crpix, exp.wcs.wcs.crpix - [CUT.x0, CUT.y0])
    # The cutout's WCS maps its pixel (0, 0) where the parent's maps (x0, y0).
    np.testing.assert_allclose(cut.wcs.pixel_to_world_values(0, 0), exp.wcs.pixel_to_world_values(CUT.x0, CUT.y0))
    np.testing.assert_array_equal(formatter.read(path, component="variance", parameters={"bbox": box}),
                                  exp.variance[rows, cols])
    np.testing.assert_allclose(formatter.read(path, component="wcs", parameters={"bbox": box}).wcs.crpix,
                               cut.wcs.wcs.crpix)
    # A box spanning the last (partial) chunk of both axes.
    edge = Box(x0=1000 + 690, y0=2000 + 500, width=10, height=100)
    np.testing.assert_array_equal(formatter.read(path, component="image", parameters={"bbox": edge}),
                                  exp.image[500:600, 690:700])


def test_lazy(formatter, tmp_path):
    import dask.array as da

    exp = make_exposure()
    path = write(formatter, exp, tmp_path)
    lazy = formatter.read(path, parameters={"lazy": True})
    assert lazy.is_lazy and isinstance(lazy.image, da.Array)
    np.testing.assert_array_equal(lazy.image[CUT.y0:CUT.y1, CUT.x0:CUT.x1].compute(), exp.image[200:456, 100:356])
    np.testing.assert_array_equal(lazy.mask.compute(), exp.mask)
    assert_same_wcs(lazy.wcs, exp.wcs)
    cut = formatter.read(path, component="image", parameters={"lazy": True, "bbox": CUT})
    assert isinstance(cut, da.Array) and cut.shape == (256, 256)
    np.testing.assert_array_equal(cut.compute(), exp.image[200:456, 100:356])
    # Lazy planes are picklable (dask workers read chunks themselves).
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy.variance)).compute(), exp.variance)
    # A lazy exposure can be written again.
    again = formatter.read(write(formatter, lazy, tmp_path, "again"))
    np.testing.assert_array_equal(again.image, exp.image)


@pytest.mark.parametrize("box", [Box(x0=600, y0=0, width=200, height=10), Box(x0=-1, y0=0, width=10, height=10),
                                 Box(x0=0, y0=590, width=10, height=11)], ids=["right", "left", "bottom"])
def test_bbox_outside_the_image(formatter, tmp_path, box):
    path = write(formatter, make_exposure(), tmp_path)
    with pytest.raises(ValueError, match=rf"bbox {__import__('re').escape(repr(box))} is not inside the image bounds "
                                         r"Box\(x0=0, y0=0, width=700, height=600\)"):
        formatter.read(path, parameters={"bbox": box})
    with pytest.raises(ValueError, match="not inside the image bounds"):
        formatter.read(path, component="image", parameters={"bbox": box})


def test_bad_parameters_and_components(formatter, tmp_path):
    path = write(formatter, make_exposure(), tmp_path)
    with pytest.raises(StorageClassError, match=r"does not support parameter\(s\) \['columns'\]; supported: "
                                                r"\['bbox', 'lazy'\]"):
        formatter.read(path, parameters={"columns": ["a"]})
    with pytest.raises(StorageClassError, match=r"no component 'skywcs'; components: \['image', 'mask'"):
        formatter.read(path, component="skywcs")
    with pytest.raises(TypeError, match="must be a butler.exposure.Box"):
        formatter.read(path, parameters={"bbox": (0, 0, 10, 10)})
    with pytest.raises(TypeError, match="'lazy'"):
        formatter.read(path, parameters={"lazy": "yes"})


def test_unwritable_values_are_refused_before_writing(formatter, tmp_path):
    from astropy.wcs import WCS

    bad_wcs = WCS(naxis=2)
    bad_wcs.wcs.ctype = ["RA---TAN", "RA---TAN"]
    with pytest.raises(WcsError, match="cannot be written"):
        write(formatter, make_exposure().replace(wcs=bad_wcs), tmp_path)
    with pytest.raises(StorageClassError, match="cannot serialise"):
        write(formatter, make_exposure().replace(metadata={"when": object()}), tmp_path)
    with pytest.raises(StorageClassError, match="expects butler.exposure.Exposure"):
        write(formatter, np.zeros((3, 3)), tmp_path)
    assert os.listdir(tmp_path) == []  # no temporary file or directory left behind


# -- zarr only --------------------------------------------------------------------------------------
@pytest.fixture
def zarr_formatter():
    return formatter_for(get_storage_class("Exposure"), "zarr")


def _plane_meta(path: str, plane: str) -> dict:
    with open(os.path.join(path, plane, "zarr.json")) as f:
        return json.load(f)


def shard_index(path: str, plane: str = "image") -> list[tuple[int, int]]:
    """(offset, size) of each chunk of the plane's shard file c/0/0 (index at the end, crc-checked)."""
    config = _plane_meta(path, plane)["codecs"][0]["configuration"]
    shard_shape = _plane_meta(path, plane)["chunk_grid"]["configuration"]["chunk_shape"]
    n = int(np.prod([s // c for s, c in zip(shard_shape, config["chunk_shape"])]))
    with open(os.path.join(path, plane, "c", "0", "0"), "rb") as f:
        f.seek(-(16 * n + 4), os.SEEK_END)
        raw = f.read()
    import google_crc32c

    assert google_crc32c.value(raw[:-4]) == int.from_bytes(raw[-4:], "little")
    return [tuple(map(int, row)) for row in np.frombuffer(raw[:-4], "<u8").reshape(n, 2)]


def strip_rows(path: str, plane: str = "image") -> int:
    return _plane_meta(path, plane)["codecs"][0]["configuration"]["chunk_shape"][0]


def shard_reads(stats, key="image/c/0/0"):
    return [n for k, n in stats.reads if k == key]


def test_zarr_layout_and_partial_reads(zarr_formatter, tmp_path):
    from butler.datastore._zarr_io import io_stats

    exp = make_exposure()
    path = write(zarr_formatter, exp, tmp_path)
    with open(os.path.join(path, "zarr.json")) as f:
        root = json.load(f)
    assert root["zarr_format"] == 3 and root["attributes"]["butler"]["layout"] == 1
    files = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)
    assert files == ["butler-manifest.tsv",  # every other file's size and checksum, for verified reads
                     "image/c/0/0", "image/zarr.json", "mask/c/0/0", "mask/zarr.json", "psf/c/0/0", "psf/zarr.json",
                     "variance/c/0/0", "variance/zarr.json", "zarr.json"]  # one shard file per plane
    for plane, inner in [("image", ["bytes", "crc32c"]), ("variance", ["bytes", "crc32c"]),
                         ("mask", ["bytes", "blosc", "crc32c"])]:
        (codec,) = _plane_meta(path, plane)["codecs"]
        assert codec["name"] == "sharding_indexed"
        config = codec["configuration"]
        assert [c["name"] for c in config["codecs"]] == inner  # a crc32c per chunk
        assert [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"] and config["index_location"] == "end"
        rows, columns = config["chunk_shape"]
        assert columns == SHAPE[1] and rows * columns * 4 <= 1 << 20 < (rows + 1) * columns * 4  # ~1 MiB strips
    rows = strip_rows(path)
    index = shard_index(path)
    assert len(index) == 2 and index[0] == (0, rows * 700 * 4 + 4)  # uncompressed: chunk + crc32c, in order
    with io_stats() as stats:
        zarr_formatter.read(path, component="wcs")
    assert stats.keys == ["zarr.json"]  # no probing of other keys, no pixels
    with io_stats() as stats:
        zarr_formatter.read(path, component="image", parameters={"bbox": Box(x0=10, y0=10, width=20, height=20)})
    assert sorted(set(stats.keys)) == ["image/c/0/0", "image/zarr.json", "zarr.json"]  # root: origin and shape
    assert shard_reads(stats) == [16 * 2 + 4, index[0][1]]  # the shard's index, then the one chunk hit
    crossing = Box(x0=100, y0=rows - 50, width=300, height=100)
    with io_stats() as stats:
        cut = zarr_formatter.read(path, component="image", parameters={"bbox": crossing})
    np.testing.assert_array_equal(cut, exp.image[rows - 50:rows + 50, 100:400])
    assert shard_reads(stats) == [16 * 2 + 4, index[0][1], index[1][1]]
    with io_stats() as stats:
        lazy = zarr_formatter.read(path, parameters={"lazy": True})
    assert not any(k.startswith(("image/c", "mask/c", "variance/c")) for k in stats.keys)  # no pixels yet (psf is)
    with io_stats() as stats:
        lazy.image[0:10, 600:610].compute()
    assert stats.reads == [("image/c/0/0", 16 * 2 + 4), ("image/c/0/0", index[0][1])]


def test_zarr_compressors_are_an_option(tmp_path):
    from butler.datastore._formatters_zarr import ZarrExposureFormatter

    exp = make_exposure()
    formatter = ZarrExposureFormatter(get_storage_class("Exposure"), compressors={"image": "lz4", "mask": "zstd"})
    path = write(formatter, exp, tmp_path)
    inner = {p: [c["name"] for c in _plane_meta(path, p)["codecs"][0]["configuration"]["codecs"]]
             for p in ("image", "mask", "variance")}
    assert inner == {"image": ["bytes", "blosc", "crc32c"], "mask": ["bytes", "zstd", "crc32c"],
                     "variance": ["bytes", "crc32c"]}
    got = formatter_for(get_storage_class("Exposure"), "zarr").read(path)  # reads need no option
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(got, plane), getattr(exp, plane))
    with pytest.raises(ValueError, match=r"unknown compressor 'snappy' for 'image'; known: \['lz4', "):
        ZarrExposureFormatter(compressors={"image": "snappy"})
    with pytest.raises(ValueError, match="unknown plane 'sky'"):
        ZarrExposureFormatter(compressors={"sky": "lz4"})


def test_plane_layout():
    from butler.datastore._zarr_io import plane_layout

    assert plane_layout((4096, 4096), 4) == ((64, 4096), (4096, 4096))  # 1 MiB strips, one shard
    assert plane_layout((16384, 16384), 4) == ((16, 16384), (1024, 16384))  # 64 MiB shards
    assert plane_layout((3, 4), 8) == ((3, 4), (3, 4))
    assert plane_layout((10, 1 << 20), 4) == ((10, 512), (10, 1 << 20))  # rows over 1 MiB: tiles


def test_crc32c_of_buffers():
    """Chunks are checked as arrays, memoryviews (remote reads) and in two parts (data, then its crc32c)."""
    import google_crc32c

    from butler.datastore import _zarr_io as zio

    data = np.random.default_rng(0).integers(0, 255, 100_003, dtype=np.uint8)
    expected = google_crc32c.value(data.tobytes())
    assert zio._crc32c(data) == zio._crc32c(memoryview(data)) == zio._crc32c(data.tobytes()) == expected
    assert zio._crc32c(b"tail", zio._crc32c(data)) == google_crc32c.value(data.tobytes() + b"tail")
    assert zio._crc32c(data.tobytes() + zio._crc(data)) == zio._CRC32C_RESIDUE


def test_zarr_many_shards_and_tiles(tmp_path):
    """Smaller strips and shards (as for planes bigger than 64 MiB): several shard files, read by both readers."""
    import zarr

    from butler.datastore._formatters_zarr import ZarrExposureFormatter
    from butler.datastore._zarr_io import io_stats

    class Small(ZarrExposureFormatter):
        __slots__ = ()
        chunk_bytes = 50 * 700 * 4
        shard_bytes = 4 * 50 * 700 * 4

    exp = make_exposure()
    path = write(Small(get_storage_class("Exposure")), exp, tmp_path)
    assert sorted(os.listdir(os.path.join(path, "image", "c"))) == ["0", "1", "2"]  # 200-row shards
    formatter = formatter_for(get_storage_class("Exposure"), "zarr")
    got = formatter.read(path)
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(got, plane), getattr(exp, plane))
        np.testing.assert_array_equal(zarr.open_array(path, path=plane, mode="r", zarr_format=3)[...],
                                      getattr(exp, plane))
    with io_stats() as stats:
        cut = formatter.read(path, component="variance", parameters={"bbox": Box(x0=5, y0=190, width=30, height=20)})
    np.testing.assert_array_equal(cut, exp.variance[190:210, 5:35])
    assert sorted(k for k in stats.keys if "/c/" in k) == ["variance/c/0/0"] * 2 + ["variance/c/1/0"] * 2
    # zarr-python writes tiles in shards (its chunk order, index at the start too): read by the fast path.
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    new = np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    del root["image"]
    root.create_array("image", shape=SHAPE, dtype="f4", chunks=(100, 100), shards=(200, 300),
                      compressors=[Crc32cCodec()])[...] = new
    np.testing.assert_array_equal(formatter.read(path, component="image", parameters={"bbox": CROSS}),
                                  new[400:550, 400:656])
    del root["variance"]
    root.create_array("variance", shape=SHAPE, dtype="f4", chunks=(300, 350), compressors=None,
                      serializer=ShardingCodec(chunk_shape=(100, 350), codecs=[BytesCodec(), Crc32cCodec()],
                                               index_location="start"))[...] = new
    np.testing.assert_array_equal(formatter.read(path).variance, new)


def test_zarr_reads_the_unsharded_layout(zarr_formatter, tmp_path):
    """Stores of the first layout (one file per 512 x 512 chunk, blosc-lz4) are still read by the fast path."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    exp = make_exposure()
    path = write(zarr_formatter, exp, tmp_path)
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    del root["image"]
    root.create_array("image", shape=SHAPE, dtype="f4", chunks=(512, 512),
                      compressors=[BloscCodec(cname="lz4", shuffle="shuffle"), Crc32cCodec()])[...] = exp.image
    np.testing.assert_array_equal(zarr_formatter.read(path).image, exp.image)
    np.testing.assert_array_equal(zarr_formatter.read(path, component="image", parameters={"bbox": CROSS}),
                                  exp.image[400:550, 400:656])
    chunk = os.path.join(path, "image", "c", "1", "1")
    with open(chunk, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError, match=__import__("re").escape(chunk)):
        zarr_formatter.read(path, component="image", parameters={"bbox": CROSS})
    np.testing.assert_array_equal(zarr_formatter.read(path, component="image", parameters={"bbox": CUT}),
                                  exp.image[200:456, 100:356])


def test_zarr_python_reads_what_we_write_and_we_read_what_it_writes(zarr_formatter, tmp_path):
    import zarr

    exp = make_exposure()
    path = write(zarr_formatter, exp, tmp_path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    for plane in ("image", "mask", "variance", "psf"):
        expected = exp.psf if plane == "psf" else getattr(exp, plane)
        np.testing.assert_array_equal(group[plane][...], expected)
    np.testing.assert_array_equal(group["image"][400:550, 400:656], exp.image[400:550, 400:656])
    # zarr-python rewrites the image with the same codecs: we read its chunks.
    new = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    zarr.open_array(path, path="image", mode="r+", zarr_format=3)[...] = new
    np.testing.assert_array_equal(zarr_formatter.read(path, component="image"), new)
    # An array with codecs this module does not decode itself (no crc32c) is read through zarr-python.
    import shutil

    shutil.rmtree(os.path.join(path, "image"))
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    root.create_array("image", shape=SHAPE, dtype="f4", chunks=(100, 100), shards=(200, 200))[...] = new
    np.testing.assert_array_equal(zarr_formatter.read(path, component="image", parameters={"bbox": CUT}),
                                  new[200:456, 100:356])
    np.testing.assert_array_equal(zarr_formatter.read(path, parameters={"lazy": True}).image.compute(), new)


def _damage(path: str, how: str) -> str:
    """Damage the image shard: a byte of its second chunk, its index, or the whole file."""
    shard = os.path.join(path, "image", "c", "0", "0")
    if how in ("flip", "index"):
        offset = shard_index(path)[1][0] + 1000 if how == "flip" else os.path.getsize(shard) - 10
        with open(shard, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate":
        os.truncate(shard, os.path.getsize(shard) // 2)
    elif how == "empty":
        os.truncate(shard, 0)
    else:
        os.unlink(shard)
    return shard


@pytest.mark.parametrize("how", ["flip", "index", "truncate", "empty", "missing"])
def test_zarr_damaged_chunk_raises_checksum_error_on_every_read_path(zarr_formatter, tmp_path, how):
    exp = make_exposure()
    path = write(zarr_formatter, exp, tmp_path)
    rows = strip_rows(path)
    shard = _damage(path, how)
    touching = Box(x0=600, y0=rows + 10, width=50, height=50)  # inside the second chunk
    reads = {
        "full": lambda: zarr_formatter.read(path),
        "component": lambda: zarr_formatter.read(path, component="image"),
        "cutout": lambda: zarr_formatter.read(path, parameters={"bbox": touching}),
        "component cutout": lambda: zarr_formatter.read(path, component="image", parameters={"bbox": touching}),
        "lazy": lambda: zarr_formatter.read(path, parameters={"lazy": True}).image.compute(),
        "lazy cutout": lambda: zarr_formatter.read(path, parameters={"lazy": True}).image[
            rows + 10:rows + 20, 600:610].compute(),
    }
    for read in reads.values():
        with pytest.raises(ChecksumError, match=__import__("re").escape(shard)):
            read()
    if how == "flip":  # reads that do not touch the damaged chunk still work
        np.testing.assert_array_equal(
            zarr_formatter.read(path, component="image", parameters={"bbox": Box(x0=0, y0=0, width=10, height=10)}),
            exp.image[:10, :10])
    np.testing.assert_array_equal(zarr_formatter.read(path, component="variance"), exp.variance)  # other planes
    assert zarr_formatter.read(path, component="photo_calib") == 1.7


def test_zarr_unreadable_wcs_and_metadata(zarr_formatter, tmp_path):
    path = write(zarr_formatter, make_exposure(), tmp_path)
    meta_file = os.path.join(path, "zarr.json")
    with open(meta_file) as f:
        meta = json.load(f)
    meta["attributes"]["butler"]["wcs"] = [["CTYPE1", "RA---TAN", ""], ["CTYPE2", "RA---TAN", ""]]
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    with pytest.raises(WcsError, match=r"cannot read the WCS of .*zarr\.json: .*Inconsistent"):
        zarr_formatter.read(path, component="wcs")
    with pytest.raises(WcsError):
        zarr_formatter.read(path)
    np.testing.assert_array_equal(zarr_formatter.read(path, component="mask").shape, SHAPE)  # pixels still readable
    with open(meta_file, "w") as f:
        f.write("{not json")
    with pytest.raises(ChecksumError, match="zarr.json"):
        zarr_formatter.read(path, component="wcs")


def test_zarr_missing_store(zarr_formatter, tmp_path):
    with pytest.raises(FileNotFoundError):
        zarr_formatter.read(str(tmp_path / "nothing.zarr"))


def test_zarr_memory_store(zarr_formatter):
    location = f"memory://butler-test-{uuid.uuid4().hex}/calexp.zarr"
    exp = make_exposure()
    size, checksum = zarr_formatter.write_to(exp, location)
    assert size > 0 and checksum.startswith("manifest:xxh3_128:")
    np.testing.assert_array_equal(zarr_formatter.read_location(location).image, exp.image)
    cut = zarr_formatter.read_location(location, component="image", parameters={"bbox": CUT})
    np.testing.assert_array_equal(cut, exp.image[200:456, 100:356])
    assert_same_wcs(zarr_formatter.read_location(location, component="wcs"), exp.wcs)
    lazy = zarr_formatter.read_location(location, parameters={"lazy": True})
    np.testing.assert_array_equal(lazy.variance[300:310, 300:310].compute(), exp.variance[300:310, 300:310])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """python's static file server, which ignores ``Range`` headers (sends whole files)."""

    def log_message(self, format, *args):
        pass


class _RangeHandler(_QuietHandler):
    """The same with single ``Range: bytes=a-b`` / ``bytes=-n`` requests, as real servers and object stores."""

    def send_head(self):
        spec = self.headers.get("Range", "")
        path = self.translate_path(self.path)
        if not spec.startswith("bytes=") or "," in spec or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, _, last = spec[len("bytes="):].partition("-")
        if first:
            start, stop = int(first), min(size, int(last or size - 1) + 1)
        else:
            start, stop = max(0, size - int(last)), size
        with open(path, "rb") as stream:
            stream.seek(start)
            data = stream.read(stop - start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)


@pytest.fixture(params=["ranges", "no-ranges"])
def http_root(request, tmp_path):
    """A real HTTP server (python's http.server, in a thread) serving ``tmp_path``, with or without ranges."""
    handler = functools.partial(_RangeHandler if request.param == "ranges" else _QuietHandler,
                                directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", request.param == "ranges"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_zarr_http_store(zarr_formatter, tmp_path, http_root):
    from butler.datastore._zarr_io import io_stats

    root, ranges = http_root
    exp = make_exposure()
    path = write(zarr_formatter, exp, tmp_path)
    rows, index = strip_rows(path), shard_index(path)
    url = f"{root}/calexp.zarr"
    crossing = Box(x0=400, y0=rows - 50, width=256, height=150)  # both chunks: one range request
    with io_stats() as stats:
        cut = zarr_formatter.read_location(url, component="image", parameters={"bbox": crossing})
    np.testing.assert_array_equal(cut, exp.image[rows - 50:rows + 100, 400:656])
    assert [k for k, _ in stats.reads] == ["zarr.json", "image/zarr.json", "image/c/0/0", "image/c/0/0"]
    if ranges:  # the index, then both chunks in one request; without ranges the whole file, cut here
        assert shard_reads(stats) == [16 * 2 + 4, index[0][1] + index[1][1]]
    got = zarr_formatter.read_location(url, parameters={"bbox": CUT})
    np.testing.assert_array_equal(got.mask, exp.mask[200:456, 100:356])
    np.testing.assert_array_equal(zarr_formatter.read_location(url).variance, exp.variance)
    assert_same_wcs(zarr_formatter.read_location(url, component="wcs"), exp.wcs)
    shard = _damage(path, "flip")
    with pytest.raises(ChecksumError, match=f"{url}/image/c/0/0"):
        zarr_formatter.read_location(url, component="image")
    first = Box(x0=0, y0=0, width=700, height=rows)  # the first chunk is intact
    np.testing.assert_array_equal(zarr_formatter.read_location(url, component="image", parameters={"bbox": first}),
                                  exp.image[:rows])
    assert os.path.exists(shard)
    with pytest.raises(FileNotFoundError):
        zarr_formatter.read_location(f"{root}/missing.zarr")


# -- FITS only --------------------------------------------------------------------------------------
def test_fits_layout_and_damage(tmp_path):
    from astropy.io import fits

    formatter = formatter_for(get_storage_class("Exposure"), "exposure_fits")
    exp = make_exposure(origin=(3, 4))
    path = write(formatter, exp, tmp_path)
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
        assert hdus["IMAGE"].header["LTV1"] == -3 and hdus["IMAGE"].header["CTYPE1"] == "RA---TAN"
        assert hdus[0].header["EXPTIME"] == 30.0 and "CHECKSUM" in hdus["IMAGE"].header
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # flip a byte in the image data
        f.seek(size // 3)
        byte = f.read(1)
        f.seek(size // 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError, match=__import__("re").escape(path)):
        formatter.read(path)
    os.truncate(path, size // 2)
    with pytest.raises(ChecksumError, match=__import__("re").escape(path)):
        formatter.read(path)


def test_fits_reads_a_foreign_single_hdu_file(tmp_path):
    """A raw written by other software: image in the primary HDU, metadata in its header, no mask."""
    from astropy.io import fits

    data = np.arange(20, dtype=np.int16).reshape(4, 5)
    header = make_wcs().to_header()
    header["EXPTIME"] = 15.0
    path = str(tmp_path / "raw.fits")
    fits.PrimaryHDU(data, header=header).writeto(path)
    formatter = formatter_for(get_storage_class("Exposure"), "exposure_fits")
    exp = formatter.read(path)
    np.testing.assert_array_equal(exp.image, data)
    assert exp.mask.shape == (4, 5) and not exp.mask.any()
    assert exp.metadata["EXPTIME"] == 15.0
    assert_same_wcs(exp.wcs, make_wcs())
