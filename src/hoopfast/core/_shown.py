"""How a bound parameter value is shown to people: in the audit trail (both
trail builds) and to approvers (hoopfast.proxy.postgres.review).

A text-format value goes through the detectors (``mask_text``). A
binary-format one of a type whose text is exact here (see below: integers,
numeric, text-like types, bool, uuid, jsonb, arrays of those) goes through
them as that text, when the trail knows the parameter's type: the server's
ParameterDescription answering a Describe of the statement (asyncpg always
asks for one), or the type the Parse declared (psycopg declares one for
every binary value). Any other binary value is shown as ``\\x`` + hex, *unless* the detectors find
something in its bytes read as text (asyncpg sends every string in binary
format: a text value's binary form is its bytes in the client encoding);
then as that masked text. What stays hex is a binary value of a type the
trail does not know or was not told (floats, inet, composites, a statement
never described): its hex can hold what the detectors would have masked in
text form (a card number as a float, an address as inet).
"""

from __future__ import annotations

from collections.abc import Callable


def shown_parameter(
    raw: bytes, fmt: int, codec: str, mask_text: Callable[[str], str], type_oid: int = 0
) -> str:
    """A bound value (not NULL) as shown; ``fmt`` is its format code (1
    binary, anything else text, as the server reads it). A binary value of a
    type the server described (ParameterDescription, ``type_oid``) whose
    text is exact (shown_binary) goes through the detectors as that text: a
    card number bound as an int8 is masked as it would be as text."""
    if fmt == 1 and (exact := binary_text(raw, type_oid, codec)) is not None:
        return mask_text(exact)
    text = raw.decode(codec, "replace")
    masked = mask_text(text)
    if fmt != 1 or masked != text:
        return masked
    return "\\x" + raw.hex()


def declared_types(parse: bytes) -> list[int] | None:
    """The parameter types a Parse message declares (0: left to the server),
    or None when it declares none or is malformed. A declared type is the
    one the server reads the parameter as, as exact as a
    ParameterDescription: psycopg declares a type for every value it binds
    in binary."""
    name_end = parse.find(b"\0", 5)
    text_end = parse.find(b"\0", name_end + 1) if name_end >= 0 else -1
    at = text_end + 3
    if text_end < 0 or len(parse) < at:
        return None
    count = int.from_bytes(parse[text_end + 1 : at], "big")
    if count == 0 or len(parse) != at + 4 * count:
        return None
    oids = [int.from_bytes(parse[at + 4 * i : at + 4 * i + 4], "big") for i in range(count)]
    return oids if any(oids) else None


# -- result values in binary format -------------------------------------------
#
# A result value the client asked for in binary format (asyncpg asks for
# every column so) is kept as PostgreSQL's text output would show it where
# that is exact and independent of the session's settings (a parameter,
# which the client wrote, is shown as the client wrote it: jsonb as sent,
# not as the server normalises it): text-like types
# (their binary form is their text in the client encoding), integers,
# numeric (numeric_out depends on no setting), bool, uuid and jsonb (a
# version byte, then its text), and arrays of those (array_out's text).
# Anything else (floats, dates and times, whose text depends on DateStyle,
# TimeZone or extra_float_digits; "char" and xml, whose text differs from
# their bytes) and any value of the wrong length stays ``\x`` + hex. Both
# trail builds follow these codes (ext/_ctrail.pyx reads this table, checks
# the codes when it is imported, and has arrays read here).
HEX = 0
TEXT = 1
INT2 = 2
INT4 = 3
INT8 = 4
OID = 5
BOOL = 6
UUID = 7
JSONB = 8
NUMERIC = 9
#: ARRAY + i: a one- or more-dimensional array of ARRAY_ELEMENTS[i].
ARRAY = 16

#: Type OID -> how its binary values are shown.
BINARY_KINDS = {
    25: TEXT,  # text
    1043: TEXT,  # varchar
    1042: TEXT,  # bpchar
    19: TEXT,  # name
    114: TEXT,  # json
    705: TEXT,  # unknown
    21: INT2,
    23: INT4,
    20: INT8,
    26: OID,
    16: BOOL,
    2950: UUID,
    3802: JSONB,
    1700: NUMERIC,
}

