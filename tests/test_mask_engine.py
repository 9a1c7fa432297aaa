"""The masking engine (MaskPlan), both implementations: strategies,
detectors (true positives and near misses), JSON-safe detection, DataRow
re-encoding, malformed input, and a differential property test (compiled vs
reference, byte-identical). The benchmark runs once under --benchmark-disable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopfast.core import _mask, _python
from tests.impls import COMPILED, WHY_NOT_COMPILED, needs_both

KEY = b"k" * 32
PLANS = [
    pytest.param(_mask.MaskPlan, id="python"),
    pytest.param(
        getattr(COMPILED, "MaskPlan", None),
        id="compiled",
        marks=pytest.mark.skipif(COMPILED is None, reason=WHY_NOT_COMPILED),
    ),
]
TEXT, INT4, BOOL, DATE, JSON, JSONB, UNKNOWN_OID = 25, 23, 16, 1082, 114, 3802, 99999


def rule(
    strategy: str,
    detectors: tuple[str, ...] = (),
    oid: int = TEXT,
    fmt: int = 0,
    first: int = 1,
    last: int = 2,
) -> tuple[str, int, int, list[str], int, int]:
    return (strategy, fmt, oid, list(detectors), first, last)


def row(*values: bytes | None) -> bytes:
    return _python.encode_data_row(list(values))


def rows(buf: bytes) -> list[list[bytes | None]]:
    out = []
    pos = 0
    while pos < len(buf):
        end = pos + 1 + struct.unpack_from("!i", buf, pos + 1)[0]
        out.append(_python.decode_data_row(buf[pos:end]))
        pos = end
    return out


def mask_one(plan_cls: Any, r: Any, value: bytes | None) -> bytes | None:
    out = plan_cls([r], KEY).apply(row(value))
    return rows(out)[0][0]


# --------------------------------------------------------------------------
# Strategies


@pytest.mark.parametrize("plan_cls", PLANS)
def test_strategies_on_text(plan_cls: Any) -> None:
    v = "héllo wörld".encode()
    assert mask_one(plan_cls, rule("redact"), v) == b"****"
    assert mask_one(plan_cls, rule("same_length"), v) == b"*" * 11
    assert mask_one(plan_cls, rule("partial", first=2, last=1), v) == "hé********d".encode()
    assert mask_one(plan_cls, rule("partial", first=2, last=2), b"abc") == b"***"
    card = b"4111 1111 1111 1111"
    assert mask_one(plan_cls, rule("partial", first=0, last=4), card) == b"*" * 15 + b"1111"
    email = b"alice@example.com"
    assert mask_one(plan_cls, rule("partial", first=1, last=3), email) == b"a****@example.com"
    expected = hmac.new(KEY, email, hashlib.sha256).hexdigest()[:16].encode()
    assert mask_one(plan_cls, rule("hash"), email) == expected
    assert mask_one(plan_cls, rule("null"), email) is None
    assert mask_one(plan_cls, rule("default"), email) == b""


@pytest.mark.parametrize("plan_cls", PLANS)
def test_fake_is_deterministic_and_format_preserving(plan_cls: Any) -> None:
    v = "Ab-12 zé/9".encode()
    f1 = mask_one(plan_cls, rule("fake"), v)
    f2 = mask_one(plan_cls, rule("fake"), v)
    assert f1 == f2 and f1 is not None and len(f1) == len(v)
    other = plan_cls([rule("fake")], b"another key").apply(row(v))
    assert rows(other)[0][0] != f1
    text = f1.decode()
    assert text[0].isupper() and text[1].islower() and text[2] == "-"
    assert text[3:5].isdigit() and text[6].islower() and text[7:9] == "é/"
    assert text[9].isdigit()


@pytest.mark.parametrize("plan_cls", PLANS)
@pytest.mark.parametrize(
    ("oid", "fmt", "expected"),
    [
        (INT4, 0, b"0"),
        (INT4, 1, b"\0\0\0\0"),
        (BOOL, 0, b"f"),
        (BOOL, 1, b"\0"),
        (DATE, 0, b"1970-01-01"),
        (DATE, 1, struct.pack("!i", -10957)),
        (JSONB, 1, b"\x01null"),
        (JSON, 0, b"null"),
        (1700, 1, bytes(8)),
        (2950, 0, b"00000000-0000-0000-0000-000000000000"),
        (1007, 1, struct.pack("!iiI", 0, 0, 23)),
        (UNKNOWN_OID, 0, None),
        (UNKNOWN_OID, 1, None),
    ],
)
def test_default_per_type(plan_cls: Any, oid: int, fmt: int, expected: bytes | None) -> None:
    assert mask_one(plan_cls, rule("default", oid=oid, fmt=fmt), b"\x01\x02") == expected


@pytest.mark.parametrize("plan_cls", PLANS)
def test_json_columns_stay_json(plan_cls: Any) -> None:
    doc = json.dumps(
        {"email": "bob@example.com", "card": 4111111111111111, "n": -4111111111111111}
    ).encode()
    for strategy in ("redact", "hash", "detect"):
        out = mask_one(plan_cls, rule(strategy, ("email", "card"), oid=JSON), doc)
        assert out is not None
        parsed = json.loads(out)
        assert b"bob@" not in out and b"41111" not in out
        if strategy == "detect":
            assert parsed == {
                "email": "[REDACTED:email]",
                "card": "[REDACTED:card]",
                "n": "[REDACTED:card]",
            }


@pytest.mark.parametrize("plan_cls", PLANS)
def test_binary_jsonb_is_masked_after_its_version_byte(plan_cls: Any) -> None:
    """jsonb in binary format (asyncpg) is a version byte, then its text:
    the json strategies apply to the text and the byte is kept; a version
    this engine does not know is NULL (fail closed)."""
    doc = b'{"email": "bob@example.com", "n": 1}'
    detect = rule("detect", ("email",), oid=JSONB, fmt=1)
    assert mask_one(plan_cls, detect, b"\x01" + doc) == b'\x01{"email": "[REDACTED:email]", "n": 1}'
    assert mask_one(plan_cls, detect, b'\x01{"n": 1}') == b'\x01{"n": 1}'
    assert mask_one(plan_cls, detect, b"\x02" + doc) is None
    assert mask_one(plan_cls, detect, b"") is None
    text_hash = mask_one(plan_cls, rule("hash", oid=JSONB), doc)
    assert mask_one(plan_cls, rule("hash", oid=JSONB, fmt=1), b"\x01" + doc) == b"\x01" + (
        text_hash or b""
    )
    assert mask_one(plan_cls, rule("redact", oid=JSONB, fmt=1), b"\x01" + doc) == b'\x01"****"'


@pytest.mark.parametrize("plan_cls", PLANS)
def test_detect_in_row_to_json_output(plan_cls: Any) -> None:
    # row_to_json keeps non-ASCII, escapes newlines: a match right after \n
    # is found, and the escape is not eaten.
    doc = (
        b'{"id":1,"notes":"call +44 20 7946 0958\\nbob.smith@example.com\\u00e9x",'
        b'"ip":"10.1.2.3","key":"AKIAIOSFODNN7EXAMPLE"}'
    )
    dets = ("email", "phone", "ipv4", "aws_access_key")
    out = mask_one(plan_cls, rule("detect", dets, oid=JSON), doc)
    assert out is not None
    parsed = json.loads(out)
    assert parsed["notes"] == "call [REDACTED:phone]\n[REDACTED:email]éx"
    assert parsed["ip"] == "[REDACTED:ipv4]" and parsed["key"] == "[REDACTED:aws_access_key]"


@pytest.mark.parametrize("plan_cls", PLANS)
@pytest.mark.parametrize(
    "bad",
    [
        rule("redact", oid=INT4),
        rule("fake", oid=DATE),
        rule("redact", fmt=1),
        rule("detect", ("email",), fmt=1),
        rule("partial", oid=JSON),
        rule("shuffle"),
        rule("detect"),
        rule("detect", ("credit_card",)),
        rule("partial", first=-1),
        rule("default", fmt=2),
        ("redact", 0, 25),
    ],
)
def test_invalid_rules(plan_cls: Any, bad: Any) -> None:
    with pytest.raises(ValueError):
        plan_cls([bad], KEY)


@pytest.mark.parametrize("plan_cls", PLANS)
def test_hash_needs_a_key(plan_cls: Any) -> None:
    with pytest.raises(ValueError):
        plan_cls([rule("hash")], b"")
    assert plan_cls([rule("redact")], b"").masks_anything


@pytest.mark.parametrize("plan_cls", PLANS)
def test_null_stays_null(plan_cls: Any) -> None:
    strategies = [
        rule("redact"),
        rule("same_length"),
        rule("partial"),
        rule("hash"),
        rule("null"),
        rule("default"),
        rule("fake"),
        rule("detect", ("email",)),
        rule("default", oid=INT4, fmt=1),
    ]
    plan = plan_cls(strategies, KEY)
    buf = row(*[None] * len(strategies))
    assert plan.apply(buf) is buf


@pytest.mark.parametrize("plan_cls", PLANS)
def test_unchanged_buffer_is_the_same_object(plan_cls: Any) -> None:
    plan = plan_cls([None, rule("detect", ("email", "card"))], KEY)
    buf = row(b"1", b"nothing to see") + row(None, b"4111111111111112 fails luhn")
    assert plan.apply(buf) is buf
    assert plan.apply(b"") == b""
    untouched = plan_cls([None, None], KEY)
    assert not untouched.masks_anything and plan.masks_anything
    assert untouched.apply(buf) is buf
    # Only the row that changes is re-encoded; the others are copied as they are.
    mixed = row(b"1", b"x") + row(b"2", b"mail bob@example.com") + row(b"3", b"y")
    assert rows(plan.apply(mixed)) == [
        [b"1", b"x"],
        [b"2", b"mail [REDACTED:email]"],
        [b"3", b"y"],
    ]


@pytest.mark.parametrize("plan_cls", PLANS)
@pytest.mark.parametrize(
    "buf",
    [
        b"D",
        b"D\0\0\0",
        row(b"ab", b"c")[:-1],
        row(b"ab"),  # one column, the plan has two
        row(b"a", b"b", b"c"),
        b"T" + row(b"a", b"b")[1:],
        b"D\0\0\0\x05\0",  # length under 6
        b"D\x7f\xff\xff\xff\0\x02",
        b"D\0\0\0\x0e\0\x02\xff\xff\xff\xfe\xff\xff\xff\xff",  # length -2
        b"D\0\0\0\x0f\0\x02\xff\xff\xff\xff\xff\xff\xff\xff\0",  # trailing byte
        b"D\0\0\0\x0e\0\x02\0\0\0\x09\xff\xff\xff\xff",  # value past the message
        row(b"ok", b"ok") + b"D\0",
    ],
)
def test_malformed_rows_raise(plan_cls: Any, buf: bytes) -> None:
    plan = plan_cls([None, rule("redact")], KEY)
    with pytest.raises(ValueError):
        plan.apply(buf)
    with pytest.raises(ValueError):
        plan_cls([None, None], KEY).apply(buf)


# --------------------------------------------------------------------------
# Detectors

GCP = "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"
AZURE = (
    "AccountKey="
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7\n"
    "Mk9Q==\n-----END RSA PRIVATE KEY-----"
)
DETECTOR_CASES = [
    ("email", "to alice.smith+tag@mail.example.co.uk.", True),
    ("email", "alice@localhost or @example.com", False),
    ("card", "card 4111 1111 1111 1111 exp", True),
    ("card", "5500-0000-0000-0004", True),
    ("card", "amex 378282246310005", True),
    ("card", "order 4111111111111112", False),  # fails Luhn
    ("card", "0000000000000000", False),
    ("card", "4111111111111111111111", False),  # longer digit run
    ("iban", "IBAN GB82 WEST 1234 5698 7654 32 SENT", True),
    ("iban", "DE89370400440532013000", True),
    ("iban", "DE89370400440532013001", False),  # wrong checksum
    ("us_ssn", "ssn 123-45-6789", True),
    ("us_ssn", "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000", False),
    ("us_ssn", "123-45-6789-1", False),
    ("phone", "call +44 20 7946 0958 now", True),
    ("phone", "+14155552671", True),
    ("phone", "(415) 555-2671", True),
    ("phone", "415.555.2671", True),
    ("phone", "01 23 45 67 89", True),
    ("phone", "on 2024-01-15 at 12:30, 01-12-2024, 12345, +12 34, 4155552671", False),
    ("ipv4", "from 192.168.1.20.", True),
    ("ipv4", "256.1.1.1 and version 1.2.3.4.5 and 01.2.3.4", False),
    ("ipv6", "addr 2001:db8::8a2e:370:7334 up", True),
    ("ipv6", "fe80::1", True),
    ("ipv6", "12:30:45, std::vector, 1:2:3:4:5:6:7:8:9, 1::2::3", False),
    ("mac", "00:1A:2B:3C:4D:5E", True),
    ("mac", "001a.2b3c.4d5e", True),
    ("mac", "00:1A-2B:3C:4D:5E", False),
    ("jwt", JWT, True),
    ("jwt", "eyJ alone, eyJabc.def", False),
    ("pem_private_key", "key: " + PEM + " end", True),
    ("pem_private_key", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", False),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE", True),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPL XAKIAIOSFODNN7EXAMPLE", False),
    ("gcp_api_key", "key=" + GCP, True),
    ("gcp_api_key", GCP[:-1], False),
    ("azure_storage_key", "AccountName=x;" + AZURE + ";EndpointSuffix=core.windows.net", True),
    ("azure_storage_key", "AccountKey=short==", False),
    ("secret", "token da39a3ee5e6b4b0d3255bfef95601890afd80709", True),
    ("secret", "tok Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbA9x", True),
    ("secret", "internationalization_and_localization_is_hard", False),
    ("secret", "00000000000000000000000000000000aaaa", False),
    ("uk_nino", "NINO AB 12 34 56 C", True),
    ("uk_nino", "QQ123456C GB123456A AB123456E", False),
]


@pytest.mark.parametrize("plan_cls", PLANS)
@pytest.mark.parametrize(("name", "text", "hit"), DETECTOR_CASES)
def test_detector(plan_cls: Any, name: str, text: str, hit: bool) -> None:
    plan = plan_cls([], KEY, [name])
    out = plan.mask_text(text)
    assert (f"[REDACTED:{name}]" in out) is hit, out
    if not hit:
        assert out == text
    # The same through a DataRow with the detect strategy.
    value = text.encode()
    masked = mask_one(plan_cls, rule("detect", (name,)), value)
    assert masked == out.encode()


@pytest.mark.parametrize("plan_cls", PLANS)
def test_mask_text_exact(plan_cls: Any) -> None:
    plan = plan_cls([rule("detect", ("email", "card")), rule("redact", ("ipv4",))], KEY)
    text = 'ERROR: invalid input syntax for type integer: "bob@example.com" 4111-1111-1111-1111'
    assert plan.mask_text(text) == (
        'ERROR: invalid input syntax for type integer: "[REDACTED:email]" [REDACTED:card]'
    )
    assert plan.mask_text("10.0.0.1") == "[REDACTED:ipv4]"
    assert plan_cls([], KEY).mask_text("bob@example.com") == "bob@example.com"
    AZ = "x;" + AZURE
    assert plan_cls([], KEY, ["azure_storage_key"]).mask_text(AZ) == (
        "x;AccountKey=[REDACTED:azure_storage_key]"
    )
    assert plan_cls([], KEY, ["pem_private_key"]).mask_text(PEM) == "[REDACTED:pem_private_key]"


# --------------------------------------------------------------------------
# Compiled vs reference

FRAGMENTS = [
    "bob@example.com",
    "4111 1111 1111 1111",
    "4111111111111112",
    "GB82 WEST 1234 5698 7654 32",
    "123-45-6789",
    "+44 20 7946 0958",
    "(415) 555-2671",
    "10.0.0.1",
    "2001:db8::1",
    "00:1A:2B:3C:4D:5E",
    JWT,
    PEM,
    "AKIAIOSFODNN7EXAMPLE",
    GCP,
    AZURE,
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "AB 12 34 56 C",
    " ",
    ".",
    "-",
    ":",
    '"',
    "\\n",
    "\\",
    "{",
    "}",
    "0",
    "9",
    "a",
    "Z",
    "é",
    "日本",
    "\n",
]
values = st.one_of(
    st.none(),
    st.binary(max_size=30),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(lambda p: "".join(p).encode()),
)
text_oids = st.sampled_from([25, 1043, 1042, 19, 705, 114, 3802])
any_oids = st.sampled_from([16, 20, 23, 25, 114, 1082, 1700, 2950, 3802, 99999])
det_lists = st.lists(st.sampled_from(_mask.DETECTOR_NAMES), min_size=1, max_size=5)


@st.composite
def rules(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return None
    if kind == 1:
        strategy = draw(st.sampled_from(["null", "default"]))
        return (strategy, draw(st.integers(0, 1)), draw(any_oids), [], 0, 0)
    oid = draw(text_oids)
    choices = ["redact", "hash", "detect"] if oid in (114, 3802) else list(_mask.STRATEGIES)
    strategy = draw(st.sampled_from(choices))
    return (
        strategy,
        draw(st.integers(0, 1)) if oid == 3802 else 0,  # (binary jsonb: json strategies)
        oid,
        draw(det_lists),
        draw(st.integers(0, 5)),
        draw(st.integers(0, 5)),
    )


PROP = settings(
    max_examples=int(os.environ.get("MASK_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@needs_both
@PROP
@given(
    st.lists(rules(), max_size=5).flatmap(
        lambda rs: st.tuples(
            st.just(rs),
            st.lists(st.tuples(*[values] * len(rs)), max_size=4),
            st.binary(min_size=1, max_size=16),
        )
    )
)
def test_compiled_matches_reference(case: Any) -> None:
    columns, row_values, key = case
    assert COMPILED is not None
    py = _mask.MaskPlan(columns, key)
    rs = COMPILED.MaskPlan(columns, key)
    assert py.masks_anything == rs.masks_anything
    buf = b"".join(row(*r) for r in row_values)
    out_py, out_rs = py.apply(buf), rs.apply(buf)
    assert out_py == out_rs
    assert (out_py is buf) == (out_rs is buf)
    for r in row_values:
        for v in r:
            if v is not None:
                text = v.decode("utf-8", "replace")
                assert py.mask_text(text) == rs.mask_text(text)


@needs_both
@PROP
@given(st.binary(max_size=40), st.integers(0, 3))
def test_compiled_matches_reference_on_garbage(buf: bytes, ncols: int) -> None:
    assert COMPILED is not None
    columns = [rule("redact")] * ncols
    results = []
    for plan in (_mask.MaskPlan(columns, KEY), COMPILED.MaskPlan(columns, KEY)):
        try:
            results.append(plan.apply(buf))
        except ValueError:
            results.append("ValueError")
    assert results[0] == results[1]


@needs_both
def test_fuzz_row_decoder_briefly(tmp_path: Any) -> None:
    """fuzz/mask_rows.py (atheris, coverage-guided by the reference) for a
    few seconds: malformed DataRows give ValueError from both engines and
    nothing else, and well-formed ones the same bytes."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "fuzz" / "mask_rows.py"
    runs = os.environ.get("MASK_FUZZ_RUNS", "30000")
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            f"-runs={runs}",
            "-max_len=512",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",  # a crash input lands there, not in the checkout
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Done {runs} runs" in out.stderr


