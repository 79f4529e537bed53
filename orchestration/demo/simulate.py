"""Synthetic raws over a few patches: a truth catalogue of stars, rendered per detector.

Any registered visit+detector instrument can be simulated (SimCam by default; HexCam too): its
detectors' geometry and its physical filters come from the registry, so several instruments can
observe one truth catalogue (``truth=``) and feed one joint coadd.

The simulation, step by step (all numpy, deterministic from ``seed``):

1. **Pointings.** ``visits_per_band`` visits per band cycle over the requested patches (visit ``k``
   points at patch ``k % len(patches)``, dithered by up to ``dither_arcsec``) and over the nights
   (``day_obs``), so every patch has visits on every night. Each visit gets a seeing (FWHM, uniform
   in ``seeing_range``), a photometric zero point (nJy per count: a per-band throughput times a
   transparency in 0.8..1), a sky level (~1000 counts with a small gradient) and a pointing error
   (the raw WCS is the nominal one; the stars are drawn where the true, slightly shifted, WCS puts
   them, so calibration has an astrometric offset to find).
2. **Truth catalogue.** Stars uniform on the tract's tangent plane over the area the visits cover,
   fluxes from a power law ``N(>F) ~ F**-0.7`` between ``flux_range`` (nJy, r band) and a colour per
   star for the other bands; stored as the ``truth_catalog`` dataset (skymap, tract).
3. **Pixels.** Per detector: sky + pixel-integrated Gaussian stars (stamped only near each star,
   one ``bincount`` per detector) in counts; noise is Gaussian with variance equal to the expected
   counts (gain 1); ``variance`` is that expectation; ``mask`` is zeros. The WCS is TAN with
   CRVAL at the boresight, the detector placed at its focal-plane offset (mm / 10 um * pixel scale)
   and rotated by ``sky_angle`` (and the detector's own rotation), exactly as
   ``butler.instrument.detector_corners`` does for the registry regions, so regions match pixels.
   Pixel x runs towards the west and y towards the north (CD = diag(-s, s) at ``sky_angle`` 0),
   like the skymap's tracts.
4. **Metadata.** Each raw carries its observation (visit, band, day_obs, exposure time), the
   simulated truth under ``SIM_*`` keys, and ``truth``: the catalogue stars on the detector that
   are bright enough to matter (the demo's reference catalogue, used by calibration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from butler.instrument import PIXEL_SIZE_MM

from ._common import normal_cdf

if TYPE_CHECKING:
    from astropy.table import Table
    from astropy.wcs import WCS

    from butler.exposure import Exposure

__all__ = [
    "DEMO_NIGHTS",
    "VisitPlan",
    "band_filters",
    "demo_flavor_records",
    "demo_skymap",
    "detector_wcs",
    "make_truth_catalog",
    "plan_visits",
    "prepare_demo_repo",
    "render_stars",
    "simulate_raw",
    "simulate_raws",
]

DEMO_NIGHTS = (20261124, 20261125)
BAND_THROUGHPUT = {"u": 2.5, "g": 1.25, "r": 1.0, "i": 1.1, "z": 1.4, "y": 2.2}  # nJy per count at transparency 1
BAND_COLOUR = {"u": 1.6, "g": 1.0, "r": 0.0, "i": -0.35, "z": -0.55, "y": -0.65}  # x (g-r) -> mag offset vs r
TRUTH_IN_METADATA_MIN_NJY = 1000.0  # fainter truth stars are not listed in a raw's metadata


# -- the demo's skymap and flavors (suggested; the demo driver registers them) -------------------
def demo_skymap(name: str = "demo") -> Any:
    """The demo skymap: LSST's 120-ring tracts at 1 arcsec pixels, 10x10 patches (~550 px each).

    Tract 9000 is at (ra, dec) ~ (23.80, -2.23); patches 44..46 are a strip ~0.46 x 0.15 degrees.
    Registering the whole skymap writes ~1.9 million patches: register only the tracts in use
    (``butler.register_skymap(demo_skymap(), tracts=[9000])``).
    """
    from butler.skymap import RingsSkyMap

    return RingsSkyMap(name, 120, patch_grid=(10, 10), pixel_scale_arcsec=1.0, tract_overlap_deg=0.02,
                       patch_border_pixels=20)


def demo_flavor_records(nights: Sequence[int] = DEMO_NIGHTS) -> list[dict[str, Any]]:
    """``flavor`` records of the demo: deep, bestSeeing and ``nightly-YYYYMMDD`` for each night."""
    from butler.flavors import default_flavors

    return default_flavors(nights)


# -- geometry ------------------------------------------------------------------------------------
def _rotation(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def detector_wcs(ra: float, dec: float, sky_angle: float, detector: Mapping[str, Any], *,
                 shift_pixels: tuple[float, float] = (0.0, 0.0)) -> WCS:
    """TAN WCS of a detector for a boresight (degrees), consistent with the registry's regions.

    A pixel ``p`` maps to the tangent-plane offset (arcsec, x east, y north)
    ``R(sky_angle) (c + R(rotation) diag(-s, s) (p - p_centre))``, ``c`` being the detector's
    focal-plane offset; ``shift_pixels`` moves the sky by that many pixels on the detector (a
    pointing error: a star lands at ``nominal pixel + shift``).
    """
    from astropy.wcs import WCS

    scale = float(detector["pixel_scale_arcsec"])
    width, height = int(detector["bbox_width"]), int(detector["bbox_height"])
    offset = np.array([float(detector.get("offset_x_mm") or 0.0), float(detector.get("offset_y_mm") or 0.0)])
    offset = offset / PIXEL_SIZE_MM * scale
    local = _rotation(float(detector.get("rotation_deg") or 0.0)) @ np.diag([-scale, scale])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    crpix = centre - np.linalg.solve(local, offset) + np.asarray(shift_pixels, dtype=float)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra), float(dec)]
    wcs.wcs.crpix = (crpix + 1.0).tolist()  # FITS is 1-based
    wcs.wcs.cd = (_rotation(sky_angle) @ local / 3600.0).tolist()
    wcs.wcs.lonpole = 180.0
    wcs.wcs.set()
    wcs.pixel_shape = (width, height)
    return wcs


def _fov_radius_arcsec(detectors: Sequence[Mapping[str, Any]]) -> float:
    from butler.instrument import detector_corners

    return max(math.hypot(x, y) for det in detectors for x, y in detector_corners(det))


# -- rendering -----------------------------------------------------------------------------------
def render_stars(shape: tuple[int, int], x: Any, y: Any, flux: Any, sigma: float,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Add pixel-integrated circular Gaussians (``sigma`` in pixels) of total ``flux`` at (x, y).

    Positions are 0-based pixel centres (x = column). Each star is stamped on a box of +-5 sigma
    around it (stars off the image by more than that are skipped); returns ``out`` (float64 zeros
    by default) with the stars added.
    """
    height, width = shape
    out = np.zeros(shape, np.float64) if out is None else out
    x, y, flux = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (x, y, flux))
    r = math.ceil(5.0 * sigma) + 1
    keep = (x > -r) & (x < width - 1 + r) & (y > -r) & (y < height - 1 + r) & (flux != 0)
    x, y, flux = x[keep], y[keep], flux[keep]
    if not len(x):
        return out
    offsets = np.arange(-r, r + 1)
    cols = np.rint(x).astype(np.int64)[:, None] + offsets  # (N, S)
    rows = np.rint(y).astype(np.int64)[:, None] + offsets
    dx, dy = cols - x[:, None], rows - y[:, None]
    px = normal_cdf((dx + 0.5) / sigma) - normal_cdf((dx - 0.5) / sigma)
    py = normal_cdf((dy + 0.5) / sigma) - normal_cdf((dy - 0.5) / sigma)
    values = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    flat = rows[:, :, None] * width + cols[:, None, :]
    out += np.bincount(flat[valid], weights=values[valid], minlength=height * width).reshape(shape)
    return out


