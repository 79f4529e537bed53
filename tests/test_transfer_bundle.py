"""The bundle reader refuses every bad bundle before anything could be imported, each with a
specific error naming what is wrong; and manifests round-trip (a hypothesis property)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import string
import uuid
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler import Butler, DatasetType
from butler.datastore import checksum_bytes
from butler.dimensions import DimensionUniverse
from butler.errors import ButlerError, ChecksumError
from butler.testing import SIMCAM_VISITS
from butler.transfer import (
    BundleChecksumError,
    BundleCollection,
    BundleCorruptError,
    BundleManifestError,
    BundleMissingFileError,
    BundleNotFoundError,
    BundlePathError,
    BundleUniverseError,
    BundleVersionError,
    BundleWriter,
    open_bundle,
)

RUN = "u/tester/run1"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A zip and a directory bundle of 4 'metrics' and one zarr 'calexp' (SQLite repository)."""
    from butler.exposure import Exposure
    from butler.instrument import SimCam

    base = tmp_path_factory.mktemp("bundles")
    butler = Butler.create(base / "repo", run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type(DatasetType("metrics", dims, "StructuredData"))
    butler.register_dataset_type(DatasetType("calexp", dims, "Exposure"))
    butler.put_many([({"v": v, "d": d}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d})
                     for v in (12, 14) for d in (0, 1)])
    butler.put(Exposure(np.ones((4, 4), np.float32)), "calexp", instrument="SimCam", visit=12, detector=0)
    butler.export(base / "good.zip", collections=RUN)
    butler.export(base / "good", collections=RUN)
    return base


@pytest.fixture
def zip_bundle(bundles, tmp_path):
    shutil.copy(bundles / "good.zip", tmp_path / "b.zip")
    return tmp_path / "b.zip"


@pytest.fixture
def dir_bundle(bundles, tmp_path):
    shutil.copytree(bundles / "good", tmp_path / "b")
    return tmp_path / "b"


def rezip(path, transform):
    """Rewrite the zip at ``path``: ``transform(name, data)`` returns (name, data) or None to drop it."""
    with zipfile.ZipFile(path) as source:
        members = [(i.filename, source.read(i.filename)) for i in source.infolist()]
    os.unlink(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for name, data in members:
            out = transform(name, data)
            if out is not None:
                target.writestr(out[0], out[1])


def edit_manifest(path, change):
    """Apply ``change(dict)`` to bundle.json (a directory bundle)."""
    manifest_path = os.path.join(path, "manifest", "bundle.json")
    with open(manifest_path) as stream:
        manifest = json.load(stream)
    change(manifest)
    with open(manifest_path, "w") as stream:
        json.dump(manifest, stream)


def set_path(bundle_dir, dataset_type, new_path):
    """Replace the path of the first row of a type's table in a directory bundle."""
    table_path = os.path.join(bundle_dir, "manifest", "datasets", f"{dataset_type}.parquet")
    table = pq.read_table(table_path)
    paths = table.column("path").to_pylist()
    paths[0] = new_path
    table = table.set_column(table.schema.get_field_index("path"), "path", [paths])
    pq.write_table(table, table_path)


def test_good_bundles_open_and_verify(bundles):
    for name in ("good.zip", "good"):
        with open_bundle(bundles / name) as bundle:
            assert bundle.verify_files() == 5
            assert {t.name for t in bundle.dataset_types} == {"metrics", "calexp"}
            bundle.check_universe(DimensionUniverse.default())


# -- the container -----------------------------------------------------------------------------------
def test_missing_bundle(tmp_path):
    with pytest.raises(BundleNotFoundError, match="no bundle at") as info:
        open_bundle(tmp_path / "nothing.zip")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ButlerError)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_zip(zip_bundle, keep):
    data = zip_bundle.read_bytes()
    zip_bundle.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(BundleCorruptError, match="not a readable zip file") as info:
        open_bundle(zip_bundle)
    assert isinstance(info.value, ValueError)


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    with pytest.raises(BundleCorruptError, match="truncated, damaged, or not a bundle"):
        open_bundle(tmp_path / "x.zip")


def test_corrupt_member_bytes_are_a_checksum_error(zip_bundle):
    with zipfile.ZipFile(zip_bundle) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".json") and "manifest" not in i.filename)
    data = bytearray(zip_bundle.read_bytes())
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[offset] ^= 0xFF  # one byte of the stored file: the zip's CRC and the repository's checksum fail
    zip_bundle.write_bytes(bytes(data))
    with open_bundle(zip_bundle) as bundle, pytest.raises(BundleChecksumError, match=info.filename) as err:
        bundle.verify_files()
    assert isinstance(err.value, ChecksumError)


