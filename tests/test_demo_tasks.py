"""The demo pipeline's tasks, run directly on simulated data (no repository): physics checks."""

from __future__ import annotations

import math
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from butler.exposure import Exposure
from butler.instrument import SimCam
from orchestration import Pipeline, QuantumContext
from orchestration.demo import (
    NO_DATA,
    CalibrateTask,
    CoaddTask,
    NoInputs,
    WarpTask,
    asinh_stretch,
    demo_skymap,
    select_warps,
    write_png,
)
from orchestration.demo.simulate import VisitPlan, detector_wcs, make_truth_catalog, render_stars, simulate_raw

DETECTORS = {d["id"]: d for d in SimCam().dimension_records()["detector"]}
TRACT, PATCH = 9000, 45


@pytest.fixture(scope="module")
def skymap():
    return demo_skymap()


@pytest.fixture(scope="module")
def patch_centre(skymap):
    box = skymap[TRACT].patch(PATCH).inner_bbox
    ra, dec = skymap[TRACT].pixel_to_sky((box.x_min + box.x_max - 1) / 2, (box.y_min + box.y_max - 1) / 2)
    return float(ra), float(dec)


@pytest.fixture(scope="module")
def truth(skymap, patch_centre):
    x, y = skymap[TRACT].sky_to_pixel(*patch_centre)
    half = 450.0  # tract pixels (1 arcsec): more than the camera's field of view
    return make_truth_catalog(skymap, TRACT, (x - half, x + half), (y - half, y + half), bands=("r",), seed=3)


def _plan(patch_centre, *, seeing=0.8, calib=1.1, shift=(0.0, 0.0), visit=1000, day_obs=20261124):
    return VisitPlan(id=visit, band="r", day_obs=day_obs, begin=datetime(2026, 11, 25, 1, tzinfo=UTC),
                     ra=patch_centre[0], dec=patch_centre[1], seeing=seeing, calib=calib, sky=1000.0,
                     shift_pixels=shift)


def _context(sky, **data_id):
    return QuantumContext(dict(data_id), {}, SimpleNamespace(get_skymap=lambda name: sky))


# -- simulation ----------------------------------------------------------------------------------
def test_render_stars_conserves_flux_and_centres() -> None:
    image = render_stars((64, 64), [20.3, 40.0], [30.6, 10.2], [1000.0, 500.0], 1.5)
    assert image.sum() == pytest.approx(1500.0, rel=1e-6)
    ys, xs = np.mgrid[0:64, 0:64]
    window = (np.abs(xs - 20.3) < 10) & (np.abs(ys - 30.6) < 10)
    assert (image * xs)[window].sum() / image[window].sum() == pytest.approx(20.3, abs=1e-3)
    assert (image * ys)[window].sum() / image[window].sum() == pytest.approx(30.6, abs=1e-3)
    # A star on the edge pixel keeps what falls on the image (x >= -0.5).
    edge = render_stars((64, 64), [0.0], [32.0], [1000.0], 1.5)
    assert edge.sum() == pytest.approx(1000.0 * 0.5 * (1 + math.erf(0.5 / 1.5 / math.sqrt(2))), rel=1e-5)


def test_detector_wcs_matches_registry_regions(patch_centre) -> None:
    from butler._skymaps import _sky_polygon, detector_corners

    ra0, dec0 = patch_centre
    for angle in (0.0, 30.0):
        for det_id in (0, 5, 7):
            det = dict(DETECTORS[det_id])
            wcs = detector_wcs(ra0, dec0, angle, det)
            w, h = det["bbox_width"], det["bbox_height"]
            corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
            ra, dec = wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0)
            region = _sky_polygon(ra0, dec0, angle, detector_corners(det))
            vertices = np.array([[v.x(), v.y(), v.z()] for v in region.getVertices()])
            mine = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                             np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))], axis=1)
            # Every pixel-box corner is a region vertex (to 1 milliarcsec).
            chord = np.linalg.norm(mine[:, None, :] - vertices[None, :, :], axis=2).min(axis=1)
            sep = np.degrees(chord) * 3600
            assert sep.max() < 1e-3, (angle, det_id, sep)


