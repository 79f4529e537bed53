"""Translate a dimension query (dimensions, data ID constraints, where-expression, dataset
constraint) into one SQL SELECT.

Every dimension value the query needs comes from some column: a dataset tags table, a dimension
record table (its key and required columns), or an implied column of another record (``visit``
records carry ``physical_filter``; ``physical_filter`` records carry ``band``). The builder joins
the fewest tables that provide every needed dimension and constrains all columns that carry the
same dimension to be equal. Dimensions of the result that are not linked to anything else
produce a product, as a user would expect from "all visits x all tracts".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .._time import to_nsec
from ..dimensions import DimensionElement, DimensionGroup, DimensionUniverse
from ..errors import ExpressionError
from ._schema import RegistrySchema
from ._spatial import regions_overlap
from .expressions import Comparison, Identifier, InList, Node, ResolvedColumn, identifiers, to_sql, walk

__all__ = ["BuiltQuery", "QueryBuilder"]

_TOO_BIG = ("Expression tree is too large", "too many SQL variables", "number of parameters must be between",
            "too many terms", "Prepared statement contains too many placeholders", "stack depth limit exceeded")
"""Messages of the backends' size limits (expression depth, bound parameters) for one statement."""


@dataclass
class BuiltQuery:
    """The select statement and where its interesting columns are."""

    froms: list[sa.FromClause] = field(default_factory=list)
    columns: dict[str, list[sa.ColumnElement[Any]]] = field(default_factory=dict)
    where: list[sa.ColumnElement[bool]] = field(default_factory=list)
    element_tables: dict[str, sa.Table] = field(default_factory=dict)
    refine: list[tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]] = field(default_factory=list)
    where_tree: Node | None = None

    def dimension_column(self, name: str) -> sa.ColumnElement[Any]:
        return self.columns[name][0]

    def select(self, *columns: sa.ColumnElement[Any], distinct: bool = False) -> sa.Select[*tuple[Any, ...]]:
        conditions = list(self.where)
        for cols in self.columns.values():
            first = cols[0]
            conditions.extend(c == first for c in cols[1:])
        stmt = sa.select(*columns).select_from(*self.froms)
        if conditions:
            stmt = stmt.where(*conditions)
        return stmt.distinct() if distinct else stmt

    def execute(self, conn: sa.Connection, columns: list[sa.ColumnElement[Any]], *, distinct: bool = False,
                order_by: list[sa.ColumnElement[Any]] | None = None) -> list[tuple[Any, ...]]:
        """Run the query; spatial candidates from the pixel join are refined by exact overlap."""
        try:
            return self._execute(conn, columns, distinct=distinct, order_by=order_by)
        except sa.exc.DBAPIError as err:
            if not any(marker in str(err.orig) for marker in _TOO_BIG):
                raise
            terms = sum(isinstance(n, (Comparison, InList)) for n in walk(self.where_tree)) if self.where_tree else 0
            raise ExpressionError(
                f"the query is larger than the {conn.dialect.name} database accepts ({err.orig}); its where-expression "
                f"has {terms} comparisons: write equalities on one dimension as IN (...) or bind a list "
                "(visit IN (:ids)), which is sent as a single parameter"
            ) from None

    def _execute(self, conn: sa.Connection, columns: list[sa.ColumnElement[Any]], *, distinct: bool,
                 order_by: list[sa.ColumnElement[Any]] | None) -> list[tuple[Any, ...]]:
        if not self.refine:
            stmt = self.select(*columns, distinct=distinct)
            if order_by:
                stmt = stmt.order_by(*order_by)
            return [tuple(r) for r in conn.execute(stmt).all()]  # all(): one fetchall, not a fetch per row
        region_cols = [c for pair in self.refine for c in pair]
        stmt = self.select(*columns, *region_cols, distinct=True)
        if order_by:
            stmt = stmt.order_by(*order_by)
        n = len(columns)
        pairs = range(n, n + 2 * len(self.refine), 2)
        out = []
        seen: set[tuple[Any, ...]] = set()
        for row in conn.execute(stmt).all():
            if all(row[i] is not None and row[i + 1] is not None and regions_overlap(row[i], row[i + 1])
                   for i in pairs):
                key = tuple(row[:n])
                if key not in seen:
                    seen.add(key)
                    out.append(key)
        return out


