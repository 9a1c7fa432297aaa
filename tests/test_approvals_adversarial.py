"""Approvals, attacked: ways to run a statement that needs review without a
valid approval by another authorised person, to reuse an approval, to keep
a granted role after its window, to desynchronise the protocol around a held
statement, or to read others' reviews. Each test asserts the SAFE outcome:
a failing test is a hole."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from hoopfast.approvals import ReviewError
from hoopfast.devcluster import DevCluster
from hoopfast.proxy.postgres import messages as m
from hoopfast.store.records import ReviewFilter, ReviewRecord
from tests.gateway import RunningGateway
from tests.rawclient import RawClient, error_fields
from tests.test_approvals import (
    GROUPS,
    Api,
    _grant,
    _run,
    _until,
    approvals_config,
    approvals_gateway,
    connect,
    decide,
    gw,
    in_thread,
    pending_review,
    person,
    principal,
    refused,
    shared_table,
)

__all__ = ["approvals_config", "approvals_gateway", "gw"]  # fixtures, imported for pytest


@pytest.fixture(scope="module")
def gw_norec(
    approvals_gateway: Callable[..., AbstractContextManager[RunningGateway]],
    state_dir: Path,
) -> Iterator[RunningGateway]:
    """The same connections on a gateway that records nothing (the bench
    setting, and what a session gets with recording_on_full=continue when the
    spool is full): the trail no longer intercepts Bind."""
    (state_dir / "norec").mkdir(exist_ok=True)
    with approvals_gateway(
        "approvals-norec", recording=False, state_dir=state_dir / "norec"
    ) as gateway:
        yield gateway


@pytest.fixture(params=["recorded", "unrecorded"])
def anygw(request: pytest.FixtureRequest) -> RunningGateway:
    name = "gw" if request.param == "recorded" else "gw_norec"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


# -- raw protocol helpers -------------------------------------------------------------


def parse(name: str, sql: str) -> bytes:
    return m.build(m.PARSE, name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")


def bind(statement: str = "", portal: str = "") -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + b"\0\0" + b"\0\0" + b"\0\0"
    return m.build(m.BIND, body)


def execute(portal: str = "") -> bytes:
    return m.build(m.EXECUTE, portal.encode() + b"\0" + b"\0\0\0\0")


def sync() -> bytes:
    return m.build(m.SYNC)


def query(sql: str) -> bytes:
    return m.build(m.QUERY, sql.encode() + b"\0")


def raw(gw: RunningGateway, connection: str, who: str, actor: str = "requester") -> RawClient:
    client = RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file, timeout=20)
    client.startup(connection, gw.token(who, GROUPS[actor]), user=who)
    return client


def errors(messages: list[tuple[str, bytes]]) -> list[dict[str, str]]:
    return [error_fields(body) for kind, body in messages if kind == "E"]


def rows(cluster: DevCluster, table: str) -> list[Any]:
    with cluster.connect("app") as admin:
        return admin.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()


def reviews_of(gw: RunningGateway, who: str) -> list[ReviewRecord]:
    return _run(gw, gw.runtime.store.reviews(ReviewFilter(requester=who)))  # type: ignore[no-any-return]


def sessions_of(gw: RunningGateway, who: str) -> list[Any]:
    return gw.call(
        lambda: [
            s for s in gw.gateway.active if s.principal is not None and s.principal.subject == who
        ]
    )


# -- one approval, one run: the extended protocol -------------------------------------


def test_pipelined_second_bind_behind_a_held_parse_is_refused(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """Parse (needs review) + Bind/Execute twice + Sync in one write: the
    second Bind of the approved unnamed statement must not run it again."""
    gw = anygw
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(
            parse("", f"INSERT INTO {table} VALUES (1)")
            + bind()
            + execute()
            + bind()
            + execute()
            + sync()
        )
        review = pending_review(gw, who)
        decide(gw, review.review_id, "approver")
        answer = client.read_until_ready()
        # (The refused second Bind rolls the implicit transaction back.)
        assert len(rows(cluster, table)) <= 1, answer
        assert any("one execution" in e.get("M", "") for e in errors(answer)), answer


def test_binds_sent_while_held_run_the_approved_statement_once(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """The Binds arrive while the Parse is held (framed then, before the
    gateway knew the statement would be approved-once)."""
    gw = anygw
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(parse("", f"INSERT INTO {table} VALUES (1)") + sync())
        review = pending_review(gw, who)
        for _ in range(3):
            client.send(bind() + execute() + sync())
        time.sleep(0.2)
        decide(gw, review.review_id, "approver")
        answers = [client.read_until_ready() for _ in range(4)]
        assert rows(cluster, table) == [(1,)], answers


def test_deferred_approved_parse_pipelined_with_two_binds_runs_once(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    gw = anygw
    who = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES (1)"
    with raw(gw, "deferred", who) as client:
        client.send(parse("", sql) + sync())
        first = client.read_until_ready()
        assert errors(first) and errors(first)[0]["C"] == "42501", first
        decide(gw, pending_review(gw, who).review_id, "approver")
        client.send(parse("", sql) + bind() + execute() + sync() + bind() + execute() + sync())
        answers = [client.read_until_ready(), client.read_until_ready()]
        assert len(rows(cluster, table)) <= 1, answers


def test_reparsing_an_approved_statement_name_does_not_reset_its_one_run(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """Parse "s" (approved), Bind "s" (runs), Parse "s" again with an allowed
    text: PostgreSQL refuses it (the name exists) and keeps the approved
    body; further Binds of "s" must stay refused."""
    gw = anygw
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(parse("s", f"INSERT INTO {table} VALUES (1)") + sync())
        decide(gw, pending_review(gw, who).review_id, "approver")
        assert not errors(client.read_until_ready())
        client.send(bind("s") + execute() + sync())
        assert not errors(client.read_until_ready())
        client.send(parse("s", "SELECT 1") + sync())
        duplicate = client.read_until_ready()
        assert errors(duplicate) and errors(duplicate)[0]["C"] == "42P05", duplicate
        for _ in range(2):
            client.send(bind("s") + execute() + sync())
            client.read_until_ready()
        assert rows(cluster, table) == [(1,)]


def test_sql_execute_of_an_approved_protocol_statement_needs_its_own_review(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """Protocol and SQL prepared statements share one namespace upstream."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "deferred", who) as client:
        sql = f"INSERT INTO {table} VALUES (1)"
        client.send(parse("s", sql) + sync())
        client.read_until_ready()
        decide(gw, pending_review(gw, who).review_id, "approver")
        client.send(parse("s", sql) + bind("s") + execute() + sync())
        assert not errors(client.read_until_ready())
        client.send(query("EXECUTE s"))
        answer = client.read_until_ready()
        assert errors(answer) and errors(answer)[0]["C"] == "42501", answer
        client.send(query("SELECT 1; EXECUTE s"))
        answer = client.read_until_ready()
        assert errors(answer), answer
    assert rows(cluster, table) == [(1,)]


