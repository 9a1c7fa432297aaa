"""The message codec, run against both implementations side by side, plus
differential tests: on any input both either raise the same kind of error or
return equal results, and encoders produce identical bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopfast.core import _python
from tests.impls import COMPILED, IMPLS, needs_both

PROP = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def msg(code: bytes, payload: bytes) -> bytes:
    return code + struct.pack("!i", len(payload) + 4) + payload


def run(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Outcome of a call: ("ok", result) or ("error", exception class family)."""
    try:
        return "ok", fn(*args)
    except ValueError:
        return "error", "ValueError"
    except TypeError:
        return "error", "TypeError"


def differential(name: str, *args: Any) -> tuple[str, Any]:
    assert COMPILED is not None
    a = run(getattr(_python, name), *args)
    b = run(getattr(COMPILED, name), *args)
    assert a == b, (name, args)
    return a


# --------------------------------------------------------------------------
# ErrorResponse / NoticeResponse


@pytest.mark.parametrize("impl", IMPLS)
class TestFields:
    def test_round_trip(self, impl: ModuleType) -> None:
        fields = [("S", "ERROR"), ("C", "42P01"), ("M", 'relation "ü" does not exist')]
        for kind in (ord("E"), ord("N")):
            m = impl.encode_fields(kind, fields)
            assert m[0] == kind
            assert impl.decode_fields(m) == fields
        assert impl.encode_fields(ord("E"), []) == b"E\x00\x00\x00\x05\x00"
        assert impl.decode_fields(b"N\x00\x00\x00\x05\x00") == []

    def test_exact_bytes(self, impl: ModuleType) -> None:
        assert impl.encode_fields(ord("N"), [("S", "a"), ("\xff", "")]) == (
            b"N\x00\x00\x00\x0aSa\x00\xff\x00\x00"
        )
        assert impl.decode_fields(b"N\x00\x00\x00\x0aSa\x00\xff\x00\x00") == [
            ("S", "a"),
            ("\xff", ""),
        ]

    @pytest.mark.parametrize(
        "raw",
        [
            b"\xed\xa0\x80",  # an encoded surrogate
            b"\xc0\xaf",  # overlong
            b"\xf0\x9f\x98",  # truncated 4-byte sequence
            b"\xf4\x90\x80\x80",  # beyond U+10FFFF
            b"\xe2\x28\xa1",
            b"\x80\xbf\xfe\xff",
            b"a\xf0\x9f\x98\x80b",  # valid emoji
        ],
    )
    def test_lossy_utf8_like_python(self, impl: ModuleType, raw: bytes) -> None:
        m = msg(b"N", b"M" + raw + b"\x00\x00")
        assert impl.decode_fields(m) == [("M", raw.decode("utf-8", "replace"))]

    def test_invalid_utf8_is_replaced(self, impl: ModuleType) -> None:
        raw = b"M\xff\xfeok\xe2\x82\x00\x00"
        assert impl.decode_fields(msg(b"E", raw)) == [("M", "\ufffd\ufffdok\ufffd")]

    @pytest.mark.parametrize(
        "bad",
        [
            b"E\x00\x00\x00\x04",  # no terminator
            b"E\x00\x00\x00\x06Sx",  # unterminated value
            b"E\x00\x00\x00\x06\x00\x00",  # trailing bytes
            b"D\x00\x00\x00\x05\x00",  # wrong type
            b"E\x00\x00\x00\x06\x00",  # declared length too long
            b"E\x00\x00\x00\x04\x00",  # declared length too short
            b"E\x00\x00",  # no header
            b"",
        ],
    )
    def test_decode_rejects(self, impl: ModuleType, bad: bytes) -> None:
        with pytest.raises(ValueError):
            impl.decode_fields(bad)
        # A codec error is a ValueError, never a FramingError.
        try:
            impl.decode_fields(bad)
        except impl.FramingError:
            pytest.fail("codec raised FramingError")
        except ValueError:
            pass

    def test_encode_rejects(self, impl: ModuleType) -> None:
        for kind, fields in [
            (ord("X"), []),
            (ord("E") + 256, []),
            (ord("E"), [("S", "a\x00b")]),
            (ord("E"), [("", "x")]),
            (ord("E"), [("SS", "x")]),
            (ord("E"), [("\x00", "x")]),
            (ord("E"), [("\u0100", "x")]),
            (ord("E"), [("S", "\ud800")]),  # lone surrogate
        ]:
            with pytest.raises(ValueError):
                impl.encode_fields(kind, fields)
        with pytest.raises(TypeError):
            impl.encode_fields(ord("E"), [("S", b"x")])


