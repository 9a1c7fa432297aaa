"""A local development token issuer, for the demo and the tests.

It keeps an Ed25519 key pair under the state directory and publishes the
public half as a JWKS file that the gateway's ``[identity]`` section points
at, so tokens it mints are validated exactly like a real provider's.
Not for production: anyone who can read the state directory can mint tokens.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "hoopfast-dev"
AUDIENCE = "hoopfast"


class DevIssuer:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "dev-issuer"
        self.key_file = self.directory / "signing-key.pem"
        self.jwks_file = self.directory / "jwks.json"
        self._key = self._load_or_create()
        self.kid = self._kid()

    def _load_or_create(self) -> Ed25519PrivateKey:
        if self.key_file.exists():
            key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{self.key_file} is not an Ed25519 key")
            return key
        self.directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Create 0600 from the start: never a moment when the key is world-readable.
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key

    def _kid(self) -> str:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return "dev-" + raw[:6].hex()

    def write_jwks(self) -> Path:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "EdDSA"})
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.jwks_file)
        return self.jwks_file

    def issue(
        self,
        subject: str,
        groups: list[str] | tuple[str, ...] = (),
        ttl: float = 900.0,
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        now: float | None = None,
        extra: dict[str, object] | None = None,
    ) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "groups": list(groups),
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_hex(8),
        }
        claims.update(extra or {})
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})
