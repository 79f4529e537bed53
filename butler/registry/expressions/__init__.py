"""The where-expression language of the registry: parse, inspect and translate to SQL.

``parse_expression("visit > 10 AND band = 'r'")`` gives a tree of frozen nodes;
`identifiers` lists the dimensions and fields it mentions; `to_sql` turns it into a
SQLAlchemy condition with every value bound as a parameter.

The SQL half (`to_sql`, `ResolvedColumn`, `Resolver`, `Kind`) is imported lazily so that
parsing (e.g. validating a ``--where`` option in the CLI) does not import sqlalchemy.
"""

from __future__ import annotations

__all__ = [
    "And",
    "BindParameter",
    "BoolLiteral",
    "Comparison",
    "ComparisonOperator",
    "FloatLiteral",
    "Identifier",
    "InItem",
    "InList",
    "IntLiteral",
    "IsNull",
    "Kind",
    "LocatedExpressionError",
    "Node",
    "Not",
    "NullLiteral",
    "Or",
    "RangeLiteral",
    "ResolvedColumn",
    "Resolver",
    "StringLiteral",
    "TimeLiteral",
    "expression_error",
    "identifiers",
    "parse_expression",
    "to_sql",
    "to_text",
    "walk",
]

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (~7 ms)

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
    identifiers,
    to_text,
    walk,
)
from ._parser import parse_expression

if TYPE_CHECKING:
    from ._ast import ComparisonOperator, InItem
    from ._to_sql import Kind, ResolvedColumn, Resolver, to_sql

_LAZY_SQL = frozenset({"Kind", "ResolvedColumn", "Resolver", "to_sql"})


def __getattr__(name: str) -> object:
    # sqlalchemy (and typing, for the aliases) are imported only when first asked for.
    if name in _LAZY_SQL:
        from . import _to_sql

        return getattr(_to_sql, name)
    if name in ("ComparisonOperator", "InItem"):
        from . import _ast

        return getattr(_ast, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
