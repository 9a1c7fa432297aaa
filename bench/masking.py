#!/usr/bin/env python3
"""Masking through the gateway: the cost of result masking, end to end.

Issue 4's target: "1M rows with two masked columns and detectors on a
free-text column, read by psycopg: time through hoopfast with masking /
direct <= 1.6; without any rule matching <= 1.25; gateway RSS flat as rows
grow 10x". One command, one run, ratios against direct PostgreSQL measured
side by side (the machine is shared and noisy, so absolute times mean little)::

    .venv/bin/python bench/masking.py [--quick] [--rows N] [--reps N]
                                      [--impl compiled|python] [--out FILE] [--keep]
    .venv/bin/python bench/masking.py engine [ROWS]   # the masking engine alone, no sockets

1. a throwaway cluster (``hoopfast.devcluster.DevCluster``) with a table
   ``people(id, name, email, card, notes)`` of N rows (1M; quick: 100k):
   every email and card is a real-looking value, and half of the notes
   (free text) carry an email address, a phone number or a card number;
2. PgBouncer (session mode) and three gateways (``hoopfast serve``), the same
   but for the connection's ``masking`` table:

   * ``hoopfast``: no masking (the baseline gateway);
   * ``hoopfast-nomatch``: masking on, one rule naming a column that does not
     exist and no detectors: the protocol tracking runs, nothing matches;
   * ``hoopfast-masked``: detectors email, card, us_ssn, phone on every
     uncovered text column; ``people.email`` partial (keep_first = 1),
     ``people.card`` hash, ``people.notes`` detect (all detectors);

3. before anything is timed, a sample of rows through every target is
   compared with direct (masked values must be masked, the others raw), so a
   broken setup cannot produce a fast but meaningless number;
4. ``SELECT * FROM people`` read by psycopg in a client process of its own
   (plain client-side cursor: ``execute`` then ``fetchall``), text and binary
   result format, every target, ``--reps`` times in interleaved order (reversed
   every other repetition); each run's rows are checked after the clock stops
   (every email masked through the masked gateway and none elsewhere, every
   card hashed, exactly the PII-carrying notes redacted);
5. the masked gateway's RSS (peak growth, as bench/run.py measures it) while
   reading N/10 rows and N rows;
6. a markdown table: medians, ratios to direct, the targets (met / not met).

Reuses bench/run.py's pieces (Gateway, RssSampler, run_child, ...) by import.
Everything started here is stopped on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ is not a package: import run.py from next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hoopfast.devcluster import DevCluster, PgBouncer
from hoopfast.devconfig import write_gateway_config
from run import (
    CONNECTION,
    DATABASE,
    PERSON,
    ROLE,
    RSS_FLAT_SLACK,
    Gateway,
    MiB,
    _one,
    bench_connection,
    bench_session,
    client_env,
    cpu_seconds,
    direct_conninfo,
    end_cleanup,
    gateway_identity,
    git_revision,
    log,
    machine_info,
    measure_peak_rss,
    run_child,
    software_versions,
    start_cluster,
    start_pgbouncer,
    write_report,
)

THIS = Path(__file__).resolve()

#: Measurement order within a repetition (reversed on odd repetitions).
TARGETS = ("direct", "pgbouncer", "hoopfast", "hoopfast-nomatch", "hoopfast-masked")
GATEWAYS = ("hoopfast", "hoopfast-nomatch", "hoopfast-masked")
FORMATS = ("text", "binary")

# Targets from the issue.
MASKED_MAX_RATIO = 1.6  # hoopfast-masked / direct
NOMATCH_MAX_RATIO = 1.25  # hoopfast-nomatch / direct
#: The baseline gateway's bar in bench/run.py (large results), for reference.
BASELINE_MAX_RATIO = 1.25

DETECTORS = ["email", "card", "us_ssn", "phone"]
MASKING: dict[str, dict[str, Any] | None] = {
    "hoopfast": None,
    "hoopfast-nomatch": {"rules": [{"columns": ["nothere.x"], "strategy": "redact"}]},
    "hoopfast-masked": {
        "detectors": DETECTORS,
        "rules": [
            {"columns": ["people.email"], "strategy": "partial", "keep_first": 1},
            {"columns": ["people.card"], "strategy": "hash"},
            {"columns": ["people.notes"], "strategy": "detect"},
        ],
    },
}

#: Valid (Luhn) test card numbers, in the formats people type them.
CARDS = ("4111 1111 1111 1111", "5500-0000-0000-0004", "4012888888881881", "378282246310005")
_CARDS_SQL = "ARRAY[" + ", ".join(f"'{c}'" for c in CARDS) + "]"
#: Rows whose id % 6 is 0, 1 or 2 carry an email, a phone number or a card in
#: their notes; the other half is plain text of about the same length.
PEOPLE_SQL = f"""
CREATE TABLE people AS
SELECT g AS id,
       'Person ' || g AS name,
       'user' || g || '@example.com' AS email,
       ({_CARDS_SQL})[g % 4 + 1] AS card,
       CASE g % 6
         WHEN 0 THEN 'Customer wrote from alt' || g
                     || '@mail.example.org about the invoice, please follow up.'
         WHEN 1 THEN 'Called back on +1 415 555 ' || lpad((g % 10000)::text, 4, '0')
                     || ', prefers mornings; ticket closed.'
         WHEN 2 THEN 'Paid with card ' || ({_CARDS_SQL})[g % 4 + 1]
                     || ' at the front desk, receipt sent.'
         ELSE 'Regular customer since spring, asked about delivery times and the loyalty plan.'
       END AS notes
