"""The admin API: who may read which trail, streaming exports, parameters,
OpenAPI, and uvicorn embedded on a uvloop loop in a thread (as the gateway
runs it in the tests). Records are real hash-chained, signed events in a
real SQLite store; tokens are real signed tokens from the dev issuer."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvloop

from hoopfast.api import ApiServer, create_app, start_api
from hoopfast.config import GatewayConfig
from hoopfast.identity.devissuer import AUDIENCE, ISSUER, DevIssuer
from hoopfast.identity.tokens import TokenValidator
from hoopfast.recording.chain import Chain, Signer, verify_session
from hoopfast.store import StoreError
from hoopfast.store.base import EventCursor
from hoopfast.store.records import EventFilter, EventRecord, Seal
from hoopfast.store.sqlite import SqliteStore
from tests.gateway import TEST_ROLES

T = TypeVar("T")

#: 2023-11-14T22:13:20Z: recordings start here.
BASE = 1_700_000_000.0

AUDITOR = ("carol", ("auditors",))
OTHER_AUDITOR = ("erin", ("auditors",))
ANALYST = ("alice", ("analysts",))
OUTSIDER = ("mallory", ("nobody",))


# --------------------------------------------------------------------------- recordings


def _result(n: int) -> dict[str, Any]:
    return {
        "columns": [{"name": "id", "type_oid": 23}, {"name": "name", "type_oid": 25}],
        "rows": [[str(i), f"item {i}" if i % 2 else None] for i in range(1, n + 1)],
        "truncated": False,
    }


def _statement(n: int, started_at: float, kind: int) -> tuple[str, dict[str, Any]]:
    """(verdict, body) of a statement as the recorder writes it; ``kind``
    cycles through a read, a write, a denied DDL and a failing query."""
    common = {"n": n, "started_at": started_at, "params": None, "rule": None}
    if kind == 0:
        return "allow", {
            **common,
            "text": "SELECT id, name FROM items WHERE id <= $1",
            "params": ["2"],
            "duration_ms": 1.25,
            "rows": 2,
            "bytes": 48,
            "tags": ["SELECT 2"],
            "error": None,
            "results": [_result(2)],
            "result_rows_kept": 2,
        }
    if kind == 1:
        return "allow", {
            **common,
            "text": "INSERT INTO items (name) VALUES ('x')",
            "duration_ms": 0.5,
            "rows": 1,
            "bytes": 0,
            "tags": ["INSERT 0 1"],
            "error": None,
            "results": [],
            "result_rows_kept": 0,
        }
    if kind == 2:
        return "deny", {
            **common,
            "text": "DROP TABLE items",
            "rule": "no-ddl",
            "duration_ms": 0.0,
            "rows": 0,
            "bytes": 0,
            "tags": [],
            "error": {"sqlstate": "42501", "message": "permission denied by the gateway"},
            "results": [],
            "result_rows_kept": 0,
        }
    return "allow", {
        **common,
        "text": "SELECT 1/0",
        "duration_ms": 0.3,
        "rows": 0,
        "bytes": 0,
        "tags": [],
        "error": {"sqlstate": "22012", "message": "division by zero"},
        "results": [],
        "result_rows_kept": 0,
    }


@dataclass(frozen=True)
class Planned:
    session_id: str
    subject: str
    connection: str
    start: float
    statements: int
    sealed: bool = True
    step: float = 0.1


def plan(big: int = 5000) -> list[Planned]:
    """The sessions of a test store: several people, two connections, one
    open session, the auditor's own session, and one big session whose
    events interleave (with equal timestamps) with the others'."""
    return [
        Planned("s-alice-1", "alice", "main", BASE, 4),
        Planned("s-bob-1", "bob", "main", BASE + 100, 8),
        Planned("s-carol-1", "carol", "main", BASE + 200, 4),
        Planned("s-alice-big", "alice", "reports", BASE + 50, big),
        Planned("s-dave-open", "dave", "main", BASE + 400, 2, sealed=False),
    ]


