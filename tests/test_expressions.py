"""Tests of the where-expression language: parsing, errors, SQL translation and injection.

Expressions run against a real in-memory SQLite table so the tests check which rows are
selected, not what SQL text is produced.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from butler._time import from_nsec, to_nsec
from butler.errors import ExpressionError
from butler.registry.expressions import (
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
    ResolvedColumn,
    StringLiteral,
    TimeLiteral,
    expression_error,
    identifiers,
    parse_expression,
    to_sql,
    to_text,
)

HOUR = 3600 * 10**9
T0 = to_nsec("2026-11-24T00:00:00")

# id, exposure_time, band, begin (nsec), good
ROWS = [
    (1, 30.0, "g", T0, True),
    (2, 15.0, "r", T0 + 1 * HOUR, True),
    (3, None, "r", T0 + 2 * HOUR, False),
    (5, 30.0, "i", T0 + 3 * HOUR, None),
    (7, 60.0, None, T0 + 24 * HOUR, True),
    (10, 15.0, "r", T0 + 25 * HOUR, False),
    (12, 30.0, "z", None, True),
    (20, 1.5, "g", T0 + 48 * HOUR, True),
]
ALL_IDS = frozenset(row[0] for row in ROWS)

METADATA = sa.MetaData()
VISIT = sa.Table(
    "visit",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("exposure_time", sa.Float),
    sa.Column("band", sa.String),
    sa.Column("begin", sa.BigInteger),
    sa.Column("good", sa.Boolean),
)
COLUMNS = {
    ("visit", None): ResolvedColumn(VISIT.c.id, "int"),
    ("band", None): ResolvedColumn(VISIT.c.band, "str"),
    ("visit", "exposure_time"): ResolvedColumn(VISIT.c.exposure_time, "float"),
    ("visit", "band"): ResolvedColumn(VISIT.c.band, "str"),
    ("visit", "begin"): ResolvedColumn(VISIT.c.begin, "time"),
    ("visit", "good"): ResolvedColumn(VISIT.c.good, "bool"),
}


def resolve(identifier: Identifier) -> ResolvedColumn:
    """Stand-in for the query builder's resolver; raises without a position on purpose."""
    try:
        return COLUMNS[identifier.name, identifier.field]
    except KeyError:
        raise ExpressionError(f"unknown dimension or field {identifier}") from None


@pytest.fixture(scope="module")
def engine() -> sa.Engine:
    eng = sa.create_engine("sqlite://")
    METADATA.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            VISIT.insert(),
            [dict(zip(("id", "exposure_time", "band", "begin", "good"), row)) for row in ROWS],
        )
    return eng


def select_ids(engine: sa.Engine, where: str, bind: dict[str, object] | None = None) -> set[int]:
    condition = to_sql(parse_expression(where), resolve, bind, text=where)
    with engine.connect() as conn:
        return set(conn.execute(sa.select(VISIT.c.id).where(condition)).scalars())


# -- selection ---------------------------------------------------------------------------

