"""The audit trail, pure-Python reference. ``ext/_ctrail.pyx`` is the Cython
build of the same classes; :mod:`hoopfast.core` picks one, and
hoopfast.proxy.postgres.trail is what the session imports.

A session's statements as the audit trail records them. The trail follows
the protocol from both sides, the way the server answers it: every client
message that gets an answer joins a queue, and server messages complete the
entry at its head. A simple Query (or a FunctionCall) is one statement,
answered up to its ReadyForQuery; in the extended protocol each Execute is
one, its text the Parse's and its parameters the Bind's. A Parse or Bind
that fails is recorded as a statement that failed (a statement the
guardrails refused fails exactly so, through its stand-in), and what the
server skips after an error up to Sync never ran, so it is not recorded.

The event is written when the statement's answer is complete and before
the message that completes it goes to the client (see
hoopfast.recording.recorder). Results are kept as the client saw them
(after masking), up to the per-statement and per-session caps; past them
rows are counted, not kept.

Verdicts are the guardrails' (hoopfast.policy.guard.Verdict), but the core
does not import the policy: they are opaque here, read only for ``action``
and ``rule``, and a statement the trail cannot attribute (an Execute of an
unknown portal, a Bind of an unknown statement) gets the ``unknown``
verdict the Trail was made with.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import struct
import time
import zlib
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hoopfast.core import _drops
from hoopfast.core._shown import declared_types, shown_binary, shown_parameter

# Message type codes (as hoopfast.proxy.postgres.messages; the core does not
# import the proxy). From the client:
_QUERY = ord("Q")
_BIND = ord("B")
_EXECUTE = ord("E")
_SYNC = ord("S")
_DESCRIBE = ord("D")
_CLOSE = ord("C")
_COPY_DONE = ord("c")
_COPY_FAIL = ord("f")
# From the server:
_DATA_ROW = ord("D")
_ROW_DESCRIPTION = ord("T")
_COMMAND_COMPLETE = ord("C")
_EMPTY_QUERY = ord("I")
_PORTAL_SUSPENDED = ord("s")
_READY_FOR_QUERY = ord("Z")
_ERROR_RESPONSE = ord("E")
_NOTICE_RESPONSE = ord("N")
_PARSE_COMPLETE = ord("1")
_BIND_COMPLETE = ord("2")
_CLOSE_COMPLETE = ord("3")
_NO_DATA = ord("n")
_PARAMETER_DESCRIPTION = ord("t")
_COPY_IN_RESPONSE = ord("G")
_COPY_DATA = ord("d")

# Queue entry kinds.
_K_SIMPLE = 0  # Query or FunctionCall: answered up to ReadyForQuery
_K_PARSE = 1
_K_BIND = 2
_K_DESCRIBE = 3
_K_EXECUTE = 4
_K_CLOSE = 5
_K_SYNC = 6
#: A client's CopyDone or CopyFail: no answer of its own; it tells where the
#: Syncs the server ignores during a COPY FROM STDIN end (_copy_in).
_K_COPY_END = 7
#: duplicate_prepared_statement: a Parse of a name the server has.
_NAME_TAKEN = "42P05"
#: The tag of SQL PREPARE (a statement's drops that make a name).
_PREPARE_TAG = _drops.TAGS[_drops.PREPARE]
#: Before the text of a statement SQL PREPARE made, as its runs record it:
#: says where it came from, and keeps a run of it (an Execute) from being
#: read as another PREPARE (_drops reads no text that starts with it).
_SQL_PREPARED = "/* made by SQL PREPARE */ "
#: PostgreSQL keys prepared statements and portals by their names' first 63
#: bytes (NAMEDATALEN - 1: its hash tables cut string keys there), so <63>A
#: and <63>B are one statement: the trail keys every name it reads so.
_NAME_BYTES = 63


@dataclass(slots=True)
class Caps:
    rows: int
    bytes: int
    session_bytes: int


@dataclass(slots=True)
class _ResultSet:
    columns: list[dict[str, Any]]
    formats: list[int]
    rows: list[list[str | None]] = field(default_factory=list)
    truncated: bool = False


def _wall_clock() -> float:
    """time.time() to the microsecond: a statement's times. The compiled log
    writes such values without repr's search for the shortest digits."""
    return time.time_ns() // 1000 / 1e6


def name_key(name: bytes, codec: str, server_codec: str | None) -> bytes:
    """A statement or portal name from a protocol message (in the client
    encoding, ``codec``) as the server keys it: converted to the server's
    encoding (``server_codec``; None where it is the same, or SQL_ASCII,
    which converts nothing), then its first 63 bytes. A name that does not
    convert is refused by the server with its message, whatever its key."""
    if server_codec is not None:
        with contextlib.suppress(UnicodeError, LookupError):
            name = name.decode(codec).encode(server_codec)
    return name[:_NAME_BYTES]


def float_repr(value: float) -> str:
    """repr(value) (the compiled build's is faster for times to the µs)."""
    return repr(value)


def event_lines(events: Sequence[Any]) -> list[str] | None:
    """The state store's block lines of ``events`` (EventRecords; see
    hoopfast.store.blocks), or None when a field would break its line: a
    newline anywhere, a tab before the data (the store escapes those). The
    store's writer thread runs this for every event, holding the GIL the
    data path needs; the compiled build's runs without interpreter
    dispatch."""
    heads = "".join(
        [e.kind for e in events]
        + [e.verdict for e in events]
        + [e.prev_hash for e in events]
        + [e.hash for e in events]
    )
    if "\t" in heads or "\n" in heads or any("\n" in e.data for e in events):
        return None
    return [
        f"{e.seq}\t{float_repr(e.at)}\t{e.kind}\t{e.verdict}\t{e.prev_hash}\t{e.hash}\t{e.data}\n"
        for e in events
    ]


def block_end(
    events: Sequence[Any],
    lines: Sequence[str],
    start: int,
    max_events: int,
    max_chars: int,
    span: float,
) -> int:
    """Where the store block of ``events`` that starts at ``start`` ends
    (exclusive; see hoopfast.store.blocks._block_end): at most
    ``max_events`` events, the first line past ``max_chars`` characters
    ending it, ``span`` seconds after its first event's ``at``; one subject
    and connection; ``at`` never going back."""
    first = events[start]
    chars = len(lines[start])
    previous = first.at
    latest = first.at + span
    end = min(len(events), start + max_events)
    for i in range(start + 1, end):
        e = events[i]
        chars += len(lines[i])
        if (
            e.at < previous
            or e.at > latest
            or chars > max_chars
            or e.subject != first.subject
            or e.connection != first.connection
        ):
            return i
        previous = e.at
    return end


def _nanoseconds(seconds: float) -> int:
    """Whole nanoseconds (half to even), 0 for what is not a duration a
    clock gives (NaN, infinite, centuries)."""
    scaled = seconds * 1e9
    if not abs(scaled) < 9e18:
        return 0
    return round(scaled)


def _milliseconds(seconds: float) -> float:
    """A duration in milliseconds, to the microsecond."""
    micros = seconds * 1e6
    if not math.isfinite(micros):
        return micros / 1000
    return round(micros) / 1000


