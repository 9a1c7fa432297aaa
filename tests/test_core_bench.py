"""Benchmarks of the hot-path core, both implementations (pytest-benchmark).

The project runs pytest with ``--benchmark-disable``, so in the normal suite
each case runs once as a plain test (and asserts its result first). Measure
with ``pytest tests/test_core_bench.py --benchmark-enable``.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest

from hoopfast.core import _python
from tests.impls import IMPLS


def msg(code: bytes, payload: bytes = b"") -> bytes:
    return code + struct.pack("!i", len(payload) + 4) + payload


# pgbench -S, extended protocol: BindComplete, DataRow, CommandComplete, ReadyForQuery.
PGBENCH_S = (
    msg(b"2")
    + msg(b"D", b"\x00\x01\x00\x00\x00\x04-123")
    + msg(b"C", b"SELECT 1\x00")
    + msg(b"Z", b"I")
)
MANY_SMALL = PGBENCH_S * 200  # ~9 KB, 800 messages
ROW = msg(b"D", b"\x00\x03" + (b"\x00\x00\x02\x00" + b"x" * 512) * 3)
LARGE_ROWS = ROW * 64  # ~100 KB of 1.5 KB DataRows
CHUNK = 65536
LARGE_CHUNKS = [LARGE_ROWS[i : i + CHUNK] for i in range(0, len(LARGE_ROWS), CHUNK)]


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_frame_pgbench_chunk(benchmark: Any, impl: ModuleType) -> None:
    framer = impl.Framer(1 << 30, b"E")
    out = framer.feed(PGBENCH_S)
    assert out == [PGBENCH_S] and out[0] is PGBENCH_S
    result = benchmark(framer.feed, PGBENCH_S)
    assert result[0] is PGBENCH_S


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_frame_many_small(benchmark: Any, impl: ModuleType) -> None:
    framer = impl.Framer(1 << 30, b"E")
    out = framer.feed(MANY_SMALL)
    assert out == [MANY_SMALL] and framer.messages == 800
    result = benchmark(framer.feed, MANY_SMALL)
    assert result[0] is MANY_SMALL


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_frame_large_rows(benchmark: Any, impl: ModuleType) -> None:
    def run() -> int:
        framer = impl.Framer(1 << 30, b"E")
        total = 0
        for chunk in LARGE_CHUNKS:
            for item in framer.feed(chunk):
                total += len(item)
        assert framer.at_boundary
        return total

    assert run() == len(LARGE_ROWS)
    assert benchmark(run) == len(LARGE_ROWS)


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_frame_with_intercepts(benchmark: Any, impl: ModuleType) -> None:
    err = msg(b"N", b"SNOTICE\x00Mhello\x00\x00")
    data = (PGBENCH_S + err) * 50

    def run() -> int:
        framer = impl.Framer(1 << 30, b"EN")
        return sum(1 for item in framer.feed(data) if isinstance(item, tuple))

    assert run() == 50
    assert benchmark(run) == 50


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_decode_data_row(benchmark: Any, impl: ModuleType) -> None:
    row = impl.encode_data_row([b"12345", None, b"x" * 100, b"2024-01-01", b"t"] * 4)
    expected = [b"12345", None, b"x" * 100, b"2024-01-01", b"t"] * 4
    assert impl.decode_data_row(row) == expected
    assert benchmark(impl.decode_data_row, row) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_encode_data_row(benchmark: Any, impl: ModuleType) -> None:
    values = [b"12345", None, b"x" * 100, b"2024-01-01", b"t"] * 4
    encoded = _python.encode_data_row(values)
    assert impl.encode_data_row(values) == encoded
    assert benchmark(impl.encode_data_row, values) == encoded


PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
# A ~2 KB reporting query: joins, literals of every kind, comments, casts.
QUERY_2K = (
    "/* report: daily revenue */\n"
    "WITH recent AS (\n"
    "  SELECT o.id, o.customer_id, o.total::numeric(12, 2) AS total, o.created_at\n"
    '  FROM "Sales".orders o\n'
    "  WHERE o.created_at >= TIMESTAMP '2024-01-01 00:00:00'\n"
    "    AND o.status IN ('paid', 'shipped', 'delivered') -- not refunded\n"
    "    AND o.total > 10.50 AND o.region_id = ANY($1)\n"
    ")\n"
    "SELECT c.id, c.name, E'\\t' || c.email AS email,\n"
    "       sum(r.total) AS revenue, count(*) AS orders,\n"
    "       max(r.created_at) AS last_order, $$note: it's fine$$ AS note\n"
    "FROM recent r\n"
    "JOIN customers c ON c.id = r.customer_id\n"
    "LEFT JOIN \"Loyalty\" l ON l.customer_id = c.id AND l.tier <> 'none'\n"
    "WHERE c.country = 'DE' AND c.created_at < now() - interval '30 days'\n"
)
QUERY_2K += "".join(
    f"  AND (c.flags & {1 << (i % 16)} = 0 OR c.score BETWEEN {i}.5 AND 1e{i % 9}"
    f" OR c.tag = 'tag_{i}')\n"
    for i in range(18)
)
QUERY_2K += "GROUP BY c.id, c.name, c.email\nORDER BY revenue DESC\nLIMIT 100 OFFSET 0;\n"


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_fingerprint_pgbench(benchmark: Any, impl: ModuleType) -> None:
    expected = _python.fingerprint(PGBENCH_SELECT)
    assert expected[1] == 1
    assert benchmark(impl.fingerprint, PGBENCH_SELECT) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_fingerprint_2k(benchmark: Any, impl: ModuleType) -> None:
    assert 1900 <= len(QUERY_2K.encode()) <= 2300
    expected = _python.fingerprint(QUERY_2K)
    assert expected[1] == 1
    assert benchmark(impl.fingerprint, QUERY_2K) == expected
