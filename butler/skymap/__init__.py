"""Skymaps: tessellations of the sky into tracts (tangent-plane pixel grids) and patches.

``RingsSkyMap`` (declination rings, as in LSST) and ``DiscreteSkyMap`` (explicit tract centres)
share the base ``SkyMap``: config and digest, tract/patch views with astropy WCS (built lazily;
importing this package does not import astropy), sphgeom regions, vectorised lookups and packers.
"""

from ._base import SkyMap, SkyMapIndexError, skymap_from_config
from ._discrete import DiscreteSkyMap
from ._geometry import Box, PatchInfo, TractInfo
from ._rings import RingsSkyMap

__all__ = [
    "Box",
    "DiscreteSkyMap",
    "PatchInfo",
    "RingsSkyMap",
    "SkyMap",
    "SkyMapIndexError",
    "TractInfo",
    "skymap_from_config",
]