@dataclass(slots=True)
class Statement:
    """One statement in flight, then done."""

    text: str
    verdict: Any
    params: list[str | None] | None = None
    started: float = 0.0
    started_at: float = 0.0
    rows: int = 0
    #: DataRows since the last CommandComplete (whose count is exact).
    pending_rows: int = 0
    #: Rows past the caps are not counted one by one (a result of millions
    #: would cost a Python loop per row): the tag gives the exact count, or a
    #: suspended portal's Execute limit does; otherwise ``rows`` is a lower
    #: bound and the event says so.
    uncounted: bool = False
    #: An earlier result of the statement (a simple Query of several) passed
    #: the caps and ended without a count: ``rows`` stays a lower bound
    #: whatever later results count.
    inexact: bool = False
    #: The Execute's row limit (0: none).
    max_rows: int = 0
    #: The portal an Execute runs: its columns (from a Describe answered
    #: after the Execute was sent) are read when the rows come.
    portal: _Portal | None = None
    tags: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    results: list[_ResultSet] = field(default_factory=list)
    kept_bytes: int = 0
    result_formats: list[int] = field(default_factory=list)
    #: Time to completion (set when done), and the bytes of the server's
    #: messages that answered it.
    duration: float = 0.0
    server_bytes: int = 0
    #: What this statement drops if it succeeds (_drops): the tag that
    #: confirms it, and the statement and portal names it drops with what
    #: they meant when it was sent. For SQL PREPARE (Trail._preparing): the
    #: name with what it means from it on, and, when it made the name as it
    #: was sent, the name with what it meant before (else nothing).
    drops: tuple[str, dict[bytes, Any], dict[bytes, Any]] | None = None

    def event(self, n: int) -> dict[str, Any]:
        event = {
            "n": n,
            "text": self.text,
            "params": self.params,
            "verdict": self.verdict.action,
            "rule": self.verdict.rule,
            "started_at": self.started_at,
            "duration_ms": _milliseconds(self.duration),
            "rows": self.rows,
            "bytes": self.server_bytes,
            "tags": self.tags,
            "error": self.error,
            "results": [
                {"columns": r.columns, "rows": r.rows, "truncated": r.truncated}
                for r in self.results
            ],
            "result_rows_kept": sum([len(r.rows) for r in self.results]),
        }
        if self.uncounted or self.inexact:
            event["rows_exact"] = False
        return event


_Columns = tuple[list[dict[str, Any]], list[int]]
_T = TypeVar("_T")


@dataclass(slots=True)
class _Portal:
    text: str
    verdict: Any
    params: list[str | None]
    formats: list[int]
    columns: _Columns | None
    #: How many Syncs (and Queries) the client had sent when it was bound:
    #: it ends with the transaction that the next of them may end.
    ends: int = 0
    #: The server closed it (a Close, DISCARD ALL): a failed Bind of its
    #: name does not give it back (Trail._unbound).
    gone: bool = False


@dataclass(slots=True)
class _Entry:
    kind: int
    statement: Statement | None = None
    name: bytes = b""
    #: A Bind's portal, as bound (a later Parse may reuse the name).
    portal: _Portal | None = None
    #: A Close's or a statement Describe's: what its name meant when the
    #: client sent it (a Parse or Bind sent after may give it a new meaning);
    #: a Bind's: the statement it bound, as the trail knew it then.
    meant: Any = None
    #: A Sync's (or Query's): its number among them (Trail._ends); a
    #: Parse's: how many were sent before it (see Trail.unsettled).
    ends: int = 0
    #: A Parse's: what its name meant before it (restored should the server
    #: skip the Parse); a Bind's: the portal its name had (restored should
    #: the Bind fail or be skipped: Trail._unbound).
    previous: Any = None
    #: A Bind's portal name (keyed as the server keys it).
    portal_name: bytes = b""
    #: A Parse's: the session's undo of what it changed for the Parse (called
    #: should the Parse fail or be skipped; see Trail.parse).
    undo: Any = None
    #: A Bind's message (its values are shown again should the statement it
    #: binds turn out to be another; Trail._rebind), or a Parse's that the
    #: trail expects to fail (the types it declares, should it not).
    message: bytes = b""


class Tally:
    """A session's statements added up, by the trail as it finishes each
    (on the compiled build without a Python call per statement): for the
    metrics, read when they are scraped, and the session span's totals.

    ``statements`` counts by verdict (the action); ``durations`` is a
    histogram of the statements' durations over ``bounds`` (seconds,
    increasing; one bucket per bound, a duration equal to a bound in its
    bucket as Prometheus' ``le``, then one past the last), and
    ``duration_ns`` their sum in whole nanoseconds: an integer, so that
    sums of sums are exact in any order (a Prometheus ``_sum`` that went
    down by a rounding would read as a counter reset)."""

    __slots__ = (
        "bounds",
        "duration_ns",
        "durations",
        "errors",
        "rows",
        "server_bytes",
        "statements",
    )

    def __init__(self, bounds: Sequence[float] = ()) -> None:
        self.bounds = tuple(map(float, bounds))
        self.statements: dict[str, int] = {}
        self.errors = 0
        self.rows = 0
        self.server_bytes = 0
        self.durations = [0] * (len(self.bounds) + 1)
        self.duration_ns = 0

    def add(self, st: Statement) -> None:
        action = st.verdict.action
        self.statements[action] = self.statements.get(action, 0) + 1
        if st.error is not None:
            self.errors += 1
        self.rows += st.rows
        self.server_bytes += st.server_bytes
        self.durations[bisect_left(self.bounds, st.duration)] += 1
        self.duration_ns += _nanoseconds(st.duration)


