"""The session log (hoopfast.core.SessionLog): a finished statement's audit
event, hash-chain link and spool frame, made where the trail finishes it.

The compiled build writes the event's JSON itself instead of building a
dict for orjson; it must write the very text the reference's encoder
(hoopfast.recording.chain.encode_event) writes, byte for byte, or defer to
it. Statements come from both trails fed the same protocol messages (the
scripts of tests/test_trail_impls.py, hypothesis included), plus texts,
values and numbers chosen to hit every escape and every fallback."""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoopfast.core import _trail
from hoopfast.recording.chain import GENESIS, MAX_EVENT_BYTES, encode_event, link
from hoopfast.recording.spool import read_segment
from hoopfast.store.records import STATEMENT, EventRecord
from tests.test_trail_impls import (
    ALLOW,
    COMPILED,
    PROP,
    READY,
    SCRIPTS,
    WHY_NOT_COMPILED,
    Script,
    V,
    complete,
    data_row,
    mask,
    row_description,
    run,
    simple,
)

pytestmark = pytest.mark.skipif(COMPILED is None, reason=WHY_NOT_COMPILED)


def _log(module: ModuleType, journal: Any) -> Any:
    return module.SessionLog(
        journal,
        "s-1",
        "alice",
        "main",
        EventRecord,
        encode_event,
        STATEMENT,
        MAX_EVENT_BYTES,
        GENESIS,
    )


def _reference_json(statement: Any, n: int, seq: int, at: float) -> bytes:
    body = statement.event(n)
    body.update(
        session="s-1",
        seq=seq,
        kind=STATEMENT,
        at=at,
        subject="alice",
        connection="main",
        verdict=statement.verdict.action,
    )
    return encode_event(body)


def _statements(module: ModuleType, script: Script, codec: str = "utf-8") -> list[Any]:
    finished: list[Any] = []
    trail = module.Trail(codec, module.Caps(3, 200, 400), mask, finished.append, ALLOW)
    with contextlib.suppress(Exception):  # (what it raises on: test_trail_impls.py)
        run(trail, script)
    return finished


def _fast_or_none(statement: Any, n: int, seq: int, at: float) -> bytes | None:
    assert COMPILED is not None
    log = _log(COMPILED, COMPILED.Journal(lambda: None))
    result: bytes | None = log._statement_json_for_tests(statement, n, seq, at)
    return result


def _check(statement: Any, n: int = 1, seq: int = 1, at: float = 1795000000.123456) -> bool:
    """The fast text equals the reference's; whether it was the fast one."""
    fast = _fast_or_none(statement, n, seq, at)
    if fast is None:
        return False
    assert fast == _reference_json(statement, n, seq, at)
    return True


@PROP
@given(script=SCRIPTS, codec=st.sampled_from(["utf-8", "latin-1", "euc_jp"]))
def test_the_compiled_event_text_is_the_references(script: Script, codec: str) -> None:
    assert COMPILED is not None
    for i, statement in enumerate(_statements(COMPILED, script, codec)):
        _check(statement, n=i + 1, seq=i + 1)


TEXTS = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ['"', "\\", "\x00\x01\x1f\x7f", "\b\t\n\f\r", "\u2028\u2029", "é😀\ufeff", "</script>"]
)


@PROP
@given(
    text=TEXTS,
    values=st.lists(st.none() | TEXTS, max_size=4),
    rule=TEXTS,
    action=st.sampled_from(["allow", "deny", "review"]),
    at=st.floats(allow_nan=True, allow_infinity=True) | st.floats(1e9, 2e9),
)
def test_any_text_any_float(
    text: str, values: list[str | None], rule: str, action: str, at: float
) -> None:
    """Escapes and numbers: equal where the fast encoder writes, deferred
    exactly where orjson and repr part (or orjson cannot write at all)."""
    assert COMPILED is not None
    value = values[0] if values else None
    value_bytes = value.encode() if value is not None else None
    script = simple(
        text,
        row_description((b"c", 25, 0)),
        data_row(value_bytes),
        complete(b"SELECT 1"),
        READY,
        verdict=V(action, rule),
    )
    (statement,) = _statements(COMPILED, script)
    fast = _check(statement, at=at)
    finite_and_plain = math.isfinite(at) and (at == 0 or 1e-4 <= abs(at) < 1e16)
    assert fast == finite_and_plain


#: Times to the microsecond (what the trail's clock gives) and durations to
#: the microsecond in ms: the compiled log writes these without repr, so
#: their text is checked against repr's (orjson's) across the whole range
#: that shortcut takes (|x| < 2**33) and past it.
MICROS = st.integers(-(2**33) * 10**6 - 10, 2**33 * 10**6 + 10).map(lambda u: u / 1e6)
MILLIS = st.integers(0, 10**13).map(lambda k: k / 1000)


