"""The state store's event blocks, shared by both SQL backends.

Events are stored in blocks: one ``event_blocks`` row per run of consecutive
events of one session (one subject, one connection), at most BLOCK_EVENTS
events, about BLOCK_CHARS characters, and BLOCK_SPAN seconds between its
earliest and latest ``at``. Writing an event is then joining strings, not
inserting a row into a table and three indexes. The row's columns are what
reads select blocks by; ``body`` holds the events, one line each in seq
order::

    seq TAB repr(at) TAB kind TAB verdict TAB prev_hash TAB hash TAB data LF

``data`` is canonical JSON, which has no raw newline (and a tab in it is
harmless: the line is split six times). An event that would break its line
anyway (a newline anywhere, a tab before ``data``; nothing the recorder
makes) is written as an escaped line: ``!`` then the seven fields with
backslash, tab and newline as ``\\\\``, ``\\t`` and ``\\n``. A line that parses as
neither (a damaged body) is read as an event whose data is the raw line and
whose hashes are empty, so that ``audit verify`` reports it there: a read
never fails on it and never drops it.

A block's events are also in time order (a clock stepping back starts a
new block), so that a read finds the lines of a time range in a block by
binary search rather than by parsing them all. Should a damaged body break
that order, events() may leave out or misplace that block's events; the
session's events, which ``audit verify`` reads, are every line in order.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hoopfast.core import block_end, event_lines
from hoopfast.store.base import EventCursor
from hoopfast.store.records import STATEMENT, EventRecord

BLOCK_COLUMNS = (
    "session_id, first_seq, last_seq, first_at, last_at, subject, connection, events,"
    " verdicts, body"
)
#: What reading a block's events needs (``body`` last, as in the table).
READ_COLUMNS = "session_id, first_seq, first_at, subject, connection, body"
#: A block's limits: events, characters of body (a larger event makes a
#: block of its own), and seconds between its earliest and latest ``at``.
#: Reads rely on the span: a block holding an event at or after T starts at
#: or after T - BLOCK_SPAN, which bounds the index range they scan.
BLOCK_EVENTS = 1000
BLOCK_CHARS = 1 << 20
BLOCK_SPAN = 5.0
#: Reads widen the span by this: the writer's span test is float arithmetic.
SPAN_SLACK = 1.0
#: Block heads (no body) events() plans with per query, and most bodies
#: read per query (what keeps a read's memory flat).
HEADS = 64
BODIES = 16


@dataclass(frozen=True, slots=True)
class Block:
    """One ``event_blocks`` row to write."""

    session_id: str
    first_seq: int
    last_seq: int
    #: Its first and last event's ``at``, the earliest and latest: its events
    #: are in time order (_block_end).
    first_at: float
    last_at: float
    subject: str
    connection: str
    events: int
    #: JSON object: each verdict of its events ("" included) -> how many.
    verdicts: str
    body: str
    #: Statement events in it, for the session's counter (not stored).
    statements: int

    def values(self) -> tuple[Any, ...]:
        """The row's values in BLOCK_COLUMNS order."""
        return (
            self.session_id,
            self.first_seq,
            self.last_seq,
            self.first_at,
            self.last_at,
            self.subject,
            self.connection,
            self.events,
            self.verdicts,
            self.body,
        )


@dataclass(frozen=True, slots=True)
class Run:
    """A session's events of one batch, in seq order without repeats, and
    their body lines."""

    events: list[EventRecord]
    lines: list[str]


def session_runs(events: Iterable[EventRecord]) -> dict[str, Run]:
    """A batch's events by session, ready for blocks: the costly part of a
    write (the lines), which the backends do before their transaction. Of
    two events with one seq the first is kept, as a row insert would."""
    grouped: dict[str, list[EventRecord]] = {}
    for e in events:
        grouped.setdefault(e.session_id, []).append(e)
    runs: dict[str, Run] = {}
    for session_id, run in grouped.items():
        run.sort(key=_SEQ)  # stable; in order already, as the recorder sends them
        seqs = list(map(_SEQ, run))
        if not all(map(operator.lt, seqs, seqs[1:])):
            run = [e for i, e in enumerate(run) if i == 0 or seqs[i] != seqs[i - 1]]
        runs[session_id] = Run(run, _event_lines(run))
    return runs


def build_blocks(runs: Mapping[str, Run], stored: Mapping[str, int | None]) -> list[Block]:
    """The blocks of the events not stored yet: per session, those after its
    last stored seq (``stored``; None: none stored). A session's events reach
    the store in seq order, so that is exact whatever the batch boundaries
    of a redelivery."""
    blocks: list[Block] = []
    for session_id, run in runs.items():
        last = stored.get(session_id)
        start = 0 if last is None else bisect_right(run.events, last, key=_SEQ)
        while start < len(run.events):
            end = _block_end(run, start)
            blocks.append(_block(run.events[start:end], run.lines[start:end]))
            start = end
    return blocks


