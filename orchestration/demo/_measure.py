"""Single-frame measurement in numpy: mesh background, detection, moments, aperture photometry.

- **Background**: the image is cut into ``mesh`` x ``mesh`` cells; each cell's level is the mean of
  its pixels within 3 sigma of the cell median (sigma from the inter-quartile range), and the
  levels are interpolated bilinearly between cell centres (linearly extrapolated to the edges, so
  a sky gradient is followed exactly) by two small matrix products.
- **Detection**: the background-subtracted image is smoothed by a Gaussian (separable, shifted
  sums; the initial PSF guess is a good enough matched filter); a pixel is detected when its smoothed value exceeds ``threshold`` times the smoothed
  noise; sources are the local maxima (3x3) of the smoothed image among detected pixels.
- **Measurement** (vectorised over stamps around each peak): Gaussian-weighted centroid, the PSF
  width from Gaussian-weighted second moments of bright isolated stars (the weight is divided
  out analytically, which is exact for Gaussians), and a circular aperture flux of radius
  ``aperture_sigma`` PSF sigmas with its error from the variance plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Sources", "detect_peaks", "estimate_background", "match_positions", "measure_psf_sigma",
           "measure_sources", "smooth"]


def _interp_matrix(n: int, centres: np.ndarray) -> np.ndarray:
    """(n, len(centres)) weights interpolating cell values at ``centres`` linearly onto 0..n-1."""
    m = len(centres)
    out = np.zeros((n, m))
    if m == 1:
        out[:, 0] = 1.0
        return out
    pos = np.arange(n, dtype=float)
    j = np.clip(np.searchsorted(centres, pos) - 1, 0, m - 2)  # extrapolate with the end segments
    t = (pos - centres[j]) / (centres[j + 1] - centres[j])
    out[np.arange(n), j] = 1.0 - t
    out[np.arange(n), j + 1] = t
    return out


def _cell_levels(cells: np.ndarray) -> np.ndarray:
    """Clipped means of the rows of ``cells`` (cells x pixels, NaN allowed)."""
    sample = cells[:, ::4] if cells.shape[1] >= 4096 else cells  # the clip limits only need a sample
    if np.isnan(sample).any():
        q25, q50, q75 = np.nanpercentile(sample, [25, 50, 75], axis=1)
    else:
        q25, q50, q75 = np.percentile(sample, [25, 50, 75], axis=1)
    sigma = np.maximum((q75 - q25) / 1.349, 1e-12)
    with np.errstate(invalid="ignore"):
        keep = np.abs(cells - q50[:, None]) < 3.0 * sigma[:, None]
    count = keep.sum(axis=1)
    total = np.where(keep, cells, 0.0).sum(axis=1, dtype=np.float64)
    levels: np.ndarray = np.where(count > 0, total / np.maximum(count, 1), q50)
    return levels


def estimate_background(image: np.ndarray, mesh: int) -> np.ndarray:
    """A smooth background model of ``image`` from clipped means on a ``mesh``-pixel grid."""
    height, width = image.shape
    ny, nx = max(1, round(height / mesh)), max(1, round(width / mesh))
    y_edges = np.linspace(0, height, ny + 1).round().astype(int)
    x_edges = np.linspace(0, width, nx + 1).round().astype(int)
    if height % ny == 0 and width % nx == 0:  # equal cells: one vectorised pass
        cy, cx = height // ny, width // nx
        cells = image.reshape(ny, cy, nx, cx).transpose(0, 2, 1, 3).reshape(ny * nx, cy * cx)
        levels = _cell_levels(cells).reshape(ny, nx)
    else:
        levels = np.empty((ny, nx))
        for i in range(ny):
            for j in range(nx):
                cell = image[y_edges[i] : y_edges[i + 1], x_edges[j] : x_edges[j + 1]]
                levels[i, j] = _cell_levels(cell.reshape(1, -1))[0]
    if not np.isfinite(levels).all():
        levels[~np.isfinite(levels)] = np.nanmedian(levels) if np.isfinite(levels).any() else 0.0
    yc = (y_edges[:-1] + y_edges[1:] - 1) / 2.0
    xc = (x_edges[:-1] + x_edges[1:] - 1) / 2.0
    model: np.ndarray = (_interp_matrix(height, yc) @ levels @ _interp_matrix(width, xc).T).astype(image.dtype)
    return model


def _gauss1d(sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel: np.ndarray = k / k.sum()
    return kernel


def smooth(image: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
    """Gaussian-smoothed image (zero padding) and the kernel's sum of squares.

    Separable, with the kernel's symmetry (one multiply per pair of taps) and no temporaries in
    the loop. For white noise of variance v, the smoothed noise variance is ``v * sum_sq``.
    """
    k = _gauss1d(sigma).astype(np.float32)
    r = len(k) // 2
    h, w = image.shape
    padded = np.pad(image.astype(np.float32, copy=False), r, mode="constant")
    rows = padded[:, r : r + w] * k[r]
    tmp = np.empty_like(rows)
    for j in range(1, r + 1):
        np.add(padded[:, r - j : r - j + w], padded[:, r + j : r + j + w], out=tmp)
        tmp *= k[r + j]
        rows += tmp
    out = rows[r : r + h] * k[r]
    tmp = tmp[:h]
    for j in range(1, r + 1):
        np.add(rows[r - j : r - j + h], rows[r + j : r + j + h], out=tmp)
        tmp *= k[r + j]
        out += tmp
    return out, float(np.sum(k.astype(np.float64) ** 2) ** 2)


def detect_peaks(smoothed: np.ndarray, significance: np.ndarray, threshold: float, border: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of local maxima (3x3, ties broken towards lower index) with significance > threshold."""
    h, w = smoothed.shape
    core = smoothed[1:-1, 1:-1]
    peak = significance[1:-1, 1:-1] > threshold
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            other = smoothed[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
            peak &= (core > other) if (dy, dx) > (0, 0) else (core >= other)
    y, x = np.nonzero(peak)
    y, x = y + 1, x + 1
    inside = (y >= border) & (y < h - border) & (x >= border) & (x < w - border)
    return y[inside], x[inside]


def _stamps(array: np.ndarray, y: np.ndarray, x: np.ndarray, r: int) -> np.ndarray:
    offsets = np.arange(-r, r + 1)
    return array[(y[:, None] + offsets)[:, :, None], (x[:, None] + offsets)[:, None, :]]


def _weighted_moments(stamps: np.ndarray, cy: np.ndarray, cx: np.ndarray, sigma_w: float | np.ndarray,
                      r: int) -> tuple[np.ndarray, ...]:
    """Gaussian-weighted (sum, mean y, mean x, second moment) of stamps around (cy, cx) (stamp frame)."""
    offsets = np.arange(-r, r + 1, dtype=float)
    dy = offsets[None, :, None] - cy[:, None, None]
    dx = offsets[None, None, :] - cx[:, None, None]
    sw = np.broadcast_to(np.asarray(sigma_w, dtype=float), cy.shape)[:, None, None]
    w = np.exp(-0.5 * (dx * dx + dy * dy) / (sw * sw)) * stamps
    total = w.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        my = (w * dy).sum(axis=(1, 2)) / total
        mx = (w * dx).sum(axis=(1, 2)) / total
        m2 = (w * ((dx - mx[:, None, None]) ** 2 + (dy - my[:, None, None]) ** 2)).sum(axis=(1, 2)) / (2.0 * total)
    return total, my, mx, m2


@dataclass
class Sources:
    """Measured sources (pixel positions are 0-based, x = column)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    peak_significance: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def measure_psf_sigma(image: np.ndarray, y: np.ndarray, x: np.ndarray, snr: np.ndarray, guess: float) -> float:
    """PSF Gaussian sigma (pixels) from the bright, isolated peaks; ``guess`` if there are too few."""
    if len(x) < 2:
        return guess
    fx, fy = x.astype(float), y.astype(float)
    d2 = (fx[:, None] - fx[None, :]) ** 2 + (fy[:, None] - fy[None, :]) ** 2
    np.fill_diagonal(d2, np.inf)
    r = math.ceil(4.0 * max(guess, 1.0)) + 2
    isolated = d2.min(axis=1) > (2 * r) ** 2
    h, w = image.shape
    inside = (y >= r) & (y < h - r) & (x >= r) & (x < w - r)
    good = isolated & inside & (snr > 50.0)
    if good.sum() < 3:
        good = isolated & inside & (snr > 20.0)
    if good.sum() < 3:
        return guess
    stamps = _stamps(image, y[good], x[good], r).astype(float)
    zeros = np.zeros(int(good.sum()))
    sigma = guess
    for _ in range(3):  # weight ~ the PSF: well conditioned; the Gaussian weight is divided out
        sigma_w = max(sigma, 0.5) * math.sqrt(1.0 + 1.0 / 12.0)
        _, my, mx, _ = _weighted_moments(stamps, zeros, zeros, sigma_w, r)
        _, _, _, m2 = _weighted_moments(stamps, my, mx, sigma_w, r)
        with np.errstate(divide="ignore", invalid="ignore"):
            source = 1.0 / (1.0 / m2 - 1.0 / sigma_w**2)  # sigma^2 of the pixel-convolved star
        source = source[np.isfinite(source) & (source > 0)]
        if not len(source):
            return guess
        sigma = math.sqrt(max(float(np.median(source)) - 1.0 / 12.0, 0.04))
    return sigma


def measure_sources(image: np.ndarray, variance: np.ndarray, y: np.ndarray, x: np.ndarray,
                    significance: np.ndarray, sigma: float, aperture_sigma: float) -> Sources:
    """Centroids and aperture fluxes of sources at integer peaks (y, x) (stamps must fit)."""
    radius = max(aperture_sigma * sigma, 2.5)
    r = math.ceil(radius) + 1
    h, w = image.shape
    inside = (y >= r) & (y < h - r) & (x >= r) & (x < w - r)
    y, x, significance = y[inside], x[inside], significance[inside]
    stamps = _stamps(image, y, x, r).astype(float)
    var_stamps = _stamps(variance, y, x, r).astype(float)
    cy = np.zeros(len(y))
    cx = np.zeros(len(y))
    for _ in range(2):
        _, my, mx, _ = _weighted_moments(stamps, cy, cx, sigma, r)
        ok = np.isfinite(my) & np.isfinite(mx) & (np.abs(my) < 1.5) & (np.abs(mx) < 1.5)
        cy = np.where(ok, my, cy)
        cx = np.where(ok, mx, cx)
    offsets = np.arange(-r, r + 1, dtype=float)
    d2 = (offsets[None, :, None] - cy[:, None, None]) ** 2 + (offsets[None, None, :] - cx[:, None, None]) ** 2
    aperture = d2 <= radius * radius
    flux = (stamps * aperture).sum(axis=(1, 2))
    flux_err = np.sqrt(np.maximum((var_stamps * aperture).sum(axis=(1, 2)), 0.0))
    return Sources(x=x + cx, y=y + cy, flux=flux, flux_err=flux_err, peak_significance=significance)


def match_positions(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray,
                    radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matches of points 1 to points 2 within ``radius``: (index1, index2).

    Each point 2 is used at most once (the closest point 1 keeps it).
    """
    if not len(x1) or not len(x2):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    best = np.full(len(x1), -1, np.int64)
    dist = np.full(len(x1), np.inf)
    step = max(1, 2_000_000 // len(x2))
    for start in range(0, len(x1), step):
        d2 = (x1[start : start + step, None] - x2[None, :]) ** 2 + (y1[start : start + step, None] - y2[None, :]) ** 2
        j = np.argmin(d2, axis=1)
        best[start : start + step] = j
        dist[start : start + step] = d2[np.arange(len(j)), j]
    ok = dist <= radius * radius
    i1, i2, d = np.nonzero(ok)[0], best[ok], dist[ok]
    order = np.lexsort((d, i2))  # for each point 2, the closest point 1 first
    i1, i2 = i1[order], i2[order]
    first = np.ones(len(i2), bool)
    first[1:] = i2[1:] != i2[:-1]
    return i1[first], i2[first]
