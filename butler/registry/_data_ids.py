"""Data IDs against a registry: normalisation (aliases), query constraints, implied values and
what is missing from a data ID.

A data ID names the required dimensions of a dataset type; the values they imply (a visit's
band, physical_filter and day_obs) live in the records of those dimensions. They are looked up
only when a file template needs them, one query per implying record (all detectors of a visit
share it), cached per registry (so per process: every Butler of a repository shares it;
`DataIdResolver.clear` forgets them); `prime_implied` fetches those of many data IDs with one
query per implying element.

This is the registry's business, not the Butler's: a remote registry answers the same questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..dimensions import DataCoordinate, DimensionGroup, DimensionUniverse, coerce_value
from ..errors import DataIdError

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["DataIdNormalizer", "DataIdResolver", "InstrumentSource"]

_IMPLIED_PLANS: dict[tuple[DimensionUniverse, DimensionGroup], tuple[tuple[str, Any, tuple[int, ...]], ...]] = {}


class InstrumentSource(Protocol):
    """What normalising data IDs needs of a registry: its universe and its instruments' aliases."""

    @property
    def universe(self) -> DimensionUniverse: ...

    @property
    def instruments(self) -> dict[str, dict[str, Any]]: ...


class DataIdNormalizer:
    """Data IDs as a user gives them, made canonical: `standardize` (aliases accepted) and the
    `constraints` of queries. Needs no database: a remote registry's client normalises locally."""

    def __init__(self, source: InstrumentSource) -> None:
        self._source = source

    def aliases(self, instrument: Any) -> dict[str, str]:
        """Alias keys of ``instrument`` (or of all instruments when none is named)."""
        instruments = self._source.instruments
        if isinstance(instrument, str):
            info = instruments.get(instrument)
            return info["aliases"] if info else {}
        merged: dict[str, str] = {}
        for info in instruments.values():
            for alias, target in info["aliases"].items():
                merged.setdefault(alias, target)
        return merged

    def standardize(self, group: DimensionGroup, data_id: Any, kwargs: Mapping[str, Any] | None = None
                    ) -> DataCoordinate:
        """The data ID of ``group`` given as a mapping (or a DataCoordinate) plus keywords."""
        if isinstance(data_id, DataCoordinate) and not kwargs and data_id.group is group:
            return data_id
        merged = dict(data_id) if data_id else {}
        if kwargs:
            merged.update(kwargs)
        return DataCoordinate.standardize(merged, group, aliases=self.aliases(merged.get("instrument")))

    def constraints(self, data_id: Any, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Normalise free-form data ID constraints of a query (any dimension, aliases accepted)."""
        merged = dict(data_id) if data_id else {}
        if kwargs:
            merged.update(kwargs)
        aliases = self.aliases(merged.get("instrument"))
        for alias, target in aliases.items():
            if alias in merged:
                value = merged.pop(alias)
                if target in merged and merged[target] != value:
                    raise DataIdError(f"{alias}={value!r} conflicts with {target}={merged[target]!r}")
                merged[target] = value
        universe = self._source.universe
        out = {}
        for key, value in merged.items():
            if key not in universe.dimensions:
                raise DataIdError(
                    f"unknown data ID key {key!r}; dimensions are {list(universe.dimensions)}"
                    + (f", aliases {sorted(aliases)}" if aliases else "")
                )
            out[key] = coerce_value(key, universe[key].key_type, value)
        return out


class DataIdResolver(DataIdNormalizer):
    """Data IDs of one SQL registry: normalisation, and implied values (`expand_implied`,
    `prime_implied`) from the dimension records."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self._registry = registry
        self._implied: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}

    def clear(self) -> None:
        """Forget cached implied values (records may have been replaced by another process)."""
        self._implied.clear()

    def expand_implied(self, data_id: DataCoordinate) -> dict[str, Any]:
        """Implied values (band, physical_filter, day_obs...) of a data ID, cached per record.

        Implied values come from the records of the required dimensions that imply them (a
        visit's filter and day), so the cache is keyed by those records: all detectors of a
        visit share one lookup.
        """
        registry = self._registry
        implied_cache = self._implied
        group = data_id.group
        plan = _IMPLIED_PLANS.get((group.universe, group))
        if plan is None:  # per group: the elements that imply values, and where their keys are
            universe = group.universe
            plan = _IMPLIED_PLANS[(group.universe, group)] = tuple(
                (owner, universe[owner], tuple(group.index[d] for d in universe[owner].required))
                for owner in group.required if universe[owner].implies)
        values = data_id.values
        out: dict[str, Any] = {}
        for owner, element, where in plan:
            key = (owner, tuple([values[i] for i in where]))
            cached = implied_cache.get(key)
            if cached is None:
                stmt = registry.records.implied_statement(element, registry.query_builder)
                with registry.db.transaction() as conn:
                    row = conn.execute(stmt, dict(zip(element.required, key[1]))).first()
                if row is None:
                    raise DataIdError(self.missing_dimension_message(data_id) or f"data ID {data_id} has no records")
                cached = row._asdict()
                if len(implied_cache) > 100_000:
                    implied_cache.clear()
                implied_cache[key] = cached
            out.update(cached)
        return {k: v for k, v in out.items() if k in data_id.group.implied}


    def prime_implied(self, coords: Sequence[DataCoordinate]) -> None:
        """Fetch the implied values of many data IDs with one query per implying element."""
        if not coords:
            return
        registry = self._registry
        implied_cache = self._implied
        universe = registry.universe
        group = coords[0].group
        for owner in group.required:
            element = universe[owner]
            if not element.implies:
                continue
            wanted = {tuple(c[d] for d in element.required) for c in coords}
            wanted = {k for k in wanted if (owner, k) not in implied_cache}
            if not wanted:
                continue
            parents = element.required[:-1]
            by_parent: dict[tuple[Any, ...], list[Any]] = {}
            for key in wanted:
                by_parent.setdefault(key[:-1], []).append(key[-1])
            el_group = universe.group(element.required)
            for parent, ids in by_parent.items():
                for start in range(0, len(ids), 5000):
                    built = registry.query_builder.build(dimensions=el_group, data_id=dict(zip(parents, parent)),
                                                         with_implied=True)
                    built.where.append(built.dimension_column(owner).in_(ids[start:start + 5000]))
                    cols = [built.dimension_column(owner)] + [built.dimension_column(n) for n in el_group.implied]
                    with registry.db.transaction() as conn:
                        for row in conn.execute(built.select(*cols)):
                            implied_cache[(owner, (*parent, row[0]))] = dict(zip(el_group.implied, row[1:]))


    def missing_dimension_message(self, data_id: DataCoordinate) -> str | None:
        """What is missing from the registry for ``data_id`` (the first required dimension without a record)."""
        registry = self._registry
        rows = [data_id.to_dict()]
        with registry.db.transaction() as conn:
            for dim in data_id.group.required:
                message = registry.records.missing_keys(registry.universe[dim], rows, conn)
                if message:
                    return message
        return None
