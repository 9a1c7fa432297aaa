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
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


class Owner:
    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        return message

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


class Rewriter(Owner):
    """Replaces every intercepted message, as the guardrails do."""

    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        return b"<" + message + b">" if type_code != ord("X") else None


@pytest.mark.parametrize(("pump_class", "core"), _pumps())
def test_one_write_per_chunk_with_intercepted_messages(pump_class: Any, core: Any) -> None:
    """A pipelined Parse/Bind/Execute/Sync with the Parse intercepted goes out
    in one write (one system call), in order, with the owner's replacement."""
    sink = SinkTransport()
    pump = pump_class(core.Framer(1 << 30, b"PX"), Rewriter(), core.FramingError)
    pump.attach(_Attachable(), sink)
    parse, bind, execute, sync = (
        msg(b"P", b"\0SELECT 1\0\0\0"),
        msg(b"B", b"\0\0" + b"\0" * 6),
        msg(b"E", b"\0" + b"\0" * 4),
        msg(b"S"),
    )
    pump.data_received(parse + bind + execute + sync)
    assert sink.writes == [b"<" + parse + b">" + bind + execute + sync]
    pump.data_received(bind + msg(b"X"))  # a dropped message: the rest still goes
    assert sink.writes[1:] == [bind]
    pump.data_received(msg(b"X"))  # nothing at all to forward: no write
    assert len(sink.writes) == 2


class Counting(Owner):
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        self.seen.append(message)
        return message


@pytest.mark.parametrize(("pump_class", "core"), _pumps())
def test_fast_path_passes_only_known_statements(pump_class: Any, core: Any) -> None:
    """Statements whose fingerprint is in ``fast`` pass without the owner;
    everything the fast path cannot read exactly goes to the owner."""
    sink, owner = SinkTransport(), Counting()
    pump = pump_class(core.Framer(1 << 30, b"QPX"), owner, core.FramingError, core.fingerprint)
    pump.attach(_Attachable(), sink)
    known = "SELECT abalance FROM a WHERE aid = 1"
    pump.fast = {core.fingerprint(known)[0]: True}

    def query(text: bytes) -> bytes:
        return msg(b"Q", text + b"\0")

    passed = [
        query(b"SELECT abalance FROM a WHERE aid = 2"),  # same fingerprint
        msg(b"P", b"\0" + known.encode() + b"\0\0\0"),  # unnamed Parse
    ]
    to_owner = [
        query(b"SELECT abalance FROM a WHERE aid = 1; DELETE FROM a"),
        query(known.encode() + b"\0DELETE FROM a"),  # bytes after the NUL
        query(b"SELECT abalance FROM a WHERE aid = '\xff'"),  # not UTF-8
        msg(b"P", b"s1\0" + known.encode() + b"\0\0\0"),  # named: the owner tracks it
        msg(b"Q", known.encode()),  # no NUL at all
    ]
    for message in passed + to_owner:
        pump.data_received(message)
    assert owner.seen == to_owner
    assert b"".join(sink.writes) == b"".join(passed + to_owner)
    pump.fast = None
    pump.data_received(passed[0])
    assert owner.seen[-1] == passed[0]


class TakingBindsBack(Owner):
    """Owns Parse; on one, starts intercepting Bind itself (the session
    watches Binds from the first Parse that can change what may run)."""

    def __init__(self, observed: list[tuple[int, bytes]]) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.observed = observed

    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        self.seen.append((type_code, message))
        if type_code == ord("P"):
            pump.observe(b"ES", self.observe)
        return message

    def observe(self, type_code: int, data: bytes) -> None:
        self.observed.append((type_code, data))


@pytest.mark.parametrize(("pump_class", "core"), _pumps())
def test_observed_messages_come_as_one_run_until_a_type_is_taken_back(
    pump_class: Any, core: Any
) -> None:
    """Adjacent observed messages reach the observer as one run (one call);
    a run the framer made before the owner took one of its types back is
    split, each message going where it now belongs, in order."""
    sink = SinkTransport()
    observed: list[tuple[int, bytes]] = []
    owner = TakingBindsBack(observed)
    pump = pump_class(core.Framer(1 << 30, b"PBES"), owner, core.FramingError)
    pump.attach(_Attachable(), sink)
    pump.observe(b"BES", owner.observe)
    parse = msg(b"P", b"\0SELECT 1\0\0\0")
    bind, execute, sync = msg(b"B", b"\0\0" + b"\0" * 6), msg(b"E", b"\0" + b"\0" * 4), msg(b"S")
    pump.data_received(bind + execute + sync)
    assert observed == [(0, bind + execute + sync)]  # (0: a run of several)
    assert owner.seen == []
    observed.clear()
    pump.data_received(parse + bind + execute + sync)
    assert owner.seen == [(ord("P"), parse), (ord("B"), bind)]
    assert observed == [(ord("E"), execute), (ord("S"), sync)]
    observed.clear()
    pump.data_received(bind + execute + sync)  # from now on: B owned, E S one run
    assert observed == [(0, execute + sync)]
    bes = bind + execute + sync
    assert sink.writes == [bes, parse + bes, bes]


class HoldingFirstParse(Owner):
    def __init__(self) -> None:
        self.held_once = False

    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        if type_code == ord("P") and not self.held_once:
            self.held_once = True
            pump.hold()
            return None
        return message

    def observe(self, type_code: int, data: bytes) -> None:
        pass


@pytest.mark.parametrize(("pump_class", "core"), _pumps())
def test_releasing_thousands_of_runs_to_split_is_a_loop(pump_class: Any, core: Any) -> None:
    """A statement held for review while the client pipelines 20,000 more
    (Parse, Bind, Execute, Sync) groups: on release the owner has taken
    Binds back, so every held (Bind, Execute, Sync) run is split. Once one
    nested call per run: a RecursionError past ~1,000 in Python, a C stack
    overflow (the gateway process gone) past ~45,000 compiled."""
    sink = SinkTransport()
    owner = HoldingFirstParse()
    pump = pump_class(core.Framer(1 << 30, b"PBES"), owner, core.FramingError)
    pump.attach(_Attachable(), sink)
    pump.observe(b"BES", owner.observe)
    parse = msg(b"P", b"\0SELECT 1\0\0\0")
    group = parse + msg(b"B", b"\0\0" + b"\0" * 6) + msg(b"E", b"\0" + b"\0" * 4) + msg(b"S")
    pump.data_received(group)  # the first Parse is held
    data = group * 20_000
    for i in range(0, len(data), 1 << 16):
        pump.data_received(data[i : i + (1 << 16)])
    assert len(pump.held) > 20_000
    pump.observe(b"ES", owner.observe)  # Binds are the owner's now
    pump.release(parse)
    assert pump.held is None
    assert b"".join(sink.writes) == group + data
