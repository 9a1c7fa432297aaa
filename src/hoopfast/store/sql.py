"""What the two SQL backends share: the column lists, the read queries
(filters, keyset pages) and the mapping of rows back to records; events are
kept in blocks (hoopfast.store.blocks). A backend supplies its parameter
placeholder and how to run a query or a write; the schema is the same in
both (hoopfast.store.migrations)."""

from __future__ import annotations

import asyncio
import json
import re
from abc import abstractmethod
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from hoopfast.bulk import collector_paused
from hoopfast.store import blocks
from hoopfast.store.base import EventCursor, ReviewConflict, Store
from hoopfast.store.records import (
    APPROVED,
    SESSION_START,
    BlockHead,
    Decision,
    EventFilter,
    EventRecord,
    ReviewFilter,
    ReviewRecord,
    Seal,
    SessionRow,
    SigningKey,
)

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
        if limit < 1:
            return []
        since = where.since
        if after is not None and since is not None:
            # One lower bound only, the later one: it starts the block scan.
            if after[0] >= since:
                since = None
            else:
                after = None
        lower = after[0] if after is not None else since
        chosen = _Blocks.matching(where, lower, self.param)
        page = blocks.Page(limit, since, where.until, where.verdict, after)
        key: tuple[Any, ...] = ()
        # Blocks are read in first_at order, a few at a time: the heads of
        # the next ones (their first_at and size, without the body) tell how
        # many of them the page needs for sure, and when it is complete.
        while True:
            heads = await self._block_page("first_at, events", chosen, key, blocks.HEADS)
            wanted = page.wanted(heads)
            if not wanted:
                break
            rows = await self._block_page(blocks.READ_COLUMNS, chosen, key, wanted)
            if not rows:
                break
            for row in rows:
                page.add(row)
            key = (rows[-1][2], rows[-1][0], rows[-1][1])
        return page.events()

    async def count_events(self, where: EventFilter) -> int:
        p = self.param
        chosen = _Blocks.matching(where, where.since, p)
        # Blocks entirely inside [since, until) count by their columns; the
        # ones across a bound (about one per session and bound) are read.
        inside, outside, bounds = [], [], []
        for column, bound, inside_op, outside_op in (
            ("first_at", where.since, ">=", "<"),
            ("last_at", where.until, "<", ">="),
        ):
            if bound is not None:
                inside.append(f"{column} {inside_op} {p}")
                outside.append(f"{column} {outside_op} {p}")
                bounds.append(bound)
        total = await self._count_inside(chosen.narrowed(inside, bounds), where.verdict)
        if outside:
            edges = chosen.narrowed([f"({' OR '.join(outside)})"], bounds)
            async with aclosing(self._blocks(edges)) as rows:
                async for row in rows:
                    total += len(
                        blocks.candidates(row, where.since, where.until, None, where.verdict, None)
                    )
        return total

    async def _count_inside(self, chosen: _Blocks, verdict: str | None) -> int:
        conditions, params = chosen.first_page()
        if not verdict:
            sql = f"SELECT coalesce(sum(events), 0) FROM event_blocks{_where(conditions)}"
            rows = await self._fetch(sql, params)
            return int(rows[0][0])  # PostgreSQL's sum of bigint is numeric
        # Blocks with the same verdict counts are counted together.
        sql = f"SELECT verdicts, count(*) FROM event_blocks{_where(conditions)} GROUP BY verdicts"
        rows = await self._fetch(sql, params)
        return sum(blocks.verdict_count(verdicts, verdict) * n for verdicts, n in rows)

    async def unlisted_sessions(
        self, since: float | None, until: float | None, limit: int
    ) -> list[tuple[str, str]]:
        p = self.param
        conditions = [
            "(s.session_id IS NULL OR s.subject <> b.subject OR s.connection <> b.connection)"
        ]
        params: list[Any] = []
        if since is not None:
            conditions.append(f"b.last_at >= {p}")
            params.append(since)
        if until is not None:
            conditions.append(f"b.first_at < {p}")
            params.append(until)
        sql = (
            "SELECT b.session_id, MIN(CASE WHEN s.session_id IS NULL THEN 'no row' ELSE 'row' END)"
            " FROM event_blocks b LEFT JOIN sessions s ON s.session_id = b.session_id"
            f"{_where(conditions)} GROUP BY b.session_id ORDER BY b.session_id LIMIT {p}"
        )
        params.append(limit)
        return [
            (str(sid), "no_row" if which == "no row" else "other_owner")
            for sid, which in await self._fetch(sql, params)
        ]

    async def session_events(self, session_id: str) -> list[EventRecord]:
        return [e for _, events in await self.session_page(session_id, None, _ALL) for e in events]

    async def session_blocks(self, session_id: str) -> list[BlockHead]:
        return [head for head, _ in await self.session_page(session_id, None, _ALL)]

    async def session_page(
        self, session_id: str, after: int | None, limit: int
    ) -> list[tuple[BlockHead, list[EventRecord]]]:
        p = self.param
        sql = (
            "SELECT first_seq, last_seq, first_at, last_at, events, verdicts,"
            f" {blocks.READ_COLUMNS} FROM event_blocks WHERE session_id = {p}"
            + ("" if after is None else f" AND first_seq > {p}")
            + f" ORDER BY first_seq LIMIT {p}"
        )
        params = (session_id, limit) if after is None else (session_id, after, limit)
        rows = await self._fetch(sql, params)
        # Off the event loop, which also relays the data path: 100,000
        # events take about a second to parse.
        return await asyncio.get_running_loop().run_in_executor(None, _heads_and_events, rows)

    async def _blocks(self, chosen: _Blocks) -> AsyncGenerator[tuple[Any, ...], None]:
        """The ``chosen`` blocks (rows of blocks.READ_COLUMNS), page by page."""
        key: tuple[Any, ...] = ()
        while True:
            rows = await self._block_page(blocks.READ_COLUMNS, chosen, key, blocks.BODIES)
            for row in rows:
                yield row
            if len(rows) < blocks.BODIES:
                return
            key = (rows[-1][2], rows[-1][0], rows[-1][1])

    async def _block_page(
        self, columns: str, chosen: _Blocks, key: tuple[Any, ...], limit: int
    ) -> list[tuple[Any, ...]]:
        """Up to ``limit`` of the ``chosen`` blocks in (first_at, session_id, first_seq)
        order, after ``key`` (a keyset on that order, which the index serves;
        () for the first)."""
        if key:
            p = self.param
            conditions = [
                *chosen.conditions,
                f"(first_at, session_id, first_seq) > ({p}, {p}, {p})",
            ]
            params = [*chosen.params, *key]
        else:
            conditions, params = chosen.first_page()
        sql = (
            f"SELECT {columns} FROM event_blocks{_where(conditions)}"
            f" ORDER BY first_at, session_id, first_seq LIMIT {self.param}"
        )
        return await self._fetch(sql, [*params, limit])

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


