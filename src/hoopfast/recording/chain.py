"""Tamper evidence: each session's events form a hash chain, and a finished
session's chain head is signed (Ed25519) by the gateway.

An event's hash is SHA-256 over the previous event's hash and the event's
canonical JSON, so changing, inserting, removing or reordering any stored
byte breaks the chain at that record; the signed seal fixes the number of
events and the last hash, so cutting events off the end breaks the seal.
Verification needs only the public keys (the store keeps them; an auditor
can also pin them), never a secret.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hoopfast import core
from hoopfast.masking.statement_text import shown_statement_text
from hoopfast.store.records import SESSION_END, STATEMENT, BlockHead, EventRecord, Seal, SigningKey

#: The previous hash of a session's first event.
GENESIS = "0" * 64
ED25519 = "ed25519"


def canonical(value: Any) -> str:
    """The one JSON text of ``value``: sorted keys, no spaces, UTF-8 kept
    as is, no NaN. Hashes and signatures are computed over exactly this."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def link(prev_hash: str, data: str | bytes) -> str:
    """An event's hash: over the previous one's and its data (UTF-8)."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(prev_hash.encode() + b"\n" + raw).hexdigest()


def seal_message(
    session_id: str, events: int, last_hash: str, ended_at: float, end_reason: str
) -> bytes:
    return canonical(
        {
            "session": session_id,
            "events": events,
            "last_hash": last_hash,
            "ended_at": ended_at,
            "end_reason": end_reason,
        }
    ).encode()


def key_id(public_key: bytes) -> str:
    """A seal key's id: derived from the raw public key, so an auditor who
    pins a key (``audit verify --public-key``) finds the seals it made."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class Signer:
    """The gateway's Ed25519 seal key. The private key lives in a file only
    the gateway reads (created on first start, mode 0600); its public half
    goes to the store so any replica's seals verify anywhere."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_hex = raw.hex()
        self.key_id = key_id(raw)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            return cls(key)
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(loaded)

    def signing_key(self) -> SigningKey:
        return SigningKey(self.key_id, ED25519, self.public_hex, time.time())

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()

    def seal(
        self, session_id: str, events: int, last_hash: str, ended_at: float, end_reason: str
    ) -> Seal:
        message = seal_message(session_id, events, last_hash, ended_at, end_reason)
        return Seal(
            session_id, events, last_hash, ended_at, end_reason, self.key_id, self.sign(message)
        )


def session_log(journal: Any, session_id: str, subject: str, connection: str) -> Any:
    """A session's chain as the recorder keeps it (hoopfast.core.SessionLog):
    events encoded by :func:`encode_event`, linked by :func:`link`'s
    formula, into ``journal``; a statement's text with its secrets replaced
    (hoopfast.masking.statement_text)."""
    return core.SessionLog(
        journal,
        session_id,
        subject,
        connection,
        EventRecord,
        encode_event,
        STATEMENT,
        MAX_EVENT_BYTES,
        GENESIS,
        shown_statement_text,
    )


class Chain:
    """One session's chain outside the data path (tools and tests that build
    trails): each append returns its record. The events are made by the
    recorder's own SessionLog; a session keeps one subject and connection."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._journal = core.Journal(lambda: None)
        self._log: Any = None

    @property
    def count(self) -> int:
        return 0 if self._log is None else int(self._log.count)

    @property
    def last_hash(self) -> str:
        return GENESIS if self._log is None else str(self._log.last_hash)

    def append(
        self,
        kind: str,
        at: float,
        subject: str,
        connection: str,
        verdict: str,
        body: dict[str, Any],
    ) -> EventRecord:
        """The next event of the session, linked to the one before. ``body``
        is taken over (the event's own fields are added to it)."""
        log = self._log
        if log is None:
            log = self._log = session_log(self._journal, self.session_id, subject, connection)
        elif (subject, connection) != (log.subject, log.connection):
            raise ValueError("a session's events share one subject and connection")
        log.append(kind, at, verdict, body)
        (record,) = self._journal.take()[1]
        return record  # type: ignore[no-any-return]


#: An event's JSON past this is cut down (see _shrunk): a store refuses a value
#: past its limit (SQLite 10^9 bytes, PostgreSQL 1 GB) on every retry, and
#: every other session's trail would queue behind it until the spool is full.
#: Statement texts and parameters come from clients, uncapped by the trail
#: (a message may be up to HOOPFAST_PG_MAX_MESSAGE; JSON makes a control
#: character six bytes, hex a binary parameter two per byte).
MAX_EVENT_BYTES = 16 << 20


