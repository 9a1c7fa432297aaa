"""Unit tests for the statement classifier (no database needed)."""

from __future__ import annotations

import time

import pytest

from hoopfast.policy import CLASSES, Classification, classify

CLASS_CASES: list[tuple[str, set[str]]] = [
    # several statements
    ("SELECT 1; DROP TABLE t", {"read", "ddl"}),
    ("SELECT 1;; SELECT 2;", {"read"}),
    ("SELECT 1; EXECUTE x", {"read"}),
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
    ("EXECUTE x", set()),
    ("EXECUTE x(1, 'a')", set()),
    ("EXECUTE x(pg_read_file('/etc/passwd'))", {"file"}),
    ("EXECUTE x((SELECT a FROM t))", {"read"}),
    ("EXECUTE x(1) UNION SELECT 1", {"unknown"}),
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
    ("SET ROLE admin", {"session", "role"}),
    ("SET LOCAL ROLE admin", {"session", "role"}),
    ("SET SESSION AUTHORIZATION admin", {"session", "role"}),
    # Back to the login identity: can only drop privileges.
    ("RESET ROLE", {"session"}),
    ("RESET SESSION AUTHORIZATION", {"session"}),
    ("SET role = 'admin'", {"session", "role"}),
    ('SET "ROLE" TO admin', {"session", "role"}),
    ("RESET ALL", {"session"}),
    ("SELECT set_config('role', 'admin', false)", {"read", "session", "role"}),
    (
        "SELECT * FROM t WHERE a = (SELECT set_config(a, b, true) FROM s)",
        {"read", "session", "role"},
    ),
    ("SET default_transaction_read_only = off", {"session"}),
    ("SET transaction_read_only TO off", {"session"}),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", {"session"}),
    ("SET search_path = evil, public", {"session"}),
    ("DISCARD ALL", {"session"}),
    ("DISCARD PLANS", {"session"}),
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
    assert not classify("EXECUTE x").unknown
    assert classify("EXECUTE x").executes == {"x"}


def test_unknown_discards_partial_classes_on_parse_error() -> None:
    r = classify("SELECT 1; SELECT FROM FROM")
    assert r.classes == frozenset({"unknown"})
    assert r.reason is not None and "ParseError" in r.reason


def test_deep_nesting_fails_closed() -> None:
    r = classify("SELECT " + "(" * 5000 + "1" + ")" * 5000)
    assert r.classes <= {"read", "unknown"}


# -- bypasses and the fields added for the session layer ----------------------

BYPASS_CASES: list[tuple[str, set[str]]] = [
    # EXPLAIN option values never depend on a literal's value
    ("EXPLAIN (ANALYZE 0) DELETE FROM t", {"write"}),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", {"write"}),
    ("EXPLAIN (ANALYZE 'off') DELETE FROM t", {"write"}),
    ("EXPLAIN (ANALYZE $$false$$) DELETE FROM t", {"write"}),
    ('EXPLAIN (ANALYZE "off") DELETE FROM t', {"write"}),
    ("EXPLAIN (ANALYZE off) DELETE FROM t", {"read"}),
    ("EXPLAIN (ANALYZE NO, VERBOSE) DELETE FROM t", {"read"}),
    # the option name may be a quoted identifier
    ('EXPLAIN ("analyze") DELETE FROM t', {"write"}),
    ('EXPLAIN (VERBOSE, "analyse" true) DELETE FROM t', {"write"}),
    # a plain EXPLAIN EXECUTE still evaluates the arguments
    ("EXPLAIN EXECUTE p(setval('s', 1))", {"read", "write"}),
    ("EXPLAIN ANALYZE EXECUTE p", set()),
    # CREATE TABLE AS EXECUTE runs the prepared statement
    ("CREATE TABLE t2 AS EXECUTE p", {"ddl", "write"}),
    ("CREATE TEMP TABLE t2 AS EXECUTE p (1) WITH NO DATA", {"ddl", "write"}),
    # E'...' continued on the next line keeps backslash escapes: the DELETE is code
    (
        "WITH x AS (SELECT E'a'\n'\\'' ), d AS (DELETE FROM t RETURNING 1) "
        "SELECT 1 FROM x --')SELECT 1",
        {"read", "write"},
    ),
    ("SELECT E'a'\n'\\'' ; DROP TABLE t; --'", {"read", "ddl"}),
    # ... and a plain string continued keeps none
    ("SELECT 'a'\n'\\'; DROP TABLE t; --'", {"read", "ddl"}),
    # standard strings: a backslash does not escape
    ("SELECT '\\'; DROP TABLE t; --'", {"read", "ddl"}),
    # \r ends a -- comment, like \n
    ("SELECT 1 -- x\r; DROP TABLE t", {"read", "ddl"}),
    # role changes hidden in other forms
    ("SELECT pg_catalog.set_config('role', 'admin', false)", {"read", "session", "role"}),
    ("SELECT \"set_config\"('role', 'x', false)", {"read", "session", "role"}),
    # Back to the login identity, as RESET SESSION AUTHORIZATION.
    ("SET SESSION SESSION AUTHORIZATION DEFAULT", {"session"}),
    ("SET SESSION ROLE admin", {"session", "role"}),
    ('SET U&"\\0072ole" = admin', {"session", "role"}),
    ("SET", {"session", "role"}),
    # role / user mapping statements are dcl whatever sqlglot makes of them
    ("DROP OWNED BY r", {"dcl"}),
    # Stored for the role's later sessions: judged as SET role.
    ("ALTER ROLE CURRENT_USER SET role = admin", {"dcl", "role", "session"}),
    ("CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'x')", {"ddl", "dcl"}),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u", {"dcl"}),
    # SELECT INTO anywhere in a set operation
    ("SELECT 1 INTO t UNION SELECT 2", {"read", "write", "ddl"}),
    # functions that run SQL text or read tables named by a value
    ("SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')", {"read", "procedural"}),
    ("SELECT table_to_xml('secret', true, true, '')", {"read", "procedural"}),
    ("SELECT * FROM ts_stat('SELECT v FROM secret')", {"read", "procedural"}),
    ("SELECT dblink_exec('host=x', 'DROP TABLE t')", {"read", "procedural"}),
    ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", {"read", "procedural"}),
    ("SELECT public.dblink_open('c', 'SELECT 1')", {"read", "procedural"}),
    (
        "SELECT * FROM crosstab('SELECT a, b, c FROM secret') AS (a int, b int)",
        {"read", "procedural"},
    ),
    ("SELECT cursor_to_xml('c', 1, true, true, '')", {"read", "procedural"}),
    # literals where names must be
    ("LOCK 'a'", {"unknown"}),
    ("DEALLOCATE 'a'", {"unknown"}),
    # numbers as PostgreSQL lexes them
    ("SELECT * FROM t LIMIT 1_000", {"read"}),
    ("SELECT .5, 0x1F, 0o17, 0b101, 1e10", {"read"}),
    ("SELECT 1abc", {"unknown"}),
    # FOR UPDATE is a lock however the tree is built
    ("WITH x AS (SELECT 1 FROM t FOR UPDATE) SELECT 1", {"read", "lock"}),
    ("(SELECT 1 FROM t) FOR SHARE", {"read", "lock"}),
    # transaction statements with modes
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", {"transaction"}),
    ("START TRANSACTION READ ONLY", {"transaction"}),
    ("COMMIT AND CHAIN", {"transaction"}),
    ("ANALYZE VERBOSE t (a)", {"maintenance"}),
    # sqlglot fails on a text ending in '' after a parameter unless padded
    ("SELECT $1, ''", {"read"}),
]


@pytest.mark.parametrize(("sql", "expected"), BYPASS_CASES)
def test_bypasses(sql: str, expected: set[str]) -> None:
    result = classify(sql)
    assert result.classes == frozenset(expected), (sql, result)
    assert result.classes <= CLASSES


SETTINGS_CASES: list[tuple[str, set[str]]] = [
    ("SET search_path = evil, public", {"search_path"}),
    ("SET LOCAL search_path TO DEFAULT", {"search_path"}),
    ("SET SESSION statement_timeout = 0", {"statement_timeout"}),
    ("SET search_path FROM CURRENT", {"search_path"}),
    ('SET "Search_Path" = x', {"search_path"}),
    ("SET myapp.Tenant = '1'", {"myapp.tenant"}),
    ("SET ROLE admin", {"role"}),
    ("SET role TO admin", {"role"}),
    ("SET SESSION AUTHORIZATION admin", {"session_authorization"}),
    ("SET session_authorization = admin", {"session_authorization"}),
    ("RESET ROLE", {"all"}),
    ("RESET SESSION AUTHORIZATION", {"all"}),
    ("RESET search_path", {"search_path"}),
    ("RESET ALL", {"all"}),
    ("RESET TIME ZONE", {"timezone"}),
    ("RESET TRANSACTION ISOLATION LEVEL", {"transaction_isolation"}),
    ("SET NAMES 'SJIS'", {"client_encoding"}),
    ("SET client_encoding = 'SJIS'", {"client_encoding"}),
    ("SET TIME ZONE 'UTC'", {"timezone"}),
    ("SET SCHEMA 'evil'", {"search_path"}),
    ("SET XML OPTION DOCUMENT", {"xmloption"}),
    ("SET default_transaction_read_only = off", {"default_transaction_read_only"}),
    ("SET transaction_read_only TO off", {"transaction_read_only"}),
    ("SET TRANSACTION READ WRITE", {"transaction_read_only"}),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", {"transaction_isolation"}),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        {"transaction_read_only", "default_transaction_read_only"},
    ),
    ("BEGIN READ WRITE", {"transaction_read_only"}),
    ("BEGIN TRANSACTION READ ONLY", set()),
    ("START TRANSACTION READ WRITE", {"transaction_read_only"}),
    ("SELECT set_config('search_path', 'x', false)", {"search_path"}),
    ("SELECT set_config(E'search_path', 'x', false)", {"*"}),
    ("SELECT set_config(name, 'x', false) FROM t", {"*"}),
    ("SET sort_mem = 1", {"sort_mem", "work_mem"}),
    ("SET", {"*"}),
    ("DISCARD ALL", {"all"}),
    ("SET ROLE a; SET search_path = b", {"role", "search_path"}),
    ("SELECT 1", set()),
    ("ALTER ROLE r SET search_path = x", {"search_path"}),
]