def test_truth_star_lands_on_an_image_peak(patch_centre, truth) -> None:
    raw = simulate_raw(_plan(patch_centre), DETECTORS[4], truth)
    assert raw.image.dtype == np.float32 and raw.shape == (1024, 1024)
    assert np.all(raw.mask == 0) and np.all(raw.variance > 0)
    ref = raw.metadata["truth"]
    order = np.argsort(ref["flux"])[::-1]
    x, y = raw.wcs.wcs_world2pix(np.array(ref["ra"])[order], np.array(ref["dec"])[order], 0)
    checked = 0
    for xi, yi in zip(x, y):
        ix, iy = round(xi), round(yi)
        if not (5 <= ix < 1019 and 5 <= iy < 1019):
            continue
        window = raw.image[iy - 3 : iy + 4, ix - 3 : ix + 4]
        py, px = np.unravel_index(np.argmax(window), window.shape)
        assert abs(px - 3) <= 1 and abs(py - 3) <= 1, (xi, yi)
        checked += 1
        if checked == 5:
            break
    assert checked == 5
    assert np.median(raw.image) == pytest.approx(1000.0, rel=0.02)


# -- calibrate -----------------------------------------------------------------------------------
def test_calibrate_recovers_zero_point_psf_and_shift(patch_centre, truth) -> None:
    plan = _plan(patch_centre, seeing=0.9, calib=1.23, shift=(1.6, -2.2))
    raw = simulate_raw(plan, DETECTORS[4], truth)
    out = CalibrateTask().run(raw=raw)
    calexp, src = out["calexp"], out["src"]
    md = calexp.metadata
    assert calexp.photo_calib == pytest.approx(1.23, rel=0.02)
    assert md["seeing"] == pytest.approx(0.9, rel=0.05)
    assert md["astrometric_shift_pixels"] == pytest.approx([1.6, -2.2], abs=0.3)
    assert md["astrometric_rms_arcsec"] < 0.1
    assert abs(float(np.median(calexp.image))) < 5.0  # background removed (sky noise ~ 32)
    assert calexp.psf is not None and calexp.psf.sum() == pytest.approx(1.0, rel=1e-4)
    assert "truth" not in md and np.any(calexp.mask != 0)
    # Most bright reference stars inside the detector are detected and matched.
    ref = raw.metadata["truth"]
    x, y = raw.wcs.wcs_world2pix(np.array(ref["ra"]), np.array(ref["dec"]), 0)
    bright = (np.array(ref["flux"]) / 1.23 > 20_000) & (x > 30) & (x < 994) & (y > 30) & (y < 994)
    found = np.isin(np.array(ref["id"])[bright], np.asarray(src["truth_id"]))
    assert bright.sum() >= 5 and found.mean() >= 0.9
    # Calibrated fluxes of matched bright stars agree with the truth; positions too (corrected WCS).
    good = (np.asarray(src["truth_id"]) >= 0) & (np.asarray(src["snr"]) > 50)
    ratio = np.asarray(src["flux_njy"])[good] / np.asarray(src["truth_flux"])[good]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    ids = np.asarray(src["truth_id"])[good]
    lookup = {i: k for k, i in enumerate(ref["id"])}
    tra = np.array([ref["ra"][lookup[i]] for i in ids])
    tdec = np.array([ref["dec"][lookup[i]] for i in ids])
    dra = (np.asarray(src["ra"])[good] - tra) * math.cos(math.radians(patch_centre[1])) * 3600
    ddec = (np.asarray(src["dec"])[good] - tdec) * 3600
    assert np.median(np.hypot(dra, ddec)) < 0.05
    assert set(src.colnames) == set(CalibrateTask().make_init_outputs()["src_schema"])


# -- warp ----------------------------------------------------------------------------------------
def _calexp(patch_centre, det_id, image, *, calib=2.0, variance=None, metadata=None):
    det = DETECTORS[det_id]
    wcs = detector_wcs(patch_centre[0], patch_centre[1], 0.0, det)
    md = {"visit": 1000, "detector": det_id, "band": "r", "day_obs": 20261124, "seeing": 0.8,
          "psf_sigma_pixels": 1.7, **(metadata or {})}
    var = np.ones_like(image) if variance is None else variance
    return Exposure(image.astype(np.float32), variance=var.astype(np.float32), wcs=wcs, photo_calib=calib,
                    metadata=md)


