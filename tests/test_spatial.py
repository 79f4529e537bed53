"""Spatial queries between visit/detector regions and tract/patch regions, on every backend."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from butler.errors import DataIdError
from butler.registry._spatial import RegionError, polygon_from_lonlat, regions_overlap
from butler.testing import snapshot_repo


def box(ra0: float, dec0: float, ra1: float, dec1: float):
    """A polygon with these corners (edges are great circles: east-west ones bulge poleward)."""
    return polygon_from_lonlat([(ra0, dec0), (ra1, dec0), (ra1, dec1), (ra0, dec1)])


def corner_piece():
    """A polygon inside patch 3 touching patches 0 and 2 only at the vertex (11, 11), whose
    southern edge lies on the great circle of patch 3's southern edge (shared with patch 1)."""
    import lsst.sphgeom as sg

    a = sg.UnitVector3d(sg.LonLat.fromDegrees(11, 11))
    b = sg.UnitVector3d(sg.LonLat.fromDegrees(12, 11))
    on_edge = sg.UnitVector3d(a.x() * 0.7 + b.x() * 0.3, a.y() * 0.7 + b.y() * 0.3, a.z() * 0.7 + b.z() * 0.3)
    lonlat = sg.LonLat(on_edge)
    ra = lonlat.getLon().asDegrees()
    top = sg.UnitVector3d(sg.LonLat.fromDegrees(ra, 11.3))
    return sg.ConvexPolygon([a, on_edge, top, sg.UnitVector3d(sg.LonLat.fromDegrees(11, 11.3))])


@pytest.fixture
def sky_repo(simcam_repo):
    """A 2x2 grid of one-degree patches and one visit with three detectors placed on purpose."""
    b = simcam_repo
    b.insert_dimension_records("skymap", [{"name": "grid", "hash": "0", "tract_max": 1,
                                           "patch_nx_max": 2, "patch_ny_max": 2}])
    b.insert_dimension_records("tract", [{"skymap": "grid", "id": 0, "region": box(10, 10, 12, 12)}])
    b.insert_dimension_records("patch", [
        {"skymap": "grid", "tract": 0, "id": y * 2 + x, "cell_x": x, "cell_y": y,
         "region": box(10 + x, 10 + y, 11 + x, 11 + y)}
        for y in range(2) for x in range(2)
    ])
    b.insert_dimension_records("visit_detector_region", [
        # inside patch 0
        {"instrument": "SimCam", "visit": 12, "detector": 0, "region": box(10.2, 10.2, 10.5, 10.5)},
        # shares its east edge with the boundary between patches 0 and 1: overlaps patch 0 only
        {"instrument": "SimCam", "visit": 12, "detector": 1, "region": box(10.5, 10.2, 11.0, 10.5)},
        # straddles patches 0 and 1
        {"instrument": "SimCam", "visit": 12, "detector": 2, "region": box(10.9, 10.2, 11.5, 10.5)},
        # lies in patch 3; touches patches 0 and 2 at a vertex and patch 1 along an edge
        {"instrument": "SimCam", "visit": 12, "detector": 3, "region": corner_piece()},
    ])
    return b


def patches_of(b, detector):
    return sorted(d["patch"] for d in b.query_data_ids(["patch"], instrument="SimCam", visit=12, detector=detector))


def test_detector_to_patches_has_no_false_positives_from_shared_edges(sky_repo):
    assert patches_of(sky_repo, 0) == [0]
    assert patches_of(sky_repo, 1) == [0]
    assert patches_of(sky_repo, 2) == [0, 1]
    assert patches_of(sky_repo, 3) == [3]


def test_patch_to_detectors_and_where_terms(sky_repo):
    ids = sky_repo.query_data_ids(["visit", "detector"], skymap="grid", tract=0, patch=1)
    assert [(d["visit"], d["detector"]) for d in ids] == [(12, 2)]
    ids = sky_repo.query_data_ids(["visit", "detector"], skymap="grid", tract=0, patch=0, where="band = 'r'")
    assert sorted(d["detector"] for d in ids) == [0, 1, 2]
    assert sky_repo.query_data_ids(["visit", "detector"], skymap="grid", tract=0, patch=0, where="band = 'g'") == []


def test_visit_to_tract_patch_band_uses_the_visit_band(sky_repo):
    ids = sky_repo.query_data_ids(["tract", "patch", "band"], instrument="SimCam", visit=12, detector=2)
    assert sorted((d["patch"], d["band"]) for d in ids) == [(0, "r"), (1, "r")]


def test_datasets_found_through_patches(sky_repo):
    for det in range(4):
        sky_repo.put({"d": det}, "metrics", instrument="SimCam", visit=12, detector=det)
    refs = sky_repo.query_datasets("metrics", skymap="grid", tract=0, patch=1)
    assert [r.data_id["detector"] for r in refs] == [2]


def test_update_regions_is_seen_at_once_and_leaves_no_stale_index_rows(sky_repo):
    b = sky_repo
    b.update_regions("visit_detector_region",
                     [{"instrument": "SimCam", "visit": 12, "detector": 0, "region": box(11.2, 10.2, 11.4, 10.4)}])
    assert patches_of(b, 0) == [1]
    index = b.registry.schema.skypix["visit_detector_region"]
    spatial = b.registry.records.spatial
    with b.registry.db.transaction() as conn:
        pix = set(conn.execute(sa.select(index.c.pix).where(index.c.detector == 0)).scalars())
    assert pix == set(spatial.pixels(box(11.2, 10.2, 11.4, 10.4)))


def test_bad_regions_are_rejected_and_nothing_is_written(sky_repo):
    b = sky_repo
    before = snapshot_repo(b)
    with pytest.raises(RegionError, match="no region"):
        b.insert_dimension_records("detector", [{"instrument": "SimCam", "id": 15, "full_name": "X", "purpose": "S",
                                                 "region": box(1, 1, 2, 2)}])
    with pytest.raises(RegionError, match="no regions to update"):
        b.update_regions("detector", [{"instrument": "SimCam", "id": 0, "region": box(1, 1, 2, 2)}])
    with pytest.raises(DataIdError, match="no visit_detector_region record"):
        b.update_regions("visit_detector_region",
                         [{"instrument": "SimCam", "visit": 12, "detector": 0, "region": box(11.2, 10.2, 11.4, 10.4)},
                          {"instrument": "SimCam", "visit": 12, "detector": 8, "region": box(1, 1, 2, 2)}])
    assert snapshot_repo(b) == before
    assert patches_of(b, 0) == [0]  # the first, valid update of the batch was rolled back too


def test_polygon_validation():
    with pytest.raises(RegionError, match="not convex"):
        polygon_from_lonlat([(0, 0), (2, 0), (1, 0.2), (2, 2), (0, 2)])
    with pytest.raises(RegionError, match="at least 3"):
        polygon_from_lonlat([(0, 0), (1, 1)])
    with pytest.raises(RegionError):
        polygon_from_lonlat([(0, 0), (1, 0), (2, 0)])  # collinear along the equator


def test_regions_overlap_means_interiors_intersect():
    a = bytes(box(0, 0, 1, 1).encode())
    assert regions_overlap(a, bytes(box(0.5, 0.5, 1.5, 1.5).encode()))
    assert not regions_overlap(a, bytes(box(1, 0, 2, 1).encode()))  # shared edge
    assert not regions_overlap(a, bytes(box(1, 1, 2, 2).encode()))  # shared vertex
    assert regions_overlap(a, bytes(box(0.999, 0, 2, 1).encode()))  # a thin real overlap
