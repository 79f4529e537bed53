"""File templates: how a dataset's path is made from its run, type and data ID.

Syntax: ``{field}``, ``{field:format}`` (Python format spec, e.g. ``{detector:03d}``) and
``{field?}`` for an optional field that is dropped, with the ``/`` or ``_`` after it, when the
dataset type's data IDs do not have it. Fields are ``run``, ``dataset_type``, ``component``,
``id`` and any dimension name (implied ones such as ``band`` or ``day_obs`` included).
Templates are validated when a dataset type is registered: one that could give two datasets
the same path is an error then, not at ``put``.

Every *formatted* path is checked too, before any byte is written (a format spec such as
``{instrument:.>9}`` or a value with a separator can make ``..`` or extra components that the
template text does not show): it must be relative, with no empty component, no component
starting with ``.``, no ``..``, no backslash or NUL, and exactly the ``/`` of the template text
plus those of the run name. The check costs a few string operations per path (ingest formats
tens of thousands of paths a second).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError

__all__ = ["DEFAULT_TEMPLATE", "FileTemplate", "TemplateSet"]

DEFAULT_TEMPLATE = "{run}/{dataset_type}/{band?}/{day_obs?}/{dataset_type}_{dims}"

_FIELD = re.compile(r"\{(\w+)(?::([^}?]*))?(\?)?\}")
_SPECIAL = {"run", "dataset_type", "component", "id", "dims"}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    spec: str
    optional: bool
    start: int
    end: int


class FileTemplate:
    """One parsed template."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"a file template must be a non-empty string, got {text!r}")
        if text.startswith("/") or ".." in text:
            raise TemplateError(f"file template {text!r} must be relative and must not contain '..'")
        self.text = text
        self.fields = tuple(_Field(m[1], m[2] or "", bool(m[3]), m.start(), m.end()) for m in _FIELD.finditer(text))
        leftover = _FIELD.sub("", text)
        if "{" in leftover or "}" in leftover:
            raise TemplateError(f"file template {text!r} has an unbalanced or malformed '{{...}}' field")
        self.names = frozenset(f.name for f in self.fields)
        # format() compiles the template once per (required dimensions, which fields are None)
        # into a str.format pattern: ~3x faster than walking the fields for every dataset.
        self._value_names = tuple(dict.fromkeys(f.name for f in self.fields if f.name != "dims"))
        self._compiled: dict[tuple[Any, ...], tuple[str, int] | None] = {}
        self._runs = sum(f.name == "run" for f in self.fields)

    def validate(self, *, dataset_type: str, required: tuple[str, ...], available: frozenset[str],
                 per_type: bool, per_instrument: bool) -> None:
        """Check that paths are unique: every required dimension (and run, type) appears."""
        must = set(required)
        if "dims" in self.names:
            must = set()
        if per_instrument:
            must.discard("instrument")
        must.add("run")
        if not per_type:
            must.add("dataset_type")
        missing = sorted(n for n in must if n not in self.names and not (n == "dataset_type" and "id" in self.names))
        if "id" in self.names:
            missing = [m for m in missing if m == "run"]
        if missing:
            raise TemplateError(
                f"file template {self.text!r} for dataset type {dataset_type!r} cannot make unique paths: "
                f"it lacks {', '.join('{' + m + '}' for m in missing)} (data IDs have {list(required)})"
            )
        unknown = [f.name for f in self.fields
                   if f.name not in _SPECIAL and f.name not in available and not f.optional]
        if unknown:
            raise TemplateError(
                f"file template {self.text!r} for dataset type {dataset_type!r} uses {unknown}, which its data IDs "
                f"do not have (available: {sorted(available | _SPECIAL)}); mark optional fields as {{name?}}"
            )

    def format(self, values: Mapping[str, Any], required: tuple[str, ...]) -> str:
        """The relative path (without extension) for one dataset.

        Raises `TemplateError` (naming the value) when the formatted path would not be a plain
        relative path inside the repository.
        """
        get = values.get
        key: tuple[Any, ...] = (required, *[get(n) is None for n in self._value_names])  # (required, *missing)
        compiled = self._compiled.get(key)
        if compiled is None and key not in self._compiled:
            compiled = self._compiled[key] = self._compile(key[1:], required)
        if compiled is None:
            return self._format_fields(values, required)  # raises the error about the missing field
        pattern, slashes = compiled
        path = pattern.format_map(values)
        run = get("run") if self._runs else None
        if self._runs and type(run) is str:
            slashes += self._runs * run.count("/")
        if (path.count("/") != slashes or ".." in path or "/." in path or path[:1] in ("", ".", "/")
                or "\\" in path or "\x00" in path):
            self._refuse(path, values, required)
        return path.replace("//", "/") if "//" in path else path

    def _refuse(self, path: str, values: Mapping[str, Any], required: tuple[str, ...]) -> None:
        """Raise the `TemplateError` for an unsafe formatted path, naming the value that made it."""
        for f in self.fields:
            names = required if f.name == "dims" else (f.name,)
            for name in names:
                value = values.get(name)
                if value is None:
                    continue
                try:
                    text = format(value, f.spec) if f.spec and f.name != "dims" else str(value)
                except (ValueError, TypeError):
                    continue
                problem = _path_part_problem(text, allow_slash=name == "run")
                if problem:
                    shown = f"{{{f.name}:{f.spec}}}" if f.spec else f"{{{name}}}"
                    raise TemplateError(
                        f"file template {self.text!r}: the value {value!r} of {name!r} gives {text!r} for {shown}, "
                        f"which {problem}; paths must stay inside the repository (fix the value or the template)"
                    )
        raise TemplateError(
            f"file template {self.text!r} gives the path {path!r}, which is not a plain relative path inside the "
            "repository (no empty or '.'-starting component, no '..', no backslash or NUL)"
        )

    def _compile(self, missing: tuple[bool, ...], required: tuple[str, ...]) -> tuple[str, int] | None:
        """A ``str.format`` pattern (and the number of '/' in its literal text) giving what ``_format_fields`` gives when exactly the fields
        flagged in ``missing`` are None; None to use ``_format_fields`` (a required field is
        missing, or the template has names or specs that ``str.format`` reads differently)."""
        if not all(n.isidentifier() for n in (*self._value_names, *required)) or any(
                "{" in f.spec or "}" in f.spec for f in self.fields):
            return None
        slashes = 0
        absent = {n for n, m in zip(self._value_names, missing) if m}
        out = []
        pos = 0
        text = self.text
        for f in self.fields:
            out.append(text[pos:f.start])
            slashes += text.count("/", pos, f.start)
            pos = f.end
            if f.name == "dims":
                out.append("_".join("{" + d + "}" for d in required))
                continue
            if f.name in absent:
                if not f.optional:
                    return None
                if pos < len(text) and text[pos] in "/_-.":
                    pos += 1
                continue
            out.append("{" + f.name + (":" + f.spec if f.spec else "") + "}")
        out.append(text[pos:])
        slashes += text.count("/", pos)
        return "".join(out), slashes

    def _format_fields(self, values: Mapping[str, Any], required: tuple[str, ...]) -> str:
        out = []
        pos = 0
        text = self.text
        slashes = 0
        for f in self.fields:
            out.append(text[pos:f.start])
            slashes += text.count("/", pos, f.start)
            pos = f.end
            if f.name == "dims":
                out.append("_".join(str(values[d]) for d in required))
                continue
            value = values.get(f.name)
            if value is None:
                if f.optional:
                    if pos < len(text) and text[pos] in "/_-.":
                        pos += 1
                    continue
                raise TemplateError(f"file template {text!r} needs {f.name!r}, which is not known for this dataset")
            if f.name == "run" and isinstance(value, str):
                slashes += value.count("/")
            out.append(format(value, f.spec) if f.spec else str(value))
        out.append(text[pos:])
        slashes += text.count("/", pos)
        path = "".join(out)
        if (path.count("/") != slashes or ".." in path or "/." in path or path[:1] in ("", ".", "/")
                or "\\" in path or "\x00" in path):
            self._refuse(path, values, required)
        return path.replace("//", "/")


