"""Camera definitions: parse and validate a camera YAML into frozen value objects.

A camera file describes what the registry needs to know about an instrument (name, ID
bounds, filters, detectors, data ID aliases, file template overrides). Parsing is strict:
every error names the file, the key (``detectors[3].bbox``) and what was expected, because
a camera file is written by hand and a silent default would end up in every repository.

The parsed definition has one canonical JSON form (``to_dict``); its blake2b digest is
stored in the instrument's registry record, so two repositories (or a repository and a
worker) can check cheaply that they agree on the camera.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from ..errors import ButlerError

__all__ = [
    "ALIAS_TARGETS", "DETECTOR_PURPOSES", "CameraDefinition", "CameraDefinitionError", "DetectorDefinition",
    "FilterDefinition", "canonical_digest", "load_camera", "parse_camera",
]

ALIAS_TARGETS = frozenset({"detector", "physical_filter", "visit", "exposure", "band"})
"""Dimensions an instrument alias may stand for."""

DETECTOR_PURPOSES = ("SCIENCE", "WAVEFRONT", "GUIDER")

# Names of the universe's dimensions: an alias may not shadow one of them.
_DIMENSION_NAMES = frozenset(
    {"instrument", "band", "physical_filter", "detector", "raft", "day_obs", "exposure", "visit",
     "skymap", "tract", "patch", "flavor"}
)
# Names end up in paths and SQL string columns of 32 characters: no separators, no "..".
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLASS_RE = re.compile(r"^[A-Za-z_][\w.]*([.:][A-Za-z_]\w*)$")

_TOP_KEYS = ("name", "class_name", "visit_max", "exposure_max", "detector_max", "aliases",
             "file_templates", "filters", "detectors", "detector_grid")
_DETECTOR_KEYS = ("id", "full_name", "raft", "purpose", "bbox", "pixel_scale_arcsec", "offset_mm",
                  "rotation_deg")
_GRID_KEYS = ("nx", "ny", "pitch_mm", "bbox", "pixel_scale_arcsec", "first_id", "raft_size",
              "purpose", "rotation_deg")


class CameraDefinitionError(ValueError, ButlerError):
    """A camera definition (YAML file or mapping) is malformed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterDefinition:
    """A physical filter and the abstract band it belongs to."""

    name: str
    band: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "band": self.band}


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorDefinition:
    """Static geometry of one detector, as stored in its registry record."""

    id: int
    full_name: str
    raft: str | None = None
    purpose: str = "SCIENCE"
    bbox_width: int
    bbox_height: int
    pixel_scale_arcsec: float
    offset_x_mm: float
    offset_y_mm: float
    rotation_deg: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The camera-YAML form of this detector (round-trips through `parse_camera`)."""
        return {
            "id": self.id,
            "full_name": self.full_name,
            "raft": self.raft,
            "purpose": self.purpose,
            "bbox": [self.bbox_width, self.bbox_height],
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "offset_mm": [self.offset_x_mm, self.offset_y_mm],
            "rotation_deg": self.rotation_deg,
        }

    def to_record(self, instrument: str) -> dict[str, Any]:
        """The registry's ``detector`` record (field names match the universe's columns)."""
        return {"instrument": instrument, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraDefinition:
    """A validated camera: everything an `Instrument` is built from."""

    name: str
    class_name: str | None
    visit_max: int
    exposure_max: int
    detector_max: int
    aliases: Mapping[str, str]
    file_templates: Mapping[str, str]
    filters: tuple[FilterDefinition, ...]
    detectors: tuple[DetectorDefinition, ...]
    source: str = "<mapping>"
    """Where the definition came from, for messages only (not part of the digest)."""

    def to_dict(self, *, class_name: str | None = None) -> dict[str, Any]:
        """Canonical JSON-able form; ``class_name`` overrides the declared one."""
        return {
            "name": self.name,
            "class_name": class_name if class_name is not None else self.class_name,
            "visit_max": self.visit_max,
            "exposure_max": self.exposure_max,
            "detector_max": self.detector_max,
            "aliases": dict(sorted(self.aliases.items())),
            "file_templates": dict(sorted(self.file_templates.items())),
            "filters": [f.to_dict() for f in self.filters],
            "detectors": [d.to_dict() for d in self.detectors],
        }


def canonical_digest(data: Any) -> str:
    """Hex blake2b-128 of the canonical JSON of ``data`` (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).hexdigest()


