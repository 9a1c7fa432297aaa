"""asyncpg, unmodified, through the gateway: extended protocol and binary
format everywhere, its own statement cache, COPY, cursors, listeners,
cancellation on timeout and pools. Scenarios run both through the gateway
and directly, and must agree."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from hoopfast.devcluster import DevCluster
from tests.conftest import Roles
from tests.gateway import RunningGateway

Connect = Callable[..., Awaitable[asyncpg.Connection]]
Scenario = Callable[[asyncpg.Connection], Awaitable[Any]]


@pytest.fixture
def via(idle_gateway: RunningGateway) -> Connect:
    async def connect(connection: str = "main", **kw: Any) -> asyncpg.Connection:
        return await asyncpg.connect(**idle_gateway.asyncpg_kwargs(connection), **kw)

    return connect


@pytest.fixture
def direct(cluster: DevCluster, roles: Roles) -> Connect:
    async def connect(**kw: Any) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=cluster.host,
            port=cluster.port,
            user=roles.scram[0],
            password=roles.scram[1],
            database="app",
            ssl=ssl.create_default_context(cafile=str(cluster.ca_file)),
            **kw,
        )

    return connect


def both(via: Connect, direct: Connect, scenario: Scenario, **kw: Any) -> Any:
    """Run ``scenario`` through the gateway and directly; they must agree."""

    async def run(connect: Connect) -> Any:
        conn = await connect(**kw)
        try:
            return await scenario(conn)
        finally:
            await conn.close(timeout=5)

    got = asyncio.run(run(via))
    expected = asyncio.run(run(direct))
    assert got == expected
    return got


def rows(records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [tuple(r.items()) for r in records]


# ---------------------------------------------------------------- fetch and types

TYPES_QUERY = """
SELECT
    42::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
    123456789012345678901234567890.123456789::numeric AS num, 1.5::float4 AS f4,
    -1e300::float8 AS f8, 'héllo ✓'::text AS txt, 'x'::char(3) AS ch,
    '\\x00ff10deadbeef'::bytea AS bin, true AS b, NULL::int AS nul,
    '2024-02-29 12:34:56.789012+05:30'::timestamptz AS tstz,
    '2024-02-29 12:34:56.789012'::timestamp AS ts, '2024-02-29'::date AS d,
    '23:59:59.999999'::time AS t, '1 year 2 mons 3 days 04:05:06.7'::interval AS iv,
    '{"a": [1, 2, {"b": null}]}'::json AS js, '{"a": [1, 2, {"b": null}]}'::jsonb AS jsb,
    ARRAY[1, NULL, 3]::int[] AS arr_int, ARRAY[['a', 'b'], ['c', NULL]]::text[] AS arr_txt,
    ARRAY[]::int8[] AS arr_empty, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
    '192.168.0.1/24'::inet AS ip, '[1,10)'::int4range AS rng, ROW(1, 'x') AS rec,
    point(1.5, 2) AS pt, 'a & b'::tsquery AS tsq, repeat('z', 100000) AS bigtext
