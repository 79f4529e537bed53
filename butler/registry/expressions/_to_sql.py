"""Translation of where-expression trees into SQLAlchemy Core boolean expressions.

Every value, whether written in the expression or passed in ``bind``, becomes a SQL bind
parameter and never text inside the SQL string: that is the defence against SQL injection.
Values are checked against the kind of the column they meet (the resolver supplied by the
query builder says each identifier's column and kind), so ``visit = 'abc'`` fails with a
message pointing at ``'abc'`` instead of silently selecting nothing. Times are converted to
integer nanoseconds since 1970 UTC (`butler._time.to_nsec`), the way the registry stores them.

IN lists become one ``IN`` with an expanding bind parameter for the plain values, plus one
``BETWEEN`` (and a modulo test when there is a step) per range, so ``1..1000000`` costs
nothing. Lists longer than `LONG_IN_LIST` values bind a single parameter holding all of them
(`in_values`), so 100,000 values fit every backend's parameter limit; long AND/OR chains become
balanced trees (`balanced`), and a long OR of ``column = value`` terms becomes one IN, so
thousands of terms stay within SQLite's expression depth. A NUL character (which PostgreSQL
cannot store or compare) in a string value is an `ExpressionError` naming its position.
"""

from __future__ import annotations

__all__ = ["Kind", "ResolvedColumn", "Resolver", "to_sql"]

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, TypeAlias

import sqlalchemy as sa

from ..._time import to_nsec
from ...errors import ExpressionError
from ._ast import (
    And,
    BindParameter,
    BoolLiteral,
    Comparison,
    FloatLiteral,
    Identifier,
    InList,
    IntLiteral,
    IsNull,
    LocatedExpressionError,
    Node,
    Not,
    NullLiteral,
    Or,
    RangeLiteral,
    StringLiteral,
    TimeLiteral,
    expression_error,
    to_text,
)
from ._parser import parse_expression
from ._sql_constructs import balanced, in_values

Kind: TypeAlias = Literal["int", "float", "str", "time", "bool", "bytes"]


@dataclass(frozen=True, slots=True)
class ResolvedColumn:
    """What an identifier stands for: a SQL column expression and the kind of its values."""

    column: sa.ColumnElement[Any]
    """The column (or any column expression) to use in the WHERE clause."""

    kind: Kind
    """Kind of values: "time" columns hold integer nanoseconds since 1970 UTC."""


Resolver: TypeAlias = Callable[[Identifier], ResolvedColumn]
"""Maps an identifier to its column; raises `ExpressionError` for unknown identifiers."""

_KIND_NAMES = {
    "int": "an integer",
    "float": "a floating-point number",
    "str": "a string",
    "time": "a time",
    "bool": "a boolean",
    "bytes": "a byte string",
}
_OPERATORS: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NUMERIC = ("int", "float")


@dataclass(frozen=True, slots=True)
class _Column:
    """A SQL expression of known kind (an identifier or a parenthesised condition)."""

    expr: sa.ColumnElement[Any]
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class _Value:
    """A Python value from a literal or a bind, with a description for messages."""

    value: Any
    kind: str  # a Kind, or "null", "list", "range", "unsupported"
    description: str
    node: Node


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _python_kind(value: Any) -> tuple[str, Any]:
    """Classify a bind value; numpy scalars become Python scalars."""
    if value is None:
        return "null", None
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, str):
        return "str", value
    if isinstance(value, (bytes, bytearray)):
        return "bytes", bytes(value)
    if isinstance(value, date):
        return "time", value
    if isinstance(value, range):
        return "range", value
    if isinstance(value, (list, tuple, set, frozenset)):
        return "list", value
    module = type(value).__module__
    if module.startswith("astropy"):
        return ("time", value) if getattr(value, "isscalar", True) else ("list", list(value))
    if module.startswith("numpy"):
        if getattr(value, "ndim", 0):
            return "list", value.tolist()
        kind = getattr(getattr(value, "dtype", None), "kind", "")
        if kind == "M":
            return "time", value
        if kind in "iub" and kind:
            return _python_kind(value.item())
        if kind == "f":
            return "float", float(value)
    return "unsupported", value


