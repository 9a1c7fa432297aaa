"""How a bound parameter value is shown to people: in the audit trail (both
trail builds) and to approvers (hoopfast.proxy.postgres.review).

A text-format value goes through the detectors (``mask_text``). A
binary-format one of a type whose text is known here (see below: integers,
numeric, floats, dates and times, text-like types, bool, uuid, jsonb,
addresses, intervals, the built-in ranges and multiranges, arrays of those)
goes through
them as that text, when the trail knows the parameter's type: the server's
ParameterDescription answering a Describe of the statement (asyncpg always
asks for one), or the type the Parse declared (psycopg declares one for
every binary value). Any other binary value is shown as ``\\x`` + hex, *unless* the detectors find
something in its bytes read as text (asyncpg sends every string in binary
format: a text value's binary form is its bytes in the client encoding);
then as that masked text. What stays hex is a binary value of a type the
trail does not know or was not told (composites, a statement never
described): its hex can hold what the detectors would have masked in text
form.
"""

from __future__ import annotations

import decimal
import math
import struct
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal


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
# that is exact (a parameter, which the client wrote, is shown as the client
# wrote it: jsonb as sent, not as the server normalises it): text-like types
# (their binary form is their text in the client encoding), integers,
# numeric (numeric_out depends on no setting), bool, uuid and jsonb (a
# version byte, then its text), and arrays of those (array_out's text).
# Floats, dates and times have a text that depends on the session's
# settings; the client that asked for binary saw the value itself, so they
# are shown as the server shows them with its default settings, which are
# exact: floats with extra_float_digits 1 (the shortest text that reads
# back as the same value), dates and times with DateStyle ISO, and
# timestamptz in UTC (``+00``). Addresses (inet, cidr, macaddr, macaddr8)
# and intervals (IntervalStyle postgres, the default) are written as their
# output functions write them, so that the detectors read an address bound
# or returned in binary as they read it in text. Anything else ("char" and
# xml, whose text differs from their bytes; ranges, composites) and any
# value of the wrong length, or that the server would refuse, stays ``\x``
# + hex. The built-in ranges and multiranges (and arrays of ranges) are
# written as the server reads and writes them (below). Both trail builds
# follow these codes (ext/_ctrail.pyx reads this table, checks the codes
# when it is imported, and has arrays, ranges, floats, dates, times,
# addresses and intervals read here).
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
FLOAT4 = 10
FLOAT8 = 11
DATE = 12
TIME = 13
TIMESTAMP = 14
TIMESTAMPTZ = 15
INET = 16
CIDR = 17
MACADDR = 18
MACADDR8 = 19
INTERVAL = 20
#: ARRAY + i: a one- or more-dimensional array of ARRAY_ELEMENTS[i].
ARRAY = 21

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
    700: FLOAT4,
    701: FLOAT8,
    1082: DATE,
    1083: TIME,
    1114: TIMESTAMP,
    1184: TIMESTAMPTZ,
    869: INET,
    650: CIDR,
    829: MACADDR,
    774: MACADDR8,
    1186: INTERVAL,
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
    1021: 700,
    1022: 701,
    1182: 1082,
    1183: 1083,
    1115: 1114,
    1185: 1184,
    1041: 869,
    651: 650,
    1040: 829,
    775: 774,
    1187: 1186,
}
#: Range type OID -> its element type (the built-in ranges).
RANGE_TYPES = {3904: 23, 3926: 20, 3906: 1700, 3908: 1114, 3910: 1184, 3912: 1082}
#: Multirange type OID -> its range type.
MULTIRANGE_TYPES = {4451: 3904, 4536: 3926, 4532: 3906, 4533: 3908, 4534: 3910, 4535: 3912}
# Arrays of ranges: their elements are read as ranges (below).
ARRAY_TYPES.update({3905: 3904, 3927: 3926, 3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912})
ARRAY_ELEMENTS = tuple(ARRAY_TYPES.values())
#: RANGE + i: a range of RANGE_ELEMENTS[i]; MULTIRANGE + i: a multirange of
#: ranges of RANGE_ELEMENTS[i]. Both after the arrays' kinds.
RANGE = ARRAY + len(ARRAY_TYPES)
RANGE_ELEMENTS = tuple(RANGE_TYPES.values())
MULTIRANGE = RANGE + len(RANGE_TYPES)
BINARY_KINDS.update({oid: ARRAY + i for i, oid in enumerate(ARRAY_TYPES)})
BINARY_KINDS.update({oid: RANGE + i for i, oid in enumerate(RANGE_TYPES)})
BINARY_KINDS.update(
    {oid: MULTIRANGE + list(RANGE_TYPES).index(r) for oid, r in MULTIRANGE_TYPES.items()}
)

