"""Tests of tests/faultproxy.py: exact fault semantics, then real PostgreSQL clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest
import uvloop

from hoopfast.devcluster import DevCluster
from tests.faultproxy import FaultProxy, Faults

T = TypeVar("T")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(main())  # type: ignore[arg-type]


class Recorder:
    """A loopback TCP server that records what each connection received."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received: list[bytearray] = []
        self.closed: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = bytearray()
        done = asyncio.Event()
        self.received.append(buf)
        self.closed.append(done)
        if self.greeting:
            w.write(self.greeting)
        try:
            while data := await r.read(65536):
                buf += data
        except OSError:
            pass
        finally:
            done.set()
            w.close()

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_inject_and_torn(loop_name: str) -> None:
    async def main() -> None:
        async with (
            Recorder(greeting=b"0123456789") as srv,
            FaultProxy(
                "127.0.0.1",
                srv.port,
                upstream=Faults.garbage(b"XX", at=3),
                downstream=Faults.torn(1, delay=0.005, randomize=False),
            ) as p,
        ):
            r, w = await asyncio.open_connection("127.0.0.1", p.port)
            w.write(b"abcdef")
            await w.drain()
            reads: list[bytes] = []
            while sum(map(len, reads)) < 10:
                reads.append(await r.read(100))
            assert b"".join(reads) == b"0123456789"
            assert len(reads) >= 5, reads  # arrived in pieces
            w.close()
            await asyncio.wait_for(srv.closed[0].wait(), 5)
            assert srv.received[0] == b"abcXXdef"
            assert p.bytes_forwarded == {"upstream": 6, "downstream": 10}

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", list(LOOPS))
@pytest.mark.parametrize("rst", [False, True])
def test_drop_after(loop_name: str, rst: bool) -> None:
    async def main() -> None:
        async with (
            Recorder() as srv,
            FaultProxy("127.0.0.1", srv.port, upstream=Faults.drop(4, rst=rst)) as p,
        ):
            r, w = await asyncio.open_connection("127.0.0.1", p.port)
            w.write(b"abcdefgh")
            await w.drain()
            if rst:
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(r.read(100), 5)
            else:
                assert await asyncio.wait_for(r.read(100), 5) == b""
            await asyncio.wait_for(srv.closed[0].wait(), 5)
            assert srv.received[0] == b"abcd"
            w.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_stall_and_resume(loop_name: str) -> None:
    async def main() -> None:
        async with (
            Recorder(greeting=b"hello") as srv,
            FaultProxy("127.0.0.1", srv.port, downstream=Faults.stall(2)) as p,
        ):
            r, w = await asyncio.open_connection("127.0.0.1", p.port)
            assert await r.readexactly(2) == b"he"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.read(100), 0.2)
            p.resume()
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"llo"
            w.close()

    run(loop_name, main)


def test_bounded() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 5432)

    async def main() -> None:
        async with Recorder() as srv, FaultProxy("127.0.0.1", srv.port, lifetime=0.2) as p:
            port = p.port
            await asyncio.sleep(0.4)  # the proxy shut itself down
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)

    run("asyncio", main)


def test_thread_mode_controls() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with FaultProxy("127.0.0.1", srv.getsockname()[1]) as p:
            c = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s, _ = srv.accept()
            c.sendall(b"ping")
            assert s.recv(10) == b"ping"
            deadline = time.monotonic() + 5
            while p.active_connections == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert p.drop_all(rst=True) == 1
            with pytest.raises(ConnectionResetError):
                c.recv(10)
            c.close()
            s.close()
        p.close()  # idempotent


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("faultproxy") / "pg") as pg:
        pg.add_role("app", "app-pw", "scram-sha-256")
        pg.add_role("legacy", "legacy-pw", "md5")
        yield pg


QUERY = "SELECT string_agg(md5(i::text), ',') FROM generate_series(1, 2000) AS i"


def expected(cluster: DevCluster) -> Any:
    return cluster.execute(QUERY)[0][0]


@pytest.mark.parametrize(
    ("user", "password", "sslmode", "faults"),
    [
        ("app", "app-pw", "verify-full", Faults.torn(16)),
        ("legacy", "legacy-pw", "disable", Faults.torn(1)),
    ],
)
def test_torn_packets_psycopg(
    cluster: DevCluster, user: str, password: str, sslmode: str, faults: Faults
) -> None:
    with FaultProxy(cluster.host, cluster.port, faults=faults, seed=1) as p:
        dsn = cluster.dsn(user, password, sslmode=sslmode, port=p.port, connect_timeout=10)
        with psycopg.connect(dsn) as conn:
            assert conn.pgconn.ssl_in_use == (sslmode != "disable")
            assert conn.execute(QUERY).fetchone() == (expected(cluster),)
        assert p.connections_total == 1
        assert p.bytes_forwarded["downstream"] > 2000 * 33


@pytest.mark.parametrize(
    ("direction", "after", "rst"),
    [
        ("upstream", 8, False),  # right after the SSLRequest
        ("downstream", 1, True),  # after the server's 'S'
        ("downstream", 300, False),  # in the middle of the TLS handshake
        ("upstream", 400, True),  # around the startup / SCRAM exchange
    ],
)
def test_drop_after_n_bytes_psycopg(
    cluster: DevCluster, direction: str, after: int, rst: bool
) -> None:
    faults = {direction: Faults.drop(after, rst=rst)}
    with FaultProxy(cluster.host, cluster.port, **faults) as p:  # type: ignore[arg-type]
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn("app", "app-pw", port=p.port, connect_timeout=10))
        assert p.connections_total >= 1


@pytest.mark.parametrize("how", ["drop_after", "drop_all"])
def test_drop_mid_session_psycopg(cluster: DevCluster, how: str) -> None:
    with FaultProxy(cluster.host, cluster.port) as p:
        conn = psycopg.connect(cluster.dsn("app", "app-pw", port=p.port))
        assert conn.execute("SELECT 1").fetchone() == (1,)
        if how == "drop_after":
            p.downstream = Faults.drop(0, rst=True)  # offset already passed: next chunk
        else:
            assert p.drop_all() == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 2").fetchone()
        assert conn.broken
        conn.close()


def test_garbage_psycopg(cluster: DevCluster) -> None:
    garbage = Faults.garbage(b"\x00junk")
    with (
        FaultProxy(cluster.host, cluster.port, downstream=garbage) as p,
        pytest.raises(psycopg.OperationalError),
    ):
        psycopg.connect(cluster.dsn("app", "app-pw", port=p.port, connect_timeout=5))


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_torn_asyncpg_tls(cluster: DevCluster, loop_name: str) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))

    async def main() -> None:
        async with FaultProxy(cluster.host, cluster.port, faults=Faults.torn(7), seed=2) as p:
            conn = await asyncpg.connect(
                host=cluster.host, port=p.port, user="app", password="app-pw",
                database="postgres", ssl=ctx, timeout=10,
            )  # fmt: skip
            try:
                assert await conn.fetchval(QUERY) == expected(cluster)
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            finally:
                await conn.close()
            # A stalled server makes the client time out, on either loop.
            p.downstream = Faults.stall(0)
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                await asyncpg.connect(
                    host=cluster.host, port=p.port, user="app", password="app-pw",
                    ssl=ctx, timeout=0.5,
                )  # fmt: skip

    run(loop_name, main)
