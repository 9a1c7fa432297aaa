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


if __name__ == "__main__":
    main()