@pytest.mark.parametrize(("sql", "expected"), SETTINGS_CASES)
def test_settings(sql: str, expected: set[str]) -> None:
    assert classify(sql).settings == frozenset(expected), sql


PREPARED_CASES: list[tuple[str, set[str], set[str], set[str], set[str]]] = [
    # sql, classes, prepares, executes, deallocates
    ("PREPARE p AS DELETE FROM t", {"write"}, {"p"}, set(), set()),
    ('PREPARE "P" (int) AS SELECT * FROM t WHERE a = $1', {"read"}, {"P"}, set(), set()),
    ("PREPARE P AS SELECT pg_read_file('x')", {"read", "file"}, {"p"}, set(), set()),
    ("EXECUTE p", set(), set(), {"p"}, set()),
    ('EXECUTE "P" (1)', set(), set(), {"P"}, set()),
    ("EXECUTE p(pg_read_file('x'))", {"file"}, set(), {"p"}, set()),
    ("EXPLAIN ANALYZE EXECUTE p", set(), set(), {"p"}, set()),
    ("EXPLAIN EXECUTE p", {"read"}, set(), {"p"}, set()),
    ("CREATE TABLE t AS EXECUTE p", {"ddl", "write"}, set(), {"p"}, set()),
    ("DEALLOCATE p", {"session"}, set(), set(), {"p"}),
    ("DEALLOCATE PREPARE p", {"session"}, set(), set(), {"p"}),
    ('DEALLOCATE "P"', {"session"}, set(), set(), {"P"}),
    ("DEALLOCATE ALL", {"session"}, set(), set(), {"*"}),
    ("DEALLOCATE PREPARE ALL", {"session"}, set(), set(), {"*"}),
    ("DISCARD ALL", {"session"}, set(), set(), {"*"}),
    (
        "PREPARE a AS SELECT 1; EXECUTE a; DEALLOCATE a",
        {"read", "session"},
        {"a"},
        {"a"},
        {"a"},
    ),
    ("PREPARE TRANSACTION 'x'", {"transaction"}, set(), set(), set()),
]


