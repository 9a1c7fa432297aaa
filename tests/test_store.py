"""The state store's contract, run against both backends: SQLite in a temp
dir, PostgreSQL in a fresh database on the test cluster."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import secrets
import socket
import sqlite3
import stat
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from hoopfast.devcluster import DevCluster, free_port
from hoopfast.recording.chain import Chain, blocks_problem, canonical, verify_events
from hoopfast.store import Store, StoreError, blocks, migrations, open_store
from hoopfast.store.base import ReviewConflict
from hoopfast.store.migrations import LATEST_VERSION, MIGRATIONS
from hoopfast.store.postgres import PostgresStore
from hoopfast.store.records import (
    ACCESS_REVIEW,
    APPROVED,
    EXPIRED,
    PENDING,
    REJECTED,
    REVOKED,
    SESSION_END,
    SESSION_START,
    STATEMENT,
    STATEMENT_REVIEW,
    USED,
    Decision,
    EventFilter,
    EventRecord,
    ReviewFilter,
    ReviewRecord,
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


def raw_sql(backend: Backend, statement: str, params: Sequence[object] = ()) -> list[Any]:
    """Run one statement on the store's database directly, outside the store
    (``?`` placeholders): its rows. SQLite: on a connection of its own, so
    call it while no store has the file open (closing it drops every lock
    this process holds on the file); PostgreSQL: as the superuser."""
    if backend.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(backend.location)) as conn, conn:
            return conn.execute(statement, params).fetchall()
    assert backend.cluster is not None
    return backend.cluster.execute(
        statement.replace("?", "%s"), dbname=backend.location, params=params
    )


def write_as_rows(backend: Backend, events: list[EventRecord], seals: list[Seal]) -> None:
    """What the release that stored an event per row (schema 1 to 3) wrote
    for a batch, in SQL: the events, their sessions opened and counted, the
    seals (the test's batches are each a session's first)."""
    for e in events:
        raw_sql(
            backend,
            "INSERT INTO events (session_id, seq, at, kind, subject, connection, verdict, data,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.session_id,
                e.seq,
                e.at,
                e.kind,
                e.subject,
                e.connection,
                e.verdict,
                e.data,
                e.prev_hash,
                e.hash,
            ),
        )
    for start in (e for e in events if e.kind == SESSION_START):
        mine = [e for e in events if e.session_id == start.session_id]
        raw_sql(
            backend,
            "INSERT INTO sessions (session_id, subject, connection, client_address, started_at,"
            " stored_events, statements) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                start.session_id,
                start.subject,
                start.connection,
                "",
                start.at,
                len(mine),
                sum(e.kind == STATEMENT for e in mine),
            ),
        )
    for s in seals:
        raw_sql(
            backend,
            "UPDATE sessions SET ended_at = ?, end_reason = ?, events = ?, last_hash = ?,"
            " key_id = ?, signature = ? WHERE session_id = ?",
            (s.ended_at, s.end_reason, s.events, s.last_hash, s.key_id, s.signature, s.session_id),
        )


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
        # The blocks' own columns agree with their events (verify checks).
        heads = await store.session_blocks("s1")
        assert blocks_problem("s1", heads, events) is None
        assert sum(h.events for h in heads) == len(events)

    run(backend, first)
    run(backend, second)


def test_session_pages_hold_whole_blocks_in_order(backend: Backend) -> None:
    """A session read a page of blocks at a time (replay, verify): every
    event once, in order, each block with its own events."""
    events = make_session("long", verdicts=("allow", "deny") * 15)

    async def check(store: Store) -> None:
        await store.write_recording(events, [])
        await store.write_recording(make_session("other"), [])
        heads = await store.session_blocks("long")
        assert len(heads) >= 5
        read: list[EventRecord] = []
        after: int | None = None
        pages = 0
        while True:
            page = await store.session_page("long", after, 2)
            assert len(page) <= 2
            for head, mine in page:
                assert [e.seq for e in mine] == list(range(head.first_seq, head.last_seq + 1))
                read += mine
            pages += 1
            if len(page) < 2:
                break
            after = page[-1][0].first_seq
        assert read == events and pages == (len(heads) + 2) // 2
        assert [h for h, _ in await store.session_page("long", None, 100)] == heads
        assert await store.session_page("long", events[-1].seq, 2) == []
        assert await store.session_page("nope", None, 2) == []

    run(backend, check)


def test_a_new_sqlite_store_has_large_pages_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """Block bodies are large: 64 KiB pages write them with a sixteenth of
    the system calls. A store made before keeps its 4 KiB pages (changing
    them needs a VACUUM) and opens as it did."""
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("CREATE TABLE before_us (x)")
    conn.close()

    async def main() -> list[int]:
        sizes = []
        for path in (tmp_path / "new.db", old):
            store = SqliteStore(path)
            await store.open()
            try:
                await store.write_recording(make_session("s1"), [])
            finally:
                await store.close()
            with contextlib.closing(sqlite3.connect(path)) as c:
                sizes.append(c.execute("PRAGMA page_size").fetchone()[0])
        return sizes

    assert asyncio.run(main()) == [65536, 4096]


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


# -- event blocks ------------------------------------------------------------------


def chained(
    session_id: str,
    times: Sequence[float],
    *,
    subject: str = "alice",
    connection: str = "main",
    verdicts: Sequence[str] = ("allow",),
) -> list[EventRecord]:
    """A session with real hash links (``audit verify`` accepts it): a start
    at times[0], then statements with the verdicts in turn."""
    chain = Chain(session_id)
    events = [chain.append(SESSION_START, times[0], subject, connection, "", {})]
    for i, at in enumerate(times[1:]):
        verdict = verdicts[i % len(verdicts)]
        body = {"sql": f"SELECT {i}", "note": "x" * (i % 50)}
        events.append(chain.append(STATEMENT, at, subject, connection, verdict, body))
    return events


def interleave(rng: random.Random, sessions: list[list[EventRecord]]) -> list[EventRecord]:
    """All sessions' events, each session's in seq order, randomly merged:
    the order in which a recorder would hand them over."""
    queues = [list(events) for events in sessions]
    out: list[EventRecord] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
    return out


def batches(rng: random.Random, events: list[EventRecord], largest: int) -> list[list[EventRecord]]:
    out: list[list[EventRecord]] = []
    i = 0
    while i < len(events):
        n = rng.randint(1, largest)
        out.append(events[i : i + n])
        i += n
    return out


def stored_blocks(backend: Backend, session_id: str) -> list[tuple[Any, ...]]:
    """(first_seq, last_seq, first_at, last_at, events) of a session's blocks."""
    return [
        tuple(row)
        for row in raw_sql(
            backend,
            "SELECT first_seq, last_seq, first_at, last_at, events FROM event_blocks"
            " WHERE session_id = ? ORDER BY first_seq",
            (session_id,),
        )
    ]


