"""Every path a value leaves by, masked with the plan of the result it
belongs to.

The protocol (PostgreSQL 3.0, "Message Flow") does not repeat a result's
RowDescription before its DataRows in the extended protocol: a client that
described a statement once (JDBC, psycopg's prepared statements, asyncpg)
sends Bind/Execute many times and gets bare DataRows. So the gateway puts a
Describe of the portal in front of every Execute it forwards, and swallows
that Describe's answer (RowDescription or NoData) after taking the plan from
it: the rows that follow are those of exactly that portal, in the result
formats the Bind asked for. A simple Query sends its RowDescription itself
(SELECT, FETCH, EXECUTE alike).

To know which RowDescription answers which Describe, every client message
that gets an answer is queued in order (Query and FunctionCall, Parse, Bind,
Close, Describe, the injected Describe, Execute, Sync) and the server's
answers consumed against them: ParseComplete, BindComplete and
CloseComplete end theirs, CommandComplete (or EmptyQueryResponse,
PortalSuspended) an Execute, ReadyForQuery a Query or a Sync. An
ErrorResponse to an extended-protocol message makes the server skip
everything up to the next Sync (a Query sent in between included), and so
does the queue; one inside a Query ends nothing until its ReadyForQuery.

DataRows with no plan known (which the protocol does not allow) end the
session: the gateway never forwards a row it could not judge.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from hoopfast import core
from hoopfast.core.abc import MaskPlan
from hoopfast.masking import copyout, lineage
from hoopfast.masking.catalog import Catalog
from hoopfast.masking.copyout import CopyOut
from hoopfast.masking.rules import Masks
from hoopfast.proxy.postgres import messages as m

# What a queued client message waits for.
_SIMPLE = 0  # Query or FunctionCall: answers up to ReadyForQuery
_DESCRIBE = 1  # the client's Describe: RowDescription or NoData (after ParameterDescription)
_INJECTED = 2  # the gateway's Describe: its answer is swallowed
_SYNC = 3  # ReadyForQuery
_COMPLETE = 4  # Parse, Bind, Close: ParseComplete, BindComplete, CloseComplete
_EXECUTE = 5  # Execute: CommandComplete, EmptyQueryResponse or PortalSuspended

#: Client messages the tracker must see.
CLIENT_TYPES = bytes(
    [m.QUERY, m.FUNCTION_CALL, m.PARSE, m.BIND, m.DESCRIBE, m.EXECUTE, m.SYNC, m.CLOSE]
)
#: Statement and portal texts remembered for the lineage, at most.
_MAX_NAMES = 1000
#: Server messages it must see (DataRows in batches).
SERVER_TYPES = bytes(
    [
        m.ROW_DESCRIPTION,
        m.NO_DATA,
        m.PARSE_COMPLETE,
        m.BIND_COMPLETE,
        m.CLOSE_COMPLETE,
        m.DATA_ROW,
        m.COMMAND_COMPLETE,
        m.EMPTY_QUERY,
        m.PORTAL_SUSPENDED,
        m.ERROR_RESPONSE,
        m.NOTICE_RESPONSE,
        m.READY_FOR_QUERY,
        m.COPY_OUT_RESPONSE,
        m.COPY_BOTH_RESPONSE,
        m.COPY_DATA,
        m.COPY_DONE,
    ]
)

# Error and notice fields that can carry values: message, detail, hint,
# context, internal query, and the object names (a RAISE can set them).
_TEXT_FIELDS = frozenset("MDHWqstcdn")


#: A queued client message: what it waits for, the statement text when known,
#: and the COPY it stands for when the session turned one into a SELECT.
_Entry = tuple[int, str | None, CopyOut | None]


class Unmaskable(Exception):
    """The server sent something the gateway cannot mask; the session ends."""


class _NoPlan:
    """No RowDescription announced the rows to come."""


_UNKNOWN = _NoPlan()


class ResultMasker:
    def __init__(self, masks: Masks, catalog: Catalog) -> None:
        self.masks = masks
        self.catalog = catalog
        #: The client messages whose answers are still to come, in order.
        self._queue: deque[_Entry] = deque()
        #: The server skips what the client sends until its next Sync (an
        #: extended-protocol error came before that Sync was sent).
        self._skipping = False
        #: A COPY the session turned into a SELECT (masking.copyout): the
        #: next Query is that SELECT, and its rows go out as the COPY's.
        self.pending_copy: CopyOut | None = None
        #: The COPY being served: (its options, the column names).
        self._copying: tuple[CopyOut, list[str]] | None = None
        #: Statement texts by prepared-statement name, and by portal name,
        #: so a result can be read with its statement (lineage). Never a
        #: security decision: a stale text can only add masking.
        self._statements: dict[bytes, str | None] = {}
        self._portals: dict[bytes, str | None] = {}
        #: The text of the statement whose results come now, where known.
        self._last_sql: str | None = None
        self._plan: MaskPlan | _NoPlan | None = _UNKNOWN
        self._copy: MaskPlan | _NoPlan | None = _UNKNOWN
        #: DataRow buffers in which something was masked, for the session's log line.
        self.masked_batches = 0

    # -- client -> server -----------------------------------------------------

    def client_message(self, message: bytes) -> bytes:
        """Note what the server will answer; returns what to forward (an
        Execute gets a Describe of its portal in front)."""
        kind = message[0]
        if self._skipping:
            # The server skips this (see server_message): nothing to await.
            if kind == m.SYNC:
                self._skipping = False
                self._queue.append((_SYNC, None, None))
            return message
        if kind == m.QUERY:
            copy, self.pending_copy = self.pending_copy, None
            self._queue.append((_SIMPLE, self._statement_text(_text(message[5:-1])), copy))
        elif kind == m.FUNCTION_CALL:
            self._queue.append((_SIMPLE, None, None))
        elif kind == m.SYNC:
            self._queue.append((_SYNC, None, None))
        elif kind == m.DESCRIBE:
            self._queue.append((_DESCRIBE, None, None))
        elif kind == m.EXECUTE:
            end = message.find(b"\0", 5)
            if end < 0:
                return message  # malformed: the server refuses it
            portal = message[5:end]
            self._queue.append((_INJECTED, self._portals.get(portal), None))
            self._queue.append((_EXECUTE, None, None))
            return m.build(m.DESCRIBE, b"P" + message[5 : end + 1]) + message
        elif kind == m.PARSE:
            name_end = message.find(b"\0", 5)
            end = message.find(b"\0", name_end + 1) if name_end >= 0 else -1
            self._queue.append((_COMPLETE, None, None))
            if end >= 0:
                name = message[5:name_end]
                text = self._statement_text(_text(message[name_end + 1 : end]))
                if name and name in self._statements:
                    # The server refuses a second Parse of a name in use and
                    # keeps the first: which text stands is not known here.
                    text = None
                _bounded_set(self._statements, name, text)
        elif kind == m.BIND:
            self._queue.append((_COMPLETE, None, None))
            portal_end = message.find(b"\0", 5)
            end = message.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
            if end >= 0:
                statement = self._statements.get(message[portal_end + 1 : end])
                _bounded_set(self._portals, message[5:portal_end], statement)
        elif kind == m.CLOSE:
            self._queue.append((_COMPLETE, None, None))
            if len(message) <= 6:
                return message
            names = self._statements if message[5:6] == b"S" else self._portals
            names.pop(message[6:-1], None)
        return message

    def _statement_text(self, text: str) -> str | None:
        """The text whose lineage the rows of ``text`` follow: a FETCH's
        is its cursor's query, an EXECUTE's its prepared statement's (None
        when the gateway did not see that name defined, or cannot tell which
        definition stands). DECLARE and PREPARE are remembered on the way
        (a cursor is a portal too), CLOSE, DEALLOCATE and DISCARD forget."""
        named = lineage.named_statement(text)
        if named is None:
            if lineage.NAMING.search(text):
                # Names defined or dropped in a way not read here (several
                # statements, ...): no remembered text can be trusted.
                for names in (self._portals, self._statements):
                    names.update(dict.fromkeys(names))
            return text
        kind, name, body = named
        key = name.encode("utf-8", "surrogateescape")
        if kind in ("cursor", "prepared"):
            names = self._portals if kind == "cursor" else self._statements
            # The server refuses a name in use and keeps the first definition.
            _bounded_set(names, key, None if key in names else body)
        elif kind == "fetch":
            return self._portals.get(key)
        elif kind == "execute":
            return self._statements.get(key)
        elif kind == "discard":
            self._portals.clear()
            self._statements.clear()
        else:
            names = self._statements if kind == "deallocate" else self._portals
            if name:
                names.pop(key, None)
            else:
                names.clear()
        return text

    # -- server -> client -----------------------------------------------------

    def server_message(self, kind: int, message: bytes) -> bytes | None:
        """What to forward in the message's place (None: nothing). Raises
        Unmaskable or ValueError (a malformed DataRow)."""
        if kind == m.DATA_ROW:
            plan = self._plan
            if plan is None:
                return message if self._copying is None else self._copy_lines(message)
            if isinstance(plan, _NoPlan):
                raise Unmaskable("data rows without a row description")
            out = plan.apply(message)
            if out is not message:
                self.masked_batches += 1
            if self._copying is not None:
                return self._copy_lines(out)
            return out
        if kind == m.COPY_DATA:
            return self._copy_data(message)
        if kind == m.ROW_DESCRIPTION:
            head, sql, copy = self._answered((_DESCRIBE, _INJECTED))
            plan = self.masks.plan_for(message, self.catalog, sql)
            if head == _DESCRIBE:
                return message  # a statement or portal described: rows come later
            self._plan = plan
            if copy is not None:
                return self._start_copy(copy, message)
            return None if head == _INJECTED else message
        if kind in (m.PARSE_COMPLETE, m.BIND_COMPLETE, m.CLOSE_COMPLETE):
            if self._queue and self._queue[0][0] == _COMPLETE:
                self._queue.popleft()
            return message
        if kind == m.NO_DATA:
            head, _, _ = self._answered((_DESCRIBE, _INJECTED))
            if head == _INJECTED:
                self._plan = None  # e.g. a COPY portal: its own messages follow
                return None
            return message
        if kind in (m.COMMAND_COMPLETE, m.EMPTY_QUERY, m.PORTAL_SUSPENDED):
            self._plan = _UNKNOWN
            self._copy = _UNKNOWN
            if self._copying is not None and kind == m.COMMAND_COMPLETE:
                return self._end_copy(message)
            if self._queue and self._queue[0][0] == _EXECUTE:
                self._queue.popleft()
            return message
        if kind in (m.ERROR_RESPONSE, m.NOTICE_RESPONSE):
            if kind == m.ERROR_RESPONSE:
                self._plan = _UNKNOWN
                self._copy = _UNKNOWN
                self._copying = None
                if self._queue and self._queue[0][0] != _SIMPLE:
                    # Extended protocol: the server skips everything up to the
                    # next Sync, a Query sent in between included. With no
                    # Sync queued yet (the client's next messages were held,
                    # for a statement's analysis or review, while the server
                    # answered those before them), the ones still to come
                    # are skipped too, up to their Sync.
                    while self._queue and self._queue[0][0] != _SYNC:
                        self._queue.popleft()
                    self._skipping = not self._queue
            return self._mask_fields(message)
        if kind == m.READY_FOR_QUERY:
            while self._queue:
                if self._queue.popleft()[0] in (_SIMPLE, _SYNC):
                    break
            self._plan = _UNKNOWN
            return message
        if kind == m.COPY_OUT_RESPONSE:
            if len(message) > 5 and message[5] != 0 and self.masks.copy_plan is not None:
                raise Unmaskable("a binary COPY cannot be masked; use text or CSV format")
            self._copy = self.masks.copy_plan
            return message
        if kind == m.COPY_BOTH_RESPONSE:
            raise Unmaskable("replication streams cannot be masked")
        if kind == m.COPY_DONE:
            self._copy = _UNKNOWN
        return message

    def _answered(self, kinds: tuple[int, ...]) -> _Entry:
        """The queued message a RowDescription/NoData answers, popped if it
        is a Describe; a Query's for one of its results."""
        queue = self._queue
        if queue and queue[0][0] in kinds:
            head = queue.popleft()
            self._last_sql = head[1]
            return head
        if queue and queue[0][0] == _SIMPLE:
            return queue[0]
        return (_SIMPLE, None, None)

    def _start_copy(self, copy: CopyOut, description: bytes) -> bytes:
        """The SELECT's RowDescription becomes the COPY's CopyOutResponse
        (text format, every column text), and its header line if asked."""
        names = [f[0].decode("latin-1") for f in core.decode_row_description(description)]
        self._copying = (copy, names)
        out = m.build(
            m.COPY_OUT_RESPONSE,
            b"\0" + len(names).to_bytes(2, "big") + b"\0\0" * len(names),
        )
        if copy.header:
            out += m.build(m.COPY_DATA, copyout.header(copy, names).encode("latin-1"))
        return out

    def _copy_lines(self, rows: bytes) -> bytes:
        """DataRows (masked) as the COPY's CopyData lines, one per row."""
        assert self._copying is not None
        copy, names = self._copying
        out = []
        pos = 0
        while pos < len(rows):
            end = pos + 1 + int.from_bytes(rows[pos + 1 : pos + 5], "big")
            values = core.decode_data_row(rows[pos:end])
            # Latin-1 is byte for byte: the special characters are ASCII in
            # every client encoding the gateway accepts.
            text = [None if v is None else v.decode("latin-1") for v in values]
            out.append(m.build(m.COPY_DATA, copyout.line(copy, text, names).encode("latin-1")))
            pos = end
        return b"".join(out)

    def _end_copy(self, complete: bytes) -> bytes:
        """The SELECT's CommandComplete ("SELECT n") becomes CopyDone and
        "COPY n"."""
        self._copying = None
        rows = complete[5:-1].rsplit(b" ", 1)[-1]
        return m.build(m.COPY_DONE) + m.build(m.COMMAND_COMPLETE, b"COPY " + rows + b"\0")

    def _copy_data(self, message: bytes) -> bytes:
        plan = self._copy
        if plan is None:
            return message
        if isinstance(plan, _NoPlan):
            raise Unmaskable("COPY data outside a COPY")
        # A batch of CopyData messages (one line or row each, in practice).
        out: list[bytes] = []
        changed = False
        pos = 0
        n = len(message)
        while pos < n:
            if n - pos < 5 or message[pos] != m.COPY_DATA:
                raise ValueError("malformed CopyData")
            end = pos + 1 + int.from_bytes(message[pos + 1 : pos + 5], "big")
            if end > n or end < pos + 5:
                raise ValueError("malformed CopyData length")
            data = message[pos + 5 : end]
            masked = _mask_bytes(plan, data)
            if masked is not data:
                changed = True
                out.append(m.build(m.COPY_DATA, masked))
            else:
                out.append(message[pos:end])
            pos = end
        return b"".join(out) if changed else message

    def _mask_fields(self, message: bytes) -> bytes:
        fields = core.decode_fields(message)
        plan = self.masks.text_plan
        sqlstate = next((v for k, v in fields if k == "C"), "")
        known: str | None = None
        if self.masks.has_column_rules:
            head = self._queue[0][1] if self._queue else None
            known = " ".join(t for t in (head, self._last_sql) if t).lower()
        masked = []
        for k, v in fields:
            if k in _TEXT_FIELDS:
                if known is not None:
                    v = _without_values(k, v, sqlstate, known)
                v = plan.mask_text(v)
            masked.append((k, v))
        if masked == fields:
            return message
        return core.encode_fields(message[0], masked)


