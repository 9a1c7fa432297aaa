"""Phase 1 of a client session: the startup packet, TLS, and authentication
of the person by token.

PostgreSQL's "Start-up" message flow: the client may send SSLRequest and/or
GSSENCRequest first (each answered by one byte), then a StartupMessage or a
CancelRequest. The gateway then asks for a cleartext password, which is the
person's token.

Or, as PostgreSQL 17 allows (libpq's ``sslnegotiation=direct``), the client
starts the TLS handshake at once, without SSLRequest: its first byte is a
TLS handshake record's (22, which no startup packet's length starts with:
that would be over 350 MB). As PostgreSQL does, such a client must name
the protocol by ALPN ("postgresql"), so that a TLS connection meant for
another service is not read as PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from dataclasses import dataclass
from typing import cast

from hoopfast.core import decode_startup
from hoopfast.identity.principal import Principal
from hoopfast.identity.tokens import MAX_TOKEN_LENGTH, TokenError, TokenValidator
from hoopfast.proxy.postgres import messages as m


class StartupRefused(Exception):
    """Startup cannot continue; ``message`` is the ErrorResponse to send
    (or None when the client is not owed one)."""

    def __init__(self, message: bytes | None, log_reason: str) -> None:
        self.message = message
        super().__init__(log_reason)


@dataclass(frozen=True)
class StartupRequest:
    params: dict[str, str]
    tls: bool

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params.get("database") or self.params["user"]


@dataclass(frozen=True)
class CancelTarget:
    pid: int
    secret: bytes


async def negotiate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ssl_context: ssl.SSLContext | None,
    max_packet: int,
) -> StartupRequest | CancelTarget:
    tls = False
    negotiated: set[int] = set()
    first = await reader.readexactly(1)
    if first[0] == _TLS_HANDSHAKE:
        if ssl_context is None:
            raise StartupRefused(None, "direct TLS handshake, and TLS is not configured")
        await _direct_tls(reader, writer, ssl_context, first)
        tls = True
        first = b""
    while True:
        packet = await m.read_startup_packet(reader, max_packet, first)
        first = b""
        try:
            code, params = decode_startup(packet)
        except ValueError as e:
            raise m.ProtocolViolation(f"malformed startup packet: {e}") from None
        if code in (m.SSL_REQUEST, m.GSSENC_REQUEST):
            # Each may be asked once (libpq tries GSSENC, then SSL); a client
            # repeating them would only keep a connection slot busy.
            if code in negotiated or tls:
                raise m.ProtocolViolation("unexpected encryption negotiation request")
            negotiated.add(code)

        if code == m.SSL_REQUEST:
            if ssl_context is None:
                writer.write(b"N")
                continue
            if m.stream_buffer(reader):
                # Bytes sent after SSLRequest but before the handshake would be
                # taken as if they came over TLS (CVE-2021-23214): refuse.
                raise m.ProtocolViolation("received unencrypted data after SSL request")
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(ssl_context)
            if m.stream_buffer(reader):
                raise m.ProtocolViolation("received unencrypted data after SSL request")
            tls = True
        elif code == m.GSSENC_REQUEST:
            writer.write(b"N")  # GSSAPI encryption is not offered; clients fall back
        elif code == m.CANCEL_REQUEST:
            return CancelTarget(int(params["pid"]), bytes.fromhex(params["secret"]))
        elif code >> 16 == 3:
            return await _startup(writer, code, params, tls)
        else:
            raise StartupRefused(
                m.fatal(
                    "0A000",
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "server supports 3.0 to 3.0",
                ),
                f"protocol {code >> 16}.{code & 0xFFFF}",
            )


#: The first byte of a TLS handshake record (RFC 8446, 5.1).
_TLS_HANDSHAKE = 22
#: The ALPN protocol name PostgreSQL 17 registered.
ALPN = "postgresql"


async def _direct_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ssl_context: ssl.SSLContext,
    first: bytes,
) -> None:
    """The server side of a TLS handshake the client began without an
    SSLRequest (``first`` and what the reader holds are its start), with
    ALPN "postgresql" required. StreamWriter.start_tls (and the loop's)
    cannot be handed bytes already received, so this builds asyncio's TLS
    protocol itself, as BaseEventLoop.start_tls does, and feeds them to it.
    (The connection's TLS then runs in asyncio's Python implementation,
    not uvloop's.)"""
    received = first + bytes(m.stream_buffer(reader))
    m.stream_buffer(reader).clear()
    loop = asyncio.get_running_loop()
    transport = cast(asyncio.Transport, writer.transport)
    protocol = transport.get_protocol()
    waiter = loop.create_future()
    tls = sslproto.SSLProtocol(
        loop, protocol, ssl_context, waiter, server_side=True, call_connection_made=False
    )
    transport.pause_reading()
    transport.set_protocol(tls)
    tls.connection_made(transport)
    view = memoryview(received)
    while view:
        buffer = tls.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]
    transport.resume_reading()
    try:
        await waiter
        if tls._app_transport is None or transport.is_closing():
            # (The gateway closed it meanwhile, shutting down: the waiter
            # is then told of no error.)
            raise ConnectionResetError("the connection closed during the TLS handshake")
    except BaseException:
        transport.close()
        # A handshake that did not finish tells the stream nothing: its
        # session would wait for the close it never hears of.
        protocol.connection_lost(None)
        raise
    # As StreamWriter.start_tls ends.
    writer._transport = tls._app_transport  # type: ignore[attr-defined]
    protocol._replace_writer(writer)  # type: ignore[attr-defined]
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
        raise StartupRefused(
            m.fatal(
                "08P01",
                "received direct SSL connection request without ALPN protocol "
                f'negotiation extension (the protocol must be named "{ALPN}")',
            ),
            "direct TLS without ALPN",
        )


async def _startup(
    writer: asyncio.StreamWriter, code: int, params: dict[str, str], tls: bool
) -> StartupRequest:
    # Protocol options (_pq_.*) and minor versions above 0 are negotiated down
    # rather than refused, as PostgreSQL does.
    options = sorted(k for k in params if k.startswith("_pq_."))
    if code & 0xFFFF or options:
        writer.write(m.negotiate_protocol_version(m.PROTOCOL_3_0, options))
    params = {k: v for k, v in params.items() if not k.startswith("_pq_.")}
    if not params.get("user"):
        raise StartupRefused(
            m.fatal("28000", "no PostgreSQL user name specified in startup packet"), "no user"
        )
    if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise StartupRefused(
            m.fatal("42501", "replication connections are not allowed through the gateway"),
            "replication requested",
        )
    return StartupRequest(params, tls)


async def authenticate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: StartupRequest,
    validator: TokenValidator,
    allow_cleartext_without_tls: bool,
) -> Principal:
    if not request.tls and not allow_cleartext_without_tls:
        raise StartupRefused(
            m.fatal(
                "28000",
                "the gateway requires TLS: the password is a bearer token",
                hint="Connect with sslmode=require (or verify-full).",
            ),
            "cleartext token without TLS refused",
        )
    writer.write(m.authentication(m.AUTH_CLEARTEXT))
    msg = await m.read_message(reader, MAX_TOKEN_LENGTH + 64)
    if msg.type != m.PASSWORD_MESSAGE:
        raise m.ProtocolViolation(f"expected password response, got message type {chr(msg.type)!r}")
    token = msg.body.rstrip(b"\0").decode("utf-8", "replace").strip()
    try:
        return validator.validate(token)
    except TokenError as e:
        raise StartupRefused(
            m.fatal(
                "28P01",
                f'password authentication failed for user "{request.user}": '
                f"token rejected ({e.category})",
            ),
            f"token rejected: {e}",
        ) from None
