"""The camera dataset: one version of an instrument's camera, as a repository stores it.

``butler.get("camera", instrument="SimCam", exposure=1234)`` returns a `Camera`: the camera
certified for that exposure's time (see docs/calibrations.md), so reprocessing old data uses the
geometry of its time rather than today's. A `Camera` wraps a validated `CameraDefinition` and
adds what code reading a camera needs: detectors by id or full name, filters by name, bands, the
focal-plane geometry on the sky, and the `Instrument` of that version. It is written by the
``camera_json`` (default) or ``camera_yaml`` formatter as the definition's canonical mapping,
which is itself a valid camera YAML, and validated again (strictly) when read.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import DataIdError
from ._camera import CameraDefinition, DetectorDefinition, FilterDefinition, canonical_digest, parse_camera

if TYPE_CHECKING:
    from ._instrument import Instrument

__all__ = ["Camera"]


class Camera:
    """A camera version: detectors, filters, aliases and geometry of an instrument (immutable).

    ``camera[4]`` / ``camera["S11"]`` is a detector (by id or full name), iteration yields the
    detectors in id order; two cameras are equal when their definitions are (same `digest`).
    """

    __slots__ = ("_by_id", "_by_name", "_definition", "_digest", "_filters")

    def __init__(self, definition: CameraDefinition) -> None:
        if not isinstance(definition, CameraDefinition):
            raise TypeError(f"Camera wraps a CameraDefinition, got {type(definition).__name__}; use "
                            "Camera.from_dict() for a mapping or Camera.from_instrument() for an Instrument")
        self._definition = definition
        self._by_id = MappingProxyType({d.id: d for d in definition.detectors})
        self._by_name = {d.full_name: d for d in definition.detectors}
        self._filters = MappingProxyType({f.name: f for f in definition.filters})
        self._digest: str | None = None

    # -- construction and serialisation ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<camera dataset>") -> Camera:
        """Validate a camera mapping (camera-YAML form, e.g. `to_dict`); errors name ``source``."""
        return cls(parse_camera(data, source=source))

    @classmethod
    def from_instrument(cls, instrument: Instrument) -> Camera:
        """The camera of an `Instrument` (its `digest` equals the instrument's definition digest)."""
        return cls(parse_camera(instrument.definition(), source=f"<{instrument.name} camera>"))

    @classmethod
    def coerce(cls, obj: Any) -> Camera | None:
        """``obj`` as a Camera if it is one, a `CameraDefinition` or an `Instrument`; else None."""
        from ._instrument import Instrument

        if isinstance(obj, Camera):
            return obj
        if isinstance(obj, CameraDefinition):
            return cls(obj)
        if isinstance(obj, Instrument):
            return cls.from_instrument(obj)
        return None

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able mapping (a valid camera YAML; `from_dict` reads it back)."""
        return self._definition.to_dict()

    @property
    def definition(self) -> CameraDefinition:
        return self._definition

    @property
    def digest(self) -> str:
        """Hex blake2b-128 of the canonical mapping: the instrument record's ``definition_digest``."""
        if self._digest is None:
            self._digest = canonical_digest(self.to_dict())
        return self._digest

    def instrument(self) -> Instrument:
        """The `Instrument` of this camera version (class from ``class_name``, else generic)."""
        from ._instrument import VisitDetectorInstrument, _instrument_class

        name = self._definition.class_name
        cls = VisitDetectorInstrument if name is None else _instrument_class(name, f"class_name of {self.name}")
        return cls(self._definition)

    # -- what it holds ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._definition.name

    @property
    def class_name(self) -> str | None:
        return self._definition.class_name

    @property
    def visit_max(self) -> int:
        return self._definition.visit_max

    @property
    def exposure_max(self) -> int:
        return self._definition.exposure_max

    @property
    def detector_max(self) -> int:
        return self._definition.detector_max

    @property
    def aliases(self) -> Mapping[str, str]:
        return self._definition.aliases

    @property
    def file_templates(self) -> Mapping[str, str]:
        return self._definition.file_templates

    @property
    def detectors(self) -> Mapping[int, DetectorDefinition]:
        """Detectors by id, in id order."""
        return self._by_id

    @property
    def filters(self) -> Mapping[str, FilterDefinition]:
        """Physical filters by name, in definition order."""
        return self._filters

    @property
    def bands(self) -> tuple[str, ...]:
        """Distinct bands of the filters, in filter order."""
        return tuple(dict.fromkeys(f.band for f in self._definition.filters))

    def detector(self, id_or_full_name: int | str) -> DetectorDefinition:
        """The detector with this integer id or full name (``"S11"``; ``"4"`` also works)."""
        key = id_or_full_name
        if isinstance(key, str):
            if key in self._by_name:
                return self._by_name[key]
            if key.strip().isdigit() and int(key) in self._by_id:
                return self._by_id[int(key)]
            close = difflib.get_close_matches(key, list(self._by_name), n=3)
            hint = f"; close: {close}" if close else f"; full names: {list(self._by_name)}"
            raise DataIdError(f"no detector named {key!r} in {self.name}{hint}")
        try:
            index = operator.index(key) if not isinstance(key, bool) else None
        except TypeError:
            index = None
        if index is None or index not in self._by_id:
            raise DataIdError(f"no detector with id {key!r} in {self.name}; ids: {sorted(self._by_id)}")
        return self._by_id[index]

    def detectors_of(self, purpose: str = "SCIENCE") -> tuple[DetectorDefinition, ...]:
        """The detectors with this purpose (SCIENCE, WAVEFRONT, GUIDER), in id order."""
        return tuple(d for d in self._by_id.values() if d.purpose == purpose.upper())

    def filter(self, name: str) -> FilterDefinition:
        """The physical filter with this name."""
        try:
            return self._filters[name]
        except KeyError:
            raise DataIdError(f"no physical_filter {name!r} in {self.name}; filters: {list(self._filters)}") from None

    # -- geometry ---------------------------------------------------------------------------------
    def detector_corners(self, id_or_full_name: int | str) -> list[tuple[float, float]]:
        """A detector's corners in arcsec from the boresight (x east, y north, sky angle 0): the
        same geometry the registry's visit regions are computed from."""
        from ._focal_plane import detector_corners

        return detector_corners(self.detector(id_or_full_name).to_record(self.name))

    def field_radius_arcsec(self, purpose: str | None = "SCIENCE") -> float:
        """Largest distance (arcsec) of a detector corner from the boresight (all detectors if None)."""
        dets = self._by_id.values() if purpose is None else self.detectors_of(purpose)
        return max((math.hypot(x, y) for d in dets for x, y in self.detector_corners(d.id)), default=0.0)

    # -- container and value protocol -------------------------------------------------------------
    def __getitem__(self, id_or_full_name: int | str) -> DetectorDefinition:
        return self.detector(id_or_full_name)

    def __iter__(self) -> Iterator[DetectorDefinition]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, id_or_full_name: object) -> bool:
        return id_or_full_name in self._by_id or id_or_full_name in self._by_name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return (f"Camera({self.name!r}: {len(self)} detectors, filters {list(self._filters)}, "
                f"digest {self.digest[:12]})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self.to_dict(),))


def _restore(data: dict[str, Any]) -> Camera:
    return Camera.from_dict(data)
