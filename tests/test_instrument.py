"""Tests of instruments: camera YAML validation, records, aliases, loading, pickling, digests."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler.errors import ButlerError, DataIdError
from butler.instrument import (
    CameraDefinitionError,
    HexCam,
    Instrument,
    SimCam,
    UnknownInstrumentError,
    VisitDetectorInstrument,
    canonical_digest,
    known_instruments,
    load_instrument,
    parse_camera,
    register_instrument,
)

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {
    "instrument": {"name", "class_name", "visit_max", "exposure_max", "detector_max", "definition_digest"},
    "band": {"name"},
    "physical_filter": {"instrument", "name", "band"},
    "detector": {"instrument", "id", "full_name", "raft", "purpose", "bbox_width", "bbox_height",
                 "pixel_scale_arcsec", "offset_x_mm", "offset_y_mm", "rotation_deg"},
}


def minimal_camera(**overrides: Any) -> dict[str, Any]:
    camera: dict[str, Any] = {
        "name": "TinyCam",
        "visit_max": 1000,
        "exposure_max": 1000,
        "detector_max": 4,
        "aliases": {"ccd": "detector"},
        "filters": [{"name": "T-r", "band": "r"}],
        "detectors": [
            {"id": 0, "full_name": "A", "bbox": [10, 20], "pixel_scale_arcsec": 0.5, "offset_mm": [0, 0]},
            {"id": 1, "full_name": "B", "bbox": [10, 20], "pixel_scale_arcsec": 0.5, "offset_mm": [1, 0]},
        ],
    }
    camera.update(overrides)
    return camera


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimCam, HexCam])
def test_record_keys(cls: type[Instrument]) -> None:
    records = cls().dimension_records()
    assert set(records) == set(RECORD_KEYS)
    for element, rows in records.items():
        assert rows, element
        for row in rows:
            assert set(row) == RECORD_KEYS[element], element


def test_simcam_records() -> None:
    cam = SimCam()
    records = cam.dimension_records()
    (inst,) = records["instrument"]
    assert inst["name"] == "SimCam" and inst["class_name"] == "butler.instrument.SimCam"
    assert (inst["visit_max"], inst["exposure_max"], inst["detector_max"]) == (2**20, 2**20, 16)
    assert len(inst["definition_digest"]) == 32
    assert [r["name"] for r in records["band"]] == ["g", "r", "i", "z", "y"]
    assert [r["name"] for r in records["physical_filter"]] == [f"SimCam-{b}" for b in "grizy"]
    detectors = records["detector"]
    assert [d["id"] for d in detectors] == list(range(9))
    assert [d["full_name"] for d in detectors] == [f"S{r}{c}" for r in range(3) for c in range(3)]
    assert {(d["raft"], d["purpose"], d["bbox_width"], d["bbox_height"], d["pixel_scale_arcsec"])
            for d in detectors} == {(None, "SCIENCE", 1024, 1024, 0.2)}
    centre = cam.get_detector("S11")
    assert (centre.id, centre.offset_x_mm, centre.offset_y_mm) == (4, 0.0, 0.0)
    assert cam.get_detector(0).offset_x_mm < 0 < cam.get_detector(2).offset_x_mm
    assert (1 << 4) == cam.detector_max  # 4 bits for the packer


def test_hexcam_records() -> None:
    cam = HexCam()
    records = cam.dimension_records()
    ids = [d["id"] for d in records["detector"]]
    assert ids[:12] == [100, 101, 102, 103, 110, 111, 112, 113, 120, 121, 122, 123]
    assert all(i < cam.detector_max == 256 for i in ids)
    assert {d["purpose"] for d in records["detector"]} == {"SCIENCE", "WAVEFRONT", "GUIDER"}
    rafts: dict[str, int] = {}
    for d in records["detector"]:
        rafts[d["raft"]] = rafts.get(d["raft"], 0) + 1
    assert rafts == {"R0": 4, "R1": 4, "R2": 4, "R3": 4}
    assert {"HX-G2", "HX-R2", "HX-N921"} <= {f.name for f in cam.filters}
    assert cam.get_filter("HX-N921").band == "N921"
    assert "raw" in cam.file_templates and "{exposure}" in cam.file_templates["raw"]
    assert SimCam().file_templates == {}


def test_bands_shared_between_instruments() -> None:
    sim = {r["name"] for r in SimCam().dimension_records()["band"]}
    hexc = {r["name"] for r in HexCam().dimension_records()["band"]}
    assert {"g", "r", "i"} <= sim & hexc
    assert "N921" in hexc - sim


def test_records_are_fresh_copies() -> None:
    cam = SimCam()
    cam.dimension_records()["detector"][0]["id"] = 99
    assert cam.dimension_records()["detector"][0]["id"] == 0


def test_get_detector() -> None:
    cam = HexCam()
    assert cam.get_detector(130).purpose == "WAVEFRONT"
    assert cam.get_detector("R3_W0").id == 130
    assert cam.get_detector("101").full_name == "R0_S1"
    with pytest.raises(DataIdError, match="close"):
        cam.get_detector("R0_S9")
    with pytest.raises(DataIdError, match="ids"):
        cam.get_detector(5)
    with pytest.raises(DataIdError):
        cam.get_detector(True)  # type: ignore[arg-type]


# -- aliases ---------------------------------------------------------------------------------


def test_normalize_keys() -> None:
    cam = SimCam()
    assert cam.normalize_keys({"ccd": 3, "filter": "SimCam-r", "visit": 7}) == {
        "detector": 3, "physical_filter": "SimCam-r", "visit": 7}
    for alias in ("ccd", "ccdnum", "sensor"):
        assert cam.normalize_keys({alias: 1}) == {"detector": 1}
    # Same value through an alias and the dimension name is fine; unknown keys pass through.
    assert cam.normalize_keys({"ccd": 2, "detector": 2, "tract": 9}) == {"detector": 2, "tract": 9}
    assert HexCam().normalize_keys({"chip": 101}) == {"detector": 101}
    assert HexCam().normalize_keys({"ccd": 101}) == {"ccd": 101}  # not a HexCam alias


@pytest.mark.parametrize(
    "data_id", [{"ccd": 1, "detector": 2}, {"detector": 2, "ccd": 1}, {"ccd": 1, "sensor": 2}]
)
def test_normalize_keys_conflict(data_id: dict[str, int]) -> None:
    with pytest.raises(DataIdError) as info:
        SimCam().normalize_keys(data_id)
    for key in data_id:
        assert repr(key) in str(info.value)
    assert isinstance(info.value, ValueError)


# -- YAML validation -------------------------------------------------------------------------


def test_minimal_yaml_loads(tmp_path: Path) -> None:
    cam = VisitDetectorInstrument.from_yaml(write_yaml(tmp_path / "tiny.yaml", minimal_camera()))
    assert cam.name == "TinyCam" and len(cam.detectors) == 2
    assert cam.class_name == "butler.instrument.VisitDetectorInstrument"
    assert cam.detectors[0].purpose == "SCIENCE" and cam.detectors[0].rotation_deg == 0.0


def _break(path: list[Any], value: Any) -> dict[str, Any]:
    camera = minimal_camera()
    target: Any = camera
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return camera


_DELETE = object()
BAD_CASES = [
    pytest.param(["name"], _DELETE, "name: required key is missing", id="missing-name"),
    pytest.param(["name"], "a/b", "name: expected a name", id="name-with-separator"),
    pytest.param(["name"], "x" * 40, "name: expected a name", id="name-too-long"),
    pytest.param(["visit_max"], "many", "visit_max: expected an integer", id="visit-max-str"),
    pytest.param(["detector_max"], 0, "detector_max: expected an integer >= 1", id="detector-max-0"),
    pytest.param(["aliases"], ["ccd"], "aliases: expected a mapping", id="aliases-list"),
    pytest.param(["aliases", "ccd"], "chip", "aliases.ccd: expected one of the dimension names", id="alias-target"),
    pytest.param(["aliases", "visit"], "exposure", "aliases.visit: expected an alias that is not", id="alias-shadow"),
    pytest.param(["filters", 0, "band"], _DELETE, "filters[0].band: required key is missing", id="filter-no-band"),
    pytest.param(["filters", 0, "colour"], "red", "filters[0].colour: unknown key", id="filter-extra-key"),
    pytest.param(["filters"], [], "filters: expected at least one filter", id="no-filters"),
    pytest.param(["detectors", 1, "id"], 0, "detectors[1].id: expected an id not already used by detectors[0]",
                 id="duplicate-id"),
    pytest.param(["detectors", 1, "full_name"], "A", "detectors[1].full_name: expected a name not already used",
                 id="duplicate-name"),
    pytest.param(["detectors", 1, "id"], 4, "detectors[1].id: expected an id below detector_max=4",
                 id="id-too-big"),
    pytest.param(["detectors", 0, "bbox"], [10], "detectors[0].bbox: expected a list of two positive integers",
                 id="bbox-short"),
    pytest.param(["detectors", 0, "bbox"], [10, -1], "detectors[0].bbox: expected an integer >= 1", id="bbox-neg"),
    pytest.param(["detectors", 0, "purpose"], "FOCUS", "detectors[0].purpose: expected one of", id="purpose"),
    pytest.param(["detectors", 0, "pixel_scale_arcsec"], 0, "expected a positive number", id="scale-zero"),
    pytest.param(["detectors", 0, "offset_mm"], [0, float("nan")], "offset_mm: expected a finite number", id="offset"),
    pytest.param(["detectors"], [], "detectors: expected at least one detector", id="no-detectors"),
    pytest.param(["file_templates"], {"raw": ""}, "file_templates.raw: expected a non-empty template", id="tmpl"),
    pytest.param(["class_name"], "NotDotted", "class_name: expected a dotted Python class path", id="class"),
    pytest.param(["inherits"], "NoSuchCam", "inherits: parent camera 'NoSuchCam' does not exist", id="inherits"),
    pytest.param(["detector_maxx"], 3, "detector_maxx: unknown key; expected one of", id="typo"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_CASES)
def test_bad_yaml(tmp_path: Path, path: list[Any], value: Any, message: str) -> None:
    file = write_yaml(tmp_path / "bad.yaml", _break(path, value))
    with pytest.raises(CameraDefinitionError) as info:
        load_instrument(file)
    text = str(info.value)
    assert str(file.resolve()) in text
    assert message in text
    assert isinstance(info.value, ValueError) and isinstance(info.value, ButlerError)


def test_not_yaml(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("name: [unclosed\n")
    with pytest.raises(CameraDefinitionError, match="not valid YAML"):
        VisitDetectorInstrument.from_yaml(file)
    file.write_text("- just\n- a list\n")
    with pytest.raises(CameraDefinitionError, match="<top level>: expected a mapping"):
        VisitDetectorInstrument.from_yaml(file)


def test_detector_grid_with_rafts(tmp_path: Path) -> None:
    grid = {"nx": 4, "ny": 2, "pitch_mm": [10, 20], "bbox": [100, 200], "pixel_scale_arcsec": 1.0,
            "first_id": 10, "raft_size": 2}
    camera = minimal_camera(detector_max=64, detector_grid=grid)
    del camera["detectors"]
    cam = VisitDetectorInstrument.from_yaml(write_yaml(tmp_path / "grid.yaml", camera))
    assert [d.id for d in cam.detectors] == list(range(10, 18))
    assert [d.full_name for d in cam.detectors[:4]] == ["R00_S00", "R00_S01", "R01_S00", "R01_S01"]
    assert [d.raft for d in cam.detectors] == ["R00", "R00", "R01", "R01", "R00", "R00", "R01", "R01"]
    assert (cam.detectors[0].offset_x_mm, cam.detectors[0].offset_y_mm) == (-15.0, -10.0)
    grid["raft_size"] = 3
    with pytest.raises(CameraDefinitionError, match="detector_grid.raft_size: expected a divisor"):
        VisitDetectorInstrument.from_yaml(write_yaml(tmp_path / "grid2.yaml", camera))


def test_grid_and_list_collide(tmp_path: Path) -> None:
    grid = {"nx": 1, "ny": 1, "pitch_mm": 1, "bbox": [1, 1], "pixel_scale_arcsec": 1.0, "first_id": 1}
    camera = minimal_camera(detector_grid=grid)
    with pytest.raises(CameraDefinitionError, match="detectors\\[1\\].id: expected an id not already used"):
        VisitDetectorInstrument.from_yaml(write_yaml(tmp_path / "both.yaml", camera))


def test_declared_class_name_is_enforced(tmp_path: Path) -> None:
    simcam_yaml = SimCam.default_camera_path()
    assert simcam_yaml is not None
    with pytest.raises(CameraDefinitionError, match="use load_instrument"):
        VisitDetectorInstrument.from_yaml(simcam_yaml)
    assert type(load_instrument(simcam_yaml)) is SimCam


def test_generic_class_needs_a_camera() -> None:
    with pytest.raises(TypeError, match="from_yaml"):
        VisitDetectorInstrument()
    with pytest.raises(TypeError):
        Instrument()  # type: ignore[abstract]


# -- load_instrument -------------------------------------------------------------------------


def test_load_by_name_and_class_path(tmp_path: Path) -> None:
    assert type(load_instrument("SimCam")) is SimCam
    assert type(load_instrument("hexcam")) is HexCam
    assert type(load_instrument("butler.instrument.SimCam")) is SimCam
    assert type(load_instrument("butler.instrument._simcam:HexCam")) is HexCam
    assert type(load_instrument(HexCam)) is HexCam
    cam = SimCam()
    assert load_instrument(cam) is cam
    assert {"SimCam", "HexCam"} <= set(known_instruments())


def test_load_by_yaml_path(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "tiny.yaml", minimal_camera())
    for arg in (file, str(file)):
        cam = load_instrument(arg)
        assert type(cam) is VisitDetectorInstrument and cam.name == "TinyCam"
    write_yaml(file, minimal_camera(class_name="butler.instrument.HexCam"))
    assert type(load_instrument(file)) is HexCam
    write_yaml(file, minimal_camera(class_name="butler.errors.DataIdError"))
    with pytest.raises(UnknownInstrumentError, match="not an Instrument subclass"):
        load_instrument(file)
    with pytest.raises(FileNotFoundError):
        load_instrument(tmp_path / "missing.yaml")


def test_load_unknown() -> None:
    with pytest.raises(UnknownInstrumentError) as info:
        load_instrument("SimCan")
    text = str(info.value)
    assert "'HexCam'" in text and "'SimCam'" in text and "did you mean" in text
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownInstrumentError, match="cannot import"):
        load_instrument("butler.instrument.NoSuchCam")


def test_register_instrument() -> None:
    register_instrument("SimCamAgain", "butler.instrument.SimCam")
    try:
        assert type(load_instrument("SimCamAgain")) is SimCam
        with pytest.raises(ValueError, match="already registered"):
            register_instrument("SimCamAgain", "butler.instrument.HexCam")
    finally:
        from butler.instrument import _instrument

        del _instrument._KNOWN["SimCamAgain"]


# -- pickling and digests --------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimCam, HexCam])
def test_pickle_round_trip(cls: type[Instrument]) -> None:
    cam = cls()
    data = pickle.dumps(cam)
    assert len(data) < 300
    copy_ = pickle.loads(data)
    assert type(copy_) is cls and copy_ == cam
    assert copy_.dimension_records() == cam.dimension_records()


def test_pickle_yaml_and_definition_instruments(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "tiny.yaml", minimal_camera())
    cam = load_instrument(file)
    data = pickle.dumps(cam)
    assert len(data) < 400 and pickle.loads(data) == cam
    # An instrument built from a mapping has no file: it pickles its definition.
    from_dict = VisitDetectorInstrument.from_definition(cam.definition())
    assert from_dict == cam and pickle.loads(pickle.dumps(from_dict)) == cam
    # A camera file edited after pickling is refused rather than silently used.
    write_yaml(file, minimal_camera(visit_max=2000))
    with pytest.raises(CameraDefinitionError, match="changed since"):
        pickle.loads(data)


@pytest.mark.parametrize("cls", [SimCam, HexCam])
def test_definition_round_trips(cls: type[Instrument]) -> None:
    cam = cls()
    again = cls.from_definition(copy.deepcopy(cam.definition()))
    assert again == cam and again.definition() == cam.definition()
    assert again.definition_digest() == cam.definition_digest()


def test_digest_stable_across_processes() -> None:
    code = ("from butler.instrument import SimCam, HexCam, canonical_digest;"
            "print(SimCam().definition_digest(), HexCam().definition_digest(),"
            " canonical_digest({'b': [1, 2.5], 'a': 'x'}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [SimCam().definition_digest(), HexCam().definition_digest(),
                   canonical_digest({"a": "x", "b": [1, 2.5]})]


def test_digest_sensitive_to_changes() -> None:
    base = parse_camera(minimal_camera())
    digest = canonical_digest(base.to_dict())
    # Equivalent spellings do not change it...
    same = minimal_camera()
    same["detectors"][0]["purpose"] = "science"
    same["detectors"][0]["rotation_deg"] = 0
    same["aliases"] = {"ccd": "detector"}
    same["detectors"].reverse()
    assert canonical_digest(parse_camera(same).to_dict()) == digest
    # ...every real change does.
    changes = [
        minimal_camera(visit_max=1001),
        minimal_camera(aliases={"ccd": "detector", "chip": "detector"}),
        minimal_camera(filters=[{"name": "T-r", "band": "R"}]),
        minimal_camera(file_templates={"raw": "{run}/{detector}"}),
    ]
    moved = minimal_camera()
    moved["detectors"][1]["offset_mm"] = [1.0, 0.001]
    changes.append(moved)
    digests = {canonical_digest(parse_camera(c).to_dict()) for c in changes}
    assert len(digests) == len(changes) and digest not in digests
    assert SimCam().definition_digest() != HexCam().definition_digest()


def test_import_is_cheap() -> None:
    code = ("import sys, butler.instrument;"
            "print(sorted(m for m in ('numpy', 'astropy', 'dask', 'zarr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