# --------------------------------------------------------------------------
# DataRow


@pytest.mark.parametrize("impl", IMPLS)
class TestDataRow:
    def test_round_trip(self, impl: ModuleType) -> None:
        for row in ([], [None], [b""], [b"1", None, b"hello", b"x" * 70_000]):
            m = impl.encode_data_row(row)
            assert impl.decode_data_row(m) == row
        assert impl.encode_data_row([b"ab", None]) == (
            b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff"
        )

    @pytest.mark.parametrize(
        "payload",
        [
            b"",  # no count
            b"\x00",  # half a count
            b"\xff\xff",  # negative count
            b"\x00\x01",  # missing column
            b"\x00\x01\xff\xff\xff\xfe",  # length -2
            b"\x00\x01\x80\x00\x00\x00",  # length -2**31
            b"\x00\x01\x00\x00\x00\x02a",  # short value
            b"\x00\x01\xff\xff\xff\xff\x00",  # trailing byte
            b"\x00\x00\x00",  # trailing byte after zero columns
            b"\x00\x01\x7f\xff\xff\xff",  # huge column length
            b"\x7f\xff",  # count lies
        ],
    )
    def test_decode_rejects(self, impl: ModuleType, payload: bytes) -> None:
        with pytest.raises(ValueError):
            impl.decode_data_row(msg(b"D", payload))

    def test_decode_rejects_header(self, impl: ModuleType) -> None:
        for bad in (b"T\x00\x00\x00\x06\x00\x00", b"D\x00\x00\x00\x07\x00\x00", b"D"):
            with pytest.raises(ValueError):
                impl.decode_data_row(bad)

    def test_encode_rejects(self, impl: ModuleType) -> None:
        with pytest.raises(ValueError):
            impl.encode_data_row([None] * 32768)
        assert len(impl.decode_data_row(impl.encode_data_row([None] * 32767))) == 32767
        for bad in ("x", 1, bytearray(b"x")):
            with pytest.raises(TypeError):
                impl.encode_data_row([bad])


# --------------------------------------------------------------------------
# RowDescription


