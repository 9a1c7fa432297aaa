"""Clients for bench/run.py, each run in its own process so that its memory
and CPU are not those of the runner.

    python bench/_client.py MODE CONNINFO QUERY      (password in PGPASSWORD)
    python bench/_client.py policy [CHECKS [REPEAT]]

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

``policy`` needs no database: it times the statement guardrails' per-message
work in this process (:func:`policy_timings`, which tests/test_policy_bench.py
also uses), under the core implementation HOOPFAST_IMPL selects, and prints
the numbers as one JSON object.
"""

from __future__ import annotations

import json
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hoopfast.policy.classify import Classification
    from hoopfast.policy.guard import Rules

# --------------------------------------------------------------------------- policy

#: What pgbench -S sends per transaction; pgbench picks aid at random.
PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
#: deny_patterns for the "with patterns" case: they run on the raw text of
#: every statement, after the verdict cache. The second one denies one
#: literal value (an account number outside pgbench's random range), which the
#: fingerprint cannot see.
DENY_PATTERNS = (r"(?i)\bpg_sleep\b", r"\b1234567\b")
#: A pgbench -S text that the second pattern denies.
DENIED_AID = 1234567


def policy_config(deny_patterns: Sequence[str] = ()) -> Any:
    """A GatewayConfig with one connection "bench" granted to role "bench"
    (default grant, optionally with deny_patterns)."""
    from hoopfast.config import GatewayConfig

    grant: dict[str, Any] = {"deny_patterns": list(deny_patterns)} if deny_patterns else {}
    return GatewayConfig.model_validate(
        {
            "identity": {
                "issuer": "https://issuer.invalid",
                "audience": "hoopfast",
                "jwks_file": "/nonexistent/jwks.json",  # not read at validation
            },
            "roles": {"bench": {"groups": ["bench"]}},
            "connections": {
                "bench": {
                    "host": "127.0.0.1",
                    "database": "bench",
                    "user": "bench",
                    "grants": {"bench": grant},
                }
            },
        }
    )


def policy_rules(deny_patterns: Sequence[str] = ()) -> Rules:
    """Fresh Rules (empty verdict and classification caches) for role
    "bench" on connection "bench", as a session gets them."""
    from hoopfast.policy.guard import Policy

    rules = Policy(policy_config(deny_patterns)).rules_for("bench", ["bench"])
    assert rules is not None
    return rules


def pgbench_texts(n: int, seed: int = 1) -> list[str]:
    """n pgbench -S texts with random aids: different literals, one fingerprint."""
    rng = random.Random(seed)
    return [PGBENCH_SELECT.format(rng.randint(1, 1_000_000)) for _ in range(n)]


def query_message(sql: str) -> bytes:
    """A simple-protocol Query ('Q') message, as pgbench -M simple sends it."""
    body = sql.encode("utf-8") + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def parse_message(sql: str, name: bytes = b"") -> bytes:
    """A Parse ('P') message with no parameter types, as pgbench -M extended
    sends it (unnamed statement)."""
    body = name + b"\0" + sql.encode("utf-8") + b"\0" + b"\0\0"
    return b"P" + struct.pack("!i", len(body) + 4) + body


def judge_query(
    rules: Rules, message: bytes, prepared: Mapping[str, Classification]
) -> Classification | None:
    """What the session does with a Query message before forwarding it
    (Session._on_query + _judge, minus the socket write): find the end of
    the text, decode it, check it, look at what it prepares."""
    end = message.find(b"\0", 5)
    if end < 0:
        return None
    sql = message[5:end].decode("utf-8")
    decision = rules.check(sql, prepared)
    if decision.verdict.action != "allow":
        return None
    c = decision.classification
    if c.deallocates or c.prepares:
        return None  # not reached for pgbench's SELECT
    return c


