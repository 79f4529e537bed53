"""Syntax tree of where-expressions, its printer and the positioned error type.

Nodes are frozen, slotted dataclasses so trees are cheap, hashable and comparable. Every node
records ``column``, the 1-based character position of its first token in the expression text,
so later stages (type checks, unknown identifiers) can point at the offending text; positions
are excluded from equality so a tree printed with `to_text` and re-parsed compares equal.

This module must not import sqlalchemy: parsing has to stay cheap for the CLI.
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
    "LocatedExpressionError",
    "Node",
    "Not",
    "NullLiteral",
    "Or",
    "RangeLiteral",
    "StringLiteral",
    "TimeLiteral",
    "expression_error",
    "identifiers",
    "to_text",
    "walk",
]

from dataclasses import dataclass, field

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (~7 ms)

from butler.errors import ExpressionError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Literal, TypeAlias

    ComparisonOperator: TypeAlias = Literal["=", "!=", "<", "<=", ">", ">="]


class LocatedExpressionError(ExpressionError):
    """An `ExpressionError` that knows where in the expression text the problem is.

    Attributes
    ----------
    expression : `str` or `None`
        The full expression text (`None` when the caller did not supply it).
    column : `int`
        1-based character position in ``expression`` (the column, for one-line text).
    line : `int`
        1-based line of ``column`` in ``expression``.
    """

    def __init__(self, message: str, expression: str | None, column: int, line: int = 1) -> None:
        super().__init__(message)
        self.expression = expression
        self.column = column
        self.line = line

    def __reduce__(self) -> tuple[type[LocatedExpressionError], tuple[str, str | None, int, int]]:
        return (type(self), (str(self), self.expression, self.column, self.line))


def expression_error(
    message: str, text: str | None, column: int, *, expected: str | None = None
) -> LocatedExpressionError:
    """Make an error whose message ends with the position and a caret under the text.

    ``column`` is the 1-based character position in ``text`` (as stored on nodes);
    ``expected`` is a hint such as ``"a value, an identifier or '('"``.
    """
    hint = f" (expected {expected})" if expected else ""
    if text is None:
        return LocatedExpressionError(f"{message} at column {column}{hint}", None, column)
    offset = min(max(column - 1, 0), len(text))
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_text = text[line_start : line_end if line_end >= 0 else len(text)]
    line_no = text.count("\n", 0, offset) + 1
    in_line = offset - line_start + 1
    where = f"column {in_line}" if "\n" not in text else f"line {line_no}, column {in_line}"
    # Keep tabs so the caret lines up however the terminal expands them.
    pad = "".join("\t" if c == "\t" else " " for c in line_text[: in_line - 1])
    full = f"{message} at {where}{hint}:\n  {line_text}\n  {pad}^"
    return LocatedExpressionError(full, text, column, line_no)


class Node:
    """Base class of every syntax-tree node; ``str(node)`` is re-parseable text."""

    __slots__ = ()

    column: int
    """1-based character position of the node's first token (operator for predicates)."""

    def __str__(self) -> str:
        return to_text(self)


def _pos() -> int:
    return field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class IntLiteral(Node):
    """An integer, e.g. ``42`` or ``-3`` (unary minus is folded in)."""

    value: int
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class FloatLiteral(Node):
    """A floating-point number, e.g. ``1.5`` or ``1e3``."""

    value: float
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class StringLiteral(Node):
    """A quoted string; the value has the quotes removed and doubled quotes undone."""

    value: str
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class BoolLiteral(Node):
    """``TRUE`` or ``FALSE``."""

    value: bool
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class TimeLiteral(Node):
    """``T'2026-11-24T03:00:00'``: an ISO-8601 UTC time, kept as text (validated at parse)."""

    value: str
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class NullLiteral(Node):
    """``NULL``."""

    column: int = _pos()


@dataclass(frozen=True, slots=True)
class Identifier(Node):
    """A dimension (``visit``) or a field of a dimension element (``visit.exposure_time``)."""

    name: str
    field: str | None = None
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class BindParameter(Node):
    """``:name``, replaced by ``bind[name]`` at translation time."""

    name: str
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class RangeLiteral(Node):
    """``start..stop[:step]``, inclusive integers; only valid as an item of an IN list."""

    start: int
    stop: int
    step: int = 1
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class Comparison(Node):
    """``left <op> right``; ``<>`` is stored as ``!=``. ``column`` is the operator's."""

    operator: ComparisonOperator
    left: Node
    right: Node
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class IsNull(Node):
    """``operand IS NULL`` or, if ``negated``, ``operand IS NOT NULL``."""

    operand: Node
    negated: bool = False
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class InList(Node):
    """``operand [NOT] IN (items)``; ``operand IN :bind`` is stored as a one-bind list."""

    operand: Node
    items: tuple[Node, ...]
    negated: bool = False
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class Not(Node):
    """``NOT operand``."""

    operand: Node
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class And(Node):
    """Two or more operands joined by AND (a flat chain, so long chains do not recurse)."""

    operands: tuple[Node, ...]
    column: int = _pos()


