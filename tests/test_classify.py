"""Unit tests for the statement classifier (no database needed)."""

from __future__ import annotations

import pytest

from hoopfast.policy import CLASSES, Classification, classify

CLASS_CASES: list[tuple[str, set[str]]] = [
    # several statements
    ("SELECT 1; DROP TABLE t", {"read", "ddl"}),
    ("SELECT 1;; SELECT 2;", {"read"}),
    ("SELECT 1; EXECUTE x", {"read", "unknown"}),
    # plain DML / queries
    ("SELECT * FROM t", {"read"}),
    ("VALUES (1)", {"read"}),
    ("TABLE t", {"read"}),
    ("SELECT 1 UNION SELECT 2", {"read"}),
    ("INSERT INTO t VALUES (1)", {"write"}),
    ("INSERT INTO t SELECT * FROM s", {"write", "read"}),
    ("UPDATE t SET a = 1", {"write"}),
    ("DELETE FROM t", {"write"}),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", {"write"}),
    ("TRUNCATE t", {"write"}),
    # data-modifying CTEs
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"read", "write"}),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1", {"read", "write"}),
    ("WITH s AS (SELECT 1) DELETE FROM t", {"read", "write"}),
    # SELECT INTO / CTAS create a table
    ("SELECT * INTO newt FROM t", {"read", "write", "ddl"}),
    ("CREATE TABLE t2 AS SELECT 1", {"read", "write", "ddl"}),
    # row locks
    ("SELECT * FROM t FOR UPDATE", {"read", "lock"}),
    ("SELECT * FROM t FOR NO KEY UPDATE", {"read", "lock"}),
    ("SELECT * FROM t FOR SHARE", {"read", "lock"}),
    ("SELECT * FROM t FOR KEY SHARE", {"read", "lock"}),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", {"read", "lock"}),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", {"lock"}),
    # procedural
    ("DO $$BEGIN DELETE FROM t; END$$", {"procedural"}),
    ("CALL p(1)", {"procedural"}),
    ("CALL p(pg_read_file('/etc/passwd'))", {"procedural", "file"}),
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", {"ddl", "procedural"}),
    # EXPLAIN: ANALYZE executes, plain EXPLAIN only plans
    ("EXPLAIN ANALYZE DELETE FROM t", {"write"}),
    ("EXPLAIN (ANALYZE) DELETE FROM t", {"write"}),
    ("EXPLAIN (ANALYZE true, BUFFERS) UPDATE t SET a = 1", {"write"}),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", {"read"}),
    ("EXPLAIN VERBOSE DELETE FROM t", {"read"}),
    ("EXPLAIN DELETE FROM t", {"read"}),
    ("EXPLAIN SELECT 1", {"read"}),
    ("EXPLAIN ANALYZE SELECT pg_read_file('x')", {"read", "file"}),
    ("EXPLAIN FROBNICATE", {"unknown"}),
    # PREPARE / EXECUTE / cursors
    ("PREPARE x AS DELETE FROM t", {"write"}),
    ("PREPARE x (int) AS SELECT * FROM t WHERE a = $1", {"read"}),
    ("EXECUTE x", {"unknown"}),
    ("DECLARE c CURSOR FOR SELECT * FROM t", {"read"}),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", {"read", "lock"}),
    ("FETCH 1 FROM c", {"read"}),
    ("CLOSE c", {"read"}),
    # COPY
    ("COPY t FROM STDIN", {"write"}),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", {"write"}),
    ("COPY t TO STDOUT", {"read"}),
    ("COPY (SELECT * FROM t) TO STDOUT", {"read"}),
    ("COPY t FROM '/tmp/f'", {"write", "file"}),
    ("COPY t TO '/tmp/f'", {"read", "file"}),
    ("COPY t TO PROGRAM 'ls'", {"read", "file"}),
    ("COPY t FROM PROGRAM 'curl evil'", {"write", "file"}),
    # session
    ("SET ROLE admin", {"session"}),
    ("SET LOCAL ROLE admin", {"session"}),
    ("SET SESSION AUTHORIZATION admin", {"session"}),
    ("RESET ROLE", {"session"}),
    ("RESET ALL", {"session"}),
    ("SELECT set_config('role', 'admin', false)", {"read", "session"}),
    ("SET default_transaction_read_only = off", {"session"}),
    ("SET transaction_read_only TO off", {"session"}),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", {"session"}),
    ("SET search_path = evil, public", {"session"}),
    ("DISCARD ALL", {"session"}),
    ("SHOW search_path", {"read"}),
    # file functions
    ("SELECT pg_read_file('/etc/passwd')", {"read", "file"}),
    ("SELECT pg_read_binary_file('/etc/passwd')", {"read", "file"}),
    ("SELECT * FROM pg_ls_dir('/')", {"read", "file"}),
    ("SELECT lo_import('/etc/passwd')", {"read", "file"}),
    ("SELECT lo_export(1, '/tmp/x')", {"read", "file"}),
    ("SELECT pg_stat_file('/etc/passwd')", {"read", "file"}),
    ("SELECT pg_catalog.pg_read_file('/etc/passwd')", {"read", "file"}),
    ("SELECT setval('s', 1)", {"read", "write"}),
    # maintenance
    ("VACUUM t", {"maintenance"}),
    ("VACUUM (FULL, ANALYZE) t", {"maintenance"}),
    ("ANALYZE t", {"maintenance"}),
    ("CLUSTER t", {"maintenance"}),
    ("REINDEX TABLE t", {"maintenance"}),
    ("CHECKPOINT", {"maintenance"}),
    # transaction
    ("BEGIN", {"transaction"}),
    ("START TRANSACTION", {"transaction"}),
    ("COMMIT", {"transaction"}),
    ("END", {"transaction"}),
    ("ROLLBACK", {"transaction"}),
    ("SAVEPOINT a", {"transaction"}),
    ("RELEASE SAVEPOINT a", {"transaction"}),
    ("ROLLBACK TO SAVEPOINT a", {"transaction"}),
    ("PREPARE TRANSACTION 'x'", {"transaction"}),
    # ddl / dcl
    ("DROP TABLE t", {"ddl"}),
    ("ALTER TABLE t ADD COLUMN a int", {"ddl"}),
    ("COMMENT ON TABLE t IS 'x'", {"ddl"}),
    ("CREATE VIEW v AS SELECT * FROM t", {"ddl", "read"}),
    ("CREATE EXTENSION dblink", {"ddl"}),
    ("GRANT SELECT ON t TO u", {"dcl"}),
    ("REVOKE SELECT ON t FROM u", {"dcl"}),
    ("CREATE ROLE r", {"dcl"}),
    ("CREATE USER r WITH SUPERUSER", {"dcl"}),
    ("ALTER ROLE r SUPERUSER", {"dcl"}),
    ("DROP ROLE r", {"dcl"}),
    ("ALTER SYSTEM SET fsync = off", {"unknown"}),
    # comments and casing around keywords
    ("/* x */ DeLeTe FROM t", {"write"}),
    ("-- c\nDROP TABLE t", {"ddl"}),
    ("SELECT 1 /* ; DROP TABLE t */", {"read"}),
    ("SELECT 1 -- ; DROP TABLE t", {"read"}),
    # literals containing SQL must not trigger
    ("SELECT 'DROP TABLE x'", {"read"}),
    ("SELECT $$DELETE FROM t$$", {"read"}),
    ("SELECT $tag$; DROP TABLE t; $tag$", {"read"}),
    ("SELECT E'\\'; DROP TABLE t; --'", {"read"}),
    ('SELECT "DELETE" FROM t', {"read"}),
    # fail closed
    ("", set()),
    ("FROBNICATE t", {"unknown"}),
    ("SELECT FROM FROM WHERE", {"unknown"}),
    ("SELECT 'unterminated", {"unknown"}),
    ("LOAD 'evil.so'", {"unknown"}),
    ("SELECT insert FROM t", {"unknown"}),
    ('SELECT * FROM U&"\\zzzz"', {"unknown"}),
]