# -- the manifest ------------------------------------------------------------------------------------
def test_manifest_missing(zip_bundle, dir_bundle):
    rezip(zip_bundle, lambda n, d: None if n == "manifest/bundle.json" else (n, d))
    with pytest.raises(BundleManifestError, match="has no manifest/bundle.json"):
        open_bundle(zip_bundle)
    os.unlink(dir_bundle / "manifest" / "bundle.json")
    with pytest.raises(BundleManifestError, match="export was interrupted"):
        open_bundle(dir_bundle)


def test_manifest_not_json_or_not_a_bundle(dir_bundle):
    (dir_bundle / "manifest" / "bundle.json").write_text("{not json")
    with pytest.raises(BundleManifestError, match="not valid JSON"):
        open_bundle(dir_bundle)
    (dir_bundle / "manifest" / "bundle.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleManifestError, match="not a butler-bundle manifest"):
        open_bundle(dir_bundle)


def test_newer_major_version_is_refused_newer_minor_accepted(dir_bundle):
    edit_manifest(dir_bundle, lambda m: m.update(format_minor=7))
    open_bundle(dir_bundle).close()
    edit_manifest(dir_bundle, lambda m: m.update(format_version=2))
    with pytest.raises(BundleVersionError, match=r"format version 2\.7; this butler reads format version 1"):
        open_bundle(dir_bundle)


def test_malformed_manifest_and_missing_or_corrupt_tables(bundles, tmp_path):
    def fresh(name):
        shutil.copytree(bundles / "good", tmp_path / name)
        return tmp_path / name

    b = fresh("a")
    edit_manifest(b, lambda m: m.pop("collections"))
    with pytest.raises(BundleManifestError, match="malformed: KeyError"):
        open_bundle(b)
    b = fresh("b")
    os.unlink(b / "manifest" / "datasets" / "metrics.parquet")
    with pytest.raises(BundleManifestError, match="metrics.parquet that manifest/bundle.json lists is missing"):
        open_bundle(b)
    b = fresh("c")
    (b / "manifest" / "records" / "visit.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(BundleCorruptError, match="visit.parquet .* is unreadable"):
        open_bundle(b)


# -- paths --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, problem", [
    ("../../etc/passwd", "contains '..'"),
    ("u/tester/../../../x.json", "contains '..'"),
    ("/etc/passwd", "is absolute"),
    ("C:/Windows/x", "is absolute"),
    ("u\\tester\\x.json", "contains a backslash"),
    ("u//x.json", "empty or '.' part"),
    ("manifest/bundle.json", "inside manifest/"),
])
def test_paths_that_escape_are_refused(dir_bundle, bad, problem):
    set_path(dir_bundle, "metrics", bad)
    with pytest.raises(BundlePathError, match=problem) as info:
        open_bundle(dir_bundle)
    assert "the metrics dataset" in str(info.value) and isinstance(info.value, ValueError)


def test_zip_members_that_escape_or_are_links_are_refused(zip_bundle):
    with zipfile.ZipFile(zip_bundle, "a") as z:
        z.writestr("../outside.txt", b"x")
    with pytest.raises(BundlePathError, match="zip member '../outside.txt'"):
        open_bundle(zip_bundle)
    rezip(zip_bundle, lambda n, d: None if n == "../outside.txt" else (n, d))
    with zipfile.ZipFile(zip_bundle, "a") as z:
        info = zipfile.ZipInfo("u/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(BundlePathError, match="is a symbolic link"):
        open_bundle(zip_bundle)


def test_symlink_out_of_a_directory_bundle_is_refused(dir_bundle, tmp_path):
    with open_bundle(dir_bundle) as bundle:
        path = bundle.datasets("metrics").column("path").to_pylist()[0]
    target = dir_bundle / path
    (tmp_path / "elsewhere.json").write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundlePathError, match="symbolic link to .*elsewhere.json, outside the bundle"):
        open_bundle(dir_bundle)
    target.unlink()
    os.link(tmp_path / "elsewhere.json", target)  # a real file again: fine
    open_bundle(dir_bundle).close()