# -- truth catalogue -----------------------------------------------------------------------------
def make_truth_catalog(skymap: Any, tract: int, x_range: tuple[float, float], y_range: tuple[float, float], *,
                       bands: Sequence[str], seed: int = 0, density_per_arcmin2: float = 60.0,
                       flux_range: tuple[float, float] = (200.0, 5.0e6), slope: float = 0.7) -> Table:
    """Stars uniform over a box of a tract's pixel grid: id, ra, dec, ``flux_<band>`` (nJy)."""
    from astropy.table import Table

    rng = np.random.default_rng([seed, tract, 7])
    scale = skymap.pixel_scale_arcsec / 60.0
    area = (x_range[1] - x_range[0]) * (y_range[1] - y_range[0]) * scale**2
    count = int(rng.poisson(density_per_arcmin2 * area))
    x = rng.uniform(*x_range, size=count)
    y = rng.uniform(*y_range, size=count)
    ra, dec = skymap.pixel_to_sky(tract, x, y)
    lo, hi = flux_range
    u = rng.uniform(0.0, 1.0, size=count)
    # Truncated power law by inverse transform: N(>F) ~ F**-slope between lo and hi.
    flux_r = lo * (1.0 - u * (1.0 - (hi / lo) ** -slope)) ** (-1.0 / slope)
    colour = rng.uniform(0.2, 1.4, size=count)  # g - r
    table = Table({"id": np.arange(count, dtype=np.int64), "ra": np.asarray(ra, float),
                   "dec": np.asarray(dec, float)})
    for band in bands:
        table[f"flux_{band}"] = flux_r * 10.0 ** (-0.4 * BAND_COLOUR.get(band, 0.0) * colour)
    table.meta.update({"skymap": skymap.name, "tract": int(tract), "units": "nJy", "seed": int(seed)})
    return table


