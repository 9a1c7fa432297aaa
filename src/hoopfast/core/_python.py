"""The pure-Python reference implementation of the hot-path core.

It implements exactly the contract of :mod:`hoopfast.core.abc`, with the same
behaviour and the same output bytes as the compiled ``hoopfast_core`` (Rust);
the tests run both side by side and compare them.

Wire format (PostgreSQL protocol 3.x): after the startup phase every message is
a 1-byte type code, a big-endian Int32 length that counts itself and the
payload (not the type byte), then the payload.
"""

from __future__ import annotations

import hashlib
import operator
import re
import struct
from collections.abc import Mapping

from hoopfast.core._mask import MaskPlan

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


def _intercept_table(types: bytes, what: str = "intercept") -> bytes:
    if not isinstance(types, bytes):
        raise TypeError(f"{what} must be bytes, not {type(types).__name__}")
    table = bytearray(256)
    for code in types:
        table[code] = 1
    return bytes(table)


#: The merge class of every run type (a batch type's is its code + 1).
_RUN_CLASS = 257
#: The code of an item of several messages of run types (no protocol
#: message has type 0).
RUN_CODE = 0


def _merge_classes(batch: bytes, runs: bytes) -> list[int]:
    """Per type: which adjacent whole messages it merges with, those of its
    nonzero class (a type in runs and batch merges as a run); a run item
    (RUN_CODE) merges with the next run type's message."""
    classes = [_RUN_CLASS if runs[code] else code + 1 if batch[code] else 0 for code in range(256)]
    if any(runs):
        classes[RUN_CODE] = _RUN_CLASS
    return classes


def _batched(head: bytes | bytearray, data: bytes, start: int, end: int) -> bytes:
    """One batch item's message bytes: ``head`` (a message completed in this
    chunk from held bytes, or empty) then the whole messages ``data[start:end]``."""
    if not head:
        return data[start:end]  # the chunk itself when it is all batch
    if start == end:
        return bytes(head)
    return b"".join((head, memoryview(data)[start:end]))


class Framer:
    """Incremental framer for one direction of a post-startup message stream.

    Pass-through messages are forwarded as soon as their bytes arrive; only a
    partial 5-byte header (until its type and length are known) and
    intercepted messages (until complete) are held. Adjacent intercepted
    messages of one ``batch`` type in a chunk come out as one item, sliced
    from the chunk once; so do adjacent ones of any ``runs`` types.
    """

    __slots__ = (
        "_batch",
        "_broken",
        "_header",
        "_held",
        "_held_type",
        "_intercept",
        "_max_length",
        "_merge",
        "_messages",
        "_remaining",
        "_runs",
    )

    def __init__(self, max_length: int, intercept: bytes = b"", batch: bytes = b"") -> None:
        max_length = operator.index(max_length)
        if not 4 <= max_length <= INT32_MAX:
            raise ValueError(f"max_length must be between 4 and {INT32_MAX}, not {max_length}")
        self._max_length = max_length
        self._intercept = _intercept_table(intercept)
        self._batch = _intercept_table(batch, "batch")
        self._runs = _intercept_table(b"", "runs")
        self._merge = _merge_classes(self._batch, self._runs)
        self._header = b""  # a partial header (1..4 bytes) from earlier chunks
        self._remaining = 0  # payload bytes of the current message still to come
        self._held: bytearray | None = None  # the intercepted message being collected
        self._held_type = 0
        self._messages = 0
        self._broken = False

    def set_intercept(self, types: bytes) -> None:
        self._intercept = _intercept_table(types)

    def set_runs(self, types: bytes) -> None:
        self._runs = _intercept_table(types, "runs")
        self._merge = _merge_classes(self._batch, self._runs)

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
        merge = self._merge  # (batch and run types: see _merge_classes)
        max_length = self._max_length
        messages = self._messages
        remaining = self._remaining
        held = self._held
        pos = 0
        run = -1  # start in data of the pending pass-through run, -1 for none
        prefix = b""  # header bytes from earlier chunks that start the pending run
        # The pending batch of whole intercepted messages of type bcode: bhead
        # (a message completed here from held bytes, or empty) then
        # data[brun:pos]; brun is -1 for none. Never pending with a run.
        brun = -1
        bcode = 0
        bhead: bytes | bytearray = b""

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
                    if merge[code]:
                        brun, bcode, bhead = pos, code, head
                    else:
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
                        code = self._held_type
                        if merge[code]:
                            brun, bcode, bhead = pos, code, held
                        else:
                            append((code, bytes(held)))
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
                    messages += 1
                    if brun >= 0:
                        if merge[code] == merge[bcode]:  # extends the pending batch
                            if merge[code] == _RUN_CLASS:
                                bcode = RUN_CODE
                            pos = end
                            continue
                        append((bcode, _batched(bhead, data, brun, pos)))
                        brun = -1
                    if merge[code]:
                        brun, bcode, bhead = pos, code, b""
                    else:
                        append((code, data[pos:end]))
                    pos = end
                else:
                    if brun >= 0:
                        append((bcode, _batched(bhead, data, brun, pos)))
                        brun = -1
                    held = bytearray(data[pos:])
                    self._held_type = code
                    remaining = end - n
                    pos = n
            else:
                if run < 0:
                    if brun >= 0:
                        append((bcode, _batched(bhead, data, brun, pos)))
                        brun = -1
                    run = pos
                pos += 5
                remaining = length - 4
                if not remaining:
                    messages += 1

        if brun >= 0:
            append((bcode, _batched(bhead, data, brun, pos)))
        elif run >= 0:
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


