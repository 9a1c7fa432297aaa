"""Writing a gateway TOML file from Python values: one writer for the demo,
the benchmark and the tests, so they all produce what `check-config` reads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hoopfast.identity.devissuer import AUDIENCE, ISSUER


def toml_value(value: Any) -> str:
    """A TOML literal for str, bool, int, float, list or dict (inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_gateway_config(
    path: Path,
    jwks_file: Path,
    connections: Mapping[str, Mapping[str, Any]],
    roles: Mapping[str, Mapping[str, Any]],
    *,
    audit: Mapping[str, Any] | None = None,
    header: str = "",
) -> Path:
    """A config trusting the development issuer (its JWKS file), with the
    given roles and connections (keys as in docs/configuration.md)."""
    lines = [f"# {header}"] if header else []
    lines += [
        "[identity]",
        f"issuer = {toml_value(ISSUER)}",
        f"audience = {toml_value(AUDIENCE)}",
        f"jwks_file = {toml_value(jwks_file)}",
        "",
    ]
    if audit:
        lines.append("[audit]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in audit.items())
        lines.append("")
    for section, tables in (("roles", roles), ("connections", connections)):
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