@PROP
@given(
    value=MICROS
    | MILLIS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(1e-4, 1e4)
    | st.sampled_from([1e-4, 0.1, 0.5, 1.0, 9.999999, 10.0, 1e6, 2.0**33, 2.0**33 - 1e-6])
)
def test_times_and_durations_are_written_as_repr_writes_them(value: float) -> None:
    assert COMPILED is not None
    (statement,) = _statements(
        COMPILED, simple("SELECT 1", complete(b"SELECT 1"), READY, verdict=ALLOW)
    )
    statement.started_at = value
    statement.duration = value / 1000
    fast = _check(statement, at=value)
    plain = value == 0 or 1e-4 <= abs(value) < 1e16
    assert fast == plain or not math.isfinite(value / 1000 * 1000)


@PROP
@given(value=MICROS | MILLIS | st.floats() | st.sampled_from([0.0, -0.0, 1e-4, -1e-4, 2.0**33]))
def test_float_repr_is_repr(value: float) -> None:
    """What the store writes an event's time with (hoopfast.core.float_repr)."""
    assert COMPILED is not None
    for module in (_trail, COMPILED):
        assert module.float_repr(value) == repr(value)


_FIELD = st.sampled_from(["", "allow", "statement", "a\tb", "a\nb", "é\t", "\u2028"]) | st.text(
    max_size=6
)
_EVENT = st.builds(
    EventRecord,
    session_id=st.sampled_from(["s-1", "s-2"]),
    seq=st.integers(-(2**70), 2**70),
    at=MICROS | st.floats() | st.sampled_from([0.0, -0.0, 1e-4, 5.0, 5.000001]),
    kind=_FIELD,
    subject=st.sampled_from(["alice", "bob"]),
    connection=st.sampled_from(["main", "other"]),
    verdict=_FIELD,
    data=_FIELD | st.text(max_size=40),
    prev_hash=_FIELD,
    hash=_FIELD,
)


@PROP
@given(events=st.lists(_EVENT, max_size=8))
def test_block_lines_are_the_references(events: list[EventRecord]) -> None:
    """The store's block lines (hoopfast.core.event_lines): the same text in
    both builds, or None in both where a field would break its line."""
    assert COMPILED is not None
    lines = _trail.event_lines(events)
    assert COMPILED.event_lines(events) == lines
    plain = not any(
        "\t" in f or "\n" in f for e in events for f in (e.kind, e.verdict, e.prev_hash, e.hash)
    ) and not any("\n" in e.data for e in events)
    assert (lines is not None) == plain
    if lines is not None:
        for e, line in zip(events, lines, strict=True):
            assert line.split("\t", 6) == [
                str(e.seq),
                repr(e.at),
                e.kind,
                e.verdict,
                e.prev_hash,
                e.hash,
                e.data + "\n",
            ]


@PROP
@given(
    events=st.lists(_EVENT, min_size=1, max_size=12),
    start=st.integers(0, 11),
    max_events=st.integers(1, 13),
    max_chars=st.integers(0, 200),
    span=st.floats(0, 10) | st.sampled_from([0.0, 5.0, math.inf]),
)
def test_block_ends_are_the_references(
    events: list[EventRecord], start: int, max_events: int, max_chars: int, span: float
) -> None:
    assert COMPILED is not None
    start = min(start, len(events) - 1)
    lines = [f"{e.seq}\t{e.data}\n" for e in events]
    end = _trail.block_end(events, lines, start, max_events, max_chars, span)
    assert COMPILED.block_end(events, lines, start, max_events, max_chars, span) == end
    assert start < end <= min(len(events), start + max_events)


@PROP
@given(
    value=st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, -1, 9, 10, -(2**63), 2**63 - 1, 10**18, -(10**18)])
)
def test_integers_are_written_as_str_writes_them(value: int) -> None:
    assert COMPILED is not None
    (statement,) = _statements(
        COMPILED, simple("SELECT 1", complete(b"SELECT 1"), READY, verdict=ALLOW)
    )
    statement.rows = value
    statement.server_bytes = value
    assert _check(statement, n=value, seq=value)


def test_where_the_fast_encoder_defers() -> None:
    """A lone surrogate, an integer past 64 bits, an error of another
    shape: the reference's text (orjson, or json's ASCII for what orjson
    refuses) comes out of the log all the same."""
    assert COMPILED is not None
    (statement,) = _statements(
        COMPILED, simple("SELECT 1", complete(b"SELECT 1"), READY, verdict=ALLOW)
    )
    assert _check(statement)
    statement.text = "SELECT '\ud800'"
    assert _fast_or_none(statement, 1, 1, 1e9) is None
    statement.text = "SELECT 1"
    statement.rows = 2**64
    assert _fast_or_none(statement, 1, 1, 1e9) is None
    statement.rows = 1
    statement.error = {"sqlstate": "42P01", "message": "x", "detail": "y"}
    assert _fast_or_none(statement, 1, 1, 1e9) is None
    statement.error = {"sqlstate": "42P01", "message": "x"}
    assert _check(statement)