def test_sql_prepare_then_execute_needs_a_review_each(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    prepare = f"PREPARE p AS INSERT INTO {table} VALUES (1)"
    with connect(gw, "deferred", who, "requester") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(prepare)
        decide(gw, pending_review(gw, who).review_id, "approver")
        conn.execute(prepare)
        for sql in ("EXECUTE p", "EXPLAIN ANALYZE EXECUTE p", "CREATE TEMP TABLE x AS EXECUTE p"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    assert rows(cluster, table) == []


def test_a_protocol_bind_of_an_sql_prepared_statement_is_judged(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """SQL PREPARE and the protocol's Parse share one namespace: a Bind of
    a name PREPARE made runs its statement, as EXECUTE does. The approval
    of the PREPARE approved preparing it, not running it (found in review:
    Bind/Execute of it ran every time, unjudged). One EXECUTE would refuse
    is refused; one it would allow runs."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(anygw, "deferred", who) as client:
        prepare = query(f"PREPARE p AS INSERT INTO {table} VALUES (1)")
        client.send(prepare)
        assert [e["C"] for e in errors(client.read_until_ready())] == ["42501"]
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        client.send(prepare)
        assert not errors(client.read_until_ready())
        for _ in range(3):
            client.send(bind("p") + execute() + sync())
            refused = errors(client.read_until_ready())
            assert [e["C"] for e in refused] == ["42501"], refused
            assert "EXECUTE" in refused[0]["M"]
        client.send(query("PREPARE q AS SELECT 7"))
        assert not errors(client.read_until_ready())
        client.send(bind("q") + execute() + sync())
        reply = client.read_until_ready()
        assert not errors(reply) and [k for k, _ in reply] == ["2", "D", "C", "Z"]
    assert rows(cluster, table) == []


def test_names_past_63_bytes_are_the_statement_the_server_keys(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """PostgreSQL keys a prepared statement by its name's first 63 bytes
    (an SQL identifier is cut to them; a protocol name is compared no
    further), so "<63 s>A" and "<63 s>B" are one statement. The session's
    bookkeeping was keyed by the whole name: another suffix ran a statement
    approved for one run again, and a Bind of the cut name ran an
    SQL-prepared one unjudged (found in review)."""
    who = person("requester")
    table = shared_table(cluster)
    s63, p63 = "s" * 63, "p" * 63
    with raw(anygw, "wait", who) as client:
        client.send(parse(s63 + "A", f"INSERT INTO {table} VALUES (1)") + sync())
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        assert not errors(client.read_until_ready())
        client.send(bind(s63 + "A") + execute() + sync())
        assert not errors(client.read_until_ready())
        for alias in (s63 + "B", s63, s63 + "A"):
            client.send(bind(alias) + execute() + sync())
            assert [e["C"] for e in errors(client.read_until_ready())] == ["42501"], alias
    with raw(anygw, "deferred", who) as client:
        prepare = query(f"PREPARE {p63}xyz AS INSERT INTO {table} VALUES (2)")
        client.send(prepare)
        assert [e["C"] for e in errors(client.read_until_ready())] == ["42501"]
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        client.send(prepare)
        assert not errors(client.read_until_ready())
        for alias in (p63 + "xyz", p63, p63 + "zz"):
            client.send(bind(alias) + execute() + sync())
            assert [e["C"] for e in errors(client.read_until_ready())] == ["42501"], alias
    assert rows(cluster, table) == [(1,)]


def test_asyncpg_prepared_statement_runs_once(gw: RunningGateway, cluster: DevCluster) -> None:
    """asyncpg prepares everything (named statements, cached), and
    executemany pipelines Binds of one statement."""
    who = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES ($1)"

    async def main() -> list[str]:
        kwargs = gw.asyncpg_kwargs("deferred", who)
        kwargs["password"] = gw.token(who, GROUPS["requester"])
        conn = await asyncpg.connect(**kwargs)
        outcomes: list[str] = []
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql, 1)
            review = await asyncio.to_thread(pending_review, gw, who)
            await asyncio.to_thread(decide, gw, review.review_id, "approver")
            for args in ([1], [2], [3]):
                try:
                    await conn.execute(sql, *args)
                    outcomes.append("ran")
                except asyncpg.PostgresError as e:
                    outcomes.append(type(e).__name__)
            try:
                await conn.executemany(sql, [(4,), (5,), (6,)])
                outcomes.append("many ran")
            except asyncpg.PostgresError as e:
                outcomes.append(type(e).__name__)
        finally:
            await conn.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert rows(cluster, table) == [(1,)], outcomes


def test_psycopg_pipeline_executemany_needs_one_approval_per_run(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    gw = anygw
    who = person("requester")
    table = shared_table(cluster)
    with connect(gw, "deferred", who, "requester") as conn:
        sql = f"INSERT INTO {table} VALUES (%s)"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, (1,), prepare=True)
        decide(gw, pending_review(gw, who).review_id, "approver")
        with contextlib.suppress(psycopg.Error), conn.pipeline(), conn.cursor() as cur:
            cur.executemany(sql, [(1,)] * 5)
    assert len(rows(cluster, table)) <= 1, rows(cluster, table)


def test_unnamed_reparse_skipped_by_the_server_does_not_reset_one_run(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """After an error PostgreSQL skips everything up to Sync: a Parse of the
    unnamed statement there never replaces the approved one upstream."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(parse("", f"INSERT INTO {table} VALUES (1)") + bind() + execute() + sync())
        decide(gw, pending_review(gw, who).review_id, "approver")
        assert not errors(client.read_until_ready())
        for _ in range(2):
            client.send(bind("no_such_statement") + parse("", "SELECT 1") + sync())
            assert errors(client.read_until_ready())
            client.send(bind() + execute() + sync())
            client.read_until_ready()
    assert rows(cluster, table) == [(1,)]


def test_a_query_skipped_with_an_unnamed_reparse_does_not_reset_one_run(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """As above with a simple Query before the Sync: the server skips it
    too, so it ends no Sync group (only the Sync gets a ReadyForQuery). The
    session's ledger once counted it as one, settled the skipped Parse a
    group late and held the next Bind for an answer that never came."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(anygw, "wait", who) as client:
        client.send(parse("", f"INSERT INTO {table} VALUES (1)") + bind() + execute() + sync())
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        assert not errors(client.read_until_ready())
        for _ in range(2):
            client.send(
                bind("no_such_statement")
                + execute()
                + query("SELECT 'skipped'")
                + parse("", "SELECT 1")
                + sync()
            )
            assert [e["C"] for e in errors(client.read_until_ready())] == ["26000"]
            client.send(bind() + execute() + sync())
            assert [e["C"] for e in errors(client.read_until_ready())] == ["42501"]
    assert rows(cluster, table) == [(1,)]


def test_a_stray_copy_done_does_not_reset_one_run(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """The server ignores a CopyDone outside COPY: it takes no answer, and
    must not take the place of the held Parse's (which was then undone as
    never answered, and the statement ran without limit; found in review)."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(anygw, "wait", who) as client:
        client.send(m.build(m.COPY_DONE) + parse("x", f"INSERT INTO {table} VALUES (1)") + sync())
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        assert not errors(client.read_until_ready())
        for _ in range(3):
            client.send(bind("x") + execute() + sync())
            client.read_until_ready()
    assert rows(cluster, table) == [(1,)]


def test_a_parse_skipped_late_does_not_undo_a_later_approval(
    anygw: RunningGateway, cluster: DevCluster
) -> None:
    """An approved Parse of x sits behind a slow statement and a Bind that
    will fail, so the server will skip it; meanwhile the client parses x
    again, approved again. The first Parse's undo (restoring what was before
    it) once ran after the second's approval and took it back: the second
    statement then ran without limit (found in review). A Parse of a name
    now waits for the answer to an earlier group's Parse of it."""
    who = person("requester")
    table = shared_table(cluster)
    with raw(anygw, "wait", who) as client:
        client.send(
            parse("", "SELECT pg_sleep(1.5)")
            + bind()
            + execute()
            + bind("no_such_statement")
            + execute()
            + parse("x", f"INSERT INTO {table} VALUES (1)")
            + sync()
        )
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        client.send(parse("x", f"INSERT INTO {table} VALUES (2)") + sync())
        decide(anygw, pending_review(anygw, who).review_id, "approver")
        assert [e["C"] for e in errors(client.read_until_ready())] == ["26000"]
        assert not errors(client.read_until_ready())
        for _ in range(3):
            client.send(bind("x") + execute() + sync())
            client.read_until_ready()
    assert rows(cluster, table) == [(2,)]


# -- access grants: nothing outlives the window -----------------------------------------


def _revoked_session(gw: RunningGateway, who: str, rid: str) -> None:
    decide(gw, rid, "approver", "revoke", "done")
    _until(lambda: all(not s._granted for s in sessions_of(gw, who)))


def test_statements_prepared_under_a_revoked_grant_stay_refused(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    insert = f"INSERT INTO {table} VALUES (1)"
    rid = _grant(gw, who, "deferred", "writer", 600.0)
    with raw(gw, "deferred", who) as client:
        client.send(parse("w", insert) + parse("", insert) + sync())
        assert not errors(client.read_until_ready())
        client.send(query(f"PREPARE p AS {insert}"))
        assert not errors(client.read_until_ready())
        _revoked_session(gw, who, rid)
        # Directly: refused.
        for message in (bind("w"), bind()):
            client.send(message + execute() + sync())
            assert errors(client.read_until_ready())
        client.send(query("EXECUTE p"))
        assert errors(client.read_until_ready())
    assert rows(cluster, table) == []


def test_a_failed_deallocate_does_not_unrevoke_a_statement(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """DEALLOCATE that never runs upstream (an earlier statement of the same
    Query fails) leaves the statement prepared there."""
    who = person("requester")
    table = shared_table(cluster)
    rid = _grant(gw, who, "deferred", "writer", 600.0)
    with raw(gw, "deferred", who) as client:
        client.send(parse("w", f"INSERT INTO {table} VALUES (1)") + sync())
        assert not errors(client.read_until_ready())
        _revoked_session(gw, who, rid)
        client.send(query("SELECT 1/0; DEALLOCATE w"))
        assert errors(client.read_until_ready())
        client.send(bind("w") + execute() + sync())
        client.read_until_ready()
    assert rows(cluster, table) == []


def test_a_skipped_unnamed_parse_does_not_unstale_a_revoked_statement(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    rid = _grant(gw, who, "deferred", "writer", 600.0)
    with raw(gw, "deferred", who) as client:
        client.send(parse("", f"INSERT INTO {table} VALUES (1)") + sync())
        assert not errors(client.read_until_ready())
        _revoked_session(gw, who, rid)
        client.send(bind("no_such_statement") + parse("", "SELECT 1") + sync())
        assert errors(client.read_until_ready())
        client.send(bind() + execute() + sync())
        client.read_until_ready()
    assert rows(cluster, table) == []


def test_executing_an_approved_portal_again_does_not_rerun_it(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(
            query("BEGIN")
            + parse("", f"INSERT INTO {table} VALUES (1)")
            + bind("", "P")
            + execute("P")
            + execute("P")
            + sync()
        )
        client.read_until_ready()  # BEGIN
        decide(gw, pending_review(gw, who).review_id, "approver")
        client.read_until_ready()
        client.send(execute("P") + sync() + query("COMMIT"))
        client.read_until_ready()
        client.read_until_ready()
    assert len(rows(cluster, table)) <= 1


# -- holding: no hang, no leak, no desynchronisation -------------------------------------


def _held_bytes(gw: RunningGateway, who: str) -> int:
    def count() -> int:
        total = 0
        for s in gw.gateway.active:
            if s.principal is not None and s.principal.subject == who:
                for item in s._client_pump.held or ():
                    total += len(item) if isinstance(item, bytes) else len(item[1])
        return total

    return gw.call(count)


def _flood(client: RawClient, seconds: float = 1.0) -> int:
    """Pipeline queries until the gateway stops taking them."""
    sent = 0
    client.sock.settimeout(0.2)
    chunk = query("SELECT 1") * 4096
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            client.sock.sendall(chunk)
            sent += len(chunk)
    except (TimeoutError, ssl.SSLError, OSError):
        pass
    return sent


@pytest.mark.parametrize("flood", [False, True])
def test_flooding_while_held_is_bounded_and_closing_withdraws(
    gw: RunningGateway, cluster: DevCluster, flood: bool
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    client = raw(gw, "wait", who)
    client.send(query(f"INSERT INTO {table} VALUES (1)"))
    review = pending_review(gw, who)
    sent = _flood(client) if flood else 0
    held = _held_bytes(gw, who)
    # Bounded: past HOOPFAST_PG_MAX_HELD_BYTES the session ends (54000).
    limit = gw.gateway.settings.pg_max_held_bytes
    assert held < limit + (1 << 20), f"{held} bytes held in memory (client sent {sent})"
    # The client goes away (its socket full of unread queries).
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        _run(gw, gw.runtime.store.review(review.review_id)).status == "withdrawn"
        and not sessions_of(gw, who)
    ):
        time.sleep(0.05)
    stored = _run(gw, gw.runtime.store.review(review.review_id))
    still_open = len(sessions_of(gw, who))
    if stored.status == "pending":
        decide(gw, review.review_id, "approver")  # does it run for a client that left?
        time.sleep(1.0)
    assert (stored.status, still_open, rows(cluster, table)) == ("withdrawn", 0, [])


def test_two_held_statements_in_one_pipeline_need_two_approvals(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(
            query(f"INSERT INTO {table} VALUES (1)")
            + query(f"INSERT INTO {table} VALUES (2)")
            + query("SELECT 1")
        )
        first = pending_review(gw, who)
        decide(gw, first.review_id, "approver")
        assert not errors(client.read_until_ready())
        deadline = time.monotonic() + 10
        while (second := pending_review(gw, who)).review_id == first.review_id:
            assert time.monotonic() < deadline
        time.sleep(0.3)
        assert rows(cluster, table) == [(1,)]
        decide(gw, second.review_id, "approver", "reject", "one is enough")
        rejected = client.read_until_ready()
        assert errors(rejected) and "one is enough" in errors(rejected)[0]["M"]
        assert not errors(client.read_until_ready())  # SELECT 1: in step
    assert rows(cluster, table) == [(1,)]


def test_function_call_needing_review_is_refused_not_held(gw: RunningGateway) -> None:
    who = person("requester")
    with raw(gw, "wait", who) as client:
        lo_creat = 957  # lo_creat(-1): a large-object write
        body = struct.pack("!IhhIih", lo_creat, 0, 1, 4, -1, 0)
        client.send(m.build(m.FUNCTION_CALL, body))
        answer = client.read_until_ready()
        assert errors(answer), answer
        assert not reviews_of(gw, who)
        client.send(query("SELECT 1"))
        assert not errors(client.read_until_ready())


def test_rejected_copy_from_stdin_keeps_the_protocol_in_step(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with raw(gw, "wait", who) as client:
        client.send(
            query(f"COPY {table} FROM STDIN")
            + m.build(m.COPY_DATA, b"1\n2\n")
            + m.build(m.COPY_DONE)
            + query("SELECT 42")
        )
        decide(gw, pending_review(gw, who).review_id, "approver", "reject", "no")
        assert errors(client.read_until_ready())
        answer = client.read_until_ready()
        assert not errors(answer) and any(k == "D" for k, _ in answer), answer
    assert rows(cluster, table) == []


def test_cancel_racing_the_approval_never_runs_a_cancelled_statement(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    for _ in range(4):
        who = person("requester")
        table = shared_table(cluster)
        with connect(gw, "wait", who, "requester") as conn:
            held = in_thread(partial(conn.execute, f"INSERT INTO {table} VALUES (1)"))
            review = pending_review(gw, who)
            approving = in_thread(partial(decide, gw, review.review_id, "approver"))
            conn.cancel_safe()
            try:
                held.result(10)
                outcome = "ran"
            except psycopg.errors.QueryCanceled:
                outcome = "cancelled"
            with contextlib.suppress(ReviewError):  # (409 when the cancel won)
                approving.result(10)
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert rows(cluster, table) == ([(1,)] if outcome == "ran" else [])
            stored = _run(gw, gw.runtime.store.review(review.review_id))
            if outcome == "ran":
                assert stored.status == "used"
            elif stored.status == "approved":
                # Approved just before the cancel withdrew it: still one run.
                conn.execute(f"INSERT INTO {table} VALUES (1)")
                with pytest.raises(psycopg.errors.QueryCanceled):
                    late = in_thread(partial(conn.execute, f"INSERT INTO {table} VALUES (1)"))
                    pending_review(gw, who)
                    conn.cancel_safe()
                    late.result(10)
                assert rows(cluster, table) == [(1,)]
            else:
                assert stored.status in ("withdrawn", "used")


# -- reuse: another text, connection, person; after expiry ---------------------------------


def test_an_approval_does_not_travel(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    other = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES (1)"
    refused(gw, who, "requester", sql)
    review = pending_review(gw, who)
    decide(gw, review.review_id, "approver")
    # Another person, same text and connection; the same person elsewhere;
    # the same text with different spacing, case or a trailing semicolon.
    refused(gw, other, "requester", sql)
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        connect(gw, "quick", who, "requester") as conn,
    ):
        conn.execute(sql)  # held, then not decided in time
    for variant in (sql + ";", sql.lower(), sql + " ", f"/* x */ {sql}", f"{sql}; SELECT 1"):
        refused(gw, who, "requester", variant)
    assert rows(cluster, table) == []
    assert _run(gw, gw.runtime.store.review(review.review_id)).status == "approved"


def test_an_unused_approval_expires(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES (1)"
    refused(gw, who, "requester", sql)
    pending = pending_review(gw, who)
    decide(gw, pending.review_id, "approver")
    approvals = gw.runtime.approvals
    real = approvals._clock
    approvals._clock = lambda: real() + 3601
    try:
        refused(gw, who, "requester", sql)  # approved, but no longer runnable
        assert rows(cluster, table) == []
        # Deciding a pending review past its time: 410, and it stays expired.
        refused(gw, who, "requester", sql + " ")
        fresh = [r for r in reviews_of(gw, who) if r.status == "pending"]
        assert fresh
        approvals._clock = lambda: real() + 7300
        with pytest.raises(ReviewError) as e:
            decide(gw, fresh[0].review_id, "approver")
        assert e.value.status == 410
    finally:
        approvals._clock = real
    assert _run(gw, gw.runtime.store.review(pending.review_id)).status == "expired"
    refused(gw, who, "requester", sql)
    assert rows(cluster, table) == []


def test_a_review_another_session_opened_is_shared_only_by_its_requester(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    other = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES (1)"
    with connect(gw, "wait", who, "requester") as a, connect(gw, "wait", other, "requester") as b:
        first = in_thread(lambda: a.execute(sql))
        review = pending_review(gw, who)
        second = in_thread(lambda: b.execute(sql))
        theirs = pending_review(gw, other)
        assert theirs.review_id != review.review_id
        decide(gw, review.review_id, "approver")
        first.result(10)
        time.sleep(0.3)
        assert not second.done(), "another person's approval released this statement"
        b.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            second.result(10)
    assert rows(cluster, table) == [(1,)]


# -- who decides ---------------------------------------------------------------------------


def test_requester_with_every_role_still_cannot_decide_their_own(gw: RunningGateway) -> None:
    who = person("requester")
    groups = ("analysts", "dbas", "sre", "auditors", "admins")
    refused(gw, who, "requester", f"CREATE TABLE own_{secrets.token_hex(3)} (id int)")
    rid = pending_review(gw, who).review_id
    me = principal(gw, who, "requester")
    me = type(me)(who, groups, None, "test", time.time() + 600)
    for action in ("approve", "force", "reject", "revoke"):
        with pytest.raises(ReviewError) as e:
            _run(gw, gw.runtime.approvals.decide(rid, me, action, "mine"))
        assert e.value.status == 403, (action, e.value.message)
    assert _run(gw, gw.runtime.store.review(rid)).status == "pending"
    # An access request of one's own, likewise.
    access = _run(gw, gw.runtime.approvals.request_access(me, "wait", "unmasked", 60, "r"))
    with pytest.raises(ReviewError):
        _run(gw, gw.runtime.approvals.decide(access.review_id, me, "approve"))
    assert not gw.runtime.approvals.granted(who, "wait")


def test_approver_whose_token_lost_the_group_cannot_approve(gw: RunningGateway) -> None:
    api = Api(gw)
    rid = _statement_review_id(gw)
    approver = person("approver")
    headers = {"Authorization": f"Bearer {gw.token(approver, ('analysts',))}"}
    answer = api.http.post(f"/v1/reviews/{rid}/approve", headers=headers)
    assert answer.status_code in (403, 404), answer.text
    assert _run(gw, gw.runtime.store.review(rid)).status == "pending"


def _statement_review_id(gw: RunningGateway, who: str | None = None) -> str:
    who = who or person("requester")
    refused(gw, who, "requester", f"CREATE TABLE sod_{secrets.token_hex(4)} (id int)")
    return str(pending_review(gw, who).review_id)


# -- the API: nobody reads others' reviews -----------------------------------------------


def test_outsider_and_other_requesters_see_nothing(gw: RunningGateway) -> None:
    api = Api(gw)
    victim = person("requester")
    rid = _statement_review_id(gw, victim)
    for actor in ("outsider", "requester"):
        me = person(actor)
        listed = api.call("GET", me, actor, "/v1/reviews", requester=victim)
        assert listed.status_code == 200 and listed.json()["reviews"] == [], listed.text
        page = api.call("GET", me, actor, "/v1/reviews", limit=1)
        seen = {r["requester"] for r in page.json()["reviews"]}
        assert seen <= {me}
        while page.json()["next"]:
            page = api.call("GET", me, actor, "/v1/reviews", limit=1, before=page.json()["next"])
            assert {r["requester"] for r in page.json()["reviews"]} <= {me}
        for path in (f"/v1/reviews/{rid}", f"/v1/reviews/{rid.upper()}"):
            assert api.call("GET", me, actor, path).status_code == 404
        for verb in ("approve", "reject", "revoke", "withdraw", "force"):
            answer = api.call("POST", me, actor, f"/v1/reviews/{rid}/{verb}", {"reason": "x"})
            assert answer.status_code in (403, 404), (verb, answer.text)
    assert _run(gw, gw.runtime.store.review(rid)).status == "pending"


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "WzEuMCwiUi0xIl0",  # [1.0,"R-1"]
        "W05hTiwiUi0xIl0",  # [NaN,"R-1"]
        "WzFlOTk5LCJSLTEiXQ",  # [1e999,"R-1"]
        "WzEuMCwiXHUwMDAwIl0",  # [1.0,"\u0000"]
        "WzEuMCwiXHVkODAwIl0",  # [1.0,"\ud800"]
    ],
)
def test_review_listing_cursors_are_not_a_way_in(gw: RunningGateway, cursor: str) -> None:
    api = Api(gw)
    me = person("outsider")
    answer = api.call("GET", me, "outsider", "/v1/reviews", before=cursor)
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 200:
        assert answer.json()["reviews"] == []


# -- what approvers read ---------------------------------------------------------------------


def test_notifications_do_not_carry_bidi_controls_of_the_statement(gw: RunningGateway) -> None:
    """Trojan Source for approvers: an RLO in a comment makes Slack show the
    statement in another order than it runs."""
    from dataclasses import replace

    from hoopfast.approvals.notify import webhook_body

    who = person("requester")
    rid = _statement_review_id(gw, who)
    review = _run(gw, gw.runtime.store.review(rid))
    sneaky = "DELETE FROM accounts /*\u202e ;1 = di EREHW */"
    body = webhook_body("review.created", replace(review, statement=sneaky))
    shown = body["text"] + body["blocks"][0]["text"]["text"]
    assert "\u202e" not in shown


def test_a_reason_cannot_forge_log_lines(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The requester withdraws with a reason of their own: the logs are
    plain text lines (cli.py), so a newline in it starts a forged line."""
    who = person("requester")
    rid = _statement_review_id(gw, who)
    forged = "oops\n2030-01-01 00:00:00,000 WARNING hoopfast.approvals: review R-0 approved"
    me = principal(gw, who, "requester")
    _run(gw, gw.runtime.approvals.decide(rid, me, "withdraw", forged))
    lines = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
    assert lines and not [line for line in lines if "\n" in line], lines


def test_unmasked_grant_on_a_connection_without_masking_gives_nothing_else(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with connect(gw, "deferred", who, "requester") as conn:
        _grant(gw, who, "deferred", "unmasked", 60.0)
        _until(lambda: all("unmasked" in s._granted for s in sessions_of(gw, who)))
        assert [s.rules.roles for s in sessions_of(gw, who)] == [("analyst",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {table} VALUES (1)")
    # And on a masked connection the grant is for its requester only.
    refused(gw, person("requester"), "requester", f"INSERT INTO {table} VALUES (1)")
    assert rows(cluster, table) == []


@pytest.mark.parametrize("counter", ["revoke", "reject"])
def test_a_decision_racing_a_counter_decision_has_one_outcome(
    gw: RunningGateway, cluster: DevCluster, counter: str
) -> None:
    for _ in range(3):
        who = person("requester")
        table = shared_table(cluster)
        with connect(gw, "wait", who, "requester") as conn:
            held = in_thread(partial(conn.execute, f"INSERT INTO {table} VALUES (1)"))
            rid = pending_review(gw, who).review_id
            approving = in_thread(partial(decide, gw, rid, "approver"))
            countering = in_thread(partial(decide, gw, rid, "approver2", counter, "stop"))
            for race in (approving, countering):
                with contextlib.suppress(ReviewError):
                    race.result(10)
            try:
                held.result(10)
                ran = True
            except psycopg.errors.InsufficientPrivilege:
                ran = False
        stored = _run(gw, gw.runtime.store.review(rid))
        assert rows(cluster, table) == ([(1,)] if ran else [])
        assert stored.status == (
            "used" if ran else {"revoke": "revoked", "reject": "rejected"}[counter]
        )
