"""What the state store holds for recordings, as plain values: the recorder
produces them, the spool carries them, the store keeps them, the API and the
export read them back. Nothing here knows SQL or files.

An event's ``data`` is the canonical JSON text (sorted keys, no spaces,
UTF-8) of everything that happened; its chain hash covers exactly those
bytes and the previous hash (hoopfast.recording.chain). The other fields are
copies of values inside ``data``, kept as columns so the store can filter
and order without parsing JSON; ``audit verify`` checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Event kinds, in the order a session produces them.
SESSION_START = "session_start"
STATEMENT = "statement"
SESSION_END = "session_end"


# Not frozen: one is made per statement on the data path, and a frozen
# dataclass's __init__ costs 1.5 µs there against 0.4.
@dataclass(slots=True)
class EventRecord:
    session_id: str
    #: 0 for session_start, then 1, 2, ... without gaps.
    seq: int
    #: Unix time (seconds) the event happened.
    at: float
    kind: str
    subject: str
    connection: str
    #: Policy verdict of a statement ("allow", "deny", "review"), else "".
    verdict: str
    #: Canonical JSON of the event (see the module docstring).
    data: str
    #: Hex SHA-256 of the previous event of the session (64 zeros for seq 0).
    prev_hash: str
    #: Hex SHA-256 over prev_hash and data.
    hash: str


@dataclass(frozen=True, slots=True)
class Seal:
    """A finished session's chain head, signed by the gateway."""

    session_id: str
    #: Number of events in the session (the last seq + 1).
    events: int
    last_hash: str
    ended_at: float
    end_reason: str
    #: Which signing key (SigningKey.key_id) signed it.
    key_id: str
    #: Hex signature over hoopfast.recording.chain.seal_message(...).
    signature: str


@dataclass(frozen=True, slots=True)
class BlockHead:
    """A stored event block's own columns (hoopfast.store.blocks), which
    reads select by and no hash covers: ``audit verify`` checks them
    against the block's events."""

    first_seq: int
    last_seq: int
    first_at: float
    last_at: float
    events: int
    #: JSON object: each verdict of its events ("" included) -> how many.
    verdicts: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key that verifies seals. Keys are added, never replaced."""

    key_id: str
    #: "ed25519" (raw 32-byte public key, hex) or "hmac-sha256" (public_key
    #: empty: only the gateway holding the secret can verify).
    algorithm: str
    public_key: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as the store knows it: opened by its session_start event,
    sealed (or not yet) by its Seal."""

    session_id: str
    subject: str
    connection: str
    client_address: str
    started_at: float
    #: Events stored so far.
    stored_events: int
    #: Statement events stored so far.
    statements: int
    ended_at: float | None = None
    end_reason: str | None = None
    seal: Seal | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events an export wants. ``since``/``until``: Unix times, half
    open [since, until). Empty strings / None: no condition."""

    since: float | None = None
    until: float | None = None
    subject: str | None = None
    connection: str | None = None
    verdict: str | None = None
    session_id: str | None = None
    #: Sessions whose events must be left out (segregation of duties: the
    #: reader's own sessions), by subject.
    exclude_subject: str | None = None


# -- reviews: approvals of statements and of time-boxed access ----------------

#: Review kinds.
STATEMENT_REVIEW = "statement"
ACCESS_REVIEW = "access"

#: Review statuses. ``pending`` until decided; ``approved`` (a statement
#: approval not yet used, or an access grant); then ``used`` (a one-time
#: statement approval that ran), or one of the final refusals.
PENDING = "pending"
APPROVED = "approved"
USED = "used"
REJECTED = "rejected"
WITHDRAWN = "withdrawn"
EXPIRED = "expired"
REVOKED = "revoked"
STATUSES = (PENDING, APPROVED, USED, REJECTED, WITHDRAWN, EXPIRED, REVOKED)


@dataclass(frozen=True, slots=True)
class Decision:
    """One person's act on a review, in the order they happened."""

    actor: str
    #: "approve", "reject", "revoke", "withdraw", "force" (break-glass), "expire".
    action: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    """A request for a second person's approval: to run one statement, or to
    hold a role on a connection for a while. Written by the approvals
    service; every change is a compare-and-swap on ``version``, so two
    replicas (or two approvers) deciding at once cannot both win."""

    review_id: str
    kind: str
    status: str
    requester: str
    connection: str
    created_at: float
    #: Until then a pending review may be decided, and an approved statement
    #: run; after it, it is expired.
    expires_at: float
    #: Statement reviews: the exact text as received, and its SHA-256 (hex)
    #: over the UTF-8 text, which an approval binds. Access: "".
    statement: str = ""
    statement_hash: str = ""
    #: Statement reviews in the extended protocol: the values bound to it,
    #: as shown to approvers (JSON list, masked by the detectors; null for
    #: NULL), when the Bind came with the Parse; "" otherwise (none, or
    #: bound later and so not known at review time). The approval binds
    #: the raw values too (statement_hash covers them).
    parameters: str = ""
    #: Access reviews: the role asked for, for how long (seconds), and once
    #: approved, until when (Unix time).
    role: str = ""
    duration: float = 0.0
    granted_until: float | None = None
    #: The requester's reason, if given.
    reason: str = ""
    #: Where it came from (statement reviews).
    session_id: str = ""
    client_address: str = ""
    #: The policy rule that asked for the review ("class:ddl").
    rule: str = ""
    #: "wait" or "deferred" (statement reviews).
    mode: str = ""
    #: Roles whose holders may approve, and how many distinct people must.
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    decisions: tuple[Decision, ...] = ()
    decided_at: float | None = None
    used_at: float | None = None
    #: Force-approved by a break-glass role holder.
    break_glass: bool = False
    #: Bumped by every change (compare-and-swap).
    version: int = 1


@dataclass(frozen=True, slots=True)
class ReviewFilter:
    """Which reviews to list. Empty / None: no condition."""

    kind: str | None = None
    #: Any of these statuses.
    statuses: tuple[str, ...] = ()
    requester: str | None = None
    connection: str | None = None
    statement_hash: str | None = None
    #: Access grants in force at this time: status approved and
    #: granted_until > active_at.
    active_at: float | None = None
    #: Created at or after.
    since: float | None = None