FROM generate_series(1, %s) g
"""
PII_NOTES = {0: "email", 1: "phone", 2: "card"}  # id % 6 -> the detector that must fire
QUERY = "SELECT * FROM people"

_HEX16 = re.compile(r"[0-9a-f]{16}")
_MASKED_EMAIL = re.compile(r"u\*+@example\.com")


# --------------------------------------------------------------------------- client


def client_main(argv: Sequence[str]) -> int:
    """``masking.py client FORMAT CONNINFO QUERY`` (password in PGPASSWORD):
    psycopg, plain client-side cursor, ``execute`` then ``fetchall``; then,
    off the clock, counts what the rows look like. Prints one JSON object."""
    fmt, conninfo, query = argv
    import psycopg

    try:
        t0 = time.perf_counter()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            t1 = time.perf_counter()
            with conn.cursor(binary=fmt == "binary") as cur:
                cur.execute(query)
                t2 = time.perf_counter()
                rows = cur.fetchall()
                t3 = time.perf_counter()
    except Exception as e:  # reported to the runner, which marks the run FAILED
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    stats = {
        "rows": len(rows),
        "masked_emails": sum(1 for r in rows if r[2] is not None and _MASKED_EMAIL.fullmatch(r[2])),
        "raw_emails": sum(1 for r in rows if r[2] == f"user{r[0]}@example.com"),
        "hashed_cards": sum(
            1 for r in rows if r[3] not in CARDS and r[3] is not None and _HEX16.fullmatch(r[3])
        ),
        "raw_cards": sum(1 for r in rows if r[3] in CARDS),
        "redacted_notes": sum(
            1 for r in rows if r[4] is not None and f"[REDACTED:{PII_NOTES.get(r[0] % 6)}]" in r[4]
        ),
        "notes_with_redaction": sum(1 for r in rows if r[4] is not None and "[REDACTED:" in r[4]),
    }
    print(
        json.dumps(
            {
                "seconds": t3 - t1,
                "execute_seconds": t2 - t1,
                "fetch_seconds": t3 - t2,
                "connect_seconds": t1 - t0,
                **stats,
            }
        )
    )
    return 0


def python_row(g: int) -> tuple[int, str, str, str, str]:
    """Row ``g`` of table people, as PEOPLE_SQL makes it."""
    card = CARDS[g % 4]
    kind = g % 6
    if kind == 0:
        notes = f"Customer wrote from alt{g}@mail.example.org about the invoice, please follow up."
    elif kind == 1:
        notes = f"Called back on +1 415 555 {g % 10000:04d}, prefers mornings; ticket closed."
    elif kind == 2:
        notes = f"Paid with card {card} at the front desk, receipt sent."
    else:
        notes = "Regular customer since spring, asked about delivery times and the loyalty plan."
    return g, f"Person {g}", f"user{g}@example.com", card, notes


def engine_main(argv: Sequence[str]) -> int:
    """``masking.py engine [ROWS]``: the masking engine alone (no sockets):
    ``core.MaskPlan.apply`` over the people rows as DataRows in ~64 KB
    buffers, for the bench's plan and for each of its parts; best of 3."""
    from hoopfast import core
    from hoopfast.config import DETECTORS as ALL_DETECTORS

    rows = int(argv[0]) if argv else 1_000_000
    buffers: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for g in range(1, rows + 1):
        msg = core.encode_data_row([str(v).encode() for v in python_row(g)])
        pending.append(msg)
        size += len(msg)
        if size >= 65536:
            buffers.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        buffers.append(b"".join(pending))
    total = sum(map(len, buffers))
    text = 25  # text's type OID

    def rule(strategy: str, detectors: Sequence[str] = (), keep_first: int = 0) -> Any:
        return (strategy, 0, text, list(detectors), keep_first, 0)

    four, every = list(DETECTORS), list(ALL_DETECTORS)
    name, email = rule("detect", four), rule("partial", keep_first=1)
    card, notes = rule("hash"), rule("detect", every)
    plans: dict[str, list[Any]] = {
        "the bench's plan (hoopfast-masked)": [None, name, email, card, notes],
        "the same, notes with the 4 detectors only": [
            None,
            name,
            email,
            card,
            rule("detect", four),
        ],
        "only name: 4 detectors (never match)": [None, name, None, None, None],
        "only email: partial, keep_first = 1": [None, None, email, None, None],
        "only card: hash": [None, None, None, card, None],
        "only card: redact (for comparison)": [None, None, None, rule("redact"), None],
        "only notes: detect, every detector": [None, None, None, None, notes],
        "only notes: detect, 4 detectors": [None, None, None, None, rule("detect", four)],
    }
    print(
        f"implementation {core.IMPLEMENTATION}; {rows:,} rows, {total / MiB:.1f} MiB of "
        f"DataRows in {len(buffers):,} buffers; best of 3 passes"
    )
    print("| plan | ms | ns / row | MB/s |")
    print("|---|---:|---:|---:|")
    for label, columns in plans.items():
        plan = core.MaskPlan(columns, b"k" * 32, None)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for buffer in buffers:
                plan.apply(buffer)
            best = min(best, time.perf_counter() - t0)
        print(
            f"| {label} | {best * 1e3:.0f} | {best / rows * 1e9:.0f} | {total / best / 1e6:.0f} |"
        )
    return 0


