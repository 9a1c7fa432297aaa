"""psycopg 3, unmodified, through the gateway: every scenario is run both
through the gateway and directly against the cluster, and must give the same
results (rows, types, errors, notices, parameter status...)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors as e
from psycopg import pq
from psycopg.rows import TupleRow

from hoopfast.devcluster import DevCluster
from tests.conftest import Roles
from tests.gateway import RunningGateway

Conn = psycopg.Connection[TupleRow]


@pytest.fixture
def direct(cluster: DevCluster, roles: Roles) -> Callable[..., Conn]:
    """Open a direct connection (bypassing the gateway) as the same role."""

    def connect(**kw: Any) -> Conn:
        kw.setdefault("autocommit", True)
        return psycopg.connect(cluster.dsn(*roles.scram, dbname="app"), **kw)

    return connect


@pytest.fixture
def via(idle_gateway: RunningGateway) -> Callable[..., Conn]:
    """Open a connection through the gateway (connection "main")."""

    def connect(connection: str = "main", **kw: Any) -> Conn:
        kw.setdefault("autocommit", True)
        return psycopg.connect(idle_gateway.conninfo(connection), **kw)

    return connect


def both(
    via: Callable[..., Conn],
    direct: Callable[..., Conn],
    scenario: Callable[[Conn], Any],
    **kw: Any,
) -> Any:
    """Run ``scenario`` through the gateway and directly; they must agree."""
    with via(**kw) as conn:
        got = scenario(conn)
    with direct(**kw) as conn:
        expected = scenario(conn)
    assert got == expected
    return got


def describe(cur: psycopg.Cursor[Any]) -> list[tuple[str, int]]:
    assert cur.description is not None
    return [(c.name, c.type_code) for c in cur.description]


# ---------------------------------------------------------------- queries and types

TYPES_QUERY = """
SELECT
    42::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
    123456789012345678901234567890.123456789::numeric AS num,
    1.5::float4 AS f4, -1e300::float8 AS f8,
    'Infinity'::float8 AS finf,
    'héllo wörld ✓'::text AS txt, 'abc'::varchar(10) AS vc, 'x'::char(3) AS ch,
    '\\x00ff10deadbeef'::bytea AS bin, true AS b, NULL::int AS nul, NULL::text AS nultext,
    '2024-02-29 12:34:56.789012+05:30'::timestamptz AS tstz,
    '2024-02-29 12:34:56.789012'::timestamp AS ts, '2024-02-29'::date AS d,
    '23:59:59.999999'::time AS t, '1 year 2 mons 3 days 04:05:06.7'::interval AS iv,
    '{"a": [1, 2, {"b": null}], "c": "ü"}'::json AS js,
    '{"a": [1, 2, {"b": null}], "c": "ü"}'::jsonb AS jsb,
    ARRAY[1, NULL, 3]::int[] AS arr_int, ARRAY[['a', 'b'], ['c', NULL]]::text[] AS arr_txt,
    ARRAY[]::int8[] AS arr_empty, ARRAY['2024-01-01'::date] AS arr_date,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '192.168.0.1/24'::inet AS ip,
    '[1,10)'::int4range AS rng, 'foo'::name AS nm, 12345::oid AS o,
    ROW(1, 'x')::text AS rowtext, repeat('z', 100000) AS bigtext
