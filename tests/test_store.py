"""The state store's contract, run against both backends: SQLite in a temp
dir, PostgreSQL in a fresh database on the test cluster."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import sqlite3
import stat
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from hoopfast.devcluster import DevCluster, free_port
from hoopfast.recording.chain import canonical
from hoopfast.store import Store, StoreError, open_store
from hoopfast.store.migrations import LATEST_VERSION, MIGRATIONS
from hoopfast.store.postgres import PostgresStore
from hoopfast.store.records import (
    SESSION_END,
    SESSION_START,
    STATEMENT,
    EventFilter,
    EventRecord,
    Seal,
    SessionRow,
    SigningKey,
)
from hoopfast.store.sqlite import SqliteStore
from tests.conftest import Roles

ZERO_HASH = "0" * 64


@dataclass
class Backend:
    kind: str
    #: A new, not yet opened store on the same location each time.
    new: Callable[[], Store]
    #: SQLite: the database file; PostgreSQL: the database name.
    location: str
    cluster: DevCluster | None = None


def pg_url(cluster: DevCluster, role: tuple[str, str], dbname: str) -> str:
    user, password = role
    return (
        f"postgresql://{user}:{quote(password, safe='')}@{cluster.host}:{cluster.port}/{dbname}"
        f"?sslmode=verify-full&sslrootcert={quote(str(cluster.ca_file), safe='')}"
    )


def postgres_backend(cluster: DevCluster, roles: Roles) -> Backend:
    """A fresh database owned by the (non-superuser) SCRAM role."""
    dbname = f"store_{secrets.token_hex(6)}"
    cluster.create_database(dbname, owner=roles.scram[0])
    url = pg_url(cluster, roles.scram, dbname)
    return Backend("postgresql", lambda: PostgresStore(url), dbname, cluster)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "state" / "hoopfast.db"
        return Backend("sqlite", lambda: SqliteStore(path), str(path))
    return postgres_backend(request.getfixturevalue("cluster"), request.getfixturevalue("roles"))


def run(backend: Backend, scenario: Callable[[Store], Awaitable[None]]) -> None:
    """Open a store, run ``scenario`` on it, close it: one event loop."""

    async def main() -> None:
        store = backend.new()
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def fake_hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def make_session(
    session_id: str,
    *,
    subject: str = "alice",
    connection: str = "main",
    start: float = 1000.0,
    verdicts: tuple[str, ...] = ("allow", "deny", "allow"),
    client: str = "10.0.0.7:51234",
    end: bool = True,
) -> list[EventRecord]:
    """A session's events: start, one statement per verdict, maybe an end,
    one second apart."""
    kinds = [(SESSION_START, ""), *((STATEMENT, v) for v in verdicts)]
    if end:
        kinds.append((SESSION_END, ""))
    events: list[EventRecord] = []
    prev = ZERO_HASH
    for seq, (kind, verdict) in enumerate(kinds):
        body: dict[str, object] = {"kind": kind, "seq": seq, "session_id": session_id}
        if kind == SESSION_START:
            body["client_address"] = client
        if kind == STATEMENT:
            body["sql"] = f"SELECT {seq}"
            body["verdict"] = verdict
        data = canonical(body)
        digest = fake_hash(prev, data)
        events.append(
            EventRecord(
                session_id, seq, start + seq, kind, subject, connection, verdict, data, prev, digest
            )
        )
        prev = digest
    return events


def seal_of(events: list[EventRecord], *, key_id: str = "k1", signature: str = "ab" * 32) -> Seal:
    last = events[-1]
    return Seal(last.session_id, len(events), last.hash, last.at, "client", key_id, signature)


def order(events: list[EventRecord]) -> list[EventRecord]:
    return sorted(events, key=lambda e: (e.at, e.session_id, e.seq))


async def page_all(store: Store, where: EventFilter, limit: int) -> list[EventRecord]:
    """Every event ``where`` matches, page by page through the keyset cursor."""
    out: list[EventRecord] = []
    after = None
    while True:
        page = await store.events(where, limit=limit, after=after)
        assert len(page) <= limit
        out.extend(page)
        if len(page) < limit:
            return out
        last = page[-1]
        after = (last.at, last.session_id, last.seq)


# -- schema --------------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == LATEST_VERSION
    for m in MIGRATIONS:
        assert m.statements("sqlite") and m.statements("postgresql")


def test_open_twice_keeps_schema_and_data(backend: Backend) -> None:
    events = make_session("s1")

    async def first(store: Store) -> None:
        assert store.backend == backend.kind
        assert await store.schema_version() == LATEST_VERSION
        await store.write_recording(events, [])

    async def second(store: Store) -> None:
        assert await store.schema_version() == LATEST_VERSION
        assert await store.session_events("s1") == events

    run(backend, first)
    run(backend, second)


def test_concurrent_open(backend: Backend) -> None:
    """Gateways starting together: one migrates, the others wait and find
    the schema current (no duplicate-table error, no second migration)."""

    async def main() -> None:
        stores = [backend.new() for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            versions = await asyncio.gather(*(s.schema_version() for s in stores))
            assert versions == [LATEST_VERSION] * 4
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(main())


def test_newer_schema_is_refused(backend: Backend) -> None:
    run(backend, lambda store: asyncio.sleep(0))
    insert = f"INSERT INTO schema_version (version, applied_at) VALUES ({LATEST_VERSION + 1}, 0)"
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.location) as conn:
            conn.execute(insert)
    else:
        assert backend.cluster is not None
        backend.cluster.execute(insert, dbname=backend.location)

    async def main() -> None:
        store = backend.new()
        with pytest.raises(StoreError, match="newer than this hoopfast supports"):
            await store.open()
        await store.close()

    asyncio.run(main())


# -- writing ---------------------------------------------------------------------


def test_roundtrip(backend: Backend) -> None:
    events = make_session("s1", subject="alice", connection="main", client="192.0.2.1:4000")
    seal = seal_of(events)

    async def scenario(store: Store) -> None:
        await store.write_recording(events, [seal])
        assert await store.session_events("s1") == events
        assert await store.events(EventFilter()) == events
        row = await store.session("s1")
        assert row == SessionRow(
            session_id="s1",
            subject="alice",
            connection="main",
            client_address="192.0.2.1:4000",
            started_at=1000.0,
            stored_events=5,
            statements=3,
            ended_at=seal.ended_at,
            end_reason="client",
            seal=seal,
        )
        assert await store.sessions(EventFilter()) == [row]
        assert await store.session("nope") is None
        assert await store.session_events("nope") == []

    run(backend, scenario)


def test_sessions_and_events_across_batches(backend: Backend) -> None:
    """A session's events arrive in several batches; its counters add up,
    and it stays open (no seal) until the seal arrives."""
    events = make_session("s1", verdicts=("allow",) * 6)

    async def scenario(store: Store) -> None:
        await store.write_recording(events[:3], [])
        row = await store.session("s1")
        assert row is not None
        assert (row.stored_events, row.statements, row.seal, row.ended_at) == (3, 2, None, None)
        await store.write_recording(events[3:], [])
        await store.write_recording([], [seal_of(events)])
        row = await store.session("s1")
        assert row is not None
        assert (row.stored_events, row.statements) == (8, 6)
        assert row.seal == seal_of(events)

    run(backend, scenario)


def test_redelivery_changes_nothing(backend: Backend) -> None:
    s1 = make_session("s1")
    s2 = make_session("s2", start=2000.0)
    seals = [seal_of(s1)]

    async def scenario(store: Store) -> None:
        await store.write_recording(s1 + s2[:2], seals)
        before = await store.sessions(EventFilter())
        # The same batch again, an overlapping one, and a duplicate inside one.
        await store.write_recording(s1 + s2[:2], seals)
        await store.write_recording(s2[:3] + s2[2:3], [])
        after = await store.sessions(EventFilter())
        s2_row = await store.session("s2")
        assert s2_row is not None
        assert (s2_row.stored_events, s2_row.statements) == (3, 2)
        assert [r for r in after if r.session_id == "s1"] == [
            r for r in before if r.session_id == "s1"
        ]
        assert await store.count_events(EventFilter()) == len(s1) + 3

    run(backend, scenario)


def test_first_seal_wins(backend: Backend) -> None:
    events = make_session("s1")
    first = seal_of(events, key_id="k1", signature="11" * 32)
    other = seal_of(events, key_id="k2", signature="22" * 32)
    stray = seal_of(make_session("never-started"))

    async def scenario(store: Store) -> None:
        await store.write_recording(events, [first, other, stray])
        await store.write_recording([], [other])
        row = await store.session("s1")
        assert row is not None and row.seal == first
        assert await store.session("never-started") is None

    run(backend, scenario)


def test_failed_write_writes_nothing(backend: Backend) -> None:
    """A batch that fails half way (here: a constraint the test adds on the
    store's sessions table) leaves no event of it behind."""
    good = make_session("good")
    bad = make_session("boom", start=3000.0)

    async def scenario(store: Store) -> None:
        if backend.kind == "sqlite":
            with sqlite3.connect(backend.location) as conn:
                conn.execute(
                    "CREATE TRIGGER no_boom BEFORE INSERT ON sessions"
                    " WHEN NEW.session_id = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
                )
        else:
            assert backend.cluster is not None
            backend.cluster.execute(
                "ALTER TABLE sessions ADD CONSTRAINT no_boom CHECK (session_id <> 'boom')",
                dbname=backend.location,
            )
        with pytest.raises(StoreError):
            await store.write_recording(good + bad, [seal_of(good)])
        assert await store.count_events(EventFilter()) == 0
        assert await store.sessions(EventFilter()) == []
        # The store is still usable.
        await store.write_recording(good, [])
        assert await store.count_events(EventFilter()) == len(good)

    run(backend, scenario)


def test_signing_keys(backend: Backend) -> None:
    k1 = SigningKey("k1", "ed25519", "cd" * 32, 100.0)
    k2 = SigningKey("k2", "hmac-sha256", "", 200.0)

    async def scenario(store: Store) -> None:
        assert await store.signing_keys() == {}
        await store.add_signing_key(k1)
        await store.add_signing_key(k2)
        # Keys are added, never replaced.
        await store.add_signing_key(SigningKey("k1", "ed25519", "ef" * 32, 300.0))
        assert await store.signing_keys() == {"k1": k1, "k2": k2}

    run(backend, scenario)


def test_unicode_and_large_data(backend: Backend) -> None:
    big = "ünïcødé 🐘 数据 " * 70_000  # ~1 MB of characters, more in UTF-8
    start = make_session("sé-🐘", subject="zoë", connection="主库", end=False)[0]
    data = canonical({"client_address": "[2001:db8::1]:5432", "note": big})
    start = EventRecord(
        start.session_id,
        0,
        start.at,
        SESSION_START,
        start.subject,
        start.connection,
        "",
        data,
        ZERO_HASH,
        fake_hash(data),
    )

    async def scenario(store: Store) -> None:
        await store.write_recording([start], [])
        assert await store.session_events("sé-🐘") == [start]
        assert await store.events(EventFilter(subject="zoë", connection="主库")) == [start]
        row = await store.session("sé-🐘")
        assert row is not None and row.client_address == "[2001:db8::1]:5432"

    run(backend, scenario)


def test_client_address_missing_from_data(backend: Backend) -> None:
    odd = [
        EventRecord("s1", 0, 1.0, SESSION_START, "a", "c", "", "{}", ZERO_HASH, "aa"),
        EventRecord("s2", 0, 2.0, SESSION_START, "a", "c", "", "not json", ZERO_HASH, "bb"),
    ]

    async def scenario(store: Store) -> None:
        await store.write_recording(odd, [])
        rows = await store.sessions(EventFilter())
        assert [(r.session_id, r.client_address) for r in rows] == [("s2", ""), ("s1", "")]

    run(backend, scenario)


# -- reading -----------------------------------------------------------------------


def test_keyset_pagination_with_ties(backend: Backend) -> None:
    """2500 events whose times tie within and across sessions, and session ids
    that only a bytewise order sorts the way Python does: every event comes
    back exactly once, in (at, session_id, seq) order, whatever the page size."""
    ids = [f"s{i:03d}" for i in range(46)] + ["S-upper", "s-lower", "é-accent", "z🐘"]
    events: list[EventRecord] = []
    for sid in ids:
        for seq in range(50):
            kind = SESSION_START if seq == 0 else STATEMENT
            verdict = "" if seq == 0 else "allow"
            data = canonical({"seq": seq, "session_id": sid})
            events.append(
                EventRecord(
                    sid, seq, 1000.0 + seq // 7, kind, "alice", "main", verdict, data, "p", "h"
                )
            )
    expected = order(events)

    async def scenario(store: Store) -> None:
        for i in range(0, len(events), 500):
            await store.write_recording(events[i : i + 500], [])
        assert await store.count_events(EventFilter()) == 2500
        assert await page_all(store, EventFilter(), 97) == expected
        assert await page_all(store, EventFilter(), 1000) == expected
        # A cursor in the middle of a tie continues right after it.
        cursor = expected[1234]
        page = await store.events(
            EventFilter(), limit=10, after=(cursor.at, cursor.session_id, cursor.seq)
        )
        assert page == expected[1235:1245]
        # Filters and the cursor together.
        # A cursor before ``since``: the page starts at ``since``.
        first = expected[0]
        page = await store.events(
            EventFilter(since=1003.0), limit=5, after=(first.at, first.session_id, first.seq)
        )
        assert page == [e for e in expected if e.at >= 1003][:5]
        since = EventFilter(since=1003.0, until=1005.0, connection="main")
        assert await page_all(store, since, 33) == [e for e in expected if 1003 <= e.at < 1005]

    run(backend, scenario)


def test_event_filters(backend: Backend) -> None:
    a = make_session("a1", subject="alice", connection="main", start=100.0)
    b = make_session("b1", subject="bob", connection="main", start=102.0, verdicts=("deny",))
    c = make_session("c1", subject="carol", connection="replica", start=104.0, end=False)
    everything = order(a + b + c)

    async def scenario(store: Store) -> None:
        await store.write_recording(a + b + c, [seal_of(a), seal_of(b)])

        async def check(where: EventFilter, expected: list[EventRecord]) -> None:
            assert expected, "a filter test that expects nothing proves little"
            assert await store.events(where) == expected
            assert await store.count_events(where) == len(expected)

        await check(EventFilter(), everything)
        await check(EventFilter(since=103.0), [e for e in everything if e.at >= 103.0])
        await check(EventFilter(until=103.0), [e for e in everything if e.at < 103.0])
        await check(
            EventFilter(since=102.0, until=104.0), [e for e in everything if 102 <= e.at < 104]
        )
        await check(EventFilter(subject="bob"), order(b))
        await check(EventFilter(connection="replica"), order(c))
        await check(EventFilter(verdict="deny"), [e for e in everything if e.verdict == "deny"])
        await check(EventFilter(session_id="a1"), order(a))
        await check(EventFilter(exclude_subject="alice"), order(b + c))
        await check(
            EventFilter(connection="main", verdict="allow", exclude_subject="bob"),
            [e for e in order(a) if e.verdict == "allow"],
        )
        # Empty strings are no condition.
        await check(
            EventFilter(subject="", connection="", verdict="", exclude_subject=""), everything
        )
        assert await store.events(EventFilter(subject="nobody")) == []
        assert await store.count_events(EventFilter(subject="alice", exclude_subject="alice")) == 0

    run(backend, scenario)


def test_session_listing(backend: Backend) -> None:
    """Newest first, ties in started_at broken by session_id (descending);
    ``before`` continues after the last row of a page."""
    specs = [
        ("s1", "alice", "main", 100.0),
        ("s2", "bob", "main", 200.0),
        ("s3", "alice", "replica", 200.0),
        ("s4", "carol", "main", 300.0),
        ("s5", "alice", "main", 400.0),
    ]
    batches = [make_session(sid, subject=s, connection=c, start=t) for sid, s, c, t in specs]

    async def scenario(store: Store) -> None:
        for events in batches:
            await store.write_recording(events, [])

        async def ids(where: EventFilter, **kw: object) -> list[str]:
            rows = await store.sessions(where, **kw)  # type: ignore[arg-type]
            return [r.session_id for r in rows]

        assert await ids(EventFilter()) == ["s5", "s4", "s3", "s2", "s1"]
        assert await ids(EventFilter(), limit=2) == ["s5", "s4"]
        assert await ids(EventFilter(), limit=2, before=(300.0, "s4")) == ["s3", "s2"]
        assert await ids(EventFilter(), limit=2, before=(200.0, "s3")) == ["s2", "s1"]
        assert await ids(EventFilter(), before=(100.0, "s1")) == []
        assert await ids(EventFilter(subject="alice")) == ["s5", "s3", "s1"]
        assert await ids(EventFilter(connection="replica")) == ["s3"]
        assert await ids(EventFilter(session_id="s2")) == ["s2"]
        assert await ids(EventFilter(exclude_subject="alice")) == ["s4", "s2"]
        assert await ids(EventFilter(since=200.0, until=400.0)) == ["s4", "s3", "s2"]
        assert await ids(EventFilter(subject="alice"), before=(400.0, "s5"), limit=1) == ["s3"]
        # ``before`` and ``until`` together: whichever is earlier counts.
        assert await ids(EventFilter(until=300.0), before=(400.0, "s5")) == ["s3", "s2", "s1"]
        assert await ids(EventFilter(until=400.0), before=(200.0, "s3")) == ["s2", "s1"]

    run(backend, scenario)


# -- failures ----------------------------------------------------------------------


def test_sqlite_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "hoopfast.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.write_recording(make_session("s1"), [])
            for f in (path, path.with_name("hoopfast.db-wal"), path.with_name("hoopfast.db-shm")):
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            # Only the directory holding the file: intermediate ones are made
            # as by mkdir -p.
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("damage", ["corrupt", "parent-is-a-file", "is-a-directory", "read-only"])
def test_sqlite_unusable_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "hoopfast.db"
    if damage == "corrupt":
        path.write_bytes(b"this is not an SQLite database\n" * 512)
    elif damage == "parent-is-a-file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "hoopfast.db"
    elif damage == "is-a-directory":
        path.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes read-only files")
        path.touch(0o400)

    async def main() -> None:
        store = SqliteStore(path)
        with pytest.raises(StoreError, match=f"the SQLite store at {path} is unavailable: ") as e:
            await store.open()
        await store.close()
        if damage == "corrupt":
            assert "file is not a database" in str(e.value)

    asyncio.run(main())


def test_sqlite_not_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    with pytest.raises(RuntimeError):
        asyncio.run(store.schema_version())


def test_postgres_unreachable_is_quick_and_keeps_the_password() -> None:
    password = "s3cret-" + secrets.token_hex(8)
    port = free_port()  # nothing listens on it
    store = PostgresStore(f"postgresql://app:{password}@127.0.0.1:{port}/audit")

    async def main() -> None:
        t0 = time.monotonic()
        for _ in range(2):  # and again: each call tries to connect anew
            with pytest.raises(StoreError) as e:
                await store.open()
            text = "".join(traceback.format_exception(e.value))
            assert password not in text and password not in repr(e.value)
            assert f"the PostgreSQL store at 127.0.0.1:{port}/audit is unavailable" in str(e.value)
            assert e.value.__cause__ is None
        with pytest.raises(StoreError):
            await store.write_recording(make_session("s1"), [])
        await store.close()
        assert time.monotonic() - t0 < 5

    asyncio.run(main())


def test_postgres_message_with_password_is_replaced() -> None:
    """Should psycopg ever echo the conninfo, the message gives only the
    error's class and SQLSTATE."""
    store = PostgresStore("postgresql://app:pa%20ss@db.example:6432/audit")
    for leaked in ("password=pa ss host=db.example", "postgresql://app:pa%20ss@db.example"):
        text = store._describe(psycopg.OperationalError(f"connection failed: {leaked}"))
        assert (
            text == "the PostgreSQL store at db.example:6432/audit is unavailable: OperationalError"
        )
        assert "pa ss" not in text and "pa%20ss" not in text


def test_postgres_invalid_url_keeps_the_password() -> None:
    with pytest.raises(ValueError) as e:
        PostgresStore("host=db password=hunter2 oops")
    assert "hunter2" not in str(e.value)


def test_postgres_reconnects_after_losing_the_server(cluster: DevCluster, roles: Roles) -> None:
    backend = postgres_backend(cluster, roles)

    def kill_store_sessions() -> None:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        pids = [row[0] for row in cluster.execute(sql, params=[backend.location])]
        assert pids
        for pid in pids:
            cluster.execute("SELECT pg_terminate_backend(%s)", params=[pid])
        deadline = time.monotonic() + 10
        while cluster.execute(sql, params=[backend.location]):
            assert time.monotonic() < deadline
            time.sleep(0.01)

    async def scenario(store: Store) -> None:
        await store.write_recording(make_session("s1"), [])
        kill_store_sessions()
        with pytest.raises(StoreError, match="is unavailable"):
            await store.count_events(EventFilter())
        assert await store.count_events(EventFilter()) == 5

    run(backend, scenario)


def test_postgres_silent_server_times_out() -> None:
    """A server that accepts the connection and then says nothing."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        # libpq's smallest timeout; the default is 5 s.
        store = PostgresStore(f"postgresql://app:pw@127.0.0.1:{port}/audit?connect_timeout=2")

        async def main() -> None:
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="is unavailable"):
                await store.open()
            assert time.monotonic() - t0 < 4

        asyncio.run(main())


def test_open_store_urls(tmp_path: Path) -> None:
    default = open_store("sqlite:", tmp_path)
    assert isinstance(default, SqliteStore) and default.path == tmp_path / "hoopfast.db"
    explicit = open_store(f"sqlite://{tmp_path}/x.db", tmp_path / "unused")
    assert isinstance(explicit, SqliteStore) and explicit.path == tmp_path / "x.db"
    pg = open_store("postgresql://u:pw@db:5433/audit", tmp_path)
    assert isinstance(pg, PostgresStore) and pg.location == "db:5433/audit"
    with pytest.raises(ValueError, match="unsupported store URL scheme"):
        open_store("mysql://db/audit", tmp_path)