# --------------------------------------------------------------------------- setup


@dataclass
class Env:
    cluster: DevCluster
    bouncer: PgBouncer
    gateways: dict[str, Gateway]
    password: str
    token: str
    rows: int
    table_bytes: int
    pii_notes: int
    versions: dict[str, str]

    def conninfo(self, target: str) -> str:
        if target in GATEWAYS:
            port, user, dbname = self.gateways[target].port, PERSON, CONNECTION
        elif target == "pgbouncer":
            port, user, dbname = self.bouncer.port, ROLE, DATABASE
        else:
            port, user, dbname = self.cluster.port, ROLE, DATABASE
        return f"host=127.0.0.1 port={port} user={user} dbname={dbname} sslmode=disable"

    def secret(self, target: str) -> str:
        return self.token if target in GATEWAYS else self.password

    def pid(self, target: str) -> int | None:
        if target in GATEWAYS:
            return self.gateways[target].pid
        if target == "pgbouncer":
            proc = self.bouncer._proc  # no public accessor
            return proc.pid if proc is not None and proc.poll() is None else None
        return None


def setup(stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace) -> Env:
    import psycopg

    password = secrets.token_urlsafe(18)
    cluster = start_cluster(stack, workdir, password)
    direct = direct_conninfo(cluster)

    log(f"creating table people ({args.rows:,} rows)")
    with psycopg.connect(direct, password=password, autocommit=True) as conn:
        conn.execute(PEOPLE_SQL.replace("%s", str(int(args.rows))))
        conn.execute("VACUUM ANALYZE people")
        table_bytes = int(_one(conn.execute("SELECT pg_total_relation_size('people')").fetchone()))
        pii_notes = int(
            _one(conn.execute("SELECT count(*) FROM people WHERE id % 6 < 3").fetchone())
        )
        pg_version = str(_one(conn.execute("SHOW server_version").fetchone()))

    bouncer = start_pgbouncer(stack, workdir, cluster, password)
    jwks, token, secret_file = gateway_identity(workdir, password)
    gateways: dict[str, Gateway] = {}
    for name in GATEWAYS:
        connection = bench_connection(cluster, secret_file)
        masking = MASKING[name]
        if masking is not None:
            connection["masking"] = masking
        config = write_gateway_config(
            workdir / f"{name}.toml",
            jwks,
            {CONNECTION: connection},
            {"bench": {"groups": ["bench"]}},
            header="Written by bench/masking.py.",
        )
        log(f"starting gateway {name}")
        gw = Gateway(workdir, config, args.impl, name=name)
        stack.callback(gw.stop)
        gw.start()
        gateways[name] = gw

    versions = software_versions(gateways["hoopfast"], pg_version)
    versions["git"] = git_revision()
    env = Env(
        cluster=cluster,
        bouncer=bouncer,
        gateways=gateways,
        password=password,
        token=token,
        rows=args.rows,
        table_bytes=table_bytes,
        pii_notes=pii_notes,
        versions=versions,
    )
    log(
        f"ready: direct :{cluster.port}, pgbouncer :{bouncer.port}, "
        + ", ".join(f"{n} :{g.port} (pid {g.pid})" for n, g in gateways.items())
    )
    return env


