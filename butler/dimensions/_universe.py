"""The dimension universe: elements, their keys and the groups data IDs are made of.

A universe is read from YAML (``universe.yaml`` ships with the package; a repository stores
the text it was created with). Elements are record tables; *dimensions* are the elements whose
key can appear in a data ID. Each element ``requires`` other dimensions (part of its primary
key, e.g. ``detector`` requires ``instrument``) and may ``imply`` others (a column of its record,
e.g. ``visit`` implies ``physical_filter``, which implies ``band``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

if TYPE_CHECKING:
    from ..registry._pixelization import CubeFacePixelization

__all__ = ["DimensionElement", "DimensionGroup", "DimensionUniverse", "FieldSpec", "FieldType"]

FieldType: TypeAlias = Literal["int", "float", "str", "time", "bool", "bytes"]
"""The type of a record field or dimension key ("time": integer nanoseconds since 1970 UTC)."""

_FIELD_TYPES = {"int", "float", "str", "time", "bool", "bytes"}


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One column of an element's record table."""

    name: str
    type: FieldType
    length: int | None = None
    nullable: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FieldSpec:
        if data.get("type") not in _FIELD_TYPES:
            raise ValueError(f"{where}: field type must be one of {sorted(_FIELD_TYPES)}, got {data.get('type')!r}")
        return cls(
            name=str(data["name"]),
            type=data["type"],
            length=data.get("length"),
            nullable=bool(data.get("nullable", False)),
        )


@dataclass(frozen=True, eq=False)
class DimensionElement:
    """A record table: a dimension (its key may appear in data IDs) or a join element."""

    name: str
    index: int
    direct_requires: tuple[str, ...]
    implies: tuple[str, ...]
    key: FieldSpec | None
    fields: tuple[FieldSpec, ...]
    spatial: bool
    is_dimension: bool
    universe: DimensionUniverse = field(repr=False)

    @cached_property
    def required(self) -> tuple[str, ...]:
        """Every dimension in this element's primary key, in universe order (itself last)."""
        names: set[str] = set()
        for dep in self.direct_requires:
            names.update(self.universe[dep].required)
        ordered = self.universe.sort(names)
        return (*ordered, self.name) if self.is_dimension else ordered

    @cached_property
    def key_type(self) -> FieldType:
        """The type of a dimension's key (``int``, ``str``...); a join element has no key."""
        if self.key is None:
            raise KeyError(f"{self.name!r} is a join element, not a dimension: it has no key")
        return self.key.type

    @cached_property
    def key_name(self) -> str:
        """The name of a dimension's key column (``id``, ``name``...); a join element has no key."""
        if self.key is None:
            raise KeyError(f"{self.name!r} is a join element, not a dimension: it has no key")
        return self.key.name

    @cached_property
    def primary_key_columns(self) -> tuple[str, ...]:
        """Column names of the primary key of this element's table."""
        cols = [d for d in self.required if d != self.name]
        if self.is_dimension:
            assert self.key is not None
            cols.append(self.key.name)
        return tuple(cols)

    @cached_property
    def record_fields(self) -> tuple[str, ...]:
        """All column names of a record, key columns first."""
        names = list(self.primary_key_columns) + list(self.implies) + [f.name for f in self.fields]
        if self.spatial:
            names.append("region")
        return tuple(names)

    @cached_property
    def field_types(self) -> dict[str, FieldType | Literal["region"]]:
        """Column name -> field type (``int``, ``str``, ``time``...; ``region`` for regions)."""
        types: dict[str, FieldType | Literal["region"]] = {}
        for name in self.primary_key_columns:
            if self.is_dimension and self.key is not None and name == self.key.name:
                types[name] = self.key.type
            else:
                types[name] = self.universe[name].key_type
        for name in self.implies:
            types[name] = self.universe[name].key_type
        for f in self.fields:
            types[f.name] = f.type
        if self.spatial:
            types["region"] = "region"
        return types

    def __repr__(self) -> str:
        return f"DimensionElement({self.name!r})"


class DimensionGroup:
    """An ordered, closed set of dimensions: the keys of one kind of data ID.

    ``required`` holds the dimensions whose values a data ID must carry; ``implied`` holds those
    whose values follow from the required ones (e.g. ``band`` from ``visit``). Groups are
    interned per universe, so identity comparison is enough and creating one is a dict lookup.
    """

    __slots__ = ("__weakref__", "_hash", "implied", "index", "names", "required", "universe")

    def __init__(self, universe: DimensionUniverse, required: tuple[str, ...], implied: tuple[str, ...]):
        self.universe = universe
        self.required = required
        self.implied = implied
        self.names = universe.sort([*required, *implied])
        self.index = {name: i for i, name in enumerate(required)}
        self._hash = hash(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.index or name in self.implied

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, DimensionGroup) and self.names == other.names)

    def __repr__(self) -> str:
        return f"DimensionGroup({list(self.required)}, implied={list(self.implied)})"

    def __reduce__(self) -> tuple[Callable[[int, tuple[str, ...]], DimensionGroup], tuple[int, tuple[str, ...]]]:
        return (_group_from_pickle, (self.universe.version, self.required))

    @property
    def is_spatial(self) -> bool:
        return any(self.universe[n].spatial for n in self.required)


def _group_from_pickle(version: int, required: tuple[str, ...]) -> DimensionGroup:
    return DimensionUniverse.from_version(version).group(required)