#: Errors whose detail describes the value itself (data exceptions).
_VALUE_DETAIL_CLASS = "22"
_REDACTED = "[REDACTED]"
_KEY_VALUES = re.compile(r"\)=\(.*\)", re.DOTALL)
_FAILING_ROW = re.compile(r"(Failing row contains )\(.*\)", re.DOTALL)


def _without_values(field: str, text: str, sqlstate: str, known: str) -> str:
    """A field of an error or notice on a connection with column rules,
    without the values it may quote. PostgreSQL quotes values in messages
    (`invalid input syntax for type integer: "<value>"`, `relation
    "<value>" does not exist` after a cast of data to regclass) and in
    constraint details (`Key (e)=(<value>)`, `Failing row contains
    (<row>)`). Detectors only recognise what they recognise (an address they
    do not), so a quoted text stays only if the client's own statement
    (``known``, lower case) contains it: a misspelt table name, a keyword
    near a syntax error. Otherwise everything from the first quote to the
    last goes (a value may hold quotes itself)."""
    text = _KEY_VALUES.sub(f")=({_REDACTED})", text)
    text = _FAILING_ROW.sub(rf"\1({_REDACTED})", text)
    if field == "D" and sqlstate.startswith(_VALUE_DETAIL_CLASS):
        return _REDACTED if text else text
    if field == "W":
        return "\n".join(
            line[: line.find(":") + 1] + f" {_REDACTED}"
            if line.startswith("JSON data, line ")
            else _unquoted(line, known)
            for line in text.split("\n")
        )
    return _unquoted(text, known)