@dataclass(frozen=True, slots=True)
class Or(Node):
    """Two or more operands joined by OR."""

    operands: tuple[Node, ...]
    column: int = _pos()


if TYPE_CHECKING:
    InItem: TypeAlias = (
        IntLiteral
        | FloatLiteral
        | StringLiteral
        | BoolLiteral
        | TimeLiteral
        | NullLiteral
        | Identifier
        | BindParameter
        | RangeLiteral
    )
    """What the parser accepts as an item of an IN list."""


def __getattr__(name: str) -> Any:
    # The type aliases are built on first use so that importing this module skips typing.
    if name == "ComparisonOperator":
        from typing import Literal

        return Literal["=", "!=", "<", "<=", ">", ">="]
    if name == "InItem":
        from typing import Union

        return Union[  # noqa: UP007
            IntLiteral,
            FloatLiteral,
            StringLiteral,
            BoolLiteral,
            TimeLiteral,
            NullLiteral,
            Identifier,
            BindParameter,
            RangeLiteral,
        ]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def walk(node: Node) -> Iterator[Node]:
    """Yield ``node`` and all its descendants, depth first, in textual order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, Comparison):
            stack.extend((current.right, current.left))
        elif isinstance(current, (IsNull, Not)):
            stack.append(current.operand)
        elif isinstance(current, InList):
            stack.extend(reversed(current.items))
            stack.append(current.operand)
        elif isinstance(current, (And, Or)):
            stack.extend(reversed(current.operands))


def identifiers(tree: Node | None) -> list[Identifier]:
    """Return every identifier in ``tree`` in textual order (repeats included)."""
    if tree is None:
        return []
    return [node for node in walk(tree) if isinstance(node, Identifier)]


# Binding strength used to decide where the printer needs parentheses.
_OR, _AND, _NOT, _PREDICATE, _ATOM = range(5)


def _level(node: Node) -> int:
    if isinstance(node, Or):
        return _OR
    if isinstance(node, And):
        return _AND
    if isinstance(node, Not):
        return _NOT
    if isinstance(node, (Comparison, IsNull, InList)):
        return _PREDICATE
    return _ATOM


def _wrap(node: Node, min_level: int) -> str:
    text = to_text(node)
    return text if _level(node) >= min_level else f"({text})"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def to_text(node: Node) -> str:
    """Print ``node`` as expression text that parses back to an equal tree."""
    if isinstance(node, BoolLiteral):
        return "TRUE" if node.value else "FALSE"
    if isinstance(node, (IntLiteral, FloatLiteral)):
        return repr(node.value)
    if isinstance(node, StringLiteral):
        return _quote(node.value)
    if isinstance(node, TimeLiteral):
        return "T" + _quote(node.value)
    if isinstance(node, NullLiteral):
        return "NULL"
    if isinstance(node, Identifier):
        return node.name if node.field is None else f"{node.name}.{node.field}"
    if isinstance(node, BindParameter):
        return f":{node.name}"
    if isinstance(node, RangeLiteral):
        step = f":{node.step}" if node.step != 1 else ""
        return f"{node.start}..{node.stop}{step}"
    if isinstance(node, Comparison):
        return f"{_wrap(node.left, _ATOM)} {node.operator} {_wrap(node.right, _ATOM)}"
    if isinstance(node, IsNull):
        return f"{_wrap(node.operand, _ATOM)} IS {'NOT ' if node.negated else ''}NULL"
    if isinstance(node, InList):
        items = ", ".join(to_text(item) for item in node.items)
        return f"{_wrap(node.operand, _ATOM)} {'NOT ' if node.negated else ''}IN ({items})"
    if isinstance(node, Not):
        return f"NOT {_wrap(node.operand, _NOT)}"
    if isinstance(node, And):
        return " AND ".join(_wrap(op, _NOT) for op in node.operands)
    if isinstance(node, Or):
        return " OR ".join(_wrap(op, _AND) for op in node.operands)
    raise TypeError(f"not an expression node: {node!r}")