"""


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_many_types_equal_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn], binary: bool
) -> None:
    def scenario(conn: Conn) -> Any:
        cur = conn.cursor(binary=binary)
        cur.execute(TYPES_QUERY)
        assert cur.pgresult is not None
        formats = {cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)}
        assert formats == {pq.Format.BINARY if binary else pq.Format.TEXT}
        return describe(cur), cur.fetchall()

    (desc, rows) = both(via, direct, scenario)
    row = dict(zip([name for name, _ in desc], rows[0], strict=True))
    assert row["bin"] == b"\x00\xff\x10\xde\xad\xbe\xef"
    assert row["nul"] is None and row["arr_int"] == [1, None, 3]
    assert row["jsb"] == {"a": [1, 2, {"b": None}], "c": "ü"}
    assert str(row["u"]) == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert len(row["bigtext"]) == 100000


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_parameters_round_trip_equal_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn], binary: bool
) -> None:
    import datetime as dt
    import decimal
    import uuid

    from psycopg.types.json import Json, Jsonb

    params = [
        7,
        -(2**62),
        decimal.Decimal("-0.000000000000000000001"),
        3.25,
        "naïve ✓ 'quotes' \\ back",
        b"\x00\x01\x02" * 1000,
        None,
        True,
        dt.datetime(2001, 2, 3, 4, 5, 6, 789, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.date(1999, 12, 31),
        dt.timedelta(days=3, seconds=7),
        Json({"k": [1, "v"]}),
        Jsonb([None, {"x": 1.5}]),
        [1, 2, None],
        ["a", "b,c", '"q"'],
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ]
    query = "SELECT " + ", ".join(["%s"] * len(params))
    if binary:
        query = query.replace("%s", "%b")

    def scenario(conn: Conn) -> Any:
        cur = conn.cursor(binary=binary)
        return cur.execute(query, params).fetchall()

    (row,) = both(via, direct, scenario)
    assert row[0] == 7 and row[5] == b"\x00\x01\x02" * 1000 and row[6] is None


def test_large_bytea_parameter_and_result(via: Callable[..., Conn]) -> None:
    """A 16 MB message each way, larger than any socket buffer."""
    blob = bytes(range(256)) * (16 * 4096)
    with via() as conn:
        got = conn.execute("SELECT %b::bytea, length(%b::bytea)", [blob, blob]).fetchone()
    assert got == (blob, len(blob))


def test_simple_queries_equal_direct(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    queries = [
        "SELECT 1",
        "SELECT current_user, current_database(), session_user",
        "SELECT count(*), sum(abalance) FROM pgbench_accounts",
        "SELECT bid, bbalance FROM pgbench_branches ORDER BY bid",
        "SELECT aid, bid FROM pgbench_accounts WHERE aid < 20 ORDER BY aid",
        "SHOW server_version",
        "SHOW client_encoding",
        "SELECT * FROM generate_series(1, 5) g WHERE false",
        "CREATE TEMP TABLE t (a int)",
        "INSERT INTO t SELECT generate_series(1, 10)",
        "UPDATE t SET a = a + 1 WHERE a > 5",
        "DELETE FROM t WHERE a < 3",
        "SELECT a FROM t ORDER BY a",
    ]

    def scenario(conn: Conn) -> Any:
        out = []
        for q in queries:
            cur = conn.execute(q)
            rows = cur.fetchall() if cur.description else None
            out.append((q, cur.statusmessage, cur.rowcount, rows))
        return out

    got = both(via, direct, scenario)
    assert got[2][3] == [(100000, 0)]
    assert got[1][3] == [("app", "app", "app")]
    assert got[11][1] == "DELETE 2"


def test_multi_statement_simple_query_and_nextset(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    def scenario(conn: Conn) -> Any:
        cur = conn.execute(
            "SELECT 1 AS a; SELECT 'two' AS b, 2.5::float8 AS c; "
            "CREATE TEMP TABLE m (x int); INSERT INTO m VALUES (1), (2); SELECT x FROM m ORDER BY x"
        )
        sets = []
        while True:
            sets.append(
                (
                    cur.statusmessage,
                    describe(cur) if cur.description else None,
                    cur.fetchall() if cur.description else None,
                )
            )
            if not cur.nextset():
                break
        return sets

    sets = both(via, direct, scenario)
    assert [s[2] for s in sets] == [[(1,)], [("two", 2.5)], None, None, [(1,), (2,)]]
    assert [s[0] for s in sets] == [
        "SELECT 1",
        "SELECT 1",
        "CREATE TABLE",
        "INSERT 0 2",
        "SELECT 2",
    ]


def test_multi_statement_error_stops_the_rest(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE ms (x int)")
        with pytest.raises(e.DivisionByZero) as err:
            conn.execute("INSERT INTO ms VALUES (1); SELECT 1/0; INSERT INTO ms VALUES (2)")
        # The implicit transaction of the multi-statement query was rolled back.
        return (
            err.value.sqlstate,
            conn.info.transaction_status,
            conn.execute("SELECT count(*) FROM ms").fetchone(),
        )

    assert both(via, direct, scenario) == ("22012", pq.TransactionStatus.IDLE, (0,))


@pytest.mark.parametrize("connection", ["main", "md5", "plain"])
def test_large_result_equal_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn], connection: str
) -> None:
    """Also over the "md5" connection, whose upstream leg is not encrypted."""
    query = "SELECT g, md5(g::text), g::numeric / 7 FROM generate_series(1, 200000) g"

    def scenario(conn: Conn) -> Any:
        text = conn.execute(query).fetchall()
        binary = conn.cursor(binary=True).execute(query).fetchall()
        assert text == binary
        return text

    with via(connection) as conn:
        got = scenario(conn)
    if query not in _DIRECT_RESULTS:  # the same for every connection
        with direct() as conn:
            _DIRECT_RESULTS[query] = scenario(conn)
    assert got == _DIRECT_RESULTS[query]
    assert len(got) == 200000 and got[-1][0] == 200000


_DIRECT_RESULTS: dict[str, Any] = {}


def test_streaming_with_slow_consumer_and_early_break(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    """Backpressure: the client stops reading for a while (the gateway must
    buffer at most its high-water mark and resume), then abandons the stream
    (psycopg cancels the rest) and the session stays usable."""
    query = "SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g"

    def scenario(conn: Conn) -> Any:
        seen = 0
        total = 0
        for row in conn.cursor().stream(query):
            seen += 1
            total += row[0]
            if seen == 10:
                time.sleep(0.5)
        broke_at = None
        for row in conn.cursor().stream(query):
            if row[0] == 1000:
                broke_at = row[0]
                break
        return seen, total, broke_at, conn.execute("SELECT 'usable'").fetchone()

    assert both(via, direct, scenario) == (100000, 100000 * 100001 // 2, 1000, ("usable",))


def test_client_vanishes_mid_result_and_mid_copy(via: Callable[..., Conn]) -> None:
    """The client goes away while the upstream is still sending (or while a
    COPY FROM STDIN is half sent): the session ends, nothing leaks
    (idle_gateway checks), and other sessions are unaffected."""
    import socket

    with via() as bystander:
        conn = via()
        conn.pgconn.send_query(b"SELECT g, repeat('y', 500) FROM generate_series(1, 2000000) g")
        time.sleep(0.2)
        conn.close()  # Terminate while the result is still coming
        conn = via()
        conn.pgconn.send_query(b"SELECT g FROM generate_series(1, 2000000) g")
        time.sleep(0.2)
        # A network drop rather than a Terminate.
        socket.socket(fileno=os.dup(conn.pgconn.socket)).shutdown(socket.SHUT_RDWR)
        conn.close()
        with (
            via() as conn,
            pytest.raises(psycopg.OperationalError),
            conn.cursor().copy("COPY pgbench_history FROM STDIN") as copy,
        ):
            copy.write(b"1\t1\t1\t1\t2020-01-01\t\n" * 1000)
            socket.socket(fileno=os.dup(conn.pgconn.socket)).shutdown(socket.SHUT_RDWR)
            copy.write(b"1\t1\t1\t1\t2020-01-01\t\n" * 1000)
        assert bystander.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)


# ---------------------------------------------------------------- prepared statements


def _prepared(conn: Conn) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT name, statement FROM pg_prepared_statements "
        "WHERE name LIKE '_pg3_%%' AND statement NOT LIKE '%%pg_prepared_statements%%' "
        "ORDER BY name",
        prepare=False,
    ).fetchall()


def test_server_side_prepared_statements_upstream(via: Callable[..., Conn]) -> None:
    with via() as conn:
        assert conn.prepare_threshold == 5
        for i in range(8):
            assert conn.execute("SELECT %s::int + 1, 'auto'", [i]).fetchone() == (i + 1, "auto")
        # After the threshold psycopg PREPAREs it; the upstream backend holds it.
        prepared = _prepared(conn)
        assert any("'auto'" in stmt for _, stmt in prepared)

        conn.prepare_threshold = 0
        for i in range(3):
            cur = conn.execute("SELECT aid, abalance FROM pgbench_accounts WHERE aid = %s", [i + 1])
            assert cur.fetchone() == (i + 1, 0)
        # And explicit prepare=True, binary too.
        cur = conn.cursor(binary=True)
        for i in range(20):
            assert cur.execute("SELECT %s::text || 'x'", [str(i)], prepare=True).fetchone() == (
                f"{i}x",
            )
        statements = [stmt for _, stmt in _prepared(conn)]
        assert len(statements) == 3
        assert any("pgbench_accounts" in s for s in statements)


def test_prepared_statement_after_deallocate_all(via: Callable[..., Conn]) -> None:
    with via(prepare_threshold=0) as conn:
        assert conn.execute("SELECT %s::int", [1]).fetchone() == (1,)
        assert len(_prepared(conn)) >= 1
        conn.execute("DEALLOCATE ALL")
        # psycopg notices the DEALLOCATE ALL and prepares again.
        assert conn.execute("SELECT %s::int", [2]).fetchone() == (2,)


# ---------------------------------------------------------------- pipeline mode


def test_pipeline_many_executes(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE p (i int, s text)")
        with conn.pipeline():
            cur = conn.cursor()
            cur.executemany("INSERT INTO p VALUES (%s, %s)", [(i, str(i) * 3) for i in range(2000)])
            curs = [conn.execute("SELECT %s::int * 2", [i]) for i in range(300)]
        doubled = [c.fetchone() for c in curs]
        assert doubled == [(i * 2,) for i in range(300)]
        return conn.execute("SELECT count(*), sum(i), max(s) FROM p").fetchone()

    assert both(via, direct, scenario) == (2000, sum(range(2000)), "999999999")


def test_pipeline_error_discards_until_sync(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE pe (i int)")
        outcome: list[Any] = []
        with conn.pipeline() as p:
            conn.execute("INSERT INTO pe VALUES (1)")
            p.sync()
            # Where psycopg raises depends on when the error arrives (it
            # reads results opportunistically): any of these calls may.
            with pytest.raises(e.DivisionByZero):
                conn.execute("INSERT INTO pe VALUES (2)")
                conn.execute("SELECT 1/0")
                conn.execute("INSERT INTO pe VALUES (3)")
                p.sync()
            with contextlib.suppress(e.PipelineAborted):
                p.sync()
            cur = conn.execute("SELECT 'after sync'")
        outcome.append(cur.fetchone())
        outcome.append(conn.execute("SELECT array_agg(i ORDER BY i) FROM pe").fetchone())
        outcome.append(conn.info.transaction_status)
        return outcome

    got = both(via, direct, scenario)
    assert got[-3:] == [("after sync",), ([1],), pq.TransactionStatus.IDLE]


# ---------------------------------------------------------------- COPY

COPY_ROWS = 100_000
COPY_SOURCE = (
    "SELECT g AS id, 'row ' || g || E'\\ttab\\n\"q\",' AS txt, g::numeric / 3 AS num, "
    "CASE WHEN g % 10 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END AS bin, "
    "'2020-01-01'::timestamptz + g * interval '1 minute' AS ts "
    f"FROM generate_series(1, {COPY_ROWS}) g"
)
COPY_TABLE = "id int, txt text, num numeric, bin bytea, ts timestamptz"


def _copy_out(conn: Conn, sql: str) -> bytes:
    out = bytearray()
    with conn.cursor().copy(sql) as copy:
        for chunk in copy:
            out += chunk
    return bytes(out)


@pytest.mark.parametrize(
    "options", ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"], ids=["text", "csv", "binary"]
)
def test_copy_to_stdout_equal_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn], options: str
) -> None:
    def scenario(conn: Conn) -> bytes:
        conn.execute("SET TimeZone = 'UTC'")
        return _copy_out(conn, f"COPY ({COPY_SOURCE}) TO STDOUT {options}")

    data = both(via, direct, scenario)
    assert len(data) > 5_000_000
    if options == "":
        assert data.count(b"\n") == COPY_ROWS


@pytest.mark.parametrize(
    "options", ["", "(FORMAT csv)", "(FORMAT binary)"], ids=["text", "csv", "binary"]
)
def test_copy_from_stdin_bytes(
    via: Callable[..., Conn], direct: Callable[..., Conn], options: str
) -> None:
    """Data copied out directly, copied in through the gateway, copied out
    directly again: byte for byte the same."""
    table = "copy_in_" + {"": "text", "(FORMAT csv)": "csv", "(FORMAT binary)": "binary"}[options]
    with direct() as d:
        d.execute("SET TimeZone = 'UTC'")
        d.execute(f"DROP TABLE IF EXISTS {table}")
        d.execute(f"CREATE TABLE {table} ({COPY_TABLE})")
        source = _copy_out(d, f"COPY ({COPY_SOURCE}) TO STDOUT {options}")
    try:
        with via() as conn:
            with conn.cursor().copy(f"COPY {table} FROM STDIN {options}") as copy:
                for i in range(0, len(source), 65536):
                    copy.write(source[i : i + 65536])
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (COPY_ROWS,)
        with direct() as d:
            d.execute("SET TimeZone = 'UTC'")
            assert _copy_out(d, f"COPY {table} TO STDOUT {options}") == source
    finally:
        with direct() as d:
            d.execute(f"DROP TABLE IF EXISTS {table}")


def test_copy_rows_round_trip_equal_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    import datetime as dt

    rows = [
        (
            i,
            f"t{i}\t\n\\",
            None if i % 7 == 0 else bytes([i % 256]) * 3,
            dt.date(2000, 1, 1) + dt.timedelta(i),
        )
        for i in range(20000)
    ]

    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE cr (i int, s text, b bytea, d date)")
        with conn.cursor().copy("COPY cr FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "bytea", "date"])
            for row in rows:
                copy.write_row(row)
        with conn.cursor().copy("COPY cr (i, s) FROM STDIN") as copy:
            for i in range(1, 101):
                copy.write_row((-i, None))
        with conn.cursor().copy(
            "COPY (SELECT * FROM cr WHERE i >= 0 ORDER BY i) TO STDOUT"
        ) as copy:
            copy.set_types(["int4", "text", "bytea", "date"])
            out = list(copy.rows())
        assert out == rows
        return conn.execute("SELECT count(*), count(s), count(b) FROM cr").fetchone()

    assert both(via, direct, scenario) == (20100, 20000, 20000 - len(range(0, 20000, 7)))


def test_copy_in_aborted_by_client_then_session_usable(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    class Boom(Exception):
        pass

    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE ca (i int)")
        with pytest.raises(Boom), conn.cursor().copy("COPY ca FROM STDIN") as copy:
            copy.write(b"1\n2\n")
            raise Boom
        status = conn.info.transaction_status
        # A bad row makes the server fail the COPY: same error both ways.
        with (
            pytest.raises(e.InvalidTextRepresentation) as err,
            conn.cursor().copy("COPY ca FROM STDIN") as copy,
        ):
            copy.write(b"1\nnot a number\n3\n")
        return status, err.value.sqlstate, conn.execute("SELECT count(*) FROM ca").fetchone()

    assert both(via, direct, scenario) == (pq.TransactionStatus.IDLE, "22P02", (0,))


# ---------------------------------------------------------------- errors, transactions


def test_error_mid_transaction_then_rollback(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    def scenario(conn: Conn) -> Any:
        seen: list[Any] = [conn.info.transaction_status]
        conn.execute("CREATE TEMP TABLE et (i int PRIMARY KEY)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO et VALUES (1)")
        seen.append(conn.info.transaction_status)
        with pytest.raises(e.DivisionByZero) as err:
            conn.execute("SELECT 1/0")
        diag = err.value.diag
        seen.append((diag.sqlstate, diag.severity, diag.message_primary))
        seen.append(conn.info.transaction_status)
        with pytest.raises(e.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        seen.append(conn.info.transaction_status)
        # Savepoints: the error is recovered inside the transaction.
        with conn.transaction():
            conn.execute("INSERT INTO et VALUES (2)")
            with pytest.raises(e.UniqueViolation) as err2, conn.transaction():
                conn.execute("INSERT INTO et VALUES (2)")
            seen.append((err2.value.diag.constraint_name, err2.value.diag.table_name))
            conn.execute("INSERT INTO et VALUES (3)")
        seen.append(conn.execute("SELECT array_agg(i ORDER BY i) FROM et").fetchone())
        with pytest.raises(e.UndefinedTable) as err3:
            conn.execute("SELECT * FROM no_such_table")
        seen.append((err3.value.diag.sqlstate, err3.value.diag.statement_position))
        seen.append(conn.execute("SELECT 'alive'").fetchone())
        return seen

    got = both(via, direct, scenario)
    T = pq.TransactionStatus
    assert got[0] == T.IDLE and got[1] == T.INTRANS and got[3] == T.INERROR and got[4] == T.IDLE
    assert got[2] == ("22012", "ERROR", "division by zero")
    assert got[6] == ([2, 3],) and got[-1] == ("alive",)


def test_non_autocommit_transactions(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        T = pq.TransactionStatus
        statuses = [conn.info.transaction_status]
        conn.execute("CREATE TEMP TABLE nt (i int) ON COMMIT PRESERVE ROWS")
        statuses.append(conn.info.transaction_status)
        conn.commit()
        conn.execute("INSERT INTO nt VALUES (1)")
        conn.rollback()
        conn.execute("INSERT INTO nt VALUES (2)")
        conn.commit()
        statuses.append(conn.info.transaction_status)
        assert statuses == [T.IDLE, T.INTRANS, T.IDLE]
        return conn.execute("SELECT array_agg(i) FROM nt").fetchone()

    assert both(via, direct, scenario, autocommit=False) == ([2],)


# ---------------------------------------------------------------- notices, notifications


def test_notices_equal_direct(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        notices: list[tuple[str | None, ...]] = []
        conn.add_notice_handler(
            lambda d: notices.append((d.severity, d.sqlstate, d.message_primary, d.message_detail))
        )
        conn.execute("SET client_min_messages = 'debug1'")
        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'hello %', 42; "
            "RAISE WARNING 'careful' USING DETAIL = 'details here', ERRCODE = '01000'; "
            "RAISE INFO 'info'; END $$"
        )
        conn.execute("DO $$ BEGIN FOR i IN 1..2000 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$")
        conn.execute("DROP TABLE IF EXISTS surely_not_there")
        return notices

    notices = both(via, direct, scenario)
    assert notices[:3] == [
        ("NOTICE", "00000", "hello 42", None),
        ("WARNING", "01000", "careful", "details here"),
        ("INFO", "00000", "info", None),
    ]
    assert len([n for n in notices if (n[2] or "").startswith("n")]) == 2000
    assert notices[-1][2] == 'table "surely_not_there" does not exist, skipping'


def test_huge_error_and_notice_messages(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    """ErrorResponse is a message the gateway inspects: a 3 MB one must be
    relayed whole, as must a 3 MB NoticeResponse."""

    def scenario(conn: Conn) -> Any:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE '%', repeat('n', 3000000); END $$")
        with pytest.raises(e.RaiseException) as err:
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', 3000000) "
                "USING DETAIL = repeat('d', 100000), HINT = 'FATAL is only a word here'; END $$"
            )
        diag = err.value.diag
        return (
            [len(n) for n in notices],
            len(diag.message_primary or ""),
            len(diag.message_detail or ""),
            diag.message_hint,
            diag.severity,
            conn.execute("SELECT 'alive'").fetchone(),
        )

    assert both(via, direct, scenario) == (
        [3000000],
        3000000,
        100000,
        "FATAL is only a word here",
        "ERROR",
        ("alive",),
    )


def test_listen_notify_between_gateway_sessions(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    with via() as listener, via() as sender, direct() as direct_sender:
        listener.execute("LISTEN chan_a")
        listener.execute('LISTEN "Chan B"')
        for i in range(5):
            sender.execute("SELECT pg_notify('chan_a', %s)", [f"payload {i}"])
        sender.execute("""NOTIFY "Chan B", 'x'""")
        direct_sender.execute("NOTIFY chan_a, 'from direct'")
        with sender.transaction():  # delivered only on commit
            sender.execute("NOTIFY chan_a, 'committed'")
        with pytest.raises(e.DivisionByZero), sender.transaction():
            sender.execute("NOTIFY chan_a, 'rolled back'")
            sender.execute("SELECT 1/0")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=8)]
        assert got == [
            *(("chan_a", f"payload {i}") for i in range(5)),
            ("Chan B", "x"),
            ("chan_a", "from direct"),
            ("chan_a", "committed"),
        ]
        # Also delivered while the listener is idle, picked up by the next query.
        received: list[Any] = []
        listener.add_notify_handler(received.append)
        sender.execute("NOTIFY chan_a, 'late'")
        time.sleep(0.2)
        listener.execute("SELECT 1")
        assert [(n.channel, n.payload) for n in received] == [("chan_a", "late")]
        # Named by the pid the sender's client knows (its BackendKeyData),
        # which is what drivers compare; pg_backend_pid() is the upstream's.
        assert received[0].pid == sender.info.backend_pid


def test_parameter_status(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    names = [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
        "session_authorization",
        "TimeZone",
        "application_name",
    ]

    def scenario(conn: Conn) -> Any:
        initial = {n: conn.info.parameter_status(n) for n in names}
        conn.execute("SET application_name = 'through the gate'")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET IntervalStyle = 'iso_8601'")
        after = {n: conn.info.parameter_status(n) for n in names}
        ts = conn.execute("SELECT '2024-01-01 00:00:00+00'::timestamptz::text").fetchone()
        # A SET rolled back reverts, with a new ParameterStatus.
        with pytest.raises(e.DivisionByZero), conn.transaction():
            conn.execute("SET application_name = 'rolled back'")
            assert conn.info.parameter_status("application_name") == "rolled back"
            conn.execute("SELECT 1/0")
        reverted = conn.info.parameter_status("application_name")
        return initial, after, ts, reverted

    initial, after, ts, reverted = both(via, direct, scenario, application_name="start")
    assert initial["application_name"] == "start" and initial["session_authorization"] == "app"
    assert after["application_name"] == "through the gate"
    assert after["TimeZone"] == "Asia/Tokyo" and after["DateStyle"] == "SQL, DMY"
    assert ts == ("01/01/2024 09:00:00 JST",)
    assert reverted == "through the gate"


def test_startup_options_are_forwarded(via: Callable[..., Conn]) -> None:
    with via(
        application_name="appname-x", options="-c search_path=pg_catalog -c work_mem=1234kB"
    ) as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("appname-x",)
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog",)
        assert conn.execute("SHOW work_mem").fetchone() == ("1234kB",)
        assert conn.info.parameter_status("application_name") == "appname-x"


# ---------------------------------------------------------------- server-side cursors


def test_named_cursor_equal_direct(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        out: list[Any] = []
        with conn.transaction():
            cur = conn.cursor("big", scrollable=True)
            cur.itersize = 777
            cur.execute("SELECT aid, abalance, filler FROM pgbench_accounts ORDER BY aid")
            rows = list(cur)
            out.append((len(rows), rows[0], rows[-1]))
            cur.scroll(10, mode="absolute")
            out.append(cur.fetchmany(3))
            cur.scroll(-2)
            out.append(cur.fetchone())
            cur.close()
            out.append(conn.execute("SELECT name FROM pg_cursors").fetchall())
        with conn.cursor("held", withhold=True, binary=True) as held:
            held.execute("SELECT g, g * 2 FROM generate_series(1, 5000) g")
            out.append(held.fetchmany(10))
            out.append(sum(r[1] for r in held))
        return out

    out = both(via, direct, scenario)
    assert out[0][0] == 100000 and out[0][1][0] == 1
    assert [r[0] for r in out[1]] == [11, 12, 13]
    assert out[4] == [(g, g * 2) for g in range(1, 11)]


# ---------------------------------------------------------------- cancel, timeouts


@contextmanager
def _after(delay: float, action: Callable[[], None]) -> Iterator[None]:
    timer = threading.Timer(delay, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


@pytest.mark.parametrize("connection", ["main", "md5", "plain"])
def test_cancel_safe_from_another_thread(via: Callable[..., Conn], connection: str) -> None:
    """libpq 17's PQcancelCreate (over TLS, as the connection's sslmode says),
    forwarded to upstreams reached with and without TLS."""
    with via(connection) as conn, via(connection) as bystander:
        bystander.execute("SELECT 1")
        started = time.monotonic()
        with _after(0.3, conn.cancel_safe), pytest.raises(e.QueryCanceled) as err:
            conn.execute("SELECT pg_sleep(10)")
        elapsed = time.monotonic() - started
        assert err.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(err.value)
        assert elapsed < 3
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        assert bystander.execute("SELECT 'unaffected'").fetchone() == ("unaffected",)


def test_cancel_during_copy_out(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        received = 0
        with (
            pytest.raises(e.QueryCanceled) as err,
            conn.cursor().copy(
                "COPY (SELECT generate_series(1, 100000000), repeat('c', 200)) TO STDOUT"
            ) as copy,
        ):
            for chunk in copy:
                received += len(chunk)
                if received > 1_000_000 and received - len(chunk) <= 1_000_000:
                    conn.cancel_safe()
        return err.value.sqlstate, received > 1_000_000, conn.execute("SELECT 'ok'").fetchone()

    assert both(via, direct, scenario) == ("57014", True, ("ok",))


# psycopg's legacy cancel() calls the blocking PQcancel() without releasing the
# GIL, which would starve the in-process gateway: that client runs in a child.
_LEGACY_CANCEL_CLIENT = r"""
import json, sys, threading, time
import psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    timer = threading.Timer(0.3, conn.cancel)
    timer.start()
    started = time.monotonic()
    out = {"sqlstate": None}
    try:
        conn.execute("SELECT pg_sleep(10)")
    except psycopg.Error as ex:
        out = {"sqlstate": ex.sqlstate, "message": str(ex)}
    out["elapsed"] = time.monotonic() - started
    out["after"] = conn.execute("SELECT 'still usable'").fetchone()[0]