def _unquoted(text: str, known: str) -> str:
    first = text.find('"')
    if first < 0:
        return text
    last = text.rfind('"')
    quoted = text[first + 1 : last] if last > first else text[first + 1 :]
    if quoted and quoted.lower() in known:
        return text
    return text[:first] + f'"{_REDACTED}"' + (text[last + 1 :] if last > first else "")


def _text(sql: bytes) -> str:
    """A statement's text for the lineage (UTF-8 or ASCII-compatible:
    identifiers and keywords are what matter)."""
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError:
        return sql.decode("latin-1")


def _bounded_set(names: dict[bytes, Any], key: bytes, value: Any) -> None:
    names.pop(key, None)
    names[key] = value
    if len(names) > _MAX_NAMES:
        del names[next(iter(names))]


def _mask_bytes(plan: MaskPlan, data: bytes) -> bytes:
    """Detectors over one COPY line. Masked matches are ASCII tokens with no
    delimiter, quote or backslash in them, so text and CSV stay parseable."""
    # Latin-1 maps bytes to code points one to one: exact in every client
    # encoding the gateway accepts (all ASCII-safe), and the detectors are ASCII.
    text = data.decode("latin-1")
    masked = plan.mask_text(text)
    return data if masked == text else masked.encode("latin-1")
