"""Review notifications: a signed JSON POST to one webhook per event.

Why it is shaped the way it is:

- The approvals service calls :meth:`Notifier.review_event` while a client
  may be waiting on a review, so it must never wait for the network. Events
  go into a bounded in-memory queue; one background task delivers them, in
  order, with retries. A receiver that is down costs memory up to the bound,
  then the oldest events are dropped (with a warning), never the gateway.
- One body serves both Slack incoming webhooks and programs: Slack reads
  ``text`` and ``blocks`` and ignores unknown top-level fields, a program
  reads the structured ``hoopfast`` object. User-provided text (statements,
  names, reasons) is escaped for Slack mrkdwn, so a requester cannot ping
  ``<!channel>`` or dress up a link, and cut, so a huge statement cannot make
  the message undeliverable.
- Every request is signed: ``X-Hoopfast-Signature: v1=<hex HMAC-SHA-256>``
  over ``"<timestamp>." + body`` with ``X-Hoopfast-Timestamp`` (the Stripe /
  Slack scheme). The timestamp inside the MAC lets a receiver refuse a
  replayed request (:func:`verify_signature`); ``X-Hoopfast-Delivery`` stays
  the same across retries of one notification, so a receiver can drop the
  duplicates a retry after a lost response produces.
- A Slack webhook URL's path *is* a credential, so logs name only
  ``scheme://host[:port]``, and httpx's own request log lines for that URL
  are redacted the same way.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from hoopfast import __version__
from hoopfast.config import Webhook
from hoopfast.errors import ConfigurationError
from hoopfast.store.records import ACCESS_REVIEW, APPROVED, Decision, ReviewRecord
from hoopfast.text import duration, shown

log = logging.getLogger("hoopfast.notify")

#: Events the approvals service sends (any other string is passed through).
REVIEW_CREATED: Final = "review.created"
REVIEW_APPROVED: Final = "review.approved"
REVIEW_REJECTED: Final = "review.rejected"
REVIEW_REVOKED: Final = "review.revoked"
REVIEW_WITHDRAWN: Final = "review.withdrawn"
REVIEW_EXPIRED: Final = "review.expired"
REVIEW_FORCE_APPROVED: Final = "review.force_approved"
ACCESS_CREATED: Final = "access.created"

#: Version of the ``hoopfast`` object in the body, for receivers.
BODY_SCHEMA: Final = 1
#: Shortest HMAC key accepted (bytes): a shorter one could be guessed.
MIN_SECRET_BYTES: Final = 32
#: Longest statement (characters) in the structured fields; the hash covers
#: the whole text.
STATEMENT_LIMIT: Final = 2000
#: Longest reason (characters) in the structured fields.
REASON_LIMIT: Final = 2000
#: Notifications held while the receiver is slow or down.
QUEUE_LIMIT: Final = 10_000
#: Replay window (seconds) of :func:`verify_signature`.
SIGNATURE_TOLERANCE: Final = 300

#: Back-off between attempts (seconds): base * 2**(n-1), jittered, capped.
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 30.0
#: How long close() keeps delivering what is queued before giving up.
CLOSE_GRACE: Final = 5.0

#: Statement prefix looked at for the human-readable parts (a huge statement
#: is not worth scanning whole to show its first few hundred characters).
_SCAN_LIMIT = 20_000
#: Shorter cuts for what people read (Slack's section text limit is 3000).
_TEXT_STATEMENT_LIMIT = 200
_TEXT_FIELD_LIMIT = 200
_BLOCK_STATEMENT_LIMIT = 1500
_BLOCK_REASON_LIMIT = 500

#: Slack mrkdwn control characters (https://api.slack.com/reference/surfaces/formatting).
_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_WHITESPACE = re.compile(r"\s+")

_PHRASES = {
    REVIEW_CREATED: "needs approval",
    ACCESS_CREATED: "needs approval",
    REVIEW_APPROVED: "approved",
    REVIEW_REJECTED: "rejected",
    REVIEW_REVOKED: "revoked",
    REVIEW_WITHDRAWN: "withdrawn",
    REVIEW_EXPIRED: "expired",
    REVIEW_FORCE_APPROVED: "force-approved (break-glass)",
}
#: Events that are someone's decision, whose name goes into the text.
_DECIDED = {
    REVIEW_APPROVED,
    REVIEW_REJECTED,
    REVIEW_REVOKED,
    REVIEW_WITHDRAWN,
    REVIEW_FORCE_APPROVED,
}
#: Decision actions as people say them.
_DONE = {
    "approve": "Approved",
    "force": "Force-approved",
    "reject": "Rejected",
    "revoke": "Revoked",
    "withdraw": "Withdrawn",
    "expire": "Expired",
}
#: Events asking for a decision: the text says who may give it.
_ASKING = {REVIEW_CREATED, ACCESS_CREATED}


# -- the body -------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Newlines and tabs would break the one-line summary."""
    return _WHITESPACE.sub(" ", text).strip()


