"""Tokenizer and recursive-descent parser of where-expressions.

Grammar (keywords are case-insensitive, identifiers and bind names are not)::

    expression := or_expr | <empty>
    or_expr    := and_expr (OR and_expr)*
    and_expr   := not_expr (AND not_expr)*
    not_expr   := NOT* predicate
    predicate  := operand [ cmp operand | IS [NOT] NULL | [NOT] IN in_list ]
    cmp        := = | != | <> | < | <= | > | >=
    in_list    := BIND | '(' in_item (',' in_item)* ')'
    in_item    := INT '..' INT [':' INT] | value | IDENT | BIND
    operand    := value | IDENT | BIND | '(' or_expr ')'
    value      := ['-'] (INT | FLOAT) | STRING | TIME | TRUE | FALSE | NULL

Hand-written rather than generated so that every error can name the unexpected token, say
what was expected there and point at it with a caret, and so that importing the parser costs
only ``re`` and ``dataclasses``. Nesting is bounded so hostile input cannot exhaust the stack.
"""

from __future__ import annotations

__all__ = ["parse_expression", "tokenize"]

import re

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
)

if TYPE_CHECKING:
    from ._ast import ComparisonOperator

_MAX_DEPTH = 100
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE"})
_COMPARISONS: dict[object, ComparisonOperator] = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
"""The value of an ``OP`` token (``<>`` is lexed as ``!=``) as the AST's operator."""

_TOKEN_RE = re.compile(
    r"""
     (?P<ws>\s+)
    |(?P<time>[Tt](?=['"]))
    |(?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    |(?P<bind>:[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op><=|>=|!=|<>|=|<|>)
    |(?P<punct>\.\.|[(),:-])
    |(?P<quote>['"])
    """,
    re.VERBOSE | re.ASCII,
)

_VALUE_HINT = "a value, an identifier or '('"
_CONDITION_HINT = "a value, an identifier, NOT or '('"
_IN_ITEM_HINT = "a value, a range such as 1..5, an identifier or a bind parameter"


