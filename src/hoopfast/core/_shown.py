"""How a bound parameter value is shown to people: in the audit trail (both
trail builds) and to approvers (hoopfast.proxy.postgres.review).

A text-format value goes through the detectors (``mask_text``). A
binary-format one is shown as ``\\x`` + hex, *unless* the detectors find
something in its text: asyncpg sends every string in binary format (a text
value's binary form is its bytes in the client encoding), and hex would
carry an e-mail address or a card number past them. Then the value is shown
as its masked text, like a text-format one. Non-text binary values (an
int4, a uuid) rarely decode to anything a detector matches, so they stay
hex.
"""

from __future__ import annotations

from collections.abc import Callable


def shown_parameter(raw: bytes, fmt: int, codec: str, mask_text: Callable[[str], str]) -> str:
    """A bound value (not NULL) as shown; ``fmt`` is its format code (1
    binary, anything else text, as the server reads it)."""
    text = raw.decode(codec, "replace")
    masked = mask_text(text)
    if fmt != 1 or masked != text:
        return masked
    return "\\x" + raw.hex()
