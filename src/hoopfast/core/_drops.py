"""SQL that drops prepared statements (and portals) by name, for the trail.

The trail keeps the text of each prepared statement and portal the client
names, until the server confirms they are gone. Besides a protocol Close,
three SQL commands drop them, and clients send them: psycopg 3 with libpq
before 17 evicts its prepared statements with ``DEALLOCATE name``, pools
reset connections with ``DISCARD ALL``. Both trail builds (_trail.py and
ext/_ctrail.pyx) read a statement's text here when it starts, and forget the
names when the command's tag arrives (so a failed command drops nothing).

SQL ``PREPARE name`` is read too: it makes the name where the server had
none, so the name means that SQL from its tag on.

Only a text that is exactly one such command (whitespace and one ``;``
around it) is read: anything else (comments, several statements, a Unicode
escape identifier) drops nothing, and the names stay until the session ends,
as they did before. That errs on the side of keeping an audit record's text:
forgetting a name that is still prepared would record its next run without
its SQL.
"""

from __future__ import annotations

import re

#: What a command drops: one statement name, all statement names, or all
#: statements and portals; the tag that confirms it.
STATEMENT = 1
STATEMENTS = 2
EVERYTHING = 3
#: Not a drop: SQL ``PREPARE name`` makes a statement under the name (it
#: succeeds only where the server had none: one dropped where the trail
#: could not read it). The name then means that SQL, not what it meant.
PREPARE = 4
TAGS = {
    STATEMENT: "DEALLOCATE",
    STATEMENTS: "DEALLOCATE ALL",
    EVERYTHING: "DISCARD ALL",
    PREPARE: "PREPARE",
}

# PostgreSQL's whitespace (scan.l: space, tab, newline, CR, form feed, and
# vertical tab).
_WS = r"[ \t\n\r\f\v]"
# Linear on any input: no two parts can match the same run of characters
# (a text of whitespace after the name costs one pass, not a pass per way
# to split it). re.ASCII: keywords and unquoted names are ASCII letters,
# case-insensitively, and nothing else (IGNORECASE alone lets [a-z] match
# the Kelvin sign).
_DROP = re.compile(
    rf"{_WS}*(?:"
    rf"(?P<deallocate>deallocate){_WS}+(?:prepare{_WS}+)?"
    rf"(?:(?P<all>all)|\"(?P<quoted>(?:[^\"]|\"\")+)\"|(?P<plain>[a-z_][a-z0-9_$]*))"
    rf"|discard{_WS}+all"
    rf"){_WS}*(?:;{_WS}*)?\Z",
    re.IGNORECASE | re.ASCII,
)
#: ``PREPARE name`` at the start of a text (whatever follows: the types
#: and the statement; several statements still make the name).
_PREPARE = re.compile(
    rf"{_WS}*prepare{_WS}+(?:\"(?P<quoted>(?:[^\"]|\"\")+)\"|(?P<plain>[a-z_][a-z0-9_$]*))"
    rf"(?:{_WS}|\()",
    re.IGNORECASE | re.ASCII,
)
#: A PREPARE's name is looked for in its first characters only.
_PREPARE_HEAD = 256
#: Longer texts are not read at all (the command is short; this bounds the
#: work whatever the input).
_MAX_TEXT = 4096
#: PostgreSQL truncates an identifier past NAMEDATALEN - 1 bytes *in the
#: database's encoding*, which the gateway does not know: an ASCII name is
#: one byte a character in every server encoding, so it is cut at 63 as the
#: server cuts it; another quoted name is read only when it cannot be that
#: long (up to 15 characters, four bytes each at most). Unquoted names are
#: read only in ASCII, whose case folding does not depend on the encoding.
_NAME_BYTES = 63
_NAME_CHARS = 15
#: What a text must start with to be read at all (the cheap test first).
FIRST = frozenset("dDpP \t\n\r\f\v")


def drops(text: str, codec: str) -> tuple[int, bytes] | None:
    """What ``text`` drops if it runs: (STATEMENT, name in the client
    encoding), (STATEMENTS, b""), (EVERYTHING, b""), or None; or the name
    it prepares (PREPARE, name)."""
    m = _PREPARE.match(text, 0, _PREPARE_HEAD)
    if m is not None:
        return _named(PREPARE, m, codec)
    if len(text) > _MAX_TEXT:
        return None
    m = _DROP.match(text)
    if m is None:
        return None
    if m["deallocate"] is None:
        return EVERYTHING, b""
    if m["all"] is not None:
        return STATEMENTS, b""
    return _named(STATEMENT, m, codec)


def _named(kind: int, m: re.Match[str], codec: str) -> tuple[int, bytes] | None:
    """(kind, the statement name ``m`` found, in the client encoding)."""
    if m["quoted"] is not None:
        name = m["quoted"].replace('""', '"')
        if name.isascii():
            name = name[:_NAME_BYTES]
        elif len(name) > _NAME_CHARS:
            return None
    else:
        name = m["plain"].lower()[:_NAME_BYTES]  # (ASCII only: the pattern says so)
    try:
        return kind, name.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return None
