"""The state store's schema, as one ordered list of versioned steps with the
SQL of each dialect side by side, so the two backends cannot drift apart.

A store records every step it applied in ``schema_version`` (one row per
version). Opening a store applies the missing steps in order, each in its
own transaction together with its ``schema_version`` row, under a lock that
serialises gateways opening the same store (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: ``pg_advisory_xact_lock``, taken before anything else in the
transaction). A later version is one more :class:`Migration` appended to
:data:`MIGRATIONS`; a released step is never edited.

Column choices: times are Unix seconds as REAL / double precision (what
``time.time()`` gives, no time zone to get wrong); PostgreSQL's text keys use
``COLLATE "C"`` so that both backends order session ids bytewise, and the
keyset indexes serve ``ORDER BY`` without a sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hoopfast.store.base import StoreError

__all__ = [
    "ADVISORY_LOCK_KEY",
    "LATEST_VERSION",
    "MIGRATIONS",
    "READ_VERSION_SQL",
    "RECORD_VERSION_SQL",
    "VERSION_TABLE_SQL",
    "Dialect",
    "Migration",
    "pending",
]

Dialect = Literal["sqlite", "postgresql"]

#: pg_advisory_xact_lock key held while migrating: the bytes "hoopfast" as a
#: signed 64-bit integer, unlikely to collide with another application's.
ADVISORY_LOCK_KEY = int.from_bytes(b"hoopfast", "big", signed=True)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgresql


_V1_SQLITE = (
    """
    CREATE TABLE sessions (
        session_id     TEXT PRIMARY KEY,
        subject        TEXT NOT NULL,
        connection     TEXT NOT NULL,
        client_address TEXT NOT NULL,
        started_at     REAL NOT NULL,
        ended_at       REAL,
        end_reason     TEXT,
        stored_events  INTEGER NOT NULL DEFAULT 0,
        statements     INTEGER NOT NULL DEFAULT 0,
        events         INTEGER,
        last_hash      TEXT,
        key_id         TEXT,
        signature      TEXT
    )
    """,
    "CREATE INDEX sessions_started ON sessions (started_at, session_id)",
    "CREATE INDEX sessions_subject ON sessions (subject, started_at, session_id)",
    "CREATE INDEX sessions_connection ON sessions (connection, started_at, session_id)",
    # A rowid table, not WITHOUT ROWID: event data can be large (SQLite
    # advises WITHOUT ROWID only for small rows).
    """
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        at         REAL NOT NULL,
        kind       TEXT NOT NULL,
        subject    TEXT NOT NULL,
        connection TEXT NOT NULL,
        verdict    TEXT NOT NULL,
        data       TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    )
    """,
    "CREATE INDEX events_at ON events (at, session_id, seq)",
    "CREATE INDEX events_subject ON events (subject, at, session_id, seq)",
    "CREATE INDEX events_connection ON events (connection, at, session_id, seq)",
    """
    CREATE TABLE signing_keys (
        key_id     TEXT PRIMARY KEY,
        algorithm  TEXT NOT NULL,
        public_key TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)

_V1_POSTGRESQL = (
    """
    CREATE TABLE sessions (
        session_id     text COLLATE "C" PRIMARY KEY,
        subject        text COLLATE "C" NOT NULL,
        connection     text COLLATE "C" NOT NULL,
        client_address text NOT NULL,
        started_at     double precision NOT NULL,
        ended_at       double precision,
        end_reason     text,
        stored_events  bigint NOT NULL DEFAULT 0,
        statements     bigint NOT NULL DEFAULT 0,
        events         bigint,
        last_hash      text,
        key_id         text,
        signature      text
    )
    """,
    "CREATE INDEX sessions_started ON sessions (started_at, session_id)",
    "CREATE INDEX sessions_subject ON sessions (subject, started_at, session_id)",
    "CREATE INDEX sessions_connection ON sessions (connection, started_at, session_id)",
    """
    CREATE TABLE events (
        session_id text COLLATE "C" NOT NULL,
        seq        bigint NOT NULL,
        at         double precision NOT NULL,
        kind       text NOT NULL,
        subject    text COLLATE "C" NOT NULL,
        connection text COLLATE "C" NOT NULL,
        verdict    text NOT NULL,
        data       text NOT NULL,
        prev_hash  text NOT NULL,
        hash       text NOT NULL,
        PRIMARY KEY (session_id, seq)
    )
    """,
    "CREATE INDEX events_at ON events (at, session_id, seq)",
    "CREATE INDEX events_subject ON events (subject, at, session_id, seq)",
    "CREATE INDEX events_connection ON events (connection, at, session_id, seq)",
    """
    CREATE TABLE signing_keys (
        key_id     text PRIMARY KEY,
        algorithm  text NOT NULL,
        public_key text NOT NULL,
        created_at double precision NOT NULL
    )
    """,
)