def new_counts(blocks: Iterable[Block]) -> dict[str, tuple[int, int]]:
    """Per session: how many events and statements ``blocks`` hold."""
    counts: dict[str, tuple[int, int]] = {}
    for b in blocks:
        events, statements = counts.get(b.session_id, (0, 0))
        counts[b.session_id] = (events + b.events, statements + b.statements)
    return counts


def _event_line(e: EventRecord) -> str:
    """An event's line of a block body (see the module docstring)."""
    plain = event_lines([e])
    if plain is not None:
        return plain[0]
    values = (str(e.seq), repr(e.at), e.kind, e.verdict, e.prev_hash, e.hash, e.data)
    return "!" + "\t".join(map(_escape, values)) + "\n"


def _event_lines(events: list[EventRecord]) -> list[str]:
    # One check for them all: the recorder's events are always plain.
    # (Compiled in hoopfast.core: the store's thread runs this for every
    # event, holding the GIL the data path needs.)
    lines = event_lines(events)
    return [_event_line(e) for e in events] if lines is None else lines


def _block_end(run: Run, start: int) -> int:
    """Where the block that starts at ``start`` ends (exclusive) within the
    limits. Its events also stay in one subject and connection (the block's
    columns) and in time order: a clock stepping back starts a new block,
    so that a block's lines are sorted by ``at`` (reads search them)."""
    return block_end(run.events, run.lines, start, BLOCK_EVENTS, BLOCK_CHARS, BLOCK_SPAN)


