"""``hoopfast login`` / ``connect`` / ``logout`` against a real (local HTTP) provider.

The device authorization grant runs end to end over HTTP against
tests/fake_oidc.py, with a background thread in the role of the person who
approves in a browser. ``connect`` really execs: a fake ``psql`` first on PATH
records its argv and environment.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hoopfast.cli import main
from hoopfast.config import Identity
from hoopfast.identity import login
from hoopfast.identity.login import ClientSettings
from hoopfast.identity.oauth import (
    AccessDenied,
    DeviceCodeExpired,
    discover_provider,
    poll_for_token,
    start_device_authorization,
)
from hoopfast.identity.tokens import TokenValidator
from hoopfast.identity.tokenstore import StoredToken, TokenStore, fresh_token, unverified_claims
from tests.fake_oidc import FakeOIDC

CLIENT = FakeOIDC.CLIENT_ID


@pytest.fixture
def token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: FakeOIDC) -> Path:
    """A clean environment that points login at the fake provider."""
    for name in list(os.environ):
        if name.startswith(("HOOPFAST_LOGIN_", "HOOPFAST_GATEWAY_", "HOOPFAST_TOKEN")):
            monkeypatch.delenv(name)
    path = tmp_path / "config" / "hoopfast" / "tokens.json"
    monkeypatch.setenv("HOOPFAST_TOKEN_FILE", str(path))
    monkeypatch.setenv("HOOPFAST_LOGIN_ISSUER", provider.issuer)
    monkeypatch.setenv("HOOPFAST_LOGIN_CLIENT_ID", CLIENT)
    return path


def as_person(provider: FakeOIDC, action: Callable[[str], None]) -> Person:
    """Act on the next user code from another thread, as someone at a browser would."""
    person = Person()

    def run() -> None:
        try:
            code = provider.next_user_code()
            person.user_codes.append(code)
            action(code)
        except BaseException as e:  # pragma: no cover - reported by the test
            person.errors.append(e)

    person.thread = threading.Thread(target=run, daemon=True)
    person.thread.start()
    return person


class Person:
    def __init__(self) -> None:
        self.user_codes: list[str] = []
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(5)
        assert not self.errors, self.errors


def approve(provider: FakeOIDC, **kwargs: Any) -> Person:
    return as_person(provider, lambda code: provider.approve(code, **kwargs))


def run_login(*args: str) -> int:
    return main(["login", *args])


def stored(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def the_entry(path: Path, provider: FakeOIDC, client: str = CLIENT) -> dict[str, Any]:
    entry: dict[str, Any] = stored(path)["tokens"][f"{provider.issuer}#{client}"]
    return entry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the device flow


def test_login_end_to_end(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    person = approve(provider, sub="alice", groups=["analysts", "dba"])
    assert run_login() == 0
    person.join()

    out, err = capsys.readouterr()
    entry = the_entry(token_file, provider)
    token = entry["token"]
    device_post = provider.posts[0]
    assert device_post[0].endswith("/device")
    assert device_post[1] == {"client_id": CLIENT, "scope": login.DEFAULT_SCOPE}
    (user_code,) = person.user_codes
    assert user_code in err and f"activate?user_code={user_code}" in err
    assert "Logged in to" in err and "as alice" in err
    # The token and the refresh token appear nowhere on the terminal.
    assert out == ""
    assert token not in err and entry["refresh_token"] not in err

    assert entry["kind"] == "access_token"
    assert entry["issuer"] == provider.issuer and entry["client_id"] == CLIENT
    assert entry["expires_at"] == unverified_claims(token)["exp"]
    assert entry["refresh_token"] in provider.refresh_tokens
    assert entry["username"] == "alice"
    assert "client_secret" not in entry
    assert mode(token_file) == 0o600
    assert mode(token_file.parent) == 0o700 and mode(token_file.parent.parent) == 0o700
    # Only the token file and its lock: no temporary files left behind.
    assert sorted(p.name for p in token_file.parent.iterdir()) == [
        "tokens.json",
        "tokens.json.lock",
    ]

    # The gateway's own validator accepts what was stored.
    validator = TokenValidator(
        Identity(issuer=provider.issuer, audience=FakeOIDC.AUDIENCE, discovery=True)
    )
    try:
        principal = validator.validate(token)
    finally:
        validator.close()
    assert principal.subject == "alice"
    assert set(principal.groups) == {"analysts", "dba"}


def test_login_print_writes_only_the_token_to_stdout(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    approve(provider)
    assert run_login("--print") == 0
    out, err = capsys.readouterr()
    token = the_entry(token_file, provider)["token"]
    assert out == token + "\n"
    assert token not in err


def test_options_override_the_environment_and_reach_the_provider(
    provider: FakeOIDC, token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOPFAST_LOGIN_CLIENT_ID", "not-registered")
    monkeypatch.setenv("HOOPFAST_LOGIN_SCOPE", "openid")
    other = tmp_path / "elsewhere.json"
    approve(provider)
    assert (
        run_login(
            "--client-id",
            CLIENT,
            "--scope",
            "openid groups",
            "--audience",
            "api://gateway",
            "--token-file",
            str(other),
        )
        == 0
    )
    assert provider.posts[0][1] == {
        "client_id": CLIENT,
        "scope": "openid groups",
        "audience": "api://gateway",
    }
    assert not token_file.exists()
    entry = the_entry(other, provider)
    assert unverified_claims(entry["token"])["aud"] == "api://gateway"
    assert entry["scope"] == "openid groups"


def test_default_token_file_follows_xdg(
    provider: FakeOIDC, token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOPFAST_TOKEN_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    approve(provider)
    assert run_login() == 0
    path = tmp_path / "xdg" / "hoopfast" / "tokens.json"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for xdg in (None, "relative/path"):
        environ = {"XDG_CONFIG_HOME": xdg} if xdg else {}
        assert login.default_token_file(environ) == home / ".config" / "hoopfast" / "tokens.json"
    assert login.default_token_file({"HOOPFAST_TOKEN_FILE": "/x/t.json"}) == Path("/x/t.json")


@pytest.mark.parametrize("error", ["access_denied", "authorization_declined"])
def test_denied_login(
    error: str, provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.deny_error = error
    as_person(provider, provider.deny)
    assert run_login() == login.EXIT_DENIED
    assert "denied" in capsys.readouterr().err
    assert not token_file.exists()


def test_code_expired_at_the_provider(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_person(provider, provider.expire)
    assert run_login() == login.EXIT_EXPIRED
    assert "expired" in capsys.readouterr().err
    assert not token_file.exists()


class FakeTime:
    """An injectable clock whose sleep advances it (and can act at the Nth sleep)."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))

    def clock(self) -> float:
        return self.now