def judge_parse(
    rules: Rules, message: bytes, prepared: Mapping[str, Classification]
) -> Classification | None:
    """The same for a Parse message (Session._on_parse + _judge)."""
    name_end = message.find(b"\0", 5)
    end = message.find(b"\0", name_end + 1) if name_end >= 0 else -1
    if end < 0:
        return None
    sql = message[name_end + 1 : end].decode("utf-8")
    decision = rules.check(sql, prepared)
    if decision.verdict.action != "allow":
        return None
    c = decision.classification
    if c.deallocates or c.prepares:
        return None
    return c


def mean_ns(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    """Mean wall time of fn(item) over items, in ns (loop overhead included,
    a few tens of ns)."""
    t0 = time.perf_counter_ns()
    for item in items:
        fn(item)
    return (time.perf_counter_ns() - t0) / len(items)


def policy_timings(checks: int = 20_000, repeat: int = 5) -> dict[str, Any]:
    """The guardrails' per-statement cost for pgbench -S's SELECT, in ns.

    Every timed figure is the median over ``repeat`` passes of the mean over
    ``checks`` different texts (a random aid each, so the literal differs
    and the fingerprint does not); the verdict cache is warmed first, so all
    but the ``miss`` figure are cache hits."""
    from hoopfast import core

    texts = pgbench_texts(checks)
    keys = {core.fingerprint(t)[0] for t in texts[:1000]}
    assert len(keys) == 1, "the pgbench texts should share one fingerprint"
    queries = [query_message(t) for t in texts]
    parses = [parse_message(t) for t in texts]
    prepared: dict[str, Classification] = {}

    rules = policy_rules()
    patterned = policy_rules(DENY_PATTERNS)
    for r in (rules, patterned):
        assert r.check(texts[0]).verdict.action == "allow"  # the one cache miss
    denied = PGBENCH_SELECT.format(DENIED_AID)
    assert patterned.check(denied).verdict.rule == "pattern:1"  # same key, denied by pattern
    assert rules.check(denied).verdict.action == "allow"

    def judged_q(message: bytes) -> object:
        return judge_query(rules, message, prepared)

    def judged_p(message: bytes) -> object:
        return judge_parse(rules, message, prepared)

    cases: dict[str, tuple[Callable[[Any], object], Sequence[Any]]] = {
        "fingerprint": (core.fingerprint, texts),
        "check_hit": (rules.check, texts),
        "check_hit_patterns": (patterned.check, texts),
        "query_message": (judged_q, queries),
        "parse_message": (judged_p, parses),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn, items in cases.values():  # warm-up pass, not counted
        mean_ns(fn, items[:1000])
    for _ in range(repeat):
        for name, (fn, items) in cases.items():
            samples[name].append(mean_ns(fn, items))
    assert rules.cached == 1 and patterned.cached == 1, "hits must not add cache entries"
    assert judge_query(rules, queries[0], prepared) is not None
    assert judge_parse(rules, parses[0], prepared) is not None

    # Cache misses: a fresh Policy each time (classification cache empty too).
    misses = []
    for text in texts[: max(20, min(200, checks // 100))]:
        fresh = policy_rules()
        t0 = time.perf_counter_ns()
        fresh.check(text)
        misses.append(time.perf_counter_ns() - t0)

    out: dict[str, Any] = {
        "implementation": core.IMPLEMENTATION,
        "checks": checks,
        "repeat": repeat,
        "text": PGBENCH_SELECT.format(12345),
        "deny_patterns": list(DENY_PATTERNS),
    }
    for name, values in samples.items():
        out[f"{name}_ns"] = statistics.median(values)
        out[f"{name}_ns_all"] = values
    out["check_miss_ns"] = statistics.median(misses)
    out["check_miss_runs"] = len(misses)
    return out


def policy_main(argv: Sequence[str]) -> int:
    checks = int(argv[0]) if argv else 20_000
    repeat = int(argv[1]) if len(argv) > 1 else 5
    try:
        result = policy_timings(checks, repeat)
    except Exception as e:  # reported to the runner
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- results


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "policy":
        return policy_main(sys.argv[2:])
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
