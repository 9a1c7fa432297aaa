"""A real gateway for tests: in this process, on its own uvloop thread, in
front of a throwaway cluster, so tests can also look inside (sessions open,
buffers) while real clients talk to it over real sockets."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import uvloop

from hoopfast.config import DEFAULT_ALLOW, load_config
from hoopfast.conninfo import make_conninfo
from hoopfast.devconfig import write_gateway_config
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.identity.tokens import TokenValidator
from hoopfast.proxy.postgres.server import PgGateway
from hoopfast.serve import Runtime, start_runtime
from hoopfast.settings import Settings

T = TypeVar("T")


@dataclass
class RunningGateway:
    gateway: PgGateway
    loop: asyncio.AbstractEventLoop
    issuer: DevIssuer
    certs: CertFiles
    runtime: Runtime
    host: str = "127.0.0.1"

    @property
    def api_url(self) -> str:
        assert self.runtime.api is not None
        return f"https://{self.host}:{self.runtime.api.port}"

    @property
    def port(self) -> int:
        return self.gateway.port

    def token(self, sub: str = "alice", groups: tuple[str, ...] = ("analysts",), **kw: Any) -> str:
        return self.issuer.issue(sub, groups, **kw)

    def conninfo(
        self,
        connection: str = "main",
        *,
        token: str | None = None,
        sslmode: str = "verify-full",
        user: str = "alice",
        **extra: str | int,
    ) -> str:
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": connection,
            "user": user,
            "password": token if token is not None else self.token(user),
            "sslmode": sslmode,
            **extra,
        }
        if sslmode.startswith("verify"):
            params.setdefault("sslrootcert", str(self.certs.ca_file))
        return make_conninfo(params)

    def asyncpg_kwargs(self, connection: str = "main", user: str = "alice") -> dict[str, Any]:
        """asyncpg.connect() keyword arguments for ``connection``, as ``user``."""
        return {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": self.token(user),
            "database": connection,
            "ssl": ssl.create_default_context(cafile=str(self.certs.ca_file)),
        }

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the gateway's loop and return its result."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def session_count(self) -> int:
        return self.call(lambda: len(self.gateway.active))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Every session finished and released its sockets (leak check)."""
        deadline = time.monotonic() + timeout
        while (count := self.session_count()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count == 0, f"{count} session(s) still open"


@contextmanager
def run_gateway(
    settings: Settings, issuer: DevIssuer, certs: CertFiles
) -> Iterator[RunningGateway]:
    loop = uvloop.new_event_loop()
    config = load_config(settings.config)
    validator = TokenValidator(config.identity)
    if settings.spool_dir is None:
        # Each gateway its own spool (as each replica has); the store is shared.
        spool = tempfile.mkdtemp(prefix="spool-", dir=settings.state_dir)
        settings = settings.model_copy(update={"spool_dir": Path(spool)})
    ready: Future[Runtime] = Future()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            runtime = loop.run_until_complete(start_runtime(settings, config, validator))
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(runtime)
        loop.run_forever()

    thread = threading.Thread(target=main, name="gateway", daemon=True)
    thread.start()
    runtime = ready.result(20)
    try:
        yield RunningGateway(runtime.gateway, loop, issuer, certs, runtime)
    finally:
        asyncio.run_coroutine_threadsafe(runtime.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        validator.close()


#: Roles of the test configuration: the default token's group holds "analyst".
TEST_ROLES = {"analyst": {"groups": ["analysts"]}, "auditor": {"groups": ["auditors"]}}
#: Who reads trails in the test configuration.
TEST_AUDIT = {"roles": ["auditor"]}


#: The grant of connections that do not name one: an application's, with
#: procedural code allowed (the client tests run DO blocks and functions to
#: make notices and errors); the guardrail tests configure their own.
APP_GRANT = {"allow": [*DEFAULT_ALLOW, "procedural"]}


def write_config(
    path: Path,
    jwks_file: Path,
    connections: dict[str, dict[str, Any]],
    roles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A gateway TOML file. Connections without ``grants`` grant "analyst"
    :data:`APP_GRANT`."""
    return write_gateway_config(
        path,
        jwks_file,
        {name: {"grants": {"analyst": APP_GRANT}, **conn} for name, conn in connections.items()},
        roles if roles is not None else TEST_ROLES,
        audit=TEST_AUDIT if roles is None else None,
    )


@contextmanager
def opened_connections(
    gw: RunningGateway, default: str = "main"
) -> Iterator[Callable[..., psycopg.Connection[Any]]]:
    """``connect(connection=default, **kw)``: an autocommit psycopg
    connection through ``gw``. All are closed afterwards, and the gateway
    must then have no session left (leak check)."""
    opened: list[psycopg.Connection[Any]] = []

    def connect(connection: str = default, **kw: Any) -> psycopg.Connection[Any]:
        kw.setdefault("autocommit", True)
        conn = psycopg.connect(gw.conninfo(connection), **kw)
        opened.append(conn)
        return conn

    try:
        yield connect
    finally:
        for conn in opened:
            conn.close()
    gw.wait_idle()
