"""Instrument base classes and the registry of known instruments.

An `Instrument` is a thin, picklable view of a validated camera definition
(`CameraDefinition`): it produces the registry's dimension records, rewrites data ID
aliases and supplies file template overrides. Instances are cheap (the parsed YAML is
cached) and pickle as "class + camera file + digest", so sending one to a Dask worker
costs a few hundred bytes and the worker refuses a camera file that changed meanwhile.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ButlerError, DataIdError
from ._camera import CameraDefinition, CameraDefinitionError, canonical_digest, load_camera, parse_camera

if TYPE_CHECKING:
    from typing import Self

    from ..dimensions._packers import DataIdPacker
    from ._camera import DetectorDefinition, FilterDefinition
    from ._camera_dataset import Camera

__all__ = [
    "Instrument",
    "UnknownInstrumentError",
    "VisitDetectorInstrument",
    "known_instruments",
    "load_instrument",
    "register_instrument",
]

ENTRY_POINT_GROUP = "butler.instruments"


class UnknownInstrumentError(LookupError, ButlerError):
    """An instrument name, class path or camera file does not resolve to an instrument."""


class Instrument(ABC):
    """An instrument defined by a camera definition; see `VisitDetectorInstrument`."""

    camera_file: ClassVar[str | None] = None
    """Camera YAML of a concrete camera class, relative to the module defining the class."""

    def __init__(self, camera: CameraDefinition | None = None, *, source: str | os.PathLike[str] | None = None):
        if camera is None:
            source = self.default_camera_path()
            if source is None:
                raise TypeError(
                    f"{type(self).__name__} has no camera file; use {type(self).__name__}.from_yaml(path) "
                    "or load_instrument(path)"
                )
            camera = load_camera(source)
        self._check_class_name(camera)
        self._camera = camera
        self._source = None if source is None else Path(source).expanduser().resolve()
        self._digest: str | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def default_camera_path(cls) -> Path | None:
        """Absolute path of the class's own camera file, or None for generic classes."""
        if cls.camera_file is None:
            return None
        path = Path(cls.camera_file)
        if not path.is_absolute():
            path = Path(sys.modules[cls.__module__].__file__ or ".").parent / path
        return path.resolve()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        """An instance of this class built from the camera YAML at ``path``."""
        return cls(load_camera(path), source=path)

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any]) -> Self:
        """An instance built from a mapping such as the one `definition` returns."""
        return cls(parse_camera(definition, source=f"<{cls.__name__} definition>"))

    @classmethod
    def public_class_name(cls) -> str:
        """Dotted path of the class, through the shortest package that re-exports it."""
        parts = cls.__module__.split(".")
        for n in range(1, len(parts) + 1):
            module = sys.modules.get(".".join(parts[:n]))
            if module is not None and getattr(module, cls.__qualname__, None) is cls:
                return f"{module.__name__}.{cls.__qualname__}"
        return f"{cls.__module__}.{cls.__qualname__}"

    def _check_class_name(self, camera: CameraDefinition) -> None:
        declared = camera.class_name
        if declared is None:
            return
        cls = type(self)
        names = {self.public_class_name(), f"{cls.__module__}.{cls.__qualname__}",
                 f"{cls.__module__}:{cls.__qualname__}"}
        if declared not in names:
            raise CameraDefinitionError(
                f"{camera.source}: class_name: the camera declares {declared!r} but is being loaded as "
                f"{self.public_class_name()!r}; use load_instrument() to honour class_name"
            )

    # -- what kind of instrument --------------------------------------------------------

    @property
    @abstractmethod
    def observation_dimensions(self) -> tuple[str, ...]:
        """Dimensions that identify one observation of one detector by this instrument."""

    # -- the camera ---------------------------------------------------------------------

    @property
    def camera(self) -> CameraDefinition:
        return self._camera

    @property
    def name(self) -> str:
        return self._camera.name

    @property
    def class_name(self) -> str:
        return self.public_class_name()

    @property
    def detectors(self) -> tuple[DetectorDefinition, ...]:
        return self._camera.detectors

    @property
    def filters(self) -> tuple[FilterDefinition, ...]:
        return self._camera.filters

    @property
    def bands(self) -> tuple[str, ...]:
        """Distinct bands of the filters, in filter order."""
        return tuple(dict.fromkeys(f.band for f in self._camera.filters))

    @property
    def aliases(self) -> Mapping[str, str]:
        return self._camera.aliases

    @property
    def file_templates(self) -> Mapping[str, str]:
        return self._camera.file_templates

    @property
    def visit_max(self) -> int:
        return self._camera.visit_max

    @property
    def exposure_max(self) -> int:
        return self._camera.exposure_max

    @property
    def detector_max(self) -> int:
        return self._camera.detector_max

    @property
    def source(self) -> Path | None:
        """The camera YAML this instance was built from, if any."""
        return self._source

    def definition(self) -> dict[str, Any]:
        """Canonical JSON-able description; parses back into an equal instrument."""
        return self._camera.to_dict(class_name=self.class_name)

    def definition_digest(self) -> str:
        """Hex blake2b-128 of the canonical JSON of `definition`."""
        if self._digest is None:
            self._digest = canonical_digest(self.definition())
        return self._digest

    # -- records and data IDs -----------------------------------------------------------

    def dimension_records(self) -> dict[str, list[dict[str, Any]]]:
        """Records to insert into the registry, keyed by element name (fresh dicts)."""
        name = self.name
        return {
            "instrument": [{
                "name": name,
                "class_name": self.class_name,
                "visit_max": self.visit_max,
                "exposure_max": self.exposure_max,
                "detector_max": self.detector_max,
                "definition_digest": self.definition_digest(),
            }],
            "band": [{"name": band} for band in self.bands],
            "physical_filter": [{"instrument": name, "name": f.name, "band": f.band} for f in self.filters],
            "detector": [d.to_record(name) for d in self.detectors],
        }

    def normalize_keys(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Rewrite alias keys to dimension names; unknown keys are passed through unchanged."""
        out: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        aliases = self._camera.aliases
        for key, value in mapping.items():
            target = aliases.get(key, key)
            if target in out and out[target] != value:
                first, second = given_as[target], key
                raise DataIdError(
                    f"data ID for {self.name} gives {target!r} twice with different values: "
                    f"{_describe_key(first, target)}={out[target]!r} and {_describe_key(second, target)}={value!r}"
                )
            if target not in out:
                out[target] = value
                given_as[target] = key
        return out

    def packer(self, kind: str = "visit_detector") -> DataIdPacker:
        """A vectorised packer of this instrument's data IDs: "visit_detector" or "exposure_detector".

        The default packs the fields in the bits their maxima need (``visit_max``, ``exposure_max``,
        ``detector_max`` of the camera definition); a camera class may override this method.
        IDs of different instruments may collide: they are unique only within one instrument.
        For joint processing of several instruments use a repository's joint packers, which put
        the instrument's per-repository index in the high bits:
        ``butler.packer("instrument_visit_detector")`` (see ``butler._multi_instrument``).
        """
        from ..dimensions._packers import packer_for_instrument

        return packer_for_instrument(self.visit_max, self.detector_max, self.exposure_max, kind)

    def get_detector(self, id_or_full_name: int | str) -> DetectorDefinition:
        """The detector with this integer id or full name (``"S11"``; ``"4"`` also works)."""
        return self.camera_view().detector(id_or_full_name)

    def get_filter(self, name: str) -> FilterDefinition:
        """The physical filter with this name."""
        return self.camera_view().filter(name)

    def camera_view(self) -> Camera:
        """This instrument's camera as a `Camera` (what ``butler.get("camera", ...)`` returns)."""
        view = self.__dict__.get("_camera_view")
        if view is None:
            from ._camera_dataset import Camera

            view = self.__dict__["_camera_view"] = Camera.from_instrument(self)
        return view

    # -- identity and pickling ----------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instrument):
            return NotImplemented
        return type(other) is type(self) and other.definition_digest() == self.definition_digest()

    def __hash__(self) -> int:
        return hash((type(self), self.name, self.definition_digest()))

    def __repr__(self) -> str:
        cls = type(self).__name__
        if self._source is not None and self._source != self.default_camera_path():
            return f"{cls}.from_yaml({str(self._source)!r})"
        return f"{cls}()" if self._source is not None else f"{cls}(<{self.name} definition>)"

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self)
        if self._source is None:
            return (_restore_from_definition, (cls, self.definition()))
        path = None if self._source == cls.default_camera_path() else str(self._source)
        return (_restore, (cls, path, self.definition_digest()))


