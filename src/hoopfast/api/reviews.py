"""The admin API's review routes: statement reviews and access requests.

Any valid bearer token may call them; what the caller sees and may decide
is the approvals service's business (:mod:`hoopfast.approvals.service`):
the requester, the connection's approvers and break-glass holders, and
auditors see a review, everybody else gets 404 as if it did not exist; only
approvers approve, never their own requests. A refusal is the service's
:class:`~hoopfast.approvals.ReviewError`, answered with its status and
message.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hoopfast.api.app import (
    ContextDep,
    PrincipalDep,
    Problem,
    _cursor,
    _parse_cursor,
)
from hoopfast.approvals import Approvals, ReviewError
from hoopfast.approvals.service import MAX_REASON
from hoopfast.config import parse_duration
from hoopfast.identity.principal import Principal
from hoopfast.store.records import (
    ACCESS_REVIEW,
    STATEMENT_REVIEW,
    STATUSES,
    ReviewFilter,
    ReviewRecord,
)

__all__ = ["install", "router"]

log = logging.getLogger(__name__)

#: What a review id looks like (hoopfast.approvals.service.new_review_id).
REVIEW_ID = re.compile(r"^R-[0-9a-f]{16}$")
#: Longest connection, role or person name accepted.
MAX_NAME = 200

Kind = Literal["statement", "access"]
Status = Literal["pending", "approved", "used", "rejected", "withdrawn", "expired", "revoked"]
assert set(get_args(Kind)) == {STATEMENT_REVIEW, ACCESS_REVIEW}
assert set(get_args(Status)) == set(STATUSES)


# --------------------------------------------------------------------------- models


def _printable(value: str, name: str) -> str:
    """Refuse control characters (NUL above all: PostgreSQL text cannot
    hold it), lone surrogates and bidirectional overrides; newlines and tabs
    are fine in a reason."""
    for ch in value:
        if ch in "\n\t":
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs") or unicodedata.bidirectional(ch) in (
            "LRE",
            "RLE",
            "LRO",
            "RLO",
            "PDF",
            "LRI",
            "RLI",
            "FSI",
            "PDI",
        ):
            raise ValueError(f"{name} must not contain control characters (U+{ord(ch):04X})")
    return value


def _name(value: str | None, name: str) -> str | None:
    """A query parameter naming something: no control characters at all."""
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME or not value.isprintable():
        raise HTTPException(422, f"{name}: not a valid name")
    return value


class DecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    actor: str = Field(description='who ("" for the gateway, e.g. an expiry)')
    action: str = Field(description="approve, reject, revoke, withdraw, force or expire")
    reason: str
    at: float = Field(description="Unix seconds")


class ReviewOut(BaseModel):
    """A review: of one statement, or of a request for a role for a while."""

    id: str = Field(description="R- and 16 hex digits")
    kind: Kind
    status: Status
    requester: str
    connection: str
    created_at: float = Field(description="Unix seconds")
    expires_at: float = Field(
        description="until then a pending review may be decided and an approved statement run"
    )
    statement: str = Field(description="statement reviews: the exact text; access: empty")
    statement_hash: str = Field(
        description="SHA-256 (hex) of what the approval binds: the UTF-8 text, and the values"
        " bound to it when they came with it"
    )
    parameters: list[str | None] | None = Field(
        description="extended protocol: the values bound to the statement, as approvers see"
        " them (text through the detectors, binary as hex), which the approval binds; null"
        " when none came with it (none, or bound later: then not bound by the approval)"
    )
    role: str = Field(description="access requests: the role asked for")
    duration: float = Field(description="access requests: the window asked for, in seconds")
    granted_until: float | None = Field(description="access granted: until then (Unix seconds)")
    reason: str
    session_id: str
    client_address: str
    rule: str = Field(description="the policy rule that asked for the review")
    mode: str = Field(description="statement reviews: wait or deferred")
    approvers: list[str] = Field(description="roles whose holders may approve")
    min_approvals: int = Field(description="distinct approvers needed")
    approvals: int = Field(description="distinct people who approved so far")
    decisions: list[DecisionOut]
    decided_at: float | None
    used_at: float | None
    break_glass: bool = Field(description="force-approved by a break-glass role holder")

    @classmethod
    def of(cls, r: ReviewRecord) -> ReviewOut:
        approved = {d.actor for d in r.decisions if d.action in ("approve", "force")}
        return cls(
            id=r.review_id,
            kind=r.kind,  # type: ignore[arg-type]
            status=r.status,  # type: ignore[arg-type]
            requester=r.requester,
            connection=r.connection,
            created_at=r.created_at,
            expires_at=r.expires_at,
            statement=r.statement,
            statement_hash=r.statement_hash,
            parameters=json.loads(r.parameters) if r.parameters else None,
            role=r.role,
            duration=r.duration,
            granted_until=r.granted_until,
            reason=r.reason,
            session_id=r.session_id,
            client_address=r.client_address,
            rule=r.rule,
            mode=r.mode,
            approvers=list(r.approvers),
            min_approvals=r.min_approvals,
            approvals=len(approved),
            decisions=[DecisionOut.model_validate(d) for d in r.decisions],
            decided_at=r.decided_at,
            used_at=r.used_at,
            break_glass=r.break_glass,
        )


class ReviewPage(BaseModel):
    reviews: list[ReviewOut]
    next: str | None = Field(
        None, description="pass as `before` for the next (older) page; null on the last page"
    )


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        "",
        max_length=MAX_REASON,
        description="why (required to reject and to force; optional otherwise)",
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        return _printable(value, "reason")


def _number_or_duration(schema: dict[str, Any]) -> None:
    schema.pop("type", None)
    schema["anyOf"] = [{"type": "number"}, {"type": "string", "examples": ["30m", "2h"]}]


class AccessRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection: str = Field(min_length=1, max_length=MAX_NAME)
    role: str = Field(min_length=1, max_length=MAX_NAME, description="a requestable role")
    duration: float = Field(
        description='the window: seconds, or a duration such as "30m", "2h"',
        json_schema_extra=_number_or_duration,
    )
    reason: str = Field(max_length=MAX_REASON, description="why (required)")

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a number of seconds or a duration such as 30m")
        if isinstance(value, str):
            return parse_duration(value)  # ValueError: 422 with its message
        return value

    @field_validator("connection", "role", "reason")
    @classmethod
    def _text(cls, value: str, info: Any) -> str:
        return _printable(value, info.field_name)


# --------------------------------------------------------------------------- dependencies


async def _approvals(context: ContextDep) -> Approvals:
    if context.approvals is None:
        raise HTTPException(503, "approvals are not enabled")
    return context.approvals


ApprovalsDep = Annotated[Approvals, Depends(_approvals)]


def _review_id(review_id: str) -> str:
    if not REVIEW_ID.match(review_id):
        shown = review_id if len(review_id) <= 40 and review_id.isprintable() else "?"
        raise HTTPException(404, f"review {shown!r} does not exist")
    return review_id


ReviewId = Annotated[str, Depends(_review_id)]


async def _review_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReviewError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


# --------------------------------------------------------------------------- routes

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an invalid or expired one"},
    422: {"model": Problem, "description": "a parameter is not valid"},
    503: {"model": Problem, "description": "the state store is unavailable, or no approvals"},
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "a reason is missing, or the request is not valid"},
    403: {"model": Problem, "description": "the caller may not do this (segregation of duties)"},
    404: {"model": Problem, "description": "no such review, or not one the caller may see"},
    409: {"model": Problem, "description": "already decided, or decided twice by one person"},
    410: {"model": Problem, "description": "the review expired"},
}

router = APIRouter(tags=["reviews"], responses=_ERRORS)

StatusQuery = Annotated[
    list[Status] | None,
    Query(description="only these statuses (repeatable; default: all)"),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="reviews per page")]
Before = Annotated[str | None, Query(description="the `next` cursor of the previous page")]
ConnectionQuery = Annotated[str | None, Query(description="only this gateway connection")]
RequesterQuery = Annotated[str | None, Query(description="only requests of this person")]


async def _page(
    approvals: Approvals,
    principal: Principal,
    where: ReviewFilter,
    limit: int,
    before: str | None,
) -> ReviewPage:
    after = _parse_cursor(before) if before else None
    found, following = await approvals.list(principal, where, limit=limit, before=after)
    return ReviewPage(
        reviews=[ReviewOut.of(r) for r in found],
        next=None if following is None else _cursor(*following),
    )


@router.get(
    "/v1/reviews",
    response_model=ReviewPage,
    summary="List the reviews the caller may see, newest first",
)
async def list_reviews(
    principal: PrincipalDep,
    approvals: ApprovalsDep,
    status: StatusQuery = None,
    kind: Annotated[Kind | None, Query(description="statement or access")] = None,
    connection: ConnectionQuery = None,
    requester: RequesterQuery = None,
    limit: Limit = 100,
    before: Before = None,
) -> ReviewPage:
    where = ReviewFilter(
        kind=kind,
        statuses=tuple(status or ()),
        connection=_name(connection, "connection"),
        requester=_name(requester, "requester"),
    )
    return await _page(approvals, principal, where, limit, before)


@router.get(
    "/v1/reviews/{review_id}",
    response_model=ReviewOut,
    summary="One review with its decisions",
    responses={404: _REFUSALS[404]},
)
async def get_review(
    principal: PrincipalDep, approvals: ApprovalsDep, review_id: ReviewId
) -> ReviewOut:
    return ReviewOut.of(await approvals.show(principal, review_id))


_ACTIONS = {
    "approve": (
        "Approve a review",
        "Counts once per person; the review is approved when min_approvals distinct approvers "
        "have approved. Never one's own request.",
    ),
    "reject": ("Reject a review (reason required)", "Any one approver rejects it for good."),
    "revoke": (
        "Revoke a pending review, an unused statement approval or an access grant in force",
        "Approvers and break-glass holders; the requester withdraws instead.",
    ),
    "withdraw": ("Withdraw one's own pending request", "Only the requester."),
    "force": (
        "Force-approve alone (break-glass; reason required)",
        "Only holders of the connection's break-glass roles; the review is flagged.",
    ),
}


def _decision_route(action: str) -> None:
    summary, description = _ACTIONS[action]

    async def decide(
        principal: PrincipalDep,
        approvals: ApprovalsDep,
        review_id: ReviewId,
        body: Annotated[DecisionIn | None, Body()] = None,
    ) -> ReviewOut:
        reason = body.reason if body is not None else ""
        return ReviewOut.of(await approvals.decide(review_id, principal, action, reason))

    router.add_api_route(
        f"/v1/reviews/{{review_id}}/{action}",
        decide,
        methods=["POST"],
        name=f"{action}_review",
        response_model=ReviewOut,
        summary=summary,
        description=description,
        responses=_REFUSALS,
    )


for _action in _ACTIONS:
    _decision_route(_action)


@router.post(
    "/v1/access-requests",
    response_model=ReviewOut,
    status_code=201,
    summary="Ask for a role on a connection for a while",
    responses={k: v for k, v in _REFUSALS.items() if k in (400, 403, 404, 409)},
)
async def request_access(
    principal: PrincipalDep, approvals: ApprovalsDep, body: AccessRequestIn
) -> ReviewOut:
    review = await approvals.request_access(
        principal, body.connection, body.role, body.duration, body.reason
    )
    return ReviewOut.of(review)


@router.get(
    "/v1/access-requests",
    response_model=ReviewPage,
    summary="List the access requests the caller may see, newest first",
)
async def list_access_requests(
    principal: PrincipalDep,
    approvals: ApprovalsDep,
    status: StatusQuery = None,
    connection: ConnectionQuery = None,
    requester: RequesterQuery = None,
    limit: Limit = 100,
    before: Before = None,
) -> ReviewPage:
    return await list_reviews(
        principal, approvals, status, "access", connection, requester, limit, before
    )


def install(app: FastAPI) -> None:
    """Add the review routes and the answer to a ReviewError."""
    app.include_router(router)
    app.add_exception_handler(ReviewError, _review_error)
