"""What ``hoopfast login`` / ``connect`` / ``logout`` do, put together.

``login`` resolves the client settings, runs the device flow against the
provider (:mod:`hoopfast.identity.oauth`) and gets the entry to keep in the
token file (:mod:`hoopfast.identity.tokenstore`). ``connect`` hands a stored
token to ``psql`` in ``PGPASSWORD`` (never on the command line, where ``ps``
shows it).

The commands' exit codes (``EXIT_*``, documented in docs/login.md) are the
``exit_code`` of the errors, defined with them in :mod:`hoopfast.identity.oauth`;
they and :func:`~hoopfast.identity.tokenstore.default_token_file` are also
importable from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from hoopfast.identity.oauth import EXIT_DENIED as EXIT_DENIED
from hoopfast.identity.oauth import EXIT_ERROR as EXIT_ERROR
from hoopfast.identity.oauth import EXIT_EXPIRED as EXIT_EXPIRED
from hoopfast.identity.oauth import (
    EXIT_NO_PSQL,
    TIMEOUT,
    DeviceAuthorization,
    LoginConfigError,
    LoginError,
    check_url,
    discover_provider,
    poll_for_token,
    start_device_authorization,
)
from hoopfast.identity.oauth import EXIT_NOT_LOGGED_IN as EXIT_NOT_LOGGED_IN
from hoopfast.identity.oauth import EXIT_USAGE as EXIT_USAGE
from hoopfast.identity.tokenstore import (
    ENV_CLIENT_ID,
    ENV_ISSUER,
    StoredToken,
    token_from_response,
)
from hoopfast.identity.tokenstore import default_token_file as default_token_file

#: Scopes asked for by default: an id_token with the usual profile claims, and
#: a refresh token (``offline_access``). Providers that put groups in tokens
#: only on request (Dex, Okta: ``groups``) need ``--scope`` to add it.
DEFAULT_SCOPE = "openid profile email offline_access"

DEFAULT_GATEWAY_HOST = "127.0.0.1"
DEFAULT_GATEWAY_PORT = 15432
DEFAULT_SSLMODE = "require"

ENV_CLIENT_SECRET = "HOOPFAST_LOGIN_CLIENT_SECRET"
ENV_SCOPE = "HOOPFAST_LOGIN_SCOPE"
ENV_AUDIENCE = "HOOPFAST_LOGIN_AUDIENCE"
ENV_USE_ID_TOKEN = "HOOPFAST_LOGIN_USE_ID_TOKEN"
ENV_GATEWAY_HOST = "HOOPFAST_GATEWAY_HOST"
ENV_GATEWAY_PORT = "HOOPFAST_GATEWAY_PORT"


class PsqlNotFound(LoginError):
    exit_code = EXIT_NO_PSQL


# --------------------------------------------------------------------------- settings


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientSettings:
    """Which provider and which OAuth client: from options, else the environment."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scope: str = DEFAULT_SCOPE
    audience: str | None = None
    use_id_token: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        issuer: str | None,
        client_id: str | None,
        client_secret: str | None = None,
        scope: str | None = None,
        audience: str | None = None,
        use_id_token: bool | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientSettings:
        issuer = issuer or environ.get(ENV_ISSUER)
        client_id = client_id or environ.get(ENV_CLIENT_ID)
        if not issuer:
            raise LoginConfigError(f"no issuer: pass --issuer or set {ENV_ISSUER}")
        if not client_id:
            raise LoginConfigError(f"no client id: pass --client-id or set {ENV_CLIENT_ID}")
        check_url("issuer", issuer)
        return cls(
            issuer=issuer,
            client_id=client_id,
            client_secret=client_secret or environ.get(ENV_CLIENT_SECRET) or None,
            scope=scope or environ.get(ENV_SCOPE) or DEFAULT_SCOPE,
            audience=audience or environ.get(ENV_AUDIENCE) or None,
            use_id_token=(
                use_id_token
                if use_id_token is not None
                else _env_flag(environ.get(ENV_USE_ID_TOKEN))
            ),
        )


# --------------------------------------------------------------------------- login


def device_login(
    client: ClientSettings,
    *,
    on_prompt: Callable[[DeviceAuthorization], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
    timeout: float = TIMEOUT,
) -> StoredToken:
    """Discovery, device code, prompt, polling: the entry to store."""
    provider = discover_provider(client.issuer, timeout)
    device = start_device_authorization(provider, client, timeout)
    on_prompt(device)
    response = poll_for_token(provider, client, device, sleep=sleep, clock=clock, timeout=timeout)
    return token_from_response(
        client.issuer,
        client.client_id,
        response,
        kind="id_token" if client.use_id_token else "access_token",
        now=now(),
        client_secret=client.client_secret,
    )


# --------------------------------------------------------------------------- psql


@dataclass(frozen=True)
class PsqlCommand:
    argv: list[str]
    env: dict[str, str] = field(repr=False)


def psql_command(
    connection: str,
    token: StoredToken,
    *,
    host: str | None = None,
    port: int | str | None = None,
    user: str | None = None,
    sslmode: str = DEFAULT_SSLMODE,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] = os.environ,
    psql: str = "psql",
) -> PsqlCommand:
    """``psql`` pointed at the gateway, the token in ``PGPASSWORD`` (not in argv).

    The connection name is the database name the gateway routes on; the user
    name is informational (the gateway identifies the person from the token).
    """
    from hoopfast.conninfo import make_conninfo

    port = port or environ.get(ENV_GATEWAY_PORT) or DEFAULT_GATEWAY_PORT
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise LoginConfigError(f"not a port number: {port!r}")
    conninfo = make_conninfo(
        {
            "host": host or environ.get(ENV_GATEWAY_HOST) or DEFAULT_GATEWAY_HOST,
            "port": int(port),
            "dbname": connection,
            "user": user or token.username or environ.get("USER") or environ.get("LOGNAME"),
            "sslmode": sslmode,
        }
    )
    env = dict(environ)
    env["PGPASSWORD"] = token.token
    return PsqlCommand([psql, "--dbname", conninfo, *extra_args], env)


def exec_psql(command: PsqlCommand) -> NoReturn:
    """Replace this process with psql (its exit status becomes ours)."""
    try:
        os.execvpe(command.argv[0], command.argv, command.env)
    except FileNotFoundError:
        raise PsqlNotFound(
            f"{command.argv[0]} was not found on PATH: install the PostgreSQL client "
            "(e.g. the postgresql-client package)"
        ) from None
    except OSError as e:
        raise LoginError(f"cannot run {command.argv[0]}: {e.strerror}") from None
