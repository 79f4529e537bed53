"""Formatter interface, registry and selection.

A formatter turns an in-memory dataset into bytes and back. Implementations are
small: two hooks, `Formatter.to_bytes` and `Formatter._from_bytes` (plus
`Formatter._read` when reading a local file can do better than reading all of
its bytes, e.g. parquet column selection).

Verified reads: the datastore reads a file's bytes once, checks their size and
checksum against the file record, and hands them to `Formatter.read_verified`,
which decodes them (`_read_checked`, by default `_from_bytes`; formatters
override it only to name the file in their errors, or, for directory formats,
to check what they read against a verified manifest). A formatter that must
read from the file itself for some parameters (lazy reads) says so in
`reads_from_file`; the datastore then verifies the file in a streaming pass
first. The base class does the shared work:
it checks ``component`` and ``parameters`` before any I/O, so every formatter
rejects unknown names the same way, and it writes atomically with checksums.

Formatters are registered by name as dotted paths and imported on first use, so
``import butler.datastore`` never pulls in numpy, pyarrow or astropy. A formatter
instance may be bound to a storage class (see `formatter_for`): it then knows
which python type to return (parquet serves both ``ArrowTable`` and
``AstropyTable``) and accepts only the parameters both it and the storage class
support.
"""

from __future__ import annotations

import importlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from butler.errors import ConflictError, StorageClassError

from ._file_io import write_atomic

if TYPE_CHECKING:
    from ._storage_class import StorageClass

__all__ = [
    "Formatter",
    "formatter_for",
    "get_formatter",
    "known_formatters",
    "register_formatter",
]

_NO_PARAMETERS: Mapping[str, Any] = {}