# -- visits --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisitPlan:
    """One simulated exposure (and visit: same id) with its observing conditions."""

    id: int
    band: str
    day_obs: int
    begin: datetime
    ra: float
    dec: float
    seeing: float  # FWHM, arcsec
    calib: float  # nJy per count
    sky: float  # counts per pixel
    shift_pixels: tuple[float, float]  # pointing error, detector pixels
    exposure_time: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)

    def exposure_record(self, instrument: str, physical_filter: str | None = None) -> dict[str, Any]:
        """The ``exposure`` record; ``physical_filter`` defaults to SimCam's naming (``<instrument>-<band>``)."""
        return {
            "instrument": instrument, "id": self.id,
            "physical_filter": physical_filter or f"{instrument}-{self.band}",
            "day_obs": self.day_obs, "obs_id": f"{instrument}_{self.day_obs}_{self.id:06d}",
            "exposure_time": self.exposure_time, "observation_type": "science", "begin": self.begin,
            "end": self.begin + timedelta(seconds=self.exposure_time), "tracking_ra": self.ra,
            "tracking_dec": self.dec, "sky_angle": 0.0,
        }


class _Draw(TypedDict):
    """One visit's random draws, before the visits are put in observing order."""

    night: int
    order: tuple[int, int]
    band: str
    ra: float
    dec: float
    seeing: float
    calib: float
    sky: float
    shift: tuple[float, float]


def plan_visits(skymap: Any, tract: int, patches: Sequence[int], *, bands: Sequence[str], visits_per_band: int,
                nights: Sequence[int] = DEMO_NIGHTS, seed: int = 0, first_id: int = 1000,
                dither_arcsec: float = 60.0, seeing_range: tuple[float, float] = (0.6, 1.2),
                pointing_error_arcsec: float = 0.3, detector_scale_arcsec: float = 0.2) -> list[VisitPlan]:
    """Pointings, conditions and ids of the visits, in observing order (ids follow time)."""
    rng = np.random.default_rng([seed, tract, 1])
    info = skymap[tract]
    centres = []
    for patch in patches:
        box = info.patch(int(patch)).inner_bbox
        centres.append(((box.x_min + box.x_max - 1) / 2.0, (box.y_min + box.y_max - 1) / 2.0))
    dither = dither_arcsec / skymap.pixel_scale_arcsec
    draws: list[_Draw] = []
    for b, band in enumerate(bands):
        for k in range(visits_per_band):
            cx, cy = centres[k % len(centres)]
            night = (k // len(centres)) % len(nights)
            x, y = cx + rng.uniform(-dither, dither), cy + rng.uniform(-dither, dither)
            ra, dec = info.pixel_to_sky(x, y)
            shift_x, shift_y = rng.normal(0.0, pointing_error_arcsec / detector_scale_arcsec, size=2).tolist()
            shift = (shift_x, shift_y)
            draws.append({
                "night": night, "order": (k, b), "band": band, "ra": float(ra), "dec": float(dec),
                "seeing": float(rng.uniform(*seeing_range)),
                "calib": BAND_THROUGHPUT.get(band, 1.0) / float(rng.uniform(0.8, 1.0)),
                "sky": float(rng.uniform(800.0, 1200.0)), "shift": shift,
            })
    draws.sort(key=lambda d: (d["night"], d["order"]))
    plans = []
    seq_in_night: dict[int, int] = {}
    for i, d in enumerate(draws):
        day_obs = int(nights[d["night"]])
        seq = seq_in_night.get(day_obs, 0)
        seq_in_night[day_obs] = seq + 1
        date = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC)
        begin = date + timedelta(days=1, hours=1, seconds=45 * seq)
        plans.append(VisitPlan(id=first_id + i, band=d["band"], day_obs=day_obs, begin=begin, ra=d["ra"],
                               dec=d["dec"], seeing=d["seeing"], calib=d["calib"], sky=d["sky"],
                               shift_pixels=d["shift"]))
    return plans