@pytest.mark.parametrize("module", [_trail, COMPILED], ids=["python", "compiled"])
def test_events_chain_into_spool_frames(module: ModuleType) -> None:
    """Each event links to the one before (chain.link), its record matches
    the frame, and the frames read back as the spool reads them."""
    firsts: list[bool] = []
    journal = module.Journal(lambda: firsts.append(True))
    log = _log(module, journal)
    log.append("session_start", 1795000000.5, "", {"client_address": "x"})
    script = simple("SELECT 1", complete(b"SELECT 1"), READY) * 2
    trail = module.Trail("utf-8", module.Caps(3, 200, 400), mask, lambda s: None, ALLOW, log)
    for _, text, verdict in script[::3]:
        trail.query(text, verdict)
        trail.server_message(ord("C"), complete(b"SELECT 1"))
        trail.server_message(ord("Z"), READY)
    frames, records = journal.take()
    assert firsts == [True] and journal.take() == ([], [])
    assert [r.seq for r in records] == [0, 1, 2] and log.count == 3 and log.statements == 2
    prev = GENESIS
    for record in records:
        assert record.prev_hash == prev and record.hash == link(prev, record.data)
        prev = record.hash
    assert log.last_hash == prev
    assert [json.loads(r.data)["n"] for r in records[1:]] == [1, 2]
    segment = b"".join(frames)
    payloads = []
    pos = 0
    while pos < len(segment):
        length = int.from_bytes(segment[pos : pos + 4], "big")
        crc = int.from_bytes(segment[pos + 4 : pos + 8], "big")
        payload = segment[pos + 8 : pos + 8 + length]
        assert zlib.crc32(payload) == crc
        payloads.append(payload)
        pos += 8 + length
    assert payloads == [
        b"e" + r.prev_hash.encode() + r.hash.encode() + r.data.encode() for r in records
    ]


class _Pump:
    """What a relay pump gives the journal of its held-back writes."""

    def __init__(self) -> None:
        self.written: list[bytes | None] = []

    def deferred_write(self, data: bytes | None) -> None:
        self.written.append(data)


@pytest.mark.parametrize("module", [_trail, COMPILED], ids=["python", "compiled"])
def test_the_journal_is_the_relays_barrier(module: ModuleType) -> None:
    """A record or a held-back write makes the journal pending and asks for
    one commit (``on_first``) until ``take``; the writes go to their pumps
    in order, or are dropped (None) when the records could not be written."""
    firsts: list[bool] = []
    journal = module.Journal(lambda: firsts.append(True))
    a, b = _Pump(), _Pump()
    assert not journal.pending
    journal.defer(a, b"1")
    journal.add(b"frame", "record")
    journal.defer(b, b"2")
    journal.defer(a, b"3")
    assert journal.pending and firsts == [True]
    assert journal.take() == ([b"frame"], ["record"]) and not journal.pending
    deferred = journal.take_deferred()
    assert journal.take_deferred() == []
    module.Journal.release(deferred, True)
    assert a.written == [b"1", b"3"] and b.written == [b"2"]
    journal.defer(b, b"4")
    assert firsts == [True, True]
    journal.take()
    journal.release(journal.take_deferred(), False)
    assert b.written == [b"2", None]
    journal.dropping = True
    journal.add(b"dropped", "record")
    assert not journal.pending and journal.dropped == 1 and firsts == [True, True]


def test_the_spool_reads_the_frames(tmp_path: Any) -> None:
    assert COMPILED is not None
    path = tmp_path / "000000000001.spool"
    path.write_bytes(COMPILED.frame(b"one") + _trail.frame(b"two"))
    assert list(read_segment(path)) == [b"one", b"two"]


def test_dropping_keeps_only_the_essential() -> None:
    for module in (_trail, COMPILED):
        assert module is not None
        journal = module.Journal(lambda: None)
        log = _log(module, journal)
        journal.dropping = True
        log.append("statement", 1.0, "allow", {"text": "dropped"})
        log.append("session_end", 2.0, "", {"reason": "kept"}, True)
        frames, records = journal.take()
        assert [r.kind for r in records] == ["session_end"] and journal.dropped == 1
        # A dropped event keeps its place in the chain: verification shows
        # the gap (as before the journal).
        assert records[0].seq == 1 and len(frames) == 1


def test_an_event_the_fast_encoder_defers_is_logged_as_the_reference_logs_it() -> None:
    """The log's own fallback (SessionLog.statement through append): the
    same record and frame as the reference's, for a text orjson refuses
    and an integer past 64 bits."""
    assert COMPILED is not None
    logged = []
    for module in (_trail, COMPILED):
        journal = module.Journal(lambda: None)
        log = _log(module, journal)
        (statement,) = _statements(
            module, simple("SELECT '\ud800'", complete(b"SELECT 1"), READY, verdict=ALLOW)
        )
        statement.duration, statement.started_at = 0.001, 1795000000.5
        log.statement(statement)
        statement.text, statement.rows = "SELECT 1", 2**64
        log.statement(statement)
        _, records = journal.take()
        # (The event's time is the log's clock: compared apart.)
        data = [json.loads(r.data) for r in records]
        for d in data:
            assert isinstance(d.pop("at"), float)
        logged.append((data, [r.seq for r in records], log.statements))
    assert logged[0] == logged[1]
    assert logged[0][0][1]["rows"] == 2**64
