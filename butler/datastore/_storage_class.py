"""Storage classes: what python type a dataset is, and how it may be written.

A storage class names the python type(s) a dataset must be an instance of, the
default formatter, the alternative formatters it may be written with, its
components and the read parameters it accepts. Python types are dotted paths
resolved lazily, so defining and validating storage classes never imports numpy,
pyarrow or astropy: an object cannot be an instance of a class whose module has
not been imported yet, so ``validate`` answers "no" without importing anything.

The registry is a plain module-level mapping, open to other packages (the
instrument package registers ``Exposure``) through `register_storage_class`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from butler.errors import ConflictError, StorageClassError

__all__ = [
    "StorageClass",
    "get_storage_class",
    "known_storage_classes",
    "register_storage_class",
]

@dataclass(frozen=True, slots=True, kw_only=True)
class StorageClass:
    """Definition of a storage class (immutable; compared by value)."""

    name: str
    """Unique name, e.g. ``"NumpyArray"``."""
    pytype: str
    """Dotted path of the python type, e.g. ``"numpy.ndarray"``; resolved lazily."""
    formatter: str
    """Name of the default formatter."""
    alternative_formatters: tuple[str, ...] = ()
    """Other formatters a dataset of this class may be written with."""
    pytype_aliases: tuple[str, ...] = ()
    """Dotted paths of further python types accepted (``builtins.list`` for StructuredData)."""
    components: Mapping[str, str] = field(default_factory=dict)
    """Component name -> storage class name of that component."""
    parameters: frozenset[str] = frozenset()
    """Read parameters accepted by ``get(..., parameters=...)``."""

    def __post_init__(self) -> None:
        # Freeze the mutable inputs so a registered definition cannot change under us.
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "parameters", frozenset(self.parameters))
        object.__setattr__(self, "alternative_formatters", tuple(self.alternative_formatters))
        object.__setattr__(self, "pytype_aliases", tuple(self.pytype_aliases))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # mappingproxy does not pickle; rebuild from a plain dict (refs travel to workers).
        fields = (self.name, self.pytype, self.formatter, self.alternative_formatters)
        return (_rebuild, (*fields, self.pytype_aliases, dict(self.components), self.parameters))

    def __hash__(self) -> int:
        # ``components`` is a mapping (unhashable); these fields identify a definition well enough.
        return hash((self.name, self.pytype, self.formatter))

    @property
    def allowed_formatters(self) -> tuple[str, ...]:
        """The default formatter first, then the alternatives."""
        return (self.formatter, *self.alternative_formatters)

    @property
    def pytype_paths(self) -> tuple[str, ...]:
        """Dotted paths of every accepted python type."""
        return (self.pytype, *self.pytype_aliases)

    @property
    def pytype_name(self) -> str:
        """Human-readable accepted type(s), for error messages."""
        return " or ".join(_short_name(p) for p in self.pytype_paths)

    def python_types(self) -> tuple[type, ...]:
        """Resolve the accepted python types (imports their modules)."""
        return tuple(_resolve(p) for p in self.pytype_paths)

    def is_instance(self, obj: object) -> bool:
        """Whether ``obj`` is of an accepted type, without importing unloaded modules."""
        for path in self.pytype_paths:
            module, _, _ = path.rpartition(".")
            if module not in sys.modules:
                # Nothing can be an instance of a class whose module was never imported.
                continue
            if isinstance(obj, _resolve(path)):
                return True
        return False

    def validate(self, obj: object, *, dataset_type: str | None = None) -> None:
        """Raise `StorageClassError` unless ``obj`` is of an accepted type."""
        if not self.is_instance(obj):
            which = f"dataset type {dataset_type!r}" if dataset_type else "dataset type"
            raise StorageClassError(
                f"{which} storage class {self.name!r} expects {self.pytype_name}, "
                f"got {_type_name(type(obj))}"
            )

    def validate_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """Raise `StorageClassError` naming unknown read parameters."""
        if not parameters:
            return
        unknown = sorted(set(parameters) - self.parameters)
        if unknown:
            raise StorageClassError(
                f"storage class {self.name!r} does not accept parameter(s) {unknown}; "
                f"accepted: {sorted(self.parameters) or 'none'}"
            )

    def component(self, name: str) -> StorageClass:
        """Storage class of component ``name``; unknown names raise `StorageClassError`."""
        try:
            return get_storage_class(self.components[name])
        except KeyError:
            raise StorageClassError(
                f"storage class {self.name!r} has no component {name!r}; "
                f"components: {sorted(self.components) or 'none'}"
            ) from None


def _rebuild(
    name: str,
    pytype: str,
    formatter: str,
    alternative_formatters: tuple[str, ...],
    pytype_aliases: tuple[str, ...],
    components: dict[str, str],
    parameters: frozenset[str],
) -> StorageClass:
    return StorageClass(
        name=name,
        pytype=pytype,
        formatter=formatter,
        alternative_formatters=alternative_formatters,
        pytype_aliases=pytype_aliases,
        components=components,
        parameters=parameters,
    )


_resolved: dict[str, type] = {}


def _resolve(path: str) -> type:
    try:
        return _resolved[path]
    except KeyError:
        pass
    module_name, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise StorageClassError(f"python type {path!r} of a storage class is not a class")
    _resolved[path] = obj
    return obj


def _short_name(path: str) -> str:
    return path.removeprefix("builtins.")


def _type_name(tp: type) -> str:
    module = tp.__module__
    return tp.__qualname__ if module == "builtins" else f"{module}.{tp.__qualname__}"


_registry: dict[str, StorageClass] = {}
_lock = threading.Lock()


def register_storage_class(storage_class: StorageClass, *, clobber: bool = False) -> None:
    """Add a storage class; re-registering an identical definition is a no-op.

    A different definition under an existing name raises `ConflictError` unless
    ``clobber`` is true, so two packages cannot silently fight over a name.
    """
    with _lock:
        existing = _registry.get(storage_class.name)
        if existing == storage_class:
            return  # keep the first object, so identity checks stay stable
        if existing is not None and not clobber:
            raise ConflictError(
                f"storage class {storage_class.name!r} is already registered as {existing!r}; "
                f"pass clobber=True to replace it with {storage_class!r}"
            )
        _registry[storage_class.name] = storage_class


def get_storage_class(name: str) -> StorageClass:
    """Look up a storage class by name; unknown names list the known ones."""
    try:
        return _registry[name]
    except KeyError:
        raise StorageClassError(
            f"unknown storage class {name!r}; known: {sorted(_registry)}"
        ) from None


def known_storage_classes() -> tuple[str, ...]:
    """Names of all registered storage classes, sorted."""
    return tuple(sorted(_registry))


def _register_builtins(classes: Iterable[StorageClass]) -> None:
    for sc in classes:
        register_storage_class(sc)


_register_builtins(
    [
        StorageClass(
            name="StructuredData",
            pytype="builtins.dict",
            pytype_aliases=("builtins.list",),
            formatter="json",
            alternative_formatters=("yaml",),
        ),
        StorageClass(
            name="StructuredDataYaml",
            pytype="builtins.dict",
            pytype_aliases=("builtins.list",),
            formatter="yaml",
            alternative_formatters=("json",),
        ),
        StorageClass(
            name="NumpyArray",
            pytype="numpy.ndarray",
            formatter="npy",
            alternative_formatters=("fits",),
        ),
        StorageClass(
            name="ArrowTable",
            pytype="pyarrow.Table",
            formatter="parquet",
            parameters=frozenset({"columns", "filters"}),
        ),
        StorageClass(
            name="AstropyTable",
            pytype="astropy.table.Table",
            formatter="parquet",
            alternative_formatters=("fits",),
            parameters=frozenset({"columns"}),
        ),
        # Exposures and their components (python types in butler.exposure, imported only when used).
        StorageClass(
            name="Exposure",
            pytype="butler.exposure.Exposure",
            formatter="zarr",
            alternative_formatters=("exposure_fits",),
            components={
                "image": "NumpyArray",
                "mask": "NumpyArray",
                "variance": "NumpyArray",
                "wcs": "Wcs",
                "psf": "NumpyArray",
                "photo_calib": "Scalar",
                "metadata": "StructuredData",
            },
            parameters=frozenset({"bbox", "lazy"}),
        ),
        StorageClass(name="Wcs", pytype="astropy.wcs.WCS", formatter="wcs_fits"),
        StorageClass(
            name="Scalar",
            pytype="builtins.float",
            pytype_aliases=("builtins.int", "builtins.str", "builtins.bool"),
            formatter="scalar_json",
        ),
        StorageClass(
            name="SourceCatalog",
            pytype="astropy.table.Table",
            pytype_aliases=("pyarrow.Table",),
            formatter="parquet",
            parameters=frozenset({"columns", "filters"}),
        ),
        # A camera version (butler.instrument.Camera); put also takes a CameraDefinition or an Instrument.
        StorageClass(
            name="Camera",
            pytype="butler.instrument.Camera",
            pytype_aliases=("butler.instrument.CameraDefinition", "butler.instrument.Instrument"),
            formatter="camera_json",
            alternative_formatters=("camera_yaml",),
        ),
        StorageClass(
            name="Bytes",
            pytype="builtins.bytes",
            pytype_aliases=("builtins.bytearray", "builtins.memoryview"),
            formatter="bytes",
        ),
    ]
)
