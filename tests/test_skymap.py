"""Skymaps: determinism, lookups consistent with regions, patch overlaps, poles and RA wrap, errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import lsst.sphgeom as sg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.skymap import DiscreteSkyMap, RingsSkyMap, SkyMap, SkyMapIndexError, skymap_from_config
from butler.skymap._geometry import polygons_from_vertices, radec_to_vectors


@pytest.fixture(scope="module")
def rings() -> RingsSkyMap:
    return RingsSkyMap("rings12", 12, patch_grid=(5, 4), pixel_scale_arcsec=2.0, tract_overlap_deg=0.05,
                       patch_border_pixels=50)


@pytest.fixture(scope="module")
def discrete() -> DiscreteSkyMap:
    return DiscreteSkyMap("fields", [(10.0, -5.0), (150.0, 2.0), (359.5, 60.0)], radius_deg=1.0,
                          patch_grid=(3, 3), pixel_scale_arcsec=1.0)


def uniform_sky(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))


def assert_found_consistently(sm: SkyMap, ra: np.ndarray, dec: np.ndarray) -> None:
    """Each position lies in its found patch's inner region and its found tract's outer region."""
    tracts, patches = sm.find_tract_patch(ra, dec)
    vectors = radec_to_vectors(ra, dec)
    for tract_id in np.unique(tracts):
        tract = sm[int(tract_id)]
        mine = tracts == tract_id
        v = vectors[mine]
        assert np.all(tract.outer_region.contains(v[:, 0], v[:, 1], v[:, 2])), tract
        for patch_id in np.unique(patches[mine]):
            w = vectors[mine & (patches == patch_id)]
            assert np.all(tract.patch(int(patch_id)).inner_region.contains(w[:, 0], w[:, 1], w[:, 2]))


# -- configuration -----------------------------------------------------------------------------
def test_deterministic_config_and_digest(rings: RingsSkyMap) -> None:
    again = RingsSkyMap("rings12", 12, patch_grid=[5, 4], pixel_scale_arcsec=2, tract_overlap_deg=0.05,
                        patch_border_pixels=50)
    assert again.digest == rings.digest and again == rings
    assert len(rings.digest) == 64 and int(rings.digest, 16) >= 0
    assert json.loads(json.dumps(rings.config)) == rings.config
    rebuilt = skymap_from_config(json.loads(json.dumps(rings.config)))
    assert isinstance(rebuilt, RingsSkyMap) and rebuilt.digest == rings.digest
    assert RingsSkyMap.from_config(rings.config) == rings
    assert pickle.loads(pickle.dumps(rings)) == rings
    np.testing.assert_array_equal(rebuilt.patch_vertices([0, 7, 50]), rings.patch_vertices([0, 7, 50]))


def test_describe_difference(rings: RingsSkyMap, discrete: DiscreteSkyMap) -> None:
    other = RingsSkyMap("rings12", 13, patch_grid=(5, 4), pixel_scale_arcsec=2.0, tract_overlap_deg=0.05,
                        patch_border_pixels=50)
    assert other.digest != rings.digest
    assert rings.describe_difference(other) == "num_rings: 12 != 13"
    assert rings.describe_difference(rings) == "no difference"
    moved = DiscreteSkyMap("fields", [(10.0, -5.0), (151.0, 2.0), (359.5, 60.0)], radius_deg=1.0,
                           patch_grid=(3, 3), pixel_scale_arcsec=1.0)
    text = discrete.describe_difference(moved)
    assert "centers" in text and "index 1" in text and "150.0" in text and "151.0" in text
    assert "type: 'discrete' != 'rings'" in discrete.describe_difference(rings)


def test_rings_match_lsst_numbering() -> None:
    sm = RingsSkyMap("rings120", 120)
    assert sm.num_tracts == 18938  # LSST's rings skymap with 120 rings
    assert sm[0].center == (0.0, -90.0) and sm[sm.num_tracts - 1].center == (0.0, 90.0)
    assert sm.ring_of(1) == (0, 0) and sm.ring_of(sm.num_tracts - 1) == (120, None)
    ring, index = sm.ring_of(9000)
    ra, dec = sm[9000].center
    assert dec == pytest.approx(sm.ring_size_deg * (ring + 1) - 90.0)
    assert ra == pytest.approx(360.0 * index / sm.ring_counts[ring])
    assert sm.find_tract(ra, dec) == 9000


def test_import_does_not_load_astropy() -> None:
    code = "import sys, butler.skymap, butler.dimensions._packers; print('astropy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- geometry ----------------------------------------------------------------------------------
def test_tract_and_patch_boxes(rings: RingsSkyMap) -> None:
    tract = rings[40]
    nx, ny = tract.patch_grid
    w, h = tract.patch_size
    assert (tract.bbox.width, tract.bbox.height) == (nx * w, ny * h)
    assert tract.inner_bbox.x_min == rings.overlap_pixels == 90  # 0.05 deg at 2 arcsec/pixel
    patch = tract.patch(13)
    assert patch.index == (3, 2) and tract.patch((3, 2)) == patch
    assert patch.inner_bbox.to_tuple() == (3 * w, 2 * h, 4 * w, 3 * h)
    assert patch.outer_bbox.to_tuple() == (3 * w - 50, 2 * h - 50, 4 * w + 50, 3 * h + 50)
    corner = tract.patch((0, 0)).outer_bbox
    assert (corner.x_min, corner.y_min) == (0, 0)  # clipped to the tract
    assert [p.id for p in tract] == list(range(nx * ny)) and len(tract) == 20


def test_wcs_matches_hand_projection(rings: RingsSkyMap) -> None:
    x, y = np.array([0.0, 123.4, 2000.0, 5000.5]), np.array([10.0, 3000.0, 77.7, 4000.0])
    for tract_id in (0, 1, 40, rings.num_tracts - 1):  # both poles included
        tract = rings[tract_id]
        ra, dec = tract.pixel_to_sky(x, y)
        wra, wdec = tract.wcs.pixel_to_world_values(x, y)
        np.testing.assert_allclose(dec, wdec, atol=1e-9)
        np.testing.assert_allclose(np.cos(np.radians(dec)) * ((ra - wra + 180) % 360 - 180), 0.0, atol=1e-9)
        back = tract.sky_to_pixel(ra, dec)
        np.testing.assert_allclose(back, (x, y), atol=1e-6)
        assert tract.patch(3).wcs is tract.wcs


def test_regions_from_bulk_api_match_views(rings: RingsSkyMap) -> None:
    tract_regions = dict(rings.tract_regions())
    assert len(tract_regions) == rings.num_tracts
    for tract_id in (0, 17, rings.num_tracts - 1):
        tract = rings[tract_id]
        assert tract_regions[tract_id] == tract.outer_region
        rows = rings.patch_regions(tract_id)
        assert [(r[0], r[1], r[2]) for r in rows] == [(p.id, *p.index) for p in tract]
        for patch_id, _, _, region in rows[:: 7]:
            assert region == tract.patch(patch_id).outer_region
            hull = sg.ConvexPolygon([sg.UnitVector3d(v) for v in region.getVertices()])
            assert hull == region  # vertices already in sphgeom's counter-clockwise order
    batches = list(rings.iter_patch_regions(batch=16))
    assert [t for t, _ in batches] == list(range(rings.num_tracts))
    assert batches[17][1][5][3] == rings.patch_regions(17)[5][3]


def test_neighbouring_patches_overlap_by_the_border(rings: RingsSkyMap) -> None:
    tract = rings[25]
    left, right, above = tract.patch((1, 1)), tract.patch((2, 1)), tract.patch((1, 2))
    assert left.outer_region.overlaps(right.outer_region)
    edge = left.inner_bbox.x_max - 0.5  # continuous x of the shared edge
    y = (left.inner_bbox.y_min + left.inner_bbox.y_max) / 2
    # inside the right patch: within the border of the edge -> in the left patch's outer region; beyond, not
    ra, dec = tract.pixel_to_sky(np.array([edge + 1, edge + 49, edge + 51, edge + 300]), np.full(4, y))
    v = radec_to_vectors(ra, dec)
    assert list(left.outer_region.contains(v[:, 0], v[:, 1], v[:, 2])) == [True, True, False, False]
    assert list(right.inner_region.contains(v[:, 0], v[:, 1], v[:, 2])) == [True] * 4
    top = left.inner_bbox.y_max - 0.5
    x = (left.inner_bbox.x_min + left.inner_bbox.x_max) / 2
    ra, dec = tract.pixel_to_sky(np.full(2, x), np.array([top - 49, top - 51]))
    v = radec_to_vectors(ra, dec)
    assert list(above.outer_region.contains(v[:, 0], v[:, 1], v[:, 2])) == [True, False]


# -- lookups -----------------------------------------------------------------------------------
def test_random_positions_are_in_their_regions(rings: RingsSkyMap, discrete: DiscreteSkyMap) -> None:
    assert_found_consistently(rings, *uniform_sky(3000))
    rng = np.random.default_rng(3)
    ra = np.concatenate([rng.normal(c[0], 0.6, 300) for c in discrete.centers]) % 360
    dec = np.concatenate([rng.normal(c[1], 0.6, 300) for c in discrete.centers])
    _, patches = discrete.find_tract_patch(ra, dec, strict=False)
    assert_found_consistently(discrete, ra[patches >= 0], dec[patches >= 0])


def test_cell_boundaries_are_inside_their_tracts(rings: RingsSkyMap) -> None:
    """Positions just inside every ring and RA cell edge still fall in the found tract's patches."""
    eps = 1e-7
    ras, decs = [], []
    for ring in range(rings.num_rings):
        count = int(rings.ring_counts[ring])
        low = rings.ring_size_deg * (ring + 0.5) - 90.0
        for dec in (low + eps, low + rings.ring_size_deg / 2, low + rings.ring_size_deg - eps):
            edges = 360.0 * (np.arange(count) + 0.5) / count
            ras.extend(np.concatenate([edges - eps, edges + eps]) % 360)
            decs.extend([dec] * 2 * count)
    assert_found_consistently(rings, np.array(ras), np.array(decs))


