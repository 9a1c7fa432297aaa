"""A session's statements as the audit trail records them.

The trail follows the protocol from both sides, the way the server answers
it: every client message that gets an answer joins a queue, and server
messages complete the entry at its head. A simple Query (or a
FunctionCall) is one statement, answered up to its ReadyForQuery; in the
extended protocol each Execute is one, its text the Parse's and its
parameters the Bind's. A Parse or Bind that fails is recorded as a statement
that failed (a statement the guardrails refused fails exactly so, through
its stand-in), and what the server skips after an error up to Sync never
ran, so it is not recorded.

The event is written when the statement's answer is complete and before
the message that completes it goes to the client (see
hoopfast.recording.recorder). Results are kept as the client saw them
(after masking), up to the per-statement and per-session caps; past them
rows are counted, not kept.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hoopfast.core import decode_fields
from hoopfast.policy.guard import ALLOW, Verdict
from hoopfast.proxy.postgres import messages as m

#: Client messages the trail must see beyond what the guardrails intercept.
CLIENT_TYPES = bytes([m.BIND, m.EXECUTE, m.SYNC, m.DESCRIBE, m.CLOSE])
#: Server messages it must see (ErrorResponse is intercepted already).
SERVER_TYPES = bytes(
    [
        m.ROW_DESCRIPTION,
        m.DATA_ROW,
        m.COMMAND_COMPLETE,
        m.EMPTY_QUERY,
        m.PORTAL_SUSPENDED,
        m.READY_FOR_QUERY,
        m.PARSE_COMPLETE,
        m.BIND_COMPLETE,
        m.CLOSE_COMPLETE,
        m.NO_DATA,
        ord("t"),  # ParameterDescription
        ord("V"),  # FunctionCallResponse
        # COPY: only counted (the rows come from the tag), never kept.
        ord("G"),  # CopyInResponse
        m.COPY_OUT_RESPONSE,
        m.COPY_BOTH_RESPONSE,
        m.COPY_DATA,
        m.COPY_DONE,
    ]
)

# Queue entry kinds.
_SIMPLE = 0  # Query or FunctionCall: answered up to ReadyForQuery
_PARSE = 1
_BIND = 2
_DESCRIBE = 3
_EXECUTE = 4
_CLOSE = 5
_SYNC = 6


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


@dataclass(slots=True)
class Statement:
    """One statement in flight, then done."""

    text: str
    verdict: Verdict
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

    def event(self, n: int) -> dict[str, Any]:
        event = {
            "n": n,
            "text": self.text,
            "params": self.params,
            "verdict": self.verdict.action,
            "rule": self.verdict.rule,
            "started_at": self.started_at,
            "duration_ms": round(self.duration * 1000, 3),
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
        if self.uncounted:
            event["rows_exact"] = False
        return event


_Columns = tuple[list[dict[str, Any]], list[int]]
_T = TypeVar("_T")


@dataclass(slots=True)
class _Portal:
    text: str
    verdict: Verdict
    params: list[str | None]
    formats: list[int]
    columns: _Columns | None


@dataclass(slots=True)
class _Entry:
    kind: int
    statement: Statement | None = None
    name: bytes = b""
    #: A Bind's portal, as bound (a later Parse may reuse the name).
    portal: _Portal | None = None


class Trail:
    """Feeds a session's traffic in, calls ``done(statement)`` per statement."""

    def __init__(self, codec: str, caps: Caps, mask_text: Any, done: Any) -> None:
        self._codec = codec
        self._caps = caps
        #: str -> str: the detectors applied to bound parameter values.
        self._mask_text = mask_text
        self._done = done
        self._queue: deque[_Entry] = deque()
        #: Statement texts (and verdicts) by prepared name, and portals.
        self._statements: dict[bytes, tuple[str, Verdict]] = {}
        self._portals: dict[bytes, _Portal] = {}
        #: RowDescriptions from Describe, by statement name.
        self._described: dict[bytes, _Columns | None] = {}
        self._session_kept = 0
        #: Parsed RowDescriptions and command tags, by their bytes.
        self._row_descriptions: dict[bytes, _Columns] = {}
        self._tags: dict[bytes, tuple[str, int | None]] = {}

    # -- from the client ----------------------------------------------------

    def _start(self, text: str, verdict: Verdict, params: list[str | None] | None) -> Statement:
        return Statement(text, verdict, params, time.perf_counter(), time.time())

    def query(self, text: str, verdict: Verdict) -> None:
        self._queue.append(_Entry(_SIMPLE, self._start(text, verdict, None)))

    def function_call(self, oid: int, verdict: Verdict) -> None:
        self._queue.append(
            _Entry(_SIMPLE, self._start(f"-- function call, oid {oid}", verdict, None))
        )

    def parse(self, name: bytes, text: str, verdict: Verdict) -> None:
        self._statements[name] = (text, verdict)
        self._queue.append(_Entry(_PARSE, self._start(text, verdict, None), name))

    def client_message(
        self, type_code: int, message: bytes, refused: Verdict | None = None
    ) -> None:
        """Bind, Execute, Sync, Describe and Close, as the client sent them
        (``refused``: the gateway refused this Bind, for that reason)."""
        if type_code == m.BIND:
            self._bind(message, refused)
        elif type_code == m.EXECUTE:
            end = message.find(b"\0", 5)
            portal = message[5:end] if end >= 0 else b""
            p = self._portals.get(portal)
            if p is None:
                statement = self._start("", ALLOW, None)
            else:
                statement = self._start(p.text, p.verdict, p.params or None)
                statement.result_formats = p.formats
                statement.portal = p
            if end >= 0:
                statement.max_rows = int.from_bytes(message[end + 1 : end + 5], "big")
            self._queue.append(_Entry(_EXECUTE, statement))
        elif type_code == m.SYNC:
            self._queue.append(_Entry(_SYNC))
        elif type_code == m.DESCRIBE:
            # "S" or "P" and the name: its RowDescription belongs to it.
            end = message.find(b"\0", 6)
            target = message[5:end] if end >= 0 else b""
            self._queue.append(_Entry(_DESCRIBE, None, target))
        elif type_code == m.CLOSE:
            self._queue.append(_Entry(_CLOSE))

    def _bind(self, message: bytes, refused: Verdict | None) -> None:
        try:
            bind = m.parse_bind(message)
        except ValueError:
            # Malformed: the server refuses it; still one answer to follow.
            self._queue.append(_Entry(_BIND))
            return
        text, verdict = self._statements.get(bind.statement, ("", ALLOW))
        verdict = refused or verdict
        entry = _Entry(_BIND, None, bind.statement)
        self._queue.append(entry)
        params = [
            None if raw is None else self._value(raw, fmt, masked=True) for fmt, raw in bind.values
        ]
        self._portals[bind.portal] = entry.portal = _Portal(
            text, verdict, params, bind.result_formats, self._described.get(bind.statement)
        )

    def _value(self, raw: bytes, fmt: int, masked: bool = False) -> str:
        if fmt == 1:
            return "\\x" + raw.hex()
        value = raw.decode(self._codec, "replace")
        return self._mask_text(value) if masked else value

    # -- from the server ------------------------------------------------------

    def server_message(self, type_code: int, data: bytes) -> None:
        """A server message as forwarded to the client (DataRows and
        CopyData may come as a batch of several)."""
        queue = self._queue
        if queue and (answering := queue[0].statement) is not None:
            answering.server_bytes += len(data)
        if type_code == m.DATA_ROW:
            if queue:
                self._rows(queue[0].statement, data)
            return
        if type_code == m.READY_FOR_QUERY:
            while queue:
                entry = queue.popleft()
                if entry.kind == _SIMPLE:
                    self._finish(entry.statement)
                    return
                if entry.kind == _SYNC:
                    return
            return
        if not queue:
            return
        head = queue[0]
        kind = head.kind
        if type_code == m.ERROR_RESPONSE:
            self._error(data)
            return
        if kind == _SIMPLE:
            st = head.statement
            assert st is not None
            if type_code == m.ROW_DESCRIPTION:
                st.results.append(_ResultSet(*self._row_description(data)))
            elif type_code == m.COMMAND_COMPLETE:
                self._tag(st, data)
            elif type_code == m.EMPTY_QUERY:
                st.tags.append("")
            return
        if _COMPLETES.get(type_code) == kind:
            queue.popleft()
        elif kind == _DESCRIBE:
            if type_code in (m.ROW_DESCRIPTION, m.NO_DATA):
                columns = self._row_description(data) if type_code == m.ROW_DESCRIPTION else None
                target = head.name
                if target[:1] == b"S":
                    self._described[target[1:]] = columns
                elif (p := self._portals.get(target[1:])) is not None:
                    p.columns = columns
                queue.popleft()
            # ParameterDescription ("t") comes first for a statement: keep waiting.
        elif kind == _EXECUTE:
            st = head.statement
            assert st is not None
            if type_code == m.COMMAND_COMPLETE:
                self._tag(st, data)
                queue.popleft()
                self._finish(st)
            elif type_code in (m.EMPTY_QUERY, m.PORTAL_SUSPENDED):
                st.tags.append("" if type_code == m.EMPTY_QUERY else "(suspended)")
                if type_code == m.PORTAL_SUSPENDED and st.uncounted and st.max_rows:
                    # Suspended: exactly the Execute's limit of rows came.
                    st.pending_rows, st.uncounted = st.max_rows, False
                queue.popleft()
                self._finish(st)

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
                result.rows.append(self._decode_row(data, pos + 5, nxt, result.formats))
                st.kept_bytes += length
                self._session_kept += length
            else:
                result.truncated = True
                st.uncounted = True
                return
            pos = nxt

    def _decode_row(self, data: bytes, pos: int, end: int, formats: list[int]) -> list[str | None]:
        count = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        row: list[str | None] = []
        for i in range(count):
            length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            pos += 4
            if length < 0:
                row.append(None)
                continue
            fmt = formats[i] if i < len(formats) else 0
            row.append(self._value(data[pos : pos + length], fmt))
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
        if count is not None:
            st.rows += count  # exact, where DataRows may not be seen (COPY)
            st.uncounted = False
        else:
            st.rows += st.pending_rows
        st.pending_rows = 0

    def _error(self, data: bytes) -> None:
        queue = self._queue
        try:
            fields = dict(decode_fields(data))
        except ValueError:
            fields = {}
        error = {"sqlstate": fields.get("C", ""), "message": fields.get("M", "")}
        head = queue[0]
        if head.kind == _SIMPLE:
            assert head.statement is not None
            head.statement.error = error
            return  # ReadyForQuery completes it
        # Extended: this message failed; the server skips the rest up to Sync.
        queue.popleft()
        st = head.statement
        if head.kind == _BIND:
            # A Bind that fails (or a refused one's stand-in): the statement
            # it binds was attempted. (PostgreSQL may even run parts of it
            # then: a custom plan folds constants, so 1/$1 with 0 fails here.)
            p = head.portal
            st = (
                self._start("", ALLOW, None)
                if p is None
                else self._start(p.text, p.verdict, p.params or None)
            )
        if st is not None:
            st.error = error
            self._finish(st)
        while queue and queue[0].kind != _SYNC:
            queue.popleft()

    def _finish(self, st: Statement | None) -> None:
        if st is None:
            return
        st.rows += st.pending_rows
        st.pending_rows = 0
        st.duration = time.perf_counter() - st.started
        self._done(st)


#: ParseComplete, BindComplete, CloseComplete: which entry each completes.
_COMPLETES = {m.PARSE_COMPLETE: _PARSE, m.BIND_COMPLETE: _BIND, m.CLOSE_COMPLETE: _CLOSE}
_COUNTING = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})


#: Distinct RowDescriptions (and tags) a session keeps parsed.
_CACHED = 64


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
    if words and words[-1].isdigit() and words[0] in _COUNTING:
        return tag, int(words[-1])
    return tag, None


def _formats(codes: list[int], n: int) -> list[int]:
    if not codes:
        return [0] * n
    if len(codes) == 1:
        return codes * n
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
