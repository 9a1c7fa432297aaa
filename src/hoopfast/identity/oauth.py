"""Talking to the identity provider: OIDC discovery, the device flow, refresh.

A person gets a token with the OAuth 2.0 Device Authorization Grant
(RFC 8628): we ask the provider for a device code and a short user code, and
poll the token endpoint while the person approves in a browser, on any device.
A stored token is renewed with its refresh token (RFC 6749 §6).

Only the standard library speaks HTTP here: https everywhere, plain http only
to the loopback interface (the same rule as the gateway's own provider URLs).
The errors of logging in (:class:`LoginError` and its kinds, each with the exit
code the command returns) are defined here, at the bottom of the login modules.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hoopfast.config import _check_provider_url
from hoopfast.errors import HoopfastError
from hoopfast.identity.oidc import (
    MAX_DOCUMENT_BYTES,
    ProviderUnavailable,
    discovery_url,
    fetch_json,
)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: RFC 8628 §3.2: the polling interval when the provider names none.
DEFAULT_INTERVAL = 5.0
#: RFC 8628 §3.5: ``slow_down`` adds 5 seconds to this and every later poll.
SLOW_DOWN_STEP = 5.0
#: The longest wait between polls while backing off from network errors.
MAX_BACKOFF = 60.0
#: RFC 8628 makes ``expires_in`` required; a provider that leaves it out gets this.
DEFAULT_DEVICE_CODE_LIFETIME = 600.0
TIMEOUT = 10.0

# Exit codes of login / connect / logout (documented in docs/login.md).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_EXPIRED = 4
EXIT_NOT_LOGGED_IN = 5
EXIT_NO_PSQL = 127


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


class OAuthError(LoginError):
    """The provider answered with an OAuth error (RFC 6749 §5.2)."""

    def __init__(self, message: str, error: str, description: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description


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


class OAuthClient(Protocol):
    """The OAuth client we act as (:class:`hoopfast.identity.login.ClientSettings`)."""

    @property
    def client_id(self) -> str: ...

    @property
    def client_secret(self) -> str | None: ...

    @property
    def scope(self) -> str: ...

    @property
    def audience(self) -> str | None: ...


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
    provider: Provider, client: OAuthClient, timeout: float = TIMEOUT
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
    client: OAuthClient,
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