def _block(events: list[EventRecord], lines: list[str]) -> Block:
    first, last = events[0], events[-1]
    verdicts = Counter(map(_VERDICT, events))
    return Block(
        session_id=first.session_id,
        first_seq=first.seq,
        last_seq=last.seq,
        first_at=first.at,
        last_at=last.at,
        subject=first.subject,
        connection=first.connection,
        events=len(events),
        # ensure_ascii=False, as the body: text the store cannot hold (a
        # lone surrogate) fails the write rather than being escaped here.
        verdicts=json.dumps(verdicts, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        body="".join(lines),
        statements=list(map(_KIND, events)).count(STATEMENT),
    )


_SEQ = operator.attrgetter("seq")
_KIND = operator.attrgetter("kind")
_VERDICT = operator.attrgetter("verdict")


def block_events(row: Sequence[Any]) -> list[EventRecord]:
    """A row of READ_COLUMNS as its events, in body order."""
    session_id, first_seq, first_at, subject, connection, body = row
    events: list[EventRecord] = []
    at = first_at
    for i, line in enumerate(_body_lines(body)):
        seq, at, kind, verdict, prev, digest, data = _fields(line, first_seq + i, at)
        events.append(
            EventRecord(session_id, seq, at, kind, subject, connection, verdict, data, prev, digest)
        )
    return events


#: A body line's fields: seq, at, kind, verdict, prev_hash, hash, data.
_Fields = tuple[int, float, str, str, str, str, str]


class Page:
    """What one events() call found so far in the blocks it read: the
    matching events as candidates, of which the ``limit`` first in event
    order are the page once no unread block can hold an earlier one. A
    candidate is only split into its fields and made a record if it is in
    the page: a read finds up to about twice as many as it returns."""

    def __init__(
        self,
        limit: int,
        since: float | None,
        until: float | None,
        verdict: str | None,
        after: EventCursor | None,
    ) -> None:
        self.limit = limit
        self.since, self.until, self.verdict, self.after = since, until, verdict, after
        self.found: list[_Candidate] = []
        #: The page holds no event after this time: ``limit`` found events
        #: are at or before it (None until that many are found).
        self.cut: float | None = None

    def wanted(self, heads: Sequence[tuple[float, int]]) -> int:
        """How many of the next blocks (their first_at and event count, in
        order) to read now: 0 when the page is complete, because ``limit``
        found events come before the first of them (a block holds no event
        before its first_at); else those that could not complete it, even
        if all their events matched."""
        times = sorted(c[0] for c in self.found)
        if len(times) >= self.limit:
            self.cut = times[self.limit - 1]
        total = 0
        for i, (first_at, events) in enumerate(heads):
            if i == BODIES or bisect_left(times, first_at) + total >= self.limit:
                return i
            total += events
        return len(heads)

    def add(self, row: Sequence[Any]) -> None:
        """Take the matching events of a block (the next in first_at order)."""
        self.found.extend(
            candidates(row, self.since, self.until, self.cut, self.verdict, self.after)
        )
        if len(self.found) >= _KEEP * self.limit:
            self.found = _smallest(self.found, self.limit)  # memory stays flat

    def events(self) -> list[EventRecord]:
        return [_record(c) for c in _smallest(self.found, self.limit)]


#: An event found by events(): at, session_id, seq (its order), its line,
#: its block's subject and connection, and its fields if already split.
_Candidate = tuple[float, str, int, str, str, str, _Fields | None]


def candidates(
    row: Sequence[Any],
    since: float | None,
    until: float | None,
    cut: float | None,
    verdict: str | None,
    after: EventCursor | None,
) -> list[_Candidate]:
    """A block's events at or after ``since``, before ``until``, at or before
    ``cut``, with that verdict (if any) and after the cursor (if any). The
    lines are in time order (see _block_end), so the part of the body
    within the time bounds is found by binary search, and only that part
    is read: all at once when its lines are plain and in order (always, but
    for a damaged or escaped line), else line by line."""
    session_id, _, first_at, subject, connection, body = row
    lower = after[0] if after is not None else since
    start, end = 0, len(body)
    if lower is not None and lower > first_at:
        start = _search(body, 0, lambda at: at < lower, math.inf)
    if until is not None or cut is not None:
        end = _search(body, start, lambda at: _within(at, until, cut), -math.inf)
    text = body[start:end]
    lines = _body_lines(text)
    plain = _plain_heads(text, len(lines))
    if plain is not None:
        seqs, ats, verdicts = plain
        if not ats or (
            (lower is None or ats[0] >= lower)
            and _within(ats[-1], until, cut)
            and all(map(operator.le, ats, ats[1:]))
        ):
            skip = _at_cursor(session_id, seqs, ats, after)
            found = zip(
                ats[skip:],
                itertools.repeat(session_id),
                seqs[skip:],
                lines[skip:],
                itertools.repeat(subject),
                itertools.repeat(connection),
                itertools.repeat(None),
            )
            if not verdict:
                return list(found)
            return [c for c, v in zip(found, verdicts[skip:], strict=True) if v == verdict]
    return list(_each_line(row, start, lines, since, until, cut, verdict, after))


def _plain_heads(text: str, count: int) -> tuple[list[int], list[float], list[str]] | None:
    """The seq, at and verdict of each of the ``count`` lines of ``text``,
    read all at once; None when a line is not plain or they do not parse."""
    if not count:
        return [], [], []
    first = _FIRST_LINE_HEAD.match(text)
    heads = _NEXT_LINE_HEADS.findall(text)
    if first is None or len(heads) != count - 1:
        return None
    heads.insert(0, first.groups())
    try:
        seqs = list(map(int, map(_SEQ_TEXT, heads)))
        ats = list(map(float, map(_AT_TEXT, heads)))
    except ValueError:
        return None
    return seqs, ats, list(map(_VERDICT_TEXT, heads))


#: A plain line's seq, at and verdict (what events() selects by): the first
#: line's, and those of the lines after a newline. Not one pattern anchored
#: with ^: the regex engine would try it at every character of the data,
#: where it skips to the next newline, a literal, quickly.
_LINE_HEAD = r"(-?[0-9]+)\t([^\t\n]*)\t[^\t\n]*\t([^\t\n]*)\t"
_FIRST_LINE_HEAD = re.compile(_LINE_HEAD)
_NEXT_LINE_HEADS = re.compile("\n" + _LINE_HEAD)
_SEQ_TEXT, _AT_TEXT, _VERDICT_TEXT = (operator.itemgetter(i) for i in range(3))


def _at_cursor(
    session_id: str, seqs: list[int], ats: list[float], after: EventCursor | None
) -> int:
    """How many of a block's first lines (in order, none before the cursor's
    time) are at or before the cursor: those at its time, up to its
    session and seq."""
    if after is None:
        return 0
    at_cursor = bisect_right(ats, after[0])
    if session_id != after[1]:
        return at_cursor if session_id < after[1] else 0
    return bisect_right(seqs, after[2], 0, at_cursor)


def _each_line(
    row: Sequence[Any],
    start: int,
    lines: list[str],
    since: float | None,
    until: float | None,
    cut: float | None,
    verdict: str | None,
    after: EventCursor | None,
) -> Iterator[_Candidate]:
    """candidates, line by line, for the lines of the block from offset
    ``start``: each is checked against every bound."""
    session_id, first_seq, first_at, subject, connection, body = row
    previous: tuple[int, float] | None = None  # the line before's seq and at
    for line in lines:
        fields: _Fields | None = None
        head = _head(line, 0, len(line))
        if head is None:
            seq, at = previous or _place(body, start, first_seq, first_at)
            fields = _fields(line, seq + 1, at)
            head = fields[0], fields[1]
        seq, at = previous = head
        if (
            not _within(at, until, cut)
            or (since is not None and at < since)
            or (after is not None and (at, session_id, seq) <= after)
        ):
            continue
        if verdict:
            fields = fields or _rest(line, seq, at)
            if fields[3] != verdict:
                continue
        yield at, session_id, seq, line, subject, connection, fields


def _within(at: float, until: float | None, cut: float | None) -> bool:
    return (until is None or at < until) and (cut is None or at <= cut)


def _search(body: str, lo: int, before: Callable[[float], bool], damaged: float) -> int:
    """The offset of the first line from ``lo`` (a line's start) whose at is
    not ``before``: a binary search over the body's characters, the lines
    being in time order. A line that does not parse has the time
    ``damaged``: the caller's choice keeps it in the part it reads."""
    hi = len(body)
    while lo < hi:
        mid = (lo + hi) // 2
        start = max(lo, body.rfind("\n", lo, mid) + 1)  # the line holding mid
        stop = body.find("\n", start)
        stop = len(body) if stop < 0 else stop
        head = _head(body, start, stop)
        at = head[1] if head is not None else _line_at(body[start:stop], damaged)
        if before(at):
            lo = stop + 1
        else:
            hi = start
    return min(lo, len(body))


def _place(body: str, start: int, first_seq: int, first_at: float) -> tuple[int, float]:
    """The seq and at of the line before the one at ``start`` (first_seq - 1
    and first_at for the first line), to place a damaged line after it as
    block_events would (the seq by its place in the block)."""
    if start == 0:
        return first_seq - 1, first_at
    line = body[body.rfind("\n", 0, start - 1) + 1 : start - 1]
    return first_seq + body.count("\n", 0, start) - 1, _line_at(line, first_at)


def _record(c: _Candidate) -> EventRecord:
    at, session_id, seq, line, subject, connection, fields = c
    _, _, kind, verdict, prev, digest, data = fields or _rest(line, seq, at)
    return EventRecord(session_id, seq, at, kind, subject, connection, verdict, data, prev, digest)


def _body_lines(body: str) -> list[str]:
    lines = body.split("\n")  # not splitlines: JSON leaves U+2028 and others raw
    if lines[-1] == "":
        lines.pop()  # the last line's end
    return lines


def _head(text: str, start: int, stop: int) -> tuple[int, float] | None:
    """The seq and at of the plain line ``text[start:stop]``, without
    splitting the rest (None: the line is escaped, or they do not parse)."""
    first = text.find("\t", start, stop)
    second = text.find("\t", first + 1, stop)
    if first <= start or second < 0 or text[start] == "!":
        return None
    try:
        return int(text[start:first]), float(text[first + 1 : second])
    except ValueError:
        return None


def _line_at(line: str, default: float) -> float:
    """A line's at; ``default`` when it does not parse."""
    head = _head(line, 0, len(line))
    return head[1] if head is not None else _fields(line, 0, default)[1]


def _fields(line: str, seq: int, at: float) -> _Fields:
    """A line's fields. One that does not parse is a damaged event (see the
    module docstring): its own seq and at if they parse, else ``seq`` (its
    place in the block) and ``at`` (the time of the line before)."""
    if line.startswith("!"):
        parts = [_unescape(part) for part in line[1:].split("\t")]
        if len(parts) == 7:
            try:
                seq, at = int(parts[0]), float(parts[1])
            except ValueError:
                pass
            else:
                return seq, at, parts[2], parts[3], parts[4], parts[5], parts[6]
        return seq, at, "", "", "", "", line
    head = _head(line, 0, len(line))
    return _rest(line, *head) if head is not None else (seq, at, "", "", "", "", line)


def _rest(line: str, seq: int, at: float) -> _Fields:
    """The fields of a plain line whose seq and at are known."""
    parts = line.split("\t", 6)
    if len(parts) != 7:
        return seq, at, "", "", "", "", line
    return seq, at, parts[2], parts[3], parts[4], parts[5], parts[6]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n"}


def _unescape(text: str) -> str:
    # An unknown escape (a damaged line) is kept as it is.
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m[1], m[0]), text)


#: events() trims what it found to the ``limit`` first once it holds this
#: many times more (only a scan across many blocks gets there).
_KEEP = 8
_ORDER = operator.itemgetter(0, 1, 2)


def _smallest(found: list[_Candidate], limit: int) -> list[_Candidate]:
    """The ``limit`` first of ``found`` in (at, session_id, seq) order."""
    if len(found) > limit:
        # Floats sort faster than keys: cut at the limit-th time first.
        cut = sorted(c[0] for c in found)[limit - 1]
        found = [c for c in found if c[0] <= cut]
    return sorted(found, key=_ORDER)[:limit]


def verdict_count(verdicts: str, verdict: str) -> int:
    """How many events of a block have ``verdict``, by its verdicts column
    (0 when the column is not a JSON object: it was damaged)."""
    try:
        counts = json.loads(verdicts)
    except ValueError:
        return 0
    count = counts.get(verdict, 0) if isinstance(counts, dict) else 0
    return count if isinstance(count, int) else 0
