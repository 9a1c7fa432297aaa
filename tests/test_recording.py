"""Session recording through the real gateway: what a session leaves in the
store, the spool's guarantees (kill -9, a store outage), tamper evidence,
who may read a trail, and the session's trace span."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import errno
import io
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import httpx
import psycopg
import pytest
from psycopg import pq

from hoopfast.cli import main as cli_main
from hoopfast.devcluster import DevCluster, free_port
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.proxy.postgres import messages as pg_messages
from hoopfast.recording.chain import verify_session
from hoopfast.settings import Settings
from hoopfast.store.records import EventFilter, EventRecord, SessionRow
from hoopfast.telemetry import Tracing
from tests.conftest import Roles
from tests.faultproxy import FaultProxy, Faults
from tests.gateway import RunningGateway, run_gateway
from tests.rawclient import RawClient, error_fields

T = TypeVar("T")


def _run(gw: RunningGateway, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, gw.loop).result(30)


def _person() -> str:
    return "rec-" + secrets.token_hex(4)


def sealed_session(gw: RunningGateway, subject: str, timeout: float = 15.0) -> SessionRow:
    """The one session ``subject`` ran, once the store has it sealed."""
    store = gw.runtime.store
    deadline = time.monotonic() + timeout
    while True:
        rows = _run(gw, store.sessions(EventFilter(subject=subject)))
        if rows and rows[0].seal is not None:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < deadline, f"no sealed session for {subject}: {rows}"
        time.sleep(0.05)


def trail(gw: RunningGateway, session: SessionRow) -> list[dict[str, Any]]:
    events = _run(gw, gw.runtime.store.session_events(session.session_id))
    keys = _run(gw, gw.runtime.store.signing_keys())
    assert verify_session(session.session_id, events, session.seal, keys) is None
    return [json.loads(e.data) for e in events]


def statements(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "statement"]


def _asyncpg(gw: RunningGateway, subject: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """``work`` on an asyncpg connection of ``subject``'s through the gateway."""

    async def run() -> T:
        kwargs = gw.asyncpg_kwargs(user=subject)
        kwargs["password"] = gw.token(subject)
        conn = await asyncpg.connect(**kwargs)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def psql(gw: RunningGateway, subject: str, script: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PGPASSWORD": gw.token(subject),
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(gw.certs.ca_file),
        "PGAPPNAME": "recording-test",
        "PGOPTIONS": "-c work_mem=8MB -c app.contact=x@example.com",
    }
    return subprocess.run(
        [
            "psql",
            "-X",
            "-h",
            gw.host,
            "-p",
            str(gw.port),
            "-U",
            subject,
            "-d",
            "main",
            "-v",
            "ON_ERROR_STOP=0",
        ],
        input=script,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_psql_session_is_recorded_completely(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    script = (
        "CREATE TEMP TABLE rec (id int, email text);\n"
        "INSERT INTO rec VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, NULL);\n"
        "SELECT id, email FROM rec ORDER BY id;\n"
        "SELECT 1/0;\n"
        "SELECT dblink('x', 'y');\n"
        "UPDATE rec SET id = id + 10 WHERE id < 3;\n"
    )
    done = psql(gw, who, script)
    assert "division by zero" in done.stderr
    assert "permission denied by hoopfast policy" in done.stderr
    session = sealed_session(gw, who)
    events = trail(gw, session)
    assert events[0]["kind"] == "session_start"
    assert events[-1]["kind"] == "session_end"
    start = events[0]
    assert start["application_name"] == "recording-test"
    # The startup parameters, as psql sent them.
    # (values through the detectors, as parameters are)
    assert start["startup"]["options"] == "-c work_mem=8MB -c app.contact=[REDACTED:email]"
    assert start["startup"]["application_name"] == "recording-test"
    assert start["startup"]["user"] == who and start["startup"]["database"] == "main"
    assert start["tls"]["version"].startswith("TLS")
    assert start["subject"] == who and start["connection"] == "main"
    ran = statements(events)
    assert [s["text"].strip() for s in ran] == [line for line in script.splitlines()]
    create, insert, select, zero, denied, update = ran
    assert create["tags"] == ["CREATE TABLE"] and create["verdict"] == "allow"
    assert insert["tags"] == ["INSERT 0 3"] and insert["rows"] == 3
    assert select["rows"] == 3
    assert select["results"][0]["columns"][1]["name"] == "email"
    assert select["results"][0]["rows"] == [
        ["1", "a@example.com"],
        ["2", "b@example.com"],
        ["3", None],
    ]
    assert select["bytes"] > 0 and select["duration_ms"] >= 0
    assert zero["error"]["sqlstate"] == "22012" and zero["verdict"] == "allow"
    assert denied["verdict"] == "deny" and denied["rule"].startswith("function:")
    assert denied["error"]["sqlstate"] == "42501"
    assert update["rows"] == 2
    assert events[-1]["statements"] == 6
    assert session.statements == 6
    assert [e["n"] for e in ran] == [1, 2, 3, 4, 5, 6]


def test_extended_protocol_texts_parameters_and_results(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        conn.execute("SELECT %s::text AS t, %s::int AS n", ("mail me: x@example.com", 5))
        for i in range(3):  # prepared after the first runs: Bind/Execute only
            conn.execute("SELECT %s::int * 2 AS doubled", (i,), prepare=True).fetchall()
        conn.cursor(binary=True).execute("SELECT 42::int4 AS answer").fetchall()
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1/%s::int", (0,))
            conn.execute("SELECT 'never runs'")
    events = statements(trail(gw, sealed_session(gw, who)))
    first = events[0]
    assert first["text"] == "SELECT $1::text AS t, $2::int AS n"
    # psycopg sends ints in binary, declaring their type in the Parse: the
    # trail shows them as their text (the declared type is the server's).
    assert first["params"] == ["mail me: [REDACTED:email]", "5"]
    assert first["results"][0]["rows"] == [["mail me: x@example.com", "5"]]
    doubled = [e for e in events if "doubled" in e["text"]]
    assert len(doubled) == 3
    assert [e["results"][0]["rows"] for e in doubled] == [[["0"]], [["2"]], [["4"]]]
    assert all(e["results"][0]["columns"][0]["name"] == "doubled" for e in doubled)
    binary = next(e for e in events if "answer" in e["text"])
    # (binary int4: kept as its text, _shown.shown_binary)
    assert binary["results"][0]["rows"] == [["42"]]
    failed = events[-1]
    assert failed["text"] == "SELECT 1/$1::int"
    assert failed["error"]["sqlstate"] == "22012"
    assert not any("never runs" in e["text"] for e in events)


def test_json_escapes_do_not_hide_a_parameter_from_the_detectors(
    idle_gateway: RunningGateway,
) -> None:
    """The json type keeps its text as sent, escapes included: an address
    written with \\u0040 for its @ is still an address. The trail shows
    such a value decoded and masked; one whose escapes hide nothing stays
    as sent."""
    gw = idle_gateway
    who = _person()
    hidden = '{"to": "a\\u0040example.com", "n": "caf\\u00e9"}'
    harmless = '{"n": "caf\\u00e9"}'
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        (echoed,) = conn.execute("SELECT %s::json", (hidden,)).fetchone() or (None,)
        assert echoed == {"to": "a@example.com", "n": "café"}
        conn.execute("SELECT %s::json AS harmless", (harmless,)).fetchall()
    events = statements(trail(gw, sealed_session(gw, who)))
    assert events[0]["params"] == ['{"to": "[REDACTED:email]", "n": "café"}']
    assert events[1]["params"] == [harmless]


def test_a_direct_tls_session_is_recorded_with_its_tls(idle_gateway: RunningGateway) -> None:
    """sslnegotiation=direct: the session runs over asyncio's TLS, not
    uvloop's; its start still says which TLS, and its statements are all
    there."""
    gw = idle_gateway
    who = _person()
    info = gw.conninfo(token=gw.token(who), user=who, sslnegotiation="direct")
    with psycopg.connect(info, autocommit=True) as conn:
        assert conn.execute("SELECT 'direct'").fetchone() == ("direct",)
    events = trail(gw, sealed_session(gw, who))
    assert events[0]["tls"]["version"].startswith("TLS") and events[0]["tls"]["cipher"]
    (ran,) = statements(events)
    assert ran["text"] == "SELECT 'direct'" and ran["results"][0]["rows"] == [["direct"]]


def test_asyncpg_binary_parameters_reach_the_trail_masked(idle_gateway: RunningGateway) -> None:
    """asyncpg binds every value in binary format and Describes each
    statement: the detectors still see a string, and an int8 as its digits
    (a card number bound as a number, int8 or numeric, is masked as it is
    in text), an inet as its address, and ranges and multiranges as the
    server reads them (made canonical, merged)."""
    gw = idle_gateway
    who = _person()
    sql = (
        "SELECT $1::text AS t, $2::int AS n, $3::int8 AS card, $4::numeric AS other,"
        " $5::int8[] AS cards, $6::inet AS host, $7::interval AS took,"
        " $8::int4range AS r, $9::int8multirange AS mr"
    )
    card, other = 4111111111111111, decimal.Decimal("5500000000000004")
    cards = [card, 5]
    host, took = ipaddress.ip_address("10.20.30.40"), datetime.timedelta(days=1, seconds=7.5)
    span = asyncpg.Range(1, 3, upper_inc=True)
    spans = [asyncpg.Range(3, 5), asyncpg.Range(1, 3), asyncpg.Range(card, None)]
    values = ("mail me: x@example.com", 7, card, other, cards, host, took, span, spans)

    async def run(conn: Any) -> Any:
        return await conn.fetchrow(sql, *values)

    row = _asyncpg(gw, who, run)
    assert tuple(row)[:7] == values[:7]
    assert (row["r"], row["mr"]) == (
        asyncpg.Range(1, 4),
        [asyncpg.Range(1, 5), asyncpg.Range(card, None)],
    )
    events = statements(trail(gw, sealed_session(gw, who)))
    (bound,) = [e for e in events if e["text"] == sql]
    assert bound["params"] == [
        "mail me: [REDACTED:email]",
        "7",
        "[REDACTED:card]",
        "[REDACTED:card]",
        "{[REDACTED:card],5}",
        "[REDACTED:ipv4]",
        "1 day 00:00:07.5",
        "[1,4)",
        "{[1,5),[[REDACTED:card],)}",
    ]
    # The result is kept as the client saw it (this connection masks no
    # results), its binary values as their text.
    assert bound["results"][0]["rows"] == [
        [
            "mail me: x@example.com",
            "7",
            "4111111111111111",
            "5500000000000004",
            "{4111111111111111,5}",
            "10.20.30.40",
            "1 day 00:00:07.5",
            "[1,4)",
            "{[1,5),[4111111111111111,)}",
        ]
    ]


def test_statements_psycopg_evicts_and_prepares_again_keep_their_text(
    idle_gateway: RunningGateway,
) -> None:
    """psycopg 3 evicts prepared statements from its cache (with a Close, or
    with DEALLOCATE before libpq 17) and prepares them again under new
    names: the trail forgets an evicted name only when the server confirms
    it, so every run keeps its SQL. A Bind of a name DEALLOCATE dropped
    fails, and is recorded without the text the name no longer has."""
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        conn.prepare_threshold = 0
        conn.prepared_max = 2
        for round_ in range(3):
            for k in range(4):
                got = conn.execute(f"SELECT %s::int + {k} AS v", (round_,)).fetchone()
                assert got == (round_ + k,)
        pgconn = conn.pgconn
        assert pgconn.prepare(b"evict_me", b"SELECT 'dropped'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_(b"DEALLOCATE evict_me").command_status == b"DEALLOCATE"
        failed = pgconn.exec_prepared(b"evict_me", [])
        assert failed.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
    events = statements(trail(gw, sealed_session(gw, who)))
    assert events[-1]["error"]["sqlstate"] == "26000"
    assert "dropped" not in events[-1]["text"]
    runs = [e for e in events if e["text"].startswith("SELECT")]
    assert [e["text"] for e in runs] == [
        f"SELECT $1::int + {k} AS v" for _ in range(3) for k in range(4)
    ]
    assert [e["results"][0]["rows"] for e in runs] == [
        [[str(r + k)]] for r in range(3) for k in range(4)
    ]


def test_the_trail_records_what_ran_under_a_name_the_server_keys_or_dropped(
    idle_gateway: RunningGateway,
) -> None:
    """Two ways the trail's idea of a statement's name could part from the
    server's, so that a run was recorded with another statement's text:
    PostgreSQL keys names by their first 63 bytes (a Bind of <63>B runs
    what <63>A made), and a DEALLOCATE among other statements in one Query
    drops a name the trail cannot read there (a Parse of it then succeeds;
    the trail had expected 42P05 and kept the old text)."""
    gw = idle_gateway
    who = _person()
    stem = b"s" * 63
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(stem + b"A", b"SELECT 'keyed'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_prepared(stem + b"B", []).get_value(0, 0) == b"keyed"
        assert pgconn.prepare(b"again", b"SELECT 'old'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_(b"DEALLOCATE again; SELECT 1").status == pq.ExecStatus.TUPLES_OK
        assert pgconn.prepare(b"again", b"SELECT 'new'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_prepared(b"again", []).get_value(0, 0) == b"new"
    events = statements(trail(gw, sealed_session(gw, who)))
    runs = [(e["text"], e["results"][0]["rows"]) for e in events if e.get("results")]
    assert runs[0] == ("SELECT 'keyed'", [["keyed"]])
    assert runs[-1] == ("SELECT 'new'", [["new"]])


def test_a_pipelined_run_of_a_name_the_server_dropped_is_recorded_as_what_ran(
    idle_gateway: RunningGateway,
) -> None:
    """As above, but the client does not wait for its Parse's answer
    (libpq's pipeline mode): the Bind and Execute it sends behind the
    Parse ran the new statement, and are recorded with its text (they were
    recorded with the old one)."""
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(b"again", b"SELECT 'old'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_(b"DEALLOCATE again; SELECT 1").status == pq.ExecStatus.TUPLES_OK
        pgconn.enter_pipeline_mode()
        pgconn.send_prepare(b"again", b"SELECT 'piped'")
        pgconn.send_query_prepared(b"again", [])
        pgconn.pipeline_sync()
        results = _pipeline_results(pgconn)
        pgconn.exit_pipeline_mode()
        assert [r.status for r in results] == [pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK]
        assert results[1].get_value(0, 0) == b"piped"
    events = statements(trail(gw, sealed_session(gw, who)))
    runs = [(e["text"], e["results"][0]["rows"]) for e in events if e.get("results")]
    assert runs[-1] == ("SELECT 'piped'", [["piped"]])


def test_a_portal_a_failed_bind_named_is_recorded_as_what_it_runs(
    idle_gateway: RunningGateway,
) -> None:
    """A Bind of an open named portal fails (42P03) and PostgreSQL keeps
    the portal; rolled back to a savepoint, the transaction runs it. Its
    rows were recorded under the failed Bind's text."""
    gw = idle_gateway
    who = _person()

    def message(kind: str, body: bytes = b"") -> bytes:
        return pg_messages.build(ord(kind), body)

    def bind(portal: bytes, statement: bytes) -> bytes:
        return message("B", portal + b"\0" + statement + b"\0" + b"\0\0" * 3)

    execute, sync = message("E", b"p\0\0\0\0\0"), message("S")
    with RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file) as raw:
        raw.startup("main", gw.token(who), user=who)
        for name, text in ((b"a", b"SELECT 'ran A'"), (b"b", b"SELECT 'ran B'")):
            raw.send(message("P", name + b"\0" + text + b"\0\0\0") + sync)
            assert [k for k, _ in raw.read_until_ready()] == ["1", "Z"]
        raw.query("BEGIN")
        raw.read_until_ready()
        raw.send(bind(b"p", b"a") + sync)
        assert [k for k, _ in raw.read_until_ready()] == ["2", "Z"]
        raw.query("SAVEPOINT s")
        raw.read_until_ready()
        # Pipelined: the Execute is sent before the Bind's answer.
        raw.send(bind(b"p", b"b") + sync)
        raw.query("ROLLBACK TO s")
        raw.send(execute + sync)
        failed, _, ran = raw.read_until_ready(), raw.read_until_ready(), raw.read_until_ready()
        assert error_fields(failed[0][1])["C"] == "42P03"
        assert [body for k, body in ran if k == "D"] == [b"\0\x01\0\0\0\x05ran A"]
        raw.query("COMMIT")
        raw.read_until_ready()
    events = statements(trail(gw, sealed_session(gw, who)))
    runs = [(e["text"], e["results"][0]["rows"]) for e in events if e.get("results")]
    assert runs == [("SELECT 'ran A'", [["ran A"]])]


def test_asyncpg_without_its_statement_cache_keeps_binary_values_readable(
    idle_gateway: RunningGateway,
) -> None:
    """asyncpg with statement_cache_size=0 (as behind a transaction pooler)
    sends Parse and Describe, then the same Parse again with Bind and
    Execute. The second Parse dropped the types the server had described,
    so the binary values were kept as hex: a card number bound as an int8
    escaped the detectors."""
    gw = idle_gateway
    who = _person()
    sql = "SELECT $1::int8 AS card, $2::text AS note"

    async def run() -> Any:
        kwargs = gw.asyncpg_kwargs(user=who)
        kwargs["password"] = gw.token(who)
        conn = await asyncpg.connect(**kwargs, statement_cache_size=0)
        try:
            return await conn.fetchrow(sql, 4111111111111111, "x")
        finally:
            await conn.close()

    assert tuple(asyncio.run(run())) == (4111111111111111, "x")
    events = statements(trail(gw, sealed_session(gw, who)))
    (bound,) = [e for e in events if e["text"] == sql]
    assert bound["params"] == ["[REDACTED:card]", "x"]
    assert bound["results"][0]["rows"] == [["4111111111111111", "x"]]


def _pipeline_results(pgconn: Any, timeout: float = 30.0) -> list[Any]:
    """A pipeline's results up to its sync, read as they come (libpq's
    get_result blocks holding the GIL, and this gateway runs in a thread of
    the test's process)."""
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([pgconn.socket], [], [], 0.1)
        pgconn.consume_input()
        while not pgconn.is_busy():
            r = pgconn.get_result()
            if r is not None and r.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            if r is not None:
                results.append(r)
    raise AssertionError(f"the pipeline did not end in {timeout} s: {results}")


def test_names_are_keyed_in_the_servers_encoding(idle_gateway: RunningGateway) -> None:
    """The server converts a name to its encoding before it keys it by 63
    bytes: for a LATIN1 client on a UTF8 server, 32 "é" and a letter are
    33 bytes as sent but 65 as keyed, so <32 é>A and <32 é>B are one
    statement, and the Bind of B runs A's (review: the trail cut the
    client's bytes and recorded it as an unknown statement)."""
    gw = idle_gateway
    who = _person()
    stem = "é".encode("latin-1") * 32
    conninfo = gw.conninfo(token=gw.token(who), user=who, client_encoding="LATIN1")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(stem + b"A", b"SELECT 'one'").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.prepare(stem + b"B", b"SELECT 'two'").status == pq.ExecStatus.FATAL_ERROR
        assert pgconn.exec_prepared(stem + b"B", []).get_value(0, 0) == b"one"
    events = statements(trail(gw, sealed_session(gw, who)))
    runs = [(e["text"], e["results"][0]["rows"]) for e in events if e.get("results")]
    assert runs == [("SELECT 'one'", [["one"]])]


def test_results_are_kept_up_to_the_cap(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        rows = conn.execute("SELECT g FROM generate_series(1, 1000) g").fetchall()
        assert len(rows) == 1000
    (big,) = statements(trail(gw, sealed_session(gw, who)))
    assert big["rows"] == 1000
    assert big["result_rows_kept"] == gw.gateway.settings.record_result_rows
    assert big["results"][0]["truncated"] is True


def test_rows_past_the_cap_are_counted_without_being_read(idle_gateway: RunningGateway) -> None:
    """Past the caps the trail stops reading rows: the count comes from the
    tag, or from a suspended portal's Execute limit; where neither comes (an
    error mid-result) the event says its count is a lower bound."""
    gw = idle_gateway
    who = _person()

    async def portal(conn: Any) -> int:
        async with conn.transaction():
            cursor = conn.cursor("SELECT g FROM generate_series(1, 1000) g", prefetch=300)
            return len([row async for row in cursor])

    assert _asyncpg(gw, who, portal) == 1000
    with (
        psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn,
        pytest.raises(psycopg.errors.DivisionByZero),
    ):
        conn.execute("SELECT 1 / (500 - g) FROM generate_series(1, 1000) g").fetchall()
    sessions = _run(gw, gw.runtime.store.sessions(EventFilter(subject=who)))
    deadline = time.monotonic() + 15
    while len(sessions) < 2 or any(s.seal is None for s in sessions):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        sessions = _run(gw, gw.runtime.store.sessions(EventFilter(subject=who)))
    events = [e for s in sessions for e in statements(trail(gw, s))]
    portals = [e for e in events if e["text"].startswith("SELECT g FROM") and e["rows"]]
    assert sorted(e["rows"] for e in portals) == [100, 300, 300, 300]
    assert all("rows_exact" not in e for e in portals)
    failed = next(e for e in events if "500 - g" in e["text"])
    assert failed["error"]["sqlstate"] == "22012"
    assert failed["rows_exact"] is False and failed["rows"] == 100


def test_auditor_reads_others_trails_never_their_own(idle_gateway: RunningGateway) -> None:
    """Segregation of duties through the real data path and the real API."""
    gw = idle_gateway
    analyst, auditor = _person(), _person()
    psql(gw, analyst, "SELECT 1;\n")
    theirs = sealed_session(gw, analyst)
    with psycopg.connect(
        gw.conninfo("restricted", token=gw.token(auditor, ("auditors",)), user=auditor)
    ) as conn:
        conn.execute("SELECT 2")
    own = sealed_session(gw, auditor)
    auditor_token = gw.token(auditor, ("auditors",))
    tls = ssl.create_default_context(cafile=str(gw.certs.ca_file))
    with httpx.Client(base_url=gw.api_url, verify=tls) as api:

        def get(path: str, token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return api.get(path, headers=headers)

        assert get(f"/v1/audit/sessions/{theirs.session_id}", auditor_token).status_code == 200
        assert get(f"/v1/audit/sessions/{own.session_id}", auditor_token).status_code == 403
        listed = get(f"/v1/audit/sessions?user={auditor}", auditor_token).json()
        assert own.session_id not in json.dumps(listed)
        analyst_token = gw.token(analyst)
        for path in (f"/v1/audit/sessions/{theirs.session_id}", "/v1/audit/events"):
            assert get(path, analyst_token).status_code == 403
            assert get(path, None).status_code == 401
        assert get("/v1/audit/events", "not-a-token").status_code == 401


def test_tampering_with_one_stored_byte_is_found(
    idle_gateway: RunningGateway, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = idle_gateway
    who = _person()
    psql(gw, who, "SELECT 'first';\nSELECT 'second';\nSELECT 'third';\n")
    session = sealed_session(gw, who)
    auditor = gw.token(_person(), ("auditors",))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(session.started_at - 1))
    args = [
        "audit",
        "verify",
        "--api",
        gw.api_url,
        "--cacert",
        str(gw.certs.ca_file),
        "--token",
        auditor,
        "--since",
        since,
    ]
    assert cli_main(args) == 0
    db = sqlite3.connect(state_dir / "hoopfast.db")
    with db:
        # One byte of event 2's data, inside the body of its block.
        first_seq, body = db.execute(
            "SELECT first_seq, body FROM event_blocks"
            " WHERE session_id = ? AND first_seq <= 2 AND last_seq >= 2",
            (session.session_id,),
        ).fetchone()
        lines = body.split("\n")
        assert lines[2 - first_seq].startswith("2\t") and "second" in lines[2 - first_seq]
        lines[2 - first_seq] = lines[2 - first_seq].replace("second", "secons")
        db.execute(
            "UPDATE event_blocks SET body = ? WHERE session_id = ? AND first_seq = ?",
            ("\n".join(lines), session.session_id, first_seq),
        )
    db.close()
    capsys.readouterr()
    assert cli_main(args) == 1
    out = capsys.readouterr()
    report = out.out + out.err
    assert session.session_id in report and "event 2" in report


def test_console_exporter_sees_the_session_span(
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session span has an event per statement up to the SDK's event
    limit and totals over every statement (counted by the trail); the
    metrics count the session's statements while it runs and after."""
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "2")
    out = io.StringIO()

    def allowed() -> int:
        text = gw.call(lambda: gw.gateway.metrics.render())
        series = r'hoopfast_statements_total\{connection="main",verdict="allow"\} (\d+)'
        found = re.search(series, text)
        return int(found.group(1)) if found else 0

    with run_gateway(make_settings(), issuer, certs) as gw:
        gw.call(
            lambda: setattr(
                gw.gateway,
                "tracing",
                Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}, console_out=out),
            )
        )
        who = _person()
        before = allowed()
        with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as c:
            c.execute("SELECT 1")
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("SELECT 1/0")
            c.execute("SELECT 2")  # past the span's event limit
            assert allowed() == before + 3  # the open session, read at the scrape
        session = sealed_session(gw, who)
        assert allowed() == before + 3  # folded into the totals when it ended
        start = trail(gw, session)[0]
        gw.call(lambda: gw.gateway.tracing.force_flush())
    spans = [json.loads(chunk) for chunk in _json_objects(out.getvalue())]
    (span,) = [s for s in spans if s["attributes"].get("enduser.id") == who]
    assert span["name"] == "postgres.session"
    assert span["attributes"]["hoopfast.connection"] == "main"
    assert span["attributes"]["hoopfast.session.id"] == session.session_id
    assert span["context"]["trace_id"] == "0x" + start["trace_id"]
    verdicts = [e["attributes"] for e in span["events"] if e["name"] == "postgres.statement"]
    assert [v["hoopfast.verdict"] for v in verdicts] == ["allow", "allow"]
    assert verdicts[1]["db.response.status_code"] == "22012"
    assert span["attributes"]["hoopfast.session.statements"] == 3
    assert span["attributes"]["hoopfast.session.errors"] == 1
    assert span["attributes"]["hoopfast.session.rows"] == 2


def _json_objects(text: str) -> Iterator[str]:
    """The top-level JSON objects the console exporter printed, one by one."""
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hoopfast", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)


def _serve_env(
    config: Path, state_dir: Path, certs: Any, port: int, flush_interval: str
) -> dict[str, str]:
    """The environment of a ``hoopfast serve`` of these tests (_serve)."""
    return {
        "HOOPFAST_CONFIG": str(config),
        "HOOPFAST_PG_LISTEN": f"127.0.0.1:{port}",
        "HOOPFAST_API_LISTEN": "off",
        "HOOPFAST_STATE_DIR": str(state_dir),
        "HOOPFAST_TLS_CERT_FILE": str(certs.cert_file),
        "HOOPFAST_TLS_KEY_FILE": str(certs.key_file),
        "HOOPFAST_CONFIG_POLL_INTERVAL": "0",
        "HOOPFAST_STORE_FLUSH_INTERVAL": flush_interval,
    }


def _conninfo(port: int, who: str, issuer: DevIssuer, certs: Any) -> str:
    token = issuer.issue(who, ("analysts",))
    return (
        f"host=127.0.0.1 port={port} dbname=main user={who} password={token}"
        f" sslmode=verify-full sslrootcert={certs.ca_file}"
    )


def _stored(db: Path, subject: str, timeout: float = 20.0) -> tuple[SessionRow, list[EventRecord]]:
    from hoopfast.store.sqlite import SqliteStore

    async def read() -> tuple[list[SessionRow], list[EventRecord], dict[str, Any]]:
        store = SqliteStore(db)
        await store.open()
        try:
            rows = await store.sessions(EventFilter(subject=subject))
            events = await store.session_events(rows[0].session_id) if rows else []
            return rows, events, await store.signing_keys()
        finally:
            await store.close()

    deadline = time.monotonic() + timeout
    while True:
        rows, events, keys = asyncio.run(read())
        if rows and rows[0].seal is not None:
            assert verify_session(rows[0].session_id, events, rows[0].seal, keys) is None
            return rows[0], events
        assert time.monotonic() < deadline, f"not sealed in the store: {rows}"
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_statement(
    tmp_path: Path, gateway_config: Path, certs: Any, issuer: DevIssuer
) -> None:
    """The gateway is killed with a session open and nothing moved to the
    store yet; the next start replays the spool: every statement the client
    saw acknowledged is there, and the session is sealed as cut short."""
    port = free_port()
    # Nothing reaches the store before the kill: all of it is in the spool.
    env = _serve_env(gateway_config, tmp_path, certs, port, "3600")
    process = _serve(env, port)
    who = _person()
    conn = psycopg.connect(_conninfo(port, who, issuer, certs), autocommit=True)
    try:
        for i in range(20):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        conn.close()
    assert list((tmp_path / "spool").glob("*.spool"))
    restarted = _serve({**env, "HOOPFAST_STORE_FLUSH_INTERVAL": "0.1"}, port)
    try:
        session, events = _stored(tmp_path / "hoopfast.db", who)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(20)
    ran = [json.loads(e.data) for e in events if e.kind == "statement"]
    assert [s["results"][0]["rows"] for s in ran] == [[[str(i)]] for i in range(20)]
    assert session.seal is not None
    assert "gateway stopped unexpectedly" in session.seal.end_reason


@pytest.mark.slow
def test_a_second_gateway_on_the_same_spool_refuses_to_start(
    tmp_path: Path, gateway_config: Path, certs: Any, issuer: DevIssuer
) -> None:
    """A restart that overlaps the old process, or two gateways given one
    state directory: the second would replay the first's live spool and
    seal its open sessions as crashed. It stops at start instead, naming
    the process that holds the spool; the first's session goes on and ends
    as it should."""
    port, other = free_port(), free_port()
    env = _serve_env(gateway_config, tmp_path, certs, port, "0.1")
    first = _serve(env, port)
    who = _person()
    try:
        with psycopg.connect(_conninfo(port, who, issuer, certs), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            second = subprocess.run(
                [sys.executable, "-m", "hoopfast", "serve"],
                env={**os.environ, **env, "HOOPFAST_PG_LISTEN": f"127.0.0.1:{other}"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode != 0
            assert f"in use by another gateway process (pid {first.pid})" in second.stderr
            assert conn.execute("SELECT 2").fetchone() == (2,)
        session, events = _stored(tmp_path / "hoopfast.db", who)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)
    assert session.seal is not None
    assert "gateway stopped unexpectedly" not in session.seal.end_reason
    assert [json.loads(e.data)["text"] for e in events if e.kind == "statement"] == [
        "SELECT 1",
        "SELECT 2",
    ]
    # Once the first has stopped, the spool is free.
    third = _serve(env, port)
    third.send_signal(signal.SIGTERM)
    assert third.wait(20) == 0


def test_the_spool_lock_goes_with_its_holder(tmp_path: Path) -> None:
    from hoopfast.recording.spool import Spool, SpoolError

    held = Spool(tmp_path / "spool", 1 << 20)
    holder = rf"in use by another gateway process \(pid {os.getpid()}\)"
    with pytest.raises(SpoolError, match=holder):
        Spool(tmp_path / "spool", 1 << 20)
    held.close()
    Spool(tmp_path / "spool", 1 << 20).close()


@contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[None]:
    """A filesystem of its own for ``path``, ``size`` big, so that a test can
    fill it for real (mounting needs root: skipped otherwise)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


@pytest.mark.slow
def test_a_full_disk_refuses_statements_and_loses_no_acknowledged_one(
    make_settings: Callable[..., Settings], issuer: DevIssuer, certs: Any, tmp_path: Path
) -> None:
    """The spool's filesystem fills up (a real one, a small tmpfs, not an
    injected error): the statement whose event cannot be written is not
    acknowledged, its session ends with 53000, no session starts while
    recording cannot write (fail closed), and after a restart with space
    again every statement the client saw answered is in the store, the
    session sealed as cut short."""
    spool = tmp_path / "spool"
    settings = make_settings(state_dir=tmp_path, spool_dir=spool, store_flush_interval=3600)
    who = _person()
    with _small_tmpfs(spool, "1m"):
        with run_gateway(settings, issuer, certs) as gw:
            conn = psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True)
            answered = []
            for i in range(5):
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                answered.append(i)
            filler = _fill(spool)
            with pytest.raises(psycopg.OperationalError, match="cannot be recorded") as raised:
                for i in range(5, 2000):
                    assert conn.execute("SELECT %s::int, repeat('x', 500)", (i,)).fetchone()
                    answered.append(i)
            assert raised.value.sqlstate in (None, "53000")
            assert conn.closed or conn.broken
            with pytest.raises(psycopg.OperationalError, match="cannot be recorded"):
                psycopg.connect(gw.conninfo(token=gw.token(who), user=who))
            filler.unlink()
        with run_gateway(make_settings(state_dir=tmp_path, spool_dir=spool), issuer, certs) as gw:
            session = sealed_session(gw, who)
            ran = statements(trail(gw, session))
    assert session.seal is not None
    assert "gateway stopped unexpectedly" in session.seal.end_reason
    # Every answered statement is there, in order; the refused one may be
    # too (written, not acknowledged), nothing else.
    numbers = [int(s["results"][0]["rows"][0][0]) for s in ran]
    assert numbers[: len(answered)] == answered
    assert len(numbers) <= len(answered) + 1


@pytest.mark.slow
def test_store_outage_spools_then_refuses_then_recovers(
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: Any,
    cluster: DevCluster,
    roles: Roles,
    tmp_path: Path,
) -> None:
    """A PostgreSQL store that goes away: statements go on while the spool
    holds the trail, are refused once it is full, and run again when the
    store is back; then every recorded statement is in the store."""
    database = "store_" + secrets.token_hex(4)
    cluster.create_database(database, owner=roles.scram[0])
    with FaultProxy("127.0.0.1", cluster.port, lifetime=300) as proxy:
        user, password = roles.scram
        url = f"postgresql://{user}:{password}@127.0.0.1:{proxy.port}/{database}?sslmode=disable"
        settings = make_settings(
            store=url,
            spool_max_bytes=1 << 16,
            spool_segment_bytes=1 << 14,
            store_flush_interval=0.05,
        )
        with run_gateway(settings, issuer, certs) as gw:
            who = _person()
            conn = psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True)
            conn.execute("SELECT 'before'")
            proxy.upstream = Faults.drop()
            refused = None
            ran = 1
            for _ in range(200):
                try:
                    conn.execute("SELECT repeat('x', 2000)").fetchall()
                    ran += 1
                except psycopg.errors.InsufficientResources as e:
                    refused = e
                    break
            r = gw.runtime.recorder
            assert r is not None
            assert refused is not None, (r.spool.pending_bytes, r.store_error, r.options)
            assert "recording spool is full" in str(refused)
            assert password not in str(refused)
            assert ran > 5  # the spool carried statements through the outage
            proxy.upstream = Faults()
            deadline = time.monotonic() + 20
            while True:
                try:
                    conn.execute("SELECT 'after'")
                    break
                except psycopg.errors.InsufficientResources:
                    assert time.monotonic() < deadline, "the spool never drained"
                    time.sleep(0.2)
            ran += 1
            conn.close()
            session = sealed_session(gw, who, timeout=30)
            assert session.statements == ran
            texts = [e["text"] for e in statements(trail(gw, session))]
            assert texts[0] == "SELECT 'before'" and texts[-1] == "SELECT 'after'"


def test_a_spool_write_that_fails_ends_the_session_unacknowledged(
    make_settings: Callable[..., Settings], issuer: DevIssuer, certs: Any
) -> None:
    """The spool's write fails (here: its descriptor turned read-only under
    it, so the real write(2) fails): the statement whose record it held is
    not acknowledged, the session ends with 53000, and no session starts
    while recording is broken (fail closed)."""
    with run_gateway(make_settings(), issuer, certs) as gw:
        who = _person()
        conn = psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True)
        for _ in range(3):  # (the same text: the relay's fast path takes it)
            assert conn.execute("SELECT 41").fetchone() == (41,)
        r = gw.runtime.recorder
        assert r is not None

        async def break_spool() -> None:
            fd = os.open(r.spool.current, os.O_RDONLY)
            os.dup2(fd, r.spool._fd)
            os.close(fd)

        _run(gw, break_spool())
        with pytest.raises(psycopg.OperationalError, match="cannot be recorded") as raised:
            conn.execute("SELECT 41").fetchone()
        assert "(41,)" not in str(raised.value)
        assert conn.closed or conn.broken
        assert r.broken
        with pytest.raises(psycopg.OperationalError, match="cannot be recorded"):
            psycopg.connect(gw.conninfo(token=gw.token(who), user=who))


def test_recorder_reads_back_what_it_could_not_keep_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its memory bound the recorder stores segments from the spool on
    disk: nothing is lost either way, and the chains verify."""
    from hoopfast.recording import recorder as rec
    from hoopfast.recording.chain import Signer
    from hoopfast.store.sqlite import SqliteStore

    monkeypatch.setattr(rec, "_MEMORY_BYTES", 4096)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = rec.Recorder(
            store,
            tmp_path / "spool",
            Signer.load_or_create(tmp_path / "key.pem"),
            rec.RecorderOptions(fsync="off", segment_bytes=1 << 14, flush_interval=3600),
        )
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(200):
            session.statement("allow", {"text": f"SELECT {i}", "pad": "x" * 200})
        session.end("client closed")
        recorder.commit()  # (what the end of the loop iteration does)
        assert recorder._on_disk_only, "the memory bound was never reached"
        await recorder.close()  # the last flush stores everything
        (row,) = await store.sessions(EventFilter(subject="alice"))
        events = await store.session_events("s1")
        keys = await store.signing_keys()
        await store.close()
        assert row.statements == 200 and len(events) == 202
        assert verify_session("s1", events, row.seal, keys) is None

    asyncio.run(scenario())


def test_recorder_stores_the_open_segment_without_closing_it(tmp_path: Path) -> None:
    """Each flush stores what the current segment gained, from memory, and
    leaves the file open (no file created and removed per flush); a crash
    then replays the whole segment, and the store keeps nothing twice."""
    from hoopfast.recording import recorder as rec
    from hoopfast.recording.chain import Signer
    from hoopfast.store.sqlite import SqliteStore

    spool = tmp_path / "spool"
    signer = Signer.load_or_create(tmp_path / "key.pem")

    def recorder_on(store: SqliteStore) -> rec.Recorder:
        options = rec.RecorderOptions(fsync="off", flush_interval=3600)
        return rec.Recorder(store, spool, signer, options)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        first = recorder_on(store)
        await first.start()
        session = first.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(3):
            session.statement("allow", {"text": f"SELECT {i}"})
        await first._flush()
        segments = sorted(spool.glob("*.spool"))
        assert len(segments) == 1
        assert len(await store.session_events("s1")) == 4
        session.statement("allow", {"text": "SELECT 3"})
        await first._flush()
        assert sorted(spool.glob("*.spool")) == segments, "the open segment was rotated"
        assert len(await store.session_events("s1")) == 5
        # A crash: the process is gone without closing anything.
        first.spool._fd, fd = -1, first.spool._fd
        os.close(fd)
        first.spool.unlock()
        second = recorder_on(store)
        await second.start()  # replays the segment, seals the session
        await second.close()
        (row,) = await store.sessions(EventFilter(subject="alice"))
        events = await store.session_events("s1")
        keys = await store.signing_keys()
        await store.close()
        assert [e.seq for e in events] == list(range(6))  # 5 + the recovered end
        assert row.statements == 4 and row.stored_events == 6
        assert verify_session("s1", events, row.seal, keys) is None
        assert list(spool.glob("*.spool")) == []

    asyncio.run(scenario())


def test_spool_bound_counts_only_what_the_store_has_not_taken(tmp_path: Path) -> None:
    """The open segment's stored part no longer counts against the spool's
    bound: a bound far below the segment size never refuses while the store
    keeps up."""
    from hoopfast.recording import recorder as rec
    from hoopfast.recording.chain import Signer
    from hoopfast.store.sqlite import SqliteStore

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        options = rec.RecorderOptions(
            fsync="off", flush_interval=3600, max_bytes=1 << 16, segment_bytes=16 << 20
        )
        recorder = rec.Recorder(
            store, tmp_path / "spool", Signer.load_or_create(tmp_path / "key.pem"), options
        )
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(1000):  # ~400 KB in all, 6x the bound
            session.statement("allow", {"text": f"SELECT {i}", "pad": "x" * 300})
            if i % 100 == 99:
                assert not recorder.full
                await recorder._flush()
                assert recorder.spool.pending_bytes == 0
        assert len(list((tmp_path / "spool").glob("*.spool"))) == 1
        session.end("client closed")
        await recorder.close()
        (row,) = await store.sessions(EventFilter(subject="alice"))
        await store.close()
        assert row.statements == 1000 and row.seal is not None

    asyncio.run(scenario())


def test_secrets_in_statement_texts_are_not_recorded(idle_gateway: RunningGateway) -> None:
    """A role's password, a connection string's, a URI's and a token pasted
    into a statement's text never reach the trail (denied or run, they are
    recorded): they are replaced, the rest of the text kept. (Results are
    recorded as the client saw them, masked by its connection's rules.)"""
    gw = idle_gateway
    who = _person()
    token = gw.token(who)
    role_pw, conninfo_pw, uri_pw = (f"Pw{i}-{secrets.token_hex(6)}" for i in range(3))
    texts = [
        f"ALTER ROLE rec_nobody PASSWORD '{role_pw}'",
        f"SELECT dblink_connect('host=db password={conninfo_pw} dbname=x')",
        f"SELECT length('postgresql://app:{uri_pw}@db:5432/main')",
        f"SET myapp.token = '{token}'",
    ]
    conn = psycopg.connect(gw.conninfo(token=token, user=who), autocommit=True)
    for text in texts:
        # (Refused or failed: recorded either way.)
        with contextlib.suppress(psycopg.Error):
            conn.execute(text.encode())
    conn.close()
    ran = statements(trail(gw, sealed_session(gw, who)))
    shown = [s["text"] for s in ran]
    assert shown == [
        "ALTER ROLE rec_nobody PASSWORD '[REDACTED:password]'",
        "SELECT dblink_connect('host=db password=[REDACTED:password] dbname=x')",
        "SELECT length('postgresql://app:[REDACTED:password]@db:5432/main')",
        "SET myapp.token = '[REDACTED:jwt]'",
    ]
    everything = json.dumps(trail(gw, sealed_session(gw, who)))
    for secret in (role_pw, conninfo_pw, uri_pw, token):
        assert secret not in everything


_COPY_THEN_SELECT = """
import sys
import threading
import psycopg
from psycopg import pq

conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("CREATE TEMP TABLE ci (x int)")
pgconn = conn.pgconn
# COPY FROM STDIN in the extended protocol: libpq sends a Sync with the
# Execute (the server ignores it while copying) and another after CopyDone.
pgconn.send_query_params(b"COPY ci FROM STDIN", None)
while (r := pgconn.get_result()) is not None and r.status != pq.ExecStatus.COPY_IN:
    pass
pgconn.put_copy_data(b"1\\n2\\n3\\n")
pgconn.put_copy_end()
while pgconn.get_result() is not None:
    pass
for word in ("first", "second", "third"):
    assert conn.execute(f"SELECT '{word}' AS w").fetchone() == (word,)
conn.close()
"""


def test_copy_from_stdin_in_the_extended_protocol_keeps_the_trail_in_step(
    idle_gateway: RunningGateway,
) -> None:
    """libpq's COPY FROM STDIN through PQsendQueryParams (a real client, in
    its own process): the statements after it are recorded with their own
    results, none lost."""
    gw = idle_gateway
    who = _person()
    done = subprocess.run(
        [sys.executable, "-c", _COPY_THEN_SELECT, gw.conninfo(token=gw.token(who), user=who)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ran = statements(trail(gw, sealed_session(gw, who)))
    assert [(s["text"], s["rows"]) for s in ran[1:]] == [
        ("COPY ci FROM STDIN", 3),
        ("SELECT 'first' AS w", 1),
        ("SELECT 'second' AS w", 1),
        ("SELECT 'third' AS w", 1),
    ]
    assert [s["results"][0]["rows"] for s in ran[2:]] == [[["first"]], [["second"]], [["third"]]]


def test_a_session_the_server_ends_mid_statement_is_recorded_with_its_reason(
    idle_gateway: RunningGateway, app_admin: Any
) -> None:
    """The upstream backend is terminated during a statement: the statement
    is recorded with the FATAL the client saw, and the session's end reason
    names the upstream (not "client closed")."""
    gw = idle_gateway
    who = _person()
    conn = psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True)
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (None,)

    def terminate() -> None:
        time.sleep(0.5)
        app_admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    killer = threading.Thread(target=terminate)
    killer.start()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT pg_sleep(10)")
    killer.join()
    conn.close()
    session = sealed_session(gw, who)
    events = trail(gw, session)
    last = statements(events)[-1]
    assert last["text"] == "SELECT pg_sleep(10)"
    assert last["error"]["sqlstate"] == "57P01"
    end = events[-1]
    assert end["kind"] == "session_end"
    assert end["reason"].startswith("upstream ended the session: 57P01"), end["reason"]


def test_a_failed_implicit_commit_at_sync_is_recorded(idle_gateway: RunningGateway) -> None:
    """A deferred constraint fails at the Sync's implicit commit: the INSERT
    was recorded as it completed, and the failed commit is an event of its
    own, with the error the client got."""
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE dd (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO dd VALUES (%s), (%s)", (1, 1))
    ran = statements(trail(gw, sealed_session(gw, who)))
    assert [(s["text"], (s["error"] or {}).get("sqlstate")) for s in ran[-2:]] == [
        ("INSERT INTO dd VALUES ($1), ($2)", None),
        ("-- the implicit commit at Sync", "23505"),
    ]