class Trail:
    """Feeds a session's traffic in and follows its statements to their
    answers. A finished statement goes to the ``log`` (its audit event),
    then the ``tally``, then ``done(statement)`` while ``done`` is set (the
    session clears it when it wants no more: calling Python per statement
    is what the compiled build avoids). ``unknown``: the verdict of a
    statement it cannot attribute."""

    def __init__(
        self,
        codec: str,
        caps: Caps,
        mask_text: Any,
        done: Any,
        unknown: Any,
        log: SessionLog | None = None,
        unrecorded: Any = None,
        tally: Tally | None = None,
    ) -> None:
        #: Where a finished statement's event goes (before ``done``), unless
        #: its verdict is ``unrecorded``.
        self._log = log
        self._unrecorded = unrecorded
        self._tally = tally
        #: Called with each finished statement, or None.
        self.done = done
        self._codec = codec
        #: The server's encoding where names convert to it (name_key); set
        #: by the session once it knows.
        self.server_codec: str | None = None
        self._caps = caps
        #: str -> str: the detectors applied to bound parameter values.
        self._mask_text = mask_text
        self._unknown = unknown
        self._queue: deque[_Entry] = deque()
        #: Statement texts (and verdicts) by prepared name, and portals.
        self._statements: dict[bytes, tuple[str, Any]] = {}
        self._portals: dict[bytes, _Portal] = {}
        #: Syncs, Queries and FunctionCalls sent (each ends with a
        #: ReadyForQuery, which may end the transaction and its portals).
        self._ends = 0
        #: The number of the last of them whose ReadyForQuery said idle:
        #: every portal bound before it is gone.
        self._ended = 0
        #: The last Parse that gave its name a meaning, while nothing has
        #: run since (no Bind, Execute, Sync, Query or FunctionCall): (name,
        #: meaning, the types it declared), for a Parse of the same text.
        self._last_parse: tuple[bytes, Any, list[int] | None] | None = None
        #: Parameter types from ParameterDescription, by statement name, with
        #: the statement they describe (a name parsed again has new ones).
        self._param_types: dict[bytes, tuple[Any, list[int]]] = {}
        #: RowDescriptions from Describe, by statement name.
        self._described: dict[bytes, _Columns | None] = {}
        self._session_kept = 0
        #: Parsed RowDescriptions and command tags, by their bytes.
        self._row_descriptions: dict[bytes, _Columns] = {}
        self._tags: dict[bytes, tuple[str, int | None]] = {}
        #: The server skips what the client sends until its next Sync (an
        #: extended-protocol message failed, and no Sync was queued then).
        self._skipping = False
        #: The server is reading a COPY FROM STDIN: it ignores Syncs until
        #: the client's CopyDone or CopyFail.
        self._copying_in = False

    # -- from the client ----------------------------------------------------

    def _start(self, text: str, verdict: Any, params: list[str | None] | None) -> Statement:
        return Statement(text, verdict, params, time.perf_counter(), _wall_clock())

    def query(self, text: str, verdict: Any) -> None:
        if self._skipping:
            return  # (the server ignores it: it never runs)
        self._last_parse = None
        statement = self._start(text, verdict, None)
        self._dropping(statement)
        self._ends += 1
        self._queue.append(_Entry(_K_SIMPLE, statement, ends=self._ends))

    def _dropping(self, st: Statement) -> None:
        """A statement that drops prepared statements by SQL (DEALLOCATE,
        DISCARD ALL): what its names mean now, forgotten once its tag comes
        if they still mean that (as a Close's, _closed)."""
        text = st.text
        if not text or text[0] not in _drops.FIRST:
            return
        found = _drops.drops(text, self._codec)
        if found is None:
            return
        kind, name = found
        name = self._key(name)
        if kind == _drops.PREPARE:
            self._preparing(st, name)
            return
        if kind == _drops.STATEMENT:
            if (meant := self._statements.get(name)) is None:
                return
            statements = {name: meant}
        else:
            statements = dict(self._statements)
        portals = dict(self._portals) if kind == _drops.EVERYTHING else {}
        st.drops = (_drops.TAGS[kind], statements, portals)

    def _takes(self, name: bytes, new: tuple[str, Any]) -> None:
        """``name`` means ``new`` from now on: what the server described for
        what it meant before is forgotten."""
        self._statements[name] = new
        self._described.pop(name, None)
        self._param_types.pop(name, None)

    def _preparing(self, st: Statement, name: bytes) -> None:
        """SQL PREPARE of ``name``, as the trail takes a Parse of it (parse):
        where it knows no statement under the name (or one is dropped before
        it), the name means this SQL from now on, and means what it meant
        again should no PREPARE tag come (it failed: _finish). Where the
        name is taken, it is to fail (42P05) and leave the name as it is;
        should it not (the server had dropped the name where the trail
        could not read it: a DEALLOCATE among other statements), the name
        means this SQL from its tag on (_dropped), and what was sent since
        and bound the name runs it, as after a late ParseComplete."""
        old = self._statements.get(name)
        new = (_SQL_PREPARED + st.text, st.verdict)
        dropped = old is not None and self._dropped_before(name)
        if old is None or dropped:
            self._takes(name, new)
            # (Should it fail, the name is free: a drop queued before it
            # drops the old statement.)
            st.drops = (_PREPARE_TAG, {name: new}, {name: None if dropped else old})
        else:
            st.drops = (_PREPARE_TAG, {name: old}, {})

    def _unprepared(self, drops: tuple[str, dict[bytes, Any], dict[bytes, Any]]) -> None:
        """A SQL PREPARE that made its name as it was sent failed: the name
        means what it meant before (if nothing newer was sent since), and
        what was sent since and bound it runs that (_preparing)."""
        for name, previous in drops[2].items():
            self._give_back(name, drops[1][name], previous)

    def _give_back(self, name: bytes, made: Any, previous: Any) -> None:
        """A statement the trail took ``name`` to mean as it was sent was
        not made (a Parse failed or was skipped, a SQL PREPARE failed):
        unless the name means something newer by now, it means ``previous``
        again (None: nothing), and what was queued since and bound the name
        runs that (_rebind)."""
        if self._statements.get(name) is not made:
            return
        self._forget_statement(name, made)
        if previous is not None:
            self._statements[name] = previous
            self._rebind(name, made, previous, [])

    def _dropped(self, st: Statement, tag: str) -> None:
        assert st.drops is not None
        expected, statements, portals = st.drops
        if tag != expected:
            return
        if expected == _PREPARE_TAG:
            if portals:
                return  # (it made the name as it was sent: _preparing)
            # The name was taken, and the server made it after all.
            new = (_SQL_PREPARED + st.text, st.verdict)
            for name, meant in statements.items():
                current = self._statements.get(name)
                if current is meant or current is None:
                    self._takes(name, new)
                    self._rebind(name, meant, new, [])
            return
        for name, meant in statements.items():
            self._forget_statement(name, meant)
        for name, meant in portals.items():
            self._forget_portal(name, meant)

    def _forget_statement(self, name: bytes, meant: Any) -> None:
        """The server dropped statement ``name``: forget it, unless it means
        something else by now (a Parse sent after the Close or DEALLOCATE,
        which the trail took in as it was sent)."""
        if self._statements.get(name) is meant:
            del self._statements[name]
            self._described.pop(name, None)
            self._param_types.pop(name, None)

    def _forget_portal(self, name: bytes, meant: Any) -> None:
        """(As _forget_statement, for a portal and a later Bind.)"""
        if meant is not None:
            meant.gone = True
        if self._portals.get(name) is meant:
            del self._portals[name]

    def function_call(self, oid: int, verdict: Any) -> None:
        if self._skipping:
            return
        self._last_parse = None
        self._ends += 1
        self._queue.append(
            _Entry(
                _K_SIMPLE,
                self._start(f"-- function call, oid {oid}", verdict, None),
                ends=self._ends,
            )
        )

    def parse(
        self,
        name: bytes,
        text: str,
        verdict: Any,
        message: bytes | None = None,
        undo: Any = None,
    ) -> None:
        """A Parse (``message``, when given: the types it declares are the
        parameters' types until a ParameterDescription says otherwise).
        ``undo``: what to call should the server not carry it out (it fails,
        or is skipped after an earlier error up to Sync): the session's
        bookkeeping of what may run under the name (approved for one run,
        revoked) changes as the Parse is sent. Undos run newest first."""
        if self._skipping:
            if undo is not None:
                undo()  # (the server skips it)
            return
        name = self._key(name)
        entry = _Entry(_K_PARSE, self._start(text, verdict, None), name, ends=self._ends)
        entry.undo = undo
        # A Parse of a name the session still has fails (42P05) and leaves
        # the old statement (unless what is queued before it drops the name:
        # a Close, a DEALLOCATE). Otherwise the name means the new text from
        # now on, and means what it meant before again should the Parse
        # fail or be skipped (_unparsed).
        if name == b"" or name not in self._statements or self._dropped_before(name):
            previous = entry.previous = self._statements.get(name)
            known = entry.meant = self._statements[name] = (text, verdict)
            described = self._described.pop(name, None)
            types = self._param_types.pop(name, None)
            declared = declared_types(message) if message is not None else None
            last = self._last_parse
            self._last_parse = (name, known, declared)
            if (
                last is not None
                and types is not None
                and previous is not None
                and last[0] == name
                and last[1] is previous
                and last[2] == declared
                and previous[0] == text
                and types[0] is previous
            ):
                # The same text, declaring the same types, made again with
                # nothing run since the last Parse (no Bind, Execute, Sync,
                # Query or FunctionCall: nothing of this session's changed
                # what the text means, a search_path, a table, and no
                # transaction ended, which may undo a SET): asyncpg without
                # its statement cache sends Parse, Describe and Flush, then
                # Parse, Bind and Execute. Its columns and parameter types are what the
                # server described for the first (without them binary values
                # are kept as hex, which the detectors cannot read: a card
                # number bound as an int8 went unmasked).
                declared = types[1]
                if described is not None:
                    self._described[name] = described
            if declared is not None:
                self._param_types[name] = (known, declared)
        else:
            # (Expected to fail: what the name means now, which it takes
            # at its ParseComplete should it not; _parsed_after_all.)
            entry.previous = self._statements[name]
            entry.message = message or b""
        self._queue.append(entry)

    def _key(self, name: bytes) -> bytes:
        """A name as the server keys it (name_key)."""
        if self.server_codec is None:
            return name[:_NAME_BYTES]
        return name_key(name, self._codec, self.server_codec)

    def _target(self, message: bytes) -> bytes:
        """A Describe's or Close's "S" or "P" byte and the name after it, as
        the server keys it (empty when the message has no name's end)."""
        end = message.find(b"\0", 6)
        return message[5:6] + self._key(message[6:end]) if end >= 0 else b""

    def _dropped_before(self, name: bytes) -> bool:
        """Whether something queued drops statement ``name`` before a Parse
        sent now (a Close, or a DEALLOCATE or DISCARD ALL): among the last
        _DROP_LOOKBACK entries, where a client puts it (a pipeline of
        Parses of one name must not cost the loop a scan of it each)."""
        closing = b"S" + name
        queue = self._queue
        for i in range(len(queue) - 1, max(-1, len(queue) - 1 - _DROP_LOOKBACK), -1):
            e = queue[i]
            if e.kind == _K_CLOSE and e.name == closing:
                return True
            st = e.statement
            drops = None if st is None else st.drops
            if drops is not None and drops[0] != _PREPARE_TAG and name in drops[1]:
                return True
        return False

    def _unparsed(self, entry: _Entry, skipped: bool, undos: list[Any]) -> None:
        """A Parse that failed (its name now means nothing: the server drops
        a statement it could not make, the unnamed one included) or that
        the server skipped (the name means what it meant before). Its undo,
        and what it did to its name, go to ``undos``, which the caller runs
        newest first: of two skipped Parses of one name, the later gives
        the name back to the earlier, which gives it back to what it had."""
        if entry.undo is not None:
            undos.append(entry.undo)
        if entry.meant is not None:
            undos.append(functools.partial(self._unnamed, entry, skipped))

    def _unnamed(self, entry: _Entry, skipped: bool) -> None:
        """(_unparsed.) The name back to what it meant before the Parse, and
        what the client sent since, before the answer, and bound the name
        (the Binds after the Sync) to the statement that was not made,
        rebound to it (_rebind): they run it."""
        self._give_back(entry.name, entry.meant, entry.previous if skipped else None)

    def unsettled(self, name: bytes) -> bool:
        """Whether a Parse of ``name`` sent before the latest Sync (or Query,
        or FunctionCall) is still unanswered: a Bind of the name sent now
        runs after the server settled it, which the gateway cannot know yet."""
        ends = self._ends
        key = self._key(name)
        return any(e.kind == _K_PARSE and e.name == key and e.ends < ends for e in self._queue)

    def fast_statement(self, type_code: int, message: bytes, text: str, verdict: Any) -> None:
        """A Query, or an unnamed Parse, that the relay's fast path passed
        (hoopfast.core._pump): its text and the verdict it had."""
        if type_code == _QUERY:
            self.query(text, verdict)
        else:
            self.parse(b"", text, verdict, message)

    def client_message(self, type_code: int, message: bytes, refused: Any = None) -> None:
        """Bind, Execute, Sync, Describe, Close, CopyDone and CopyFail, as the
        client sent them (``refused``: the gateway refused this Bind, for
        that reason)."""
        if type_code == _SYNC:
            if self._copying_in:
                return  # (read and ignored by the server during COPY FROM STDIN)
            self._skipping = False
            self._last_parse = None  # (it may end a transaction: see parse)
            self._ends += 1
            self._queue.append(_Entry(_K_SYNC, ends=self._ends))
            return
        if type_code in (_COPY_DONE, _COPY_FAIL):
            if self._copying_in:
                self._copying_in = False
            else:
                self._queue.append(_Entry(_K_COPY_END))
            return
        if self._skipping:
            return  # (skipped by the server up to the Sync)
        if type_code == _BIND:
            self._last_parse = None  # (planning may run functions: see parse)
            self._bind(message, refused)
        elif type_code == _EXECUTE:
            self._last_parse = None
            end = message.find(b"\0", 5)
            portal = self._key(message[5:end]) if end >= 0 else b""
            p = self._portals.get(portal)
            if p is None:
                statement = self._start("", self._unknown, None)
            else:
                statement = self._start(p.text, p.verdict, p.params or None)
                statement.result_formats = p.formats
                statement.portal = p
                self._dropping(statement)
            if end >= 0:
                # int32; zero or less: no limit (as PostgreSQL reads it).
                limit = int.from_bytes(message[end + 1 : end + 5], "big", signed=True)
                statement.max_rows = max(0, limit)
            self._queue.append(_Entry(_K_EXECUTE, statement))
        elif type_code == _DESCRIBE:
            # Its RowDescription belongs to the statement or portal its name
            # means now (and a statement's ParameterDescription): the
            # answer may come after a later Parse or Bind of the name
            # (a pipeline) gave it a new meaning.
            target = self._target(message)
            names = self._statements if target[:1] == b"S" else self._portals
            meant: Any = names.get(target[1:]) if target else None
            self._queue.append(_Entry(_K_DESCRIBE, None, target, meant=meant))
        elif type_code == _CLOSE:
            # Forgotten when the server confirms (_closed).
            target = self._target(message)
            names = self._statements if target[:1] == b"S" else self._portals
            meant = names.get(target[1:]) if target else None  # (else malformed)
            self._queue.append(_Entry(_K_CLOSE, None, target, meant=meant))

    def _bind(self, message: bytes, refused: Any) -> None:
        try:
            portal, name, values, result_formats, _ = parse_bind(message)
        except ValueError:
            # Malformed: the server refuses it; still one answer to follow.
            self._queue.append(_Entry(_K_BIND))
            return
        portal, name = self._key(portal), self._key(name)
        known = self._statements.get(name)
        text, verdict = known or ("", self._unknown)
        verdict = refused or verdict
        entry = _Entry(_K_BIND, None, name, meant=known, message=message)
        entry.portal_name, entry.previous = portal, self._portals.get(portal)
        self._queue.append(entry)
        described, types = self._param_types.get(name, (None, []))
        if described is not known or known is None:
            types = []  # (described before the name was parsed again)
        self._portals[portal] = entry.portal = _Portal(
            text,
            verdict,
            self._shown_values(values, types),
            result_formats,
            self._described.get(name),
            self._ends,
        )

    def _shown_values(
        self, values: list[tuple[int, bytes | None]], types: list[int]
    ) -> list[str | None]:
        """A Bind's values as the trail records them (``types``: the
        statement's parameter types, where known)."""
        return [
            None
            if raw is None
            else shown_parameter(
                raw, fmt, self._codec, self._mask_text, types[i] if i < len(types) else 0
            )
            for i, (fmt, raw) in enumerate(values)
        ]

    # -- from the server ------------------------------------------------------

    def client_run(self, type_code: int, data: bytes) -> None:
        """Client messages as the relay hands them over: one, or a run of
        adjacent ones of any of client_message's types (a framer's
        ``runs``), each as client_message takes it."""
        for code, message in _run_messages(data, b""):
            self.client_message(code, message)

    def server_run(self, type_code: int, data: bytes) -> None:
        """Server messages as the relay hands them over: one, or a run of
        adjacent ones of any of server_message's types, each as
        server_message takes it (adjacent DataRows, or CopyData, as one
        batch)."""
        for code, message in _run_messages(data, _BATCHED):
            self.server_message(code, message)

    def server_message(self, type_code: int, data: bytes) -> None:
        """A server message as forwarded to the client (DataRows and
        CopyData may come as a batch of several)."""
        queue = self._queue
        while queue and queue[0].kind == _K_COPY_END:
            # A CopyDone or CopyFail with nothing before it left to answer:
            # its COPY failed before copy mode (or there was none), and the
            # server ignores one outside COPY FROM STDIN. Nothing answers it,
            # and left at the head it would take the next answers' place.
            queue.popleft()
        if queue and (answering := queue[0].statement) is not None:
            answering.server_bytes += len(data)
        if type_code == _DATA_ROW:
            if queue:
                self._rows(queue[0].statement, data)
            return
        if type_code == _READY_FOR_QUERY:
            undos: list[Any] = []
            while queue:
                entry = queue.popleft()
                if entry.kind == _K_PARSE:
                    self._unparsed(entry, True, undos)  # (never answered)
                if entry.kind == _K_SIMPLE or entry.kind == _K_SYNC:
                    if data[5:6] == b"I":
                        self._transaction_ended(entry.ends)
                    if entry.kind == _K_SIMPLE:
                        self._finish(entry.statement)
                    break
            _run(undos)
            return
        if not queue:
            return
        head = queue[0]
        kind = head.kind
        if type_code == _ERROR_RESPONSE:
            self._error(data)
            return
        if type_code == _COPY_IN_RESPONSE:
            self._copy_in()
            return
        if kind == _K_SIMPLE:
            st = head.statement
            assert st is not None
            if type_code == _ROW_DESCRIPTION:
                st.results.append(_ResultSet(*self._row_description(data)))
            elif type_code == _COMMAND_COMPLETE:
                self._tag(st, data)
            elif type_code == _EMPTY_QUERY:
                st.tags.append("")
            return
        if _COMPLETES.get(type_code) == kind:
            queue.popleft()
            if kind == _K_CLOSE:
                self._closed(head)
            elif kind == _K_PARSE and head.meant is None:
                self._parsed_after_all(head)
        elif kind == _K_DESCRIBE:
            if type_code in (_ROW_DESCRIPTION, _NO_DATA):
                columns = self._row_description(data) if type_code == _ROW_DESCRIPTION else None
                target = head.name
                if target[:1] == b"S":
                    # (For the statement the name still has, as below.)
                    if self._statements.get(target[1:]) is head.meant:
                        self._described[target[1:]] = columns
                elif (p := head.meant) is not None:
                    p.columns = columns
                queue.popleft()
            elif (
                type_code == _PARAMETER_DESCRIPTION
                and head.name[:1] == b"S"
                and self._statements.get(head.name[1:]) is head.meant
            ):
                # (Comes first for a statement; its RowDescription or NoData
                # follows. Only for the statement the name still has: a Parse
                # since may have declared the types of a new one.)
                self._param_types[head.name[1:]] = (head.meant, _oids(data))
        elif kind == _K_EXECUTE:
            st = head.statement
            assert st is not None
            if type_code == _COMMAND_COMPLETE:
                self._tag(st, data)
                queue.popleft()
                self._finish(st)
            elif type_code in (_EMPTY_QUERY, _PORTAL_SUSPENDED):
                st.tags.append("" if type_code == _EMPTY_QUERY else "(suspended)")
                if type_code == _PORTAL_SUSPENDED and st.uncounted and st.max_rows:
                    # Suspended: exactly the Execute's limit of rows came.
                    st.pending_rows, st.uncounted = st.max_rows, False
                queue.popleft()
                self._finish(st)

    def _copy_in(self) -> None:
        """CopyInResponse: until the client's CopyDone or CopyFail the server
        reads CopyData and ignores Syncs (and Flushes), so the Syncs the
        client sent since its COPY get no ReadyForQuery (libpq sends one
        with the Execute, and another after CopyDone)."""
        queue = self._queue
        i = 1
        while i < len(queue):
            kind = queue[i].kind
            if kind == _K_COPY_END:
                del queue[i]
                return
            if kind == _K_SYNC:
                del queue[i]
            else:
                i += 1
        self._copying_in = True

    def _transaction_ended(self, ends: int) -> None:
        """ReadyForQuery, idle: the transaction is over, and with it every
        portal bound before the Sync (or Query) it answers; a portal lasts
        until the end of its transaction (the protocol chapter). Ones bound
        since belong to what the client sent after: they stay."""
        self._ended = ends
        portals = self._portals
        if portals:
            for name in [n for n, p in portals.items() if p.ends < ends]:
                del portals[name]

    def _parsed_after_all(self, entry: _Entry) -> None:
        """The server made a statement under a name the trail thought it
        still had (so the Parse was to fail, 42P05, and leave the old text):
        something dropped the name that the trail could not read (a
        DEALLOCATE among other statements in one Query, a name in an
        encoding it does not know). The new text is the name's from now on,
        so that the record of its next run is not the old statement's; only
        while the name still means what it meant when the Parse was sent (a
        Close and a Parse pipelined after it gave it a newer meaning), or
        nothing (the earlier Parse of it failed: a pipeline). What
        was sent after the Parse and named the old statement named this one
        (_rebind)."""
        st = entry.statement
        assert st is not None
        old, new = entry.previous, (st.text, st.verdict)
        entry.meant = new
        declared = declared_types(entry.message) if entry.message else None
        current = self._statements.get(entry.name)
        if current is old or current is None:
            # (None: a Parse of the name sent before this one failed or was
            # skipped, or a drop the trail read came first; either way the
            # server has no other statement under the name.)
            self._takes(entry.name, new)
            if declared is not None:
                self._param_types[entry.name] = (new, declared)
        self._rebind(entry.name, old, new, declared or [])

    def _rebind(self, name: bytes, old: Any, new: tuple[str, Any], types: list[int]) -> None:
        """What was queued after a Parse of ``name`` that the server carried
        out (_parsed_after_all), sent before its answer, and named the old
        statement ``old``, named the new one ``new`` (libpq's pipeline mode,
        asyncpg and JDBC batches send Parse, Bind and Execute together):

        - Binds: their portals, and the Executes of those portals queued
          since, take its text and verdict (a refused Bind keeps its
          refusal); the values are shown again with the Parse's declared
          types (``types``) rather than the old statement's, and the old
          statement's columns are forgotten (a Describe of the portal, or
          the result's own, tells them). An Execute's SQL drops are not
          read again: what its names meant when it was sent is not known
          now (a name it drops stays kept; a later Parse of it repairs that
          as this one did).
        - A later Parse of the name, expected to fail too, restores (or
          takes the name from) the new statement, and a Close or Describe
          of the statement acts on it."""
        rebound: list[_Portal] = []
        for e in self._queue:
            if e.kind == _K_BIND and e.name == name and e.meant is old and e.portal is not None:
                p = e.portal
                e.meant = new
                if p.verdict is old[1]:
                    p.verdict = new[1]
                p.text = new[0]
                p.columns = None
                p.params = self._shown_values(parse_bind(e.message)[2], types)
                rebound.append(p)
            elif e.kind == _K_EXECUTE and e.statement is not None:
                st, portal = e.statement, e.statement.portal
                if portal is not None and any(portal is r for r in rebound):
                    st.text, st.verdict = portal.text, portal.verdict
                    st.params = portal.params or None
                    st.drops = None
            elif e.kind == _K_PARSE and e.name == name and e.previous is old:
                e.previous = new
            elif e.kind in (_K_CLOSE, _K_DESCRIBE) and e.name == b"S" + name and e.meant is old:
                e.meant = new

    def _closed(self, entry: _Entry) -> None:
        """The server closed a statement or portal: forget its name, so that
        a session naming statement after statement keeps only those open."""
        target, meant = entry.name, entry.meant
        if meant is None:
            return
        if target[:1] == b"S":
            self._forget_statement(target[1:], meant)
        else:
            self._forget_portal(target[1:], meant)

    def _rows(self, st: Statement | None, data: bytes) -> None:
        if st is None:
            return
        if not st.results:
            described = st.portal.columns if st.portal is not None else None
            columns, formats = described or ([], [])
            if st.result_formats:
                formats = _formats(st.result_formats, len(columns))
            st.results.append(_ResultSet(columns, formats))
        result = st.results[-1]
        if result.truncated:
            st.uncounted = True  # (see Statement.uncounted)
            return
        caps = self._caps
        pos = 0
        end = len(data)
        while pos < end:
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            nxt = pos + 1 + length
            if (
                len(result.rows) < caps.rows
                and st.kept_bytes + length <= caps.bytes
                and self._session_kept + length <= caps.session_bytes
            ):
                st.pending_rows += 1  # a suspended portal's rows have no tag
                result.rows.append(
                    self._decode_row(data, pos + 5, min(nxt, end), result.formats, result.columns)
                )
                st.kept_bytes += length
                self._session_kept += length
            else:
                result.truncated = True
                st.uncounted = True
                return
            pos = nxt

    def _decode_row(
        self,
        data: bytes,
        pos: int,
        end: int,
        formats: list[int],
        columns: list[dict[str, Any]],
    ) -> list[str | None]:
        """A DataRow's values, read within the row's own length (``end``):
        a malformed row never reads into the next one of a batch, and its
        values stop where its bytes do."""
        count = int.from_bytes(data[pos : min(pos + 2, end)], "big")
        pos += 2
        row: list[str | None] = []
        for i in range(count):
            if pos + 4 > end:
                break
            length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            pos += 4
            if length < 0:
                row.append(None)
                continue
            raw = data[pos : min(pos + length, end)]
            if i < len(formats) and formats[i] == 1:
                oid = columns[i]["type_oid"] if i < len(columns) else 0
                row.append(shown_binary(raw, oid, self._codec))
            else:
                row.append(raw.decode(self._codec, "replace"))
            pos += length
        return row

    def _row_description(self, data: bytes) -> _Columns:
        """Columns and formats of a RowDescription; a session asks the same
        few again and again, so they are read once (never changed after)."""
        known = self._row_descriptions.get(data)
        if known is None:
            known = _remember(self._row_descriptions, data, _row_description(data, self._codec))
        return known

    def _tag(self, st: Statement, data: bytes) -> None:
        known = self._tags.get(data)
        if known is None:
            known = _remember(self._tags, data, _read_tag(data))
        tag, count = known
        st.tags.append(tag)
        if st.drops is not None:
            self._dropped(st, tag)
        if count is not None:
            st.rows += count  # exact, where DataRows may not be seen (COPY)
            st.uncounted = False
        else:
            st.rows += st.pending_rows
            if st.uncounted:
                st.inexact = True  # (this result's rows are a lower bound)
        st.pending_rows = 0

    def _error(self, data: bytes) -> None:
        # (An error ends a COPY FROM STDIN: the server drops the rest of its
        # data, and Syncs count again.)
        self._copying_in = False
        queue = self._queue
        code, message = _error_fields(data, self._codec)
        error = {"sqlstate": code, "message": message}
        head = queue[0]
        if head.kind == _K_SIMPLE:
            assert head.statement is not None
            head.statement.error = error
            return  # ReadyForQuery completes it
        if head.kind == _K_SYNC:
            # The Sync itself failed (a deferred constraint at the implicit
            # commit): its ReadyForQuery follows; nothing after it is skipped
            # (dropping up to the next Sync would leave a pipelined batch
            # that ran out of the trail). Its statements were recorded as
            # they completed: the failed commit is an event of its own.
            commit = self._start(SYNC_COMMIT, self._unknown, None)
            commit.error = error
            self._finish(commit)
            return
        # Extended: this message failed; the server skips the rest up to Sync.
        queue.popleft()
        undos: list[Any] = []
        if head.kind == _K_PARSE:
            # 42P05: the name was taken, and keeps what it meant (a Close or
            # DEALLOCATE the trail saw queued before the Parse was skipped):
            # as for a skipped Parse. Any other failure leaves no statement.
            self._unparsed(head, code == _NAME_TAKEN, undos)
        st = head.statement
        if head.kind == _K_BIND:
            # A Bind that fails (or a refused one's stand-in): the statement
            # it binds was attempted. (PostgreSQL may even run parts of it
            # then: a custom plan folds constants, so 1/$1 with 0 fails here.)
            p = head.portal
            st = (
                self._start("", self._unknown, None)
                if p is None
                else self._start(p.text, p.verdict, p.params or None)
            )
        if st is not None:
            st.error = error
            self._finish(st)
        unbound = [head] if head.kind == _K_BIND else []
        while queue and queue[0].kind != _K_SYNC:
            skipped = queue.popleft()
            if skipped.kind == _K_PARSE:
                self._unparsed(skipped, True, undos)
            elif skipped.kind == _K_BIND:
                unbound.append(skipped)
        if not queue:
            # No Sync sent yet: what the client sends until it is skipped too.
            self._skipping = True
        for entry in reversed(unbound):
            self._unbound(entry)
        _run(undos)

    def _unbound(self, entry: _Entry) -> None:
        """A Bind that failed or that the server skipped made no portal, and
        left the one its name had (a Bind of an open named portal fails,
        42P03; one sent after an error is skipped). Should that portal live
        on (bound before a SAVEPOINT the client rolls back to), its next run
        is recorded as what it runs, not as this Bind's statement: the
        name, and the Executes and Closes of the name sent since, get it
        back, unless the server dropped it meanwhile (a Close, the end of
        its transaction). So do later Binds of the name that took the failed
        portal for the name's, should they fail too. (Called newest first
        for the Binds of one error.)"""
        failed, previous = entry.portal, entry.previous
        if failed is None:
            return
        if previous is not None and (previous.gone or previous.ends < self._ended):
            previous = None
        if self._portals.get(entry.portal_name) is failed:
            if previous is None:
                del self._portals[entry.portal_name]
            else:
                self._portals[entry.portal_name] = previous
        for e in self._queue:
            if e.kind == _K_BIND and e.previous is failed:
                e.previous = previous
            elif e.kind == _K_EXECUTE and e.statement is not None and e.statement.portal is failed:
                st = e.statement
                if previous is None:
                    st.text, st.verdict, st.params = "", self._unknown, None
                    st.result_formats, st.portal = [], None
                else:
                    st.text, st.verdict = previous.text, previous.verdict
                    st.params = previous.params or None
                    st.result_formats, st.portal = previous.formats, previous
                st.drops = None
            elif (e.kind == _K_CLOSE or e.kind == _K_DESCRIBE) and e.meant is failed:
                e.meant = previous

    def abandon(self) -> None:
        """The session ended: the statements still waiting for their answer
        (the client left mid-statement, the server ended the session with a
        FATAL) are recorded as far as they got, with an error saying so
        unless they had one: the server may have run them."""
        queue = self._queue
        while queue:
            entry = queue.popleft()
            st = entry.statement
            if st is not None and entry.kind in (_K_SIMPLE, _K_EXECUTE):
                if st.error is None:
                    st.error = dict(UNANSWERED)
                self._finish(st)

    def _finish(self, st: Statement | None) -> None:
        if st is None:
            return
        drops = st.drops
        if (
            drops is not None
            and drops[2]
            and drops[0] == _PREPARE_TAG
            and _PREPARE_TAG not in st.tags
        ):
            self._unprepared(drops)  # (a SQL PREPARE that made its name failed)
        st.rows += st.pending_rows
        st.pending_rows = 0
        st.duration = time.perf_counter() - st.started
        if self._log is not None and st.verdict is not self._unrecorded:
            self._log.statement(st)
        if self._tally is not None:
            self._tally.add(st)
        if self.done is not None:
            self.done(st)


