"""The admin API's routes: session trails for auditors, metrics, health
(reviews and access requests: :mod:`hoopfast.api.reviews`).

Who may read a trail is decided here, in one place, for every route under
``/v1``: a valid bearer token (the same tokens the PostgreSQL side accepts),
a role named in ``audit.roles``, and, unless ``audit.read_own_sessions``,
never a trail of a session the reader ran (segregation of duties). The
configuration is read through a getter on every request because the gateway
reloads it; one request sees one configuration.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticSerializationError

from hoopfast import __version__
from hoopfast.bulk import collector_paused
from hoopfast.config import GatewayConfig
from hoopfast.identity.principal import Principal
from hoopfast.identity.tokens import TokenError, TokenValidator
from hoopfast.policy.access import roles_of
from hoopfast.store import Store, StoreError
from hoopfast.store.records import (
    BlockHead,
    EventFilter,
    EventRecord,
    Seal,
    SessionRow,
    SigningKey,
)

if TYPE_CHECKING:
    from hoopfast.approvals import Approvals

__all__ = ["EXPORT_PAGE", "create_app", "parse_time"]

log = logging.getLogger(__name__)

#: Events fetched from the store per page of an export: big enough that the
#: per-query cost vanishes, small enough that memory stays flat.
EXPORT_PAGE = 1000

#: The Prometheus text exposition format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
NDJSON = "application/x-ndjson"


# --------------------------------------------------------------------------- models


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Problem(BaseModel):
    """What went wrong (FastAPI's ``detail``); never a token or a secret."""

    detail: str


class _FromRecord(BaseModel):
    """A response model read from a store record's attributes."""

    model_config = ConfigDict(from_attributes=True)


class SealOut(_FromRecord):
    """A finished session's signed chain head (see hoopfast.recording.chain)."""

    session_id: str
    events: int = Field(description="number of events the seal covers")
    last_hash: str
    ended_at: float
    end_reason: str
    key_id: str = Field(description="the signing key (GET /v1/audit/keys)")
    signature: str = Field(description="hex Ed25519 signature over the seal message")

    @classmethod
    def of(cls, seal: Seal | None) -> SealOut | None:
        return None if seal is None else cls.model_validate(seal)


class SessionOut(BaseModel):
    session_id: str
    subject: str = Field(description="the person who ran the session")
    connection: str
    client_address: str
    started_at: float = Field(description="Unix seconds")
    ended_at: float | None = None
    end_reason: str | None = None
    stored_events: int
    statements: int
    sealed: bool

    @classmethod
    def of(cls, row: SessionRow) -> SessionOut:
        return cls(
            session_id=row.session_id,
            subject=row.subject,
            connection=row.connection,
            client_address=row.client_address,
            started_at=row.started_at,
            ended_at=row.ended_at,
            end_reason=row.end_reason,
            stored_events=row.stored_events,
            statements=row.statements,
            sealed=row.seal is not None,
        )


class SessionPage(BaseModel):
    sessions: list[SessionOut]
    next: str | None = Field(
        None, description="pass as `before` for the next (older) page; null on the last page"
    )


class _EventHead(_FromRecord):
    session_id: str
    seq: int
    at: float
    kind: str
    subject: str
    connection: str
    verdict: str
    hash: str


class EventOut(_EventHead):
    """One recorded event, its content parsed (for replay)."""

    data: dict[str, Any] | None = Field(
        description="the recorded content (null if it is not a JSON object: see /raw and verify)"
    )


_NEXT = Field(
    default=None,
    description="the session goes on: pass this as `after` for its next page "
    "(a page holds up to 16 blocks of up to 1,000 events)",
)


class SessionDetail(BaseModel):
    session: SessionOut
    seal: SealOut | None
    next: int | None = _NEXT
    events: list[EventOut]


class RawEvent(_EventHead):
    """A stored record exactly as kept, for verification: ``hash`` is
    SHA-256 over ``prev_hash``, a newline and ``data`` as given here."""

    data: str
    prev_hash: str


class BlockOut(_FromRecord):
    """A stored block's own columns (what reads select blocks by), which
    no hash covers: verify checks them against the block's events."""

    first_seq: int
    last_seq: int
    first_at: float
    last_at: float
    events: int
    verdicts: str = Field(description="JSON object: verdict -> how many of the block's events")


class SessionRaw(BaseModel):
    session: SessionOut
    seal: SealOut | None
    next: int | None = _NEXT
    blocks: list[BlockOut] = Field(default_factory=list)
    #: (Last: _session_response writes it in chunks.)
    events: list[RawEvent]


class ExportLine(_EventHead):
    """One line of the JSON Lines export."""

    data: dict[str, Any] | None = Field(
        description="the recorded content; statement results only with include_results"
    )


class UnlistedSession(BaseModel):
    session_id: str
    #: "no_row": no sessions row; "other_owner": the row names another
    #: subject or connection than the stored events.
    problem: Literal["no_row", "other_owner"]


class UnlistedSessions(BaseModel):
    sessions: list[UnlistedSession]
    #: More than these exist.
    more: bool


class EventCount(BaseModel):
    count: int


class KeyOut(_FromRecord):
    key_id: str
    algorithm: str
    public_key: str = Field(description="hex raw public key")
    created_at: float


class KeyList(BaseModel):
    keys: list[KeyOut]


# --------------------------------------------------------------------------- context and access


@dataclass(frozen=True)
class _Context:
    store: Store
    validator: TokenValidator
    config: Callable[[], GatewayConfig]
    metrics: Callable[[], str] | None
    approvals: Approvals | None = None


@dataclass(frozen=True)
class Caller:
    """An authenticated reader of trails, with the configuration their
    request is judged under."""

    principal: Principal
    roles: frozenset[str]
    read_own_sessions: bool

    @property
    def excluded_subject(self) -> str | None:
        """Whose sessions this reader never sees: their own, by default."""
        return None if self.read_own_sessions else self.principal.subject


async def _context(request: Request) -> _Context:
    return cast(_Context, request.app.state.hoopfast)


ContextDep = Annotated[_Context, Depends(_context)]

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from the identity provider: the same one the gateway accepts as "
    "the PostgreSQL password.",
)


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer"
    if error is not None:
        challenge += f' error="invalid_token", error_description="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