def test_warp_of_a_flat_image_is_flat(skymap, patch_centre) -> None:
    calexps = {("d", i): _calexp(patch_centre, i, np.ones((1024, 1024))) for i in range(9)}
    ctx = _context(skymap, instrument="SimCam", visit=1000, skymap="demo", tract=TRACT, patch=PATCH)
    warp = WarpTask().run(calexp=calexps, context=ctx)["warp"]
    outer = skymap[TRACT].patch(PATCH).outer_bbox
    assert warp.shape == (outer.height, outer.width) and warp.origin == (outer.x_min, outer.y_min)
    good = (warp.mask & NO_DATA) == 0
    assert 0.7 < good.mean() < 1.0  # chip gaps and the edge of the field are NO_DATA
    # 1 count per 0.2" pixel x 25 pixels per 1" pixel x 2 nJy/count: surface brightness conserved.
    assert np.allclose(warp.image[good], 50.0, rtol=1e-4)
    assert np.allclose(warp.variance[good], 25.0 * 4.0, rtol=1e-4)
    assert np.all(np.isnan(warp.image[~good])) and np.all(np.isnan(warp.variance[~good]))
    assert warp.metadata["visit"] == 1000 and warp.metadata["day_obs"] == 20261124
    assert warp.metadata["seeing"] == 0.8 and warp.metadata["units"] == "nJy"
    # The warp's WCS is the tract's, cut to the patch's outer box.
    ra, dec = warp.wcs.wcs_pix2world([0.0], [0.0], 0)
    assert np.allclose(skymap[TRACT].pixel_to_sky(outer.x_min, outer.y_min), (ra[0], dec[0]), atol=1e-9)


def test_warp_puts_a_star_at_its_sky_position_with_its_flux(skymap, patch_centre) -> None:
    star_x, star_y, flux = 480.3, 530.6, 50_000.0
    image = render_stars((1024, 1024), [star_x], [star_y], [flux], 4.0)
    calexp = _calexp(patch_centre, 4, image, calib=1.5)
    ctx = _context(skymap, instrument="SimCam", visit=1000, skymap="demo", tract=TRACT, patch=PATCH)
    warp = WarpTask().run(calexp={"c": calexp}, context=ctx)["warp"]
    ra, dec = calexp.wcs.wcs_pix2world([star_x], [star_y], 0)
    ex, ey = warp.wcs.wcs_world2pix(ra, dec, 0)
    ix, iy = round(ex[0]), round(ey[0])
    window = warp.image[iy - 8 : iy + 9, ix - 8 : ix + 9].astype(float)
    ys, xs = np.mgrid[iy - 8 : iy + 9, ix - 8 : ix + 9]
    assert window.sum() == pytest.approx(flux * 1.5, rel=0.005)
    assert (window * xs).sum() / window.sum() == pytest.approx(ex[0], abs=0.05)
    assert (window * ys).sum() / window.sum() == pytest.approx(ey[0], abs=0.05)


# -- coadd ---------------------------------------------------------------------------------------
def _warp(image, variance, *, visit, day_obs=20261124, seeing=0.8, origin=(100, 200)):
    mask = np.where(np.isnan(image), NO_DATA, 0).astype(np.int32)
    return Exposure(image.astype(np.float32), mask, variance.astype(np.float32), origin=origin,
                    psf=np.ones((3, 3), np.float32) / 9,
                    metadata={"visit": visit, "day_obs": day_obs, "seeing": seeing, "coverage": 1.0})


