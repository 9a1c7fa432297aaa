"""The ``hoopfast`` command: serve · check-config · token · version · demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from hoopfast import __version__
from hoopfast.config import load_config, parse_duration
from hoopfast.errors import ConfigurationError
from hoopfast.settings import Settings


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