async def _principal(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """Whoever presents a valid bearer token (401 otherwise)."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("a bearer token is required (Authorization: Bearer TOKEN)")
    try:
        return context.validator.validate(credentials.credentials)
    except TokenError as e:
        log.info("API token refused: %s", e)  # the category and detail, never the token
        raise _unauthorized(f"invalid token: {e.category}", e.category) from None


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def _auditor(context: ContextDep, principal: PrincipalDep) -> Caller:
    """The caller, if they may read trails at all (401 / 403 otherwise)."""
    config = context.config()
    roles = roles_of(principal, config)
    readers = roles.intersection(config.audit.roles)
    if not readers:
        if not config.audit.roles:
            detail = "nobody may read session trails: the configuration names no audit.roles"
        else:
            detail = (
                f"{principal.subject} holds none of the roles that may read session trails "
                f"({', '.join(sorted(config.audit.roles))})"
            )
        raise HTTPException(403, detail)
    return Caller(principal, frozenset(readers), config.audit.read_own_sessions)


AuditorDep = Annotated[Caller, Depends(_auditor)]


# --------------------------------------------------------------------------- parameters

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
#: An ISO-8601 basic date (20261101): fromisoformat reads it; as Unix
#: seconds it would be a moment in 1970 that nobody means.
_BASIC_DATE = re.compile(r"^\d{8}$")


#: 9999-12-31T23:59:59Z: Unix seconds past it (milliseconds, most likely)
#: are refused rather than read as a year nobody means.
_LAST_SECOND = 253402300799


def parse_time(name: str, value: str | None) -> float | None:
    """ISO-8601 (no zone means UTC) or Unix seconds -> Unix seconds (eight
    digits alone are a date, YYYYMMDD). Raises ValueError with a message fit
    for the person who typed it."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if _NUMBER.match(text) and not _BASIC_DATE.match(text):
            seconds = float(text)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    except (ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds):
        shown = text if len(text) <= 64 else text[:61] + "..."
        raise ValueError(
            f"{name}: not a time: {shown!r} (use ISO-8601 such as 2024-05-01T12:00:00Z, "
            "where no zone means UTC, or Unix seconds)"
        )
    if abs(seconds) > _LAST_SECOND:
        raise ValueError(f"{name}: {text} Unix seconds is past the year 9999 (milliseconds?)")
    return seconds


def _text(name: str, value: str | None) -> str | None:
    """A filter's text, or None when empty. A NUL is refused here: no
    subject or connection holds one, and a PostgreSQL store cannot even
    compare it (the store would fail, and the caller see an outage)."""
    if value and "\0" in value:
        raise HTTPException(422, f"{name}: a NUL character is not allowed")
    return value or None


def _range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    try:
        start, end = parse_time("since", since), parse_time("until", until)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    if start is not None and end is not None and start >= end:
        raise HTTPException(422, "since must be before until")
    return start, end


def _cursor(started_at: float, session_id: str) -> str:
    raw = json.dumps([started_at, session_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(text: str) -> tuple[float, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        started_at, session_id = value
        if (
            isinstance(started_at, int | float)
            and math.isfinite(started_at)
            and isinstance(session_id, str)
            and session_id.isprintable()
        ):
            session_id.encode("utf-8")  # (a lone surrogate: ValueError)
            return float(started_at), session_id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise HTTPException(422, "before: not a cursor from a previous page's `next`")


Since = Annotated[
    str | None,
    Query(description="from this time on (ISO-8601, no zone = UTC, or Unix seconds)"),
]
Until = Annotated[
    str | None, Query(description="before this time (ISO-8601, no zone = UTC, or Unix seconds)")
]
User = Annotated[str | None, Query(description="only sessions of this person (subject)")]
ConnectionName = Annotated[str | None, Query(description="only this gateway connection")]
Verdict = Annotated[
    str | None, Query(description="only events with this verdict (allow, deny, review)")
]


def _parsed(data: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except ValueError:  # (orjson's JSONDecodeError is one)
        # The recorder's json fallback writes a lone surrogate as an escape
        # (\udcff, from a token's claims), which orjson refuses.
        try:
            value = json.loads(data)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _event_head(event: EventRecord) -> dict[str, Any]:
    """The _EventHead fields of a record, as a plain dict (the export builds
    its lines without a model per event: it streams millions)."""
    return {name: getattr(event, name) for name in _EventHead.model_fields}


def _event_out(event: EventRecord) -> EventOut:
    return EventOut(**_event_head(event), data=_parsed(event.data))


def _export_line(event: EventRecord, include_results: bool) -> bytes:
    data = _parsed(event.data)
    if data is not None and not include_results:
        data.pop("results", None)
    line = {**_event_head(event), "data": data}
    try:
        # orjson: the export's cost per event is mostly this line (3x faster
        # than json.dumps, same text: compact, UTF-8 as is).
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    except (TypeError, orjson.JSONEncodeError):
        # What orjson refuses the json module writes: an integer past 64
        # bits in stored data, or a lone surrogate (JSON's "\udcff", which
        # the recorder writes for text that was not UTF-8), which has no
        # UTF-8 and is written as an escape, as it is stored.
        return (json.dumps(line, separators=(",", ":")) + "\n").encode()


class ExportAborted(Exception):
    """The store failed in the middle of an export. The stream has started,
    so the status cannot change any more: the last line says what happened
    and the response is cut off (no final chunk), so no client can take the
    partial export for a complete one."""


async def _export(
    store: Store, where: EventFilter, first: list[EventRecord], include_results: bool
) -> AsyncIterator[bytes]:
    page = first
    while page:
        yield b"".join(_export_line(event, include_results) for event in page)
        if len(page) < EXPORT_PAGE:
            return
        last = page[-1]
        try:
            page = await store.events(
                where, limit=EXPORT_PAGE, after=(last.at, last.session_id, last.seq)
            )
        except StoreError as e:
            log.warning("export aborted: %s", e)
            yield (json.dumps({"error": f"export aborted: {e}"}) + "\n").encode()
            raise ExportAborted(str(e)) from e


async def _readable_session(context: _Context, caller: Caller, session_id: str) -> SessionRow:
    # (A NUL is in no session id, and a PostgreSQL store cannot look it up.)
    row = None if "\0" in session_id else await context.store.session(session_id)
    if row is None:
        raise HTTPException(404, f"no session {session_id!r}")
    if caller.excluded_subject is not None and row.subject == caller.excluded_subject:
        raise HTTPException(
            403,
            "segregation of duties: nobody reads the trail of a session they ran "
            "themselves (audit.read_own_sessions is off)",
        )
    return row


#: Blocks per page of a session (replay, verify): memory stays flat however
#: long the session (a block holds up to blocks.BLOCK_EVENTS events).
SESSION_PAGE_BLOCKS = 16

After = Annotated[
    int | None,
    Query(
        # (An event's seq: past 64 bits no store can compare it; a 422, not
        # the 500 of an integer the database refuses.)
        ge=-(1 << 63),
        le=(1 << 63) - 1,
        description="the `next` of the previous page (omit for the first page)",
    ),
]


async def _session_page(
    context: _Context, caller: Caller, session_id: str, after: int | None
) -> tuple[SessionRow, list[tuple[BlockHead, list[EventRecord]]], int | None]:
    """A session the caller may read, one page of its blocks with their
    events, and the cursor of the next page (None: this is the last)."""
    row = await _readable_session(context, caller, session_id)
    try:
        page = await context.store.session_page(session_id, after, SESSION_PAGE_BLOCKS)
    except (ValueError, TypeError, OverflowError) as e:
        # A stored value that is not what its column holds (text where a
        # number was written): altered data. Answered as this session's
        # error, so that `audit verify` reports it and goes on (an
        # exception let through also drops the client's connection).
        raise HTTPException(
            500, f"a stored record of this session cannot be read: {type(e).__name__}"
        ) from None
    following = page[-1][0].first_seq if len(page) == SESSION_PAGE_BLOCKS else None
    return row, page, following


# --------------------------------------------------------------------------- routes

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an invalid or expired one"},
    403: {"model": Problem, "description": "the caller holds no role that may read trails"},
    422: {"model": Problem, "description": "a parameter is not valid"},
    503: {"model": Problem, "description": "the state store is unavailable"},
}

audit = APIRouter(prefix="/v1/audit", tags=["audit"], responses=_ERRORS)
service = APIRouter(tags=["service"])


@service.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health()


@service.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    responses={
        200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "text exposition format"},
        404: {"model": Problem, "description": "metrics are not enabled"},
    },
)
async def metrics(context: ContextDep) -> PlainTextResponse:
    if context.metrics is None:
        raise HTTPException(404, "metrics are not enabled")
    return PlainTextResponse(context.metrics(), media_type=METRICS_CONTENT_TYPE)


@audit.get("/sessions", response_model=SessionPage, summary="List sessions, newest first")
async def list_sessions(
    context: ContextDep,
    caller: AuditorDep,
    since: Since = None,
    until: Until = None,
    user: User = None,
    connection: ConnectionName = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="sessions per page")] = 100,
    before: Annotated[
        str | None, Query(description="the `next` cursor of the previous page")
    ] = None,
) -> SessionPage:
    start, end = _range(since, until)
    where = EventFilter(
        since=start,
        until=end,
        subject=_text("user", user),
        connection=_text("connection", connection),
        exclude_subject=caller.excluded_subject,
    )
    after = _parse_cursor(before) if before else None
    rows = await context.store.sessions(where, limit=limit, before=after)
    following = _cursor(rows[-1].started_at, rows[-1].session_id) if len(rows) == limit else None
    return SessionPage(sessions=[SessionOut.of(r) for r in rows], next=following)


