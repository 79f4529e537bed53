"""Formatters for exposure components written on their own: a WCS, a scalar (``photo_calib``).

A pipeline that recalibrates an exposure writes the new WCS or photometric
calibration as a component of the existing dataset
(``butler.put(wcs, "calexp.wcs", data_id)``); these are the files it becomes.
The WCS is a FITS file with only a primary header (readable by any FITS tool);
a scalar is one JSON value.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from ._formatters import Formatter

__all__ = ["ScalarJsonFormatter", "WcsFitsFormatter"]


class WcsFitsFormatter(Formatter):
    """An astropy WCS as a header-only FITS file."""

    name: ClassVar[str] = "wcs_fits"
    extension: ClassVar[str] = ".fits"

    def to_bytes(self, obj: Any) -> bytes:
        from astropy.io import fits

        from butler.exposure._wcs import is_wcs, wcs_to_header

        if not is_wcs(obj):
            raise self._wrong_type(obj, "astropy.wcs.WCS")
        header = wcs_to_header(obj, where="the WCS to write")
        buffer = io.BytesIO()
        fits.PrimaryHDU(header=header).writeto(buffer, checksum=True)
        return buffer.getvalue()

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._parse(data, "<bytes>")

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        with open(path, "rb") as stream:
            return self._parse(stream.read(), path)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._parse(verified, path)

    def _parse(self, data: bytes, where: str) -> Any:
        from astropy.io import fits

        from butler.exposure._wcs import WcsError, wcs_from_header

        try:
            with fits.open(io.BytesIO(data)) as hdus:
                header = hdus[0].header.copy()
        except Exception as err:
            raise WcsError(f"cannot read the WCS file {where}: {err}") from err
        return wcs_from_header(header, where=where)


class ScalarJsonFormatter(Formatter):
    """One number, string or boolean as JSON."""

    name: ClassVar[str] = "scalar_json"
    extension: ClassVar[str] = ".json"

    def to_bytes(self, obj: Any) -> bytes:
        if isinstance(obj, (bool, int, str)):
            return json.dumps(obj).encode()
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise self._cannot_serialise(ValueError(f"{obj} is not finite"))
            return json.dumps(obj).encode()
        raise self._wrong_type(obj, "float, int, str or bool")

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return json.loads(data)
