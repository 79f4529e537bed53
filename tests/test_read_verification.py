"""Verified reads: every file ``get`` reads is checked against the size and checksum recorded at write time.

One case per single-file formatter (json, yaml, npy, FITS image, bytes, parquet, camera json, FITS
exposure): a same-size byte flip and a truncation are a `ChecksumError` naming the dataset type,
data ID, run and file, on every read path (whole, component, parameters, deferred), and the read
changes nothing. ``Butler(..., verify_reads=False)`` reads the damaged bytes unchecked. Zarr
stores: an edited ``zarr.json`` (root or plane), a lost or edited manifest file and a flipped chunk
byte fail every read path that reads them, and ``Butler.verify`` names the damaged member.
Components written on their own are verified like any file. The checks do not depend on the
registry backend: SQLite only.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from test_exposure import assert_same_wcs, make_exposure, make_wcs

from butler import Butler, DatasetType
from butler.errors import ChecksumError
from butler.exposure import Box
from butler.testing import RepoFactory, snapshot_repo

RUN = "u/tester/reads"
DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}
SHAPE = (64, 80)
BBOX = Box(x0=8, y0=4, width=16, height=12)


@dataclass(frozen=True)
class Case:
    """One dataset type read through one formatter."""

    id: str
    storage_class: str
    make: Callable[[], Any]
    same: Callable[[Any, Any], bool]
    formatter: str | None = None  # the repository's override, if not the storage class's default
    dimensions: tuple[str, ...] = ("instrument", "visit", "detector")
    partial: tuple[dict[str, Any], ...] = field(default=())  # get() keyword sets that read part of the file

    @property
    def dataset_type(self) -> str:
        return f"t_{self.id}"

    def data_id(self) -> dict[str, Any]:
        return {k: DATA_ID[k] for k in self.dimensions}


def _table() -> Any:
    import pyarrow as pa

    return pa.table({"a": np.arange(50), "b": np.linspace(0.0, 1.0, 50)})


def _camera() -> Any:
    from butler.instrument import Camera, SimCam

    return Camera.from_instrument(SimCam())


def _same_exposure(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.photo_calib == b.photo_calib)


CASES = [
    Case("json", "StructuredData", lambda: {"a": 123456, "b": [1, 2, 3], "c": "text"}, lambda a, b: a == b),
    Case("yaml", "StructuredDataYaml", lambda: {"a": 123456, "b": [1, 2, 3]}, lambda a, b: a == b),
    Case("npy", "NumpyArray", lambda: np.arange(200, dtype=np.float64).reshape(20, 10), np.array_equal),
    Case("fits_image", "NumpyArray", lambda: np.arange(200, dtype=np.float32).reshape(20, 10), np.array_equal,
         formatter="fits"),
    Case("bytes", "Bytes", lambda: bytes(range(256)) * 4, lambda a, b: a == b),
    Case("parquet", "ArrowTable", _table, lambda a, b: a.equals(b), partial=({"parameters": {"columns": ["a"]}},)),
    Case("camera_json", "Camera", _camera, lambda a, b: a == b, dimensions=("instrument",)),
    Case("exposure_fits", "Exposure", lambda: make_exposure(SHAPE), _same_exposure, formatter="exposure_fits",
         partial=({"component": "wcs"}, {"component": "photo_calib"}, {"parameters": {"bbox": BBOX}},
                  {"parameters": {"lazy": True}})),
]


@pytest.fixture
def factory(tmp_path):
    made = RepoFactory(str(tmp_path), "sqlite")
    yield made
    made.cleanup()


def _make_repo(factory: RepoFactory, cases: list[Case] = CASES) -> Butler:
    from butler.instrument import SimCam

    created = factory(formatters={c.dataset_type: c.formatter for c in cases if c.formatter})
    butler = Butler(created.root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
         "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
    ])
    for case in cases:
        butler.register_dataset_type(DatasetType(case.dataset_type, case.dimensions, case.storage_class))
    butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit", "detector"), "Exposure"))
    return butler


@pytest.fixture
def repo(factory) -> Butler:
    return _make_repo(factory)


def _records(butler: Butler, ref: Any) -> list[Any]:
    registry = butler.registry
    with registry.db.transaction() as conn:
        return registry.datasets.files_of(conn, [ref.id])[ref.id]


def _path(butler: Butler, ref: Any, component: str = "") -> str:
    (record,) = [r for r in _records(butler, ref) if r.component == component]
    return os.path.join(butler.root, record.path)


def _flip(path: str, offset: int | None = None) -> None:
    """Change one byte in place (same size)."""
    size = os.path.getsize(path)
    offset = size // 2 if offset is None else offset % size
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _replace_once(path: str, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in a file, where it occurs exactly once."""
    assert len(old) == len(new)
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(old) == 1, (old, data.count(old))
    with open(path, "wb") as f:
        f.write(data.replace(old, new))


