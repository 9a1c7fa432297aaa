"""A real (HTTP, 127.0.0.1) OpenID Connect provider for the identity tests.

Serves ``/.well-known/openid-configuration`` and ``/jwks`` from a
ThreadingHTTPServer in a thread, with RSA (RS256) and EC (ES256) keys made by
cryptography. It can rotate keys, count JWKS requests, go down (HTTP 500, or
drop connections), lie about its issuer, and mint tokens with any claims, kid
and algorithm.

It is also an OAuth 2.0 authorization server for ``hoopfast login``: the
device authorization grant (RFC 8628) at ``/device`` and a token endpoint at
``/token`` (device_code and refresh_token grants), with form-encoded requests
and ``{"error": ...}`` answers with HTTP 400. A test plays the person in the
browser with ``approve`` / ``deny`` / ``expire`` (``next_user_code`` waits
for a login to start), and steers the server with the attributes below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass
class DeviceGrant:
    """One device authorization, as the provider tracks it."""

    device_code: str
    user_code: str
    client_id: str
    scope: str
    audience: str | None
    expires_at: float
    status: Literal["pending", "approved", "denied"] = "pending"
    sub: str = "alice"
    claims: dict[str, Any] = field(default_factory=dict)
    polls: int = 0


@dataclass
class RefreshGrant:
    client_id: str
    scope: str
    audience: str | None
    sub: str
    claims: dict[str, Any]


class FakeOIDC:
    AUDIENCE = "hoopfast"
    CLIENT_ID = "hoopfast-cli"
    DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [make_key("RS256"), make_key("ES256")]
        self.state: Down = "up"
        self.jwks_requests = 0
        #: Seconds the JWKS answer takes (a slow provider).
        self.jwks_delay = 0.0
        self.discovery_requests = 0
        self.issuer_override: str | None = None
        #: Changes to the discovery document (None removes a member).
        self.discovery_overrides: dict[str, Any] = {}

        # -- the authorization server -----------------------------------------
        #: Public clients allowed the device grant; a client in
        #: ``client_secrets`` must also send its secret (as Google's do).
        self.clients: set[str] = {self.CLIENT_ID}
        self.client_secrets: dict[str, str] = {}
        #: What /device answers (``interval`` 0 keeps polling tests fast).
        self.device_interval: int | None = 0
        self.device_expires_in = 600
        #: Lifetime of issued tokens (``expires_in`` and the JWTs' ``exp``).
        self.token_ttl = 300
        #: The next this many polls of a pending grant answer ``slow_down``.
        self.slow_down_polls = 0
        #: What a denied login answers (Entra ID says ``authorization_declined``).
        self.deny_error = "access_denied"
        self.issue_refresh_tokens = True
        self.issue_id_tokens = True
        #: Emulate providers (Google) whose access tokens are not JWTs.
        self.opaque_access_tokens = False
        #: Every form POSTed: (path, fields).
        self.posts: list[tuple[str, dict[str, str]]] = []
        self.grants: dict[str, DeviceGrant] = {}
        self.refresh_tokens: dict[str, RefreshGrant] = {}
        self._user_codes_seen: set[str] = set()
        self._lock = threading.Lock()
        self._started = threading.Condition(self._lock)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                provider._handle(self)

            def do_POST(self) -> None:
                provider._handle_post(self)

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
            base = f"http://127.0.0.1:{self.port}/realms/test"
            document: dict[str, Any] = {
                "issuer": self.issuer_override or self.issuer,
                "jwks_uri": f"{base}/jwks",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "device_authorization_endpoint": f"{base}/device",
                "token_endpoint": f"{base}/token",
                "grant_types_supported": ["refresh_token", self.DEVICE_CODE_GRANT],
            }
            document.update(self.discovery_overrides)
            self._send(request, 200, {k: v for k, v in document.items() if v is not None})
        elif path == "/realms/test/jwks":
            time.sleep(self.jwks_delay)
            self._send(request, 200, {"keys": keys})
        else:
            self._send(request, 404, {"error": "not found"})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(data)

    @staticmethod
    def _error(request: BaseHTTPRequestHandler, error: str, description: str = "") -> None:
        body = {"error": error}
        if description:
            body["error_description"] = description
        FakeOIDC._send(request, 400, body)

    def _handle_post(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        with self._lock:
            state = self.state
        if state == "drop":
            request.close_connection = True
            request.connection.close()
            return
        if state == "500":
            self._send(request, 500, {"error": "server_error"})
            return
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            self._error(request, "invalid_request", "expected a form-encoded body")
            return
        try:
            pairs = urllib.parse.parse_qsl(
                raw.decode(), keep_blank_values=True, strict_parsing=bool(raw)
            )
        except (UnicodeDecodeError, ValueError):
            self._error(request, "invalid_request", "malformed body")
            return
        form = dict(pairs)
        if len(form) != len(pairs):
            # RFC 6749 §3.1: request parameters must not be repeated.
            self._error(request, "invalid_request", "repeated parameter")
            return
        with self._lock:
            self.posts.append((request.path, form))
        if request.path == "/realms/test/device":
            self._device_authorization(request, form)
        elif request.path == "/realms/test/token":
            self._token(request, form)
        else:
            self._send(request, 404, {"error": "not found"})

    def _client_ok(self, form: dict[str, str]) -> bool:
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return False
        secret = self.client_secrets.get(client_id)
        return secret is None or form.get("client_secret") == secret

    def _device_authorization(self, request: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        if not self._client_ok(form):
            self._error(request, "invalid_client", "unknown client")
            return
        device_code = secrets.token_urlsafe(24)
        alphabet = "BCDFGHJKLMNPQRSTVWXZ"
        letters = "".join(secrets.choice(alphabet) for _ in range(8))
        user_code = f"{letters[:4]}-{letters[4:]}"
        base = f"http://127.0.0.1:{self.port}/realms/test/activate"
        with self._lock:
            self.grants[device_code] = DeviceGrant(
                device_code=device_code,
                user_code=user_code,
                client_id=form["client_id"],
                scope=form.get("scope", ""),
                audience=form.get("audience"),
                expires_at=time.monotonic() + self.device_expires_in,
            )
            self._started.notify_all()
            body: dict[str, Any] = {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": base,
                "verification_uri_complete": f"{base}?user_code={user_code}",
                "expires_in": self.device_expires_in,
            }
            if self.device_interval is not None:
                body["interval"] = self.device_interval
        self._send(request, 200, body)

    def _token(self, request: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        grant_type = form.get("grant_type")
        if not self._client_ok(form):
            self._error(request, "invalid_client", "unknown client")
            return
        if grant_type == self.DEVICE_CODE_GRANT:
            with self._lock:
                grant = self.grants.get(form.get("device_code", ""))
                if grant is None or grant.client_id != form["client_id"]:
                    error = "invalid_grant"
                elif time.monotonic() >= grant.expires_at:
                    error = "expired_token"
                elif grant.status == "denied":
                    error = self.deny_error
                elif grant.status == "pending":
                    grant.polls += 1
                    if self.slow_down_polls > 0:
                        self.slow_down_polls -= 1
                        error = "slow_down"
                    else:
                        error = "authorization_pending"
                else:
                    error = ""
                    # A device code buys one set of tokens.
                    del self.grants[grant.device_code]
            if error:
                self._error(request, error)
                return
            assert grant is not None
            self._send(
                request,
                200,
                self._issue(grant.client_id, grant.scope, grant.audience, grant.sub, grant.claims),
            )
        elif grant_type == "refresh_token":
            with self._lock:
                old = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if old is None or old.client_id != form["client_id"]:
                self._error(request, "invalid_grant", "refresh token unknown or revoked")
                return
            self._send(
                request,
                200,
                self._issue(old.client_id, old.scope, old.audience, old.sub, old.claims),
            )
        else:
            self._error(request, "unsupported_grant_type")

    def _issue(
        self,
        client_id: str,
        scope: str,
        audience: str | None,
        sub: str,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        now = int(time.time())
        ttl = self.token_ttl
        profile = {"sub": sub, "preferred_username": sub, "email": f"{sub}@example.com", **extra}
        if self.opaque_access_tokens:
            access_token = "ya29." + secrets.token_urlsafe(32)
        else:
            access_token = self.mint(
                aud=audience or self.AUDIENCE,
                iat=now,
                nbf=now,
                exp=now + ttl,
                azp=client_id,
                scope=scope,
                **profile,
            )
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }
        if self.issue_id_tokens and "openid" in scope.split():
            body["id_token"] = self.mint(aud=client_id, iat=now, nbf=now, exp=now + ttl, **profile)
        if self.issue_refresh_tokens:
            refresh_token = secrets.token_urlsafe(32)
            with self._lock:
                self.refresh_tokens[refresh_token] = RefreshGrant(
                    client_id, scope, audience, sub, dict(extra)
                )
            body["refresh_token"] = refresh_token
        return body

    # -- the person at the browser -------------------------------------------

    def next_user_code(self, timeout: float = 10.0) -> str:
        """Wait for a device authorization this method has not returned yet."""
        deadline = time.monotonic() + timeout
        with self._started:
            while True:
                fresh = [
                    g.user_code
                    for g in self.grants.values()
                    if g.user_code not in self._user_codes_seen
                ]
                if fresh:
                    self._user_codes_seen.add(fresh[0])
                    return fresh[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no device authorization was started")
                self._started.wait(remaining)

    def _grant(self, user_code: str) -> DeviceGrant:
        for grant in self.grants.values():
            if grant.user_code == user_code:
                return grant
        raise KeyError(f"no pending device authorization with user code {user_code}")

    def approve(
        self, user_code: str, sub: str = "alice", groups: Sequence[str] = (), **claims: Any
    ) -> None:
        with self._lock:
            grant = self._grant(user_code)
            grant.status = "approved"
            grant.sub = sub
            grant.claims = {**claims, "groups": list(groups)} if groups else dict(claims)

    def deny(self, user_code: str) -> None:
        with self._lock:
            self._grant(user_code).status = "denied"

    def expire(self, user_code: str) -> None:
        with self._lock:
            self._grant(user_code).expires_at = 0.0

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self.refresh_tokens.clear()

    def polls(self) -> int:
        """Device-code polls of the token endpoint so far."""
        return sum(
            1 for path, form in self.posts if form.get("grant_type") == self.DEVICE_CODE_GRANT
        )

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