_SIZES = {
    INT2: 2,
    INT4: 4,
    INT8: 8,
    OID: 4,
    BOOL: 1,
    UUID: 16,
    FLOAT4: 4,
    FLOAT8: 8,
    DATE: 4,
    TIME: 8,
    TIMESTAMP: 8,
    TIMESTAMPTZ: 8,
}


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
        return composite_text(raw, kind, codec)
    elif kind >= INET:
        return other_text(raw, kind)
    elif kind != HEX and len(raw) == _SIZES[kind]:
        if kind == BOOL:
            return "t" if raw[0] else "f"
        if kind == UUID:
            h = raw.hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if kind >= FLOAT4:
            return settled_text(raw, kind)
        return str(int.from_bytes(raw, "big", signed=kind != OID))
    return None


# -- floats, dates and times -------------------------------------------------------
#
# Their binary forms (float4send, float8send, date_send, time_send,
# timestamp_send): IEEE 754 big-endian; int32 days and int64 microseconds
# since 2000-01-01 (microseconds since midnight for time). Their text, as
# float4out, float8out (src/common/f2s.c, d2s.c: the shortest digits,
# fixed-point from 1e-4 up to 1e6 or 1e15), date_out and
# timestamp(tz)_out (EncodeDateOnly, EncodeDateTime) write it with the
# defaults above.


def settled_text(raw: bytes, kind: int) -> str | None:
    """The text of a float, date or time value of the right length
    (binary_text), or None where the server would refuse it."""
    if kind == FLOAT8:
        return _float_text(struct.unpack(">d", raw)[0], False)
    if kind == FLOAT4:
        return _float_text(struct.unpack(">f", raw)[0], True)
    value = int.from_bytes(raw, "big", signed=True)
    if kind == DATE:
        if value in _DATE_INFINITIES:
            return _DATE_INFINITIES[value]
        if not _DATE_MIN <= value < _DATE_END:
            return None
        year, month, day = _civil(value)
        return _date_text(year, month, day) + (" BC" if year <= 0 else "")
    if kind == TIME:
        return _clock_text(value) if 0 <= value <= _DAY else None
    if value in _TIMESTAMP_INFINITIES:
        return _TIMESTAMP_INFINITIES[value]
    if not _TIMESTAMP_MIN <= value < _TIMESTAMP_END:
        return None
    days, micros = divmod(value, _DAY)
    year, month, day = _civil(days)
    text = _date_text(year, month, day) + " " + _clock_text(micros)
    if kind == TIMESTAMPTZ:
        text += "+00"
    return text + (" BC" if year <= 0 else "")