def _conditions(where: EventFilter, time_column: str, p: str) -> tuple[list[str], list[Any]]:
    """SQL conditions for ``where`` on sessions (``time_column`` started_at);
    a verdict belongs to a statement, so it is no condition on sessions."""
    conditions: list[str] = []
    params: list[Any] = []
    if where.since is not None:
        conditions.append(f"{time_column} >= {p}")
        params.append(where.since)
    if where.until is not None:
        conditions.append(f"{time_column} < {p}")
        params.append(where.until)
    _add_names(where, p, conditions, params)
    return conditions, params


def _add_names(where: EventFilter, p: str, conditions: list[str], params: list[Any]) -> None:
    """The conditions on columns that sessions and event blocks share."""
    for column, value in (
        ("subject", where.subject),
        ("connection", where.connection),
        ("session_id", where.session_id),
    ):
        if value:
            conditions.append(f"{column} = {p}")
            params.append(value)
    if where.exclude_subject:
        conditions.append(f"subject <> {p}")
        params.append(where.exclude_subject)


@dataclass(frozen=True, slots=True)
class _Blocks:
    """The blocks that may hold events matching a filter from a time on:
    SQL conditions on their columns. Their events still need checking one
    by one (their times, verdict, the cursor)."""

    conditions: list[str]
    params: list[Any]
    #: Where the index range starts before a keyset continues it: a block
    #: holding an event at or after ``lower`` starts at or after this time
    #: (BLOCK_SPAN). Not given with the keyset, which starts later: given
    #: both, SQLite may start every page's range at the earlier one.
    start: tuple[str, float] | None = None

    @classmethod
    def matching(cls, where: EventFilter, lower: float | None, p: str) -> _Blocks:
        conditions: list[str] = []
        params: list[Any] = []
        start = None
        if lower is not None:
            conditions.append(f"last_at >= {p}")
            params.append(lower)
            start = (f"first_at >= {p}", lower - blocks.BLOCK_SPAN - blocks.SPAN_SLACK)
        if where.until is not None:
            conditions.append(f"first_at < {p}")
            params.append(where.until)
        _add_names(where, p, conditions, params)
        if where.verdict and _PLAIN_VERDICT.fullmatch(where.verdict):
            # Skips blocks without the verdict unread. Only for a verdict that
            # JSON writes as it is, so that every writer of ``verdicts`` (this
            # module, the migration's SQL) spells it alike; SQLite's LIKE
            # ignores ASCII case, which only lets more blocks through.
            key = _LIKE_SPECIAL.sub(r"!\g<0>", json.dumps(where.verdict) + ":")
            conditions.append(f"verdicts LIKE {p} ESCAPE '!'")
            params.append(f"%{key}%")
        return cls(conditions, params, start)

    def narrowed(self, conditions: list[str], params: list[Any]) -> _Blocks:
        return replace(self, conditions=self.conditions + conditions, params=self.params + params)

    def first_page(self) -> tuple[list[str], list[Any]]:
        """The conditions and parameters of a query without a keyset."""
        if self.start is None:
            return self.conditions, self.params
        condition, value = self.start
        return [condition, *self.conditions], [value, *self.params]


#: Verdicts the ``verdicts`` column can be searched for with LIKE.
_PLAIN_VERDICT = re.compile(r"[A-Za-z0-9_.:+-]+")
_LIKE_SPECIAL = re.compile(r"[!%_]")


def session_starts(events: Iterable[EventRecord]) -> list[tuple[str, str, str, str, float]]:
    """The sessions rows a batch opens: (session_id, subject, connection,
    client_address, started_at) of its session_start events."""
    return [
        (e.session_id, e.subject, e.connection, client_address(e.data), e.at)
        for e in events
        if e.kind == SESSION_START
    ]


#: A LIMIT no session reaches: session_page for a whole session.
_ALL = 1 << 62


def _heads_and_events(
    rows: Sequence[Sequence[Any]],
) -> list[tuple[BlockHead, list[EventRecord]]]:
    """Rows of a block's head columns followed by blocks.READ_COLUMNS."""
    with collector_paused():
        return [
            (
                BlockHead(int(r[0]), int(r[1]), float(r[2]), float(r[3]), int(r[4]), str(r[5])),
                blocks.block_events(r[6:]),
            )
            for r in rows
        ]