def _run(undos: list[Any]) -> None:
    """Parses' undos, newest first (each restores what was before its Parse)."""
    for undo in reversed(undos):
        undo()


#: The text of the event for a Sync whose implicit commit failed.
SYNC_COMMIT = "-- the implicit commit at Sync"
#: The error of a statement the session ended before its answer completed.
UNANSWERED = {
    "sqlstate": "08006",
    "message": "no complete answer: the session ended first (the statement may have run)",
}

#: Server types a run hands to server_message in batches (see server_run).
_BATCHED = bytes([_DATA_ROW, _COPY_DATA])


def _run_messages(data: bytes, batched: bytes) -> list[tuple[int, bytes]]:
    """A run's messages (adjacent ones of a ``batched`` type together), by
    their headers; what a header does not frame (never, from the framer)
    goes as one message."""
    size = len(data)
    if size >= 5 and 1 + int.from_bytes(data[1:5], "big") == size:
        return [(data[0], data)]  # (the usual case: one message, as is)
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < size:
        code = data[pos]
        end = _message_end(data, pos)
        while code in batched and end < size and data[end] == code:
            end = _message_end(data, end)
        out.append((code, data[pos:end]))
        pos = end
    return out


def _message_end(data: bytes, pos: int) -> int:
    """Where the message at ``pos`` ends; the data's end where its header
    is cut short or impossible."""
    length = int.from_bytes(data[pos + 1 : pos + 5], "big")
    end = pos + 1 + length
    return end if length >= 4 and pos + 5 <= len(data) and end <= len(data) else len(data)