print(json.dumps(out))
"""


def test_legacy_cancel_from_another_thread(idle_gateway: RunningGateway) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LEGACY_CANCEL_CLIENT, idle_gateway.conninfo()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["sqlstate"] == "57014", out
    assert "canceling statement due to user request" in out["message"]
    assert out["elapsed"] < 3
    assert out["after"] == "still usable"


def test_cancel_inside_transaction_and_pipeline_like_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("BEGIN")
        with _after(0.2, conn.cancel_safe), pytest.raises(e.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        status = conn.info.transaction_status
        conn.execute("ROLLBACK")
        # A cancel that arrives while idle is harmless.
        conn.cancel_safe()
        return status, conn.execute("SELECT 1").fetchone()

    assert both(via, direct, scenario) == (pq.TransactionStatus.INERROR, (1,))


def test_cancel_of_one_session_does_not_reach_another(via: Callable[..., Conn]) -> None:
    """Each gateway session has its own cancel key."""
    with via() as a, via() as b:
        assert a.info.backend_pid != b.info.backend_pid
        a.cancel_safe()  # a is idle: nothing to cancel
        started = time.monotonic()
        assert b.execute("SELECT pg_sleep(0.5), 'done'").fetchone() == ("", "done")
        assert time.monotonic() - started >= 0.45


def test_statement_timeout(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("SET statement_timeout = '200ms'")
        started = time.monotonic()
        with pytest.raises(e.QueryCanceled) as err:
            conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
        conn.execute("RESET statement_timeout")
        return (
            err.value.sqlstate,
            err.value.diag.message_primary,
            conn.execute("SELECT 2").fetchone(),
        )

    assert both(via, direct, scenario) == (
        "57014",
        "canceling statement due to statement timeout",
        (2,),
    )


def test_idle_session_fatal_is_relayed(via: Callable[..., Conn]) -> None:
    """The upstream ends the session (idle_session_timeout): the client gets
    the server's FATAL and the gateway session ends (idle_gateway checks)."""
    with via() as conn:
        conn.execute("SET idle_session_timeout = '100ms'")
        time.sleep(0.5)
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        assert "terminating connection due to idle-session timeout" in str(err.value)