@pytest.mark.parametrize("block_events", [1000, 7])
def test_pages_across_blocks_equal_one_sorted_list(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, block_events: int
) -> None:
    """Interleaved sessions in many blocks (ended by the event limit, the
    span, a clock stepping back, batch boundaries), with times that tie
    within and across sessions and blocks: every filter, page size and
    cursor gives what a brute-force sort of all events gives."""
    monkeypatch.setattr(blocks, "BLOCK_EVENTS", block_events)
    rng = random.Random(block_events)
    steps = [0.0, 0.0, 0.25, 0.5, 0.5, 1.0, 2.0, 6.0, -2.0]  # 6 > BLOCK_SPAN; -2: a step back
    sessions: list[list[EventRecord]] = []
    for n, sid in enumerate(["s-0", "s-1", "S-2", "s-3", "é-4", "z🐘5"]):
        times = [1000.0 + n * 0.5]
        for _ in range(rng.randint(150, 350)):
            times.append(max(1000.0, times[-1] + rng.choice(steps)))
        sessions.append(
            chained(
                sid,
                times,
                subject=["alice", "bob", "carol"][n % 3],
                connection=["main", "replica"][n % 2],
                verdicts=rng.sample(["allow", "deny", "review", "allow"], 4),
            )
        )
    everything = order([e for events in sessions for e in events])
    stream = interleave(rng, sessions)

    async def scenario(store: Store) -> None:
        for batch in batches(rng, stream, 400):
            await store.write_recording(batch, [])
        assert await store.count_events(EventFilter()) == len(everything)
        for limit in (13, 100, 999, 5000):
            assert await page_all(store, EventFilter(), limit) == everything
        middle = everything[len(everything) // 2].at
        filters = [
            EventFilter(since=middle),
            EventFilter(until=middle),
            EventFilter(since=1010.25, until=middle),
            EventFilter(since=1007.3, until=1011.7),  # times no event has
            EventFilter(subject="bob"),
            EventFilter(connection="replica", since=1012.0),
            EventFilter(exclude_subject="alice", until=middle),
            EventFilter(session_id="é-4", since=1003.0),
            EventFilter(verdict="deny"),
            EventFilter(verdict="review", since=1004.5, until=middle),
            EventFilter(verdict="allow", subject="carol", since=middle),
            EventFilter(verdict="no-such-verdict"),
        ]
        for where in filters:
            expected = [e for e in everything if _matches(e, where)]
            assert await page_all(store, where, 37) == expected, where
            assert await store.count_events(where) == len(expected), where
        # A cursor anywhere, on an event or between events, continues right after it.
        for i in rng.sample(range(len(everything)), 25):
            e = everything[i]
            page = await store.events(EventFilter(), limit=10, after=(e.at, e.session_id, e.seq))
            assert page == everything[i + 1 : i + 11]
            between = (e.at, e.session_id, e.seq + 10_000)
            page = await store.events(EventFilter(), limit=10, after=between)
            assert page == [x for x in everything if _key(x) > between][:10]

    run(backend, scenario)


def _key(e: EventRecord) -> tuple[float, str, int]:
    return (e.at, e.session_id, e.seq)


def _matches(e: EventRecord, where: EventFilter) -> bool:
    """EventFilter's meaning, spelled out."""
    return (
        (where.since is None or e.at >= where.since)
        and (where.until is None or e.at < where.until)
        and (not where.subject or e.subject == where.subject)
        and (not where.connection or e.connection == where.connection)
        and (not where.verdict or e.verdict == where.verdict)
        and (not where.session_id or e.session_id == where.session_id)
        and (not where.exclude_subject or e.subject != where.exclude_subject)
    )


def test_block_limits(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block ends at BLOCK_EVENTS events, BLOCK_SPAN seconds from its first
    event, about BLOCK_CHARS of body, a clock stepping back, or a change of
    subject or connection; a larger event is a block of its own."""
    one_second = chained("span", [100.0 + i for i in range(20)])
    step_back = chained("back", [200.0, 201.0, 202.0, 201.5, 201.5, 203.0])
    many = chained("many", [300.0 + i / 1000 for i in range(2500)])
    big = chained("big", [400.0, 400.1, 400.2, 400.3])
    big[2] = replace(big[2], data=big[2].data + " " * 3000)  # stored as it came
    moved = [*chained("moved", [500.0, 501.0]), *chained("moved", [500.0, 501.0, 502.0])[2:]]
    moved[2] = replace(moved[2], connection="replica")
    everything = one_second + step_back + many + big + moved

    async def write(store: Store) -> None:
        await store.write_recording(many, [])
        with monkeypatch.context() as m:
            m.setattr(blocks, "BLOCK_CHARS", 2000)
            await store.write_recording(everything, [])

    run(backend, write)
    assert [(b[0], b[1]) for b in stored_blocks(backend, "span")] == [
        (0, 5),
        (6, 11),
        (12, 17),
        (18, 19),
    ]
    for first_seq, last_seq, first_at, last_at, events in stored_blocks(backend, "span"):
        assert (first_at, last_at) == (100.0 + first_seq, 100.0 + last_seq)
        assert events == last_seq - first_seq + 1
    assert [(b[0], b[1]) for b in stored_blocks(backend, "back")] == [(0, 2), (3, 5)]
    assert [b[4] for b in stored_blocks(backend, "many")] == [1000, 1000, 500]
    assert [(b[0], b[1]) for b in stored_blocks(backend, "big")] == [(0, 1), (2, 2), (3, 3)]
    assert [(b[0], b[1]) for b in stored_blocks(backend, "moved")] == [(0, 1), (2, 2)]

    async def read(store: Store) -> None:
        assert await store.events(EventFilter(), limit=10_000) == order(everything)
        for sid in ("span", "back", "many", "big", "moved"):
            expected = [e for e in everything if e.session_id == sid]
            assert await store.session_events(sid) == expected
        assert await store.events(EventFilter(since=201.5, until=203.0)) == [
            step_back[3],
            step_back[4],
            step_back[2],
        ]
        assert await store.events(EventFilter(connection="replica")) == [moved[2]]
        assert await store.count_events(EventFilter(since=103.0, until=113.0)) == 10
        assert await store.count_events(EventFilter(since=300.5, until=301.5)) == 1000

    run(backend, read)


def test_redelivery_with_other_boundaries(backend: Backend) -> None:
    """A batch delivered again, whole or overlapping with other boundaries
    (a recorder restarted), stores no event twice and counts none twice."""
    a = chained("a", [10.0 + i / 10 for i in range(60)], verdicts=("allow", "deny"))
    b = chained("b", [11.0 + i / 10 for i in range(40)])
    stream = interleave(random.Random(3), [a, b])

    async def scenario(store: Store) -> None:
        await store.write_recording(stream[:30], [])
        await store.write_recording(stream[30:60], [])
        await store.write_recording(stream[30:60], [])  # the same batch again
        await store.write_recording(stream[15:45], [])  # other boundaries
        await store.write_recording(stream[:70], [])  # everything so far, and more
        await store.write_recording(stream[50:] + stream[60:65], [seal_of(a), seal_of(b)])
        await store.write_recording(stream, [seal_of(a)])
        assert await store.session_events("a") == a
        assert await store.session_events("b") == b
        for events in (a, b):
            row = await store.session(events[0].session_id)
            assert row is not None and row.seal == seal_of(events)
            assert (row.stored_events, row.statements) == (len(events), len(events) - 1)
        assert await store.count_events(EventFilter()) == 100
        assert await page_all(store, EventFilter(), 7) == order(a + b)
        deny = [e for e in a + b if e.verdict == "deny"]
        assert await store.count_events(EventFilter(verdict="deny")) == len(deny) > 0

    run(backend, scenario)
    # No two blocks hold one event.
    for events in (a, b):
        blocks = stored_blocks(backend, events[0].session_id)
        assert sum(block[4] for block in blocks) == len(events)
        assert all(x[1] < y[0] for x, y in itertools.pairwise(blocks))


def test_verdict_filter_and_count_across_block_edges(backend: Backend) -> None:
    """since and until that cut blocks: counted exactly, whether a block is
    inside the range (counted by its columns) or across a bound (read)."""
    sessions = [
        chained(f"s{n}", [100.0 + n + i / 4 for i in range(17)], verdicts=verdicts)
        for n, verdicts in enumerate([("allow",), ("deny", "allow"), ("review", "deny", "deny")])
    ]
    everything = order([e for events in sessions for e in events])

    async def scenario(store: Store) -> None:
        for events in sessions:
            await store.write_recording(events, [])
        for since, until in [(None, None), (100.5, None), (None, 102.75), (101.25, 103.0)]:
            for verdict in (None, "", "allow", "deny", "review", "ALLOW"):
                where = EventFilter(since=since, until=until, verdict=verdict)
                expected = [e for e in everything if _matches(e, where)]
                assert await store.count_events(where) == len(expected), where
                assert await store.events(where) == expected, where

    run(backend, scenario)


def test_lines_that_need_escaping(backend: Backend) -> None:
    """Event text a plain line cannot hold (a newline anywhere, a tab before
    the data), and text that other line splitters break at: stored and read
    back exactly; none of this comes from the recorder, whose data is JSON."""
    odd_data = [
        "line\nbreak",
        "tab\tand\\nnot a newline\\",
        "\\t\\\\n\n\t\\",
        "U+2028 \u2028 U+2029 \u2029 NEL \x85 FS \x1c CR \r VT \x0b FF \x0c",
        '{"a":"tab\tinside JSON text"}',
        "",
    ]
    events = [
        EventRecord("odd", i, 50.0 + i, STATEMENT, "al\tice", "ma\nin", "", data, "p\tq", "h\nh")
        for i, data in enumerate(odd_data)
    ]
    events.append(
        EventRecord("odd", 6, 57.0, "kind\twith tab", "al\tice", "ma\nin", "de\nny", "{}", "", "")
    )
    events.append(EventRecord("odd", 7, 58.0, STATEMENT, "al\tice", "ma\nin", "deny", "{}", "", ""))

    async def scenario(store: Store) -> None:
        await store.write_recording(events, [])
        assert await store.session_events("odd") == events
        assert await store.events(EventFilter(subject="al\tice")) == events
        assert await store.events(EventFilter(verdict="de\nny")) == [events[6]]
        assert await store.count_events(EventFilter(verdict="de\nny")) == 1
        assert await store.count_events(EventFilter(verdict="deny", since=51.0)) == 1
        assert await store.events(EventFilter(since=52.0, until=54.0)) == events[2:4]

    run(backend, scenario)


def test_event_text_the_backend_cannot_hold(backend: Backend) -> None:
    """A lone surrogate in an event (no UTF-8 for it), or in PostgreSQL a NUL:
    a StoreError, nothing of the batch written, the store still usable.
    SQLite holds a NUL."""
    good = chained("good", [1.0, 2.0])
    nul = chained("nul", [3.0, 4.0])
    nul[1] = replace(nul[1], data=nul[1].data + "\x00")

    def with_data(data: str) -> list[EventRecord]:
        events = chained("bad", [5.0, 6.0])
        return [events[0], replace(events[1], data=data)]

    async def scenario(store: Store) -> None:
        bad = [with_data("\ud800"), with_data("escaped line\n\udfff")]
        if backend.kind == "postgresql":
            bad.append(nul)
        else:
            await store.write_recording(nul, [])
            assert await store.session_events("nul") == nul
        for events in bad:
            with pytest.raises(StoreError):
                await store.write_recording(good + events, [])
            assert await store.session_events(events[0].session_id) == []
            assert await store.session("good") is None
        await store.write_recording(good, [])
        assert await store.session_events("good") == good

    run(backend, scenario)


@pytest.mark.parametrize(
    "damage",
    [
        "one byte of data",
        "garbage line",
        "line cut short",
        "newline inserted",
        "at of another",
        "at out of order",
    ],
)
def test_damaged_block_is_read_not_dropped(backend: Backend, damage: str) -> None:
    """A block whose body was altered: every line is still read (one that
    does not parse as an event with the raw line as its data, after the
    line before), no read fails, and ``audit verify`` fails at that event."""
    events = chained("s1", [10.0 + i for i in range(6)], verdicts=("allow", "deny"))
    others = chained("s2", [10.5 + i for i in range(6)])
    run(backend, lambda store: store.write_recording(events + others, []))
    ((body,),) = raw_sql(backend, "SELECT body FROM event_blocks WHERE session_id = 's1'")
    lines = body.split("\n")
    assert lines[3].startswith("3\t13.0\t")
    if damage == "one byte of data":
        lines[3] = lines[3].replace("SELECT 2", "SELECT 3")
    elif damage == "garbage line":
        lines[3] = "not an event"
    elif damage == "line cut short":
        lines[3] = lines[3][:20]
    elif damage == "newline inserted":
        lines[3] = lines[3].replace('"sql"', '"s\nql"')
    elif damage == "at of another":
        lines[3] = lines[3].replace("\t13.0\t", "\t13.5\t")
    else:
        lines[3] = lines[3].replace("\t13.0\t", "\t16.5\t")
    raw_sql(
        backend, "UPDATE event_blocks SET body = ? WHERE session_id = 's1'", ("\n".join(lines),)
    )

    async def scenario(store: Store) -> None:
        stored = await store.session_events("s1")
        assert len(stored) == len(events) + (damage == "newline inserted")
        assert stored[:3] == events[:3]
        assert stored[-2:] == events[-2:]
        damaged = stored[3]
        assert (damaged.session_id, damaged.seq) == ("s1", 3)
        if damage in ("garbage line", "line cut short"):
            assert damaged.data == lines[3] and damaged.hash == ""
            # Its own time if that much of it parses, else the line before's.
            assert damaged.at == (12.0 if damage == "garbage line" else 13.0)
        _, _, problem = verify_events("s1", stored)
        assert problem is not None and problem.seq == 3, problem
        # Exports and counts read it too, in its place.
        exported = await page_all(store, EventFilter(session_id="s1"), 2)
        assert exported == order(stored)
        assert await store.events(EventFilter(), limit=100) == order(stored + others)
        assert await store.count_events(EventFilter(since=10.0, until=13.9)) == len(
            [e for e in stored + others if 10.0 <= e.at < 13.9]
        )

    run(backend, scenario)


def test_migration_to_blocks(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store of the release that kept an event per row (version 3): its
    events become blocks, read back exactly (times to the last bit, text a
    plain line cannot hold), and recording goes on after them."""
    rng = random.Random(4)
    sessions = [
        chained(
            f"m{n}",
            [1_700_000_000 + n / 3 + i * rng.random() for i in range(12)],
            subject=["alice", "bob"][n % 2],
            verdicts=("allow", "deny", "review"),
        )
        for n in range(3)
    ]
    odd = [
        EventRecord("odd", 0, 1000.0, SESSION_START, "zoë", "主库", "", "{}", ZERO_HASH, "h0"),
        EventRecord("odd", 1, 0.1, STATEMENT, "zoë", "主库", "deny", "a\nb\tc\\", "h0", "h\t1"),
        EventRecord("odd", 2, 1e-7, STATEMENT, "zoë", "主库", "", "\u2028 🐘 \\n", "h\t1", "h2"),
    ]
    stored = [e for events in sessions for e in events] + odd

    async def at_v3(store: Store) -> None:
        assert await store.schema_version() == 3

    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
        m.setattr(migrations, "LATEST_VERSION", 3)
        run(backend, at_v3)
    write_as_rows(backend, stored, [seal_of(sessions[0])])
    times = [e.at for e in sessions[1]] + [1_700_000_100.0]
    more = chained("m1", times, subject="bob", verdicts=("allow", "deny", "review"))

    async def upgraded(store: Store) -> None:
        assert await store.schema_version() == LATEST_VERSION
        for events in [*sessions, odd]:
            assert await store.session_events(events[0].session_id) == events
        assert await store.events(EventFilter(), limit=100) == order(stored)
        assert await store.count_events(EventFilter()) == len(stored)
        for where in (
            EventFilter(verdict="deny"),
            EventFilter(verdict="allow", since=1_700_000_003.0),
            EventFilter(subject="bob", until=1_700_000_005.0),
        ):
            expected = [e for e in order(stored) if _matches(e, where)]
            assert await store.events(where) == expected
            assert await store.count_events(where) == len(expected)
        row = await store.session("m0")
        assert row is not None and row.seal == seal_of(sessions[0])
        # Recording goes on: what is stored is not stored again.
        await store.write_recording(more, [])
        assert await store.session_events("m1") == more
        row = await store.session("m1")
        assert row is not None and row.stored_events == len(more)

    run(backend, upgraded)
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        raw_sql(backend, "SELECT count(*) FROM events")


# -- reviews -----------------------------------------------------------------------


def make_review(review_id: str, **kw: object) -> ReviewRecord:
    """A pending statement review by alice on main, unless ``kw`` says
    otherwise."""
    statement = str(kw.pop("statement", "DROP TABLE accounts"))
    values: dict[str, object] = {
        "kind": STATEMENT_REVIEW,
        "status": PENDING,
        "requester": "alice",
        "connection": "main",
        "created_at": 1000.0,
        "expires_at": 4600.0,
        "statement": statement,
        "statement_hash": hashlib.sha256(statement.encode()).hexdigest(),
        "approvers": ("dba",),
    }
    values.update(kw)
    return ReviewRecord(review_id, **values)  # type: ignore[arg-type]


def make_grant(review_id: str, **kw: object) -> ReviewRecord:
    """An access review, by default approved until 5000."""
    values: dict[str, object] = {
        "kind": ACCESS_REVIEW,
        "status": APPROVED,
        "statement": "",
        "statement_hash": "",
        "role": "writer",
        "duration": 3600.0,
        "granted_until": 5000.0,
    }
    values.update(kw)
    return make_review(review_id, **values)


#: Text that must survive the store: astral planes, combining marks, right to
#: left, line and paragraph separators, quotes, backslashes, JSON lookalikes.
UNICODE = 'zoë 🐘 数据 שָׁלוֹם e\u0301 \u2028\u2029 "quoted" back\\slash {"a": [1]} \x7f'


def test_review_roundtrip(backend: Backend) -> None:
    full = ReviewRecord(
        review_id="r-🐘-1",
        kind=STATEMENT_REVIEW,
        status=APPROVED,
        requester="zoë",
        connection="主库",
        created_at=1_700_000_000.123456,
        expires_at=1_700_003_600.5,
        statement="UPDATE t SET note = '" + UNICODE + "'\n  WHERE id = 1;",
        statement_hash="ab" * 32,
        role="writer",
        duration=900.25,
        granted_until=1_700_000_900.75,
        reason="hotfix " + UNICODE,
        session_id="s-42",
        client_address="[2001:db8::1]:5432",
        rule="class:ddl",
        mode="deferred",
        approvers=("dba", "sécurité", "🛡"),
        min_approvals=2,
        decisions=(
            Decision("bob", "approve", "ok " + UNICODE, 1_700_000_100.5),
            # Inside the JSON column even a NUL and a lone surrogate survive.
            Decision("carol", "approve", "\x00 and \ud800", 1_700_000_200.0),
        ),
        decided_at=1_700_000_200.0,
        used_at=1_700_000_300.0,
        break_glass=True,
        version=7,
    )
    minimal = make_review("r-2", approvers=())
    grant = make_grant("r-3", decisions=(Decision("bob", "force", "", 1.0),))

    async def scenario(store: Store) -> None:
        assert await store.review("r-🐘-1") is None
        for r in (full, minimal, grant):
            await store.insert_review(r)
        assert await store.review("r-🐘-1") == full
        assert await store.review("r-2") == minimal
        assert await store.review("r-3") == grant
        got = await store.review("r-🐘-1")
        assert got is not None
        assert isinstance(got.break_glass, bool) and isinstance(got.decisions, tuple)
        assert isinstance(got.approvers, tuple)
        assert await store.review("nope") is None

    run(backend, scenario)


def test_review_duplicate_id(backend: Backend) -> None:
    first = make_review("r1", reason="first")

    async def scenario(store: Store) -> None:
        await store.insert_review(first)
        with pytest.raises(ReviewConflict, match="r1"):
            await store.insert_review(make_review("r1", reason="second", requester="mallory"))
        assert issubclass(ReviewConflict, StoreError)
        assert await store.review("r1") == first
        # The store is still usable.
        await store.insert_review(make_review("r2", created_at=2000.0))
        assert [r.review_id for r in await store.reviews(ReviewFilter())] == ["r2", "r1"]

    run(backend, scenario)


def test_review_text_the_backend_cannot_hold(backend: Backend) -> None:
    """A lone surrogate (no UTF-8 for it), or in PostgreSQL a NUL: a
    StoreError (not a conflict), nothing written, and the store still usable.
    SQLite holds a NUL."""

    async def scenario(store: Store) -> None:
        bad = [make_review("r-surrogate", reason="\ud800")]
        nul = make_review("r-nul", statement="SELECT 1\x00")
        if backend.kind == "postgresql":
            bad.append(nul)
        else:
            await store.insert_review(nul)
            assert await store.review("r-nul") == nul
        for review in bad:
            with pytest.raises(StoreError) as e:
                await store.insert_review(review)
            assert not isinstance(e.value, ReviewConflict)
            assert await store.review(review.review_id) is None
        ok = make_review("r-ok")
        await store.insert_review(ok)
        with pytest.raises(StoreError):
            await store.update_review(replace(ok, reason="\udfff", version=2), 1)
        assert await store.review("r-ok") == ok

    run(backend, scenario)


def test_review_compare_and_swap(backend: Backend) -> None:
    pending = make_review("r1")
    approve = replace(
        pending,
        status=APPROVED,
        decisions=(Decision("bob", "approve", "fine", 1100.0),),
        decided_at=1100.0,
        version=2,
    )

    async def scenario(store: Store) -> None:
        await store.insert_review(pending)
        assert await store.update_review(approve, 1) is True
        assert await store.review("r1") == approve
        # A second writer that read version 1 loses, and writes nothing.
        reject = replace(pending, status=REJECTED, decided_at=1200.0, version=2)
        assert await store.update_review(reject, 1) is False
        assert await store.review("r1") == approve
        used = replace(approve, status=USED, used_at=1300.0, version=3)
        assert await store.update_review(used, 2) is True
        assert await store.review("r1") == used
        # The new version must follow the expected one.
        with pytest.raises(ValueError):
            await store.update_review(replace(used, version=3), 3)
        with pytest.raises(ValueError):
            await store.update_review(replace(used, version=5), 3)
        assert await store.review("r1") == used
        # Nothing to swap.
        assert await store.update_review(replace(used, review_id="nope", version=4), 3) is False
        assert await store.review("nope") is None

    run(backend, scenario)


def test_review_changes_are_announced(backend: Backend) -> None:
    """PostgreSQL tells every store sharing the database that a review
    changed (LISTEN/NOTIFY), so replicas need not wait for a poll; SQLite
    says it cannot (callers poll)."""

    async def scenario(store: Store) -> None:
        heard: asyncio.Queue[str] = asyncio.Queue()
        follows = await store.follow_reviews(heard.put_nowait)
        assert follows is (backend.kind == "postgresql")
        if not follows:
            return
        other = backend.new()  # another replica's store
        await other.open()
        try:
            review = make_review("r-announced")
            await other.insert_review(review)
            # The listener connects in the background: change it until heard.
            deadline = time.monotonic() + 10
            while heard.empty():
                assert time.monotonic() < deadline, "no notification"
                changed = replace(review, version=review.version + 1)
                assert await other.update_review(changed, review.version)
                review = changed
                await asyncio.sleep(0.05)
            assert heard.get_nowait() == "r-announced"
        finally:
            await other.close()

    run(backend, scenario)


def test_review_racing_approvers(backend: Backend) -> None:
    """Two approvers decide the same version at once, through one store and
    through two (two gateway replicas): exactly one wins, and the stored
    review is the winner's."""

    def decide(base: ReviewRecord, actor: str, action: str) -> ReviewRecord:
        decision = Decision(actor, action, f"{actor} says {action}", base.created_at + 1)
        return replace(
            base,
            status=APPROVED if action == "approve" else REJECTED,
            decisions=(*base.decisions, decision),
            decided_at=decision.at,
            version=base.version + 1,
        )

    async def race(one: Store, two: Store, review_id: str) -> None:
        base = make_review(review_id)
        await one.insert_review(base)
        bob, carol = decide(base, "bob", "approve"), decide(base, "carol", "reject")
        won = await asyncio.gather(
            one.update_review(bob, base.version), two.update_review(carol, base.version)
        )
        assert sorted(won) == [False, True]
        assert await two.review(review_id) == (bob if won[0] else carol)

    async def main() -> None:
        one, two = backend.new(), backend.new()
        await one.open()
        await two.open()
        try:
            for i in range(20):
                await race(one, one, f"same-{i}")
                await race(one, two, f"two-{i}")
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_review_filters(backend: Backend) -> None:
    h1 = hashlib.sha256(b"DROP TABLE a").hexdigest()
    h2 = hashlib.sha256(b"DROP TABLE b").hexdigest()
    reviews = [
        make_review("s1", created_at=100.0, statement="DROP TABLE a"),
        make_review("s2", created_at=110.0, statement="DROP TABLE a", status=REJECTED),
        make_review("s3", created_at=120.0, statement="DROP TABLE b", status=APPROVED),
        make_review("s4", created_at=130.0, statement="DROP TABLE a", requester="bob"),
        make_review("s5", created_at=140.0, statement="DROP TABLE a", connection="replica"),
        make_review("s6", created_at=150.0, statement="DROP TABLE b", status=USED),
        make_grant("a1", created_at=160.0),
        make_grant("a2", created_at=170.0, status=PENDING, granted_until=None),
        make_grant("a3", created_at=180.0, requester="bob", status=REVOKED),
        make_grant("a4", created_at=190.0, status=EXPIRED, granted_until=200.0),
    ]
    everything = [r.review_id for r in reversed(reviews)]

    async def scenario(store: Store) -> None:
        for r in reviews:
            await store.insert_review(r)

        async def ids(where: ReviewFilter, **kw: object) -> list[str]:
            rows = await store.reviews(where, **kw)  # type: ignore[arg-type]
            return [r.review_id for r in rows]

        assert await store.reviews(ReviewFilter()) == list(reversed(reviews))
        # Empty strings and an empty status tuple are no condition.
        empty = ReviewFilter(kind="", requester="", connection="", statement_hash="", statuses=())
        assert await ids(empty) == everything
        assert await ids(ReviewFilter(kind=ACCESS_REVIEW)) == ["a4", "a3", "a2", "a1"]
        assert await ids(ReviewFilter(kind=STATEMENT_REVIEW)) == everything[4:]
        assert await ids(ReviewFilter(statuses=(PENDING,))) == ["a2", "s5", "s4", "s1"]
        assert await ids(ReviewFilter(statuses=(APPROVED, USED, REVOKED))) == [
            "a3",
            "a1",
            "s6",
            "s3",
        ]
        assert await ids(ReviewFilter(requester="bob")) == ["a3", "s4"]
        assert await ids(ReviewFilter(connection="replica")) == ["s5"]
        assert await ids(ReviewFilter(statement_hash=h2)) == ["s6", "s3"]
        assert await ids(ReviewFilter(since=150.0)) == ["a4", "a3", "a2", "a1", "s6"]
        # The lookup of an approval for one statement.
        lookup = ReviewFilter(
            kind=STATEMENT_REVIEW,
            requester="alice",
            connection="main",
            statement_hash=h1,
            statuses=(PENDING, APPROVED),
        )
        assert await ids(lookup) == ["s1"]
        assert await ids(replace(lookup, statuses=())) == ["s2", "s1"]
        assert await ids(ReviewFilter(requester="nobody")) == []
        assert await ids(ReviewFilter(statuses=("no-such-status",))) == []
        # Limits and pages.
        assert await ids(ReviewFilter(), limit=3) == everything[:3]
        assert await ids(ReviewFilter(), limit=3, before=(170.0, "a2")) == ["a1", "s6", "s5"]
        assert await ids(ReviewFilter(kind=ACCESS_REVIEW), before=(170.0, "a2")) == ["a1"]
        assert await ids(ReviewFilter(since=140.0), before=(170.0, "a2")) == ["a1", "s6", "s5"]
        assert await ids(ReviewFilter(), before=(100.0, "s1")) == []

    run(backend, scenario)


def test_review_active_grants(backend: Backend) -> None:
    """``active_at``: access grants approved and not yet ended at that time;
    pending, revoked and expired ones, and statement approvals (no
    granted_until), are not."""
    reviews = [
        make_grant("g-active", created_at=1.0, granted_until=500.0),
        make_grant("g-ended", created_at=2.0, granted_until=300.0),
        make_grant("g-edge", created_at=3.0, granted_until=400.0),
        make_grant("g-bob", created_at=4.0, granted_until=900.0, requester="bob"),
        make_grant("g-replica", created_at=5.0, granted_until=900.0, connection="replica"),
        make_grant("g-revoked", created_at=6.0, granted_until=900.0, status=REVOKED),
        make_grant("g-pending", created_at=7.0, granted_until=None, status=PENDING),
        make_grant("g-expired", created_at=8.0, granted_until=900.0, status=EXPIRED),
        make_review("statement-approved", created_at=9.0, status=APPROVED),
    ]

    async def scenario(store: Store) -> None:
        for r in reviews:
            await store.insert_review(r)

        async def ids(where: ReviewFilter) -> list[str]:
            return [r.review_id for r in await store.reviews(where)]

        # granted_until is exclusive: g-edge ends at 400.
        assert await ids(ReviewFilter(active_at=400.0)) == ["g-replica", "g-bob", "g-active"]
        assert await ids(ReviewFilter(active_at=399.5)) == [
            "g-replica",
            "g-bob",
            "g-edge",
            "g-active",
        ]
        assert await ids(ReviewFilter(active_at=1000.0)) == []
        mine = ReviewFilter(kind=ACCESS_REVIEW, requester="alice", connection="main", active_at=100)
        assert await ids(mine) == ["g-edge", "g-ended", "g-active"]
        # A status filter narrows it further, it does not widen it.
        assert await ids(replace(mine, statuses=(REVOKED,))) == []
        assert await ids(replace(mine, statuses=(APPROVED, REVOKED))) == [
            "g-edge",
            "g-ended",
            "g-active",
        ]
        # Revoking ends a grant at once.
        active = reviews[0]
        revoked = replace(active, status=REVOKED, version=active.version + 1)
        assert await store.update_review(revoked, active.version)
        assert await ids(mine) == ["g-edge", "g-ended"]

    run(backend, scenario)


def test_review_keyset_pagination(backend: Backend) -> None:
    """250 reviews whose creation times tie, with ids that only a bytewise
    order sorts the way Python does: paging with ``before`` gives each one
    exactly once, newest first, whatever the page size."""
    ids = [f"r{i:03d}" for i in range(246)] + ["R-upper", "r-lower", "é-accent", "z🐘"]
    shuffled = secrets.SystemRandom().sample(ids, len(ids))
    reviews = [
        make_review(
            rid,
            created_at=1000.0 + i // 9,
            kind=ACCESS_REVIEW if i % 3 == 0 else STATEMENT_REVIEW,
        )
        for i, rid in enumerate(shuffled)
    ]
    newest_first = sorted(reviews, key=lambda r: (r.created_at, r.review_id), reverse=True)

    async def page_all(store: Store, where: ReviewFilter, limit: int) -> list[ReviewRecord]:
        out: list[ReviewRecord] = []
        before = None
        while True:
            page = await store.reviews(where, limit=limit, before=before)
            assert len(page) <= limit
            out.extend(page)
            if len(page) < limit:
                return out
            before = (page[-1].created_at, page[-1].review_id)

    async def scenario(store: Store) -> None:
        await asyncio.gather(*(store.insert_review(r) for r in reviews))
        for limit in (1, 7, 9, 100, 250, 1000):
            assert await page_all(store, ReviewFilter(), limit) == newest_first
        access = ReviewFilter(kind=ACCESS_REVIEW, since=1010.0)
        assert await page_all(store, access, 11) == [
            r for r in newest_first if r.kind == ACCESS_REVIEW and r.created_at >= 1010.0
        ]
        # A cursor in the middle of a tie continues right after it.
        cursor = newest_first[123]
        page = await store.reviews(
            ReviewFilter(), limit=10, before=(cursor.created_at, cursor.review_id)
        )
        assert page == newest_first[124:134]

    run(backend, scenario)


def test_migration_from_v1_keeps_recordings(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made by the recordings-only release (version 1) gains the
    reviews table when this one opens it; its recordings stay."""
    assert [m.version for m in MIGRATIONS][:2] == [1, 2] and LATEST_VERSION >= 2
    events = make_session("s1")
    key = SigningKey("k1", "ed25519", "cd" * 32, 100.0)
    review = make_review("r1")

    async def at_v1(store: Store) -> None:
        assert await store.schema_version() == 1
        await store.add_signing_key(key)
        with pytest.raises(StoreError):  # no reviews table yet
            await store.review("r1")

    async def upgraded(store: Store) -> None:
        assert await store.schema_version() == LATEST_VERSION
        assert await store.session_events("s1") == events
        row = await store.session("s1")
        assert row is not None and row.seal == seal_of(events)
        assert await store.signing_keys() == {"k1": key}
        if await store.review("r1") is None:
            await store.insert_review(review)
        assert await store.reviews(ReviewFilter()) == [review]

    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", MIGRATIONS[:1])
        m.setattr(migrations, "LATEST_VERSION", 1)
        run(backend, at_v1)
    write_as_rows(backend, events, [seal_of(events)])  # as that release's recorder did
    run(backend, upgraded)
    run(backend, upgraded)  # and opened again: nothing to migrate, the review stays


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


@pytest.mark.parametrize("password", ["Zq8/Kx3vR+p9wT", "Zq8@Kx3vR+p9wT"])
def test_postgres_url_with_an_unencoded_password_is_refused_unshown(password: str) -> None:
    """libpq ends a URI's password at a "/" (or reads an "@" as its end): the rest
    would be read as the host or the database and shown in every store error."""
    with pytest.raises(ValueError, match="must be percent-encoded") as e:
        PostgresStore(f"postgresql://hoop:{password}@127.0.0.1:5432/hoop")
    assert "Kx3vR" not in str(e.value)
    encoded = PostgresStore(f"postgresql://hoop:{quote(password, safe='')}@127.0.0.1:5432/hoop")
    assert encoded.location == "127.0.0.1:5432/hoop"


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


def test_unlisted_sessions_are_found_from_their_events(backend: Backend) -> None:
    """Sessions whose stored events no row lists as theirs (verify): a row
    removed, a row naming another subject or connection; in the range the
    events' blocks cover."""
    sessions = {
        "kept": make_session("kept"),
        "removed": make_session("removed", start=2000.0),
        "given": make_session("given", start=3000.0),
        "moved": make_session("moved", start=4000.0),
    }

    async def write(store: Store) -> None:
        for events in sessions.values():
            await store.write_recording(events, [])
        assert await store.unlisted_sessions(None, None, 10) == []

    run(backend, write)
    raw_sql(backend, "DELETE FROM sessions WHERE session_id = 'removed'")
    raw_sql(backend, "UPDATE sessions SET subject = 'carol' WHERE session_id = 'given'")
    raw_sql(backend, "UPDATE sessions SET connection = 'other' WHERE session_id = 'moved'")

    async def check(store: Store) -> None:
        assert await store.unlisted_sessions(None, None, 10) == [
            ("given", "other_owner"),
            ("moved", "other_owner"),
            ("removed", "no_row"),
        ]
        assert await store.unlisted_sessions(None, None, 1) == [("given", "other_owner")]
        assert await store.unlisted_sessions(2500.0, 3500.0, 10) == [("given", "other_owner")]
        assert await store.unlisted_sessions(None, 2000.0, 10) == []
        assert await store.unlisted_sessions(5000.0, None, 10) == []

    run(backend, check)
