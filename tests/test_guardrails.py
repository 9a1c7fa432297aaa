"""Guardrails through the real gateway, with real clients: denied statements
get 42501, never reach the database, and leave the session usable."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from hoopfast.core import encode_startup
from hoopfast.devcluster import DevCluster, free_port
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.settings import Settings
from tests.conftest import Roles
from tests.gateway import RunningGateway, opened_connections, run_gateway, write_config
from tests.rawclient import RawClient, error_fields

Conn = psycopg.Connection[Any]

SETUP = """
DROP TABLE IF EXISTS gr_items, payroll, "Secret" CASCADE;
DROP SCHEMA IF EXISTS vault CASCADE;
CREATE TABLE gr_items (id int PRIMARY KEY, name text);
INSERT INTO gr_items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
CREATE TABLE payroll (id int, salary int);
INSERT INTO payroll VALUES (1, 100);
CREATE TABLE "Secret" (x int);
CREATE SCHEMA vault;
CREATE TABLE vault.keys (k text);
ALTER TABLE gr_items OWNER TO app;
ALTER TABLE payroll OWNER TO app;
ALTER TABLE "Secret" OWNER TO app;
ALTER SCHEMA vault OWNER TO app;
ALTER TABLE vault.keys OWNER TO app;
"""


@pytest.fixture(scope="module")
def base(
    tmp_path_factory: pytest.TempPathFactory, cluster: DevCluster, roles: Roles
) -> dict[str, Any]:
    """The upstream every test connection points at."""
    cluster.execute(SETUP, dbname="app")
    secret = tmp_path_factory.mktemp("guard") / "secret"
    secret.write_text(roles.scram[1])
    return {
        "host": cluster.host,
        "port": cluster.port,
        "database": "app",
        "user": roles.scram[0],
        "password": {"file": str(secret)},
    }


@pytest.fixture(scope="module")
def guard_config(base: dict[str, Any], issuer: DevIssuer, gateway_config: Path) -> Path:
    connections = {
        "rw": {**base},
        "ro": {**base, "grants": {"analyst": {"read_only": True}}},
        "guarded": {
            **base,
            "grants": {
                "analyst": {
                    "deny_tables": ["public.payroll", "Secret"],
                    "deny_schemas": ["vault"],
                    "deny_functions": ["pg_terminate_backend", "md5"],
                    "deny_patterns": [r"(?i)\bhoopfast_forbidden_word\b"],
                    "review": ["ddl"],
                }
            },
        },
        "reviewed": {**base, "grants": {"analyst": {"review": ["ddl"]}}},
        "readers": {
            **base,
            "grants": {"analyst": {"allow": ["read", "transaction"], "unknown": "review"}},
        },
    }
    path = Path(base["password"]["file"]).parent / "guard.toml"
    return write_config(path, issuer.jwks_file, connections)


@pytest.fixture(scope="module")
def gw(
    guard_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: CertFiles,
) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(config=guard_config), issuer, certs) as running:
        yield running


@pytest.fixture
def via(gw: RunningGateway) -> Iterator[Callable[..., Conn]]:
    with opened_connections(gw, "ro") as connect:
        yield connect


def _state(app_admin: Conn) -> Any:
    """What the statements under test could have changed."""
    items = app_admin.execute("SELECT count(*), max(name) FROM gr_items").fetchone()
    tables = app_admin.execute(
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'gr\\_new%'"
    ).fetchone()
    return items, tables


def refused(conn: Conn, sql: str, *, rule: str | None = None) -> pg_errors.Error:
    with pytest.raises(pg_errors.InsufficientPrivilege) as info:
        conn.execute(sql)
    err = info.value
    assert err.diag.message_primary is not None
    assert "hoopfast" in (err.diag.message_primary + (err.diag.message_detail or ""))
    if rule is not None:
        assert f"rule: {rule}" in (err.diag.message_detail or ""), err.diag.message_detail
    # The session stays usable.
    assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    return err


READ_ONLY_REFUSED = [
    "INSERT INTO gr_items VALUES (100, 'x')",
    "UPDATE gr_items SET name = 'x'",
    "DELETE FROM gr_items",
    "SELECT 1; DELETE FROM gr_items",
    "SELECT 1; SELECT 2; UPDATE gr_items SET name = 'y' WHERE id = 1",
    "WITH d AS (DELETE FROM gr_items RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE gr_items SET name = 'z' RETURNING id) SELECT * FROM u",
    "SELECT * INTO gr_new_into FROM gr_items",
    "CREATE TABLE gr_new_ctas AS SELECT * FROM gr_items",
    "SELECT * FROM gr_items FOR UPDATE",
    "SELECT * FROM gr_items FOR SHARE",
    "SELECT * FROM gr_items FOR NO KEY UPDATE SKIP LOCKED",
    "DO $$ BEGIN DELETE FROM gr_items; END $$",
    "EXPLAIN ANALYZE DELETE FROM gr_items",
    "EXPLAIN (ANALYZE, COSTS OFF) UPDATE gr_items SET name = 'e'",
    "EXPLAIN (ANALYZE 0) DELETE FROM gr_items",
    "PREPARE gr_del AS DELETE FROM gr_items",
    "COPY gr_items FROM STDIN",
    "TRUNCATE gr_items",
    "DeLeTe/**/FROM gr_items",
    "dElEtE -- a comment\nFROM gr_items",
    "/* leading */ delete from gr_items",
    "SET default_transaction_read_only = off",
    "SET SESSION default_transaction_read_only TO off",
    "SET transaction_read_only = off",
    "BEGIN READ WRITE",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "CREATE TABLE gr_new_t (x int)",
    "DROP TABLE gr_items",
    "GRANT SELECT ON gr_items TO PUBLIC",
    "VACUUM gr_items",
    "LOCK TABLE gr_items",
    "SELECT nextval('no_such_seq')",
    "INSERT INTO gr_items SELECT 1000, 'x' FROM generate_series(1,1) RETURNING id",
]


@pytest.mark.parametrize("sql", READ_ONLY_REFUSED)
def test_read_only_refuses_every_write(via: Callable[..., Conn], app_admin: Conn, sql: str) -> None:
    before = _state(app_admin)
    conn = via("ro")
    refused(conn, sql)
    assert _state(app_admin) == before


READ_ONLY_ALLOWED = [
    ("SELECT 'DROP TABLE gr_items'", [("DROP TABLE gr_items",)]),
    ("SELECT $$DELETE FROM gr_items$$", [("DELETE FROM gr_items",)]),
    ("SELECT $x$ ; DELETE FROM gr_items; $x$ AS s", [(" ; DELETE FROM gr_items; ",)]),
    ("SELECT count(*) FROM gr_items WHERE name <> 'INSERT INTO x'", [(10,)]),
    ("select /* DELETE */ count(*) from gr_items -- UPDATE", [(10,)]),
    ("EXPLAIN (COSTS OFF) DELETE FROM gr_items", None),
    ("EXPLAIN (ANALYZE off, COSTS off) DELETE FROM gr_items", None),
    ("SHOW default_transaction_read_only", [("on",)]),
    ("SET search_path = public", None),
    ("BEGIN READ ONLY; SELECT 1; COMMIT", None),
]


@pytest.mark.parametrize(("sql", "rows"), READ_ONLY_ALLOWED)
def test_read_only_allows_reads_without_false_positives(
    via: Callable[..., Conn], sql: str, rows: Any
) -> None:
    conn = via("ro")
    cur = conn.execute(sql)
    if rows is not None:
        assert cur.fetchall() == rows


def test_read_only_upstream_session_is_read_only_too(via: Callable[..., Conn]) -> None:
    """Defence in depth: the database itself refuses writes."""
    conn = via("ro")
    assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_prepare_execute_tracked_by_body(via: Callable[..., Conn], app_admin: Conn) -> None:
    before = _state(app_admin)
    conn = via("ro")
    conn.execute("PREPARE gr_read (int) AS SELECT name FROM gr_items WHERE id = $1")
    assert conn.execute("EXECUTE gr_read(3)").fetchone() == ("item 3",)
    # A name never prepared (or prepared and refused) is not executed.
    refused(conn, "PREPARE gr_write AS DELETE FROM gr_items")
    refused(conn, "EXECUTE gr_write", rule="unknown")
    refused(conn, "EXECUTE gr_read(pg_terminate_backend(1))")
    conn.execute("DEALLOCATE gr_read")
    refused(conn, "EXECUTE gr_read(1)", rule="unknown")
    assert _state(app_admin) == before


def test_execute_of_a_protocol_prepared_statement(via: Callable[..., Conn]) -> None:
    """A statement prepared with Parse is reachable by SQL EXECUTE, and judged
    by its body."""
    conn = via("rw")
    conn.prepare_threshold = 0
    conn.execute("SELECT name FROM gr_items WHERE id = %s", (1,), prepare=True)
    names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()]
    assert names
    quoted = psycopg.sql.Identifier(names[0]).as_string(conn)
    assert conn.execute(f"EXECUTE {quoted}(2)").fetchone() == ("item 2",)


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("SELECT * FROM payroll", "table:payroll"),
        ('SELECT * FROM "payroll"', "table:payroll"),
        ("SELECT * FROM PUBLIC.PAYROLL", "table:public.payroll"),
        ('SELECT * FROM U&"\\0070ayroll"', "table:payroll"),
        ("SELECT * FROM U&\"!0070ayroll\" UESCAPE '!'", "table:payroll"),
        ("SELECT (SELECT max(salary) FROM payroll)", "table:payroll"),
        ("WITH x AS (SELECT 1) SELECT * FROM x, lateral (SELECT * FROM payroll) p", None),
        ('SELECT * FROM "Secret"', "table:Secret"),
        ("SELECT * FROM vault.keys", "schema:vault"),
        ('SELECT * FROM "vault"."keys"', "schema:vault"),
        ("SELECT pg_terminate_backend(1)", "function:pg_terminate_backend"),
        ("SELECT PG_CATALOG.PG_TERMINATE_BACKEND(1)", None),
        ('SELECT "pg_terminate_backend"(1)', None),
        ("SELECT md5('x')", "function:md5"),
        ("SELECT 'hoopfast_forbidden_word'", "pattern:0"),
        ("SET search_path = vault", "schema"),
        ("SELECT query_to_xml('select * from payroll', true, false, '')", None),
        ("COPY gr_items TO PROGRAM 'cat > /dev/null'", None),
        ("COPY gr_items TO '/tmp/gr_items.out'", None),
        ("SELECT pg_read_file('/etc/passwd')", None),
        ("SET ROLE postgres", "class:role"),
        ("SELECT set_config('role', 'postgres', false)", "class:role"),
        ("SET client_encoding = 'SJIS'", "client_encoding"),
        ("SET NAMES 'BIG5'", "client_encoding"),
    ],
)
def test_denied_objects_classes_and_patterns(
    via: Callable[..., Conn], sql: str, rule: str | None
) -> None:
    refused(via("guarded"), sql, rule=rule)


def test_quoted_name_that_differs_by_case_is_another_table(via: Callable[..., Conn]) -> None:
    conn = via("guarded")
    # "Secret" is denied; secret (folded) is another, non-existent, table.
    with pytest.raises(pg_errors.UndefinedTable):
        conn.execute("SELECT * FROM secret")
    conn.execute("SELECT count(*) FROM gr_items")


def test_review_verdict(via: Callable[..., Conn], app_admin: Conn) -> None:
    conn = via("reviewed")
    err = refused(conn, "CREATE TABLE gr_new_review (x int)", rule="class:ddl")
    assert "approval required" in (err.diag.message_primary or "")
    assert _state(app_admin)[1] == (0,)
    # Where tables are denied, DDL (which can rename, move or wrap them) is refused.
    refused(via("guarded"), "CREATE TABLE gr_new_review (x int)", rule="class:ddl")


def test_allow_list_and_unknown_verdict(via: Callable[..., Conn]) -> None:
    conn = via("readers")
    assert conn.execute("SELECT count(*) FROM gr_items").fetchone() == (10,)
    refused(conn, "SET search_path = public", rule="class:session")
    err = refused(conn, "ALTER SYSTEM SET work_mem = '1MB'", rule="unknown")
    assert "approval required" in (err.diag.message_primary or "")


def test_refusal_inside_transaction_aborts_it(via: Callable[..., Conn], app_admin: Conn) -> None:
    """As any error would: COMMIT after a refused statement rolls back."""
    conn = via("guarded", autocommit=False)
    conn.execute("UPDATE gr_items SET name = 'changed' WHERE id = 1")
    with pytest.raises(pg_errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM payroll")
    assert conn.info.transaction_status == TransactionStatus.INERROR
    conn.commit()  # COMMIT of a failed transaction is a ROLLBACK
    assert app_admin.execute("SELECT name FROM gr_items WHERE id = 1").fetchone() == ("item 1",)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_extended_protocol_refusals(via: Callable[..., Conn], app_admin: Conn) -> None:
    before = _state(app_admin)
    conn = via("ro")
    for prepare in (False, True):
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("DELETE FROM gr_items WHERE id = %s", (1,), prepare=prepare)
        assert conn.execute("SELECT %s::int + 1", (1,), prepare=prepare).fetchone() == (2,)
    assert _state(app_admin) == before


def test_pipeline_stops_at_the_refused_statement(via: Callable[..., Conn], app_admin: Conn) -> None:
    before = _state(app_admin)
    conn = via("ro")
    with pytest.raises(pg_errors.InsufficientPrivilege), conn.pipeline():
        first = conn.execute("SELECT %s::int", (1,))
        conn.execute("DELETE FROM gr_items WHERE id = %s", (2,))
        conn.execute("SELECT %s::int", (3,))
    assert first.fetchone() == (1,)
    assert conn.execute("SELECT 5").fetchone() == (5,)
    assert _state(app_admin) == before


def test_unnamed_statement_is_gone_after_a_refused_parse(gw: RunningGateway) -> None:
    """Parse of a refused statement replaces the unnamed statement, as a
    failed Parse does in PostgreSQL: a later Bind cannot run the old one."""
    with RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file) as raw:
        raw.startup("ro", gw.token())

        def parse(sql: str) -> bytes:
            return m_build("P", b"\0" + sql.encode() + b"\0\0\0")

        bind = m_build("B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
        execute = m_build("E", b"\0" + b"\0\0\0\0")
        sync = m_build("S", b"")
        raw.send(parse("SELECT 1") + bind + execute + sync)
        assert [k for k, _ in raw.read_until_ready()] == ["1", "2", "D", "C", "Z"]
        raw.send(parse("DELETE FROM gr_items") + bind + execute + sync)
        reply = raw.read_until_ready()
        assert [k for k, _ in reply] == ["E", "Z"]
        assert error_fields(reply[0][1])["C"] == "42501"
        raw.send(bind + execute + sync)
        reply = raw.read_until_ready()
        assert [k for k, _ in reply] == ["E", "Z"]
        assert error_fields(reply[0][1])["C"] == "26000"  # unnamed statement gone


def test_fast_path_function_call_refused(gw: RunningGateway) -> None:
    with RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file) as raw:
        raw.startup("rw", gw.token())
        # FunctionCall(oid 2171 = pg_cancel_backend, no format codes, one
        # 4-byte argument, text result): refused whatever the oid names.
        body = struct.pack("!Ihhi", 2171, 0, 1, 4) + struct.pack("!ih", 1, 0)
        raw.send(m_build("F", body))
        reply = raw.read_until_ready()
        assert [k for k, _ in reply] == ["E", "Z"]
        fields = error_fields(reply[0][1])
        assert fields["C"] == "42501" and "rule: unknown" in fields["D"]
        raw.query("SELECT 1")
        assert [k for k, _ in raw.read_until_ready()] == ["T", "D", "C", "Z"]


def test_malformed_query_refused_session_usable(gw: RunningGateway) -> None:
    with RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file) as raw:
        raw.startup("rw", gw.token())
        raw.send(m_build("Q", b"SELECT 1"))  # no terminating NUL
        reply = raw.read_until_ready()
        assert error_fields(reply[0][1])["C"] == "08P01"
        raw.send(m_build("Q", b"SELECT 1\0DELETE FROM gr_items\0"))
        reply = raw.read_until_ready()
        assert reply[0][0] == "E"  # the server refuses bytes after the NUL
        raw.send(m_build("Q", "SELECT 'caf\xe9'".encode("latin-1") + b"\0"))
        reply = raw.read_until_ready()
        assert error_fields(reply[0][1])["C"] == "22021"  # not UTF-8, as PostgreSQL says
        raw.query("SELECT 1")
        assert [k for k, _ in raw.read_until_ready()] == ["T", "D", "C", "Z"]


def m_build(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(
    ("extra", "connection", "expected"),
    [
        ({"options": "-c role=postgres"}, "rw", "class:role"),
        ({"options": "-crole=postgres"}, "rw", "class:role"),
        ({"options": "--session-authorization=postgres"}, "rw", "class:role"),
        ({"options": "-c default_transaction_read_only=off"}, "ro", "read_only"),
        ({"options": "-c search_path=vault"}, "guarded", "schema"),
        ({"options": "-B 1000"}, "rw", "startup options refused"),
        ({"options": "-c"}, "rw", "startup options refused"),
        ({"client_encoding": "SJIS"}, "rw", "client_encoding"),
        ({"options": "-c client_encoding=GBK"}, "rw", "client_encoding"),
    ],
)
def test_startup_parameters_policed(
    gw: RunningGateway, extra: dict[str, str], connection: str, expected: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.conninfo(connection, **extra))
    assert expected in str(info.value)
    gw.wait_idle()


def test_sql_ascii_client_is_pinned_to_utf8(via: Callable[..., Conn]) -> None:
    conn = via("rw", client_encoding="SQL_ASCII")
    assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
    assert conn.execute("SELECT 'é'").fetchone() == ("é",)


def test_ascii_safe_client_encoding_is_analysed_in_that_encoding(
    via: Callable[..., Conn], app_admin: Conn
) -> None:
    """LATIN1 statements are decoded as LATIN1 for the analysis, so a
    refusal and a pass-through both work on what the server will read."""
    conn = via("guarded", client_encoding="LATIN1")
    assert conn.execute("SHOW client_encoding").fetchone() == ("LATIN1",)
    assert conn.execute("SELECT 'héllo', length('héllo')").fetchone() == ("héllo", 5)
    refused(conn, "SELECT 'é' FROM payroll", rule="table:payroll")
    with pytest.raises(pg_errors.InsufficientPrivilege):
        conn.execute("SET client_encoding = 'UTF8'")


def test_role_in_startup_packet_refused(gw: RunningGateway) -> None:
    """Any startup parameter but user/database/options is a setting:
    role=postgres there is SET ROLE (libpq cannot send it; a raw client can)."""
    with RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file) as raw:
        raw.send(encode_startup({"user": "alice", "database": "rw", "role": "postgres"}))
        kind, _ = raw.read_message()
        assert kind == "R"
        raw.send(m_build("p", gw.token().encode() + b"\0"))
        kind, body = raw.read_message()
        assert kind == "E"
        fields = error_fields(body)
        assert fields["C"] == "42501" and "class:role" in fields["M"]
    gw.wait_idle()


def test_asyncpg_refusal_keeps_connection(gw: RunningGateway) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs("ro"))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM gr_items")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("DELETE FROM gr_items WHERE id = $1 RETURNING id", 1)
            assert await conn.fetchval("SELECT count(*) FROM gr_items") == 10
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_psql_refusal_message(gw: RunningGateway, cluster: DevCluster) -> None:
    psql = cluster.bindir / "psql"
    result = subprocess.run(
        [str(psql), gw.conninfo("ro"), "-v", "ON_ERROR_STOP=0", "-X", "-q"],
        input="DELETE FROM gr_items;\nSELECT 'still here';\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "permission denied by hoopfast policy" in result.stderr
    assert "still here" in result.stdout


def test_reload_applies_to_open_sessions_and_bad_file_keeps_policy(
    tmp_path: Path,
    base: dict[str, Any],
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: CertFiles,
) -> None:
    config = tmp_path / "reload.toml"

    def write(grants: dict[str, Any]) -> None:
        write_config(config, issuer.jwks_file, {"rw": {**base, "grants": grants}})

    write({"analyst": {}})
    with run_gateway(make_settings(config=config), issuer, certs) as running:
        conn = psycopg.connect(running.conninfo("rw"), autocommit=True)
        try:
            assert conn.execute("SELECT count(*) FROM payroll").fetchone() == (1,)
            # Make rw deny payroll: the open session follows at its next statement.
            write({"analyst": {"deny_tables": ["payroll"]}})
            assert running.call(lambda: running.gateway.reload_file(config))
            refused(conn, "SELECT count(*) FROM payroll", rule="table:payroll")
            # A broken file changes nothing.
            write({"analyst": {"allow": ["bogus"]}})
            assert not running.call(lambda: running.gateway.reload_file(config))
            config.write_text(config.read_text() + "\n[connections.rw\n")
            assert not running.call(lambda: running.gateway.reload_file(config))
            refused(conn, "SELECT count(*) FROM payroll", rule="table:payroll")
            # Taking the grant away ends the session.
            write({"auditor": {}})
            assert running.call(lambda: running.gateway.reload_file(config))
            with pytest.raises(psycopg.OperationalError, match="revoked"):
                conn.execute("SELECT 1")
        finally:
            conn.close()
        running.wait_idle()


def _serve(config: Path, certs: CertFiles, state_dir: Path, poll: float) -> tuple[Any, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOPFAST_", "PG"))}
    env.update(
        HOOPFAST_CONFIG=str(config),
        HOOPFAST_PG_LISTEN=f"127.0.0.1:{port}",
        HOOPFAST_STATE_DIR=str(state_dir),
        HOOPFAST_TLS_CERT_FILE=str(certs.cert_file),
        HOOPFAST_TLS_KEY_FILE=str(certs.key_file),
        HOOPFAST_CONFIG_POLL_INTERVAL=str(poll),
        HOOPFAST_API_LISTEN="off",  # (the default port may be taken on this machine)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopfast", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("hoopfast serve did not start")


def _payroll_verdict(gw: RunningGateway, port: int) -> str:
    info = gw.conninfo("rw").replace(f"port={gw.port}", f"port={port}")
    with psycopg.connect(info, autocommit=True) as conn:
        try:
            conn.execute("SELECT count(*) FROM payroll")
        except pg_errors.InsufficientPrivilege:
            return "denied"
    return "allowed"


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["sighup", "file change"])
def test_serve_reloads(
    how: str,
    tmp_path: Path,
    base: dict[str, Any],
    issuer: DevIssuer,
    certs: CertFiles,
    state_dir: Path,
    gw: RunningGateway,
) -> None:
    """The real process: SIGHUP (file polling off), or the file watcher."""
    config = tmp_path / "serve.toml"

    def write(grant: dict[str, Any]) -> None:
        write_config(config, issuer.jwks_file, {"rw": {**base, "grants": {"analyst": grant}}})
        if how == "sighup":
            proc.send_signal(signal.SIGHUP)

    write_config(config, issuer.jwks_file, {"rw": {**base, "grants": {"analyst": {}}}})
    proc, port = _serve(config, certs, state_dir, 0 if how == "sighup" else 0.1)
    try:
        assert _payroll_verdict(gw, port) == "allowed"
        write({"deny_tables": ["payroll"]})
        assert _until(lambda: _payroll_verdict(gw, port) == "denied")
        # An invalid file keeps the policy in force, and says why.
        write({"allow": ["no_such_class"]})
        time.sleep(0.5)
        assert _payroll_verdict(gw, port) == "denied"
        write({})
        assert _until(lambda: _payroll_verdict(gw, port) == "allowed")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "configuration reload failed" in out and "grants.analyst.allow.0" in out, out


def test_pg_dump_through_a_read_only_grant(gw: RunningGateway, cluster: DevCluster) -> None:
    """pg_dump is a demanding read-only client: SET of many settings,
    REPEATABLE READ READ ONLY transactions, LOCK ... IN ACCESS SHARE MODE,
    pg_catalog.set_config('search_path', ...), catalog functions, COPY TO."""
    result = subprocess.run(
        [str(cluster.bindir / "pg_dump"), "-d", gw.conninfo("ro"), "-t", "gr_items"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE public.gr_items" in result.stdout
    assert "COPY public.gr_items (id, name) FROM stdin;" in result.stdout
    assert "item 10" in result.stdout


def test_psql_meta_commands_through_a_read_only_grant(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """psql's \\d family runs catalog queries the guardrails must not refuse."""
    commands = ["\\d gr_items", "\\dt", "\\l", "\\df", "\\du", "\\dn+", "\\di", "\\sf upper(text)"]
    argv = [str(cluster.bindir / "psql"), gw.conninfo("ro"), "-X", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        argv += ["-c", command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hoopfast" not in result.stderr
    assert 'Table "public.gr_items"' in result.stdout


# -- analysis: long chains, deep chains, slow shapes ------------------------------

#: Valid statements whose trees nest past prost's default limit of 100
#: messages, which refused them as syntax errors (asyncpg's suite found it).
LONG_CHAINS = [
    ("SELECT " + " + ".join(["1"] * 60), 60),
    ("SELECT length(" + " || ".join(["'ab'"] * 60) + ")", 120),
    ("SELECT count(*) FROM (" + " UNION ALL ".join(["SELECT 1"] * 120) + ") u", 120),
    ("SELECT " + "coalesce(" * 60 + "7" + ")" * 60, 7),
]


@pytest.mark.parametrize(("sql", "value"), LONG_CHAINS)
def test_long_chains_are_checked_not_refused(
    via: Callable[..., Conn], sql: str, value: int
) -> None:
    assert via("rw").execute(sql).fetchone() == (value,)


def test_a_chain_too_deep_to_parse_is_refused_and_the_gateway_lives(
    gw: RunningGateway, via: Callable[..., Conn]
) -> None:
    """50,000 terms of ``1+1+...`` (100 KB) overflowed the stack of the
    parser's thread and killed the whole gateway; PostgreSQL itself refuses
    such a chain (stack depth limit exceeded). Now it is unknown, refused."""
    conn = via("rw")
    err = refused(conn, "SELECT " + "+".join(["1"] * 50_000), rule="unknown")
    assert "too complex for the gateway to check" in (err.diag.message_primary or "")
    # Deep, but within the bound: parsed on the deep stack; the server decides.
    with pytest.raises(pg_errors.StatementTooComplex):
        conn.execute("SELECT " + "+".join(["1"] * 15_000))
    conn.rollback()
    assert via("guarded").execute("SELECT 2").fetchone() == (2,)


#: Nested arrays: sqlglot's time doubles with each level (14: ~2 s here).
def _nested_arrays(levels: int) -> str:
    return "SELECT " + "(array[" * levels + "1" + "])[1]" * levels


def test_a_slow_analysis_does_not_stall_other_sessions(
    gw: RunningGateway, via: Callable[..., Conn]
) -> None:
    """Analysis runs off the event loop: while one session's statement is
    analysed for seconds, another's keep their latency. (Relative to the
    analysis: the gateway, the analysis and this client share one GIL on
    two loaded cores, and a ping once took 0.52 s in CI; an analysis on
    the loop would stall a ping for nearly all of it.)"""
    slow, other = via("rw"), via("guarded")
    assert other.execute("SELECT 1").fetchone() == (1,)  # (its verdict cached)
    result: list[Any] = []

    def run_slow() -> None:
        started = time.monotonic()
        result.append(slow.execute(_nested_arrays(14)).fetchone())
        result.append(time.monotonic() - started)

    thread = threading.Thread(target=run_slow)
    thread.start()
    worst = 0.0
    pings = 0
    while thread.is_alive():
        started = time.monotonic()
        assert other.execute("SELECT 1").fetchone() == (1,)
        worst = max(worst, time.monotonic() - started)
        pings += 1
        time.sleep(0.01)
    thread.join()
    assert result[0] == (1,)
    assert result[1] > 0.5 and pings > 10, (result, pings)  # (it was slow to analyse)
    assert worst < result[1] / 2, (worst, result[1])


def test_an_analysis_past_its_time_limit_is_stopped_and_refused(
    guard_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: CertFiles,
) -> None:
    """16 nested arrays took sqlglot 7.5 s (23: hours): past
    HOOPFAST_ANALYSIS_TIMEOUT the statement is unknown, and the thread
    analysing it is stopped."""
    settings = make_settings(config=guard_config, analysis_timeout=0.5)
    # (Only this test's thread: an earlier test's may still be ending.)
    before = {t for t in threading.enumerate() if t.name == "statement-analysis"}
    with run_gateway(settings, issuer, certs) as running, opened_connections(running, "ro") as via:
        conn = via("rw")
        started = time.monotonic()
        # (20 levels: minutes to analyse, so the thread's end within the
        # deadline below is its stop, on a loaded machine too.)
        err = refused(conn, _nested_arrays(20), rule="unknown")
        assert time.monotonic() - started < 5
        assert "could not analyse this statement within 0.5 s" in (err.diag.message_primary or "")
        deadline = time.monotonic() + 30
        while any(
            t.name == "statement-analysis" and t not in before for t in threading.enumerate()
        ):
            assert time.monotonic() < deadline, "the analysis thread was not stopped"
            time.sleep(0.05)


def test_a_cancel_request_withdraws_a_statement_held_for_its_analysis(
    gw: RunningGateway, app_admin: Conn
) -> None:
    """asyncpg sends a CancelRequest when its timeout passes: the statement,
    still held for its analysis, fails with 57014 and never runs (the
    server, which has not seen it, would cancel nothing)."""
    table = "gr_cancelled"
    app_admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int)")
    app_admin.execute(f"GRANT ALL ON {table} TO PUBLIC")
    app_admin.commit()
    slow_insert = f"INSERT INTO {table} VALUES ({_nested_arrays(14)[len('SELECT ') :]})"

    async def scenario() -> None:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs("rw"))
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute(slow_insert, timeout=0.3)
            assert time.monotonic() - started < 1.5
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        finally:
            await conn.close()

    asyncio.run(scenario())
    time.sleep(0.5)  # (had it been let through, it would have run by now)
    assert app_admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    app_admin.rollback()