# --------------------------------------------------------------------------
# SQL statement fingerprints

_FP_DOMAIN = b"hoopfast-fingerprint-1\0"  # prefix of the hashed stream; versions the scheme
# Token kinds (one byte each in the hashed stream).
_K_WORD = b"w"  # keyword or unquoted identifier, ASCII-lowercased
_K_QIDENT = b"q"  # quoted identifier, verbatim with its quotes (and U& prefix)
_K_OP = b"o"  # operator or punctuation, verbatim
_K_SEMI = b";"  # statement separator
_K_PARAM = b"p"  # $n, its digits verbatim
_K_VERBATIM = b"v"  # string constant right after UESCAPE, verbatim
_K_UNTERMINATED = b"u"  # unterminated quote or comment: the rest of the input
_K_STR = b"s"  # '...', E'...', U&'...', $tag$...$tag$
_K_NSTR = b"n"  # N'...'
_K_BSTR = b"b"  # B'...'
_K_XSTR = b"x"  # X'...'
_K_INT4 = b"i"  # integer constant that fits int4
_K_INT8 = b"l"  # integer constant that fits int8
_K_NUMERIC = b"d"  # any other numeric constant
_INT4_MAX = 0x7FFFFFFF
_INT8_MAX = 0x7FFFFFFFFFFFFFFF

_SPACE = frozenset(b" \t\n\r\f\v")
_OP_CHARS = frozenset(b"~!@#^&|`?+-*/%<>=")
_DIGITS = frozenset(b"0123456789")
_IDENT_START = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_" + bytes(range(0x80, 0x100))
)
_WS_RUN = re.compile(rb"[ \t\n\r\f\v]+")
_LINE_COMMENT = re.compile(rb"--[^\n\r]*")
_IDENT = re.compile(rb"[A-Za-z_\x80-\xff][A-Za-z_0-9$\x80-\xff]*")
_OPERATOR = re.compile(rb"(?:[~!@#^&|`?+*%<>=]|-(?!-)|/(?!\*))+")
_DECINTEGER = re.compile(rb"[0-9](?:_?[0-9])*")
_RADIX_INTEGER = re.compile(rb"0(?:[xX](?:_?[0-9a-fA-F])+|[oO](?:_?[0-7])+|[bB](?:_?[01])+)")
_EXPONENT = re.compile(rb"[eE][-+]?[0-9](?:_?[0-9])*")
_PARAM = re.compile(rb"\$([0-9]+)")
_DOLLAR_DELIM = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z_0-9\x80-\xff]*)?\$")
# The rest of a quoted body up to its closing quote (possessive: no backtracking
# into a doubled quote, so "'ab''" stays unterminated).
_PLAIN_BODY = re.compile(rb"(?:[^']++|'')*+'")
_ESCAPE_BODY = re.compile(rb"(?:[^'\\]++|''|\\.)*+'", re.DOTALL)
_QIDENT_BODY = re.compile(rb'(?:[^"]++|"")*+"')
# Between two string constants that PostgreSQL joins into one ("quote continuation").
_CONTINUATION_GAP = re.compile(rb"(?:[ \t\n\r\f\v]|--[^\n\r]*)*")
_STRING_PREFIXES = {
    ord("e"): (_ESCAPE_BODY, _K_STR),
    ord("E"): (_ESCAPE_BODY, _K_STR),
    ord("b"): (_PLAIN_BODY, _K_BSTR),
    ord("B"): (_PLAIN_BODY, _K_BSTR),
    ord("x"): (_PLAIN_BODY, _K_XSTR),
    ord("X"): (_PLAIN_BODY, _K_XSTR),
    ord("n"): (_PLAIN_BODY, _K_NSTR),
    ord("N"): (_PLAIN_BODY, _K_NSTR),
}
_QUOTE = ord("'")
_DQUOTE = ord('"')
_DOLLAR = ord("$")
_DOT = ord(".")
_SEMICOLON = ord(";")
_COLON = ord(":")


