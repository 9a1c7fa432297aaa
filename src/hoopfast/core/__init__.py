"""The hot-path core: message framing, codec and SQL fingerprints.

Selected once, at import, like psycopg's ``PSYCOPG_IMPL``:

- ``HOOPFAST_IMPL=compiled``: the Rust core (``hoopfast_core``) and the Cython
  relay; failing to import them is an error, never a silent fallback.
- ``HOOPFAST_IMPL=python``: the pure-Python reference.
- unset: compiled when it imports, else the reference (``hoopfast version``
  and the pytest header say which one runs).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import cast

from hoopfast.core.abc import Core
from hoopfast.core.abc import MaskPlan as MaskPlanContract
from hoopfast.errors import ConfigurationError

IMPLEMENTATIONS = ("compiled", "python")


def _load(name: str) -> tuple[ModuleType, type]:
    if name == "compiled":
        import hoopfast_core

        from hoopfast.core._cpump import Pump as CPump

        return hoopfast_core, CPump
    if name == "python":
        from hoopfast.core import _python
        from hoopfast.core._pump import Pump as PyPump

        return _python, PyPump
    raise ConfigurationError(f"HOOPFAST_IMPL={name!r} is not one of {', '.join(IMPLEMENTATIONS)}")


def _select() -> tuple[str, tuple[ModuleType, type]]:
    forced = os.environ.get("HOOPFAST_IMPL", "").strip().lower()
    if forced:
        try:
            return forced, _load(forced)
        except ImportError as e:
            raise ImportError(
                f"HOOPFAST_IMPL={forced} but that implementation cannot be imported: {e}"
            ) from e
    try:
        return "compiled", _load("compiled")
    except ImportError:
        return "python", _load("python")


IMPLEMENTATION, (_module, Pump) = _select()
core = cast(Core, _module)

Framer = core.Framer
FramingError = core.FramingError
decode_fields = core.decode_fields
encode_fields = core.encode_fields
decode_data_row = core.decode_data_row
encode_data_row = core.encode_data_row
decode_row_description = core.decode_row_description
encode_row_description = core.encode_row_description
decode_startup = core.decode_startup
encode_startup = core.encode_startup
fingerprint = core.fingerprint
PatternSet = core.PatternSet
MaskPlan: type[MaskPlanContract] = core.MaskPlan

__all__ = [
    "IMPLEMENTATION",
    "Framer",
    "FramingError",
    "MaskPlan",
    "PatternSet",
    "Pump",
    "core",
    "decode_data_row",
    "decode_fields",
    "decode_row_description",
    "decode_startup",
    "encode_data_row",
    "encode_fields",
    "encode_row_description",
    "encode_startup",
    "fingerprint",
]
