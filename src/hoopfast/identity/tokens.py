"""Validation of the bearer tokens clients present as their password.

A token is a JWT signed by the configured identity provider (or, for the
demo and tests, the development issuer in :mod:`hoopfast.identity.devissuer`).
Errors carry a *category* that is safe to show the client (expired, bad
signature, wrong audience, ...) and nothing of the token or the keys.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections import OrderedDict
from typing import Any, Literal

import jwt

from hoopfast.config import Identity
from hoopfast.identity.principal import Principal

log = logging.getLogger(__name__)

Category = Literal[
    "malformed",
    "expired",
    "not yet valid",
    "bad signature",
    "wrong audience",
    "wrong issuer",
    "unknown key",
    "algorithm not allowed",
    "missing claim",
]

#: JWTs are compact; a bigger "password" is not a token.
MAX_TOKEN_LENGTH = 16 * 1024


class TokenError(Exception):
    def __init__(self, category: Category, detail: str = "") -> None:
        self.category: Category = category
        # `detail` is for the gateway log only; it never contains the token.
        self.detail = detail
        super().__init__(category if not detail else f"{category}: {detail}")


class KeySet:
    """The provider's public keys by ``kid``, from a JWKS file or URL."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self.refresh()

    def _fetch(self) -> dict[str, Any]:
        if self._identity.jwks_file is not None:
            data = json.loads(self._identity.jwks_file.read_text(encoding="utf-8"))
        else:
            assert self._identity.jwks_url is not None
            with urllib.request.urlopen(self._identity.jwks_url, timeout=10) as response:
                data = json.loads(response.read(1 << 20))
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        return data

    def refresh(self) -> None:
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in self._fetch()["keys"]:
            try:
                key = jwt.PyJWK.from_dict(entry)
            except jwt.PyJWKError as e:
                log.warning("skipping unusable JWKS key %s: %s", entry.get("kid"), e)
                continue
            if key.key_type == "oct":
                # A shared secret in a public key set is a key-confusion trap.
                log.warning("skipping symmetric JWKS key %s", entry.get("kid"))
                continue
            keys[entry.get("kid")] = key
        if not keys:
            raise ValueError("the JWKS has no usable asymmetric key")
        self._keys = keys

    def get(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path, e.g. ``realm_access.roles``."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class TokenValidator:
    """Validates tokens; remembers recently validated ones.

    Clients that reconnect often (pgbench -C, connection pools) present the
    same token again and again; re-verifying its signature each time costs
    more than the rest of the handshake. A token validated before is accepted
    again from the cache *only until its own expiry*, so the cache never
    extends what the signature granted.
    """

    CACHE_SIZE = 4096

    def __init__(self, identity: Identity, keys: KeySet | None = None) -> None:
        self.identity = identity
        self.keys = keys or KeySet(identity)
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def validate(self, token: str, now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            if now <= cached.expires_at + self.identity.leeway:
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
            raise TokenError("expired")
        principal = self._verify(token, now)
        self._cache[token] = principal
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, now: float) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed", "empty or oversized token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise TokenError("malformed", str(e)) from None
        algorithm = header.get("alg")
        if algorithm not in self.identity.algorithms:
            raise TokenError("algorithm not allowed", f"alg={algorithm!r}")
        key = self.keys.get(header.get("kid"))
        if key is None:
            raise TokenError("unknown key", f"kid={header.get('kid')!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.identity.audience,
                issuer=self.identity.issuer,
                leeway=self.identity.leeway,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenError("missing claim", e.claim) from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError) as e:
            raise TokenError("malformed", type(e).__name__) from None
        if claims["iat"] > now + self.identity.leeway:
            raise TokenError("not yet valid", "issued in the future")

        subject = _claim(claims, self.identity.identity_claim)
        if not isinstance(subject, str) or not subject:
            raise TokenError("missing claim", self.identity.identity_claim)
        groups = _claim(claims, self.identity.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise TokenError("malformed", f"claim {self.identity.groups_claim} is not a list")
        jti = claims.get("jti")
        return Principal(
            subject=subject,
            groups=tuple(groups),
            token_id=jti if isinstance(jti, str) else None,
            issuer=claims["iss"],
            expires_at=float(claims["exp"]),
        )
