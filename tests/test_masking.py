"""Masking through the real gateway, with real clients, on every path a
value leaves by: simple and extended queries (text and binary, prepared and
described once), cursors, COPY, errors and notices."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import errors as pg_errors

from hoopfast.config import ConfigFileError, Masking, load_config
from hoopfast.devcluster import DevCluster
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.masking.catalog import Catalog
from hoopfast.masking.rules import Masks
from hoopfast.proxy.postgres.resultmask import ResultMasker, Unmaskable
from hoopfast.settings import Settings
from tests.conftest import Roles
from tests.gateway import RunningGateway, opened_connections, run_gateway, write_config

Conn = psycopg.Connection[Any]

KEY = "k" * 40

SETUP = """
DROP TABLE IF EXISTS customers, tickets, plain_items, devices, uniq, chk CASCADE;
CREATE TABLE customers (
    id int PRIMARY KEY,
    name text,
    email text,
    card varchar(25),
    phone text,
    ssn text,
    address text,
    notes text,
    profile jsonb,
    born date,
    ip inet
);
INSERT INTO customers VALUES
 (1, 'Ann Lee', 'ann.lee@example.com', '4111 1111 1111 1111', '+14155552671',
  '123-45-6789', '1 Main St, Springfield',
  'called from +1 (415) 555-2671, new mail bob@corp.example, card 5500-0000-0000-0004',
  '{"twitter": "@ann", "email": "ann.lee@example.com", "card": 4242424242424242}',
  '1980-02-03', '10.1.2.3'),
 (2, 'Bo Chen', 'bo@example.org', '5500000000000004', '+442079460958',
  '234-56-7890', '2 High St, London', 'nothing to see here', '{"tags": ["vip"]}',
  '1975-12-31', '192.168.0.9'),
 (3, 'Cy Null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE tickets (id int, body text);
INSERT INTO tickets VALUES (1, 'reach me at ann.lee@example.com or 123-45-6789'),
                           (2, 'no pii');
CREATE TABLE plain_items (id int, label text);
CREATE TABLE devices (id int, addr inet);
CREATE TABLE uniq (e text UNIQUE);
CREATE TABLE chk (a text CHECK (a <> x), x text);
INSERT INTO devices VALUES (1, '10.0.0.1');
INSERT INTO plain_items SELECT g, 'label ' || g FROM generate_series(1, 5) g;
ALTER TABLE customers OWNER TO app;
ALTER TABLE tickets OWNER TO app;
ALTER TABLE plain_items OWNER TO app;
ALTER TABLE devices OWNER TO app;
ALTER TABLE uniq OWNER TO app;
ALTER TABLE chk OWNER TO app;
"""

MASKING = {
    "key": {"env": "HOOPFAST_TEST_MASK_KEY"},
    "detectors": ["email", "card", "us_ssn", "phone", "jwt", "secret"],
    "rules": [
        {"columns": ["customers.email"], "strategy": "partial", "keep_first": 1},
        {"columns": ["card"], "strategy": "partial", "keep_last": 4},
        {"columns": ["public.customers.ssn"], "strategy": "hash"},
        {"columns": ["customers.phone"], "strategy": "same_length"},
        {"columns": ["customers.address"], "strategy": "redact"},
        {"columns": ["customers.notes", "customers.profile"], "strategy": "detect"},
        {"columns": ["customers.born"], "strategy": "partial", "fallback": "default"},
        {"types": ["inet"], "strategy": "redact"},
    ],
}

ANN_EMAIL = "a******@example.com"
ANN_CARD = "***************1111"
ANN_SSN = hmac.new(KEY.encode(), b"123-45-6789", hashlib.sha256).hexdigest()[:16]


@pytest.fixture(scope="module")
def masked_config(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: DevCluster,
    roles: Roles,
    issuer: DevIssuer,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Path:
    cluster.execute(SETUP, dbname="app")
    monkeypatch_module.setenv("HOOPFAST_TEST_MASK_KEY", KEY)
    directory = tmp_path_factory.mktemp("masking")
    secret = directory / "secret"
    secret.write_text(roles.scram[1])
    base = {
        "host": cluster.host,
        "port": cluster.port,
        "database": "app",
        "user": roles.scram[0],
        "password": {"file": str(secret)},
    }
    return write_config(
        directory / "masking.toml",
        issuer.jwks_file,
        {
            "masked": {**base, "masking": MASKING},
            "detect_only": {**base, "masking": {"detectors": ["email", "us_ssn"]}},
            "plain": {**base},
        },
    )


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def gw(
    masked_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: CertFiles,
) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(config=masked_config), issuer, certs) as running:
        yield running


@pytest.fixture
def via(gw: RunningGateway) -> Iterator[Callable[..., Conn]]:
    with opened_connections(gw, "masked") as connect:
        yield connect


def _ann(conn: Conn, **kw: Any) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT id, name, email, card, phone, ssn, address, notes, profile, born, ip "
        "FROM customers WHERE id = 1",
        **kw,
    ).fetchone()
    assert row is not None
    return tuple(row)


def _check_ann(row: tuple[Any, ...]) -> None:
    id_, name, email, card, phone, ssn, address, notes, profile, born, ip = row
    assert (id_, name) == (1, "Ann Lee")  # no rule: untouched
    assert email == ANN_EMAIL
    assert card == ANN_CARD
    assert ssn == ANN_SSN
    assert phone == "*" * len("+14155552671")
    assert address == "****"
    assert "bob@corp.example" not in notes and "[REDACTED:email]" in notes
    assert "5500-0000-0000-0004" not in notes and "[REDACTED:card]" in notes
    assert "555-2671" not in notes
    assert notes.startswith("called from ")
    text = profile if isinstance(profile, str) else repr(profile)
    assert "ann.lee@example.com" not in text and "4242424242424242" not in text
    assert str(born) == "1970-01-01"  # a date cannot be partial: the rule's fallback
    assert ip is None  # redact cannot make an inet: the fallback, null


def test_simple_query_text(via: Callable[..., Conn]) -> None:
    conn = via()
    row = conn.execute(
        "SELECT id, name, email, card, phone, ssn, address, notes, profile::text, born, ip "
        "FROM customers WHERE id = 1"
    ).fetchone()
    assert row is not None
    _check_ann(tuple(row))
    # SQL NULL stays NULL under every strategy.
    nulls = conn.execute("SELECT email, card, ssn, address FROM customers WHERE id = 3").fetchone()
    assert nulls == (None, None, None, None)


def test_extended_text_and_binary(via: Callable[..., Conn]) -> None:
    conn = via()
    _check_ann(_ann(conn, prepare=False))
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT id, name, email, card, phone, ssn, address, notes, profile, born, ip "
            "FROM customers WHERE id = %s",
            (1,),
        )
        row = cur.fetchone()
    assert row is not None
    _check_ann(tuple(row))


def test_prepared_described_once_executed_many(via: Callable[..., Conn]) -> None:
    """psycopg prepares after the first runs and then sends Bind/Execute
    only: the gateway must still know the rows' description."""
    conn = via(prepare_threshold=0)
    for _ in range(5):
        _check_ann(_ann(conn))
    with conn.cursor(binary=True) as cur:
        for _ in range(3):
            cur.execute("SELECT email, ssn FROM customers WHERE id = %s", (1,), prepare=True)
            assert cur.fetchone() == (ANN_EMAIL, ANN_SSN)


def test_alias_does_not_hide_a_column(via: Callable[..., Conn]) -> None:
    conn = via()
    row = conn.execute("SELECT email AS e, c.card AS x FROM customers c WHERE id = 1").fetchone()
    assert row == (ANN_EMAIL, ANN_CARD)
    # ...and naming another column "email" does not mask it.
    row = conn.execute("SELECT name AS email FROM customers WHERE id = 1").fetchone()
    assert row == ("Ann Lee",)


def test_expressions_get_their_source_columns_rule(via: Callable[..., Conn]) -> None:
    conn = via()
    upper, part, agg, doc, field = conn.execute(
        "SELECT upper(email), substr(ssn, 1, 11), "
        "(SELECT string_agg(email, ',') FROM customers WHERE id = 1), "
        "(SELECT row_to_json(c)::text FROM customers c WHERE id = 1), "
        "(SELECT (c).address FROM customers c WHERE id = 1) "
        "FROM customers WHERE id = 1"
    ).fetchone()  # type: ignore[misc]
    # Lineage: the columns' own rules (partial, hash) apply to expressions.
    assert upper == "A******@EXAMPLE.COM"
    assert part == hmac.new(KEY.encode(), b"123-45-6789", hashlib.sha256).hexdigest()[:16]
    assert agg == ANN_EMAIL
    # A whole-row reference carries every column: the table's first rule
    # (email's partial) covers it whole, so nothing of the row is left.
    assert doc == "{" + "*" * (len(doc) - 1)
    assert set(field) == {"1", "*"}


def test_detectors_cover_what_no_rule_sees(gw: RunningGateway) -> None:
    """Without column rules, detectors alone find the values in expressions
    and in whole rows, and JSON stays JSON."""
    with opened_connections(gw, "detect_only") as connect:
        conn = connect()
        upper, doc, xml = conn.execute(
            "SELECT upper(email), row_to_json(c)::text, xmlelement(name e, email) "
            "FROM customers c WHERE id = 1"
        ).fetchone()  # type: ignore[misc]
    assert upper == "[REDACTED:email]"
    assert xml == "<e>[REDACTED:email]</e>"  # xml is text to the detectors
    for raw in ("ann.lee@example.com", "123-45-6789"):
        assert raw not in doc
    assert json.loads(doc)["id"] == 1


def test_many_rows_and_unmasked_table(via: Callable[..., Conn], cluster: DevCluster) -> None:
    conn = via()
    rows = conn.execute(
        "SELECT g, 'user' || g || '@example.com', 'plain ' || g FROM generate_series(1, 20000) g"
    ).fetchall()
    assert len(rows) == 20000
    assert all(r[1] == "[REDACTED:email]" and r[2] == f"plain {r[0]}" for r in rows)
    assert conn.execute("SELECT * FROM plain_items ORDER BY id").fetchall() == [
        (i, f"label {i}") for i in range(1, 6)
    ]


def test_cursors(via: Callable[..., Conn]) -> None:
    conn = via(autocommit=False)
    # A FETCH is read with its cursor's query (lineage of computed fields).
    conn.execute("DECLARE a CURSOR FOR SELECT upper(address) FROM customers WHERE id = 1")
    assert conn.execute("FETCH 1 FROM a").fetchone() == ("****",)
    conn.rollback()
    conn.execute("DECLARE c CURSOR FOR SELECT email, ssn FROM customers ORDER BY id")
    assert conn.execute("FETCH 1 FROM c").fetchall() == [(ANN_EMAIL, ANN_SSN)]
    assert conn.execute("FETCH 1 FROM c").fetchone()[0] == "b*@example.org"  # type: ignore[index]
    conn.rollback()
    # psycopg's server-side cursor: DECLARE, then FETCH through the extended protocol.
    with conn.cursor(name="named") as cur:
        cur.execute("SELECT email FROM customers WHERE id <= 2 ORDER BY id")
        assert [r[0] for r in cur.fetchmany(1)] == [ANN_EMAIL]
        assert [r[0] for r in cur.fetchall()] == ["b*@example.org"]
    conn.rollback()


def test_pipeline(via: Callable[..., Conn]) -> None:
    conn = via()
    with conn.pipeline():
        curs = [conn.execute("SELECT email FROM customers WHERE id = %s", (i,)) for i in (1, 2, 1)]
        bad = conn.cursor()
        good = conn.cursor()
    assert [c.fetchone() for c in curs] == [(ANN_EMAIL,), ("b*@example.org",), (ANN_EMAIL,)]
    del bad, good
    # An error inside a pipeline skips to Sync, and masking stays in step.
    with pytest.raises(pg_errors.DivisionByZero), conn.pipeline():
        conn.execute("SELECT email FROM customers WHERE id = 1")
        conn.execute("SELECT 1 / 0")
        conn.execute("SELECT email FROM customers WHERE id = 2")
    assert conn.execute("SELECT email FROM customers WHERE id = 2").fetchone() == (
        "b*@example.org",
    )


#: SQL -> (the error's field, what it must read): values quoted in errors
#: are gone; what the statement itself contains stays.
ERRORS = {
    "SELECT email::int FROM customers WHERE id = 1": (
        "message_primary",
        'invalid input syntax for type integer: "[REDACTED]"',
    ),
    # Values no detector recognises leave with errors that quote them: gone too.
    "SELECT address::int FROM customers WHERE id = 1": (
        "message_primary",
        'invalid input syntax for type integer: "[REDACTED]"',
    ),
    "INSERT INTO uniq VALUES ('x@example.com'), ('x@example.com')": (
        "message_detail",
        "Key (e)=([REDACTED]) already exists.",
    ),
    "INSERT INTO chk VALUES ('same', 'same')": (
        "message_detail",
        "Failing row contains ([REDACTED]).",
    ),
    # Data turned into names: quoted texts the statement does not contain go.
    "SELECT quote_ident(address)::regclass FROM customers WHERE id = 1": (
        "message_primary",
        'relation "[REDACTED]" does not exist',
    ),
    "SELECT * FROM no_such_table": ("message_primary", 'relation "no_such_table" does not exist'),
}


@pytest.mark.parametrize("sql", list(ERRORS))
def test_errors_lose_the_values_they_quote(via: Callable[..., Conn], sql: str) -> None:
    conn = via()
    with pytest.raises(pg_errors.Error) as info:
        conn.execute(sql)
    field, expected = ERRORS[sql]
    assert getattr(info.value.diag, field) == expected
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_json_parse_error_loses_its_context(via: Callable[..., Conn]) -> None:
    with pytest.raises(pg_errors.InvalidTextRepresentation) as info:
        via().execute("SELECT (address || '}')::json FROM customers WHERE id = 1")
    assert "Main St" not in str(info.value) + (info.value.diag.context or "")


def test_notices_get_detectors(gw: RunningGateway) -> None:
    with opened_connections(gw, "detect_only") as connect:
        conn = connect()
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'mail me at eve@example.net'; END $$")
    assert notices == ["mail me at [REDACTED:email]"]


MASKING_REFUSALS = {
    # Procedural code can read masked columns and hand values out anywhere.
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT address FROM customers LIMIT 1); END $$": (
        "masking:procedural"
    ),
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT address FROM customers'": (
        "masking:procedural"
    ),
    # Reshaping the schema out of the rules' names and types.
    "ALTER TABLE customers RENAME COLUMN address TO addr": "masking:ddl",
    "ALTER TABLE customers ALTER COLUMN ip TYPE text": "masking:ddl",
    "ALTER SCHEMA public RENAME TO p2": "masking:ddl",
    "CREATE VIEW v AS SELECT * FROM customers": "masking:ddl",
    # Samples of every column's values.
    "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'": (
        "masking:table:pg_stats"
    ),
    # SQL in a string: lineage cannot follow it.
    "SELECT query_to_xml('SELECT address FROM customers', false, false, '')": (
        "masking:procedural"
    ),
    "SELECT table_to_xml('customers', false, false, '')": "masking:procedural",
    # Writes that would store masked values where no rule covers them.
    "CREATE TEMP TABLE leak AS SELECT address FROM customers": "masking:ddl",
    "SELECT email INTO TEMP leak2 FROM customers": "masking:ddl",
    "UPDATE customers SET name = address WHERE id = 3": "masking:write",
    "INSERT INTO tickets SELECT id, notes FROM customers": "masking:write",
    "WITH c AS (SELECT * FROM customers) INSERT INTO tickets SELECT id, address FROM c": (
        "masking:write"
    ),
}


