"""Startup and authentication through the gateway: TLS, tokens, and what
the client is told when it is refused (never a secret)."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from typing import Any

import psycopg
import pytest

from hoopfast.proxy.postgres import messages as m
from tests.gateway import RunningGateway


def connect(gw: RunningGateway, **kw: object) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(gw.conninfo(**kw), autocommit=True)  # type: ignore[arg-type]


def test_token_identifies_person_and_gateway_holds_credential(idle_gateway: RunningGateway) -> None:
    with connect(idle_gateway) as conn:
        # The session runs as the configured upstream role, not as the person.
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
        assert conn.pgconn.ssl_in_use


@pytest.mark.parametrize(
    ("make_token", "category"),
    [
        (lambda gw: gw.token(ttl=-120), "expired"),
        (lambda gw: gw.token(audience="someone-else"), "wrong audience"),
        (lambda gw: gw.token(issuer="https://evil.example"), "wrong issuer"),
        (lambda gw: gw.token()[:-6] + "AAAAAA", "bad signature"),
        (lambda gw: "not-a-token", "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_a_category(
    idle_gateway: RunningGateway, make_token: object, category: str
) -> None:
    token = make_token(idle_gateway)  # type: ignore[operator]
    with pytest.raises(psycopg.OperationalError) as err:
        connect(idle_gateway, token=token)
    text = str(err.value)
    assert "28P01" in (err.value.sqlstate or "28P01")
    assert f"token rejected ({category})" in text
    assert token not in text


def test_cleartext_token_without_tls_is_refused(idle_gateway: RunningGateway) -> None:
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        connect(idle_gateway, sslmode="disable")


def test_unknown_connection(idle_gateway: RunningGateway) -> None:
    with pytest.raises(psycopg.OperationalError, match='connection "nope" does not exist'):
        connect(idle_gateway, connection="nope")


@pytest.mark.parametrize("connection", ["main", "md5", "plain"])
def test_upstream_auth_methods(idle_gateway: RunningGateway, connection: str) -> None:
    """SCRAM-SHA-256 (with channel binding over TLS), MD5 and cleartext upstream."""
    with connect(idle_gateway, connection=connection) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)


@pytest.mark.parametrize(
    ("connection", "sqlstate", "message"),
    [
        ("wrongpw", "08004", "could not authenticate to the upstream"),
        ("nosecret", "08004", "does not have"),
        ("down", "08001", "could not connect to the upstream"),
        ("badtls", "08001", "could not establish TLS with the upstream"),
        ("downgrade", "08004", "method this connection does not allow"),
    ],
)
def test_upstream_failures_are_reported_without_internals(
    idle_gateway: RunningGateway, connection: str, sqlstate: str, message: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        connect(idle_gateway, connection=connection)
    text = str(err.value)
    assert message in text
    assert err.value.sqlstate in (sqlstate, None)
    assert "not-the-password" not in text and "app" not in text.replace("upstream", "")


def _raw(gw: RunningGateway) -> socket.socket:
    return socket.create_connection((gw.host, gw.port), timeout=5)


def _read_error(sock: socket.socket) -> dict[str, str]:
    data = b""
    while len(data) < 5 or len(data) < 1 + struct.unpack_from("!I", data, 1)[0]:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[:1] == b"E", data
    body = data[5 : 1 + struct.unpack_from("!I", data, 1)[0]]
    return {p[:1].decode(): p[1:].decode() for p in body.split(b"\0") if p}


@pytest.mark.parametrize("length", [0, 3, 7, 10_001, 2**31 - 1])
def test_startup_length_out_of_bounds_is_fatal_08P01(
    idle_gateway: RunningGateway, length: int
) -> None:
    with _raw(idle_gateway) as sock:
        sock.sendall(struct.pack("!II", length, m.PROTOCOL_3_0))
        fields = _read_error(sock)
    assert fields["C"] == "08P01" and fields["S"] == "FATAL"
    assert "invalid length of startup packet" in fields["M"]


def test_garbage_and_half_sent_packets_do_not_hurt_other_sessions(
    idle_gateway: RunningGateway,
) -> None:
    with connect(idle_gateway) as conn:
        payloads = (
            b"\xff" * 64,
            b"\x00\x00\x00\x20\x00\x03",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",  # (a TLS record, not a handshake)
            b"\x16",
        )
        for payload in payloads:
            with _raw(idle_gateway) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unencrypted_bytes_after_ssl_request_are_refused(idle_gateway: RunningGateway) -> None:
    """Bytes pipelined after SSLRequest must not be taken as if they had come
    over TLS (CVE-2021-23214): the gateway refuses instead of handshaking."""
    with _raw(idle_gateway) as sock:
        sock.sendall(struct.pack("!II", 8, m.SSL_REQUEST) + psycopg_free_startup())
        fields = _read_error(sock)
    assert fields["C"] == "08P01"
    assert "unencrypted data after SSL request" in fields["M"]


def psycopg_free_startup() -> bytes:
    from hoopfast.core import encode_startup

    return encode_startup({"user": "alice", "database": "main"})


def test_gssenc_request_is_declined_then_startup_continues(idle_gateway: RunningGateway) -> None:
    with _raw(idle_gateway) as sock:
        sock.sendall(struct.pack("!II", 8, m.GSSENC_REQUEST))
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!II", 8, m.SSL_REQUEST))
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context(cafile=str(idle_gateway.certs.ca_file))
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(psycopg_free_startup())
            header = tls.recv(9)
            assert header[:1] == b"R" and struct.unpack("!I", header[5:9])[0] == m.AUTH_CLEARTEXT


def test_newer_protocol_minor_is_negotiated_down(idle_gateway: RunningGateway) -> None:
    with _raw(idle_gateway) as sock:
        sock.sendall(struct.pack("!II", 8, m.SSL_REQUEST))
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context(cafile=str(idle_gateway.certs.ca_file))
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            from hoopfast.core import encode_startup

            tls.sendall(
                encode_startup(
                    {"user": "alice", "database": "main", "_pq_.future": "1"}, (3 << 16) | 2
                )
            )
            data = tls.recv(4096)
            assert data[:1] == b"v"
            newest, count = struct.unpack_from("!II", data, 5)
            assert newest == m.PROTOCOL_3_0 and count == 1
            assert b"_pq_.future\0" in data


def test_replication_connections_are_refused(idle_gateway: RunningGateway) -> None:
    with pytest.raises(psycopg.OperationalError, match="replication connections are not allowed"):
        connect(idle_gateway, replication="database")


def test_cleartext_without_tls_when_the_development_setting_allows_it(
    make_settings: Any, issuer: Any, certs: Any
) -> None:
    from tests.gateway import run_gateway

    settings = make_settings(
        allow_cleartext_without_tls=True, tls_cert_file=None, tls_key_file=None
    )
    with run_gateway(settings, issuer, certs) as gw:
        with connect(gw, sslmode="disable") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # Without a certificate the gateway answers SSLRequest with 'N', and
        # closes a connection that starts a TLS handshake.
        with pytest.raises(psycopg.OperationalError, match="SSL"):
            connect(gw, sslmode="require")
        with pytest.raises(psycopg.OperationalError):
            connect(gw, sslmode="require", sslnegotiation="direct")
        gw.wait_idle()


def test_too_many_clients(make_settings: Any, issuer: Any, certs: Any) -> None:
    from tests.gateway import run_gateway

    with run_gateway(make_settings(pg_max_client_connections=2), issuer, certs) as gw:
        with connect(gw) as first, connect(gw) as second:
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                connect(gw)
            assert first.execute("SELECT 1").fetchone() == (1,)
            assert second.execute("SELECT 2").fetchone() == (2,)
        # Once they leave, there is room again.
        gw.wait_idle()
        with connect(gw) as again:
            assert again.execute("SELECT 3").fetchone() == (3,)
        gw.wait_idle()


def test_silent_client_is_dropped_after_the_auth_timeout(
    make_settings: Any, issuer: Any, certs: Any
) -> None:
    from tests.gateway import run_gateway

    with run_gateway(make_settings(pg_auth_timeout=0.5), issuer, certs) as gw, _raw(gw) as sock:
        sock.settimeout(5)
        fields = _read_error(sock)
        assert fields["S"] == "FATAL" and "did not finish in time" in fields["M"]
        assert sock.recv(4096) == b""  # then closed by the gateway
        gw.wait_idle()


def test_no_role_for_the_connection_is_refused_naming_it(idle_gateway: RunningGateway) -> None:
    outsider = idle_gateway.token(groups=("outsiders",))
    with pytest.raises(psycopg.OperationalError) as err:
        connect(idle_gateway, token=outsider)
    assert err.value.sqlstate in ("28000", None)
    assert 'has no access to connection "main"' in str(err.value)
    # A connection granted only to another role refuses analysts, admits auditors.
    with pytest.raises(psycopg.OperationalError, match="no access"):
        connect(idle_gateway, connection="restricted")
    auditor = idle_gateway.token("carol", groups=("auditors",))
    with connect(idle_gateway, connection="restricted", token=auditor) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_only_grant_opens_a_read_only_upstream_session(idle_gateway: RunningGateway) -> None:
    with connect(idle_gateway, connection="readonly") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)
        # The guardrails refuse it before the database would (tests/test_guardrails.py).
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE ro_probe (i int)")
    # The client cannot turn it off with its own startup parameter or options.
    with pytest.raises(psycopg.OperationalError, match="read_only"):
        connect(
            idle_gateway,
            connection="readonly",
            options="-c default_transaction_read_only=off",
        )


def test_upstream_refusal_after_login_does_not_name_upstream_objects(
    idle_gateway: RunningGateway,
) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        connect(idle_gateway, connection="nodb")
    assert err.value.sqlstate in ("3D000", None)
    assert "the upstream database refused the connection" in str(err.value)
    assert "no_such_database" not in str(err.value)


@pytest.mark.parametrize(
    "requests",
    [(m.GSSENC_REQUEST, m.GSSENC_REQUEST), (m.SSL_REQUEST, m.SSL_REQUEST)],
)
def test_repeated_encryption_negotiation_is_a_protocol_violation(
    make_settings: Any, issuer: Any, certs: Any, requests: tuple[int, int]
) -> None:
    from tests.gateway import run_gateway

    # Without a certificate, SSLRequest is answered 'N' and could be repeated.
    settings = make_settings(tls_cert_file=None, tls_key_file=None)
    with run_gateway(settings, issuer, certs) as gw, _raw(gw) as sock:
        sock.sendall(struct.pack("!II", 8, requests[0]))
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!II", 8, requests[1]))
        fields = _read_error(sock)
        assert fields["C"] == "08P01" and "encryption negotiation" in fields["M"]


def test_direct_tls_as_libpq_17_negotiates_it(idle_gateway: RunningGateway) -> None:
    """sslnegotiation=direct (PostgreSQL 17): the TLS handshake right away,
    no SSLRequest, the protocol named by ALPN. The relay then runs over
    asyncio's TLS (not uvloop's): a result larger than the socket buffers
    exercises its flow control, and the session's cancel key works."""
    with connect(idle_gateway, sslnegotiation="direct") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
        assert conn.pgconn.ssl_in_use
        rows = conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 5000)").fetchall()
        assert len(rows) == 5000 and rows[-1] == ("x" * 1000,)
        conn.cancel_safe()  # (over TLS, as the connection's sslnegotiation says)
        assert conn.execute("SELECT 2").fetchone() == (2,)
    idle_gateway.wait_idle()


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
def test_direct_tls_without_the_postgresql_alpn_is_refused(
    idle_gateway: RunningGateway, alpn: list[str] | None
) -> None:
    """As PostgreSQL 17: a TLS connection that does not name the protocol
    may be meant for another service, and is not read as PostgreSQL's."""
    context = ssl.create_default_context(cafile=str(idle_gateway.certs.ca_file))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with _raw(idle_gateway) as sock, context.wrap_socket(sock, server_hostname="localhost") as tls:
        fields = _read_error(tls)
    assert fields["C"] == "08P01" and "without ALPN" in fields["M"], fields
    idle_gateway.wait_idle()


