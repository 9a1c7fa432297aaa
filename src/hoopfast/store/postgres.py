"""The shared state store: PostgreSQL, for several gateway replicas.

One connection, used by one coroutine at a time (an asyncio.Lock): the store
serves a recorder and an API, not a query workload, so a pool would only add
idle sessions on the server. After a failure the connection is dropped when
it is no longer usable, and the next call connects again.

Batches go to the server as one statement over ``unnest`` of parameter
arrays (binary, so a megabyte of event data is not escaped into an array
literal): one round trip per table, whatever the batch size, and one to read
the batch's sessions' last stored seqs (which events are new).

Errors never show the URL: libpq and psycopg can echo parts of the conninfo,
so a message that contains the password is replaced by the error's class and
SQLSTATE, and the psycopg exception is not chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hoopfast.store import migrations
from hoopfast.store.base import StoreError
from hoopfast.store.blocks import BLOCK_COLUMNS, Run, build_blocks, new_counts, session_runs
from hoopfast.store.records import EventRecord, Seal
from hoopfast.store.sql import SqlStore, session_starts

__all__ = ["PostgresStore"]

log = logging.getLogger("hoopfast.store")

_T = TypeVar("_T")
#: The channel a changed review's id is sent on (follow_reviews).
_CHANNEL = "hoopfast_reviews"
_Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

#: Connection parameters used unless the URL sets them. A dead server must
#: fail a call in seconds, not after TCP's retransmission timeout of minutes:
#: keepalives catch it while we wait for a reply, tcp_user_timeout while we
#: send a batch.
_DEFAULTS: dict[str, str] = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "hoopfast",
}

#: Each session's last stored seq (NULL: none): its last block's, by the
#: primary key (one probe; max(last_seq) would read all its blocks). Blocks
#: of a session never overlap (build_blocks), so no other block ends later.
_LAST_SEQS = (
    "SELECT u.session_id, (SELECT b.last_seq FROM event_blocks b"
    ' WHERE b.session_id = u.session_id COLLATE "C" ORDER BY b.first_seq DESC LIMIT 1)'
    " FROM unnest(%b::text[]) AS u(session_id)"
)
_INSERT_BLOCKS = (
    f"INSERT INTO event_blocks ({BLOCK_COLUMNS})"
    " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::float8[],"
    " %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[])"
    " ON CONFLICT DO NOTHING RETURNING session_id, first_seq"
)
_OPEN_SESSIONS = (
    "INSERT INTO sessions (session_id, subject, connection, client_address, started_at)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[])"
    " ON CONFLICT DO NOTHING"
)
_COUNT_EVENTS = (
    "UPDATE sessions s SET stored_events = s.stored_events + u.n,"
    " statements = s.statements + u.st"
    " FROM unnest(%b::text[], %b::bigint[], %b::bigint[]) AS u(session_id, n, st)"
    " WHERE s.session_id = u.session_id"
)
_SEAL_SESSIONS = (
    "UPDATE sessions s SET ended_at = u.ended_at, end_reason = u.end_reason,"
    " events = u.events, last_hash = u.last_hash, key_id = u.key_id, signature = u.signature"
    " FROM unnest(%b::text[], %b::float8[], %b::text[], %b::bigint[], %b::text[], %b::text[],"
    " %b::text[]) AS u(session_id, ended_at, end_reason, events, last_hash, key_id, signature)"
    " WHERE s.session_id = u.session_id AND s.signature IS NULL"
)


class PostgresStore(SqlStore):
    backend = "postgresql"
    param = "%s"

    def __init__(self, url: str) -> None:
        """``url``: a libpq URI or conninfo string. Raises ValueError (without
        the URL's text, which may hold a password) when libpq cannot parse it."""
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise ValueError("the PostgreSQL store URL is not a valid libpq URL") from None
        written = _written_password(url)
        if written is not None and unquote(written) != params.get("password"):
            # libpq ends the password at a "/" (an "@" ends it too):
            # the rest would be read as host or database, and shown.
            raise ValueError(
                "the PostgreSQL store URL's password must be percent-encoded (it holds"
                " a character such as / or @ that ends it); the URL is not shown"
            )
        self._conninfo = make_conninfo(
            url, **{k: v for k, v in _DEFAULTS.items() if k not in params}
        )
        host = params.get("host") or params.get("hostaddr") or "localhost"
        port = params.get("port") or "5432"
        dbname = params.get("dbname") or params.get("user") or ""
        self.location = f"{host}:{port}/{dbname}"
        password = str(params.get("password") or "")
        self._secrets = [s for s in (password, quote(password, safe=""), written) if s]
        if any(secret in self.location for secret in self._secrets):
            self.location = "(its address is not shown)"
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

    # -- plumbing --------------------------------------------------------------

    async def _run(self, fn: Callable[[_Conn], Awaitable[_T]]) -> _T:
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    )
                return await fn(self._conn)
            except psycopg.Error as e:
                await self._drop(broken_only=True)
                raise StoreError(self._describe(e)) from None
            except BaseException:
                # Cancelled (or worse) in the middle of a protocol exchange:
                # the connection's state is unknown, so it is not reused.
                await self._drop(broken_only=False)
                raise

    async def _drop(self, *, broken_only: bool) -> None:
        conn = self._conn
        if conn is None or (broken_only and not (conn.closed or conn.broken)):
            return
        self._conn = None
        with contextlib.suppress(psycopg.Error):  # it is gone either way
            await conn.close()

    def _describe(self, e: psycopg.Error) -> str:
        lines = str(e).strip().splitlines()
        text = lines[0].strip() if lines else ""
        if not text or any(secret in text for secret in self._secrets):
            text = type(e).__name__ + (f" (SQLSTATE {e.sqlstate})" if e.sqlstate else "")
        return f"the PostgreSQL store at {self.location} is unavailable: {text}"

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        await self._run(_migrate)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        async with self._lock:
            await self._drop(broken_only=False)

    # -- review notifications (LISTEN/NOTIFY) ---------------------------------------

    async def _announce(self, review_id: str) -> None:
        # Best effort: the change is committed; a replica that misses this
        # sees it at its next poll.
        with contextlib.suppress(StoreError):
            await self._run(
                lambda conn: _execute(conn, "SELECT pg_notify(%s, %s)", (_CHANNEL, review_id))
            )

    async def follow_reviews(self, changed: Callable[[str], None]) -> bool:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(changed))
        return True

    async def _listen(self, changed: Callable[[str], None]) -> None:
        """LISTEN on a connection of its own (a notification arrives only
        between statements, so it cannot share the busy one), reconnecting
        with back-off while the store is away."""
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {_CHANNEL}")
                    delay = 0.5
                    async for notify in conn.notifies():
                        changed(notify.payload)
                finally:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            except psycopg.Error as e:
                log.warning("review notifications paused: %s", self._describe(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def schema_version(self) -> int:
        return await self._run(_read_version)

    # -- recordings: written ---------------------------------------------------

    async def write_recording(self, events: Sequence[EventRecord], seals: Sequence[Seal]) -> None:
        if events or seals:
            await self._run(lambda conn: _write_recording(conn, events, seals))

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda conn: _fetchall(conn, sql, params))

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        return await self._run(lambda conn: _execute(conn, sql, params))


# -- with the connection ---------------------------------------------------------


async def _fetchall(conn: _Conn, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(sql, params)
    return await cursor.fetchall()


async def _execute(conn: _Conn, sql: str, params: Sequence[Any]) -> int:
    """One statement (autocommit: its own transaction); the rows it changed.
    Values PostgreSQL cannot hold are refused before anything is sent, a NUL
    by psycopg (DataError), a lone surrogate here, as a DataError too: a
    StoreError for the caller, and the connection stays in use."""
    try:
        cursor = await conn.execute(sql, params)
    except UnicodeEncodeError as e:
        raise psycopg.DataError(str(e)) from None
    return cursor.rowcount


async def _read_version(conn: _Conn) -> int:
    rows = await _fetchall(conn, migrations.READ_VERSION_SQL, ())
    version: int = rows[0][0]
    return version


async def _migrate(conn: _Conn) -> None:
    """Apply the pending steps, each in its own transaction. The advisory lock
    comes first, before even ``CREATE TABLE IF NOT EXISTS schema_version``
    (which is not safe against a concurrent creator), and the version is read
    under it, so of two gateways opening at once the second finds the work
    done."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
            await conn.execute(migrations.VERSION_TABLE_SQL["postgresql"])
            todo = migrations.pending(await _read_version(conn))
            if not todo:
                return
            for statement in todo[0].postgresql:
                await conn.execute(statement)
            await conn.execute(
                migrations.RECORD_VERSION_SQL["postgresql"], (todo[0].version, time.time())
            )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to one list per column (an ``unnest`` parameter each)."""
    return [[row[i] for row in rows] for i in range(width)]


async def _write_recording(
    conn: _Conn, events: Sequence[EventRecord], seals: Sequence[Seal]
) -> None:
    runs = session_runs(events)
    starts = session_starts(events)
    # The first seal of a session wins, as it would one by one (in one UPDATE
    # ... FROM, which of two matching rows applies is not defined).
    first_seals: dict[str, Seal] = {}
    for s in seals:
        first_seals.setdefault(s.session_id, s)
    seal_rows = [
        (s.session_id, s.ended_at, s.end_reason, s.events, s.last_hash, s.key_id, s.signature)
        for s in first_seals.values()
    ]
    async with conn.transaction():
        try:
            counts = await _write_blocks(conn, runs)
            # Sessions are opened before they are counted: a batch may hold both.
            if starts:
                await conn.execute(_OPEN_SESSIONS, _columns(starts, 5))
            if counts:
                counted = [(sid, n, statements) for sid, (n, statements) in counts.items()]
                await conn.execute(_COUNT_EVENTS, _columns(counted, 3))
            if seal_rows:
                await conn.execute(_SEAL_SESSIONS, _columns(seal_rows, 7))
        except UnicodeEncodeError as e:
            # A lone surrogate: refused as in _execute (a StoreError for the
            # caller; the connection stays in use).
            raise psycopg.DataError(str(e)) from None


async def _write_blocks(conn: _Conn, runs: dict[str, Run]) -> dict[str, tuple[int, int]]:
    """Insert the blocks of the events not stored yet (in the caller's
    transaction); per session, how many events and statements they hold."""
    if not runs:
        return {}
    cursor = await conn.execute(_LAST_SEQS, [list(runs)])
    stored: dict[str, int | None] = dict(await cursor.fetchall())
    blocks = build_blocks(runs, stored)
    if not blocks:
        return {}
    # RETURNING lists only the blocks inserted: the counters count those.
    cursor = await conn.execute(_INSERT_BLOCKS, _columns([b.values() for b in blocks], 10))
    inserted = set(await cursor.fetchall())
    return new_counts(b for b in blocks if (b.session_id, b.first_seq) in inserted)


def _written_password(url: str) -> str | None:
    """The password as written in a URI's userinfo (up to the last "@"
    before any query), or None (no URI, or none there)."""
    scheme = url.find("://")
    if scheme < 0:
        return None
    authority = url[scheme + 3 :].split("?", 1)[0]
    at = authority.rfind("@")
    if at < 0:
        return None
    _, colon, password = authority[:at].partition(":")
    return password if colon else None
