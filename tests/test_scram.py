"""The upstream SCRAM client against the RFC's own example, and its refusals."""

from __future__ import annotations

import base64

import pytest

from hoopfast.proxy.postgres.messages import ProtocolViolation
from hoopfast.proxy.postgres.scram import ScramClient, md5_password, saslprep

# RFC 7677, section 3.
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramClient:
    return ScramClient("pencil", username="user", nonce=NONCE)


def test_rfc7677_exchange() -> None:
    client = rfc_client()
    assert client.client_first() == b"n,,n=user,r=" + NONCE.encode()
    assert client.client_final(SERVER_FIRST) == CLIENT_FINAL
    client.verify_server_final(SERVER_FINAL)  # raises if the server is not genuine


def test_a_server_that_does_not_know_the_password_is_refused() -> None:
    client = rfc_client()
    client.client_final(SERVER_FIRST)
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(ProtocolViolation, match="signature mismatch"):
        client.verify_server_final(forged)


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        NONCE.encode().join([b"r=", b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"]),  # not extended
        b"r=rOprNGfwEbeRWgbNEkqOxx,s=***,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"garbage",
    ],
)
def test_malformed_server_first(server_first: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        rfc_client().client_final(server_first)


def test_server_error_attribute() -> None:
    client = rfc_client()
    client.client_final(SERVER_FIRST)
    with pytest.raises(ProtocolViolation, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_channel_binding_header() -> None:
    client = ScramClient("pw", b"\x01" * 32, nonce="abc")
    assert client.mechanism == "SCRAM-SHA-256-PLUS"
    assert client.client_first().startswith(b"p=tls-server-end-point,,n=,r=abc")
    final = client.client_final(b"r=abcdef,s=AAAA,i=4096")
    cbind = base64.b64decode(final.split(b",")[0][2:])
    assert cbind == b"p=tls-server-end-point,," + b"\x01" * 32


def test_saslprep() -> None:
    assert saslprep("plain ascii") == "plain ascii"
    assert saslprep("I\u00adX") == "IX"  # soft hyphen maps to nothing
    assert saslprep("\u2168") == "IX"  # NFKC
    assert saslprep("a\u0007b") == "a\u0007b"  # prohibited: used raw, as PostgreSQL does


def test_md5_password_matches_a_known_postgres_hash() -> None:
    import hashlib

    # pg_authid stores 'md5' + md5(password || user); for postgres/postgres
    # that is the well-known md53175bce1d3201d16594cebf9d7eb3f9d.
    stored = b"3175bce1d3201d16594cebf9d7eb3f9d"
    salt = b"\x01\x02\x03\x04"
    expected = b"md5" + hashlib.md5(stored + salt).hexdigest().encode()
    assert md5_password("postgres", "postgres", salt) == expected