@pytest.mark.parametrize(("sql", "classes", "prepares", "executes", "deallocates"), PREPARED_CASES)
def test_prepared_statements(
    sql: str, classes: set[str], prepares: set[str], executes: set[str], deallocates: set[str]
) -> None:
    r = classify(sql)
    assert r.classes == frozenset(classes), (sql, r)
    assert r.prepares == frozenset(prepares), (sql, r)
    assert r.executes == frozenset(executes), (sql, r)
    assert r.deallocates == frozenset(deallocates), (sql, r)


def test_execute_arguments_report_functions() -> None:
    r = classify("EXECUTE p(pg_read_file('/etc/passwd'), 1)")
    assert r.functions == {"pg_read_file"}
    assert "file" in r.classes and not r.unknown


def test_quoted_and_unicode_relations() -> None:
    assert classify('DELETE FROM U&"\\0073ecret"').relations == {"secret"}
    assert classify('DELETE FROM "Secret"').relations == {"Secret"}
    assert classify('DeLeTe/**/FrOm "Secret"').classes == {"write"}


def test_sensitive_functions_are_crosschecked() -> None:
    from hoopfast.policy.classify import PROCEDURAL_FUNCTIONS, SENSITIVE_FUNCTIONS

    assert PROCEDURAL_FUNCTIONS <= SENSITIVE_FUNCTIONS
    assert {"dblink", "dblink_exec", "query_to_xml", "ts_stat", "set_config"} <= SENSITIVE_FUNCTIONS


