"""``hoopfast audit``: sessions · export · replay · verify, for auditors.

Everything goes through the admin API with the auditor's own token, so the
API's access rules (auditor roles, never one's own sessions) hold for the
command line too; nothing here opens the store. ``verify`` fetches the
records exactly as stored and checks chains and signatures *here*, with the
store's public keys or keys the auditor pinned, so a compromised gateway
cannot simply answer "all fine".

Exit codes: 0 ok, 1 failure (verification, network, server), 2 usage or
authentication (the API's 401/403/422 message is printed). The token is
never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from hoopfast.apiclient import (
    EXIT_FAILED,
    EXIT_USAGE,
    Api,
    CliError,
    api_from_args,
    api_options,
    guarded,
    plural,
    positive,
    shown,
    table,
    when,
)

__all__ = ["add_audit_parser", "render_replay"]

#: Columns of the CSV export (plus ``results`` with --include-results).
CSV_COLUMNS = (
    "session_id",
    "seq",
    "at",
    "kind",
    "subject",
    "connection",
    "verdict",
    "text",
    "rows",
    "bytes",
    "duration_ms",
    "sqlstate",
    "tags",
)


# --------------------------------------------------------------------------- formatting

_DURATION_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _time_arg(value: str | None, now: float | None = None) -> str | None:
    """A duration such as 24h or 7d means that long ago; anything else
    (ISO-8601, Unix seconds) goes to the API, which checks it."""
    if value is None:
        return None
    match = _DURATION_AGO.match(value)
    if match:
        now = time.time() if now is None else now
        return repr(now - float(match.group(1)) * _SECONDS[match.group(2)])
    return value


def iso(at: float | None) -> str:
    """Unix seconds as ISO-8601 UTC, microseconds kept (exports)."""
    if at is None:
        return ""
    try:
        moment = datetime.fromtimestamp(at, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return str(at)  # (not a time: stored data altered, exported as it is)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _items(value: Any) -> list[Any]:
    """A list from recorded data, or none: stored data that was altered
    (a number where a list was) is shown as far as it reads, and `audit
    verify` says what is wrong with it."""
    return value if isinstance(value, list) else []


def _inline(value: object) -> str:
    """Text someone else chose, on one line of a replay: a newline in it
    (a parameter, a column name, an application_name the client set) is
    shown as ``\\n``, so that it cannot start a line that reads as the
    replay's own (a fake error, a fake statement)."""
    return shown(value).replace("\n", "\\n")


#: Types psql right-aligns: integers, floats, numeric, oid-likes, money.
_NUMERIC_OIDS = frozenset({20, 21, 23, 26, 28, 29, 700, 701, 790, 1700})


def psql_table(columns: list[dict[str, Any]], rows: list[list[str | None]]) -> list[str]:
    """A result as psql's aligned format shows it: centred headers, numbers
    right-aligned, NULL as nothing, ``+`` where a value goes on a new line."""
    columns = [c if isinstance(c, dict) else {"name": c} for c in columns]
    names = [_inline(c.get("name", "?")) for c in columns]
    right = [c.get("type_oid") in _NUMERIC_OIDS for c in columns]
    cells = [[shown(v).split("\n") if v is not None else [""] for v in _items(row)] for row in rows]
    widths = [len(n) for n in names]
    for row in cells:
        for i, value in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], *(len(part) for part in value))

    def line(parts: list[str], markers: list[str]) -> str:
        return (" " + "| ".join(p + m for p, m in zip(parts, markers, strict=True))).rstrip()

    out = [line([n.center(w) for n, w in zip(names, widths, strict=True)], [" "] * len(names))]
    out.append("-" + "-+-".join("-" * w for w in widths) + "-")
    for row in cells:
        row = (row + [[""]] * len(widths))[: len(widths)]
        height = max(len(value) for value in row) if row else 1
        for k in range(height):
            parts, markers = [], []
            for i, value in enumerate(row):
                part = value[k] if k < len(value) else ""
                parts.append(part.rjust(widths[i]) if right[i] else part.ljust(widths[i]))
                markers.append("+" if k + 1 < len(value) else " ")
            out.append(line(parts, markers))
    return out


