"""The contract of the hot-path core, shared by both implementations.

Two implementations provide it: ``hoopfast_core`` (Rust, pyo3, built by maturin
from ``rust/``) and :mod:`hoopfast.core._python` (the pure-Python reference).
:mod:`hoopfast.core` picks one at import time (``HOOPFAST_IMPL``).

Wire format reminder (PostgreSQL protocol 3.0, "Message Formats"): after the
startup phase every message is a 1-byte type code, an Int32 length that counts
itself and the payload but not the type byte, then the payload.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

#: What a row value is on the wire: bytes, or None for SQL NULL (length -1).
Value = bytes | None

#: One field of a RowDescription:
#: (name, table_oid, column_attnum, type_oid, type_size, type_modifier, format_code)
FieldDescription = tuple[bytes, int, int, int, int, int, int]

#: One item out of :meth:`Framer.feed`: a run of bytes to forward unchanged, or
#: a complete intercepted message as (type_code, whole_message_including_header)
#: (with ``batch``, several adjacent ones of that type, concatenated).
FeedItem = bytes | tuple[int, bytes]


@runtime_checkable
class Framer(Protocol):
    """Incremental framer for one direction of a post-startup message stream.

    ``feed`` accepts TCP chunks cut at arbitrary places. Messages whose type is
    not in ``intercept`` are passed through as soon as their bytes arrive, even
    mid-message, so a 1 GB DataRow or COPY stream is never buffered. Messages
    whose type is in ``intercept`` are held until complete and returned whole.
    Order is preserved: concatenating the bytes items and the whole messages
    of the tuple items reproduces the input exactly.

    ``batch`` (type codes, like ``intercept``) merges intercepted messages:
    take the list ``feed`` would return without it; every run of adjacent
    tuple items of one type code in ``batch`` becomes one tuple
    ``(type_code, concatenation of those messages)``. Nothing else changes
    (pass-through items, order, ``messages``, ``buffered``, ``at_boundary``);
    a message completed from held bytes comes out in the chunk where it
    completes and merges with the whole ones of its type right after it.
    Types in ``batch`` that are not intercepted have no effect. So a chunk of
    DataRows reaches Python as one ``bytes`` object, not one per row.
    """

    def __init__(self, max_length: int, intercept: bytes = b"", batch: bytes = b"") -> None: ...

    def feed(self, data: bytes) -> list[FeedItem]:
        """Frame one chunk. Raises FramingError on a length under 4 or over
        ``max_length``; after that the framer is broken and every later call
        raises FramingError too."""
        ...

    def set_intercept(self, types: bytes) -> None:
        """Change the set of intercepted type codes (takes effect for the next
        message header; a message already being passed through stays so).
        ``batch`` is kept."""
        ...

    def set_runs(self, types: bytes) -> None:
        """Intercepted types whose adjacent whole messages (within one
        ``feed``) come out as one item *whatever their types*: a run, whose
        tuple's code is 0 when it holds more than one message (no protocol
        message has type 0, and a type-0 message must not be intercepted
        with runs set). For an observer that reads each
        message of a run itself (the audit trail): one item, and one call,
        for what would be several. A type in both ``runs`` and ``batch``
        merges as a run; a ``batch`` type not in ``runs`` still merges only
        with its own type. Applies to the next ``feed``."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete intercepted message or header."""
        ...

    @property
    def messages(self) -> int:
        """Complete messages seen so far (both kinds)."""
        ...

    @property
    def at_boundary(self) -> bool:
        """True when the stream so far ends exactly at a message boundary."""
        ...


@runtime_checkable
class PatternSet(Protocol):
    """Deny patterns (regular expressions) searched in one statement text."""

    def __init__(self, patterns: list[str]) -> None:
        """Raises ValueError naming the problem if a pattern does not compile."""
        ...

    def first_match(self, text: str) -> int | None:
        """Index of the first pattern (in the given order) found anywhere in
        ``text``, or None."""
        ...

    def __len__(self) -> int: ...


#: One column's masking rule:
#: (strategy, format_code, type_oid, detectors, keep_first, keep_last).
ColumnRule = tuple[str, int, int, list[str], int, int]


@runtime_checkable
class MaskPlan(Protocol):
    """Masking rules for the columns of one RowDescription (docs/masking.md).

    ``columns`` holds one :data:`ColumnRule` or None (untouched) per column.
    Strategies: ``redact``, ``same_length``, ``partial``, ``hash``, ``null``,
    ``default``, ``fake``, ``detect``. A column that is not text, or is in
    binary format, may only be nulled or set to its type's default.
    ``text_detectors`` (default: every detector named by a rule) are those
    :meth:`mask_text` applies.
    """

    def __init__(
        self,
        columns: list[ColumnRule | None],
        hmac_key: bytes,
        text_detectors: list[str] | None = None,
    ) -> None:
        """Raises ValueError naming the column and the problem for a bad rule."""
        ...

    @property
    def masks_anything(self) -> bool:
        """True when some column has a rule (``apply`` can change a row)."""
        ...

    def mask_text(self, text: str) -> str:
        """Every detector match in ``text`` replaced by ``[REDACTED:<name>]``."""
        ...

    def apply(self, buffer: bytes) -> bytes:
        """A buffer of whole DataRow messages with the values masked and the
        lengths re-encoded; the same object when no value changed. Raises
        ValueError on a malformed DataRow or a wrong column count."""
        ...


class Core(Protocol):
    """What an implementation module exports."""

    IMPLEMENTATION: str
    FramingError: type[ValueError]
    Framer: type[Framer]
    PatternSet: type[PatternSet]
    MaskPlan: type[MaskPlan]

    def decode_fields(self, message: bytes) -> list[tuple[str, str]]:
        """ErrorResponse ('E') / NoticeResponse ('N') -> [(code_char, value)]."""
        ...

    def encode_fields(self, kind: int, fields: list[tuple[str, str]]) -> bytes:
        """Build a whole 'E' or 'N' message from (code_char, value) pairs."""
        ...

    def decode_data_row(self, message: bytes) -> list[Value]: ...

    def encode_data_row(self, values: list[Value]) -> bytes: ...

    def decode_row_description(self, message: bytes) -> list[FieldDescription]: ...

    def encode_row_description(self, fields: list[FieldDescription]) -> bytes: ...

    def decode_startup(self, packet: bytes) -> tuple[int, dict[str, str]]:
        """A whole startup-phase packet (Int32 length, Int32 code, body) ->
        (code, parameters). Parameters are empty for SSLRequest,
        GSSENCRequest and CancelRequest; a CancelRequest yields
        {"pid": decimal str, "secret": lowercase hex of 4..256 bytes}
        (protocol 3.2 allows cancel keys longer than 4 bytes)."""
        ...

    def encode_startup(self, params: dict[str, str], code: int = 196608) -> bytes: ...

    def fingerprint(self, sql: str) -> tuple[bytes, int]:
        """(16-byte key, statement count) of a SQL text, for a cache of policy
        verdicts: statements that differ only in literal values share a key,
        anything that can change meaning keeps them apart. Literal bodies
        (``DO $$ ... $$``) are not looked into: that is the policy's job. See
        :func:`hoopfast.core._python.fingerprint` for the rules."""
        ...