def record(p: Planned, signer: Signer) -> tuple[list[EventRecord], Seal | None]:
    chain = Chain(p.session_id)

    def at(k: int) -> float:
        # Rounded so that different sessions produce exactly equal times.
        return round(p.start + k * p.step, 3)

    groups = {"alice": ["analysts"], "carol": ["auditors"]}.get(p.subject, ["staff"])
    events = [
        chain.append(
            "session_start",
            at(0),
            p.subject,
            p.connection,
            "",
            {
                "groups": groups,
                "token_id": f"jti-{p.session_id}",
                "client_address": "10.0.0.7:50123",
                "application_name": "psql",
                "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "span_id": "b7ad6b7169203331",
            },
        )
    ]
    for n in range(1, p.statements + 1):
        verdict, body = _statement(n, at(n), (n - 1) % 4)
        events.append(chain.append("statement", at(n), p.subject, p.connection, verdict, body))
    if not p.sealed:
        return events, None
    ended = at(p.statements + 1)
    events.append(
        chain.append(
            "session_end",
            ended,
            p.subject,
            p.connection,
            "",
            {"reason": "client closed", "statements": p.statements, "ended_at": ended},
        )
    )
    return events, signer.seal(p.session_id, chain.count, chain.last_hash, ended, "client closed")


# --------------------------------------------------------------------------- the harness


