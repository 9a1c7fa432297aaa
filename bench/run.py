#!/usr/bin/env python3
"""Side-by-side benchmark: PostgreSQL direct vs PgBouncer vs the hoopfast gateway
(with and without its statement guardrails).

One command, on this machine, in one run::

    .venv/bin/python bench/run.py [--quick] [--duration S] [--clients 1,8,64]
                                  [--impl compiled|python] [--rounds N] [--out FILE]

1. a throwaway PostgreSQL cluster (``hoopfast.devcluster.DevCluster``, TLS on,
   SCRAM), a role and a database, ``pgbench -i -s 10`` (quick: 2) and a table
   ``big`` of 1M rows (~130 MB; quick: 100k rows);
2. PgBouncer (session mode) in front of it;
3. the gateway as a subprocess (``hoopfast serve``, settings from HOOPFAST_*),
   upstream without TLS like PgBouncer's, and a second one with the same
   config and HOOPFAST_GUARDRAILS=false ("unguarded"), to measure what the
   statement guardrails cost;
4. pgbench -S in every query mode and client count, pgbench -S -C (a new
   connection per transaction), against all four targets; large results
   (plain SELECT and COPY), and the gateway's RSS across results of 10 MB /
   100 MB / 1 GB (direct, PgBouncer and the guarded gateway only);
5. the guardrails' per-statement cost on a verdict-cache hit, timed in a
   process of its own (``bench/_client.py policy``, the same code as
   tests/test_policy_bench.py) under the gateway's core implementation;
6. one markdown table with the ratios and the targets (met / not met), and a
   guardrails table (hoopfast / unguarded, CPU per transaction, policy cost);
   ``--out FILE`` also writes it to FILE and the raw numbers to FILE.json.

Every client connects WITHOUT TLS to all targets (sslmode=disable), so the
comparison is about proxying, not encryption; the gateways therefore run with
HOOPFAST_ALLOW_CLEARTEXT_WITHOUT_TLS=1 (development only).

Everything started here (gateway, pgbouncer, cluster, pgbench, clients) is
stopped on exit, on Ctrl-C and on errors. A failing case is reported (FAILED
in the table) and the run goes on with the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hoopfast.devcluster import DevCluster, PgBouncer, free_port
from hoopfast.devconfig import write_gateway_config
from hoopfast.identity.devissuer import DevIssuer

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
CLIENT = BENCH_DIR / "_client.py"

#: "unguarded" is the gateway with HOOPFAST_GUARDRAILS=false (pgbench cases only).
TARGETS = ("direct", "pgbouncer", "hoopfast", "unguarded")
#: The targets of the large-result cases.
LARGE_TARGETS = ("direct", "pgbouncer", "hoopfast")
ROLE = "bench"
DATABASE = "bench"
CONNECTION = "bench"  # the gateway's connection name == the dbname clients ask for
PERSON = "alice"
MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets from the issue.
TPS_VS_DIRECT = 0.75  # pgbench -S at 8 clients: hoopfast >= 0.75 x direct (and >= pgbouncer)
LARGE_MAX_RATIO = 1.25  # large result: hoopfast/direct <= 1.25
CONNECT_MIN_RATIO = 0.8  # pgbench -C: hoopfast/direct >= 0.8
#: Large-result runs per target per round (each takes well under a second).
LARGE_REPS = 3
RSS_FLAT_SLACK = 16 * MiB  # "flat": growth(largest) - growth(smallest) <= 16 MiB
GUARD_MIN_RATIO = 0.95  # pgbench -S: hoopfast (guardrails on) / unguarded >= 0.95
POLICY_MAX_US = 3.0  # guardrails' cost per statement on a verdict-cache hit < 3 us
#: The log line an unguarded gateway writes at start, on purpose.
UNGUARDED_NOTICE = "HOOPFAST_GUARDRAILS is off"


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- children

_children: set[subprocess.Popen[Any]] = set()
_children_lock = threading.Lock()


def _kill_children() -> None:
    with _children_lock:
        procs = list(_children)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(5)


def run_child(argv: Sequence[str], *, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run a client program (pgbench, the large-result client); killed on cleanup."""
    proc = subprocess.Popen(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _children_lock:
        _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(killed after {timeout:.0f} s timeout)"
        return -9, out, err
    finally:
        with _children_lock:
            _children.discard(proc)
    return proc.returncode, out, err


def client_env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "20"
    return env


# --------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def syscalls(pid: int | None) -> tuple[int, int] | None:
    """(read-like, write-like) system calls of *pid* so far (/proc/PID/io
    syscr, syscw: read/readv and write/writev, which libuv uses on sockets)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["syscr"]), int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return None


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


class RssSampler:
    """Samples VmRSS of *pid* every few ms in a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.max_rss = max(self.max_rss, proc_status(self.pid)["VmRSS"])
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class PeakRss:
    """A process's memory around one piece of work."""

    before: int
    after: int
    peak: int
    hwm_reset: bool
    sampled_max: int

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / MiB


_T = TypeVar("_T")


def measure_peak_rss(pid: int, work: Callable[[], _T]) -> tuple[_T, PeakRss]:
    """Run ``work`` and report the peak RSS of ``pid`` meanwhile: VmHWM reset
    through /proc/PID/clear_refs where allowed, plus 5 ms sampling."""
    before = proc_status(pid)
    hwm_reset = reset_hwm(pid)
    if hwm_reset:
        before = proc_status(pid)
    with RssSampler(pid) as sampler:
        result = work()
    after = proc_status(pid)
    peak = max(sampler.max_rss, after["VmHWM"] if hwm_reset else 0, after["VmRSS"])
    return result, PeakRss(before["VmRSS"], after["VmRSS"], peak, hwm_reset, sampler.max_rss)


# --------------------------------------------------------------------------- results


@dataclass
class Measurement:
    case: str
    group: str  # "pgbench" | "connect" | "large" | "memory"
    unit: str  # "tps" | "s" | "MiB"
    higher_is_better: bool
    runs: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    errors: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, target: str) -> float | None:
        values = self.runs[target]
        return statistics.median(values) if values else None

    def cpu_median(self, target: str) -> float | None:
        values = self.cpu[target]
        return statistics.median(values) if values else None

    def failed(self, target: str) -> bool:
        return not self.runs[target] and bool(self.errors[target])

    def ratio(self, num: str, den: str) -> float | None:
        a, b = self.median(num), self.median(den)
        if a is None or b is None or b == 0:
            return None
        return a / b