def _float_text(value: float, single: bool) -> str:
    """float8out / float4out (``single``) with extra_float_digits 1: the
    shortest digits, fixed-point when the decimal exponent is in [-4, 15)
    (float4: [-4, 6)), else ``d.ddde+XX``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    digits, point = _shortest(abs(value), single)
    if -4 <= point < (6 if single else 15):
        if point < 0:
            return f"{sign}0.{'0' * (-point - 1)}{digits}"
        whole = digits[: point + 1].ljust(point + 1, "0")
        fraction = digits[point + 1 :]
        return sign + whole + ("." + fraction if fraction else "")
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"


def _shortest(value: float, single: bool) -> tuple[str, int]:
    """The fewest decimal digits that lie strictly between ``value``'s
    neighbours' midpoints, the closest to it of those (ties to even), and
    the power of ten of the first: Ryu's choice as PostgreSQL builds it
    (d2s.c, f2s.c: a decimal on a midpoint is never taken, where Python's
    repr takes it when the value's mantissa is even)."""
    exact = Fraction(value)
    low, high = _midpoints(value, single)
    # The usual case: Python's shortest (a double's repr; for a float4 the
    # correctly rounded text of the fewest digits that reads back), when it
    # is strictly inside. A float4 power of two has a narrower gap below:
    # the exact search.
    guess = repr(value) if not single else _float4_guess(value)
    if guess is not None and low < Fraction(decimal.Decimal(guess)) < high:
        return _digits(decimal.Decimal(guess))
    point = decimal.Decimal(value).adjusted()
    for count in range(1, 18):
        scale = Fraction(10) ** (point - count + 1)
        below = math.floor(exact / scale)
        inside = [c for c in (below, below + 1) if low < c * scale < high]
        if inside:
            best = min(inside, key=lambda c: (abs(c * scale - exact), c % 2))
            return _digits(decimal.Decimal(best).scaleb(point - count + 1))
    raise AssertionError("17 digits always tell doubles apart")


def _digits(number: decimal.Decimal) -> tuple[str, int]:
    """A positive decimal's significant digits and its first's power of ten."""
    _, digits, exponent = number.normalize().as_tuple()
    assert isinstance(exponent, int)
    return "".join(map(str, digits)), exponent + len(digits) - 1


def _midpoints(value: float, single: bool) -> tuple[Fraction, Fraction]:
    """The midpoints between a positive finite ``value`` and its neighbours
    in its precision (past the largest value, the gap goes on)."""
    exact = Fraction(value)
    if single:
        bits = struct.unpack(">I", struct.pack(">f", value))[0]
        below = Fraction(struct.unpack(">f", struct.pack(">I", bits - 1))[0])
        above_value = struct.unpack(">f", struct.pack(">I", bits + 1))[0]
    else:
        below = Fraction(math.nextafter(value, 0.0))
        above_value = math.nextafter(value, math.inf)
    above = exact + (exact - below) if math.isinf(above_value) else Fraction(above_value)
    return (below + exact) / 2, (exact + above) / 2


def _float4_guess(value: float) -> str | None:
    """The correctly rounded text of the fewest digits that reads back as
    the same float4; None for a power of two (see _shortest)."""
    if struct.unpack(">I", struct.pack(">f", value))[0] & 0x7FFFFF == 0:
        return None
    for digits in range(1, 10):
        text = f"{value:.{digits - 1}e}"
        try:
            if struct.unpack(">f", struct.pack(">f", float(text)))[0] == value:
                return text
        except OverflowError:  # (past FLT_MAX, which struct will not round)
            continue
    return None


_DAY = 86_400_000_000  # USECS_PER_DAY
_EPOCH_JULIAN = 2_451_545  # POSTGRES_EPOCH_JDATE: 2000-01-01
#: IS_VALID_DATE: from Julian day 0 (4714-11-24 BC) to DATE_END_JULIAN.
_DATE_MIN = -_EPOCH_JULIAN
_DATE_END = 2_147_483_494 - _EPOCH_JULIAN
_DATE_INFINITIES = {-(1 << 31): "-infinity", (1 << 31) - 1: "infinity"}
#: IS_VALID_TIMESTAMP: MIN_TIMESTAMP (4714-11-24 BC) to END_TIMESTAMP.
_TIMESTAMP_MIN = -211_813_488_000_000_000
_TIMESTAMP_END = 9_223_371_331_200_000_000
_TIMESTAMP_INFINITIES = {-(1 << 63): "-infinity", (1 << 63) - 1: "infinity"}


def _civil(days: int) -> tuple[int, int, int]:
    """Year (0 is 1 BC), month and day of ``days`` since 2000-01-01, as
    PostgreSQL's j2date computes them (the proleptic Gregorian calendar)."""
    julian = days + _EPOCH_JULIAN + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    return y - 4800, (quad + 10) % 12 + 1, julian - 7834 * quad // 256


def _date_text(year: int, month: int, day: int) -> str:
    return f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}"


