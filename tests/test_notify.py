"""Review notifications against a real HTTP/1.1 server on the loopback
interface: the body, the signature, retries, ordering, shutdown, log hygiene."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
import uvloop

from hoopfast.approvals.notify import (
    NO_NOTIFIER,
    STATEMENT_LIMIT,
    WebhookNotifier,
    encode_body,
    parse_retry_after,
    redacted_url,
    sign,
    verify_signature,
    webhook_body,
)
from hoopfast.config import SecretRef, Webhook
from hoopfast.devcluster import free_port
from hoopfast.errors import ConfigurationError
from hoopfast.store.records import (
    ACCESS_REVIEW,
    APPROVED,
    PENDING,
    REJECTED,
    STATEMENT_REVIEW,
    Decision,
    ReviewRecord,
)

SECRET = "k3y-for-tests-0123456789abcdef-0123456789"
SECRET_ENV = "HOOPFAST_TEST_NOTIFY_SECRET"
T0 = 1_700_000_000.0

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], loop_factory: Any = None) -> T:
    async def wrapper() -> T:
        return await main()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(wrapper())


def review(**changes: Any) -> ReviewRecord:
    statement = changes.pop("statement", "DROP TABLE t")
    base = ReviewRecord(
        review_id="R-abc",
        kind=STATEMENT_REVIEW,
        status=PENDING,
        requester="alice",
        connection="app",
        created_at=T0,
        expires_at=T0 + 900,
        statement=statement,
        statement_hash=hashlib.sha256(statement.encode()).hexdigest(),
        rule="class:ddl",
        mode="wait",
        approvers=("dba",),
    )
    return replace(base, **changes)


def access_review(**changes: Any) -> ReviewRecord:
    base = ReviewRecord(
        review_id="R-acc",
        kind=ACCESS_REVIEW,
        status=PENDING,
        requester="alice",
        connection="app",
        created_at=T0,
        expires_at=T0 + 900,
        role="admin",
        duration=5400.0,
        reason="incident 42",
        approvers=("dba", "sre"),
        min_approvals=2,
    )
    return replace(base, **changes)


# -- a tiny HTTP/1.1 receiver ------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def verifies(self, secret: str = SECRET, **kw: Any) -> bool:
        return verify_signature(
            secret.encode(),
            self.headers["x-hoopfast-timestamp"],
            self.body,
            self.headers["x-hoopfast-signature"],
            **kw,
        )


class Receiver:
    """Records every request; answers from ``script`` ((status, headers)
    pairs, in order), then 200. Keep-alive, Content-Length bodies only."""

    def __init__(
        self, script: list[tuple[int, dict[str, str]]] | None = None, delay: float = 0.0
    ) -> None:
        self.script = collections.deque(script or [])
        self.delay = delay
        self.requests: list[Received] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    if line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, path, headers, body, time.monotonic()))
                status, extra = self.script.popleft() if self.script else (200, {})
                if self.delay:
                    await asyncio.sleep(self.delay)
                payload = b"ok"
                out = {"Content-Type": "text/plain", "Content-Length": str(len(payload))}
                out.update(extra)
                text = f"HTTP/1.1 {status} Whatever\r\n"
                text += "".join(f"{k}: {v}\r\n" for k, v in out.items()) + "\r\n"
                writer.write(text.encode("latin-1") + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield


def notifier(url: str, attempts: int = 3, **kw: Any) -> WebhookNotifier:
    hook = Webhook(url=url, secret=SecretRef(env=SECRET_ENV), attempts=attempts, timeout=2.0)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    return WebhookNotifier(hook, **kw)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "hoopfast.notify" and r.levelno == level
    ]


# -- the body ----------------------------------------------------------------------


def test_body_is_slack_message_with_structured_fields() -> None:
    body = webhook_body("review.created", review())
    assert body["text"] == (
        "hoopfast: review R-abc on connection app needs approval: alice wants to run"
        " `DROP TABLE t` (rule class:ddl); approvers: dba"
    )
    [block] = body["blocks"]
    assert block["type"] == "section"
    assert block["text"]["type"] == "mrkdwn"
    assert "```DROP TABLE t```" in block["text"]["text"]
    h = body["hoopfast"]
    assert h["event"] == "review.created"
    assert h["review_id"] == "R-abc"
    assert h["kind"] == STATEMENT_REVIEW
    assert h["status"] == PENDING
    assert h["requester"] == "alice"
    assert h["connection"] == "app"
    assert h["statement"] == "DROP TABLE t"
    assert h["statement_truncated"] is False
    assert h["statement_hash"] == hashlib.sha256(b"DROP TABLE t").hexdigest()
    assert h["rule"] == "class:ddl"
    assert h["approvers"] == ["dba"]
    assert h["min_approvals"] == 1
    assert h["approvals"] == 0
    assert h["decided_by"] is None
    assert h["break_glass"] is False
    assert h["created_at"] == T0
    assert h["expires_at"] == T0 + 900
    for key in ("role", "duration", "reason"):
        assert key in h
    # JSON-clean and compact.
    assert json.loads(encode_body(body)) == body


def test_body_escapes_user_text_and_cuts_long_statements() -> None:
    statement = "SELECT '<!channel>' & `x` <@U1>\n  FROM t WHERE a > 1 " + "x" * 10_000
    r = review(requester="<!here|bob>", statement=statement, reason="see <https://evil|docs>")
    body = webhook_body("review.created", r)
    text = body["text"]
    assert "\n" not in text
    assert "<" not in text and ">" not in text
    assert "&lt;!here|bob&gt;" in text
    assert "&lt;!channel&gt;' &amp; \u02cbx\u02cb &lt;@U1&gt; FROM t WHERE a &gt; 1" in text
    assert "&lt;https://evil|docs&gt;" in text
    assert len(text) < 1000
    details = body["blocks"][0]["text"]["text"]
    assert "<" not in details and ">" not in details
    assert len(details) < 3000  # Slack's section text limit
    h = body["hoopfast"]
    assert h["statement"] == statement[:STATEMENT_LIMIT]
    assert h["statement_truncated"] is True
    assert h["statement_hash"] == hashlib.sha256(statement.encode()).hexdigest()
    assert h["requester"] == "<!here|bob>"  # structured fields are raw


def test_escape_never_splits_an_entity() -> None:
    for n in range(1, 40):
        body = webhook_body("review.created", review(statement="&" * 5000 + "<" * n))
        details = body["blocks"][0]["text"]["text"]
        code = details.split("```")[1]
        assert code.endswith("…")
        assert code[:-1].replace("&amp;", "") == ""


def test_body_for_access_and_decisions() -> None:
    created = webhook_body("access.created", access_review())
    assert created["text"] == (
        "hoopfast: review R-acc on connection app needs approval: alice asks for role admin"
        " for 1h30m; reason: incident 42; approvers: dba, sre (2 approvals needed)"
    )
    approved = access_review(
        status=APPROVED,
        decisions=(
            Decision("bob", "approve", "", T0 + 10),
            Decision("carol", "approve", "ok", T0 + 20),
        ),
        decided_at=T0 + 20,
        granted_until=T0 + 20 + 5400,
    )
    body = webhook_body("review.approved", approved)
    assert body["text"].startswith(
        "hoopfast: review R-acc on connection app approved by carol: alice asks for role admin"
        " for 1h30m (until 2023-11-14 "
    )
    h = body["hoopfast"]
    assert h["approvals"] == 2
    assert h["approved_by"] == ["bob", "carol"]
    assert h["decided_by"] == "carol"
    assert h["granted_until"] == T0 + 5420
    rejected = review(
        status=REJECTED, decisions=(Decision("bob", "reject", "not <today>", T0 + 5),)
    )
    body = webhook_body("review.rejected", rejected)
    assert "rejected by bob" in body["text"]
    assert body["text"].endswith("; reason: not &lt;today&gt;")
    assert "*Rejected by:* bob: not &lt;today&gt;" in body["blocks"][0]["text"]["text"]
    forced = review(
        status=APPROVED, break_glass=True, decisions=(Decision("eve", "force", "outage", T0),)
    )
    body = webhook_body("review.force_approved", forced)
    assert "force-approved (break-glass) by eve" in body["text"]
    assert body["hoopfast"]["break_glass"] is True
    # Unknown events pass through.
    assert webhook_body("review.used", review())["hoopfast"]["event"] == "review.used"


# -- signatures --------------------------------------------------------------------


def test_verify_signature() -> None:
    key = SECRET.encode()
    body = b'{"a":1}'
    sig = sign(key, int(T0), body)
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    ts = str(int(T0))
    assert verify_signature(key, ts, body, sig, now=T0)
    assert verify_signature(SECRET, ts, body, sig, now=T0 + 299)
    assert not verify_signature(key, ts, body, sig, now=T0 + 301)  # replayed later
    assert not verify_signature(key, ts, body, sig, now=T0 - 301)
    assert not verify_signature(b"x" * 32, ts, body, sig, now=T0)
    assert not verify_signature(key, ts, b'{"a":2}', sig, now=T0)
    assert not verify_signature(key, str(int(T0) + 1), body, sig, now=T0)
    assert not verify_signature(key, "1.7e9", body, sig, now=T0)
    assert not verify_signature(key, ts, body, "v1=" + "0" * 64, now=T0)
    assert not verify_signature(key, ts, body, sig.upper(), now=T0)
    assert not verify_signature(key, ts, body, "v1=é", now=T0)
    # Several signatures (key rotation): any one valid one is enough.
    assert verify_signature(key, ts, body, f"v1={'0' * 64}, {sig}", now=T0)


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=T0) == 20.0


def test_backoff_is_exponential_jittered_and_capped(secret_env: None) -> None:
    n = notifier("http://127.0.0.1:9/hook", backoff_base=0.5, backoff_cap=30.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 30.0), (20, 30.0)]:
        for _ in range(20):
            assert ceiling / 2 <= n.backoff(attempt) <= ceiling
    assert n.backoff(1, retry_after=7) == 7
    assert n.backoff(1, retry_after=300) == 30.0
    run(n.close)


def test_redacted_url() -> None:
    assert (
        redacted_url("https://u:pw@hooks.slack.com/services/T0/B0/XYZ?token=q#f")
        == "https://hooks.slack.com"
    )
    assert redacted_url("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
    assert redacted_url("http://[::1]:8080/x") == "http://[::1]:8080"


def test_an_invalid_webhook_url_is_not_shown() -> None:
    """The URL of a Slack-style webhook is its secret: a configuration error
    about it names the scheme and host at most."""
    import pydantic

    for url, shown in (
        ("http://hooks.slack.com/services/T0000/B0000/XXXXsecret", "http://hooks.slack.com/..."),
        ("hooks.slack.com/services/T0000/B0000/XXXXsecret", "(not shown)"),
    ):
        with pytest.raises(pydantic.ValidationError) as e:
            Webhook(url=url, secret=SecretRef(env=SECRET_ENV))
        # (The configuration loader shows pydantic's messages without the input.)
        message = " ".join(err["msg"] for err in e.value.errors(include_input=False))
        assert "XXXXsecret" not in message and shown in message


def test_short_or_missing_secret_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "sh0rt-but-secret-value")
    with pytest.raises(ConfigurationError) as e:
        notifier("http://127.0.0.1:9/hook")
    assert "notifications.webhook.secret" in str(e.value)
    assert "32 bytes" in str(e.value)
    assert "sh0rt-but-secret-value" not in str(e.value)
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigurationError, match=r"notifications\.webhook\.secret"):
        notifier("http://127.0.0.1:9/hook")


def test_null_notifier() -> None:
    async def main() -> None:
        await NO_NOTIFIER.review_event("review.created", review())
        await NO_NOTIFIER.close()

    run(main)


# -- delivery ----------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_delivery_is_signed(secret_env: None, loop: str) -> None:
    r = review()

    async def main() -> Received:
        async with Receiver() as rx:
            n = notifier(rx.url("/hook/path"))
            await n.review_event("review.created", r)
            assert await n.drain(5)
            await n.close()
            assert n.delivered == 1
            [got] = rx.requests
            return got

    got = run(main, uvloop.new_event_loop if loop == "uvloop" else None)
    assert got.method == "POST"
    assert got.path == "/hook/path"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-hoopfast-event"] == "review.created"
    assert len(got.headers["x-hoopfast-delivery"]) == 32
    assert got.headers["user-agent"].startswith("hoopfast/")
    ts = int(got.headers["x-hoopfast-timestamp"])
    assert abs(ts - time.time()) < 10
    assert got.json == webhook_body("review.created", r)
    assert got.verifies()
    assert not got.verifies(secret="another-secret-of-enough-length-0123456789")
    assert not verify_signature(
        SECRET.encode(),
        str(ts),
        got.body.replace(b"alice", b"mallory"),
        got.headers["x-hoopfast-signature"],
    )
    assert not got.verifies(now=ts + 301)  # replayed five minutes later


def test_retries_5xx_with_one_delivery_id(
    secret_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> list[Received]:
        async with Receiver([(500, {}), (502, {}), (503, {})]) as rx:
            n = notifier(rx.url(), attempts=5)
            await n.review_event("review.created", review())
            await n.review_event("review.approved", review(status=APPROVED))
            assert await n.drain(5)
            await n.close()
            assert (n.delivered, n.failed) == (2, 0)
            return rx.requests

    requests = run(main)
    assert len(requests) == 5
    first = {r.headers["x-hoopfast-delivery"] for r in requests[:4]}
    assert len(first) == 1
    assert requests[4].headers["x-hoopfast-delivery"] not in first
    assert [r.headers["x-hoopfast-event"] for r in requests] == ["review.created"] * 4 + [
        "review.approved"
    ]
    assert all(r.verifies() for r in requests)
    assert len({r.body for r in requests[:4]}) == 1
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 3
    assert "attempt 1/5 failed (HTTP 500)" in warnings[0]


def test_429_retry_after_is_honoured(secret_env: None) -> None:
    async def main() -> list[Received]:
        async with Receiver([(429, {"Retry-After": "1"})]) as rx:
            n = notifier(rx.url(), backoff_cap=5.0)
            await n.review_event("review.created", review())
            assert await n.drain(5)
            await n.close()
            return rx.requests

    first, second = run(main)
    assert 0.95 <= second.at - first.at < 3


def test_retry_after_is_capped(secret_env: None) -> None:
    async def main() -> list[Received]:
        async with Receiver([(503, {"Retry-After": "3600"})]) as rx:
            n = notifier(rx.url(), backoff_cap=0.2)
            await n.review_event("review.created", review())
            assert await n.drain(5)
            await n.close()
            return rx.requests

    first, second = run(main)
    assert 0.15 <= second.at - first.at < 1


def test_4xx_is_not_retried(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[Received]:
        async with Receiver([(400, {}), (408, {})]) as rx:
            n = notifier(rx.url("/services/T0/B0/PATHSECRET"), attempts=5)
            await n.review_event("review.created", review(review_id="R-1"))
            await n.review_event("review.created", review(review_id="R-2"))
            assert await n.drain(5)
            await n.close()
            assert (n.delivered, n.failed) == (1, 1)
            return rx.requests

    requests = run(main)
    # R-1 once (400), R-2 twice (408 is a timeout: retried).
    assert [r.json["hoopfast"]["review_id"] for r in requests] == ["R-1", "R-2", "R-2"]
    [error] = messages(caplog, logging.ERROR)
    assert "review.created for review R-1" in error
    assert "HTTP 400 (not retried)" in error
    assert "PATHSECRET" not in caplog.text


def test_unreachable_gives_up_without_leaking(
    secret_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    url = f"http://user:pAsSwOrD@127.0.0.1:{port}/services/T0/B0/PATHSECRET?token=QUERYSECRET"

    async def main() -> WebhookNotifier:
        n = notifier(url, attempts=3, backoff_base=0.4, backoff_cap=0.4)
        started = time.monotonic()
        await n.review_event("review.expired", review(review_id="R-gone"))
        # Never waits for the network: 3 attempts take two back-offs of up to
        # 0.4 s (a margin, not 0.05 flat: a loaded CI host can pause a
        # thread for that long).
        assert time.monotonic() - started < 0.2
        assert await n.drain(10)
        await n.close()
        return n

    n = run(main)
    assert (n.delivered, n.failed) == (0, 1)
    [error] = messages(caplog, logging.ERROR)
    assert "review.expired" in error and "R-gone" in error
    assert f"http://127.0.0.1:{port}" in error
    assert "after 3 attempt(s): ConnectError" in error
    assert len(messages(caplog, logging.WARNING)) == 2
    for leak in ("PATHSECRET", "QUERYSECRET", "pAsSwOrD", "user", SECRET, "/services"):
        assert leak not in caplog.text


def test_httpx_request_log_is_redacted(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with Receiver() as rx:
            n = notifier(rx.url("/services/T0/B0/PATHSECRET"))
            await n.review_event("review.created", review())
            assert await n.drain(5)
            await n.close()

    run(main)
    httpx_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("HTTP Request: POST http://127.0.0.1:" in line for line in httpx_lines)
    assert "PATHSECRET" not in caplog.text


def test_order_is_preserved(secret_env: None) -> None:
    async def main() -> list[str]:
        async with Receiver([(500, {})] * 3, delay=0.002) as rx:
            n = notifier(rx.url(), attempts=5)
            for i in range(30):
                await n.review_event("review.created", review(review_id=f"R-{i}"))
                if i % 7 == 0:
                    await asyncio.sleep(0.01)
            assert await n.drain(10)
            await n.close()
            return [r.json["hoopfast"]["review_id"] for r in rx.requests]

    ids = run(main)
    assert list(dict.fromkeys(ids)) == [f"R-{i}" for i in range(30)]
    assert len(ids) == 33


def test_full_queue_drops_oldest(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, list[str]]:
        async with Receiver() as rx:
            n = notifier(rx.url(), queue_limit=3)
            # No await yields to the loop in between: the sender has not run yet.
            for i in range(5):
                await n.review_event("review.created", review(review_id=f"R-{i}"))
            assert n.pending == 3
            assert await n.drain(5)
            await n.close()
            return n.dropped, [r.json["hoopfast"]["review_id"] for r in rx.requests]

    dropped, ids = run(main)
    assert dropped == 2
    assert ids == ["R-2", "R-3", "R-4"]
    [warning] = messages(caplog, logging.WARNING)
    assert "queue full" in warning and "R-0" in warning


def test_close_flushes_pending(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[str]:
        async with Receiver(delay=0.05) as rx:
            n = notifier(rx.url())
            for i in range(5):
                await n.review_event("review.created", review(review_id=f"R-{i}"))
            await n.close()
            await n.review_event("review.created", review(review_id="R-late"))
            return [r.json["hoopfast"]["review_id"] for r in rx.requests]

    assert run(main) == [f"R-{i}" for i in range(5)]
    assert any("notifier closed" in m for m in messages(caplog, logging.WARNING))


def test_close_gives_up_after_grace(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> float:
        async with Receiver([(500, {})] * 100) as rx:
            n = notifier(
                rx.url(), attempts=20, backoff_base=10.0, backoff_cap=10.0, close_grace=0.3
            )
            await n.review_event("review.created", review(review_id="R-1"))
            await n.review_event("review.created", review(review_id="R-2"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await n.close()
            return time.monotonic() - started

    took = run(main)
    assert 0.25 <= took < 2
    assert any(
        "2 notification(s) to http://127.0.0.1:" in m and "not delivered" in m
        for m in messages(caplog, logging.WARNING)
    )