class Token:
    """One lexical token; ``pos`` is the 0-based offset of its first character.

    ``kind`` is one of INT FLOAT STRING TIME IDENT BIND KEYWORD OP EOF or the punctuation
    itself (``( ) , .. : -``); ``value`` is the decoded string, keyword or bind name.
    """

    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, pos: int, value: object = None) -> None:
        self.kind, self.text, self.pos, self.value = kind, text, pos, value

    def __repr__(self) -> str:
        return f"Token({self.kind!r}, {self.text!r}, {self.pos})"


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read the string whose opening quote is at ``start``; return (value, end offset)."""
    quote = text[start]
    i = start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            raise expression_error(
                "unterminated string",
                text,
                start + 1,
                expected=f"a closing {quote} (write {quote}{quote} for a quote inside a string)",
            )
        if text.startswith(quote, j + 1):
            i = j + 2
            continue
        return text[start + 1 : j].replace(quote * 2, quote), j + 1


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``EOF`` token."""
    tokens: list[Token] = []
    pos, end = 0, len(text)
    while pos < end:
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise expression_error(
                f"unexpected character {text[pos]!r}",
                text,
                pos + 1,
                expected="an identifier, a value, an operator or a parenthesis",
            )
        kind = match.lastgroup
        if kind == "ws":
            pos = match.end()
            continue
        if kind in ("quote", "time"):
            quote_pos = pos + (kind == "time")
            value, stop = _read_string(text, quote_pos)
            tokens.append(Token("STRING" if kind == "quote" else "TIME", text[pos:stop], pos, value))
            pos = stop
            continue
        word = match.group()
        if kind == "number":
            tokens.append(Token("FLOAT" if "." in word or "e" in word.lower() else "INT", word, pos))
        elif kind == "ident":
            upper = word.upper()
            if upper in _KEYWORDS:
                tokens.append(Token("KEYWORD", word, pos, upper))
            else:
                tokens.append(Token("IDENT", word, pos))
        elif kind == "bind":
            tokens.append(Token("BIND", word, pos, word[1:]))
        elif kind == "op":
            tokens.append(Token("OP", word, pos, "!=" if word == "<>" else word))
        else:
            tokens.append(Token(word, word, pos))
        pos = match.end()
    tokens.append(Token("EOF", "", end))
    return tokens


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    # -- helpers ---------------------------------------------------------------------------

    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_keyword(self, token: Token, *words: str) -> bool:
        return token.kind == "KEYWORD" and token.value in words

    def error(self, token: Token, expected: str) -> LocatedExpressionError:
        what = "unexpected end of expression" if token.kind == "EOF" else f"unexpected token {token.text!r}"
        return expression_error(what, self.text, token.pos + 1, expected=expected)

    def follow_hint(self) -> str:
        return "AND, OR or ')'" if self.depth else "AND, OR or end of expression"

    # -- grammar ---------------------------------------------------------------------------

    def parse(self) -> Node | None:
        if self.peek().kind == "EOF":
            return None
        node = self.parse_or()
        token = self.peek()
        if token.kind != "EOF":
            if token.kind == ")":
                raise expression_error("unmatched ')'", self.text, token.pos + 1, expected=self.follow_hint())
            raise self.error(token, self.follow_hint())
        return node

    def parse_or(self) -> Node:
        first = self.peek()
        operands = [self.parse_and()]
        while self.is_keyword(self.peek(), "OR"):
            self.advance()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands), column=first.pos + 1)

    def parse_and(self) -> Node:
        first = self.peek()
        operands = [self.parse_not()]
        while self.is_keyword(self.peek(), "AND"):
            self.advance()
            operands.append(self.parse_not())
        return operands[0] if len(operands) == 1 else And(tuple(operands), column=first.pos + 1)

    def parse_not(self) -> Node:
        nots: list[Token] = []
        while self.is_keyword(self.peek(), "NOT"):
            nots.append(self.advance())
            if len(nots) > _MAX_DEPTH:
                raise expression_error("too many nested NOTs", self.text, nots[-1].pos + 1)
        node = self.parse_predicate()
        for token in reversed(nots):
            node = Not(node, column=token.pos + 1)
        return node

    def parse_predicate(self) -> Node:
        left = self.parse_operand(_CONDITION_HINT)
        token = self.peek()
        if token.kind == "OP":
            self.advance()
            op = _COMPARISONS[token.value]
            right = self.parse_operand(_VALUE_HINT)
            return Comparison(op, left, right, column=token.pos + 1)
        if self.is_keyword(token, "IS"):
            self.advance()
            negated = self.is_keyword(self.peek(), "NOT")
            if negated:
                self.advance()
            if not self.is_keyword(self.peek(), "NULL"):
                raise self.error(self.peek(), "NULL or NOT NULL after IS")
            self.advance()
            return IsNull(left, negated, column=token.pos + 1)
        if self.is_keyword(token, "NOT"):
            self.advance()
            if not self.is_keyword(self.peek(), "IN"):
                raise self.error(self.peek(), "IN after NOT")
            return self.parse_in(left, self.advance(), negated=True)
        if self.is_keyword(token, "IN"):
            return self.parse_in(left, self.advance(), negated=False)
        if not (self.is_keyword(token, "AND", "OR") or token.kind in ("EOF", ")")):
            hint = "a comparison operator (= != < <= > >=), IN, IS, " + self.follow_hint()
            raise self.error(token, hint)
        return left

    def parse_in(self, operand: Node, in_token: Token, *, negated: bool) -> InList:
        column = in_token.pos + 1
        token = self.peek()
        if token.kind == "BIND":
            self.advance()
            items: list[Node] = [BindParameter(str(token.value), column=token.pos + 1)]
            return InList(operand, tuple(items), negated, column=column)
        if token.kind != "(":
            raise self.error(token, "'(' or a bind parameter after IN")
        self.advance()
        items = []
        while True:
            items.append(self.parse_in_item())
            token = self.advance()
            if token.kind == ")":
                return InList(operand, tuple(items), negated, column=column)
            if token.kind != ",":
                self.index -= 1
                raise self.error(token, "',' or ')'")

    def parse_in_item(self) -> Node:
        token = self.peek()
        if token.kind not in ("-", "INT", "FLOAT"):
            return self.parse_operand(_IN_ITEM_HINT, allow_parenthesis=False)
        start = self.parse_number(_IN_ITEM_HINT)
        dots = self.peek()
        if dots.kind != "..":
            return start
        if not isinstance(start, IntLiteral):
            raise expression_error("range bounds must be integers", self.text, start.column)
        self.advance()
        stop = self.parse_number("an integer after '..'")
        if not isinstance(stop, IntLiteral):
            raise expression_error("range bounds must be integers", self.text, stop.column)
        step = 1
        if self.peek().kind == "BIND":  # "1..5:x" lexes as a bind parameter ":x"
            raise self.error(self.peek(), "a positive integer step after ':'")
        if self.peek().kind == ":":
            self.advance()
            step_token = self.peek()
            if step_token.kind != "INT":
                raise self.error(step_token, "a positive integer step after ':'")
            step = int(self.parse_number("a positive integer step").value)  # an INT token: an IntLiteral
            if step == 0:
                raise expression_error(
                    "range step must be positive, not 0", self.text, step_token.pos + 1
                )
        if stop.value < start.value:
            raise expression_error(
                f"range {start.value}..{stop.value} is empty (its end is before its start)",
                self.text,
                start.column,
                expected=f"an end >= the start, e.g. {stop.value}..{start.value}",
            )
        return RangeLiteral(start.value, stop.value, step, column=start.column)

    def parse_number(self, expected: str) -> IntLiteral | FloatLiteral:
        token = self.advance()
        sign = 1
        column = token.pos + 1
        if token.kind == "-":
            sign, token = -1, self.advance()
        if token.kind == "INT":
            if len(token.text) > 20 or not _INT64_MIN <= sign * int(token.text) <= _INT64_MAX:
                raise expression_error(
                    "integer out of range", self.text, token.pos + 1, expected="a 64-bit integer"
                )
            return IntLiteral(sign * int(token.text), column=column)
        if token.kind == "FLOAT":
            value = sign * float(token.text)
            if value in (float("inf"), float("-inf")):
                raise expression_error("number too large", self.text, token.pos + 1)
            return FloatLiteral(value, column=column)
        self.index -= 1
        raise self.error(token, "a number after '-'" if sign < 0 else expected)

    def parse_operand(self, expected: str, *, allow_parenthesis: bool = True) -> Node:
        token = self.peek()
        column = token.pos + 1
        if token.kind in ("-", "INT", "FLOAT"):
            number = self.parse_number(expected)
            if self.peek().kind == "..":
                raise expression_error(
                    "unexpected range '..' (ranges such as 5..10 are only allowed inside IN"
                    " lists, e.g. visit IN (5..10))",
                    self.text,
                    self.peek().pos + 1,
                    expected=self.follow_hint(),
                )
            return number
        self.advance()
        if token.kind == "STRING":
            return StringLiteral(str(token.value), column=column)
        if token.kind == "TIME":
            from ..._time import to_nsec  # lazily: datetime is not needed to parse most text

            try:
                to_nsec(str(token.value))
            except ValueError as err:
                raise expression_error(f"invalid time {token.text}: {err}", self.text, column) from None
            return TimeLiteral(str(token.value), column=column)
        if token.kind == "IDENT":
            name, _, field = token.text.partition(".")
            return Identifier(name, field or None, column=column)
        if token.kind == "BIND":
            return BindParameter(str(token.value), column=column)
        if token.kind == "KEYWORD" and token.value in ("TRUE", "FALSE"):
            return BoolLiteral(token.value == "TRUE", column=column)
        if token.kind == "KEYWORD" and token.value == "NULL":
            return NullLiteral(column=column)
        if token.kind == "(" and allow_parenthesis:
            if self.depth >= _MAX_DEPTH:
                raise expression_error("parentheses nested too deeply", self.text, column)
            self.depth += 1
            node = self.parse_or()
            self.depth -= 1
            close = self.advance()
            if close.kind != ")":
                self.index -= 1
                raise self.error(close, f"')' to close the '(' at column {column}")
            return node
        self.index -= 1
        raise self.error(token, expected)


def parse_expression(text: str) -> Node | None:
    """Parse a where-expression; return `None` if ``text`` is empty or only whitespace.

    Raises
    ------
    LocatedExpressionError
        An `~butler.errors.ExpressionError` (a `ValueError`) with ``.column``,
        ``.expression`` and a caret under the problem in its message.
    """
    if not isinstance(text, str):
        raise LocatedExpressionError(
            f"a where-expression must be a string, not {type(text).__name__}", None, 0
        )
    if "\x00" in text:  # PostgreSQL cannot compare it; no backend can store it in a name
        position = text.index("\x00")
        raise LocatedExpressionError(
            f"the where-expression contains a NUL character (\\x00) at position {position} (after "
            f"{text[max(0, position - 20):position]!r}); remove it", None, position + 1
        )
    return _Parser(text).parse()