SELECT_CASES = [
    pytest.param("visit > 10", None, {12, 20}, id="gt"),
    pytest.param("visit > 10 and band = 'g'", None, {20}, id="and-lowercase"),
    pytest.param("band = 'r' OR band = 'g' AND visit > 10", None, {2, 3, 10, 20}, id="and-binds-tighter"),
    pytest.param("(band = 'r' OR band = 'g') AND visit > 5", None, {10, 20}, id="parentheses"),
    pytest.param("NOT band = 'r' AND visit < 5", None, {1}, id="not-binds-tightest"),
    pytest.param("NOT (band = 'r' AND visit < 5)", None, ALL_IDS - {2, 3}, id="not-parenthesised"),
    pytest.param("visit != 1 AND visit <> 2 AND visit <= 5", None, {3, 5}, id="ne"),
    pytest.param("visit IN (1, 2, 5..10, 20..30:2)", None, {1, 2, 5, 7, 10, 20}, id="in-ranges"),
    pytest.param("visit IN (0..20:5)", None, {5, 10, 20}, id="in-step"),
    pytest.param("visit NOT IN (1..5)", None, {7, 10, 12, 20}, id="not-in-range"),
    pytest.param("visit IN (-5..1, -1)", None, {1}, id="negative"),
    pytest.param("band NOT IN ('g', \"r\")", None, {5, 12}, id="not-in-strings"),
    pytest.param("band IS NULL", None, {7}, id="is-null"),
    pytest.param(
        "visit.exposure_time IS NOT NULL AND visit.exposure_time < 20", None, {2, 10, 20}, id="is-not-null"
    ),
    pytest.param("band = NULL", None, {7}, id="eq-null-is-null"),
    pytest.param("visit.exposure_time = 30", None, {1, 5, 12}, id="int-vs-float"),
    pytest.param("visit.exposure_time >= 1.5e1", None, ALL_IDS - {3, 20}, id="float-exponent"),
    pytest.param("visit.exposure_time > visit", None, ALL_IDS - {3, 20}, id="column-vs-column"),
    pytest.param("band = :band", {"band": "r"}, {2, 3, 10}, id="bind-scalar"),
    pytest.param("visit IN :v", {"v": [1, 7, 99]}, {1, 7}, id="bind-list"),
    pytest.param("visit IN :v", {"v": {3, 5}}, {3, 5}, id="bind-set"),
    pytest.param("visit IN (:v, 20)", {"v": (1, 2)}, {1, 2, 20}, id="bind-tuple-in-list"),
    pytest.param("visit IN :v", {"v": range(1, 8, 2)}, {1, 3, 5, 7}, id="bind-range"),
    pytest.param("visit IN :v", {"v": range(12, 0, -5)}, {2, 7, 12}, id="bind-range-negative-step"),
    pytest.param("visit IN :v", {"v": []}, set(), id="bind-empty"),
    pytest.param("visit NOT IN :v", {"v": []}, ALL_IDS, id="bind-empty-negated"),
    pytest.param("visit.begin >= T'2026-11-25'", None, {7, 10, 20}, id="time-date"),
    pytest.param("visit.begin < t'2026-11-24T02:00:00'", None, {1, 2}, id="time-datetime"),
    pytest.param("visit.begin > '2026-11-25 00:30'", None, {10, 20}, id="time-string"),
    pytest.param(
        "visit.begin = :t", {"t": datetime(2026, 11, 24, 1, tzinfo=UTC)}, {2}, id="time-bind-dt"
    ),
    pytest.param("visit.begin = :t", {"t": "2026-11-24T03:00:00+02:00"}, {2}, id="time-bind-offset"),
    pytest.param("visit.begin IN (T'2026-11-24', :t)", {"t": date(2026, 11, 26)}, {1, 20}, id="time-in"),
    pytest.param("visit.good", None, {1, 2, 7, 12, 20}, id="bool-column"),
    pytest.param("NOT visit.good", None, {3, 10}, id="bool-not"),
    pytest.param("visit.good = FALSE OR :flag", {"flag": False}, {3, 10}, id="bool-literal-bind"),
    pytest.param("", None, ALL_IDS, id="empty"),
    pytest.param(" \n\t", None, ALL_IDS, id="whitespace"),
]


@pytest.mark.parametrize(("where", "bind", "expected"), SELECT_CASES)
def test_select(engine: sa.Engine, where: str, bind: dict[str, object] | None, expected: set[int]) -> None:
    assert select_ids(engine, where, bind) == set(expected)


def test_empty_is_none() -> None:
    assert parse_expression("") is None
    assert parse_expression("  ") is None
    assert identifiers(None) == []


def test_identifiers() -> None:
    text = "visit > 1 AND visit.exposure_time < 3 OR band IN ('r', x.y)"
    found = identifiers(parse_expression(text))
    assert [(i.name, i.field, i.column) for i in found] == [
        ("visit", None, 1),
        ("visit", "exposure_time", 15),
        ("band", None, 42),
        ("x", "y", 56),
    ]


def test_tree_shape() -> None:
    tree = parse_expression("a = 1 OR NOT b IN (1..3:2, :c) AND c.d IS NULL")
    assert tree == Or(
        (
            Comparison("=", Identifier("a"), IntLiteral(1)),
            And(
                (
                    Not(InList(Identifier("b"), (RangeLiteral(1, 3, 2), BindParameter("c")))),
                    IsNull(Identifier("c", "d")),
                )
            ),
        )
    )


# -- errors ------------------------------------------------------------------------------

