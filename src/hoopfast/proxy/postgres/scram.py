"""SCRAM-SHA-256 client (RFC 5802, RFC 7677), as PostgreSQL speaks it, for
authenticating the gateway to the upstream with the stored secret.

PostgreSQL ignores the SCRAM user name (it takes the startup packet's), so the
client-first message carries an empty ``n=``, exactly like libpq.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

from hoopfast.proxy.postgres.messages import ProtocolViolation

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep as PostgreSQL applies it: on any prohibited
    character the raw password is used unchanged (see pg_saslprep)."""
    if password.isascii() and password.isprintable():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    for c in normalized:
        if (
            stringprep.in_table_c12(c)
            or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c)
            or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c)
            or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c)
            or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c)
            or stringprep.in_table_a1(c)
        ):
            return password
    return normalized


def _attributes(message: bytes) -> dict[str, str]:
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolViolation("SCRAM message is not ASCII") from None
    attrs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ProtocolViolation("malformed SCRAM message")
        attrs[key] = value
    return attrs


@functools.lru_cache(maxsize=256)
def _derive_keys(password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey). PBKDF2 is deliberately slow (4096 rounds by
    default) and its inputs are fixed per upstream role, so a gateway that
    opens many upstream connections derives them once, as pgbouncer does. The
    cache lives in this process only, next to the password it derives from."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return (
        hmac.digest(salted, b"Client Key", "sha256"),
        hmac.digest(salted, b"Server Key", "sha256"),
    )


class ScramClient:
    def __init__(
        self,
        password: str,
        channel_binding: bytes | None = None,
        *,
        username: str = "",
        nonce: str | None = None,
    ) -> None:
        """``channel_binding``: the tls-server-end-point data of the upstream
        certificate, when the server offered SCRAM-SHA-256-PLUS over TLS.
        ``username`` and ``nonce`` exist for test vectors; PostgreSQL takes the
        user from the startup packet, and the nonce must be random."""
        self._password = saslprep(password).encode("utf-8")
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._cbind = channel_binding
        self._gs2 = "p=tls-server-end-point,," if channel_binding is not None else "n,,"
        self._client_first_bare = f"n={username},r={self._nonce}"
        self._server_signature: bytes | None = None
        #: True once the server has proved it knows the password.
        self.verified = False

    @property
    def mechanism(self) -> str:
        return MECHANISM_PLUS if self._cbind is not None else MECHANISM

    def client_first(self) -> bytes:
        return (self._gs2 + self._client_first_bare).encode("ascii")

    def client_final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if not nonce or not salt_b64 or not iterations or not iterations.isdigit():
            raise ProtocolViolation("malformed SCRAM server-first message")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ProtocolViolation("SCRAM server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except ValueError:
            raise ProtocolViolation("SCRAM salt is not base64") from None
        count = int(iterations)
        if not 1 <= count <= 10_000_000:
            raise ProtocolViolation("SCRAM iteration count out of range")

        client_key, server_key = _derive_keys(self._password, salt, count)
        stored_key = hashlib.sha256(client_key).digest()

        cbind_input = self._gs2.encode("ascii") + (self._cbind or b"")
        without_proof = f"c={base64.b64encode(cbind_input).decode('ascii')},r={nonce}"
        auth_message = ",".join(
            (self._client_first_bare, server_first.decode("ascii"), without_proof)
        ).encode("ascii")
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise ProtocolViolation(f"SCRAM authentication refused by server: {attrs['e']}")
        if self._server_signature is None or "v" not in attrs:
            raise ProtocolViolation("malformed SCRAM server-final message")
        try:
            received = base64.b64decode(attrs["v"], validate=True)
        except ValueError:
            raise ProtocolViolation("SCRAM server signature is not base64") from None
        if not hmac.compare_digest(received, self._server_signature):
            # The server does not know the password: it is not the server we meant.
            raise ProtocolViolation("SCRAM server signature mismatch")
        self.verified = True


def md5_password(password: str, user: str, salt: bytes) -> bytes:
    """PostgreSQL's MD5 response: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest().encode("ascii")
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode("ascii")


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 channel binding data: the certificate's hash, with its
    signature hash algorithm, except that MD5 and SHA-1 become SHA-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    return cert.fingerprint(algorithm)