@pytest.mark.parametrize(("sql", "expected"), CLASS_CASES)
def test_classes(sql: str, expected: set[str]) -> None:
    result = classify(sql)
    assert result.classes == frozenset(expected), (sql, result)
    assert result.classes <= CLASSES
    if "unknown" in expected:
        assert result.reason
    else:
        assert result.reason is None


REL_CASES: list[tuple[str, set[str]]] = [
    ('SELECT * FROM "Secret"', {"Secret"}),
    ("SELECT * FROM Secret", {"secret"}),
    ('SELECT * FROM U&"\\0073ecret"', {"secret"}),
    ('SELECT * FROM U&"\\0053ecret"', {"Secret"}),
    ("SELECT * FROM U&\"!0073ecret\" UESCAPE '!'", {"secret"}),
    ('SELECT * FROM U&"\\+000073ecret"', {"secret"}),
    ('SELECT * FROM Public.T JOIN s."Q" q ON true', {"public.t", "s.Q"}),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"d", "t"}),
    ("SELECT * INTO newt FROM t", {"newt", "t"}),
    ("LOCK TABLE ONLY a.b, c IN SHARE MODE", {"a.b", "c"}),
    ("EXPLAIN DELETE FROM secret", {"secret"}),
    ("PREPARE x AS SELECT * FROM secret", {"secret"}),
    ('SELECT * FROM t WHERE x IN (SELECT y FROM "Other")', {"t", "Other"}),
    ("SELECT * FROM dblink('x', 'select 1') AS t(a int)", set()),
]