def simulate_raw(plan: VisitPlan, detector: Mapping[str, Any], truth: Table, *, seed: int = 0,
                 instrument: str = "SimCam", physical_filter: str | None = None) -> Exposure:
    """The raw of one detector of one visit (see the module docstring for the model)."""
    from butler.exposure import Exposure

    det_id = int(detector["id"])
    rng = np.random.default_rng([seed, plan.id, det_id, 3])
    shape = (int(detector["bbox_height"]), int(detector["bbox_width"]))
    scale = float(detector["pixel_scale_arcsec"])
    nominal = detector_wcs(plan.ra, plan.dec, 0.0, detector)
    true_wcs = detector_wcs(plan.ra, plan.dec, 0.0, detector, shift_pixels=plan.shift_pixels)
    ra, dec = np.asarray(truth["ra"]), np.asarray(truth["dec"])
    x, y = true_wcs.wcs_world2pix(ra, dec, 0)
    counts = np.asarray(truth[f"flux_{plan.band}"]) / plan.calib
    sigma = plan.seeing / scale / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    gx, gy = rng.uniform(-0.04, 0.04, size=2)
    ramp_x = 1.0 + gx * (np.arange(shape[1]) / shape[1] - 0.5)
    ramp_y = gy * (np.arange(shape[0]) / shape[0] - 0.5)
    model = plan.sky * (ramp_x[None, :] + ramp_y[:, None])
    model = render_stars(shape, x, y, counts, sigma, out=model)
    noise = rng.standard_normal(shape, dtype=np.float32)
    image = (model + np.sqrt(model) * noise).astype(np.float32)
    # The detector's truth stars (the demo's reference catalogue), positions from the catalogue.
    nx, ny = nominal.wcs_world2pix(ra, dec, 0)
    margin = 20
    on = ((nx > -margin) & (nx < shape[1] + margin) & (ny > -margin) & (ny < shape[0] + margin)
          & (np.asarray(truth[f"flux_{plan.band}"]) >= TRUTH_IN_METADATA_MIN_NJY))
    metadata = {
        "instrument": instrument, "exposure": plan.id, "visit": plan.id, "detector": det_id,
        "band": plan.band, "physical_filter": physical_filter or f"{instrument}-{plan.band}", "day_obs": plan.day_obs,
        "exposure_time": plan.exposure_time, "boresight": [plan.ra, plan.dec], "units": "counts",
        "SIM_SEEING": plan.seeing, "SIM_CALIB": plan.calib, "SIM_SKY": plan.sky,
        "SIM_SHIFT_PIXELS": list(plan.shift_pixels),
        "truth": {"id": np.asarray(truth["id"])[on].tolist(), "ra": ra[on].tolist(), "dec": dec[on].tolist(),
                  "flux": np.asarray(truth[f"flux_{plan.band}"])[on].tolist()},
    }
    return Exposure(image, variance=model.astype(np.float32), wcs=nominal, metadata=metadata)


# -- into a repository ---------------------------------------------------------------------------
def band_filters(butler: Any, instrument: str, bands: Sequence[str]) -> dict[str, str]:
    """The instrument's physical filter for each band (the first one registered for it).

    A band the instrument has no filter for is a ``LookupError`` listing the bands it has, raised
    before anything is written.
    """
    records = butler.query_dimension_records("physical_filter", instrument=instrument)
    if not records:
        raise LookupError(f"instrument {instrument!r} has no physical filters; is it registered?")
    by_band: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: r.name):
        by_band.setdefault(rec.band, rec.name)
    missing = [b for b in bands if b not in by_band]
    if missing:
        raise LookupError(f"instrument {instrument!r} has no filter in band(s) {missing}; "
                          f"its bands are {sorted(by_band)}")
    return {b: by_band[b] for b in bands}