#: Array type OID -> its element type, for the element types above.
ARRAY_TYPES = {
    1009: 25,
    1015: 1043,
    1014: 1042,
    1003: 19,
    199: 114,
    1005: 21,
    1007: 23,
    1016: 20,
    1028: 26,
    1000: 16,
    2951: 2950,
    3807: 3802,
    1231: 1700,
}
ARRAY_ELEMENTS = tuple(ARRAY_TYPES.values())
BINARY_KINDS.update({oid: ARRAY + i for i, oid in enumerate(ARRAY_TYPES)})

_SIZES = {INT2: 2, INT4: 4, INT8: 8, OID: 4, BOOL: 1, UUID: 16}


def shown_binary(raw: bytes, type_oid: int, codec: str) -> str:
    """A binary-format result value of type ``type_oid`` as shown (above)."""
    text = binary_text(raw, type_oid, codec)
    return "\\x" + raw.hex() if text is None else text


def binary_text(raw: bytes, type_oid: int, codec: str) -> str | None:
    """PostgreSQL's text for a binary value of ``type_oid``, where it is
    exact (above); else None."""
    kind = BINARY_KINDS.get(type_oid, HEX)
    if kind == TEXT:
        return raw.decode(codec, "replace")
    if kind == JSONB:
        if raw[:1] == b"\x01":
            return raw[1:].decode(codec, "replace")
    elif kind == NUMERIC:
        return numeric_text(raw)
    elif kind >= ARRAY:
        return array_text(raw, ARRAY_ELEMENTS[kind - ARRAY], codec)
    elif kind != HEX and len(raw) == _SIZES[kind]:
        if kind == BOOL:
            return "t" if raw[0] else "f"
        if kind == UUID:
            h = raw.hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return str(int.from_bytes(raw, "big", signed=kind != OID))
    return None


# -- numeric ---------------------------------------------------------------------
#
# numeric_send's format (src/backend/utils/adt/numeric.c): uint16 ndigits,
# int16 weight, uint16 sign, uint16 dscale, then ndigits base-10000 digits
# (int16), the first worth 10000**weight. What numeric_recv would refuse is
# None here (shown as hex; the server fails the statement anyway).
_POS, _NEG = 0x0000, 0x4000
_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
_DSCALE_MASK = 0x3FFF


def max_text(size: int) -> int:
    """The longest text a binary value of ``size`` bytes is shown as, where
    its text may be longer than its bytes (numeric, arrays): 10 bytes of
    numeric can print 147,453 digits, and the trail's caps count the
    bytes the server sent. Past it the value stays hex (twice its size)."""
    return 4 * size + 32


