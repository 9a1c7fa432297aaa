"""Text that someone else chose, made safe to show to a person."""

from __future__ import annotations

import unicodedata

__all__ = ["duration", "shown"]


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


def duration(seconds: float) -> str:
    """Seconds as people say a window: ``5400`` -> ``"1h30m"``."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
