"""The relay phase: fidelity under stress, back-pressure, cancel, and what
happens when a side misbehaves or disappears."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from typing import Any

import psycopg
import pytest

from hoopfast.devcluster import DevCluster
from hoopfast.proxy.postgres import messages as m
from tests.conftest import Roles
from tests.gateway import RunningGateway
from tests.rawclient import RawClient, error_fields


def raw(gw: RunningGateway, connection: str = "main") -> RawClient:
    client = RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file)
    client.startup(connection, gw.token())
    return client


def _session_transports(gw: RunningGateway) -> list[tuple[Any, Any]]:
    out = []
    for session in gw.gateway.active:
        cp, sp = session._client_pump, session._server_pump
        if cp is not None and sp is not None:
            out.append((cp.transport, sp.transport))
    return out


def test_slow_client_does_not_make_the_gateway_buffer_the_result(
    idle_gateway: RunningGateway,
) -> None:
    """A ~64 MB result read slowly: the gateway's buffer for the client stays
    near its high-water mark and it stops reading the upstream meanwhile."""
    gw = idle_gateway
    high = gw.gateway.settings.pg_write_high_water
    rows, width = 64_000, 1000
    with raw(gw) as client:
        client.query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})")
        time.sleep(0.5)  # let the upstream push as much as it can
        peak, paused_seen, received = 0, False, 0
        for _ in range(40):
            received += client.recv_some(16384)
            sizes = gw.call(
                lambda: [
                    (c.get_write_buffer_size(), s.is_reading()) for c, s in _session_transports(gw)
                ]
            )
            for size, reading in sizes:
                peak = max(peak, size)
                paused_seen |= not reading
            time.sleep(0.01)
        # One read from the upstream (uvloop reads up to 256 KiB) may land on
        # top of the high-water mark before reading pauses.
        assert peak <= high + 512 * 1024, peak
        assert paused_seen, "the gateway never paused reading from the upstream"
        assert received < rows * width // 4  # the test really read slowly
        # Drain the rest: every row arrives intact, ending with ReadyForQuery.
        messages = client.read_until_ready()
        assert sum(1 for kind, _ in messages if kind == "D") == rows
        assert messages[-2] == ("C", f"SELECT {rows}\0".encode())


def test_cancel_request_reaches_the_right_upstream_session(idle_gateway: RunningGateway) -> None:
    with (
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as busy,
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as other,
    ):
        # The client sees the gateway's key, not the upstream backend's.
        upstream_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert busy.info.backend_pid != upstream_pid
        # cancel_safe: libpq's non-blocking cancel API. (The legacy blocking
        # PQcancel holds the GIL while it waits, which would starve the
        # gateway that these tests run in-process; psql covers it below.)
        timer = threading.Timer(0.3, busy.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 5
        timer.join()
        # Both sessions remain usable; the other one was not cancelled.
        assert busy.execute("SELECT 1").fetchone() == (1,)
        assert other.execute("SELECT 2").fetchone() == (2,)


def test_psql_ctrl_c_cancels_the_running_query(idle_gateway: RunningGateway) -> None:
    """psql sends a CancelRequest (the legacy, plaintext one) on SIGINT."""
    import os
    import signal
    import subprocess

    started = time.monotonic()
    proc = subprocess.Popen(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT pg_sleep(30)",
            idle_gateway.conninfo(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        text=True,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert "canceling statement due to user request" in err
    assert time.monotonic() - started < 8


def test_cancel_with_a_wrong_key_is_ignored(idle_gateway: RunningGateway) -> None:
    with psycopg.connect(idle_gateway.conninfo(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        result: list[Any] = []
        worker = threading.Thread(
            target=lambda: result.append(conn.execute("SELECT pg_sleep(0.8), 'done'").fetchone())
        )
        worker.start()
        time.sleep(0.2)
        with RawClient(idle_gateway.host, idle_gateway.port, ca_file=None) as sock:
            sock.send(struct.pack("!IIiI", 16, m.CANCEL_REQUEST, pid, 12345))
        worker.join(5)
        assert result and result[0][1] == "done"


@pytest.mark.parametrize("length", [0, 3])
def test_bad_message_length_after_login_is_fatal_08P01(
    idle_gateway: RunningGateway, length: int
) -> None:
    with raw(idle_gateway) as client:
        client.send(b"Q" + struct.pack("!I", length) + b"SELECT 1\0")
        kind, body = client.read_message()
        assert kind == "E"
        fields = error_fields(body)
        assert fields["C"] == "08P01" and fields["S"] == "FATAL"
        with pytest.raises(ConnectionError):
            client.read_message()


def test_message_over_the_cap_is_fatal(make_settings: Any, issuer: Any, certs: Any) -> None:
    from tests.gateway import run_gateway

    with run_gateway(make_settings(pg_max_message=1 << 16), issuer, certs) as gw:
        with raw(gw) as client:
            client.send(b"Q" + struct.pack("!I", (1 << 16) + 1))
            kind, body = client.read_message()
            assert kind == "E" and error_fields(body)["C"] == "08P01"
            assert "invalid message length" in error_fields(body)["M"]
        gw.wait_idle()


def test_torn_client_messages_are_reassembled(idle_gateway: RunningGateway) -> None:
    with raw(idle_gateway) as client:
        message = m.build(ord("Q"), b"SELECT 40 + 2 AS answer\0")
        for byte in message:
            client.send(bytes([byte]))
            time.sleep(0.002)
        out = client.read_until_ready()
        kinds = [kind for kind, _ in out]
        assert kinds == ["T", "D", "C", "Z"]
        assert out[1][1].endswith(b"42")


def test_client_vanishing_mid_result_leaks_nothing(idle_gateway: RunningGateway) -> None:
    with psycopg.connect(idle_gateway.conninfo(), autocommit=True) as survivor:
        client = raw(idle_gateway)
        client.query("SELECT repeat('y', 1000) FROM generate_series(1, 200000)")
        assert client.recv_some() > 0
        client.sock.close()  # gone, mid-result
        idle_gateway_sessions_drop_to(idle_gateway, 1)
        assert survivor.execute("SELECT 'still here'").fetchone() == ("still here",)


def idle_gateway_sessions_drop_to(gw: RunningGateway, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while gw.session_count() > n:
        assert time.monotonic() < deadline, f"sessions: {gw.session_count()}"
        time.sleep(0.05)


def test_upstream_dying_mid_query_gives_the_client_an_error(
    idle_gateway: RunningGateway, cluster: Any
) -> None:
    with (
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as victim,
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as bystander,
    ):
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        threading.Timer(0.3, lambda: cluster.execute(f"SELECT pg_terminate_backend({pid})")).start()
        with pytest.raises(psycopg.OperationalError) as err:
            victim.execute("SELECT pg_sleep(10)")
        assert "terminating connection" in str(err.value) or "closed" in str(err.value)
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def test_upstream_vanishing_without_a_word_is_reported(
    idle_gateway: RunningGateway,
) -> None:
    """Kill the upstream socket under a session (no FATAL from the server):
    the client gets 08006 from the gateway rather than a silent hang."""
    with raw(idle_gateway) as client:

        def cut() -> None:
            for _, server in _session_transports(idle_gateway):
                server.abort()

        idle_gateway.call(cut)
        kind, body = client.read_message()
        assert kind == "E"
        fields = error_fields(body)
        assert fields["C"] == "08006" and "upstream" in fields["M"]


def test_gateway_shutdown_tells_clients(make_settings: Any, issuer: Any, certs: Any) -> None:
    from tests.gateway import run_gateway

    with run_gateway(make_settings(), issuer, certs) as gw:
        client = raw(gw)
        asyncio.run_coroutine_threadsafe(gw.gateway.close(), gw.loop).result(15)
        kind, body = client.read_message()
        assert kind == "E" and error_fields(body)["C"] == "57P01"
        client.close()


def test_terminate_closes_cleanly(idle_gateway: RunningGateway) -> None:
    with raw(idle_gateway) as client:
        client.send(m.build(m.TERMINATE))
        assert client.recv_some() == 0


def test_notifications_carry_the_pids_clients_know(
    idle_gateway: RunningGateway, cluster: DevCluster, roles: Roles
) -> None:
    """A notification names its sender by the pid the sender's own client
    knows, for this session and for every other session of the gateway; a
    sender that is not a gateway session keeps its upstream pid."""
    with (
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as me,
        psycopg.connect(idle_gateway.conninfo(), autocommit=True) as other,
        psycopg.connect(cluster.dsn(*roles.scram, dbname="app"), autocommit=True) as outside,
    ):
        me.execute("LISTEN hf_channel")
        me.execute("NOTIFY hf_channel, 'mine'")
        other.execute("NOTIFY hf_channel, 'theirs'")
        outside.execute("NOTIFY hf_channel, 'outside'")
        got = {}
        for note in me.notifies(timeout=5, stop_after=3):
            got[note.payload] = note.pid
        assert got["mine"] == me.info.backend_pid
        assert got["theirs"] == other.info.backend_pid != me.info.backend_pid
        assert got["outside"] == outside.info.backend_pid


def test_queries_pipelined_before_login_completes_are_not_lost(
    idle_gateway: RunningGateway,
) -> None:
    """The password and 300 KB of queries in one write: the bytes after the
    password reach the relay, including what the startup reader had paused on."""
    from hoopfast.core import encode_startup

    gw = idle_gateway
    client = RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file)
    with client:
        client.send(encode_startup({"user": "alice", "database": "main"}))
        kind, _ = client.read_message()
        assert kind == "R"
        queries = b"".join(
            m.build(ord("Q"), f"SELECT {i}, repeat('p', 1000)".encode() + b"\0") for i in range(300)
        )
        client.send(m.build(m.PASSWORD_MESSAGE, gw.token().encode() + b"\0") + queries)
        while client.read_message()[0] != "Z":  # login answer
            pass
        for i in range(300):
            out = client.read_until_ready()
            assert [k for k, _ in out] == ["T", "D", "C", "Z"]
            assert out[1][1][6:].startswith(str(i).encode())
        # And the session still reads what comes after the burst.
        client.query("SELECT 'after'")
        assert [k for k, _ in client.read_until_ready()] == ["T", "D", "C", "Z"]


def test_session_ends_when_its_token_expires(idle_gateway: RunningGateway) -> None:
    # Expired 28 s ago: still inside the 30 s clock-skew leeway, so the login
    # is accepted, and the session ends when the leeway runs out.
    leeway = idle_gateway.gateway.config.identity.leeway
    token = idle_gateway.token(ttl=-(leeway - 2))
    with psycopg.connect(idle_gateway.conninfo(token=token), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(3.2)
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        assert "token expired" in str(err.value)


def test_expiry_grace_keeps_the_session_a_little_longer(
    make_settings: Any, issuer: Any, certs: Any
) -> None:
    from tests.gateway import run_gateway

    with run_gateway(make_settings(session_expiry_grace=60), issuer, certs) as gw:
        leeway = gw.gateway.config.identity.leeway
        token = gw.token(ttl=-(leeway - 1))
        with psycopg.connect(gw.conninfo(token=token), autocommit=True) as conn:
            time.sleep(2.2)
            assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
        gw.wait_idle()
