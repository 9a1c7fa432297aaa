"""Fault injection around the gateway with a real fault proxy: torn packets
and dropped peers, on both sides, with real clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hoopfast.devcluster import DevCluster
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.settings import Settings
from tests.faultproxy import FaultProxy, Faults
from tests.gateway import RunningGateway, run_gateway, write_config

QUERY = "SELECT g, repeat('z', g % 300), g::numeric / 7 FROM generate_series(1, 3000) g"


@pytest.fixture(scope="module")
def upstream_proxy(cluster: DevCluster) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.host, cluster.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def faulty_gateway(
    upstream_proxy: FaultProxy,
    state_dir: Path,
    roles: Any,
    issuer: DevIssuer,
    certs: CertFiles,
    make_settings: Callable[..., Settings],
) -> Iterator[RunningGateway]:
    """A gateway whose upstream connection goes through the fault proxy."""
    secret = state_dir / "secrets" / "scram"
    config = write_config(
        state_dir / "faulty.toml",
        issuer.jwks_file,
        {
            "main": {
                "host": upstream_proxy.host,
                "port": upstream_proxy.port,
                "database": "app",
                "user": roles.scram[0],
                "password": {"file": str(secret)},
            }
        },
    )
    with run_gateway(make_settings(config=config), issuer, certs) as gw:
        yield gw


def direct_result(cluster: DevCluster, roles: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.dsn(*roles.scram, dbname="app")) as conn:
        return conn.execute(QUERY).fetchall()


def test_torn_packets_from_the_upstream(
    faulty_gateway: RunningGateway, upstream_proxy: FaultProxy, cluster: DevCluster, roles: Any
) -> None:
    expected = direct_result(cluster, roles)
    upstream_proxy.downstream = Faults.torn(max_piece=7)
    upstream_proxy.upstream = Faults.torn(max_piece=3)
    try:
        with psycopg.connect(faulty_gateway.conninfo(), autocommit=True) as conn:
            assert conn.execute(QUERY).fetchall() == expected
            with conn.cursor(binary=True) as cur:
                assert cur.execute(QUERY).fetchall() == expected
    finally:
        upstream_proxy.downstream = upstream_proxy.upstream = Faults()
    faulty_gateway.wait_idle()


def test_torn_packets_from_the_client(
    gateway: RunningGateway, cluster: DevCluster, roles: Any
) -> None:
    expected = direct_result(cluster, roles)
    with FaultProxy(
        gateway.host,
        gateway.port,
        upstream=Faults.torn(max_piece=5),
        downstream=Faults.torn(max_piece=11),
    ) as proxy:
        conninfo = gateway.conninfo(port=proxy.port)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert conn.execute(QUERY).fetchall() == expected
            # Extended protocol, prepared: Parse/Bind/Execute torn too.
            for _ in range(3):
                cur = conn.execute("SELECT %s::int + 1", (41,), prepare=True)
                assert cur.fetchone() == (42,)
    gateway.wait_idle()


def test_upstream_dropped_mid_result(
    faulty_gateway: RunningGateway, upstream_proxy: FaultProxy
) -> None:
    with psycopg.connect(faulty_gateway.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        upstream_proxy.downstream = Faults.drop(after=0, rst=True)
        try:
            with pytest.raises(psycopg.OperationalError):
                conn.execute(QUERY).fetchall()
        finally:
            upstream_proxy.downstream = Faults()
    faulty_gateway.wait_idle()
    # The gateway still serves new sessions.
    with psycopg.connect(faulty_gateway.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)
    faulty_gateway.wait_idle()


def test_client_dropped_mid_result(gateway: RunningGateway) -> None:
    with FaultProxy(gateway.host, gateway.port, downstream=Faults.drop(after=20_000)) as proxy:
        conninfo = gateway.conninfo(port=proxy.port)
        with (
            pytest.raises(psycopg.OperationalError),
            psycopg.connect(conninfo, autocommit=True) as conn,
        ):
            conn.execute(QUERY).fetchall()
    gateway.wait_idle()


def test_no_descriptor_leaks_after_many_failed_and_good_sessions(gateway: RunningGateway) -> None:
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gateway.wait_idle()
    before = open_fds()
    for i in range(30):
        if i % 3 == 0:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gateway.conninfo(token="bad"))
        elif i % 3 == 1:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gateway.conninfo(connection="down"))
        else:
            with psycopg.connect(gateway.conninfo(), autocommit=True) as conn:
                conn.execute("SELECT 1")
    gateway.wait_idle()
    # A little slack for descriptors the runtime opens lazily (e.g. the loop's).
    assert open_fds() <= before + 3


def test_client_vanishing_while_the_upstream_connects_leaks_nothing(
    faulty_gateway: RunningGateway, upstream_proxy: FaultProxy
) -> None:
    import socket
    import struct as _struct

    from tests.rawclient import RawClient

    upstream_proxy.downstream = Faults(latency=1.0)  # a slow upstream
    try:
        client = RawClient(
            faulty_gateway.host, faulty_gateway.port, ca_file=faulty_gateway.certs.ca_file
        )
        from hoopfast.core import encode_startup
        from hoopfast.proxy.postgres import messages as m

        client.send(encode_startup({"user": "alice", "database": "main"}))
        assert client.read_message()[0] == "R"
        client.send(m.build(m.PASSWORD_MESSAGE, faulty_gateway.token().encode() + b"\0"))
        # Gone (reset) while the gateway is still logging in upstream.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _struct.pack("ii", 1, 0))
        client.close()
        faulty_gateway.wait_idle(timeout=15)
    finally:
        upstream_proxy.downstream = Faults()


def test_forged_bytes_before_the_upstream_tls_handshake_are_refused(
    state_dir: Path,
    roles: Any,
    issuer: DevIssuer,
    certs: CertFiles,
    make_settings: Callable[..., Settings],
) -> None:
    """A man in the middle answers the gateway's SSLRequest with 'S' plus a
    forged AuthenticationOk: the gateway must not read it as TLS data."""
    import socket
    import threading

    from hoopfast.proxy.postgres import messages as m

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert_file, certs.key_file)

    def mitm() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(8)
            conn.sendall(b"S" + m.authentication(m.AUTH_OK) + m.ready_for_query())
            # Then a genuine handshake (tls = "require" checks no certificate).
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    tls.recv(4096)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=mitm, daemon=True)
    thread.start()
    config = write_config(
        state_dir / "mitm.toml",
        issuer.jwks_file,
        {
            "main": {
                "host": "127.0.0.1",
                "port": port,
                "database": "app",
                "user": roles.scram[0],
                "password": {"file": str(state_dir / "secrets" / "scram")},
                "tls": "require",
            }
        },
    )
    with run_gateway(make_settings(config=config), issuer, certs) as gw:
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(gw.conninfo())
        assert "could not establish TLS with the upstream" in str(err.value)
        gw.wait_idle()
    listener.close()
    thread.join(5)