# --------------------------------------------------------------------------- checks


def sample_rows(env: Env, target: str, binary: bool) -> list[tuple[Any, ...]]:
    import psycopg

    with (
        psycopg.connect(
            env.conninfo(target), password=env.secret(target), autocommit=True, connect_timeout=20
        ) as conn,
        conn.cursor(binary=binary) as cur,
    ):
        cur.execute("SELECT * FROM people WHERE id <= 12 ORDER BY id")
        return cur.fetchall()


def check_masked_row(raw: tuple[Any, ...], got: tuple[Any, ...]) -> list[str]:
    """What is wrong with one row read through the masked gateway."""
    problems = []
    rid, name, email, _card, notes = raw
    if got[0] != rid or got[1] != name:
        problems.append(f"id/name changed: {got[:2]!r} (raw {raw[:2]!r})")
    if not (
        isinstance(got[2], str)
        and got[2][:1] == email[:1]
        and got[2][1:2] == "*"
        and got[2] != email
    ):
        problems.append(f"email not partially masked: {got[2]!r} (raw {email!r})")
    if not (isinstance(got[3], str) and got[3] not in CARDS and _HEX16.fullmatch(got[3])):
        problems.append(f"card not hashed: {got[3]!r}")
    kind = PII_NOTES.get(rid % 6)
    if kind is None:
        if got[4] != notes:
            problems.append(f"clean notes changed: {got[4]!r} (raw {notes!r})")
    elif not (isinstance(got[4], str) and f"[REDACTED:{kind}]" in got[4]):
        problems.append(f"notes without [REDACTED:{kind}]: {got[4]!r}")
    return problems


def sanity_check(env: Env) -> None:
    """Every target answers, the masked gateway masks, the others do not."""
    for binary in (False, True):
        fmt = "binary" if binary else "text"
        raw = sample_rows(env, "direct", binary)
        if len(raw) != 12:
            raise RuntimeError(f"direct returned {len(raw)} sample rows, not 12")
        for target in TARGETS[1:]:
            got = sample_rows(env, target, binary)
            if len(got) != len(raw):
                raise RuntimeError(f"{target} ({fmt}): {len(got)} sample rows, direct {len(raw)}")
            if target == "hoopfast-masked":
                problems = [
                    p for r, g in zip(raw, got, strict=True) for p in check_masked_row(r, g)
                ]
                if problems:
                    raise RuntimeError(
                        f"{target} ({fmt}) does not mask as configured:\n  "
                        + "\n  ".join(problems[:10])
                    )
                log(f"check {target} ({fmt}): row 1 = {got[0]!r}")
            elif got != raw:
                raise RuntimeError(f"{target} ({fmt}) changed values: {got[0]!r} vs {raw[0]!r}")
    log("sanity check passed: masked gateway masks, the other targets return raw values")


