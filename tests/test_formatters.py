"""Storage classes, formatters and checksummed atomic file I/O of the datastore."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import hypothesis.extra.numpy as hnp
import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler.datastore import (
    CHECKSUM_ALGORITHM,
    Formatter,
    StorageClass,
    _formatters,
    _storage_class,
    checksum_bytes,
    checksum_file,
    formatter_for,
    get_formatter,
    get_storage_class,
    known_formatters,
    register_formatter,
    register_storage_class,
    stage,
    verify_bytes,
    verify_file,
    write_atomic,
)
from butler.errors import ButlerError, ChecksumError, ConflictError, StorageClassError

REPO_ROOT = Path(__file__).resolve().parents[1]


def leftovers(directory: Path) -> list[str]:
    """Temporary files left anywhere under ``directory``."""
    return [p.name for p in directory.rglob(".tmp-*")]


# -- import cost --------------------------------------------------------------------------


def test_import_does_not_load_heavy_modules() -> None:
    code = (
        "import sys\n"
        "import butler.datastore as d\n"
        "sc = d.get_storage_class('NumpyArray')\n"
        "try:\n"
        "    sc.validate({'a': 1})\n"
        "except TypeError:\n"
        "    pass\n"
        "d.formatter_for(d.get_storage_class('StructuredData')).to_bytes({'a': 1})\n"
        "heavy = ('numpy', 'pyarrow', 'astropy', 'yaml')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# -- storage classes ------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register storage classes and formatters without leaking them."""
    monkeypatch.setattr(_storage_class, "_registry", dict(_storage_class._registry))
    monkeypatch.setattr(_formatters, "_paths", dict(_formatters._paths))
    monkeypatch.setattr(_formatters, "_classes", dict(_formatters._classes))
    monkeypatch.setattr(_formatters, "_bound", dict(_formatters._bound))


def test_unknown_storage_class_lists_known() -> None:
    with pytest.raises(StorageClassError, match=r"unknown storage class 'Nope'; known: \[.*'NumpyArray'"):
        get_storage_class("Nope")


@pytest.mark.usefixtures("scratch_registry")
def test_register_storage_class_conflicts() -> None:
    sc = StorageClass(name="Thing", pytype="builtins.dict", formatter="json")
    register_storage_class(sc)
    register_storage_class(StorageClass(name="Thing", pytype="builtins.dict", formatter="json"))
    other = StorageClass(name="Thing", pytype="builtins.list", formatter="json")
    with pytest.raises(ConflictError, match="'Thing' is already registered"):
        register_storage_class(other)
    assert get_storage_class("Thing") is sc
    register_storage_class(other, clobber=True)
    assert get_storage_class("Thing") is other


def test_storage_class_is_immutable_and_hashable() -> None:
    components = {"wcs": "StructuredData"}
    sc = StorageClass(name="X", pytype="builtins.dict", formatter="json", components=components)
    components["psf"] = "Bytes"
    assert dict(sc.components) == {"wcs": "StructuredData"}
    same = StorageClass(
        name="X", pytype="builtins.dict", formatter="json", components={"wcs": "StructuredData"}
    )
    assert {sc: 1}[same] == 1
    assert sc.component("wcs") is get_storage_class("StructuredData")
    with pytest.raises(StorageClassError, match=r"no component 'psf'; components: \['wcs'\]"):
        sc.component("psf")


def test_storage_class_and_formatter_pickle() -> None:
    sc = StorageClass(name="X", pytype="builtins.dict", formatter="json", components={"a": "Bytes"})
    assert pickle.loads(pickle.dumps(sc)) == sc
    formatter = formatter_for(get_storage_class("AstropyTable"), "fits")
    clone = pickle.loads(pickle.dumps(formatter))
    assert type(clone) is type(formatter) and clone.storage_class == formatter.storage_class


