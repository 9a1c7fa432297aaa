#!/usr/bin/env python3
"""The audit trail's cost per statement: the pure-Python reference
(hoopfast.core._trail) against its Cython build (hoopfast.core._ctrail).

No sockets and no recorder: the calls the relay pump makes for one
pgbench -S statement, in the simple and the extended (-M extended) protocol,
fed to a Trail in a loop (the loop itself is timed too: the per-call cost of
calling into the trail is part of what the pump pays)::

    .venv/bin/python bench/trail.py [--statements N] [--repeats N]

Either the trail alone ("trail") or the trail with a session log, as a
recorded session has ("+ log": each statement's event JSON, hash link and
spool frame into a journal, emptied as the recorder's commit would). Best
of the repeats, in µs per statement.

Then the relay's side of it, compiled builds only: a pgbench -M prepared
statement's client chunk (Bind, Describe, Execute, Sync) and server chunk
(BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery)
fed to a client and a server Pump whose framer hands the trail what it
observes, as runs (one call per chunk; ``Framer.set_runs``) and, for
comparison, one message at a time.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hoopfast.recording.chain import GENESIS, MAX_EVENT_BYTES, encode_event
from hoopfast.store.records import STATEMENT, EventRecord


def msg(code: bytes, payload: bytes = b"") -> bytes:
    return code + struct.pack("!i", len(payload) + 4) + payload


class Verdict:
    action = "allow"
    rule = "class:read"


VERDICT = Verdict()
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
ROW_DESCRIPTION = msg(b"T", b"\0\x01abalance\0" + struct.pack("!IhIhih", 16397, 3, 23, 4, -1, 0))
DATA_ROW = msg(b"D", b"\0\x01\0\0\0\x041234")
COMMAND_COMPLETE = msg(b"C", b"SELECT 1\0")
READY = msg(b"Z", b"I")

QUERY = msg(b"Q", SQL.replace("$1", "12345").encode() + b"\0")
SIMPLE_SERVER = [ROW_DESCRIPTION, DATA_ROW, COMMAND_COMPLETE, READY]

PARSE = msg(b"P", b"\0" + SQL.encode() + b"\0\0\0")
BIND = msg(b"B", b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0")
DESCRIBE = msg(b"D", b"P\0")
EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")
EXTENDED_CLIENT = [BIND, DESCRIBE, EXECUTE, SYNC]
EXTENDED_SERVER = [msg(b"1"), msg(b"2"), ROW_DESCRIPTION, DATA_ROW, COMMAND_COMPLETE, READY]


def fresh(messages: list[bytes]) -> list[bytes]:
    """New bytes objects, as the framer cuts them from each chunk (so that
    hashing a RowDescription or a tag for the caches is paid every time)."""
    return [bytes(bytearray(m)) for m in messages]


def simple(trail: Any, n: int) -> Callable[[], None]:
    batches = [(fresh([QUERY]), fresh(SIMPLE_SERVER)) for _ in range(n)]
    fast, server = trail.fast_statement, trail.server_message

    def run() -> None:
        for (query,), answer in batches:
            fast(query[0], query, SQL, VERDICT)
            for m in answer:
                server(m[0], m)

    return run


def extended(trail: Any, n: int) -> Callable[[], None]:
    batches = [(fresh([PARSE]), fresh(EXTENDED_CLIENT), fresh(EXTENDED_SERVER)) for _ in range(n)]
    fast, client, server = trail.fast_statement, trail.client_message, trail.server_message

    def run() -> None:
        for (parse,), sent, answer in batches:
            fast(parse[0], parse, SQL, VERDICT)
            for m in sent:
                client(m[0], m)
            for m in answer:
                server(m[0], m)

    return run


def per_statement(
    module: ModuleType,
    statements: Callable[[Any, int], Callable[[], None]],
    event: bool,
    n: int,
    repeats: int,
) -> float:
    """Best µs per statement over ``repeats`` runs of ``n``."""
    count = 0

    def done(st: Any) -> None:
        nonlocal count
        count += 1

    journal = module.Journal(lambda: None)
    log = (
        module.SessionLog(
            journal,
            "s-1",
            "alice",
            "bench",
            EventRecord,
            encode_event,
            STATEMENT,
            MAX_EVENT_BYTES,
            GENESIS,
        )
        if event
        else None
    )
    trail = module.Trail("utf-8", module.Caps(100, 65536, 16 << 20), str, done, VERDICT, log)
    best = float("inf")
    for _ in range(repeats):
        run = statements(trail, n)
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        journal.take()
    assert count == n * repeats, "every statement must be finished"
    return best / n * 1e6


class _Peer:
    """A socket that takes writes and never closes (no system call)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.write = self.writes.append

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: Any) -> None:
        pass


class _Owner:
    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes:
        raise AssertionError("nothing here is owned")

    def pump_violation(self, pump: Any, error: Exception) -> None:
        raise error


PREPARED_CLIENT = b"".join([BIND, DESCRIBE, EXECUTE, SYNC])
PREPARED_SERVER = b"".join(EXTENDED_SERVER[1:])


def through_the_pump(runs: bool, n: int, repeats: int) -> float:
    """Best µs per statement: the two chunks of one prepared statement
    through the compiled pumps and framers into the compiled trail."""
    import hoopfast_core

    from hoopfast.core import _cpump, _ctrail

    finished = 0

    def done(st: Any) -> None:
        nonlocal finished
        finished += 1

    trail = _ctrail.Trail("utf-8", _ctrail.Caps(100, 65536, 16 << 20), str, done, VERDICT)

    def pump(types: bytes, batch: bytes, observe: Callable[[int, bytes], None]) -> Any:
        framer = hoopfast_core.Framer(1 << 30, types, batch)
        p = _cpump.Pump(framer, _Owner(), hoopfast_core.FramingError)
        p.attach(_Peer(), _Peer())
        p.observe(types, observe)
        if not runs:
            framer.set_runs(b"")
        return p

    client = pump(b"BDESC", b"", trail.client_run if runs else trail.client_message)
    server = pump(b"TDCIsZ123nt", b"D", trail.server_run if runs else trail.server_message)
    trail.fast_statement(PARSE[0], PARSE, SQL, VERDICT)
    server.data_received(msg(b"1"))
    best = float("inf")
    for _ in range(repeats):
        # (New objects each, as the framer cuts them from each read.)
        chunks = [
            (bytes(bytearray(PREPARED_CLIENT)), bytes(bytearray(PREPARED_SERVER))) for _ in range(n)
        ]
        t0 = time.perf_counter()
        for sent, answer in chunks:
            client.data_received(sent)
            server.data_received(answer)
        best = min(best, time.perf_counter() - t0)
    assert finished == n * repeats, "every statement must be finished"
    return best / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--statements", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    from hoopfast.core import _ctrail, _trail

    print("| protocol | done | python µs | compiled µs | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, statements in [("simple", simple), ("extended", extended)]:
        for event in (False, True):
            py, c = (
                per_statement(m, statements, event, args.statements, args.repeats)
                for m in (_trail, _ctrail)
            )
            label = "+ log" if event else "trail"
            print(f"| {name} | {label} | {py:.2f} | {c:.2f} | {py / c:.1f}x |")
    one, run = (through_the_pump(r, args.statements, args.repeats) for r in (False, True))
    print()
    print("| prepared statement through the pumps | one message a call µs | runs µs | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| client and server chunk | {one:.2f} | {run:.2f} | {one / run:.2f}x |")


if __name__ == "__main__":
    main()
