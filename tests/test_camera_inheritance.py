"""Camera inheritance: ``inherits:`` a parent camera, with documented merge semantics (issue 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from butler import Butler
from butler.errors import ConflictError
from butler.instrument import CameraDefinitionError, SimCam, VisitDetectorInstrument, load_instrument
from butler.testing import snapshot_repo

CHILD = """\
name: SimCam2
inherits: {parent}
detector_max: 32
aliases:
  chip: detector
  sensor: null
filters:
  - {{name: SimCam-r, band: r}}
  - {{name: SimCam-N, band: N708}}
remove_filters: [SimCam-y]
remove_detectors: [8]
detectors:
  - {{id: 4, full_name: S11, bbox: [2048, 2048], pixel_scale_arcsec: 0.1, offset_mm: [0.0, 0.0]}}
  - {{id: 20, full_name: W0, purpose: WAVEFRONT, bbox: [512, 512], pixel_scale_arcsec: 0.2, offset_mm: [30.0, 30.0]}}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("parent", ["SimCam", "butler.instrument.SimCam", "simcam.yaml"])
def test_child_overrides_parent(tmp_path, parent):
    if parent.endswith(".yaml"):
        _write(tmp_path, "simcam.yaml", Path(SimCam.default_camera_path()).read_text())
    child = load_instrument(_write(tmp_path, "child.yaml", CHILD.format(parent=parent)))
    assert isinstance(child, VisitDetectorInstrument) and child.name == "SimCam2"
    assert child.detector_max == 32 and child.visit_max == SimCam().visit_max
    assert child.aliases == {"ccd": "detector", "ccdnum": "detector", "chip": "detector", "filter": "physical_filter"}
    assert [f.name for f in child.filters] == ["SimCam-g", "SimCam-r", "SimCam-i", "SimCam-z", "SimCam-N"]
    assert [d.id for d in child.detectors] == [0, 1, 2, 3, 4, 5, 6, 7, 20]
    assert child.get_detector(4).bbox_width == 2048 and child.get_detector("S00").bbox_width == 1024
    # code for the parent works on the child: records, aliases, pickling
    records = child.dimension_records()
    assert len(records["detector"]) == 9 and {"name": "N708"} in records["band"]
    assert child.normalize_keys({"chip": 3}) == {"detector": 3}
    import pickle

    assert pickle.loads(pickle.dumps(child)) == child


def test_child_registers_next_to_parent(repo_factory, tmp_path):
    butler = Butler(repo_factory().root, writeable=True)
    butler.register_instrument(SimCam())
    child = load_instrument(_write(tmp_path, "child.yaml", CHILD.format(parent="SimCam")))
    butler.register_instrument(child)
    assert butler.get("camera", instrument="SimCam2").detector_max == 32
    assert {r.name for r in butler.query_dimension_records("instrument")} == {"SimCam", "SimCam2"}
    # the same name with another definition is refused, nothing written
    other = load_instrument(_write(tmp_path, "other.yaml", CHILD.format(parent="SimCam").replace("32", "64")))
    before = snapshot_repo(butler)
    with pytest.raises(ConflictError, match="'SimCam2' is already registered with a different definition"):
        butler.register_instrument(other)
    assert snapshot_repo(butler) == before


def test_missing_parent_and_cycles(tmp_path):
    with pytest.raises(CameraDefinitionError, match="parent camera 'NoCam' does not exist"):
        load_instrument(_write(tmp_path, "a.yaml", CHILD.format(parent="NoCam")))
    with pytest.raises(CameraDefinitionError, match="parent camera file .*missing.yaml' does not exist"):
        load_instrument(_write(tmp_path, "b.yaml", CHILD.format(parent="missing.yaml")))
    _write(tmp_path, "c1.yaml", "name: C1\ninherits: c2.yaml\n")
    _write(tmp_path, "c2.yaml", "name: C2\ninherits: c1.yaml\n")
    with pytest.raises(CameraDefinitionError, match="forms a cycle"):
        load_instrument(tmp_path / "c1.yaml")
    with pytest.raises(CameraDefinitionError, match="forms a cycle"):
        load_instrument(_write(tmp_path, "self.yaml", "name: S\ninherits: self.yaml\n"))
    with pytest.raises(CameraDefinitionError, match="unknown key"):
        load_instrument(_write(tmp_path, "bad.yaml", "name: S\ninherits: SimCam\nbogus: 1\n"))