class LoopThread:
    """A uvloop loop running in its own thread, like the gateway's in tests."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="api", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def make_config(issuer: DevIssuer, **audit: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "identity": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(issuer.jwks_file),
            },
            "roles": TEST_ROLES,
            "connections": {
                name: {"host": "127.0.0.1", "database": "app", "user": "app"}
                for name in ("main", "reports")
            },
            "audit": {"roles": ["auditor"], **audit},
        }
    )


@dataclass
class AuditApi:
    loop: LoopThread
    store: SqliteStore
    server: ApiServer
    issuer: DevIssuer
    signer: Signer
    db: Path
    config: GatewayConfig
    events: list[EventRecord] = field(default_factory=list)
    seals: dict[str, Seal] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def token(self, who: tuple[str, tuple[str, ...]] = AUDITOR, **kw: Any) -> str:
        return self.issuer.issue(who[0], who[1], **kw)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def get(self, path: str, who: tuple[str, tuple[str, ...]] = AUDITOR, **params: Any) -> Any:
        with self.client(self.token(who)) as client:
            return client.get(path, params=params)

    @contextmanager
    def audit_settings(self, **audit: Any) -> Iterator[None]:
        before = self.config
        self.config = make_config(self.issuer, **audit)
        try:
            yield
        finally:
            self.config = before

    def expected(self, where: EventFilter) -> list[EventRecord]:
        """What the store should export for ``where``, computed here."""
        chosen = [
            e
            for e in self.events
            if (where.since is None or e.at >= where.since)
            and (where.until is None or e.at < where.until)
            and (not where.subject or e.subject == where.subject)
            and (not where.connection or e.connection == where.connection)
            and (not where.verdict or e.verdict == where.verdict)
            and (not where.exclude_subject or e.subject != where.exclude_subject)
        ]
        return sorted(chosen, key=lambda e: (e.at, e.session_id, e.seq))


@contextmanager
def running_api(tmp_path: Path, issuer: DevIssuer, big: int = 5000) -> Iterator[AuditApi]:
    """A store filled with :func:`plan`'s sessions and the API in front of it,
    served by uvicorn on a uvloop loop in a thread."""
    loop = LoopThread()
    db = tmp_path / "hoopfast.db"
    store = SqliteStore(db)
    signer = Signer.load_or_create(tmp_path / "seal-key.pem")
    config = make_config(issuer)
    validator = TokenValidator(config.identity)
    harness: AuditApi | None = None
    try:
        loop.run(store.open())
        loop.run(store.add_signing_key(signer.signing_key()))
        events: list[EventRecord] = []
        seals: dict[str, Seal] = {}
        for p in plan(big):
            recorded, seal = record(p, signer)
            events += recorded
            if seal is not None:
                seals[p.session_id] = seal
            loop.run(store.write_recording(recorded, [seal] if seal else []))

        def current() -> GatewayConfig:
            assert harness is not None
            return harness.config

        app = create_app(store, validator, current, metrics=lambda: "hoopfast_up 1\n")
        server = loop.run(start_api(app, "127.0.0.1", 0))
        harness = AuditApi(loop, store, server, issuer, signer, db, config, events, seals)
        yield harness
    finally:
        if harness is not None:
            loop.run(harness.server.close())
        loop.run(store.close())
        validator.close()
        loop.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, issuer: DevIssuer) -> Iterator[AuditApi]:
    with running_api(tmp_path_factory.mktemp("api"), issuer) as harness:
        yield harness


def export_lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def keys_of(lines: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(line["session_id"], line["seq"]) for line in lines]


# --------------------------------------------------------------------------- service routes


def test_health_and_metrics_need_no_token(api: AuditApi) -> None:
    with api.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metrics.text == "hoopfast_up 1\n"


def test_metrics_404_when_not_enabled(api: AuditApi) -> None:
    validator = TokenValidator(api.config.identity)
    app = create_app(api.store, validator, lambda: api.config)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/metrics")

    assert api.loop.run(get()).status_code == 404
    validator.close()


def test_openapi_documents_the_routes(api: AuditApi) -> None:
    with api.client() as client:
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = set(schema["paths"])
    assert {
        "/healthz",
        "/metrics",
        "/v1/audit/sessions",
        "/v1/audit/sessions/{session_id}",
        "/v1/audit/sessions/{session_id}/raw",
        "/v1/audit/events",
        "/v1/audit/events/count",
        "/v1/audit/keys",
    } <= paths
    components = schema["components"]
    assert {"SessionDetail", "SessionRaw", "SessionPage", "ExportLine", "KeyList"} <= set(
        components["schemas"]
    )
    assert any(s.get("scheme") == "bearer" for s in components["securitySchemes"].values())
    export = schema["paths"]["/v1/audit/events"]["get"]
    assert "application/x-ndjson" in export["responses"]["200"]["content"]
    assert {p["name"] for p in export["parameters"]} >= {"since", "until", "include_results"}


# --------------------------------------------------------------------------- who may read


def test_missing_or_invalid_tokens_get_401(api: AuditApi, tmp_path: Path) -> None:
    stranger = DevIssuer(tmp_path)  # same issuer name, another key: unknown to the gateway
    expired = api.token(ttl=60, now=BASE)
    cases = {
        None: None,
        "not-a-jwt": "malformed",
        expired: "expired",
        stranger.issue("carol", ["auditors"]): "unknown key",
    }
    for token, category in cases.items():
        with api.client(token) as client:
            response = client.get("/v1/audit/sessions")
        assert response.status_code == 401, (category, response.text)
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer")
        if category is None:
            assert "bearer token is required" in response.json()["detail"]
        else:
            assert response.json()["detail"] == f"invalid token: {category}"
            assert f'error_description="{category}"' in challenge
            assert token not in response.text and token not in challenge


def test_people_without_an_auditor_role_get_403(api: AuditApi) -> None:
    for who in (ANALYST, OUTSIDER):
        for path in ("/v1/audit/sessions", "/v1/audit/events", "/v1/audit/sessions/s-bob-1"):
            response = api.get(path, who)
            assert response.status_code == 403, (who, path)
            assert "none of the roles" in response.json()["detail"]
    with api.audit_settings(roles=[]):
        response = api.get("/v1/audit/sessions", AUDITOR)
    assert response.status_code == 403
    assert "names no audit.roles" in response.json()["detail"]


def test_auditor_lists_other_peoples_sessions_newest_first(api: AuditApi) -> None:
    page = api.get("/v1/audit/sessions").json()
    ids = [s["session_id"] for s in page["sessions"]]
    assert ids == ["s-dave-open", "s-bob-1", "s-alice-big", "s-alice-1"]  # not s-carol-1
    assert page["next"] is None
    bob = page["sessions"][1]
    assert bob["subject"] == "bob" and bob["sealed"] and bob["statements"] == 8
    assert bob["client_address"] == "10.0.0.7:50123" and bob["end_reason"] == "client closed"
    assert not page["sessions"][0]["sealed"] and page["sessions"][0]["ended_at"] is None

    # Keyset pages: each session once, in order.
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"before": cursor} if cursor else {})}
        page = api.get("/v1/audit/sessions", **params).json()
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids

    assert [
        s["session_id"] for s in api.get("/v1/audit/sessions", user="alice").json()["sessions"]
    ] == ["s-alice-big", "s-alice-1"]
    assert [
        s["session_id"]
        for s in api.get("/v1/audit/sessions", connection="reports").json()["sessions"]
    ] == ["s-alice-big"]
    window = api.get("/v1/audit/sessions", since=BASE + 50, until="2023-11-14T22:15:00Z")
    assert [s["session_id"] for s in window.json()["sessions"]] == ["s-alice-big"]
    # Asking for one's own sessions by name finds nothing.
    assert api.get("/v1/audit/sessions", user="carol").json()["sessions"] == []


def test_segregation_of_duties_on_single_sessions(api: AuditApi) -> None:
    for path in ("/v1/audit/sessions/s-carol-1", "/v1/audit/sessions/s-carol-1/raw"):
        own = api.get(path, AUDITOR)
        assert own.status_code == 403
        assert "segregation of duties" in own.json()["detail"]
        assert api.get(path, OTHER_AUDITOR).status_code == 200
    assert api.get("/v1/audit/sessions/s-bob-1", AUDITOR).status_code == 200
    unknown = api.get("/v1/audit/sessions/no-such-session")
    assert unknown.status_code == 404 and "no-such-session" in unknown.json()["detail"]


def test_read_own_sessions_lifts_the_rule(api: AuditApi) -> None:
    with api.audit_settings(read_own_sessions=True):
        assert api.get("/v1/audit/sessions/s-carol-1").status_code == 200
        listed = [s["session_id"] for s in api.get("/v1/audit/sessions").json()["sessions"]]
        assert "s-carol-1" in listed
        mine = export_lines(api.get("/v1/audit/events", user="carol"))
        assert len(mine) == 6
        count = api.get("/v1/audit/events/count", user="carol").json()
        assert count == {"count": 6}
    assert api.get("/v1/audit/sessions/s-carol-1").status_code == 403


# --------------------------------------------------------------------------- content


def test_session_detail_and_raw_records(api: AuditApi) -> None:
    detail = api.get("/v1/audit/sessions/s-bob-1").json()
    assert detail["session"]["session_id"] == "s-bob-1"
    assert detail["seal"]["events"] == 10 and detail["seal"]["key_id"] == api.signer.key_id
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds == ["session_start"] + ["statement"] * 8 + ["session_end"]
    first = detail["events"][1]["data"]
    assert first["text"].startswith("SELECT id, name") and first["results"][0]["rows"][0] == [
        "1",
        "item 1",
    ]
    assert detail["events"][0]["data"]["groups"] == ["staff"]

    raw = api.get("/v1/audit/sessions/s-bob-1/raw").json()
    stored = [e for e in api.events if e.session_id == "s-bob-1"]
    assert [EventRecord(**e) for e in raw["events"]] == stored
    seal = Seal(**raw["seal"])
    assert seal == api.seals["s-bob-1"]
    keys = {api.signer.key_id: api.signer.signing_key()}
    assert verify_session("s-bob-1", stored, seal, keys) is None

    open_session = api.get("/v1/audit/sessions/s-dave-open/raw").json()
    assert open_session["seal"] is None and len(open_session["events"]) == 3


def test_signing_keys(api: AuditApi) -> None:
    keys = api.get("/v1/audit/keys").json()["keys"]
    assert keys == [
        {
            "key_id": api.signer.key_id,
            "algorithm": "ed25519",
            "public_key": api.signer.public_hex,
            "created_at": keys[0]["created_at"],
        }
    ]


@pytest.mark.parametrize(
    "since",
    ["2023-11-14T22:15:00Z", "2023-11-14T22:15:00", "2023-11-14T23:15:00+01:00", "1700000100"],
)
def test_time_formats(api: AuditApi, since: str) -> None:
    count = api.get("/v1/audit/events/count", since=since).json()["count"]
    assert count == len(api.expected(EventFilter(since=BASE + 100, exclude_subject="carol")))


def test_bad_parameters_get_422(api: AuditApi) -> None:
    for params, fragment in [
        ({"since": "yesterday"}, "since: not a time: 'yesterday'"),
        ({"until": "2023-13-45"}, "until: not a time"),
        ({"since": "nan"}, "since: not a time"),
        ({"since": BASE + 10, "until": BASE}, "since must be before until"),
        ({"before": "@@@"}, "before: not a cursor"),
        # No subject or connection holds a NUL (a PostgreSQL store could not
        # even compare one: the caller would see an outage).
        ({"user": "a\0b"}, "user: a NUL character is not allowed"),
        ({"connection": "\0"}, "connection: a NUL character is not allowed"),
    ]:
        for path in ("/v1/audit/sessions", "/v1/audit/events"):
            if "before" in params and path != "/v1/audit/sessions":
                continue
            response = api.get(path, **params)
            assert response.status_code == 422, (path, params)
            assert fragment in response.json()["detail"]
    assert api.get("/v1/audit/sessions", limit=0).status_code == 422
    assert api.get("/v1/audit/sessions/a%00b").status_code == 404
    assert api.get("/v1/audit/sessions/a%00b/raw").status_code == 404


def test_an_eight_digit_time_is_a_date() -> None:
    """ISO-8601's basic date (20231114), which fromisoformat reads, is not
    Unix seconds (a moment in August 1970)."""
    from hoopfast.api.app import parse_time

    assert parse_time("since", "20231114") == parse_time("since", "2023-11-14")
    assert parse_time("since", "1700000100") == 1700000100.0


# --------------------------------------------------------------------------- export


def test_export_streams_every_event_exactly_once(api: AuditApi) -> None:
    expected = api.expected(EventFilter(exclude_subject="carol"))
    assert len(expected) > 5000  # more than five pages
    with api.client(api.token()) as client, client.stream("GET", "/v1/audit/events") as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert "content-length" not in response.headers  # streamed, not buffered
        lines = [json.loads(line) for line in response.iter_lines()]
    assert keys_of(lines) == [(e.session_id, e.seq) for e in expected]
    assert len(set(keys_of(lines))) == len(lines)
    by_key = {(e.session_id, e.seq): e for e in expected}
    for line in lines[:50]:
        event = by_key[line["session_id"], line["seq"]]
        assert line["hash"] == event.hash and line["at"] == event.at
        assert line["kind"] == event.kind and line["verdict"] == event.verdict
        data = json.loads(event.data)
        data.pop("results", None)
        assert line["data"] == data
    assert not any("results" in line["data"] for line in lines)
    count = api.get("/v1/audit/events/count").json()["count"]
    assert count == len(lines)


def test_export_filters(api: AuditApi) -> None:
    cases: list[tuple[dict[str, Any], EventFilter]] = [
        ({"verdict": "deny"}, EventFilter(verdict="deny")),
        ({"user": "alice"}, EventFilter(subject="alice")),
        (
            {"connection": "reports", "verdict": "allow"},
            EventFilter(connection="reports", verdict="allow"),
        ),
        (
            {"since": "2023-11-14T22:14:50Z", "until": BASE + 105.5},
            EventFilter(since=BASE + 90, until=BASE + 105.5),
        ),
        ({"user": "carol"}, EventFilter(subject="carol")),
    ]
    for params, where in cases:
        expected = [
            (e.session_id, e.seq) for e in api.expected(replace(where, exclude_subject="carol"))
        ]
        lines = export_lines(api.get("/v1/audit/events", **params))
        assert keys_of(lines) == expected, params
        assert api.get("/v1/audit/events/count", **params).json()["count"] == len(expected)
    assert export_lines(api.get("/v1/audit/events", user="carol")) == []


def test_export_with_results(api: AuditApi) -> None:
    lines = export_lines(api.get("/v1/audit/events", user="bob", include_results="true"))
    selects = [line for line in lines if line["data"].get("text", "").startswith("SELECT id")]
    assert selects and all(line["data"]["results"] == [_result(2)] for line in selects)


# --------------------------------------------------------------------------- failures


class FailingStore(SqliteStore):
    """Fails listing sessions, and fails exports after their first page."""

    async def sessions(
        self, where: EventFilter, *, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[Any]:
        raise StoreError("the SQLite store at /x is unavailable: disk I/O error")

    async def events(
        self, where: EventFilter, *, limit: int = 1000, after: EventCursor | None = None
    ) -> list[EventRecord]:
        if after is not None:
            raise StoreError("the SQLite store at /x is unavailable: database is locked")
        return await super().events(where, limit=limit, after=after)


def test_store_errors(api: AuditApi) -> None:
    failing = FailingStore(api.db)
    validator = TokenValidator(api.config.identity)
    api.loop.run(failing.open())
    app = create_app(failing, validator, lambda: api.config)
    server = api.loop.run(start_api(app, "127.0.0.1", 0))
    try:
        headers = {"Authorization": f"Bearer {api.token()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as client:
            response = client.get("/v1/audit/sessions")
            assert response.status_code == 503
            assert response.json() == {
                "detail": "the SQLite store at /x is unavailable: disk I/O error"
            }
            lines: list[bytes] = []
            with (
                pytest.raises(httpx.RemoteProtocolError),  # cut off: never looks complete
                client.stream("GET", "/v1/audit/events") as stream,
            ):
                lines.extend(line.encode() for line in stream.iter_lines())
            assert len(lines) == 1001
            assert json.loads(lines[-1]) == {
                "error": "export aborted: the SQLite store at /x is unavailable: database is locked"
            }
    finally:
        api.loop.run(server.close())
        api.loop.run(failing.close())
        validator.close()


# --------------------------------------------------------------------------- the server


def test_server_closes_and_frees_the_port(api: AuditApi) -> None:
    validator = TokenValidator(api.config.identity)
    app = create_app(api.store, validator, lambda: api.config)
    server = api.loop.run(start_api(app, "127.0.0.1", 0))
    port = server.port
    assert port and port != api.server.port
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    api.loop.run(server.close())
    validator.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_server_leaves_signal_handlers_alone_in_the_main_thread(api: AuditApi) -> None:
    """The gateway's own handlers (SIGTERM stops it) stay in place."""
    validator = TokenValidator(api.config.identity)
    app = create_app(api.store, validator, lambda: api.config)

    def handlers() -> tuple[object, object]:
        return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    async def serve_once() -> list[tuple[object, object]]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        seen = [handlers()]
        server = await start_api(app, "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                assert (await client.get("/healthz")).status_code == 200
            seen.append(handlers())
        finally:
            await server.close()
        seen.append(handlers())
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        return seen

    assert threading.current_thread() is threading.main_thread()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        before, during, after = runner.run(serve_once())
    validator.close()
    assert before == during == after


def test_event_json_with_a_lone_surrogate_is_read() -> None:
    """The recorder's json fallback writes a lone surrogate (from a token's
    claims) as an escape, which orjson refuses: the API still reads it."""
    from hoopfast.api.app import _parsed
    from hoopfast.recording.chain import event_json

    data = event_json({"text": "SELECT '\udcff'", "groups": ["g\udcff"]}).decode()
    assert _parsed(data) == {"text": "SELECT '\udcff'", "groups": ["g\udcff"]}