@pytest.mark.parametrize(
    ("name", "obj", "expected", "got"),
    [
        ("NumpyArray", {"a": 1}, "numpy.ndarray", "dict"),
        ("StructuredData", np.zeros(3), "dict or list", "numpy.ndarray"),
        ("ArrowTable", Table({"a": [1]}), "pyarrow.Table", "astropy.table.table.Table"),
        ("AstropyTable", pa.table({"a": [1]}), "astropy.table.Table", "pyarrow.lib.Table"),
        ("Bytes", "text", "bytes or bytearray or memoryview", "str"),
    ],
)
def test_validate_wrong_type(name: str, obj: Any, expected: str, got: str) -> None:
    sc = get_storage_class(name)
    message = f"dataset type storage class '{name}' expects {expected}, got {got}"
    with pytest.raises(StorageClassError, match=f"^{message}$"):
        sc.validate(obj)
    with pytest.raises(TypeError, match="dataset type 'calexp' storage class"):
        sc.validate(obj, dataset_type="calexp")


def test_validate_accepts() -> None:
    get_storage_class("StructuredData").validate({"a": 1})
    get_storage_class("StructuredData").validate([1, 2])
    get_storage_class("NumpyArray").validate(np.zeros(2))
    get_storage_class("ArrowTable").validate(pa.table({"a": [1]}))
    get_storage_class("AstropyTable").validate(Table({"a": [1]}))
    get_storage_class("Bytes").validate(b"x")


def test_unknown_parameter_lists_supported() -> None:
    arrow = formatter_for(get_storage_class("ArrowTable"))
    supported = r"parameter\(s\) \['bbox'\]; supported: \['columns', 'filters'\]"
    with pytest.raises(StorageClassError, match=supported):
        arrow.from_bytes(b"", parameters={"bbox": (0, 0, 1, 1)})
    astropy_table = formatter_for(get_storage_class("AstropyTable"))
    with pytest.raises(StorageClassError, match=r"\['filters'\]; supported: \['columns'\]"):
        astropy_table.read("/does/not/matter", parameters={"filters": []})
    with pytest.raises(StorageClassError, match="supported: none"):
        get_formatter("json").from_bytes(b"{}", parameters={"columns": ["a"]})
    with pytest.raises(StorageClassError, match="does not accept parameter"):
        get_storage_class("NumpyArray").validate_parameters({"columns": ["a"]})


def test_unknown_component() -> None:
    with pytest.raises(StorageClassError, match="has no component 'wcs'; components: none"):
        get_formatter("npy").read("/does/not/matter", component="wcs")


def test_formatter_selection() -> None:
    sc = get_storage_class("NumpyArray")
    assert formatter_for(sc).name == "npy"
    assert formatter_for(sc, "fits").name == "fits"
    assert formatter_for(sc) is formatter_for(sc)
    allowed = r"'NumpyArray' cannot use formatter 'json'; allowed: \['npy', 'fits'\]"
    with pytest.raises(StorageClassError, match=allowed):
        formatter_for(sc, "json")
    known = r"unknown formatter 'hdf5'; known: \['bytes', 'camera_json', 'camera_yaml', 'exposure_fits', 'fits'"
    with pytest.raises(StorageClassError, match=known):
        get_formatter("hdf5")
    assert {"json", "yaml", "npy", "parquet", "fits", "bytes"} <= set(known_formatters())


@pytest.mark.usefixtures("scratch_registry")
def test_register_formatter() -> None:
    class Upper(Formatter):
        name = "upper"
        extension = ".txt"

        def to_bytes(self, obj: Any) -> bytes:
            return obj.upper().encode()

        def _from_bytes(self, data: bytes, component: Any, parameters: Any) -> Any:
            return data.decode()

    register_formatter(Upper)
    assert get_formatter("upper").from_bytes(get_formatter("upper").to_bytes("ab")) == "AB"
    with pytest.raises(ConflictError, match="formatter 'json' is already registered"):
        register_formatter(Upper, name="json")


@pytest.mark.parametrize(
    ("formatter", "obj"),
    [("json", {1, 2}), ("json", {"a": object()}), ("yaml", {"a": object()}), ("npy", [1, 2]),
     ("npy", np.array([object()])), ("parquet", {"a": [1]}), ("fits", {"a": 1}), ("bytes", "str")],
)
def test_formatter_refuses_wrong_objects(formatter: str, obj: Any) -> None:
    with pytest.raises(StorageClassError, match=f"formatter '{formatter}'"):
        get_formatter(formatter).to_bytes(obj)


# -- round trips ----------------------------------------------------------------------------


