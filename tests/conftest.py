"""Fixtures: one throwaway PostgreSQL cluster per test run (initdb, SCRAM,
TLS, random port) and the gateway in front of it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hoopfast.core import IMPLEMENTATION
from hoopfast.devcluster import DevCluster, free_port
from hoopfast.devtls import CertFiles, make_dev_certificates
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.settings import Settings
from tests.fake_oidc import FakeOIDC
from tests.gateway import RunningGateway, run_gateway, write_config


def pytest_report_header(config: pytest.Config) -> str:
    forced = os.environ.get("HOOPFAST_IMPL") or "unset"
    return f"hoopfast implementation: {IMPLEMENTATION} (HOOPFAST_IMPL={forced})"


class Roles:
    """Upstream roles, one per authentication method the gateway must speak."""

    def __init__(self) -> None:
        self.scram = ("app", secrets.token_urlsafe(12))
        self.md5 = ("app_md5", secrets.token_urlsafe(12))
        self.plain = ("app_plain", secrets.token_urlsafe(12))


@pytest.fixture(scope="session")
def roles() -> Roles:
    return Roles()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, roles: Roles) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("pg")) as pg:
        pg.add_role(*roles.scram, "scram-sha-256")
        pg.add_role(*roles.md5, "md5")
        pg.add_role(*roles.plain, "password")
        pg.create_database("app", owner=roles.scram[0])
        for role in (roles.md5[0], roles.plain[0]):
            pg.execute(f"GRANT ALL ON SCHEMA public TO {role}", dbname="app")
            pg.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}", dbname="app")
        pgbench = shutil.which("pgbench", path=str(pg.bindir)) or "pgbench"
        subprocess.run(
            [pgbench, "-i", "-q", "-s", "1", pg.dsn(*roles.scram, dbname="app")],
            check=True,
            capture_output=True,
        )
        pg.execute(
            # Tables that tests (re)create as the owner, e.g. pgbench -i through
            # the gateway, stay readable by the other upstream roles.
            "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public"
            " GRANT ALL ON TABLES TO app_md5, app_plain",
            dbname="app",
        )
        pg.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app_md5, app_plain", dbname="app")
        yield pg


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def issuer(state_dir: Path) -> DevIssuer:
    issuer = DevIssuer(state_dir)
    issuer.write_jwks()
    return issuer


@pytest.fixture(scope="session")
def certs(state_dir: Path) -> CertFiles:
    return make_dev_certificates(state_dir / "tls")


@pytest.fixture(scope="session")
def gateway_config(state_dir: Path, cluster: DevCluster, roles: Roles, issuer: DevIssuer) -> Path:
    secrets_dir = state_dir / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for name, (_, password) in {
        "scram": roles.scram,
        "md5": roles.md5,
        "plain": roles.plain,
    }.items():
        (secrets_dir / name).write_text(password + "\n")
    (secrets_dir / "wrong").write_text("not-the-password\n")
    base = {"host": cluster.host, "port": cluster.port, "database": "app"}

    def as_role(role: tuple[str, str], secret: str) -> dict[str, Any]:
        return {**base, "user": role[0], "password": {"file": str(secrets_dir / secret)}}

    scram = as_role(roles.scram, "scram")
    verify = {"tls": "verify-full", "tls_ca_file": str(cluster.ca_file)}
    connections: dict[str, dict[str, Any]] = {
        "main": {**scram, **verify, "tls_server_name": "localhost"},
        "md5": {**as_role(roles.md5, "md5"), "require_auth": ["md5"]},
        "plain": {**as_role(roles.plain, "plain"), "tls": "require", "require_auth": ["password"]},
        # A server that asks for md5 where only SCRAM is allowed is refused.
        "downgrade": as_role(roles.md5, "md5"),
        # verify-full against a name the upstream certificate does not carry.
        "badtls": {**scram, **verify, "tls_server_name": "db.example.invalid"},
        "readonly": {**scram, "grants": {"analyst": {"read_only": True}}},
        "restricted": {**scram, "grants": {"auditor": {}}},
        "wrongpw": as_role(roles.scram, "wrong"),
        "nosecret": {**base, "user": roles.scram[0]},
        "down": {**scram, "port": free_port()},
        "nodb": {**scram, "database": "no_such_database"},
    }
    return write_config(state_dir / "hoopfast.toml", issuer.jwks_file, connections)


@pytest.fixture(scope="session")
def make_settings(
    gateway_config: Path, state_dir: Path, certs: CertFiles
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "config": gateway_config,
            "pg_listen": "127.0.0.1:0",
            "api_listen": "127.0.0.1:0",
            "state_dir": state_dir,
            "tls_cert_file": certs.cert_file,
            "tls_key_file": certs.key_file,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def gateway(
    make_settings: Callable[..., Settings], issuer: DevIssuer, certs: CertFiles
) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(), issuer, certs) as gw:
        yield gw


@pytest.fixture
def idle_gateway(gateway: RunningGateway) -> Iterator[RunningGateway]:
    """The shared gateway, checked for leaked sessions after the test."""
    yield gateway
    gateway.wait_idle()


@pytest.fixture
def app_admin(cluster: DevCluster) -> Iterator[Any]:
    """A superuser connection to the test database, around the gateway (to
    see what a statement did, or did not do)."""
    with cluster.connect("app") as conn:
        yield conn


@pytest.fixture
def provider() -> Iterator[FakeOIDC]:
    """A real OIDC provider on loopback (tests/fake_oidc.py)."""
    p = FakeOIDC()
    yield p
    p.close()
