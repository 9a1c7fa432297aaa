"""Token validation against a real (local HTTP) OIDC provider: discovery, the
JWKS cache and its background refresh, claims, and algorithm confusion."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from hoopfast.config import Identity
from hoopfast.errors import ConfigurationError
from hoopfast.identity.tokens import TokenError, TokenValidator
from tests.fake_oidc import FakeOIDC

AUD = FakeOIDC.AUDIENCE
MakeValidator = Callable[..., TokenValidator]


@pytest.fixture
def make_validator(provider: FakeOIDC) -> Iterator[MakeValidator]:
    made: list[TokenValidator] = []

    def make(**options: Any) -> TokenValidator:
        options.setdefault("issuer", provider.issuer)
        options.setdefault("audience", AUD)
        if not {"jwks_file", "jwks_url", "discovery"} & options.keys():
            options["discovery"] = True
        validator = TokenValidator(Identity(**options))
        made.append(validator)
        return validator

    yield make
    for v in made:
        v.close()


def refused(validator: TokenValidator, token: str) -> TokenError:
    with pytest.raises(TokenError) as e:
        validator.validate(token)
    return e.value


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.02)


def accepted(validator: TokenValidator, token: str) -> bool:
    try:
        validator.validate(token)
    except TokenError as e:
        assert e.category == "unknown key", e
        return False
    return True


def write_jwks(path: Path, jwks: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jwks))
    tmp.replace(path)


# -- configuration -------------------------------------------------------------


def test_identity_needs_exactly_one_key_source(tmp_path: Path) -> None:
    base: dict[str, Any] = {"issuer": "https://idp.example", "audience": AUD}
    all_sources: list[dict[str, Any]] = [
        {},
        {"discovery": True, "jwks_url": "https://idp.example/jwks"},
        {"discovery": True, "jwks_file": tmp_path / "j"},
        {"jwks_file": tmp_path / "j", "jwks_url": "https://idp.example/jwks"},
    ]
    for sources in all_sources:
        with pytest.raises(ValidationError, match="exactly one of"):
            Identity.model_validate({**base, **sources})
    identity = Identity(**base, discovery=True)
    assert identity.jwks_refresh_interval == 3600 and identity.jwks_min_refresh_interval == 60
    assert not Identity(**base, jwks_file=tmp_path / "j").discovery


def test_identity_intervals_take_durations() -> None:
    identity = Identity.model_validate(
        {
            "issuer": "https://idp.example",
            "audience": AUD,
            "discovery": True,
            "jwks_refresh_interval": "2h",
            "jwks_min_refresh_interval": "200ms",
        }
    )
    assert identity.jwks_refresh_interval == 7200
    assert identity.jwks_min_refresh_interval == pytest.approx(0.2)
    with pytest.raises(ValidationError):
        Identity(issuer="https://i", audience=AUD, discovery=True, jwks_min_refresh_interval=0)


def test_discovery_over_plain_http_only_on_loopback() -> None:
    with pytest.raises(ValidationError, match="https"):
        Identity(issuer="http://idp.example/realms/x", audience=AUD, discovery=True)
    Identity(issuer="http://127.0.0.1:1/realms/x", audience=AUD, discovery=True)


# -- discovery -------------------------------------------------------------------


def test_discovery_finds_the_keys_and_validates_rs256_and_es256(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    validator = make_validator()
    assert provider.discovery_requests == 1 and provider.jwks_requests == 1
    for alg in ("RS256", "ES256"):
        principal = validator.validate(provider.mint(provider.key(alg), sub=f"user-{alg}"))
        assert principal.subject == f"user-{alg}"
        assert principal.issuer == provider.issuer
    assert provider.jwks_requests == 1  # validating never fetched anything


def test_discovery_document_for_another_issuer_is_a_configuration_error(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    provider.issuer_override = provider.issuer + "/"  # even a trailing slash differs
    with pytest.raises(ConfigurationError, match="must match exactly"):
        make_validator()
    assert provider.jwks_requests == 0


def test_jwks_url_without_discovery(provider: FakeOIDC, make_validator: MakeValidator) -> None:
    validator = make_validator(jwks_url=provider.jwks_url)
    assert provider.discovery_requests == 0
    assert validator.validate(provider.mint(provider.key("ES256"))).subject == "alice"


# -- the key cache -----------------------------------------------------------------


def test_unknown_kid_is_refused_then_accepted_after_rotation(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    validator = make_validator(jwks_min_refresh_interval=0.2)
    old_token = provider.mint(provider.key("RS256"))
    validator.validate(old_token)  # now in the validated-token cache
    new_key = provider.rotate("RS256")  # the old RS256 key is withdrawn
    new_token = provider.mint(new_key)
    e = refused(validator, new_token)
    assert e.category == "unknown key" and new_key.kid in e.detail
    wait_until(lambda: accepted(validator, new_token))
    assert provider.jwks_requests == 2
    # The withdrawn key's tokens are refused, even the one that was cached.
    assert refused(validator, old_token).category == "unknown key"


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    interval = 0.5
    validator = make_validator(jwks_min_refresh_interval=interval)
    provider.jwks_delay = 0.3  # (a refusal that waited for it would take as long)
    before = provider.jwks_requests
    tokens = [provider.mint(kid=secrets.token_hex(6)) for _ in range(200)]
    started = time.monotonic()
    slowest = 0.0
    # 200 bad tokens spread over ~1.5 intervals, as a misbehaving client would send them.
    for token in tokens:
        t = time.monotonic()
        assert refused(validator, token).category == "unknown key"
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(interval * 1.5 / len(tokens))
    spanned = time.monotonic() - started
    assert slowest < 0.15  # refusing never waited for the network (0.3 s)
    wait_until(lambda: provider.jwks_requests > before)
    time.sleep(max(0.0, started + interval * 2.2 - time.monotonic()))
    # One refetch per interval: the flood spans two of them, or more on a
    # loaded machine (a CI run once took 4 intervals to send it).
    assert 1 <= provider.jwks_requests - before <= max(2, math.ceil(spanned / interval) + 1)


@pytest.mark.parametrize("outage", ["500", "drop"])
def test_provider_down_keeps_cached_keys(
    provider: FakeOIDC, make_validator: MakeValidator, outage: Any
) -> None:
    validator = make_validator(jwks_refresh_interval=0.2, jwks_min_refresh_interval=0.1)
    provider.state = outage
    fetches = validator.keys.fetches
    wait_until(
        lambda: validator.keys.fetches >= fetches + 2 and validator.keys.last_error is not None
    )
    # Fresh tokens (not in the validated-token cache) under the cached keys still pass.
    for alg in ("RS256", "ES256"):
        assert validator.validate(provider.mint(provider.key(alg))).subject == "alice"
    e = refused(validator, provider.mint(kid="never-published"))
    assert e.category == "unknown key" and "never-published" in e.detail


def test_a_kid_that_is_not_a_string_is_malformed(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    """PyJWT refuses such a header with an InvalidTokenError of its own (not
    a DecodeError): a clear refusal, not an internal error."""
    import base64
    import json

    good = provider.mint()
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": 7}).encode())
    token = header.rstrip(b"=").decode() + good[good.index(".") :]
    e = refused(make_validator(), token)
    assert e.category == "malformed"


def test_provider_down_at_startup_fails_closed_then_recovers(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    provider.state = "500"
    validator = make_validator(jwks_url=provider.jwks_url, jwks_min_refresh_interval=0.1)
    token = provider.mint(provider.key("RS256"))
    e = refused(validator, token)
    assert e.category == "unknown key" and "no keys loaded" in e.detail and "500" in e.detail
    provider.state = "up"
    wait_until(lambda: accepted(validator, token))


def test_periodic_refresh_picks_up_rotation_without_any_bad_token(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    validator = make_validator(jwks_refresh_interval=0.2, jwks_min_refresh_interval=5)
    new_key = provider.rotate("ES256")
    wait_until(lambda: new_key.kid in validator.keys.kids)
    assert validator.validate(provider.mint(new_key)).subject == "alice"


def test_jwks_file_is_reloaded_when_rewritten(
    provider: FakeOIDC, make_validator: MakeValidator, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, provider.jwks())
    validator = make_validator(jwks_file=path)
    validator.keys.FILE_CHECK_INTERVAL = 0.05
    old_token = provider.mint(provider.key("RS256"))
    assert validator.validate(old_token).subject == "alice"
    new_key = provider.rotate("RS256")
    new_token = provider.mint(new_key)
    assert refused(validator, new_token).category == "unknown key"
    write_jwks(path, provider.jwks())
    later = time.time() + 5
    os.utime(path, (later, later))  # coarse-mtime file systems
    wait_until(lambda: accepted(validator, new_token))
    assert refused(validator, old_token).category == "unknown key"
    # A half-written file is ignored: the keys in use stay.
    path.write_text('{"keys": [')
    os.utime(path, (later + 5, later + 5))
    time.sleep(0.1)
    assert validator.validate(provider.mint(new_key)).subject == "alice"
    assert provider.jwks_requests == 0


def test_unusable_jwks_file_at_startup_is_a_configuration_error(
    make_validator: MakeValidator, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="jwks_file"):
        make_validator(jwks_file=tmp_path / "missing.json")
    (tmp_path / "oct.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(ConfigurationError, match="no usable asymmetric key"):
        make_validator(jwks_file=tmp_path / "oct.json")


# -- algorithms ------------------------------------------------------------------------


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    validator = make_validator()
    rsa_key = provider.key("RS256")
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = provider.mint(rsa_key, alg="HS256", secret=pem)
    assert refused(validator, token).category == "algorithm not allowed"


def test_alg_none_is_refused(provider: FakeOIDC, make_validator: MakeValidator) -> None:
    validator = make_validator()
    for alg in ("none", "None", "NONE"):
        token = provider.mint(alg=alg, secret=b"")
        assert refused(validator, token).category == "algorithm not allowed"


def test_a_token_cannot_pair_its_alg_with_a_key_of_another_type(
    provider: FakeOIDC, make_validator: MakeValidator
) -> None:
    validator = make_validator()
    # RS256-signed, but naming the EC key.
    token = provider.mint(provider.key("RS256"), kid=provider.key("ES256").kid)
    assert refused(validator, token).category == "algorithm not allowed"


def test_algorithm_allow_list(provider: FakeOIDC, make_validator: MakeValidator) -> None:
    validator = make_validator(algorithms=["ES256"])
    assert refused(validator, provider.mint(provider.key("RS256"))).category == (
        "algorithm not allowed"
    )
    assert validator.validate(provider.mint(provider.key("ES256"))).subject == "alice"


# -- claims ------------------------------------------------------------------------------


@pytest.fixture
def file_validator(
    provider: FakeOIDC, make_validator: MakeValidator, tmp_path: Path
) -> Callable[..., TokenValidator]:
    path = tmp_path / "jwks.json"
    write_jwks(path, provider.jwks())
    return lambda **kw: make_validator(jwks_file=path, **kw)


@pytest.mark.parametrize(
    ("claims", "category"),
    [
        ({"exp": -120}, "expired"),
        ({"nbf": 120}, "not yet valid"),
        ({"iat": 120}, "not yet valid"),
        ({"aud": "someone-else"}, "wrong audience"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"exp": None}, "missing claim"),
        ({"aud": None}, "missing claim"),
        ({"sub": None}, "missing claim"),
    ],
)
def test_claims_are_checked(
    provider: FakeOIDC,
    file_validator: Callable[..., TokenValidator],
    claims: dict[str, int | str | None],
    category: str,
) -> None:
    now = int(time.time())
    relative: dict[str, Any] = {k: now + v if isinstance(v, int) else v for k, v in claims.items()}
    validator = file_validator(leeway=30)
    assert refused(validator, provider.mint(**relative)).category == category


@pytest.mark.parametrize("offset", [-20, 20])
def test_times_within_the_leeway_are_accepted(
    provider: FakeOIDC, file_validator: Callable[..., TokenValidator], offset: int
) -> None:
    now = int(time.time())
    validator = file_validator(leeway=30)
    if offset < 0:
        token = provider.mint(exp=now + offset)
    else:
        token = provider.mint(nbf=now + offset, iat=now + offset)
    assert validator.validate(token).subject == "alice"


def test_tampered_signature_is_refused(
    provider: FakeOIDC, file_validator: Callable[..., TokenValidator]
) -> None:
    header, body, signature = provider.mint(provider.key("ES256")).split(".")
    forged_body = provider.mint(provider.key("ES256"), sub="mallory").split(".")[1]
    e = refused(file_validator(), f"{header}.{forged_body}.{signature}")
    assert e.category == "bad signature"
    assert body != forged_body


@pytest.mark.parametrize(
    ("identity_claim", "claims", "subject"),
    [
        ("email", {"email": "alice@example.com"}, "alice@example.com"),
        ("preferred_username", {"preferred_username": "alice.l"}, "alice.l"),
        ("sub", {}, "alice"),
    ],
)
def test_identity_claim(
    provider: FakeOIDC,
    file_validator: Callable[..., TokenValidator],
    identity_claim: str,
    claims: dict[str, Any],
    subject: str,
) -> None:
    validator = file_validator(identity_claim=identity_claim)
    assert validator.validate(provider.mint(**claims)).subject == subject


def test_identity_claim_missing_is_refused(
    provider: FakeOIDC, file_validator: Callable[..., TokenValidator]
) -> None:
    validator = file_validator(identity_claim="email")
    e = refused(validator, provider.mint())
    assert e.category == "missing claim" and "email" in e.detail


def test_groups_from_realm_access_roles(
    provider: FakeOIDC, file_validator: Callable[..., TokenValidator]
) -> None:
    validator = file_validator(groups_claim="realm_access.roles")
    token = provider.mint(realm_access={"roles": ["analysts", "dba"]}, groups=["ignored"])
    assert validator.validate(token).groups == ("analysts", "dba")
    assert validator.validate(provider.mint()).groups == ()
    bad = provider.mint(realm_access={"roles": [1, 2]})
    assert refused(validator, bad).category == "malformed"


def test_validated_token_is_cached_only_until_its_expiry(
    provider: FakeOIDC, file_validator: Callable[..., TokenValidator]
) -> None:
    validator = file_validator(leeway=30)
    now = time.time()
    token = provider.mint(exp=int(now) + 60)
    principal = validator.validate(token)
    assert validator.validate(token, now=now + 89) is principal  # from the cache
    assert refused_at(validator, token, now + 91).category == "expired"


def refused_at(validator: TokenValidator, token: str, now: float) -> TokenError:
    with pytest.raises(TokenError) as e:
        validator.validate(token, now=now)
    return e.value
