"""Large-result client for bench/run.py, run in its own process so that its
memory and CPU are not those of the runner.

    python bench/_client.py MODE CONNINFO QUERY      (password in PGPASSWORD)

MODE is one of:

* ``select``: a plain client-side cursor: ``cursor.execute(QUERY)`` returns
  once libpq holds the *whole* result in client memory. Rows are not turned
  into Python objects (that cost is the client's and identical for every
  target), so the time is transfer + libpq parsing.
* ``copy``:   ``COPY (QUERY) TO STDOUT`` read block by block with
  ``cursor.copy()``; client memory stays bounded.
* ``stream``: ``cursor.stream(QUERY)`` (libpq single-row mode), one row at a
  time; client memory stays bounded.
* ``stream-throttled``: as ``stream``, but sleeps 2 ms after every ~256 KB
  received, so the client is slower than the server and a proxy in between
  must apply back-pressure (or buffer the difference).

Prints one JSON object: {"seconds", "connect_seconds", "bytes", "rows"}.
On error prints {"error": "..."} and exits 1.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    mode, conninfo, query = sys.argv[1], sys.argv[2], sys.argv[3]
    import psycopg

    t0 = time.perf_counter()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            t1 = time.perf_counter()
            rows = 0
            nbytes = 0
            with conn.cursor() as cur:
                if mode == "select":
                    cur.execute(query)
                    rows = cur.rowcount
                    nbytes = -1  # not measured: would need converting every row
                elif mode == "copy":
                    with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
                        for block in copy:
                            nbytes += len(block)
                            rows += 1
                elif mode in ("stream", "stream-throttled"):
                    throttle = mode == "stream-throttled"
                    since_pause = 0
                    for row in cur.stream(query):
                        rows += 1
                        size = len(row[0]) if row and isinstance(row[0], str) else 0
                        nbytes += size
                        if throttle:
                            since_pause += size
                            if since_pause >= 256 * 1024:
                                time.sleep(0.002)
                                since_pause = 0
                else:
                    raise ValueError(f"unknown mode {mode!r}")
            t2 = time.perf_counter()
    except Exception as e:  # reported to the runner, which marks the case FAILED
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(
        json.dumps({"seconds": t2 - t1, "connect_seconds": t1 - t0, "bytes": nbytes, "rows": rows})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
