"""The identity provider's public keys, cached by ``kid``.

The validator runs on the event loop and must never wait for the network, so
it only ever *reads* an immutable snapshot of the keys. Everything that can
block lives elsewhere:

- ``jwks_url`` / ``discovery``: the keys are fetched once at startup (a
  failure there is logged and the gateway fails closed: no keys, every token
  refused as "unknown key" until a fetch succeeds), then by a daemon thread
  every ``jwks_refresh_interval`` (key rotation without a restart) and, when a
  token names a kid we do not know, as soon as ``jwks_min_refresh_interval``
  allows -- at most one fetch per interval however many such tokens arrive.
  The token that named the unknown kid is refused; the next one after the
  fetch is judged against the new keys. A provider that cannot be reached
  changes nothing: the keys already cached keep working.
- ``jwks_file``: re-read when the file changes (a ``stat`` at most once per
  second, on the caller's thread; it is a local file, not the network).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from hoopfast.config import Identity
from hoopfast.errors import ConfigurationError
from hoopfast.identity.oidc import DiscoveryMismatch, ProviderUnavailable, discover, fetch_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicKey:
    kid: str | None
    #: The JWK's ``kty``: RSA, EC or OKP (symmetric keys never get here).
    kty: str
    #: The JWK's ``alg``, when the provider pinned one.
    alg: str | None
    #: The cryptography public key, for PyJWT.
    key: Any


def parse_jwks(data: object) -> dict[str | None, PublicKey]:
    """Usable asymmetric keys by kid; ValueError if there are none."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str | None, PublicKey] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if entry.get("kty") == "oct":
            # A shared secret in a public key set is a key-confusion trap.
            log.warning("skipping symmetric JWKS key %r", kid)
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            jwk = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            log.warning("skipping unusable JWKS key %r: %s", kid, e)
            continue
        if jwk.key_type == "oct":
            log.warning("skipping symmetric JWKS key %r", kid)
            continue
        alg = entry.get("alg")
        keys[kid if isinstance(kid, str) else None] = PublicKey(
            kid=kid if isinstance(kid, str) else None,
            kty=str(jwk.key_type),
            alg=alg if isinstance(alg, str) else None,
            key=jwk.key,
        )
    if not keys:
        raise ValueError("the JWKS has no usable asymmetric key")
    return keys