PARSE_ERRORS = [
    ("visit IN (1, )", 14, "unexpected token ')' at column 14 (expected a value"),
    ("visit = 1; DROP TABLE visit", 10, "unexpected character ';'"),
    ("band = 'r", 8, "unterminated string"),
    ('band = "r', 8, 'expected a closing "'),
    ("visit = 5..10", 10, "only allowed inside IN lists"),
    ("5..10", 2, "only allowed inside IN lists"),
    ("visit IN (1..5:0)", 16, "step must be positive"),
    ("visit IN (1..5:x)", 15, "expected a positive integer step"),
    ("visit IN (1..5:)", 16, "expected a positive integer step"),
    ("visit IN (10..5)", 11, "is empty"),
    ("visit IN (1.5..3)", 11, "range bounds must be integers"),
    ("visit = 1 )", 11, "unmatched ')'"),
    ("(visit = 1", 11, "expected ')' to close the '(' at column 1"),
    ("visit 5", 7, "expected a comparison operator"),
    ("visit IS 5", 10, "expected NULL or NOT NULL"),
    ("visit NOT 5", 11, "expected IN after NOT"),
    ("visit IN 5", 10, "expected '(' or a bind parameter"),
    ("visit IN ()", 11, "expected a value"),
    ("visit IN (1 2)", 13, "expected ',' or ')'"),
    ("visit = T'2026-13-01'", 9, "invalid time"),
    ("visit = 99999999999999999999", 9, "out of range"),
    ("visit = -band", 10, "expected a number after '-'"),
    ("visit = 1 -- comment", 11, "unexpected token '-'"),
    ("visit == 1", 8, "expected a value, an identifier or '('"),
    ("visit = ", 9, "unexpected end of expression"),
    ("AND visit = 1", 1, "expected a value, an identifier, NOT or '('"),
    ("visit = 1 AND", 14, "unexpected end of expression"),
    ("a.b.c = 1", 4, "unexpected character '.'"),
    ("(" * 200 + "visit = 1" + ")" * 200, 101, "nested too deeply"),
]


def _check_caret(err: LocatedExpressionError, text: str, column: int) -> None:
    assert isinstance(err, ExpressionError) and isinstance(err, ValueError)
    assert err.column == column
    assert err.expression == text
    *_, shown, caret = str(err).split("\n")
    assert shown == "  " + text.split("\n")[-1]
    assert caret == " " * (column + 1) + "^"


@pytest.mark.parametrize(("text", "column", "message"), PARSE_ERRORS, ids=[c[0][:30] for c in PARSE_ERRORS])
def test_parse_error(text: str, column: int, message: str) -> None:
    with pytest.raises(LocatedExpressionError) as info:
        parse_expression(text)
    assert message in str(info.value)
    _check_caret(info.value, text, column)


def test_error_message_format() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("visit IN (1, )")
    assert str(info.value).startswith("unexpected token ')' at column 14 (expected ")
    assert str(info.value).endswith(":\n  visit IN (1, )\n               ^")


def test_multiline_error_points_at_line() -> None:
    text = "visit = 1\n  AND band = ;"
    with pytest.raises(LocatedExpressionError) as info:
        parse_expression(text)
    assert info.value.line == 2 and info.value.column == len(text)
    assert "line 2, column 14" in str(info.value)
    assert str(info.value).endswith("\n    AND band = ;\n               ^")


def test_error_pickles() -> None:
    err = expression_error("bad", "visit = x", 9, expected="good")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.expression, copy.column) == (str(err), "visit = x", 9)


TRANSLATION_ERRORS = [
    ("visit = 'abc'", None, 9, "visit is an integer but was compared with the string 'abc'"),
    ("band = 5", None, 8, "band is a string but was compared with the integer 5"),
    ("band IN ('r', 2.5)", None, 15, "band is a string but was compared with the number 2.5"),
    ("visit = T'2026-11-24'", None, 9, "visit is an integer but was compared with the time"),
    ("visit.begin = 1.5", None, 15, "visit.begin is a time"),
    ("visit.begin = 'yesterday'", None, 15, "is not a valid time"),
    ("foo = 1", None, 1, "unknown dimension or field foo"),
    ("visit > 1 AND x.y = 1", None, 15, "unknown dimension or field x.y"),
    (
        "visit = :nope",
        {"a": 1, "b": 2},
        9,
        "bind parameter :nope is not defined at column 9 (expected one of the binds given (:a, :b))",
    ),
    ("visit = :nope", None, 9, "none were given"),
    ("visit = :v", {"v": [1, 2]}, 9, "collection"),
    ("visit IN :v", {"v": [1, "x"]}, 10, "visit is an integer but was compared with 'x'"),
    ("visit = :v", {"v": object()}, 9, "unsupported type"),
    ("band IN (1..3)", None, 10, "ranges are for integers only"),
    ("visit", None, 1, "not a condition"),
    ("visit < NULL", None, 9, "expected IS NULL or IS NOT NULL"),
    ("visit IN (1, NULL)", None, 14, "NULL in an IN list"),
    ("'a' = 1", None, 5, "cannot compare"),
]