class Formatter(ABC):
    """Serialises datasets of one or more storage classes to one file format."""

    name: ClassVar[str]
    """Registry name, e.g. ``"json"``."""
    extension: ClassVar[str]
    """File name extension including the dot, e.g. ``".json"``."""
    supported_parameters: ClassVar[frozenset[str]] = frozenset()
    """Read parameters this formatter implements."""
    supported_components: ClassVar[frozenset[str]] = frozenset()
    """Components this formatter can read on their own."""

    __slots__ = ("storage_class",)

    def __init__(self, storage_class: StorageClass | None = None) -> None:
        self.storage_class = storage_class
        """Storage class this instance reads and writes, or `None` if unbound."""

    def __repr__(self) -> str:
        bound = f"storage_class={self.storage_class.name!r}" if self.storage_class else "unbound"
        return f"{type(self).__name__}({bound})"

    # -- hooks ----------------------------------------------------------------------------

    @abstractmethod
    def to_bytes(self, obj: Any) -> bytes:
        """Serialise ``obj``; raise `StorageClassError` for objects of the wrong type."""

    @abstractmethod
    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        """Deserialise ``data``; arguments are already validated."""

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        """Read a local file; arguments are already validated. Default: read all bytes."""
        with open(path, "rb") as stream:
            data = stream.read()
        return self._from_bytes(data, component, parameters)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        """Decode what the datastore verified (the bytes of ``path``); arguments are already validated."""
        return self._from_bytes(verified, component, parameters)

    def reads_from_file(self, parameters: Mapping[str, Any] | None) -> bool:
        """Whether a read with ``parameters`` needs the file itself, not its bytes (default: never)."""
        return False

    # -- public API -----------------------------------------------------------------------

    @property
    def allowed_parameters(self) -> frozenset[str]:
        """Parameters accepted by this instance (narrowed by a bound storage class)."""
        if self.storage_class is None:
            return self.supported_parameters
        return self.supported_parameters & self.storage_class.parameters

    def check_request(
        self, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        """Validate ``component`` and ``parameters`` before any I/O; return the parameters."""
        if component is not None and component not in self.supported_components:
            raise StorageClassError(
                f"formatter {self.name!r}{self._for()} has no component {component!r}; "
                f"components: {sorted(self.supported_components) or 'none'}"
            )
        if not parameters:
            return _NO_PARAMETERS
        allowed = self.allowed_parameters
        unknown = sorted(set(parameters) - allowed)
        if unknown:
            raise StorageClassError(
                f"formatter {self.name!r}{self._for()} does not support parameter(s) "
                f"{unknown}; supported: {sorted(allowed) or 'none'}"
            )
        return parameters

    def read(
        self,
        path: str | os.PathLike[str],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read the dataset (or one component of it) from a local file."""
        checked = self.check_request(component, parameters)
        return self._read(os.fspath(path), component, checked)

    def from_bytes(
        self,
        data: bytes,
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read the dataset from bytes already in memory (remote or cached files)."""
        checked = self.check_request(component, parameters)
        return self._from_bytes(data, component, checked)

    def read_verified(
        self,
        path: str | os.PathLike[str],
        verified: Any,
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read the dataset from ``verified``, what the datastore checked against the file record of ``path``.

        For single files ``verified`` is the file's bytes (size and checksum already checked);
        for directory formats it is the store's verified manifest. ``path`` names the file in
        errors.
        """
        checked = self.check_request(component, parameters)
        return self._read_checked(os.fspath(path), verified, component, checked)

    def write(
        self, obj: Any, path: str | os.PathLike[str], *, overwrite: bool = False
    ) -> tuple[int, str]:
        """Serialise and write atomically; return ``(size, checksum)``."""
        return write_atomic(path, self.to_bytes(obj), overwrite=overwrite)

    def _for(self) -> str:
        return f" (storage class {self.storage_class.name!r})" if self.storage_class else ""

    def _cannot_serialise(self, err: Exception) -> StorageClassError:
        """Error for objects of the right type holding values the format cannot hold."""
        return StorageClassError(f"formatter {self.name!r}{self._for()} cannot serialise: {err}")

    def _wrong_type(self, obj: Any, expected: str) -> StorageClassError:
        """Error for objects this formatter cannot serialise."""
        return StorageClassError(
            f"formatter {self.name!r}{self._for()} expects {expected}, got {type(obj).__module__}."
            f"{type(obj).__qualname__}"
        )


# -- registry -----------------------------------------------------------------------------

_BUILTIN = "butler.datastore._formatters_basic"
_TABLES = "butler.datastore._formatters_tables"
_paths: dict[str, str] = {
    "json": f"{_BUILTIN}.JsonFormatter",
    "yaml": f"{_BUILTIN}.YamlFormatter",
    "bytes": f"{_BUILTIN}.BytesFormatter",
    "npy": f"{_BUILTIN}.NpyFormatter",
    "parquet": f"{_TABLES}.ParquetFormatter",
    "fits": f"{_TABLES}.FitsFormatter",
    # Exposures (zarr directory store or multi-extension FITS) and their standalone components.
    "zarr": "butler.datastore._formatters_zarr.ZarrExposureFormatter",
    "exposure_fits": "butler.datastore._formatters_exposure_fits.ExposureFitsFormatter",
    "wcs_fits": "butler.datastore._formatters_components.WcsFitsFormatter",
    "scalar_json": "butler.datastore._formatters_components.ScalarJsonFormatter",
    # Camera versions (the ``camera`` calibration dataset).
    "camera_json": "butler.datastore._formatters_camera.CameraJsonFormatter",
    "camera_yaml": "butler.datastore._formatters_camera.CameraYamlFormatter",
}
_classes: dict[str, type[Formatter]] = {}
_bound: dict[tuple[str, StorageClass | None], Formatter] = {}
_lock = threading.Lock()


def register_formatter(
    formatter: type[Formatter] | str, *, name: str | None = None, clobber: bool = False
) -> None:
    """Register a formatter class, or its dotted path (imported on first use).

    A dotted path needs ``name``. Replacing a different registration raises
    `ConflictError` unless ``clobber`` is true.
    """
    if isinstance(formatter, str):
        if name is None:
            raise ValueError("registering a formatter by dotted path needs name=")
        path = formatter
    else:
        name = name or formatter.name
        path = f"{formatter.__module__}.{formatter.__qualname__}"
    with _lock:
        existing = _paths.get(name)
        if existing is not None and existing != path and not clobber:
            raise ConflictError(
                f"formatter {name!r} is already registered as {existing}; "
                f"pass clobber=True to replace it with {path}"
            )
        _paths[name] = path
        _classes.pop(name, None)
        if not isinstance(formatter, str):
            _classes[name] = formatter
        for key in [k for k in _bound if k[0] == name]:
            del _bound[key]


def known_formatters() -> tuple[str, ...]:
    """Names of all registered formatters, sorted."""
    return tuple(sorted(_paths))


def _formatter_class(name: str) -> type[Formatter]:
    try:
        return _classes[name]
    except KeyError:
        pass
    try:
        path = _paths[name]
    except KeyError:
        raise StorageClassError(
            f"unknown formatter {name!r}; known: {sorted(_paths)}"
        ) from None
    module_name, _, attr = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Formatter)):
        raise TypeError(f"formatter {name!r} path {path} is not a Formatter subclass")
    _classes[name] = cls
    return cls


def _instance(name: str, storage_class: StorageClass | None) -> Formatter:
    key = (name, storage_class)
    try:
        return _bound[key]
    except KeyError:
        pass
    formatter = _formatter_class(name)(storage_class)
    _bound[key] = formatter
    return formatter


def get_formatter(name: str) -> Formatter:
    """An unbound formatter by name; unknown names list the known ones."""
    return _instance(name, None)


def formatter_for(storage_class: StorageClass, override: str | None = None) -> Formatter:
    """The formatter for ``storage_class``: its default, or ``override`` if it allows it."""
    if override is None:
        name = storage_class.formatter
    elif override in storage_class.allowed_formatters:
        name = override
    else:
        raise StorageClassError(
            f"storage class {storage_class.name!r} cannot use formatter {override!r}; "
            f"allowed: {list(storage_class.allowed_formatters)}"
        )
    return _instance(name, storage_class)