class DimensionUniverse:
    """All elements of one universe version; the factory of interned dimension groups."""

    _by_digest: ClassVar[dict[str, DimensionUniverse]] = {}
    _by_version: ClassVar[dict[int, DimensionUniverse]] = {}

    def __init__(self, config: Mapping[str, Any], text: str):
        self.namespace: str = config.get("namespace", "butler")
        spatial = config.get("spatial_index") or {"pixelization": "cubeface", "level": 9}
        self.spatial_index: tuple[str, int] = (str(spatial["pixelization"]), int(spatial["level"]))
        self.version: int = int(config["version"])
        self.text = text
        self.digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        self._elements: dict[str, DimensionElement] = {}
        self._order: dict[str, int] = {}
        for i, (name, spec) in enumerate(config["elements"].items()):
            key = spec.get("key")
            is_dimension = bool(spec.get("dimension", True))
            if is_dimension and key is None:
                raise ValueError(f"dimension {name!r} needs a 'key' in the universe YAML")
            self._order[name] = i
            self._elements[name] = DimensionElement(
                name=name,
                index=i,
                direct_requires=tuple(spec.get("requires", ())),
                implies=tuple(spec.get("implies", ())),
                key=FieldSpec.from_dict(key, f"{name}.key") if key else None,
                fields=tuple(FieldSpec.from_dict(f, f"{name}.fields") for f in spec.get("fields", ())),
                spatial=bool(spec.get("spatial", False)),
                is_dimension=is_dimension,
                universe=self,
            )
        for element in self._elements.values():
            for dep in (*element.direct_requires, *element.implies):
                if dep not in self._elements or not self._elements[dep].is_dimension:
                    raise ValueError(f"element {element.name!r} refers to unknown dimension {dep!r}")
        self.dimensions: tuple[str, ...] = tuple(n for n, e in self._elements.items() if e.is_dimension)
        self._groups: dict[frozenset[str], DimensionGroup] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, *,
                  parsed: Callable[[], Mapping[str, Any] | None] | None = None) -> DimensionUniverse:
        """The universe of ``text`` (one object per text in a process, so the text is its identity).

        ``parsed``, called only when ``text`` is not loaded yet, may return its configuration parsed
        already (a repository's JSON copy: opening then imports no YAML parser), or None to parse it.
        """
        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        cached = cls._by_digest.get(digest)
        if cached is not None:
            return cached
        config = parsed() if parsed is not None else None
        if config is None:
            import yaml

            config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        universe = cls(config, text)
        cls._by_digest[digest] = universe
        cls._by_version.setdefault(universe.version, universe)
        return universe

    @classmethod
    def default(cls) -> DimensionUniverse:
        """The universe shipped with this version of the package."""
        text = resources.files("butler.dimensions").joinpath("universe.yaml").read_text()
        return cls.from_text(text)

    @classmethod
    def from_version(cls, version: int) -> DimensionUniverse:
        """The universe of this version loaded in this process, else the shipped one if it matches.

        Universe versions are immutable once released, so the version alone identifies one; this
        keeps pickled data IDs and refs small.
        """
        universe = cls._by_version.get(version)
        if universe is None:
            universe = cls.default()
            if universe.version != version:
                raise LookupError(
                    f"dimension universe version {version} is not loaded in this process (the package "
                    f"ships version {universe.version}); open a repository that uses it first"
                )
        return universe

    # -- access ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> DimensionElement:
        try:
            return self._elements[name]
        except KeyError:
            raise KeyError(f"unknown dimension element {name!r}; known: {', '.join(self._elements)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._elements

    @property
    def elements(self) -> tuple[DimensionElement, ...]:
        return tuple(self._elements.values())

    def sort(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(set(names), key=self._order.__getitem__))

    def group(self, names: Iterable[str]) -> DimensionGroup:
        """The interned group of the given dimensions plus everything they require or imply."""
        key = names if isinstance(names, frozenset) else frozenset(names)
        group = self._groups.get(key)
        if group is not None:
            return group
        for n in key:
            if n not in self._elements or not self._elements[n].is_dimension:
                raise KeyError(f"unknown dimension {n!r}; known dimensions: {', '.join(self.dimensions)}")
        closure: set[str] = set()
        for n in key:
            closure.update(self._elements[n].required)
        frontier = list(closure)
        while frontier:
            n = frontier.pop()
            for implied_name in self._elements[n].implies:
                for m in self._elements[implied_name].required:
                    if m not in closure:
                        closure.add(m)
                        frontier.append(m)
        implied_set = {i for n in closure for i in self._elements[n].implies}
        required = self.sort(closure - implied_set)
        implied = self.sort(closure & implied_set)
        group = DimensionGroup(self, required, implied)
        canonical = self._groups.get(frozenset(group.names))
        if canonical is not None and canonical.names == group.names:
            group = canonical
        self._groups[key] = group
        self._groups.setdefault(frozenset(group.names), group)
        return group

    @property
    def spatial_elements(self) -> tuple[DimensionElement, ...]:
        return tuple(e for e in self._elements.values() if e.spatial)

    def pixelization(self) -> CubeFacePixelization:
        """The pixelization of the registry's spatial index (vectorised; see registry._pixelization)."""
        from ..registry._pixelization import CubeFacePixelization

        name, level = self.spatial_index
        if name != "cubeface":
            raise ValueError(f"unknown spatial index pixelization {name!r}; this version supports 'cubeface'")
        return CubeFacePixelization(level)

    @property
    def empty(self) -> DimensionGroup:
        return self.group(())

    def __repr__(self) -> str:
        return f"DimensionUniverse(version={self.version}, digest={self.digest[:8]})"

    def __reduce__(self) -> tuple[Callable[[str], DimensionUniverse], tuple[str]]:
        return (DimensionUniverse.from_text, (self.text,))
