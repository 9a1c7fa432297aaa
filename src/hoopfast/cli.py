"""The ``hoopfast`` command: serve · check-config · token · version · demo · login · connect
· logout · audit · review · request."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hoopfast import __version__
from hoopfast.auditcli import add_audit_parser
from hoopfast.config import load_config, parse_duration
from hoopfast.errors import ConfigurationError
from hoopfast.reviewcli import add_request_parser, add_review_parser
from hoopfast.settings import Settings

if TYPE_CHECKING:
    from hoopfast.identity.oauth import DeviceAuthorization, LoginError
    from hoopfast.identity.tokenstore import StoredToken, TokenStore


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        for err in e.errors(include_url=False, include_input=False):
            name = "HOOPFAST_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"hoopfast: {name}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_version(args: argparse.Namespace) -> int:
    try:
        from hoopfast.core import IMPLEMENTATION
    except ImportError as e:
        print(f"hoopfast {__version__}\nimplementation: unavailable ({e})")
        return 1
    print(f"hoopfast {__version__}\nimplementation: {IMPLEMENTATION}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hoopfast.serve import install_event_loop, serve

    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_event_loop()
    try:
        asyncio.run(serve(settings))
    except ConfigurationError as e:
        print(f"hoopfast: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"hoopfast: cannot listen on {settings.pg_listen}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else _settings().config
    try:
        config = load_config(path)
    except ConfigurationError as e:
        print(e, file=sys.stderr)
        return 1
    problems = []
    for name, conn in config.connections.items():
        if conn.password is not None and conn.password.env is None:
            assert conn.password.file is not None
            if not conn.password.file.exists():
                problems.append(
                    f"connections.{name}.password.file: {conn.password.file} does not exist"
                )
    if config.identity.jwks_file is not None and not config.identity.jwks_file.exists():
        problems.append(f"identity.jwks_file: {config.identity.jwks_file} does not exist")
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: OK ({len(config.connections)} connection(s))")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    from hoopfast.identity.devissuer import AUDIENCE, ISSUER, DevIssuer

    issuer = DevIssuer(Path(args.state_dir) if args.state_dir else _settings().state_dir)
    issuer.write_jwks()
    print(
        issuer.issue(
            args.sub,
            args.group,
            parse_duration(args.ttl),
            audience=args.aud or AUDIENCE,
            issuer=args.iss or ISSUER,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hoopfast.demo import run_demo

    return run_demo(Path(args.dir))


def _token_store(args: argparse.Namespace) -> TokenStore:
    from hoopfast.identity.tokenstore import TokenStore

    return TokenStore.at(args.token_file)


def _login_failed(command: str, error: LoginError) -> int:
    print(f"hoopfast {command}: {error}", file=sys.stderr)
    return error.exit_code


def _describe_expiry(token: StoredToken) -> str:
    import time

    if token.expires_at is None:
        return "with no known expiry"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(token.expires_at))
    return f"valid until {when}"


def cmd_login(args: argparse.Namespace) -> int:
    from hoopfast.identity.login import ClientSettings, device_login
    from hoopfast.identity.oauth import LoginError
    from hoopfast.identity.tokenstore import token_warnings

    def prompt(device: DeviceAuthorization) -> None:
        print(device.prompt(), file=sys.stderr, flush=True)

    try:
        client = ClientSettings.resolve(
            issuer=args.issuer,
            client_id=args.client_id,
            client_secret=args.client_secret,
            scope=args.scope,
            audience=args.audience,
            use_id_token=True if args.use_id_token else None,
        )
        store = _token_store(args)
        token = device_login(client, on_prompt=prompt)
        store.put(token)
    except LoginError as e:
        return _login_failed("login", e)
    except KeyboardInterrupt:
        print("hoopfast login: cancelled", file=sys.stderr)
        return 130
    who = f" as {token.username}" if token.username else ""
    print(
        f"Logged in to {token.issuer}{who}; the {token.kind.replace('_', ' ')} is "
        f"{_describe_expiry(token)}{' (refreshable)' if token.refresh_token else ''}.\n"
        f"Stored in {store.path}.",
        file=sys.stderr,
    )
    for warning in token_warnings(token):
        print(f"hoopfast login: warning: {warning}", file=sys.stderr)
    if args.print:
        print(token.token)
    return 0


_CONNECT_USAGE = "hoopfast connect CONNECTION [options] [-- psql arguments]"


def _connect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="the gateway (default: $HOOPFAST_GATEWAY_HOST or 127.0.0.1)")
    parser.add_argument("--port", help="its port (default: $HOOPFAST_GATEWAY_PORT or 15432)")
    parser.add_argument(
        "--user", help="user name to show (default: the token's; the gateway uses the token)"
    )
    parser.add_argument("--sslmode", default="require", help="libpq sslmode (default: require)")
    _login_selection(parser)


def _login_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--issuer", help="which login to use (default: $HOOPFAST_LOGIN_ISSUER, or the only one)"
    )
    parser.add_argument("--client-id", help="default: $HOOPFAST_LOGIN_CLIENT_ID")
    parser.add_argument("--token-file", help="default: $HOOPFAST_TOKEN_FILE or ~/.config/...")


def cmd_connect(args: argparse.Namespace) -> int:
    from hoopfast.identity.login import exec_psql, psql_command
    from hoopfast.identity.oauth import LoginError
    from hoopfast.identity.tokenstore import fresh_token

    # CONNECTION and options after it run up to a "--" that starts psql's own
    # arguments (argparse alone cannot split them: it eats the first "--").
    rest: list[str] = args.rest
    psql_args: list[str] = []
    if "--" in rest:
        cut = rest.index("--")
        rest, psql_args = rest[:cut], rest[cut + 1 :]
    options = argparse.ArgumentParser(prog="hoopfast connect", usage=_CONNECT_USAGE)
    _connect_options(options)
    options.add_argument("connection")
    options.parse_args(rest, namespace=args)

    def warn(message: str) -> None:
        print(f"hoopfast connect: warning: {message}", file=sys.stderr)

    try:
        store = _token_store(args)
        token = fresh_token(store, store.chosen(args.issuer, args.client_id), warn=warn)
        command = psql_command(
            args.connection,
            token,
            host=args.host,
            port=args.port,
            user=args.user,
            sslmode=args.sslmode,
            extra_args=psql_args,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        exec_psql(command)
    except LoginError as e:
        return _login_failed("connect", e)


def cmd_logout(args: argparse.Namespace) -> int:
    from hoopfast.identity.oauth import LoginError

    try:
        store = _token_store(args)
        if args.all:
            count = store.clear()
            print(f"Removed {count} stored login(s) from {store.path}.", file=sys.stderr)
            return 0
        token = store.chosen(args.issuer, args.client_id)
        store.delete(token.issuer, token.client_id)
    except LoginError as e:
        return _login_failed("logout", e)
    print(f"Logged out of {token.issuer} (client {token.client_id}).", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hoopfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("version", help="print the version and the active implementation").set_defaults(
        func=cmd_version
    )
    sub.add_parser(
        "serve", help="run the gateway (settings from HOOPFAST_* variables)"
    ).set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate the TOML configuration")
    check.add_argument("file", nargs="?", help="default: $HOOPFAST_CONFIG")
    check.set_defaults(func=cmd_check_config)

    token = sub.add_parser("token", help="development token issuer")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    issue = token_sub.add_parser("issue", help="mint a token from the local development issuer")
    issue.add_argument("--sub", required=True, help="the person")
    issue.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    issue.add_argument("--ttl", default="15m", help="lifetime, e.g. 15m, 1h (default 15m)")
    issue.add_argument("--aud", help="audience (default: hoopfast)")
    issue.add_argument("--iss", help="issuer (default: hoopfast-dev)")
    issue.add_argument("--state-dir", help="default: $HOOPFAST_STATE_DIR")
    issue.set_defaults(func=cmd_token_issue)

    demo = sub.add_parser("demo", help="a throwaway cluster, sample data and the gateway")
    demo.add_argument("--dir", default=".hoopfast/demo", help="where the demo keeps its files")
    demo.set_defaults(func=cmd_demo)

    login = sub.add_parser(
        "login",
        help="get a token from the OIDC provider (device authorization grant)",
        description="Log in with the OAuth 2.0 device authorization grant and store the token. "
        "Instructions go to stderr; see docs/login.md.",
    )
    login.add_argument("--issuer", help="the OIDC issuer URL (default: $HOOPFAST_LOGIN_ISSUER)")
    login.add_argument("--client-id", help="the public client (default: $HOOPFAST_LOGIN_CLIENT_ID)")
    login.add_argument(
        "--client-secret",
        help="only for providers that want one from device clients, e.g. Google "
        "(default: $HOOPFAST_LOGIN_CLIENT_SECRET)",
    )
    login.add_argument(
        "--scope",
        help="scopes to ask for (default: $HOOPFAST_LOGIN_SCOPE or "
        "'openid profile email offline_access')",
    )
    login.add_argument(
        "--audience", help="audience parameter some providers need (Auth0, Okta custom servers)"
    )
    login.add_argument(
        "--use-id-token",
        action="store_true",
        help="present the id_token instead of the access token (e.g. Google, whose access "
        "tokens are opaque; default: $HOOPFAST_LOGIN_USE_ID_TOKEN)",
    )
    login.add_argument("--token-file", help="default: $HOOPFAST_TOKEN_FILE or ~/.config/...")
    login.add_argument(
        "--print", action="store_true", help="also print the token to stdout (for scripts)"
    )
    login.set_defaults(func=cmd_login)

    connect = sub.add_parser(
        "connect",
        help="run psql against the gateway with the stored token",
        usage=_CONNECT_USAGE,
        description="Run psql against the gateway; the token goes in PGPASSWORD, refreshed "
        "first if it is about to expire.",
    )
    _connect_options(connect)
    connect.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="CONNECTION [options] [-- psql arguments]",
        help="the gateway connection (the database name); psql's own arguments follow --",
    )
    connect.set_defaults(func=cmd_connect)

    logout = sub.add_parser("logout", help="forget a stored token")
    _login_selection(logout)
    logout.add_argument("--all", action="store_true", help="forget every stored token")
    logout.set_defaults(func=cmd_logout)
    add_audit_parser(sub)
    add_review_parser(sub)
    add_request_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
