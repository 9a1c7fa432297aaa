#!/usr/bin/env python3
"""Recording and tracing through the gateway: what they cost, and how fast an
auditor exports.

Issue 6's targets: "pgbench -S with recording and tracing on vs off (target:
within 10%), and export throughput in events/s". One command, one run,
ratios measured side by side (the machine is shared and noisy)::

    .venv/bin/python bench/recording.py [--quick] [--duration S] [--reps N]
                                        [--clients N] [--out FILE] [--keep]

1. a throwaway cluster, ``pgbench -i``, PgBouncer (session mode) and three
   gateways (``hoopfast serve``) sharing one SQLite state store:

   * ``off``: HOOPFAST_RECORDING=false, no tracing (the baseline);
   * ``recorded``: recording on (the default: spool fsync "batch");
   * ``traced``: recording on and OpenTelemetry tracing exported over
     OTLP/HTTP to a collector stand-in in this process (it answers 200);

2. ``pgbench -S`` (simple, extended, prepared; N clients) against direct,
   pgbouncer and each gateway, ``--reps`` times in interleaved order;
3. the store then holds every recorded statement: ``hoopfast audit export``
   (through the ``recorded`` gateway's HTTP API, as an auditor) writes them
   as JSON Lines; events/s = events written / wall time of the command;
4. a markdown table: medians, ratios (recorded/off, traced/off; each gateway
   to direct and pgbouncer), and the targets.
"""

from __future__ import annotations

import argparse
import http.server
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    CONNECTION,
    DATABASE,
    PERSON,
    ROLE,
    Gateway,
    bench_connection,
    bench_session,
    direct_conninfo,
    end_cleanup,
    find_pgbench,
    free_port,
    gateway_identity,
    log,
    run_child,
    run_pgbench,
    start_cluster,
    start_pgbouncer,
    write_report,
)

from hoopfast.devconfig import write_gateway_config
from hoopfast.identity.devissuer import DevIssuer