def same_table(a: Table, b: Table) -> bool:
    return a.colnames == b.colnames and all(
        np.array_equal(np.asarray(a[c]), np.asarray(b[c])) and a[c].unit == b[c].unit for c in a.colnames
    )


@dataclass(frozen=True)
class Case:
    storage_class: str
    formatter: str
    obj: Any
    equal: Callable[[Any, Any], bool] = lambda a, b: type(a) is type(b) and a == b


def _array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)


SAMPLE_TABLE = Table({"a": [1, 2, 3], "b": [1.5, 2.5, 3.5], "s": ["x", "yy", "zzz"]})
SAMPLE_TABLE["b"].unit = u.m
CASES = [
    Case("StructuredData", "json", {"a": 1, "b": [1.5, None, "é"], "c": {"d": True}}),
    Case("StructuredData", "json", [1, 2, {"x": "y"}]),
    Case("StructuredData", "yaml", {"a": 1, "b": [1.5, None, "é"]}),
    Case("StructuredDataYaml", "yaml", {"z": 1, "a": {"nested": [1, 2]}}),
    Case("StructuredDataYaml", "json", {"z": 1}),
    Case("NumpyArray", "npy", np.arange(12, dtype="<i4").reshape(3, 4), _array_equal),
    Case("NumpyArray", "fits", np.arange(12, dtype=np.float32).reshape(3, 4), _array_equal),
    Case("ArrowTable", "parquet", pa.table({"a": [1, 2], "s": ["x", None]}), lambda a, b: a.equals(b)),
    Case("AstropyTable", "parquet", SAMPLE_TABLE, same_table),
    Case("AstropyTable", "fits", SAMPLE_TABLE, same_table),
    Case("Bytes", "bytes", b"\x00\x01raw", lambda a, b: a == b),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.storage_class}-{c.formatter}")
def test_round_trip(case: Case, tmp_path: Path) -> None:
    sc = get_storage_class(case.storage_class)
    sc.validate(case.obj)
    formatter = formatter_for(sc, case.formatter)
    path = tmp_path / f"dataset{formatter.extension}"
    size, checksum = formatter.write(case.obj, path)
    assert (size, checksum) == (path.stat().st_size, checksum_file(path))
    from_file = formatter.read(path)
    from_bytes = formatter.from_bytes(path.read_bytes())
    for result in (from_file, from_bytes):
        sc.validate(result)
        assert case.equal(case.obj, result), result


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(), JSON_VALUES, max_size=6))
def test_json_round_trip_property(obj: dict[str, Any]) -> None:
    formatter = formatter_for(get_storage_class("StructuredData"))
    result = formatter.from_bytes(formatter.to_bytes(obj))
    assert result == obj
    assert list(result) == list(obj)  # key order kept


