"""Tests of hoopfast.devcluster: throwaway PostgreSQL clusters and PgBouncer."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import psycopg
import pytest

from hoopfast.devcluster import (
    DevCluster,
    DevClusterError,
    PgBouncer,
    find_pg_bindir,
    find_pgbouncer,
    free_port,
)

ROLES = {
    # name: (password, auth method)
    "scram_user": ("scram-pw", "scram-sha-256"),
    "md5_user": ("md5-pw", "md5"),
    "plain_user": ("plain 'pw' \\ x", "password"),  # quoting in conninfo/SQL
}

# libpq >= 16 can insist on an auth method (require_auth): proof of what the server asked for.
HAS_REQUIRE_AUTH = psycopg.pq.version() >= 160000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    t0 = time.monotonic()
    with DevCluster(tmp_path_factory.mktemp("devcluster") / "pg") as pg:
        print(f"DevCluster.start() took {time.monotonic() - t0:.2f}s")
        for name, (password, method) in ROLES.items():
            pg.add_role(name, password, method)  # type: ignore[arg-type]
        pg.add_role("tls_only", "tls-pw", "scram-sha-256", hostssl_only=True)
        pg.add_role("bench", "bench-pw", "scram-sha-256", extra="CREATEDB")
        pg.create_database("benchdb", owner="bench")
        yield pg


def test_layout_and_permissions(cluster: DevCluster) -> None:
    assert cluster.running
    assert cluster.host == "127.0.0.1"
    assert cluster.port != 5432
    assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()
    assert cluster.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    key = (cluster.data_dir / "server.key").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600
    if os.geteuid() == 0:  # server runs unprivileged; it owns its files
        assert key.st_uid != 0
        assert cluster.data_dir.stat().st_uid == key.st_uid
    settings = dict(
        cluster.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            params=[["fsync", "ssl", "max_connections", "listen_addresses", "password_encryption"]],
        )
    )
    assert settings == {
        "fsync": "off",
        "ssl": "on",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
        "password_encryption": "scram-sha-256",
    }


@pytest.mark.parametrize("name", list(ROLES))
def test_role_login_verify_full(cluster: DevCluster, name: str) -> None:
    password, method = ROLES[name]
    dsn = cluster.dsn(name, password, sslmode="verify-full")
    if HAS_REQUIRE_AUTH:
        dsn += f" require_auth={method}"
    with psycopg.connect(dsn) as conn:
        user, ssl = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()  # type: ignore[misc]
        assert (user, ssl) == (name, True)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(name, "wrong", connect_timeout=5))


@pytest.mark.skipif(not HAS_REQUIRE_AUTH, reason="libpq < 16 has no require_auth")
@pytest.mark.parametrize("name", list(ROLES))
def test_server_demands_configured_method(cluster: DevCluster, name: str) -> None:
    password, method = ROLES[name]
    other = "password" if method != "password" else "scram-sha-256"
    with pytest.raises(psycopg.OperationalError, match="server requested"):
        psycopg.connect(cluster.dsn(name, password, require_auth=other))


def test_stored_hashes_and_hba(cluster: DevCluster) -> None:
    stored = dict(cluster.execute("SELECT rolname, rolpassword FROM pg_authid"))
    assert stored["md5_user"].startswith("md5")
    assert stored["scram_user"].startswith("SCRAM-SHA-256$")
    rules = cluster.execute(
        "SELECT type, user_name, auth_method FROM pg_hba_file_rules WHERE error IS NULL "
        "ORDER BY line_number"
    )
    methods: dict[str, tuple[str, str]] = {}
    for kind, users, method in rules:
        if kind != "local":
            methods.setdefault(users[0], (kind, method))  # first matching line wins
    assert methods["md5_user"] == ("host", "md5")
    assert methods["plain_user"] == ("host", "password")
    assert methods["tls_only"] == ("hostnossl", "reject")  # first match for tls_only
    assert rules[-1] == ("host", ["all"], "scram-sha-256")  # catch-all last


def test_hostssl_only(cluster: DevCluster) -> None:
    with psycopg.connect(cluster.dsn("tls_only", "tls-pw")) as conn:
        assert conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|rejects"):
        psycopg.connect(cluster.dsn("tls_only", "tls-pw", sslmode="disable"))


def test_verify_full_hostname_and_superuser(cluster: DevCluster) -> None:
    # The certificate covers "localhost" as well as 127.0.0.1.
    with psycopg.connect(cluster.dsn(host="localhost")) as conn:
        assert conn.execute("SELECT current_setting('is_superuser')").fetchone() == ("on",)
    assert cluster.execute("SELECT 1 + 1") == [(2,)]
    assert cluster.execute("SELECT current_database()", "benchdb") == [("benchdb",)]
    assert cluster.execute("CREATE TEMP TABLE t (x int)") == []


def test_lifecycle(tmp_path: Path) -> None:
    base = tmp_path / "life"
    pg = DevCluster(base, tls=False)
    pg.stop()  # never started: harmless
    t0 = time.monotonic()
    pg.start()
    started = time.monotonic() - t0
    assert started < 10, started
    with psycopg.connect(pg.dsn()) as conn:  # tls=False -> sslmode=disable
        assert not conn.pgconn.ssl_in_use
    with pytest.raises(DevClusterError):
        _ = pg.ca_file
    pg.restart()
    assert pg.execute("SELECT 42") == [(42,)]
    pg.stop()
    pg.stop()
    assert not base.exists()
    assert not pg.running


def test_start_failure_reports_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        pg = DevCluster(tmp_path / "busy", port=port, tls=False, start_timeout=10)
        with pytest.raises(DevClusterError, match="could not"):
            pg.start()
    assert not (tmp_path / "busy" / "data").exists()  # cleaned up after failure
    pg.stop()


def test_find_pg_bindir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = find_pg_bindir()
    assert (found / "initdb").is_file()
    monkeypatch.setenv("HOOPFAST_PG_BINDIR", str(found))
    assert find_pg_bindir() == found
    monkeypatch.setenv("HOOPFAST_PG_BINDIR", str(tmp_path))
    with pytest.raises(DevClusterError):
        find_pg_bindir()


def test_free_port_distinct() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert 5432 not in ports


def _pgbench(cluster: DevCluster) -> str:
    return shutil.which("pgbench") or str(cluster.bindir / "pgbench")


@pytest.mark.parametrize("secrets", ["plain", "authid"])
def test_pgbouncer_pgbench(
    cluster: DevCluster, tmp_path: Path, secrets: Literal["plain", "authid"]
) -> None:
    try:
        find_pgbouncer()
    except DevClusterError:
        pytest.skip("pgbouncer not installed")
    with PgBouncer(
        cluster, tmp_path / "bouncer", users={"bench": "bench-pw"}, secrets=secrets
    ) as bouncer:
        assert bouncer.running and bouncer.port not in (5432, cluster.port)
        env = {**os.environ, "PGPASSWORD": "bench-pw", "PGSSLMODE": "disable"}
        base = [_pgbench(cluster), "-h", bouncer.host, "-p", str(bouncer.port), "-U", "bench"]
        duration = ["-T", "2"] if secrets == "plain" else ["-t", "200"]
        for args in (["-i", "-s", "1", "-q"], ["-S", *duration, "-c", "4", "-j", "2", "-n"]):
            proc = subprocess.run(
                [*base, *args, "benchdb"], env=env, capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "number of failed transactions: 0" in proc.stdout
        # psycopg through the bouncer too.
        with psycopg.connect(bouncer.dsn("bench", "bench-pw", "benchdb")) as conn:
            assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)
    assert not bouncer.running
    assert not (tmp_path / "bouncer").exists()