def encode_event(body: dict[str, Any]) -> bytes:
    """An event's JSON as hashed and stored (:func:`event_json`), cut down
    past MAX_EVENT_BYTES (see _shrunk)."""
    raw = event_json(body)
    if len(raw) > MAX_EVENT_BYTES:
        raw = event_json(_shrunk(body, len(raw)))
    return raw


def _shrunk(body: dict[str, Any], size: int) -> dict[str, Any]:
    """An oversized event as it is recorded: the start of its text, its
    length and SHA-256 (an auditor holding the statement can match it),
    without its parameters and results, and a note of what was cut."""
    shrunk = dict(body)
    note: dict[str, Any] = {"bytes": size}
    text = shrunk.get("text")
    # An eighth of the bound in characters: JSON writes one in at most six.
    kept = MAX_EVENT_BYTES // 8
    if isinstance(text, str) and len(text) > kept:
        shrunk["text"] = text[:kept]
        note["text_chars"] = len(text)
        note["text_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    for key in ("params", "results"):
        if shrunk.get(key):
            shrunk[key] = None
            note[f"{key}_dropped"] = True
    shrunk["oversized"] = note
    if len(event_json(shrunk)) > MAX_EVENT_BYTES:
        # Still too large (some other field): only what identifies it.
        keep = ("session", "seq", "kind", "at", "subject", "connection", "verdict", "n", "rule")
        shrunk = {k: shrunk[k] for k in keep if k in shrunk} | {"oversized": note}
    return shrunk


def event_json(value: dict[str, Any]) -> bytes:
    """An event's JSON as hashed and stored: sorted keys, no spaces, UTF-8
    kept as is (what :func:`canonical` writes, by orjson: ~2 µs a statement
    where json.dumps takes ~12). Verification hashes the stored text and never
    re-encodes it, so only determinism matters here. What orjson refuses (a
    lone surrogate has no UTF-8) is written ASCII-escaped by the json module,
    deterministic too."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a session's trail."""

    session_id: str
    #: The event where the chain breaks; None for a problem with the seal.
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"event {self.seq}" if self.seq is not None else "seal"
        return f"session {self.session_id}, {where}: {self.reason}"


_COLUMNS = ("session_id", "seq", "kind", "at", "subject", "connection", "verdict")
_KEYS = ("session", "seq", "kind", "at", "subject", "connection", "verdict")


def verify_events(
    session_id: str, events: Iterable[EventRecord]
) -> tuple[int, str, Problem | None]:
    """Walk one session's events in seq order: (count, last hash, the first
    problem or None)."""
    expected_prev = GENESIS
    count = 0
    for event in events:
        if event.session_id != session_id:
            return count, expected_prev, Problem(session_id, event.seq, "event of another session")
        if event.seq != count:
            what = (
                f"event {event.seq} is stored again after event {count - 1}"
                if event.seq < count
                else f"event {count} is missing (found {event.seq} next)"
            )
            return count, expected_prev, Problem(session_id, count, what)
        if event.prev_hash != expected_prev:
            return (
                count,
                expected_prev,
                Problem(
                    session_id, event.seq, "previous-hash link does not match the event before"
                ),
            )
        if link(event.prev_hash, event.data) != event.hash:
            return (
                count,
                expected_prev,
                Problem(session_id, event.seq, "content does not match its hash (record altered)"),
            )
        problem = _columns_agree(event)
        if problem is not None:
            return count, expected_prev, Problem(session_id, event.seq, problem)
        expected_prev = event.hash
        count += 1
    return count, expected_prev, None


def _columns_agree(event: EventRecord) -> str | None:
    try:
        data = json.loads(event.data)
    except ValueError:
        return "content is not JSON"
    if not isinstance(data, dict):
        return "content is not a JSON object"
    for column, key in zip(_COLUMNS, _KEYS, strict=True):
        stored = getattr(event, column)
        inside = data.get(key)
        if stored != inside and not (
            isinstance(stored, float)
            and isinstance(inside, int | float)
            and _same_time(stored, inside)
        ):
            return f"stored {column} differs from the hashed content"
    return None


def verify_session(
    session_id: str,
    events: Iterable[EventRecord],
    seal: Seal | None,
    keys: dict[str, SigningKey],
) -> Problem | None:
    """The first problem in one session's trail, or None when the chain is
    intact and (if sealed) the seal matches it and its signature verifies."""
    count, last_hash, problem = verify_events(session_id, events)
    if problem is not None:
        return problem
    if seal is None:
        return None  # still open (or not yet flushed): the chain so far is intact
    if seal.events > count:
        return Problem(
            session_id, None, f"sealed with {seal.events} events, {count} stored (events removed)"
        )
    if seal.events < count:
        return Problem(
            session_id,
            seal.events,
            f"added after the seal (sealed with {seal.events} events, {count} stored)",
        )
    if seal.last_hash != last_hash:
        return Problem(session_id, None, "sealed chain head differs from the stored chain")
    key = keys.get(seal.key_id)
    if key is None:
        return Problem(session_id, None, f"unknown signing key {seal.key_id}")
    if key.algorithm != ED25519:
        return Problem(session_id, None, f"unsupported signature algorithm {key.algorithm}")
    message = seal_message(session_id, seal.events, seal.last_hash, seal.ended_at, seal.end_reason)
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public_key))
        public.verify(bytes.fromhex(seal.signature), message)
    except (InvalidSignature, ValueError):
        return Problem(session_id, None, "signature does not verify")
    return None


