"""Who is on the other end of a session."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    #: The person (the configured identity claim: sub, email, ...).
    subject: str
    groups: tuple[str, ...]
    #: The token's ``jti``, when it has one: recordings name the token by it.
    token_id: str | None
    issuer: str
    #: Unix time after which the token is no longer valid.
    expires_at: float