@audit.get(
    "/sessions/{session_id}",
    response_model=SessionDetail,
    summary="One session with its seal and its events, a page at a time, for replay",
    responses={404: {"model": Problem, "description": "no such session"}},
)
async def get_session(
    context: ContextDep, caller: AuditorDep, session_id: str, after: After = None
) -> Response:
    row, page, following = await _session_page(context, caller, session_id, after)
    return await _session_response(
        SessionDetail(
            session=SessionOut.of(row), seal=SealOut.of(row.seal), next=following, events=[]
        ),
        lambda: [_event_out(e) for _, events in page for e in events],
        _EVENTS,
    )


@audit.get(
    "/sessions/{session_id}/raw",
    response_model=SessionRaw,
    summary="One session's stored records exactly as kept, a page at a time, for verification",
    responses={404: {"model": Problem, "description": "no such session"}},
)
async def get_session_raw(
    context: ContextDep, caller: AuditorDep, session_id: str, after: After = None
) -> Response:
    row, page, following = await _session_page(context, caller, session_id, after)
    return await _session_response(
        SessionRaw(
            session=SessionOut.of(row),
            seal=SealOut.of(row.seal),
            next=following,
            blocks=[BlockOut.model_validate(head) for head, _ in page],
            events=[],
        ),
        lambda: [RawEvent.model_validate(e) for _, events in page for e in events],
        _RAW_EVENTS,
    )