#: Command tags psql shows nothing for beyond the table and its row count.
_TABLE_ONLY_TAGS = frozenset({"SELECT", "FETCH", "SHOW", "EXPLAIN", "VALUES", "TABLE"})


def _statement_lines(data: Mapping[str, Any], connection: str, at: Any) -> list[str]:
    at = data.get("started_at", data.get("at", at))
    duration = data.get("duration_ms")
    head = f"[{when(at if isinstance(at, int | float) else None, with_date=False)}]"
    if isinstance(duration, int | float):
        head += f" {duration:.3f} ms"
    verdict = data.get("verdict") or ""
    if verdict and verdict != "allow":
        rule = data.get("rule")
        head += f"  {verdict.upper()}" + (f" (rule {_inline(rule)})" if rule else "")
    out = [head]
    text = shown(data.get("text", "")).rstrip("\n").split("\n")
    out.append(f"{_inline(connection)}=> {text[0]}")
    out += [f"{_inline(connection)}-> {more}" for more in text[1:]]
    params = data.get("params")
    if isinstance(params, list) and params:
        values = ", ".join(
            f"${i}=NULL" if p is None else f"${i}='{_inline(p)}'" for i, p in enumerate(params, 1)
        )
        out.append(f"  parameters: {values}")
    results = _items(data.get("results"))
    tags = [str(t) for t in _items(data.get("tags"))]
    for result in results:
        if not isinstance(result, dict):
            continue
        rows = _items(result.get("rows"))
        out += psql_table(_items(result.get("columns")), rows)
        if result.get("truncated"):
            total = data.get("rows")
            more = f" of {total}" if isinstance(total, int) and len(results) == 1 else ""
            out.append(f"({len(rows)}{more} rows recorded; the rest was not kept)")
        else:
            out.append(f"({plural(len(rows), 'row')})")
        out.append("")
    for tag in tags:
        word = tag.split(" ", 1)[0].upper()
        if word in _TABLE_ONLY_TAGS:
            if not results:  # rows returned, but no values recorded
                count = tag.rsplit(" ", 1)[-1]
                if count.isdigit():
                    out.append(f"({plural(int(count), 'row')}; values not recorded)")
            continue
        out.append(_inline(tag))
    error = data.get("error")
    if isinstance(error, dict):
        message = shown(error.get("message", "")).replace("\n", "\n        ")
        sqlstate = error.get("sqlstate")
        out.append(f"ERROR:  {message}" + (f"  (SQLSTATE {_inline(sqlstate)})" if sqlstate else ""))
    elif verdict == "deny":
        out.append("ERROR:  denied by the gateway's policy")
    elif verdict == "review":
        out.append("(held for a second person's review)")
    while out[-1] == "":
        out.pop()
    out.append("")
    return out


def render_replay(detail: Mapping[str, Any]) -> str:
    """A session as the person saw it: who, from where, when; then each
    statement with its time, duration, text, result rows and command tag
    or error, much as psql showed them. ``detail`` is a page of
    ``/v1/audit/sessions/{id}`` (the first, for the header)."""
    lines = _replay_head(detail) + _replay_statements(detail)
    return "\n".join(lines).rstrip("\n") + "\n"