# One row per review (hoopfast.store.records.ReviewRecord). ``approvers`` and
# ``decisions`` are JSON text (a list of role names; a list of {actor, action,
# reason, at} objects): they are read and written with their review, never
# searched. Indexes: the newest-first listing with its keyset, the lookup of
# a requester's reviews of one statement on a connection, and of their access
# reviews (or grants) on a connection by status.
_V2_SQLITE = (
    """
    CREATE TABLE reviews (
        review_id      TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        status         TEXT NOT NULL,
        requester      TEXT NOT NULL,
        connection     TEXT NOT NULL,
        created_at     REAL NOT NULL,
        expires_at     REAL NOT NULL,
        statement      TEXT NOT NULL,
        statement_hash TEXT NOT NULL,
        role           TEXT NOT NULL,
        duration       REAL NOT NULL,
        granted_until  REAL,
        reason         TEXT NOT NULL,
        session_id     TEXT NOT NULL,
        client_address TEXT NOT NULL,
        rule           TEXT NOT NULL,
        mode           TEXT NOT NULL,
        approvers      TEXT NOT NULL,
        min_approvals  INTEGER NOT NULL,
        decisions      TEXT NOT NULL,
        decided_at     REAL,
        used_at        REAL,
        break_glass    INTEGER NOT NULL,
        version        INTEGER NOT NULL
    )
    """,
    "CREATE INDEX reviews_created ON reviews (created_at, review_id)",
    "CREATE INDEX reviews_statement ON reviews (requester, connection, statement_hash)",
    "CREATE INDEX reviews_kind ON reviews (kind, requester, connection, status)",
)

_V2_POSTGRESQL = (
    """
    CREATE TABLE reviews (
        review_id      text COLLATE "C" PRIMARY KEY,
        kind           text COLLATE "C" NOT NULL,
        status         text COLLATE "C" NOT NULL,
        requester      text COLLATE "C" NOT NULL,
        connection     text COLLATE "C" NOT NULL,
        created_at     double precision NOT NULL,
        expires_at     double precision NOT NULL,
        statement      text NOT NULL,
        statement_hash text COLLATE "C" NOT NULL,
        role           text NOT NULL,
        duration       double precision NOT NULL,
        granted_until  double precision,
        reason         text NOT NULL,
        session_id     text NOT NULL,
        client_address text NOT NULL,
        rule           text NOT NULL,
        mode           text NOT NULL,
        approvers      text NOT NULL,
        min_approvals  integer NOT NULL,
        decisions      text NOT NULL,
        decided_at     double precision,
        used_at        double precision,
        break_glass    boolean NOT NULL,
        version        bigint NOT NULL
    )
    """,
    "CREATE INDEX reviews_created ON reviews (created_at, review_id)",
    "CREATE INDEX reviews_statement ON reviews (requester, connection, statement_hash)",
    "CREATE INDEX reviews_kind ON reviews (kind, requester, connection, status)",
)


