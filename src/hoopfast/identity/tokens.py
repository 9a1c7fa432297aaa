"""Validation of the bearer tokens clients present as their password.

A token is a JWT signed by the configured identity provider (or, for the
demo and tests, the development issuer in :mod:`hoopfast.identity.devissuer`).
Errors carry a *category* that is safe to show the client (expired, bad
signature, wrong audience, ...) and nothing of the token or the keys.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Literal

import jwt

from hoopfast.config import Identity
from hoopfast.identity.jwks import KeySet, PublicKey
from hoopfast.identity.principal import Principal

__all__ = ["MAX_TOKEN_LENGTH", "KeySet", "TokenError", "TokenValidator"]

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

#: The key type each allowed algorithm needs: a token may not pick a key of
#: another family (e.g. an RSA key used as an HMAC secret).
_KEY_TYPE = {
    **{a: "RSA" for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{a: "EC" for a in ("ES256", "ES384", "ES512", "ES256K")},
    **{a: "OKP" for a in ("EdDSA", "Ed25519", "Ed448")},
}


class TokenError(Exception):
    def __init__(self, category: Category, detail: str = "") -> None:
        self.category: Category = category
        # `detail` is for the gateway log only; it never contains the token.
        self.detail = detail
        super().__init__(category if not detail else f"{category}: {detail}")


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
        # token -> (principal, kid of the key that verified it)
        self._cache: OrderedDict[str, tuple[Principal, str | None]] = OrderedDict()

    def close(self) -> None:
        """Stop the key set's background refresh."""
        self.keys.close()

    def validate(self, token: str, now: float | None = None) -> Principal:
        """Synchronous and network-free: the keys come from a cached snapshot."""
        now = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            principal, kid = cached
            if now > principal.expires_at + self.identity.leeway:
                del self._cache[token]
                raise TokenError("expired")
            if self.keys.peek(kid) is not None:
                self._cache.move_to_end(token)
                return principal
            # The key that signed it has been withdrawn: judge the token afresh.
            del self._cache[token]
        principal, kid = self._verify(token, now)
        self._cache[token] = (principal, kid)
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, now: float) -> tuple[Principal, str | None]:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed", "empty or oversized token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            # (DecodeError, or a header PyJWT refuses: a kid that is not a
            # string is an InvalidTokenError of its own.)
            raise TokenError("malformed", str(e)) from None
        algorithm = header.get("alg")
        if algorithm not in self.identity.algorithms or algorithm not in _KEY_TYPE:
            raise TokenError("algorithm not allowed", f"alg={algorithm!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed", "kid is not a string")
        key: PublicKey | None = self.keys.get(kid)
        if key is None:
            raise TokenError("unknown key", self.keys.why_unknown(kid))
        if key.kty != _KEY_TYPE[algorithm] or (key.alg is not None and key.alg != algorithm):
            raise TokenError(
                "algorithm not allowed", f"alg={algorithm!r} does not fit key {key.kid!r}"
            )
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
        principal = Principal(
            subject=subject,
            groups=tuple(groups),
            token_id=jti if isinstance(jti, str) else None,
            issuer=claims["iss"],
            expires_at=float(claims["exp"]),
        )
        return principal, key.kid