class VisitDetectorInstrument(Instrument):
    """An instrument whose data are identified by exposure or visit, and detector.

    The base most cameras derive from, and the class used for cameras defined only by YAML.
    """

    @property
    def observation_dimensions(self) -> tuple[str, ...]:
        return ("exposure", "visit", "detector")


def _describe_key(key: str, target: str) -> str:
    return repr(key) if key == target else f"{key!r} (alias of {target!r})"


def _restore(cls: type[Instrument], path: str | None, digest: str) -> Instrument:
    instrument = cls() if path is None else cls.from_yaml(path)
    if instrument.definition_digest() != digest:
        where = instrument.source or cls.__name__
        raise CameraDefinitionError(
            f"{where}: the camera definition changed since this {cls.__name__} was pickled "
            f"(digest {instrument.definition_digest()} != {digest})"
        )
    return instrument


def _restore_from_definition(cls: type[Instrument], definition: dict[str, Any]) -> Instrument:
    return cls.from_definition(definition)


# -- the registry of known instruments ------------------------------------------------------

_KNOWN: dict[str, str] = {
    "SimCam": "butler.instrument._simcam:SimCam",
    "HexCam": "butler.instrument._simcam:HexCam",
}
_entry_points_loaded = False


def register_instrument(name: str, class_path: str, *, clobber: bool = False) -> None:
    """Make ``load_instrument(name)`` import ``class_path`` ("pkg.module:Class" or dotted)."""
    existing = _KNOWN.get(name)
    if existing is not None and existing != class_path and not clobber:
        raise ValueError(f"instrument {name!r} is already registered as {existing!r}; pass clobber=True")
    _KNOWN[name] = class_path