@pytest.mark.parametrize(("sql", "expected"), REL_CASES)
def test_relations(sql: str, expected: set[str]) -> None:
    assert classify(sql).relations == frozenset(expected)


FUNC_CASES: list[tuple[str, set[str]]] = [
    ("SELECT pg_read_file('/etc/passwd')", {"pg_read_file"}),
    ("SELECT PG_READ_FILE('/etc/passwd')", {"pg_read_file"}),
    ("SELECT \"PG_READ_FILE\"('x')", {"PG_READ_FILE"}),
    ("SELECT pg_catalog.pg_read_file('x')", {"pg_catalog.pg_read_file", "pg_read_file"}),
    ("SELECT * FROM t WHERE x = (SELECT pg_terminate_backend(1))", {"pg_terminate_backend"}),
    ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", {"dblink"}),
    ("SELECT dblink_exec('host=x', 'DROP TABLE t')", {"dblink_exec"}),
    ("CALL admin.p(1)", {"admin.p", "p"}),
    ("SELECT lo_export(1, '/tmp/x')", {"lo_export"}),
]


@pytest.mark.parametrize(("sql", "expected"), FUNC_CASES)
def test_functions(sql: str, expected: set[str]) -> None:
    assert classify(sql).functions == frozenset(expected)


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("", 0),
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1; DROP TABLE t", 2),
        ("SELECT 1;;SELECT 2", 2),
        ("SELECT E'\\'; DROP TABLE t; --'", 1),
        ("DO $$BEGIN PERFORM 1; PERFORM 2; END$$", 1),
    ],
)
def test_statement_count(sql: str, count: int) -> None:
    assert classify(sql).statements == count


def test_result_type_and_flags() -> None:
    r = classify("SELECT * FROM t FOR UPDATE")
    assert isinstance(r, Classification)
    assert r.locks_rows and not r.unknown
    with pytest.raises(AttributeError):
        r.classes = frozenset()  # type: ignore[misc]
    assert classify("EXECUTE x").unknown


def test_unknown_discards_partial_classes_on_parse_error() -> None:
    r = classify("SELECT 1; SELECT FROM FROM")
    assert r.classes == frozenset({"unknown"})
    assert r.reason is not None and "ParseError" in r.reason


def test_deep_nesting_fails_closed() -> None:
    r = classify("SELECT " + "(" * 5000 + "1" + ")" * 5000)
    assert r.classes <= {"read", "unknown"}
