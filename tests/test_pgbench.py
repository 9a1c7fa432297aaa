"""pgbench, unmodified, through the gateway: every query mode, concurrent
clients, a connection per transaction, and read-write runs that must leave
the pgbench tables consistent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psycopg
import pytest

from hoopfast.devcluster import DevCluster
from tests.conftest import Roles
from tests.gateway import RunningGateway


def _pgbench(cluster: DevCluster) -> str:
    found = shutil.which("pgbench", path=str(cluster.bindir)) or shutil.which("pgbench")
    assert found, "pgbench not found"
    return found


def run_pgbench(cluster: DevCluster, conninfo: str, *args: str) -> tuple[int, int, str]:
    """Run pgbench; return (processed, failed) transactions and its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [_pgbench(cluster), "-n", *args, conninfo],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not re.search(r"error|abort|fatal", proc.stderr, re.IGNORECASE), output
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed and failed, output
    return int(processed[1]), int(failed[1]), output


def test_initialise_through_the_gateway(
    idle_gateway: RunningGateway, cluster: DevCluster, roles: Roles
) -> None:
    """pgbench -i: DROP/CREATE, client-side data generation with COPY FROM
    STDIN, VACUUM and primary keys, all through the gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [_pgbench(cluster), "-i", "-s", "1", "-I", "dtgvp", idle_gateway.conninfo()],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "done in" in proc.stderr
    with psycopg.connect(cluster.dsn(*roles.scram, dbname="app")) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts),"
            " (SELECT count(*) FROM pgbench_branches),"
            " (SELECT count(*) FROM pgbench_tellers)"
        ).fetchone()
        assert counts == (100_000, 1, 10)
        # 'p': the primary keys exist, so the DDL went through too.
        keys = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'pgbench_%' "
            "AND indexname LIKE '%_pkey'"
        ).fetchone()
        assert keys == (3,)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only_all_query_modes(
    idle_gateway: RunningGateway, cluster: DevCluster, mode: str
) -> None:
    processed, failed, output = run_pgbench(
        cluster, idle_gateway.conninfo(), "-S", "-T", "2", "-c", "4", "-j", "2", "-M", mode
    )
    assert failed == 0, output
    assert processed > 0, output
    assert f"query mode: {mode}" in output


def _totals(conn: psycopg.Connection[tuple[int, ...]]) -> tuple[int, ...]:
    row = conn.execute(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
        " (SELECT sum(bbalance) FROM pgbench_branches),"
        " (SELECT sum(tbalance) FROM pgbench_tellers),"
        " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
        " (SELECT count(*) FROM pgbench_history),"
        " (SELECT count(*) FROM pgbench_accounts)"
    ).fetchone()
    assert row is not None
    return tuple(int(v) for v in row)


@pytest.mark.parametrize(
    ("args", "transactions", "full"),
    [
        (["-N", "-t", "50", "-c", "2", "-M", "extended"], 100, False),
        (["-t", "40", "-c", "2", "-j", "2", "-M", "prepared"], 80, True),
        (["-C", "-N", "-t", "50", "-c", "1"], 50, False),
    ],
    ids=["simple-update", "tpcb-like", "connect-per-transaction"],
)
def test_read_write_runs_leave_tables_consistent(
    idle_gateway: RunningGateway,
    cluster: DevCluster,
    roles: Roles,
    args: list[str],
    transactions: int,
    full: bool,
) -> None:
    with psycopg.connect(cluster.dsn(*roles.scram, dbname="app"), autocommit=True) as direct:
        accounts0, branches0, tellers0, delta0, history0, naccounts0 = _totals(direct)
        processed, failed, output = run_pgbench(cluster, idle_gateway.conninfo(), *args)
        accounts1, branches1, tellers1, delta1, history1, naccounts1 = _totals(direct)
    assert (processed, failed) == (transactions, 0), output
    # Every transaction committed exactly once: one history row each, and the
    # balance changes add up.
    assert history1 - history0 == transactions
    assert accounts1 - accounts0 == delta1 - delta0
    if full:
        assert branches1 - branches0 == tellers1 - tellers0 == delta1 - delta0
    else:
        assert (branches1, tellers1) == (branches0, tellers0)
    assert naccounts1 == naccounts0 == 100000
    if "-C" in args:
        assert "average connection time" in output and "including reconnection times" in output