@settings(max_examples=150, deadline=None)
@given(ra=st.floats(-720.0, 720.0), dec=st.floats(-90.0, 90.0))
def test_any_position_has_a_patch(ra: float, dec: float) -> None:
    sm = RingsSkyMap("rings7", 7, patch_grid=(3, 3), pixel_scale_arcsec=5.0)
    tract, patch = sm.find_tract_patch(ra, dec)
    assert isinstance(tract, int) and isinstance(patch, int)
    v = sg.UnitVector3d(sg.LonLat.fromDegrees(ra % 360.0, dec))
    assert sm[tract].patch(patch).inner_region.contains(v)


def test_poles_and_ra_wrap(rings: RingsSkyMap) -> None:
    last = rings.num_tracts - 1
    assert rings.find_tract(0.0, 90.0) == last and rings.find_tract(271.3, 89.0) == last
    assert rings.find_tract(12.0, -90.0) == 0 and rings.find_tract(359.9, -89.5) == 0
    first_of_ring = int(rings.ring_offsets[3])
    dec = rings[first_of_ring].center[1]
    ras = np.array([0.0, 360.0, 359.9999, -0.0001, 720.0, 1e-9])
    assert list(rings.find_tract(ras, np.full(6, dec))) == [first_of_ring] * 6
    assert rings.find_tract(180.0 + 360.0 / rings.ring_counts[3] / 2 - 1e-6, dec) == (
        first_of_ring + rings.ring_counts[3] // 2)
    # (exactly at a pole is exactly on a patch boundary when the grid is even: either patch is right)
    assert_found_consistently(rings, np.array([0.0, 359.9999, 45.0, 200.0]),
                              np.array([89.99999, -89.99999, 89.99, -89.99]))
    assert rings.find_patch(0, 0.0, -90.0) in (7, 12)


def test_vectorised_lookups_equal_scalar_ones(rings: RingsSkyMap) -> None:
    ra, dec = uniform_sky(50, seed=7)
    tracts, patches = rings.find_tract_patch(ra, dec)
    assert tracts.dtype == np.int64 and patches.shape == (50,)
    assert [rings.find_tract_patch(r, d) for r, d in zip(ra, dec)] == list(zip(tracts.tolist(), patches.tolist()))
    grid = rings.find_tract(ra.reshape(5, 10), dec.reshape(5, 10))
    assert grid.shape == (5, 10) and np.array_equal(grid.ravel(), tracts)


def test_discrete_lookup(discrete: DiscreteSkyMap) -> None:
    assert discrete.num_tracts == 3
    assert discrete.find_tract(10.2, -5.3) == 0 and discrete.find_tract(0.2, 60.1) == 2
    assert list(discrete.find_tract([149.0, 359.0], [2.5, 59.0])) == [1, 2]
    assert discrete.find_patch(0, 10.0, -5.0) == 4  # the centre is in the middle patch of a 3x3 grid
    assert discrete.find_tract_patch(15.0, -5.0, strict=False) == (0, -1)  # nearest tract, beyond its box
    with pytest.raises(SkyMapIndexError, match="outside tract 0.*strict=False"):
        discrete.find_tract_patch(15.0, -5.0)


def test_packer_from_skymap(rings: RingsSkyMap) -> None:
    packer = rings.packer()
    assert packer.fields == (("tract", rings.num_tracts), ("patch", 20))
    band_packer = rings.packer(bands=["g", "r", "i"])
    ids = band_packer.pack({"tract": [3, 4], "patch": [19, 0], "band": ["i", "g"]})
    assert band_packer.unpack(ids)["band"].tolist() == ["i", "g"]


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_rings": 0}, r"num_rings must be an integer in \[1,"),
    ({"num_rings": -3}, "num_rings"),
    ({"num_rings": 2.5}, "num_rings"),
    ({"patch_grid": (0, 10)}, r"patch_grid must be two positive integers"),
    ({"patch_grid": (10,)}, "patch_grid"),
    ({"pixel_scale_arcsec": 0.0}, r"pixel_scale_arcsec must be a number in \(0.0"),
    ({"tract_overlap_deg": -1.0}, "tract_overlap_deg"),
    ({"patch_border_pixels": -5}, r"patch_border_pixels must be an integer >= 0"),
    ({"name": ""}, "name"),
])
def test_bad_configuration(kwargs: dict, match: str) -> None:
    params = {"name": "bad", "num_rings": 12, **kwargs}
    with pytest.raises(ValueError, match=match):
        RingsSkyMap(**params)


