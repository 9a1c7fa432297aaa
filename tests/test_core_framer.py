"""The incremental Framer, run against both implementations side by side.

``hoopfast_core`` (Rust) is skipped only when it cannot be imported and
``HOOPFAST_IMPL`` is not ``compiled``; with ``HOOPFAST_IMPL=compiled`` a
missing extension fails the run.
"""

from __future__ import annotations

import itertools
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopfast.core import _python
from tests.impls import COMPILED, IMPLS, needs_both

# --------------------------------------------------------------------------
# Implementations


BIG = 1 << 30

# --------------------------------------------------------------------------
# Helpers


def msg(code: bytes | int, payload: bytes = b"") -> bytes:
    if isinstance(code, int):
        code = bytes((code,))
    return code + struct.pack("!i", len(payload) + 4) + payload


def header(code: bytes, length: int) -> bytes:
    return code + struct.pack("!i", length)


def row(i: int) -> bytes:
    """A one-column DataRow."""
    value = str(i).encode()
    return msg(b"D", struct.pack("!hi", 1, len(value)) + value)


def normalise(items: list[Any]) -> list[Any]:
    """Coalesce adjacent bytes items (across feed calls) and drop empty ones."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, bytes):
            if not item:
                continue
            if out and isinstance(out[-1], bytes):
                out[-1] += item
                continue
        out.append(item)
    return out


def joined(items: list[Any]) -> bytes:
    return b"".join(i if isinstance(i, bytes) else i[1] for i in items)


def split_messages(whole: bytes) -> list[bytes]:
    """Whole messages laid end to end -> the messages (asserting they fit)."""
    out = []
    pos = 0
    while pos < len(whole):
        assert len(whole) - pos >= 5, "truncated header"
        end = pos + 1 + struct.unpack_from("!i", whole, pos + 1)[0]
        assert pos + 5 <= end <= len(whole), "bad or truncated message"
        out.append(whole[pos:end])
        pos = end
    return out


def merge_class(code: int, batch: bytes, runs: bytes = b"") -> int:
    """Which adjacent whole messages a type merges with (0: none): every
    runs type with every other (and with a run, code 0), a batch type with
    its own type."""
    return 257 if code in runs or (runs and code == 0) else code + 1 if code in batch else 0


def check_items(items: list[Any], batch: bytes = b"", runs: bytes = b"") -> None:
    """Shape of one feed() result: no empty runs, adjacent runs coalesced,
    tuples hold one whole message, or (batch types) several of the type,
    or (runs types) several of those types, never split across adjacent
    tuples."""
    if runs:
        prev_class = 0
        for item in items:
            if isinstance(item, bytes):
                prev_class = 0
                continue
            code, whole = item
            parts = split_messages(whole)
            assert parts and (parts[0][0] == code or (code == 0 and len(parts) > 1))
            cls = merge_class(code, batch, runs)
            assert all(merge_class(m[0], batch, runs) == cls for m in parts)
            assert not (cls and cls == prev_class), "run not merged"
            prev_class = cls
        return
    prev: Any = None
    for item in items:
        if isinstance(item, bytes):
            assert item, "empty pass-through item"
            assert not isinstance(prev, bytes), "adjacent pass-through items not coalesced"
        else:
            assert isinstance(item, tuple) and len(item) == 2
            code, whole = item
            assert isinstance(code, int) and isinstance(whole, bytes)
            parts = split_messages(whole)
            assert parts and all(m[0] == code for m in parts)
            if code in batch:
                assert not (isinstance(prev, tuple) and prev[0] == code), "batch not merged"
            else:
                assert len(parts) == 1, "several messages in a non-batch item"
        prev = item


def merge_batches(items: list[Any], batch: bytes, runs: bytes = b"") -> list[Any]:
    """The batch (and runs) contract, applied to one unbatched feed() result."""
    out: list[Any] = []
    for item in items:
        if (
            isinstance(item, tuple)
            and merge_class(item[0], batch, runs)
            and out
            and isinstance(out[-1], tuple)
            and merge_class(out[-1][0], batch, runs) == merge_class(item[0], batch, runs)
        ):
            merged = 0 if merge_class(item[0], batch, runs) == 257 else out[-1][0]
            out[-1] = (merged, out[-1][1] + item[1])
        else:
            out.append(item)
    return out


def feed_all(framer: Any, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        items = framer.feed(chunk)
        check_items(items)
        out.extend(items)
    return out


# A typical extended-query response to pgbench -S.
SMALL = (
    msg(b"1")
    + msg(b"2")
    + msg(b"T", b"\x00\x01aid\x00" + b"\x00" * 18)
    + msg(b"D", b"\x00\x01\x00\x00\x00\x0512345")
    + msg(b"C", b"SELECT 1\x00")
    + msg(b"Z", b"I")
)

# --------------------------------------------------------------------------
# Unit tests, per implementation


@pytest.mark.parametrize("impl", IMPLS)
class TestFramer:
    def test_module_shape(self, impl: ModuleType) -> None:
        assert impl.IMPLEMENTATION in ("python", "compiled")
        assert issubclass(impl.FramingError, ValueError)
        assert impl.FramingError.__name__ == "FramingError"

    def test_whole_chunk_is_returned_as_is(self, impl: ModuleType) -> None:
        f = impl.Framer(BIG, b"E")
        out = f.feed(SMALL)
        assert out == [SMALL]
        assert out[0] is SMALL
        assert f.messages == 6
        assert f.at_boundary
        assert f.buffered == 0

    def test_empty_feed(self, impl: ModuleType) -> None:
        f = impl.Framer(BIG)
        assert f.feed(b"") == []
        assert f.at_boundary and f.messages == 0 and f.buffered == 0

    def test_intercepted_message_is_returned_whole(self, impl: ModuleType) -> None:
        err = msg(b"E", b"SERROR\x00C42P01\x00\x00")
        data = msg(b"C", b"x\x00") + err + msg(b"Z", b"I")
        f = impl.Framer(BIG, b"E")
        assert f.feed(data) == [msg(b"C", b"x\x00"), (ord("E"), err), msg(b"Z", b"I")]
        assert f.messages == 3

    def test_every_split_point(self, impl: ModuleType) -> None:
        err = msg(b"E", b"SERROR\x00\x00")
        data = msg(b"C", b"x\x00") + err + msg(b"1") + msg(b"E") + msg(b"Z", b"I")
        for cut in range(len(data) + 1):
            f = impl.Framer(BIG, b"E")
            first = f.feed(data[:cut])
            items = first + f.feed(data[cut:])
            assert joined(items) == data
            assert [i for i in items if isinstance(i, tuple)] == [
                (ord("E"), err),
                (ord("E"), msg(b"E")),
            ]
            assert f.messages == 5 and f.at_boundary and f.buffered == 0

    def test_partial_header_is_held(self, impl: ModuleType) -> None:
        data = msg(b"D", b"abcdef")
        f = impl.Framer(BIG)
        assert f.feed(data[:1]) == []
        assert f.buffered == 1 and not f.at_boundary
        assert f.feed(data[1:3]) == []
        assert f.buffered == 3
        assert f.feed(data[3:7]) == [data[:7]]
        assert f.buffered == 0 and not f.at_boundary and f.messages == 0
        assert f.feed(data[7:]) == [data[7:]]
        assert f.at_boundary and f.messages == 1

    def test_trailing_partial_header_after_messages(self, impl: ModuleType) -> None:
        f = impl.Framer(BIG)
        nxt = msg(b"Z", b"I")
        out = f.feed(SMALL + nxt[:3])
        assert out == [SMALL]
        assert f.buffered == 3
        assert f.feed(nxt[3:]) == [nxt]

    def test_large_pass_through_is_streamed_not_buffered(self, impl: ModuleType) -> None:
        payload = bytes(range(256)) * 4096  # 1 MiB
        data = msg(b"d", payload)
        f = impl.Framer(BIG)
        seen = []
        for i in range(0, len(data), 65536):
            chunk = data[i : i + 65536]
            out = f.feed(chunk)
            assert out == [chunk] and out[0] is chunk
            assert f.buffered == 0
            seen.append(out[0])
        assert b"".join(seen) == data
        assert f.messages == 1 and f.at_boundary

    def test_large_intercepted_message_is_held(self, impl: ModuleType) -> None:
        data = msg(b"E", b"M" + b"x" * 200_000 + b"\x00\x00")
        f = impl.Framer(BIG, b"E")
        assert f.feed(data[:100_000]) == []
        assert f.buffered == 100_000
        assert f.feed(data[100_000:]) == [(ord("E"), data)]
        assert f.buffered == 0

    def test_length_limits(self, impl: ModuleType) -> None:
        f = impl.Framer(100)
        assert f.feed(msg(b"D", b"x" * 95)) == [msg(b"D", b"x" * 95)]  # length 99
        assert f.feed(header(b"D", 100)) == [header(b"D", 100)]  # exactly the cap
        assert f.feed(b"\x00" * 96) == [b"\x00" * 96]
        assert f.feed(header(b"D", 4)) == [header(b"D", 4)]
        assert f.messages == 3

    @pytest.mark.parametrize("length", [-(2**31), -1, 0, 1, 2, 3, 101, 2**31 - 1])
    @pytest.mark.parametrize("split", [0, 1, 2, 3, 4])
    def test_bad_length(self, impl: ModuleType, length: int, split: int) -> None:
        good = msg(b"Z", b"I")
        bad = header(b"Q", length)
        data = good + bad
        f = impl.Framer(100, b"Q")
        with pytest.raises(impl.FramingError) as exc:
            if split:
                assert f.feed(data[: len(good) + split]) == [good]
                assert f.buffered == split
                f.feed(data[len(good) + split :])
            else:
                f.feed(data)
        assert str(exc.value) == f"invalid message length {length} for type 'Q' (allowed 4..100)"
        assert f.messages == 1
        assert not f.at_boundary
        assert f.buffered == 0
        for later in (b"", good, b"x", bytearray(b"x")):
            with pytest.raises(impl.FramingError, match="broken"):
                f.feed(later)

    def test_bad_length_type_shown_as_hex(self, impl: ModuleType) -> None:
        f = impl.Framer(100)
        with pytest.raises(impl.FramingError, match=r"length 2 for type 0x00 "):
            f.feed(b"\x00\x00\x00\x00\x02")
        with pytest.raises(ValueError):  # FramingError is a ValueError
            f.feed(b"")

    def test_set_intercept_applies_to_next_header(self, impl: ModuleType) -> None:
        a = msg(b"E", b"Mfirst\x00\x00")
        b = msg(b"E", b"Msecond\x00\x00")
        f = impl.Framer(BIG)
        assert f.feed(a[:7]) == [a[:7]]  # pass-through already started
        f.set_intercept(b"E")
        assert f.feed(a[7:] + b[:3]) == [a[7:]]  # stays pass-through; header held
        f.set_intercept(b"EN")
        assert f.feed(b[3:]) == [(ord("E"), b)]
        f.set_intercept(b"")
        assert f.feed(b) == [b]
        assert f.messages == 3

    def test_set_intercept_while_holding(self, impl: ModuleType) -> None:
        a = msg(b"E", b"Mfirst\x00\x00")
        f = impl.Framer(BIG, b"E")
        assert f.feed(a[:8]) == []
        f.set_intercept(b"")  # the held message stays intercepted
        assert f.feed(a[8:]) == [(ord("E"), a)]

    def test_held_header_then_intercepted_empty_message(self, impl: ModuleType) -> None:
        m = msg(b"E")
        f = impl.Framer(BIG, b"E")
        assert f.feed(m[:2]) == []
        assert f.feed(m[2:] + SMALL) == [(ord("E"), m), SMALL]
        assert f.messages == 7

    def test_constructor_validation(self, impl: ModuleType) -> None:
        for bad in (3, 0, -1, 2**31, 2**70):
            with pytest.raises(ValueError, match="max_length"):
                impl.Framer(bad)
        with pytest.raises(TypeError):
            impl.Framer(1.5)
        with pytest.raises(TypeError):
            impl.Framer(100, "E")
        assert impl.Framer(4).feed(msg(b"S")) == [msg(b"S")]
        assert impl.Framer(2**31 - 1, intercept=b"E").at_boundary

    def test_feed_needs_bytes(self, impl: ModuleType) -> None:
        f = impl.Framer(100)
        for bad in (bytearray(b"Z"), memoryview(b"Z"), "Z"):
            with pytest.raises(TypeError):
                f.feed(bad)
        with pytest.raises(TypeError):
            f.set_intercept("E")

    # ----------------------------------------------------------------------
    # batch

    def test_batch_chunk_of_rows_is_one_item(self, impl: ModuleType) -> None:
        data = b"".join(row(i) for i in range(5000))
        assert len(data) > 65536
        f = impl.Framer(BIG, b"DE", batch=b"D")
        out = f.feed(data)
        assert out == [(ord("D"), data)]
        assert out[0][1] is data  # the chunk is all one batch: no copy
        assert f.messages == 5000 and f.at_boundary and f.buffered == 0
        # Pass-through messages around the rows stay separate items.
        f = impl.Framer(BIG, b"D", b"D")
        head, tail = msg(b"T", b"\x00\x00"), msg(b"C", b"SELECT 5000\x00") + msg(b"Z", b"I")
        out = f.feed(head + data + tail)
        assert out == [head, (ord("D"), data), tail]
        assert f.messages == 5003

    def test_batch_64k_chunks_one_item_each(self, impl: ModuleType) -> None:
        rows = b"".join(row(i) for i in range(20_000))
        f = impl.Framer(BIG, b"D", b"D")
        out = []
        for i in range(0, len(rows), 65536):
            items = f.feed(rows[i : i + 65536])
            check_items(items, b"D")
            assert len(items) == 1 and items[0][0] == ord("D")
            out += items
        assert joined(out) == rows
        assert f.messages == 20_000 and f.at_boundary

    def test_batch_interleaved_with_other_intercepted_type(self, impl: ModuleType) -> None:
        err = msg(b"E", b"SERROR\x00\x00")
        note = msg(b"N", b"SNOTICE\x00\x00")
        c = msg(b"C", b"x\x00")
        rows = [row(i) for i in range(8)]
        data = (
            (rows[0] + rows[1] + err + err + rows[2] + note + rows[3] + rows[4] + rows[5])
            + c
            + rows[6]
            + rows[7]
        )
        f = impl.Framer(BIG, b"DEN", b"D")
        out = f.feed(data)
        check_items(out, b"D")
        assert out == [
            (ord("D"), rows[0] + rows[1]),
            (ord("E"), err),
            (ord("E"), err),  # E is not in batch: one item per message
            (ord("D"), rows[2]),
            (ord("N"), note),
            (ord("D"), rows[3] + rows[4] + rows[5]),
            c,
            (ord("D"), rows[6] + rows[7]),
        ]
        assert f.messages == 12
        # Batching E as well merges the two errors, nothing else.
        f = impl.Framer(BIG, b"DEN", b"DE")
        assert f.feed(data)[1:3] == [(ord("E"), err + err), (ord("D"), rows[2])]

    def test_batch_held_row_then_whole_rows(self, impl: ModuleType) -> None:
        rows = [row(i) for i in range(5)]
        data = b"".join(rows)
        for cut in range(1, len(rows[0])):  # inside the header and inside the body
            f = impl.Framer(BIG, b"D", b"D")
            assert f.feed(data[:cut]) == []
            assert f.buffered == cut
            out = f.feed(data[cut:])
            assert out == [(ord("D"), data)]  # the held row merges with the rest
            assert f.messages == 5 and f.at_boundary and f.buffered == 0
        # The held row stays apart from rows that follow a pass-through item.
        c = msg(b"C", b"x\x00")
        f = impl.Framer(BIG, b"D", b"D")
        assert f.feed(rows[0][:7]) == []
        assert f.feed(rows[0][7:] + c + rows[1] + rows[2] + rows[3][:3]) == [
            (ord("D"), rows[0]),
            c,
            (ord("D"), rows[1] + rows[2]),
        ]
        assert f.buffered == 3
        # A batch never reaches back into an earlier feed() call.
        assert f.feed(rows[3][3:] + rows[4]) == [(ord("D"), rows[3] + rows[4])]

    def test_batch_held_empty_message_then_whole(self, impl: ModuleType) -> None:
        data = msg(b"D") + row(1) + msg(b"D") + row(2)
        f = impl.Framer(BIG, b"D", b"D")
        assert f.feed(data[:3]) == []
        assert f.feed(data[3:]) == [(ord("D"), data)]
        assert f.messages == 4

    def test_batch_without_intercept_has_no_effect(self, impl: ModuleType) -> None:
        data = row(1) + row(2) + msg(b"E") + row(3)
        f = impl.Framer(BIG, b"E", b"DZ")
        assert f.feed(data) == [row(1) + row(2), (ord("E"), msg(b"E")), row(3)]
        f.set_intercept(b"DE")  # batch is kept and applies to the new set
        assert f.feed(data) == [
            (ord("D"), row(1) + row(2)),
            (ord("E"), msg(b"E")),
            (ord("D"), row(3)),
        ]
        f.set_intercept(b"")
        out = f.feed(data)
        assert out == [data] and out[0] is data

    def test_batch_validation(self, impl: ModuleType) -> None:
        for bad in ("D", bytearray(b"D"), memoryview(b"D"), [68], None):
            with pytest.raises(TypeError, match="batch must be bytes"):
                impl.Framer(100, b"D", bad)
            with pytest.raises(TypeError, match="batch must be bytes"):
                impl.Framer(100, batch=bad)
        assert impl.Framer(100, batch=b"").feed(row(1)) == [row(1)]
        assert impl.Framer(100, b"D", b"\x00\xffD").feed(row(1) * 2) == [(ord("D"), row(1) * 2)]


# --------------------------------------------------------------------------
# Property tests: both implementations on random streams and random chunking

PASS_TYPES = b"DCZT12SdcAKn"
INTERCEPT_TYPES = b"ENR"
_FILL = bytes(range(256)) * 1200  # >300 KB of filler


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[int, int, int]], list[int]]:
    """(intercept, data, spans (start, end, type), cut points)."""
    intercept = draw(st.sampled_from([b"", b"E", b"EN", b"ENR", b"D"]))
    size = st.one_of(
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(41, 2000),
        st.integers(60_000, 300_000),
    )
    kinds = st.one_of(st.sampled_from(PASS_TYPES), st.sampled_from(INTERCEPT_TYPES))
    parts = draw(st.lists(st.tuples(kinds, size), max_size=25))
    spans = []
    chunks = []
    pos = 0
    for i, (code, n) in enumerate(parts):
        payload = _FILL[i : i + n]
        m = msg(code, payload)
        spans.append((pos, pos + len(m), code))
        chunks.append(m)
        pos += len(m)
    data = b"".join(chunks)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    return intercept, data, spans, cuts


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def expected_buffered(spans: list[tuple[int, int, int]], intercept: bytes, at: int) -> int:
    for start, end, code in spans:
        if start < at < end:
            held = at - start
            if code in intercept:
                return held
            return held if held < 5 else 0
    return 0


PROP = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("impl", IMPLS)
@PROP
@given(stream=streams())
def test_random_streams_invariants(impl: ModuleType, stream: Any) -> None:
    intercept, data, spans, cuts = stream
    f = impl.Framer(BIG, intercept)
    out: list[Any] = []
    consumed = 0
    for chunk in chunked(data, cuts):
        items = f.feed(chunk)
        check_items(items)
        out.extend(items)
        consumed += len(chunk)
        buffered = expected_buffered(spans, intercept, consumed)
        # Everything not held has been emitted, in order, unchanged.
        assert f.buffered == buffered
        assert joined(out) == data[: consumed - buffered]
        assert f.messages == sum(1 for _, end, _ in spans if end <= consumed)
        assert f.at_boundary == (
            consumed == 0 or any(end == consumed for _, end, _ in spans) or not spans
        )
    assert joined(out) == data
    assert [i for i in out if isinstance(i, tuple)] == [
        (code, data[start:end]) for start, end, code in spans if code in intercept
    ]
    assert f.at_boundary and f.buffered == 0 and f.messages == len(spans)


def _feed_both(py: Any, rs: Any, chunks: Any, switches: list[bytes]) -> list[Any]:
    """Feed both implementations the same chunks (switching the intercepted
    types after chunk i to switches[i]); they must give identical items and
    counters at every step. Returns the items."""
    out: list[Any] = []
    for i, chunk in enumerate(chunks):
        a, b = py.feed(chunk), rs.feed(chunk)
        assert a == b  # identical item sequences, not just after normalising
        out += a
        assert (py.buffered, py.messages, py.at_boundary) == (
            rs.buffered,
            rs.messages,
            rs.at_boundary,
        )
        if i < len(switches):
            py.set_intercept(switches[i])
            rs.set_intercept(switches[i])
    return out


@needs_both
@PROP
@given(stream=streams(), switches=st.lists(st.sampled_from([b"", b"E", b"DC", b"ZEN"])))
def test_random_streams_differential(stream: Any, switches: list[bytes]) -> None:
    intercept, data, _, cuts = stream
    assert COMPILED is not None
    py, rs = _python.Framer(BIG, intercept), COMPILED.Framer(BIG, intercept)
    out = _feed_both(py, rs, chunked(data, cuts), switches)
    assert joined(out) == data


@needs_both
@PROP
@given(
    stream=streams(),
    bad_length=st.one_of(st.integers(-(2**31), 3), st.integers(1001, 2**31 - 1)),
    bad_type=st.integers(0, 255),
    extra_cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_bad_length_differential(
    stream: Any, bad_length: int, bad_type: int, extra_cuts: list[int]
) -> None:
    intercept, data, spans, cuts = stream
    # Keep the good part under the cap of 1000 per message by trimming spans.
    good = b"".join(data[s:e] for s, e, _ in spans if e - s <= 1000)
    stream_bytes = good + bytes((bad_type,)) + struct.pack("!i", bad_length) + b"tail"
    cuts = sorted([c for c in cuts if c <= len(good)] + [len(good) + c for c in extra_cuts])
    cuts = [min(c, len(stream_bytes)) for c in cuts]
    assert COMPILED is not None
    results = []
    for impl in (_python, COMPILED):
        f = impl.Framer(1000, intercept)
        out: list[Any] = []
        error = None
        for chunk in chunked(stream_bytes, cuts):
            try:
                out += f.feed(chunk)
            except impl.FramingError as e:
                error = str(e)
                break
        assert error is not None and "invalid message length" in error
        with pytest.raises(impl.FramingError):
            f.feed(b"Z\x00\x00\x00\x05I")
        results.append((normalise(out), error, f.messages, f.buffered, f.at_boundary))
    assert results[0] == results[1]


@needs_both
@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    max_length=st.integers(4, 300),
    intercept=st.binary(max_size=6),
    batch=st.one_of(st.just(b""), st.binary(max_size=6)),
)
def test_garbage_differential(
    data: bytes, cuts: list[int], max_length: int, intercept: bytes, batch: bytes
) -> None:
    """Arbitrary bytes: same items, same errors, same state in both."""
    assert COMPILED is not None
    cuts = sorted(min(c, len(data)) for c in cuts)
    traces = []
    for impl in (_python, COMPILED):
        f = impl.Framer(max_length, intercept, batch)
        trace: list[Any] = []
        for chunk in chunked(data, cuts):
            try:
                items = f.feed(chunk)
                check_items(items, batch)
                trace.append(items)
            except impl.FramingError as e:
                trace.append(("error", str(e)))
            trace.append((f.buffered, f.messages, f.at_boundary))
        traces.append(trace)
    assert traces[0] == traces[1]


# --------------------------------------------------------------------------
# Property tests for batch: result sets dominated by runs of small rows

BATCH_STREAM_TYPES = b"DDDDDDEENCZ1"


@st.composite
def batch_streams(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, list[int]]:
    """(intercept, batch, data, cut points)."""
    intercept = draw(st.sampled_from([b"D", b"D", b"DE", b"DEN", b"E", b""]))
    batch = draw(st.sampled_from([b"D", b"D", b"DE", b"DEN", b"E", b"Z", b""]))
    size = st.one_of(st.integers(0, 12), st.integers(0, 40), st.integers(41, 3000))
    parts = draw(st.lists(st.tuples(st.sampled_from(BATCH_STREAM_TYPES), size), max_size=60))
    data = b"".join(msg(code, _FILL[i : i + n]) for i, (code, n) in enumerate(parts))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return intercept, batch, data, cuts


RUNS = st.sampled_from([b"", b"", b"DCZ1", b"CZ1", b"DENCZ1", b"E", b"Z"])


@pytest.mark.parametrize("impl", IMPLS)
@PROP
@given(stream=batch_streams(), runs=RUNS)
def test_random_batch_contract(impl: ModuleType, stream: Any, runs: bytes) -> None:
    """Per chunk, batched output == the unbatched output with adjacent tuples
    of a batch type merged; with runs (what only an observer reads, handed
    over in one piece), adjacent tuples of run types merged whatever their
    types too; counters identical; items rebuild the input."""
    intercept, batch, data, cuts = stream
    intercept += runs  # (runs are of intercepted types)
    plain, batched = impl.Framer(BIG, intercept), impl.Framer(BIG, intercept, batch)
    batched.set_runs(runs)
    out: list[Any] = []
    for chunk in chunked(data, cuts):
        want = merge_batches(plain.feed(chunk), batch, runs)
        got = batched.feed(chunk)
        check_items(got, batch, runs)
        assert got == want
        assert (batched.buffered, batched.messages, batched.at_boundary) == (
            plain.buffered,
            plain.messages,
            plain.at_boundary,
        )
        out += got
    assert joined(out) == data
    assert batched.at_boundary and batched.buffered == 0


@needs_both
@PROP
@given(stream=batch_streams(), runs=RUNS)
def test_random_runs_differential(stream: Any, runs: bytes) -> None:
    intercept, batch, data, cuts = stream
    assert COMPILED is not None
    py, rs = (
        _python.Framer(BIG, intercept + runs, batch),
        COMPILED.Framer(BIG, intercept + runs, batch),
    )
    py.set_runs(runs)
    rs.set_runs(runs)
    for chunk in chunked(data, cuts):
        assert py.feed(chunk) == rs.feed(chunk)
        assert (py.buffered, py.messages, py.at_boundary) == (
            rs.buffered,
            rs.messages,
            rs.at_boundary,
        )


@needs_both
@PROP
@given(stream=batch_streams(), switches=st.lists(st.sampled_from([b"", b"D", b"DE", b"E"])))
def test_random_batch_differential(stream: Any, switches: list[bytes]) -> None:
    intercept, batch, data, cuts = stream
    assert COMPILED is not None
    py, rs = _python.Framer(BIG, intercept, batch), COMPILED.Framer(BIG, intercept, batch)
    out = _feed_both(py, rs, chunked(data, cuts), switches)
    assert joined(out) == data