#: Events written as JSON per call: each call holds the GIL throughout.
_JSON_CHUNK = 1000
_EVENTS = TypeAdapter(list[EventOut])
_RAW_EVENTS = TypeAdapter(list[RawEvent])


_HEAD: TypeAdapter[Any] = TypeAdapter(Any)


def _json_bytes(value: Any, adapter: TypeAdapter[Any]) -> bytes:
    """``value`` as compact JSON. Text holding a lone surrogate (stored as
    JSON's "\udcff" escape: the recorder writes one for text that was not
    UTF-8) has no UTF-8, which pydantic's writer refuses: such a page is
    written by the json module, every non-ASCII character escaped."""
    try:
        return adapter.dump_json(value)
    except PydanticSerializationError:
        plain = adapter.dump_python(value, mode="json")
        return json.dumps(plain, separators=(",", ":")).encode()


async def _session_response(
    head: BaseModel, events: Callable[[], list[Any]], adapter: TypeAdapter[Any]
) -> Response:
    """A whole session (``head`` with its ``events``, the model's last
    field), built and written as JSON in a worker thread, a thousand events
    per call: on the event loop, which also relays the data path, a session
    of 100,000 events stalled every client for seconds. (A response is one
    page of the session: its memory is bounded by SESSION_PAGE_BLOCKS.)"""

    def body() -> bytes:
        with collector_paused():
            items = events()
        start = _json_bytes(head, _HEAD)
        assert start.endswith(b'"events":[]}')
        pieces = [start[:-2]]
        for i in range(0, len(items), _JSON_CHUNK):
            if i:
                pieces.append(b",")
            pieces.append(_json_bytes(items[i : i + _JSON_CHUNK], adapter)[1:-1])
        pieces.append(b"]}")
        return b"".join(pieces)

    content = await asyncio.get_running_loop().run_in_executor(None, body)
    return Response(content, media_type="application/json")


