"""The ``camera`` dataset is a typed `Camera` (issue 7): round trips, versions by time, bad input."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from butler import Butler, DatasetType
from butler.errors import ChecksumError, DataIdError, StorageClassError
from butler.instrument import Camera, CameraDefinitionError, HexCam, SimCam, load_instrument
from butler.testing import snapshot_repo

NOV, DEC = "2026-11-24T03:00:00", "2026-12-10T03:00:00"


def _observations(butler: Butler) -> None:
    """SimCam exposures 1234 (November) and 1300 (December)."""
    butler.insert_dimension_records("day_obs", [{"instrument": "SimCam", "id": 20261124},
                                                {"instrument": "SimCam", "id": 20261210}])
    butler.insert_dimension_records("exposure", [
        {"instrument": "SimCam", "id": 1234, "physical_filter": "SimCam-r", "day_obs": 20261124, "begin": NOV,
         "end": "2026-11-24T03:00:30"},
        {"instrument": "SimCam", "id": 1300, "physical_filter": "SimCam-r", "day_obs": 20261210, "begin": DEC,
         "end": "2026-12-10T03:00:30"},
    ])


@pytest.fixture
def camera_repo(repo_factory):
    butler = Butler(repo_factory().root, writeable=True)
    butler.register_instrument(SimCam())
    butler.register_instrument(HexCam())
    _observations(butler)
    return butler


def test_camera_round_trip(camera_repo):
    b = camera_repo
    camera = b.get("camera", instrument="SimCam", exposure=1234)
    assert isinstance(camera, Camera)
    assert camera == Camera.from_instrument(SimCam()) and camera.digest == SimCam().definition_digest()
    record = b.query_dimension_records("instrument", instrument="SimCam")[0]
    assert camera.digest == record.definition_digest  # the registry's record and the certified camera agree
    # detectors by id or full name, filters, bands, aliases, limits
    assert len(camera) == len(camera.detectors) == 9 and list(camera.detectors) == list(range(9))
    assert camera[4] is camera.detector("S11") is camera.detectors[4]
    assert camera.detector("4").full_name == "S11" and "S11" in camera and 9 not in camera
    assert [d.id for d in camera] == list(range(9))
    assert list(camera.filters) == ["SimCam-g", "SimCam-r", "SimCam-i", "SimCam-z", "SimCam-y"]
    assert camera.filter("SimCam-r").band == "r" and camera.bands == ("g", "r", "i", "z", "y")
    assert camera.aliases["ccd"] == "detector" and camera.detector_max == 16
    # geometry: the centre detector is centred on the boresight; SimCam spans ~ +-3x1024x0.2/2 arcsec
    corners = camera.detector_corners("S11")
    assert sum(x for x, _ in corners) == pytest.approx(0.0) and sum(y for _, y in corners) == pytest.approx(0.0)
    assert max(abs(x) for x, _ in corners) == pytest.approx(1024 * 0.2 / 2)
    assert 400 < camera.field_radius_arcsec() < 460
    # the Instrument of this version, and pickling
    assert camera.instrument() == SimCam()
    assert pickle.loads(pickle.dumps(camera)) == camera
    # HexCam's camera in the same repository has its own detectors
    hexcam = b.get("camera", instrument="HexCam")
    assert hexcam.name == "HexCam" and [d.id for d in hexcam.detectors_of("WAVEFRONT")] == [130, 131]
    assert hexcam.detector("R3_G0").purpose == "GUIDER" and "N921" in hexcam.bands


@pytest.mark.parametrize("formatter, extension", [("camera_json", ".json"), ("camera_yaml", ".yaml")])
def test_the_stored_file_is_a_camera_definition(repo_factory, formatter, extension):
    """JSON by default; with the YAML formatter the file is a camera YAML that load_instrument reads."""
    b = Butler(repo_factory(formatters={"camera": formatter}).root, writeable=True)
    b.register_instrument(SimCam())
    path = _camera_path(b, "SimCam")
    assert path.endswith(extension)
    if extension == ".json":
        with open(path) as f:
            assert Camera.from_dict(json.load(f)) == Camera.from_instrument(SimCam())
    else:
        assert load_instrument(path) == SimCam()
    assert b.get("camera", instrument="SimCam") == Camera.from_instrument(SimCam())


def _camera_path(butler: Butler, instrument: str) -> str:
    """The file of the instrument's (only) camera version."""
    ref = butler.find_dataset("camera", instrument=instrument, collections=f"{instrument}/calib")
    registry = butler.registry
    with registry.db.transaction() as conn:
        files = registry.datasets.files_of(conn, [ref.id])[ref.id]
    return os.path.join(butler.root, files[0].path)