# -- files ----------------------------------------------------------------------------------------------
def test_missing_file(zip_bundle, dir_bundle):
    with open_bundle(dir_bundle) as bundle:
        path = bundle.datasets("metrics").column("path").to_pylist()[1]
    os.unlink(dir_bundle / path)
    with pytest.raises(BundleMissingFileError, match=f"the metrics dataset .*{path}.* is missing") as info:
        open_bundle(dir_bundle)
    assert isinstance(info.value, FileNotFoundError)
    rezip(zip_bundle, lambda n, d: None if n == path else (n, d))
    with pytest.raises(BundleMissingFileError, match=path):
        open_bundle(zip_bundle)


def test_wrong_checksum_and_size(dir_bundle, zip_bundle):
    with open_bundle(dir_bundle) as bundle:
        path = bundle.datasets("metrics").column("path").to_pylist()[0]
    data = (dir_bundle / path).read_bytes()
    (dir_bundle / path).write_bytes(data[:-1] + (b"X" if data[-1:] != b"X" else b"Y"))  # same size
    with open_bundle(dir_bundle) as bundle, pytest.raises(BundleChecksumError, match="checksum mismatch"):
        bundle.verify_files()
    (dir_bundle / path).write_bytes(data + b" ")
    with open_bundle(dir_bundle) as bundle, pytest.raises(BundleChecksumError, match="size mismatch"):
        bundle.verify_files()
    rezip(zip_bundle, lambda n, d: (n, d[:-1] + b"Z") if n == path else (n, d))
    with open_bundle(zip_bundle) as bundle, pytest.raises(BundleChecksumError,
                                                          match=f"metrics dataset .*checksum mismatch for {path}"):
        bundle.verify_files()


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_damaged_zarr_store_in_a_bundle(bundles, tmp_path, kind):
    with open_bundle(bundles / "good") as bundle:
        store = bundle.datasets("calexp").column("path").to_pylist()[0]
    if kind == "dir":
        shutil.copytree(bundles / "good", tmp_path / "b")
        path = tmp_path / "b"
        (path / store / "stray.bin").write_bytes(b"added")
    else:
        shutil.copy(bundles / "good.zip", tmp_path / "b.zip")
        path = tmp_path / "b.zip"
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(f"{store}/stray.bin", b"added")
    with open_bundle(path) as bundle, pytest.raises(BundleChecksumError, match="calexp dataset .*stray.bin"):
        bundle.verify_files()


def test_universe_compatibility(bundles):
    default = DimensionUniverse.default()
    text = default.text.replace("version: 1", "version: 99").replace(
        "      - {name: seeing, type: float, nullable: true}",
        "      - {name: seeing, type: float, nullable: true}\n      - {name: airmass, type: float, nullable: true}")
    compatible = DimensionUniverse.from_text(text)
    with open_bundle(bundles / "good") as bundle:
        bundle.check_universe(compatible)  # an extra nullable field: fine
        required = DimensionUniverse.from_text(text.replace("version: 99", "version: 98").replace(
            "{name: airmass, type: float, nullable: true}", "{name: airmass, type: float}"))
        with pytest.raises(BundleUniverseError, match="visit.airmass is required in the repository"):
            bundle.check_universe(required)
        other_type = DimensionUniverse.from_text(default.text.replace("version: 1", "version: 97").replace(
            "{name: exposure_time, type: float, nullable: true}\n      - {name: begin, type: time, nullable: true}\n"
            "      - {name: end, type: time, nullable: true}\n      - {name: tracking_ra",
            "{name: exposure_time, type: str, length: 8, nullable: true}\n      - {name: begin, type: time, "
            "nullable: true}\n      - {name: end, type: time, nullable: true}\n      - {name: tracking_ra"))
        with pytest.raises(BundleUniverseError, match=r"exposure_time is 'float' in the bundle, 'str'"):
            bundle.check_universe(other_type)
        other_ns = DimensionUniverse.from_text(default.text.replace("namespace: butler", "namespace: other")
                                               .replace("version: 1", "version: 96"))
        with pytest.raises(BundleUniverseError, match="uses the dimension universe 'butler'"):
            bundle.check_universe(other_ns)


# -- the round-trip property --------------------------------------------------------------------------
UNIVERSE = DimensionUniverse.default()
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
_part = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,8}", fullmatch=True).filter(lambda p: ".." not in p)
_run = st.lists(_part, min_size=1, max_size=3).map("/".join)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_instrument = st.text(string.ascii_letters, min_size=1, max_size=8)
_DIMS = [("instrument",), ("instrument", "detector"), ("instrument", "visit", "detector"), ("skymap", "tract")]