def _event_filter(
    caller: Caller,
    since: str | None,
    until: str | None,
    user: str | None,
    connection: str | None,
    verdict: str | None,
) -> EventFilter:
    start, end = _range(since, until)
    return EventFilter(
        since=start,
        until=end,
        subject=_text("user", user),
        connection=_text("connection", connection),
        verdict=_text("verdict", verdict),
        exclude_subject=caller.excluded_subject,
    )


@audit.get(
    "/events",
    response_class=StreamingResponse,
    summary="Export events as JSON Lines, streamed",
    description="Every matching event once, in (at, session_id, seq) order, one JSON object "
    "per line (see ExportLine). The caller's own sessions are left out unless "
    "audit.read_own_sessions. Should the store fail mid-way, the last line is "
    '{"error": ...} and the response is cut off.',
    responses={
        200: {
            "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/ExportLine"}}},
            "description": "JSON Lines",
        }
    },
)
async def export_events(
    context: ContextDep,
    caller: AuditorDep,
    since: Since = None,
    until: Until = None,
    user: User = None,
    connection: ConnectionName = None,
    verdict: Verdict = None,
    include_results: Annotated[
        bool, Query(description="include the recorded result rows of statements")
    ] = False,
) -> StreamingResponse:
    where = _event_filter(caller, since, until, user, connection, verdict)
    # The first page is read before the response starts, so a store that is
    # down answers 503 rather than an empty 200.
    first = await context.store.events(where, limit=EXPORT_PAGE)
    return StreamingResponse(
        _export(context.store, where, first, include_results),
        media_type=NDJSON,
        headers={"Cache-Control": "no-store"},
    )