class _Translator:
    """Walks a tree once, resolving each distinct identifier once."""

    def __init__(self, resolve: Resolver, bind: Mapping[str, Any] | None, text: str | None):
        self._resolve = resolve
        self._bind = bind if bind is not None else {}
        self._text = text
        self._columns: dict[tuple[str, str | None], ResolvedColumn] = {}

    def error(self, message: str, node: Node, expected: str | None = None) -> LocatedExpressionError:
        return expression_error(message, self._text, node.column, expected=expected)

    # -- operands --------------------------------------------------------------------------

    def column(self, node: Identifier) -> _Column:
        key = (node.name, node.field)
        resolved = self._columns.get(key)
        if resolved is None:
            try:
                resolved = self._resolve(node)
            except LocatedExpressionError:
                raise
            except ExpressionError as err:
                raise self.error(str(err), node) from err
            if resolved.kind not in _KIND_NAMES:
                raise TypeError(
                    f"resolver gave kind {resolved.kind!r} for {node}; expected one of {list(_KIND_NAMES)}"
                )
            self._columns[key] = resolved
        return _Column(resolved.column, resolved.kind, str(node))

    def bind_value(self, node: BindParameter) -> Any:
        try:
            return self._bind[node.name]
        except KeyError:
            names = ", ".join(f":{name}" for name in sorted(self._bind))
            expected = f"one of the binds given ({names})" if names else "a bind value (none were given)"
            raise self.error(f"bind parameter :{node.name} is not defined", node, expected) from None

    def operand(self, node: Node) -> _Column | _Value:
        if isinstance(node, Identifier):
            return self.column(node)
        if isinstance(node, BoolLiteral):
            return _Value(node.value, "bool", f"the boolean {to_text(node)}", node)
        if isinstance(node, IntLiteral):
            return _Value(node.value, "int", f"the integer {node.value}", node)
        if isinstance(node, FloatLiteral):
            return _Value(node.value, "float", f"the number {node.value!r}", node)
        if isinstance(node, StringLiteral):
            return _Value(node.value, "str", f"the string {to_text(node)}", node)
        if isinstance(node, TimeLiteral):
            return _Value(to_nsec(node.value), "time", f"the time {to_text(node)}", node)
        if isinstance(node, NullLiteral):
            return _Value(None, "null", "NULL", node)
        if isinstance(node, BindParameter):
            value = self.bind_value(node)
            kind, value = _python_kind(value)
            description = f"the bind parameter :{node.name} = {_short(value)}"
            if kind == "str" and "\x00" in value:
                raise self.error(f"{description} contains a NUL character at position {value.index(chr(0))}",
                                 node, "a string without NUL (\\x00), which no registry database can compare")
            return _Value(value, kind, description, node)
        if isinstance(node, RangeLiteral):
            raise self.error("a range is only allowed inside an IN list", node)
        return _Column(self.condition(node), "bool", f"({to_text(node)})")

    def scalar(self, node: Node) -> _Column | _Value:
        """An operand that must be a single value (not a list, range or unsupported type)."""
        result = self.operand(node)
        if isinstance(result, _Value) and result.kind in ("list", "range"):
            expected = "a single value (collections only after IN)"
            raise self.error(f"{result.description} is a collection", node, expected)
        if isinstance(result, _Value) and result.kind == "unsupported":
            raise self.error(
                f"{result.description} has unsupported type {type(result.value).__name__}",
                node,
                "an int, float, str, bool, bytes, datetime or astropy Time",
            )
        return result

    def coerce(self, target: _Column, value: _Value) -> Any:
        """Check ``value`` fits ``target``'s kind and convert it to what the column stores."""
        kind = target.kind
        if value.kind == kind or (kind in _NUMERIC and value.kind in _NUMERIC):
            return to_nsec(value.value) if kind == "time" else value.value
        if kind == "time" and value.kind in ("str", "int"):
            try:
                return to_nsec(value.value)
            except ValueError:
                raise self.error(
                    f"{target.name} is a time but {value.description} is not a valid time",
                    value.node,
                    "an ISO-8601 UTC time such as T'2026-11-24T03:00:00'",
                ) from None
        raise self.error(
            f"{target.name} is {_KIND_NAMES.get(kind, kind)} but was compared with {value.description}",
            value.node,
            f"{_KIND_NAMES.get(kind, kind)} value",
        )

    # -- conditions ------------------------------------------------------------------------

    def condition(self, node: Node) -> sa.ColumnElement[bool]:
        if isinstance(node, And):
            return balanced(sa.and_, [self.condition(op) for op in node.operands])
        if isinstance(node, Or):
            return balanced(sa.or_, [self.condition(op) for op in _equalities_as_in(node.operands)])
        if isinstance(node, Not):
            return sa.not_(self.condition(node.operand))
        if isinstance(node, Comparison):
            return self.comparison(node)
        if isinstance(node, IsNull):
            operand = self.scalar(node.operand)
            expr = operand.expr if isinstance(operand, _Column) else sa.literal(operand.value)
            return expr.is_not(None) if node.negated else expr.is_(None)
        if isinstance(node, InList):
            return self.in_list(node)
        operand = self.scalar(node)
        if isinstance(operand, _Column):
            if operand.kind == "bool":
                return operand.expr == sa.true()
            raise self.error(
                f"{operand.name} is {_KIND_NAMES[operand.kind]}, not a condition",
                node,
                f"a comparison such as {operand.name} = ...",
            )
        if operand.kind == "bool":
            return sa.true() if operand.value else sa.false()
        raise self.error(f"{operand.description} is not a condition", node, "a comparison or a boolean")

    def comparison(self, node: Comparison) -> sa.ColumnElement[bool]:
        left, right = self.scalar(node.left), self.scalar(node.right)
        for null, other in ((left, right), (right, left)):
            if isinstance(null, _Value) and null.kind == "null":
                if node.operator not in ("=", "!="):
                    message = f"'{node.operator} NULL' is never true"
                    raise self.error(message, null.node, "IS NULL or IS NOT NULL")
                expr = other.expr if isinstance(other, _Column) else sa.literal(other.value)
                return expr.is_(None) if node.operator == "=" else expr.is_not(None)
        compare = _OPERATORS[node.operator]
        if isinstance(left, _Column) and isinstance(right, _Column):
            return compare(left.expr, right.expr)
        if isinstance(left, _Column) and isinstance(right, _Value):
            return compare(left.expr, sa.literal(self.coerce(left, right), left.expr.type))
        if isinstance(left, _Value) and isinstance(right, _Column):
            return compare(sa.literal(self.coerce(right, left), right.expr.type), right.expr)
        assert isinstance(left, _Value) and isinstance(right, _Value)
        if not (left.kind == right.kind or (left.kind in _NUMERIC and right.kind in _NUMERIC)):
            raise self.error(f"cannot compare {left.description} with {right.description}", node)
        if left.kind == "time":
            return compare(sa.literal(to_nsec(left.value)), sa.literal(to_nsec(right.value)))
        return compare(sa.literal(left.value), sa.literal(right.value))

    def in_list(self, node: InList) -> sa.ColumnElement[bool]:
        target = self.scalar(node.operand)
        if isinstance(target, _Value):
            if target.kind == "null":
                raise self.error("NULL IN (...) is never true", node.operand, "IS NULL")
            target = _Column(sa.literal(target.value), target.kind, target.description)
        values: list[Any] = []
        conditions: list[sa.ColumnElement[bool]] = []
        for item in node.items:
            if isinstance(item, RangeLiteral):
                description = f"the range {to_text(item)}"
                condition = self.range_condition(
                    target, item.start, item.stop, item.step, item, description
                )
                conditions.append(condition)
                continue
            operand = self.operand(item)
            if isinstance(operand, _Column):
                conditions.append(target.expr == operand.expr)
            elif operand.kind == "range":
                r = operand.value
                if len(r):
                    low, high = min(r[0], r[-1]), max(r[0], r[-1])
                    condition = self.range_condition(
                        target, low, high, abs(r.step), item, operand.description
                    )
                    conditions.append(condition)
            elif operand.kind == "list":
                for position, element in enumerate(operand.value):
                    kind, element = _python_kind(element)
                    described = f"{_short(element)} (item {position} of {operand.description})"
                    if kind == "str" and "\x00" in element:
                        raise self.error(f"{described} contains a NUL character at position "
                                         f"{element.index(chr(0))}", item, "strings without NUL (\\x00)")
                    values.append(self.in_value(target, _Value(element, kind, described, item)))
            else:
                values.append(self.in_value(target, operand))
        if values:
            conditions.insert(0, in_values(target.expr, values, target.kind))
        result = balanced(sa.or_, conditions) if conditions else sa.false()
        return sa.not_(result) if node.negated else result

    def in_value(self, target: _Column, value: _Value) -> Any:
        if value.kind == "null":
            raise self.error("NULL in an IN list never matches", value.node, f"{target.name} IS NULL")
        if value.kind in ("list", "range", "unsupported"):
            raise self.error(f"{value.description} cannot be an element of an IN list", value.node)
        return self.coerce(target, value)

    def range_condition(
        self, target: _Column, start: int, stop: int, step: int, node: Node, description: str
    ) -> sa.ColumnElement[bool]:
        if target.kind != "int":
            raise self.error(
                f"{target.name} is {_KIND_NAMES.get(target.kind, target.kind)} but was compared"
                f" with {description} (ranges are for integers only)",
                node,
                f"{_KIND_NAMES.get(target.kind, target.kind)} value",
            )
        between = target.expr.between(start, stop)
        if step == 1:
            return between
        return sa.and_(between, (target.expr - start) % step == 0)