# --------------------------------------------------------------------------
# Benchmark: 10k rows, two masked columns plus detectors on a free-text column.

NOTES = [
    b"Customer called about the delivery; asked to update the address on file.",
    b"Paid with card 4111 1111 1111 1111, confirmation sent to jane.doe@example.org",
    b"Prefers phone contact: +44 20 7946 0958 after 6pm. VIP since 2019.",
    b"No issues reported. Renewal scheduled for next quarter, discount 10%.",
]
BENCH_ROWS = b"".join(
    row(
        str(i).encode(),
        f"user{i}@example.com".encode(),
        f"4111 1111 1111 {i % 10000:04d}".encode(),
        NOTES[i % 4],
    )
    for i in range(10_000)
)
BENCH_COLUMNS = [
    None,
    rule("partial", first=1),
    rule("hash"),
    rule("detect", ("email", "card", "phone", "secret")),
]


@pytest.mark.parametrize("plan_cls", PLANS)
def test_bench_apply(benchmark: Any, plan_cls: Any) -> None:
    plan = plan_cls(BENCH_COLUMNS, KEY)
    t0 = time.perf_counter()
    out = benchmark(plan.apply, BENCH_ROWS)
    elapsed = time.perf_counter() - t0
    decoded = rows(out)
    assert len(decoded) == 10_000
    assert decoded[1][0] == b"1" and decoded[1][1] == b"u****@example.com"
    assert (
        decoded[1][2]
        == hmac.new(KEY, b"4111 1111 1111 0001", hashlib.sha256).hexdigest()[:16].encode()
    )
    assert decoded[1][3] == b"Paid with card [REDACTED:card], confirmation sent to [REDACTED:email]"
    assert decoded[2][3] == b"Prefers phone contact: [REDACTED:phone] after 6pm. VIP since 2019."
    assert decoded[0][3] == NOTES[0]
    benchmark.extra_info["MB"] = len(BENCH_ROWS) / 1e6
    benchmark.extra_info["MB/s (first run)"] = len(BENCH_ROWS) / 1e6 / elapsed