def _names_dataset(ref: Any, path: str, kind: str = "") -> str:
    """What every ChecksumError of a read says: the dataset type, data ID, run, what is wrong and the file."""
    return (rf"{re.escape(ref.dataset_type.name)} {re.escape(str(ref.data_id))} in run {re.escape(repr(ref.run))} "
            rf"is damaged: .*{kind}.*{re.escape(path)}")


def _unverified(butler: Butler) -> Butler:
    return Butler(butler.root, collections=[RUN], verify_reads=False)


# -- single files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_flipped_byte_fails_every_read_and_changes_nothing(repo, case):
    obj = case.make()
    ref = repo.put(obj, case.dataset_type, case.data_id())
    assert case.same(repo.get(ref), obj)  # verified and intact
    path = _path(repo, ref)
    _flip(path)
    before = snapshot_repo(repo)
    message = _names_dataset(ref, path, "checksum mismatch for ")
    with pytest.raises(ChecksumError, match=message):
        repo.get(case.dataset_type, case.data_id())
    with pytest.raises(ChecksumError, match=message):
        repo.get(ref)
    with pytest.raises(ChecksumError, match=message):
        repo.get_deferred(ref).get()
    for kwargs in case.partial:  # partial reads verify the whole file too
        with pytest.raises(ChecksumError, match=message):
            repo.get(ref, **kwargs)
    assert snapshot_repo(repo) == before
    assert [(p.path, p.problem) for p in repo.verify()] == [(_records(repo, ref)[0].path, "checksum")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_truncated_file_is_a_checksum_error_not_a_decode_error(repo, case):
    ref = repo.put(case.make(), case.dataset_type, case.data_id())
    path = _path(repo, ref)
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    with pytest.raises(ChecksumError, match=_names_dataset(ref, path) + rf".*recorded {size} bytes, found "
                                                                         rf"{size // 2} \(the file was truncated"):
        repo.get(ref)
    for kwargs in case.partial:
        with pytest.raises(ChecksumError, match="the file was truncated after it was written") as raised:
            repo.get(ref, **kwargs)
        assert not isinstance(raised.value, ValueError)  # not a JSONDecodeError, not a parser's ValueError


def test_verify_reads_false_reads_damaged_bytes_unchecked(repo):
    """The opt-out skips the check: what the damaged bytes decode to is the caller's risk."""
    ref = repo.put({"value": 123456}, "t_json", DATA_ID)
    array_ref = repo.put(np.arange(10, dtype=np.int64), "t_npy", DATA_ID)
    _replace_once(_path(repo, ref), b"123456", b"123457")
    _flip(_path(repo, array_ref), -1)  # the last byte of the last element
    fast = _unverified(repo)
    assert fast.verify_reads is False and repo.verify_reads is True
    assert fast.get(ref) == {"value": 123457}
    assert fast.get_deferred(ref).get() == {"value": 123457}
    assert fast.get(array_ref)[-1] != 9
    restored = pickle.loads(pickle.dumps(fast))  # a pickled Butler keeps the choice (workers read alike)
    assert restored.verify_reads is False and restored.get(ref) == {"value": 123457}
    assert pickle.loads(pickle.dumps(repo)).verify_reads is True
    with pytest.raises(ChecksumError):
        repo.get(ref)
    os.truncate(_path(repo, ref), 5)
    with pytest.raises(json.JSONDecodeError):  # unverified, a truncated file is whatever the decoder makes of it
        fast.get(ref)


def test_verified_arrays_are_writable_copies_of_nothing(repo):
    """npy arrays decoded from the verified bytes are writable and independent of later reads."""
    ref = repo.put(np.arange(12, dtype=np.float32).reshape(3, 4), "t_npy", DATA_ID)
    first, second = repo.get(ref), repo.get(ref)
    first[0, 0] = 99.0
    assert second[0, 0] == 0.0 and first.flags.writeable
    fortran = np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4))
    ref = repo.put(fortran, "t_npy", DATA_ID, replace=True)
    got = repo.get(ref)
    np.testing.assert_array_equal(got, fortran)
    assert got.dtype == fortran.dtype


# -- zarr stores ----------------------------------------------------------------------------------
ZARR_READS = [
    {}, {"component": "wcs"}, {"component": "photo_calib"}, {"component": "metadata"}, {"component": "image"},
    {"component": "psf"}, {"parameters": {"bbox": BBOX}}, {"component": "mask", "parameters": {"bbox": BBOX}},
    {"parameters": {"lazy": True}},
]