def _clock_text(micros: int) -> str:
    """HH:MM:SS, then the fraction of a second without trailing zeros."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return text + f".{fraction:06d}".rstrip("0") if fraction else text


# -- addresses and intervals -----------------------------------------------------
#
# inet_send/cidr_send (network.c): family (2: IPv4, 3: IPv6), bits, is_cidr,
# the address's byte count (4 or 16), the address. network_out writes it
# with pg_inet_net_ntop (src/port/inet_net_ntop.c): IPv4 as four octets,
# IPv6 as hex words with the longest run of two or more zero words as
# "::" (an IPv4 address embedded in ::/96 or ::ffff:0:0/96 dotted), then
# "/bits" unless bits is the family's whole width; cidr always adds
# "/bits". macaddr(8)_send: the 6 (8) bytes, written as hex pairs with
# colons. interval_send: int64 microseconds, int32 days, int32 months;
# interval_out (EncodeInterval, IntervalStyle postgres) writes each nonzero
# part of years, months and days, then the time.
_FAMILIES = {2: 4, 3: 16}
_ADDRESS_SIZES = {MACADDR: 6, MACADDR8: 8}
_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1


def other_text(raw: bytes, kind: int) -> str | None:
    """The text of an address (inet, cidr, macaddr, macaddr8) or interval
    (binary_text), or None where the server would refuse it."""
    if kind in _ADDRESS_SIZES:
        if kind == MACADDR8 and len(raw) == 6:
            raw = raw[:3] + b"\xff\xfe" + raw[3:]  # (macaddr8_recv takes an EUI-48 so)
        if len(raw) != _ADDRESS_SIZES[kind]:
            return None
        return ":".join(f"{b:02x}" for b in raw)
    if kind == INTERVAL:
        return _interval_text(raw) if len(raw) == 16 else None
    return _network_text(raw, kind == CIDR)


def _network_text(raw: bytes, is_cidr: bool) -> str | None:
    if len(raw) < 4:
        return None
    # (The third byte, is_cidr, is ignored by inet_recv and cidr_recv.)
    family, bits, size = raw[0], raw[1], raw[3]
    width = _FAMILIES.get(family)
    if width is None or size != width or len(raw) != 4 + size or bits > 8 * width:
        return None
    address = raw[4:]
    if is_cidr and int.from_bytes(address, "big") & ((1 << (8 * width - bits)) - 1):
        return None  # (bits set right of the mask: cidr_recv refuses it)
    text = ".".join(map(str, address)) if family == 2 else _ipv6_text(address)
    if is_cidr or bits != 8 * width:
        text += f"/{bits}"
    return text


def _ipv6_text(address: bytes) -> str:
    words = [int.from_bytes(address[i : i + 2], "big") for i in range(0, 16, 2)]
    best_base, best_len, base = -1, 0, -1
    for i, word in enumerate([*words, 1]):  # (a sentinel ends a last run)
        if word == 0:
            if base == -1:
                base = i
        elif base != -1:
            if i - base > best_len:
                best_base, best_len = base, i - base
            base = -1
    if best_len < 2:
        best_base = -1
    out = ""
    for i, word in enumerate(words):
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out += ":"
            continue
        if i != 0:
            out += ":"
        if (
            i == 6
            and best_base == 0
            and (
                best_len == 6
                or (best_len == 7 and words[7] != 1)
                or (best_len == 5 and words[5] == 0xFFFF)
            )
        ):
            return out + ".".join(map(str, address[12:]))
        out += f"{word:x}"
    if best_base != -1 and best_base + best_len == 8:
        out += ":"
    return out


def _interval_text(raw: bytes) -> str | None:
    micros = int.from_bytes(raw[0:8], "big", signed=True)
    days = int.from_bytes(raw[8:12], "big", signed=True)
    months = int.from_bytes(raw[12:16], "big", signed=True)
    if (micros, days, months) in (
        (_INT64_MAX, _INT32_MAX, _INT32_MAX),
        (-_INT64_MAX - 1, -_INT32_MAX - 1, -_INT32_MAX - 1),
    ):
        return None  # (infinity from PostgreSQL 17, a value before: not guessed)
    years, months = _trunc_divmod(months, 12)
    hours, rest = _trunc_divmod(micros, 3_600_000_000)
    minutes, rest = _trunc_divmod(rest, 60_000_000)
    seconds, fraction = _trunc_divmod(rest, 1_000_000)
    parts: list[str] = []
    before = False
    for value, unit in ((years, "year"), (months, "mon"), (days, "day")):
        if value:
            sign = "+" if before and value > 0 else ""
            parts.append(f"{sign}{value} {unit}{'' if value == 1 else 's'}")
            before = value < 0
    if not parts or hours or minutes or seconds or fraction:
        minus = hours < 0 or minutes < 0 or seconds < 0 or fraction < 0
        sign = "-" if minus else ("+" if before else "")
        clock = f"{sign}{abs(hours):02d}:{abs(minutes):02d}:{abs(seconds):02d}"
        if fraction:
            clock += f".{abs(fraction):06d}".rstrip("0")
        parts.append(clock)
    return " ".join(parts)


def _trunc_divmod(value: int, by: int) -> tuple[int, int]:
    """C's / and % (toward zero), as interval2itm computes the parts."""
    quotient = abs(value) // by * (1 if value >= 0 else -1)
    return quotient, value - quotient * by


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


