"""Reviews: a second person between intent and execution.

A review asks for one of two things: to run one statement the policy sent to
review (``statement``), or to hold a role on a connection for a while
(``access``; the role ``unmasked`` shows masked values raw). It lives in the
state store, so every gateway replica sees the same reviews, and every
change is a compare-and-swap on its version: two approvers (or two replicas)
acting at once cannot both win, and a change lost to a race is retried from
the fresh state, never blindly rewritten.

The segregation-of-duties rules are all here, in :meth:`Approvals.decide`
and :meth:`Approvals.request_access`, checked against the configuration of
the moment (it reloads):

* only holders of the connection's approver roles approve or reject, and
  never their own requests, whatever groups they hold;
* an approval needs ``min_approvals`` distinct people; approving twice
  counts once and is refused;
* a statement approval binds the exact text (its SHA-256), the requester
  and the connection, runs once, and expires;
* a break-glass role holder may force-approve alone; the review says so;
* approvers revoke what is pending or approved and not used; the requester
  withdraws their own pending request.

Nothing here blocks: the data path calls :meth:`consume` and
:meth:`request_statement` from a task while the statement is held, and
:meth:`wait` polls the store (a decision made through another replica) and
wakes at once for a decision made through this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from hoopfast.approvals.notify import NO_NOTIFIER, Notifier
from hoopfast.config import UNMASKED_ROLE, GatewayConfig
from hoopfast.config import Approvals as ApprovalsConfig
from hoopfast.identity.principal import Principal
from hoopfast.masking.statement_text import shown_statement_text
from hoopfast.policy.access import roles_of
from hoopfast.store import Store, StoreError
from hoopfast.store.base import ReviewConflict
from hoopfast.store.records import (
    ACCESS_REVIEW,
    APPROVED,
    EXPIRED,
    PENDING,
    REJECTED,
    REVOKED,
    STATEMENT_REVIEW,
    USED,
    WITHDRAWN,
    Decision,
    ReviewFilter,
    ReviewRecord,
)

log = logging.getLogger("hoopfast.approvals")

#: Decisions people make through the API.
ACTIONS = ("approve", "reject", "revoke", "withdraw", "force")
#: Longest reason kept (the rest is cut): reasons go into notifications.
MAX_REASON = 2000
#: Compare-and-swap attempts before giving up (each one a fresh read).
_CAS_ATTEMPTS = 20


class ReviewError(Exception):
    """A refused request about a review; ``status`` is the HTTP status the
    API answers with (400, 403, 404, 409, 410), the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def statement_hash(sql: str, values: str = "") -> str:
    """What an approval binds: SHA-256 of the exact text, as UTF-8, and of
    the values bound to it when they were known (``values``: the digest of
    the Bind's parameters, see hoopfast.proxy.postgres.review)."""
    data = sql.encode("utf-8", "surrogatepass")
    if values:
        data += b"\0" + values.encode()
    return hashlib.sha256(data).hexdigest()


def new_review_id() -> str:
    """``R-`` and 16 random hex digits (64 bits): unguessable, unique across
    replicas, short enough to read out over a call."""
    return "R-" + secrets.token_hex(10)[:16]