def _file_signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeySet:
    """A lock-protected snapshot of the provider's keys (see the module doc)."""

    #: How often (seconds) a jwks_file is stat'ed for changes.
    FILE_CHECK_INTERVAL = 1.0

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._keys: Mapping[str | None, PublicKey] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._refetch_wanted = False
        self._thread: threading.Thread | None = None
        #: Fetch attempts made (startup, periodic and on demand); for tests and logs.
        self.fetches = 0
        self.last_error: str | None = None
        self._last_attempt = 0.0
        self._next_periodic = 0.0
        self._jwks_uri: str | None = identity.jwks_url
        # jwks_file state
        self._file_sig: tuple[int, int, int] | None = None
        self._failed_sig: tuple[int, int, int] | None = None
        self._next_file_check = 0.0
        self._file_lock = threading.Lock()

        if identity.jwks_file is not None:
            self._load_file_at_startup()
        else:
            self._startup_fetch()
            self._thread = threading.Thread(target=self._run, name="hoopfast-jwks", daemon=True)
            self._thread.start()

    # -- reading (the validator's side: never blocks on the network) --------

    def get(self, kid: str | None) -> PublicKey | None:
        """The key named by ``kid``; None (and a background refetch) if unknown."""
        key = self.peek(kid)
        if key is None and self._identity.jwks_file is None:
            self.request_refetch()
        return key

    def peek(self, kid: str | None) -> PublicKey | None:
        """Like get, without asking for a refetch."""
        if self._identity.jwks_file is not None:
            self._maybe_reload_file()
        keys = self._keys
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        return keys.get(kid)

    @property
    def kids(self) -> frozenset[str | None]:
        return frozenset(self._keys)

    def why_unknown(self, kid: str | None) -> str:
        """For the log: why no key was found (never key material)."""
        keys = self._keys
        if not keys:
            return f"kid={kid!r}: no keys loaded (failing closed; last error: {self.last_error})"
        return f"kid={kid!r} not among {len(keys)} known key(s)"

    # -- jwks_file ------------------------------------------------------------

    def _load_file_at_startup(self) -> None:
        path = self._identity.jwks_file
        assert path is not None
        try:
            sig = _file_signature(path.stat())
            self._keys = parse_jwks(json.loads(path.read_text(encoding="utf-8")))
        except OSError as e:
            raise ConfigurationError(f"identity.jwks_file {path}: {e.strerror or e}") from None
        except ValueError as e:  # includes JSONDecodeError
            raise ConfigurationError(f"identity.jwks_file {path}: {e}") from None
        self._file_sig = sig
        self._next_file_check = time.monotonic() + self.FILE_CHECK_INTERVAL

    def _maybe_reload_file(self) -> None:
        now = time.monotonic()
        if now < self._next_file_check or not self._file_lock.acquire(blocking=False):
            return
        try:
            self._next_file_check = now + self.FILE_CHECK_INTERVAL
            path = self._identity.jwks_file
            assert path is not None
            try:
                sig = _file_signature(path.stat())
            except OSError as e:
                if self._failed_sig != (0, 0, 0):
                    log.warning("jwks_file %s: %s; keeping the cached keys", path, e.strerror)
                    self._failed_sig = (0, 0, 0)
                return
            if sig == self._file_sig:
                return
            try:
                keys = parse_jwks(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                # Perhaps caught mid-write: retried on the next check, logged once.
                if sig != self._failed_sig:
                    log.warning("jwks_file %s unusable (%s); keeping the cached keys", path, e)
                    self._failed_sig = sig
                return
            self._keys = keys
            self._file_sig = sig
            self._failed_sig = None
            log.info("jwks_file %s reloaded: %d key(s)", path, len(keys))
        finally:
            self._file_lock.release()

    # -- jwks_url / discovery ---------------------------------------------------

    def request_refetch(self) -> None:
        """Ask the background thread for a fetch (rate-limited; never blocks)."""
        with self._cond:
            if not self._refetch_wanted:
                self._refetch_wanted = True
                self._cond.notify()

    def _startup_fetch(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            self._fetch()
        except DiscoveryMismatch:
            raise
        except (ProviderUnavailable, ValueError) as e:
            self.last_error = str(e)
            self._next_periodic = self._last_attempt + self._identity.jwks_min_refresh_interval
            log.error(
                "identity provider keys unavailable at startup (%s): every token will be "
                "refused as 'unknown key' until a fetch succeeds",
                e,
            )
        else:
            self._next_periodic = self._last_attempt + self._identity.jwks_refresh_interval

    def _fetch(self) -> None:
        """One fetch, on the startup or background thread; swaps the snapshot."""
        self.fetches += 1
        if self._jwks_uri is None:
            self._jwks_uri = discover(self._identity.issuer).jwks_uri
        try:
            keys = parse_jwks(fetch_json(self._jwks_uri))
        except (ProviderUnavailable, ValueError):
            if self._identity.discovery:
                self._jwks_uri = None  # rediscover next time: jwks_uri may have moved
            raise
        old = set(self._keys)
        self._keys = keys
        self.last_error = None
        if set(keys) != old:
            log.info("identity provider keys loaded: %s", ", ".join(sorted(map(str, keys))))

    def _run(self) -> None:
        identity = self._identity
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = self._next_periodic
                    if self._refetch_wanted:
                        due = min(due, self._last_attempt + identity.jwks_min_refresh_interval)
                    if now >= due:
                        break
                    self._cond.wait(due - now)
                self._refetch_wanted = False
                self._last_attempt = now
            try:
                self._fetch()
            except (ProviderUnavailable, ValueError) as e:
                self.last_error = str(e)
                self._next_periodic = now + identity.jwks_min_refresh_interval
                log.warning(
                    "identity provider keys not refreshed (%s); keeping %d cached key(s)",
                    e,
                    len(self._keys),
                )
            except DiscoveryMismatch as e:
                self.last_error = str(e)
                self._next_periodic = now + identity.jwks_min_refresh_interval
                log.error("%s; keeping %d cached key(s)", e, len(self._keys))
            except Exception:  # the thread must survive anything
                self._next_periodic = now + identity.jwks_min_refresh_interval
                log.exception("unexpected error refreshing the identity provider keys")
            else:
                self._next_periodic = now + identity.jwks_refresh_interval

    def close(self) -> None:
        """Stop the background thread (tests; the gateway just exits)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
