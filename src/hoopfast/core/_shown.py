"""How a bound parameter value is shown to people: in the audit trail (both
trail builds) and to approvers (hoopfast.proxy.postgres.review).

A text-format value goes through the detectors (``mask_text``). A
binary-format one of a type whose text is exact here (see below: integers,
text-like types, bool, uuid, jsonb) goes through them as that text, when
the trail knows the parameter's type: the server's ParameterDescription
answering a Describe of the statement (asyncpg always asks for one). Any
other binary value is shown as ``\\x`` + hex, *unless* the detectors find
something in its bytes read as text (asyncpg sends every string in binary
format: a text value's binary form is its bytes in the client encoding);
then as that masked text. What stays hex is a binary value of a type the
trail does not know or was not told (numeric, inet, arrays, a statement
never described): its hex can hold what the detectors would have masked in
text form (a card number as numeric, an address as inet).
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


# -- result values in binary format -------------------------------------------
#
# A result value the client asked for in binary format (asyncpg asks for
# every column so) is kept as PostgreSQL's text output would show it where
# that is exact and independent of the session's settings: text-like types
# (their binary form is their text in the client encoding), integers, bool,
# uuid and jsonb (a version byte, then its text). Anything else (floats,
# numeric, dates and times, whose text depends on DateStyle, TimeZone or
# extra_float_digits; "char" and xml, whose text differs from their bytes)
# and any value of the wrong length stays ``\x`` + hex. Both trail builds
# follow these codes (ext/_ctrail.pyx reads this table, and checks the codes
# when it is imported).
HEX = 0
TEXT = 1
INT2 = 2
INT4 = 3
INT8 = 4
OID = 5
BOOL = 6
UUID = 7
JSONB = 8

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
}

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
    elif kind != HEX and len(raw) == _SIZES[kind]:
        if kind == BOOL:
            return "t" if raw[0] else "f"
        if kind == UUID:
            h = raw.hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return str(int.from_bytes(raw, "big", signed=kind != OID))
    return None
