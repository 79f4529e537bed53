"""What the exposure formatters (zarr, FITS) share: read requests, component overrides, checks.

Both formatters accept the same components and parameters and behave the same
way; each implements only how bytes are laid out. ``bbox`` selects a part of
every plane (parent-frame `Box`), ``lazy`` returns dask arrays instead of
reading the planes. Components written on their own after the exposure (a
recalibrated WCS, say) arrive as *overrides*: callables that read them; they
replace what the exposure file holds, and a WCS override is cut to the bbox
like the stored one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from butler.datastore._formatters import Formatter

from ._box import Box, parse_bbox
from ._exposure import COMPONENTS, STANDALONE_COMPONENTS, Exposure
from ._wcs import slice_wcs

__all__ = ["ExposureFormatterBase", "ReadRequest", "metadata_to_json"]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A validated read: which component, which pixels, eager or lazy."""

    component: str | None
    bbox: Box | None
    lazy: bool

    @classmethod
    def parse(cls, component: str | None, parameters: Mapping[str, Any], where: str) -> ReadRequest:
        lazy = parameters.get("lazy", False)
        if not isinstance(lazy, bool):
            raise TypeError(f"parameter 'lazy' of {where} must be True or False, not {lazy!r}")
        bbox = parameters.get("bbox")
        if bbox is not None and not isinstance(bbox, Box):
            raise TypeError(f"parameter 'bbox' of {where} must be a butler.exposure.Box, not {type(bbox).__name__}")
        return cls(component, bbox, lazy)

    def region(self, bounds: Box, where: str) -> tuple[Box, slice, slice]:
        """The box to read (the whole image without ``bbox``) and its local numpy slices."""
        box = bounds if self.bbox is None else parse_bbox(self.bbox, bounds, where=where)
        rows, columns = box.local_slices(bounds)
        return box, rows, columns


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and small arrays
        return value.tolist()
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def metadata_to_json(formatter: Formatter, metadata: Mapping[str, Any]) -> str:
    """Exposure metadata as JSON; values JSON cannot hold are a `StorageClassError`."""
    try:
        return json.dumps(dict(metadata), default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise formatter._cannot_serialise(err) from err


class ExposureFormatterBase(Formatter):
    """Shared behaviour of the ``Exposure`` formatters; subclasses implement `_read`."""

    supported_components: ClassVar[frozenset[str]] = frozenset(COMPONENTS)
    supported_parameters: ClassVar[frozenset[str]] = frozenset({"bbox", "lazy"})
    standalone_components: ClassVar[frozenset[str]] = STANDALONE_COMPONENTS
    """Components that may be written on their own after the exposure (see `read_composite`)."""

    __slots__ = ()

    def _check_exposure(self, obj: Any) -> Exposure:
        if not isinstance(obj, Exposure):
            raise self._wrong_type(obj, "butler.exposure.Exposure")
        return obj

    def _bounds(self, path: str, verified: Any = None) -> Box:
        """The parent-frame box of the stored planes (reads metadata only; ``verified`` as in `read_verified`)."""
        raise NotImplementedError

    def reads_from_file(self, parameters: Mapping[str, Any] | None) -> bool:
        # docstring inherited
        return bool(parameters and parameters.get("lazy"))

    def read_composite(
        self,
        path: str | os.PathLike[str],
        *,
        component: str | None,
        parameters: Mapping[str, Any] | None,
        overrides: Mapping[str, Callable[[], Any]],
        verified: Callable[[], Any] | None = None,
    ) -> Any:
        """Read like `read`, with separately written components replacing the stored ones.

        ``overrides`` maps component names to callables that read them (only the
        needed ones are called, so reading the image never reads an override WCS).
        ``verified``, if given, is called (once, and only if the exposure's own file is
        read) for what `read_verified` takes: the file's checked bytes or the store's
        manifest, or None when the file was verified in a streaming pass.
        """
        checked = self.check_request(component, parameters)
        path = os.fspath(path)
        request = ReadRequest.parse(component, checked, path)
        loaded: list[Any] = []

        def stored() -> Any:
            if verified is None:
                return None
            if not loaded:
                loaded.append(verified())
            return loaded[0]

        def read(name: str | None) -> Any:
            check = stored()
            return self._read(path, name, checked) if check is None else self._read_checked(path, check, name, checked)

        if component is not None:
            if component not in overrides:
                return read(component)
            value = overrides[component]()
            if component == "wcs" and value is not None and request.bbox is not None:
                _, rows, columns = request.region(self._bounds(path, stored()), path)
                value = slice_wcs(value, rows, columns)
            return value
        exposure = read(None)
        replaced = {name: load() for name, load in overrides.items() if name in STANDALONE_COMPONENTS}
        if request.bbox is not None and replaced.get("wcs") is not None:
            _, rows, columns = request.region(self._bounds(path, stored()), path)
            replaced["wcs"] = slice_wcs(replaced["wcs"], rows, columns)
        return exposure.replace(**replaced) if replaced else exposure
