"""The bundle format: names, versions, table schemas and the path rule (see docs/transfers.md).

A bundle is a directory or a zip file (ZIP_STORED, zip64) holding ``manifest/`` and the dataset
files at their repository-relative paths. ``manifest/bundle.json`` is small (format version,
universe, dataset types, collections, instruments, counts); everything with one row per dataset
or per record is a parquet table beside it, written in batches, so neither export nor reading
holds a Python object per dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import BundlePathError

if TYPE_CHECKING:
    import pyarrow as pa

    from ..dimensions import DimensionElement, DimensionGroup

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_MINOR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BundleCollection",
    "BundleDatasetType",
    "check_bundle_path",
    "dataset_schema",
    "record_schema",
]

FORMAT_NAME = "butler-bundle"
FORMAT_VERSION = 1
"""Major version: a reader refuses a bundle with a larger one (its meaning may have changed)."""
FORMAT_MINOR = 0
"""Minor version: additions a reader of the same major version may ignore."""

MANIFEST_DIR = "manifest"
BUNDLE_JSON = "manifest/bundle.json"
DIRECT_DIR = "direct"
"""Where files ingested with transfer="direct" (absolute paths) go: ``direct/<dataset id>/<name>``."""

TABLES = {
    "tags": "manifest/tags.parquet",
    "calibs": "manifest/calibs.parquet",
    "quanta": "manifest/quanta.parquet",
    "quantum_outputs": "manifest/quantum_outputs.parquet",
}

_ARROW_TYPES = {"int": "int64", "float": "float64", "str": "string", "time": "int64", "bool": "bool_",
                "bytes": "binary", "region": "binary"}

FILE_COLUMNS = ("component", "path", "formatter", "storage_class", "checksum", "file_size", "direct_path")
"""The per-file columns of a dataset table, after dataset_id, run and the data ID values."""


def arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return getattr(pa, _ARROW_TYPES[kind])()


def _schema(columns: list[tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in columns])


def dataset_schema(group: DimensionGroup) -> pa.Schema:
    """One row per file (a dataset without files: one row with a null path)."""
    universe = group.universe
    dims = [(d, universe[d].key.type) for d in group.required]  # type: ignore[union-attr]
    return _schema([("dataset_id", "str"), ("run", "str"), *dims, ("component", "str"), ("path", "str"),
                    ("formatter", "str"), ("storage_class", "str"), ("checksum", "str"), ("file_size", "int"),
                    ("direct_path", "str")])


def record_schema(element: DimensionElement) -> pa.Schema:
    """The registry's own column values (times in ns, regions in sphgeom's encoding)."""
    return _schema(list(element.field_types.items()))


def fixed_schema(name: str) -> pa.Schema:
    columns = {
        "tags": [("collection", "str"), ("dataset_id", "str")],
        "calibs": [("collection", "str"), ("dataset_type", "str"), ("dataset_id", "str"), ("begin_ns", "int"),
                   ("end_ns", "int")],
        "quanta": [("quantum_id", "str"), ("run", "str"), ("task", "str"), ("data_id", "str"),
                   ("config_digest", "str"), ("host", "str"), ("worker", "str"), ("start_ns", "int"),
                   ("end_ns", "int"), ("status", "str"), ("error", "str"), ("inputs", "str")],
        "quantum_outputs": [("dataset_id", "str"), ("quantum_id", "str")],
    }[name]
    return _schema(columns)


def dataset_table(name: str) -> str:
    return f"manifest/datasets/{name}.parquet"


def record_table(element: str) -> str:
    return f"manifest/records/{element}.parquet"


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleCollection:
    """A collection as exported: its type name, owner and doc; a CHAINED one's children in order."""

    name: str
    type: str
    owner: str | None = None
    doc: str | None = None
    children: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "owner": self.owner, "doc": self.doc}
        if self.children:
            out["children"] = list(self.children)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> BundleCollection:
        return cls(name=data["name"], type=data["type"], owner=data.get("owner"), doc=data.get("doc"),
                   children=tuple(data.get("children", ())))


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleDatasetType:
    """A dataset type as exported, with how many datasets and files of it the bundle holds."""

    name: str
    dimensions: tuple[str, ...]
    storage_class: str
    is_calibration: bool = False
    datasets: int = 0
    files: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dimensions": list(self.dimensions), "storage_class": self.storage_class,
                "is_calibration": self.is_calibration, "datasets": self.datasets, "files": self.files,
                "bytes": self.bytes, "table": dataset_table(self.name)}

    @classmethod
    def from_dict(cls, data: Any) -> BundleDatasetType:
        return cls(name=data["name"], dimensions=tuple(data["dimensions"]), storage_class=data["storage_class"],
                   is_calibration=bool(data.get("is_calibration", False)), datasets=int(data.get("datasets", 0)),
                   files=int(data.get("files", 0)), bytes=int(data.get("bytes", 0)))


_DRIVE = re.compile(r"[A-Za-z]:")


def path_problem(path: object) -> str | None:
    """Why ``path`` cannot be a path inside a bundle, or None if it can."""
    if not isinstance(path, str) or not path:
        return "is empty or not a string"
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/") or _DRIVE.match(path):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "contains '..'"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' part"
    return None


def check_bundle_path(path: object, what: str) -> str:
    """``path`` if it is a safe relative path inside a bundle, else a `BundlePathError` naming ``what``."""
    problem = path_problem(path)
    if problem is not None:
        raise BundlePathError(
            f"{what} has the path {path!r}, which {problem}: paths in a bundle are relative and '/'-separated, "
            "without '..', '.', empty parts or backslashes, so that no file can land outside the bundle or the "
            "repository it is imported into"
        )
    return path  # type: ignore[return-value]