def _replay_head(first_page: Mapping[str, Any]) -> list[str]:
    """The header of a replay, from the session's row, its seal and its
    first event (session_start), all in its first page."""
    session = first_page.get("session") or {}
    events = first_page.get("events") or []
    seal = first_page.get("seal")
    start = next((e.get("data") or {} for e in events if e.get("kind") == "session_start"), {})
    if not isinstance(start, dict):
        start = {}
    connection = str(session.get("connection", ""))
    out = [
        f"Session {_inline(session.get('session_id'))}: {_inline(session.get('subject'))} "
        f"on connection {_inline(connection)}"
    ]
    groups = _items(start.get("groups"))
    if groups:
        out.append(f"  groups    {', '.join(_inline(g) for g in groups)}")
    client = _inline(session.get("client_address") or start.get("client_address") or "-")
    app = start.get("application_name")
    out.append(f"  client    {client}" + (f" ({_inline(app)})" if app else ""))
    tls = start.get("tls")
    if isinstance(tls, dict):
        out.append(f"  tls       {_inline(tls.get('version'))} {_inline(tls.get('cipher'))}")
    elif "tls" in start:
        out.append("  tls       none")
    if start.get("token_id"):
        out.append(f"  token     {_inline(start['token_id'])}")
    out.append(f"  started   {when(session.get('started_at'))}")
    if session.get("ended_at") is not None:
        reason = session.get("end_reason") or ""
        ended = when(session.get("ended_at"))
        out.append(f"  ended     {ended}" + (f" ({_inline(reason)})" if reason else ""))
    else:
        out.append("  ended     - (still open, or not yet recorded)")
    statements, stored = session.get("statements", 0), session.get("stored_events", 0)
    out.append(f"  recorded  {plural(statements, 'statement')}, {stored} events")
    if isinstance(seal, dict):
        out.append(f"  sealed    {seal.get('events')} events, key {_inline(seal.get('key_id'))}")
    else:
        out.append("  sealed    no")
    if start.get("trace_id"):
        out.append(f"  trace     {_inline(start['trace_id'])}")
    out.append("")
    return out


def _replay_statements(page: Mapping[str, Any]) -> list[str]:
    """The statements of one page of a session, each followed by a blank line."""
    connection = str((page.get("session") or {}).get("connection", ""))
    out: list[str] = []
    for event in page.get("events") or []:
        if event.get("kind") != "statement":
            continue
        data = event.get("data")
        if not isinstance(data, dict):
            out += [
                f"[event {event.get('seq')}: content unreadable; run `hoopfast audit verify`]",
                "",
            ]
            continue
        out += _statement_lines(data, connection, event.get("at"))
    return out


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(
        self, total: int | None, unit: str = "events", stream: IO[str] | None = None
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        rate = done / max(now - self.started, 1e-6)
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"[{bar}] {fraction:4.0%}  {done:,}/{self.total:,} {self.unit}"
        else:
            text = f"{done:,} {self.unit}"
        self.stream.write(f"\r{text}  {rate:,.0f}/s ")
        self.stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        self.stream.write("\n")
        self.stream.flush()


# --------------------------------------------------------------------------- commands


def _filters(args: argparse.Namespace, *, verdict: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {
        "since": _time_arg(args.since),
        "until": _time_arg(args.until),
        "user": args.user,
        "connection": args.connection,
    }
    if verdict:
        params["verdict"] = args.verdict
    return params


def cmd_sessions(args: argparse.Namespace) -> int:
    with _api(args) as api:
        listed = api.listing(
            "/v1/audit/sessions", "sessions", _filters(args), args.limit, args.json
        )
    if listed is None:
        return 0
    sessions, more = listed
    rows = [
        [
            when(s.get("started_at")),
            _inline(s.get("session_id")),
            _inline(s.get("subject")),
            _inline(s.get("connection")),
            _inline(s.get("client_address")),
            str(s.get("statements", "")),
            str(s.get("stored_events", "")),
            ("sealed" if s.get("sealed") else "ended")
            + (f" ({_inline(s['end_reason'])})" if s.get("end_reason") else "")
            if s.get("ended_at") is not None or s.get("sealed")
            else "open",
        ]
        for s in sessions
    ]
    headers = ["STARTED", "SESSION", "USER", "CONNECTION", "CLIENT", "STMTS", "EVENTS", "STATE"]
    for line in table(headers, rows):
        print(line)
    hint = "; more exist: raise --limit" if more else ""
    print(f"({plural(len(sessions), 'session')}{hint})")
    return 0


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (without the newline) from a byte stream: holds at most
    one chunk and one partial line, whatever the stream's length."""
    pending = b""
    for chunk in chunks:
        if not chunk:
            continue
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        yield from parts
    if pending:
        raise CliError("the export ended in the middle of a line (cut off)")


#: What a spreadsheet reads as the start of a formula (OWASP's CSV
#: injection list): a cell starting with one of these gets a leading ``'``.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _neutralised(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: the statement's text (and the
    rest) comes from the person audited, and ``=HYPERLINK(...)`` or
    ``=cmd|...`` would run in the auditor's spreadsheet."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_row(
    event: Mapping[str, Any], include_results: bool, *, formulas: bool = False
) -> list[Any]:
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    error = data.get("error")
    tags = data.get("tags")
    row: list[Any] = [
        event.get("session_id"),
        event.get("seq"),
        iso(event.get("at")),
        event.get("kind"),
        event.get("subject"),
        event.get("connection"),
        event.get("verdict"),
        data.get("text", ""),
        data.get("rows", ""),
        data.get("bytes", ""),
        data.get("duration_ms", ""),
        error.get("sqlstate", "") if isinstance(error, dict) else "",
        "; ".join(str(t) for t in tags) if isinstance(tags, list) else "",
    ]
    if include_results:
        results = data.get("results")
        row.append(
            ""
            if results is None
            else json.dumps(results, ensure_ascii=False, separators=(",", ":"))
        )
    cells = ["" if value is None else value for value in row]
    return cells if formulas else list(map(_neutralised, cells))


