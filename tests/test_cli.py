"""The hoopfast command as an operator uses it (subprocesses, real files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from hoopfast.config import Identity
from hoopfast.identity.tokens import TokenValidator


def hoopfast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hoopfast", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_version_names_the_active_implementation() -> None:
    impl = os.environ.get("HOOPFAST_IMPL") or "compiled"
    out = hoopfast("version")
    assert out.returncode == 0
    assert f"implementation: {impl}" in out.stdout


def test_forced_implementation_that_cannot_load_is_an_error() -> None:
    out = hoopfast("version", env={"HOOPFAST_IMPL": "fortran"})
    assert out.returncode != 0
    assert "HOOPFAST_IMPL" in out.stdout + out.stderr


def test_token_issue_mints_a_token_the_gateway_accepts(tmp_path: Path) -> None:
    out = hoopfast(
        "token",
        "issue",
        "--sub",
        "alice",
        "--group",
        "analysts",
        "--group",
        "dba",
        "--ttl",
        "10m",
        "--state-dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["groups"] == ["analysts", "dba"]
    assert claims["exp"] - claims["iat"] == 600
    jwks = tmp_path / "dev-issuer" / "jwks.json"
    validator = TokenValidator(Identity(issuer="hoopfast-dev", audience="hoopfast", jwks_file=jwks))
    principal = validator.validate(token)
    assert principal.subject == "alice" and principal.groups == ("analysts", "dba")


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "pw").write_text("secret")
    config = tmp_path / "ok.toml"
    config.write_text(
        """
[identity]
issuer = "https://idp.example"
audience = "hoopfast"
jwks_file = "jwks.json"

[connections.orders]
host = "db"
database = "orders"
user = "app"
password = { file = "pw" }
tls = "verify-full"
"""
    )
    out = hoopfast("check-config", str(config))
    assert out.returncode == 0, out.stderr
    assert "OK (1 connection(s))" in out.stdout


def test_check_config_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[identity]
issuer = "https://idp.example"
audience = "hoopfast"
jwks_file = "jwks.json"
jwks_url = "https://idp.example/jwks"
algorithms = ["HS256", "none"]

[connections.orders]
host = "db"
port = 70000
database = "orders"
user = "app"
password = { env = "X", file = "y" }
tls = "sometimes"
colour = "blue"
"""
    )
    out = hoopfast("check-config", str(config))
    assert out.returncode == 1
    err = out.stderr
    for location in (
        "identity:",
        "connections.orders.port:",
        "connections.orders.password:",
        "connections.orders.tls:",
        "connections.orders.colour:",
    ):
        assert location in err, err
    assert "exactly one of 'jwks_file' or 'jwks_url'" in err


def test_check_config_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[identity\nissuer = ")
    out = hoopfast("check-config", str(config))
    assert out.returncode == 1 and "syntax" in out.stderr


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], []])
def test_identity_refuses_symmetric_and_unsigned_algorithms(algorithms: list[str]) -> None:
    with pytest.raises(ValueError):
        Identity(issuer="i", audience="a", jwks_file=Path("x"), algorithms=algorithms)


def test_bad_setting_is_reported_by_variable_name() -> None:
    out = hoopfast("serve", env={"HOOPFAST_PG_LISTEN": "nowhere"})
    assert out.returncode == 2
    assert "HOOPFAST_PG_LISTEN" in out.stderr


def test_configuration_doc_example_validates() -> None:
    """The TOML in docs/configuration.md is the reference people copy."""
    import tomllib

    from hoopfast.config import GatewayConfig

    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    block = text.split("## The TOML file", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    config = GatewayConfig.model_validate(tomllib.loads(block))
    assert config.connections["orders"].grants["support"].review == ["ddl"]
    masking = config.connections["orders"].masking
    assert masking is not None and len(masking.rules) == 4 and masking.catalog_ttl == 60