@pytest.mark.parametrize("impl", IMPLS)
class TestRowDescription:
    FIELDS = [
        (b"aid", 16384, 1, 23, 4, -1, 0),
        (b"", 2**32 - 1, -(2**15), 2**32 - 1, -1, -(2**31), 1),
        (b"\xc3\xbc", 0, 2**15 - 1, 0, 2**15 - 1, 2**31 - 1, -1),
    ]

    def test_round_trip(self, impl: ModuleType) -> None:
        m = impl.encode_row_description(self.FIELDS)
        assert impl.decode_row_description(m) == self.FIELDS
        assert impl.decode_row_description(impl.encode_row_description([])) == []

    def test_exact_bytes(self, impl: ModuleType) -> None:
        m = impl.encode_row_description([(b"a", 1, 2, 3, 4, 5, 6)])
        assert m == msg(b"T", b"\x00\x01a\x00" + struct.pack("!IhIhih", 1, 2, 3, 4, 5, 6))

    def test_oids_are_unsigned(self, impl: ModuleType) -> None:
        m = msg(b"T", b"\x00\x01a\x00" + b"\xff" * 18)
        assert impl.decode_row_description(m) == [(b"a", 2**32 - 1, -1, 2**32 - 1, -1, -1, -1)]

    def test_decode_rejects_every_truncation(self, impl: ModuleType) -> None:
        payload = impl.encode_row_description(self.FIELDS)[5:]
        for cut in range(len(payload)):
            with pytest.raises(ValueError):
                impl.decode_row_description(msg(b"T", payload[:cut]))
        with pytest.raises(ValueError):
            impl.decode_row_description(msg(b"T", payload + b"\x00"))
        with pytest.raises(ValueError):
            impl.decode_row_description(msg(b"T", b"\xff\xff"))

    @pytest.mark.parametrize(
        "field",
        [
            (b"a\x00", 0, 0, 0, 0, 0, 0),
            (b"a", -1, 0, 0, 0, 0, 0),
            (b"a", 2**32, 0, 0, 0, 0, 0),
            (b"a", 0, 2**15, 0, 0, 0, 0),
            (b"a", 0, 0, 2**100, 0, 0, 0),
            (b"a", 0, 0, 0, -(2**15) - 1, 0, 0),
            (b"a", 0, 0, 0, 0, 2**31, 0),
            (b"a", 0, 0, 0, 0, 0, 2**15),
            (b"a", 0, 0, 0, 0, 0),
        ],
    )
    def test_encode_rejects(self, impl: ModuleType, field: Any) -> None:
        with pytest.raises(ValueError):
            impl.encode_row_description([field])

    def test_encode_type_errors(self, impl: ModuleType) -> None:
        with pytest.raises(TypeError):
            impl.encode_row_description([("a", 0, 0, 0, 0, 0, 0)])
        with pytest.raises(TypeError):
            impl.encode_row_description([(b"a", 0.5, 0, 0, 0, 0, 0)])


# --------------------------------------------------------------------------
# Startup packets


def startup(code: int, body: bytes) -> bytes:
    return struct.pack("!iI", len(body) + 8, code) + body


