"""libpq connection strings (``key=value ...``), for the tools that start
psql or a driver: ``hoopfast connect``, the demo, tests and benchmarks."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["make_conninfo"]


def _quote(value: str) -> str:
    """Quote a libpq conninfo value (single quotes, backslash escapes)."""
    if value and re.fullmatch(r"[A-Za-z0-9_./:@+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(params: Mapping[str, str | int | None]) -> str:
    """A libpq conninfo string; None values are left out."""
    return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items() if v is not None)