GATEWAYS = ("off", "recorded", "traced")
TARGETS = ("direct", "pgbouncer", *GATEWAYS)
MODES = ("simple", "extended", "prepared")
#: "within 10%": recorded (and traced) tps / off tps >= 0.90.
TARGET_RATIO = 0.90


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: reads the body, answers 200."""

    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Targets:
    """What bench.run.run_pgbench needs of its ``env``."""

    def __init__(
        self,
        pgbench: str,
        cluster: Any,
        bouncer: Any,
        gateways: dict[str, Gateway],
        password: str,
        token: str,
    ) -> None:
        self.pgbench = pgbench
        self.cluster = cluster
        self.bouncer = bouncer
        self.gateways = gateways
        self.password = password
        self.token = token

    def conninfo(self, target: str) -> str:
        if target in self.gateways:
            port, user, db = self.gateways[target].port, PERSON, CONNECTION
        elif target == "pgbouncer":
            port, user, db = self.bouncer.port, ROLE, DATABASE
        else:
            port, user, db = self.cluster.port, ROLE, DATABASE
        return f"host=127.0.0.1 port={port} user={user} dbname={db} sslmode=disable"

    def secret(self, target: str) -> str:
        return self.token if target in self.gateways else self.password

    def pid(self, target: str) -> int | None:
        if target in self.gateways:
            return self.gateways[target].pid
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("bench/results/recording.md"))
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.reps = 5.0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_session("hoopfast-bench-rec-", args.keep, __file__, argv) as run:
        stack, workdir = run.stack, run.workdir
        try:
            import secrets

            password = secrets.token_urlsafe(18)
            cluster = start_cluster(stack, workdir, password)
            pgbench = find_pgbench(cluster)
            direct = direct_conninfo(cluster)
            rc, out, err = run_child(
                [pgbench, "-i", "-q", "-s", "1", direct], env={"PGPASSWORD": password}, timeout=600
            )
            if rc != 0:
                raise RuntimeError(f"pgbench -i failed:\n{out}{err}")
            bouncer = start_pgbouncer(stack, workdir, cluster, password)
            jwks, token, secret_file = gateway_identity(workdir, password)
            config = write_gateway_config(
                workdir / "hoopfast.toml",
                jwks,
                {CONNECTION: bench_connection(cluster, secret_file)},
                {"bench": {"groups": ["bench"]}, "auditor": {"groups": ["auditors"]}},
                audit={"roles": ["auditor"]},
                header="Written by bench/recording.py.",
            )
            sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
            threading.Thread(target=sink.serve_forever, daemon=True).start()
            stack.callback(sink.shutdown)
            api_port = free_port()
            extra = {
                "off": {"HOOPFAST_RECORDING": "false"},
                "recorded": {"HOOPFAST_API_LISTEN": f"127.0.0.1:{api_port}"},
                "traced": {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}/v1/traces",
                },
            }
            gateways: dict[str, Gateway] = {}
            for name in GATEWAYS:
                log(f"starting gateway {name}")
                g = Gateway(workdir, config, None, name=f"gateway-{name}", extra_env=extra[name])
                stack.callback(g.stop)
                g.start()
                gateways[name] = g
            targets = Targets(pgbench, cluster, bouncer, gateways, password, token)
            tps: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            for rep in range(args.reps):
                order = TARGETS if rep % 2 == 0 else tuple(reversed(TARGETS))
                for mode in MODES:
                    for target in order:
                        extra_args = ["-S", "-M", mode, "-c", str(args.clients), "-j", "2"]
                        value, details = run_pgbench(
                            targets,
                            target,
                            extra_args,
                            args.duration,  # type: ignore[arg-type]
                        )
                        tps.setdefault((mode, target), []).append(value)
                        if "proxy_cpu" in details:
                            cpu.setdefault((mode, target), []).append(
                                details["proxy_cpu"] / value * 1e6
                            )
                        log(f"rep {rep + 1} {mode:8} {target:9} {value:9.0f} tps")
            export = measure_export(workdir, api_port)
            problems = {n: g.log_problems() for n, g in gateways.items() if g.log_problems()}
            report = render(
                args, run.command, run.started, tps, cpu, export, _Sink.received, problems
            )
            write_report(
                args.out,
                report,
                {
                    "tps": {f"{m}/{t}": v for (m, t), v in tps.items()},
                    "cpu_us_per_txn": {f"{m}/{t}": v for (m, t), v in cpu.items()},
                    "export": export,
                    "otlp_posts": _Sink.received,
                    "gateway_log_problems": problems,
                },
            )
            print(report)
        finally:
            end_cleanup()
    return 0


def measure_export(workdir: Path, api_port: int) -> dict[str, Any]:
    issuer = DevIssuer(workdir / "state")
    auditor = issuer.issue("auditor-bench", ["auditors"], ttl=3600)
    out = workdir / "export.jsonl"
    exe = Path(sys.executable).parent / "hoopfast"
    argv = [
        str(exe),
        "audit",
        "export",
        "--api",
        f"http://127.0.0.1:{api_port}",
        "--token",
        auditor,
        "--since",
        "2000-01-01T00:00:00",
        "--format",
        "jsonl",
        "-o",
        str(out),
    ]
    log("exporting the trail (hoopfast audit export)")
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr.strip()[-2000:]}")
    with out.open("rb") as f:
        events = sum(1 for _ in f)
    size = out.stat().st_size
    # Spot check: every line is an event with a hash.
    with out.open(encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert "hash" in first and "kind" in first, first
    return {"events": events, "seconds": wall, "events_per_s": events / wall, "bytes": size}


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def render(
    args: argparse.Namespace,
    command: str,
    started: str,
    tps: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    export: dict[str, Any],
    posts: int,
    problems: dict[str, list[str]],
) -> str:
    lines = [
        "# Recording and tracing: pgbench -S and export",
        "",
        f"`{command}` — started {started}; {args.clients} clients, {args.duration:.0f} s per run,"
        f" {args.reps} interleaved repetitions; medians.",
        "",
        "| mode | direct | pgbouncer | off | recorded | traced | recorded/off | traced/off |"
        " recorded/pgbouncer | µs CPU/txn off · recorded · traced |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for mode in MODES:
        med = {t: _median(tps.get((mode, t))) for t in TARGETS}
        c = {t: _median(cpu.get((mode, t))) for t in GATEWAYS}

        def ratio(a: str, b: str, med: dict[str, float | None] = med) -> str:
            x, y = med[a], med[b]
            return f"{x / y:.2f}" if x and y else "n/a"

        verdicts += [ratio("recorded", "off"), ratio("traced", "off")]
        lines.append(
            f"| {mode} | "
            + " | ".join(f"{med[t]:.0f}" if med[t] else "n/a" for t in TARGETS)
            + f" | {ratio('recorded', 'off')} | {ratio('traced', 'off')}"
            f" | {ratio('recorded', 'pgbouncer')} | "
            + " · ".join(f"{c[t]:.0f}" if c[t] else "n/a" for t in GATEWAYS)
            + " |"
        )
    met = all(v != "n/a" and float(v) >= TARGET_RATIO for v in verdicts)
    lines += [
        "",
        f"Target: recorded/off and traced/off >= {TARGET_RATIO:.2f} in every mode:"
        f" **{'met' if met else 'NOT met'}**. OTLP posts received by the stand-in: {posts}.",
        "",
        f"Export: {export['events']} events ({export['bytes'] / 1e6:.1f} MB of JSON Lines) in"
        f" {export['seconds']:.1f} s: **{export['events_per_s']:.0f} events/s**"
        " (`hoopfast audit export` through the HTTP API, SQLite store).",
    ]
    if problems:
        lines += ["", "Gateway log problems:", *(f"- {n}: {p[:3]}" for n, p in problems.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