@pytest.mark.parametrize("impl", IMPLS)
class TestStartup:
    def test_round_trip(self, impl: ModuleType) -> None:
        params = {"user": "alice", "database": "db", "application_name": "ünï"}
        p = impl.encode_startup(params)
        assert p == startup(
            196608,
            b"user\x00alice\x00database\x00db\x00application_name\x00\xc3\xbcn\xc3\xaf\x00\x00",
        )
        assert impl.decode_startup(p) == (196608, params)
        assert impl.decode_startup(impl.encode_startup({})) == (196608, {})
        p32 = impl.encode_startup({"user": "a"}, 196610)  # protocol 3.2
        assert impl.decode_startup(p32) == (196610, {"user": "a"})

    def test_special_requests(self, impl: ModuleType) -> None:
        for code in (80877103, 80877104):
            assert impl.encode_startup({}, code) == struct.pack("!iI", 8, code)
            assert impl.decode_startup(struct.pack("!iI", 8, code)) == (code, {})
            with pytest.raises(ValueError):
                impl.decode_startup(startup(code, b"x"))
        assert impl.decode_startup(startup(1234, b"anything")) == (1234, {})
        assert impl.decode_startup(startup(2**32 - 1, b"")) == (2**32 - 1, {})

    def test_cancel_request(self, impl: ModuleType) -> None:
        p = startup(80877102, struct.pack("!ii", 4242, -559038737))
        assert impl.decode_startup(p) == (80877102, {"pid": "4242", "secret": "deadbeef"})
        assert impl.encode_startup({"pid": "4242", "secret": "DEADBEEF"}, 80877102) == p
        long = startup(80877102, struct.pack("!i", -7) + bytes(range(32)))  # protocol 3.2
        code, params = impl.decode_startup(long)
        assert params == {"pid": "-7", "secret": bytes(range(32)).hex()}
        assert impl.encode_startup(params, code) == long
        for body_len in (0, 4, 7, 261):
            with pytest.raises(ValueError):
                impl.decode_startup(startup(80877102, b"\x01" * body_len))
        assert impl.decode_startup(startup(80877102, b"\x01" * 260))[1]["pid"] == str(0x01010101)
        for params in (
            {},
            {"pid": "1"},
            {"pid": "1", "secret": "00000000", "x": "y"},
            {"pid": "+1", "secret": "00000000"},
            {"pid": " 1", "secret": "00000000"},
            {"pid": "2147483648", "secret": "00000000"},
            {"pid": "1", "secret": "000000"},
            {"pid": "1", "secret": "0000000g"},
            {"pid": "1", "secret": "00 000000"},
            {"pid": "1", "secret": "00" * 257},
        ):
            with pytest.raises(ValueError):
                impl.encode_startup(params, 80877102)

    @pytest.mark.parametrize(
        "bad",
        [
            b"",
            b"\x00\x00\x00\x08\x00\x03\x00",  # shorter than 8
            startup(196608, b"")[:-1],
            startup(196608, b"")[:4] + b"\x00\x03\x00\x00\x00",  # length mismatch
            startup(196608, b""),  # no terminator
            startup(196608, b"user\x00"),  # key without value, no terminator
            startup(196608, b"user\x00alice"),  # unterminated value
            startup(196608, b"user\x00alice\x00"),  # no terminator
            startup(196608, b"\x00\x00"),  # trailing bytes
            b"\xff\xff\xff\xff\x00\x03\x00\x00",
        ],
    )
    def test_decode_rejects(self, impl: ModuleType, bad: bytes) -> None:
        with pytest.raises(ValueError):
            impl.decode_startup(bad)

    def test_encode_rejects(self, impl: ModuleType) -> None:
        for params, code in [
            ({"": "x"}, 196608),
            ({"a\x00": "x"}, 196608),
            ({"a": "x\x00"}, 196608),
            ({"a": "b"}, 80877103),
            ({"a": "b"}, 1234),
            ({}, -1),
            ({}, 2**32),
        ]:
            with pytest.raises(ValueError):
                impl.encode_startup(params, code)
        with pytest.raises(TypeError):
            impl.encode_startup({"a": 1})
        with pytest.raises(TypeError):
            impl.encode_startup([("a", "b")])

    def test_duplicate_keys_keep_last(self, impl: ModuleType) -> None:
        p = startup(196608, b"a\x001\x00b\x002\x00a\x003\x00\x00")
        assert list(impl.decode_startup(p)[1].items()) == [("a", "3"), ("b", "2")]


# --------------------------------------------------------------------------
# Differential property tests

text = st.text(st.characters(exclude_characters="\x00", codec="utf-8"))
code_chars = st.characters(min_codepoint=1, max_codepoint=255)
values = st.one_of(st.none(), st.binary(max_size=300))
int16 = st.integers(-(2**15), 2**15 - 1)
uint32 = st.integers(0, 2**32 - 1)
field_desc = st.tuples(
    st.binary(max_size=30).filter(lambda b: b"\x00" not in b),
    uint32,
    int16,
    uint32,
    int16,
    st.integers(-(2**31), 2**31 - 1),
    int16,
)


@needs_both
@PROP
@given(kind=st.sampled_from([ord("E"), ord("N")]), fields=st.lists(st.tuples(code_chars, text)))
def test_fields_round_trip_differential(kind: int, fields: list[tuple[str, str]]) -> None:
    status, encoded = differential("encode_fields", kind, fields)
    assert status == "ok"
    assert differential("decode_fields", encoded) == ("ok", fields)


@needs_both
@PROP
@given(raw=st.binary(max_size=200))
def test_lossy_utf8_matches_python(raw: bytes) -> None:
    value = raw.replace(b"\x00", b"")
    m = msg(b"E", b"M" + value + b"\x00\x00")
    expected = [("M", value.decode("utf-8", "replace"))]
    assert differential("decode_fields", m) == ("ok", expected)