@pytest.fixture
def calexp(repo):
    exposure = make_exposure(SHAPE)
    ref = repo.put(exposure, "calexp", DATA_ID)
    return repo, ref, _path(repo, ref), exposure


def test_an_edited_zarr_json_fails_every_read_and_verify_names_it(calexp):
    repo, ref, store, _ = calexp
    root_json = os.path.join(store, "zarr.json")
    _replace_once(root_json, b'"photo_calib": 1.7', b'"photo_calib": 1.8')  # parses fine: only the checksum tells
    message = _names_dataset(ref, root_json, "checksum mismatch for ")
    for kwargs in ZARR_READS:
        with pytest.raises(ChecksumError, match=message):
            repo.get("calexp", DATA_ID, **kwargs)
    with pytest.raises(ChecksumError, match=message):
        repo.get_deferred("calexp", DATA_ID).get(parameters={"bbox": BBOX})
    (problem,) = repo.verify()
    record_path = _records(repo, ref)[0].path
    assert (problem.path, problem.problem, problem.member) == (record_path, "checksum", "zarr.json")
    assert root_json in problem.detail
    assert _unverified(repo).get("calexp", DATA_ID, component="photo_calib") == 1.8  # the opt-out reads it


def test_an_edited_plane_zarr_json_fails_the_reads_of_that_plane(calexp):
    repo, ref, store, exposure = calexp
    plane_json = os.path.join(store, "image", "zarr.json")
    _replace_once(plane_json, b'"fill_value": 0.0', b'"fill_value": 1.0')
    message = _names_dataset(ref, plane_json)
    for kwargs in ({}, {"component": "image"}, {"parameters": {"bbox": BBOX}}, {"parameters": {"lazy": True}}):
        with pytest.raises(ChecksumError, match=message):
            repo.get("calexp", DATA_ID, **kwargs)
    # Reads that do not parse that document still work (each read checks what it reads).
    assert_same_wcs(repo.get("calexp", DATA_ID, component="wcs"), exposure.wcs)
    np.testing.assert_array_equal(repo.get("calexp", DATA_ID, component="variance"), exposure.variance)
    assert [(p.member, p.problem) for p in repo.verify()] == [("image/zarr.json", "checksum")]


def test_a_flipped_chunk_byte_is_a_checksum_error_and_verify_names_the_shard(calexp):
    repo, ref, store, exposure = calexp
    shard = os.path.join(store, "variance", "c", "0", "0")
    _flip(shard, 100)  # inside the first chunk
    with pytest.raises(ChecksumError, match=_names_dataset(ref, shard)):
        repo.get("calexp", DATA_ID)
    with pytest.raises(ChecksumError, match=re.escape(shard)):
        repo.get("calexp", DATA_ID, component="variance", parameters={"lazy": True}).compute()
    np.testing.assert_array_equal(repo.get("calexp", DATA_ID, component="image"), exposure.image)
    assert [(p.member, p.problem) for p in repo.verify()] == [("variance/c/0/0", "checksum")]


def test_a_lost_or_edited_manifest_file_fails_reads_and_verify_says_so(calexp):
    repo, ref, store, exposure = calexp
    manifest = os.path.join(store, "butler-manifest.tsv")
    with open(manifest, "rb") as f:
        original = f.read()
    os.unlink(manifest)
    for kwargs in ({}, {"component": "wcs"}, {"parameters": {"bbox": BBOX}}):
        with pytest.raises(ChecksumError, match=_names_dataset(ref, manifest) + " is missing"):
            repo.get("calexp", DATA_ID, **kwargs)
    (problem,) = repo.verify()
    assert problem.member == "butler-manifest.tsv" and "every other file matches the record" in problem.detail
    with open(manifest, "wb") as f:
        f.write(original.replace(b"zarr.json\t", b"zarr.jsoN\t"))
    with pytest.raises(ChecksumError, match=_names_dataset(ref, manifest, "checksum mismatch for ")):
        repo.get("calexp", DATA_ID, component="wcs")
    assert [p.member for p in repo.verify()] == ["butler-manifest.tsv"]
    with open(manifest, "wb") as f:
        f.write(original)
    assert repo.verify() == [] and _same_exposure(repo.get("calexp", DATA_ID), exposure)


def test_a_file_added_to_or_removed_from_a_store_is_named_by_verify(calexp):
    repo, _, store, _ = calexp
    with open(os.path.join(store, "stray"), "w") as f:
        f.write("x")
    os.unlink(os.path.join(store, "psf", "c", "0", "0"))
    problems = repo.verify()
    assert [(p.member, p.problem) for p in problems] == [("psf/c/0/0", "checksum"), ("stray", "checksum")]
    assert "is missing from the store" in problems[0].detail and "not in the store's manifest" in problems[1].detail