# --------------------------------------------------------------------------- setup


class Gateway:
    """``hoopfast serve`` as a subprocess."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        impl: str | None,
        *,
        guardrails: bool = True,
        name: str = "gateway",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.impl = impl
        self.guardrails = guardrails
        self.name = name
        self.extra_env = extra_env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / f"{name}.log"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "hoopfast"
        if exe.exists():
            return [str(exe), "serve"]
        return [sys.executable, "-m", "hoopfast", "serve"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOPFAST_", "PG"))}
        env.update(
            HOOPFAST_CONFIG=str(self.config),
            HOOPFAST_PG_LISTEN=f"127.0.0.1:{self.port}",
            HOOPFAST_STATE_DIR=str(self.workdir / "state"),
            HOOPFAST_ALLOW_CLEARTEXT_WITHOUT_TLS="1",
            HOOPFAST_LOG_LEVEL="WARNING",
            HOOPFAST_GUARDRAILS="true" if self.guardrails else "false",
            # Each gateway its own spool (they share the state store); no API.
            HOOPFAST_SPOOL_DIR=str(self.workdir / f"{self.name}-spool"),
            HOOPFAST_API_LISTEN="off",
        )
        env.update(self.extra_env)
        if self.impl:
            env["HOOPFAST_IMPL"] = self.impl
        return env

    def start(self, timeout: float = 30.0) -> None:
        for _attempt in range(5):
            self.port = free_port()
            with open(self.log_file, "ab") as logf:
                self.proc = subprocess.Popen(
                    self.command(),
                    env=self.env(),
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,  # Ctrl-C reaches us, we stop it in order
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
                time.sleep(0.05)
            rc = self.proc.poll()
            text = self.log_tail()
            self.stop()
            if rc is not None and "cannot listen" in text:
                continue  # lost the port race: try another
            raise RuntimeError(f"the gateway did not start (exit {rc}):\n{text}")
        raise RuntimeError("the gateway could not bind a port")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_problems(self) -> list[str]:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line)
            and not (not self.guardrails and UNGUARDED_NOTICE in line)
        ]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Env:
    cluster: DevCluster
    bouncer: PgBouncer
    gateway: Gateway
    unguarded: Gateway
    password: str
    token: str
    pgbench: str
    big_rows: int
    big_bytes: int
    scale: int
    versions: dict[str, str]

    def conninfo(self, target: str) -> str:
        """libpq conninfo without the password (it goes in PGPASSWORD)."""
        port = {
            "direct": self.cluster.port,
            "pgbouncer": self.bouncer.port,
            "hoopfast": self.gateway.port,
            "unguarded": self.unguarded.port,
        }[target]
        gateway = target in ("hoopfast", "unguarded")
        user = PERSON if gateway else ROLE
        dbname = CONNECTION if gateway else DATABASE
        return f"host=127.0.0.1 port={port} user={user} dbname={dbname} sslmode=disable"

    def secret(self, target: str) -> str:
        return self.token if target in ("hoopfast", "unguarded") else self.password

    def pid(self, target: str) -> int | None:
        if target == "hoopfast":
            return self.gateway.pid
        if target == "unguarded":
            return self.unguarded.pid
        if target == "pgbouncer":
            proc = self.bouncer._proc  # no public accessor
            return proc.pid if proc is not None and proc.poll() is None else None
        return None


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def find_pgbench(cluster: DevCluster) -> str:
    found = shutil.which("pgbench", path=str(cluster.bindir)) or shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench not found")
    return found


def start_cluster(stack: contextlib.ExitStack, workdir: Path, password: str) -> DevCluster:
    """A throwaway cluster (TLS on, SCRAM) with the bench role and database."""
    log("starting PostgreSQL (DevCluster, TLS on, SCRAM)")
    cluster = DevCluster(workdir / "pg", tls=True)
    stack.callback(cluster.stop)
    cluster.start()
    cluster.add_role(ROLE, password, "scram-sha-256")
    cluster.create_database(DATABASE, owner=ROLE)
    return cluster


def direct_conninfo(cluster: DevCluster) -> str:
    return f"host=127.0.0.1 port={cluster.port} user={ROLE} dbname={DATABASE} sslmode=disable"


def start_pgbouncer(
    stack: contextlib.ExitStack, workdir: Path, cluster: DevCluster, password: str
) -> PgBouncer:
    log("starting PgBouncer (session mode)")
    bouncer = PgBouncer(cluster, workdir / "pgbouncer", users={ROLE: password})
    stack.callback(bouncer.stop)
    bouncer.start()
    return bouncer


def gateway_identity(workdir: Path, password: str) -> tuple[Path, str, Path]:
    """The development issuer's JWKS file, a token for PERSON, and the
    upstream password in a file for the gateway config."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    issuer = DevIssuer(state)
    jwks = issuer.write_jwks()
    token = issuer.issue(PERSON, ["bench"], ttl=12 * 3600)
    secret_file = workdir / "bench.password"
    secret_file.write_text(password + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    return jwks, token, secret_file


def bench_connection(cluster: DevCluster, secret_file: Path) -> dict[str, Any]:
    """The gateway's connection to the cluster: without TLS, like PgBouncer's
    upstream, for a fair comparison."""
    return {
        "host": "127.0.0.1",
        "port": cluster.port,
        "database": DATABASE,
        "user": ROLE,
        "password": {"file": secret_file},
        "tls": "disable",
        "grants": {"bench": {}},
    }


def setup(stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace) -> Env:
    password = secrets.token_urlsafe(18)
    cluster = start_cluster(stack, workdir, password)
    pgbench = find_pgbench(cluster)

    direct = direct_conninfo(cluster)
    log(f"pgbench -i -s {args.scale}")
    rc, out, err = run_child(
        [pgbench, "-i", "-q", "-s", str(args.scale), direct], env=client_env(password), timeout=900
    )
    if rc != 0:
        raise RuntimeError(f"pgbench -i failed (exit {rc}):\n{out}{err}")

    log(f"creating table big ({args.big_rows} rows)")
    import psycopg

    with psycopg.connect(direct, password=password, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 3) AS payload"
            f" FROM generate_series(1, {int(args.big_rows)}) g"
        )
        conn.execute("VACUUM ANALYZE big")
        big_bytes = _one(conn.execute("SELECT pg_total_relation_size('big')").fetchone())
        pg_version = _one(conn.execute("SHOW server_version").fetchone())

    bouncer = start_pgbouncer(stack, workdir, cluster, password)

    log("starting the gateway (hoopfast serve)")
    jwks, token, secret_file = gateway_identity(workdir, password)
    config = write_gateway_config(
        workdir / "hoopfast.toml",
        jwks,
        {CONNECTION: bench_connection(cluster, secret_file)},
        {"bench": {"groups": ["bench"]}},
        header="Written by bench/run.py.",
    )
    gateway = Gateway(workdir, config, args.impl)
    stack.callback(gateway.stop)
    gateway.start()
    log("starting the unguarded gateway (same config, HOOPFAST_GUARDRAILS=false)")
    unguarded = Gateway(workdir, config, args.impl, guardrails=False, name="gateway-unguarded")
    stack.callback(unguarded.stop)
    unguarded.start()

    versions = software_versions(gateway, pg_version)
    versions["pgbench"] = _version([pgbench, "--version"])
    impl_line = versions["hoopfast"]
    env = Env(
        cluster=cluster,
        bouncer=bouncer,
        gateway=gateway,
        unguarded=unguarded,
        password=password,
        token=token,
        pgbench=pgbench,
        big_rows=args.big_rows,
        big_bytes=int(big_bytes),
        scale=args.scale,
        versions=versions,
    )
    # Every target must answer a query before anything is measured.
    for target in TARGETS:
        with psycopg.connect(
            env.conninfo(target), password=env.secret(target), autocommit=True, connect_timeout=20
        ) as conn:
            n = _one(conn.execute("SELECT count(*) FROM pgbench_branches").fetchone())
            if n != args.scale:
                raise RuntimeError(f"{target}: unexpected pgbench_branches count {n}")
    log(
        f"ready: direct :{cluster.port}, pgbouncer :{bouncer.port}, "
        f"hoopfast :{gateway.port} (pid {gateway.pid}, {impl_line}), "
        f"unguarded :{unguarded.port} (pid {unguarded.pid})"
    )
    return env