@audit.get("/events/count", response_model=EventCount, summary="How many events an export has")
async def count_events(
    context: ContextDep,
    caller: AuditorDep,
    since: Since = None,
    until: Until = None,
    user: User = None,
    connection: ConnectionName = None,
    verdict: Verdict = None,
) -> EventCount:
    where = _event_filter(caller, since, until, user, connection, verdict)
    return EventCount(count=await context.store.count_events(where))


#: Unlisted sessions one answer names at most (each is a broken session).
UNLISTED_LIMIT = 1000


@audit.get(
    "/unlisted",
    response_model=UnlistedSessions,
    summary="Sessions whose stored events no session row lists as theirs (verify)",
)
async def unlisted_sessions(
    context: ContextDep, caller: AuditorDep, since: Since = None, until: Until = None
) -> UnlistedSessions:
    """Sessions with events in the range whose row is missing, or names
    another subject or connection than the events: listings (and so
    verify) select sessions by their rows, and segregation of duties by
    the row's subject, so an altered row would hide a session from them
    while its events still export. Only ids: no content."""
    start, end = _range(since, until)
    found = await context.store.unlisted_sessions(start, end, UNLISTED_LIMIT + 1)
    return UnlistedSessions(
        sessions=[
            UnlistedSession.model_validate({"session_id": s, "problem": p})
            for s, p in found[:UNLISTED_LIMIT]
        ],
        more=len(found) > UNLISTED_LIMIT,
    )


@audit.get("/keys", response_model=KeyList, summary="The public keys that verify seals")
async def signing_keys(context: ContextDep, caller: AuditorDep) -> KeyList:
    keys: dict[str, SigningKey] = await context.store.signing_keys()
    return KeyList(
        keys=[
            KeyOut.model_validate(k)
            for k in sorted(keys.values(), key=lambda k: (k.created_at, k.key_id))
        ]
    )


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=503)


def create_app(
    store: Store,
    validator: TokenValidator,
    config: Callable[[], GatewayConfig],
    metrics: Callable[[], str] | None = None,
    approvals: Approvals | None = None,
) -> FastAPI:
    """The admin API over an opened store. ``config`` is called on every
    request: the gateway swaps its configuration on reload. Without
    ``approvals`` the review routes answer 503."""
    # The review routes use this module's context and authentication.
    from hoopfast.api import reviews

    app = FastAPI(
        title="hoopfast admin API",
        version=__version__,
        description="Session trails for auditors, reviews and access requests, metrics and "
        "health of a hoopfast gateway. Everything under /v1 needs a bearer token from the "
        "identity provider.",
    )
    app.state.hoopfast = _Context(store, validator, config, metrics, approvals)
    app.include_router(service)
    app.include_router(audit)
    reviews.install(app)
    app.add_exception_handler(StoreError, _store_unavailable)
    # The export's line model is referenced from the NDJSON response; make
    # sure the schema carries it although no route returns it as JSON.
    openapi = app.openapi

    def with_export_line() -> dict[str, Any]:
        schema = openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ExportLine", ExportLine.model_json_schema())
        return schema

    app.openapi = with_export_line  # type: ignore[method-assign]
    return app