def _path_part_problem(text: str, *, allow_slash: bool) -> str | None:
    """Why ``text`` cannot be (part of) a path component, or None."""
    if not text:
        return "is empty"
    if "\x00" in text:
        return f"contains a NUL character at position {text.index(chr(0))}"
    if "\\" in text:
        return "contains a backslash"
    if not allow_slash and "/" in text:
        return "contains the path separator '/'"
    if ".." in text:
        return "contains '..'"
    if text.startswith(".") or "/." in text:
        return "starts a path component with '.'"
    return None


class TemplateSet:
    """Templates by dataset type with per-instrument overrides, e.g. ``{"default": ..., "raw": ...}``."""

    def __init__(self, templates: Mapping[str, str] | None = None,
                 instrument_templates: Mapping[str, Mapping[str, str]] | None = None):
        self.templates = {k: FileTemplate(v) for k, v in (templates or {}).items()}
        self.templates.setdefault("default", FileTemplate(DEFAULT_TEMPLATE))
        self.instrument_templates = {
            inst: {k: FileTemplate(v) for k, v in t.items()} for inst, t in (instrument_templates or {}).items()
        }

    def lookup(self, dataset_type: str, instrument: str | None) -> tuple[FileTemplate, bool, bool]:
        """The template for a dataset type (and instrument), with whether it is per-type/per-instrument."""
        if instrument is not None:
            overrides = self.instrument_templates.get(instrument)
            if overrides:
                if dataset_type in overrides:
                    return overrides[dataset_type], True, True
                if "default" in overrides:
                    return overrides["default"], False, True
        if dataset_type in self.templates:
            return self.templates[dataset_type], True, False
        return self.templates["default"], False, False

    def all_for(self, dataset_type: str) -> list[tuple[FileTemplate, bool, bool]]:
        """Every template that could apply to a dataset type (for validation at registration)."""
        out = [self.lookup(dataset_type, None)]
        for inst in self.instrument_templates:
            out.append(self.lookup(dataset_type, inst))
        return out