def check_run(env: Env, target: str, result: dict[str, Any], rows: int) -> None:
    """Raise if a timed run's rows are not what the target must return."""
    want: dict[str, int]
    if target == "hoopfast-masked":
        want = {
            "masked_emails": rows,
            "raw_emails": 0,
            "hashed_cards": rows,
            "raw_cards": 0,
            "redacted_notes": expected_pii(rows, env),
            "notes_with_redaction": expected_pii(rows, env),
        }
    else:
        want = {
            "masked_emails": 0,
            "raw_emails": rows,
            "hashed_cards": 0,
            "raw_cards": rows,
            "redacted_notes": 0,
            "notes_with_redaction": 0,
        }
    want["rows"] = rows
    wrong = {k: (result.get(k), v) for k, v in want.items() if result.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}={got} (want {v})" for k, (got, v) in wrong.items())
        raise RuntimeError(f"rows not as expected: {detail}")


def expected_pii(rows: int, env: Env) -> int:
    """Rows among ids 1..rows whose notes carry PII (id % 6 in 0, 1, 2)."""
    if rows == env.rows:
        return env.pii_notes
    return sum(1 for i in range(1, rows + 1) if i % 6 < 3)


# --------------------------------------------------------------------------- measure


@dataclass
class Case:
    fmt: str
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    errors: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in TARGETS})

    def median(self, target: str, key: str = "seconds") -> float | None:
        values = [r[key] for r in self.runs[target] if r.get(key) is not None]
        return statistics.median(values) if values else None

    def ratio(self, target: str, key: str = "seconds") -> float | None:
        a, b = self.median(target, key), self.median("direct", key)
        return None if a is None or not b else a / b


def run_read(env: Env, target: str, fmt: str, query: str, rows: int) -> dict[str, Any]:
    """One client process reading ``query``; checked; with the proxy's CPU."""
    pid = env.pid(target)
    cpu0 = cpu_seconds(pid)
    argv = [sys.executable, str(THIS), "client", fmt, env.conninfo(target), query]
    rc, out, err = run_child(argv, env=client_env(env.secret(target)), timeout=1800)
    cpu1 = cpu_seconds(pid)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": f"exit {rc}: {(out + err).strip()[-2000:]}"}
    if rc != 0 or "error" in result:
        raise RuntimeError(result.get("error") or f"exit {rc}: {err.strip()[-2000:]}")
    check_run(env, target, result, rows)
    if cpu0 is not None and cpu1 is not None:
        result["proxy_cpu_seconds"] = cpu1 - cpu0
    return result


def measure(env: Env, args: argparse.Namespace) -> list[Case]:
    log("warm-up (not counted): one read per target, text format")
    for target in TARGETS:
        with contextlib.suppress(RuntimeError):
            run_read(env, target, "text", QUERY, env.rows)
    cases = [Case(fmt) for fmt in FORMATS]
    total = args.reps * len(cases) * len(TARGETS)
    done = 0
    for rep in range(args.reps):
        order = TARGETS if rep % 2 == 0 else tuple(reversed(TARGETS))
        for case in cases:
            for target in order:
                done += 1
                try:
                    result = run_read(env, target, case.fmt, QUERY, env.rows)
                except RuntimeError as e:
                    msg = str(e).strip()
                    case.errors[target].append(msg)
                    log(f"FAILED {case.fmt} / {target}: {msg}")
                    continue
                case.runs[target].append(result)
                log(
                    f"[{done}/{total}] {case.fmt:6} {target:16} {result['seconds']:.2f} s "
                    f"(execute {result['execute_seconds']:.2f} s)"
                )
    return cases


@dataclass
class Rss:
    rows: int
    growth_mib: float | None = None
    before: int = 0
    peak: int = 0
    seconds: float | None = None
    error: str | None = None


