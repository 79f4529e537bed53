"""Two instruments in one repository: shared bands, joint queries, packed IDs that never collide (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest

from butler import Butler


@pytest.fixture
def joint_repo(repo_factory):
    from butler.instrument import HexCam, SimCam

    butler = Butler(repo_factory().root, writeable=True)
    butler.register_instrument(SimCam())
    butler.register_instrument(HexCam())
    butler.insert_dimension_records("day_obs", [{"instrument": i, "id": 20261124} for i in ("SimCam", "HexCam")])
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124},
        {"instrument": "SimCam", "id": 13, "physical_filter": "SimCam-g", "day_obs": 20261124},
        {"instrument": "HexCam", "id": 12, "physical_filter": "HX-R2", "day_obs": 20261124},
        {"instrument": "HexCam", "id": 99, "physical_filter": "HX-N921", "day_obs": 20261124},
    ])
    return butler


def test_shared_band_selects_both_instruments(joint_repo):
    rows = joint_repo.query_data_ids(["visit", "detector"], where="band = 'r'")
    by_inst = {}
    for r in rows:
        by_inst.setdefault(r["instrument"], set()).add(r["visit"])
    assert by_inst == {"SimCam": {12}, "HexCam": {12}}
    assert sum(1 for r in rows if r["instrument"] == "HexCam") == 16
    assert sum(1 for r in rows if r["instrument"] == "SimCam") == 9
    # each instrument keeps its own calib chain and camera
    assert joint_repo.get("camera", instrument="HexCam")["name"] == "HexCam"
    assert joint_repo.get_chain("HexCam/calib") == ["HexCam/calib/unbounded"]


def test_joint_packer_ids_never_collide(joint_repo):
    rows = joint_repo.query_data_ids(["visit", "detector"])
    packer = joint_repo.packer("instrument_visit_detector")
    data = {k: np.array([r[k] for r in rows]) for k in ("instrument", "visit", "detector")}
    ids = packer.pack(data)
    assert len(set(ids.tolist())) == len(rows)  # SimCam visit 12 and HexCam visit 12 differ
    back = packer.unpack(ids)
    assert back["instrument"].tolist() == data["instrument"].tolist()
    assert back["visit"].tolist() == data["visit"].tolist()
    # at the extremes of both instruments' ranges, too
    extremes = {"instrument": np.array(["SimCam", "HexCam"] * 2),
                "visit": np.array([0, 0, 2**20 - 1, 9_999_999]), "detector": np.array([0, 0, 15, 255])}
    assert len(set(packer.pack(extremes).tolist())) == 4
    # indices are stable: the same in a new Butler, and per repository
    again = Butler(joint_repo.root).packer("instrument_visit_detector")
    assert again.pack({"instrument": "HexCam", "visit": 12, "detector": 100}) == packer.pack(
        {"instrument": "HexCam", "visit": 12, "detector": 100})
    with pytest.raises(ValueError, match="not one this packer was built with"):
        packer.pack({"instrument": "NoCam", "visit": 1, "detector": 1})