def _integer_kind(digits: bytes, radix: int) -> bytes:
    """int4, int8 or numeric, as PostgreSQL types an integer constant."""
    digits = digits.replace(b"_", b"").lstrip(b"0")
    if len(digits) > 64:  # beyond any int8 in any radix (and int()'s digit limit)
        return _K_NUMERIC
    value = int(digits or b"0", radix)
    if value <= _INT4_MAX:
        return _K_INT4
    return _K_INT8 if value <= _INT8_MAX else _K_NUMERIC


def _varint(n: int) -> bytes:
    """A token length as an unsigned LEB128 varint."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Unterminated(Exception):
    """A quote or comment runs to the end of the input."""


class _FingerprintLexer:
    """One pass over the UTF-8 bytes of a statement; see :func:`fingerprint`."""

    def __init__(self, s: bytes) -> None:
        self.s = s
        self.out = [_FP_DOMAIN]
        self.statements = 0
        self.in_statement = False
        self.after_uescape = False

    def emit(self, kind: bytes, text: bytes | None = None) -> None:
        if kind == _K_SEMI:
            if self.in_statement:
                self.statements += 1
            self.in_statement = False
        else:
            self.in_statement = True
        self.after_uescape = kind == _K_WORD and text == b"uescape"
        self.out.append(kind)
        if text is not None:
            self.out.append(_varint(len(text)))
            self.out.append(text)

    def literal(self, kind: bytes, start: int, end: int) -> None:
        if self.after_uescape:  # U&'...' UESCAPE '!': the escape character matters
            self.emit(_K_VERBATIM, self.s[start:end])
        else:
            self.emit(kind)

    def string(self, start: int, body: int, pattern: re.Pattern[bytes], kind: bytes) -> int:
        """A quoted string constant whose body starts at ``body``, with any
        quote continuations; returns its end."""
        s = self.s
        while True:
            m = pattern.match(s, body)
            if m is None:
                raise _Unterminated
            end = m.end()
            gap = _CONTINUATION_GAP.match(s, end)
            assert gap is not None  # it matches the empty string
            after = gap.end()
            if after < len(s) and s[after] == _QUOTE and (b"\n" in gap[0] or b"\r" in gap[0]):
                body = after + 1
                continue
            self.literal(kind, start, end)
            return end

    def number(self, i: int) -> int:
        """A numeric constant at ``i`` (a digit, or a dot before a digit)."""
        s = self.s
        m = _RADIX_INTEGER.match(s, i)
        if m is not None:
            radix = {b"x": 16, b"o": 8, b"b": 2}[s[i + 1 : i + 2].lower()]
            self.emit(_integer_kind(s[i + 2 : m.end()], radix))
            return m.end()
        integer = True
        m = _DECINTEGER.match(s, i)
        j = i if m is None else m.end()
        if s[j : j + 1] == b"." and s[j + 1 : j + 2] != b".":
            integer = False
            m = _DECINTEGER.match(s, j + 1)
            j = j + 1 if m is None else m.end()
        m = _EXPONENT.match(s, j)
        if m is not None:
            integer = False
            j = m.end()
        self.emit(_integer_kind(s[i:j], 10) if integer else _K_NUMERIC)
        return j

    def step(self, i: int) -> int:
        """One token, whitespace run or comment at ``i``; returns the next position."""
        s = self.s
        c = s[i]
        c1 = s[i + 1] if i + 1 < len(s) else 0
        if c in _SPACE:
            return _WS_RUN.match(s, i).end()  # type: ignore[union-attr]
        if c == 0x2D and c1 == 0x2D:  # --
            return _LINE_COMMENT.match(s, i).end()  # type: ignore[union-attr]
        if c == 0x2F and c1 == 0x2A:  # /* ... */, nested
            depth, j = 1, i + 2
            while True:
                close = s.find(b"*/", j)
                if close < 0:
                    raise _Unterminated
                opened = s.find(b"/*", j, close + 1)
                if opened >= 0:
                    depth, j = depth + 1, opened + 2
                    continue
                depth, j = depth - 1, close + 2
                if depth == 0:
                    return j
        if c == _QUOTE:
            return self.string(i, i + 1, _PLAIN_BODY, _K_STR)
        if c == _DQUOTE:
            m = _QIDENT_BODY.match(s, i + 1)
            if m is None:
                raise _Unterminated
            self.emit(_K_QIDENT, s[i : m.end()])
            return m.end()
        if c in _IDENT_START:
            if c1 == _QUOTE and c in _STRING_PREFIXES:
                pattern, kind = _STRING_PREFIXES[c]
                return self.string(i, i + 2, pattern, kind)
            if c in b"uU" and c1 == 0x26:  # U&'...' or U&"..."
                c2 = s[i + 2 : i + 3]
                if c2 == b"'":
                    return self.string(i, i + 3, _PLAIN_BODY, _K_STR)
                if c2 == b'"':
                    m = _QIDENT_BODY.match(s, i + 3)
                    if m is None:
                        raise _Unterminated
                    self.emit(_K_QIDENT, s[i : m.end()])
                    return m.end()
            m = _IDENT.match(s, i)
            assert m is not None
            self.emit(_K_WORD, m[0].lower())
            return m.end()
        if c in _DIGITS or (c == _DOT and c1 in _DIGITS):
            return self.number(i)
        if c == _DOLLAR:
            m = _PARAM.match(s, i)
            if m is not None:
                self.emit(_K_PARAM, m[1])
                return m.end()
            m = _DOLLAR_DELIM.match(s, i)
            if m is not None:
                found = s.find(m[0], m.end())
                if found < 0:
                    raise _Unterminated
                end = found + len(m[0])
                self.literal(_K_STR, i, end)
                return end
            self.emit(_K_OP, b"$")
            return i + 1
        if c == _SEMICOLON:
            self.emit(_K_SEMI)
            return i + 1
        if c in _OP_CHARS:
            m = _OPERATOR.match(s, i)
            assert m is not None
            self.emit(_K_OP, m[0])
            return m.end()
        pair = s[i : i + 2]
        n = 2 if pair in (b"::", b":=", b"..") else 1
        self.emit(_K_OP, s[i : i + n])
        return i + n

    def run(self) -> tuple[bytes, int]:
        s, i = self.s, 0
        while i < len(s):
            try:
                i = self.step(i)
            except _Unterminated:
                self.emit(_K_UNTERMINATED, s[i:])
                break
        if self.in_statement:
            self.statements += 1
        return b"".join(self.out), self.statements


class PatternSet:
    """Deny patterns searched in a statement text (reference of
    ``hoopfast_core.PatternSet``, which uses the regex crate: linear time,
    no look-around or backreferences; ``re`` accepts more, so configs are
    validated with the compiled one when it is installed)."""

    __slots__ = ("_patterns",)

    def __init__(self, patterns: list[str]) -> None:
        try:
            self._patterns = [re.compile(p) for p in patterns]
        except re.error as e:
            raise ValueError(str(e)) from None

    def first_match(self, text: str) -> int | None:
        for i, pattern in enumerate(self._patterns):
            if pattern.search(text):
                return i
        return None

    def __len__(self) -> int:
        return len(self._patterns)


def _normalize(sql: str) -> tuple[bytes, int]:
    """The hashed token stream of ``sql`` and its statement count (for tests)."""
    if not isinstance(sql, str):
        raise TypeError(f"sql must be str, not {type(sql).__name__}")
    return _FingerprintLexer(sql.encode("utf-8")).run()


def fingerprint(sql: str) -> tuple[bytes, int]:
    """A cache key for a SQL statement text: ``(16-byte key, statement_count)``.

    Statements that differ only in literal values get the same key; anything
    that can change their meaning keeps them apart. The key is for a cache of
    policy verdicts only: it says nothing about what a statement does. In
    particular a ``DO $$ ... $$`` body (or ``EXECUTE 'sql'``, a string passed
    to ``dblink``, a ``'name'::regclass`` ...) is a literal here, so
    ``DO $$ BEGIN DELETE FROM t; END $$`` and ``DO $$ BEGIN SELECT 1; END $$``
    share a key: classifying such bodies and values is the policy's job, and a
    policy whose verdict depends on a literal value must not be cached under
    this key.

    A hand-written lexer over PostgreSQL's lexical rules (SQL Syntax, Lexical
    Structure; scan.l), run over the UTF-8 bytes, assuming
    ``standard_conforming_strings = on`` (so backslashes escape only in
    ``E'...'``):

    - Whitespace is dropped, ``-- ...`` comments too, and ``/* ... */``
      comments, which nest as in PostgreSQL.
    - Keywords and unquoted identifiers (letters, digits, ``_``, ``$`` and
      any non-ASCII byte) are ASCII-lowercased, as PostgreSQL folds them.
      Quoted identifiers ``"..."`` (``""`` doubled) and ``U&"..."`` are kept
      exactly as written, quotes included: ``"Users"`` is not ``users``.
    - Constants become a placeholder of their kind, since the kind can change
      which function or operator PostgreSQL picks: strings (``'...'`` with
      ``''`` doubling, ``E'...'`` with backslash escapes, ``U&'...'`` and
      ``$tag$...$tag$`` dollar quotes) are one kind; ``N'...'``, ``B'...'``
      and ``X'...'`` one kind each; string pieces joined by a newline
      (PostgreSQL's quote continuation) are one constant. Numbers are typed as
      PostgreSQL types them: an integer (decimal, ``0x``, ``0o``, ``0b``,
      ``_`` separators) up to 2**31-1 is int4, up to 2**63-1 int8, anything
      else (larger, or with a point or exponent: ``3.5``, ``.5``, ``1e10``)
      numeric. A string right after ``UESCAPE`` is kept verbatim (the
      escape character changes the value of the U& constant before it).
    - Parameters ``$1``, ``$2`` ... are kept with their number (a distinct
      kind from constants: swapping them can change meaning).
    - Operators (runs of ``+-*/<>=~!@#%^&|`?``, cut before ``--`` and
      ``/*``) and punctuation (``::``, ``:=``, ``..`` and single characters)
      are kept verbatim; ``;`` is kept and separates statements.
    - An unterminated quote, dollar quote or comment makes the rest of the
      input, from its opening, one "unterminated" token kept verbatim.

    Tokens are written as a kind byte, plus a length (unsigned LEB128) and
    the bytes for those whose text is kept; the key is the BLAKE2b-128
    digest of that stream. ``statement_count`` counts the ``;``-separated
    statements that hold at least one token (so ``SELECT 1;;`` is 1). It
    over-counts a ``BEGIN ATOMIC ... END`` function body, whose ``;`` do not
    end the statement.

    Differences that never change meaning may still separate keys (``- 1``
    vs ``1``, ``SELECT 1`` vs ``SELECT 1;``, identifiers longer than 63
    bytes): that costs a cache miss, never a wrong hit.
    """
    stream, statements = _normalize(sql)
    return hashlib.blake2b(stream, digest_size=16).digest(), statements


__all__ = [
    "IMPLEMENTATION",
    "Framer",
    "FramingError",
    "MaskPlan",
    "PatternSet",
    "decode_data_row",
    "decode_fields",
    "decode_row_description",
    "decode_startup",
    "encode_data_row",
    "encode_fields",
    "encode_row_description",
    "encode_startup",
    "fingerprint",
]
