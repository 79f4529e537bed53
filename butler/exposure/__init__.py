"""Exposures: images with mask, variance, WCS, PSF, photometric calibration and metadata.

``Exposure`` is the python type of the ``Exposure`` storage class, written as a
zarr v3 directory store (default; chunked, per-chunk crc32c, partial reads) or
as multi-extension FITS. ``Box`` is the ``bbox`` read parameter::

    from butler.exposure import Box, Exposure
    butler.put(Exposure(image, mask, variance, wcs=wcs), "calexp", data_id)
    butler.get("calexp", data_id, parameters={"bbox": Box(x0=100, y0=200, width=256, height=256)})

Importing this package imports numpy, not astropy, zarr or dask.
"""

from ._box import Box
from ._exposure import COMPONENTS, PLANES, STANDALONE_COMPONENTS, Exposure
from ._wcs import WcsError, slice_wcs

__all__ = ["COMPONENTS", "PLANES", "STANDALONE_COMPONENTS", "Box", "Exposure", "WcsError", "slice_wcs"]