@contextlib.contextmanager
def _output(path: str, binary: bool) -> Iterator[IO[Any]]:
    """The export's destination. A regular file is written under a
    temporary name and renamed only when complete, so a broken export never
    leaves a file that looks whole; a symbolic link is followed (the link
    stays), and anything else that exists (a FIFO, a device) is written to
    as it is. The file is created readable by its owner only. A write that
    fails (a full disk) is a CliError."""
    if path == "-":
        with _write_errors("stdout"):
            if binary:
                yield sys.stdout.buffer
                return
            # UTF-8, as a file export is, whatever the locale's encoding (a
            # Latin-1 terminal could not encode every recorded text).
            sys.stdout.flush()
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
            try:
                yield out
            finally:
                out.flush()
                out.detach()  # (sys.stdout stays open)
        return
    target = Path(path).resolve()
    if target.is_dir():
        raise CliError(f"cannot write {path}: it is a directory", EXIT_USAGE)
    in_place = target.exists() and not target.is_file()
    partial = target if in_place else target.with_name(f".{target.name}.partial")
    try:
        if in_place:
            fd = os.open(partial, os.O_WRONLY | os.O_TRUNC)
        else:
            # A new file only readable by its owner (audit data), never one
            # that exists: another export to the same file, or a link
            # planted to send the trail elsewhere.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise CliError(
            f"cannot write {path}: {partial} exists (another export to it is running,"
            " or one was killed: remove it)",
            EXIT_USAGE,
        ) from None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}", EXIT_USAGE) from None
    f: IO[Any] = (
        open(fd, "wb")  # noqa: SIM115 - closed below, renamed when complete
        if binary
        else open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115
    )
    try:
        with _write_errors(path), f:
            yield f
        if not in_place:
            with _write_errors(path):
                os.replace(partial, target)
    except BaseException:
        if not in_place:
            with contextlib.suppress(OSError):
                partial.unlink()
        raise