def measure_rss(env: Env) -> list[Rss]:
    """Peak RSS growth of the masked gateway while one client reads N/10 and
    N rows (reset VmHWM, then 5 ms sampling, as bench/run.py does)."""
    out: list[Rss] = []
    target = "hoopfast-masked"
    for rows in (env.rows // 10, env.rows):
        item = Rss(rows)
        out.append(item)
        pid = env.pid(target)
        if pid is None:
            item.error = "gateway process not running"
            continue
        log(f"memory: {target}, {rows:,} rows")
        try:
            result, rss = measure_peak_rss(
                pid,
                functools.partial(
                    run_read, env, target, "text", f"{QUERY} WHERE id <= {rows}", rows
                ),
            )
        except RuntimeError as e:
            item.error = str(e).strip()
            log(f"FAILED memory {rows}: {item.error}")
            continue
        item.peak = rss.peak
        item.before = rss.before
        item.growth_mib = rss.growth_mib
        item.seconds = result["seconds"]
    return out


# --------------------------------------------------------------------------- report

_STATUS_MD = {"met": "✅ met", "not met": "❌ not met", "FAILED": "FAILED", "—": "—"}


def _bar(target: str) -> tuple[str, float | None]:
    if target == "hoopfast-masked":
        return f"≤ {MASKED_MAX_RATIO}", MASKED_MAX_RATIO
    if target == "hoopfast-nomatch":
        return f"≤ {NOMATCH_MAX_RATIO}", NOMATCH_MAX_RATIO
    if target == "hoopfast":
        return f"(≤ {BASELINE_MAX_RATIO}, reference)", None
    return "—", None


def _status(ratio: float | None, bar: float | None) -> str:
    if bar is None:
        return "—"
    if ratio is None:
        return "FAILED"
    return "met" if ratio <= bar else "not met"


def _s(value: float | None) -> str:
    return "FAILED" if value is None else f"{value:.2f} s"


def _r(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def rss_status(rss: list[Rss]) -> tuple[str, str]:
    small, large = rss[0], rss[-1]
    if small.growth_mib is None or large.growth_mib is None:
        return "FAILED", "FAILED"
    delta = round(large.growth_mib - small.growth_mib, 1) + 0.0  # no "-0.0"
    return f"{delta:+.1f} MiB", "met" if delta <= RSS_FLAT_SLACK / MiB else "not met"


def render(cases: list[Case], rss: list[Rss], info: dict[str, Any], env: Env) -> str:
    v = env.versions
    lines = [
        f"### hoopfast masking benchmark — {info['started']}",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['nproc']} CPU(s), {info['cpu_model']}, {info['mem_total']}, "
        f"{info['kernel']}",
        f"- hoopfast: {v['hoopfast']} (HOOPFAST_IMPL={info['impl'] or 'unset'}), git {v['git']}",
        f"- PostgreSQL {v['postgresql']}; {v['pgbouncer']}; Python {v['python']}; "
        f"psycopg {v['psycopg']}; uvloop {v['uvloop']}",
        f"- table people: {env.rows:,} rows, {env.table_bytes / MiB:.0f} MiB on disk; "
        f"{env.pii_notes:,} notes carry an email, phone or card number",
        f"- {info['reps']} run(s) per target and format, interleaved (order reversed every other "
        "repetition), median shown; client: psycopg in its own process, plain client-side "
        "cursor, `SELECT * FROM people`; all targets without TLS (sslmode=disable)",
        "- transfer = `execute()` until libpq holds the whole result; read = `execute()` + "
        "`fetchall()` (rows turned into Python objects, a cost that is the same for every "
        "target); ratios are against direct; gateway CPU = CPU seconds of the proxy process "
        "per run",
        f"- load average (1 min) at start / end of the measurements: {info['load_start']} / "
        f"{info['load_end']} (the machine is shared)",
        "",
        "| format | target | transfer | transfer / direct | read | read / direct "
        "| proxy CPU per run | target (read / direct) | status (read) | status (transfer) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for case in cases:
        for target in TARGETS:
            bar_text, bar = _bar(target)
            read_ratio, xfer_ratio = case.ratio(target), case.ratio(target, "execute_seconds")
            failed = not case.runs[target] and case.errors[target]
            cpu = case.median(target, "proxy_cpu_seconds")
            note = f" ({len(case.errors[target])} failed)" if case.errors[target] else ""
            lines.append(
                f"| {case.fmt} | {target}{note} "
                f"| {'FAILED' if failed else _s(case.median(target, 'execute_seconds'))} "
                f"| {_r(xfer_ratio)} "
                f"| {'FAILED' if failed else _s(case.median(target))} | {_r(read_ratio)} "
                f"| {'—' if cpu is None else f'{cpu:.2f} s'} | {bar_text} "
                f"| {_STATUS_MD[_status(read_ratio, bar)]} "
                f"| {_STATUS_MD[_status(xfer_ratio, bar)]} |"
            )
    delta, status = rss_status(rss)
    lines += [
        "",
        "| gateway RSS (hoopfast-masked, text) | rows read | read | RSS before "
        "| peak growth | target | status |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for i, item in enumerate(rss):
        growth = "FAILED" if item.growth_mib is None else f"{item.growth_mib:+.1f} MiB"
        if i == 0:
            target, st = "baseline for “flat”", "—"
        else:
            target = f"flat: ≤ baseline + {RSS_FLAT_SLACK // MiB} MiB (here {delta})"
            st = status
        lines.append(
            f"| {'N/10' if i == 0 else 'N'} | {item.rows:,} | {_s(item.seconds)} "
            f"| {item.before / MiB:.1f} MiB | {growth} | {target} | {_STATUS_MD[st]} |"
        )
    statuses = [
        _status(c.ratio(t), _bar(t)[1])
        for c in cases
        for t in ("hoopfast-masked", "hoopfast-nomatch")
    ] + [status]
    lines += [
        "",
        f"Targets (read / direct, and RSS): {statuses.count('met')} met, "
        f"{statuses.count('not met')} not met, {statuses.count('FAILED')} failed.",
    ]
    errors = [(c.fmt, t, e) for c in cases for t in TARGETS for e in c.errors[t]]
    errors += [("rss", f"{r.rows} rows", r.error) for r in rss if r.error]
    if errors:
        lines += ["", "Failures:", ""]
        lines += [f"- {f} / {t}: {e.splitlines()[0] if e else ''}" for f, t, e in errors]
    if info.get("gateway_log_problems"):
        lines += ["", "Gateway log problems (first 10):", ""]
        lines += [f"    {line}" for line in info["gateway_log_problems"][:10]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100k rows instead of 1M")
    p.add_argument("--rows", type=int, help="rows in table people (default 1M, quick 100k)")
    p.add_argument("--reps", type=int, default=3, help="runs per target and format (default 3)")
    p.add_argument("--impl", choices=("compiled", "python"), help="HOOPFAST_IMPL for the gateways")
    p.add_argument(
        "--out", type=Path, help="also write the markdown here and raw data to FILE.json"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (gateway logs)")
    args = p.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    if args.rows < 60 or args.reps < 1:
        p.error("--rows must be at least 60 and --reps at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rc = 0
    with bench_session("hoopfast-masking-", args.keep, __file__, argv) as run:
        stack, workdir, command, started = run.stack, run.workdir, run.command, run.started
        try:
            env = setup(stack, workdir, args)
            sanity_check(env)
            load_start = f"{os.getloadavg()[0]:.2f}"
            cases = measure(env, args)
            rss = measure_rss(env)
            load_end = f"{os.getloadavg()[0]:.2f}"
            problems = [
                f"({name}) {line}"
                for name, gw in env.gateways.items()
                for line in gw.log_problems()
            ]
            problems = [
                f"the {n} process is not running" for n, g in env.gateways.items() if g.pid is None
            ] + problems
            info: dict[str, Any] = {
                "started": started,
                "command": command,
                "impl": args.impl,
                "reps": args.reps,
                "load_start": load_start,
                "load_end": load_end,
                "gateway_log_problems": problems,
                **machine_info(),
            }
            report = render(cases, rss, info, env)
            print(report, flush=True)
            if args.out:
                raw = {
                    "info": {**info, "versions": env.versions, "rows": env.rows},
                    "cases": [{"format": c.fmt, "runs": c.runs, "errors": c.errors} for c in cases],
                    "rss": [vars(r) for r in rss],
                }
                write_report(args.out, report, raw)
            if any(c.errors[t] and not c.runs[t] for c in cases for t in TARGETS) or any(
                r.error for r in rss
            ):
                rc = 1
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            rc = 130
        except Exception as e:
            log(f"benchmark aborted: {type(e).__name__}: {e}")
            for name in GATEWAYS:
                gw_log = workdir / f"{name}.log"
                with contextlib.suppress(OSError):
                    tail = gw_log.read_text(errors="replace").splitlines()[-20:]
                    if tail:
                        log(f"{name} log tail:\n" + "\n".join(tail))
            rc = 2
        finally:
            end_cleanup()
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        raise SystemExit(client_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        raise SystemExit(engine_main(sys.argv[2:]))
    raise SystemExit(main())
