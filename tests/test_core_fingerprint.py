"""SQL statement fingerprints (``fingerprint(sql) -> (key, statement_count)``),
run against both implementations, plus differential tests: on any text both
implementations return the same key and count."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hoopfast.core import _python
from tests.impls import COMPILED, IMPLS, needs_both

PROP = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SAME = [
    ("SELECT * FROM t WHERE id = 1", "select  *  from T where ID=42 -- c"),
    ("SELECT 'DROP TABLE x'", "SELECT 'hello'"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "DO $$ BEGIN SELECT 1; END $$"),
    ("DO $f$ a $$ b $f$", "DO $$ x $$"),
    ("/* /* */ DROP TABLE t */ SELECT 1", "SELECT 1"),
    ("SELECT E'\\'; DROP TABLE t; --'", "SELECT 'x'"),
    ("SELECT 'it''s'", "SELECT ''"),
    ("SELECT 'a'\n'b'", "SELECT 'ab'"),  # quote continuation: one constant
    ("SELECT 'a' -- c\n  'b'", "SELECT 'ab'"),
    ("SELECT U&'d\\0061t'", "SELECT 'x'"),
    ("SELECT 3.5, .5, 1.", "SELECT 0.0, 1.25, 7.0"),
    ("SELECT 0x1F, 0o17, 0b101, 1_000", "SELECT 1, 2, 3, 4"),
    ("SELECT 5000000000", "SELECT 0x7fffffffffffffff"),  # both int8
    ("SELECT 99999999999999999999", "SELECT 1e10"),  # both numeric
    ("SELECT B'101', X'1F'", "SELECT b'0', x'ff'"),
    ("SELECT N'abc'", "SELECT n''"),
    ("SELECT\t1\r\n", "select 2"),
    ("SELECT ÉtÉ FROM t", "select ÉTÉ from T"),  # ASCII-only folding
    ("SELECT a::int", "SELECT a :: int"),
    ("SELECT $1 FROM t WHERE a = $2", "select $1 from t where a=$2"),
    ("SELECT 'x' /* c */", "SELECT 'y'"),
]

DIFFERENT = [
    ("SELECT * FROM t", "SELECT * FROM u"),
    ('SELECT * FROM "T"', "SELECT * FROM t"),
    ('SELECT * FROM "t"', "SELECT * FROM t"),
    ('SELECT * FROM U&"t"', 'SELECT * FROM "t"'),
    ("DELETE FROM t", "SELECT FROM t"),
    ("SELECT 'DROP TABLE x'", "DROP TABLE x"),
    ("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 1; DROP TABLE t"),
    ("SELECT 1e10", "SELECT 1"),
    ("SELECT 1.0", "SELECT 1"),
    ("SELECT 5000000000", "SELECT 1"),  # int8 vs int4
    ("SELECT 1", "SELECT '1'"),
    ("SELECT B'1'", "SELECT X'1'"),
    ("SELECT N'1'", "SELECT '1'"),
    ("SELECT $1", "SELECT 1"),
    ("SELECT $1, $2", "SELECT $2, $1"),
    ("SELECT 'a", "SELECT 'b"),  # unterminated: verbatim
    ("SELECT 'a", "SELECT 'a'"),
    ("SELECT /* a", "SELECT"),
    ("SELECT 1 /* /* */", "SELECT 1"),  # still inside the outer comment
    ("SELECT $$ a", "SELECT 'a'"),
    ("SELECT a.b", "SELECT ab"),
    ("SELECT a + + b", "SELECT a ++ b"),
    ("SELECT a - -1", "SELECT a --1"),
    ("SELECT 'x' UESCAPE '!'", "SELECT 'x' UESCAPE '#'"),
    ("SELECT U&'d!0061' UESCAPE '!'", "SELECT U&'d!0061' UESCAPE '#'"),
    ("SELECT É", "SELECT é"),  # non-ASCII is never folded
    ("SELECT 'a'  'b'", "SELECT 'ab'"),  # no newline: two constants (an error)
    ("SELECT E'\\\\'; DROP TABLE t", "SELECT E'x'"),
]

COUNTS = [
    ("", 0),
    ("   -- only a comment\n", 0),
    ("SELECT 1", 1),
    ("SELECT 1;", 1),
    (";;SELECT 1;;", 1),
    ("SELECT 1; SELECT 2", 2),
    ("SELECT * FROM t WHERE id = 1; DROP TABLE t", 2),
    ("SELECT E'\\'; DROP TABLE t; --'", 1),
    ("DO $$ BEGIN DELETE FROM t; END $$", 1),
    ("DO $$ BEGIN SELECT 1; END $$;", 1),
    ("SELECT ';' ; SELECT \"a;b\"", 2),
    ("/* ; */ SELECT 1 -- ;", 1),
    ("SELECT 1; /* unterminated", 2),
    ("SELECT 'a;b", 1),
]


@pytest.mark.parametrize("impl", IMPLS)
class TestFingerprint:
    @pytest.mark.parametrize(("a", "b"), SAME)
    def test_same_key(self, impl: ModuleType, a: str, b: str) -> None:
        assert impl.fingerprint(a)[0] == impl.fingerprint(b)[0]

    @pytest.mark.parametrize(("a", "b"), DIFFERENT)
    def test_different_key(self, impl: ModuleType, a: str, b: str) -> None:
        assert impl.fingerprint(a)[0] != impl.fingerprint(b)[0]

    @pytest.mark.parametrize(("sql", "count"), COUNTS)
    def test_statement_count(self, impl: ModuleType, sql: str, count: int) -> None:
        assert impl.fingerprint(sql)[1] == count

    def test_shape(self, impl: ModuleType) -> None:
        key, count = impl.fingerprint("SELECT 1")
        assert type(key) is bytes and len(key) == 16
        assert type(count) is int

    def test_escape_string_is_one_literal(self, impl: ModuleType) -> None:
        sql = "SELECT E'\\'; DROP TABLE t; --'"
        assert impl.fingerprint(sql) == impl.fingerprint("SELECT 'hello'")
        stream = _python._normalize(sql)[0]
        assert stream == _python._normalize("SELECT 'hello'")[0]
        assert stream.endswith(b"select" + _python._K_STR)

    def test_literal_with_sql_is_not_sql(self, impl: ModuleType) -> None:
        lit = impl.fingerprint("SELECT 'DROP TABLE x'")
        assert lit == impl.fingerprint("SELECT 'hello'")
        assert lit[0] != impl.fingerprint("DROP TABLE x")[0]

    def test_nested_comment(self, impl: ModuleType) -> None:
        assert impl.fingerprint("/* /* */ DROP TABLE t */ SELECT 1") == impl.fingerprint("SELECT 1")

    def test_unterminated_never_collides(self, impl: ModuleType) -> None:
        keys = {
            impl.fingerprint(sql)[0]
            for sql in ("SELECT 'x", "SELECT 'x'", 'SELECT "x', "SELECT $q$x", "/* x", "E'\\\\")
        }
        assert len(keys) == 6

    def test_rejects_non_str(self, impl: ModuleType) -> None:
        with pytest.raises(TypeError):
            impl.fingerprint(b"SELECT 1")

    def test_lone_surrogate_is_a_value_error(self, impl: ModuleType) -> None:
        with pytest.raises(ValueError):  # UnicodeEncodeError
            impl.fingerprint("SELECT '\ud800'")


# Templates with holes for values; {i} an integer, {s} a string constant.
TEMPLATES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i};",
    "UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {i}",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES ({i}, {i}, {i}, {i}, CURRENT_TIMESTAMP)",
    "SELECT * FROM users WHERE name = {s} AND id IN ({i}, {i}) -- note",
    'SELECT "Col" FROM "Schema".t WHERE x = {s}::text OR y > {i}',
]
INT4 = st.integers(min_value=0, max_value=2**31 - 1)
STRING_CONSTANT = st.one_of(
    st.text().map(lambda v: "'" + v.replace("'", "''") + "'"),
    st.text().map(lambda v: "E'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    # (The body must not hold the closing tag, nor end with what makes one
    # with it: "$x" + "$x$" closes at the body's "$x$"; CI drew that once.)
    st.text().filter(lambda v: _closes_at_end(v, "$x$")).map(lambda v: f"$x${v}$x$"),
    st.text().filter(lambda v: _closes_at_end(v, "$$")).map(lambda v: f"$${v}$$"),
)


def _closes_at_end(body: str, tag: str) -> bool:
    """Whether a dollar-quoted ``body`` ends where its closing ``tag`` is
    put after it, as the scanner reads it (the first ``tag`` closes)."""
    return (body + tag).find(tag) == len(body)


@st.composite
def filled(draw: st.DrawFn, template: str) -> str:
    parts = template.replace("{s}", "\0s\0").replace("{i}", "\0i\0").split("\0")
    out = []
    for part in parts:
        if part == "i":
            out.append(str(draw(INT4)))
        elif part == "s":
            out.append(draw(STRING_CONSTANT))
        else:
            out.append(part)
    return "".join(out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("template", TEMPLATES)
@PROP
@given(data=st.data())
def test_key_depends_only_on_template(impl: ModuleType, template: str, data: st.DataObject) -> None:
    a = data.draw(filled(template))
    b = data.draw(filled(template))
    assert impl.fingerprint(a) == impl.fingerprint(b), (a, b)


def test_templates_are_distinct() -> None:
    keys = {_python.fingerprint(t.replace("{i}", "1").replace("{s}", "'a'")) for t in TEMPLATES}
    assert len(keys) == len(TEMPLATES)


# SQL-ish text: quotes, dollars, comment starts, escapes, prefixes, digits,
# separators, whitespace and non-ASCII.
SQLISH = st.lists(
    st.sampled_from(
        [
            "'",
            "''",
            '"',
            '""',
            "$",
            "$$",
            "$a$",
            "$1",
            "-",
            "--",
            "/",
            "*",
            "/*",
            "*/",
            "\\",
            "E",
            "e'",
            "B'",
            "X'",
            "N'",
            "U&",
            "U&'",
            'U&"',
            "UESCAPE",
            "0",
            "1",
            "9",
            "0x",
            "0o",
            "0b",
            "_",
            ".",
            "..",
            "e",
            "+",
            "::",
            ":",
            ";",
            "(",
            ")",
            ",",
            "=",
            "<>",
            "||",
            "select",
            "SELECT",
            "t",
            "Ü",
            "é",
            "€",
            " ",
            "\t",
            "\n",
            "\r",
            "\x00",
            "\x0b",
            "\x0c",
        ]
    ),
    max_size=40,
).map("".join)


@needs_both
@PROP
@given(sql=st.one_of(SQLISH, st.text()))
@example(sql="SELECT E'\\'; DROP TABLE t; --'")
@example(sql="/*/ */ */*")
@example(sql="'ab''")
@example(sql="$a$ $ba$a$")
@example(sql="0x_ 0x_1 1__0 1e+ 1.e5 .e1 99999999999999999999999")
def test_differential(sql: str) -> None:
    assert COMPILED is not None
    assert COMPILED.fingerprint(sql) == _python.fingerprint(sql)


@needs_both
@PROP
@given(template=st.sampled_from(TEMPLATES), data=st.data())
def test_differential_templates(template: str, data: st.DataObject) -> None:
    assert COMPILED is not None
    sql = data.draw(filled(template))
    assert COMPILED.fingerprint(sql) == _python.fingerprint(sql)