def load_camera(path: str | os.PathLike[str]) -> CameraDefinition:
    """Read and validate a camera YAML file (cached while the file is unchanged)."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"camera definition file {str(path)!r} does not exist") from None
    return _load_camera_cached(str(resolved), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load_camera_cached(path: str, mtime_ns: int, size: int) -> CameraDefinition:
    import yaml  # deferred: parsing a camera is rare, importing the package is not

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=loader)
    except yaml.YAMLError as exc:
        raise CameraDefinitionError(f"{path}: not valid YAML: {exc}") from exc
    return parse_camera(data, source=path)


def parse_camera(data: Any, *, source: str = "<mapping>") -> CameraDefinition:
    """Validate a camera mapping (as read from YAML) into a `CameraDefinition`."""
    p = _Parser(source)
    top = p.mapping(data, "<top level>")
    if "inherits" in top:
        return parse_camera(_inherit(p, top, source), source=source)
    p.no_unknown_keys(top, _TOP_KEYS, "")
    name = p.name(p.required(top, "name", ""), "name")
    class_name = top.get("class_name")
    if class_name is not None and not (isinstance(class_name, str) and _CLASS_RE.match(class_name)):
        p.fail("class_name", "a dotted Python class path like 'package.module.Class'", class_name)
    bounds = {k: p.integer(p.required(top, k, ""), k, minimum=1) for k in ("visit_max", "exposure_max", "detector_max")}
    aliases = _parse_aliases(p, {} if top.get("aliases") is None else top["aliases"])
    templates = _parse_templates(p, {} if top.get("file_templates") is None else top["file_templates"])
    filters = _parse_filters(p, p.required(top, "filters", ""))
    detectors: list[tuple[str, DetectorDefinition]] = []
    if "detector_grid" in top:
        detectors.extend(_expand_grid(p, top["detector_grid"]))
    if "detectors" in top:
        items = p.sequence(top["detectors"], "detectors")
        detectors.extend((f"detectors[{i}]", _parse_detector(p, d, f"detectors[{i}]")) for i, d in enumerate(items))
    if not detectors:
        p.fail("detectors", "at least one detector in 'detectors' or 'detector_grid'", top.get("detectors"))
    _check_detectors(p, detectors, bounds["detector_max"])
    return CameraDefinition(
        name=name,
        class_name=class_name,
        aliases=MappingProxyType(aliases),
        file_templates=MappingProxyType(templates),
        filters=tuple(filters),
        detectors=tuple(sorted((d for _, d in detectors), key=lambda d: d.id)),
        source=source,
        **bounds,
    )


# -- inheritance (issue 7) -------------------------------------------------------------------------
_RESOLVING: list[str] = []  # parents being resolved, to detect cycles


def _inherit(p: _Parser, top: dict[Any, Any], source: str) -> dict[str, Any]:
    """Merge a child camera mapping with its parent's canonical definition.

    ``inherits`` names a registered instrument (``SimCam``), a class path, or a camera YAML
    (relative to the child file). Merge semantics: ``name`` is required in the child; scalar
    keys (``visit_max``...) are replaced; ``aliases`` and ``file_templates`` are merged key by
    key (child wins; a key set to null removes the parent's); ``filters`` are merged by name and
    ``detectors`` by id (a child entry replaces the parent's whole entry; new ones are added;
    ``remove_filters`` / ``remove_detectors`` list names / ids to drop); a child
    ``detector_grid`` adds detectors. ``class_name`` is not inherited (the child is a
    `VisitDetectorInstrument` unless it declares one). The result is an ordinary definition:
    its digest does not depend on how it was written.
    """
    parent_ref = top.pop("inherits")
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        p.fail("inherits", "the name, class path or camera YAML path of the parent camera", parent_ref)
    if "name" not in top:
        p.required(top, "name", "")
    parent = _parent_definition(parent_ref, source)
    merged: dict[str, Any] = {k: v for k, v in parent.items() if k != "class_name"}
    for key in ("visit_max", "exposure_max", "detector_max", "class_name", "name"):
        if key in top:
            merged[key] = top[key]
    for key in ("aliases", "file_templates"):
        if top.get(key) is not None:
            combined = dict(merged.get(key) or {})
            for k, v in p.mapping(top[key], key).items():
                if v is None:
                    combined.pop(k, None)
                else:
                    combined[k] = v
            merged[key] = combined
    removed_filters = set(p.sequence(top.get("remove_filters") or [], "remove_filters"))
    filters = {f["name"]: f for f in merged["filters"] if f["name"] not in removed_filters}
    for i, f in enumerate(p.sequence(top.get("filters") or [], "filters")):
        entry = p.mapping(f, f"filters[{i}]")
        filters[entry.get("name")] = entry
    merged["filters"] = list(filters.values())
    removed = set(p.sequence(top.get("remove_detectors") or [], "remove_detectors"))
    detectors = {d["id"]: d for d in merged["detectors"] if d["id"] not in removed and d["full_name"] not in removed}
    for i, d in enumerate(p.sequence(top.get("detectors") or [], "detectors")):
        entry = p.mapping(d, f"detectors[{i}]")
        detectors[entry.get("id")] = entry
    merged["detectors"] = list(detectors.values())
    if "detector_grid" in top:
        merged["detector_grid"] = top["detector_grid"]
    unknown = set(top) - set(_TOP_KEYS) - {"remove_filters", "remove_detectors"}
    if unknown:
        p.no_unknown_keys({k: None for k in unknown}, _TOP_KEYS + ("inherits", "remove_filters", "remove_detectors"), "")
    return merged


def _parent_definition(ref: str, source: str) -> dict[str, Any]:
    looks_like_path = ref.endswith((".yaml", ".yml")) or os.sep in ref or "/" in ref
    key = ref
    if looks_like_path:
        base = Path(source).parent if not source.startswith("<") else Path.cwd()
        path = (base / ref).expanduser().resolve()
        key = str(path)
    me = source if source.startswith("<") else str(Path(source).resolve())
    if key in _RESOLVING or key == me:
        chain = " -> ".join([*_RESOLVING, *([me] if me not in _RESOLVING else []), key])
        raise CameraDefinitionError(f"{source}: inherits: camera inheritance forms a cycle ({chain})")
    added_me = me not in _RESOLVING
    if added_me:
        _RESOLVING.append(me)
    _RESOLVING.append(key)
    try:
        if looks_like_path:
            if not path.exists():
                raise CameraDefinitionError(f"{source}: inherits: parent camera file {str(path)!r} does not exist")
            return load_camera(path).to_dict()
        from ._instrument import UnknownInstrumentError, load_instrument

        try:
            return load_instrument(ref).definition()
        except UnknownInstrumentError as err:
            raise CameraDefinitionError(f"{source}: inherits: parent camera {ref!r} does not exist ({err})") from None
    finally:
        _RESOLVING.pop()
        if added_me:
            _RESOLVING.pop()


def _parse_aliases(p: _Parser, value: Any) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for key, target in p.mapping(value, "aliases").items():
        where = f"aliases.{key}"
        if not isinstance(key, str) or not _KEY_RE.match(key):
            p.fail(where, "an alias that is a Python-identifier-like string", key)
        if key in _DIMENSION_NAMES:
            p.fail(where, "an alias that is not itself a dimension name", key)
        if target not in ALIAS_TARGETS:
            p.fail(where, f"one of the dimension names {sorted(ALIAS_TARGETS)}", target)
        aliases[key] = target
    return aliases


def _parse_templates(p: _Parser, value: Any) -> dict[str, str]:
    templates: dict[str, str] = {}
    for key, template in p.mapping(value, "file_templates").items():
        where = f"file_templates.{key}"
        if not isinstance(key, str) or not key:
            p.fail(where, "a dataset type name or 'default' as key", key)
        if not isinstance(template, str) or not template.strip():
            p.fail(where, "a non-empty template string", template)
        templates[key] = template
    return templates


def _parse_filters(p: _Parser, value: Any) -> list[FilterDefinition]:
    filters: list[FilterDefinition] = []
    seen: set[str] = set()
    items = p.sequence(value, "filters")
    if not items:
        p.fail("filters", "at least one filter", value)
    for i, item in enumerate(items):
        where = f"filters[{i}]"
        entry = p.mapping(item, where)
        p.no_unknown_keys(entry, ("name", "band"), where)
        name = p.name(p.required(entry, "name", where), f"{where}.name")
        band = p.name(p.required(entry, "band", where), f"{where}.band")
        if name in seen:
            p.fail(f"{where}.name", "a filter name not used twice", name)
        seen.add(name)
        filters.append(FilterDefinition(name=name, band=band))
    return filters


def _parse_detector(p: _Parser, value: Any, where: str) -> DetectorDefinition:
    entry = p.mapping(value, where)
    p.no_unknown_keys(entry, _DETECTOR_KEYS, where)
    raft = entry.get("raft")
    width, height = p.pair(p.required(entry, "bbox", where), f"{where}.bbox", integer=True)
    x, y = p.pair(p.required(entry, "offset_mm", where), f"{where}.offset_mm", integer=False)
    return DetectorDefinition(
        id=p.integer(p.required(entry, "id", where), f"{where}.id", minimum=0),
        full_name=p.name(p.required(entry, "full_name", where), f"{where}.full_name"),
        raft=None if raft is None else p.name(raft, f"{where}.raft"),
        purpose=p.purpose(entry.get("purpose", "SCIENCE"), f"{where}.purpose"),
        bbox_width=width,
        bbox_height=height,
        pixel_scale_arcsec=p.number(p.required(entry, "pixel_scale_arcsec", where),
                                    f"{where}.pixel_scale_arcsec", positive=True),
        offset_x_mm=x,
        offset_y_mm=y,
        rotation_deg=p.number(entry.get("rotation_deg", 0.0), f"{where}.rotation_deg"),
    )


def _expand_grid(p: _Parser, value: Any) -> list[tuple[str, DetectorDefinition]]:
    """Expand the ``detector_grid`` shorthand: ids row-major from ``first_id``, centred offsets."""
    where = "detector_grid"
    grid = p.mapping(value, where)
    p.no_unknown_keys(grid, _GRID_KEYS, where)
    nx = p.integer(p.required(grid, "nx", where), f"{where}.nx", minimum=1)
    ny = p.integer(p.required(grid, "ny", where), f"{where}.ny", minimum=1)
    pitch = grid.get("pitch_mm")
    if isinstance(pitch, (list, tuple)):
        pitch_x, pitch_y = p.pair(pitch, f"{where}.pitch_mm", integer=False)
    else:
        pitch_x = pitch_y = p.number(p.required(grid, "pitch_mm", where), f"{where}.pitch_mm", positive=True)
    width, height = p.pair(p.required(grid, "bbox", where), f"{where}.bbox", integer=True)
    scale = p.number(p.required(grid, "pixel_scale_arcsec", where), f"{where}.pixel_scale_arcsec", positive=True)
    first_id = p.integer(grid.get("first_id", 0), f"{where}.first_id", minimum=0)
    purpose = p.purpose(grid.get("purpose", "SCIENCE"), f"{where}.purpose")
    rotation = p.number(grid.get("rotation_deg", 0.0), f"{where}.rotation_deg")
    raft_size = grid.get("raft_size")
    if raft_size is not None:
        raft_size = p.integer(raft_size, f"{where}.raft_size", minimum=1)
        if nx % raft_size or ny % raft_size:
            p.fail(f"{where}.raft_size", f"a divisor of nx={nx} and ny={ny}", raft_size)
    width_digits = len(str(max(nx, ny, raft_size or 1) - 1))
    out = []
    for row in range(ny):
        for col in range(nx):
            if raft_size is None:
                raft, full_name = None, f"S{row:0{width_digits}d}{col:0{width_digits}d}"
            else:
                raft = f"R{row // raft_size:0{width_digits}d}{col // raft_size:0{width_digits}d}"
                full_name = f"{raft}_S{row % raft_size:0{width_digits}d}{col % raft_size:0{width_digits}d}"
            detector = DetectorDefinition(
                id=first_id + row * nx + col,
                full_name=p.name(full_name, f"{where} (generated name)"),
                raft=raft,
                purpose=purpose,
                bbox_width=width,
                bbox_height=height,
                pixel_scale_arcsec=scale,
                offset_x_mm=_clean_float((col - (nx - 1) / 2) * pitch_x),
                offset_y_mm=_clean_float((row - (ny - 1) / 2) * pitch_y),
                rotation_deg=rotation,
            )
            out.append((f"{where} ({full_name})", detector))
    return out


def _check_detectors(p: _Parser, detectors: list[tuple[str, DetectorDefinition]], detector_max: int) -> None:
    ids: dict[int, str] = {}
    names: dict[str, str] = {}
    for where, d in detectors:
        if d.id >= detector_max:
            p.fail(f"{where}.id", f"an id below detector_max={detector_max}", d.id)
        if d.id in ids:
            p.fail(f"{where}.id", f"an id not already used by {ids[d.id]}", d.id)
        if d.full_name in names:
            p.fail(f"{where}.full_name", f"a name not already used by {names[d.full_name]}", d.full_name)
        ids[d.id] = where
        names[d.full_name] = where


def _clean_float(value: float) -> float:
    """Round away float noise and negative zero so digests do not depend on arithmetic."""
    return round(float(value), 9) + 0.0


class _Parser:
    """Small typed accessors that raise `CameraDefinitionError` naming the file and key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, expected: str, got: Any) -> NoReturn:
        text = repr(got)
        if len(text) > 80:
            text = text[:77] + "..."
        raise CameraDefinitionError(f"{self.source}: {key}: expected {expected}, got {text}")

    def required(self, mapping: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in mapping:
            path = f"{where}.{key}" if where else key
            raise CameraDefinitionError(f"{self.source}: {path}: required key is missing")
        return mapping[key]

    def no_unknown_keys(self, mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                path = f"{where}.{key}" if where else str(key)
                raise CameraDefinitionError(
                    f"{self.source}: {path}: unknown key; expected one of {list(allowed)}"
                )

    def mapping(self, value: Any, key: str) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, "a mapping", value)
        return dict(value)

    def sequence(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            self.fail(key, "a list", value)
        return list(value)

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
            self.fail(key, "a name of 1-32 letters, digits, '_', '-', '.' or '+' (no '..')", value)
        return value

    def integer(self, value: Any, key: str, *, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "an integer", value)
        if minimum is not None and value < minimum:
            self.fail(key, f"an integer >= {minimum}", value)
        return int(value)

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, "a finite number", value)
        if positive and value <= 0:
            self.fail(key, "a positive number", value)
        return float(value) + 0.0

    def pair(self, value: Any, key: str, *, integer: bool) -> tuple[Any, Any]:
        kind = "positive integers" if integer else "numbers"
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.fail(key, f"a list of two {kind}", value)
        first, second = value
        if integer:
            return (self.integer(first, key, minimum=1), self.integer(second, key, minimum=1))
        return (self.number(first, key), self.number(second, key))

    def purpose(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or value.upper() not in DETECTOR_PURPOSES:
            self.fail(key, f"one of {list(DETECTOR_PURPOSES)}", value)
        return value.upper()