def test_coadd_of_identical_warps_is_the_warp_with_variance_over_n(skymap) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 10.0, size=(40, 50))
    image[:5, :] = np.nan
    variance = rng.uniform(50.0, 150.0, size=(40, 50))
    warps = {v: _warp(image, variance, visit=v) for v in (1, 2, 3)}
    ctx = QuantumContext({"skymap": "demo", "tract": TRACT, "patch": PATCH, "band": "r", "flavor": "deep"},
                         {"flavor": {"name": "deep", "kind": "deep", "day_obs": None}})
    coadd = CoaddTask().run(warp=warps, context=ctx)["coadd"]
    good = ~np.isnan(image)
    assert np.allclose(coadd.image[good], image[good], rtol=1e-6)
    assert np.allclose(coadd.variance[good], variance[good] / 3, rtol=1e-6)
    assert np.all((coadd.mask[~good] & NO_DATA) != 0) and np.all(np.isnan(coadd.image[~good]))
    assert coadd.origin == (100, 200) and coadd.metadata["n_inputs"] == 3 and coadd.metadata["flavor"] == "deep"
    assert coadd.psf.sum() == pytest.approx(1.0, rel=1e-5)


def test_coadd_weights_by_inverse_variance() -> None:
    a = _warp(np.full((4, 4), 10.0), np.full((4, 4), 1.0), visit=1)
    b = _warp(np.full((4, 4), 20.0), np.full((4, 4), 3.0), visit=2)
    ctx = QuantumContext({"flavor": "deep"}, {"flavor": {"name": "deep", "kind": "deep"}})
    coadd = CoaddTask().run(warp={1: a, 2: b}, context=ctx)["coadd"]
    assert np.allclose(coadd.image, (10 / 1 + 20 / 3) / (1 + 1 / 3))
    assert np.allclose(coadd.variance, (1 / 1 + 3 / 9) / (1 + 1 / 3) ** 2)


def test_flavor_selection() -> None:
    seeing = {1: 0.9, 2: 0.6, 3: 1.1, 4: 0.7, 5: 1.0}
    nights = {1: 20261124, 2: 20261124, 3: 20261125, 4: 20261125, 5: 20261125}
    warps = {v: _warp(np.ones((2, 2)), np.ones((2, 2)), visit=v, seeing=seeing[v], day_obs=nights[v]) for v in seeing}
    assert select_warps(warps, {"kind": "deep"}) == [1, 2, 3, 4, 5]
    assert select_warps(warps, {"kind": "bestSeeing"}) == [1, 2, 4]  # ceil(5 / 2) best
    assert select_warps(warps, {"kind": "bestSeeing"}, best_seeing_fraction=0.2) == [2]
    assert select_warps(warps, {"kind": "nightly", "day_obs": 20261125}) == [3, 4, 5]
    assert select_warps(warps, {"kind": "nightly", "day_obs": 20261126}) == []
    assert select_warps(warps, {"kind": "goodSeeing"}, good_seeing_max=0.85) == [2, 4]
    with pytest.raises(NoInputs, match="chi2"):
        select_warps(warps, {"kind": "chi2", "name": "chi2"})
    with pytest.raises(ValueError, match="unknown coadd flavor kind 'chi3'"):
        select_warps(warps, {"kind": "chi3"})
    ctx = QuantumContext({"flavor": "nightly-20261126", "band": "r"},
                         {"flavor": {"name": "nightly-20261126", "kind": "nightly", "day_obs": 20261126}})
    with pytest.raises(NoInputs, match="selects none of the 5 warps"):
        CoaddTask().run(warp=warps, context=ctx)
    ctx = QuantumContext({"flavor": "bestSeeing"}, {"flavor": {"name": "bestSeeing", "kind": "bestSeeing"}})
    coadd = CoaddTask().run(warp=warps, context=ctx)["coadd"]
    assert sorted(coadd.metadata["visits"]) == [1, 2, 4] and coadd.metadata["inputs_available"] == 5


