"""Masking engine, pure-Python reference of ``hoopfast_core.MaskPlan``.

A :class:`MaskPlan` is compiled once per RowDescription from one rule per
result column and applied to whole buffers of DataRow messages. The compiled
twin (``rust/src/mask.rs``) gives byte-identical output; everything that
decides an output byte is specified here and mirrored there:

- Detectors are byte regular expressions over ASCII classes only (no ``\\d``,
  ``\\w``, ``\\b``, no case folding), the same text in both implementations,
  so ``re`` (backtracking, leftmost-first) and the regex crate (automaton,
  leftmost-first) find the same matches. Each detector is scanned
  non-overlapping left to right; a match is kept if its context and its
  validator (Luhn, mod-97, octets ...) accept it. Kept matches of all
  detectors are then chosen left to right: earliest start, then longest,
  then the detector order of :data:`DETECTORS`.
- Characters are UTF-8 code points when the value is valid UTF-8, else bytes.
- See docs/masking.md for the strategies and the type table.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
from collections.abc import Callable, Sequence

from hoopfast.core.abc import ColumnRule

STRATEGIES = ("redact", "same_length", "partial", "hash", "null", "default", "fake", "detect")

# Context rule flags.
_DOT_DIGIT = 1  # reject when preceded by "<digit>." or followed by ".<digit>"

#: (name, pattern, extra bytes refused just before, extra bytes refused just after).
#: ASCII letters and digits are refused on both sides for every detector.
DETECTORS: tuple[tuple[str, bytes, bytes, bytes], ...] = (
    (
        "pem_private_key",
        rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:(?:[A-Za-z0-9+/=\r\n\t :,-]|\\[nrt])*?"
        rb"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|(?:[A-Za-z0-9+/=\r\n\t :,-]|\\[nrt])*)",
        b"",
        b"",
    ),
    ("jwt", rb"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", b"_-", b"_-"),
    ("azure_storage_key", rb"AccountKey=[A-Za-z0-9+/]{86}==", b"", b""),
    ("aws_access_key", rb"(?:AKIA|ASIA)[A-Z0-9]{16}", b"", b""),
    ("gcp_api_key", rb"AIza[0-9A-Za-z_-]{35}", b"_-", b"_-"),
    ("email", rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", b"", b""),
    (
        "iban",
        rb"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?",
        b"",
        b"",
    ),
    ("card", rb"[0-9](?:[ -]?[0-9]){12,18}", b"", b""),
    ("us_ssn", rb"[0-9]{3}-[0-9]{2}-[0-9]{4}", b"-", b"-"),
    (
        "uk_nino",
        rb"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]",
        b"",
        b"",
    ),
    (
        "mac",
        rb"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}",
        b":-",
        b":-",
    ),
    ("ipv6", rb"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}", b":", b":"),
    ("ipv4", rb"(?:[0-9]{1,3}\.){3}[0-9]{1,3}", b".", b""),
    (
        "phone",
        rb"\+[1-9][0-9 .()-]{6,20}[0-9]"
        rb"|(?:1[ .-])?\(?[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}"
        rb"|0[1-9][0-9]{0,4}(?:[ .-][0-9]{2,4}){2,4}",
        b"+-.",
        b"-",
    ),
    ("secret", rb"[A-Za-z0-9+/_=-]{32,}", b"", b""),
)
DETECTOR_NAMES: tuple[str, ...] = tuple(d[0] for d in DETECTORS)
_INDEX = {name: i for i, name in enumerate(DETECTOR_NAMES)}
_COMPILED = [re.compile(p) for _, p, _, _ in DETECTORS]
_EMAIL_FULL = re.compile(DETECTORS[_INDEX["email"]][1])

# Type OIDs (pg_type.dat).
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})  # text varchar bpchar name unknown
JSON_TYPES = frozenset({114, 3802})  # json jsonb
JSONB = 3802
_JSON_STRATEGIES = ("redact", "hash", "null", "default", "detect")


def strategy_applies(strategy: str, format_code: int, type_oid: int) -> bool:
    """Whether ``strategy`` can mask a column of this format and type and
    still give the client a value its type decoder parses: text strategies
    need a text type in text format (json: a subset); null and default fit
    every column. jsonb's binary form is a version byte and its text: the
    json strategies apply to that text (the engine keeps the byte)."""
    if strategy in ("null", "default"):
        return True
    if format_code != 0:
        return type_oid == JSONB and strategy in _JSON_STRATEGIES
    if type_oid in JSON_TYPES:
        return strategy in _JSON_STRATEGIES
    return type_oid in TEXT_TYPES


def _array(elem: int) -> tuple[bytes, bytes]:
    return b"{}", struct.pack("!iiI", 0, 0, elem)


#: type OID -> (text-format default, binary-format default); other types: NULL.
DEFAULTS: dict[int, tuple[bytes, bytes]] = {
    16: (b"f", b"\x00"),  # bool
    17: (b"\\x", b""),  # bytea
    19: (b"", b""),  # name
    20: (b"0", bytes(8)),  # int8
    21: (b"0", bytes(2)),  # int2
    23: (b"0", bytes(4)),  # int4
    25: (b"", b""),  # text
    26: (b"0", bytes(4)),  # oid
    114: (b"null", b"null"),  # json
    3802: (b"null", b"\x01null"),  # jsonb
    700: (b"0", bytes(4)),  # float4
    701: (b"0", bytes(8)),  # float8
    705: (b"", b""),  # unknown
    829: (b"00:00:00:00:00:00", bytes(6)),  # macaddr
    869: (b"0.0.0.0", b"\x02\x20\x00\x04" + bytes(4)),  # inet
    650: (b"0.0.0.0/32", b"\x02\x20\x01\x04" + bytes(4)),  # cidr
    1042: (b"", b""),  # bpchar
    1043: (b"", b""),  # varchar
    1082: (b"1970-01-01", struct.pack("!i", -10957)),  # date: days since 2000-01-01
    1083: (b"00:00:00", bytes(8)),  # time
    1114: (b"1970-01-01 00:00:00", struct.pack("!q", -946684800000000)),  # timestamp
    1184: (b"1970-01-01 00:00:00+00", struct.pack("!q", -946684800000000)),  # timestamptz
    1186: (b"00:00:00", bytes(16)),  # interval
    1266: (b"00:00:00+00", bytes(12)),  # timetz
    1700: (b"0", bytes(8)),  # numeric: ndigits, weight, sign, dscale all 0
    2950: (b"00000000-0000-0000-0000-000000000000", bytes(16)),  # uuid
    1000: _array(16),
    1005: _array(21),
    1007: _array(23),
    1009: _array(25),
    1014: _array(1042),
    1015: _array(1043),
    1016: _array(20),
    1021: _array(700),
    1022: _array(701),
    1182: _array(1082),
    1115: _array(1114),
    1185: _array(1184),
    1231: _array(1700),
    2951: _array(2950),
    199: _array(114),
    3807: _array(3802),
}

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITS = frozenset(b"0123456789")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPE_LETTERS = frozenset(b"nrtbfu")
_NUMBER_CHARS = frozenset(b"-+.0123456789eE")
_NINO_BAD_PREFIXES = frozenset((b"BG", b"GB", b"NK", b"KN", b"TN", b"NT", b"ZZ"))


# --------------------------------------------------------------------------
# Validators: (text, start, end) of a raw match -> accepted end, or -1.


def _context_ok(text: bytes, start: int, end: int, before: bytes, after: bytes) -> bool:
    if start > 0:
        b = text[start - 1]
        # A letter right after a backslash is an escape (\n in JSON), a boundary.
        if (b in _ALNUM or b in before) and not (
            b in _ESCAPE_LETTERS and start >= 2 and text[start - 2] == 0x5C
        ):
            return False
        if b == 0x2E and start >= 2 and text[start - 2] in _DIGITS:
            return False
    if end < len(text):
        b = text[end]
        if b in _ALNUM or b in after:
            return False
        if b == 0x2E and end + 1 < len(text) and text[end + 1] in _DIGITS:
            return False
    return True


def _luhn(digits: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(m: bytes) -> bool:
    digits = bytes(c for c in m if c in _DIGITS)
    return digits[0] != 0x30 and _luhn(digits)


def _iban_ok(compact: bytes) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rem = 0
    for c in compact[4:] + compact[:4]:
        v = c - 48 if c <= 0x39 else c - 55
        rem = (rem * 100 + v) % 97 if v >= 10 else (rem * 10 + v) % 97
    return rem == 1


def _iban_end(m: bytes) -> int:
    """Accepted length of an IBAN candidate, dropping trailing space-separated
    groups (a following word in capitals) until the checksum holds."""
    while True:
        if _iban_ok(m.replace(b" ", b"")):
            return len(m)
        cut = m.rfind(b" ")
        if cut < 0:
            return -1
        m = m[:cut]


def _ssn(m: bytes) -> bool:
    area, group, serial = m[0:3], m[4:6], m[7:11]
    return area not in (b"000", b"666") and m[0] != 0x39 and group != b"00" and serial != b"0000"


def _nino(m: bytes) -> bool:
    return m[0:2] not in _NINO_BAD_PREFIXES


def _mac(m: bytes) -> bool:
    if len(m) == 14:  # cisco dotted form
        return True
    return m[2] == m[5] == m[8] == m[11] == m[14]


def _hex_groups(part: bytes) -> int:
    """Number of groups in a ':'-separated run of 1..4 hex digits, or -1."""
    if not part:
        return 0
    groups = part.split(b":")
    for g in groups:
        if not 1 <= len(g) <= 4:
            return -1
    return len(groups)


def _ipv6(m: bytes) -> bool:
    if b":::" in m:
        return False
    parts = m.split(b"::")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        head, tail = _hex_groups(parts[0]), _hex_groups(parts[1])
        if head < 0 or tail < 0:
            return False
        return 1 <= head + tail <= 7
    return _hex_groups(m) == 8


def _ipv4(m: bytes) -> bool:
    for octet in m.split(b"."):
        if len(octet) > 1 and octet[0] == 0x30:
            return False
        if int(octet) > 255:
            return False
    return True


def _phone(m: bytes) -> bool:
    digits = sum(1 for c in m if c in _DIGITS)
    prev_sep = False
    for c in m:
        sep = c in b" .-"
        if sep and prev_sep:
            return False
        prev_sep = sep
    opens, closes = m.count(b"("), m.count(b")")
    if opens != closes or opens > 1:
        return False
    if opens and m.index(b"(") > m.index(b")"):
        return False
    if m[-1] not in _DIGITS:
        return False
    if m[0] == 0x2B:
        return 8 <= digits <= 15
    return 10 <= digits <= 11


def _phone_end(m: bytes) -> int:
    """Accepted length of a phone candidate, dropping trailing groups (the
    pattern is greedy: "+44 20 7946 0958 (415) ..." ) until it is valid."""
    while True:
        if _phone(m):
            return len(m)
        cut = max(m.rfind(b" "), m.rfind(b"."), m.rfind(b"-"), m.rfind(b"("))
        if cut <= 0:
            return -1
        m = m[:cut]


def _entropy(m: bytes) -> float:
    counts = [0] * 256
    for c in m:
        counts[c] += 1
    n = len(m)
    h = 0.0
    for c in counts:
        if c:
            p = c / n
            h -= p * math.log2(p)
    return h


def _secret(m: bytes) -> bool:
    has_digit = any(c in _DIGITS for c in m)
    has_letter = any(c in _ALNUM and c not in _DIGITS for c in m)
    if not (has_digit and has_letter):
        return False
    if all(c in _HEXDIGITS for c in m):
        return _entropy(m) >= 3.0
    return _entropy(m) >= 4.2


_CHECKS: dict[str, Callable[[bytes], bool]] = {
    "card": _card,
    "us_ssn": _ssn,
    "uk_nino": _nino,
    "mac": _mac,
    "ipv6": _ipv6,
    "ipv4": _ipv4,
    "secret": _secret,
}

#: Cheap necessary conditions, to skip a scan (same results, less work).
_NEEDS: dict[str, bytes] = {
    "pem_private_key": b"-----BEGIN ",
    "jwt": b"eyJ",
    "azure_storage_key": b"AccountKey=",
    "gcp_api_key": b"AIza",
    "email": b"@",
}


def _find(text: bytes, detectors: Sequence[int]) -> list[tuple[int, int, int]]:
    """Chosen (start, end, detector) spans, non-overlapping, in order."""
    found: list[tuple[int, int, int]] = []
    for i in detectors:
        name, _, before, after = DETECTORS[i]
        need = _NEEDS.get(name)
        if need is not None and need not in text:
            continue
        check = _CHECKS.get(name)
        search = _COMPILED[i].search
        pos = 0
        while True:
            m = search(text, pos)
            if m is None:
                break
            start, end = m.span()
            # A match cut short by its validator resumes the scan at its new end.
            pos = end
            if name == "iban" or name == "phone":
                length = (_iban_end if name == "iban" else _phone_end)(m.group())
                if length < 0:
                    continue
                end = pos = start + length
            elif check is not None and not check(m.group()):
                continue
            if not _context_ok(text, start, end, before, after):
                continue
            if name == "azure_storage_key":
                start += len(b"AccountKey=")
            found.append((start, end, i))
    if not found:
        return found
    found.sort(key=lambda s: (s[0], s[0] - s[1], s[2]))
    chosen: list[tuple[int, int, int]] = []
    last = 0
    for span in found:
        if span[0] >= last:
            chosen.append(span)
            last = span[1]
        elif span[1] > last:
            # Overlapping matches are masked as one span, their union, under
            # the first one's name: dropping the later one would show its
            # tail (a "secret" run "access_token=eyJ..." stops at the first
            # dot, the JWT it overlaps goes on to the signature).
            chosen[-1] = (chosen[-1][0], span[1], chosen[-1][2])
            last = span[1]
    return chosen


def _token(i: int) -> bytes:
    return b"[REDACTED:" + DETECTOR_NAMES[i].encode() + b"]"


def _redact_text(text: bytes, detectors: Sequence[int]) -> bytes:
    spans = _find(text, detectors)
    if not spans:
        return text
    out: list[bytes] = []
    pos = 0
    for start, end, i in spans:
        out.append(text[pos:start])
        out.append(_token(i))
        pos = end
    out.append(text[pos:])
    return b"".join(out)


def _redact_json(text: bytes, detectors: Sequence[int]) -> bytes:
    """Like :func:`_redact_text`, keeping a JSON text valid: a match inside a
    string never starts inside an escape sequence, and a match outside strings
    (in a number) replaces the whole number token by a JSON string."""
    spans = _find(text, detectors)
    if not spans:
        return text
    out: list[bytes] = []
    pos = 0  # output copied up to here
    i = 0  # JSON lexer position
    in_string = False
    n = len(text)
    for start, end, det in spans:
        while i < start:
            c = text[i]
            if in_string:
                if c == 0x5C:
                    i += 6 if i + 1 < n and text[i + 1] == 0x75 else 2
                    continue
                if c == 0x22:
                    in_string = False
            elif c == 0x22:
                in_string = True
            i += 1
        if in_string:
            start = max(start, i)
            if start >= end:
                continue
            token = _token(det)
        else:
            while start > pos and text[start - 1] in _NUMBER_CHARS:
                start -= 1
            while end < n and text[end] in _NUMBER_CHARS:
                end += 1
            token = b'"' + _token(det) + b'"'
        out.append(text[pos:start])
        out.append(token)
        pos = end
        i = max(i, end)
    if pos == 0 and not out:
        return text
    out.append(text[pos:])
    return b"".join(out)


# --------------------------------------------------------------------------
# Strategies


def _chars(value: bytes) -> list[bytes]:
    """The value's characters: UTF-8 code points if valid UTF-8, else bytes."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return [value[i : i + 1] for i in range(len(value))]
    return [c.encode("utf-8") for c in text]


