"""Text that someone else chose, made safe to show to a person."""

from __future__ import annotations

import unicodedata

__all__ = ["shown"]


def shown(value: object) -> str:
    """Text someone else chose made safe for a terminal: escape sequences
    in it must not act on the reader's screen."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
        else f"\\x{ord(ch):02x}"
        if ord(ch) < 0x100
        else f"\\u{ord(ch):04x}"
        for ch in text
    )