#: ParseComplete, BindComplete, CloseComplete: which entry each completes.
_COMPLETES = {_PARSE_COMPLETE: _K_PARSE, _BIND_COMPLETE: _K_BIND, _CLOSE_COMPLETE: _K_CLOSE}
_COUNTING = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})


#: Distinct RowDescriptions (and tags) a session keeps parsed.
_CACHED = 64
#: Queue entries a Parse of a name the session has looks back through for
#: what drops the name first (Trail._dropped_before).
_DROP_LOOKBACK = 64


def _remember(cache: dict[bytes, _T], key: bytes, value: _T) -> _T:
    """Put ``value`` in a per-session parse cache, emptied when full."""
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = value
    return value


def _read_tag(data: bytes) -> tuple[str, int | None]:
    """A CommandComplete's tag, and its row count where the tag has one."""
    tag = data[5:-1].decode("ascii", "replace")
    words = tag.split()
    # (A count has at most 20 digits, uint64: a longer one from a broken
    # server is no count, rather than an int() past Python's digit limit.)
    if words and words[-1].isdigit() and len(words[-1]) <= 20 and words[0] in _COUNTING:
        return tag, int(words[-1])
    return tag, None


def _oids(data: bytes) -> list[int]:
    """A ParameterDescription's type OIDs (as many as the message holds)."""
    count = int.from_bytes(data[5:7], "big")
    return [int.from_bytes(data[7 + 4 * i : 11 + 4 * i], "big") for i in range(count)]


