"""The butler remote protocol: what a client and `butler serve` exchange, and its JSON encoding.

One protocol for every transport (HTTP, ssh stdio): a request is a method, a path and a JSON body;
an answer is a status, headers and a body (JSON, or a file's bytes). Calls are
``POST /api/v1/<call>`` with the call's arguments as a JSON object; files are
``GET /api/v1/datasets/<id>/file?component=...[&member=...]`` (by dataset id: only files the
registry records can be read, so no path can reach outside the repository), with byte ranges.

Values are encoded compactly and decoded with the trusted constructors (refs of a 500-row query
are one list of rows plus one entry per dataset type). Errors travel as the name of a
`butler.errors` class and its message and are raised again on the client as that class, so a
remote `DatasetNotFoundError` reads exactly as a local one.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from .._dataset_ref import DatasetRef
from .._dataset_type import DatasetType
from ..dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
from ..registry._collections import CollectionRecord, CollectionType
from ..registry._datasets import FileRecord, FoundDataset
from ..registry._schema import fast_uuid

__all__ = [
    "API_PREFIX",
    "MAX_INLINE_BYTES",
    "PAYLOAD_HEADER",
    "PROTOCOL_VERSION",
    "REPORT_HEADER",
    "Answer",
    "Request",
    "component_problem",
    "decode_collection",
    "decode_data_id",
    "decode_dataset_type",
    "decode_error",
    "decode_found",
    "decode_provenance",
    "decode_records",
    "decode_refs",
    "encode_collection",
    "encode_data_id",
    "encode_dataset_type",
    "encode_error",
    "encode_found",
    "encode_provenance",
    "encode_records",
    "encode_refs",
    "member_problem",
]

PROTOCOL_VERSION = 1
"""Bumped when a call changes incompatibly; a client refuses a server of another version."""

API_PREFIX = f"/api/v{PROTOCOL_VERSION}"

PAYLOAD_HEADER = "X-Butler-Json-Length"
"""Set on an answer whose JSON (this many bytes) is followed by raw bytes: the small files of a
`find_dataset` asked with ``inline``, so that a small ``get`` takes one round trip."""

REPORT_HEADER = "X-Butler-Export-Report"
"""On the answer of an ``export`` call (a zip bundle): what the server's export wrote, as JSON."""

MAX_INLINE_BYTES = 1 << 20
"""The most a client may ask to have inlined per file."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request, whatever carries it."""

    method: str
    path: str
    """Below the server's root, starting with ``/`` (no query string)."""
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: ``body`` bytes, or the local file ``file`` (the adapter honours a ``Range``)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: str | None = None
    remove_after: str | None = None
    """A directory (holding ``file``, made for this answer) to remove once the answer is sent."""


# -- paths ------------------------------------------------------------------------------------------
_COMPONENT = re.compile(r"[A-Za-z0-9_]{0,64}")


def member_problem(member: str) -> str | None:
    """Why ``member`` is not a safe relative path inside a directory dataset (None if it is)."""
    if not member or len(member) > 1024:
        return "is empty or too long"
    if "\\" in member or "\x00" in member:
        return "contains a backslash or NUL"
    if member.startswith("/") or os.path.isabs(member):
        return "is absolute"
    if any(part in ("", ".", "..") for part in member.split("/")):
        return "has an empty, '.' or '..' part"
    return None


def component_problem(component: object) -> str | None:
    """Why ``component`` (of a file record from a server) is not a component name ("" or a plain name)."""
    if not isinstance(component, str) or _COMPONENT.fullmatch(component) is None:
        return f"{component!r} is not a component name (letters, digits and '_')"
    return None


# -- headers ------------------------------------------------------------------------------------
def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in any letter case."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


# -- errors ------------------------------------------------------------------------------------
_STATUS = {
    "DatasetNotFoundError": 404, "DatasetTypeError": 404, "CollectionError": 404, "RepositoryNotFoundError": 404,
    "DataIdError": 400, "ExpressionError": 400, "InvalidNameError": 400, "StorageClassError": 400,
    "TemplateError": 400, "ReadOnlyError": 403, "RunOwnershipError": 403, "RemoteAuthError": 401,
    "ConflictError": 409, "ChecksumError": 500,
}


def encode_error(err: BaseException) -> tuple[int, dict[str, str]]:
    """The status and JSON body of a butler error (other exceptions are the server's fault: 500)."""
    name = type(err).__name__ if isinstance(err, errors.ButlerError) else "RemoteError"
    message = str(err) if isinstance(err, errors.ButlerError) else f"the server failed: {type(err).__name__}: {err}"
    return _STATUS.get(name, 500 if name == "RemoteError" else 400), {"error": name, "message": message}


