"""The relay pump's per-chunk cost: the Cython pump against the pure-Python
reference, each with the Rust framer (to isolate the pump) and with its own
implementation's framer. Runs once as a test; `--benchmark-enable` times it."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from hoopfast.core import _python
from hoopfast.core._pump import Pump as PyPump
from tests.impls import COMPILED, WHY_NOT_COMPILED


def msg(code: bytes, payload: bytes = b"") -> bytes:
    return code + struct.pack("!i", len(payload) + 4) + payload


# What the server sends for one pgbench -S transaction (simple protocol).
CHUNK = (
    msg(b"T", b"abalance\0" + b"\0" * 18)
    + msg(b"D", b"\0\x01\0\0\0\x041234")
    + msg(b"C", b"SELECT 1\0")
    + msg(b"Z", b"I")
)


class SinkTransport:
    """Counts what the pump writes; no socket, so only the pump is timed."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


class Owner:
    def pump_message(self, pump: Any, type_code: int, message: bytes) -> None:
        pump.peer.write(message)

    def pump_violation(self, pump: Any, error: Exception) -> None:
        raise error

    def pump_closed(self, pump: Any, error: Exception | None) -> None:
        pass


def _pumps() -> list[Any]:
    cases = [pytest.param(PyPump, _python, id="python-pump+python-framer")]
    if COMPILED is None:
        skip = pytest.mark.skip(reason=WHY_NOT_COMPILED)
        return [*cases, pytest.param(None, None, marks=skip, id="compiled")]
    from hoopfast.core._cpump import Pump as CPump

    return [
        *cases,
        pytest.param(PyPump, COMPILED, id="python-pump+rust-framer"),
        pytest.param(CPump, COMPILED, id="cython-pump+rust-framer"),
    ]


@pytest.mark.parametrize(("pump_class", "core"), _pumps())
def test_pump_pgbench_chunk(benchmark: Any, pump_class: Any, core: Any) -> None:
    sink = SinkTransport()
    pump = pump_class(core.Framer(1 << 30, b"XE"), Owner(), core.FramingError)
    pump.attach(_Attachable(), sink)

    def run() -> None:
        for _ in range(100):
            pump.data_received(CHUNK)

    benchmark(run)
    assert sink.written % (100 * len(CHUNK)) == 0 and sink.written > 0
    assert pump.bytes_in == sink.written


class _Attachable:
    def set_protocol(self, protocol: Any) -> None:
        pass