@pytest.mark.parametrize(
    ("text", "bind", "column", "message"), TRANSLATION_ERRORS, ids=[c[0] for c in TRANSLATION_ERRORS]
)
def test_translation_error(text: str, bind: dict[str, object] | None, column: int, message: str) -> None:
    with pytest.raises(LocatedExpressionError) as info:
        to_sql(parse_expression(text), resolve, bind, text=text)
    assert message in str(info.value)
    _check_caret(info.value, text, column)
    # Without the text the position is still known, just not drawn.
    with pytest.raises(LocatedExpressionError) as bare:
        to_sql(parse_expression(text), resolve, bind)
    assert bare.value.column == column and "^" not in str(bare.value)


def test_to_sql_accepts_text_and_none() -> None:
    assert str(to_sql("visit = 1", resolve).compile()) == "visit.id = :param_1"
    assert to_sql(None, resolve).compare(sa.true())


# -- SQL injection -----------------------------------------------------------------------

HOSTILE = ["r'; DROP TABLE visit; --", "1 OR 1=1", "' OR '1'='1", 'r"; DELETE FROM visit; --', "r\\'; --"]


def _intact(engine: sa.Engine) -> None:
    assert sa.inspect(engine).has_table("visit")
    assert select_ids(engine, "") == ALL_IDS


@pytest.mark.parametrize("value", HOSTILE)
def test_injection_literal(engine: sa.Engine, value: str) -> None:
    where = "band = " + to_text(StringLiteral(value))
    assert select_ids(engine, where) == set()
    assert "DROP" not in str(to_sql(where, resolve).compile(engine))
    _intact(engine)


@pytest.mark.parametrize("value", HOSTILE)
def test_injection_bind(engine: sa.Engine, value: str) -> None:
    assert select_ids(engine, "band = :b", {"b": value}) == set()
    assert select_ids(engine, "band IN :b", {"b": [value, value + "x"]}) == set()
    assert select_ids(engine, "band NOT IN (:b) AND visit = 1", {"b": value}) == {1}
    with pytest.raises(ExpressionError, match="visit is an integer"):
        select_ids(engine, "visit = :b", {"b": value})
    _intact(engine)


def test_injection_in_where_text_rejected(engine: sa.Engine) -> None:
    for where in ("band = 'r'; DROP TABLE visit", "visit = 1; --", "visit = 1 /* x */"):
        with pytest.raises(ExpressionError, match="unexpected character"):
            select_ids(engine, where)
    _intact(engine)


# -- properties --------------------------------------------------------------------------

KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE"}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s.upper() not in KEYWORDS
)
ints = st.integers(-(2**63), 2**63 - 1)
values: st.SearchStrategy[Node] = st.one_of(
    ints.map(IntLiteral),
    st.floats(allow_nan=False, allow_infinity=False).map(FloatLiteral),
    # Any text but NUL, which no valid expression holds (refused: test_a_nul_in_a_literal_is_refused).
    st.text(st.characters(blacklist_characters="\x00"), max_size=8).map(StringLiteral),
    st.booleans().map(BoolLiteral),
    st.datetimes(datetime(1900, 1, 1), datetime(2100, 1, 1)).map(lambda d: TimeLiteral(d.isoformat())),
    st.just(NullLiteral()),
    names.map(BindParameter),
)
idents = st.builds(Identifier, names, st.none() | names)
operands = values | idents
ranges = st.builds(
    lambda start, length, step: RangeLiteral(start, start + length, step),
    st.integers(-1000, 1000),
    st.integers(0, 100),
    st.integers(1, 10),
)
predicates: st.SearchStrategy[Node] = st.one_of(
    st.builds(Comparison, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), operands, operands),
    st.builds(IsNull, operands, st.booleans()),
    st.builds(
        InList, operands, st.lists(values | idents | ranges, min_size=1, max_size=4).map(tuple), st.booleans()
    ),
    idents,
    st.booleans().map(BoolLiteral),
)
trees = st.recursive(
    predicates,
    lambda children: st.one_of(
        children.map(Not),
        st.lists(children, min_size=2, max_size=3).map(lambda ops: And(tuple(ops))),
        st.lists(children, min_size=2, max_size=3).map(lambda ops: Or(tuple(ops))),
        st.builds(Comparison, st.just("="), children, st.booleans().map(BoolLiteral)),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(trees)
def test_round_trip(tree: Node) -> None:
    text = to_text(tree)
    parsed = parse_expression(text)
    assert parsed == tree
    assert str(parsed) == text


def test_a_nul_in_a_literal_is_refused() -> None:
    with pytest.raises(LocatedExpressionError, match=r"NUL character .* at position 1"):
        parse_expression(to_text(StringLiteral("\x00")))


TOKEN_SOUP = ["visit", "x.y", "(", ")", "IN", "NOT", "..", ":", ":b", "5", "-", "1.5e3", "'s'",
              "T'2026-11-24'", ",", "AND", "OR", "=", "<>", "IS", "NULL", ";", "'", '"', "T", "."]


@settings(max_examples=200, deadline=None)
@given(st.text() | st.lists(st.sampled_from(TOKEN_SOUP), max_size=12).map(" ".join))
def test_parse_only_raises_expression_error(text: str) -> None:
    try:
        parse_expression(text)
    except ExpressionError as err:
        assert isinstance(err, LocatedExpressionError) and 1 <= err.column <= len(text) + 1


def _expand(start: int, stop: int, step: int) -> range:
    return range(start, stop + 1, step)


range_triples = st.tuples(st.integers(-5, 25), st.integers(0, 15), st.integers(1, 6)).map(
    lambda t: (t[0], t[0] + t[1], t[2])
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(range_triples, min_size=1, max_size=4), st.lists(st.integers(-3, 25), max_size=3), st.booleans()
)
def test_range_in_lists_select_like_python(
    engine: sa.Engine, triples: list[tuple[int, int, int]], extra: list[int], negated: bool
) -> None:
    items = [f"{a}..{b}:{s}" for a, b, s in triples] + [str(v) for v in extra]
    where = f"visit {'NOT ' if negated else ''}IN ({', '.join(items)})"
    selected = {i for i in ALL_IDS if any(i in _expand(*t) for t in triples) or i in extra}
    assert select_ids(engine, where) == (ALL_IDS - selected if negated else selected)
    # The same through binds holding Python ranges and a list.
    bind: dict[str, object] = {f"r{n}": _expand(*t) for n, t in enumerate(triples)}
    where = f"visit IN ({', '.join(':' + name for name in bind)}, :extra)"
    assert select_ids(engine, where, {**bind, "extra": extra}) == selected


# -- times -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-24T03:00:00", T0 + 3 * HOUR),
        ("2026-11-24T03:00:00.5", T0 + 3 * HOUR + 500_000_000),
        ("2026-11-24T03:00:00.123456789Z", T0 + 3 * HOUR + 123_456_789),
        ("2026-11-24 03:00", T0 + 3 * HOUR),
        ("2026-11-24", T0),
        ("2026-11-24T05:00:00+02:00", T0 + 3 * HOUR),
        (datetime(2026, 11, 24, 3), T0 + 3 * HOUR),
        (datetime(2026, 11, 24, 4, tzinfo=timezone(timedelta(hours=1))), T0 + 3 * HOUR),
        (date(2026, 11, 24), T0),
        (T0 + 7, T0 + 7),
        ("1970-01-01", 0),
        ("1969-12-31T23:59:59.999999999", -1),
    ],
)
def test_to_nsec(value: object, expected: int) -> None:
    assert to_nsec(value) == expected


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01", "2026-11-24T23:59:60", "", 1.5, True, None, [1]]
)
def test_to_nsec_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="ISO-8601") as info:
        to_nsec(value)
    assert repr(value) in str(info.value)


def test_from_nsec() -> None:
    assert from_nsec(T0 + 1_500) == datetime(2026, 11, 24, 0, 0, 0, 1, tzinfo=UTC)
    assert from_nsec(-1) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert to_nsec(from_nsec(T0 + 123_456_000)) == T0 + 123_456_000
    with pytest.raises(ValueError):
        from_nsec(10**30)


def test_to_nsec_astropy() -> None:
    time = pytest.importorskip("astropy.time")
    t = time.Time("2026-11-24T03:00:00.123456789", scale="utc", precision=9)
    assert to_nsec(t) == T0 + 3 * HOUR + 123_456_789
    assert to_nsec(t.tai) == T0 + 3 * HOUR + 123_456_789
    with pytest.raises(ValueError, match="array"):
        to_nsec(time.Time(["2026-11-24", "2026-11-25"]))


def test_parser_import_is_light() -> None:
    code = (
        "import sys, butler.registry.expressions as e; e.parse_expression(\"a = T'2026-11-24'\");"
        "bad = {'sqlalchemy', 'astropy'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