def test_old_exposures_get_the_old_camera_version(camera_repo):
    b = camera_repo
    original = b.get("camera", instrument="SimCam", exposure=1234)
    # December: detector 4 re-mounted (rotated) and detector 8 removed
    definition = SimCam().definition()
    definition["detectors"][4]["rotation_deg"] = 0.5
    del definition["detectors"][8]
    newer = Camera.from_dict(definition)
    b.certify_camera(newer, "2026-12-01")
    old, new = (b.get("camera", instrument="SimCam", exposure=e) for e in (1234, 1300))
    assert old == original and old.detector(4).rotation_deg == 0.0 and 8 in old
    assert new == newer and new.detector(4).rotation_deg == 0.5 and 8 not in new and len(new) == 8
    assert b.get("camera", instrument="SimCam", time="2026-11-30T23:59:59") == original
    assert b.get("camera", instrument="SimCam", time="2026-12-01") == newer
    assert new.instrument().get_detector(4).rotation_deg == 0.5  # code for the Instrument works on the version
    with pytest.raises(DataIdError, match=r"no detector with id 8 in SimCam; ids: \[0, 1, 2, 3, 4, 5, 6, 7\]"):
        new.detector(8)
    # HexCam's camera is untouched by SimCam's versions
    assert b.get("camera", instrument="HexCam", time=DEC) == Camera.from_instrument(HexCam())


def test_bad_camera_input_is_refused_and_changes_nothing(camera_repo):
    b = camera_repo
    before = snapshot_repo(b)
    with pytest.raises(StorageClassError, match=r"'camera' storage class 'Camera' expects butler.instrument.Camera "
                                                r"or butler.instrument.CameraDefinition or butler.instrument.Instrument,"
                                                r" got dict"):
        b.put(SimCam().definition(), "camera", instrument="SimCam", run="u/tester/cameras")
    with pytest.raises(DataIdError, match="instrument 'NoCam' is not registered; register it first"):
        b.certify_camera(Camera.from_dict({**SimCam().definition(), "name": "NoCam", "class_name": None}), None)
    with pytest.raises(ValueError, match="validity range ends before it begins"):
        b.certify_camera(SimCam(), "2026-12-01", "2026-11-01")
    assert snapshot_repo(b) == before
    # a camera file changed on disk fails its checksum; read unverified, it is reported with its path and
    # the key at fault
    path = _camera_path(b, "HexCam")
    unverified = Butler(b.root, collections=b.collections, calibs=b.calibs, verify_reads=False)
    with open(path) as f:
        data = json.load(f)
    del data["filters"]
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ChecksumError, match=rf"camera {{instrument: 'HexCam'}} .* size mismatch for {path}"):
        b.get("camera", instrument="HexCam")
    with pytest.raises(CameraDefinitionError, match=rf"{path}: filters: required key is missing"):
        unverified.get("camera", instrument="HexCam")
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(CameraDefinitionError, match=rf"{path}: the camera file is not valid JSON"):
        unverified.get("camera", instrument="HexCam")


def test_camera_api_errors():
    camera = Camera.from_instrument(HexCam())
    with pytest.raises(DataIdError, match=r"no detector named 'R0_S9' in HexCam; close: \['R0_S3', 'R0_S2', 'R0_S1'\]"):
        camera["R0_S9"]
    with pytest.raises(DataIdError, match=r"no physical_filter 'HX-Z' in HexCam; filters: \['HX-G2'"):
        camera.filter("HX-Z")
    with pytest.raises(TypeError, match=r"Camera wraps a CameraDefinition, got dict; use Camera.from_dict\(\)"):
        Camera(HexCam().definition())
    with pytest.raises(CameraDefinitionError, match=r"<camera dataset>: detector_max: expected an integer >= 1"):
        Camera.from_dict({**HexCam().definition(), "detector_max": 0})


def test_repositories_with_a_structured_data_camera_keep_working(repo_factory):
    """Before the Camera storage class, ``camera`` was StructuredData: such repositories keep dicts."""
    b = Butler(repo_factory().root, writeable=True)
    b.register_dataset_type(DatasetType("camera", ("instrument",), "StructuredData", is_calibration=True))
    b.register_instrument(SimCam())
    legacy = b.get("camera", instrument="SimCam")
    assert legacy == SimCam().definition() and Camera.from_dict(legacy) == Camera.from_instrument(SimCam())
    _observations(b)
    definition = SimCam().definition()
    definition["detectors"][0]["rotation_deg"] = 1.0
    b.certify_camera(SimCam.from_definition(definition), "2026-12-01")
    assert b.get("camera", instrument="SimCam", exposure=1300)["detectors"][0]["rotation_deg"] == 1.0
    assert b.get("camera", instrument="SimCam", exposure=1234) == SimCam().definition()