class Approvals:
    """The reviews service of one gateway process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], GatewayConfig],
        notifier: Notifier = NO_NOTIFIER,
        *,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._config = config
        self.notifier = notifier
        self.poll_interval = poll_interval
        self._clock = clock
        #: Review id -> event set when this process changes it (a held
        #: statement's waiter wakes at once instead of at the next poll).
        self._changed: dict[str, asyncio.Event] = {}
        #: Active access grants: (subject, connection) -> {role: until}, as
        #: last read from the store, and who wants to hear of changes.
        self._grants: dict[tuple[str, str], dict[str, float]] = {}
        self._grant_listeners: dict[tuple[str, str], set[Callable[[], None]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        #: Set when the store says a review changed: read the grants now.
        self._refresh_soon = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Read the grants in force, then follow them (one query per poll
        interval for the whole process, not per session)."""
        await self._refresh_grants()
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch_grants())
        # Where the store can say so (PostgreSQL: LISTEN/NOTIFY), a decision
        # made through another replica wakes a held statement at once, and
        # grants are read again at once; polling stays as the fallback.
        await self.store.follow_reviews(self._changed_elsewhere)

    def _changed_elsewhere(self, review_id: str) -> None:
        self._wake(review_id)
        self._refresh_soon.set()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.notifier.close()

    def settings_for(self, connection: str) -> ApprovalsConfig | None:
        conn = self._config().connections.get(connection)
        return None if conn is None else conn.approvals

    # -- the data path: statements ---------------------------------------------

    async def consume(
        self, requester: str, connection: str, sql: str, values: str = ""
    ) -> ReviewRecord | None:
        """An approval of exactly this statement (and these values) by this
        person on this connection, approved and not used nor expired, marked
        used (it runs once); None when there is none."""
        now = self._clock()
        # The approval of these values, or one of the text alone (approved
        # without knowing the values: the review said they were not known).
        for known in dict.fromkeys((values, "")):
            for review in await self._statement_reviews(
                requester, connection, sql, known, APPROVED
            ):
                used = await self._use(review, now)
                if used is not None:
                    return used
        return None

    async def _statement_reviews(
        self, requester: str, connection: str, sql: str, values: str, status: str
    ) -> list[ReviewRecord]:
        """Reviews of exactly ``sql`` by this person on this connection in
        ``status`` (found by hash, then compared as the text is shown: a
        collision would have to be found first)."""
        where = ReviewFilter(
            kind=STATEMENT_REVIEW,
            statuses=(status,),
            requester=requester,
            connection=connection,
            statement_hash=statement_hash(sql, values),
        )
        shown = shown_statement_text(sql)
        return [r for r in await self.store.reviews(where, limit=20) if r.statement == shown]

    async def _use(self, review: ReviewRecord, now: float) -> ReviewRecord | None:
        for _ in range(_CAS_ATTEMPTS):
            if review.status != APPROVED:
                return None
            if now >= review.expires_at:
                await self._expire(review, now)
                return None
            used = replace(review, status=USED, used_at=now, version=review.version + 1)
            if await self.store.update_review(used, review.version):
                return used
            fresh = await self.store.review(review.review_id)
            if fresh is None:
                return None
            review = fresh
        return None

    async def pending_statement(
        self, requester: str, connection: str, sql: str, values: str = ""
    ) -> ReviewRecord | None:
        """This person's open review of exactly this statement, if any (a
        re-run while it is pending does not ask twice)."""
        now = self._clock()
        for review in await self._statement_reviews(requester, connection, sql, values, PENDING):
            if now >= review.expires_at:
                await self._expire(review, now)
                continue
            return review
        return None

    async def request_statement(
        self,
        principal: Principal,
        connection: str,
        sql: str,
        *,
        rule: str,
        reason: str,
        session_id: str,
        client_address: str,
        values: str = "",
        parameters: str = "",
    ) -> ReviewRecord:
        """Open a review of ``sql`` (or return the pending one for the same
        text and values) and tell the approvers. ``values``: the digest of
        the values bound to it, ``parameters``: how they are shown (see
        ReviewRecord.parameters); both "" when not known."""
        settings = self._require(connection)
        existing = await self.pending_statement(principal.subject, connection, sql, values)
        if existing is not None:
            return existing
        return await self._open(
            principal,
            connection,
            settings,
            f"rule {rule}",
            kind=STATEMENT_REVIEW,
            # Shown with its secrets replaced (a role's password, a token);
            # the hash, which the approval binds, is over the text as sent.
            statement=shown_statement_text(sql),
            statement_hash=statement_hash(sql, values),
            parameters=parameters,
            reason=_clean_reason(reason),
            session_id=session_id,
            client_address=client_address,
            rule=rule,
            mode=settings.mode,
        )

    async def wait(self, review_id: str, timeout: float) -> tuple[ReviewRecord, bool]:
        """Until the review is decided, then (approved) use it. Returns the
        review and whether the caller used it, so the statement may run now
        (False: refused, or another session waiting on the same review used
        it first). After ``timeout`` a pending review expires. Cancelling the
        caller (the client's CancelRequest, the session ending) leaves the
        review as it is: the caller withdraws it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._changed.setdefault(review_id, asyncio.Event())
        try:
            while True:
                review = await self.store.review(review_id)
                if review is None:
                    raise ReviewError(404, f"review {review_id} does not exist")
                now = self._clock()
                if review.status == PENDING and now >= review.expires_at:
                    return await self._expire(review, now), False
                if review.status == APPROVED and review.kind == STATEMENT_REVIEW:
                    used = await self._use(review, now)
                    if used is not None:
                        return used, True
                    continue  # changed under us: read it again
                if review.status != PENDING:
                    return review, False
                left = deadline - loop.time()
                if left <= 0:
                    return await self._expire(review, now, "not decided in time"), False
                event.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, self.poll_interval)):
                        await event.wait()
        finally:
            self._changed.pop(review_id, None)

    async def withdraw(self, review_id: str, subject: str, reason: str) -> ReviewRecord | None:
        """The requester (or their session, on cancel) takes a review back
        that is pending, or approved and not used; None when it was
        neither."""
        try:
            return await self._change(review_id, Decision(subject, "withdraw", reason, 0.0))
        except ReviewError:
            return None

    # -- people: decisions ------------------------------------------------------

    async def decide(
        self, review_id: str, actor: Principal, action: str, reason: str = ""
    ) -> ReviewRecord:
        """``approve``, ``reject``, ``revoke``, ``force`` (break-glass) or
        ``withdraw`` (the requester), after the segregation-of-duties checks;
        ReviewError says why not."""
        if action not in ACTIONS:
            raise ReviewError(400, f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        reason = _clean_reason(reason)
        if action in ("reject", "force") and not reason:
            raise ReviewError(400, f"{action} needs a reason")
        review = await self.store.review(review_id)
        if review is None:
            raise ReviewError(404, f"review {review_id} does not exist")
        if not self.may_see(actor, review):
            raise ReviewError(404, f"review {review_id} does not exist")
        self._authorise(review, actor, action)
        decided = await self._change(review_id, Decision(actor.subject, action, reason, 0.0))
        log.warning(
            "review %s: %s by %s (reason %r) -> %s",
            review_id,
            action,
            actor.subject,
            reason,
            decided.status,
        )
        return decided

    def _authorise(self, review: ReviewRecord, actor: Principal, action: str) -> None:
        config = self._config()
        roles = roles_of(actor, config)
        settings = self.settings_for(review.connection)
        own = actor.subject == review.requester
        if action == "withdraw":
            if not own:
                raise ReviewError(403, "only the requester withdraws a request")
            return
        if own:
            raise ReviewError(
                403,
                "segregation of duties: you cannot decide on your own request"
                + (" (withdraw it instead)" if action in ("reject", "revoke") else ""),
            )
        if settings is None:
            raise ReviewError(409, f"connection {review.connection!r} has no approvals configured")
        approver = bool(roles.intersection(settings.approvers))
        breaker = bool(roles.intersection(settings.break_glass))
        if action == "force":
            if not breaker:
                raise ReviewError(403, "force-approval needs a break-glass role on this connection")
        elif not (approver or (breaker and action in ("reject", "revoke"))):
            raise ReviewError(
                403,
                f"only holders of {', '.join(settings.approvers)} may {action} reviews on"
                f" connection {review.connection!r}",
            )

    async def _change(self, review_id: str, decision: Decision) -> ReviewRecord:
        """Apply one decision with compare-and-swap, retried from a fresh
        read whenever someone else changed the review first."""
        for _ in range(_CAS_ATTEMPTS):
            review = await self.store.review(review_id)
            if review is None:
                raise ReviewError(404, f"review {review_id} does not exist")
            now = self._clock()
            if review.status == PENDING and now >= review.expires_at:
                await self._expire(review, now)
                raise ReviewError(410, f"review {review_id} expired")
            decision = replace(decision, at=now)
            changed, event = self._apply(review, decision)
            if await self.store.update_review(changed, review.version):
                self._wake(review_id)
                if changed.kind == ACCESS_REVIEW:
                    # Sessions on this replica gain or lose the role now;
                    # other replicas at their next poll.
                    with contextlib.suppress(StoreError):
                        await self._refresh_grants()
                if event:
                    await self.notifier.review_event(event, changed)
                return changed
        raise ReviewError(409, f"review {review_id} is changing too fast; try again")

    def _apply(self, review: ReviewRecord, d: Decision) -> tuple[ReviewRecord, str]:
        """The review after ``d`` (pure: no I/O), and the notification event."""
        action = d.action
        status = review.status
        decisions = (*review.decisions, d)
        bump = review.version + 1
        if action == "withdraw":
            # Pending, or approved and not run yet (the client cancelled as
            # the approval came in: it must not run later unasked).
            if not (status == PENDING or (status == APPROVED and review.kind == STATEMENT_REVIEW)):
                raise ReviewError(
                    409, f"review {review.review_id} is {status}: nothing left to withdraw"
                )
            return replace(
                review, status=WITHDRAWN, decisions=decisions, decided_at=d.at, version=bump
            ), "review.withdrawn"
        if action == "revoke":
            active = status == PENDING or (
                status == APPROVED
                and (review.kind == STATEMENT_REVIEW or (review.granted_until or 0) > d.at)
            )
            if not active:
                raise ReviewError(
                    409, f"review {review.review_id} is {status}: nothing left to revoke"
                )
            return replace(
                review, status=REVOKED, decisions=decisions, decided_at=d.at, version=bump
            ), "review.revoked"
        if status != PENDING:
            raise ReviewError(409, f"review {review.review_id} is already {status}")
        if action == "reject":
            return replace(
                review, status=REJECTED, decisions=decisions, decided_at=d.at, version=bump
            ), "review.rejected"
        if action == "approve" and any(
            x.actor == d.actor and x.action == "approve" for x in review.decisions
        ):
            raise ReviewError(409, f"you have already approved review {review.review_id}")
        approvers = {x.actor for x in decisions if x.action == "approve"}
        forced = action == "force"
        if not forced and len(approvers) < review.min_approvals:
            return replace(review, decisions=decisions, version=bump), ""
        approved = replace(
            review,
            status=APPROVED,
            decisions=decisions,
            decided_at=d.at,
            break_glass=forced,
            version=bump,
        )
        if review.kind == ACCESS_REVIEW:
            approved = replace(approved, granted_until=d.at + review.duration)
        return approved, "review.force_approved" if forced else "review.approved"

    async def _expire(
        self, review: ReviewRecord, now: float, reason: str = "expired"
    ) -> ReviewRecord:
        expired = replace(
            review,
            status=EXPIRED,
            decisions=(*review.decisions, Decision("", "expire", reason, now)),
            decided_at=now,
            version=review.version + 1,
        )
        if await self.store.update_review(expired, review.version):
            self._wake(review.review_id)
            await self.notifier.review_event("review.expired", expired)
            return expired
        fresh = await self.store.review(review.review_id)
        return fresh if fresh is not None else expired

    def _wake(self, review_id: str) -> None:
        event = self._changed.get(review_id)
        if event is not None:
            event.set()

    # -- access requests -------------------------------------------------------

    async def request_access(
        self, principal: Principal, connection: str, role: str, duration: float, reason: str
    ) -> ReviewRecord:
        """Ask for ``role`` on ``connection`` for ``duration`` seconds."""
        settings = self._require(connection)
        reason = _clean_reason(reason)
        if not reason:
            raise ReviewError(400, "an access request needs a reason")
        if role not in settings.requestable_roles:
            can = ", ".join(settings.requestable_roles) or "none"
            raise ReviewError(
                403, f"role {role!r} cannot be requested on {connection!r} (requestable: {can})"
            )
        if not 0 < duration <= settings.max_access:
            raise ReviewError(
                400,
                f"the window must be more than 0 and at most {settings.max_access:g} seconds",
            )
        return await self._open(
            principal,
            connection,
            settings,
            f"role {role} for {duration:g}s",
            kind=ACCESS_REVIEW,
            role=role,
            duration=duration,
            reason=reason,
        )

    def granted(self, subject: str, connection: str) -> dict[str, float]:
        """Roles granted to ``subject`` on ``connection`` now, each with the
        end of its window (as of the last poll; the caller also times the
        ends itself)."""
        now = self._clock()
        return {
            role: until
            for role, until in self._grants.get((subject, connection), {}).items()
            if until > now
        }

    def listen(
        self, subject: str, connection: str, callback: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``callback`` whenever this person's grants on this connection
        change; returns the function that stops it."""
        key = (subject, connection)
        self._grant_listeners.setdefault(key, set()).add(callback)

        def stop() -> None:
            listeners = self._grant_listeners.get(key)
            if listeners is not None:
                listeners.discard(callback)
                if not listeners:
                    del self._grant_listeners[key]

        return stop

    async def _refresh_grants(self) -> None:
        now = self._clock()
        fresh: dict[tuple[str, str], dict[str, float]] = {}
        before: tuple[float, str] | None = None
        while True:
            page = await self.store.reviews(
                ReviewFilter(kind=ACCESS_REVIEW, active_at=now), limit=500, before=before
            )
            for r in page:
                roles = fresh.setdefault((r.requester, r.connection), {})
                roles[r.role] = max(roles.get(r.role, 0.0), r.granted_until or 0.0)
            if len(page) < 500:
                break
            before = (page[-1].created_at, page[-1].review_id)
        changed = {
            k for k in fresh.keys() | self._grants.keys() if fresh.get(k) != self._grants.get(k)
        }
        self._grants = fresh
        for key in changed:
            for callback in list(self._grant_listeners.get(key, ())):
                try:
                    callback()
                except Exception:  # one session's trouble is not the watcher's
                    log.exception("grant listener failed")

    async def _watch_grants(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._refresh_soon.wait()
            self._refresh_soon.clear()
            try:
                await self._refresh_grants()
            except StoreError as e:
                # Grants already read stay in force until they end; new ones
                # and revocations wait for the store.
                log.warning("access grants not refreshed: %s", e)

    # -- reading -----------------------------------------------------------------

    def may_see(self, actor: Principal, review: ReviewRecord) -> bool:
        """The requester, the connection's approvers and break-glass holders,
        and auditors see a review; nobody else learns it exists."""
        if actor.subject == review.requester:
            return True
        config = self._config()
        roles = roles_of(actor, config)
        if roles.intersection(config.audit.roles):
            return True
        settings = self.settings_for(review.connection)
        if settings is None:
            return False
        return bool(roles.intersection((*settings.approvers, *settings.break_glass)))

    async def show(self, actor: Principal, review_id: str) -> ReviewRecord:
        review = await self.store.review(review_id)
        if review is None or not self.may_see(actor, review):
            raise ReviewError(404, f"review {review_id} does not exist")
        return await self._fresh(review)

    async def list(
        self,
        actor: Principal,
        where: ReviewFilter,
        *,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> tuple[list[ReviewRecord], tuple[float, str] | None]:
        """The reviews ``actor`` may see, newest first, and where the next
        page starts (None: last page)."""
        seen: list[ReviewRecord] = []
        cursor = before
        while len(seen) < limit:
            page = await self.store.reviews(where, limit=limit, before=cursor)
            for review in page:
                if self.may_see(actor, review):
                    review = await self._fresh(review)
                    if where.statuses and review.status not in where.statuses:
                        continue  # stored as pending, found expired just now
                    seen.append(review)
                    if len(seen) == limit:
                        break
            if len(page) < limit:
                return seen, None
            cursor = (page[-1].created_at, page[-1].review_id)
        last = seen[-1]
        return seen, (last.created_at, last.review_id)

    async def _fresh(self, review: ReviewRecord) -> ReviewRecord:
        """As stored, but a pending review past its time reads as expired
        (and is marked so)."""
        now = self._clock()
        if review.status == PENDING and now >= review.expires_at:
            return await self._expire(review, now)
        return review

    # -- helpers -----------------------------------------------------------------

    def _require(self, connection: str) -> ApprovalsConfig:
        config = self._config()
        if connection not in config.connections:
            raise ReviewError(404, f"connection {connection!r} does not exist")
        settings = config.connections[connection].approvals
        if settings is None:
            raise ReviewError(409, f"connection {connection!r} has no approvals configured")
        return settings

    async def _open(
        self,
        principal: Principal,
        connection: str,
        settings: ApprovalsConfig,
        what: str,
        **fields: Any,
    ) -> ReviewRecord:
        """Store a new pending review of ``principal`` on ``connection``
        (``fields``: what it is about), say so, and tell the approvers."""
        now = self._clock()
        review = ReviewRecord(
            review_id=new_review_id(),
            status=PENDING,
            requester=principal.subject,
            connection=connection,
            created_at=now,
            expires_at=now + settings.review_ttl,
            approvers=tuple(settings.approvers),
            min_approvals=settings.min_approvals,
            **fields,
        )
        review = await self._insert(review)
        log.info(
            "%s %s opened: %s on %s, %s",
            review.kind,
            review.review_id,
            review.requester,
            review.connection,
            what,
        )
        event = "access.created" if review.kind == ACCESS_REVIEW else "review.created"
        await self.notifier.review_event(event, review)
        return review

    async def _insert(self, review: ReviewRecord) -> ReviewRecord:
        """Store a new review; returns it as stored (its id drawn again if
        it was taken)."""
        for _ in range(3):
            try:
                await self.store.insert_review(review)
                return review
            except ReviewConflict:  # 64 random bits collided: draw again
                review = replace(review, review_id=new_review_id())
        raise ReviewError(409, "could not allocate a review id")


def grantable(roles: Iterable[str]) -> frozenset[str]:
    """Granted roles that are connection grants (``unmasked`` is not)."""
    return frozenset(r for r in roles if r != UNMASKED_ROLE)


def _clean_reason(reason: str) -> str:
    """Reasons go to notifications and the store: no NUL (PostgreSQL text
    cannot hold it), no control characters, bounded."""
    cleaned = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in reason)
    return cleaned.strip()[:MAX_REASON]
