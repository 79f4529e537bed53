"""What the demo tasks and the simulation share: mask bits, the no-inputs error, small numerics."""

from __future__ import annotations

import math

import numpy as np

from .._task import NoWorkFound

__all__ = ["DETECTED", "MASK_BITS", "NO_DATA", "NoInputs", "gaussian_kernel", "normal_cdf"]

DETECTED = 1 << 5
"""Mask bit: the pixel belongs to a detected source (above the detection threshold)."""
NO_DATA = 1 << 8
"""Mask bit: no input pixel covers this pixel (warps and coadds); image and variance are NaN."""
MASK_BITS = {"DETECTED": DETECTED, "NO_DATA": NO_DATA}

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class NoInputs(NoWorkFound):
    """A quantum has nothing to do: e.g. a coadd flavor selects none of the warps it was given.

    Raised from ``run``; an executor should record the quantum as having no outputs (like
    LSST's ``NoWorkFound``), not as a failure, and block its downstream quanta the same way.
    """


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, vectorised (Abramowitz & Stegun 7.1.26 erf; |error| < 1.5e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    cdf: np.ndarray = 0.5 * (1.0 + np.copysign(erf, z))
    return cdf


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """A normalised, centred 2-D Gaussian kernel (pixel-integrated), shape (2r+1, 2r+1)."""
    r = math.ceil(4.0 * sigma) if radius is None else radius
    edges = np.arange(-r, r + 2) - 0.5
    profile = np.diff(normal_cdf(edges / sigma))
    kernel = np.outer(profile, profile)
    normalised: np.ndarray = kernel / kernel.sum()
    return normalised