def _char_count(value: bytes) -> int:
    try:
        return len(value.decode("utf-8"))
    except UnicodeDecodeError:
        return len(value)


def _keep(chars: list[bytes], first: int, last: int) -> bytes:
    n = len(chars)
    if first + last >= n:
        return b"*" * n
    return b"".join(chars[:first]) + b"*" * (n - first - last) + b"".join(chars[n - last :])


def _hmac_hex(key: bytes, value: bytes) -> bytes:
    return hmac.new(key, value, hashlib.sha256).hexdigest()[:16].encode()


def _fake(key: bytes, value: bytes) -> bytes:
    seed = hmac.new(key, b"fake:" + value, hashlib.sha256).digest()
    out = bytearray(value)
    stream = b""
    used = 0
    block = 0
    for pos, c in enumerate(value):
        if c in _ALNUM:
            if used == len(stream):
                stream = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
                block += 1
                used = 0
            k = stream[used]
            used += 1
            if c <= 0x39:
                out[pos] = 0x30 + k % 10
            elif c <= 0x5A:
                out[pos] = 0x41 + k % 26
            else:
                out[pos] = 0x61 + k % 26
    return bytes(out)


Masker = Callable[[bytes], bytes | None]


def _compile_rule(rule: object, key: bytes, index: int) -> tuple[Masker, list[int]]:
    if not isinstance(rule, (tuple, list)) or len(rule) != 6:
        raise ValueError(f"column {index}: a rule is None or a 6-tuple")
    strategy, format_code, type_oid, detectors, keep_first, keep_last = rule
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"column {index}: unknown masking strategy {strategy!r}")
    for what, v, lo, hi in (
        ("format code", format_code, 0, 1),
        ("type oid", type_oid, 0, 0xFFFFFFFF),
        ("keep_first", keep_first, 0, 0x7FFFFFFF),
        ("keep_last", keep_last, 0, 0x7FFFFFFF),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"column {index}: {what} {v!r} out of range {lo}..{hi}")
    if not isinstance(detectors, (list, tuple)):
        raise ValueError(f"column {index}: detectors must be a list of names")
    ids: list[int] = []
    for name in detectors:
        if not isinstance(name, str) or name not in _INDEX:
            raise ValueError(f"column {index}: unknown detector {name!r}")
        if _INDEX[name] not in ids:
            ids.append(_INDEX[name])
    ids.sort()
    if not strategy_applies(strategy, format_code, type_oid):
        if format_code != 0:
            raise ValueError(
                f"column {index}: a binary-format column can only be masked with null or default"
            )
        if type_oid in JSON_TYPES:
            raise ValueError(
                f"column {index}: a json column can only be masked with "
                "redact, hash, detect, null or default"
            )
        raise ValueError(
            f"column {index}: a column of type {type_oid} (not text) can only be "
            "masked with null or default"
        )
    if strategy in ("hash", "fake") and not key:
        raise ValueError(f"column {index}: the {strategy} strategy needs a non-empty hmac key")
    if strategy == "detect" and not ids:
        raise ValueError(f"column {index}: the detect strategy needs at least one detector")
    is_json = type_oid in JSON_TYPES
    masker: Masker
    if strategy == "null":

        def masker(v: bytes) -> bytes | None:
            return None

    elif strategy == "default":
        default = DEFAULTS.get(type_oid)
        const = None if default is None else default[format_code]

        def masker(v: bytes) -> bytes | None:
            return const

    elif strategy == "redact":
        token = b'"****"' if is_json else b"****"

        def masker(v: bytes) -> bytes | None:
            return token

    elif strategy == "same_length":

        def masker(v: bytes) -> bytes | None:
            return b"*" * _char_count(v)

    elif strategy == "partial":

        def masker(v: bytes) -> bytes | None:
            if _EMAIL_FULL.fullmatch(v):
                at = v.rindex(b"@")
                return _keep(_chars(v[:at]), keep_first, 0) + v[at:]
            return _keep(_chars(v), keep_first, keep_last)

    elif strategy == "hash":

        def masker(v: bytes) -> bytes | None:
            h = _hmac_hex(key, v)
            return b'"' + h + b'"' if is_json else h

    elif strategy == "fake":

        def masker(v: bytes) -> bytes | None:
            return _fake(key, v)

    else:  # detect
        redact = _redact_json if is_json else _redact_text

        def masker(v: bytes) -> bytes | None:
            return redact(v, ids)

    if format_code == 1 and strategy not in ("null", "default"):
        # (binary jsonb, as strategy_applies allows: its version byte kept;
        # any version but 1 is NULL, fail closed)
        return _jsonb_binary(masker), ids
    return masker, ids