NPY_DTYPES = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
    | hnp.integer_dtypes(endianness=">")
    | hnp.floating_dtypes(endianness=">")
)


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(NPY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
def test_npy_round_trip_property(array: np.ndarray) -> None:
    formatter = formatter_for(get_storage_class("NumpyArray"))
    result = formatter.from_bytes(formatter.to_bytes(array))
    assert result.dtype == array.dtype and result.shape == array.shape
    assert result.tobytes() == array.tobytes()


FITS_DTYPES = st.sampled_from(["u1", "i1", "<i2", ">i2", "<u2", "<i4", ">i8", "<f4", ">f8", "<u4"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(FITS_DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)))
def test_fits_image_round_trip_property(array: np.ndarray) -> None:
    formatter = formatter_for(get_storage_class("NumpyArray"), "fits")
    result = formatter.from_bytes(formatter.to_bytes(array))
    assert result.dtype == array.dtype.newbyteorder("=") and result.dtype.isnative
    assert result.shape == array.shape
    assert np.array_equal(result, array, equal_nan=True)


def test_parquet_astropy_table_keeps_metadata(tmp_path: Path) -> None:
    table = Table(
        {
            "i": np.array([1, 2, 3], dtype=">i2"),
            "s": ["a", "bb", "ccc"],
            "v": np.arange(12.0).reshape(3, 2, 2),
            "m": MaskedColumn([1.0, 2.0, 3.0], mask=[False, True, False]),
            "ms": MaskedColumn(["a", "b", "c"], mask=[False, True, False]),
        },
        meta={"exptime": np.float32(30.0), "note": "deep"},
    )
    table["v"].unit = u.nJy
    table["i"].description = "index"
    formatter = formatter_for(get_storage_class("AstropyTable"))
    path = tmp_path / "t.parquet"
    formatter.write(table, path)
    result = formatter.read(path)
    assert type(result) is Table
    assert result.meta == {"exptime": 30.0, "note": "deep"}
    for name in table.colnames:
        assert result[name].dtype == table[name].dtype, name
        assert result[name].unit == table[name].unit
        assert result[name].description == table[name].description
        assert type(result[name]) is type(table[name])
    assert result["v"].shape == (3, 2, 2)
    assert list(result["m"].mask) == [False, True, False]
    assert list(result["ms"].mask) == [False, True, False]
    assert np.array_equal(result["v"], table["v"])


def test_parquet_reads_only_requested_columns(tmp_path: Path) -> None:
    arrow = pa.table({"a": [1, 2, 3], "b": [4.0, 5.0, 6.0], "c": ["x", "y", "z"]})
    formatter = formatter_for(get_storage_class("ArrowTable"))
    path = tmp_path / "a.parquet"
    formatter.write(arrow, path)
    assert formatter.read(path, parameters={"columns": ["c", "a"]}).column_names == ["c", "a"]
    assert formatter.from_bytes(path.read_bytes(), parameters={"columns": "b"}).column_names == ["b"]
    filtered = formatter.read(path, parameters={"columns": ["a"], "filters": [("b", ">", 4.5)]})
    assert filtered.column_names == ["a"] and filtered["a"].to_pylist() == [2, 3]
    from_bytes = formatter.from_bytes(path.read_bytes(), parameters={"filters": [("a", "=", 1)]})
    assert from_bytes["c"].to_pylist() == ["x"]
    as_astropy = formatter_for(get_storage_class("AstropyTable")).read(path, parameters={"columns": ["b"]})
    assert isinstance(as_astropy, Table) and as_astropy.colnames == ["b"]
    with pytest.raises(StorageClassError, match=r"unknown column\(s\) \['nope'\]; available: \['a', 'b', 'c'\]"):
        formatter.read(path, parameters={"columns": ["a", "nope"]})


def test_fits_table_columns(tmp_path: Path) -> None:
    formatter = formatter_for(get_storage_class("AstropyTable"), "fits")
    path = tmp_path / "t.fits"
    formatter.write(SAMPLE_TABLE, path)
    assert formatter.read(path, parameters={"columns": ["s", "b"]}).colnames == ["s", "b"]
    with pytest.raises(StorageClassError, match="unknown column"):
        formatter.read(path, parameters={"columns": ["q"]})


def test_fits_written_by_other_software(tmp_path: Path) -> None:
    image = np.arange(6, dtype=">f4").reshape(2, 3)
    hdus = fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI"), fits.BinTableHDU(SAMPLE_TABLE, name="CAT")]
    )
    path = tmp_path / "foreign.fits"
    hdus.writeto(path)
    unbound = get_formatter("fits").read(path)
    assert np.array_equal(unbound, image) and unbound.dtype == np.dtype("float32")
    assert np.array_equal(formatter_for(get_storage_class("NumpyArray"), "fits").read(path), image)
    table = formatter_for(get_storage_class("AstropyTable"), "fits").read(path)
    assert same_table(SAMPLE_TABLE, table)
    only_table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(SAMPLE_TABLE)]).writeto(only_table)
    with pytest.raises(StorageClassError, match="holds an image"):
        formatter_for(get_storage_class("NumpyArray"), "fits").read(only_table)


# -- atomic writes and staging ---------------------------------------------------------------


def test_write_atomic_returns_size_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.bin"
    size, checksum = write_atomic(str(path), b"hello")
    assert (size, checksum) == (5, checksum_bytes(b"hello"))
    assert checksum.startswith(f"{CHECKSUM_ALGORITHM}:") and len(checksum) == len("xxh3_128:") + 32
    assert path.read_bytes() == b"hello"
    assert leftovers(tmp_path) == []


def test_write_atomic_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    write_atomic(path, b"first")
    with pytest.raises(FileExistsError, match=f"refusing to overwrite existing file {path}"):
        write_atomic(path, b"second")
    assert path.read_bytes() == b"first"
    assert write_atomic(path, b"second", overwrite=True) == (6, checksum_bytes(b"second"))
    assert path.read_bytes() == b"second"
    assert leftovers(tmp_path) == []