def start(provider: FakeOIDC, **settings: Any) -> tuple[Any, ClientSettings, Any]:
    client = ClientSettings(issuer=provider.issuer, client_id=CLIENT, **settings)
    endpoints = discover_provider(provider.issuer)
    device = start_device_authorization(endpoints, client)
    return endpoints, client, device


def test_polling_waits_the_interval_and_slows_down_for_good(provider: FakeOIDC) -> None:
    provider.device_interval = 2
    provider.slow_down_polls = 1
    endpoints, client, device = start(provider)
    assert device.interval == 2

    def person(n: int) -> None:
        if n == 4:
            provider.approve(device.user_code)

    t = FakeTime(person)
    response = poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)
    # slow_down adds 5 s to that poll and every later one (RFC 8628 §3.5).
    assert t.sleeps == [2, 7, 7, 7]
    assert provider.polls() == 4
    assert unverified_claims(response.access_token)["sub"] == "alice"
    assert response.refresh_token and response.id_token


def test_interval_defaults_to_five_seconds(provider: FakeOIDC) -> None:
    provider.device_interval = None
    endpoints, client, device = start(provider)
    t = FakeTime(lambda n: provider.approve(device.user_code))
    poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [5]


def test_the_code_expires_locally_without_the_provider_saying_so(provider: FakeOIDC) -> None:
    provider.device_interval = 6
    provider.device_expires_in = 10
    endpoints, client, device = start(provider)
    t = FakeTime()
    with pytest.raises(DeviceCodeExpired):
        poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [6, 6] and provider.polls() == 1


def test_network_trouble_backs_off_and_keeps_polling(provider: FakeOIDC) -> None:
    endpoints, client, device = start(provider)
    provider.state = "500"

    def person(n: int) -> None:
        if n == 3:
            provider.state = "up"
            provider.approve(device.user_code)

    t = FakeTime(person)
    poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [0, 1, 2]


