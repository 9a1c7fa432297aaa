"""Reviews and access requests through a real gateway: the admin API served
on the gateway's uvloop thread, the approvals service over the real SQLite
store, real tokens from the dev issuer, and the ``hoopfast review`` /
``hoopfast request`` commands end to end. Statement reviews are opened the
way the data path opens them (``Approvals.request_statement``)."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from hoopfast.api import create_app
from hoopfast.cli import main
from hoopfast.config import load_config
from hoopfast.devcluster import free_port
from hoopfast.devconfig import write_gateway_config
from hoopfast.devtls import CertFiles
from hoopfast.identity.devissuer import ISSUER, DevIssuer
from hoopfast.identity.principal import Principal
from hoopfast.identity.tokens import TokenValidator
from hoopfast.settings import Settings
from hoopfast.store.records import ReviewRecord
from tests.gateway import TEST_AUDIT, RunningGateway, run_gateway

T = TypeVar("T")

REQUESTER = ("alice", ("analysts",))
APPROVER = ("dave", ("dbas",))
SECOND_APPROVER = ("dan", ("dbas",))
#: An approver who is also the requester of some reviews.
APPROVER_REQUESTER = ("dora", ("analysts", "dbas"))
BREAKER = ("sam", ("sres",))
AUDITOR = ("carol", ("auditors",))
OUTSIDER = ("mallory", ("nobody",))

ROLES = {
    "analyst": {"groups": ["analysts"]},
    "auditor": {"groups": ["auditors"]},
    "dba": {"groups": ["dbas"]},
    "sre": {"groups": ["sres"]},
    "admin": {"groups": ["admins"]},
}
APPROVALS = {
    "approvers": ["dba"],
    "break_glass": ["sre"],
    "requestable_roles": ["admin", "unmasked"],
    "min_approvals": 1,
    "max_access": "2h",
}


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, issuer: DevIssuer, certs: CertFiles
) -> Iterator[RunningGateway]:
    """A gateway of its own (own store) whose connections have approvals:
    ``ops`` one approver, ``ops2`` two, ``quick`` reviews that expire in a
    second, ``plain`` none. Nothing listens upstream: no test here runs SQL."""
    state = tmp_path_factory.mktemp("reviews")
    base = {"host": "127.0.0.1", "port": free_port(), "database": "app", "user": "app"}
    grants: dict[str, dict[str, Any]] = {"analyst": {}, "admin": {}}
    connections = {
        "ops": {**base, "grants": grants, "approvals": APPROVALS},
        "ops2": {**base, "grants": grants, "approvals": {**APPROVALS, "min_approvals": 2}},
        "quick": {**base, "grants": grants, "approvals": {**APPROVALS, "review_ttl": "1s"}},
        "plain": {**base, "grants": grants},
    }
    config = write_gateway_config(
        state / "hoopfast.toml", issuer.jwks_file, connections, ROLES, audit=TEST_AUDIT
    )
    settings = Settings(
        config=config,
        pg_listen="127.0.0.1:0",
        api_listen="127.0.0.1:0",
        state_dir=state,
        tls_cert_file=certs.cert_file,
        tls_key_file=certs.key_file,
        approvals_poll_interval=0.2,
    )
    with run_gateway(settings, issuer, certs) as running:
        yield running


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the machine running the tests: no token, no stored login."""
    for name in ("HOOPFAST_TOKEN", "HOOPFAST_API_URL", "HOOPFAST_LOGIN_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HOOPFAST_LOGIN_CLIENT_ID", raising=False)
    monkeypatch.setenv("HOOPFAST_TOKEN_FILE", str(tmp_path / "tokens.json"))


def on_loop(gw: RunningGateway, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, gw.loop).result(10)


def statement_review(
    gw: RunningGateway,
    connection: str = "ops",
    who: tuple[str, tuple[str, ...]] = REQUESTER,
    sql: str | None = None,
) -> str:
    """A statement review opened as the data path opens one; its id."""
    subject, groups = who
    principal = Principal(subject, groups, None, ISSUER, time.time() + 900)
    text = sql or f"DROP TABLE t_{secrets.token_hex(4)}"
    review: ReviewRecord = on_loop(
        gw,
        gw.runtime.approvals.request_statement(
            principal,
            connection,
            text,
            rule="class:ddl",
            reason="",
            session_id="s-test",
            client_address="127.0.0.1:5555",
        ),
    )
    return review.review_id