@pytest.mark.parametrize("sql", list(MASKING_REFUSALS))
def test_what_masking_cannot_follow_is_refused(via: Callable[..., Conn], sql: str) -> None:
    conn = via()
    with pytest.raises(pg_errors.InsufficientPrivilege) as info:
        conn.execute(sql)
    assert f"rule: {MASKING_REFUSALS[sql]}" in (info.value.diag.message_detail or "")
    assert conn.execute("SELECT email FROM customers WHERE id = 1").fetchone() == (ANN_EMAIL,)


def test_writes_that_move_no_masked_value_run(via: Callable[..., Conn]) -> None:
    conn = via(autocommit=False)
    conn.execute("UPDATE customers SET name = 'Ann Lee' WHERE email = 'ann.lee@example.com'")
    conn.execute("UPDATE customers SET email = 'new@example.com' WHERE id = 3")
    conn.execute("INSERT INTO customers (id, email) VALUES (99, 'z@example.com')")
    conn.execute("DELETE FROM customers WHERE email = 'z@example.com'")
    conn.rollback()


def test_copy_out(via: Callable[..., Conn]) -> None:
    conn = via()
    # A COPY of masked columns runs as the equivalent SELECT: its rows are
    # masked like any result and written back as the COPY's lines.
    with conn.cursor().copy("COPY customers (id, email, ssn, name) TO STDOUT") as copy:
        lines = b"".join(bytes(b) for b in copy).decode().splitlines()
    assert lines[0] == f"1\t{ANN_EMAIL}\t{ANN_SSN}\tAnn Lee"
    assert lines[2] == "3\t\\N\t\\N\tCy Null"
    with conn.cursor().copy(
        "COPY (SELECT upper(address), email FROM customers WHERE id = 1) TO STDOUT "
        "WITH (FORMAT csv, HEADER, FORCE_QUOTE *)"
    ) as copy:
        data = b"".join(bytes(b) for b in copy).decode()
    assert data == f'upper,email\n"****","{ANN_EMAIL}"\n'  # a header is never forced
    # Binary COPY cannot be served from a SELECT: refused, nothing sent.
    with (
        pytest.raises(pg_errors.InsufficientPrivilege, match="masked columns"),
        conn.cursor().copy("COPY customers TO STDOUT (FORMAT binary)") as copy,
    ):
        b"".join(copy)
    # Other tables: the connection's detectors run over every line.
    for fmt in ("", " WITH (FORMAT csv)"):
        with conn.cursor().copy(f"COPY tickets TO STDOUT{fmt}") as copy:
            data = b"".join(bytes(b) for b in copy).decode()
        assert "ann.lee@example.com" not in data and "123-45-6789" not in data
        assert "[REDACTED:email]" in data and "no pii" in data
    # Binary COPY cannot be scanned: the session ends rather than pass it.
    with (
        pytest.raises(pg_errors.FeatureNotSupported, match="binary COPY"),
        conn.cursor().copy("COPY tickets TO STDOUT WITH (FORMAT binary)") as copy,
    ):
        b"".join(copy)
    assert conn.closed or conn.broken