def _jsonb_binary(text_masker: Masker) -> Masker:
    def masker(v: bytes) -> bytes | None:
        if v[:1] != b"\x01":
            return None
        out = text_masker(v[1:])
        return None if out is None else b"\x01" + out

    return masker


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class MaskPlan:
    """Masking rules for the columns of one RowDescription (reference of
    ``hoopfast_core.MaskPlan``)."""

    __slots__ = ("_maskers", "_text_detectors")

    def __init__(
        self,
        columns: list[ColumnRule | None],
        hmac_key: bytes,
        text_detectors: list[str] | None = None,
    ) -> None:
        if not isinstance(hmac_key, bytes):
            raise TypeError(f"hmac_key must be bytes, not {type(hmac_key).__name__}")
        columns = list(columns)
        if len(columns) > 0x7FFF:
            raise ValueError(f"too many columns: {len(columns)}")
        maskers: list[Masker | None] = []
        union: set[int] = set()
        for index, rule in enumerate(columns):
            if rule is None:
                maskers.append(None)
                continue
            masker, ids = _compile_rule(rule, hmac_key, index)
            maskers.append(masker)
            union.update(ids)
        if text_detectors is not None:
            union = set()
            for name in text_detectors:
                if not isinstance(name, str) or name not in _INDEX:
                    raise ValueError(f"unknown detector {name!r}")
                union.add(_INDEX[name])
        self._maskers = maskers
        self._text_detectors = sorted(union)

    @property
    def masks_anything(self) -> bool:
        return any(m is not None for m in self._maskers)

    def mask_text(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not self._text_detectors:
            return text
        raw = text.encode("utf-8")
        out = _redact_text(raw, self._text_detectors)
        return text if out is raw else out.decode("utf-8")

    def apply(self, buffer: bytes) -> bytes:
        if not isinstance(buffer, bytes):
            raise TypeError(f"buffer must be bytes, not {type(buffer).__name__}")
        maskers = self._maskers
        ncols = len(maskers)
        n = len(buffer)
        parts: list[bytes] | None = None
        copied = 0  # buffer[:copied] is in parts already
        pos = 0
        unpack_i32 = _I32.unpack_from
        while pos < n:
            if n - pos < 5:
                raise ValueError("DataRow buffer truncated in a message header")
            if buffer[pos] != 0x44:
                raise ValueError(f"not a DataRow message: type 0x{buffer[pos]:02x}")
            (length,) = unpack_i32(buffer, pos + 1)
            if length < 6:
                raise ValueError(f"invalid DataRow length {length}")
            end = pos + 1 + length
            if end > n:
                raise ValueError("DataRow buffer truncated in a message")
            (count,) = _I16.unpack_from(buffer, pos + 5)
            if count != ncols:
                raise ValueError(f"DataRow has {count} columns, the plan {ncols}")
            p = pos + 7
            new: list[bytes] | None = None
            for col, masker in enumerate(maskers):
                if end - p < 4:
                    raise ValueError("DataRow truncated in a column length")
                (size,) = unpack_i32(buffer, p)
                p += 4
                if size < 0:
                    if size != -1:
                        raise ValueError(f"invalid DataRow column length {size}")
                    if new is not None:
                        new.append(b"\xff\xff\xff\xff")
                    continue
                if end - p < size:
                    raise ValueError("DataRow truncated in a column value")
                value = buffer[p : p + size]
                p += size
                if masker is not None:
                    masked = masker(value)
                    if masked != value:
                        if new is None:
                            new = _prefix(buffer, pos + 7, col)
                        new.append(
                            b"\xff\xff\xff\xff"
                            if masked is None
                            else len(masked).to_bytes(4, "big") + masked
                        )
                        continue
                if new is not None:
                    new.append(buffer[p - size - 4 : p])
            if p != end:
                raise ValueError(f"{end - p} trailing bytes after DataRow columns")
            if new is not None:
                if parts is None:
                    parts = []
                parts.append(buffer[copied:pos])
                payload = b"".join(new)
                if len(payload) + 6 > 0x7FFFFFFF:
                    raise ValueError("masked DataRow too long")
                parts.append(
                    b"D" + (len(payload) + 6).to_bytes(4, "big") + count.to_bytes(2, "big")
                )
                parts.append(payload)
                copied = end
            pos = end
        if parts is None:
            return buffer
        parts.append(buffer[copied:])
        return b"".join(parts)


def _prefix(buffer: bytes, p: int, columns: int) -> list[bytes]:
    """The encoded first ``columns`` columns of a row whose values start at ``p``."""
    out: list[bytes] = []
    for _ in range(columns):
        (size,) = _I32.unpack_from(buffer, p)
        step = 4 + max(size, 0)
        out.append(buffer[p : p + step])
        p += step
    return out


__all__ = ["DETECTOR_NAMES", "STRATEGIES", "ColumnRule", "MaskPlan"]