class QueryBuilder:
    """Builds SELECTs over the registry schema for one universe."""

    def __init__(self, schema: RegistrySchema):
        self.schema = schema
        self.universe: DimensionUniverse = schema.universe
        self._implied_by: dict[str, list[DimensionElement]] = {}
        self._spatial_joins: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
        for element in self.universe.elements:
            for implied in element.implies:
                self._implied_by.setdefault(implied, []).append(element)

    def build(
        self,
        *,
        dimensions: DimensionGroup,
        data_id: Mapping[str, Any] | None = None,
        where: Node | None = None,
        bind: Mapping[str, Any] | None = None,
        tags: tuple[sa.Table, DimensionGroup] | None = None,
        element: DimensionElement | None = None,
        with_implied: bool = False,
        where_text: str = "",
    ) -> BuiltQuery:
        universe = self.universe
        q = BuiltQuery()
        if tags is not None:
            table, group = tags
            q.froms.append(table)
            for d in group.required:
                q.columns.setdefault(d, []).append(table.c[d])
        idents = identifiers(where) if where is not None else []
        for ident in idents:
            self._check_identifier(ident, where_text)
            if ident.field is not None:
                self._join(q, universe[ident.name])
        if element is not None:
            self._join(q, element)
        # Constraints first, so requested implied dimensions (a band) come through the records that
        # are constrained (the visit's filter) rather than as an unrelated product.
        wanted = list(data_id or ())
        wanted += [i.name for i in idents if i.field is None]
        wanted += list(dimensions.names if with_implied else dimensions.required)
        referenced = set(wanted) | {d for i in idents if i.field is not None for d in universe[i.name].required}
        if {"visit", "exposure"} <= referenced:
            self._join(q, universe["visit_definition"])  # which exposures make up which visits
        if referenced & {"visit", "exposure"} and referenced & {"tract", "patch"}:
            self._spatial_join(q, referenced)
        for d in wanted:
            self._provide(q, d)
        # Existence: each required dimension of the result comes from its own record table unless
        # a joined table already references it (foreign keys guarantee the record exists).
        for d in reversed(dimensions.required):
            if d not in q.element_tables and not any(
                d in e.required and d != e.name for e in map(universe.__getitem__, q.element_tables)
            ) and not (tags is not None and d in tags[1].required):
                self._join(q, universe[d])
        for key, value in (data_id or {}).items():
            q.where.append(q.dimension_column(key) == value)
        if where is not None:
            q.where_tree = where
            resolve = lambda ident: self._resolve(q, ident, where_text)
            q.where.append(to_sql(where, resolve, bind, text=where_text or None))
        return q

    def _spatial_join(self, q: BuiltQuery, referenced: set[str]) -> None:
        """Relate observations (visit, visit+detector) to the skymap (tract, patch) by region."""
        universe = self.universe
        if "visit" not in referenced and "visit" not in q.columns:
            self._join(q, universe["visit_definition"])  # exposures reach regions through their visit
        obs = universe["visit_detector_region" if "detector" in referenced else "visit"]
        sky = universe["patch" if "patch" in referenced else "tract"]
        a = self._join(q, obs)
        b = self._join(q, sky)
        key = (obs.name, sky.name)
        join = self._spatial_joins.get(key)
        if join is None:  # built once: aliasing a table costs ~0.4 ms (column proxies), as much as a query
            ia = self.schema.skypix[obs.name].alias(f"skypix_{obs.name}")
            ib = self.schema.skypix[sky.name].alias(f"skypix_{sky.name}")
            conditions = [ia.c[k] == a.c[k] for k in obs.primary_key_columns]
            conditions += [ib.c[k] == b.c[k] for k in sky.primary_key_columns]
            conditions.append(ia.c.pix == ib.c.pix)
            join = self._spatial_joins[key] = ([ia, ib], conditions)
        q.froms += join[0]
        q.where += join[1]
        q.refine.append((a.c.region, b.c.region))

    # -- joins ------------------------------------------------------------------------------
    def _join(self, q: BuiltQuery, element: DimensionElement) -> sa.Table:
        table = q.element_tables.get(element.name)
        if table is not None:
            return table
        table = self.schema.elements[element.name]
        q.element_tables[element.name] = table
        q.froms.append(table)
        for d in element.required:
            col = table.c[element.key_name] if d == element.name else table.c[d]
            q.columns.setdefault(d, []).append(col)
        for d in element.implies:
            q.columns.setdefault(d, []).append(table.c[d])
        return table

    def _provide(self, q: BuiltQuery, dim: str) -> None:
        """Make ``dim`` available, preferably through a record that implies it."""
        if dim in q.columns:
            return
        if self._provide_via_implication(q, dim):
            return
        self._join(q, self.universe[dim])

    def _provide_via_implication(self, q: BuiltQuery, dim: str) -> bool:
        for owner in self._implied_by.get(dim, ()):
            if owner.name in q.columns or (owner.is_dimension and self._provide_via_implication(q, owner.name)):
                self._join(q, owner)
                return True
        return False

    # -- where-expression identifiers ---------------------------------------------------------
    def _check_identifier(self, ident: Identifier, text: str) -> None:
        universe = self.universe
        if ident.name not in universe or (ident.field is None and not universe[ident.name].is_dimension):
            raise _ident_error(
                ident, text,
                f"unknown dimension {ident.name!r}; dimensions are {', '.join(universe.dimensions)}"
                " (use element.field for record fields, e.g. visit.exposure_time)",
            )
        if ident.field is not None:
            element = universe[ident.name]
            fields = element.field_types
            name = self._field_column(element, ident.field)
            if name not in fields or fields[name] == "region":
                usable = [f for f, k in fields.items() if k != "region"]
                raise _ident_error(ident, text, f"{ident.name} has no field {ident.field!r}; fields: {usable}")

    @staticmethod
    def _field_column(element: DimensionElement, field_name: str) -> str:
        if element.is_dimension and field_name in ("id", "name") and element.key is not None:
            return element.key.name if field_name in (element.key.name,) else field_name
        return field_name

    def _resolve(self, q: BuiltQuery, ident: Identifier, text: str) -> ResolvedColumn:
        universe = self.universe
        if ident.field is None:
            return ResolvedColumn(q.dimension_column(ident.name), universe[ident.name].key_type)
        element = universe[ident.name]
        table = q.element_tables[element.name]
        name = self._field_column(element, ident.field)
        kind = element.field_types[name]
        if kind == "region":  # refused by _check_identifier already
            raise _ident_error(ident, text, f"{ident.name}.{ident.field} is a region, not a comparable field")
        return ResolvedColumn(table.c[name], kind)


def _ident_error(ident: Identifier, text: str, message: str) -> ExpressionError:
    from .expressions import expression_error

    return expression_error(message, text, ident.column)


def time_value(value: Any) -> int:
    return to_nsec(value)
