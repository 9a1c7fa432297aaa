"""Connecting the gateway to the real database with the secret only it holds.

The client never sees this credential: not in a message, not in an error.
Upstream authentication failures are logged for the operator and reported to
the client in general terms only.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from dataclasses import dataclass, field

from hoopfast.config import Connection
from hoopfast.core import decode_data_row, decode_fields, encode_startup
from hoopfast.proxy.postgres import messages as m
from hoopfast.proxy.postgres.scram import (
    MECHANISM,
    MECHANISM_PLUS,
    ScramClient,
    md5_password,
    tls_server_end_point,
)

log = logging.getLogger(__name__)

#: Messages from a server we authenticated to can be big (e.g. a long
#: ParameterStatus), but nothing in the startup phase needs more than this.
_MAX_STARTUP_MESSAGE = 1 << 20


class UpstreamError(Exception):
    """The upstream could not be reached or refused us.

    ``sqlstate`` and ``message`` are safe to relay to the client; ``detail``
    is for the gateway log.
    """

    def __init__(self, sqlstate: str, message: str, detail: str = "") -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        super().__init__(f"{message} ({detail})" if detail else message)


class UpstreamRefused(UpstreamError):
    """The upstream refused the session after authentication (too many
    connections, no such database, ...). The client gets its SQLSTATE and a
    general message; the upstream's own words, which name its roles and
    databases, go to the log."""

    #: Refusals of what the *client* sent (an invalid value for one of its own
    #: startup parameters, an unknown setting): the text names only that, and
    #: the client needs it, so these are relayed as the server wrote them.
    CLIENT_CAUSED = frozenset({"22023", "42704"})

    def __init__(self, fields: dict[str, str], error_message: bytes) -> None:
        sqlstate = fields.get("C", "08004")
        super().__init__(
            sqlstate, "the upstream database refused the connection", fields.get("M", "")
        )
        self.relayed = error_message if sqlstate in self.CLIENT_CAUSED else None


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: The upstream backend's own cancel key; never shown to the client.
    pid: int = 0
    secret: int = 0
    #: ParameterStatus messages as received, to relay to the client verbatim.
    parameter_messages: list[bytes] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    #: NoticeResponses the server sent during startup (relayed too).
    notices: list[bytes] = field(default_factory=list)


def client_ssl_context(conn: Connection) -> ssl.SSLContext:
    if conn.tls == "verify-full":
        context = ssl.create_default_context(
            cafile=str(conn.tls_ca_file) if conn.tls_ca_file else None
        )
    else:
        # 'require': encrypt, but do not authenticate the server (libpq's meaning).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _open(conn: Connection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        reader, writer = await asyncio.open_connection(conn.host, conn.port)
    except OSError as e:
        raise UpstreamError(
            "08001", "could not connect to the upstream database", e.strerror or str(e)
        ) from None
    if conn.tls == "disable":
        return reader, writer
    try:
        writer.write(m.ssl_request())
        answer = await reader.readexactly(1)
        if answer != b"S":
            raise UpstreamError(
                "08001",
                "could not connect to the upstream database",
                "server does not support TLS",
            )
        if m.stream_buffer(reader):
            # Bytes after 'S' but before the handshake would be read as if they
            # came over TLS: a man in the middle could forge the whole startup.
            raise UpstreamError(
                "08001",
                "could not establish TLS with the upstream database",
                "received unencrypted data after SSL response",
            )
        await writer.start_tls(
            client_ssl_context(conn), server_hostname=conn.tls_server_name or conn.host
        )
    except UpstreamError:
        writer.close()
        raise
    except (ssl.SSLError, OSError, asyncio.IncompleteReadError) as e:
        writer.close()
        raise UpstreamError(
            "08001", "could not establish TLS with the upstream database", str(e)
        ) from None
    except BaseException:
        writer.close()  # cancelled (timeout, shutdown): never leak the socket
        raise
    return reader, writer


async def connect(conn: Connection, client_params: dict[str, str], secret: str | None) -> Upstream:
    """Open, authenticate, and read the startup answer up to ReadyForQuery."""
    reader, writer = await _open(conn)
    upstream = Upstream(reader, writer)
    try:
        params = {**client_params, **conn.options, "user": conn.user, "database": conn.database}
        writer.write(encode_startup(params))
        await _authenticate(upstream, conn, secret)
        await _read_until_ready(upstream)
    except asyncio.IncompleteReadError:
        writer.close()
        raise UpstreamError(
            "08006", "the upstream database closed the connection during startup"
        ) from None
    except m.ProtocolViolation as e:
        writer.close()
        raise UpstreamError("08P01", "protocol error from the upstream database", str(e)) from None
    except BaseException:
        writer.close()
        raise
    return upstream


_METHODS = {m.AUTH_CLEARTEXT: "password", m.AUTH_MD5: "md5", m.AUTH_SASL: "scram-sha-256"}


def _method_refused(conn: Connection, method: str) -> UpstreamError:
    # Like libpq's require_auth: a server (or a man in the middle) must not be
    # able to talk the gateway down to a weaker method and collect the secret.
    return UpstreamError(
        "08004",
        "the upstream database asked for an authentication method this connection does not allow",
        f"{method} not in require_auth {list(conn.require_auth)}",
    )


def _require_secret(conn: Connection, secret: str | None) -> str:
    if secret is None:
        raise UpstreamError(
            "08004",
            "the upstream database asked for a password the gateway does not have",
            f"no password configured for user {conn.user}",
        )
    return secret


def _refused(fields: dict[str, str]) -> UpstreamError:
    # The upstream's own words may name its user or method: keep them in the log.
    return UpstreamError(
        "08004",
        "the gateway could not authenticate to the upstream database",
        f"{fields.get('C', '')} {fields.get('M', '')}".strip(),
    )


async def _authenticate(upstream: Upstream, conn: Connection, secret: str | None) -> None:
    reader, writer = upstream.reader, upstream.writer
    scram: ScramClient | None = None
    code_seen: int | None = None
    while True:
        msg = await m.read_message(reader, _MAX_STARTUP_MESSAGE)
        if msg.type == m.ERROR_RESPONSE:
            raise _refused(dict(decode_fields(msg.raw)))
        if msg.type == m.NEGOTIATE_PROTOCOL_VERSION:
            continue  # we asked for 3.0 with no options; nothing to adapt
        if msg.type != m.AUTHENTICATION or len(msg.body) < 4:
            raise m.ProtocolViolation(f"unexpected message {chr(msg.type)!r} during authentication")
        (code,) = struct.unpack_from("!I", msg.body)
        if code == m.AUTH_OK:
            if scram is not None and not scram.verified:
                # Skipping SASLFinal would skip the proof that the server knows
                # the password: that server is not the one we meant.
                raise m.ProtocolViolation("server ended SCRAM before proving its identity")
            if code_seen is None and "trust" not in conn.require_auth:
                raise _method_refused(conn, "trust (no authentication)")
            return
        code_seen = code
        method = _METHODS.get(code)
        if method is not None and method not in conn.require_auth:
            raise _method_refused(conn, method)
        if code == m.AUTH_CLEARTEXT:
            writer.write(m.build(m.PASSWORD_MESSAGE, m.cstring(_require_secret(conn, secret))))
        elif code == m.AUTH_MD5:
            salt = msg.body[4:8]
            if len(salt) != 4:
                raise m.ProtocolViolation("MD5 salt missing")
            response = md5_password(_require_secret(conn, secret), conn.user, salt)
            writer.write(m.build(m.PASSWORD_MESSAGE, response + b"\0"))
        elif code == m.AUTH_SASL:
            mechanisms = [x.decode("ascii", "replace") for x in m.split_cstrings(msg.body[4:]) if x]
            scram = _start_scram(upstream, conn, _require_secret(conn, secret), mechanisms)
            first = scram.client_first()
            body = m.cstring(scram.mechanism) + struct.pack("!i", len(first)) + first
            writer.write(m.build(m.PASSWORD_MESSAGE, body))
        elif code == m.AUTH_SASL_CONTINUE and scram is not None:
            writer.write(m.build(m.PASSWORD_MESSAGE, scram.client_final(msg.body[4:])))
        elif code == m.AUTH_SASL_FINAL and scram is not None:
            scram.verify_server_final(msg.body[4:])
        else:
            raise UpstreamError(
                "08004",
                "the upstream database asked for an authentication method the gateway lacks",
                f"authentication request code {code}",
            )


def _start_scram(
    upstream: Upstream, conn: Connection, secret: str, mechanisms: list[str]
) -> ScramClient:
    ssl_object = upstream.writer.get_extra_info("ssl_object")
    if MECHANISM_PLUS in mechanisms and ssl_object is not None:
        certificate = ssl_object.getpeercert(binary_form=True)
        if certificate:
            # Channel binding ties the SCRAM exchange to this TLS session, so a
            # man in the middle with its own certificate cannot relay it.
            return ScramClient(secret, tls_server_end_point(certificate))
    if MECHANISM not in mechanisms:
        raise UpstreamError(
            "08004",
            "the upstream database asked for an authentication method the gateway lacks",
            f"SASL mechanisms {mechanisms}",
        )
    return ScramClient(secret)


async def _read_until_ready(upstream: Upstream) -> None:
    while True:
        msg = await m.read_message(upstream.reader, _MAX_STARTUP_MESSAGE)
        if msg.type == m.PARAMETER_STATUS:
            parts = m.split_cstrings(msg.body)
            if len(parts) != 2:
                raise m.ProtocolViolation("malformed ParameterStatus")
            upstream.parameters[parts[0].decode("utf-8", "replace")] = parts[1].decode(
                "utf-8", "replace"
            )
            upstream.parameter_messages.append(msg.raw)
        elif msg.type == m.BACKEND_KEY_DATA:
            if len(msg.body) < 8:
                raise m.ProtocolViolation("malformed BackendKeyData")
            upstream.pid, upstream.secret = struct.unpack_from("!iI", msg.body)
        elif msg.type == m.NOTICE_RESPONSE:
            upstream.notices.append(msg.raw)
        elif msg.type == m.ERROR_RESPONSE:
            raise UpstreamRefused(dict(decode_fields(msg.raw)), msg.raw)
        elif msg.type == m.READY_FOR_QUERY:
            return
        else:
            raise m.ProtocolViolation(f"unexpected message {chr(msg.type)!r} during startup")


async def send_cancel(conn: Connection, pid: int, secret: int) -> None:
    """Forward a cancel to the upstream backend (a fresh connection, as the
    protocol requires); the server never answers it."""
    reader, writer = await _open(conn)
    try:
        writer.write(m.cancel_request(pid, secret))
        await writer.drain()
        # Wait for the server to close, so the cancel is delivered before we return.
        await asyncio.wait_for(reader.read(1), timeout=5)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


class QueryFailed(UpstreamError):
    """A query the gateway itself ran upstream failed."""


async def fetch_rows(upstream: Upstream, sql: str, max_message: int) -> list[list[bytes | None]]:
    """Run one query of the gateway's own on an idle upstream session (before
    the relay starts) and return its rows in text format. The session ends
    up idle again; nothing of this reaches the client."""
    upstream.writer.write(m.build(m.QUERY, m.cstring(sql)))
    rows: list[list[bytes | None]] = []
    error: dict[str, str] | None = None
    while True:
        msg = await m.read_message(upstream.reader, max_message)
        if msg.type == m.DATA_ROW:
            rows.append(decode_data_row(msg.raw))
        elif msg.type == m.ERROR_RESPONSE:
            error = dict(decode_fields(msg.raw))
        elif msg.type == m.READY_FOR_QUERY:
            break
        elif msg.type == m.NOTICE_RESPONSE:
            upstream.notices.append(msg.raw)
    if error is not None:
        raise QueryFailed(
            error.get("C", "XX000"),
            "the gateway could not read the upstream catalog",
            error.get("M", ""),
        )
    return rows