COPY_OPTIONS = [
    "",
    " WITH (FORMAT csv)",
    " WITH (FORMAT csv, HEADER true, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\')",
    " WITH (FORMAT csv, FORCE_QUOTE (note))",
    " WITH (FORMAT text, DELIMITER '|', NULL '')",
    " WITH CSV HEADER FORCE QUOTE note",
    " (HEADER)",
]

COPY_VALUES = [
    "plain",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "back\\slash",
    'quote"d',
    "comma,semi;pipe|",
    "'single'",
    "",
    "\\.",
    "NULL",
    "\\N",
    "ünïcödé ✓",
    "\b\f\v",
    None,
]


@pytest.mark.parametrize("options", COPY_OPTIONS)
def test_copy_served_from_select_is_byte_exact(
    via: Callable[..., Conn], app_admin: Conn, options: str
) -> None:
    """The translated COPY writes what PostgreSQL's own COPY writes, byte for
    byte, for values with every character the formats escape or quote; the
    masked column is compared with PostgreSQL's COPY of its masked value."""
    app_admin.execute(
        "DROP TABLE IF EXISTS copy_src; CREATE TABLE copy_src (id int, note text);"
        "ALTER TABLE copy_src OWNER TO app"
    )
    for i, v in enumerate(COPY_VALUES):
        app_admin.execute("INSERT INTO copy_src VALUES (%s, %s)", (i, v))
    query = "SELECT s.id, s.note, {email} AS email FROM copy_src s{join} ORDER BY s.id"
    direct = query.format(email=f"'{ANN_EMAIL}'::text", join="")
    with app_admin.cursor().copy(f"COPY ({direct}) TO STDOUT{options}") as copy:
        expected = b"".join(bytes(b) for b in copy)
    masked = query.format(email="c.email", join=" JOIN customers c ON c.id = 1")
    with via().cursor().copy(f"COPY ({masked}) TO STDOUT{options}") as copy:
        got = b"".join(bytes(b) for b in copy)
    assert got == expected