def _science_detectors(butler: Any, instrument: str, wanted: Sequence[int | str] | None) -> list[dict[str, Any]]:
    """Science detectors with geometry, optionally only ``wanted`` (ids or full names)."""
    detectors = [d.to_dict() for d in butler.query_dimension_records("detector", instrument=instrument)]
    detectors = [d for d in detectors if d.get("purpose", "SCIENCE") == "SCIENCE" and d.get("bbox_width")]
    if not detectors:
        raise LookupError(f"instrument {instrument!r} has no science detectors with geometry; register it first")
    if wanted is None:
        return detectors
    keys = {d["id"]: d for d in detectors} | {d["full_name"]: d for d in detectors}
    unknown = [w for w in wanted if w not in keys]
    if unknown:
        raise LookupError(f"instrument {instrument!r} has no science detector(s) {unknown}; its science "
                          f"detectors are {sorted(d['id'] for d in detectors)}")
    chosen = {keys[w]["id"]: keys[w] for w in wanted}
    return [chosen[i] for i in sorted(chosen)]


def simulate_raws(butler: Any, *, skymap_name: str, tract: int, patches: Sequence[int],
                  bands: Sequence[str] = ("g", "r"), visits_per_band: int | None = None, seed: int = 0,
                  run: str | None = None, instrument: str = "SimCam",
                  nights: Sequence[int] = DEMO_NIGHTS, first_id: int = 1000, workers: int = 2,
                  detectors: Sequence[int | str] | None = None, truth: Table | None = None) -> dict[str, Any]:
    """Simulate raws over ``patches`` of a tract and store them (idempotent: what exists is kept).

    Inserts ``exposure`` records, defines the visits (regions from the camera geometry),
    registers ``raw`` (instrument, exposure, detector; Exposure) and ``truth_catalog`` (skymap,
    tract; SourceCatalog) and writes them into ``run`` (default ``<instrument>/raw/all``). The
    instrument (any visit+detector instrument: its filters name the bands, its science detectors
    are rendered, or only ``detectors``, ids or full names) and the skymap must be registered.
    ``visits_per_band`` defaults to twice the number of patches (each patch gets a pointing on
    each of two nights). ``truth`` renders a given truth catalogue instead of drawing one, so that
    several instruments see the same sky. Returns a summary: visit ids, counts written and
    skipped, the truth catalogue and the visit plans.
    """
    from butler import DatasetType
    from butler.errors import ConflictError

    skymap = butler.get_skymap(skymap_name)
    patches = [int(p) for p in patches]
    if not patches:
        raise ValueError("simulate_raws needs at least one patch")
    if visits_per_band is None:
        visits_per_band = 2 * len(patches)
    run = run or f"{instrument}/raw/all"
    filters = band_filters(butler, instrument, bands)
    dets = _science_detectors(butler, instrument, detectors)
    det_scale = float(dets[0]["pixel_scale_arcsec"])
    plans = plan_visits(skymap, tract, patches, bands=bands, visits_per_band=visits_per_band, nights=nights,
                        seed=seed, first_id=first_id, detector_scale_arcsec=det_scale)

    if truth is None:
        # Truth over the area every visit can touch (pointings +- the field of view), in tract pixels.
        info = skymap[tract]
        px, py = info.sky_to_pixel(np.array([p.ra for p in plans]), np.array([p.dec for p in plans]))
        reach = (_fov_radius_arcsec(dets) + 30.0) / skymap.pixel_scale_arcsec
        truth = make_truth_catalog(skymap, tract, (float(px.min() - reach), float(px.max() + reach)),
                                   (float(py.min() - reach), float(py.max() + reach)), bands=bands, seed=seed)
    else:
        missing = [b for b in bands if f"flux_{b}" not in truth.colnames]
        if missing:
            raise ValueError(f"the truth catalogue given has no flux_<band> column for band(s) {missing}; "
                             f"its columns are {truth.colnames}")

    # Exposure records and visits (skip what exists; refuse different content under the same ids).
    records = [p.exposure_record(instrument, filters[p.band]) for p in plans]
    ids = [r["id"] for r in records]
    existing = {r.id: r for r in butler.query_dimension_records("exposure", instrument=instrument) if r.id in set(ids)}
    for rec in records:
        old = existing.get(rec["id"])
        if old is not None and (old.physical_filter != rec["physical_filter"]
                                or not math.isclose(old.tracking_ra or 0.0, rec["tracking_ra"], abs_tol=1e-9)):
            raise ConflictError(f"exposure {rec['id']} of {instrument} already exists with other values "
                                f"({old.physical_filter}, ra={old.tracking_ra}); simulate into a new repository "
                                f"or pass another first_id")
    new = [r for r in records if r["id"] not in existing]
    if new:
        butler.insert_dimension_records("exposure", new, conflict="skip")
    have_visits = {v.id for v in butler.query_dimension_records("visit", instrument=instrument)}
    missing_visits = [i for i in ids if i not in have_visits]
    if missing_visits:
        butler.define_visits(instrument, exposures=missing_visits)

    raw_type = DatasetType("raw", ("instrument", "exposure", "detector"), "Exposure")
    truth_type = DatasetType("truth_catalog", ("skymap", "tract"), "SourceCatalog")
    butler.register_dataset_type(raw_type)
    butler.register_dataset_type(truth_type)
    done: set[tuple[int, int]] = set()
    have_truth = False
    if butler.query_collections(run):
        done = {(r.data_id["exposure"], r.data_id["detector"]) for r in butler.query_datasets("raw", collections=run)
                if r.data_id["instrument"] == instrument}
        have_truth = bool(butler.query_datasets("truth_catalog", collections=run,
                                                data_id={"skymap": skymap.name, "tract": tract}))
    if not have_truth:
        butler.put(truth, truth_type, {"skymap": skymap.name, "tract": tract}, run=run)

    todo = [(plan, det) for plan in plans for det in dets if (plan.id, int(det["id"])) not in done]
    written = _write_raws(butler, todo, truth, raw_type, seed=seed, instrument=instrument, filters=filters, run=run,
                          workers=workers)
    return {"visits": ids, "raws_written": written, "raws_skipped": len(plans) * len(dets) - written,
            "truth_stars": len(truth), "truth": truth, "run": run, "plans": plans}