#: Columns a result can have (PostgreSQL's MaxTupleAttributeNumber).
_MAX_COLUMNS = 1664


def _formats(codes: list[int], n: int) -> list[int]:
    if not codes:
        return [0] * n
    if len(codes) == 1:
        # One code is every column's: binary for all of them even when no
        # Describe said how many there are (their values are shown as hex).
        return codes * (n if n or codes[0] != 1 else _MAX_COLUMNS)
    return codes


def _row_description(data: bytes, codec: str) -> tuple[list[dict[str, Any]], list[int]]:
    columns: list[dict[str, Any]] = []
    formats: list[int] = []
    try:
        count = int.from_bytes(data[5:7], "big")
        pos = 7
        for _ in range(count):
            end = data.index(b"\0", pos)
            name = data[pos:end].decode(codec, "replace")
            pos = end + 1
            type_oid = int.from_bytes(data[pos + 6 : pos + 10], "big")
            fmt = int.from_bytes(data[pos + 16 : pos + 18], "big")
            pos += 18
            columns.append({"name": name, "type_oid": type_oid})
            formats.append(fmt)
    except ValueError:
        pass
    return columns, formats


def _error_fields(data: bytes, codec: str) -> tuple[str, str]:
    """An ErrorResponse's SQLSTATE (C) and message (M) in the session's
    client encoding (``codec``), "" where absent or when the message is
    malformed (as hoopfast.core.decode_fields rejects
    it: a wrong type byte or length, an unterminated field, trailing bytes)."""
    size = len(data)
    if (
        size < 5
        or data[0] not in (_ERROR_RESPONSE, _NOTICE_RESPONSE)
        or int.from_bytes(data[1:5], "big", signed=True) != size - 1
    ):
        return "", ""
    fields: dict[int, bytes] = {}
    pos = 5
    while True:
        if pos >= size:
            return "", ""  # no terminator
        code = data[pos]
        if not code:
            if pos + 1 != size:
                return "", ""  # trailing bytes
            break
        end = data.find(b"\0", pos + 1)
        if end < 0:
            return "", ""  # unterminated field
        fields[code] = data[pos + 1 : end]
        pos = end + 1
    return (
        fields.get(ord("C"), b"").decode(codec, "replace"),
        fields.get(ord("M"), b"").decode(codec, "replace"),
    )


