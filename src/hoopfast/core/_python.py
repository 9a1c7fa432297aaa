"""The pure-Python reference implementation of the hot-path core.

It implements exactly the contract of :mod:`hoopfast.core.abc`, with the same
behaviour and the same output bytes as the compiled ``hoopfast_core`` (Rust);
the tests run both side by side and compare them.

Wire format (PostgreSQL protocol 3.x): after the startup phase every message is
a 1-byte type code, a big-endian Int32 length that counts itself and the
payload (not the type byte), then the payload.
"""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Mapping

IMPLEMENTATION = "python"

# Message type codes handled by the codec.
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
DATA_ROW = ord("D")
ROW_DESCRIPTION = ord("T")

# Startup-phase request codes.
PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_MAJOR_3 = 3
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

INT32_MAX = 0x7FFFFFFF
UINT32_MAX = 0xFFFFFFFF
INT16_MAX = 0x7FFF
CANCEL_SECRET_MIN = 4
CANCEL_SECRET_MAX = 256

_HEADER = struct.Struct("!Bi")  # type byte, signed Int32 length
_header_from = _HEADER.unpack_from
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FIELD_TAIL = struct.Struct("!IhIhih")  # table oid, attnum, type oid, typlen, typmod, format
_FIELD_TAIL_SIZE = _FIELD_TAIL.size  # 18
_STARTUP_HEAD = struct.Struct("!iI")  # length, code

_BROKEN = "framer is broken by an earlier framing error"
_DECIMAL = re.compile(r"-?[0-9]+")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class FramingError(ValueError):
    """A message header with an impossible length; the stream cannot be framed."""


def _type_name(code: int) -> str:
    """How a type byte is shown in error messages: 'Q' if printable, else 0x00."""
    if 0x21 <= code <= 0x7E:
        return f"'{chr(code)}'"
    return f"0x{code:02x}"


def _bad_length(code: int, length: int, max_length: int) -> str:
    return f"invalid message length {length} for type {_type_name(code)} (allowed 4..{max_length})"


def _intercept_table(types: bytes) -> bytes:
    if not isinstance(types, bytes):
        raise TypeError(f"intercept must be bytes, not {type(types).__name__}")
    table = bytearray(256)
    for code in types:
        table[code] = 1
    return bytes(table)


class Framer:
    """Incremental framer for one direction of a post-startup message stream.

    Pass-through messages are forwarded as soon as their bytes arrive; only a
    partial 5-byte header (until its type and length are known) and
    intercepted messages (until complete) are held.
    """

    __slots__ = (
        "_broken",
        "_header",
        "_held",
        "_held_type",
        "_intercept",
        "_max_length",
        "_messages",
        "_remaining",
    )

    def __init__(self, max_length: int, intercept: bytes = b"") -> None:
        max_length = operator.index(max_length)
        if not 4 <= max_length <= INT32_MAX:
            raise ValueError(f"max_length must be between 4 and {INT32_MAX}, not {max_length}")
        self._max_length = max_length
        self._intercept = _intercept_table(intercept)
        self._header = b""  # a partial header (1..4 bytes) from earlier chunks
        self._remaining = 0  # payload bytes of the current message still to come
        self._held: bytearray | None = None  # the intercepted message being collected
        self._held_type = 0
        self._messages = 0
        self._broken = False

    def set_intercept(self, types: bytes) -> None:
        self._intercept = _intercept_table(types)

    @property
    def buffered(self) -> int:
        held = self._held
        return len(self._header) + (len(held) if held is not None else 0)

    @property
    def messages(self) -> int:
        return self._messages

    @property
    def at_boundary(self) -> bool:
        return not self._broken and not self._remaining and not self._header and self._held is None

    def _fail(self, messages: int, code: int, length: int) -> FramingError:
        self._broken = True
        self._header = b""
        self._held = None
        self._remaining = 0
        self._messages = messages
        return FramingError(_bad_length(code, length, self._max_length))

    def feed(self, data: bytes) -> list[bytes | tuple[int, bytes]]:
        if self._broken:
            raise FramingError(_BROKEN)
        if not isinstance(data, bytes):
            raise TypeError(f"feed() needs bytes, not {type(data).__name__}")
        n = len(data)
        out: list[bytes | tuple[int, bytes]] = []
        if not n:
            return out
        append = out.append
        intercept = self._intercept
        max_length = self._max_length
        messages = self._messages
        remaining = self._remaining
        held = self._held
        pos = 0
        run = -1  # start in data of the pending pass-through run, -1 for none
        prefix = b""  # header bytes from earlier chunks that start the pending run

        if self._header:
            # Complete the header held from earlier chunks first.
            old = self._header
            head = old + data[: 5 - len(old)]
            if len(head) < 5:
                self._header = head
                return out
            self._header = b""
            pos = 5 - len(old)
            code, length = _header_from(head)
            if length < 4 or length > max_length:
                raise self._fail(messages, code, length)
            remaining = length - 4
            if intercept[code]:
                if remaining:
                    held = bytearray(head)
                    self._held_type = code
                else:
                    messages += 1
                    append((code, head))
            else:
                prefix = old
                run = 0
                if not remaining:
                    messages += 1

        while pos < n:
            if remaining:
                # Inside a message body that began in an earlier chunk or header.
                avail = n - pos
                take = remaining if remaining < avail else avail
                if held is None:
                    if run < 0:
                        run = pos
                    pos += take
                    remaining -= take
                    if not remaining:
                        messages += 1
                else:
                    held += data[pos : pos + take]
                    pos += take
                    remaining -= take
                    if not remaining:
                        messages += 1
                        append((self._held_type, bytes(held)))
                        held = None
                continue
            if n - pos < 5:
                self._header = data[pos:]
                break
            code, length = _header_from(data, pos)
            if length < 4 or length > max_length:
                raise self._fail(messages, code, length)
            if intercept[code]:
                if run >= 0:
                    append(prefix + data[run:pos] if prefix else data[run:pos])
                    run = -1
                    prefix = b""
                end = pos + 1 + length
                if end <= n:
                    append((code, data[pos:end]))
                    messages += 1
                    pos = end
                else:
                    held = bytearray(data[pos:])
                    self._held_type = code
                    remaining = end - n
                    pos = n
            else:
                if run < 0:
                    run = pos
                pos += 5
                remaining = length - 4
                if not remaining:
                    messages += 1

        if run >= 0:
            if prefix:
                append(prefix + data[run:pos])
            elif run == 0 and pos == n:
                append(data)  # the whole chunk passes through: no copy
            else:
                append(data[run:pos])
        self._messages = messages
        self._remaining = remaining
        self._held = held
        return out