@needs_both
@PROP
@given(row=st.lists(values, max_size=40))
def test_data_row_round_trip_differential(row: list[bytes | None]) -> None:
    status, encoded = differential("encode_data_row", row)
    assert status == "ok"
    assert differential("decode_data_row", encoded) == ("ok", row)


@needs_both
@PROP
@given(fields=st.lists(field_desc, max_size=20))
def test_row_description_round_trip_differential(fields: list[Any]) -> None:
    status, encoded = differential("encode_row_description", fields)
    assert status == "ok"
    assert differential("decode_row_description", encoded) == ("ok", fields)


@needs_both
@PROP
@given(
    params=st.dictionaries(text.filter(bool), text, max_size=10),
    code=st.sampled_from([196608, 196610, 196863]),
)
def test_startup_round_trip_differential(params: dict[str, str], code: int) -> None:
    status, encoded = differential("encode_startup", params, code)
    assert status == "ok"
    assert differential("decode_startup", encoded) == ("ok", (code, params))


@needs_both
@PROP
@given(
    params=st.dictionaries(
        st.sampled_from(["pid", "secret", "x"]), st.text("0123456789abcdefABCDEF-+ g", max_size=12)
    ),
    code=st.sampled_from([80877102, 80877103, 80877104, 196608, 12345, 0]),
)
def test_encode_startup_errors_differential(params: dict[str, str], code: int) -> None:
    status, encoded = differential("encode_startup", params, code)
    if status == "ok":
        status, (decoded_code, _) = differential("decode_startup", encoded)
        assert (status, decoded_code) == ("ok", code)


@needs_both
@PROP
@given(
    kind=st.integers(-5, 300),
    fields=st.lists(st.tuples(st.text(max_size=2), st.text(max_size=5))),
)
def test_encode_fields_errors_differential(kind: int, fields: list[tuple[str, str]]) -> None:
    differential("encode_fields", kind, fields)


@needs_both
@PROP
@given(fields=st.lists(st.tuples(st.binary(max_size=3), *[st.integers(-(2**33), 2**33)] * 6)))
def test_encode_row_description_errors_differential(fields: list[Any]) -> None:
    differential("encode_row_description", fields)


DECODERS = ["decode_fields", "decode_data_row", "decode_row_description", "decode_startup"]


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Random bytes, often dressed as a well-formed header so decoders go deep."""
    body = draw(
        st.one_of(
            st.binary(max_size=80),
            st.lists(
                st.sampled_from([b"\x00", b"\xff\xff\xff\xff", b"\x00\x01", b"a", b"\xc3"])
            ).map(b"".join),
        )
    )
    how = draw(st.sampled_from(["raw", "message", "startup"]))
    if how == "message":
        return msg(bytes([draw(st.sampled_from(b"EDNTX"))]), body)
    if how == "startup":
        code = draw(st.sampled_from([196608, 196610, 80877102, 80877103, 80877104, 7]))
        return startup(code, body)
    return body


@needs_both
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage(), decoder=st.sampled_from(DECODERS))
def test_decoders_on_garbage_differential(data: bytes, decoder: str) -> None:
    differential(decoder, data)


@needs_both
@PROP
@given(row=st.lists(values, min_size=1, max_size=8), flip=st.data())
def test_mutated_data_rows_differential(row: list[bytes | None], flip: st.DataObject) -> None:
    encoded = bytearray(_python.encode_data_row(row))
    i = flip.draw(st.integers(5, len(encoded) - 1))
    encoded[i] = flip.draw(st.integers(0, 255))
    cut = flip.draw(st.integers(5, len(encoded)))
    mutated = bytes(encoded[:cut])
    mutated = mutated[:1] + struct.pack("!i", len(mutated) - 1) + mutated[5:]
    differential("decode_data_row", mutated)