def test_no_sqlglot_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        classify("CREATE ROLE r; DROP OWNED BY r; CREATE AGGREGATE a (int) (sfunc = f)")
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]


def test_fast_enough() -> None:
    """A point SELECT stays in the tens of microseconds (generous bound for CI)."""
    import time

    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
    classify(sql)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            classify(sql)
        best = min(best, (time.perf_counter() - t0) / 200)
    assert best < 500e-6, best


def test_string_continuation_cannot_backtrack_for_hours() -> None:
    """A newline, many spaces and a comment the continuation may not hold
    (/**/): the pattern's nested quantifier backtracked exponentially (24
    spaces 0.5 s, 40 hours), in C, holding the GIL, where no time limit
    reaches."""
    started = time.monotonic()
    c = classify("SELECT 'a'\n" + " " * 5000 + "/**/'b'")
    assert time.monotonic() - started < 1
    assert c.statements == 1


def test_statement_names_are_cut_as_the_server_cuts_them() -> None:
    """An identifier past 63 bytes is cut at a character boundary."""
    from hoopfast.policy.classify import statement_name

    assert statement_name("p" * 70) == "p" * 63
    assert statement_name("p" * 62 + "é" + "x") == "p" * 62  # (é would end at byte 64)
    assert statement_name("short") == "short"
    c = classify(f"PREPARE {'q' * 70} AS SELECT 1; EXECUTE {'q' * 64}; DEALLOCATE {'q' * 65}")
    assert c.prepares == c.executes == c.deallocates == {"q" * 63}
