"""Type stub of the compiled hot-path core (Rust, pyo3).

Implements the contract of :mod:`hoopfast.core.abc`, with the same behaviour
and output bytes as the reference :mod:`hoopfast.core._python`.
"""

from typing import Final, final

__all__ = [
    "IMPLEMENTATION",
    "FramingError",
    "Framer",
    "decode_fields",
    "encode_fields",
    "decode_data_row",
    "encode_data_row",
    "decode_row_description",
    "encode_row_description",
    "decode_startup",
    "encode_startup",
    "fingerprint",
    "pg_parse",
    "PatternSet",
    "MaskPlan",
]

IMPLEMENTATION: Final[str]

class FramingError(ValueError):
    """A message header with an impossible length; the stream cannot be framed."""

@final
class Framer:
    """Incremental framer for one direction of a post-startup message stream.

    Adjacent intercepted messages of one type in ``batch`` within a chunk come
    out as one ``(type_code, concatenated messages)`` item."""

    def __new__(cls, max_length: int, intercept: bytes = ..., batch: bytes = ...) -> Framer: ...
    def feed(self, data: bytes) -> list[bytes | tuple[int, bytes]]:
        """Frame one chunk; raises FramingError on a length under 4 or over
        max_length, and on every call after that."""

    def set_intercept(self, types: bytes) -> None:
        """Change the intercepted type codes (from the next message header on)."""

    def set_runs(self, types: bytes) -> None:
        """Change the types whose adjacent whole messages come out as one
        item whatever their types, of code 0 when several (see
        hoopfast.core.abc.Framer)."""

    @property
    def buffered(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def at_boundary(self) -> bool: ...

def decode_fields(message: bytes) -> list[tuple[str, str]]: ...
def encode_fields(kind: int, fields: list[tuple[str, str]]) -> bytes: ...
def decode_data_row(message: bytes) -> list[bytes | None]: ...
def encode_data_row(values: list[bytes | None]) -> bytes: ...
def decode_row_description(
    message: bytes,
) -> list[tuple[bytes, int, int, int, int, int, int]]: ...
def encode_row_description(
    fields: list[tuple[bytes, int, int, int, int, int, int]],
) -> bytes: ...
def decode_startup(packet: bytes) -> tuple[int, dict[str, str]]: ...
def encode_startup(params: dict[str, str], code: int = 196608) -> bytes: ...
def fingerprint(sql: str) -> tuple[bytes, int]:
    """(16-byte key, statement count): a policy-verdict cache key under which
    statements differing only in literal values are equal (rules in
    hoopfast.core._python.fingerprint)."""

def pg_parse(sql: str) -> list[tuple[str, list[str], list[tuple[str, str]], list[str]]]:
    """PostgreSQL's own grammar (libpg_query) on ``sql``: per statement,
    ``(kind, flags, [(table, context)], [function])``. ``kind`` is the parse
    node (``"SelectStmt"``, ``"DeleteStmt"``, ... or ``"Other"``); flags are
    ``analyze``, ``into``, ``locking``, ``copy_from``, ``copy_file``,
    ``set:NAME``, ``reset:NAME``, ``reset_all``, ``set_transaction``; table
    contexts are ``select``, ``dml``, ``ddl``, ``call`` or ``none``. Raises
    ValueError(message, position) when the grammar rejects the text
    (position: 1-based character index, 0 when unknown), OverflowError(message)
    when the text could nest too deeply to parse safely (see rust/src/pgparse.rs,
    MAX_NESTING). Parses on a thread of its own with a deep stack, the GIL
    released. Not part of the hot-path contract (no pure-Python twin): both
    implementations use it."""

@final
class PatternSet:
    """Deny patterns in the regex crate's syntax (linear time; no look-around
    or backreferences), searched in one pass."""

    def __new__(cls, patterns: list[str]) -> PatternSet: ...
    def first_match(self, text: str) -> int | None:
        """Index of the first pattern (in the given order) found in ``text``."""
    def __len__(self) -> int: ...

@final
class MaskPlan:
    """Masking rules for the columns of one RowDescription, applied to whole
    buffers of DataRow messages (see docs/masking.md). A rule is
    ``(strategy, format_code, type_oid, detectors, keep_first, keep_last)``
    or None for a column left untouched; ValueError on a bad rule."""

    def __new__(
        cls,
        columns: list[tuple[str, int, int, list[str], int, int] | None],
        hmac_key: bytes,
        text_detectors: list[str] | None = None,
    ) -> MaskPlan: ...
    @property
    def masks_anything(self) -> bool:
        """True when some column has a rule (``apply`` can change a row)."""
    def mask_text(self, text: str) -> str:
        """Every detector match in ``text`` replaced by ``[REDACTED:<name>]``."""
    def apply(self, buffer: bytes) -> bytes:
        """Masked copy of a buffer of whole DataRows; the same object when
        nothing changed. ValueError on a malformed DataRow."""
