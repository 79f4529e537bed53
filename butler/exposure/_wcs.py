"""WCS <-> FITS header cards, the form in which every exposure format stores a WCS.

A WCS is stored as the cards of ``WCS.to_header(relax=True)`` (so SIP
distortions survive), as ``[keyword, value, comment]`` triples in zarr
attributes or as real cards in a FITS header. Writing round-trips the cards
through astropy once, so a WCS that could not be read back is refused at write
time rather than discovered at read time.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

from butler.errors import ButlerError

if TYPE_CHECKING:
    from astropy.io.fits import Header
    from astropy.wcs import WCS

__all__ = ["WcsError", "is_wcs", "slice_wcs", "wcs_from_cards", "wcs_from_header", "wcs_to_cards", "wcs_to_header"]


class WcsError(ValueError, ButlerError):
    """A WCS that astropy cannot write or read back."""


def is_wcs(obj: Any) -> bool:
    """Whether ``obj`` is an astropy WCS (without importing astropy if nobody did)."""
    if "astropy.wcs" not in sys.modules:
        return False
    from astropy.wcs import WCS

    return isinstance(obj, WCS)


def wcs_to_header(wcs: WCS, *, where: str = "exposure") -> Header:
    """Header cards of ``wcs``; raises `WcsError` if astropy cannot read them back."""
    try:
        with warnings.catch_warnings():
            # FITSFixedWarning etc. describe harmless normalisations (e.g. DATE-OBS from MJD-OBS).
            warnings.simplefilter("ignore")
            header = wcs.to_header(relax=True)
            wcs_from_header(header, where=where)
    except WcsError:
        raise
    except Exception as err:  # astropy raises a zoo of types (ValueError, wcs.InvalidTransformError...)
        raise WcsError(f"the WCS of {where} cannot be written as FITS header cards: {err}") from err
    return header


def wcs_to_cards(wcs: WCS, *, where: str = "exposure") -> list[list[Any]]:
    """``[keyword, value, comment]`` triples of ``wcs`` (JSON-serialisable)."""
    return [[card.keyword, card.value, card.comment] for card in wcs_to_header(wcs, where=where).cards]


def wcs_from_header(header: Header, *, where: str) -> WCS:
    """An astropy WCS from header cards; anything astropy rejects is a `WcsError` naming ``where``."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, relax=True, fix=True)
    except Exception as err:
        raise WcsError(f"cannot read the WCS of {where}: {type(err).__name__}: {err}") from err
    if wcs.naxis != 2:
        raise WcsError(f"the WCS of {where} has {wcs.naxis} axes; an image WCS has 2")
    return wcs


def wcs_from_cards(cards: Any, *, where: str) -> WCS:
    """Rebuild a WCS from the ``[keyword, value, comment]`` triples of `wcs_to_cards`."""
    from astropy.io import fits

    if not isinstance(cards, list) or not all(isinstance(c, (list, tuple)) and len(c) in (2, 3) for c in cards):
        raise WcsError(f"cannot read the WCS of {where}: expected a list of [keyword, value, comment] cards")
    try:
        header = fits.Header([tuple(card) for card in cards])
    except Exception as err:
        raise WcsError(f"cannot read the WCS of {where}: malformed header cards ({err})") from err
    return wcs_from_header(header, where=where)


def slice_wcs(wcs: WCS, rows: slice, columns: slice) -> WCS:
    """The WCS of ``array[rows, columns]`` (reference pixel shifted; SIP kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wcs.slice((rows, columns))
