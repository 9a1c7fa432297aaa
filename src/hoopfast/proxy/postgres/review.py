"""A statement the policy sends to review, held in the session until a
second person decides (hoopfast.approvals).

The session hands the statement here and puts its client pump on hold (the
message, and everything the client pipelined after it, waits unprocessed;
hoopfast.core Pump.hold). A task then asks the approvals service:

1. an approval of exactly this text for this person on this connection that
   is not used yet runs it now (used up: one approval, one run);
2. otherwise a review is opened (or the pending one for the same text is
   found). In ``wait`` mode the client gets a NoticeResponse at once and the
   statement runs when approved, or fails when rejected, revoked, expired or
   not decided within ``wait_timeout``; a CancelRequest withdraws the review.
   In ``deferred`` mode it fails at once, naming the review; re-sent after
   approval it runs (step 1).

Whatever the outcome, the session replays the held message through its
normal path with the outcome as the verdict (:meth:`PgSession.release_review`),
so the statement is judged again under the current policy, recorded with the
review that allowed or refused it, and a refusal keeps the protocol in step
exactly as any refusal does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from hoopfast.approvals import Approvals, ReviewError
from hoopfast.config import Approvals as ApprovalsConfig
from hoopfast.core import shown_parameter
from hoopfast.policy.guard import Verdict
from hoopfast.proxy.postgres import messages as m
from hoopfast.store import StoreError
from hoopfast.store.records import (
    EXPIRED,
    REJECTED,
    REVOKED,
    USED,
    WITHDRAWN,
    ReviewRecord,
)

if TYPE_CHECKING:
    from hoopfast.proxy.postgres.session import PgSession

log = logging.getLogger("hoopfast.session")


def approved(review: ReviewRecord) -> Verdict:
    """The verdict of a statement a review allowed (the trail names it)."""
    by = ", ".join(d.actor for d in review.decisions if d.action in ("approve", "force"))
    how = "force-approved (break-glass)" if review.break_glass else "approved"
    return Verdict("allow", f"review:{review.review_id}", f"{how} by {by}")


def refused(review: ReviewRecord, rule: str) -> Verdict:
    """The verdict of a held statement whose review did not approve it."""
    rid = review.review_id
    last = review.decisions[-1] if review.decisions else None
    why = f": {last.reason}" if last is not None and last.reason else ""
    if review.status == REJECTED:
        text = f"review {rid} was rejected by {last.actor if last else 'an approver'}{why}"
    elif review.status == REVOKED:
        text = f"review {rid} was revoked by {last.actor if last else 'an approver'}{why}"
    elif review.status == EXPIRED:
        text = f"review {rid} expired before it was approved{why}"
    elif review.status == WITHDRAWN:
        text = f"review {rid} was withdrawn{why}"
    elif review.status == USED:
        text = f"review {rid} was approved for one run, which another session used"
    else:
        text = f"review {rid} is {review.status}"
    return Verdict("review", f"review:{rid}", text, hint=f"policy rule {rule}")


def deferred(review: ReviewRecord) -> Verdict:
    approvers = ", ".join(review.approvers)
    return Verdict(
        "review",
        f"review:{review.review_id}",
        f"approval required: review {review.review_id} is pending (approvers: {approvers})",
        hint="Run the identical statement again on this connection once it is approved "
        f"(hoopfast review show {review.review_id}); it then runs once.",
    )


def unavailable(error: Exception) -> Verdict:
    return Verdict(
        "review",
        "review:unavailable",
        f"approval required, but approvals cannot be checked now: {error}",
        "58000",
        hint="Try again later.",
    )


CANCELLED = "canceling statement due to user request"


def bound_values(
    bind: m.Bind, codec: str, mask_text: Callable[[str], str], types: list[int] | None = None
) -> tuple[str, str]:
    """What an approval binds of a Bind (the SHA-256 of its formats and
    values, as sent) and how approvers see the values (a JSON list, each
    value as the trail shows it: core.shown_parameter, with the parameter
    ``types`` its Parse declared; NULL as null)."""
    types = types or []
    shown = [
        None
        if raw is None
        else shown_parameter(raw, fmt, codec, mask_text, types[i] if i < len(types) else 0)
        for i, (fmt, raw) in enumerate(bind.values)
    ]
    if not bind.values:
        return "", ""  # (nothing bound: the text alone)
    digest = hashlib.sha256(bind.values_section).hexdigest()
    return digest, json.dumps(shown, ensure_ascii=False)


#: A reason for the approvers, given in a comment of the statement:
#: ``/* reason: ticket OPS-12 */ DELETE ...`` or ``-- reason: ...``.
_REASON = re.compile(r"(?:/\*|--)\s*reason:\s*(.*?)\s*(?:\*/|$)", re.IGNORECASE | re.MULTILINE)


def reason_in(sql: str) -> str:
    found = _REASON.search(sql)
    return found.group(1) if found else ""


class ReviewHold:
    """The one statement a session holds for review (a session holds at
    most one at a time: everything after it waits behind it)."""

    def __init__(
        self,
        session: PgSession,
        approvals: Approvals,
        settings: ApprovalsConfig,
        sql: str,
        verdict: Verdict,
    ) -> None:
        self.session = session
        self.approvals = approvals
        self.settings = settings
        self.sql = sql
        self.verdict = verdict
        self.review: ReviewRecord | None = None
        #: The digest of the values bound to a held Parse ("": none known).
        self.values = ""
        self._cancel_requested = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> bool:
        """The client's CancelRequest: withdraw and fail the statement.
        False when there is nothing to cancel here any more."""
        if self.task.done():
            return False
        self._cancel_requested = True
        self.task.cancel()
        return True

    async def close(self) -> None:
        """The session is ending: withdraw a pending review."""
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        s = self.session
        assert s.principal is not None
        subject = s.principal.subject
        try:
            outcome = await self._decide(subject)
        except asyncio.CancelledError:
            if self.review is not None:
                reason = "cancelled by the client" if self._cancel_requested else "session ended"
                with contextlib.suppress(StoreError, ReviewError):
                    await self.approvals.withdraw(self.review.review_id, subject, reason)
            if not self._cancel_requested:
                raise
            rule = f"review:{self.review.review_id}" if self.review else "review"
            outcome = Verdict("review", rule, CANCELLED, "57014")
        except (StoreError, ReviewError) as e:
            log.error("session %s: approvals unavailable: %s", s.id, e)
            outcome = unavailable(e)
        s.release_review(outcome, self.values)

    async def _decide(self, subject: str) -> Verdict:
        s = self.session
        # (Run as a task: the client pump has put what followed the held
        # message on hold by now, so the Bind of a held Parse is there.)
        self.values, parameters = s.held_values()
        used = await self.approvals.consume(subject, s.connection_name, self.sql, self.values)
        if used is not None:
            if not used.parameters:
                self.values = ""  # (approved without the values: none bound)
            return approved(used)
        assert s.principal is not None
        opening = asyncio.ensure_future(
            self.approvals.request_statement(
                s.principal,
                s.connection_name,
                self.sql,
                rule=self.verdict.rule,
                reason=reason_in(self.sql),
                session_id=s.id,
                client_address=s.client_address,
                values=self.values,
                parameters=parameters,
            )
        )
        try:
            review = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Cancelled while the review was being stored: let that finish,
            # so _run can withdraw it (no pending review without a session).
            with contextlib.suppress(Exception):
                self.review = await opening
            raise
        self.review = review
        if self.settings.mode == "deferred":
            return deferred(review)
        approvers = ", ".join(review.approvers)
        s.notice(
            f"approval required: review {review.review_id}, waiting; approvers: {approvers}",
            hint=f"{self.verdict.message}. Cancel the query to withdraw the request.",
        )
        decided, ours = await self.approvals.wait(review.review_id, self.settings.wait_timeout)
        if ours:
            return approved(decided)
        return refused(decided, self.verdict.rule)
