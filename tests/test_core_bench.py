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