@contextlib.contextmanager
def _write_errors(where: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise CliError(f"cannot write {where}: {e.strerror or e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    params = _filters(args, verdict=True)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    written = 0
    with _api(args) as api:
        total = api.get("/v1/audit/events/count", params).get("count") if show_progress else None
        progress = Progress(total) if show_progress else None
        export_params = {**params, "include_results": "true" if args.include_results else "false"}
        binary = args.format == "jsonl"
        with (
            api.stream("/v1/audit/events", export_params) as chunks,
            _output(args.output, binary) as out,
        ):
            write: Callable[[bytes], None]
            if binary:

                def write(line: bytes) -> None:
                    out.write(line + b"\n")

            else:
                writer = csv.writer(out)
                header = [*CSV_COLUMNS, "results"] if args.include_results else list(CSV_COLUMNS)
                writer.writerow(header)

                def write(line: bytes) -> None:
                    writer.writerow(
                        _csv_row(json.loads(line), args.include_results, formulas=args.raw_csv)
                    )

            for line in split_lines(chunks):
                if line.startswith(b'{"error"'):
                    raise CliError(str(json.loads(line).get("error")))
                write(line)
                written += 1
                if progress is not None:
                    progress.update(written)
        if progress is not None:
            progress.finish(written)
    where = "stdout" if args.output == "-" else args.output
    print(
        f"exported {plural(written, 'event')} to {where}",
        file=sys.stderr if args.output == "-" else sys.stdout,
    )
    return 0


def _session_pages(api: Api, session_id: str, raw: bool) -> Iterator[dict[str, Any]]:
    """A session's pages (``/v1/audit/sessions/{id}``, or its ``/raw``), in
    order: one in memory at a time, however long the session."""
    if not session_id.strip() or "/" in session_id or session_id in (".", ".."):
        # (A web server reads an escaped "/" in a path as a "/", and "." or
        # ".." as a step: none is in a session id.)
        raise CliError(f"not a session id: {session_id!r}", EXIT_USAGE)
    path = f"/v1/audit/sessions/{quote(session_id, safe='')}" + ("/raw" if raw else "")
    after: Any = None
    while True:
        page = api.get(path, {} if after is None else {"after": after})
        yield page
        after = page.get("next")
        if after is None:
            return


def cmd_replay(args: argparse.Namespace) -> int:
    blank_lines = 0
    if isinstance(sys.stdout, io.TextIOWrapper):
        # For a person: what the terminal's encoding cannot show is shown
        # escaped, not a crash half way.
        sys.stdout.reconfigure(errors="backslashreplace")

    def write(lines: list[str]) -> None:
        # Blank lines only between lines: none at the end (render_replay).
        nonlocal blank_lines
        for line in lines:
            if not line:
                blank_lines += 1
                continue
            sys.stdout.write("\n" * blank_lines + line + "\n")
            blank_lines = 0

    with _api(args) as api:
        for number, page in enumerate(_session_pages(api, args.session_id, raw=False)):
            if number == 0:
                write(_replay_head(page))
            write(_replay_statements(page))
    return 0


def _pinned_keys(hex_keys: list[str]) -> dict[str, Any]:
    from hoopfast.recording.chain import ED25519, key_id
    from hoopfast.store.records import SigningKey

    keys: dict[str, Any] = {}
    for text in hex_keys:
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise CliError(
                f"--public-key {text[:80]!r}: not a hex Ed25519 public key (64 hex digits)",
                EXIT_USAGE,
            )
        keys[key_id(raw)] = SigningKey(key_id(raw), ED25519, raw.hex(), 0.0)
    return keys


def _record(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """A store record dataclass from the API's JSON (same field names)."""
    try:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
    except (KeyError, TypeError) as e:
        raise CliError(f"the API answered an incomplete {cls.__name__}: {e}") from None


class _SessionCheck:
    """One session's stored records for verify, read a page at a time as
    ``records()`` is consumed: its seal (from the first page), its first
    event, how many were read, and the first block whose columns differ
    from its events."""

    def __init__(self, api: Api, row: Mapping[str, Any]) -> None:
        from hoopfast.store.records import Seal

        self.session_id = str(row["session_id"])
        self._pages = _session_pages(api, self.session_id, raw=True)
        self._first_page = next(self._pages)
        seal = self._first_page.get("seal")
        self.seal = _record(Seal, seal) if seal else None
        self.first: Any = None
        self.last: Any = None
        self.count = 0
        self.blocks_problem: Any = None

    def records(self) -> Iterator[Any]:
        from hoopfast.recording.chain import blocks_problem
        from hoopfast.store.records import BlockHead, EventRecord

        for page in itertools.chain([self._first_page], self._pages):
            records = [_record(EventRecord, e) for e in page.get("events", [])]
            if not records:
                continue
            heads = [_record(BlockHead, b) for b in page.get("blocks", [])]
            if self.first is None:
                self.first = records[0]
            if self.blocks_problem is None:
                self.blocks_problem = blocks_problem(
                    self.session_id, heads, records, records[0].seq
                )
            self.count += len(records)
            self.last = records[-1]
            yield from records

    def problem(self, row: Mapping[str, Any], keys: dict[str, Any]) -> Any:
        """The session's first problem, or None."""
        from hoopfast.recording.chain import (
            session_counts_problem,
            session_row_problem,
            verify_session,
        )

        # The chain first: the other checks rely on genuine events.
        return (
            verify_session(self.session_id, self.records(), self.seal, keys)
            or session_row_problem(
                self.session_id,
                row.get("subject", ""),
                row.get("connection", ""),
                row.get("client_address", ""),
                row.get("started_at", 0.0),
                self.first,
            )
            or self.blocks_problem
            or session_counts_problem(
                self.session_id,
                row.get("stored_events"),
                row.get("ended_at"),
                self.seal is not None,
                self.count,
                self.last,
            )
        )


_UNLISTED = {
    "no_row": "its events are stored without a session row (the row was removed)",
    "other_owner": "its session row names another subject or connection than its events",
}


def cmd_verify(args: argparse.Namespace) -> int:
    from hoopfast.recording.chain import Problem
    from hoopfast.store.records import SigningKey

    with _api(args) as api:
        if args.public_key:
            keys = _pinned_keys(args.public_key)
        else:
            listed = api.get("/v1/audit/keys").get("keys", [])
            keys = {k["key_id"]: _record(SigningKey, k) for k in listed}
        # Oldest first, so that "the first problem" is the earliest one.
        rows = list(api.pages("/v1/audit/sessions", "sessions", _filters(args), None))
        rows.reverse()
        ids = [s["session_id"] for s in rows]
        show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(len(ids), "sessions") if show_progress else None
        failed = sealed = events = 0
        for done, row in enumerate(rows, 1):
            check: _SessionCheck | None = None
            try:
                check = _SessionCheck(api, row)
                problem = check.problem(row, keys)
                if problem is not None and problem.seq is None and check.seal is None:
                    # (Its seal may have been stored since its row was
                    # listed: the session's pages were read after.)
                    check = _SessionCheck(api, row)
                    problem = check.problem(row, keys)
            except CliError as e:
                # A stored value the API cannot read (a text in a number
                # column: an internal error, 500): this session is reported,
                # the others checked. (Anything else, an outage, stops.)
                if e.status != 500:
                    raise
                reason = f"its records cannot be read ({e})"
                problem = Problem(str(row.get("session_id")), None, reason)
            if check is not None:
                events += check.count
                sealed += check.seal is not None
            if problem is not None:
                failed += 1
                if progress is not None:
                    sys.stderr.write("\n")
                print(f"BROKEN {problem}")
            if progress is not None:
                progress.update(done)
        if progress is not None:
            progress.finish(len(ids))
        # Sessions whose events no row lists as theirs: not listed above.
        window = {k: v for k, v in _filters(args).items() if k in ("since", "until")}
        unlisted = api.get("/v1/audit/unlisted", window)
        for item in unlisted.get("sessions", []):
            failed += 1
            why = _UNLISTED.get(item.get("problem"), "its session row does not match its events")
            print(f"BROKEN {Problem(str(item.get('session_id')), None, why)}")
        if unlisted.get("more"):
            print("BROKEN (and more sessions whose events no session row lists)")
    if failed:
        print(
            f"FAILED: {failed} of {plural(len(ids), 'session')} broken "
            f"({plural(events, 'event')} read)"
        )
        return EXIT_FAILED
    open_ = len(ids) - sealed
    pinned = " with the pinned key(s)" if args.public_key else ""
    print(
        f"OK: {plural(len(ids), 'session')}, {plural(events, 'event')} verified; "
        f"{sealed} sealed and signed{pinned}, {open_} not sealed (chain checked)"
    )
    return 0


# --------------------------------------------------------------------------- the parser


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return guarded(command, f"hoopfast audit {args.audit_command}")(args)

    return run


def _given(text: str) -> str:
    """An argparse type: text that is not empty. An empty filter (an unset
    shell variable) would select everything."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (leave the option out to select everything)")
    return text


def _api(args: argparse.Namespace) -> Api:
    return api_from_args(args, "hoopfast audit")


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``audit`` command group, for :func:`hoopfast.cli.build_parser`."""
    common = api_options()

    window = argparse.ArgumentParser(add_help=False)
    selection = window.add_argument_group("selection")
    time_help = "ISO-8601 (no zone = UTC), Unix seconds, or a duration ago (24h, 7d)"
    selection.add_argument("--since", type=_given, help=f"from this time on: {time_help}")
    selection.add_argument("--until", type=_given, help=f"before this time: {time_help}")
    selection.add_argument("--user", type=_given, help="only sessions of this person")
    selection.add_argument("--connection", type=_given, help="only this gateway connection")

    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )

    audit = sub.add_parser(
        "audit",
        help="session trails for auditors: sessions, export, replay, verify",
        description="Read session trails through the admin API with an auditor's token. "
        "Nobody reads the trail of their own sessions unless the configuration allows it.",
    )
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    sessions = commands.add_parser(
        "sessions", parents=[common, window], help="list sessions, newest first"
    )
    sessions.add_argument(
        "--limit", type=positive, default=50, help="at most this many (default 50)"
    )
    sessions.add_argument("--json", action="store_true", help="one JSON object per line")
    sessions.set_defaults(func=_run(cmd_sessions))

    export = commands.add_parser(
        "export",
        parents=[common, window, progress],
        help="export events to a file (JSON Lines or CSV), streamed",
        description="Export every matching event once, oldest first. The file appears only "
        "when the export is complete.",
    )
    export.add_argument("--verdict", choices=["allow", "deny", "review"], help="only this verdict")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument(
        "--include-results", action="store_true", help="include the recorded result rows"
    )
    export.add_argument(
        "--raw-csv",
        action="store_true",
        help="CSV cells exactly as recorded: without it a cell starting with = + - @ tab or "
        "CR gets a leading ' so that a spreadsheet does not run it as a formula",
    )
    export.add_argument("-o", "--output", required=True, help="the file to write ('-': stdout)")
    export.set_defaults(func=_run(cmd_export))

    replay = commands.add_parser(
        "replay", parents=[common], help="show a session as the person saw it"
    )
    replay.add_argument("session_id")
    replay.set_defaults(func=_run(cmd_replay))

    verify = commands.add_parser(
        "verify",
        parents=[common, window, progress],
        help="recompute hash chains and check seal signatures",
        description="Fetch each session's stored records and check, on this machine, that "
        "every hash links and every seal's signature verifies. Prints the first problem of "
        "each broken session (session, event, reason) and exits 1 if there is any.",
    )
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="HEX",
        help="trust only this Ed25519 public key (repeatable; default: the store's keys)",
    )
    verify.set_defaults(func=_run(cmd_verify))