def test_a_store_written_before_manifest_files_is_verified_as_far_as_it_can_be(calexp):
    """An old store: no manifest file, no 'manifest' attribute, the record holds the checksum of the lines alone."""
    import sqlalchemy as sa

    from butler.datastore import checksum_file

    repo, ref, store, exposure = calexp
    os.unlink(os.path.join(store, "butler-manifest.tsv"))
    root_json = os.path.join(store, "zarr.json")
    with open(root_json) as f:
        doc = json.load(f)
    del doc["attributes"]["butler"]["manifest"]
    with open(root_json, "w") as f:
        json.dump(doc, f)
    entries = {}
    for dirpath, _, names in os.walk(store):
        for name in names:
            full = os.path.join(dirpath, name)
            entries[os.path.relpath(full, store).replace(os.sep, "/")] = (os.path.getsize(full), checksum_file(full))
    lines = "".join(f"{p}\t{n}\t{c}\n" for p, (n, c) in sorted(entries.items())).encode()
    legacy = "manifest:xxh3_128:" + __import__("xxhash").xxh3_128_hexdigest(lines)
    registry = repo.registry
    table = registry.schema.file_record
    with registry.db.transaction() as conn:
        conn.execute(sa.update(table).where(table.c.dataset_id == ref.id)
                     .values(checksum=legacy, file_size=sum(n for n, _ in entries.values())))
    assert _same_exposure(repo.get("calexp", DATA_ID), exposure)  # old repositories stay readable
    assert repo.get("calexp", DATA_ID, component="photo_calib") == 1.7
    assert repo.verify() == []
    shard = os.path.join(store, "image", "c", "0", "0")
    _flip(shard, 100)
    with pytest.raises(ChecksumError, match=_names_dataset(ref, shard)):  # chunks still carry their crc32c
        repo.get("calexp", DATA_ID, component="image")
    (problem,) = repo.verify()
    assert (problem.member, problem.problem) == ("", "checksum") and "which cannot be told" in problem.detail


# -- components written on their own --------------------------------------------------------------
def test_a_component_written_on_its_own_is_verified(calexp):
    repo, ref, _, exposure = calexp
    new_wcs = make_wcs(crval=(11.0, 21.0))
    repo.put(new_wcs, "calexp.wcs", DATA_ID)
    repo.put(2.5, "calexp.photo_calib", DATA_ID)
    assert_same_wcs(repo.get("calexp", DATA_ID).wcs, new_wcs)
    wcs_file = _path(repo, ref, "wcs")
    _flip(wcs_file)
    message = rf"the 'wcs' file of {_names_dataset(ref, wcs_file)}"
    for kwargs in ({}, {"component": "wcs"}, {"parameters": {"bbox": BBOX}}, {"component": "wcs",
                                                                            "parameters": {"bbox": BBOX}}):
        with pytest.raises(ChecksumError, match=message):
            repo.get("calexp", DATA_ID, **kwargs)
    np.testing.assert_array_equal(repo.get("calexp", DATA_ID, component="image"), exposure.image)  # not read
    calib_file = _path(repo, ref, "photo_calib")
    _replace_once(calib_file, b"2.5", b"3.5")
    with pytest.raises(ChecksumError, match=rf"the 'photo_calib' file of {_names_dataset(ref, calib_file)}"):
        repo.get("calexp", DATA_ID, component="photo_calib")
    assert _unverified(repo).get("calexp", DATA_ID, component="photo_calib") == 3.5
    assert sorted(p.path.rsplit(".", 2)[-2] for p in repo.verify()) == ["photo_calib", "wcs"]


def test_a_component_over_a_fits_exposure_is_verified_and_so_is_the_exposure(factory):
    case = next(c for c in CASES if c.id == "exposure_fits")
    repo = _make_repo(factory, [case])
    ref = repo.put(case.make(), case.dataset_type, DATA_ID)
    new_wcs = make_wcs(crval=(11.0, 21.0))
    repo.put(new_wcs, f"{case.dataset_type}.wcs", DATA_ID)
    cut = repo.get(ref, component="wcs", parameters={"bbox": BBOX})  # the bounds come from the verified exposure
    assert cut is not None
    exposure_file = _path(repo, ref)
    _flip(exposure_file)
    with pytest.raises(ChecksumError, match=_names_dataset(ref, exposure_file)):
        repo.get(ref, component="wcs", parameters={"bbox": BBOX})
    assert_same_wcs(repo.get(ref, component="wcs"), new_wcs)  # reads only the WCS file, which is intact