def escape_mrkdwn(text: str, limit: int | None = None) -> str:
    """``text`` with Slack's control characters escaped, so user input cannot
    become a mention (``<!channel>``) or a link; cut to ``limit`` characters
    of *escaped* text without splitting an entity."""
    # Control, format and bidi characters are shown, not obeyed: a reader
    # must see the statement in the order it runs.
    text = shown(text)
    if limit is None:
        return "".join(_MRKDWN_ESCAPES.get(c, c) for c in text)
    out: list[str] = []
    used = 0
    for i, c in enumerate(text):
        piece = _MRKDWN_ESCAPES.get(c, c)
        # Keep one character of room for the ellipsis unless this is the end.
        room = limit - used - (0 if i == len(text) - 1 else 1)
        if len(piece) > room:
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _code(text: str) -> str:
    """Text for inside mrkdwn backticks, which have no escape of their own:
    a backtick becomes U+02CB, which looks alike but does not end the span
    (PostgreSQL does not use backticks; the exact text is in ``hoopfast``)."""
    return shown(text).replace("`", "\u02cb")


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _last_decision(review: ReviewRecord) -> Decision | None:
    return review.decisions[-1] if review.decisions else None


def _approved_by(review: ReviewRecord) -> list[str]:
    """Distinct people who approved (or force-approved), in order."""
    seen: dict[str, None] = {}
    for d in review.decisions:
        if d.action in ("approve", "force") and d.actor:
            seen.setdefault(d.actor, None)
    return list(seen)


def _structured(event: str, review: ReviewRecord) -> dict[str, Any]:
    """The fields a program reads: raw (not escaped) values, times as Unix
    seconds like the admin API, the statement cut (its hash is of the whole)."""
    last = _last_decision(review)
    approved_by = _approved_by(review)
    return {
        "schema": BODY_SCHEMA,
        "event": event,
        "review_id": review.review_id,
        "kind": review.kind,
        "status": review.status,
        "requester": review.requester,
        "connection": review.connection,
        "statement": review.statement[:STATEMENT_LIMIT],
        "statement_truncated": len(review.statement) > STATEMENT_LIMIT,
        "statement_hash": review.statement_hash,
        "parameters": json.loads(review.parameters) if review.parameters else None,
        "role": review.role,
        "duration": review.duration,
        "granted_until": review.granted_until,
        "reason": review.reason[:REASON_LIMIT],
        "rule": review.rule,
        "mode": review.mode,
        "approvers": list(review.approvers),
        "min_approvals": review.min_approvals,
        "approvals": len(approved_by),
        "approved_by": approved_by,
        "decided_by": (last.actor or None) if last is not None else None,
        "decision": last.action if last is not None else None,
        "decision_reason": last.reason[:REASON_LIMIT] if last is not None else "",
        "decided_at": review.decided_at,
        "break_glass": review.break_glass,
        "created_at": review.created_at,
        "expires_at": review.expires_at,
    }


