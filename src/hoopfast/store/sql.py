"""What the two SQL backends share: the column lists, the read queries
(filters, keyset pages) and the mapping of rows back to records. A backend
supplies its parameter placeholder and how to run a query or a write; the
schema is the same in both (hoopfast.store.migrations)."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any

from hoopfast.store.base import EventCursor, ReviewConflict, Store
from hoopfast.store.records import (
    APPROVED,
    Decision,
    EventFilter,
    EventRecord,
    ReviewFilter,
    ReviewRecord,
    Seal,
    SessionRow,
    SigningKey,
)

EVENT_COLUMNS = "session_id, seq, at, kind, subject, connection, verdict, data, prev_hash, hash"
SESSION_COLUMNS = (
    "session_id, subject, connection, client_address, started_at, stored_events, statements,"
    " ended_at, end_reason, events, last_hash, key_id, signature"
)
#: The reviews table's columns: ReviewRecord's fields, in their order.
_REVIEW_FIELDS = [f.name for f in fields(ReviewRecord)]
REVIEW_COLUMNS = ", ".join(_REVIEW_FIELDS)


class SqlStore(Store):
    #: The driver's parameter placeholder: "?" (sqlite3) or "%s" (psycopg).
    param: str

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one query and return all its rows (StoreError when the
        store is unavailable)."""

    @abstractmethod
    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        """Run one writing statement in its own transaction and return how
        many rows it changed (StoreError when the store is unavailable or
        refuses the values)."""

    async def add_signing_key(self, key: SigningKey) -> None:
        p = self.param
        await self._write(
            "INSERT INTO signing_keys (key_id, algorithm, public_key, created_at)"
            f" VALUES ({p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
            (key.key_id, key.algorithm, key.public_key, key.created_at),
        )

    async def signing_keys(self) -> dict[str, SigningKey]:
        rows = await self._fetch(
            "SELECT key_id, algorithm, public_key, created_at FROM signing_keys", ()
        )
        return {row[0]: SigningKey(*row) for row in rows}

    async def sessions(
        self,
        where: EventFilter,
        *,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[SessionRow]:
        p = self.param
        if before is not None and where.until is not None:
            # One upper bound only, for the same reason as in events().
            if before[0] < where.until:
                where = replace(where, until=None)
            else:
                before = None
        conditions, params = _conditions(where, "started_at", p)
        if before is not None:
            conditions.append(f"(started_at, session_id) < ({p}, {p})")
            params.extend(before)
        sql = (
            f"SELECT {SESSION_COLUMNS} FROM sessions{_where(conditions)}"
            f" ORDER BY started_at DESC, session_id DESC LIMIT {p}"
        )
        params.append(limit)
        return [session_row(row) for row in await self._fetch(sql, params)]

    async def session(self, session_id: str) -> SessionRow | None:
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = {self.param}"
        rows = await self._fetch(sql, (session_id,))
        return session_row(rows[0]) if rows else None

    async def events(
        self,
        where: EventFilter,
        *,
        limit: int = 1000,
        after: EventCursor | None = None,
    ) -> list[EventRecord]:
        p = self.param
        if after is not None and where.since is not None:
            # One lower bound only, so that the index range starts at the
            # cursor: given both, SQLite would start every page at ``since``.
            if after[0] >= where.since:
                where = replace(where, since=None)
            else:
                after = None
        conditions, params = _conditions(where, "at", p, with_verdict=True)
        if after is not None:
            # A row-value comparison: both databases walk the (at, session_id,
            # seq) index from the cursor.
            conditions.append(f"(at, session_id, seq) > ({p}, {p}, {p})")
            params.extend(after)
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events{_where(conditions)}"
            f" ORDER BY at, session_id, seq LIMIT {p}"
        )
        params.append(limit)
        return [EventRecord(*row) for row in await self._fetch(sql, params)]

    async def count_events(self, where: EventFilter) -> int:
        conditions, params = _conditions(where, "at", self.param, with_verdict=True)
        rows = await self._fetch(f"SELECT count(*) FROM events{_where(conditions)}", params)
        count: int = rows[0][0]
        return count

    async def session_events(self, session_id: str) -> list[EventRecord]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE session_id = {self.param} ORDER BY seq"
        return [EventRecord(*row) for row in await self._fetch(sql, (session_id,))]

    # -- reviews ---------------------------------------------------------------

    async def insert_review(self, review: ReviewRecord) -> None:
        p = self.param
        sql = (
            f"INSERT INTO reviews ({REVIEW_COLUMNS})"
            f" VALUES ({', '.join([p] * len(_REVIEW_FIELDS))})"
            " ON CONFLICT (review_id) DO NOTHING"
        )
        if await self._write(sql, review_values(review)) == 0:
            raise ReviewConflict(f"a review with id {review.review_id!r} exists already")

    async def review(self, review_id: str) -> ReviewRecord | None:
        sql = f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE review_id = {self.param}"
        rows = await self._fetch(sql, (review_id,))
        return review_record(rows[0]) if rows else None

    async def update_review(self, review: ReviewRecord, expected_version: int) -> bool:
        if review.version != expected_version + 1:
            raise ValueError(
                f"review {review.review_id!r}: version {review.version} does not follow"
                f" the expected version {expected_version}"
            )
        p = self.param
        # Every column but the key: the stored review becomes ``review``.
        assignments = ", ".join(f"{name} = {p}" for name in _REVIEW_FIELDS[1:])
        sql = f"UPDATE reviews SET {assignments} WHERE review_id = {p} AND version = {p}"
        params = [*review_values(review)[1:], review.review_id, expected_version]
        if await self._write(sql, params) != 1:
            return False
        await self._announce(review.review_id)
        return True

    async def _announce(self, review_id: str) -> None:
        """Tell other processes the review changed (see follow_reviews)."""

    async def reviews(
        self,
        where: ReviewFilter,
        *,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[ReviewRecord]:
        p = self.param
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("kind", where.kind),
            ("requester", where.requester),
            ("connection", where.connection),
            ("statement_hash", where.statement_hash),
        ):
            if value:
                conditions.append(f"{column} = {p}")
                params.append(value)
        if where.statuses:
            conditions.append(f"status IN ({', '.join([p] * len(where.statuses))})")
            params.extend(where.statuses)
        if where.active_at is not None:
            conditions.append(f"status = {p} AND granted_until > {p}")
            params.extend((APPROVED, where.active_at))
        if where.since is not None:
            conditions.append(f"created_at >= {p}")
            params.append(where.since)
        if before is not None:
            conditions.append(f"(created_at, review_id) < ({p}, {p})")
            params.extend(before)
        sql = (
            f"SELECT {REVIEW_COLUMNS} FROM reviews{_where(conditions)}"
            f" ORDER BY created_at DESC, review_id DESC LIMIT {p}"
        )
        params.append(limit)
        return [review_record(row) for row in await self._fetch(sql, params)]


