"""Who may reach which connection: identity-provider groups -> roles ->
connection grants. Decided once per session, at startup; no grant, no access."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hoopfast.config import UNMASKED_ROLE, Connection, GatewayConfig
from hoopfast.identity.principal import Principal


@dataclass(frozen=True)
class Access:
    #: The principal's roles that this connection grants, sorted.
    roles: tuple[str, ...]
    #: True only when *every* granting role is read-only: grants add up, so
    #: one read-write role makes the session read-write.
    read_only: bool
    #: Sees masked values unmasked. Only the approval flow may set this (a
    #: time-boxed grant by a second person); no configuration does.
    unmasked: bool = False


def roles_of(principal: Principal, config: GatewayConfig) -> frozenset[str]:
    groups = set(principal.groups)
    return frozenset(
        name for name, role in config.roles.items() if groups.intersection(role.groups)
    )


def access_to(
    principal: Principal,
    connection: Connection,
    config: GatewayConfig,
    granted: Iterable[str] = (),
) -> Access | None:
    """The principal's access to ``connection``, or None when no role grants
    it. ``granted``: roles an approved access request gives them for now
    (``unmasked`` among them lifts the masking)."""
    extra = set(granted)
    roles = sorted((roles_of(principal, config) | extra).intersection(connection.grants))
    if not roles:
        return None
    return Access(
        roles=tuple(roles),
        read_only=all(connection.grants[r].read_only for r in roles),
        unmasked=UNMASKED_ROLE in extra,
    )