def _summary(event: str, review: ReviewRecord) -> str:
    """The one-line, escaped ``text``: who, what, where, and what happens next."""

    def field(value: str) -> str:
        return escape_mrkdwn(_one_line(value), _TEXT_FIELD_LIMIT)

    phrase = _PHRASES.get(event, field(event))
    last = _last_decision(review)
    if event in _DECIDED and last is not None and last.actor:
        phrase += f" by {field(last.actor)}"
    head = f"hoopfast: review {field(review.review_id)} on connection {field(review.connection)}"
    if review.kind == ACCESS_REVIEW:
        what = f"{field(review.requester)} asks for role {field(review.role)}"
        what += f" for {duration(review.duration)}"
        if review.status == APPROVED and review.granted_until is not None:
            what += f" (until {_utc(review.granted_until)})"
    else:
        statement = escape_mrkdwn(
            _code(_one_line(review.statement[:_SCAN_LIMIT])), _TEXT_STATEMENT_LIMIT
        )
        what = f"{field(review.requester)} wants to run `{statement}`"
        if review.rule:
            what += f" (rule {field(review.rule)})"
    line = f"{head} {phrase}: {what}"
    if event in _ASKING:
        if review.reason:
            line += f"; reason: {field(review.reason)}"
        approvers = ", ".join(review.approvers) or "none configured"
        line += f"; approvers: {field(approvers)}"
        if review.min_approvals > 1:
            line += f" ({review.min_approvals} approvals needed)"
    elif event in _DECIDED and last is not None and last.reason and last.action != "approve":
        line += f"; reason: {field(last.reason)}"
    return line


def _details(event: str, review: ReviewRecord) -> str:
    """The mrkdwn of the Slack section: the summary's facts, one per line,
    and the statement as a code block."""

    def field(value: str) -> str:
        return escape_mrkdwn(_one_line(value), _TEXT_FIELD_LIMIT)

    phrase = _PHRASES.get(event, field(event))
    lines = [f"*Review {field(review.review_id)}* on *{field(review.connection)}* {phrase}"]
    lines.append(f"*Requester:* {field(review.requester)}")
    if review.kind == ACCESS_REVIEW:
        lines.append(f"*Role:* {field(review.role)} for {duration(review.duration)}")
        if review.granted_until is not None:
            lines.append(f"*Granted until:* {_utc(review.granted_until)}")
    elif review.rule:
        lines.append(f"*Rule:* {field(review.rule)}")
    if review.parameters:
        values = json.loads(review.parameters)
        shown_values = ", ".join(
            f"${i} = {'NULL' if v is None else repr(v)}" for i, v in enumerate(values, 1)
        )
        lines.append(f"*Parameters:* {field(shown_values)}")
    if review.reason:
        reason = escape_mrkdwn(_one_line(review.reason), _BLOCK_REASON_LIMIT)
        lines.append(f"*Reason:* {reason}")
    last = _last_decision(review)
    if event in _DECIDED and last is not None:
        by = field(last.actor) if last.actor else "the gateway"
        decided = f"*{_DONE.get(last.action, field(last.action))} by:* {by}"
        if last.reason:
            decided += f": {escape_mrkdwn(_one_line(last.reason), _BLOCK_REASON_LIMIT)}"
        lines.append(decided)
    if event in _ASKING:
        approvers = ", ".join(review.approvers) or "none configured"
        lines.append(f"*Approvers:* {field(approvers)} ({review.min_approvals} needed)")
        lines.append(f"*Expires:* {_utc(review.expires_at)}")
    if review.break_glass:
        lines.append("*Break-glass:* yes")
    if review.kind != ACCESS_REVIEW and review.statement:
        statement = escape_mrkdwn(_code(review.statement[:_SCAN_LIMIT]), _BLOCK_STATEMENT_LIMIT)
        lines.append(f"```{statement}```")
    return "\n".join(lines)