def session_row_problem(
    session_id: str,
    subject: str,
    connection: str,
    client_address: str,
    started_at: float,
    first: EventRecord | None,
) -> Problem | None:
    """The store's session row against its hashed session_start event: the
    row is what listings, exports and segregation of duties filter by, and
    is not itself hashed, so a row edited to hide a session (another
    subject, another start time) must show here. (Called after the chain
    verified, so ``first`` is the genuine event 0.)"""
    if first is None or first.seq != 0:
        return None  # no events stored yet: nothing to compare with
    try:
        data = json.loads(first.data)
    except ValueError:
        return Problem(session_id, 0, "content is not JSON")
    stored = {
        "subject": subject,
        "connection": connection,
        "client_address": client_address,
    }
    for key, value in stored.items():
        inside = data.get(key)
        if ("" if inside is None else str(inside)) != value:
            return Problem(session_id, 0, f"the session's stored {key} differs from its start")
    if not _same_time(started_at, first.at):
        return Problem(session_id, 0, "the session's stored started_at differs from its start")
    return None


def session_counts_problem(
    session_id: str,
    stored_events: Any,
    ended_at: Any,
    sealed: bool,
    found: int,
    last: EventRecord | None,
) -> Problem | None:
    """What a chain that verifies cannot show: events removed from the
    end of a session that has no seal (the seal counts a sealed one's).
    The store's row counts the events it stored (``stored_events``, in the
    transaction that stored them) and says when the session ended
    (``ended_at``, set with the seal and only with it): fewer events found
    than counted, or an end without a seal (the seal removed, so that the
    tail could be cut), is tampering. (Called after the chain verified.)"""
    if isinstance(stored_events, int) and found < stored_events:
        return Problem(
            session_id,
            found,
            f"the store counts {stored_events} events and {found} were found (events removed)",
        )
    if not sealed and ended_at is not None:
        return Problem(session_id, None, "the session ended but its seal is missing")
    if not sealed and last is not None and last.kind == SESSION_END:
        return Problem(session_id, None, "the session ended (session_end) but has no seal")
    return None


def blocks_problem(
    session_id: str, heads: Sequence[BlockHead], events: Sequence[EventRecord], offset: int = 0
) -> Problem | None:
    """Stored blocks' own columns against their events (the chain verified,
    so ``events`` are the genuine ones, in seq order from ``offset``: the
    whole session, or the page of it that holds these blocks). Reads select
    blocks by these columns (an export's time range and verdict), so a
    column edited to hide a block's events from them is reported here, at
    the block's first event."""
    for head in heads:
        start = head.first_seq - offset
        mine = events[start : head.last_seq - offset + 1] if start >= 0 else []
        if (
            head.events != len(mine)
            or head.last_seq - head.first_seq + 1 != len(mine)
            or any(e.seq != head.first_seq + i for i, e in enumerate(mine))
        ):
            what = "its stored seq range or event count"
        elif not (_same_time(head.first_at, mine[0].at) and _same_time(head.last_at, mine[-1].at)):
            what = "its stored time range"
        elif _verdicts(head.verdicts) != Counter(e.verdict for e in mine):
            what = "its stored verdict counts"
        else:
            continue
        return Problem(
            session_id,
            head.first_seq,
            f"the block of events {head.first_seq}-{head.last_seq}: {what} differs from its events",
        )
    return None


def _same_time(stored: float, at: float) -> bool:
    """A stored time against the hashed one (to the microsecond they are
    written with)."""
    return math.isclose(stored, at, rel_tol=0, abs_tol=1e-6)


def _verdicts(text: str) -> Counter[str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(isinstance(n, int) and n > 0 for n in value.values()):
        return None
    return Counter(value)
