"""The ``exposure_fits`` formatter: an `Exposure` as multi-extension FITS (interchange, raws).

Layout: ``PRIMARY`` (no data; metadata, photo_calib), ``IMAGE`` (with the WCS
and ``LTV1``/``LTV2`` = minus the origin, the IRAF convention ds9 shows as
physical coordinates), ``MASK``, ``VARIANCE`` and, when there is one, ``PSF``.
Every HDU carries ``CHECKSUM``/``DATASUM`` cards.

Metadata is stored twice in the primary header: exactly, as JSON in the long
string card ``BTMETA`` (what this formatter reads back), and as ordinary cards
for other FITS tools (values FITS can hold, under keys that are valid FITS
keywords). A FITS file written by other software (a raw) reads as well: the
image is the first HDU with 2-D data, ``MASK``/``VARIANCE`` default to zeros,
the metadata is the primary header, the WCS is read when the header has one.

Reads compared with zarr: ``component="wcs"`` reads the primary and image
headers only. A ``bbox`` read uses astropy's ``section``, which reads the rows
of the cutout (each row only over the cutout's columns) but has no per-chunk
checksum; the ``DATASUM`` of an HDU is checked only when the whole plane is
read (a corrupted or truncated file then raises `ChecksumError`). ``lazy=True``
returns dask arrays of row strips, each read with ``section`` when computed.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from butler.errors import ChecksumError
from butler.exposure import PLANES, Box, Exposure
from butler.exposure._formatting import ExposureFormatterBase, ReadRequest, metadata_to_json
from butler.exposure._wcs import slice_wcs, wcs_from_header, wcs_to_header

__all__ = ["ExposureFitsFormatter"]

_LAYOUT = 1
_EXTNAMES = {"image": "IMAGE", "mask": "MASK", "variance": "VARIANCE", "psf": "PSF"}
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}")
_OWN_KEYS = frozenset({"BTLAYOUT", "BTMETA", "PHOTCALB"})
_STRUCTURAL = re.compile(
    r"SIMPLE|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|XTENSION|EXTNAME|CHECKSUM|DATASUM|BZERO|BSCALE|END|COMMENT|HISTORY|"
    r"CONTINUE"
)


def _native(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=array.dtype.newbyteorder("="))


def _guard(where: str, read: Any) -> Any:
    """Call ``read()`` (astropy I/O); errors of a damaged file become `ChecksumError` naming it."""
    try:
        return read()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, IndexError, TypeError, EOFError) as err:
        if isinstance(err, ChecksumError):
            raise
        raise ChecksumError(f"cannot read FITS file {where} (corrupted or truncated?): {err}") from err


class ExposureFitsFormatter(ExposureFormatterBase):
    """`Exposure` <-> multi-extension FITS."""

    name: ClassVar[str] = "exposure_fits"
    extension: ClassVar[str] = ".fits"

    __slots__ = ()

    # -- write ------------------------------------------------------------------------------
    def to_bytes(self, obj: Any) -> bytes:
        from astropy.io import fits

        exposure = self._check_exposure(obj)
        primary = fits.PrimaryHDU()
        header = primary.header
        header["BTLAYOUT"] = (_LAYOUT, "butler exposure FITS layout version")
        if exposure.photo_calib is not None:
            header["PHOTCALB"] = (exposure.photo_calib, "photometric calibration (nJy per count)")
        header["BTMETA"] = (metadata_to_json(self, exposure.metadata), "butler metadata (JSON)")
        for key, value in exposure.metadata.items():
            if (isinstance(key, str) and _KEYWORD.fullmatch(key) and key not in _OWN_KEYS
                    and not _STRUCTURAL.fullmatch(key) and isinstance(value, (str, int, float, bool))):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        header[key] = value
                except (ValueError, TypeError):
                    pass  # not representable as a card (NaN, non-ASCII...); BTMETA still has it
        image_header = fits.Header()
        if exposure.wcs is not None:
            image_header.extend(wcs_to_header(exposure.wcs, where="the exposure to write").cards)
        x0, y0 = exposure.origin
        image_header["LTV1"] = (-x0, "minus the parent-frame x of pixel 1")
        image_header["LTV2"] = (-y0, "minus the parent-frame y of pixel 1")
        hdus = [primary, fits.ImageHDU(np.asarray(exposure.image), header=image_header, name="IMAGE"),
                fits.ImageHDU(np.asarray(exposure.mask), name="MASK"),
                fits.ImageHDU(np.asarray(exposure.variance), name="VARIANCE")]
        if exposure.psf is not None:
            hdus.append(fits.ImageHDU(np.asarray(exposure.psf), name="PSF"))
        buffer = io.BytesIO()
        try:
            fits.HDUList(hdus).writeto(buffer, checksum=True)
        except (TypeError, ValueError) as err:
            raise self._cannot_serialise(err) from err
        return buffer.getvalue()

    # -- read -------------------------------------------------------------------------------
    @contextmanager
    def _open(self, source: Any, where: str, *, verify: bool) -> Iterator[Any]:
        """Open lazily; with ``verify``, checksum warnings and truncation become `ChecksumError`."""
        from astropy.io import fits

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdus = _guard(where, lambda: fits.open(source, memmap=False, lazy_load_hdus=True, checksum=verify))
            try:
                yield hdus
            finally:
                hdus.close()
        for warning in caught:
            text = str(warning.message)
            if "verification failed" in text or "truncated" in text or "corrupted" in text:
                raise ChecksumError(f"FITS file {where} is corrupted or truncated: {text}")

    @staticmethod
    def _hdu(hdus: Any, name: str, where: str, required: bool = True) -> Any:
        def find() -> Any:
            try:
                return hdus[_EXTNAMES[name]]
            except KeyError:
                pass
            if name == "image":  # a file from elsewhere: the first HDU with 2-D data
                for hdu in hdus:
                    if hdu.header.get("NAXIS", 0) == 2:
                        return hdu
            return None

        hdu = _guard(where, find)
        if hdu is None and required:
            raise ChecksumError(f"no {_EXTNAMES[name]} HDU in FITS file {where}")
        if hdu is not None and not hasattr(hdu, "section"):  # astropy's stand-in for an unreadable HDU
            raise ChecksumError(f"FITS file {where} is corrupted or truncated: its {_EXTNAMES[name]} HDU is unreadable")
        return hdu

    @staticmethod
    def _bounds_of(header: Any) -> Box:
        origin = (-int(header.get("LTV1", 0)), -int(header.get("LTV2", 0)))
        return Box.from_shape((header["NAXIS2"], header["NAXIS1"]), origin)

    def _bounds(self, path: str, verified: Any = None) -> Box:
        source = path if verified is None else io.BytesIO(verified)
        with self._open(source, path, verify=False) as hdus:
            return self._bounds_of(self._hdu(hdus, "image", path).header)

    def _wcs(self, header: Any, where: str) -> Any:
        if "CTYPE1" not in header and "CTYPE2" not in header:
            return None
        return wcs_from_header(header, where=where)

    def _metadata(self, header: Any) -> dict[str, Any]:
        import json

        if "BTMETA" in header:
            metadata: dict[str, Any] = json.loads(header["BTMETA"])
            return metadata
        return {key: value for key, value in header.items()
                if key and not _STRUCTURAL.fullmatch(key) and key not in _OWN_KEYS}

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._read_source(io.BytesIO(data), "<bytes>", component, parameters)

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._read_source(path, path, component, parameters)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._read_source(io.BytesIO(verified), path, component, parameters)

    def _read_source(self, source: Any, where: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        request = ReadRequest.parse(component, parameters, where)
        whole = request.bbox is None and not request.lazy and component in (None, *PLANES)
        with self._open(source, where, verify=whole) as hdus:
            primary = _guard(where, lambda: hdus[0].header)
            image_hdu = self._hdu(hdus, "image", where)
            bounds = self._bounds_of(image_hdu.header)
            box, rows, columns = request.region(bounds, where)
            cut = request.bbox is not None
            if component == "wcs":
                wcs = self._wcs(image_hdu.header, where)
                return slice_wcs(wcs, rows, columns) if cut and wcs is not None else wcs
            if component == "photo_calib":
                return float(primary["PHOTCALB"]) if "PHOTCALB" in primary else None
            if component == "metadata":
                return self._metadata(primary)
            if component == "psf":
                psf = self._hdu(hdus, "psf", where, required=False)
                return None if psf is None else _guard(where, lambda: _native(psf.data))
            names = (component,) if component is not None else PLANES
            planes = []
            for name in names:
                # Files this formatter wrote have every plane; raws from elsewhere may lack mask/variance.
                ours = "BTLAYOUT" in primary
                hdu = image_hdu if name == "image" else self._hdu(hdus, name, where, required=ours)
                if hdu is None:  # a raw without mask/variance planes
                    planes.append(np.zeros(box.shape, np.int32 if name == "mask" else np.float32))
                elif request.lazy:
                    index = next(i for i, h in enumerate(hdus) if h is hdu)
                    planes.append(_dask_plane(where, index, hdu)[rows, columns])
                elif cut:
                    planes.append(_guard(where, lambda hdu=hdu: _native(hdu.section[rows, columns])))
                else:
                    planes.append(_guard(where, lambda hdu=hdu: _native(hdu.data)))
            if component is not None:
                return planes[0]
            psf_hdu = self._hdu(hdus, "psf", where, required=False)
            wcs = self._wcs(image_hdu.header, where)
            return Exposure(
                *planes,
                wcs=slice_wcs(wcs, rows, columns) if cut and wcs is not None else wcs,
                psf=None if psf_hdu is None else _guard(where, lambda: _native(psf_hdu.data)),
                photo_calib=float(primary["PHOTCALB"]) if "PHOTCALB" in primary else None,
                metadata=self._metadata(primary),
                origin=(box.x0, box.y0),
            )


class FitsPlaneReader:
    """Array-like over one image HDU; ``reader[rows, columns]`` opens the file and reads a section."""

    __slots__ = ("dtype", "index", "path", "shape")

    def __init__(self, path: str, index: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path = path
        self.index = index
        self.shape = shape
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, key: Any) -> np.ndarray:
        from astropy.io import fits

        try:
            with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdus:
                return _native(hdus[self.index].section[key])
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as err:
            raise ChecksumError(f"cannot read HDU {self.index} of FITS file {self.path}: {err}") from err

    def __reduce__(self) -> tuple[Any, ...]:
        return (FitsPlaneReader, (self.path, self.index, self.shape, self.dtype))


def _dask_plane(path: str, index: int, hdu: Any) -> Any:
    import dask.array as da

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("lazy reads of FITS need a file path")
    header = hdu.header
    shape = (header["NAXIS2"], header["NAXIS1"])
    dtype = _native(hdu.section[0:1, 0:1]).dtype
    reader = FitsPlaneReader(os.fspath(path), index, shape, dtype)
    stat = os.stat(path)
    name = f"butler-fits-{index}-{abs(hash((os.fspath(path), stat.st_mtime_ns, stat.st_size))):x}"
    return da.from_array(reader, chunks=(min(512, shape[0]), shape[1]), name=name, asarray=False, fancy=False,
                         lock=False, meta=np.empty((0, 0), dtype))