def webhook_body(event: str, review: ReviewRecord) -> dict[str, Any]:
    """The JSON body for ``event`` about ``review``: a Slack incoming-webhook
    message (``text``, ``blocks``) plus a ``hoopfast`` object of structured
    fields, which Slack ignores and programs read."""
    return {
        "text": _summary(event, review),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _details(event, review)}},
        ],
        "hoopfast": _structured(event, review),
    }


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- signatures -------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Hoopfast-Signature`` value: ``v1=`` and the hex HMAC-SHA-256
    of ``"<timestamp>."`` followed by the body bytes."""
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: bytes | str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` (an ``X-Hoopfast-Signature`` header, possibly
    several comma-separated ``v1=`` values, e.g. during a key rotation) is a
    valid MAC of ``body`` at ``timestamp``, and the timestamp is within
    ``tolerance`` seconds of ``now``: a captured request replayed later fails.
    For receivers and tests; constant-time comparison."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    timestamp = timestamp.strip()
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    when = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - when) > tolerance:
        return False
    expected = sign(key, when, body).encode("ascii")
    ok = False
    for candidate in signature.split(","):
        # Compare every candidate: no early exit that times which one matched.
        ok |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "replace"))
    return ok


# -- log hygiene ------------------------------------------------------------------


def redacted_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be logged. The path and
    query of a Slack webhook URL are its secret, userinfo is a password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class _HttpxUrlRedactor(logging.Filter):
    """httpx logs every request's full URL at INFO; for webhook URLs this
    rewrites that argument to :func:`redacted_url`, so turning on INFO logs
    does not publish the Slack secret."""

    def __init__(self) -> None:
        super().__init__("httpx-url-redactor")
        self._urls: collections.Counter[str] = collections.Counter()
        self._installed = False

    def register(self, url: str) -> None:
        self._urls[str(httpx.URL(url))] += 1
        if not self._installed:
            logging.getLogger("httpx").addFilter(self)
            self._installed = True

    def unregister(self, url: str) -> None:
        key = str(httpx.URL(url))
        self._urls[key] -= 1
        if self._urls[key] <= 0:
            del self._urls[key]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._urls and isinstance(record.args, tuple):
            record.args = tuple(
                redacted_url(str(a)) if isinstance(a, httpx.URL) and str(a) in self._urls else a
                for a in record.args
            )
        return True


_REDACTOR = _HttpxUrlRedactor()


# -- notifiers --------------------------------------------------------------------


class Notifier:
    """Where the approvals service reports review events. This base does
    nothing (see :data:`NO_NOTIFIER`); implementations must return quickly
    from :meth:`review_event` and never raise from it: a notification is
    a courtesy, not part of the decision."""

    async def review_event(self, event: str, review: ReviewRecord) -> None:
        """Report ``event`` (``"review.created"``, ...) about ``review``."""

    async def close(self) -> None:
        """Deliver what can still be delivered, then release resources."""


class _NullNotifier(Notifier):
    """No notifications configured."""

    def __repr__(self) -> str:
        return "NO_NOTIFIER"


#: The null object: the approvals service always has a notifier to call.
NO_NOTIFIER: Final[Notifier] = _NullNotifier()


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One notification: its body is fixed when queued; the timestamp and
    signature are made per attempt (a retry is a fresh, in-window request),
    the delivery id is not (receivers dedupe on it)."""

    event: str
    review_id: str
    delivery_id: str
    body: bytes