def decode_error(status: int, body: Any, where: str) -> errors.ButlerError:
    """The exception a server's error answer stands for, raised as the same `butler.errors` class."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        cls = getattr(errors, body["error"], None)
        if isinstance(cls, type) and issubclass(cls, errors.ButlerError):
            return cls(body["message"])
        return errors.RemoteError(f"{where}: {body['error']}: {body['message']}")
    if status == 401:
        return errors.RemoteAuthError(f"{where} refused the request (HTTP 401): give the server's token with "
                                      "token=... or $BUTLER_TOKEN")
    return errors.RemoteProtocolError(f"{where} answered HTTP {status} without a butler error: is it a butler "
                                      "server (`butler serve`) or a repository directory?")


# -- values --------------------------------------------------------------------------------------
def encode_dataset_type(dt: DatasetType) -> list[Any]:
    return [dt.name, list(dt.dimensions), dt.storage_class, dt.is_calibration]


def decode_dataset_type(data: Sequence[Any]) -> DatasetType:
    name, dims, storage_class, is_calibration = data
    return DatasetType(name, dims, storage_class, is_calibration=bool(is_calibration))


def encode_collection(record: CollectionRecord) -> list[Any]:
    return [record.id, record.name, record.type.name, record.owner, record.doc]


def decode_collection(data: Sequence[Any]) -> CollectionRecord:
    id_, name, type_, owner, doc = data
    return CollectionRecord(int(id_), name, CollectionType[type_], owner, doc)


def encode_data_id(data_id: DataCoordinate) -> list[Any]:
    """Required values, then the implied ones as a mapping (or None)."""
    return [list(data_id.values), dict(data_id.implied_values) if data_id.implied_values else None]


def decode_data_id(universe: DimensionUniverse, dimensions: Iterable[str], data: Sequence[Any]) -> DataCoordinate:
    values, implied = data
    return DataCoordinate.from_values(universe.group(dimensions), tuple(values), implied or None)


def encode_refs(refs: Iterable[DatasetRef]) -> dict[str, Any]:
    """``{"types": {name: type}, "refs": [[type, run, id, values, implied, component], ...]}``."""
    types: dict[str, list[Any]] = {}
    rows = []
    for ref in refs:
        dt = ref.dataset_type
        if dt.name not in types:
            types[dt.name] = encode_dataset_type(dt)
        data_id = ref.data_id
        rows.append([dt.name, ref.run, ref.id.hex, list(data_id.values),
                     dict(data_id.implied_values) if data_id.implied_values else None, ref.component])
    return {"types": types, "refs": rows}


def decode_refs(universe: DimensionUniverse, data: Mapping[str, Any]) -> list[DatasetRef]:
    """`encode_refs` undone with the trusted constructors (a 500-ref query decodes in ~0.5 ms)."""
    types = {name: decode_dataset_type(spec) for name, spec in data["types"].items()}
    groups = {name: dt.group(universe) for name, dt in types.items()}
    from_values = DataCoordinate.from_values
    make = DatasetRef.unchecked
    out: list[DatasetRef] = []
    append = out.append
    for name, run, id_hex, values, implied, component in data["refs"]:
        ref = make(types[name], from_values(groups[name], tuple(values), implied or None), run, _uuid(id_hex))
        append(ref.make_component(component) if component else ref)
    return out


def _uuid(hex_value: str) -> uuid.UUID:
    """A dataset id from its 32 hex digits, checked for form only (the fast constructor of the registry)."""
    if len(hex_value) != 32:
        raise ValueError(f"{hex_value!r} is not a dataset id (32 hex digits)")
    return fast_uuid(hex_value)


def encode_files(files: Iterable[FileRecord]) -> list[list[Any]]:
    return [list(f) for f in files]


def decode_files(data: Iterable[Sequence[Any]]) -> tuple[FileRecord, ...]:
    return tuple(FileRecord(*row) for row in data)


def encode_found(found: FoundDataset | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {"ref": encode_refs([found.ref]), "files": encode_files(found.files)}


def decode_found(universe: DimensionUniverse, data: Mapping[str, Any] | None) -> FoundDataset | None:
    if data is None:
        return None
    return FoundDataset(decode_refs(universe, data["ref"])[0], decode_files(data["files"]))


def encode_records(element: str, records: Iterable[DimensionRecord], universe: DimensionUniverse) -> dict[str, Any]:
    """Rows of one element's records in the order of its fields (regions and bytes in base64)."""
    from ..registry._dimension_records import encode_region

    types = universe[element].field_types
    names = list(types)
    special = [(i, types[n]) for i, n in enumerate(names) if types[n] in ("region", "bytes", "time")]
    rows = []
    for record in records:
        values = record.to_dict()
        row = [values.get(n) for n in names]
        for i, kind in special:
            value = row[i]
            if value is None:
                continue
            if kind == "time":
                row[i] = value.isoformat()
            else:
                raw = encode_region(value) if kind == "region" else bytes(value)
                row[i] = base64.b64encode(raw or b"").decode()
        rows.append(row)
    return {"element": element, "fields": names, "rows": rows}


def decode_records(universe: DimensionUniverse, data: Mapping[str, Any]) -> list[DimensionRecord]:
    from ..registry._dimension_records import decode_region

    element = universe[data["element"]]
    names = list(data["fields"])
    types = element.field_types
    special = [(i, types.get(n)) for i, n in enumerate(names) if types.get(n) in ("region", "bytes", "time")]
    out = []
    for row in data["rows"]:
        row = list(row)
        for i, kind in special:
            if row[i] is None:
                continue
            if kind == "time":
                row[i] = datetime.datetime.fromisoformat(row[i])
            else:
                raw = base64.b64decode(row[i])
                row[i] = decode_region(raw) if kind == "region" else raw
        out.append(DimensionRecord(element, dict(zip(names, row))))
    return out


_PROVENANCE_IDS = ("quantum_id",)
_PROVENANCE_ID_LISTS = ("inputs", "outputs")


def encode_provenance(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A quantum's provenance record with its ids as hex strings."""
    if record is None:
        return None
    out = dict(record)
    for key in _PROVENANCE_IDS:
        if isinstance(out.get(key), uuid.UUID):
            out[key] = out[key].hex
    for key in _PROVENANCE_ID_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [i.hex if isinstance(i, uuid.UUID) else i for i in out[key]]
    return out


def decode_provenance(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`encode_provenance` undone: ids are `uuid.UUID` again, as the local record has them."""
    if data is None:
        return None
    out = dict(data)
    for key in _PROVENANCE_IDS:
        if isinstance(out.get(key), str):
            out[key] = uuid.UUID(hex=out[key])
    for key in _PROVENANCE_ID_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [uuid.UUID(hex=i) if isinstance(i, str) else i for i in out[key]]
    return out
