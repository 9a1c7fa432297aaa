"""The classification is a function of the statement fingerprint.

The gateway caches classifications by :func:`hoopfast.core.fingerprint`,
which replaces literal values (strings, numbers, dollar-quoted bodies) by
placeholders of their kind. So two texts that differ only in literal values
must get the same classification: a corpus of statement templates is
instantiated with many literal values (SQL-looking ones included) and
renderings (``'...'``, ``E'...'``, ``U&'...'``, ``$$...$$``, ``$tag$...$tag$``,
quote continuation), and every field but ``reason`` must agree whenever the
fingerprints do.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopfast.core import fingerprint
from hoopfast.policy import Classification, classify

# {s}: a character-string constant; {i}: an int4 constant; {n}: a numeric one.
TEMPLATES: list[str] = [
    # several statements, queries, DML
    "SELECT {s}",
    "SELECT {i}",
    "SELECT {n}",
    "SELECT {s}; DROP TABLE t",
    "SELECT * FROM t WHERE a = {i} AND b = {s}",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i}",
    "SELECT * FROM t LIMIT {i} OFFSET {i}",
    "SELECT {s} AS x, {n} * a FROM t ORDER BY 1",
    "VALUES ({i}, {s})",
    "TABLE t",
    "SELECT {i} UNION SELECT {i}",
    "INSERT INTO t VALUES ({i}, {s})",
    "INSERT INTO t (a, b) SELECT {i}, b FROM s WHERE c = {s}",
    "UPDATE t SET a = {i}, b = {s} WHERE c = {n}",
    "DELETE FROM t WHERE a = {s}",
    "DeLeTe/**/FROM t WHERE a = {i}",
    "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = {s}",
    "TRUNCATE t",
    # data-modifying CTEs
    "WITH d AS (DELETE FROM t WHERE a = {i} RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE t SET a = {s} RETURNING *) SELECT {i}",
    "WITH s AS (SELECT {s}) DELETE FROM t",
    # SELECT INTO / CTAS
    "SELECT {s} INTO newt FROM t",
    "CREATE TABLE t2 AS SELECT {i}",
    # row locks
    "SELECT * FROM t WHERE a = {i} FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM (SELECT * FROM t WHERE a = {s} FOR UPDATE) s",
    "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
    # procedural
    "DO {s}",
    "DO LANGUAGE plpgsql {s}",
    "CALL p({i}, {s})",
    "CALL p(pg_read_file({s}))",
    "CREATE FUNCTION f() RETURNS int AS {s} LANGUAGE sql",
    "CREATE OR REPLACE PROCEDURE s.p(a int DEFAULT {i}) LANGUAGE plpgsql AS {s}",
    # EXPLAIN
    "EXPLAIN ANALYZE DELETE FROM t WHERE a = {i}",
    "EXPLAIN (ANALYZE {i}) DELETE FROM t",
    "EXPLAIN (ANALYZE {s}) DELETE FROM t",
    "EXPLAIN (ANALYZE {n}, BUFFERS) UPDATE t SET a = {i}",
    "EXPLAIN (ANALYZE off, FORMAT {s}) DELETE FROM t",
    "EXPLAIN DELETE FROM t WHERE a = {s}",
    "EXPLAIN SELECT {s}",
    "EXPLAIN EXECUTE p({s})",
    # prepared statements
    "PREPARE x AS DELETE FROM t WHERE a = {i}",
    "PREPARE x (int) AS SELECT * FROM t WHERE a = $1 AND b = {s}",
    "EXECUTE x",
    "EXECUTE x({i}, {s})",
    "EXECUTE x(pg_read_file({s}))",
    "DEALLOCATE x",
    "DEALLOCATE ALL",
    "CREATE TABLE t2 AS EXECUTE x({n})",
    # cursors
    "DECLARE c CURSOR FOR SELECT * FROM t WHERE a = {s}",
    "FETCH {i} FROM c",
    "MOVE {i} IN c",
    # COPY
    "COPY t FROM STDIN",
    "COPY t (a, b) FROM STDIN WITH (FORMAT csv, DELIMITER {s})",
    "COPY (SELECT * FROM t WHERE a = {s}) TO STDOUT",
    "COPY t FROM {s}",
    "COPY t TO {s}",
    "COPY t TO PROGRAM {s}",
    "COPY t FROM PROGRAM {s}",
    # session / role
    "SET ROLE {s}",
    "SET ROLE admin",
    "SET SESSION AUTHORIZATION {s}",
    "SET role = {s}",
    "RESET ROLE",
    "SELECT set_config({s}, {s}, false)",
    "SET default_transaction_read_only = {s}",
    "SET default_transaction_read_only = {i}",
    "SET transaction_read_only TO {s}",
    "SET search_path = {s}, public",
    "SET statement_timeout = {i}",
    "SET NAMES {s}",
    "SET TIME ZONE {s}",
    "SET TIME ZONE {n}",
    "SET SCHEMA {s}",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "START TRANSACTION READ ONLY",
    "SET TRANSACTION SNAPSHOT {s}",
    "DISCARD ALL",
    "SHOW search_path",
    "LISTEN ch",
    "NOTIFY ch, {s}",
    "PREPARE TRANSACTION {s}",
    "COMMIT PREPARED {s}",
    # files and procedural functions
    "SELECT pg_read_file({s}, {i}, {i})",
    "SELECT * FROM pg_ls_dir({s})",
    "SELECT lo_import({s})",
    "SELECT lo_export({i}, {s})",
    "SELECT setval({s}, {i})",
    "SELECT query_to_xml({s}, true, true, {s})",
    "SELECT * FROM dblink({s}, {s}) AS t(a int)",
    "SELECT dblink_exec({s}, {s})",
    "SELECT * FROM ts_stat({s})",
    # maintenance, DDL, DCL
    "VACUUM t",
    "ANALYZE t",
    "DROP TABLE t",
    "ALTER TABLE t ADD COLUMN a int DEFAULT {i}",
    "ALTER TABLE t ALTER COLUMN a SET DEFAULT {s}",
    "COMMENT ON TABLE t IS {s}",
    "CREATE VIEW v AS SELECT * FROM t WHERE a = {s}",
    "GRANT SELECT ON t TO u",
    "CREATE ROLE r PASSWORD {s}",
    "ALTER ROLE r VALID UNTIL {s}",
    "ALTER SYSTEM SET fsync = {s}",
    # quoted identifiers, casts, odd literals
    'SELECT * FROM U&"\\0073ecret" WHERE a = {s}',
    'SELECT * FROM "Secret" WHERE a = {i}',
    "SELECT {s}::regclass",
    "SELECT CAST({s} AS date) + INTERVAL {s}",
    "SELECT a[{i}:{i}] FROM t",
    "SELECT {s} || {s} FROM t WHERE x LIKE {s}",
    "SELECT * FROM t WHERE a IN ({i}, {i}, {n})",
    "SELECT B'101', X'1F', N'x', {s}",
    "SELECT {s} -- comment\n, {i}",
    "SELECT $1, {s}",
    "SELECT /* c */ {i}",
    "LOAD {s}",
]

SQLISH = [
    "",
    "x",
    "DROP TABLE t",
    "DELETE FROM t",
    "'; DROP TABLE t; --",
    "\\'; DROP TABLE t; --",
    "\\",
    "$$; DELETE FROM t; $$",
    "*/ DELETE FROM t; /*",
    "-- ; DROP TABLE t",
    "off",
    "on",
    "0",
    "ANALYZE",
    "role",
    "SET ROLE postgres",
    "é中文",
    "a\nb",
]


def _plain(c: str) -> str:
    return "'" + c.replace("'", "''") + "'"


def _escaped(c: str) -> str:
    return "E'" + c.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _e_continued(c: str) -> str:
    half = len(c) // 2
    a = c[:half].replace("\\", "\\\\").replace("'", "\\'")
    b = c[half:].replace("\\", "\\\\").replace("'", "\\'")
    return f"E'{a}'\n'{b}'"


def _continued(c: str) -> str:
    half = len(c) // 2
    return _plain(c[:half]) + "\n  -- piece\n" + _plain(c[half:])


def _unicode(c: str) -> str:
    return "U&'" + c.replace("\\", "\\\\").replace("'", "''") + "'"


def _dollar(c: str) -> str:
    return "$$" + c + "$$" if "$$" not in c and not c.endswith("$") else _plain(c)


def _tagged(c: str) -> str:
    return "$q$" + c + "$q$" if "$q$" not in c and not c.endswith("$") else _plain(c)


RENDERINGS: list[Callable[[str], str]] = [
    _plain,
    _escaped,
    _e_continued,
    _continued,
    _unicode,
    _dollar,
    _tagged,
]
INT4S = ["0", "1", "42", "2147483647", "1_000", "007"]
NUMERICS = ["1.5", ".5", "3.", "1e10", "2.5E-3", "99999999999999999999"]


def _fill(template: str, values: dict[str, list[str]]) -> str:
    counters = dict.fromkeys(values, 0)

    def sub(m: re.Match[str]) -> str:
        kind = m.group(1)
        pool = values[kind]
        v = pool[counters[kind] % len(pool)]
        counters[kind] += 1
        return v

    return re.sub(r"\{([sin])\}", sub, template)


def _fields(c: Classification) -> tuple[object, ...]:
    return (
        c.classes,
        c.relations,
        c.functions,
        c.statements,
        c.settings,
        c.prepares,
        c.executes,
        c.deallocates,
    )


def _instances(template: str) -> list[str]:
    """Deterministic instantiations: every rendering x several contents."""
    out = []
    for k, render in enumerate(RENDERINGS):
        for j in range(3):
            strings = [render(SQLISH[(k * 5 + j * 7 + m) % len(SQLISH)]) for m in range(4)]
            ints = [INT4S[(k + j + m) % len(INT4S)] for m in range(4)]
            nums = [NUMERICS[(k + j + m) % len(NUMERICS)] for m in range(4)]
            out.append(_fill(template, {"s": strings, "i": ints, "n": nums}))
    return out


CORPUS = sorted({text for t in TEMPLATES for text in _instances(t)})


def test_corpus_is_diverse() -> None:
    assert len(TEMPLATES) >= 100
    classes = {c for text in CORPUS for c in classify(text).classes}
    assert {"read", "write", "ddl", "dcl", "role", "session", "file", "lock"} <= classes
    assert {"procedural", "transaction", "maintenance", "unknown"} <= classes


@pytest.mark.parametrize("template", TEMPLATES)
def test_literal_values_do_not_change_the_classification(template: str) -> None:
    texts = _instances(template)
    keys = {fingerprint(t)[0] for t in texts}
    assert len(keys) == 1, f"instantiations of {template!r} should share a fingerprint"
    results = {_fields(c) for t in texts if not (c := classify(t)).value_dependent}
    assert len(results) <= 1, (template, results)


def test_same_fingerprint_same_classification_across_corpus() -> None:
    by_key: dict[bytes, list[str]] = {}
    for text in CORPUS:
        by_key.setdefault(fingerprint(text)[0], []).append(text)
    for texts in by_key.values():
        # set_config('name', ...) is decided by a literal: the result says so
        # (value_dependent) and the guard never caches it by fingerprint
        # (tests/test_guard.py); every other text must agree.
        results = {_fields(c) for t in texts if not (c := classify(t)).value_dependent}
        assert len(results) <= 1, (texts, results)


def test_different_classes_never_share_a_fingerprint() -> None:
    results = [
        (fingerprint(t)[0], c.classes, t) for t in CORPUS if not (c := classify(t)).value_dependent
    ]
    for (k1, c1, t1), (k2, c2, t2) in itertools.combinations(results, 2):
        if c1 != c2:
            assert k1 != k2, (t1, t2)


_contents = st.one_of(st.sampled_from(SQLISH), st.text(max_size=20))


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    template=st.sampled_from(TEMPLATES),
    data=st.data(),
)
def test_property_random_literals(template: str, data: st.DataObject) -> None:
    def draw_values() -> dict[str, list[str]]:
        n = template.count("{")
        strings = [data.draw(st.sampled_from(RENDERINGS))(data.draw(_contents)) for _ in range(n)]
        ints = [str(data.draw(st.integers(0, 2**31 - 1))) for _ in range(n)]
        nums = [
            data.draw(st.sampled_from(NUMERICS))
            if data.draw(st.booleans())
            else f"{data.draw(st.integers(0, 10**6))}.{data.draw(st.integers(0, 999))}"
            for _ in range(n)
        ]
        return {"s": strings, "i": ints, "n": nums}

    a = _fill(template, draw_values())
    b = _fill(template, draw_values())
    if fingerprint(a)[0] != fingerprint(b)[0]:  # e.g. a NUL in generated text
        return
    ca, cb = classify(a), classify(b)
    if ca.value_dependent or cb.value_dependent or ca.unknown or cb.unknown:
        # Decided by a literal, or an analysis failure on one spelling of a
        # literal (fail closed): neither is ever cached by fingerprint.
        return
    assert _fields(ca) == _fields(cb), (a, b)