def test_pg_terminate_backend_closes_the_client(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    with via() as conn, direct() as admin:
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (None,)
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        assert "terminating connection due to administrator command" in str(err.value)
        assert conn.closed


def test_terminated_while_streaming(via: Callable[..., Conn], direct: Callable[..., Conn]) -> None:
    """The upstream backend is terminated while the gateway holds back rows
    for a slow client: the client gets every row that was sent, in order,
    then an error; the session ends (idle_gateway checks)."""
    with via() as conn, direct() as admin:
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (None,)
        expected = 1
        with pytest.raises(psycopg.OperationalError):
            for g, _ in conn.cursor().stream(
                "SELECT g, repeat('x', 500) FROM generate_series(1, 5000000) g"
            ):
                assert g == expected
                expected += 1
                if g == 10:
                    time.sleep(0.3)  # let buffers fill up everywhere
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert expected > 10
        assert conn.closed or conn.broken


@pytest.mark.parametrize("attrs", ["read-write", "primary", "any"])
def test_target_session_attrs(via: Callable[..., Conn], attrs: str) -> None:
    with via(target_session_attrs=attrs) as conn:
        assert conn.execute("SELECT 'connected'").fetchone() == ("connected",)


@pytest.mark.parametrize("encoding", ["LATIN1", "WIN1252", "EUC_JP"])
def test_client_encoding_from_startup(
    via: Callable[..., Conn], direct: Callable[..., Conn], encoding: str
) -> None:
    text = "héllo" if encoding != "EUC_JP" else "日本語"

    def scenario(conn: Conn) -> Any:
        return (
            conn.info.encoding,
            conn.execute("SHOW client_encoding").fetchone(),
            conn.execute("SELECT %s::text, length(%s::text)", [text, text]).fetchone(),
        )

    _, shown, row = both(via, direct, scenario, client_encoding=encoding)
    assert shown == (encoding,) and row == (text, len(text))


def test_protocol_3_2_client_is_negotiated_down(
    via: Callable[..., Conn], direct: Callable[..., Conn]
) -> None:
    """libpq 18 asks for protocol 3.2 with max_protocol_version=latest; a 3.0
    server (PostgreSQL 15, and the gateway) negotiates it down to 3.0."""
    if pq.version() < 180000:
        pytest.skip("needs libpq 18")

    def scenario(conn: Conn) -> Any:
        with _after(0.3, conn.cancel_safe), pytest.raises(e.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        return conn.pgconn.protocol_version, conn.execute("SELECT 1").fetchone()

    assert both(via, direct, scenario, max_protocol_version="latest") == (3, (1,))


@pytest.mark.parametrize(
    "options",
    ["-c work_mem=bogus", "-c no_such_setting=1", "-c default_transaction_isolation=nope"],
)
def test_bad_startup_options_are_refused_like_direct(
    via: Callable[..., Conn], direct: Callable[..., Conn], options: str
) -> None:
    """The upstream refuses the startup: the client gets the server's error."""
    errors = []
    for connect in (via, direct):
        with pytest.raises(psycopg.OperationalError) as err:
            connect(options=options).close()
        errors.append(str(err.value).rsplit(" failed: ", 1)[-1])
    assert errors[0] == errors[1]
    assert errors[0].startswith("FATAL:  ") and (
        "invalid value" in errors[0] or "unrecognized" in errors[0]
    )