def _v4(dialect: Dialect) -> tuple[str, ...]:
    """Events in blocks (hoopfast.store.blocks): one row per run of consecutive
    events of one session, their lines in ``body``. The table's other
    columns are what reads select blocks by; ``body`` comes last so that a
    scan of them does not read it. Existing events become blocks of one
    event each, written here in SQL: their ``at`` as round-trip text (SQLite's
    ``%!.17g``; PostgreSQL's float output with extra_float_digits > 0)."""
    sqlite = dialect == "sqlite"
    text, integer, real = (
        ("TEXT", "INTEGER", "REAL") if sqlite else ("text", "bigint", "double precision")
    )
    key = text if sqlite else 'text COLLATE "C"'
    tab, newline = ("char(9)", "char(10)") if sqlite else ("chr(9)", "chr(10)")

    def contains(value: str, char: str) -> str:
        return f"instr({value}, {char}) > 0" if sqlite else f"strpos({value}, {char}) > 0"

    def escaped(column: str) -> str:
        # hoopfast.store.blocks's escaped line: backslash, tab and newline as
        # \\, \t and \n (string literals: SQLite has no escapes in them,
        # PostgreSQL none with standard_conforming_strings, its default).
        return f"replace(replace(replace({column}, '\\', '\\\\'), {tab}, '\\t'), {newline}, '\\n')"

    seq = "CAST(seq AS TEXT)" if sqlite else "seq::text"
    at = "printf('%!.17g', at)" if sqlite else "at::text"
    fields = ("kind", "verdict", "prev_hash", "hash", "data")
    plain = f" || {tab} || ".join((seq, at, *fields))
    escape = f" || {tab} || ".join((seq, at, *map(escaped, fields)))
    heads = " || ".join(fields[:4])
    verdicts = "json_quote(verdict)" if sqlite else "to_json(verdict)::text"
    copy = f"""
    INSERT INTO event_blocks
        (session_id, first_seq, last_seq, first_at, last_at, subject, connection, events,
         verdicts, body)
    SELECT session_id, seq, seq, at, at, subject, connection, 1,
        '{{' || {verdicts} || ':1}}',
        CASE WHEN {contains(heads, tab)} OR {contains(heads + " || data", newline)}
            THEN '!' || {escape} ELSE {plain} END || {newline}
    FROM events
    """
    create = f"""
    CREATE TABLE event_blocks (
        session_id {key} NOT NULL,
        first_seq  {integer} NOT NULL,
        last_seq   {integer} NOT NULL,
        first_at   {real} NOT NULL,
        last_at    {real} NOT NULL,
        subject    {key} NOT NULL,
        connection {key} NOT NULL,
        events     {integer} NOT NULL,
        verdicts   {text} NOT NULL,
        body       {text} NOT NULL,
        PRIMARY KEY (session_id, first_seq)
    )
    """
    # Unlike the events table's indexes, these serve the keyset order with
    # the key's columns: a block is large, its index entries are not.
    indexes = (
        "CREATE INDEX event_blocks_at ON event_blocks (first_at, session_id, first_seq)",
        "CREATE INDEX event_blocks_subject"
        " ON event_blocks (subject, first_at, session_id, first_seq)",
        "CREATE INDEX event_blocks_connection"
        " ON event_blocks (connection, first_at, session_id, first_seq)",
    )
    # Transaction-local: the float output of at::text round-trips.
    settings = () if sqlite else ("SET LOCAL extra_float_digits = 3",)
    return (*settings, create, copy, "DROP TABLE events", *indexes)


#: Every schema version, oldest first; versions are 1, 2, 3, ... in order.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "recordings: sessions, events, signing keys", _V1_SQLITE, _V1_POSTGRESQL),
    Migration(2, "reviews: approvals of statements and of access", _V2_SQLITE, _V2_POSTGRESQL),
    Migration(
        3,
        "reviews: the parameter values a statement approval binds",
        ("ALTER TABLE reviews ADD COLUMN parameters TEXT NOT NULL DEFAULT ''",),
        ("ALTER TABLE reviews ADD COLUMN parameters text NOT NULL DEFAULT ''",),
    ),
    Migration(
        4,
        "recordings: events in blocks, one row per run of a session's events",
        _v4("sqlite"),
        _v4("postgresql"),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

#: Creates ``schema_version`` if missing (run under the migration lock).
VERSION_TABLE_SQL: dict[Dialect, str] = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    ),
    "postgresql": (
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
    ),
}
#: One row, one column: the current version (0 for a new store).
READ_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
#: Parameters: version, applied_at (Unix seconds).
RECORD_VERSION_SQL: dict[Dialect, str] = {
    "sqlite": "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
    "postgresql": "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
}


def pending(current: int) -> tuple[Migration, ...]:
    """The steps a store at version ``current`` still needs, in order.

    A store newer than this code is refused rather than used: a later step
    may have changed what the older code relies on."""
    if current > LATEST_VERSION:
        raise StoreError(
            f"the store's schema is at version {current}, newer than this hoopfast"
            f" supports ({LATEST_VERSION}): upgrade hoopfast"
        )
    return tuple(m for m in MIGRATIONS if m.version > current)