def test_asyncpg(gw: RunningGateway) -> None:
    """asyncpg reads everything in binary and executes prepared statements
    with Bind/Execute only."""

    async def main() -> None:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs("masked"))
        try:
            stmt = await conn.prepare(
                "SELECT email, ssn, born, ip, notes FROM customers WHERE id = $1"
            )
            for _ in range(3):
                row = await stmt.fetchrow(1)
                assert row is not None
                assert row["email"] == ANN_EMAIL
                assert row["ssn"] == ANN_SSN
                assert str(row["born"]) == "1970-01-01"
                assert row["ip"] is None  # redact on inet: the fallback, null
                assert "bob@corp.example" not in row["notes"]
            many = await conn.fetch(
                "SELECT email FROM customers WHERE email IS NOT NULL ORDER BY id"
            )
            assert [r[0] for r in many] == [ANN_EMAIL, "b*@example.org"]
            async with conn.transaction():
                cur = await conn.cursor("SELECT email FROM customers ORDER BY id")
                assert (await cur.fetchrow())[0] == ANN_EMAIL  # type: ignore[index]
        finally:
            await conn.close()

    asyncio.run(main())


def test_psql(gw: RunningGateway) -> None:
    out = subprocess.run(
        ["psql", gw.conninfo("masked"), "-XAt", "-c", "SELECT email, ssn FROM customers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.splitlines()[0] == f"{ANN_EMAIL}|{ANN_SSN}"
    assert "ann.lee@example.com" not in out


def test_detectors_only_connection(gw: RunningGateway) -> None:
    with opened_connections(gw, "detect_only") as connect:
        conn = connect()
        row = conn.execute("SELECT email, ssn, name, card FROM customers WHERE id = 1").fetchone()
        assert row == ("[REDACTED:email]", "[REDACTED:us_ssn]", "Ann Lee", "4111 1111 1111 1111")


def test_detectors_see_binary_jsonb(gw: RunningGateway) -> None:
    """asyncpg reads jsonb in binary (a version byte, then the text): the
    connection's detectors mask inside it as in text format."""

    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs("detect_only"))
        try:
            value = await conn.fetchval(
                "SELECT jsonb_build_object('e', email, 'n', name) FROM customers WHERE id = 1"
            )
            text = await conn.fetchval(
                "SELECT jsonb_build_object('e', email, 'n', name)::text FROM customers WHERE id = 1"
            )
            return value, text
        finally:
            await conn.close()

    value, text = asyncio.run(main())
    assert json.loads(value) == json.loads(text) == {"e": "[REDACTED:email]", "n": "Ann Lee"}


def test_unmasked_connection_is_untouched(gw: RunningGateway) -> None:
    with opened_connections(gw, "plain") as connect:
        conn = connect()
        row = conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()
        assert row == ("ann.lee@example.com",)


def test_the_same_value_hashes_alike(via: Callable[..., Conn], cluster: DevCluster) -> None:
    """Keyed hashes are stable, so masked columns still join."""
    conn = via()
    a = conn.execute("SELECT ssn FROM customers WHERE id = 1").fetchone()
    b = conn.execute("SELECT ssn FROM customers WHERE id = 1").fetchone()
    assert a == b == (ANN_SSN,)
    assert re.fullmatch(r"[0-9a-f]{16}", ANN_SSN)


BAD_MASKING = [
    ({"rules": [{"strategy": "redact"}]}, "needs 'columns' or 'types'"),
    ({"rules": [{"columns": ["a..b"]}]}, "not a column glob"),
    ({"rules": [{"columns": ["a.b.c.d"]}]}, "not a column glob"),
    ({"rules": [{"columns": ["x"], "strategy": "scramble"}]}, "strategy"),
    ({"rules": [{"columns": ["x"], "roles": ["nobody"]}]}, "not defined"),
    ({"detectors": ["passport"]}, "detectors"),
    ({"rules": [{"columns": ["x"], "keep_first": -1}]}, "keep_first"),
]


@pytest.mark.parametrize(("masking", "expected"), BAD_MASKING)
def test_bad_masking_config(
    tmp_path: Path, issuer: DevIssuer, masking: dict[str, Any], expected: str
) -> None:
    path = write_config(
        tmp_path / "bad.toml",
        issuer.jwks_file,
        {"c": {"host": "h", "database": "d", "user": "u", "masking": masking}},
    )
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert expected in str(info.value)


# -- a malformed DataRow from the upstream ends the session with 08P01 -------


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


_TEXT_FIELD = b"v\0" + (0).to_bytes(4, "big") + (0).to_bytes(2, "big") + (25).to_bytes(4, "big")
_TEXT_FIELD += (-1).to_bytes(2, "big", signed=True) + (-1).to_bytes(4, "big", signed=True)
_TEXT_FIELD += (0).to_bytes(2, "big")
ONE_TEXT_COLUMN = _msg(b"T", (1).to_bytes(2, "big") + _TEXT_FIELD)

MALFORMED_ROWS = {
    "two columns, one described": _msg(b"D", b"\0\2" + b"\0\0\0\1a" + b"\0\0\0\1b"),
    "value past the end": _msg(b"D", b"\0\1" + b"\0\0\0\x09abc"),
    "length -2": _msg(b"D", b"\0\1" + b"\xff\xff\xff\xfe"),
    "trailing bytes": _msg(b"D", b"\0\1" + b"\0\0\0\1a" + b"zz"),
    "no column count": _msg(b"D", b"\0"),
}


class _FakeUpstream:
    """Just enough of a PostgreSQL server (trust auth, simple queries) to
    answer the gateway's catalog queries with no rows and the client's
    query with ``row``."""

    def __init__(self, row: bytes) -> None:
        self.row = row
        self.queries = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(length - 4)
            writer.write(
                _msg(b"R", b"\0\0\0\0")
                + _msg(b"S", b"client_encoding\0UTF8\0")
                + _msg(b"S", b"server_version\x0017.0\0")
                + _msg(b"K", b"\0\0\0\1\0\0\0\2")
                + _msg(b"Z", b"I")
            )
            while True:
                kind = await reader.readexactly(1)
                body = await reader.readexactly(
                    int.from_bytes(await reader.readexactly(4), "big") - 4
                )
                if kind == b"X":
                    break
                if kind != b"Q":
                    continue
                self.queries += 1
                if b"pg_catalog" in body:
                    writer.write(_msg(b"C", b"SELECT 0\0") + _msg(b"Z", b"I"))
                else:
                    writer.write(
                        ONE_TEXT_COLUMN + self.row + _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I")
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("name", list(MALFORMED_ROWS))
def test_malformed_data_row_ends_the_session(
    name: str,
    tmp_path: Path,
    issuer: DevIssuer,
    certs: CertFiles,
    make_settings: Callable[..., Settings],
) -> None:
    fake = _FakeUpstream(MALFORMED_ROWS[name])
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(fake.handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        config = write_config(
            tmp_path / "fake.toml",
            issuer.jwks_file,
            {
                "fake": {
                    "host": "127.0.0.1",
                    "port": port,
                    "database": "x",
                    "user": "x",
                    "require_auth": ["trust"],
                    "masking": {"detectors": ["email"]},
                }
            },
        )
        with run_gateway(make_settings(config=config), issuer, certs) as gw:
            conn = psycopg.connect(gw.conninfo("fake"), autocommit=True)
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT v").fetchall()
            assert info.value.sqlstate == "08P01", info.value
            assert "upstream" in str(info.value)
            conn.close()
            gw.wait_idle()
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_table_created_after_the_catalog_was_read(
    via: Callable[..., Conn], app_admin: Conn
) -> None:
    """A table the catalog does not know yet is matched by column name (the
    one-part globs) at once, and by the catalog from the next session on."""
    app_admin.execute(
        "DROP TABLE IF EXISTS late_cards; CREATE TABLE late_cards (card text, note text);"
        "INSERT INTO late_cards VALUES ('4111111111111111', 'write to zed@example.com');"
        "ALTER TABLE late_cards OWNER TO app"
    )
    for _ in range(2):
        conn = via()
        row = conn.execute("SELECT card, note, card AS c FROM late_cards").fetchone()
        assert row == ("************1111", "write to [REDACTED:email]", "************1111")
        conn.close()


def test_reload_that_changes_masking_ends_sessions(
    gw: RunningGateway, masked_config: Path, tmp_path: Path
) -> None:
    with opened_connections(gw, "masked") as connect:
        masked = connect()
        plain = connect("plain")
        text = masked_config.read_text().replace('strategy = "hash"', 'strategy = "redact"')
        assert text != masked_config.read_text()
        changed = tmp_path / "changed.toml"
        changed.write_text(text)
        original = load_config(masked_config)
        gw.call(lambda: gw.gateway.reload(load_config(changed)))
        try:
            with pytest.raises(psycopg.OperationalError, match="masking rules changed"):
                masked.execute("SELECT 1")
            assert plain.execute("SELECT email FROM customers WHERE id = 1").fetchone() == (
                "ann.lee@example.com",
            )
            fresh = connect()
            assert fresh.execute("SELECT ssn FROM customers WHERE id = 1").fetchone() == ("****",)
        finally:
            gw.call(lambda: gw.gateway.reload(original))


LINEAGE = [
    # (query, expected row); each field is computed, so RowDescription names no source.
    ("SELECT upper(address), lower(email) FROM customers WHERE id = %s", ("****", ANN_EMAIL)),
    (
        "SELECT x || '' FROM (SELECT lower(email) AS x FROM customers WHERE id = %s) s",
        (ANN_EMAIL,),
    ),
    ("WITH t AS (SELECT ssn AS s FROM customers WHERE id = %s) SELECT s || '' FROM t", (ANN_SSN,)),
    (
        "SELECT coalesce(c.phone, '') FROM customers c WHERE c.id = %s",
        ("*" * len("+14155552671"),),
    ),
    ("SELECT email FROM customers WHERE id = %s UNION ALL SELECT 'zz'", (ANN_EMAIL,)),
]


@pytest.mark.parametrize(("sql", "expected"), LINEAGE)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared", "binary"])
def test_lineage_applies_the_source_columns_rule(
    via: Callable[..., Conn], sql: str, expected: tuple[Any, ...], mode: str
) -> None:
    """An expression over a masked column gets that column's rule, also
    where no detector would recognise the value (an address)."""
    conn = via()
    if mode == "simple":
        row = conn.execute(sql.replace("%s", "1"), prepare=False).fetchone()
    else:
        with conn.cursor(binary=mode == "binary") as cur:
            for _ in range(3 if mode == "prepared" else 1):
                cur.execute(sql, (1,), prepare=mode == "prepared")
                row = cur.fetchone()
    assert row == expected


# -- the protocol follower on its own: any message sequence, only clear errors ----

_SERVER_KINDS = b"TnDCIsENZHWdcA1"
_CLIENT_KINDS = b"QFPBDESH"


def _offline_masker() -> ResultMasker:
    masking = Masking.model_validate(MASKING | {"key": None})
    catalog = Catalog.from_rows(
        [[b"16384", b"1", b"public", b"customers", b"email", b"25"]], [[b"25", b"text"]]
    )
    return ResultMasker(Masks(masking, ("analyst",), b"k" * 32), catalog)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(list(_SERVER_KINDS)),
            st.sampled_from(list(_CLIENT_KINDS)),
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_result_masker_takes_any_sequence(steps: list[tuple[bool, int, int, bytes]]) -> None:
    """Whatever the peers send (well-formed or not), the follower answers
    with bytes, None, or Unmaskable/ValueError (the session then ends):
    never another exception."""
    masker = _offline_masker()
    description = bytes.fromhex(
        "540000001e0001656d61696c0000004000000100000019ffffffffffff0000"
    )  # one text field "email" from table 16384, column 1
    for from_server, server_kind, client_kind, body in steps:
        try:
            if from_server:
                payload = description[5:] if server_kind == ord("T") and body[:1] == b"x" else body
                message = bytes([server_kind]) + (len(payload) + 4).to_bytes(4, "big") + payload
                out = masker.server_message(server_kind, message)
                assert out is None or isinstance(out, bytes)
            else:
                message = bytes([client_kind]) + (len(body) + 4).to_bytes(4, "big") + body
                assert isinstance(masker.client_message(message), bytes)
        except (Unmaskable, ValueError):
            pass


def test_pg_dump_and_psql_copy_get_masked_data(gw: RunningGateway, cluster: DevCluster) -> None:
    """pg_dump's COPY ... TO stdout of a masked table, and psql's \\copy, are
    served masked (from the equivalent SELECT)."""
    dump = subprocess.run(
        [str(cluster.bindir / "pg_dump"), "-d", gw.conninfo("masked"), "-t", "customers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dump.returncode == 0, dump.stderr
    assert "COPY public.customers (id, name, email" in dump.stdout
    assert f"1\tAnn Lee\t{ANN_EMAIL}\t{ANN_CARD}" in dump.stdout
    for raw in ("ann.lee@example.com", "123-45-6789", "1 Main St"):
        assert raw not in dump.stdout
    copy = subprocess.run(
        [
            str(cluster.bindir / "psql"),
            gw.conninfo("masked"),
            "-X",
            "-c",
            "\\copy (SELECT email, address FROM customers ORDER BY id) TO STDOUT WITH CSV",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    assert copy.stdout.splitlines()[:2] == [f"{ANN_EMAIL},****", "b*@example.org,****"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('{"to": "a\\u0040example.com"}', '{"to": "[REDACTED:email]"}'),
        # What the text as sent shows stays masked (review).
        (
            "4111111111111111\\u0031 x\\u0040example.com",
            "[REDACTED:card]1 [REDACTED:email]",
        ),
        ("card \\u0034111111111111111", "card [REDACTED:card]"),
        # A UTF-16 pair of escapes is one character.
        ("\\ud83d\\ude00 b\\u0040example.com", "\U0001f600 [REDACTED:email]"),
        # Escapes that hide nothing stay as sent; so does what only looks like one.
        ('{"n": "caf\\u00e9"}', '{"n": "caf\\u00e9"}'),
        ("C:\\users\\x and \\u12", "C:\\users\\x and \\u12"),
        ("plain a@example.com", "plain [REDACTED:email]"),
    ],
)
def test_free_text_escapes_do_not_hide_values(text: str, shown: str) -> None:
    from hoopfast.masking.rules import every_detector

    assert every_detector(b"k" * 32).mask_text(text) == shown
