"""Checks of demo outputs against the simulated truth (``truth_catalog``): is the coadd right?"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import NO_DATA

__all__ = ["coadd_photometry"]


def coadd_photometry(coadd: Any, truth: Any, band: str, *, min_flux: float = 50_000.0,
                     radius_arcsec: float = 3.0) -> dict[str, Any]:
    """Aperture fluxes of bright, isolated truth stars on a coadd (nJy per pixel) vs their true fluxes.

    Returns the number of stars used, the median measured/true ratio and the robust scatter of
    the ratio, and the median astrometric offset (centroid vs truth position) in pixels.
    """
    wcs = coadd.wcs
    image = np.asarray(coadd.image, dtype=float)
    flux = np.asarray(truth[f"flux_{band}"], dtype=float)
    x, y = wcs.wcs_world2pix(np.asarray(truth["ra"], float), np.asarray(truth["dec"], float), 0)
    from ._resample import pixel_scale_arcsec

    r = radius_arcsec / pixel_scale_arcsec(wcs)
    ri = math.ceil(r) + 1
    h, w = image.shape
    inside = (x > ri) & (x < w - 1 - ri) & (y > ri) & (y < h - 1 - ri)
    # Isolated: no other star brighter than 1% of this one within two aperture radii.
    cand = np.nonzero(inside & (flux > min_flux))[0]
    near = np.nonzero(inside | ((x > -3 * ri) & (x < w + 3 * ri) & (y > -3 * ri) & (y < h + 3 * ri)))[0]
    keep = []
    for i in cand:
        d2 = (x[near] - x[i]) ** 2 + (y[near] - y[i]) ** 2
        others = (d2 > 0) & (d2 < (2 * r) ** 2) & (flux[near] > 0.01 * flux[i])
        if not others.any():
            keep.append(i)
    ratios, offsets = [], []
    offs = np.arange(-ri, ri + 1)
    for i in keep:
        ix, iy = round(x[i]), round(y[i])
        stamp = image[iy - ri : iy + ri + 1, ix - ri : ix + ri + 1]
        bad = (np.asarray(coadd.mask)[iy - ri : iy + ri + 1, ix - ri : ix + ri + 1] & NO_DATA) != 0
        if bad.any() or not np.isfinite(stamp).all():
            continue
        dx, dy = offs[None, :] + ix - x[i], offs[:, None] + iy - y[i]
        aperture = dx**2 + dy**2 <= r * r
        total = stamp[aperture].sum()
        ratios.append(total / flux[i])
        weights = np.where(aperture, stamp, 0.0)
        offsets.append(math.hypot((weights * dx).sum() / total, (weights * dy).sum() / total))
    if not ratios:
        return {"n": 0, "ratio": None, "scatter": None, "offset_pixels": None}
    ratios_a = np.array(ratios)
    q25, q75 = np.percentile(ratios_a, [25, 75])
    return {"n": len(ratios), "ratio": float(np.median(ratios_a)), "scatter": float((q75 - q25) / 1.349),
            "offset_pixels": float(np.median(offsets))}