def test_bad_discrete_configuration() -> None:
    with pytest.raises(ValueError, match="centers must be a non-empty list"):
        DiscreteSkyMap("d", [], radius_deg=1.0)
    with pytest.raises(ValueError, match=r"centers\[1\] dec"):
        DiscreteSkyMap("d", [(1.0, 2.0), (3.0, 95.0)], radius_deg=1.0)
    with pytest.raises(ValueError, match="radius_deg"):
        DiscreteSkyMap("d", [(1.0, 2.0)], radius_deg=0.0)
    with pytest.raises(ValueError, match="not 'discrete'"):
        DiscreteSkyMap.from_config(RingsSkyMap("r", 3).config)
    with pytest.raises(ValueError, match="unknown skymap type 'hex'"):
        skymap_from_config({"type": "hex"})


def test_unknown_tract_and_patch(rings: RingsSkyMap) -> None:
    last = rings.num_tracts - 1
    with pytest.raises(SkyMapIndexError, match=f"no tract {last + 1}; valid tract ids are 0 to {last}"):
        rings[last + 1]
    with pytest.raises(IndexError):
        rings[-1]
    with pytest.raises(ValueError, match="no patch 20; valid patch ids are 0 to 19"):
        rings[3].patch(20)
    with pytest.raises(ValueError, match=r"no patch index \(5, 0\); valid indices are x in 0..4, y in 0..3"):
        rings[3].patch((5, 0))
    with pytest.raises(SkyMapIndexError, match=r"no tract 9999 \(index 1\)"):
        rings.find_patch(np.array([1, 9999]), [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(SkyMapIndexError, match="index 1 is outside tract 1"):
        rings.find_patch(1, [0.0, 180.0], [-70.0, 0.0])
    assert rings.find_patch(1, [180.0], [0.0], strict=False).tolist() == [-1]  # the far side of the sky
    with pytest.raises(ValueError, match="index 2 is not on the sky"):
        rings.find_tract([0.0, 1.0, 2.0], [0.0, 0.0, 91.0])


def test_encoded_polygons_are_sphgeom_encodings() -> None:
    # counter-clockwise seen from outside: east, then north
    units = [sg.UnitVector3d(*x) for x in radec_to_vectors([0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0])]
    v = np.array([[[u.x(), u.y(), u.z()] for u in units]])
    (poly,) = polygons_from_vertices(v)
    hull = sg.ConvexPolygon(units)
    assert poly == hull and len(bytes(poly.encode())) == 1 + 4 * 24
    with pytest.raises(ValueError, match="shape"):
        polygons_from_vertices(v[0])
