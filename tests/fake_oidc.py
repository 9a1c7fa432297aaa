"""A real (HTTP, 127.0.0.1) OpenID Connect provider for the identity tests.

Serves ``/.well-known/openid-configuration`` and ``/jwks`` from a
ThreadingHTTPServer in a thread, with RSA (RS256) and EC (ES256) keys made by
cryptography. It can rotate keys, count JWKS requests, go down (HTTP 500, or
drop connections), lie about its issuer, and mint tokens with any claims, kid
and algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

Down = Literal["up", "500", "drop"]


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg.startswith("RS"):
            data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        else:
            data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        data.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return dict(data)


def make_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    kid = kid or f"{alg.lower()}-{secrets.token_hex(4)}"
    if alg == "RS256":
        return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg == "ES256":
        return SigningKey(kid, alg, ec.generate_private_key(ec.SECP256R1()))
    raise ValueError(alg)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: dict[str, Any], alg: str, headers: dict[str, Any], secret: Any) -> str:
    """A JWT made by hand, as an attacker would (PyJWT refuses to make these):
    ``alg: none`` with no signature, or HS256 keyed with e.g. a public key PEM."""
    header = _b64(json.dumps({"typ": "JWT", "alg": alg, **headers}).encode())
    body = _b64(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    if alg.lower() == "none":
        return f"{header}.{body}."
    assert alg == "HS256"
    key = secret if isinstance(secret, bytes) else str(secret).encode()
    return f"{header}.{body}.{_b64(hmac.new(key, signing_input, hashlib.sha256).digest())}"


class FakeOIDC:
    AUDIENCE = "hoopfast"

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [make_key("RS256"), make_key("ES256")]
        self.state: Down = "up"
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.issuer_override: str | None = None
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                provider._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}/realms/test"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    # -- HTTP -------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        with self._lock:
            if path.endswith("/jwks"):
                self.jwks_requests += 1
            elif path.endswith("/.well-known/openid-configuration"):
                self.discovery_requests += 1
            state = self.state
            keys = [k.jwk() for k in self.keys]
        if state == "drop":
            request.close_connection = True
            request.connection.close()
            return
        if state == "500":
            self._send(request, 500, {"error": "down"})
            return
        if path == "/realms/test/.well-known/openid-configuration":
            self._send(
                request,
                200,
                {
                    "issuer": self.issuer_override or self.issuer,
                    "jwks_uri": f"http://127.0.0.1:{self.port}/realms/test/jwks",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                },
            )
        elif path == "/realms/test/jwks":
            self._send(request, 200, {"keys": keys})
        else:
            self._send(request, 404, {"error": "not found"})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/test/jwks"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- keys and tokens --------------------------------------------------

    def key(self, alg: str) -> SigningKey:
        return next(k for k in self.keys if k.alg == alg)

    def rotate(self, alg: str = "RS256", *, drop_old: bool = True) -> SigningKey:
        """Publish a new key for ``alg``; withdraw the old one(s) of that alg."""
        new = make_key(alg)
        with self._lock:
            if drop_old:
                self.keys = [k for k in self.keys if k.alg != alg]
            self.keys.append(new)
        return new

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.AUDIENCE,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        key: SigningKey | None = None,
        *,
        alg: str | None = None,
        kid: str | None = None,
        secret: Any = None,
        **claims: Any,
    ) -> str:
        """A token; ``secret`` signs with something other than a key (alg confusion, none)."""
        key = key or self.keys[0]
        headers = {"kid": kid or key.kid}
        payload = self.claims(**claims)
        if secret is not None or (alg or "").lower() in ("none", "hs256"):
            return forge(payload, alg or "HS256", headers, secret)
        return jwt.encode(payload, key.private, algorithm=alg or key.alg, headers=headers)