def test_config_names_the_engines_detectors() -> None:
    """The TOML schema's detector names are the engine's, in its order."""
    from hoopfast.config import DETECTORS

    assert DETECTORS == _mask.DETECTOR_NAMES


@pytest.mark.parametrize("plan_cls", PLANS)
def test_overlapping_matches_are_masked_as_their_union(plan_cls: Any) -> None:
    """A "secret" run that starts first ("access_token=" and the JWT's
    header, up to its first dot) overlaps the JWT: both are masked as one
    span, so no part of the token (its payload, its signature) shows."""
    from hoopfast.core._mask import DETECTOR_NAMES

    header = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImRldi1rZXktMSIsInR5cCI6IkpXVCJ9"
    payload = "eyJpc3MiOiJodHRwczovL2Rldi5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJleHAiOjE3MDB9"
    signature = "4xAleQx0Zr9nV3kq8bLw2TgYpHs7cM1dEuJf6oNaRiK5WvXz"
    token = f"{header}.{payload}.{signature}"
    plan = plan_cls([], KEY, list(DETECTOR_NAMES))
    for text in (f"access_token={token}", f"-c myapp.tok={token} x", f"a={token}"):
        out = plan.mask_text(text)
        assert payload not in out and signature not in out and header not in out, out
        assert "[REDACTED:" in out
