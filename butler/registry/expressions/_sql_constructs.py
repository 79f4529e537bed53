"""SQL constructs that keep big where-expressions within every backend's limits.

- `balanced`: a long AND/OR chain becomes a balanced tree of explicitly parenthesised groups.
  SQLite parses ``a OR b OR c ...`` into a tree as deep as the chain and refuses depth 1000
  ("Expression tree is too large"); a balanced tree of 5,000 terms is 13 deep. SQLAlchemy
  flattens nested ``or_``/``and_`` (and their ``Grouping``), so the parentheses are a construct
  of their own.
- `in_values`: a long IN list binds ONE parameter holding every value (PostgreSQL allows 65,535
  parameters per statement, SQLite 32,766): ``col = ANY(CAST(:p AS BIGINT[]))`` on PostgreSQL,
  ``col IN (SELECT value FROM json_each(:p))`` on SQLite and ``JSON_TABLE`` on MariaDB/MySQL.
  The values stay a bound parameter, never SQL text.
"""

from __future__ import annotations

__all__ = ["LONG_IN_LIST", "balanced", "in_values"]

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

if TYPE_CHECKING:
    from sqlalchemy.sql.compiler import SQLCompiler

LONG_IN_LIST = 1000
"""IN lists longer than this bind one parameter (below it, one parameter per value, as before)."""

_CHAIN = 64
"""AND/OR chains longer than this are split into a balanced tree of groups."""


class _Parenthesised(sa.ColumnElement[bool]):
    """``( element )``, which SQLAlchemy does not flatten into an enclosing AND/OR."""

    inherit_cache = True
    # SQLAlchemy's base declares the attribute per instance (a ClassVar here would contradict it).
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]  # noqa: RUF012
    type = sa.Boolean()

    def __init__(self, element: sa.ColumnElement[bool]):
        self.element = element


@compiles(_Parenthesised)
def _compile_parenthesised(element: _Parenthesised, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.element, **kw) + ")"


def balanced(join: Callable[..., sa.ColumnElement[bool]], terms: Sequence[sa.ColumnElement[bool]]
             ) -> sa.ColumnElement[bool]:
    """``join(*terms)`` (``sa.and_`` or ``sa.or_``), as a balanced tree when the chain is long."""
    if len(terms) <= _CHAIN:
        return join(*terms)
    size = -(-len(terms) // _CHAIN)  # each of at most _CHAIN groups holds `size` terms
    return join(*(_Parenthesised(balanced(join, terms[i:i + size])) for i in range(0, len(terms), size)))


class _ValueArray(sa.types.TypeDecorator[Any]):
    """A list bound as one parameter: a PostgreSQL array, JSON text elsewhere."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return list(value)
        return json.dumps(list(value))


_SQL_TYPES = {
    "postgresql": {"int": "BIGINT[]", "str": "TEXT[]", "float": "DOUBLE PRECISION[]"},
    "mysql": {"int": "BIGINT", "str": "VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
              "float": "DOUBLE"},
}


class _InValues(sa.ColumnElement[bool]):
    """``column IN (values)`` with every value in one bound parameter."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - as in _Parenthesised
        ("column", InternalTraversal.dp_clauseelement),
        ("param", InternalTraversal.dp_clauseelement),
        ("kind", InternalTraversal.dp_string),
    ]
    type = sa.Boolean()

    def __init__(self, column: sa.ColumnElement[Any], values: Sequence[Any], kind: str):
        self.column = column
        self.param = sa.bindparam(None, list(values), type_=_ValueArray())
        self.kind = kind


@compiles(_InValues)
def _compile_in_values_sqlite(element: _InValues, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} IN (SELECT value FROM json_each({compiler.process(element.param, **kw)}))"


@compiles(_InValues, "postgresql")
def _compile_in_values_postgresql(element: _InValues, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    array = _SQL_TYPES["postgresql"][element.kind]
    return f"{column} = ANY(CAST({compiler.process(element.param, **kw)} AS {array}))"


@compiles(_InValues, "mysql")
@compiles(_InValues, "mariadb")
def _compile_in_values_mysql(element: _InValues, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    sql_type = _SQL_TYPES["mysql"][element.kind]
    param = compiler.process(element.param, **kw)
    return (f"{column} IN (SELECT butler_in.v FROM JSON_TABLE({param}, '$[*]' "
            f"COLUMNS (v {sql_type} PATH '$')) AS butler_in)")


def in_values(column: sa.ColumnElement[Any], values: Sequence[Any], kind: str) -> sa.ColumnElement[bool]:
    """``column IN values``: one parameter per value for short lists, one for all of a long one.

    ``kind`` is the kind of the values once coerced ("int" and "time" are integers); kinds other
    than integers, strings and floats always use one parameter per value.
    """
    kind = "int" if kind == "time" else kind
    if kind == "int" and not all(type(v) is int for v in values):
        kind = "float"  # an integer column compared with 1.5
    if len(values) <= LONG_IN_LIST or kind not in ("int", "str", "float"):
        return column.in_(values)
    return _InValues(column, values, kind)