def test_denied_and_expired_from_the_library(provider: FakeOIDC) -> None:
    endpoints, client, device = start(provider)
    provider.deny(device.user_code)
    t = FakeTime()
    with pytest.raises(AccessDenied):
        poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)
    endpoints, client, device = start(provider)
    provider.expire(device.user_code)
    with pytest.raises(DeviceCodeExpired):
        poll_for_token(endpoints, client, device, sleep=t.sleep, clock=t.clock)


# --------------------------------------------------------------------------- refusals


def test_discovery_for_another_issuer_is_refused(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.issuer_override = "https://login.example.com/realms/test"
    assert run_login() == login.EXIT_USAGE
    err = capsys.readouterr().err
    assert "names issuer 'https://login.example.com/realms/test'" in err
    assert provider.posts == []


@pytest.mark.parametrize(
    "issuer",
    ["http://login.example.com/realms/test", "ftp://127.0.0.1/x", "login.example.com"],
)
def test_plain_http_only_on_loopback(
    issuer: str, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_login("--issuer", issuer) == login.EXIT_USAGE
    assert "must be an https:// URL" in capsys.readouterr().err


def test_endpoints_in_discovery_must_be_https_too(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.discovery_overrides = {"token_endpoint": "http://login.example.com/token"}
    assert run_login() == login.EXIT_USAGE
    assert "token_endpoint must be an https:// URL" in capsys.readouterr().err
    assert provider.posts == []


def test_provider_without_the_device_grant(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.discovery_overrides = {"device_authorization_endpoint": None}
    assert run_login() == login.EXIT_USAGE
    assert "no device_authorization_endpoint" in capsys.readouterr().err


def test_unknown_client(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_login("--client-id", "nobody") == login.EXIT_ERROR
    assert "invalid_client" in capsys.readouterr().err


def test_provider_down(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.state = "500"
    assert run_login() == login.EXIT_ERROR
    assert "discovery failed" in capsys.readouterr().err


def test_missing_settings(token_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOPFAST_LOGIN_CLIENT_ID")
    assert run_login() == login.EXIT_USAGE
    monkeypatch.delenv("HOOPFAST_LOGIN_ISSUER")
    assert run_login("--client-id", CLIENT) == login.EXIT_USAGE


# --------------------------------------------------------------------------- which token


def test_opaque_access_tokens_call_for_the_id_token(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.opaque_access_tokens = True
    approve(provider)
    assert run_login() == 0
    assert "not a JWT" in capsys.readouterr().err
    entry = the_entry(token_file, provider)
    # An opaque token's expiry comes from expires_in.
    assert abs(entry["expires_at"] - (time.time() + provider.token_ttl)) < 5

    approve(provider, sub="bob")
    assert run_login("--use-id-token") == 0
    assert "not a JWT" not in capsys.readouterr().err
    entry = the_entry(token_file, provider)
    claims = unverified_claims(entry["token"])
    assert entry["kind"] == "id_token"
    assert claims["aud"] == CLIENT and claims["sub"] == "bob"
    assert entry["expires_at"] == claims["exp"]


def test_id_token_requires_openid_scope(
    provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    approve(provider)
    assert run_login("--use-id-token", "--scope", "profile") == login.EXIT_ERROR
    assert "no id_token" in capsys.readouterr().err


def test_client_secret_for_providers_that_want_one(
    provider: FakeOIDC, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.client_secrets[CLIENT] = "not-so-secret"
    assert run_login() == login.EXIT_ERROR
    monkeypatch.setenv("HOOPFAST_LOGIN_CLIENT_SECRET", "not-so-secret")
    approve(provider)
    assert run_login() == 0
    assert all(form.get("client_secret") == "not-so-secret" for _, form in provider.posts[1:])
    # Refreshing (later, without the variable) sends it too.
    monkeypatch.delenv("HOOPFAST_LOGIN_CLIENT_SECRET")
    store = TokenStore(token_file)
    token = store.find()
    renewed = fresh_token(store, token, now=(token.expires_at or 0) + 1)
    assert renewed.token != token.token


# --------------------------------------------------------------------------- the store


def test_store_is_written_atomically_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"version": 1, "tokens": {}}')
    path.chmod(0o644)
    store = TokenStore(path)
    entry = StoredToken(
        issuer="https://a.example", client_id="c", token="t", kind="access_token", expires_at=1.0
    )
    old_umask = os.umask(0)
    try:
        inode = path.stat().st_ino
        store.put(entry)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert store.get("https://a.example", "c") == entry
    assert "t" in repr(entry) and "token='t'" not in repr(entry)  # reprs hide tokens


def test_damaged_store_is_reported(token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file.parent.mkdir(parents=True)
    token_file.write_text("not json")
    assert main(["connect", "orders"]) == login.EXIT_ERROR
    assert "damaged" in capsys.readouterr().err


def test_logout(provider: FakeOIDC, token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provider.clients.add("second-cli")
    approve(provider)
    assert run_login() == 0
    approve(provider)
    assert run_login("--client-id", "second-cli") == 0
    assert len(stored(token_file)["tokens"]) == 2

    assert main(["logout", "--client-id", "second-cli"]) == 0
    assert list(stored(token_file)["tokens"]) == [f"{provider.issuer}#{CLIENT}"]
    assert main(["logout", "--client-id", "second-cli"]) == login.EXIT_NOT_LOGGED_IN
    assert main(["logout"]) == 0
    assert not token_file.exists()
    assert main(["logout"]) == login.EXIT_NOT_LOGGED_IN
    assert "run `hoopfast login`" in capsys.readouterr().err


# --------------------------------------------------------------------------- connect


@pytest.fixture
def fake_psql(tmp_path: Path) -> Path:
    """A ``psql`` that records argv and PGPASSWORD, then exits 7."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "psql"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_PSQL_OUT'], 'w') as f:\n"
        "    json.dump({'argv': sys.argv, 'pgpassword': os.environ.get('PGPASSWORD')}, f)\n"
        "sys.exit(7)\n"
    )
    script.chmod(0o755)
    return bindir


def hoopfast_connect(
    *args: str, bindir: Path, out: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``hoopfast connect`` in a process of its own (it execs psql)."""
    return subprocess.run(
        [sys.executable, "-m", "hoopfast", "connect", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_PSQL_OUT": str(out),
            **(env or {}),
        },
        timeout=60,
    )


def psql_saw(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_connect_execs_psql_with_the_token_in_the_environment(
    provider: FakeOIDC, token_file: Path, fake_psql: Path, tmp_path: Path
) -> None:
    approve(provider, sub="alice")
    assert run_login() == 0
    token = the_entry(token_file, provider)["token"]
    out = tmp_path / "psql.json"

    done = hoopfast_connect(
        "orders",
        "--",
        "-c",
        "select 1",
        bindir=fake_psql,
        out=out,
        env={"HOOPFAST_GATEWAY_HOST": "gw.example.com", "HOOPFAST_GATEWAY_PORT": "6543"},
    )
    assert done.returncode == 7, done.stderr  # psql's own status: the process was replaced
    saw = psql_saw(out)
    assert saw["argv"][1:] == [
        "--dbname",
        "host=gw.example.com port=6543 dbname=orders user=alice sslmode=require",
        "-c",
        "select 1",
    ]
    assert saw["pgpassword"] == token
    assert not any(token in arg for arg in saw["argv"])
    assert token not in done.stdout + done.stderr


def test_connect_options_and_defaults(
    provider: FakeOIDC, token_file: Path, fake_psql: Path, tmp_path: Path
) -> None:
    approve(provider)
    assert run_login() == 0
    out = tmp_path / "psql.json"
    done = hoopfast_connect("my db", bindir=fake_psql, out=out)
    assert done.returncode == 7, done.stderr
    assert psql_saw(out)["argv"][1:] == [
        "--dbname",
        "host=127.0.0.1 port=15432 dbname='my db' user=alice sslmode=require",
    ]
    done = hoopfast_connect(
        "--sslmode",
        "verify-full",
        "orders",
        "--host",
        "::1",
        "--port",
        "5000",
        "--user",
        "o'brien",
        "--",
        "-X",
        bindir=fake_psql,
        out=out,
    )
    assert done.returncode == 7, done.stderr
    assert psql_saw(out)["argv"][1:] == [
        "--dbname",
        r"host=::1 port=5000 dbname=orders user='o\'brien' sslmode=verify-full",
        "-X",
    ]


def test_connect_refreshes_a_token_about_to_expire(
    provider: FakeOIDC, token_file: Path, fake_psql: Path, tmp_path: Path
) -> None:
    provider.token_ttl = 10  # inside the 30 s margin: refreshed before use
    approve(provider, groups=["analysts"])
    assert run_login() == 0
    before = the_entry(token_file, provider)
    out = tmp_path / "psql.json"
    done = hoopfast_connect("orders", bindir=fake_psql, out=out)
    assert done.returncode == 7, done.stderr
    after = the_entry(token_file, provider)
    assert after["token"] != before["token"]
    assert after["refresh_token"] != before["refresh_token"]  # the fake rotates them
    assert psql_saw(out)["pgpassword"] == after["token"]
    assert unverified_claims(after["token"])["groups"] == ["analysts"]
    refresh_posts = [f for _, f in provider.posts if f.get("grant_type") == "refresh_token"]
    assert refresh_posts == [
        {
            "grant_type": "refresh_token",
            "refresh_token": before["refresh_token"],
            "client_id": CLIENT,
        }
    ]
    assert mode(token_file) == 0o600


def test_connect_asks_for_login_when_the_refresh_fails(
    provider: FakeOIDC, token_file: Path, fake_psql: Path, tmp_path: Path
) -> None:
    provider.token_ttl = 0  # expired as soon as issued
    approve(provider)
    assert run_login() == 0
    provider.revoke_refresh_tokens()
    out = tmp_path / "psql.json"
    done = hoopfast_connect("orders", bindir=fake_psql, out=out)
    assert done.returncode == login.EXIT_NOT_LOGGED_IN
    assert "has expired and could not be refreshed" in done.stderr
    assert "invalid_grant" in done.stderr and "run `hoopfast login`" in done.stderr
    assert not out.exists()


def test_connect_without_a_refresh_token(
    provider: FakeOIDC, token_file: Path, fake_psql: Path, tmp_path: Path
) -> None:
    provider.token_ttl = 0
    provider.issue_refresh_tokens = False
    approve(provider)
    assert run_login() == 0
    done = hoopfast_connect("orders", bindir=fake_psql, out=tmp_path / "psql.json")
    assert done.returncode == login.EXIT_NOT_LOGGED_IN
    assert "cannot be refreshed: run `hoopfast login`" in done.stderr


def test_a_valid_token_is_used_if_its_early_refresh_fails(
    provider: FakeOIDC, tmp_path: Path
) -> None:
    provider.state = "500"
    store = TokenStore(tmp_path / "tokens.json")
    token = StoredToken(
        issuer=provider.issuer,
        client_id=CLIENT,
        token="still-good",
        kind="access_token",
        expires_at=1000.0,
        refresh_token="r",
    )
    warnings: list[str] = []
    assert fresh_token(store, token, now=990.0, warn=warnings.append) is token
    assert "could not be refreshed" in warnings[0]
    assert fresh_token(store, token, now=900.0) is token  # not within the margin: no request


def test_connect_without_psql(provider: FakeOIDC, token_file: Path, tmp_path: Path) -> None:
    approve(provider)
    assert run_login() == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "hoopfast", "connect", "orders"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(empty)},
        timeout=60,
    )
    assert done.returncode == login.EXIT_NO_PSQL
    assert "psql was not found" in done.stderr


def test_connect_chooses_among_several_logins(
    provider: FakeOIDC,
    token_file: Path,
    fake_psql: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider.clients.add("second-cli")
    approve(provider, sub="alice")
    assert run_login() == 0
    approve(provider, sub="bob")
    assert run_login("--client-id", "second-cli") == 0
    out = tmp_path / "psql.json"
    env = {"HOOPFAST_LOGIN_ISSUER": "", "HOOPFAST_LOGIN_CLIENT_ID": ""}
    done = hoopfast_connect("orders", bindir=fake_psql, out=out, env=env)
    assert done.returncode == login.EXIT_USAGE and "more than one" in done.stderr
    done = hoopfast_connect(
        "orders", "--client-id", "second-cli", bindir=fake_psql, out=out, env=env
    )
    assert done.returncode == 7, done.stderr
    assert "user=bob" in psql_saw(out)["argv"][2]
