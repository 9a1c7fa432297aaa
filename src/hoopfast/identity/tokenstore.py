"""The stored tokens: a JSON file of them, and renewing one before it is used.

The file is readable by its owner only and keeps each token with its refresh
token. Claims read from tokens on this side are *unverified* and used for
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hoopfast.identity.oauth import (
    EXIT_NOT_LOGGED_IN,
    TIMEOUT,
    LoginConfigError,
    LoginError,
    TokenResponse,
    _number,
    discover_provider,
    refresh,
)

#: A token this close to its expiry is refreshed before it is used.
REFRESH_MARGIN = 30.0

#: The login to use: the issuer and client to log in with, or to pick a stored token.
ENV_ISSUER = "HOOPFAST_LOGIN_ISSUER"
ENV_CLIENT_ID = "HOOPFAST_LOGIN_CLIENT_ID"
ENV_TOKEN_FILE = "HOOPFAST_TOKEN_FILE"

TokenKind = Literal["access_token", "id_token"]


class NotLoggedIn(LoginError):
    """No usable token is stored: the person has to run ``hoopfast login``."""

    exit_code = EXIT_NOT_LOGGED_IN


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

    @classmethod
    def at(cls, path: str | None) -> TokenStore:
        """The store at ``path`` (a --token-file option), else the default."""
        return cls(Path(path) if path else default_token_file())

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

    def chosen(self, issuer: str | None, client_id: str | None) -> StoredToken:
        """The login a command uses: as ``find``, the issuer and client id
        defaulting to $HOOPFAST_LOGIN_ISSUER / $HOOPFAST_LOGIN_CLIENT_ID."""
        return self.find(
            issuer or os.environ.get(ENV_ISSUER) or None,
            client_id or os.environ.get(ENV_CLIENT_ID) or None,
        )

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
