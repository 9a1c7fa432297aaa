from collections.abc import Callable, Sequence
from typing import Any, final

@final
class Caps:
    @property
    def rows(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def session_bytes(self) -> int: ...
    def __init__(self, rows: int, bytes: int, session_bytes: int) -> None: ...

@final
class Statement:
    text: str
    verdict: Any
    params: list[str | None] | None
    started: float
    started_at: float
    rows: int
    pending_rows: int
    uncounted: bool
    inexact: bool
    max_rows: int
    portal: Any
    tags: list[str]
    error: dict[str, str] | None
    results: list[Any]
    kept_bytes: int
    result_formats: list[int]
    duration: float
    server_bytes: int
    drops: tuple[str, dict[bytes, Any], dict[bytes, Any]] | None
    def __init__(
        self,
        text: str,
        verdict: Any,
        params: list[str | None] | None = None,
        started: float = 0.0,
        started_at: float = 0.0,
    ) -> None: ...
    def event(self, n: int) -> dict[str, Any]: ...

@final
class Tally:
    @property
    def bounds(self) -> tuple[float, ...]: ...
    @property
    def statements(self) -> dict[str, int]: ...
    errors: int
    rows: int
    server_bytes: int
    duration_ns: int
    @property
    def durations(self) -> list[int]: ...
    def __init__(self, bounds: Sequence[float] = ()) -> None: ...
    def add(self, st: Statement) -> None: ...

class Trail:
    done: Any
    server_codec: str | None
    def __init__(
        self,
        codec: str,
        caps: Caps,
        mask_text: Any,
        done: Any,
        unknown: Any,
        log: SessionLog | None = None,
        unrecorded: Any = None,
        tally: Tally | None = None,
    ) -> None: ...
    def query(self, text: str, verdict: Any) -> None: ...
    def function_call(self, oid: int, verdict: Any) -> None: ...
    def parse(
        self,
        name: bytes,
        text: str,
        verdict: Any,
        message: bytes | None = None,
        undo: Any = None,
    ) -> None: ...
    def unsettled(self, name: bytes) -> bool: ...
    def fast_statement(self, type_code: int, message: bytes, text: str, verdict: Any) -> None: ...
    def client_run(self, type_code: int, data: bytes) -> None: ...
    def server_run(self, type_code: int, data: bytes) -> None: ...
    def client_message(self, type_code: int, message: bytes, refused: Any = None) -> None: ...
    def abandon(self) -> None: ...
    def server_message(self, type_code: int, data: bytes) -> None: ...

@final
class Journal:
    frames: list[bytes]
    records: list[Any]
    deferred: list[tuple[Any, bytes]]
    dropping: bool
    dropped: int
    pending: bool
    on_first: Callable[[], Any]
    def __init__(self, on_first: Callable[[], Any]) -> None: ...
    def add(self, frame: bytes, record: Any, essential: bool = False) -> None: ...
    def defer(self, pump: Any, data: bytes) -> None: ...
    def take(self) -> tuple[list[bytes], list[Any]]: ...
    def take_deferred(self) -> list[tuple[Any, bytes]]: ...
    @staticmethod
    def release(deferred: list[tuple[Any, bytes]], written: bool) -> None: ...

@final
class SessionLog:
    @property
    def session_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def connection(self) -> str: ...
    count: int
    last_hash: str
    statements: int
    def __init__(
        self,
        journal: Journal,
        session_id: str,
        subject: str,
        connection: str,
        record: Callable[..., Any],
        encode: Callable[[dict[str, Any]], bytes],
        statement_kind: str,
        max_bytes: int,
        genesis: str,
        show_text: Callable[[str], str] | None = None,
    ) -> None: ...
    def append(
        self, kind: str, at: float, verdict: str, body: dict[str, Any], essential: bool = False
    ) -> None: ...
    def statement(self, st: Statement) -> None: ...
    def _statement_json_for_tests(
        self, st: Statement, n: int, seq: int, at: float
    ) -> bytes | None: ...

def frame(payload: bytes) -> bytes: ...
def float_repr(value: float) -> str: ...
def event_lines(events: list[Any]) -> list[str] | None: ...
def block_end(
    events: list[Any],
    lines: list[str],
    start: int,
    max_events: int,
    max_chars: int,
    span: float,
) -> int: ...
