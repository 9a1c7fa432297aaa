"""Logging in from a terminal, and connecting with the token (``hoopfast login`` / ``connect``).

A person gets a token with the OAuth 2.0 Device Authorization Grant
(RFC 8628): the command asks the provider for a device code, shows a URL and a
short user code, and polls the token endpoint while the person approves in a
browser, on any device. The token is kept in a JSON file readable by its owner
only, with the refresh token, and is handed to ``psql`` in ``PGPASSWORD``
(never on the command line, where ``ps`` shows it).

Only the standard library speaks HTTP here: https everywhere, plain http only
to the loopback interface (the same rule as the gateway's own provider URLs).
Claims read from tokens on this side are *unverified* and used for
convenience only (expiry, a user name to show); the gateway verifies the
token's signature, issuer, audience and expiry itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from hoopfast.config import _check_provider_url
from hoopfast.errors import HoopfastError
from hoopfast.identity.oidc import (
    MAX_DOCUMENT_BYTES,
    ProviderUnavailable,
    discovery_url,
    fetch_json,
)

#: Scopes asked for by default: an id_token with the usual profile claims, and
#: a refresh token (``offline_access``). Providers that put groups in tokens
#: only on request (Dex, Okta: ``groups``) need ``--scope`` to add it.
DEFAULT_SCOPE = "openid profile email offline_access"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: RFC 8628 §3.2: the polling interval when the provider names none.
DEFAULT_INTERVAL = 5.0
#: RFC 8628 §3.5: ``slow_down`` adds 5 seconds to this and every later poll.
SLOW_DOWN_STEP = 5.0
#: The longest wait between polls while backing off from network errors.
MAX_BACKOFF = 60.0
#: RFC 8628 makes ``expires_in`` required; a provider that leaves it out gets this.
DEFAULT_DEVICE_CODE_LIFETIME = 600.0
#: A token this close to its expiry is refreshed before it is used.
REFRESH_MARGIN = 30.0
TIMEOUT = 10.0

DEFAULT_GATEWAY_HOST = "127.0.0.1"
DEFAULT_GATEWAY_PORT = 15432
DEFAULT_SSLMODE = "require"

ENV_ISSUER = "HOOPFAST_LOGIN_ISSUER"
ENV_CLIENT_ID = "HOOPFAST_LOGIN_CLIENT_ID"
ENV_CLIENT_SECRET = "HOOPFAST_LOGIN_CLIENT_SECRET"
ENV_SCOPE = "HOOPFAST_LOGIN_SCOPE"
ENV_AUDIENCE = "HOOPFAST_LOGIN_AUDIENCE"
ENV_USE_ID_TOKEN = "HOOPFAST_LOGIN_USE_ID_TOKEN"
ENV_TOKEN_FILE = "HOOPFAST_TOKEN_FILE"
ENV_GATEWAY_HOST = "HOOPFAST_GATEWAY_HOST"
ENV_GATEWAY_PORT = "HOOPFAST_GATEWAY_PORT"

# Exit codes of login / connect / logout (documented in docs/login.md).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_EXPIRED = 4
EXIT_NOT_LOGGED_IN = 5
EXIT_NO_PSQL = 127

TokenKind = Literal["access_token", "id_token"]


class LoginError(HoopfastError):
    """Logging in or connecting failed; ``exit_code`` is what the command returns."""

    exit_code = EXIT_ERROR


class LoginConfigError(LoginError):
    """Missing or unacceptable settings (issuer, client, URLs)."""

    exit_code = EXIT_USAGE


class IssuerMismatch(LoginConfigError):
    """The discovery document names another issuer."""


class ProviderUnreachable(LoginError):
    """The network failed or the provider answered 5xx: worth retrying."""


class AccessDenied(LoginError):
    exit_code = EXIT_DENIED


class DeviceCodeExpired(LoginError):
    exit_code = EXIT_EXPIRED


class NotLoggedIn(LoginError):
    """No usable token is stored: the person has to run ``hoopfast login``."""

    exit_code = EXIT_NOT_LOGGED_IN


class PsqlNotFound(LoginError):
    exit_code = EXIT_NO_PSQL


class OAuthError(LoginError):
    """The provider answered with an OAuth error (RFC 6749 §5.2)."""

    def __init__(self, message: str, error: str, description: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description


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


def check_url(name: str, url: str) -> None:
    """https, or http to the loopback interface only (the gateway's own rule)."""
    try:
        _check_provider_url(name, url)
    except ValueError as e:
        raise LoginConfigError(str(e)) from None


# --------------------------------------------------------------------------- HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Token requests are never redirected: a 3xx is an error, not a hop
    (urllib would otherwise replay a POST as a GET, or follow to plain http)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _post_form(url: str, form: Mapping[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    """POST ``application/x-www-form-urlencoded``; (status, JSON object).

    Error statuses with a JSON body are returned, not raised: OAuth errors
    arrive as HTTP 400 with ``{"error": ...}``. ProviderUnreachable for network
    failures and for 5xx answers without an OAuth error.
    """
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            status: int = response.status
            body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as e:
        status = e.code
        try:
            body = e.read(MAX_DOCUMENT_BYTES + 1)
        except OSError:
            body = b""
        finally:
            e.close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ProviderUnreachable(f"{url}: {reason}") from None
    data: Any = None
    if len(body) <= MAX_DOCUMENT_BYTES:
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
            data = json.loads(body)
    if not isinstance(data, dict):
        if status >= 500:
            raise ProviderUnreachable(f"{url}: HTTP {status}")
        raise LoginError(f"{url}: HTTP {status}, and the answer is not a JSON object")
    if status >= 500 and not isinstance(data.get("error"), str):
        raise ProviderUnreachable(f"{url}: HTTP {status}")
    return status, data


def printable(value: str) -> str:
    """A provider's text made safe for a terminal (no escape sequences)."""
    return "".join(c if c.isprintable() else "?" for c in value)


_HINTS = {
    "invalid_client": (
        "the provider does not accept this client id; it must name a public client "
        "(or pass its --client-secret) registered at this issuer"
    ),
    "unauthorized_client": (
        "this client is not allowed the device authorization grant; enable it for the "
        "client at the provider (see docs/login.md)"
    ),
    "invalid_scope": "the provider refused the scopes asked for; set --scope",
    "invalid_grant": "the grant is no longer valid",
}


def _oauth_error(what: str, status: int, data: Mapping[str, Any]) -> OAuthError:
    error = data.get("error")
    if not isinstance(error, str):
        return OAuthError(f"{what}: HTTP {status} without an OAuth error", "unknown")
    description = data.get("error_description")
    text = f"{what} failed: {printable(error)}"
    if isinstance(description, str) and description:
        text += f" ({printable(description)})"
    else:
        description = None
    if error in _HINTS:
        text += f": {_HINTS[error]}"
    return OAuthError(text, error, description)


def _number(value: object) -> float | None:
    """An OAuth number: JSON number, or (some providers) a numeric string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Provider:
    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str | None


def _endpoint(document: Mapping[str, Any], name: str, issuer: str, where: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LoginError(f"{where}: {name} is not a string")
    check_url(name, value)
    if urllib.parse.urlsplit(value).scheme != urllib.parse.urlsplit(issuer).scheme:
        raise LoginConfigError(f"{where}: {name} {value!r} downgrades the issuer's scheme")
    return value


def discover_provider(issuer: str, timeout: float = TIMEOUT) -> Provider:
    """The provider's endpoints from ``{issuer}/.well-known/openid-configuration``.

    The document's ``issuer`` must equal ``issuer`` exactly (OpenID Connect
    Discovery §4.3), or whoever answers could send our token requests elsewhere.
    """
    check_url("issuer", issuer)
    url = discovery_url(issuer)
    try:
        document = fetch_json(url, timeout)
    except ProviderUnavailable as e:
        raise ProviderUnreachable(f"OIDC discovery failed: {e}") from None
    published = document.get("issuer")
    if published != issuer:
        raise IssuerMismatch(
            f"OIDC discovery at {url} names issuer {printable(str(published))!r}, "
            f"not {issuer!r} (they must match exactly; use the issuer the provider publishes)"
        )
    token_endpoint = _endpoint(document, "token_endpoint", issuer, url)
    if token_endpoint is None:
        raise LoginError(f"{url}: the discovery document names no token_endpoint")
    device = _endpoint(document, "device_authorization_endpoint", issuer, url)
    return Provider(issuer, token_endpoint, device)


# --------------------------------------------------------------------------- device flow


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float

    def prompt(self) -> str:
        """What to tell the person (for stderr)."""
        minutes = max(1, round(self.expires_in / 60))
        lines = ["To log in, open this page in a browser (on any device):", ""]
        if self.verification_uri_complete:
            lines += [
                f"    {self.verification_uri_complete}",
                "",
                f"and check that it shows the code {self.user_code}",
                f"(or open {self.verification_uri} and enter the code {self.user_code}).",
            ]
        else:
            lines += [f"    {self.verification_uri}", "", f"and enter the code: {self.user_code}"]
        lines += ["", f"Waiting for approval (the code expires in about {minutes} min)..."]
        return "\n".join(lines)


def _text_field(data: Mapping[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise LoginError(f"{where}: the answer has no {name}")
    return value


def _shown(value: str, name: str, where: str) -> str:
    """A value we print: no control characters, and URIs must be web pages."""
    if not value.isprintable():
        raise LoginError(f"{where}: {name} contains control characters")
    if name.startswith("verification_uri") and urllib.parse.urlsplit(value).scheme not in (
        "https",
        "http",
    ):
        raise LoginError(f"{where}: {name} is not a web address: {value!r}")
    return value


def start_device_authorization(
    provider: Provider, client: ClientSettings, timeout: float = TIMEOUT
) -> DeviceAuthorization:
    """RFC 8628 §3.1-3.2: ask for a device code and a user code."""
    endpoint = provider.device_authorization_endpoint
    if endpoint is None:
        raise LoginConfigError(
            f"{provider.issuer} advertises no device_authorization_endpoint: the provider "
            "does not offer the device authorization grant, or it is not enabled "
            "(see docs/login.md)"
        )
    form = {"client_id": client.client_id, "scope": client.scope}
    if client.audience:
        form["audience"] = client.audience
    if client.client_secret:
        form["client_secret"] = client.client_secret
    status, data = _post_form(endpoint, form, timeout)
    if status != 200:
        raise _oauth_error("device authorization", status, data)
    where = endpoint
    # Google calls it verification_url.
    uri = data.get("verification_uri") or data.get("verification_url")
    if not isinstance(uri, str) or not uri:
        raise LoginError(f"{where}: the answer has no verification_uri")
    complete = data.get("verification_uri_complete")
    if not isinstance(complete, str) or not complete:
        complete = None
    expires_in = _number(data.get("expires_in"))
    interval = _number(data.get("interval"))
    return DeviceAuthorization(
        device_code=_text_field(data, "device_code", where),
        user_code=_shown(_text_field(data, "user_code", where), "user_code", where),
        verification_uri=_shown(uri, "verification_uri", where),
        verification_uri_complete=(
            _shown(complete, "verification_uri_complete", where) if complete else None
        ),
        expires_in=expires_in if expires_in and expires_in > 0 else DEFAULT_DEVICE_CODE_LIFETIME,
        interval=interval if interval is not None and interval >= 0 else DEFAULT_INTERVAL,
    )


@dataclass(frozen=True)
class TokenResponse:
    """RFC 6749 §5.1 (and OpenID Connect's ``id_token``)."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float | None
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    scope: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str) -> TokenResponse:
        refresh = data.get("refresh_token")
        id_token = data.get("id_token")
        scope = data.get("scope")
        token_type = data.get("token_type")
        return cls(
            access_token=_text_field(data, "access_token", where),
            token_type=token_type if isinstance(token_type, str) else "Bearer",
            expires_in=_number(data.get("expires_in")),
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            scope=scope if isinstance(scope, str) else None,
        )


def poll_for_token(
    provider: Provider,
    client: ClientSettings,
    device: DeviceAuthorization,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = TIMEOUT,
) -> TokenResponse:
    """RFC 8628 §3.4-3.5: poll until the person approves, denies, or the code expires.

    Waits ``interval`` before each poll; ``slow_down`` adds 5 s for good;
    network errors and 5xx double the wait (up to a minute) and go on polling.
    """
    interval = device.interval
    deadline = clock() + device.expires_in
    form = {
        "grant_type": DEVICE_CODE_GRANT,
        "device_code": device.device_code,
        "client_id": client.client_id,
    }
    if client.client_secret:
        form["client_secret"] = client.client_secret
    expired = "the code expired before the login was approved; run `hoopfast login` again"
    while True:
        sleep(interval)
        if clock() >= deadline:
            raise DeviceCodeExpired(expired)
        try:
            status, data = _post_form(provider.token_endpoint, form, timeout)
        except ProviderUnreachable:
            interval = min(max(interval * 2, 1.0), MAX_BACKOFF)
            continue
        if status == 200:
            return TokenResponse.parse(data, provider.token_endpoint)
        error = data.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down" or status == 429:
            interval += SLOW_DOWN_STEP
            continue
        if error in ("access_denied", "authorization_declined"):  # the latter: Entra ID
            raise AccessDenied("the login was denied at the provider")
        if error == "expired_token":
            raise DeviceCodeExpired(expired)
        if status >= 500:
            interval = min(max(interval * 2, 1.0), MAX_BACKOFF)
            continue
        raise _oauth_error("login", status, data)


def refresh(
    provider: Provider,
    client_id: str,
    refresh_token: str,
    *,
    client_secret: str | None = None,
    timeout: float = TIMEOUT,
) -> TokenResponse:
    """RFC 6749 §6: a new token for a refresh token."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    if client_secret:
        form["client_secret"] = client_secret
    status, data = _post_form(provider.token_endpoint, form, timeout)
    if status != 200:
        raise _oauth_error("token refresh", status, data)
    return TokenResponse.parse(data, provider.token_endpoint)


# --------------------------------------------------------------------------- tokens


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, *not verified* ({} if ``token`` is not a JWT).

    For convenience only (expiry, a name to show): the gateway verifies.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def looks_like_jwt(token: str) -> bool:
    return bool(unverified_claims(token))


def _username(*claim_sets: Mapping[str, Any]) -> str | None:
    for claims in claim_sets:
        for name in ("preferred_username", "email", "sub"):
            value = claims.get(name)
            if isinstance(value, str) and value and value.isprintable():
                return value
    return None


@dataclass(frozen=True)
class StoredToken:
    """One entry of the token file: what to present to the gateway, and how to renew it."""

    issuer: str
    client_id: str
    token: str = field(repr=False)
    kind: TokenKind
    expires_at: float | None
    refresh_token: str | None = field(default=None, repr=False)
    username: str | None = None
    scope: str | None = None
    obtained_at: float = 0.0
    #: Sent with refreshes by clients that have one (Google's "TV and limited
    #: input" clients, whose secret is not confidential); usually None.
    client_secret: str | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return store_key(self.issuer, self.client_id)

    def expires_in(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "kind": self.kind,
            "token": self.token,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token,
            "username": self.username,
            "scope": self.scope,
            "obtained_at": self.obtained_at,
            **({"client_secret": self.client_secret} if self.client_secret else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> StoredToken:
        if not isinstance(data, dict):
            raise ValueError("an entry is not an object")
        issuer, client_id, token = data.get("issuer"), data.get("client_id"), data.get("token")
        kind = data.get("kind", "access_token")
        if not (isinstance(issuer, str) and isinstance(client_id, str) and isinstance(token, str)):
            raise ValueError("an entry lacks issuer, client_id or token")
        if kind not in ("access_token", "id_token"):
            raise ValueError(f"unknown token kind {kind!r}")
        refresh_token = data.get("refresh_token")
        username = data.get("username")
        scope = data.get("scope")
        secret = data.get("client_secret")
        return cls(
            issuer=issuer,
            client_id=client_id,
            token=token,
            kind=kind,
            expires_at=_number(data.get("expires_at")),
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
            username=username if isinstance(username, str) else None,
            scope=scope if isinstance(scope, str) else None,
            obtained_at=_number(data.get("obtained_at")) or 0.0,
            client_secret=secret if isinstance(secret, str) and secret else None,
        )


def store_key(issuer: str, client_id: str) -> str:
    # An OIDC issuer has no fragment, so '#' cannot be part of it.
    return f"{issuer}#{client_id}"


def token_from_response(
    issuer: str,
    client_id: str,
    response: TokenResponse,
    *,
    kind: TokenKind,
    now: float,
    previous: StoredToken | None = None,
    client_secret: str | None = None,
) -> StoredToken:
    """The entry to store: the token the gateway gets, its expiry, the refresh token.

    The expiry is the JWT's ``exp`` (the gateway enforces exactly that), else
    ``expires_in`` for an opaque access token. A refresh answer without a new
    refresh token keeps the old one (RFC 6749 §6).
    """
    if kind == "id_token":
        if response.id_token is None:
            raise LoginError("the provider returned no id_token (the scope must include 'openid')")
        token = response.id_token
    else:
        token = response.access_token
    claims = unverified_claims(token)
    exp = _number(claims.get("exp"))
    if exp is None and kind == "access_token" and response.expires_in is not None:
        exp = now + response.expires_in
    id_claims = unverified_claims(response.id_token) if response.id_token else {}
    return StoredToken(
        issuer=issuer,
        client_id=client_id,
        token=token,
        kind=kind,
        expires_at=exp,
        refresh_token=response.refresh_token or (previous.refresh_token if previous else None),
        username=_username(id_claims, claims) or (previous.username if previous else None),
        scope=response.scope or (previous.scope if previous else None),
        obtained_at=now,
        client_secret=client_secret or (previous.client_secret if previous else None),
    )


def token_warnings(token: StoredToken) -> list[str]:
    """Things the person should know about the token just obtained."""
    warnings = []
    if not looks_like_jwt(token.token):
        warnings.append(
            "the provider's access token is not a JWT, so the gateway cannot verify it; "
            "log in again with --use-id-token (Google and some others issue opaque "
            "access tokens; see docs/login.md)"
        )
    if token.refresh_token is None:
        warnings.append(
            "the provider issued no refresh token: run `hoopfast login` again when the "
            "token expires (add offline_access to --scope if the provider supports it)"
        )
    return warnings


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


# --------------------------------------------------------------------------- storage


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    """``$HOOPFAST_TOKEN_FILE``, else ``$XDG_CONFIG_HOME/hoopfast/tokens.json``,
    else ``~/.config/hoopfast/tokens.json``."""
    explicit = environ.get(ENV_TOKEN_FILE)
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME")
    # The XDG spec: a relative path in the variable is invalid and is ignored.
    config = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return config / "hoopfast" / "tokens.json"


class TokenStore:
    """A JSON file of tokens keyed by issuer and client id.

    The file is created 0600 (in a directory created 0700) and replaced
    atomically on every change, under an advisory lock so that two commands
    refreshing at once do not lose each other's entries.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- reading ------------------------------------------------------------

    def _read(self) -> dict[str, StoredToken]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise LoginError(f"cannot read the token file {self.path}: {e.strerror}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("tokens"), dict):
                raise ValueError("not a hoopfast token file")
            entries = [StoredToken.from_json(v) for v in data["tokens"].values()]
        except ValueError as e:
            raise LoginError(
                f"the token file {self.path} is damaged ({e}); delete it and run `hoopfast login`"
            ) from None
        return {entry.key: entry for entry in entries}

    def entries(self) -> list[StoredToken]:
        return list(self._read().values())

    def get(self, issuer: str, client_id: str) -> StoredToken | None:
        return self._read().get(store_key(issuer, client_id))

    def find(self, issuer: str | None = None, client_id: str | None = None) -> StoredToken:
        """The one entry matching what is given (all when nothing is)."""
        matches = [
            entry
            for entry in self._read().values()
            if (issuer is None or entry.issuer == issuer)
            and (client_id is None or entry.client_id == client_id)
        ]
        if not matches:
            wanted = (
                " for " + " / ".join(x for x in (issuer, client_id) if x)
                if issuer or client_id
                else ""
            )
            raise NotLoggedIn(f"no token stored{wanted} in {self.path}: run `hoopfast login`")
        if len(matches) > 1:
            names = ", ".join(f"{e.issuer} (client {e.client_id})" for e in matches)
            raise LoginConfigError(
                f"tokens for more than one login are stored ({names}): "
                f"choose with --issuer / --client-id or {ENV_ISSUER} / {ENV_CLIENT_ID}"
            )
        return matches[0]

    # -- writing ------------------------------------------------------------

    def put(self, token: StoredToken) -> None:
        with self._locked():
            entries = self._read()
            entries[token.key] = token
            self._write(entries)

    def delete(self, issuer: str, client_id: str) -> bool:
        with self._locked():
            entries = self._read()
            if entries.pop(store_key(issuer, client_id), None) is None:
                return False
            self._write(entries)
            return True

    def clear(self) -> int:
        with self._locked():
            count = len(self._read())
            self._write({})
            return count

    def _ensure_directory(self) -> None:
        missing = []
        directory = self.path.parent
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for created in reversed(missing):
            with contextlib.suppress(FileExistsError):
                created.mkdir(mode=0o700)
                # mkdir's mode is filtered by the umask; say it outright.
                os.chmod(created, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._ensure_directory()
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as e:
            raise LoginError(f"cannot write the token file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, entries: Mapping[str, StoredToken]) -> None:
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        data = {
            "version": self.VERSION,
            "tokens": {key: entry.to_json() for key, entry in sorted(entries.items())},
        }
        # mkstemp creates the file 0600 whatever the umask; os.replace makes the
        # new content appear whole or not at all.
        fd, temporary = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise LoginError(f"cannot write the token file {self.path}: {e.strerror}") from None


def fresh_token(
    store: TokenStore,
    token: StoredToken,
    *,
    now: float | None = None,
    margin: float = REFRESH_MARGIN,
    warn: Callable[[str], None] | None = None,
    timeout: float = TIMEOUT,
) -> StoredToken:
    """``token``, refreshed (and stored) first if it expires within ``margin`` seconds.

    NotLoggedIn when it has expired and cannot be refreshed. A token that is
    still valid is used as it is if the refresh fails.
    """
    now = time.time() if now is None else now
    remaining = token.expires_in(now)
    if remaining is None or remaining > margin:
        return token
    expired = remaining <= 0
    state = "has expired" if expired else f"expires in {int(remaining)} s"
    if token.refresh_token is None:
        if not expired:
            return token
        raise NotLoggedIn(f"the stored token {state} and cannot be refreshed: run `hoopfast login`")
    try:
        provider = discover_provider(token.issuer, timeout)
        response = refresh(
            provider,
            token.client_id,
            token.refresh_token,
            client_secret=token.client_secret,
            timeout=timeout,
        )
        renewed = token_from_response(
            token.issuer, token.client_id, response, kind=token.kind, now=now, previous=token
        )
    except LoginError as e:
        if not expired:
            if warn is not None:
                warn(f"the token {state} and could not be refreshed ({e})")
            return token
        raise NotLoggedIn(
            f"the stored token {state} and could not be refreshed ({e}): run `hoopfast login`"
        ) from None
    store.put(renewed)
    return renewed


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
