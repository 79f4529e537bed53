"""The demo coadd pipeline: calibrate -> warp -> coadd, on simulated raws (numpy and astropy only).

The raws may come from several instruments (SimCam, HexCam...): calibrate and warp run per
instrument, and a coadd combines the warps of every instrument in its band.

``calibrate`` (instrument, visit, detector)
    raw -> calexp (background-subtracted, DETECTED mask, PSF, fitted WCS shift, photometric
    calibration in nJy per count) and src (a source table).
``warp`` (instrument, visit, skymap, tract, patch)
    the visit's calexps that touch the patch -> one image on the patch's outer box in the tract's
    pixel grid, calibrated to nJy per pixel; NO_DATA (image and variance NaN) where no detector is.
``coadd`` (skymap, tract, patch, band, flavor)
    the patch's warps in the band -> their weighted mean over the warps the flavor selects:
    ``deep`` all, ``bestSeeing`` the best ``best_seeing_fraction`` by seeing, ``goodSeeing`` those with
    seeing <= ``good_seeing_max``, ``nightly`` those of the flavor's ``day_obs``. A flavor that
    selects nothing raises `NoInputs`.

See ``docs/demo.md`` for the algorithms and ``orchestration/demo/simulate.py`` for the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._connections import InitOutput, Input, Output
from .._task import Task
from . import _measure as meas
from ._common import DETECTED, FWHM_PER_SIGMA, NO_DATA, NoInputs, gaussian_kernel
from ._resample import pixel_scale_arcsec, resample

if TYPE_CHECKING:
    from butler import DataCoordinate
    from butler.exposure import Exposure

    from .._context import QuantumContext

__all__ = ["SRC_COLUMNS", "CalibrateTask", "CalibrationError", "CoaddTask", "WarpTask"]

SRC_COLUMNS = {
    "id": ("int64", "source id, unique in the detector"),
    "x": ("float64", "centroid column, pixels (0-based)"),
    "y": ("float64", "centroid row, pixels (0-based)"),
    "ra": ("float64", "degrees, from the calibrated WCS"),
    "dec": ("float64", "degrees, from the calibrated WCS"),
    "flux": ("float64", "aperture flux, counts"),
    "flux_err": ("float64", "counts"),
    "snr": ("float64", "flux / flux_err"),
    "flux_njy": ("float64", "calibrated aperture flux, nJy"),
    "truth_id": ("int64", "matched reference star, -1 if none"),
    "truth_flux": ("float64", "reference flux, nJy (NaN if unmatched)"),
}


def _meta_or_id(metadata: Mapping[str, Any], data_id: Any, key: str) -> Any:
    if key in metadata:
        return metadata[key]
    try:
        return data_id[key]
    except (KeyError, TypeError):
        return None


# -- calibrate -----------------------------------------------------------------------------------
class CalibrationError(RuntimeError):
    """A raw has too few reference-star matches (or no WCS) for a photometric calibration."""


class CalibrateTask(Task):
    """Background, detection, measurement, astrometric shift and photometric zero point."""

    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        threshold: float = 5.0
        """Detection threshold in sigma of the PSF-smoothed image."""
        background_mesh: int = 128
        """Background cell size, pixels."""
        psf_sigma_guess: float = 1.7
        """Initial PSF sigma (pixels) for the detection filter; the PSF is then measured."""
        aperture_sigma: float = 4.0
        """Aperture radius in PSF sigmas (4 sigma holds 99.97% of a Gaussian's flux)."""
        match_radius: float = 2.0
        """Match radius to the reference catalogue after the astrometric shift, pixels."""
        calib_snr: float = 30.0
        """Minimum S/N of the stars that set the zero point and the shift."""

    raw = Input(dataset_type="raw", dimensions=("instrument", "exposure", "detector"), storage_class="Exposure",
                doc="simulated raw; metadata['truth'] is the reference catalogue of the detector")
    calexp = Output(dataset_type="calexp", dimensions=("instrument", "visit", "detector"), storage_class="Exposure",
                    doc="background-subtracted, calibrated exposure")
    src = Output(dataset_type="src", dimensions=("instrument", "visit", "detector"), storage_class="SourceCatalog",
                 doc="detected sources")
    src_schema = InitOutput(dataset_type="src_schema", storage_class="StructuredData",
                            doc="columns of src: name -> [dtype, description]")

    def make_init_outputs(self) -> dict[str, Any]:
        return {"src_schema": {name: list(spec) for name, spec in SRC_COLUMNS.items()}}

    def run(self, *, raw: Exposure, context: QuantumContext | None = None) -> dict[str, Any]:
        from astropy.table import Table

        cfg = self.config
        image = np.asarray(raw.image, dtype=np.float32)
        variance = np.asarray(raw.variance, dtype=np.float32)
        metadata = dict(raw.metadata)
        truth = metadata.pop("truth", None) or {}
        wcs = raw.wcs.deepcopy() if raw.wcs is not None else None
        scale = pixel_scale_arcsec(wcs) if wcs is not None else float(metadata.get("pixel_scale_arcsec", 0.2))

        background = meas.estimate_background(image, cfg.background_mesh)
        image = image - background
        noise_var = np.where(variance > 0, variance, np.median(variance[variance > 0]) if (variance > 0).any() else 1.0)

        # Detection on the image smoothed by the guessed PSF (a near-matched filter), then the PSF.
        smoothed, sum_sq = meas.smooth(image, cfg.psf_sigma_guess)
        significance = smoothed / np.sqrt(noise_var * sum_sq)
        del smoothed
        border = math.ceil(cfg.aperture_sigma * 2.0 * max(cfg.psf_sigma_guess, 1.0)) + 2
        py, px = meas.detect_peaks(significance, significance, cfg.threshold, border)
        sigma = meas.measure_psf_sigma(image, py, px, significance[py, px], cfg.psf_sigma_guess)
        mask = np.asarray(raw.mask).copy()
        mask[significance > cfg.threshold] |= DETECTED
        sources = meas.measure_sources(image, noise_var, py, px, significance[py, px], sigma, cfg.aperture_sigma)
        snr = np.divide(sources.flux, sources.flux_err, out=np.zeros(len(sources)), where=sources.flux_err > 0)

        # Astrometric shift and zero point from the reference stars (the simulated truth).
        shift, calib, calib_err, truth_idx, rms = self._calibrate(sources, snr, truth, wcs, sigma)
        if calib is None:
            where = f" of {dict(context.data_id)}" if context is not None else ""
            raise CalibrationError(
                f"cannot calibrate the raw{where}: {len(sources)} sources detected, "
                f"{len(truth.get('ra', []))} reference stars in its metadata, "
                f"{'no WCS' if wcs is None else f'{int((truth_idx >= 0).sum())} matched'}; "
                f"at least 3 bright (S/N > {self.config.calib_snr}) matches are needed"
            )
        if wcs is not None and shift is not None:
            wcs.wcs.crpix = (np.asarray(wcs.wcs.crpix) + shift).tolist()
            wcs.wcs.set()
        if wcs is not None and len(sources):
            ra, dec = wcs.wcs_pix2world(sources.x, sources.y, 0)
        else:
            ra = dec = np.full(len(sources), np.nan)
        n = len(sources)
        truth_flux = np.asarray(truth.get("flux", []), dtype=float)
        truth_ids = np.asarray(truth.get("id", []), dtype=np.int64)
        src = Table({
            "id": np.arange(n, dtype=np.int64), "x": sources.x, "y": sources.y, "ra": ra, "dec": dec,
            "flux": sources.flux, "flux_err": sources.flux_err, "snr": snr,
            "flux_njy": sources.flux * (calib if calib is not None else np.nan),
            "truth_id": np.where(truth_idx >= 0, truth_ids[np.maximum(truth_idx, 0)] if len(truth_ids) else -1, -1),
            "truth_flux": np.where(truth_idx >= 0, truth_flux[np.maximum(truth_idx, 0)] if len(truth_flux) else np.nan,
                                   np.nan),
        })
        seeing = sigma * FWHM_PER_SIGMA * scale
        metadata.update({
            "seeing": seeing, "psf_sigma_pixels": sigma, "n_sources": n,
            "n_matched": int((truth_idx >= 0).sum()), "photo_calib": calib, "photo_calib_err": calib_err,
            "astrometric_shift_pixels": None if shift is None else [float(shift[0]), float(shift[1])],
            "astrometric_rms_arcsec": None if rms is None else rms * scale,
            "background_mean": float(background.mean()), "units": "counts",
        })
        if context is not None:
            for key in ("visit", "detector"):
                if key not in metadata and key in context.data_id:
                    metadata[key] = context.data_id[key]
        calexp = raw.replace(image=image.astype(np.float32), mask=mask, variance=variance, wcs=wcs,
                             psf=gaussian_kernel(sigma).astype(np.float32), photo_calib=calib, metadata=metadata)
        return {"calexp": calexp, "src": src}

    def _calibrate(self, sources: meas.Sources, snr: np.ndarray, truth: Mapping[str, Any], wcs: Any,
                   sigma: float) -> tuple[np.ndarray | None, float | None, float | None, np.ndarray, float | None]:
        """(crpix shift, nJy per count, its error, truth index per source (-1), astrometric rms px)."""
        cfg = self.config
        unmatched = np.full(len(sources), -1, np.int64)
        if wcs is None or not truth or not len(truth.get("ra", [])) or not len(sources):
            return None, None, None, unmatched, None
        t_flux = np.asarray(truth["flux"], dtype=float)
        tx, ty = wcs.wcs_world2pix(np.asarray(truth["ra"], float), np.asarray(truth["dec"], float), 0)
        bright = snr > cfg.calib_snr
        shift = np.zeros(2)
        # Pass 1: a wide match of bright sources gives the shift; pass 2 matches tightly after it.
        for radius in (10.0, cfg.match_radius):
            i_src, i_tru = meas.match_positions(sources.x[bright] - shift[0], sources.y[bright] - shift[1],
                                                tx, ty, radius)
            if len(i_src) < 3:
                return None, None, None, unmatched, None
            sel = np.nonzero(bright)[0][i_src]
            shift = np.array([np.median(sources.x[sel] - tx[i_tru]), np.median(sources.y[sel] - ty[i_tru])])
        rms = float(np.sqrt(np.mean((sources.x[sel] - shift[0] - tx[i_tru]) ** 2
                                    + (sources.y[sel] - shift[1] - ty[i_tru]) ** 2)))
        i_all, t_all = meas.match_positions(sources.x - shift[0], sources.y - shift[1], tx, ty, cfg.match_radius)
        truth_idx = unmatched.copy()
        truth_idx[i_all] = t_all
        # Zero point: bright matches with no comparably bright reference star near their aperture.
        d2 = (tx[:, None] - tx[None, :]) ** 2 + (ty[:, None] - ty[None, :]) ** 2
        np.fill_diagonal(d2, np.inf)
        near = d2 < (cfg.aperture_sigma * sigma + 3.0 * sigma) ** 2
        contaminated = (near & (t_flux[None, :] > 0.01 * t_flux[:, None])).any(axis=1)
        use = bright[i_all] & ~contaminated[t_all] & (sources.flux[i_all] > 0)
        if use.sum() < 3:
            use = bright[i_all] & (sources.flux[i_all] > 0)
        if use.sum() < 1:
            return shift, None, None, truth_idx, rms
        ratio = t_flux[t_all[use]] / sources.flux[i_all[use]]
        calib = float(np.median(ratio))
        calib_err = float(1.2533 * np.std(ratio) / math.sqrt(len(ratio))) if len(ratio) > 1 else None
        return shift, calib, calib_err, truth_idx, rms


# -- warp ----------------------------------------------------------------------------------------
class WarpTask(Task):
    """Resample a visit's calexps onto a patch (tract pixel grid), calibrated to nJy per pixel."""

    dimensions = ("instrument", "visit", "skymap", "tract", "patch")

    @dataclass
    class Config:
        grid_step: int = 32
        """Spacing (target pixels) of the grid on which the WCS transform is evaluated exactly."""

    calexp = Input(dataset_type="calexp", dimensions=("instrument", "visit", "detector"), storage_class="Exposure",
                   multiple=True, doc="the visit's calexps whose detectors overlap the patch")
    warp = Output(dataset_type="warp", dimensions=("instrument", "visit", "skymap", "tract", "patch"),
                  storage_class="Exposure", doc="the visit on the patch's outer box, nJy per pixel")

    def run(self, *, calexp: Mapping[DataCoordinate, Exposure], context: QuantumContext) -> dict[str, Any]:
        from butler.exposure import Box, slice_wcs

        data_id = context.data_id
        tract = context.skymap()[int(data_id["tract"])]
        outer = tract.patch(int(data_id["patch"])).outer_bbox
        box = Box(x0=outer.x_min, y0=outer.y_min, width=outer.width, height=outer.height)
        rows, cols = box.local_slices(Box(x0=0, y0=0, width=tract.bbox.width, height=tract.bbox.height))
        wcs = slice_wcs(tract.wcs, rows, cols)
        shape = box.shape
        image = np.full(shape, np.nan, np.float32)
        variance = np.full(shape, np.nan, np.float32)
        mask = np.zeros(shape, np.int32)
        filled = np.zeros(shape, bool)
        seeing, psf_sigma, calibs, detectors = [], [], [], []
        metadata: dict[str, Any] = {}
        target_scale = pixel_scale_arcsec(wcs)
        for cid, exp in sorted(calexp.items(), key=lambda kv: str(kv[0])):
            md = exp.metadata
            calib = exp.photo_calib
            if calib is None or exp.wcs is None:
                raise ValueError(f"calexp {cid} has no photometric calibration or no WCS; was it calibrated?")
            out = resample(np.asarray(exp.image), np.asarray(exp.variance), np.asarray(exp.mask), exp.wcs, wcs,
                           shape, grid_step=self.config.grid_step)
            if out is None:
                continue
            take = out.valid & ~filled
            if not take.any():
                continue
            image[take] = out.image[take] * calib
            variance[take] = out.variance[take] * calib**2
            mask[take] = out.mask[take]
            filled |= take
            detectors.append(_meta_or_id(md, cid, "detector"))
            calibs.append(calib)
            if md.get("seeing") is not None:
                seeing.append(float(md["seeing"]))
            if md.get("psf_sigma_pixels") is not None:
                psf_sigma.append(float(md["psf_sigma_pixels"]) * pixel_scale_arcsec(exp.wcs))
            if not metadata:
                metadata = {k: _meta_or_id(md, cid, k)
                            for k in ("instrument", "visit", "band", "physical_filter", "day_obs", "exposure_time")}
        mask[~filled] |= NO_DATA
        sigma_arcsec = float(np.median(psf_sigma)) if psf_sigma else None
        psf = None
        if sigma_arcsec is not None:
            # Binning adds a one-pixel box (1/12 px^2) and bilinear interpolation about 1/6 px^2.
            sigma_px = math.sqrt((sigma_arcsec / target_scale) ** 2 + 1.0 / 12.0 + 1.0 / 6.0)
            psf = gaussian_kernel(sigma_px).astype(np.float32)
        for key in ("instrument", "visit", "band", "day_obs"):
            if metadata.get(key) is None and key in data_id:
                metadata[key] = data_id[key]
        metadata.update({
            "seeing": float(np.median(seeing)) if seeing else None,
            "coverage": float(filled.mean()), "detectors": detectors,
            "input_photo_calib": calibs, "units": "nJy",
            "skymap": data_id["skymap"], "tract": int(data_id["tract"]), "patch": int(data_id["patch"]),
        })
        warp = _exposure(image, mask, variance, wcs=wcs, psf=psf, photo_calib=1.0, metadata=metadata,
                         origin=(box.x0, box.y0))
        return {"warp": warp}


def _exposure(*args: Any, **kwargs: Any) -> Any:
    from butler.exposure import Exposure

    return Exposure(*args, **kwargs)


# -- coadd ---------------------------------------------------------------------------------------
def select_warps(warps: Mapping[Any, Any], flavor: Mapping[str, Any], *, best_seeing_fraction: float = 0.5,
                 good_seeing_max: float = 0.9) -> list[Any]:
    """The keys of ``warps`` that a flavor record (``kind``, ``day_obs``) selects, in sorted order.

    ``deep``: all; ``bestSeeing``: the ``ceil(n * fraction)`` with the smallest ``metadata['seeing']``
    (ties by key); ``goodSeeing``: seeing <= ``good_seeing_max`` arcsec; ``nightly``: those whose
    ``day_obs`` (metadata, else the data ID) is the flavor's. Warps without any data (coverage 0)
    are never selected. ``chi2`` combines bands, which a per-band coadd cannot: `NoInputs`.
    """
    kind = flavor.get("kind")
    keys = sorted((k for k, w in warps.items() if w.metadata.get("coverage", 1.0) > 0), key=str)
    rated = [k for k in keys if warps[k].metadata.get("seeing") is not None]
    if kind == "deep":
        return keys
    if kind == "bestSeeing":
        rated.sort(key=lambda k: (float(warps[k].metadata["seeing"]), str(k)))
        return sorted(rated[: math.ceil(len(rated) * best_seeing_fraction)], key=str)
    if kind == "goodSeeing":
        return [k for k in rated if float(warps[k].metadata["seeing"]) <= good_seeing_max]
    if kind == "nightly":
        night = flavor.get("day_obs")
        if night is None:
            raise ValueError(f"nightly flavor {flavor.get('name', '')!r} has no day_obs in its record")
        return [k for k in keys if _meta_or_id(warps[k].metadata, k, "day_obs") == int(night)]
    if kind == "chi2":
        raise NoInputs(f"flavor {flavor.get('name', kind)!r} is a chi2 (multi-band) detection image; "
                       "the per-band coadd task does not make those")
    raise ValueError(f"unknown coadd flavor kind {kind!r}; known kinds: deep, bestSeeing, goodSeeing, nightly")


class CoaddTask(Task):
    """Weighted mean of the selected warps of a patch in a band."""

    dimensions = ("skymap", "tract", "patch", "band", "flavor")

    @dataclass
    class Config:
        best_seeing_fraction: float = 0.5
        """Fraction of the warps (best seeing first) that a bestSeeing coadd keeps (rounded up)."""
        good_seeing_max: float = 0.9
        """Largest seeing (FWHM, arcsec) of the warps of a goodSeeing coadd."""

    warp = Input(dataset_type="warp", dimensions=("instrument", "visit", "skymap", "tract", "patch"),
                 storage_class="Exposure", multiple=True, doc="all warps of the patch in the band")
    coadd = Output(dataset_type="coadd", dimensions=("skymap", "tract", "patch", "band", "flavor"),
                   storage_class="Exposure", doc="weighted mean of the flavor's warps, nJy per pixel")

    def run(self, *, warp: Mapping[DataCoordinate, Exposure], context: QuantumContext) -> dict[str, Any]:
        flavor = dict(context.record("flavor"))
        flavor.setdefault("name", context.data_id.get("flavor", None))
        chosen = select_warps(warp, flavor, best_seeing_fraction=self.config.best_seeing_fraction,
                              good_seeing_max=self.config.good_seeing_max)
        if not chosen:
            raise NoInputs(f"coadd flavor {flavor.get('name')!r} ({flavor.get('kind')}"
                           f"{', day_obs ' + str(flavor.get('day_obs')) if flavor.get('day_obs') else ''}) selects "
                           f"none of the {len(warp)} warps of {dict(context.data_id)}")
        coadd = coadd_warps([warp[k] for k in chosen])
        coadd.metadata.update({"flavor": flavor.get("name"), "flavor_kind": flavor.get("kind"),
                               "flavor_day_obs": flavor.get("day_obs"),
                               "band": context.data_id.get("band", None),
                               "inputs_available": len(warp)})
        return {"coadd": coadd}


def coadd_warps(warps: list[Any]) -> Any:
    """Weighted mean of warps on one grid: weight of warp k = 1 / (its median valid variance).

    A per-warp weight (rather than per pixel) keeps stars unbiased (their own Poisson noise would
    down-weight bright pixels); the variance is ``sum(w_k^2 V_k) / (sum w_k)^2``, so N identical
    warps give the warp with variance / N. Pixels no warp covers are NO_DATA with NaN image and
    variance; other mask bits are OR-ed over the contributing warps.
    """
    first = warps[0]
    for w in warps[1:]:
        if w.shape != first.shape or tuple(w.origin) != tuple(first.origin):
            raise ValueError(f"warps to coadd must share one grid: {w.bbox} != {first.bbox}")
    shape = first.shape
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape, np.float64)
    var = np.zeros(shape, np.float64)
    mask = np.zeros(shape, np.int32)
    psf_sum, psf_weight, seeing, visits, instruments, weights = None, 0.0, [], [], [], []
    for w in warps:
        img = np.asarray(w.image, dtype=np.float64)
        v = np.asarray(w.variance, dtype=np.float64)
        good = np.isfinite(img) & np.isfinite(v) & ((np.asarray(w.mask) & NO_DATA) == 0)
        if not good.any():
            continue
        weight = 1.0 / float(np.median(v[good]))
        num[good] += weight * img[good]
        den[good] += weight
        var[good] += weight * weight * v[good]
        mask[good] |= np.asarray(w.mask)[good]
        frac = float(good.mean())
        weights.append(weight)
        visits.append(w.metadata.get("visit"))
        instruments.append(w.metadata.get("instrument"))  # visit ids repeat across instruments
        if w.metadata.get("seeing") is not None:
            seeing.append((float(w.metadata["seeing"]), weight * frac))
        if w.psf is not None:
            kernel = np.asarray(w.psf, dtype=np.float64)
            psf_sum = _add_centred(psf_sum, kernel * weight * frac)
            psf_weight += weight * frac
    covered = den > 0
    image = np.full(shape, np.nan, np.float32)
    variance = np.full(shape, np.nan, np.float32)
    image[covered] = num[covered] / den[covered]
    variance[covered] = var[covered] / den[covered] ** 2
    mask[~covered] |= NO_DATA
    psf = None if psf_sum is None else (psf_sum / psf_weight).astype(np.float32)
    eff_seeing = sum(s * w for s, w in seeing) / sum(w for _, w in seeing) if seeing else None
    metadata = {"visits": visits, "instruments": instruments, "weights": weights, "n_inputs": len(visits),
                "coverage": float(covered.mean()),
                "seeing": eff_seeing, "units": first.metadata.get("units", "nJy"),
                "skymap": first.metadata.get("skymap"), "tract": first.metadata.get("tract"),
                "patch": first.metadata.get("patch")}
    return _exposure(image, mask, variance, wcs=first.wcs, psf=psf, photo_calib=1.0, metadata=metadata,
                     origin=first.origin)


def _add_centred(total: np.ndarray | None, kernel: np.ndarray) -> np.ndarray:
    """Sum of odd-sized kernels of different sizes, centred."""
    if total is None:
        return kernel.copy()
    n = max(total.shape[0], kernel.shape[0])
    out = np.zeros((n, n))
    for k in (total, kernel):
        o = (n - k.shape[0]) // 2
        out[o : o + k.shape[0], o : o + k.shape[1]] += k
    return out