def test_no_overwrite_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "c.bin"
    write_atomic(path, b"first")
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second")
    assert path.read_bytes() == b"first"
    assert leftovers(tmp_path) == []


def test_write_atomic_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "file" / "x.json", b"{}")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "file" / "sub" / "x.json", b"{}")
    assert leftovers(tmp_path) == []


def test_write_atomic_failure_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "x.bin", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_recreates_removed_directory(tmp_path: Path) -> None:
    write_atomic(tmp_path / "run" / "a.bin", b"1")
    shutil.rmtree(tmp_path / "run")
    write_atomic(tmp_path / "run" / "b.bin", b"2")
    assert (tmp_path / "run" / "b.bin").read_bytes() == b"2"


def test_stage_commit_and_discard(tmp_path: Path) -> None:
    path = tmp_path / "d" / "x.json"
    staged = stage(path, b"{}")
    assert not path.exists() and Path(staged.temp_path).name.startswith(".tmp-")
    assert (staged.size, staged.checksum) == (2, checksum_bytes(b"{}"))
    staged.commit()
    assert path.read_bytes() == b"{}" and leftovers(tmp_path) == []
    staged.discard()  # no-op after commit
    assert path.exists()

    other = stage(tmp_path / "d" / "y.json", b"[]")
    other.discard()
    other.discard()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.json"]
    with pytest.raises(RuntimeError, match="already discarded"):
        other.commit()


def test_stage_context_manager_discards_on_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError), stage(tmp_path / "x.bin", b"data"):
        raise KeyError("registry insert failed")
    with stage(tmp_path / "y.bin", b"data"):
        pass  # no commit: nothing must remain
    assert list(tmp_path.iterdir()) == []


def test_stage_commit_onto_existing_keeps_temp_for_retry(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    write_atomic(path, b"old")
    staged = stage(path, b"new")
    with pytest.raises(FileExistsError):
        staged.commit()
    assert Path(staged.temp_path).exists()
    staged.commit(overwrite=True)
    assert path.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_stage_typed_buffer_counts_bytes(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.float64)
    staged = stage(tmp_path / "a.raw", memoryview(array))
    staged.commit()
    assert staged.size == 80 == (tmp_path / "a.raw").stat().st_size
    assert staged.checksum == checksum_bytes(array.tobytes())


# -- checksums -------------------------------------------------------------------------------


def test_checksum_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom((5 << 19) + 7)  # 2.5 MiB + 7: several blocks and a partial one
    path = tmp_path / "big.bin"
    size, checksum = write_atomic(path, data)
    assert checksum_file(path) == checksum == checksum_bytes(data)
    assert checksum_file(path, "sha256") == checksum_bytes(data, "sha256")
    verify_file(path, checksum, size)
    verify_file(path, checksum_bytes(data, "sha256"))


def test_verify_detects_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    size, checksum = write_atomic(path, b"0123456789")
    with path.open("r+b") as stream:
        stream.seek(4)
        stream.write(b"X")
    message = f"^checksum mismatch for {path}: recorded {checksum}, found xxh3_128:[0-9a-f]{{32}}$"
    with pytest.raises(ChecksumError, match=message):
        verify_file(path, checksum, size)


def test_verify_detects_truncation(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    size, checksum = write_atomic(path, b"0123456789")
    os.truncate(path, 4)
    with pytest.raises(ChecksumError, match=f"size mismatch for {path}: recorded 10 bytes, found 4"):
        verify_file(path, checksum, size)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        verify_file(path, checksum)
    assert isinstance(ChecksumError("x"), (OSError, ButlerError))


def test_verify_missing_file_and_bytes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_file(tmp_path / "missing", checksum_bytes(b""), 0)
    verify_bytes(b"abc", checksum_bytes(b"abc"), 3)
    with pytest.raises(ChecksumError, match="checksum mismatch for cache entry 7"):
        verify_bytes(b"abd", checksum_bytes(b"abc"), 3, where="cache entry 7")
    with pytest.raises(ValueError, match="unsupported checksum algorithm 'md4'"):
        verify_bytes(b"abc", "md4:00")

