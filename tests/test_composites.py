"""Composite datasets through the Butler, on every registry backend and both exposure formats.

put/get of an ``Exposure`` (default zarr, or FITS chosen by the repository's ``formatters``
override), ``component=``, ``parameters={"bbox"|"lazy"}``, deferred handles, components written on
their own after the composite (``put(wcs, "calexp.wcs", ...)``) and assembled on read, ``verify``
of directory datasets, removal, and bad input leaving the repository unchanged. Also the
``SourceCatalog`` storage class (parquet; column and row-filter parameters).

Behaviour both exposure formats share takes the ``repo`` fixture (one case per format); zarr-only
features and datasets that do not depend on the exposure format take ``zarr_repo`` (no FITS case
is generated for them, rather than generated and skipped).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_exposure import CROSS, CUT, assert_same_wcs, make_exposure, make_wcs, shard_index

from butler import Butler, DatasetType
from butler.errors import ChecksumError, ConflictError, DatasetNotFoundError, StorageClassError
from butler.exposure import Box, Exposure
from butler.testing import snapshot_repo

DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}
OTHER = {"instrument": "SimCam", "visit": 14, "detector": 3}
RUN = "u/tester/run1"


FORMATS = ["zarr", "exposure_fits"]


def _make_repo(repo_factory, exposure_format: str) -> Butler:
    """A writeable Butler with SimCam, visits 12 and 14, 'calexp' (Exposure) and 'src' (SourceCatalog)."""
    from butler.instrument import SimCam

    formatters = {} if exposure_format == "zarr" else {"calexp": exposure_format}
    created = repo_factory(formatters=formatters)
    butler = Butler(created.root, run=RUN)
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
        {"instrument": "SimCam", "id": 14, "physical_filter": "SimCam-g", "day_obs": 20261124,
         "exposure_time": 5.0, "begin": "2026-11-24T04:00:00", "end": "2026-11-24T04:00:05"},
    ])
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type(DatasetType("calexp", dims, "Exposure"))
    butler.register_dataset_type(DatasetType("src", dims, "SourceCatalog"))
    butler.format = exposure_format  # for the tests' own branching (an attribute of this test object only)
    return butler


@pytest.fixture(params=FORMATS)
def repo(request, repo_factory):
    """The repository with each exposure format (for behaviour both formats share)."""
    return _make_repo(repo_factory, request.param)


@pytest.fixture
def zarr_repo(repo_factory):
    """The repository with the default (zarr) exposure format only: for zarr features and for datasets
    that do not depend on the exposure format (catalogs)."""
    return _make_repo(repo_factory, "zarr")


def _records(butler: Butler, ref):
    registry = butler.registry
    with registry.db.transaction() as conn:
        return registry.datasets.files_of(conn, [ref.id])[ref.id]


def test_put_get_components_cutouts(repo):
    exp = make_exposure()
    ref = repo.put(exp, "calexp", DATA_ID)
    (record,) = _records(repo, ref)
    assert record.formatter == repo.format
    path = os.path.join(repo.root, record.path)
    if repo.format == "zarr":
        assert os.path.isdir(path) and record.path.endswith(".zarr")
        assert record.checksum.startswith("manifest:xxh3_128:") and record.file_size > 0
    got = repo.get("calexp", DATA_ID)
    np.testing.assert_array_equal(got.image, exp.image)
    np.testing.assert_array_equal(got.mask, exp.mask)
    assert got.photo_calib == 1.7 and got.metadata == exp.metadata
    assert_same_wcs(repo.get("calexp", DATA_ID, component="wcs"), exp.wcs)
    assert_same_wcs(repo.get("calexp.wcs", DATA_ID), exp.wcs)
    np.testing.assert_array_equal(repo.get("calexp.psf", DATA_ID), exp.psf)
    cut = repo.get("calexp", DATA_ID, component="image", parameters={"bbox": CUT})
    np.testing.assert_array_equal(cut, exp.image[200:456, 100:356])
    sub = repo.get("calexp", DATA_ID, parameters={"bbox": CROSS})
    assert sub.bbox == CROSS
    np.testing.assert_array_equal(sub.variance, exp.variance[400:550, 400:656])
    lazy = repo.get("calexp", DATA_ID, parameters={"lazy": True})
    assert lazy.is_lazy
    np.testing.assert_array_equal(lazy.image[10:20, 690:700].compute(), exp.image[10:20, 690:700])
    # Deferred: found now, read later, any component and parameters.
    handle = repo.get_deferred("calexp", DATA_ID)
    np.testing.assert_array_equal(handle.get(parameters={"bbox": CUT}).mask, exp.mask[200:456, 100:356])
    np.testing.assert_array_equal(handle.get(component="psf"), exp.psf)
    assert repo.exists("calexp", DATA_ID)
    assert repo.verify() == []


def test_zarr_reads_only_what_is_asked(zarr_repo):
    from butler.datastore._zarr_io import io_stats

    repo = zarr_repo
    ref = repo.put(make_exposure(), "calexp", DATA_ID)
    first_chunk = shard_index(os.path.join(repo.root, _records(repo, ref)[0].path))[0][1]
    with io_stats() as stats:
        handle = repo.get_deferred("calexp", DATA_ID)
    assert stats.requests == 0
    with io_stats() as stats:
        handle.get(component="wcs")
    assert stats.keys == ["zarr.json"]
    with io_stats() as stats:
        repo.get("calexp", DATA_ID, component="image", parameters={"bbox": Box(x0=0, y0=0, width=8, height=8)})
    # The plane's metadata, its shard's index, then the one chunk (a row strip) holding the box.
    assert [k for k, _ in stats.reads] == ["zarr.json", "image/zarr.json", "image/c/0/0", "image/c/0/0"]
    assert [n for k, n in stats.reads if k == "image/c/0/0"] == [16 * 2 + 4, first_chunk]


def test_component_written_on_its_own_is_assembled(repo):
    exp = make_exposure()
    ref = repo.put(exp, "calexp", DATA_ID)
    repo.put(make_exposure(), "calexp", OTHER)
    new_wcs = make_wcs(crval=(11.0, 21.0))
    assert repo.put(new_wcs, "calexp.wcs", DATA_ID) == ref  # the parent's ref
    repo.put(2.5, "calexp.photo_calib", DATA_ID)
    files = {f.component: f for f in _records(repo, ref)}
    assert set(files) == {"", "wcs", "photo_calib"}
    assert files["wcs"].formatter == "wcs_fits" and files["photo_calib"].formatter == "scalar_json"
    got = repo.get("calexp", DATA_ID)
    assert_same_wcs(got.wcs, new_wcs)
    assert got.photo_calib == 2.5
    np.testing.assert_array_equal(got.image, exp.image)  # pixels from the composite
    assert_same_wcs(repo.get("calexp", DATA_ID, component="wcs"), new_wcs)
    assert repo.get("calexp.photo_calib", DATA_ID) == 2.5
    # The override WCS is cut with the pixels.
    cut = repo.get("calexp", DATA_ID, parameters={"bbox": CUT})
    np.testing.assert_allclose(cut.wcs.wcs.crval, [11.0, 21.0])
    np.testing.assert_allclose(cut.wcs.wcs.crpix, new_wcs.wcs.crpix - [CUT.x0, CUT.y0])
    np.testing.assert_allclose(repo.get("calexp.wcs", DATA_ID, parameters={"bbox": CUT}).wcs.crpix,
                               cut.wcs.wcs.crpix)
    # Other datasets are untouched.
    np.testing.assert_allclose(repo.get("calexp.wcs", OTHER).wcs.crval, [10.0, 20.0])
    # Writing it again needs replace=True; the repository is unchanged by the refusal.
    before = snapshot_repo(repo)
    with pytest.raises(ConflictError, match="replace=True"):
        repo.put(make_wcs(crval=(12.0, 22.0)), "calexp.wcs", DATA_ID)
    assert snapshot_repo(repo) == before
    repo.put(make_wcs(crval=(12.0, 22.0)), "calexp.wcs", DATA_ID, replace=True)
    np.testing.assert_allclose(repo.get("calexp", DATA_ID).wcs.wcs.crval, [12.0, 22.0])
    assert repo.verify() == []
    # Replacing the composite drops the components written for the old one.
    repo.put(exp, "calexp", DATA_ID, replace=True)
    assert repo.get("calexp", DATA_ID).photo_calib == 1.7
    assert repo.verify() == []
    # Removing the dataset removes every file of it.
    (new_ref,) = repo.query_datasets("calexp", **DATA_ID)
    repo.put(3.0, "calexp.photo_calib", DATA_ID)
    paths = [os.path.join(repo.root, f.path) for f in _records(repo, new_ref)]
    assert repo.remove([new_ref]) == 1
    assert not any(os.path.exists(p) for p in paths)


def test_component_put_in_the_same_put_many(repo):
    refs = repo.put_many([(make_exposure(), "calexp", DATA_ID), (make_wcs(crval=(1.0, 2.0)), "calexp.wcs", DATA_ID)])
    assert refs[0] == refs[1]
    np.testing.assert_allclose(repo.get("calexp", DATA_ID).wcs.wcs.crval, [1.0, 2.0])


def test_bad_component_puts_leave_the_repository_unchanged(repo):
    repo.put(make_exposure(), "calexp", DATA_ID)
    before = snapshot_repo(repo)
    with pytest.raises(DatasetNotFoundError, match="put the whole 'calexp' first"):
        repo.put(make_wcs(), "calexp.wcs", OTHER)
    with pytest.raises(StorageClassError, match=r"component 'image' .* cannot be written on its own; components "
                                                r"that can: \['metadata', 'photo_calib', 'psf', 'wcs'\]"):
        repo.put(np.zeros((3, 3)), "calexp.image", DATA_ID)
    with pytest.raises(StorageClassError, match="has no component 'skywcs'"):
        repo.put(make_wcs(), "calexp.skywcs", DATA_ID)
    with pytest.raises(StorageClassError, match="expects astropy.wcs.WCS, got str"):
        repo.put("not a wcs", "calexp.wcs", DATA_ID)
    with pytest.raises(DatasetNotFoundError):  # another run has no calexp yet
        repo.put(make_wcs(), "calexp.wcs", DATA_ID, run="u/tester/other")
    assert snapshot_repo(repo) == before


def test_bad_reads_and_puts_leave_the_repository_unchanged(repo):
    repo.put(make_exposure(), "calexp", DATA_ID)
    before = snapshot_repo(repo)
    with pytest.raises(ValueError, match=r"bbox Box\(x0=600, y0=500, width=200, height=200\) is not inside the "
                                         r"image bounds Box\(x0=0, y0=0, width=700, height=600\)"):
        repo.get("calexp", DATA_ID, parameters={"bbox": Box(x0=600, y0=500, width=200, height=200)})
    with pytest.raises(ValueError, match="non-positive"):
        repo.get("calexp", DATA_ID, parameters={"bbox": Box(x0=0, y0=0, width=-1, height=5)})
    with pytest.raises(StorageClassError, match=r"no component 'sky'; components: \['image', 'mask', 'metadata', "
                                                r"'photo_calib', 'psf', 'variance', 'wcs'\]"):
        repo.get("calexp", DATA_ID, component="sky")
    with pytest.raises(StorageClassError, match=r"parameter\(s\) \['binning'\]; supported: \['bbox', 'lazy'\]"):
        repo.get("calexp", DATA_ID, parameters={"binning": 2})
    with pytest.raises(StorageClassError, match="expects butler.exposure.Exposure"):
        repo.put(np.zeros((4, 4)), "calexp", OTHER)
    with pytest.raises(ConflictError, match="replace=True"):
        repo.put(make_exposure(), "calexp", DATA_ID)
    from astropy.wcs import WCS

    from butler.exposure import WcsError

    bad = WCS(naxis=2)
    bad.wcs.ctype = ["RA---TAN", "RA---TAN"]
    with pytest.raises(WcsError):
        repo.put(make_exposure().replace(wcs=bad), "calexp", OTHER)
    assert snapshot_repo(repo) == before


def test_corruption_is_found_by_reads_and_verify(repo):
    ref = repo.put(make_exposure(), "calexp", DATA_ID)
    (record,) = _records(repo, ref)
    path = os.path.join(repo.root, record.path)
    if repo.format == "zarr":
        damaged = os.path.join(path, "variance", "c", "0", "0")  # the plane's shard file
    else:
        damaged = path
    with open(damaged, "r+b") as f:
        f.seek(os.path.getsize(damaged) // 2)
        byte = f.read(1)
        f.seek(os.path.getsize(damaged) // 2)
        f.write(bytes([byte[0] ^ 0x55]))
    with pytest.raises(ChecksumError, match=__import__("re").escape(damaged)):
        repo.get("calexp", DATA_ID)
    problems = repo.verify()
    assert [(p.path, p.problem) for p in problems] == [(record.path, "checksum")]
    # A file added to (or removed from) a store changes its manifest too.
    if repo.format == "zarr":
        repo.put(make_exposure(), "calexp", OTHER)
        other = os.path.join(repo.root, _records(repo, repo.find_dataset("calexp", OTHER))[0].path)
        with open(os.path.join(other, "stray"), "w") as f:
            f.write("x")
        assert len(repo.verify()) == 2
        os.unlink(os.path.join(other, "stray"))
        os.unlink(os.path.join(other, "mask", "c", "0", "0"))
        assert {p.problem for p in repo.verify()} == {"checksum"}
        import shutil

        shutil.rmtree(other)
        assert "missing" in {p.problem for p in repo.verify()}


def test_existing_file_at_the_path_is_a_conflict_and_nothing_leaks(repo):
    """A leftover at the final path (crashed write): the put fails, the leftover and registry stay as they were."""
    ref = repo.put(make_exposure(), "calexp", DATA_ID)
    (record,) = _records(repo, ref)
    target = os.path.join(repo.root, record.path.replace("_12", "_14").replace("/r/", "/g/"))
    os.makedirs(target if repo.format == "zarr" else os.path.dirname(target), exist_ok=True)
    if repo.format == "zarr":
        open(os.path.join(target, "zarr.json"), "w").close()
    else:
        open(target, "w").close()
    before = snapshot_repo(repo)
    with pytest.raises(ConflictError, match="already exists but is not registered"):
        repo.put(make_exposure(), "calexp", OTHER)
    assert snapshot_repo(repo) == before
    leftovers = [n for _, dirs, files in os.walk(repo.root) for n in dirs + files if n.startswith(".tmp-")]
    assert leftovers == []


def test_invalid_formatter_override_is_refused(repo_factory):
    from butler.instrument import SimCam

    created = repo_factory("bad", formatters={"calexp": "npy"})
    butler = Butler(created.root, run=RUN)
    butler.register_instrument(SimCam())
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"}])
    butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    with pytest.raises(StorageClassError, match=r"cannot use formatter 'npy'; allowed: \['zarr', 'exposure_fits'\]"):
        butler.put(Exposure(np.zeros((4, 4), np.float32)), "calexp", DATA_ID)


def test_source_catalog_columns_and_filters(zarr_repo):
    from astropy.table import Table

    repo = zarr_repo
    n = 50
    table = Table({"id": np.arange(n), "ra": np.linspace(10, 11, n), "dec": np.linspace(-5, -4, n),
                   "flux": np.arange(n, dtype=np.float32) * 10.0})
    table["flux"].unit = "nJy"
    repo.put(table, "src", DATA_ID)
    got = repo.get("src", DATA_ID, parameters={"columns": ["ra", "dec", "flux"]})
    assert isinstance(got, Table) and got.colnames == ["ra", "dec", "flux"]
    assert str(got["flux"].unit) == "nJy"
    bright = repo.get("src", DATA_ID, parameters={"columns": ["id", "flux"], "filters": [("flux", ">=", 400.0)]})
    assert list(bright["id"]) == list(range(40, 50))
    with pytest.raises(StorageClassError, match=r"unknown column\(s\) \['mag'\]"):
        repo.get("src", DATA_ID, parameters={"columns": ["mag"]})
    with pytest.raises(StorageClassError, match="bbox"):
        repo.get("src", DATA_ID, parameters={"bbox": CUT})


@pytest.mark.parametrize("replace", [False, True])
def test_a_component_given_twice_in_one_put_many_is_one_clear_conflict(repo_factory, replace):
    """Refused before any I/O (with replace=True it was taken for a lost race and retried 8 times)."""
    repo = _make_repo(repo_factory, "exposure_fits")
    repo.put(make_exposure(), "calexp", DATA_ID)
    before = snapshot_repo(repo)
    with pytest.raises(ConflictError, match="component 'photo_calib' of 'calexp' .* is given twice in one put_many"):
        repo.put_many([(2.5, "calexp.photo_calib", DATA_ID), (3.5, "calexp.photo_calib", DATA_ID)], replace=replace)
    assert snapshot_repo(repo) == before
