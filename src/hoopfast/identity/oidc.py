"""OpenID Connect discovery: where an issuer publishes its signing keys.

``{issuer}/.well-known/openid-configuration`` names the JWKS (``jwks_uri``).
The document's ``issuer`` must equal the configured one exactly: otherwise a
provider (or whoever answers at that address) could make us trust keys that
belong to a different issuer.

These functions do blocking network I/O: call them at startup or from the key
cache's background thread, never from the event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hoopfast.errors import ConfigurationError, HoopfastError

#: Discovery documents and key sets are small; anything bigger is not one.
MAX_DOCUMENT_BYTES = 1 << 20
TIMEOUT = 10.0


class ProviderUnavailable(HoopfastError):
    """The identity provider could not be reached or answered nonsense.

    Transient: keys already cached stay in use and the fetch is retried.
    """


class DiscoveryMismatch(ConfigurationError):
    """The discovery document belongs to another issuer (a configuration error)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def fetch_json(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET a JSON object; ProviderUnavailable on any network or format problem."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise ProviderUnavailable(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ProviderUnavailable(f"{url}: {reason}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ProviderUnavailable(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProviderUnavailable(f"{url}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"{url}: not a JSON object")
    return data


def discover(issuer: str, timeout: float = TIMEOUT) -> ProviderMetadata:
    """The provider's metadata; DiscoveryMismatch if it names another issuer."""
    url = discovery_url(issuer)
    document = fetch_json(url, timeout)
    published = document.get("issuer")
    if published != issuer:
        raise DiscoveryMismatch(
            f"OIDC discovery at {url} names issuer {published!r}, "
            f"but the configured issuer is {issuer!r} (they must match exactly)"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("https", "http"):
        raise ProviderUnavailable(f"{url}: no usable 'jwks_uri' in the discovery document")
    if urlsplit(jwks_uri).scheme != urlsplit(issuer).scheme:
        # An https issuer must not send us to fetch its keys over plain http.
        raise DiscoveryMismatch(f"{url}: jwks_uri {jwks_uri!r} downgrades the issuer's scheme")
    return ProviderMetadata(issuer=issuer, jwks_uri=jwks_uri)