def numeric_text(raw: bytes) -> str | None:
    """numeric_out of the value numeric_recv makes of ``raw``: digits past
    dscale truncated (numeric_recv's trunc_var), leading and trailing zero
    digits stripped, a zero made positive (make_result); else None, and
    None when the text would pass max_text."""
    if len(raw) < 8:
        return None
    ndigits = int.from_bytes(raw[0:2], "big")
    weight = int.from_bytes(raw[2:4], "big", signed=True)
    sign = int.from_bytes(raw[4:6], "big")
    dscale = int.from_bytes(raw[6:8], "big")
    if len(raw) != 8 + 2 * ndigits or dscale & _DSCALE_MASK != dscale:
        return None
    digits = [int.from_bytes(raw[i : i + 2], "big") for i in range(8, len(raw), 2)]
    if any(d >= 10000 for d in digits):
        return None
    if sign in _SPECIAL:
        return _SPECIAL[sign]
    if sign not in (_POS, _NEG):
        return None
    # trunc_var(value, dscale): keep (weight + 1) * 4 + dscale decimal digits.
    wanted = (weight + 1) * 4 + dscale
    if wanted <= 0:
        digits = []
    elif (wanted + 3) // 4 <= len(digits):
        digits = digits[: (wanted + 3) // 4]
        if wanted % 4:
            drop = 10 ** (4 - wanted % 4)
            digits[-1] -= digits[-1] % drop
    # strip_var: zero digits off both ends; no digits left is a positive zero.
    first = next((i for i, d in enumerate(digits) if d), len(digits))
    weight -= first
    del digits[:first]
    while digits and digits[-1] == 0:
        digits.pop()
    if not digits:
        weight, sign = 0, _POS
    # get_str_from_var (its length first: bounded by max_text)
    size = (sign == _NEG) + (1 + dscale if dscale else 0)
    size += 1 if weight < 0 else len(str(digits[0] if digits else 0)) + 4 * weight
    if size > max_text(len(raw)):
        return None
    out = ["-"] if sign == _NEG else []
    if weight < 0:
        out.append("0")
    else:
        out.append(str(digits[0] if digits else 0))
        out.extend(f"{digits[d] if d < len(digits) else 0:04d}" for d in range(1, weight + 1))
    if dscale > 0:
        first = weight + 1
        groups = (dscale + 3) // 4
        fraction = "".join(
            f"{digits[d] if 0 <= d < len(digits) else 0:04d}" for d in range(first, first + groups)
        )
        out.append("." + fraction[:dscale])
    return "".join(out)


# -- arrays ----------------------------------------------------------------------
#
# array_send's format (src/backend/utils/adt/arrayfuncs.c): int32 ndim, int32
# flags (0, or 1 if it has NULLs), the element type, then per dimension its
# size and lower bound (int32 each), then each element as int32 length (-1:
# NULL) and its binary value. What array_recv would refuse is None here.
_MAXDIM = 6
#: Larger arrays stay hex: both builds read arrays here, in Python (1 to 3 µs
#: an element, several times the detectors' cost per byte), and the data
#: path must not stop for a big one.
ARRAY_MAX_BYTES = 8 << 10
_MAX_ITEMS = (1 << 30) // 8 - 1  # MaxArraySize
_INT32 = 1 << 31
_FIRST_NON_BUILTIN = 10000  # FirstGenbkiObjectId
_NEEDS_QUOTES = frozenset('{}",\\ \t\n\r\v\f')


def array_text(raw: bytes, element: int, codec: str) -> str | None:
    """array_out of a binary array of ``element`` values whose text is exact
    (binary_text); None where the server would refuse it, or an element is
    not exact, or the array is past ARRAY_MAX_BYTES."""
    if not 12 <= len(raw) <= ARRAY_MAX_BYTES:
        return None
    ndim = int.from_bytes(raw[0:4], "big", signed=True)
    flags = int.from_bytes(raw[4:8], "big", signed=True)
    at = 12 + 8 * ndim
    if not 0 <= ndim <= _MAXDIM or flags not in (0, 1) or len(raw) < at:
        return None
    # Another built-in element type is refused; one past the built-in range
    # is read as the expected type (array_recv).
    declared = int.from_bytes(raw[8:12], "big")
    if declared != element and declared < _FIRST_NON_BUILTIN:
        return None
    dims = [int.from_bytes(raw[12 + 8 * i : 16 + 8 * i], "big", signed=True) for i in range(ndim)]
    lower = [int.from_bytes(raw[16 + 8 * i : 20 + 8 * i], "big", signed=True) for i in range(ndim)]
    items = 1 if ndim else 0
    for size, low in zip(dims, lower, strict=True):
        items *= size  # (ArrayGetNItems: no step past int32, the end past MaxArraySize)
        if size < 0 or items >= _INT32 or low + size >= _INT32:
            return None
    if items > _MAX_ITEMS:
        return None
    values: list[str] = []
    room = max_text(len(raw))
    for _ in range(items):
        if len(raw) < at + 4:
            return None
        length = int.from_bytes(raw[at : at + 4], "big", signed=True)
        at += 4
        if length == -1:
            values.append("NULL")
            continue
        if length < 0 or len(raw) < at + length:
            return None
        text = binary_text(raw[at : at + length], element, codec)
        if text is None:
            return None
        at += length
        quote = not text or text.upper() == "NULL" or not _NEEDS_QUOTES.isdisjoint(text)
        if quote:
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        room -= len(text) + 1
        if room < 0:
            return None
        values.append(text)
    if at != len(raw):
        return None
    if items == 0:
        return "{}"
    prefix = ""
    if any(low != 1 for low in lower):
        prefix = "".join(f"[{low}:{low + size - 1}]" for size, low in zip(dims, lower, strict=True))
        prefix += "="
    text = prefix + _nested(values, dims)
    return text if len(text) <= max_text(len(raw)) else None


def _nested(values: list[str], dims: list[int]) -> str:
    """``values`` (the elements in order, none missing) in braces, one level
    per dimension."""
    if len(dims) == 1:
        return "{" + ",".join(values) + "}"
    step = len(values) // dims[0]
    parts = (_nested(values[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0]))
    return "{" + ",".join(parts) + "}"
