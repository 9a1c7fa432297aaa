#!/usr/bin/env python3
"""The SQLite state store's event throughput, by page size: events written
(in the recorder's batches of 2,000) and read back in export order (pages of
1,000, as ``hoopfast audit export`` asks the API), with no gateway::

    .venv/bin/python bench/store.py [--events N] [--page-size B ...] [--repeats N]

Each page size gets a new database (the size is fixed when the file is
made); the sizes alternate, ``--repeats`` times, and the best of each is
printed with the database and WAL sizes. The events are pgbench -S
statement events of 8 sessions, interleaved as the recorder writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from hoopfast.store.base import EventCursor
from hoopfast.store.records import STATEMENT, EventFilter, EventRecord
from hoopfast.store.sqlite import SqliteStore

_SESSIONS = 8
_PER_BATCH = 250  # per session: 2,000 events a batch
_BODY = {
    "text": "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "params": ["12345"],
    "results": [
        {"columns": [{"name": "abalance", "type_oid": 23}], "rows": [["0"]], "truncated": False}
    ],
    "tags": ["SELECT 1"],
    "rows": 1,
    "bytes": 60,
    "duration_ms": 0.123,
    "rule": "",
    "error": None,
}


def batches(events: int) -> list[list[EventRecord]]:
    out: list[list[EventRecord]] = []
    heads = ["0" * 64] * _SESSIONS
    seqs = [0] * _SESSIONS
    n = 0
    while n < events:
        batch = []
        for s in range(_SESSIONS):
            for _ in range(_PER_BATCH):
                at = 1.8e9 + n * 1e-5
                n += 1
                sid = f"s{s}"
                body = dict(_BODY, session=sid, seq=seqs[s], at=at, kind=STATEMENT)
                body.update(subject="alice", connection="main", verdict="allow")
                data = json.dumps(body, sort_keys=True, separators=(",", ":"))
                digest = hashlib.sha256(f"{heads[s]}\n{data}".encode()).hexdigest()
                batch.append(
                    EventRecord(
                        sid,
                        seqs[s],
                        at,
                        STATEMENT,
                        "alice",
                        "main",
                        "allow",
                        data,
                        heads[s],
                        digest,
                    )
                )
                heads[s] = digest
                seqs[s] += 1
        out.append(batch)
    return out


async def measure(path: Path, page_size: int, work: list[list[EventRecord]]) -> tuple[float, float]:
    # The store sets its page size on a new file; a file made here first
    # with another one keeps it (as an old store does).
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("VACUUM")
    finally:
        conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        written = 0
        t0 = time.perf_counter()
        for batch in work:
            await store.write_recording(batch, [])
            written += len(batch)
        write_rate = written / (time.perf_counter() - t0)
        read = 0
        after: EventCursor | None = None
        t0 = time.perf_counter()
        while page := await store.events(EventFilter(), limit=1000, after=after):
            read += len(page)
            last = page[-1]
            after = (last.at, last.session_id, last.seq)
        assert read == written, (read, written)
        return write_rate, read / (time.perf_counter() - t0)
    finally:
        await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=480_000)
    p.add_argument("--page-size", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    work = batches(args.events)
    best: dict[int, tuple[float, float, int, int]] = {}
    for _ in range(args.repeats):
        for size in args.page_size:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "store.db"
                w, r = asyncio.run(measure(path, size, work))
                wal_file = path.with_name("store.db-wal")
                sizes = (path.stat().st_size, wal_file.stat().st_size if wal_file.exists() else 0)
            old = best.get(size)
            best[size] = (max(w, old[0]) if old else w, max(r, old[1]) if old else r, *sizes)
    print("| page size | write events/s | read events/s | database MB | WAL MB |")
    print("|---:|---:|---:|---:|---:|")
    for size, (w, r, db_bytes, wal_bytes) in best.items():
        print(f"| {size} | {w:,.0f} | {r:,.0f} | {db_bytes / 1e6:.0f} | {wal_bytes / 1e6:.0f} |")


if __name__ == "__main__":
    main()