def composite_text(raw: bytes, kind: int, codec: str) -> str | None:
    """The text of an array, range or multirange value (a kind from ARRAY
    on), as binary_text; both trail builds read these here."""
    if kind < RANGE:
        return array_text(raw, ARRAY_ELEMENTS[kind - ARRAY], codec)
    if kind < MULTIRANGE:
        return range_text(raw, RANGE_ELEMENTS[kind - RANGE], codec)
    return multirange_text(raw, RANGE_ELEMENTS[kind - MULTIRANGE], codec)


# -- ranges and multiranges --------------------------------------------------------
#
# range_send's format (src/backend/utils/adt/rangetypes.c): a flags byte,
# then each bound that is not infinite (none if the range is empty) as int32
# length and its binary value. range_recv ignores other flags and refuses
# bytes after the last bound; range_serialize refuses a lower bound past
# the upper one, makes an infinite bound exclusive and a range of two equal bounds not both
# inclusive empty; the discrete types' canonical functions (int4, int8,
# date) then make a finite lower bound inclusive and a finite upper one
# exclusive (+1; date's infinities stay), and the range is checked again.
# range_out writes "empty", or the brackets around the bounds, each quoted
# (" and \ doubled) when empty or holding any of "\()[], or white space.
# multirange_send: int32 count, then each range as int32 length and its
# range_send; multirange_recv drops empty ranges, sorts the others and
# merges those that overlap or touch; multirange_out writes them in braces.
_EMPTY, _LB_INC, _UB_INC, _LB_INF, _UB_INF = 0x01, 0x02, 0x04, 0x08, 0x10
_RANGE_FLAGS = _EMPTY | _LB_INC | _UB_INC | _LB_INF | _UB_INF
_RANGE_QUOTES = frozenset('"\\()[], \t\n\r\v\f')
#: The discrete element types: where their integer ends (date: see _next).
_DISCRETE = {23: 1 << 31, 20: 1 << 63, 1082: None}
#: Element types whose binary form is a big-endian integer in their order
#: (int4, int8, date, timestamp, timestamptz), by its size; numeric is the
#: other, ordered by its text (NaN after Infinity, as the server sorts it).
_INTEGERS = {23: 4, 20: 8, 1082: 4, 1114: 8, 1184: 8}
_NUMERIC_ORDER = {"-Infinity": 0, "Infinity": 2, "NaN": 3}