class WebhookNotifier(Notifier):
    """Posts each review event to ``webhook.url`` from a background task
    (see the module docstring for the why)."""

    def __init__(
        self,
        webhook: Webhook,
        *,
        queue_limit: int = QUEUE_LIMIT,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        try:
            secret = webhook.secret.resolve()
        except ConfigurationError as e:
            raise ConfigurationError(f"notifications.webhook.secret: {e}") from None
        key = secret.encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            # Name where the secret is, never what it is (not even its length).
            raise ConfigurationError(
                f"notifications.webhook.secret ({webhook.secret.describe()}) must be at"
                f" least {MIN_SECRET_BYTES} bytes; generate one with"
                " `openssl rand -hex 32`"
            )
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self._secret = key
        self._url = webhook.url
        self._target = redacted_url(webhook.url)
        self._attempts = webhook.attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._close_grace = close_grace
        self._queue_limit = queue_limit
        self._queue: collections.deque[_Delivery] = collections.deque()
        self._inflight: _Delivery | None = None
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Notifications dropped because the queue was full (oldest first).
        self.dropped = 0
        #: Notifications the receiver accepted (2xx), for tests and metrics.
        self.delivered = 0
        #: Notifications given up on (after the last attempt, or refused).
        self.failed = 0
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(webhook.timeout),
            # A redirect would resend the signed body somewhere unconfigured.
            follow_redirects=False,
            headers={"User-Agent": f"hoopfast/{__version__}"},
        )
        _REDACTOR.register(webhook.url)

    def __repr__(self) -> str:
        return f"WebhookNotifier({self._target})"

    def start(self) -> None:
        """Start the delivery task on the running loop (otherwise it starts
        with the first event)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hoopfast-notify")

    async def review_event(self, event: str, review: ReviewRecord) -> None:
        """Queue ``event``; returns at once, whatever the receiver does."""
        if self._closed:
            log.warning("notifier closed; %s for review %s not sent", event, review.review_id)
            return
        try:
            body = encode_body(webhook_body(event, review))
        except Exception as e:  # a bad record must not break the decision
            log.error(
                "cannot build notification %s for review %s: %s",
                event,
                review.review_id,
                type(e).__name__,
            )
            return
        self._enqueue(_Delivery(event, review.review_id, secrets.token_hex(16), body))
        self.start()

    def _enqueue(self, delivery: _Delivery) -> None:
        if len(self._queue) >= self._queue_limit:
            oldest = self._queue.popleft()
            self.dropped += 1
            # First drop of a burst and then every 100th: a dead receiver
            # under load must not turn into a log flood.
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "notification queue full (%d); dropped the oldest (%s for review %s);"
                    " %d dropped so far",
                    self._queue_limit,
                    oldest.event,
                    oldest.review_id,
                    self.dropped,
                )
        self._queue.append(delivery)
        self._settled.clear()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Notifications queued or being delivered."""
        return len(self._queue) + (self._inflight is not None)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued has been delivered or given up on;
        False if ``timeout`` passed first."""
        if self._queue and (self._task is None or self._task.done()):
            self.start()
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Deliver what is queued within the grace period, then stop: a
        shutdown must not hang on a receiver that is down."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.pending and not await self.drain(self._close_grace):
                log.warning(
                    "shutting down: %d notification(s) to %s not delivered",
                    self.pending,
                    self._target,
                )
            task = self._task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        finally:
            await self._client.aclose()
            _REDACTOR.unregister(self._url)

    async def _run(self) -> None:
        """Deliver queued notifications one at a time, in order."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            delivery = self._queue.popleft()
            self._inflight = delivery
            try:
                if await self._deliver(delivery):
                    self.delivered += 1
                else:
                    self.failed += 1
            except Exception as e:
                self.failed += 1
                # The type only: messages of HTTP errors can carry the URL.
                log.error(
                    "notification %s for review %s to %s failed: %s",
                    delivery.event,
                    delivery.review_id,
                    self._target,
                    type(e).__name__,
                )
            finally:
                self._inflight = None
                if not self._queue:
                    self._settled.set()

    def _headers(self, delivery: _Delivery) -> dict[str, str]:
        timestamp = int(time.time())
        return {
            "Content-Type": "application/json",
            "X-Hoopfast-Event": delivery.event,
            "X-Hoopfast-Delivery": delivery.delivery_id,
            "X-Hoopfast-Timestamp": str(timestamp),
            "X-Hoopfast-Signature": sign(self._secret, timestamp, delivery.body),
        }

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based):
        exponential with jitter (so many gateways do not retry in step), at
        least the receiver's ``Retry-After``, never more than the cap."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._backoff_cap)

    async def _deliver(self, delivery: _Delivery) -> bool:
        """Try up to ``attempts`` times; True once the receiver took it."""
        outcome = ""
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._client.post(
                    self._url, content=delivery.body, headers=self._headers(delivery)
                )
            except httpx.TransportError as e:  # connect, read, timeouts, protocol
                outcome = type(e).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    log.debug(
                        "notification %s for review %s delivered to %s (attempt %d)",
                        delivery.event,
                        delivery.review_id,
                        self._target,
                        attempt,
                    )
                    return True
                outcome = f"HTTP {status}"
                if not (status in (408, 429) or status >= 500):
                    log.error(
                        "notification %s for review %s refused by %s: %s (not retried)",
                        delivery.event,
                        delivery.review_id,
                        self._target,
                        outcome,
                    )
                    return False
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt == self._attempts:
                break
            delay = self.backoff(attempt, retry_after)
            log.warning(
                "notification %s for review %s to %s: attempt %d/%d failed (%s); retrying in %.1fs",
                delivery.event,
                delivery.review_id,
                self._target,
                attempt,
                self._attempts,
                outcome,
                delay,
            )
            await asyncio.sleep(delay)
        log.error(
            "notification %s for review %s to %s failed after %d attempt(s): %s",
            delivery.event,
            delivery.review_id,
            self._target,
            self._attempts,
            outcome,
        )
        return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (a decimal is
    tolerated) or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
