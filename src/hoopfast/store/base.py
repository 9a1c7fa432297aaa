"""The state store's interface. Two backends implement it: SQLite (WAL), the
embedded default, and PostgreSQL, when several gateway replicas share state.

Every method is a coroutine and never blocks the event loop (SQLite runs on
its own thread). Writes of recording records are idempotent: the recorder may
deliver a batch twice (a crash between the store's commit and the spool's
acknowledgement), and the second delivery changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from hoopfast.store.records import (
    BlockHead,
    EventFilter,
    EventRecord,
    ReviewFilter,
    ReviewRecord,
    Seal,
    SessionRow,
    SigningKey,
)

#: Keyset position in the event order (at, session_id, seq): pages continue
#: strictly after it.
EventCursor = tuple[float, str, int]


class StoreError(Exception):
    """The store cannot do it now (unreachable, locked, disk full). The
    message is for logs and people; it never carries a credential."""


class ReviewConflict(StoreError):
    """A review with that id exists already."""


class Store(ABC):
    #: "sqlite" or "postgresql".
    backend: str

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema to the current version (migrations
        run in order, each once, in a transaction)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def schema_version(self) -> int: ...

    # -- recordings: written by the recorder ---------------------------------

    @abstractmethod
    async def write_recording(self, events: Sequence[EventRecord], seals: Sequence[Seal]) -> None:
        """Store events and seals in one transaction; already stored ones
        are left as they are: a session's events reach the store in seq
        order, so those up to its last stored seq are taken as stored (and
        a seal for a sealed session). A session_start event opens its
        session's row; a seal closes it. Raises StoreError when the store is
        unavailable (nothing is written)."""

    @abstractmethod
    async def add_signing_key(self, key: SigningKey) -> None:
        """Remember a public key (no-op when its key_id is known)."""

    @abstractmethod
    async def signing_keys(self) -> dict[str, SigningKey]: ...

    # -- recordings: read by the API ----------------------------------------

    @abstractmethod
    async def sessions(
        self,
        where: EventFilter,
        *,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[SessionRow]:
        """Sessions, newest first (started_at desc, session_id desc), those
        started in [since, until) matching subject/connection/session_id and
        not exclude_subject; ``before`` continues a previous page."""

    @abstractmethod
    async def session(self, session_id: str) -> SessionRow | None: ...

    @abstractmethod
    async def events(
        self,
        where: EventFilter,
        *,
        limit: int = 1000,
        after: EventCursor | None = None,
    ) -> list[EventRecord]:
        """Up to ``limit`` events matching ``where`` in (at, session_id, seq)
        order, strictly after ``after``. Exports page through millions of
        events with this, so it must use an index, not OFFSET."""

    @abstractmethod
    async def count_events(self, where: EventFilter) -> int:
        """How many events ``events`` would page through (for progress)."""

    @abstractmethod
    async def unlisted_sessions(
        self, since: float | None, until: float | None, limit: int
    ) -> list[tuple[str, str]]:
        """Sessions with events stored in [since, until) whose sessions row
        is missing or names another subject or connection than the events
        (session_id, which): altered rows, which listings and segregation
        of duties would not show (verify). At most ``limit``."""

    @abstractmethod
    async def session_events(self, session_id: str) -> list[EventRecord]:
        """All events of one session in seq order (replay, verify)."""

    @abstractmethod
    async def session_blocks(self, session_id: str) -> list[BlockHead]:
        """One session's event blocks' columns in seq order (verify)."""

    @abstractmethod
    async def session_page(
        self, session_id: str, after: int | None, limit: int
    ) -> list[tuple[BlockHead, list[EventRecord]]]:
        """Up to ``limit`` of one session's blocks, each with its events,
        in seq order from the first block whose first seq is past ``after``
        (None: from the start): replay and verify of a session of any size
        a page at a time."""

    # -- reviews (hoopfast.approvals) ------------------------------------------

    @abstractmethod
    async def insert_review(self, review: ReviewRecord) -> None:
        """Store a new review. ReviewConflict if its id is taken."""

    @abstractmethod
    async def review(self, review_id: str) -> ReviewRecord | None: ...

    @abstractmethod
    async def update_review(self, review: ReviewRecord, expected_version: int) -> bool:
        """Replace the stored review by ``review`` (whose version is
        expected_version + 1) if the stored one is still at
        ``expected_version``; False (nothing written) if someone changed it
        first or it does not exist."""

    @abstractmethod
    async def reviews(
        self,
        where: ReviewFilter,
        *,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[ReviewRecord]:
        """Reviews matching ``where``, newest first (created_at desc,
        review_id desc); ``before`` continues a previous page."""

    async def follow_reviews(self, changed: Callable[[str], None]) -> bool:
        """Call ``changed(review_id)`` whenever any process sharing the store
        changes a review, for as long as the store is open; False when the
        backend cannot tell (SQLite): the caller polls. Best effort even
        where it can: a notification lost in a reconnect is caught by the
        caller's next poll."""
        return False