"""


def test_direct_tls_with_the_protocol_named_and_without(idle_gateway: RunningGateway) -> None:
    """asyncpg's direct_tls: with its context naming ALPN "postgresql" the
    session runs (its types through asyncio's TLS); without, it is refused
    as PostgreSQL 17 refuses it."""
    kwargs = idle_gateway.asyncpg_kwargs()

    async def run(alpn: list[str], direct_tls: bool = True) -> Any:
        context = ssl.create_default_context(cafile=str(idle_gateway.certs.ca_file))
        if alpn:
            context.set_alpn_protocols(alpn)
        conn = await asyncpg.connect(**{**kwargs, "ssl": context}, direct_tls=direct_tls)
        try:
            return rows(await conn.fetch(TYPES_QUERY))
        finally:
            await conn.close(timeout=5)

    got = asyncio.run(run(["postgresql"]))
    assert got == asyncio.run(run([], direct_tls=False))  # (as through SSLRequest)
    assert dict(got[0])["bigtext"] == "z" * 100_000
    with pytest.raises(asyncpg.PostgresError, match="ALPN"):
        asyncio.run(run([]))


def test_fetch_many_types_equal_direct(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        record = await conn.fetchrow(TYPES_QUERY)
        assert record is not None
        return (
            tuple(record.items()),
            await conn.fetchval("SELECT $1::int8 * 2", 21),
            await conn.fetchval("SELECT 'x' WHERE false"),
            rows(await conn.fetch("SELECT g, g::text || 'x' FROM generate_series(1, 1000) g")),
        )

    record, doubled, none, many = both(via, direct, scenario)
    values = dict(record)
    assert values["bin"] == b"\x00\xff\x10\xde\xad\xbe\xef" and values["nul"] is None
    assert values["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert values["arr_int"] == [1, None, 3] and len(values["bigtext"]) == 100000
    assert doubled == 42 and none is None and len(many) == 1000


def test_parameters_round_trip_equal_direct(via: Connect, direct: Connect) -> None:
    params: list[Any] = [
        -(2**62),
        decimal.Decimal("-0.000000000000000000001"),
        3.25,
        "naïve ✓ 'quotes' \\ back",
        b"\x00\x01\x02" * 5000,
        None,
        False,
        dt.datetime(2001, 2, 3, 4, 5, 6, 789, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.date(1999, 12, 31),
        dt.timedelta(days=3, seconds=7),
        '{"k": [1, "v"]}',
        [1, 2, None],
        ["a", "b,c", '"q"'],
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        asyncpg.Range(1, 5),
    ]
    types = [
        "int8",
        "numeric",
        "float8",
        "text",
        "bytea",
        "int4",
        "bool",
        "timestamptz",
        "date",
        "interval",
        "jsonb",
        "int4[]",
        "text[]",
        "uuid",
        "int4range",
    ]
    query = "SELECT " + ", ".join(f"${i + 1}::{t}" for i, t in enumerate(types))

    async def scenario(conn: asyncpg.Connection) -> Any:
        record = await conn.fetchrow(query, *params)
        return tuple(record.values())

    got = both(via, direct, scenario)
    assert got[0] == -(2**62) and got[4] == b"\x00\x01\x02" * 5000 and got[5] is None
    assert got[7] == params[7]


def test_large_fetch_equal_direct(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        return [
            tuple(r)
            for r in await conn.fetch(
                "SELECT g, md5(g::text), g::numeric / 7 FROM generate_series(1, 100000) g"
            )
        ]

    got = both(via, direct, scenario)
    assert len(got) == 100000 and got[-1][0] == 100000


# ---------------------------------------------------------------- prepared statements


def test_prepared_statements_reused(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        stmt = await conn.prepare(
            "SELECT aid, abalance, $2::text FROM pgbench_accounts WHERE aid = $1"
        )
        results = [tuple(await stmt.fetchrow(i, f"p{i}")) for i in range(1, 301)]
        described = (
            [t.name for t in stmt.get_parameters()],
            [(a.name, a.type.name) for a in stmt.get_attributes()],
        )
        # The statement cache prepares the same query once, and reuses it.
        for i in range(50):
            assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
        prepared = await conn.fetch(
            "SELECT statement FROM pg_prepared_statements WHERE name LIKE '__asyncpg_%' ORDER BY 1"
        )
        named = await conn.prepare("SELECT $1::text || '!'", name="my_named_stmt")
        assert await named.fetchval("hi") == "hi!"
        names = await conn.fetch(
            "SELECT name FROM pg_prepared_statements WHERE name = 'my_named_stmt'"
        )
        return results, described, [r[0] for r in prepared], len(names)

    results, described, prepared, named = both(via, direct, scenario)
    assert results[0] == (1, 0, "p1") and len(results) == 300
    assert described == (
        ["int4", "text"],
        [("aid", "int4"), ("abalance", "int4"), ("text", "text")],
    )
    assert "SELECT $1::int + 1" in prepared
    assert named == 1


def test_executemany(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute("CREATE TEMP TABLE em (i int, s text, b bytea)")
        await conn.executemany(
            "INSERT INTO em VALUES ($1, $2, $3)",
            [(i, f"s{i}", bytes([i % 256]) * 10) for i in range(5000)],
        )
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("ALTER TABLE em ALTER COLUMN i SET NOT NULL")
            await conn.executemany(
                "INSERT INTO em VALUES ($1, $2, $3)", [(1, "a", b""), (None, "b", b"")]
            )
        return tuple(await conn.fetchrow("SELECT count(*), sum(i), max(s), sum(length(b)) FROM em"))

    assert both(via, direct, scenario) == (5000, sum(range(5000)), "s999", 50000)


# ---------------------------------------------------------------- COPY


def test_copy_equal_direct(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute("SET TimeZone = 'UTC'")
        await conn.execute("CREATE TEMP TABLE cp (i int, s text, ts timestamptz, b bytea)")
        records = [
            (
                i,
                f"r{i}\t\n",
                dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i),
                None if i % 5 else b"\x01\x02",
            )
            for i in range(50000)
        ]
        status_records = await conn.copy_records_to_table("cp", records=records)
        source = io.BytesIO()
        await conn.copy_from_query(
            "SELECT g, 'q' || g, '2021-01-01'::timestamptz, NULL FROM generate_series(1, 50000) g",
            output=source,
            format="csv",
        )
        source.seek(0)
        status_table = await conn.copy_to_table("cp", source=source, format="csv")
        out_text = io.BytesIO()
        await conn.copy_from_table("cp", output=out_text)
        out_binary = io.BytesIO()
        await conn.copy_from_query(
            "SELECT * FROM cp ORDER BY i, s", output=out_binary, format="binary"
        )
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            chunks.append(bytes(chunk))

        await conn.copy_from_query("SELECT i FROM cp WHERE i < 100 ORDER BY i", output=sink)
        return (
            status_records,
            status_table,
            out_text.getvalue(),
            out_binary.getvalue(),
            b"".join(chunks),
            await conn.fetchval("SELECT count(*) FROM cp"),
        )

    got = both(via, direct, scenario)
    assert got[:2] == ("COPY 50000", "COPY 50000")
    assert got[2].count(b"\n") == 100000 and got[5] == 100000
    assert got[4] == b"0\n" + b"".join(b"%d\n%d\n" % (i, i) for i in range(1, 100))


def test_copy_error_then_usable(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute("CREATE TEMP TABLE ce (i int)")
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await conn.copy_to_table("ce", source=io.BytesIO(b"1\n2\nnope\n4\n"))

        async def failing() -> Any:
            yield b"5\n"
            raise RuntimeError("source broke")

        with pytest.raises(RuntimeError):
            await conn.copy_to_table("ce", source=failing())
        return await conn.fetchval("SELECT count(*) FROM ce"), await conn.fetchval("SELECT 'ok'")

    assert both(via, direct, scenario) == (0, "ok")


# ---------------------------------------------------------------- transactions, cursors


def test_transactions(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute("CREATE TEMP TABLE tx (i int PRIMARY KEY)")
        async with conn.transaction():
            await conn.execute("INSERT INTO tx VALUES (1)")
            with pytest.raises(asyncpg.UniqueViolationError) as err:
                async with conn.transaction():  # savepoint
                    await conn.execute("INSERT INTO tx VALUES (2)")
                    await conn.execute("INSERT INTO tx VALUES (1)")
            constraint = err.value.constraint_name
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with conn.transaction():
                await conn.execute("INSERT INTO tx VALUES (3)")
                await conn.fetchval("SELECT 1 / $1::int", 0)
        in_tx = conn.is_in_transaction()
        async with conn.transaction(isolation="serializable", readonly=True):
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("DELETE FROM pgbench_history WHERE false")
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO tx VALUES (5)")
        await tx.rollback()
        return constraint, in_tx, [r[0] for r in await conn.fetch("SELECT i FROM tx ORDER BY i")]

    assert both(via, direct, scenario) == ("tx_pkey", False, [1])


def test_cursors(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        out: list[Any] = []
        async with conn.transaction():
            total = 0
            count = 0
            async for record in conn.cursor(
                "SELECT aid, abalance FROM pgbench_accounts WHERE aid > $1 ORDER BY aid",
                10,
                prefetch=333,
            ):
                total += record["aid"]
                count += 1
            out.append((count, total))
            cur = await conn.cursor("SELECT g FROM generate_series(1, 1000) g")
            out.append([r[0] for r in await cur.fetch(5)])
            out.append(await cur.forward(100))
            out.append((await cur.fetchrow())[0])
        return out

    out = both(via, direct, scenario)
    assert out[0] == (99990, sum(range(11, 100001)))
    assert out[1] == [1, 2, 3, 4, 5] and out[2] == 100 and out[3] == 106


def test_errors_carry_fields_and_session_survives(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        seen = []
        for query, args in [
            ("SELECT 1/0", ()),
            ("SELECT * FROM missing_table", ()),
            ("SELECT $1::int", ("not an int",)),
            ("SELEC oops", ()),
        ]:
            try:
                await conn.fetch(query, *args)
            except (asyncpg.PostgresError, asyncpg.DataError) as ex:
                seen.append(
                    (
                        type(ex).__name__,
                        getattr(ex, "sqlstate", None),
                        getattr(ex, "position", None),
                    )
                )
        seen.append(await conn.fetchval("SELECT 'alive'"))
        return seen

    got = both(via, direct, scenario)
    assert got[0] == ("DivisionByZeroError", "22012", None)
    assert got[1][:2] == ("UndefinedTableError", "42P01")
    assert got[-1] == "alive"


# ---------------------------------------------------------------- notifications, notices


def test_listeners_and_log_messages(via: Connect) -> None:
    async def main() -> None:
        listener, sender = await via(), await via()
        try:
            queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
            await listener.add_listener(
                "events", lambda c, pid, ch, payload: queue.put_nowait((ch, payload))
            )
            for i in range(20):
                await sender.execute(f"NOTIFY events, 'n{i}'")
            await sender.execute("SELECT pg_notify('events', $1)", "x" * 7000)
            got = [await asyncio.wait_for(queue.get(), 5) for _ in range(21)]
            assert got == [("events", f"n{i}") for i in range(20)] + [("events", "x" * 7000)]

            logs: list[tuple[str, str]] = []
            listener.add_log_listener(lambda c, msg: logs.append((msg.severity, msg.message)))
            await listener.execute(
                "DO $$ BEGIN RAISE NOTICE 'hello %', 1; RAISE WARNING 'w'; END $$"
            )
            await listener.fetchval("SELECT 1")
            assert logs == [("NOTICE", "hello 1"), ("WARNING", "w")]
            await listener.remove_listener("events", lambda *a: None)
        finally:
            await listener.close()
            await sender.close()

    asyncio.run(main())


# ---------------------------------------------------------------- timeouts and cancel


def test_timeout_cancels_the_query(via: Connect, idle_gateway: RunningGateway) -> None:
    async def main() -> None:
        conn = await via()
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            # (1 s: the statement must have reached the server when the
            # cancel does; see test_timeout_while_result_is_streaming.)
            for attempt in ("timeout=", "wait_for"):
                started = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    if attempt == "timeout=":
                        await conn.fetch("SELECT pg_sleep(10)", timeout=1.0)
                    else:
                        await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(10)"), 1.0)
                # asyncpg sent a CancelRequest and waited for the query to end:
                # the next query runs at once, on the same backend.
                assert await conn.fetchval("SELECT pg_backend_pid()", timeout=2) == pid
                assert time.monotonic() - started < 4
            assert not conn.is_closed()
        finally:
            await conn.close()

    asyncio.run(main())


def test_statement_timeout_setting(via: Connect, direct: Connect) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        with pytest.raises(asyncpg.QueryCanceledError) as err:
            await conn.fetchval("SELECT pg_sleep(5)")
        return err.value.sqlstate, str(err.value), await conn.fetchval("SELECT 3")

    got = both(via, direct, scenario, server_settings={"statement_timeout": "200"})
    assert got == ("57014", "canceling statement due to statement timeout", 3)


# ---------------------------------------------------------------- pools


def test_pool_parallel_queries(idle_gateway: RunningGateway) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(min_size=2, max_size=4, **idle_gateway.asyncpg_kwargs())
        try:
            assert pool.get_size() == 2
            started = time.monotonic()
            results = await asyncio.gather(
                *(pool.fetchval("SELECT $1::int FROM pg_sleep(0.2)", i) for i in range(16))
            )
            elapsed = time.monotonic() - started
            assert results == list(range(16))
            assert elapsed < 16 * 0.2 / 2  # ran in parallel on up to 4 connections
            pids = set()
            for _ in range(4):
                async with pool.acquire() as conn:
                    # A released connection was reset (RESET ALL, UNLISTEN, ...).
                    assert await conn.fetchval("SHOW application_name") in ("", None)
                    await conn.execute("SET application_name = 'dirty'")
                    await conn.execute("LISTEN pooled")
                    pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
            assert 1 <= len(pids) <= 4
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW application_name") == ""
        finally:
            await asyncio.wait_for(pool.close(), 10)

    asyncio.run(main())


def test_custom_types_introspection(via: Connect, cluster: DevCluster) -> None:
    """asyncpg introspects unknown types with its own large queries."""
    cluster.execute(
        "DROP TYPE IF EXISTS mood_t, pair_t CASCADE; "
        "CREATE TYPE mood_t AS ENUM ('sad', 'ok', 'happy'); "
        "CREATE TYPE pair_t AS (a int, b text); "
        "GRANT USAGE ON TYPE mood_t, pair_t TO PUBLIC",
        dbname="app",
    )

    async def main() -> Any:
        conn = await via()
        try:
            await conn.set_type_codec(
                "jsonb", encoder=lambda v: v, decoder=lambda v: "decoded:" + v, schema="pg_catalog"
            )
            return (
                await conn.fetchval("SELECT ARRAY['sad', 'happy']::mood_t[]"),
                tuple(await conn.fetchval("SELECT ROW(1, 'x')::pair_t")),
                await conn.fetchval("SELECT $1::mood_t", "ok"),
                await conn.fetchval("SELECT '{\"a\":1}'::jsonb"),
            )
        finally:
            await conn.close()

    try:
        assert asyncio.run(main()) == (["sad", "happy"], (1, "x"), "ok", 'decoded:{"a": 1}')
    finally:
        cluster.execute("DROP TYPE IF EXISTS mood_t, pair_t CASCADE", dbname="app")


def test_other_upstream_auth_connections(via: Connect) -> None:
    async def main() -> list[Any]:
        out = []
        for name in ("md5", "plain"):
            conn = await via(name)
            try:
                out.append(
                    (
                        await conn.fetchval("SELECT current_user"),
                        await conn.fetchval(
                            "SELECT sum(g) FROM generate_series(1, $1::int) g", 1000
                        ),
                    )
                )
            finally:
                await conn.close()
        return out

    assert asyncio.run(main()) == [("app_md5", 500500), ("app_plain", 500500)]


def test_many_concurrent_connections(via: Connect) -> None:
    async def one(i: int) -> tuple[int, int]:
        conn = await via()
        try:
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE c (i int) ON COMMIT DROP")
                await conn.copy_records_to_table("c", records=[(j,) for j in range(i * 100)])
                total = await conn.fetchval("SELECT coalesce(sum(i), 0) FROM c")
            return i, total
        finally:
            await conn.close()

    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(one(i) for i in range(30)))

    assert asyncio.run(main()) == [(i, sum(range(i * 100))) for i in range(30)]


def test_timeout_while_result_is_streaming(via: Connect) -> None:
    """The timeout fires while rows are flowing (not during a sleep): the
    cancel must reach the upstream and the protocol state resynchronise.

    PostgreSQL ignores a cancel that reaches a backend still waiting to
    read its next message (the libpq docs: a cancel is best effort), so a
    timeout that fires while the Bind is on its way loses the race, with
    or without a gateway (seen on a loaded CI machine, and reproduced
    directly). Hence the statement is prepared first, and the set-returning
    function is in the select list, where rows stream from the first one
    (in FROM, all 50 million are materialised before the first is sent)."""

    async def main() -> None:
        conn = await via()
        try:
            stream = await conn.prepare("SELECT generate_series(1, 50000000), repeat('x', 100)")
            with pytest.raises(asyncio.TimeoutError):
                await stream.fetch(timeout=1.0)
            assert await conn.fetchval("SELECT 'resynced'", timeout=5) == "resynced"
            stmt = await conn.prepare("SELECT $1::int * 3")
            assert [await stmt.fetchval(i) for i in range(10)] == [i * 3 for i in range(10)]
        finally:
            await conn.close()

    asyncio.run(main())


def test_copy_in_with_a_notice_per_row(via: Connect, direct: Connect) -> None:
    """Both directions busy at once: the client streams COPY data while the
    server streams a NOTICE for every row back, more than socket buffers
    hold (flow control in the gateway must not deadlock). asyncpg keeps
    reading while it writes; psycopg would deadlock even when direct."""

    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute(
            "CREATE TEMP TABLE noisy (i int, pad text);"
            "CREATE FUNCTION pg_temp.shout() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE NOTICE 'row % %', NEW.i, repeat('.', 200); RETURN NEW; END $$;"
            "CREATE TRIGGER noisy_t BEFORE INSERT ON noisy"
            " FOR EACH ROW EXECUTE FUNCTION pg_temp.shout()"
        )
        notices = []
        conn.add_log_listener(lambda c, msg: notices.append(msg.message))
        status = await asyncio.wait_for(
            conn.copy_records_to_table("noisy", records=[(i, "p" * 300) for i in range(30000)]), 30
        )
        await conn.fetchval("SELECT 1")
        return (
            status,
            len(notices),
            notices[-1][:10],
            tuple(await conn.fetchrow("SELECT count(*), sum(i) FROM noisy")),
        )

    assert both(via, direct, scenario) == (
        "COPY 30000",
        30000,
        "row 29999 ",
        (30000, sum(range(30000))),
    )
