"""Just-in-time approvals through the real data path: statements held for a
second person (wait and deferred modes), cancel, expiry, one-time approvals,
time-boxed access grants (roles and unmasked access), a decision made
through one replica releasing a statement held by another, and the
segregation-of-duties matrix through the real API and the real data path."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from hoopfast.devcluster import DevCluster
from hoopfast.devconfig import write_gateway_config
from hoopfast.identity.devissuer import DevIssuer
from hoopfast.identity.principal import Principal
from hoopfast.settings import Settings
from hoopfast.store.records import EventFilter, ReviewFilter, ReviewRecord
from tests.conftest import Roles
from tests.gateway import RunningGateway, run_gateway

#: Who is who: groups per actor.
GROUPS = {
    "requester": ("analysts",),
    "approver": ("dbas",),
    "approver2": ("dbas",),
    "auditor": ("auditors",),
    "admin": ("admins",),
    "breakglass": ("sre",),
    "outsider": ("nobody",),
    # Holds the approver group *and* asks: still never approves their own.
    "dual": ("analysts", "dbas"),
}

ROLES = {
    "analyst": {"groups": ["analysts"]},
    "dba": {"groups": ["dbas"]},
    "auditor": {"groups": ["auditors"]},
    "admin": {"groups": ["admins"]},
    "sre": {"groups": ["sre"]},
    "writer": {"groups": ["writers-nobody-has"]},
}

#: Reads run; writes and DDL need a second person.
ANALYST = {"allow": ["read", "session", "transaction"], "review": ["write", "ddl"]}
WRITER = {"allow": ["read", "write", "session", "transaction"]}
ADMIN = {"allow": ["read", "write", "ddl", "session", "transaction"]}


def _approvals(**overrides: Any) -> dict[str, Any]:
    return {
        "approvers": ["dba"],
        "break_glass": ["sre"],
        "requestable_roles": ["writer", "unmasked"],
        "wait_timeout": "20s",
        **overrides,
    }


@pytest.fixture(scope="module")
def approvals_config(
    state_dir: Path, cluster: DevCluster, roles: Roles, issuer: DevIssuer, gateway_config: Path
) -> Path:
    secret = {"file": str(state_dir / "secrets" / "scram")}
    base = {
        "host": cluster.host,
        "port": cluster.port,
        "database": "app",
        "user": roles.scram[0],
        "password": secret,
        "grants": {"analyst": ANALYST, "writer": WRITER, "admin": ADMIN},
    }
    connections = {
        "wait": {**base, "approvals": _approvals()},
        "deferred": {**base, "approvals": _approvals(mode="deferred")},
        "quick": {**base, "approvals": _approvals(wait_timeout="1s")},
        "two": {**base, "approvals": _approvals(min_approvals=2)},
        "none": dict(base),
        "masked": {
            **base,
            "approvals": _approvals(),
            "masking": {"rules": [{"columns": ["appr_secret.email"], "strategy": "redact"}]},
        },
    }
    return write_gateway_config(
        state_dir / "approvals.toml",
        issuer.jwks_file,
        connections,
        ROLES,
        audit={"roles": ["auditor"]},
    )


@pytest.fixture(scope="module")
def approvals_gateway(
    approvals_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: Any,
    state_dir: Path,
) -> Callable[..., AbstractContextManager[RunningGateway]]:
    """``approvals_gateway(name, **settings)``: a gateway on the approvals
    configuration with a store of its own."""

    def start(name: str, **overrides: Any) -> AbstractContextManager[RunningGateway]:
        settings = make_settings(
            config=approvals_config,
            store=f"sqlite:///{state_dir / name}.db",
            approvals_poll_interval=0.2,
            **overrides,
        )
        return run_gateway(settings, issuer, certs)

    return start


@pytest.fixture(scope="module")
def gw(
    approvals_gateway: Callable[..., AbstractContextManager[RunningGateway]],
) -> Iterator[RunningGateway]:
    with approvals_gateway("approvals") as gateway:
        yield gateway


def _run(gw: RunningGateway, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, gw.loop).result(30)


def person(actor: str) -> str:
    """A fresh subject for ``actor`` (tests share the store)."""
    return f"{actor}-{secrets.token_hex(3)}"


def principal(gw: RunningGateway, subject: str, actor: str) -> Principal:
    return Principal(subject, GROUPS[actor], None, "test", time.time() + 600)


def connect(
    gw: RunningGateway, connection: str, subject: str, actor: str
) -> psycopg.Connection[Any]:
    token = gw.token(subject, GROUPS[actor])
    return psycopg.connect(gw.conninfo(connection, token=token, user=subject), autocommit=True)


def refused(
    gw: RunningGateway, who: str, actor: str, sql: str, connection: str = "deferred"
) -> psycopg.Error:
    """Run ``sql`` in a new session of ``who``: it must be refused (42501)."""
    with (
        connect(gw, connection, who, actor) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as e,
    ):
        conn.execute(sql)
    return e.value


def pending_review(gw: RunningGateway, requester: str, timeout: float = 10.0) -> ReviewRecord:
    deadline = time.monotonic() + timeout
    while True:
        found = _run(
            gw,
            gw.runtime.store.reviews(ReviewFilter(requester=requester, statuses=("pending",))),
        )
        if found:
            return found[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no pending review for {requester}"
        time.sleep(0.05)


def decide(
    gw: RunningGateway, review_id: str, actor: str, action: str = "approve", reason: str = ""
) -> ReviewRecord:
    who = principal(gw, person(actor), actor)
    return _run(gw, gw.runtime.approvals.decide(review_id, who, action, reason))  # type: ignore[no-any-return]


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def shared_table(cluster: DevCluster) -> str:
    """A new table anyone may write to (writes need review, not DDL)."""
    table = f"appr_{secrets.token_hex(4)}"
    with cluster.connect("app") as admin:
        admin.execute(f"CREATE TABLE {table} (id int)")
        admin.execute(f"GRANT ALL ON {table} TO PUBLIC")
        admin.commit()
    return table


def table_exists(cluster: DevCluster, name: str) -> bool:
    with cluster.connect("app") as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        assert row is not None
        return bool(row[0])


# -- wait mode ------------------------------------------------------------------


def test_wait_mode_holds_until_approved_then_runs_once(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    notices: list[str] = []
    with connect(gw, "wait", who, "requester") as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        assert conn.execute("SELECT 1").fetchone() == (1,)
        held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
        review = pending_review(gw, who)
        assert review.statement == f"CREATE TABLE {table} (id int)"
        assert review.rule == "class:ddl" and review.mode == "wait"
        time.sleep(0.3)
        assert not held.done(), "the statement ran before anyone approved it"
        assert not table_exists(cluster, table)
        assert notices and review.review_id in notices[0] and "dba" in notices[0]
        decided = decide(gw, review.review_id, "approver")
        assert decided.status == "approved"
        held.result(10)
        assert table_exists(cluster, table)
        # The session goes on normally, and the approval is spent.
        assert conn.execute("SELECT 2").fetchone() == (2,)
        stored = _run(gw, gw.runtime.store.review(review.review_id))
        assert stored.status == "used" and stored.used_at is not None
        again = in_thread(lambda: conn.execute(f"DROP TABLE {table}"))
        second = pending_review(gw, who)
        assert second.review_id != review.review_id
        decide(gw, second.review_id, "approver")
        again.result(10)
    assert not table_exists(cluster, table)


def test_an_approved_statement_never_cached_runs_once_approved(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """A statement whose classification is never cached (set_config makes
    it value-dependent) is analysed off the event loop, then held for
    review: once approved it runs, not analysed and reviewed again."""
    who = person("requester")
    table = shared_table(cluster)
    sql = (
        f"INSERT INTO {table} SELECT 1 WHERE set_config('application_name', 'x', false) IS NOT NULL"
    )
    with connect(gw, "wait", who, "requester") as conn:
        held = in_thread(lambda: conn.execute(sql))
        review = pending_review(gw, who)
        decide(gw, review.review_id, "approver")
        held.result(10)
        conn.commit()
    with cluster.connect("app") as admin:
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    pending = ReviewFilter(requester=who, statuses=("pending",))
    assert _run(gw, gw.runtime.store.reviews(pending)) == []


def test_wait_mode_rejected_with_reason(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    with connect(gw, "wait", who, "requester") as conn:
        held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
        review = pending_review(gw, who)
        decide(gw, review.review_id, "approver", "reject", "not during the freeze")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            held.result(10)
        assert "rejected" in str(e.value) and "not during the freeze" in str(e.value)
        assert review.review_id in str(e.value)
        assert conn.execute("SELECT 3").fetchone() == (3,)
    assert not table_exists(cluster, table)


def test_wait_mode_times_out(gw: RunningGateway) -> None:
    who = person("requester")
    with connect(gw, "quick", who, "requester") as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute("CREATE TABLE never_created (id int)")
        assert 0.9 < time.monotonic() - started < 10
        assert "expired" in str(e.value)
        assert conn.execute("SELECT 4").fetchone() == (4,)
    reviews = _run(gw, gw.runtime.store.reviews(ReviewFilter(requester=who)))
    assert [r.status for r in reviews] == ["expired"]


def test_cancel_withdraws_the_review(gw: RunningGateway) -> None:
    who = person("requester")
    with connect(gw, "wait", who, "requester") as conn:
        held = in_thread(lambda: conn.execute("CREATE TABLE cancelled_one (id int)"))
        review = pending_review(gw, who)
        conn.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            held.result(10)
        assert conn.execute("SELECT 5").fetchone() == (5,)
    stored = _run(gw, gw.runtime.store.review(review.review_id))
    assert stored.status == "withdrawn"
    # Approving it now changes nothing and says why.
    from hoopfast.approvals import ReviewError

    with pytest.raises(ReviewError) as e:
        decide(gw, review.review_id, "approver")
    assert e.value.status == 409


def test_session_end_withdraws_the_review(gw: RunningGateway) -> None:
    who = person("requester")
    conn = connect(gw, "wait", who, "requester")
    held = in_thread(lambda: conn.execute("CREATE TABLE abandoned (id int)"))
    review = pending_review(gw, who)
    conn.pgconn.finish()  # the client goes away without a word
    with pytest.raises(psycopg.Error):
        held.result(10)
    deadline = time.monotonic() + 10
    while _run(gw, gw.runtime.store.review(review.review_id)).status != "withdrawn":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_extended_protocol_prepared_statement_runs_once(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with connect(gw, "wait", who, "requester") as conn:
        sql = f"INSERT INTO {table} VALUES (%s)"
        held = in_thread(lambda: conn.execute(sql, (1,), prepare=True))
        review = pending_review(gw, who)
        assert review.statement == f"INSERT INTO {table} VALUES ($1)"
        decide(gw, review.review_id, "approver")
        held.result(10)
        # The prepared statement exists upstream, but the approval ran once.
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(sql, (2,), prepare=True)
        assert "approved for one execution" in str(e.value)
    with cluster.connect("app") as admin:
        rows = admin.execute(f"SELECT id FROM {table}").fetchall()
    assert rows == [(1,)]


# -- deferred mode ------------------------------------------------------------------


def test_deferred_mode_fails_at_once_then_runs_identical_statement_once(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    sql = f"CREATE TABLE {table} (id int)"
    with connect(gw, "deferred", who, "requester") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(sql)
        review = pending_review(gw, who)
        assert review.review_id in str(e.value) and "pending" in str(e.value)
        # Re-running before a decision does not open a second review.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
        assert len(_run(gw, gw.runtime.store.reviews(ReviewFilter(requester=who)))) == 1
        decide(gw, review.review_id, "approver")
        # One character changed: not what was approved.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.replace("(id int)", "(id bigint)"))
        assert not table_exists(cluster, table)
        conn.execute(sql)
        assert table_exists(cluster, table)
    # The approval is used up: another run, from any session, needs another.
    refused(gw, who, "requester", sql)


def test_a_secret_in_a_held_statement_is_not_shown_to_approvers(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """The review keeps the statement with its secrets replaced (approvers,
    notifications, the API see that); the approval still binds the text as
    sent, and finds the pending review again by it."""
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    password = "Pw-" + secrets.token_hex(6)
    sql = f"CREATE TABLE {table} (dsn text DEFAULT 'postgresql://app:{password}@db/main')"
    with connect(gw, "deferred", who, "requester") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.encode())
        review = pending_review(gw, who)
        assert password not in review.statement
        assert "postgresql://app:[REDACTED:password]@db/main" in review.statement
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.encode())
        assert len(_run(gw, gw.runtime.store.reviews(ReviewFilter(requester=who)))) == 1
        decide(gw, review.review_id, "approver")
        conn.execute(sql.encode())
        assert table_exists(cluster, table)


def test_no_approvals_configured_refuses(gw: RunningGateway) -> None:
    error = refused(gw, person("requester"), "requester", "CREATE TABLE nope (id int)", "none")
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert "not configured" in (error.diag.message_hint or "")


def test_two_distinct_approvals_needed(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    with connect(gw, "two", who, "requester") as conn:
        held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
        review = pending_review(gw, who)
        first = principal(gw, person("approver"), "approver")
        one = _run(gw, gw.runtime.approvals.decide(review.review_id, first, "approve"))
        assert one.status == "pending"
        from hoopfast.approvals import ReviewError

        with pytest.raises(ReviewError) as e:
            _run(gw, gw.runtime.approvals.decide(review.review_id, first, "approve"))
        assert e.value.status == 409
        time.sleep(0.5)
        assert not held.done()
        decide(gw, review.review_id, "approver2")
        held.result(10)
    assert table_exists(cluster, table)


def test_recording_names_the_review(gw: RunningGateway) -> None:
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    with connect(gw, "wait", who, "requester") as conn:
        held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
        review = pending_review(gw, who)
        decide(gw, review.review_id, "approver")
        held.result(10)
    deadline = time.monotonic() + 15
    while True:
        rows = _run(gw, gw.runtime.store.sessions(EventFilter(subject=who)))
        if rows and rows[0].seal is not None:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    events = _run(gw, gw.runtime.store.session_events(rows[0].session_id))
    statements = [json.loads(e.data) for e in events if e.kind == "statement"]
    ran = [s for s in statements if table in s.get("text", "")]
    assert ran, statements
    assert ran[0]["verdict"] == "allow"
    assert ran[0]["rule"] == f"review:{review.review_id}"


# -- access requests -----------------------------------------------------------


def _grant(gw: RunningGateway, who: str, connection: str, role: str, seconds: float) -> str:
    asker = principal(gw, who, "requester")
    review = _run(
        gw,
        gw.runtime.approvals.request_access(asker, connection, role, seconds, "incident 42"),
    )
    assert review.status == "pending" and review.kind == "access"
    decided = decide(gw, review.review_id, "approver")
    assert decided.status == "approved" and decided.granted_until is not None
    return str(review.review_id)


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_access_grant_gives_a_role_for_its_window_to_open_sessions_too(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    insert = f"INSERT INTO {table} VALUES (1)"
    with connect(gw, "deferred", who, "requester") as before:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            before.execute(insert)  # a write needs review without the role
        _grant(gw, who, "deferred", "writer", 3.0)

        def runs() -> bool:
            try:
                before.execute(insert)
                return True
            except psycopg.errors.InsufficientPrivilege:
                return False

        _until(runs)  # the open session gained the role
        with connect(gw, "deferred", who, "requester") as fresh:
            fresh.execute(insert)  # and a new one has it from the start
            _until(lambda: not runs(), timeout=10)  # until the window closes
        # Someone else never had it.
        refused(gw, person("requester"), "requester", insert)


def test_revoked_access_grant_ends_at_once(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    table = shared_table(cluster)
    rid = _grant(gw, who, "deferred", "writer", 600.0)
    with connect(gw, "deferred", who, "requester") as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        decide(gw, rid, "approver", "revoke", "done early")
        _until(lambda: not gw.runtime.approvals.granted(who, "deferred"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {table} VALUES (2)")


def test_unmasked_access_is_a_time_boxed_grant(gw: RunningGateway, cluster: DevCluster) -> None:
    with cluster.connect("app") as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS appr_secret (email text)")
        admin.execute("TRUNCATE appr_secret")
        admin.execute("INSERT INTO appr_secret VALUES ('ann@example.com')")
        admin.execute("GRANT SELECT ON appr_secret TO PUBLIC")
        admin.commit()
    who = person("requester")
    query = "SELECT email FROM appr_secret"
    with connect(gw, "masked", who, "requester") as conn:
        assert conn.execute(query).fetchone() != ("ann@example.com",)
        _grant(gw, who, "masked", "unmasked", 3.0)
        # A session set up masked cannot run on unmasked: it is ended.
        with pytest.raises(psycopg.OperationalError):
            for _ in range(200):
                conn.execute("SELECT 1")
                time.sleep(0.05)
    with connect(gw, "masked", who, "requester") as conn:
        assert conn.execute(query).fetchone() == ("ann@example.com",)
        with pytest.raises(psycopg.OperationalError):  # the window closes
            for _ in range(200):
                conn.execute("SELECT 1")
                time.sleep(0.05)
    with connect(gw, "masked", who, "requester") as conn:
        assert conn.execute(query).fetchone() != ("ann@example.com",)


# -- several replicas ---------------------------------------------------------------


def test_decision_through_one_replica_releases_a_statement_held_by_another(
    approvals_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: Any,
    cluster: DevCluster,
    roles: Roles,
    tmp_path: Path,
) -> None:
    """Two gateways sharing a PostgreSQL store, as replicas behind a load
    balancer do: held on A, approved on B."""
    from tests.test_store import pg_url

    dbname = f"shared_{secrets.token_hex(4)}"
    cluster.create_database(dbname, owner=roles.scram[0])
    store = pg_url(cluster, roles.scram, dbname)

    def settings(name: str) -> Settings:
        # A long poll interval: the release comes from the store's
        # notification (LISTEN/NOTIFY), not from a poll.
        return make_settings(
            config=approvals_config,
            store=store,
            approvals_poll_interval=60,
            state_dir=tmp_path / name,
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    table = f"appr_{secrets.token_hex(4)}"
    who = person("requester")
    with (
        run_gateway(settings("a"), issuer, certs) as a,
        run_gateway(settings("b"), issuer, certs) as b,
    ):
        with connect(a, "wait", who, "requester") as conn:
            held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
            review = pending_review(b, who)  # B sees A's review
            decided = decide(b, review.review_id, "approver")
            assert decided.status == "approved"
            approved_at = time.monotonic()
            held.result(10)
            assert time.monotonic() - approved_at < 5
        assert table_exists(cluster, table)
        stored = _run(b, b.runtime.store.review(review.review_id))
        assert stored.status == "used"
        # An access grant decided on B reaches a session open on A.
        with connect(a, "deferred", who, "requester") as conn:
            insert = f"INSERT INTO {table} VALUES (1)"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(insert)
            _grant(b, who, "deferred", "writer", 600.0)
            _until(lambda: bool(a.runtime.approvals.granted(who, "deferred")), timeout=5)
            conn.execute(insert)


def test_pipeline_behind_a_held_statement_keeps_its_order(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with connect(gw, "wait", who, "requester") as conn:

        def pipeline() -> list[Any]:
            with conn.pipeline():
                c1 = conn.execute("SELECT 1")
                conn.execute(f"INSERT INTO {table} VALUES (7)")
                c3 = conn.execute(f"SELECT count(*) FROM {table}")
            return [c1.fetchone(), c3.fetchone()]

        held = in_thread(pipeline)
        review = pending_review(gw, who)
        time.sleep(0.3)
        assert not held.done()
        decide(gw, review.review_id, "approver")
        # The read after the write saw the write: nothing overtook it.
        assert held.result(10) == [(1,), (1,)]


def test_reason_comes_from_a_comment(gw: RunningGateway) -> None:
    who = person("requester")
    refused(gw, who, "requester", "/* reason: ticket OPS-12 */ CREATE TABLE with_reason (id int)")
    assert pending_review(gw, who).reason == "ticket OPS-12"


# -- the segregation-of-duties matrix ------------------------------------------------

ACTORS = ("requester", "approver", "approver2", "auditor", "admin", "outsider", "breakglass")

#: action -> actor -> allowed. "run": run a statement the policy sends to
#: review, without anyone's approval (admin's own grant allows DDL outright).
MATRIX: dict[str, dict[str, bool]] = {
    "run": {a: a == "admin" for a in ACTORS},
    "approve own": {a: False for a in ACTORS},
    "approve other's": {a: a in ("approver", "approver2") for a in ACTORS},
    "revoke": {a: a in ("approver", "approver2", "breakglass") for a in ACTORS},
    "read trail": {a: a == "auditor" for a in ACTORS},
    "export trail": {a: a == "auditor" for a in ACTORS},
    "grant unmask": {a: a in ("approver", "approver2") for a in ACTORS},
}


class Api:
    def __init__(self, gw: RunningGateway) -> None:
        import ssl

        tls = ssl.create_default_context(cafile=str(gw.certs.ca_file))
        self.gw = gw
        self.http = httpx.Client(base_url=gw.api_url, verify=tls, timeout=20)

    def call(
        self, method: str, who: str, actor: str, path: str, body: Any = None, **params: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.gw.token(who, GROUPS[actor])}"}
        return self.http.request(method, path, json=body, params=params, headers=headers)


def _requester_session(gw: RunningGateway, who: str) -> str:
    """A recorded, sealed session of ``who``: its id."""
    with connect(gw, "wait", who, "requester") as conn:
        conn.execute("SELECT 1")
    deadline = time.monotonic() + 15
    while True:
        rows = _run(gw, gw.runtime.store.sessions(EventFilter(subject=who)))
        if rows and rows[0].seal is not None:
            return str(rows[0].session_id)
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _statement_review(gw: RunningGateway, who: str) -> str:
    refused(gw, who, "requester", f"CREATE TABLE sod_{secrets.token_hex(4)} (id int)")
    return str(pending_review(gw, who).review_id)


def _try(gw: RunningGateway, api: Api, action: str, actor: str) -> bool:
    me = person(actor)
    if action == "run":
        try:
            with connect(gw, "deferred", me, actor) as conn:
                conn.execute(f"CREATE TEMP TABLE sod_{secrets.token_hex(4)} (id int)")
            return True
        except psycopg.Error:
            return False
    if action == "approve own":
        body = {"connection": "wait", "role": "unmasked", "duration": "5m", "reason": "mine"}
        made = api.call("POST", me, actor, "/v1/access-requests", body)
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        answer = api.call("POST", me, actor, f"/v1/reviews/{rid}/approve")
        return answer.status_code == 200
    if action in ("approve other's", "revoke"):
        rid = _statement_review(gw, person("requester"))
        verb = "approve" if action == "approve other's" else "revoke"
        answer = api.call("POST", me, actor, f"/v1/reviews/{rid}/{verb}", {"reason": "r"})
        stored = _run(gw, gw.runtime.store.review(rid))
        if answer.status_code != 200:
            assert stored.status == "pending", "a refused decision changed the review"
            assert answer.status_code in (403, 404), answer.text
        return answer.status_code == 200
    if action == "grant unmask":
        asker = person("requester")
        body = {"connection": "masked", "role": "unmasked", "duration": "5m", "reason": "debug"}
        made = api.call("POST", asker, "requester", "/v1/access-requests", body)
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        answer = api.call("POST", me, actor, f"/v1/reviews/{rid}/approve")
        granted = bool(gw.runtime.approvals.granted(asker, "masked"))
        assert granted == (answer.status_code == 200)
        return answer.status_code == 200
    session = _requester_session(gw, person("requester"))
    if action == "read trail":
        answer = api.call("GET", me, actor, f"/v1/audit/sessions/{session}")
        return answer.status_code == 200
    assert action == "export trail"
    answer = api.call("GET", me, actor, "/v1/audit/events", session_id=session)
    return answer.status_code == 200 and session in answer.text


@pytest.mark.parametrize("action", list(MATRIX))
def test_segregation_of_duties_matrix(gw: RunningGateway, action: str) -> None:
    api = Api(gw)
    got = {actor: _try(gw, api, action, actor) for actor in ACTORS}
    assert got == MATRIX[action]


def test_requester_in_the_approver_group_still_cannot_approve(gw: RunningGateway) -> None:
    api = Api(gw)
    who = person("dual")
    refused(gw, who, "dual", "CREATE TABLE dual_own (id int)")
    rid = pending_review(gw, who).review_id
    for verb in ("approve", "force"):
        answer = api.call("POST", who, "dual", f"/v1/reviews/{rid}/{verb}", {"reason": "x"})
        assert answer.status_code == 403, answer.text
        assert "own request" in answer.json()["detail"] or "break-glass" in answer.json()["detail"]
    assert _run(gw, gw.runtime.store.review(rid)).status == "pending"


def test_break_glass_force_is_recorded_and_flagged(gw: RunningGateway, cluster: DevCluster) -> None:
    api = Api(gw)
    who = person("requester")
    table = f"appr_{secrets.token_hex(4)}"
    with connect(gw, "wait", who, "requester") as conn:
        held = in_thread(lambda: conn.execute(f"CREATE TABLE {table} (id int)"))
        rid = pending_review(gw, who).review_id
        no_reason = api.call("POST", person("breakglass"), "breakglass", f"/v1/reviews/{rid}/force")
        assert no_reason.status_code in (400, 422)
        forced = api.call(
            "POST",
            person("breakglass"),
            "breakglass",
            f"/v1/reviews/{rid}/force",
            {"reason": "outage INC-9"},
        )
        assert forced.status_code == 200, forced.text
        assert forced.json()["break_glass"] is True
        held.result(10)
    assert table_exists(cluster, table)


def test_bad_inputs_change_nothing(gw: RunningGateway) -> None:
    api = Api(gw)
    approver = person("approver")
    unknown = api.call("POST", approver, "approver", "/v1/reviews/R-0000000000000000/approve")
    assert unknown.status_code == 404
    garbage = api.call("POST", approver, "approver", "/v1/reviews/not-an-id/approve")
    assert garbage.status_code == 404
    rid = _statement_review(gw, person("requester"))
    first = api.call("POST", approver, "approver", f"/v1/reviews/{rid}/approve")
    assert first.status_code == 200
    twice = api.call("POST", approver, "approver", f"/v1/reviews/{rid}/approve")
    assert twice.status_code == 409
    late = api.call("POST", person("approver2"), "approver2", f"/v1/reviews/{rid}/approve")
    assert late.status_code == 409
    assert _run(gw, gw.runtime.store.review(rid)).decisions[-1].actor == approver


# -- notifications ---------------------------------------------------------------------


def test_webhook_tells_approvers_signed(
    approvals_config: Path,
    make_settings: Callable[..., Settings],
    issuer: DevIssuer,
    certs: Any,
    tmp_path: Path,
) -> None:
    """A gateway with a webhook: a held statement's review reaches a real
    HTTP receiver, signed, and so does the decision."""
    from hoopfast.approvals.notify import verify_signature
    from tests.test_notify import Receiver

    secret = secrets.token_hex(32)
    (tmp_path / "hook-secret").write_text(secret)
    receiver = Receiver()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(receiver.__aenter__(), loop).result(10)
    config = tmp_path / "hooked.toml"
    config.write_text(
        approvals_config.read_text()
        + "\n[notifications.webhook]\n"
        + f'url = "{receiver.url("/hooks/T000/secret-path")}"\n'
        + f'secret = {{ file = "{tmp_path / "hook-secret"}" }}\n'
    )
    settings = make_settings(config=config, state_dir=tmp_path, approvals_poll_interval=0.2)
    try:
        with run_gateway(settings, issuer, certs) as hooked:
            who = person("requester")
            refused(hooked, who, "requester", "CREATE TABLE hooked (id int)")
            rid = pending_review(hooked, who).review_id
            decide(hooked, rid, "approver", "reject", "no")
            _until(lambda: len(receiver.requests) >= 2)
    finally:
        asyncio.run_coroutine_threadsafe(receiver.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    events = [r.headers["x-hoopfast-event"] for r in receiver.requests]
    assert events == ["review.created", "review.rejected"]
    for r in receiver.requests:
        assert r.path == "/hooks/T000/secret-path"
        assert verify_signature(
            secret.encode(),
            r.headers["x-hoopfast-timestamp"],
            r.body,
            r.headers["x-hoopfast-signature"],
        )
        body = r.json
        assert rid in body["text"] and body["hoopfast"]["review_id"] == rid
        assert body["hoopfast"]["statement"] == "CREATE TABLE hooked (id int)"


def test_one_approval_runs_once_across_sessions_waiting_on_it(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    who = person("requester")
    table = shared_table(cluster)
    insert = f"INSERT INTO {table} VALUES (1)"
    with connect(gw, "wait", who, "requester") as a, connect(gw, "wait", who, "requester") as b:
        first = in_thread(lambda: a.execute(insert))
        review = pending_review(gw, who)
        second = in_thread(lambda: b.execute(insert))
        _until(lambda: len(gw.call(lambda: [s for s in gw.gateway.active if s._review_hold])) == 2)
        # Both wait on the one review (same person, connection and text).
        assert len(_run(gw, gw.runtime.store.reviews(ReviewFilter(requester=who)))) == 1
        decide(gw, review.review_id, "approver")
        outcomes = []
        for held in (first, second):
            try:
                held.result(10)
                outcomes.append("ran")
            except psycopg.errors.InsufficientPrivilege as e:
                assert "another session used" in str(e)
                outcomes.append("refused")
        assert sorted(outcomes) == ["ran", "refused"]
    with cluster.connect("app") as admin:
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


# -- parameter values -------------------------------------------------------------------


def test_an_approval_binds_the_values_sent_with_the_statement(
    gw: RunningGateway, cluster: DevCluster
) -> None:
    """Extended protocol: the approver sees the values bound to the
    statement, and the approval runs those values only."""
    who = person("requester")
    table = shared_table(cluster)
    sql = f"INSERT INTO {table} VALUES (%t)"  # (text format; binary shows as hex)
    with connect(gw, "deferred", who, "requester") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, (41,))
        review = pending_review(gw, who)
        assert review.statement == f"INSERT INTO {table} VALUES ($1)"
        assert json.loads(review.parameters) == ["41"]
        shown = Api(gw).call("GET", person("approver"), "approver", f"/v1/reviews/{rid(review)}")
        assert shown.json()["parameters"] == ["41"]
        decide(gw, review.review_id, "approver")
        # Other values are another statement: not approved.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, (666,))
        other = pending_review(gw, who)
        assert json.loads(other.parameters) == ["666"]
        conn.execute(sql, (41,))  # the approved values: runs, once
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, (41,))
    assert rows_of(cluster, table) == [(41,)]


def test_wait_mode_shows_the_held_values(gw: RunningGateway, cluster: DevCluster) -> None:
    who = person("requester")
    table = shared_table(cluster)
    with connect(gw, "wait", who, "requester") as conn:
        sql = f"INSERT INTO {table} SELECT %b WHERE %b::int8 > 0"
        held = in_thread(lambda: conn.execute(sql, (7, 4111111111111111)))
        review = pending_review(gw, who)
        # Binary int2 and int8, their types declared in the Parse: shown as
        # their text, through the detectors (a card number bound as a number).
        assert json.loads(review.parameters) == ["7", "[REDACTED:card]"]
        decide(gw, review.review_id, "approver")
        held.result(10)
    assert rows_of(cluster, table) == [(7,)]


def rid(review: ReviewRecord) -> str:
    return str(review.review_id)


def rows_of(cluster: DevCluster, table: str) -> list[Any]:
    with cluster.connect("app") as admin:
        return admin.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()