def _client_hello(gw: RunningGateway) -> bytes:
    """The first flight of a TLS client naming "postgresql" by ALPN."""
    context = ssl.create_default_context(cafile=str(gw.certs.ca_file))
    context.set_alpn_protocols(["postgresql"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_direct_handshake_the_gateway_stops_ends_cleanly(
    make_settings: Any, issuer: Any, certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Shut down mid-handshake: the session ends as "gateway shutting
    down", not an internal error (the handshake's waiter is told of no
    error when the gateway closes the socket)."""
    from tests.gateway import run_gateway

    with run_gateway(make_settings(), issuer, certs) as gw, _raw(gw) as sock:
        sock.sendall(_client_hello(gw))
        time.sleep(0.3)
        gw.call(lambda: [s.shutdown() for s in list(gw.gateway.active)])
        gw.wait_idle(5)
    assert _errors(caplog) == []


def test_a_stalled_direct_handshake_ends_at_the_auth_timeout(
    make_settings: Any, issuer: Any, certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """As a stalled SSLRequest handshake does, not 5 s later (the stream
    was never told that the handshake's transport closed)."""
    from tests.gateway import run_gateway

    with run_gateway(make_settings(pg_auth_timeout=0.5), issuer, certs) as gw, _raw(gw) as sock:
        started = time.monotonic()
        sock.sendall(_client_hello(gw))
        while gw.session_count() and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert time.monotonic() - started < 3, "the session outlived its auth timeout"
    assert _errors(caplog) == []


def test_direct_tls_with_alpn_reaches_the_startup(idle_gateway: RunningGateway) -> None:
    context = ssl.create_default_context(cafile=str(idle_gateway.certs.ca_file))
    context.set_alpn_protocols(["postgresql"])
    with _raw(idle_gateway) as sock, context.wrap_socket(sock, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "postgresql"
        tls.sendall(psycopg_free_startup())
        header = tls.recv(9)
        assert header[:1] == b"R" and struct.unpack("!I", header[5:9])[0] == m.AUTH_CLEARTEXT


def test_libpq_18_asking_for_protocol_3_2_gets_3_0(idle_gateway: RunningGateway) -> None:
    """libpq 18 may ask for protocol 3.2 (longer cancel keys): the gateway
    answers NegotiateProtocolVersion for 3.0, as PostgreSQL before 18
    does, and the session and its cancel work in 3.0."""
    with connect(idle_gateway, max_protocol_version="latest") as conn:
        assert conn.pgconn.full_protocol_version == 30000
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.cancel_safe()
        assert conn.execute("SELECT 2").fetchone() == (2,)
