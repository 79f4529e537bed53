"""Data IDs: immutable, hashable, normalised mappings from dimension name to value.

A ``DataCoordinate`` stores the values of its group's *required* dimensions as a tuple in
universe order; values of *implied* dimensions (``band`` of a visit) are optional extras that
queries fill in. Equality and hashing use the required values only, so a data ID built by a user
and one returned by a query compare equal.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import DataIdError
from ._universe import DimensionGroup, DimensionUniverse

__all__ = ["DataCoordinate", "coerce_value", "validate_path_value"]

# Letters, digits and a few separators that are safe inside one path component.
_set = object.__setattr__
_INT64 = (-(2**63), 2**63 - 1)
_INT_STR = re.compile(r"\s*[+-]?[0-9]+\s*")
_SAFE_STR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-:@=,]*")


def validate_path_value(key: str, value: str) -> str:
    """Reject string values that could escape a file path (separators, ``..``, control chars)."""
    if _SAFE_STR.fullmatch(value) is None or ".." in value:
        if "\x00" in value:
            raise DataIdError(
                f"invalid value {value!r} for {key!r}: it contains a NUL character at position "
                f"{value.index(chr(0))}, which no registry database can store or compare"
            )
        raise DataIdError(
            f"invalid value {value!r} for {key!r}: string data ID values must start with a letter, "
            "digit or '_' and contain only letters, digits and _ . + - : @ = , (no path separators, "
            "no '..', no whitespace)"
        )
    return value


def coerce_value(key: str, kind: str, value: Any) -> Any:
    """Convert ``value`` to the Python type of dimension key ``key`` or raise ``DataIdError``."""
    if kind == "int":
        if type(value) is int and _INT64[0] <= value <= _INT64[1]:
            return value
        if type(value) is int:
            raise DataIdError(f"{key}={value} is out of range: integer values must fit in 64 bits")
        if isinstance(value, bool):
            raise DataIdError(f"{key} must be an integer, got the boolean {value!r}")
        if isinstance(value, str):
            if _INT_STR.fullmatch(value):
                return coerce_value(key, kind, int(value))
            raise DataIdError(f"{key} must be an integer, got the string {value!r}")
        try:
            return coerce_value(key, kind, operator.index(value))
        except TypeError:
            raise DataIdError(f"{key} must be an integer, got {value!r} ({type(value).__name__})") from None
    if kind == "str":
        if not isinstance(value, str):
            raise DataIdError(f"{key} must be a string, got {value!r} ({type(value).__name__})")
        return validate_path_value(key, value)
    raise DataIdError(f"{key} has key type {kind!r}, which cannot be part of a data ID")


class DataCoordinate(Mapping[str, Any]):
    """An immutable data ID for one dimension group."""

    # Order matters: registry/_datasets.py's fast construction checks this exact layout.
    __slots__ = ("group", "values", "implied_values", "_hash")  # noqa: RUF023

    group: DimensionGroup
    # The required values in group order. It shadows Mapping.values() on purpose (the hot path of
    # every query and pickle reads it); iterate ``to_dict().values()`` for the method's meaning.
    values: tuple[Any, ...]  # type: ignore[assignment]
    implied_values: Mapping[str, Any] | None
    _hash: int

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_values(
        cls, group: DimensionGroup, values: tuple[Any, ...], implied_values: Mapping[str, Any] | None = None
    ) -> DataCoordinate:
        """Trusted fast constructor: ``values`` are already validated and in ``group.required`` order."""
        self = object.__new__(cls)
        _set(self, "group", group)
        _set(self, "values", values)
        _set(self, "implied_values", implied_values)
        _set(self, "_hash", hash((group.required, values)))
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DataCoordinate is immutable")

    @classmethod
    def standardize(
        cls,
        data: Mapping[str, Any] | None,
        group: DimensionGroup,
        *,
        aliases: Mapping[str, str] | None = None,
        extra_allowed: bool = False,
        **kwargs: Any,
    ) -> DataCoordinate:
        """Validate a user data ID (mapping and/or keywords) against ``group``.

        Alias keys (``ccd`` -> ``detector``) are rewritten; values are converted to the key type
        (``"12"`` -> 12 for integer keys) and string values are checked to be path-safe. Unknown
        or missing keys raise ``DataIdError`` listing what the group accepts.
        """
        if isinstance(data, DataCoordinate) and not kwargs:
            if data.group is group:
                return data
            merged: dict[str, Any] = data.to_dict(implied=True)
        else:
            merged = dict(data) if data else {}
            merged.update(kwargs)
        given = dict(merged)
        if aliases:
            for alias, target in aliases.items():
                if alias in merged:
                    value = merged.pop(alias)
                    if target in merged and merged[target] != value:
                        raise DataIdError(
                            f"data ID gives {alias}={value!r} and {target}={merged[target]!r}, but {alias!r} "
                            f"is an alias of {target!r}: give one of them"
                        )
                    merged[target] = value
                    given[target] = value
        universe = group.universe
        values = []
        for name in group.required:
            if name not in merged:
                missing = [n for n in group.required if n not in merged and n not in given]
                alias_hint = ""
                if aliases:
                    alts = [a for a, t in aliases.items() if t in missing]
                    if alts:
                        alias_hint = f" (aliases accepted: {', '.join(sorted(alts))})"
                raise DataIdError(
                    f"data ID {_fmt(given)} is missing {', '.join(repr(m) for m in missing)}; "
                    f"required keys are {list(group.required)}{alias_hint}"
                )
            values.append(coerce_value(name, universe[name].key_type, merged.pop(name)))
        implied: dict[str, Any] | None = None
        for name in list(merged):
            if name in group.implied:
                implied = implied or {}
                implied[name] = coerce_value(name, universe[name].key_type, merged.pop(name))
        if merged and not extra_allowed:
            accepted = list(group.names) + sorted(aliases or ())
            raise DataIdError(
                f"unknown data ID key(s) {', '.join(repr(k) for k in merged)} for dimensions "
                f"{list(group.required)}; accepted keys: {accepted}"
            )
        return cls.from_values(group, tuple(values), implied)

    # -- mapping interface ----------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        i = self.group.index.get(key)
        if i is not None:
            return self.values[i]
        if self.implied_values is not None and key in self.implied_values:
            return self.implied_values[key]
        raise KeyError(f"{key!r} is not in data ID {self}")

    def __iter__(self) -> Iterator[str]:
        yield from self.group.required
        if self.implied_values:
            yield from self.implied_values

    def __len__(self) -> int:
        return len(self.values) + (len(self.implied_values) if self.implied_values else 0)

    def __contains__(self, key: object) -> bool:
        return key in self.group.index or bool(self.implied_values and key in self.implied_values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataCoordinate):
            return self.values == other.values and self.group.required == other.group.required
        if isinstance(other, Mapping):
            return self.required_dict() == {k: other[k] for k in other if k in self.group.index} and all(
                k in other for k in self.group.index
            )
        return NotImplemented

    def required_dict(self) -> dict[str, Any]:
        return dict(zip(self.group.required, self.values))

    def to_dict(self, *, implied: bool = False) -> dict[str, Any]:
        d = dict(zip(self.group.required, self.values))
        if implied and self.implied_values:
            d.update(self.implied_values)
        return d

    @property
    def has_implied(self) -> bool:
        return self.implied_values is not None and all(n in self.implied_values for n in self.group.implied)

    def subset(self, group: DimensionGroup) -> DataCoordinate:
        """The data ID restricted to ``group`` (whose required keys must be known here)."""
        if group is self.group:
            return self
        src = self.to_dict(implied=True)
        try:
            values = tuple(src[n] for n in group.required)
        except KeyError as err:
            raise DataIdError(f"data ID {self} does not determine {err.args[0]!r} needed for {group}") from None
        implied = {n: src[n] for n in group.implied if n in src} or None
        return DataCoordinate.from_values(group, values, implied)

    def __repr__(self) -> str:
        return _fmt(self.to_dict(implied=True))

    __str__ = __repr__

    def __reduce__(
        self,
    ) -> tuple[Callable[..., DataCoordinate], tuple[DimensionGroup, tuple[Any, ...], Mapping[str, Any] | None]]:
        return (DataCoordinate.from_values, (self.group, self.values, self.implied_values))


def _fmt(mapping: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in mapping.items()) + "}"


def empty_data_id(universe: DimensionUniverse) -> DataCoordinate:
    return DataCoordinate.from_values(universe.empty, ())
