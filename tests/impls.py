"""Both implementations of the hot-path core, side by side, for tests that
compare them. The compiled one is skipped only when it cannot be imported and
HOOPFAST_IMPL does not demand it; when demanded, failing to import is an error."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from hoopfast.core import _python


def _load_compiled() -> tuple[ModuleType | None, str]:
    try:
        import hoopfast_core
    except ImportError as e:
        if os.environ.get("HOOPFAST_IMPL", "").strip().lower() == "compiled":
            raise ImportError(f"HOOPFAST_IMPL=compiled but hoopfast_core fails: {e}") from e
        return None, f"hoopfast_core is not importable: {e}"
    return hoopfast_core, ""


COMPILED, WHY_NOT_COMPILED = _load_compiled()
PYTHON = _python
IMPLS = [
    pytest.param(_python, id="python"),
    pytest.param(
        COMPILED,
        id="compiled",
        marks=pytest.mark.skipif(COMPILED is None, reason=WHY_NOT_COMPILED),
    ),
]
needs_both = pytest.mark.skipif(COMPILED is None, reason=WHY_NOT_COMPILED)
