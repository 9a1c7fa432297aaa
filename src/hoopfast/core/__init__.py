"""The hot-path core: message framing, codec, SQL fingerprints, the relay
pump and the audit trail.

Selected once, at import, like psycopg's ``PSYCOPG_IMPL``:

- ``HOOPFAST_IMPL=compiled``: the Rust core (``hoopfast_core``), the Cython
  relay and trail; failing to import them is an error, never a silent fallback.
- ``HOOPFAST_IMPL=python``: the pure-Python reference.
- unset: compiled when it imports, else the reference (``hoopfast version``
  and the pytest header say which one runs).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, cast

from hoopfast.core._pump import held_messages
from hoopfast.core._shown import declared_types, shown_binary, shown_parameter
from hoopfast.core._trail import name_key
from hoopfast.core.abc import Core
from hoopfast.core.abc import MaskPlan as MaskPlanContract
from hoopfast.errors import ConfigurationError

IMPLEMENTATIONS = ("compiled", "python")


def _load(name: str) -> tuple[ModuleType, type, ModuleType]:
    """The codec module, the Pump class and the trail module."""
    if name == "compiled":
        import hoopfast_core

        from hoopfast.core import _ctrail
        from hoopfast.core._cpump import Pump as CPump

        return hoopfast_core, CPump, _ctrail
    if name == "python":
        from hoopfast.core import _python, _trail
        from hoopfast.core._pump import Pump as PyPump

        return _python, PyPump, _trail
    raise ConfigurationError(f"HOOPFAST_IMPL={name!r} is not one of {', '.join(IMPLEMENTATIONS)}")


def _select() -> tuple[str, tuple[ModuleType, type, ModuleType]]:
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


IMPLEMENTATION, (_module, Pump, _trail_module) = _select()
core = cast(Core, _module)

if TYPE_CHECKING:
    # Both trails have the reference's interface (ext/_ctrail.pyx keeps in step).
    from hoopfast.core._trail import (
        Caps,
        Journal,
        SessionLog,
        Statement,
        Tally,
        Trail,
        block_end,
        event_lines,
        float_repr,
        frame,
    )
else:
    frame = _trail_module.frame
    float_repr = _trail_module.float_repr
    event_lines = _trail_module.event_lines
    block_end = _trail_module.block_end
    Trail = _trail_module.Trail
    Statement = _trail_module.Statement
    Caps = _trail_module.Caps
    Journal = _trail_module.Journal
    SessionLog = _trail_module.SessionLog
    Tally = _trail_module.Tally

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
    "Caps",
    "Framer",
    "FramingError",
    "Journal",
    "MaskPlan",
    "PatternSet",
    "Pump",
    "SessionLog",
    "Statement",
    "Tally",
    "Trail",
    "block_end",
    "core",
    "declared_types",
    "decode_data_row",
    "decode_fields",
    "decode_row_description",
    "decode_startup",
    "encode_data_row",
    "encode_fields",
    "encode_row_description",
    "encode_startup",
    "event_lines",
    "fingerprint",
    "float_repr",
    "frame",
    "held_messages",
    "name_key",
    "shown_binary",
    "shown_parameter",
]