class Client:
    """The API as one person sees it."""

    def __init__(self, gw: RunningGateway) -> None:
        tls = ssl.create_default_context(cafile=str(gw.certs.ca_file))
        self.gw = gw
        self.http = httpx.Client(base_url=gw.api_url, verify=tls, timeout=20)

    def headers(self, who: tuple[str, tuple[str, ...]] | None) -> dict[str, str]:
        return {} if who is None else {"Authorization": f"Bearer {self.gw.token(*who)}"}

    def get(self, who: tuple[str, tuple[str, ...]] | None, path: str, **params: Any) -> Any:
        return self.http.get(path, params=params, headers=self.headers(who))

    def post(
        self, who: tuple[str, tuple[str, ...]] | None, path: str, body: Any = None
    ) -> httpx.Response:
        return self.http.post(path, json=body, headers=self.headers(who))

    def decide(
        self, who: tuple[str, tuple[str, ...]], review_id: str, action: str, reason: str = ""
    ) -> httpx.Response:
        body = {"reason": reason} if reason else None
        return self.post(who, f"/v1/reviews/{review_id}/{action}", body)

    def review(self, review_id: str) -> dict[str, Any]:
        response = self.get(AUDITOR, f"/v1/reviews/{review_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def api(gw: RunningGateway) -> Iterator[Client]:
    client = Client(gw)
    yield client
    client.http.close()


def ids(page: dict[str, Any]) -> list[str]:
    return [r["id"] for r in page["reviews"]]


# --------------------------------------------------------------------------- reading


def test_show_and_list_visibility(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, sql="DROP TABLE visible")
    for who in (REQUESTER, APPROVER, BREAKER, AUDITOR):
        response = api.get(who, f"/v1/reviews/{rid}")
        assert response.status_code == 200, (who, response.text)
        review = response.json()
        assert review["id"] == rid and review["kind"] == "statement"
        assert review["status"] == "pending" and review["statement"] == "DROP TABLE visible"
        assert review["requester"] == "alice" and review["connection"] == "ops"
        assert review["approvers"] == ["dba"] and review["min_approvals"] == 1
        assert review["approvals"] == 0 and review["decisions"] == []
        assert review["rule"] == "class:ddl" and review["mode"] == "wait"
        assert review["session_id"] == "s-test" and review["client_address"] == "127.0.0.1:5555"
        assert len(review["statement_hash"]) == 64 and review["break_glass"] is False
        assert review["expires_at"] > review["created_at"]
        assert rid in ids(api.get(who, "/v1/reviews").json())
    # Nobody else learns it exists.
    response = api.get(OUTSIDER, f"/v1/reviews/{rid}")
    assert response.status_code == 404 and "does not exist" in response.json()["detail"]
    assert rid not in ids(api.get(OUTSIDER, "/v1/reviews").json())
    assert api.decide(OUTSIDER, rid, "approve").status_code == 404
    # Another requester does not see alice's review either.
    assert api.get(("bob", ("analysts",)), f"/v1/reviews/{rid}").status_code == 404


def test_list_filters_and_pages(api: Client, gw: RunningGateway) -> None:
    who = (f"p-{secrets.token_hex(3)}", ("analysts",))
    made = [statement_review(gw, "ops2", who) for _ in range(5)]
    page = api.get(who, "/v1/reviews", limit=2).json()
    assert ids(page) == made[::-1][:2] and page["next"]
    seen = ids(page)
    while page["next"]:
        page = api.get(who, "/v1/reviews", limit=2, before=page["next"]).json()
        seen += ids(page)
    assert seen == made[::-1]
    assert ids(api.get(APPROVER, "/v1/reviews", requester=who[0]).json()) == made[::-1]
    assert ids(api.get(APPROVER, "/v1/reviews", requester=who[0], connection="ops").json()) == []
    assert ids(api.get(who, "/v1/reviews", kind="access").json()) == []
    assert ids(api.get(who, "/v1/reviews", status="approved").json()) == []
    both = api.get(who, "/v1/reviews", status=["pending", "approved"]).json()
    assert ids(both) == made[::-1]
    for bad in ({"status": "maybe"}, {"kind": "other"}, {"limit": 0}, {"before": "nope"}):
        assert api.get(who, "/v1/reviews", **bad).status_code == 422, bad
    assert api.get(who, "/v1/reviews", connection="a\x00b").status_code == 422


def test_tokens_ids_and_openapi(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    assert api.get(None, "/v1/reviews").status_code == 401
    response = api.http.get(f"/v1/reviews/{rid}", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert api.post(None, f"/v1/reviews/{rid}/approve").status_code == 401
    for bad in ("R-0000000000000000", "R-XYZ", "nonsense", "R-00000000000000000"):
        assert api.get(APPROVER, f"/v1/reviews/{bad}").status_code == 404, bad
        assert api.decide(APPROVER, bad, "approve").status_code == 404, bad
    schema = api.http.get("/openapi.json").json()
    for path in (
        "/v1/reviews",
        "/v1/reviews/{review_id}",
        "/v1/reviews/{review_id}/approve",
        "/v1/reviews/{review_id}/force",
        "/v1/access-requests",
    ):
        assert path in schema["paths"], path
    assert "ReviewOut" in schema["components"]["schemas"]
    assert "/v1/audit/sessions" in schema["paths"]  # the audit routes are still there


def test_without_approvals_the_routes_answer_503(gw: RunningGateway) -> None:
    config = load_config(gw.gateway.settings.config)
    validator = TokenValidator(config.identity)
    app = create_app(gw.runtime.store, validator, lambda: config)
    token = gw.token(*APPROVER)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            headers = {"Authorization": f"Bearer {token}"}
            return [
                await client.get("/v1/reviews", headers=headers),
                await client.post("/v1/access-requests", headers=headers, json={}),
                await client.get("/v1/reviews"),
            ]

    try:
        listed, posted, anonymous = asyncio.run(go())
    finally:
        validator.close()
    assert listed.status_code == 503 and listed.json() == {"detail": "approvals are not enabled"}
    assert posted.status_code == 503
    assert anonymous.status_code == 401


# --------------------------------------------------------------------------- deciding


def test_approve_by_an_approver(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    response = api.decide(APPROVER, rid, "approve", "looks fine")
    assert response.status_code == 200, response.text
    review = response.json()
    assert review["status"] == "approved" and review["approvals"] == 1
    assert review["decided_at"] is not None and review["break_glass"] is False
    (decision,) = review["decisions"]
    assert decision["actor"] == "dave" and decision["action"] == "approve"
    assert decision["reason"] == "looks fine"
    again = api.decide(APPROVER, rid, "approve")
    assert again.status_code == 409 and "already approved" in again.json()["detail"]


def test_nobody_approves_their_own_request(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, who=APPROVER_REQUESTER)
    for action in ("approve", "reject"):
        response = api.decide(APPROVER_REQUESTER, rid, action, "mine")
        assert response.status_code == 403, response.text
        assert "segregation of duties" in response.json()["detail"]
    assert api.review(rid)["status"] == "pending"
    # Another approver may; and the person approves other people's reviews.
    assert api.decide(APPROVER, rid, "approve").json()["status"] == "approved"
    other = statement_review(gw)
    assert api.decide(APPROVER_REQUESTER, other, "approve").json()["status"] == "approved"


def test_non_approvers_cannot_approve(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    for who in (AUDITOR, BREAKER, ("bob", ("analysts",))):
        response = api.decide(who, rid, "approve")
        # bob cannot even see it: 404; the others see it but may not decide.
        assert response.status_code in (403, 404), (who, response.text)
    assert api.decide(AUDITOR, rid, "approve").status_code == 403
    assert api.review(rid)["status"] == "pending"


def test_two_approvals_need_two_people(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, "ops2")
    first = api.decide(APPROVER, rid, "approve").json()
    assert first["status"] == "pending" and first["approvals"] == 1
    twice = api.decide(APPROVER, rid, "approve")
    assert twice.status_code == 409 and "already approved" in twice.json()["detail"]
    assert api.review(rid)["approvals"] == 1
    second = api.decide(SECOND_APPROVER, rid, "approve").json()
    assert second["status"] == "approved" and second["approvals"] == 2
    assert [d["actor"] for d in second["decisions"]] == ["dave", "dan"]


def test_reject(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    response = api.decide(APPROVER, rid, "reject")
    assert response.status_code == 400 and "needs a reason" in response.json()["detail"]
    response = api.decide(APPROVER, rid, "reject", "not on a Friday")
    assert response.status_code == 200
    review = response.json()
    assert review["status"] == "rejected" and review["decisions"][-1]["reason"] == "not on a Friday"
    late = api.decide(SECOND_APPROVER, rid, "approve")
    assert late.status_code == 409 and "already rejected" in late.json()["detail"]


def test_control_characters_in_reasons_are_refused(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    for reason in ("null\x00byte", "escape \x1b[31m", "bidi \u202e"):
        response = api.post(APPROVER, f"/v1/reviews/{rid}/reject", {"reason": reason})
        assert response.status_code == 422, reason
    response = api.post(APPROVER, f"/v1/reviews/{rid}/reject", {"reason": "x" * 3000})
    assert response.status_code == 422
    response = api.post(APPROVER, f"/v1/reviews/{rid}/reject", {"reason": "ok", "extra": 1})
    assert response.status_code == 422
    assert api.review(rid)["status"] == "pending"
    multi = api.post(APPROVER, f"/v1/reviews/{rid}/reject", {"reason": "line one\n\tline two"})
    assert multi.status_code == 200 and multi.json()["status"] == "rejected"


def test_revoke(api: Client, gw: RunningGateway) -> None:
    pending = statement_review(gw)
    own = api.decide(REQUESTER, pending, "revoke")
    assert own.status_code == 403 and "withdraw it instead" in own.json()["detail"]
    assert api.decide(APPROVER, pending, "revoke").json()["status"] == "revoked"

    approved = statement_review(gw)
    api.decide(APPROVER, approved, "approve")
    response = api.decide(SECOND_APPROVER, approved, "revoke", "changed my mind")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    again = api.decide(APPROVER, approved, "revoke")
    assert again.status_code == 409 and "nothing left to revoke" in again.json()["detail"]

    # A break-glass holder may revoke too.
    other = statement_review(gw)
    assert api.decide(BREAKER, other, "revoke").json()["status"] == "revoked"


def test_withdraw(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    for who in (APPROVER, AUDITOR):
        response = api.decide(who, rid, "withdraw")
        assert response.status_code == 403 and "only the requester" in response.json()["detail"]
    response = api.decide(REQUESTER, rid, "withdraw")
    assert response.status_code == 200 and response.json()["status"] == "withdrawn"
    assert api.decide(REQUESTER, rid, "withdraw").status_code == 409
    assert api.decide(APPROVER, rid, "approve").status_code == 409


def test_force(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, "ops2")
    no_reason = api.decide(BREAKER, rid, "force")
    assert no_reason.status_code == 400
    refused = api.decide(APPROVER, rid, "force", "urgent")
    assert refused.status_code == 403 and "break-glass" in refused.json()["detail"]
    response = api.decide(BREAKER, rid, "force", "outage INC-42")
    assert response.status_code == 200, response.text
    review = response.json()
    assert review["status"] == "approved" and review["break_glass"] is True
    assert review["decisions"][-1]["action"] == "force" and review["approvals"] == 1


def test_decide_after_expiry(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, "quick")
    time.sleep(1.2)
    response = api.decide(APPROVER, rid, "approve")
    assert response.status_code == 410 and "expired" in response.json()["detail"]
    review = api.review(rid)
    assert review["status"] == "expired" and review["decisions"][-1]["action"] == "expire"
    assert api.decide(APPROVER, rid, "approve").status_code == 409
    # An expired review is no longer listed as pending.
    pending = api.get(APPROVER, "/v1/reviews", status="pending", connection="quick").json()
    assert rid not in ids(pending)


def test_expired_reviews_read_as_expired(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw, "quick")
    assert api.review(rid)["status"] == "pending"
    time.sleep(1.2)
    listed = api.get(APPROVER, "/v1/reviews", status="pending", connection="quick").json()
    assert rid not in ids(listed)
    assert api.review(rid)["status"] == "expired"


def test_two_approvers_racing(api: Client, gw: RunningGateway) -> None:
    rid = statement_review(gw)
    tls = ssl.create_default_context(cafile=str(gw.certs.ca_file))

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.api_url, verify=tls, timeout=20) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"/v1/reviews/{rid}/approve",
                            headers={"Authorization": f"Bearer {gw.token(*who)}"},
                        )
                        for who in (APPROVER, SECOND_APPROVER)
                    )
                )
            )

    responses = asyncio.run(race())
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    loser = next(r for r in responses if r.status_code == 409)
    assert "already approved" in loser.json()["detail"]
    winner = next(r for r in responses if r.status_code == 200).json()
    review = api.review(rid)
    assert review["status"] == "approved" and review["approvals"] == 1
    assert review["decisions"] == winner["decisions"] and len(review["decisions"]) == 1


# --------------------------------------------------------------------------- access requests


def test_access_request(api: Client) -> None:
    body = {"connection": "ops", "role": "admin", "duration": "30m", "reason": "deploy"}
    response = api.post(REQUESTER, "/v1/access-requests", body)
    assert response.status_code == 201, response.text
    review = response.json()
    rid = review["id"]
    assert review["kind"] == "access" and review["status"] == "pending"
    assert review["role"] == "admin" and review["duration"] == 1800
    assert review["reason"] == "deploy" and review["approvers"] == ["dba"]
    assert review["granted_until"] is None and review["statement"] == ""
    assert rid in ids(api.get(APPROVER, "/v1/access-requests").json())
    assert rid in ids(api.get(APPROVER, "/v1/reviews", kind="access").json())
    assert rid not in ids(api.get(APPROVER, "/v1/reviews", kind="statement").json())
    assert rid not in ids(api.get(OUTSIDER, "/v1/access-requests").json())

    approved = api.decide(APPROVER, rid, "approve").json()
    assert approved["status"] == "approved"
    assert approved["granted_until"] == pytest.approx(approved["decided_at"] + 1800)
    # Revoking a grant in force.
    revoked = api.decide(APPROVER, rid, "revoke", "done early").json()
    assert revoked["status"] == "revoked"

    numeric = api.post(REQUESTER, "/v1/access-requests", {**body, "duration": 90})
    assert numeric.status_code == 201 and numeric.json()["duration"] == 90
    unmasked = api.post(REQUESTER, "/v1/access-requests", {**body, "role": "unmasked"})
    assert unmasked.status_code == 201


def test_access_request_validation(api: Client) -> None:
    body = {"connection": "ops", "role": "admin", "duration": "30m", "reason": "deploy"}

    def status(**change: Any) -> tuple[int, str]:
        response = api.post(REQUESTER, "/v1/access-requests", {**body, **change})
        return response.status_code, json.dumps(response.json()["detail"])

    code, detail = status(role="analyst")
    assert code == 403 and "cannot be requested" in detail
    code, detail = status(duration="9h")
    assert code == 400 and "at most 7200 seconds" in detail
    assert status(duration=0)[0] == 400
    assert status(duration=-5)[0] == 400
    assert status(duration="soon")[0] == 422
    assert status(duration=True)[0] == 422
    assert status(reason="   ")[0] == 400
    assert status(reason="a\x00b")[0] == 422
    assert status(connection="nowhere")[0] == 404
    code, detail = status(connection="plain")
    assert code == 409 and "no approvals configured" in detail
    missing = api.post(
        REQUESTER, "/v1/access-requests", {k: v for k, v in body.items() if k != "reason"}
    )
    assert missing.status_code == 422
    assert api.post(None, "/v1/access-requests", body).status_code == 401


# --------------------------------------------------------------------------- the CLI


def cli(
    capsys: pytest.CaptureFixture[str],
    gw: RunningGateway,
    who: tuple[str, tuple[str, ...]] | None,
    *args: str,
) -> tuple[int, str, str]:
    argv = [*args, "--api", gw.api_url, "--cacert", str(gw.certs.ca_file)]
    if who is not None:
        argv += ["--token", gw.token(*who)]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_show_and_decide(
    gw: RunningGateway, api: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    who = (f"c-{secrets.token_hex(3)}", ("analysts",))
    rid = statement_review(gw, "ops", who, "DROP TABLE\n  cli_target")
    code, out, err = cli(capsys, gw, APPROVER, "review", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "KIND",
        "STATUS",
        "REQUESTER",
        "CONNECTION",
        "CREATED",
        "APPROVALS",
        "WHAT",
    ]
    (row,) = [line for line in lines if line.startswith(rid)]
    assert row.split()[:5] == [rid, "statement", "pending", who[0], "ops"]
    assert row.split()[8:] == ["0/1", "DROP", "TABLE", "cli_target"]
    assert lines[-1].endswith("pending reviews)") or lines[-1].endswith("pending review)")

    code, out, err = cli(capsys, gw, APPROVER, "review", "list", "--json", "--kind", "statement")
    assert code == 0 and rid in [json.loads(line)["id"] for line in out.splitlines()]

    code, out, err = cli(capsys, gw, who, "review", "show", rid)
    assert code == 0, err
    assert out.startswith(f"Review {rid}: statement review, pending")
    assert "    DROP TABLE" in out and "      cli_target" in out and "class:ddl" in out
    code, out, err = cli(capsys, gw, who, "review", "show", rid, "--json")
    assert code == 0 and json.loads(out)["statement"] == "DROP TABLE\n  cli_target"

    code, out, err = cli(capsys, gw, who, "review", "approve", rid)
    assert code == 2 and out == ""
    assert "hoopfast review approve: not allowed (403): segregation of duties" in err

    code, out, err = cli(capsys, gw, APPROVER, "review", "approve", rid, "--reason", "ok")
    assert code == 0, err
    assert out.strip() == f"{rid}: approved"
    code, out, err = cli(capsys, gw, APPROVER, "review", "approve", rid)
    assert code == 2 and "refused (409):" in err and "already approved" in err

    code, out, err = cli(capsys, gw, APPROVER, "review", "list", "--all")
    assert code == 0 and any(
        line.startswith(rid) and "approved" in line for line in out.splitlines()
    )
    code, out, err = cli(capsys, gw, APPROVER, "review", "list", "--status", "approved")
    assert code == 0 and rid in out
    code, out, err = cli(capsys, gw, APPROVER, "review", "list")
    assert rid not in out  # pending only

    code, out, err = cli(capsys, gw, APPROVER, "review", "revoke", rid)
    assert code == 0 and out.strip() == f"{rid}: revoked"
    code, out, err = cli(capsys, gw, who, "review", "show", rid)
    assert "approve by dave: ok" in out and "revoke by dave" in out

    code, out, err = cli(capsys, gw, OUTSIDER, "review", "show", rid)
    assert code == 2 and "refused (404):" in err and "does not exist" in err


def test_cli_reject_withdraw_force(gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    rid = statement_review(gw)
    with pytest.raises(SystemExit) as usage:
        cli(capsys, gw, APPROVER, "review", "reject", rid)  # --reason is required
    assert usage.value.code == 2
    capsys.readouterr()
    code, out, err = cli(capsys, gw, APPROVER, "review", "reject", rid, "--reason", "no")
    assert code == 0 and out.strip() == f"{rid}: rejected", err

    rid = statement_review(gw)
    code, out, err = cli(capsys, gw, APPROVER, "review", "withdraw", rid)
    assert code == 2 and "only the requester" in err
    code, out, err = cli(capsys, gw, REQUESTER, "review", "withdraw", rid)
    assert code == 0 and out.strip() == f"{rid}: withdrawn"

    rid = statement_review(gw, "ops2")
    code, out, err = cli(capsys, gw, APPROVER, "review", "force", rid, "--reason", "now")
    assert code == 2 and "break-glass" in err
    code, out, err = cli(capsys, gw, BREAKER, "review", "force", rid, "--reason", "outage")
    assert code == 0 and out.strip() == f"{rid}: approved (break-glass)", err

    code, out, err = cli(capsys, gw, APPROVER, "review", "show", "R-0000000000000000")
    assert code == 2 and "refused (404)" in err


def test_cli_token_from_environment(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = statement_review(gw)
    monkeypatch.setenv("HOOPFAST_API_URL", gw.api_url)
    monkeypatch.setenv("HOOPFAST_TOKEN", gw.token(*APPROVER))
    code = main(["review", "show", rid, "--cacert", str(gw.certs.ca_file)])
    out, err = capsys.readouterr()
    assert code == 0 and rid in out, err
    monkeypatch.setenv("HOOPFAST_TOKEN", "not-a-token")
    code = main(["review", "list", "--cacert", str(gw.certs.ca_file)])
    err = capsys.readouterr().err
    assert code == 2 and "the API refused the token (401)" in err and "not-a-token" not in err
    monkeypatch.delenv("HOOPFAST_TOKEN")
    code = main(["review", "list", "--cacert", str(gw.certs.ca_file)])
    err = capsys.readouterr().err
    assert code == 2 and "--token" in err
    code = main(["review", "list", "--api", "http://127.0.0.1:9", "--token", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the API at http://127.0.0.1:9" in err


def test_cli_request_access(gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    who = (f"r-{secrets.token_hex(3)}", ("analysts",))
    args = ("request", "access", "ops", "--role", "admin", "--for", "30m", "--reason", "deploy")
    code, out, err = cli(capsys, gw, who, *args)
    assert code == 0, err
    rid = out.split(":", 1)[0]
    assert out.strip() == (
        f"{rid}: requested role admin on ops for 30m; approvers: dba (1 approval needed)"
    )
    code, out, err = cli(capsys, gw, who, "review", "show", rid)
    assert "access review, pending" in out and "30m" in out

    code, out, err = cli(
        capsys,
        gw,
        who,
        "request",
        "access",
        "ops",
        "--role",
        "analyst",
        "--for",
        "30m",
        "--reason",
        "x",
    )
    assert code == 2 and "not allowed (403)" in err and "cannot be requested" in err
    code, out, err = cli(
        capsys,
        gw,
        who,
        "request",
        "access",
        "ops",
        "--role",
        "admin",
        "--for",
        "9h",
        "--reason",
        "x",
    )
    assert code == 2 and "refused (400)" in err
    with pytest.raises(SystemExit):
        cli(
            capsys,
            gw,
            who,
            "request",
            "access",
            "ops",
            "--role",
            "admin",
            "--for",
            "soon",
            "--reason",
            "x",
        )
    capsys.readouterr()


def _wait_in_thread(
    gw: RunningGateway, who: tuple[str, tuple[str, ...]]
) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    argv = [
        "request", "access", "ops", "--role", "unmasked", "--for", "15m", "--reason", "debug",
        "--wait", "--poll", "0.1",
        "--api", gw.api_url, "--cacert", str(gw.certs.ca_file), "--token", gw.token(*who),
    ]  # fmt: skip
    thread = threading.Thread(target=lambda: result.append(main(argv)))
    thread.start()
    return thread, result


def _pending_of(api: Client, who: tuple[str, tuple[str, ...]]) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = api.get(APPROVER, "/v1/access-requests", requester=who[0], status="pending")
        found = ids(page.json())
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no pending request of {who[0]}")


def test_cli_request_access_wait(
    gw: RunningGateway, api: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    who = (f"w-{secrets.token_hex(3)}", ("analysts",))
    thread, result = _wait_in_thread(gw, who)
    rid = _pending_of(api, who)
    time.sleep(0.3)  # the command is polling by now
    assert api.decide(APPROVER, rid, "approve").status_code == 200
    thread.join(10)
    out, err = capsys.readouterr()
    assert result == [0], err
    assert f"waiting for a decision on {rid}" in err
    assert f"{rid}: approved, role unmasked until" in out

    thread, result = _wait_in_thread(gw, who)
    rid = _pending_of(api, who)
    assert api.decide(APPROVER, rid, "reject", "not today").status_code == 200
    thread.join(10)
    out, err = capsys.readouterr()
    assert result == [1], err
    assert out.splitlines()[-1] == f"{rid}: rejected"
