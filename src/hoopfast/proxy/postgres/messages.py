"""Builders and stream readers for the PostgreSQL messages the gateway itself
speaks during the startup phase (not on the per-row hot path, which belongs to
:mod:`hoopfast.core`).

Reference: PostgreSQL documentation, "Frontend/Backend Protocol", chapters
"Message Flow" and "Message Formats".
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from hoopfast import core
from hoopfast.core._trail import parse_bind as _parse_bind

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Authentication request codes ('R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# Backend message types the startup phases look at.
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
NOTIFICATION_RESPONSE = ord("A")
# Frontend message types.
PASSWORD_MESSAGE = ord("p")
TERMINATE = ord("X")
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
FUNCTION_CALL = ord("F")
DESCRIBE = ord("D")  # from the client; from the server "D" is DataRow
EXECUTE = ord("E")  # from the client; from the server "E" is ErrorResponse
SYNC = ord("S")  # from the client; from the server "S" is ParameterStatus
CLOSE = ord("C")  # from the client; from the server "C" is CommandComplete
# From the server, during the relay.
DATA_ROW = ord("D")
ROW_DESCRIPTION = ord("T")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
NO_DATA = ord("n")
COMMAND_COMPLETE = ord("C")
EMPTY_QUERY = ord("I")
PORTAL_SUSPENDED = ord("s")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
COPY_DATA = ord("d")
COPY_DONE = ord("c")

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection cannot continue."""


@dataclass(frozen=True)
class Message:
    type: int
    body: bytes

    @property
    def raw(self) -> bytes:
        return _HEADER.pack(bytes((self.type,)), len(self.body) + 4) + self.body


def build(type_code: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(bytes((type_code,)), len(body) + 4) + body


def cstring(value: str) -> bytes:
    encoded = value.encode("utf-8")
    if b"\0" in encoded:
        raise ValueError("NUL byte in a protocol string")
    return encoded + b"\0"


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    position: int = 0,
    kind: int = ERROR_RESPONSE,
) -> bytes:
    """An ErrorResponse (or NoticeResponse with ``kind='N'``) as PostgreSQL
    would send it: localized and non-localized severity, SQLSTATE, message."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    if position:
        fields.append(("P", str(position)))
    return core.encode_fields(kind, [(k, v.replace("\0", "")) for k, v in fields])


def fatal(
    sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
) -> bytes:
    return error_response("FATAL", sqlstate, message, detail=detail, hint=hint)


def authentication(code: int, extra: bytes = b"") -> bytes:
    return build(AUTHENTICATION, _INT32.pack(code) + extra)


def backend_key_data(pid: int, secret: int) -> bytes:
    return build(BACKEND_KEY_DATA, struct.pack("!iI", pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return build(READY_FOR_QUERY, status)


def negotiate_protocol_version(newest: int, unrecognized: list[str]) -> bytes:
    """``newest`` is a whole version number (3 << 16 | minor): the docs call the
    field "newest minor version", but PostgreSQL sends PG_PROTOCOL_LATEST and
    libpq (18) compares it as a whole version."""
    body = _INT32.pack(newest) + _INT32.pack(len(unrecognized))
    return build(NEGOTIATE_PROTOCOL_VERSION, body + b"".join(cstring(o) for o in unrecognized))


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIiI", 16, CANCEL_REQUEST, pid, secret)


def stream_buffer(reader: asyncio.StreamReader) -> bytearray:
    """What a StreamReader has received but not handed out yet. There is no
    public accessor; the startup phases need it to refuse bytes pipelined
    before a TLS handshake and to hand leftovers to the relay."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return buffer


async def read_startup_packet(
    reader: asyncio.StreamReader, max_length: int, first: bytes = b""
) -> bytes:
    """One startup-phase packet (no type byte), header included, ``first``
    its start if already read. The length is checked *before* anything is
    allocated for the body: this runs before authentication, so the cap is
    tight."""
    header = first + await reader.readexactly(4 - len(first))
    (length,) = _INT32.unpack(header)
    if length < 8 or length > max_length:
        raise ProtocolViolation(f"invalid length of startup packet: {length}")
    return header + await reader.readexactly(length - 4)


async def read_message(reader: asyncio.StreamReader, max_length: int) -> Message:
    """One typed message. Never trust a length prefix."""
    header = await reader.readexactly(5)
    type_code = header[0]
    (length,) = _INT32.unpack_from(header, 1)
    if length < 4 or length > max_length:
        raise ProtocolViolation(f"invalid message length {length} for type {chr(type_code)!r}")
    return Message(type_code, await reader.readexactly(length - 4))


def split_cstrings(body: bytes) -> list[bytes]:
    """NUL-terminated strings back to back; the last must be terminated."""
    if body and not body.endswith(b"\0"):
        raise ProtocolViolation("unterminated string")
    return body.split(b"\0")[:-1] if body else []


@dataclass(frozen=True, slots=True)
class Bind:
    """A client Bind message, read."""

    portal: bytes
    statement: bytes
    #: Per parameter: its format code (0 text, 1 binary) and its raw value
    #: (None for NULL).
    values: list[tuple[int, bytes | None]]
    result_formats: list[int]
    #: The bytes of the parameter formats and values, as sent.
    values_section: bytes


def parse_bind(message: bytes) -> Bind:
    """Read a whole Bind message; ValueError when it is malformed (the
    reading is the trail's, hoopfast.core._trail.parse_bind)."""
    return Bind(*_parse_bind(message))