def _equalities_as_in(operands: tuple[Node, ...]) -> list[Node]:
    """The operands of a long OR, with its ``identifier = value`` terms on one identifier merged
    into one IN list (so 5,000 ``visit = n`` terms are one IN, not 5,000 SQL comparisons)."""
    if len(operands) <= 64:
        return list(operands)
    merged: dict[tuple[str, str | None], list[Comparison]] = {}
    out: list[Node] = []
    for op in operands:
        if (isinstance(op, Comparison) and op.operator == "=" and isinstance(op.left, Identifier)
                and isinstance(op.right, (IntLiteral, FloatLiteral, StringLiteral, TimeLiteral))):
            group = merged.setdefault((op.left.name, op.left.field), [])
            if not group:
                out.append(op)  # placeholder, replaced below
            group.append(op)
        else:
            out.append(op)
    for i, op in enumerate(out):
        if isinstance(op, Comparison) and isinstance(op.left, Identifier):
            same = merged.get((op.left.name, op.left.field))
            if same and same[0] is op and len(same) > 1:
                out[i] = InList(op.left, tuple(c.right for c in same), column=op.column)
    return out


def to_sql(
    tree: Node | str | None,
    resolve: Resolver,
    bind: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
) -> sa.ColumnElement[bool]:
    """Translate a parsed where-expression into a SQLAlchemy boolean expression.

    Parameters
    ----------
    tree
        The result of `parse_expression`, or the expression text itself (then parsed here).
        `None` (empty expression) gives ``sqlalchemy.true()``.
    resolve
        Maps each identifier to a `ResolvedColumn`; raises `ExpressionError` if unknown
        (the identifier's position is added to the message when the resolver did not).
    bind
        Values for ``:name`` bind parameters; inside IN a value may be a list, tuple, set
        or range.
    text
        The expression text ``tree`` was parsed from, so errors can show it with a caret.

    Raises
    ------
    LocatedExpressionError
        An `ExpressionError` for type mismatches, unknown binds and the like.
    """
    if isinstance(tree, str):
        text, tree = tree, parse_expression(tree)
    if tree is None:
        return sa.true()
    return _Translator(resolve, bind, text).condition(tree)
