"""Startup parameters: which run-time settings a client asks the server to
apply at connection time, so the policy sees them as it sees ``SET``.

PostgreSQL applies every startup parameter other than ``user``, ``database``,
``replication`` and ``options`` as a setting (``role=admin`` in the startup
packet is a ``SET ROLE``), and ``options`` carries command-line switches:
``-c name=value`` or ``--name=value`` (src/backend/postmaster/postmaster.c
pg_split_opts; tcop/postgres.c process_postgres_switches).
"""

from __future__ import annotations

#: Startup parameters that are not settings.
NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})


class OptionsError(ValueError):
    """``options`` holds something other than settings."""


def split_options(value: str) -> list[str]:
    """pg_split_opts: whitespace separates; a backslash takes the next
    character literally (so ``\\ `` is a space inside a value)."""
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    i = 0
    while i < len(value):
        ch = value[i]
        if ch in " \t\n\r\f\v":
            if in_arg:
                args.append("".join(current))
                current = []
                in_arg = False
        elif ch == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            in_arg = True
            i += 1
        else:
            current.append(ch)
            in_arg = True
        i += 1
    if in_arg:
        args.append("".join(current))
    return args


def parse_options(value: str) -> dict[str, str]:
    """The settings in an ``options`` value. Only ``-c name=value``,
    ``-cname=value`` and ``--name=value`` are accepted: PostgreSQL's other
    switches either need a superuser or set nothing a client should."""
    settings: dict[str, str] = {}
    args = split_options(value)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-c":
            if i + 1 >= len(args):
                raise OptionsError("-c without a setting")
            pair = args[i + 1]
            i += 2
        elif arg.startswith("-c") or arg.startswith("--"):
            pair = arg[2:]
            i += 1
        else:
            raise OptionsError(f"unsupported switch {arg[:20]!r} in options (use -c name=value)")
        name, sep, setting = pair.partition("=")
        if not sep or not name:
            raise OptionsError(f"expected name=value in options, got {pair[:40]!r}")
        # ParseLongOption: dashes in the name are underscores.
        settings[name.replace("-", "_").lower()] = setting
    return settings


def requested_settings(params: dict[str, str]) -> dict[str, str]:
    """Every setting the startup packet asks for, names lowercased (setting
    names are case-insensitive); ``options`` first, as PostgreSQL applies it
    first and the other parameters override it."""
    settings = parse_options(params.get("options", ""))
    for name, value in params.items():
        if name not in NOT_SETTINGS:
            settings[name.lower()] = value
    return settings