def software_versions(gateway: Gateway, pg_version: str) -> dict[str, str]:
    """What the report says ran: the gateway (as `hoopfast version` prints
    it), the servers and the client libraries."""
    try:
        vout = subprocess.run(
            [*gateway.command()[:-1], "version"],
            env=gateway.env(),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        impl_line = " / ".join(vout.split("\n")[:2]).strip()
    except (OSError, subprocess.SubprocessError):
        impl_line = "unknown"
    return {
        "hoopfast": impl_line,
        "postgresql": pg_version,
        "pgbouncer": _version(
            [str(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"), "--version"]
        ),
        "python": platform.python_version(),
        "psycopg": _module_version("psycopg") + f" (libpq {_libpq_version()})",
        "uvloop": _module_version("uvloop"),
    }


def _one(row: tuple[Any, ...] | None) -> Any:
    """The single value of a one-row, one-column result."""
    if row is None:
        raise RuntimeError("query returned no row")
    return row[0]


def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _libpq_version() -> str:
    try:
        import psycopg

        v = psycopg.pq.version()
        return f"{v // 10000}.{v % 100}"
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- cases


_ERROR_RE = re.compile(r"\b(error|abort(ed)?|fatal)\b", re.IGNORECASE)


def run_pgbench(
    env: Env, target: str, extra: list[str], duration: float
) -> tuple[float, dict[str, Any]]:
    """One pgbench run; returns (tps, details) or raises RuntimeError with the output."""
    argv = [env.pgbench, "-n", *extra, "-T", str(int(duration)), env.conninfo(target)]
    pid = env.pid(target)
    cpu0, io0 = cpu_seconds(pid), syscalls(pid)
    t0 = time.monotonic()
    rc, out, err = run_child(argv, env=client_env(env.secret(target)), timeout=duration + 180)
    wall = time.monotonic() - t0
    cpu1, io1 = cpu_seconds(pid), syscalls(pid)
    text = out + err
    problems = []
    if rc != 0:
        problems.append(f"exit {rc}")
    if _ERROR_RE.search(err):
        problems.append("errors on stderr")
    tps_m = re.search(r"^tps = ([0-9.]+)", out, re.MULTILINE)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not tps_m or not processed:
        problems.append("no tps in output")
    if failed and int(failed[1]) > 0:
        problems.append(f"{failed[1]} failed transactions")
    if processed and int(processed[1]) == 0:
        problems.append("no transaction processed")
    if problems:
        tail = "\n".join(text.strip().splitlines()[-12:])
        raise RuntimeError(f"{'; '.join(problems)}: {' '.join(argv[:-1])} '{argv[-1]}'\n{tail}")
    assert tps_m is not None and processed is not None
    details: dict[str, Any] = {
        "tps": float(tps_m[1]),
        "transactions": int(processed[1]),
        "wall_seconds": wall,
    }
    lat = re.search(r"^latency average = ([0-9.]+) ms", out, re.MULTILINE)
    if lat:
        details["latency_ms"] = float(lat[1])
    conn_t = re.search(r"^(?:average|initial) connection time = ([0-9.]+) ms", out, re.MULTILINE)
    if conn_t:
        details["connection_ms"] = float(conn_t[1])
    if cpu0 is not None and cpu1 is not None:
        details["proxy_cpu"] = (cpu1 - cpu0) / wall  # cores used by the proxy process
    if io0 is not None and io1 is not None:
        details["proxy_reads"], details["proxy_writes"] = io1[0] - io0[0], io1[1] - io0[1]
    return float(tps_m[1]), details


def run_client(
    env: Env, target: str, mode: str, query: str, timeout: float = 900
) -> dict[str, Any]:
    argv = [sys.executable, str(CLIENT), mode, env.conninfo(target), query]
    rc, out, err = run_child(argv, env=client_env(env.secret(target)), timeout=timeout)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": f"exit {rc}: {(out + err).strip()[-2000:]}"}
    if rc != 0 or "error" in result:
        raise RuntimeError(result.get("error") or f"exit {rc}: {err.strip()[-2000:]}")
    return result


def round_order(r: int, targets: tuple[str, ...] = TARGETS) -> tuple[str, ...]:
    """direct, pgbouncer, hoopfast, unguarded on even rounds; reversed on odd ones."""
    return targets if r % 2 == 0 else tuple(reversed(targets))


def _note_failure(m: Measurement, target: str, error: Exception) -> None:
    msg = str(error).strip()
    m.errors[target].append(msg)
    log(f"FAILED {m.case} / {target}: {msg}")


def pgbench_cases(args: argparse.Namespace) -> list[tuple[Measurement, list[str]]]:
    cases: list[tuple[Measurement, list[str]]] = []
    for mode in ("simple", "extended", "prepared"):
        for c in args.clients:
            m = Measurement(f"pgbench -S -M {mode} -c {c}", "pgbench", "tps", True)
            m.extra.update(mode=mode, clients=c)
            cases.append((m, ["-S", "-M", mode, "-c", str(c), "-j", str(min(c, 2))]))
    m = Measurement("pgbench -S -C -M simple -c 8", "connect", "tps", True)
    m.extra.update(mode="simple", clients=8, connect_per_transaction=True)
    cases.append((m, ["-S", "-C", "-M", "simple", "-c", "8", "-j", "2"]))
    return cases


def large_cases() -> list[tuple[Measurement, str]]:
    return [
        (Measurement("large result: SELECT * FROM big", "large", "s", False), "select"),
        (
            Measurement("large result: COPY (SELECT * FROM big) TO STDOUT", "large", "s", False),
            "copy",
        ),
    ]


def measure(env: Env, args: argparse.Namespace) -> list[Measurement]:
    pgb = pgbench_cases(args)
    large = large_cases()
    big_query = "SELECT * FROM big"

    # Warm-up (not counted): table pages into the OS cache, the gateway's code paths.
    log("warm-up")
    for target in TARGETS:
        if target in LARGE_TARGETS:
            with contextlib.suppress(RuntimeError):
                run_client(env, target, "copy", big_query)
        with contextlib.suppress(RuntimeError):
            run_pgbench(env, target, ["-S", "-M", "simple", "-c", "2", "-j", "2"], 1)

    total = args.rounds * (len(pgb) * len(TARGETS))
    done = 0
    for r in range(args.rounds):
        for m, extra in pgb:
            for target in round_order(r):
                done += 1
                log(f"round {r + 1}/{args.rounds} [{done}/{total}] {m.case} -> {target}")
                try:
                    tps, details = run_pgbench(env, target, extra, args.duration)
                except RuntimeError as e:
                    _note_failure(m, target, e)
                    continue
                m.runs[target].append(tps)
                if "proxy_cpu" in details:
                    m.cpu[target].append(details["proxy_cpu"])
                m.extra.setdefault("details", {}).setdefault(target, []).append(details)
                time.sleep(0.5)
        for m, mode in large:
            # A run takes well under a second: several per round, order alternating.
            for rep in range(LARGE_REPS):
                for target in round_order(r * LARGE_REPS + rep, LARGE_TARGETS):
                    measure_large(env, m, mode, target, big_query, r, args.rounds)
    for m, _ in large:
        for target, spent in m.extra.get("cpu_seconds", {}).items():
            wall = sum(m.runs[target])
            if wall > 0:
                m.cpu[target] = [sum(spent) / wall]
    results = [m for m, _ in pgb] + [m for m, _ in large]
    results.extend(measure_memory(env, args))
    return results


def measure_large(
    env: Env, m: Measurement, mode: str, target: str, query: str, r: int, rounds: int
) -> None:
    log(f"round {r + 1}/{rounds} {m.case} -> {target}")
    pid = env.pid(target)
    cpu0 = cpu_seconds(pid)
    try:
        result = run_client(env, target, mode, query)
    except RuntimeError as e:
        _note_failure(m, target, e)
        return
    cpu1 = cpu_seconds(pid)
    m.runs[target].append(result["seconds"])
    if cpu0 is not None and cpu1 is not None:
        # Summed over all runs in measure(): one run is too short for 10 ms CPU ticks.
        m.extra.setdefault("cpu_seconds", {}).setdefault(target, []).append(cpu1 - cpu0)
    m.extra.setdefault("details", {}).setdefault(target, []).append(result)


def measure_memory(env: Env, args: argparse.Namespace) -> list[Measurement]:
    """Gateway RSS before/after results of growing size, read by a streaming client."""
    sizes = [10 * 1000 * 1000, 100 * 1000 * 1000]
    if not args.quick:
        sizes.append(1000 * 1000 * 1000)
    out: list[Measurement] = []
    consumers = (
        ("copy", "COPY TO STDOUT read in blocks"),
        ("stream", "SELECT via cursor.stream()"),
        ("stream-throttled", "SELECT via cursor.stream(), slow reader"),
    )
    for mode, label in consumers:
        for size in sizes:
            rows = size // 1000
            human = f"{size // 1000**3} GB" if size >= 1000**3 else f"{size // 1000**2} MB"
            m = Measurement(
                f"gateway peak RSS growth, {human} result ({label})", "memory", "MiB", False
            )
            m.extra.update(result_bytes=size, mode=mode, rows=rows)
            query = f"SELECT repeat('x', 1000) AS payload FROM generate_series(1, {rows})"
            for target in ("hoopfast", "pgbouncer"):
                pid = env.pid(target)
                if pid is None:
                    _note_failure(m, target, RuntimeError("process not running"))
                    continue
                log(f"memory: {m.case} -> {target}")
                try:
                    result, rss = measure_peak_rss(
                        pid, functools.partial(run_client, env, target, mode, query)
                    )
                except RuntimeError as e:
                    _note_failure(m, target, e)
                    continue
                m.runs[target].append(rss.growth_mib)
                m.extra.setdefault("details", {})[target] = {
                    "rss_before": rss.before,
                    "rss_after": rss.after,
                    "peak_rss": rss.peak,
                    "hwm_reset": rss.hwm_reset,
                    "sampled_max_rss": rss.sampled_max,
                    "client": result,
                }
            out.append(m)
    return out


def measure_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The guardrails' cost per statement (cache hit, and a miss for
    reference), timed by ``bench/_client.py policy`` in a process of its own:
    no sockets, the runner's threads out of the way, and the core
    implementation the gateway runs (HOOPFAST_IMPL is read at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOPFAST_", "PG"))}
    if args.impl:
        env["HOOPFAST_IMPL"] = args.impl
    checks, repeat = 20_000, (3 if args.quick else 7)
    log(f"policy: {repeat} x {checks} cache-hit checks in-process (bench/_client.py policy)")
    argv = [sys.executable, str(CLIENT), "policy", str(checks), str(repeat)]
    rc, out, err = run_child(argv, env=env, timeout=600)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": f"exit {rc}: {(out + err).strip()[-2000:]}"}
    if rc != 0 and "error" not in result:
        result["error"] = f"exit {rc}: {err.strip()[-2000:]}"
    if "error" in result:
        log(f"FAILED policy: {result['error']}")
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "FAILED"
    if unit == "tps":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:+.1f} MiB"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cell(m: Measurement, target: str) -> str:
    if m.failed(target):
        return "FAILED"
    if not m.runs[target]:
        return "—"
    text = _fmt(m.median(target), m.unit)
    if m.errors[target]:
        text += f" ({len(m.errors[target])} failed)"
    return text


def _cpu(m: Measurement, target: str) -> str:
    v = m.cpu_median(target)
    return "—" if v is None else f"{v * 100:.0f}%"


def evaluate(m: Measurement, memory: list[Measurement]) -> tuple[str, str]:
    """(target text, status) for one row."""
    hd, hp = m.ratio("hoopfast", "direct"), m.ratio("hoopfast", "pgbouncer")
    if m.group == "pgbench" and m.extra.get("clients") == 8:
        target = f"≥ pgbouncer and ≥ {TPS_VS_DIRECT} × direct"  # noqa: RUF001
        if hd is None or hp is None:
            return target, "FAILED"
        return target, "met" if hp >= 1.0 and hd >= TPS_VS_DIRECT else "not met"
    if m.group == "connect":
        target = f"hoopfast/direct ≥ {CONNECT_MIN_RATIO}"
        if hd is None:
            return target, "FAILED"
        return target, "met" if hd >= CONNECT_MIN_RATIO else "not met"
    if m.group == "large":
        target = f"hoopfast/direct ≤ {LARGE_MAX_RATIO}"
        if hd is None:
            return target, "FAILED"
        return target, "met" if hd <= LARGE_MAX_RATIO else "not met"
    if m.group == "memory":
        same = [x for x in memory if x.extra["mode"] == m.extra["mode"]]
        smallest = min(same, key=lambda x: x.extra["result_bytes"])
        if m is smallest:
            return "baseline for “flat”", "—"
        g0, g = smallest.median("hoopfast"), m.median("hoopfast")
        target = f"flat: ≤ baseline + {RSS_FLAT_SLACK // MiB} MiB"
        if g0 is None or g is None:
            return target, "FAILED"
        return target, "met" if g - g0 <= RSS_FLAT_SLACK / MiB else "not met"
    return "—", "—"


def evaluate_guard(m: Measurement) -> tuple[str, str]:
    """(target text, status) of the guardrails' rule for one pgbench case."""
    if m.group != "pgbench":
        return "—", "—"
    target = f"hoopfast/unguarded ≥ {GUARD_MIN_RATIO}"
    ratio = m.ratio("hoopfast", "unguarded")
    if ratio is None:
        return target, "FAILED"
    return target, "met" if ratio >= GUARD_MIN_RATIO else "not met"


def evaluate_policy(policy: dict[str, Any], key: str) -> str:
    value = policy.get(key)
    if "error" in policy or not isinstance(value, int | float):
        return "FAILED"
    return "met" if value / 1000 < POLICY_MAX_US else "not met"


def cpu_us_per_txn(m: Measurement, target: str) -> float | None:
    """The proxy's CPU time per transaction (µs), over all runs of a case."""
    runs = [d for d in m.extra.get("details", {}).get(target, []) if "proxy_cpu" in d]
    cpu = sum(d["proxy_cpu"] * d["wall_seconds"] for d in runs)
    txns = sum(d["transactions"] for d in runs)
    return cpu / txns * 1e6 if txns else None


def syscalls_per_txn(m: Measurement, target: str) -> tuple[float, float] | None:
    """The proxy's (reads, writes) per transaction, over all runs of a case."""
    runs = [d for d in m.extra.get("details", {}).get(target, []) if "proxy_writes" in d]
    txns = sum(d["transactions"] for d in runs)
    if not txns:
        return None
    return (
        sum(d["proxy_reads"] for d in runs) / txns,
        sum(d["proxy_writes"] for d in runs) / txns,
    )


def _rw(value: tuple[float, float] | None) -> str:
    return "—" if value is None else f"{value[0]:.2f} / {value[1]:.2f}"


def policy_ns_per_txn(m: Measurement, policy: dict[str, Any]) -> float | None:
    """The in-process cost of the messages the guardrails judge in one
    pgbench -S transaction: a Query (-M simple), a Parse (-M extended), none
    for -M prepared (it parses once per connection)."""
    mode = m.extra.get("mode")
    if mode == "prepared":
        return 0.0
    value = policy.get("query_message_ns" if mode == "simple" else "parse_message_ns")
    return float(value) if isinstance(value, int | float) else None


_STATUS_MD = {"met": "✅ met", "not met": "❌ not met", "FAILED": "FAILED"}


def _us(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_guardrails(results: list[Measurement], policy: dict[str, Any]) -> list[str]:
    """The guardrails section: hoopfast vs the unguarded gateway, and the
    per-statement policy cost."""
    lines = [
        "### Guardrails",
        "",
        "hoopfast = the gateway as shipped (guardrails on); unguarded = the same config with "
        "HOOPFAST_GUARDRAILS=false (Query, Parse and FunctionCall are then relayed without "
        "being intercepted). µs CPU / txn: the gateway process's CPU time divided by pgbench's "
        "transactions, over all runs. Policy µs / txn: the in-process cost (table below) of "
        "the messages judged per transaction — one Query (simple), one Parse (extended), none "
        "(prepared: one Parse per connection). Reads / writes per txn: the gateway's read and "
        "write system calls per transaction (/proc/PID/io syscr, syscw).",
        "",
        "| case | hoopfast | unguarded | hoopfast/unguarded | hoopfast µs CPU / txn "
        "| unguarded µs CPU / txn | difference | policy µs / txn (in-process) "
        "| policy share of hoopfast CPU | hoopfast reads / writes per txn "
        "| unguarded reads / writes per txn | target | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for m in results:
        if m.group not in ("pgbench", "connect"):
            continue
        target, status = evaluate_guard(m)
        on, off = cpu_us_per_txn(m, "hoopfast"), cpu_us_per_txn(m, "unguarded")
        diff = on - off if on is not None and off is not None else None
        pol = policy_ns_per_txn(m, policy)
        pol_us = pol / 1000 if pol is not None else None
        share = f"{pol_us / on:.1%}" if pol_us is not None and on else "—"
        lines.append(
            f"| {m.case} | {_cell(m, 'hoopfast')} | {_cell(m, 'unguarded')} "
            f"| {_ratio(m.ratio('hoopfast', 'unguarded'))} | {_us(on)} | {_us(off)} "
            f"| {'—' if diff is None else f'{diff:+.1f}'} | {_us(pol_us, 2)} | {share} "
            f"| {_rw(syscalls_per_txn(m, 'hoopfast'))} | {_rw(syscalls_per_txn(m, 'unguarded'))} "
            f"| {target} | {_STATUS_MD.get(status, status)} |"
        )
    lines += [""]
    if "error" in policy:
        lines += [f"Policy timing FAILED: {str(policy['error']).splitlines()[0]}", ""]
        return lines
    lines += [
        f"Policy cost per statement for `{policy.get('text')}` with a random aid (so the "
        f"literal differs and the fingerprint does not), in-process, core implementation "
        f"`{policy.get('implementation')}`: median over {policy.get('repeat')} passes of the "
        f"mean of {policy.get('checks'):,} statements (loop overhead included); the miss is "
        f"the median of {policy.get('check_miss_runs')} checks on a fresh policy.",
        "",
        "| what | µs per statement | target | status |",
        "|---|---:|---|---|",
    ]
    rows = [
        ("fingerprint (`hoopfast.core.fingerprint`) alone", "fingerprint_ns", False),
        ("`Rules.check`, verdict-cache hit", "check_hit_ns", True),
        (
            f"`Rules.check`, cache hit, {len(policy.get('deny_patterns', []))} deny_patterns",
            "check_hit_patterns_ns",
            False,
        ),
        (
            "whole Query message: find NUL, decode UTF-8, `Rules.check` (-M simple)",
            "query_message_ns",
            True,
        ),
        ("whole Parse message, the same (-M extended)", "parse_message_ns", False),
        (
            "`Rules.check`, cache miss (sqlglot classification), for reference",
            "check_miss_ns",
            False,
        ),
    ]
    for label, key, has_target in rows:
        value = policy.get(key)
        us = value / 1000 if isinstance(value, int | float) else None
        if has_target:
            status = evaluate_policy(policy, key)
            target = f"< {POLICY_MAX_US:g} µs"
        else:
            target, status = "—", "—"
        lines.append(f"| {label} | {_us(us, 2)} | {target} | {_STATUS_MD.get(status, status)} |")
    lines.append("")
    return lines


def policy_statuses(policy: dict[str, Any]) -> list[str]:
    return [evaluate_policy(policy, key) for key in ("check_hit_ns", "query_message_ns")]


def render(results: list[Measurement], info: dict[str, Any], policy: dict[str, Any]) -> str:
    memory = [m for m in results if m.group == "memory"]
    lines = [
        "| case | direct | pgbouncer | hoopfast | unguarded | hoopfast/direct "
        "| hoopfast/pgbouncer | pgbouncer/direct | hoopfast/unguarded | pgbouncer CPU "
        "| hoopfast CPU | target | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for m in results:
        target, status = evaluate(m, memory)
        status_md = _STATUS_MD.get(status, status)
        if m.group == "memory":
            lines.append(
                f"| {m.case} | — | {_cell(m, 'pgbouncer')} | {_cell(m, 'hoopfast')} | — | — "
                f"| — | — | — | — | — | {target} | {status_md} |"
            )
            continue
        lines.append(
            f"| {m.case} | {_cell(m, 'direct')} | {_cell(m, 'pgbouncer')} | {_cell(m, 'hoopfast')} "
            f"| {_cell(m, 'unguarded')} "
            f"| {_ratio(m.ratio('hoopfast', 'direct'))} "
            f"| {_ratio(m.ratio('hoopfast', 'pgbouncer'))} "
            f"| {_ratio(m.ratio('pgbouncer', 'direct'))} "
            f"| {_ratio(m.ratio('hoopfast', 'unguarded'))} "
            f"| {_cpu(m, 'pgbouncer')} | {_cpu(m, 'hoopfast')} "
            f"| {target} | {status_md} |"
        )
    table = "\n".join(lines)

    statuses = [evaluate(m, memory)[1] for m in results]
    statuses += [evaluate_guard(m)[1] for m in results]
    statuses += policy_statuses(policy)
    met = statuses.count("met")
    not_met = statuses.count("not met")
    failed = statuses.count("FAILED")
    v = info["versions"]
    head = [
        f"## hoopfast benchmark — {info['started']}",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['nproc']} CPU(s), {info['cpu_model']}, {info['mem_total']}, "
        f"{info['kernel']}",
        f"- hoopfast: {v['hoopfast']} (HOOPFAST_IMPL={info['impl'] or 'unset'})",
        f"- PostgreSQL {v['postgresql']}; {v['pgbench']}; {v['pgbouncer']}; Python {v['python']}; "
        f"psycopg {v['psycopg']}; uvloop {v['uvloop']}",
        f"- mode: {'quick' if info['quick'] else 'full'}; {info['rounds']} round(s), "
        f"median per target (large results: {LARGE_REPS} runs per round); "
        f"pgbench -T {info['duration']} s, -j = min(c, 2); pgbench scale {info['scale']}; "
        f"table big = {info['big_rows']:,} rows, {info['big_bytes'] / MiB:.0f} MiB on disk",
        "- all clients connect WITHOUT TLS (sslmode=disable) to all targets; the gateway "
        "runs with HOOPFAST_ALLOW_CLEARTEXT_WITHOUT_TLS=1 and, like PgBouncer, connects upstream "
        "without TLS. Direct and PgBouncer clients authenticate with SCRAM; gateway clients "
        "send a dev token (Ed25519 JWT) as cleartext password, and the gateway does SCRAM "
        "upstream.",
        "- unguarded: a second gateway process, same config, HOOPFAST_GUARDRAILS=false; it "
        "runs in the pgbench cases only (— elsewhere).",
        "- PgBouncer: session mode, pool 100, server connections reused across client connections "
        '(matters for -C). "CPU" columns: CPU used by the proxy process during the run '
        "(100% = one core).",
        "- large result: seconds from query start to the last byte, client in a separate "
        "process; lower is better. RSS rows: peak RSS growth of the proxy process while one "
        "client reads the result (VmHWM after reset via /proc/PID/clear_refs, plus 5 ms "
        "sampling).",
        f"- load average (1 min) at start / end of the measurements: {info['load_start']} / "
        f"{info['load_end']} (the machine is shared: other work competes for the same cores)",
        "",
        table,
        "",
        *render_guardrails(results, policy),
        f"Targets: {met} met, {not_met} not met, {failed} failed.",
    ]
    if info.get("gateway_log_problems"):
        head += ["", "Gateway log problems (first 10):", ""]
        head += [f"    {line}" for line in info["gateway_log_problems"][:10]]
    errors = [(m.case, t, e) for m in results for t in TARGETS for e in m.errors[t]]
    if errors:
        head += ["", "Failures:", ""]
        for case, target, err in errors:
            first = err.splitlines()[0] if err else ""
            head.append(f"- {case} / {target}: {first}")
    return "\n".join(head) + "\n"


def machine_info() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    return {
        "nproc": str(os.cpu_count()),
        "cpu_model": model,
        "mem_total": mem,
        "kernel": f"Linux {platform.release()}",
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: 3 s, 1 round, small data")
    p.add_argument("--duration", type=float, help="seconds per pgbench run (default 10, quick 3)")
    p.add_argument("--clients", default="1,8,64", help="pgbench -S client counts (default 1,8,64)")
    p.add_argument("--impl", choices=("compiled", "python"), help="HOOPFAST_IMPL for the gateway")
    p.add_argument("--rounds", type=int, help="rounds per case (default 2, quick 1)")
    p.add_argument(
        "--out", type=Path, help="also write the markdown here and raw numbers to FILE.json"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    try:
        args.clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    except ValueError:
        p.error("--clients: comma-separated integers, e.g. 1,8,64")
    if not args.clients or min(args.clients) < 1:
        p.error("--clients: at least one positive integer")
    args.scale = 2 if args.quick else 10
    args.big_rows = 100_000 if args.quick else 1_000_000
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def command_line(script: str, argv: list[str] | None) -> str:
    """How this run was started, for the report (paths relative to here)."""
    return " ".join(
        shlex.quote(a)
        for a in [
            os.path.relpath(sys.executable, Path.cwd())
            if sys.executable.startswith(str(REPO))
            else sys.executable,
            os.path.relpath(script, Path.cwd()),
            *(sys.argv[1:] if argv is None else argv),
        ]
    )


def started_at() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


@dataclass
class BenchRun:
    stack: contextlib.ExitStack
    workdir: Path
    #: How the run was started and when, for the report.
    command: str
    started: str


@contextlib.contextmanager
def bench_session(
    prefix: str, keep: bool, script: str, argv: list[str] | None
) -> Iterator[BenchRun]:
    """A work directory and an exit stack for one benchmark run: SIGTERM and
    SIGHUP interrupt it like Ctrl-C, child processes are killed first on the
    way out, and the directory goes unless ``keep``."""
    command = command_line(script, argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, workdir, True)
        else:
            stack.callback(log, f"work directory kept: {workdir}")
        stack.callback(_kill_children)  # runs first: clients before servers
        yield BenchRun(stack, workdir, command, started_at())


def write_report(out: Path, report: str, raw: dict[str, Any]) -> None:
    """The markdown report at ``out`` and the raw data next to it (.json)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    json_path = out.with_name(out.name + ".json")
    json_path.write_text(json.dumps(raw, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"wrote {out} and {json_path}")


def end_cleanup() -> None:
    # A second Ctrl-C must not cut the cleanup short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log("cleaning up (clients, gateways, pgbouncer, cluster)")
    _kill_children()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rc = 0
    with bench_session("hoopfast-bench-", args.keep, __file__, argv) as run:
        stack, workdir, command, started = run.stack, run.workdir, run.command, run.started
        try:
            env = setup(stack, workdir, args)
            load_start = f"{os.getloadavg()[0]:.2f}"
            policy = measure_policy(args)
            results = measure(env, args)
            load_end = f"{os.getloadavg()[0]:.2f}"
            info: dict[str, Any] = {
                "started": started,
                "load_start": load_start,
                "load_end": load_end,
                "command": command,
                "impl": args.impl,
                "quick": args.quick,
                "rounds": args.rounds,
                "duration": int(args.duration),
                "scale": args.scale,
                "big_rows": args.big_rows,
                "big_bytes": env.big_bytes,
                "versions": {**env.versions, "git": git_revision()},
                "gateway_log_problems": env.gateway.log_problems()
                + [f"(unguarded) {line}" for line in env.unguarded.log_problems()],
                **machine_info(),
            }
            for gw, what in ((env.gateway, "gateway"), (env.unguarded, "unguarded gateway")):
                if gw.pid is None:
                    info["gateway_log_problems"].insert(
                        0, f"the {what} process is not running any more"
                    )
            report = render(results, info, policy)
            print(report, flush=True)
            if args.out:
                raw = {
                    "info": info,
                    "policy": policy,
                    "results": [
                        {
                            "case": m.case,
                            "group": m.group,
                            "unit": m.unit,
                            "higher_is_better": m.higher_is_better,
                            "median": {t: m.median(t) for t in TARGETS},
                            "runs": m.runs,
                            "errors": m.errors,
                            "proxy_cpu": m.cpu,
                            "target": evaluate(m, [x for x in results if x.group == "memory"])[0],
                            "status": evaluate(m, [x for x in results if x.group == "memory"])[1],
                            "guardrails_target": evaluate_guard(m)[0],
                            "guardrails_status": evaluate_guard(m)[1],
                            "cpu_us_per_txn": {t: cpu_us_per_txn(m, t) for t in TARGETS},
                            "syscalls_per_txn": {t: syscalls_per_txn(m, t) for t in TARGETS},
                            "extra": m.extra,
                        }
                        for m in results
                    ],
                }
                write_report(args.out, report, raw)
            if any(m.failed(t) for m in results for t in TARGETS) or "error" in policy:
                rc = 1
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            rc = 130
        except Exception as e:
            log(f"benchmark aborted: {type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                gw_log = workdir / "gateway.log"
                if gw_log.exists():
                    log("gateway log tail:\n" + "\n".join(gw_log.read_text().splitlines()[-20:]))
            rc = 2
        finally:
            end_cleanup()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