# -- preview -------------------------------------------------------------------------------------
def _read_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_png_writer(tmp_path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, size=(30, 47))
    image[10, 20] = 500.0
    image[0, 0] = np.nan
    path = write_png(image, tmp_path / "preview.png")
    chunks = _read_png(path)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, compression, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour, compression, filt, interlace) == (47, 30, 8, 0, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(height, width + 1)
    assert np.all(rows[:, 0] == 0)  # filter type "none" on every scanline
    pixels = rows[:, 1:][::-1]  # written north (last row) up
    assert np.array_equal(pixels, asinh_stretch(image))
    assert pixels[10, 20] == 255 and pixels[0, 0] == 0
    with pytest.raises(ValueError, match="2-D"):
        write_png(np.zeros(5), tmp_path / "bad.png")


def test_pipeline_yaml_declares_the_demo_tasks() -> None:
    pipeline = Pipeline.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "coadd.yaml")
    defs = {d.label: d for d in pipeline.task_defs()}
    assert list(defs) == ["calibrate", "warp", "coadd"]
    assert pipeline.subset("single_frame").labels == ["calibrate"]
    conns = {c.dataset_type: c for d in defs.values() for c in d.task_class.connections.values()}
    assert conns["raw"].dimensions == ("instrument", "exposure", "detector")
    assert conns["calexp"].storage_class == "Exposure" and conns["src"].storage_class == "SourceCatalog"
    assert set(conns["coadd"].dimensions) == {"skymap", "tract", "patch", "band", "flavor"}
    assert conns["warp"].multiple and defs["calibrate"].config.threshold == 5.0


# -- simulate into a repository ------------------------------------------------------------------
def test_simulate_raws_into_a_repository(tmp_path, patch_centre) -> None:
    from butler import Butler
    from butler.skymap import DiscreteSkyMap
    from orchestration.demo import simulate_raws

    Butler.create(str(tmp_path / "repo"))
    butler = Butler(str(tmp_path / "repo"), writeable=True)
    butler.register_instrument(SimCam())
    # One small tract (fast to register) with 1 arcsec pixels, like the demo skymap's.
    sky = DiscreteSkyMap("tiny", [patch_centre], radius_deg=0.2, patch_grid=(3, 3), pixel_scale_arcsec=1.0,
                         patch_border_pixels=20)
    butler.register_skymap(sky)
    summary = simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",), visits_per_band=2)
    assert summary["raws_written"] == 18 and summary["visits"] == [1000, 1001]
    visits = {v.id: v for v in butler.query_dimension_records("visit", instrument="SimCam")}
    assert sorted(visits) == [1000, 1001] and {v.day_obs for v in visits.values()} == {20261124, 20261125}
    assert butler.query_datasets("truth_catalog", collections="SimCam/raw/all")
    # Registry regions agree with the pixels: a detector overlaps the patch iff its WCS puts pixels there.
    outer = sky[0].patch(4).outer_bbox
    related = {(d["visit"], d["detector"]) for d in butler.query_data_ids(
        ["visit", "detector"], where="skymap = 'tiny' AND tract = 0 AND patch = 4 AND instrument = 'SimCam'")}
    for ref in butler.query_datasets("raw", collections="SimCam/raw/all"):
        wcs = butler.get(ref, component="wcs")
        xs, ys = np.meshgrid(np.linspace(-0.5, 1023.5, 33), np.linspace(-0.5, 1023.5, 33))
        ra, dec = wcs.wcs_pix2world(xs.ravel(), ys.ravel(), 0)
        tx, ty = sky[0].sky_to_pixel(ra, dec)
        hits = ((tx >= outer.x_min - 0.5) & (tx < outer.x_max - 0.5) & (ty >= outer.y_min - 0.5)
                & (ty < outer.y_max - 0.5)).any()
        assert hits == ((ref.data_id["exposure"], ref.data_id["detector"]) in related), ref.data_id
    # A second call keeps what exists.
    again = simulate_raws(butler, skymap_name="tiny", tract=0, patches=[4], bands=("r",), visits_per_band=2)
    assert again["raws_written"] == 0 and again["raws_skipped"] == 18


def test_calibrate_without_reference_stars_is_a_clear_error(patch_centre, truth) -> None:
    from orchestration.demo.tasks import CalibrationError

    raw = simulate_raw(_plan(patch_centre), DETECTORS[4], truth)
    raw.metadata["truth"] = {"id": [], "ra": [], "dec": [], "flux": []}
    with pytest.raises(CalibrationError, match=r"0 reference stars .* at least 3 bright"):
        CalibrateTask().run(raw=raw)
