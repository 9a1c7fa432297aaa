#!/usr/bin/env python3
"""How long a held statement waits after the approval: the release latency,
through the replica that holds it and through another one.

    .venv/bin/python bench/approvals.py [--samples N] [--poll S] [--out FILE] [--keep]

1. a throwaway cluster and two gateways (``hoopfast serve``, A and B) sharing
   a PostgreSQL state store, as replicas behind a load balancer do; the
   connection sends writes to review in ``wait`` mode;
2. per sample: a psycopg client on A runs an INSERT, which A holds; the
   bench finds the review through the API, approves it (as a different
   person), at a random moment within one poll interval, through A's API
   ("same replica") or B's ("other replica"), and times from the
   approval's HTTP answer to the INSERT's result;
3. a markdown table: median and p95 of the release latency and of the
   approval request itself, per path.

A decision through the holding replica wakes the held statement at once; one
through another replica reaches the holder by PostgreSQL's NOTIFY (the poll,
``HOOPFAST_APPROVALS_POLL_INTERVAL``, is only the fallback), so both paths
should take a few milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    CONNECTION,
    DATABASE,
    PERSON,
    ROLE,
    Gateway,
    bench_connection,
    bench_session,
    end_cleanup,
    gateway_identity,
    log,
    start_cluster,
    write_report,
)

from hoopfast.devcluster import free_port
from hoopfast.devconfig import write_gateway_config
from hoopfast.identity.devissuer import DevIssuer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=30, help="approvals per path")
    p.add_argument("--poll", type=float, default=1.0, help="HOOPFAST_APPROVALS_POLL_INTERVAL")
    p.add_argument("--out", type=Path, default=Path("bench/results/approvals.md"))
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def pending(api: httpx.Client, token: str, requester: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = api.get(
            "/v1/reviews",
            params={"status": "pending", "requester": requester},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        if page["reviews"]:
            return str(page["reviews"][0]["id"])
        time.sleep(0.005)
    raise RuntimeError("no pending review appeared")


def up(api: httpx.Client, timeout: float = 30.0) -> None:
    """The API listens a moment after the PostgreSQL port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if api.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def sample(
    conninfo: str,
    holder_api: httpx.Client,
    decider_api: httpx.Client,
    approver: str,
    n: int,
    poll: float,
) -> tuple[float, float]:
    """One held INSERT, approved through ``decider_api``: (release latency,
    approval request time), seconds."""
    done: Future[float] = Future()

    def client() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("INSERT INTO approvals_bench VALUES (%s)", (n,))
            done.set_result(time.monotonic())
        except BaseException as e:
            done.set_exception(e)

    threading.Thread(target=client, daemon=True).start()
    rid = pending(holder_api, approver, PERSON)
    # People approve at any moment, not in step with the holder's polls.
    time.sleep(random.uniform(0, poll))
    t0 = time.monotonic()
    answer = decider_api.post(
        f"/v1/reviews/{rid}/approve", headers={"Authorization": f"Bearer {approver}"}
    )
    t1 = time.monotonic()
    if answer.status_code != 200:
        raise RuntimeError(f"approve failed: {answer.status_code} {answer.text}")
    ran = done.result(30)
    return ran - t1, t1 - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_session("hoopfast-bench-appr-", args.keep, __file__, argv) as run:
        stack, workdir = run.stack, run.workdir
        try:
            import secrets

            password = secrets.token_urlsafe(18)
            cluster = start_cluster(stack, workdir, password)
            cluster.create_database("hoopfast_state", owner=ROLE)
            with psycopg.connect(
                f"host=127.0.0.1 port={cluster.port} user={ROLE} dbname={DATABASE} sslmode=disable",
                password=password,
                autocommit=True,
            ) as conn:
                conn.execute("CREATE TABLE approvals_bench (n int)")
            jwks, _, secret_file = gateway_identity(workdir, password)
            connection = bench_connection(cluster, secret_file)
            connection["grants"] = {"bench": {"review": ["write"]}}
            connection["approvals"] = {"approvers": ["dba"], "wait_timeout": "60s"}
            config = write_gateway_config(
                workdir / "hoopfast.toml",
                jwks,
                {CONNECTION: connection},
                {"bench": {"groups": ["bench"]}, "dba": {"groups": ["dbas"]}},
                header="Written by bench/approvals.py.",
            )
            store = (
                f"postgresql://{ROLE}:{password}@127.0.0.1:{cluster.port}/hoopfast_state"
                "?sslmode=disable"
            )
            apis: dict[str, httpx.Client] = {}
            gateways: dict[str, Gateway] = {}
            for name in ("a", "b"):
                port = free_port()
                g = Gateway(
                    workdir,
                    config,
                    None,
                    name=f"gateway-{name}",
                    extra_env={
                        "HOOPFAST_STORE": store,
                        "HOOPFAST_API_LISTEN": f"127.0.0.1:{port}",
                        "HOOPFAST_APPROVALS_POLL_INTERVAL": str(args.poll),
                    },
                )
                stack.callback(g.stop)
                log(f"starting gateway {name}")
                g.start()
                gateways[name] = g
                apis[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
                stack.callback(apis[name].close)
            issuer = DevIssuer(workdir / "state")
            token = issuer.issue(PERSON, ["bench"], ttl=3600)
            approver = issuer.issue("approver-bench", ["dbas"], ttl=3600)
            conninfo = (
                f"host=127.0.0.1 port={gateways['a'].port} user={PERSON} dbname={CONNECTION} "
                f"sslmode=disable password={token}"
            )
            results: dict[str, list[tuple[float, float]]] = {
                "same replica": [],
                "other replica": [],
            }
            for api in apis.values():
                up(api)
            for n in range(args.samples):
                for path, decider in (("same replica", "a"), ("other replica", "b")):
                    results[path].append(
                        sample(conninfo, apis["a"], apis[decider], approver, n, args.poll)
                    )
            problems = {n: g.log_problems() for n, g in gateways.items() if g.log_problems()}
            report = render(args, run.command, run.started, results, problems)
            write_report(
                args.out,
                report,
                {"samples": results, "poll_interval": args.poll, "gateway_log_problems": problems},
            )
            print(report)
        finally:
            end_cleanup()
    return 0


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    if q == 0.5:
        return f"{statistics.median(ordered) * 1000:.1f}"
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def render(
    args: argparse.Namespace,
    command: str,
    started: str,
    results: dict[str, list[tuple[float, float]]],
    problems: dict[str, Any],
) -> str:
    lines = [
        "## Approvals: release latency",
        "",
        f"`{command}` ({started}; {args.samples} approvals per path, poll interval {args.poll} s,"
        " two gateways sharing a PostgreSQL store)",
        "",
        "| decision through | release median ms | release p95 ms | approve request median ms |",
        "|---|---|---|---|",
    ]
    for path, samples in results.items():
        release = [s[0] for s in samples]
        request = [s[1] for s in samples]
        lines.append(
            f"| {path} | {_ms(release, 0.5)} | {_ms(release, 0.95)} | {_ms(request, 0.5)} |"
        )
    lines.append("")
    if problems:
        lines.append(f"Gateway log problems: {problems}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