def known_instruments() -> dict[str, str]:
    """Registered short names and their class paths (built-ins and entry points)."""
    _load_entry_points()
    return dict(_KNOWN)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _KNOWN.setdefault(ep.name, ep.value)


def _import_class(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted class path")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _instrument_class(path: str, what: str) -> type[Instrument]:
    try:
        cls = _import_class(path)
    except (ImportError, AttributeError) as exc:
        raise UnknownInstrumentError(f"cannot import instrument class {path!r} ({what}): {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise UnknownInstrumentError(f"{path!r} ({what}) is not an Instrument subclass: {cls!r}")
    return cls


def load_instrument(name_or_path: str | os.PathLike[str] | Instrument | type[Instrument]) -> Instrument:
    """An instrument from a short name, a dotted class path or a camera YAML path.

    A YAML file's ``class_name`` picks the class; without one it is a `VisitDetectorInstrument`.
    """
    if isinstance(name_or_path, Instrument):
        return name_or_path
    if isinstance(name_or_path, type) and issubclass(name_or_path, Instrument):
        return name_or_path()
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text:
        camera = load_camera(text)
        cls: type[Instrument] = VisitDetectorInstrument
        if camera.class_name is not None:
            cls = _instrument_class(camera.class_name, f"class_name of {camera.source}")
        return cls(camera, source=text)
    if text not in _KNOWN:
        _load_entry_points()
    if text in _KNOWN:
        return _instrument_class(_KNOWN[text], f"registered as {text!r}")()
    folded = {k.lower(): k for k in _KNOWN}
    if text.lower() in folded:
        return _instrument_class(_KNOWN[folded[text.lower()]], f"registered as {folded[text.lower()]!r}")()
    if "." in text or ":" in text:
        return _instrument_class(text, "class path")()
    close = difflib.get_close_matches(text, list(_KNOWN), n=3)
    hint = f" (did you mean {close}?)" if close else ""
    raise UnknownInstrumentError(
        f"unknown instrument {text!r}{hint}; known instruments: {sorted(_KNOWN)}; "
        "also accepted: a dotted class path or a camera YAML path"
    )