def prepare_demo_repo(butler: Any, *, skymap_name: str = "demo", tract: int = 9000,
                      patches: Sequence[int] = (44, 45, 46), bands: Sequence[str] = ("g", "r"),
                      nights: Sequence[int] = DEMO_NIGHTS, **kwargs: Any) -> dict[str, Any]:
    """Everything the demo pipeline needs, idempotently: SimCam, the demo skymap's ``tract`` (only
    that tract: registering all 18,938 would take a minute), the flavors (deep, bestSeeing,
    nightly-YYYYMMDD per night) and the simulated raws (``simulate_raws`` with ``kwargs``)."""
    from butler.instrument import SimCam

    if not butler.query_dimension_records("instrument", instrument="SimCam"):
        butler.register_instrument(SimCam())
    butler.register_skymap(demo_skymap(skymap_name), tracts=[tract])
    butler.register_flavors(demo_flavor_records(nights))
    return simulate_raws(butler, skymap_name=skymap_name, tract=tract, patches=patches, bands=bands, nights=nights,
                         **kwargs)


def _write_raws(butler: Any, todo: list[tuple[VisitPlan, dict[str, Any]]], truth: Table, raw_type: Any, *,
                seed: int, instrument: str, filters: Mapping[str, str], run: str, workers: int) -> int:
    """Render in a thread pool (numpy releases the GIL) while the previous batch is being put."""
    from concurrent.futures import ThreadPoolExecutor

    def make(item: tuple[VisitPlan, dict[str, Any]]) -> tuple[Any, ...]:
        plan, det = item
        data_id = {"instrument": instrument, "exposure": plan.id, "detector": int(det["id"])}
        raw = simulate_raw(plan, det, truth, seed=seed, instrument=instrument, physical_filter=filters[plan.band])
        return (raw, raw_type, data_id)

    batch = 9
    written = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batches = [todo[i : i + batch] for i in range(0, len(todo), batch)]
        pending = [pool.submit(make, item) for item in batches[0]] if batches else []
        for k in range(len(batches)):
            items = [f.result() for f in pending]
            pending = [pool.submit(make, item) for item in batches[k + 1]] if k + 1 < len(batches) else []
            butler.put_many(items, run=run)
            written += len(items)
    return written