_INT16 = struct.Struct(">H")
_INT32 = struct.Struct(">i")


@functools.lru_cache(maxsize=64)
def _int16s(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def parse_bind(
    message: bytes,
) -> tuple[bytes, bytes, list[tuple[int, bytes | None]], list[int], bytes]:
    """A whole Bind message read: its portal, statement name, (format, raw
    value or None) per parameter, result formats, and the bytes of the
    parameter formats and values as sent (hoopfast.proxy.postgres.messages
    .parse_bind makes its Bind of them); ValueError when it is malformed."""
    portal_end = message.find(b"\0", 5)
    name_end = message.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
    if name_end < 0:
        raise ValueError("Bind without its names")
    size = len(message)
    pos = start = name_end + 1
    try:
        # struct reads each array of codes in one call (this runs for every
        # Bind of a recorded session); struct.error is a message cut short.
        (nfmt,) = _INT16.unpack_from(message, pos)
        formats = _int16s(nfmt).unpack_from(message, pos + 2)
        pos += 2 + 2 * nfmt
        (nparams,) = _INT16.unpack_from(message, pos)
        pos += 2
        values: list[tuple[int, bytes | None]] = []
        for i in range(nparams):
            (length,) = _INT32.unpack_from(message, pos)
            pos += 4
            fmt = formats[0] if nfmt == 1 else (formats[i] if i < nfmt else 0)
            if length < 0:
                values.append((fmt, None))
                continue
            if pos + length > size:
                raise ValueError("Bind cut short")
            values.append((fmt, message[pos : pos + length]))
            pos += length
        section = message[start:pos]
        (nres,) = _INT16.unpack_from(message, pos)
        results = list(_int16s(nres).unpack_from(message, pos + 2))
    except struct.error:
        raise ValueError("Bind cut short") from None
    return message[5:portal_end], message[portal_end + 1 : name_end], values, results, section


# -- the statement's audit event ------------------------------------------------


class Journal:
    """What the data path recorded and the spool does not have yet: spool
    frames, in order, each with its record for the store, and the writes
    to clients held back behind them. The recorder writes the frames with
    one write at the end of the loop iteration, then lets the writes go
    (hoopfast.recording.recorder.Recorder.commit).

    It is the relay pumps' barrier (hoopfast.core._pump): a write to a
    client waits while the journal is ``pending``. ``on_first()`` is
    called once each time it becomes pending (the recorder schedules its
    commit there); ``take`` ends that."""

    def __init__(self, on_first: Callable[[], Any]) -> None:
        self.frames: list[bytes] = []
        self.records: list[Any] = []
        self.deferred: list[tuple[Any, bytes]] = []
        #: Past the spool's bound with on_full "continue": events are
        #: dropped (counted), but for the essential ones.
        self.dropping = False
        self.dropped = 0
        #: Something waits for the commit ``on_first`` scheduled.
        self.pending = False
        self.on_first = on_first

    def add(self, frame: bytes, record: Any, essential: bool = False) -> None:
        """``on_first()`` is called when the journal stops being empty."""
        if self.dropping and not essential:
            self.dropped += 1
            return
        if not self.pending:
            self._arm()
        self.frames.append(frame)
        self.records.append(record)

    def defer(self, pump: Any, data: bytes) -> None:
        """Hold ``data`` back until the commit: then ``pump.deferred_write``."""
        if not self.pending:
            self._arm()
        self.deferred.append((pump, data))

    def _arm(self) -> None:
        """The journal becomes pending: ``on_first()``, then the flag (should
        it raise, the next record asks again)."""
        self.on_first()
        self.pending = True

    def take(self) -> tuple[list[bytes], list[Any]]:
        """(frames, records), leaving the journal empty and not pending."""
        frames, records = self.frames, self.records
        self.frames, self.records = [], []
        self.pending = False
        return frames, records

    def take_deferred(self) -> list[tuple[Any, bytes]]:
        """The writes held back, in order (pump, data)."""
        deferred, self.deferred = self.deferred, []
        return deferred

    @staticmethod
    def release(deferred: list[tuple[Any, bytes]], written: bool) -> None:
        """Each held-back write to its pump: ``data``, or None when the
        frames before it could not be written (it is dropped)."""
        for pump, data in deferred:
            pump.deferred_write(data if written else None)


_FRAME_HEADER = struct.Struct(">II")
#: A session log remembers what it showed of this many texts, each up to
#: this many characters.
_SHOWN_TEXTS = 256
_SHOWN_TEXT_MAX = 4096


def frame(payload: bytes) -> bytes:
    """The spool's framing of one record: big-endian length and CRC-32
    (hoopfast.recording.spool reads it)."""
    return _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class SessionLog:
    """One session's hash chain, as the recorder keeps it: sequence numbers
    and the last hash; its events go into the journal as spool frames (the
    record ``e``, the previous hash, the hash, the event's JSON) with their
    store records.

    An event's hash is SHA-256 over the previous hash, a newline and the
    event's JSON: ``encode(body)``, the recorder's canonical encoder
    (hoopfast.recording.chain.encode_event). The trail hands each finished
    statement to :meth:`statement`; the compiled build writes the same JSON
    without building the dict (see ext/_ctrail.pyx).
    """

    def __init__(
        self,
        journal: Journal,
        session_id: str,
        subject: str,
        connection: str,
        record: Callable[..., Any],
        encode: Callable[[dict[str, Any]], bytes],
        statement_kind: str,
        max_bytes: int,
        genesis: str,
        show_text: Callable[[str], str] | None = None,
    ) -> None:
        self._journal = journal
        #: What a statement event shows of its text (the recorder's:
        #: hoopfast.masking.statement_text, secrets replaced); None: as is.
        self._show_text = show_text
        #: Its answers for this session's recent texts (see _shown_text).
        self._shown: dict[str, str] = {}
        self.session_id = session_id
        self.subject = subject
        self.connection = connection
        self._record = record
        self._encode = encode
        self._statement_kind = statement_kind
        self._max_bytes = max_bytes
        #: Events so far (the next one's seq), and the last one's hash.
        self.count = 0
        self.last_hash = genesis
        self.statements = 0

    def append(
        self, kind: str, at: float, verdict: str, body: dict[str, Any], essential: bool = False
    ) -> None:
        """An event from a dict (session start and end, and statements from
        elsewhere than a trail): ``body`` is taken over."""
        seq = self.count
        if kind == self._statement_kind:
            text = body.get("text")
            if type(text) is str:
                body["text"] = self._shown_text(text)
        body["session"] = self.session_id
        body["seq"] = seq
        body["kind"] = kind
        body["at"] = at
        body["subject"] = self.subject
        body["connection"] = self.connection
        body["verdict"] = verdict
        self._add(seq, at, kind, verdict, self._encode(body), essential)

    def _shown_text(self, text: str) -> str:
        """``show_text(text)``, remembered for the session's last texts (a
        prepared statement's is the same each time); a long text is not
        kept."""
        show = self._show_text
        if show is None:
            return text
        shown = self._shown.get(text)
        if shown is None:
            shown = show(text)
            if len(text) <= _SHOWN_TEXT_MAX:
                if len(self._shown) >= _SHOWN_TEXTS:
                    self._shown.clear()
                self._shown[text] = shown
        return shown

    def statement(self, st: Statement) -> None:
        """A finished statement's event (n: its number in the session)."""
        self.statements += 1
        self.append(
            self._statement_kind, _wall_clock(), st.verdict.action, st.event(self.statements)
        )

    def _add(
        self, seq: int, at: float, kind: str, verdict: str, raw: bytes, essential: bool
    ) -> None:
        prev = self.last_hash
        prev_b = prev.encode()
        hash_ = hashlib.sha256(prev_b + b"\n" + raw).hexdigest()
        record = self._record(
            self.session_id,
            seq,
            at,
            kind,
            self.subject,
            self.connection,
            verdict,
            raw.decode(),
            prev,
            hash_,
        )
        self._journal.add(frame(b"e" + prev_b + hash_.encode() + raw), record, essential)
        self.count = seq + 1
        self.last_hash = hash_