#: A finite bound: its order, its text, whether it is inclusive.
_Bound = tuple[Any, str, bool]
#: (lower, upper), each None when infinite.
_Bounds = tuple[_Bound | None, _Bound | None]
#: A range: its bounds, or None when empty.
_Range = _Bounds | None


def range_text(raw: bytes, element: int, codec: str) -> str | None:
    """range_out of what range_recv makes of ``raw`` (a range of
    ``element``); None where it would refuse it."""
    if len(raw) > ARRAY_MAX_BYTES:
        return None
    read = _read_range(raw, element, codec)
    if read is False:
        return None
    text = _range_out(read)
    return text if len(text) <= max_text(len(raw)) else None


def multirange_text(raw: bytes, element: int, codec: str) -> str | None:
    """multirange_out of what multirange_recv makes of ``raw``."""
    if not 4 <= len(raw) <= ARRAY_MAX_BYTES:
        return None
    count = int.from_bytes(raw[0:4], "big", signed=True)
    at = 4
    ranges: list[_Bounds] = []
    for _ in range(max(count, 0)):
        field = _field(raw, at)
        if field is None:
            return None
        value, at = field
        read = _read_range(value, element, codec)
        if read is False:
            return None
        if read is not None:
            ranges.append(read)
    if count < 0 or at != len(raw) or _ties(ranges):
        return None
    ranges.sort(key=lambda r: _lower_order(r[0]))
    merged: list[_Bounds] = []
    for r in ranges:
        if merged and _touches(merged[-1][1], r[0]):
            last = merged[-1]
            if _upper_order(r[1]) > _upper_order(last[1]):
                merged[-1] = (last[0], r[1])
        else:
            merged.append(r)
    text = "{" + ",".join(_range_out(r) for r in merged) + "}"
    return text if len(text) <= max_text(len(raw)) else None


def _read_range(raw: bytes, element: int, codec: str) -> _Range | Literal[False]:
    """The bounds range_recv makes of ``raw``; None: empty; False: refused."""
    if not raw:
        return False
    flags = raw[0] & _RANGE_FLAGS  # (range_recv masks the others out)
    at = 1
    bounds: list[_Bound | None] = []
    for infinite, inclusive in ((_LB_INF, _LB_INC), (_UB_INF, _UB_INC)):
        if flags & (_EMPTY | infinite):
            bounds.append(None)
            continue
        field = _field(raw, at)
        if field is None:
            return False
        value, at = _received(field[0], element), field[1]
        text = binary_text(value, element, codec)
        if text is None:
            return False
        bounds.append((_order(value, element, text), text, bool(flags & inclusive)))
    if at != len(raw):
        return False
    if flags & _EMPTY:
        return None
    lower, upper = bounds
    if lower is not None and upper is not None and lower[0] > upper[0]:
        return False  # (range lower bound must be less than or equal to ...)
    checked = _serialized(lower, upper)
    if checked is None or element not in _DISCRETE:
        return checked
    try:
        return _serialized(*_canonical(checked[0], checked[1], element))
    except _Refused:
        return False


def _field(raw: bytes, at: int) -> tuple[bytes, int] | None:
    """The int32-length-prefixed value at ``at`` (not NULL) and where the
    next one starts; None when ``raw`` does not hold it."""
    if len(raw) < at + 4:
        return None
    length = int.from_bytes(raw[at : at + 4], "big", signed=True)
    at += 4
    if length < 0 or len(raw) < at + length:
        return None
    return raw[at : at + length], at + length