@st.composite
def manifests(draw):
    types = draw(st.lists(st.tuples(_names, st.sampled_from(_DIMS), st.booleans()), min_size=1, max_size=3,
                          unique_by=lambda t: t[0]))
    runs = draw(st.lists(_run, min_size=1, max_size=3, unique=True))
    datasets = {}
    for name, dims, _ in types:
        group = DatasetType(name, dims, "StructuredData").group(UNIVERSE)
        rows = []
        for i in range(draw(st.integers(0, 6))):
            values = {d: (draw(_instrument) if UNIVERSE[d].key.type == "str" else draw(st.integers(-2**40, 2**40)))
                      for d in group.required}
            content = draw(st.binary(max_size=40))
            has_file = draw(st.booleans())
            rows.append({"dataset_id": uuid.uuid4().hex, "run": draw(st.sampled_from(runs)), **values,
                         "component": "" if has_file else None,
                         "path": f"{draw(st.sampled_from(runs))}/{name}/{i}.bin" if has_file else None,
                         "formatter": "json" if has_file else None,
                         "storage_class": "StructuredData" if has_file else None,
                         "checksum": checksum_bytes(content) if has_file else None,
                         "file_size": len(content) if has_file else None, "direct_path": None,
                         "_content": content})
        datasets[name] = rows
    collections = [BundleCollection(name=r, type="RUN", owner=draw(st.none() | _instrument), doc=draw(st.none() | _text))
                   for r in runs]
    if draw(st.booleans()):
        collections.append(BundleCollection(name="chain", type="CHAINED", children=tuple(runs)))
    detectors = draw(st.lists(st.fixed_dictionaries({
        "instrument": _instrument, "id": st.integers(0, 10**6), "full_name": _text.map(lambda t: t[:32]),
        "raft": st.none() | st.just("R22"), "purpose": st.just("SCIENCE"), "bbox_width": st.none() | st.integers(0, 9),
        "bbox_height": st.none(), "pixel_scale_arcsec": st.none() | st.floats(allow_nan=False),
        "offset_x_mm": st.none(), "offset_y_mm": st.none(), "rotation_deg": st.none()}), max_size=4))
    return types, datasets, collections, detectors


@pytest.mark.parametrize("container", ["zip", "dir"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=manifests())
def test_manifest_round_trip(tmp_path_factory, container, manifest):
    types, datasets, collections, detectors = manifest
    base = tmp_path_factory.mktemp("rt")
    path = base / ("b.zip" if container == "zip" else "b")
    seen: set[str] = set()
    for rows in datasets.values():
        for r in rows:
            if r["path"] in seen:  # two rows drew the same path: keep the first one's file only
                r.update(component=None, path=None, formatter=None, storage_class=None, checksum=None, file_size=None)
            seen.add(r["path"])
    with BundleWriter(path, universe=UNIVERSE, source="somewhere") as writer:
        for name, dims, calib in types:
            writer.add_dataset_type(DatasetType(name, dims, "StructuredData", is_calibration=calib))
            rows = datasets[name]
            if rows:
                writer.write_datasets(name, {k: [r[k] for r in rows] for k in rows[0] if k != "_content"})
            for r in rows:
                if r["path"] is not None:
                    (base / "src").write_bytes(r["_content"])
                    writer.add_file(str(base / "src"), r["path"])
        for c in collections:
            writer.add_collection(c)
        if detectors:
            writer.write_records("detector", {k: [d[k] for d in detectors] for k in detectors[0]})
        written = writer.finish(counts={name: len(datasets[name]) for name, _, _ in types})
    with open_bundle(path) as bundle:
        assert bundle.manifest == json.loads(json.dumps(written))
        assert [(t.name, t.dimensions, t.is_calibration) for t in bundle.dataset_types] == [
            (n, DatasetType(n, d, "StructuredData").dimensions, c) for n, d, c in types]
        for name, _, _ in types:
            expected = [{k: v for k, v in r.items() if k != "_content"} for r in datasets[name]]
            assert bundle.datasets(name).to_pylist() == expected
        assert bundle.collections == collections
        assert bundle.records("detector").to_pylist() == detectors
        assert bundle.verify_files() == sum(r["path"] is not None for rows in datasets.values() for r in rows)