# --------------------------------------------------------------------------
# Codec helpers


def _body(message: bytes, expected: tuple[int, ...], what: str) -> memoryview:
    """Check type byte and declared length of a whole message; return its payload."""
    if not isinstance(message, bytes):
        raise TypeError(f"{what} message must be bytes, not {type(message).__name__}")
    if len(message) < 5:
        raise ValueError(f"{what} message too short: {len(message)} bytes")
    if message[0] not in expected:
        raise ValueError(f"not a {what} message: type {_type_name(message[0])}")
    (length,) = _I32.unpack_from(message, 1)
    if length != len(message) - 1:
        raise ValueError(
            f"{what} length {length} does not match the {len(message) - 1} bytes given"
        )
    return memoryview(message)[5:]


def _frame(code: int, payload: bytes, what: str) -> bytes:
    length = len(payload) + 4
    if length > INT32_MAX:
        raise ValueError(f"{what} message too long: {length} bytes")
    return bytes((code,)) + length.to_bytes(4, "big") + payload


def _decode(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace")


def _encode_cstring(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"{what} must not contain NUL")
    return raw


def _int_in(value: int, low: int, high: int, what: str) -> int:
    value = operator.index(value)
    if not low <= value <= high:
        raise ValueError(f"{what} {value} out of range {low}..{high}")
    return value


# --------------------------------------------------------------------------
# ErrorResponse / NoticeResponse


def decode_fields(message: bytes) -> list[tuple[str, str]]:
    body = bytes(_body(message, (ERROR_RESPONSE, NOTICE_RESPONSE), "ErrorResponse/Notice"))
    fields: list[tuple[str, str]] = []
    pos = 0
    n = len(body)
    while True:
        if pos >= n:
            raise ValueError("ErrorResponse/Notice fields lack their terminator")
        code = body[pos]
        if not code:
            if pos + 1 != n:
                raise ValueError("trailing bytes after ErrorResponse/Notice fields")
            return fields
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise ValueError("unterminated ErrorResponse/Notice field")
        fields.append((chr(code), body[pos + 1 : end].decode("utf-8", "replace")))
        pos = end + 1


def encode_fields(kind: int, fields: list[tuple[str, str]]) -> bytes:
    kind = operator.index(kind)
    if kind not in (ERROR_RESPONSE, NOTICE_RESPONSE):
        raise ValueError(f"kind must be ord('E') or ord('N'), not {kind}")
    parts: list[bytes] = []
    for code, value in fields:
        if not isinstance(code, str) or not isinstance(value, str):
            raise TypeError("fields must be (str, str) pairs")
        if len(code) != 1 or not 1 <= ord(code) <= 0xFF:
            raise ValueError(f"field code must be one character in U+0001..U+00FF: {code!r}")
        parts.append(bytes((ord(code),)))
        parts.append(_encode_cstring(value, "field value"))
        parts.append(b"\0")
    parts.append(b"\0")
    return _frame(kind, b"".join(parts), "ErrorResponse/Notice")


# --------------------------------------------------------------------------
# DataRow


def decode_data_row(message: bytes) -> list[bytes | None]:
    body = _body(message, (DATA_ROW,), "DataRow")
    n = len(body)
    if n < 2:
        raise ValueError("DataRow lacks its column count")
    (count,) = _I16.unpack_from(body, 0)
    if count < 0:
        raise ValueError(f"negative DataRow column count {count}")
    values: list[bytes | None] = []
    append = values.append
    unpack = _I32.unpack_from
    pos = 2
    for _ in range(count):
        if n - pos < 4:
            raise ValueError("DataRow truncated in a column length")
        (size,) = unpack(body, pos)
        pos += 4
        if size < 0:
            if size != -1:
                raise ValueError(f"invalid DataRow column length {size}")
            append(None)
            continue
        if n - pos < size:
            raise ValueError("DataRow truncated in a column value")
        append(bytes(body[pos : pos + size]))
        pos += size
    if pos != n:
        raise ValueError(f"{n - pos} trailing bytes after DataRow columns")
    return values


def encode_data_row(values: list[bytes | None]) -> bytes:
    values = list(values)
    if len(values) > INT16_MAX:
        raise ValueError(f"too many DataRow columns: {len(values)}")
    parts = [len(values).to_bytes(2, "big")]
    append = parts.append
    for value in values:
        if value is None:
            append(b"\xff\xff\xff\xff")
        elif isinstance(value, bytes):
            if len(value) > INT32_MAX:
                raise ValueError("DataRow column value too long")
            append(len(value).to_bytes(4, "big"))
            append(value)
        else:
            raise TypeError(f"DataRow values must be bytes or None, not {type(value).__name__}")
    return _frame(DATA_ROW, b"".join(parts), "DataRow")


# --------------------------------------------------------------------------
# RowDescription


def decode_row_description(
    message: bytes,
) -> list[tuple[bytes, int, int, int, int, int, int]]:
    body = bytes(_body(message, (ROW_DESCRIPTION,), "RowDescription"))
    n = len(body)
    if n < 2:
        raise ValueError("RowDescription lacks its field count")
    (count,) = _I16.unpack_from(body, 0)
    if count < 0:
        raise ValueError(f"negative RowDescription field count {count}")
    fields: list[tuple[bytes, int, int, int, int, int, int]] = []
    pos = 2
    for _ in range(count):
        end = body.find(b"\0", pos)
        if end < 0:
            raise ValueError("unterminated RowDescription field name")
        name = body[pos:end]
        pos = end + 1
        if n - pos < _FIELD_TAIL_SIZE:
            raise ValueError("RowDescription truncated in a field")
        fields.append((name, *_FIELD_TAIL.unpack_from(body, pos)))
        pos += _FIELD_TAIL_SIZE
    if pos != n:
        raise ValueError(f"{n - pos} trailing bytes after RowDescription fields")
    return fields


def encode_row_description(
    fields: list[tuple[bytes, int, int, int, int, int, int]],
) -> bytes:
    fields = list(fields)
    if len(fields) > INT16_MAX:
        raise ValueError(f"too many RowDescription fields: {len(fields)}")
    parts = [len(fields).to_bytes(2, "big")]
    for field in fields:
        if len(field) != 7:
            raise ValueError("a RowDescription field is a 7-tuple")
        name, table_oid, attnum, type_oid, typlen, typmod, fmt = field
        if not isinstance(name, bytes):
            raise TypeError(f"field name must be bytes, not {type(name).__name__}")
        if b"\0" in name:
            raise ValueError("field name must not contain NUL")
        parts.append(name)
        parts.append(b"\0")
        parts.append(
            _FIELD_TAIL.pack(
                _int_in(table_oid, 0, UINT32_MAX, "table oid"),
                _int_in(attnum, -0x8000, INT16_MAX, "column attnum"),
                _int_in(type_oid, 0, UINT32_MAX, "type oid"),
                _int_in(typlen, -0x8000, INT16_MAX, "type size"),
                _int_in(typmod, -0x80000000, INT32_MAX, "type modifier"),
                _int_in(fmt, -0x8000, INT16_MAX, "format code"),
            )
        )
    return _frame(ROW_DESCRIPTION, b"".join(parts), "RowDescription")


# --------------------------------------------------------------------------
# Startup-phase packets


def decode_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    if not isinstance(packet, bytes):
        raise TypeError(f"startup packet must be bytes, not {type(packet).__name__}")
    if len(packet) < 8:
        raise ValueError(f"startup packet too short: {len(packet)} bytes")
    length, code = _STARTUP_HEAD.unpack_from(packet, 0)
    if length != len(packet):
        raise ValueError(
            f"startup packet length {length} does not match the {len(packet)} bytes given"
        )
    body = packet[8:]
    if code >> 16 == PROTOCOL_MAJOR_3:
        params: dict[str, str] = {}
        pos = 0
        n = len(body)
        while True:
            if pos >= n:
                raise ValueError("startup parameters lack their terminator")
            if not body[pos]:
                if pos + 1 != n:
                    raise ValueError("trailing bytes after startup parameters")
                return code, params
            key_end = body.find(b"\0", pos)
            value_end = body.find(b"\0", key_end + 1) if key_end >= 0 else -1
            if value_end < 0:
                raise ValueError("unterminated startup parameter")
            params[body[pos:key_end].decode("utf-8", "replace")] = body[
                key_end + 1 : value_end
            ].decode("utf-8", "replace")
            pos = value_end + 1
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if body:
            raise ValueError("SSLRequest/GSSENCRequest carries no body")
        return code, {}
    if code == CANCEL_REQUEST_CODE:
        if not 4 + CANCEL_SECRET_MIN <= len(body) <= 4 + CANCEL_SECRET_MAX:
            raise ValueError(f"CancelRequest body of {len(body)} bytes")
        (pid,) = _I32.unpack_from(body, 0)
        return code, {"pid": str(pid), "secret": body[4:].hex()}
    return code, {}


def encode_startup(params: dict[str, str], code: int = PROTOCOL_3_0) -> bytes:
    code = _int_in(code, 0, UINT32_MAX, "startup code")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, not {type(params).__name__}")
    if code >> 16 == PROTOCOL_MAJOR_3:
        parts: list[bytes] = []
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("startup parameters must be str: str")
            if not key:
                raise ValueError("startup parameter name must not be empty")
            parts.append(_encode_cstring(key, "startup parameter name"))
            parts.append(b"\0")
            parts.append(_encode_cstring(value, "startup parameter value"))
            parts.append(b"\0")
        parts.append(b"\0")
        body = b"".join(parts)
    elif code == CANCEL_REQUEST_CODE:
        body = _encode_cancel(params)
    else:
        if params:
            raise ValueError(f"startup code {code} takes no parameters")
        body = b""
    length = len(body) + 8
    if length > INT32_MAX:
        raise ValueError(f"startup packet too long: {length} bytes")
    return _STARTUP_HEAD.pack(length, code) + body


def _encode_cancel(params: Mapping[str, str]) -> bytes:
    if set(params) != {"pid", "secret"}:
        raise ValueError('a CancelRequest takes exactly "pid" and "secret"')
    pid, secret = params["pid"], params["secret"]
    if not isinstance(pid, str) or not isinstance(secret, str):
        raise TypeError("CancelRequest pid and secret must be str")
    if not _DECIMAL.fullmatch(pid) or not -0x80000000 <= int(pid) <= INT32_MAX:
        raise ValueError(f"CancelRequest pid must be a decimal Int32: {pid!r}")
    if not _HEX.fullmatch(secret) or not (
        CANCEL_SECRET_MIN <= len(secret) // 2 <= CANCEL_SECRET_MAX
    ):
        raise ValueError(
            f"CancelRequest secret must be {CANCEL_SECRET_MIN}..{CANCEL_SECRET_MAX} bytes as hex"
        )
    return _I32.pack(int(pid)) + bytes.fromhex(secret)


__all__ = [
    "IMPLEMENTATION",
    "Framer",
    "FramingError",
    "decode_data_row",
    "decode_fields",
    "decode_row_description",
    "decode_startup",
    "encode_data_row",
    "encode_fields",
    "encode_row_description",
    "encode_startup",
]