def _received(value: bytes, element: int) -> bytes:
    """What of a bound its type's receive function reads: range_recv does
    not check that it read all of it (an int4 bound of 5 bytes is its first
    4), as array_recv does for elements."""
    size = _INTEGERS.get(element)
    if size is None and len(value) >= 8:  # numeric: its header says how long
        size = 8 + 2 * int.from_bytes(value[0:2], "big")
    return value[:size] if size is not None and len(value) > size else value


def _ties(ranges: list[_Bounds]) -> bool:
    """Whether two lower (or two upper) bounds are equal and written
    differently (numeric: 1.0 and 1.00). Which of them the server keeps
    depends on its sort (qsort, not stable) and on which range a merge
    takes it from: such a multirange stays hex."""
    texts: dict[tuple[Any, ...], str] = {}
    for lower, upper in ranges:
        for key, bound in (
            (("l", *_lower_order(lower)), lower),
            (("u", *_upper_order(upper)), upper),
        ):
            if bound is not None and texts.setdefault(key, bound[1]) != bound[1]:
                return True
    return False


def _order(value: bytes, element: int, text: str) -> Any:
    """A bound's place in its type's order."""
    if element in _INTEGERS:
        return int.from_bytes(value, "big", signed=True)
    special = _NUMERIC_ORDER.get(text)
    return (special, 0) if special is not None else (1, decimal.Decimal(text))


def _serialized(lower: _Bound | None, upper: _Bound | None) -> _Range:
    """range_serialize's emptiness: two equal bounds not both inclusive."""
    equal = lower is not None and upper is not None and lower[0] == upper[0]
    if equal and not (lower[2] and upper[2]):  # type: ignore[index]
        return None
    return lower, upper


def _canonical(lower: _Bound | None, upper: _Bound | None, element: int) -> _Bounds:
    """int4range_canonical, int8range_canonical, daterange_canonical."""
    if lower is not None and not lower[2]:
        lower = _next(lower, element)
    if upper is not None and upper[2]:
        upper = _next(upper, element)
    return lower, upper


def _next(bound: _Bound, element: int) -> _Bound:
    """The bound one step up, inclusivity flipped (a date's infinities stay)."""
    value, _, inclusive = bound
    limit = _DISCRETE[element]
    if limit is None:  # date
        if value in _DATE_INFINITIES:
            return bound
        moved = settled_text((value + 1).to_bytes(4, "big", signed=True), DATE)
        if moved is None:
            raise _Refused
        return value + 1, moved, not inclusive
    if value + 1 >= limit:
        raise _Refused  # (integer out of range)
    return value + 1, str(value + 1), not inclusive


class _Refused(Exception):
    """The server would refuse the value (caught by the callers' callers)."""


def _lower_order(bound: _Bound | None) -> tuple[Any, ...]:
    """A lower bound's order (range_cmp_bounds): infinite first; exclusive
    after inclusive at one value."""
    if bound is None:
        return (0,)
    return (1, bound[0], not bound[2])


def _upper_order(bound: _Bound | None) -> tuple[Any, ...]:
    """An upper bound's order: infinite last; exclusive before inclusive."""
    if bound is None:
        return (2,)
    return (1, bound[0], bound[2])


def _touches(upper: _Bound | None, lower: _Bound | None) -> bool:
    """Whether a range ending at ``upper`` and the next, starting at
    ``lower`` (not before the first's start), overlap or are adjacent."""
    if upper is None or lower is None:
        return True
    if lower[0] != upper[0]:
        return bool(lower[0] < upper[0])
    return upper[2] or lower[2]


def _range_out(r: _Range) -> str:
    if r is None:
        return "empty"
    lower, upper = r
    return (
        ("[" if lower is not None and lower[2] else "(")
        + ("" if lower is None else _range_bound(lower[1]))
        + ","
        + ("" if upper is None else _range_bound(upper[1]))
        + ("]" if upper is not None and upper[2] else ")")
    )


def _range_bound(text: str) -> str:
    """range_bound_escape."""
    if text and _RANGE_QUOTES.isdisjoint(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