def review_values(r: ReviewRecord) -> tuple[Any, ...]:
    """A review's values in REVIEW_COLUMNS order: approvers and decisions as
    JSON text (ASCII-escaped, so any string survives, even a lone surrogate
    or a NUL), break_glass as a bool (SQLite stores 1 or 0)."""
    values: dict[str, Any] = {name: getattr(r, name) for name in _REVIEW_FIELDS}
    values["approvers"] = json.dumps(list(r.approvers))
    values["decisions"] = json.dumps([asdict(d) for d in r.decisions])
    values["break_glass"] = bool(r.break_glass)
    return tuple(values.values())


def review_record(row: Sequence[Any]) -> ReviewRecord:
    """A row of REVIEW_COLUMNS as a ReviewRecord."""
    values = dict(zip(_REVIEW_FIELDS, row, strict=True))
    values["approvers"] = tuple(json.loads(values["approvers"]))
    values["decisions"] = tuple(Decision(**d) for d in json.loads(values["decisions"]))
    values["break_glass"] = bool(values["break_glass"])
    return ReviewRecord(**values)


def event_values(e: EventRecord) -> tuple[Any, ...]:
    """An event's values in EVENT_COLUMNS order."""
    return (
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
    )


def client_address(data: str) -> str:
    """The client address a session_start event's data holds ("" when it does
    not: the event is stored as it came; ``audit verify`` judges it)."""
    try:
        value = json.loads(data)
    except ValueError:
        return ""
    address = value.get("client_address") if isinstance(value, dict) else None
    return "" if address is None else str(address)


def session_row(row: Sequence[Any]) -> SessionRow:
    """A row of SESSION_COLUMNS as a SessionRow (sealed when signed): its
    first nine columns are SessionRow's first nine fields, the rest the seal."""
    session_id = row[0]
    ended_at, end_reason, events, last_hash, key_id, signature = row[7:]
    seal = None
    if signature is not None:
        seal = Seal(session_id, events, last_hash, ended_at, end_reason, key_id, signature)
    return SessionRow(**dict(zip(_SESSION_FIELDS, row, strict=False)), seal=seal)


#: SessionRow's fields before the seal: SESSION_COLUMNS starts with them.
_SESSION_FIELDS = [f.name for f in fields(SessionRow) if f.name != "seal"]


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def _conditions(
    where: EventFilter, time_column: str, p: str, *, with_verdict: bool = False
) -> tuple[list[str], list[Any]]:
    """SQL conditions for ``where``: events match on ``at``, sessions on
    ``started_at``; a verdict belongs to a statement, so it is a condition
    on events only."""
    conditions: list[str] = []
    params: list[Any] = []
    if where.since is not None:
        conditions.append(f"{time_column} >= {p}")
        params.append(where.since)
    if where.until is not None:
        conditions.append(f"{time_column} < {p}")
        params.append(where.until)
    for column, value in (
        ("subject", where.subject),
        ("connection", where.connection),
        ("verdict", where.verdict if with_verdict else None),
        ("session_id", where.session_id),
    ):
        if value:
            conditions.append(f"{column} = {p}")
            params.append(value)
    if where.exclude_subject:
        conditions.append(f"subject <> {p}")
        params.append(where.exclude_subject)
    return conditions, params
