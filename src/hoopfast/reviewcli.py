"""``hoopfast review`` (list · show · approve · reject · revoke · withdraw ·
force) and ``hoopfast request access``: reviews through the admin API with
the person's own token, so the service's rules (who sees a review, who may
decide, never one's own request) hold on the command line too.

Exit codes: 0 ok, 1 failure (network, server; ``request access --wait``:
the request was not granted), 2 usage, authentication or a refusal (the
API's message is printed). The token is never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from hoopfast.apiclient import (
    EXIT_FAILED,
    Api,
    api_from_args,
    api_options,
    guarded,
    plural,
    positive,
    shown,
    table,
    when,
)
from hoopfast.store.records import STATUSES
from hoopfast.text import duration

__all__ = ["add_request_parser", "add_review_parser", "render_review"]

#: API statuses that are a refusal to explain (exit 2), beyond 401/403/422.
REFUSED = frozenset({400, 404, 409, 410})
#: Statuses after which nothing more happens to a review.
FINAL = frozenset({"used", "rejected", "withdrawn", "expired", "revoked"})
#: The widest a statement is shown in a listing.
WHAT_WIDTH = 60


def _api(args: argparse.Namespace, prog: str) -> Api:
    return api_from_args(args, prog, refused=REFUSED)


def _path(review_id: str, action: str = "") -> str:
    return f"/v1/reviews/{quote(review_id, safe='')}" + (f"/{action}" if action else "")


# --------------------------------------------------------------------------- formatting


def _window(seconds: float | None) -> str:
    """An access window for people: 90 -> 1m30s, 7200 -> 2h."""
    return "-" if seconds is None else duration(seconds)


def _what(review: Mapping[str, Any], width: int = WHAT_WIDTH) -> str:
    if review.get("kind") == "access":
        return f"role {shown(review.get('role'))} for {_window(review.get('duration'))}"
    text = " ".join(shown(review.get("statement")).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _approvals(review: Mapping[str, Any]) -> str:
    return f"{review.get('approvals', 0)}/{review.get('min_approvals', 1)}"


def _status(review: Mapping[str, Any]) -> str:
    status = shown(review.get("status"))
    if review.get("break_glass"):
        status += " (break-glass)"
    return status


def render_review(review: Mapping[str, Any]) -> str:
    """Every field of a review, for ``review show``."""
    kind = review.get("kind")
    out = [f"Review {shown(review.get('id'))}: {kind} review, {_status(review)}"]

    def field(name: str, value: object) -> None:
        out.append(f"  {name:<14}{value}")

    field("requester", shown(review.get("requester")))
    field("connection", shown(review.get("connection")))
    field("reason", shown(review.get("reason")) or "-")
    field("created", when(review.get("created_at")))
    field("expires", when(review.get("expires_at")))
    if kind == "access":
        field("role", shown(review.get("role")))
        field("duration", _window(review.get("duration")))
        field("granted until", when(review.get("granted_until")))
    else:
        field("rule", shown(review.get("rule")) or "-")
        field("mode", shown(review.get("mode")) or "-")
        field("session", shown(review.get("session_id")) or "-")
        field("client", shown(review.get("client_address")) or "-")
        field("sha-256", shown(review.get("statement_hash")))
    approvers = ", ".join(shown(a) for a in review.get("approvers") or []) or "-"
    field("approvers", approvers)
    field("approvals", f"{_approvals(review)} needed distinct approvers")
    field("decided", when(review.get("decided_at")))
    if kind != "access":
        field("used", when(review.get("used_at")))
    field("break-glass", "yes" if review.get("break_glass") else "no")
    if kind != "access":
        out.append("  statement:")
        out += [f"    {line}" for line in shown(review.get("statement")).split("\n")]
        parameters = review.get("parameters")
        if parameters is not None:
            out.append("  parameters:")
            out += [
                f"    ${i} = {'NULL' if v is None else shown(repr(v))}"
                for i, v in enumerate(parameters, 1)
            ]
    decisions = review.get("decisions") or []
    out.append("  decisions:" if decisions else "  decisions:    none")
    for d in decisions:
        who = shown(d.get("actor")) or "(gateway)"
        why = f": {shown(d.get('reason'))}" if d.get("reason") else ""
        out.append(f"    {when(d.get('at'))}  {shown(d.get('action'))} by {who}{why}")
    return "\n".join(out) + "\n"


def _summary(review: Mapping[str, Any]) -> str:
    """One line after a decision or a request."""
    rid = shown(review.get("id"))
    status = review.get("status")
    if status == "pending":
        return f"{rid}: pending, {_approvals(review)} approvals"
    line = f"{rid}: {_status(review)}"
    if status == "approved" and review.get("kind") == "access":
        line += f", role {shown(review.get('role'))} until {when(review.get('granted_until'))}"
    return line


# --------------------------------------------------------------------------- review commands


def cmd_list(args: argparse.Namespace) -> int:
    statuses: list[str] | None
    if args.status:
        statuses = args.status
    elif args.all:
        statuses = None
    else:
        statuses = ["pending"]
    params = {"status": statuses, "kind": args.kind, "connection": args.connection}
    with _api(args, "hoopfast review list") as api:
        listed = api.listing("/v1/reviews", "reviews", params, args.limit, args.json)
    if listed is None:
        return 0
    reviews, more = listed
    rows = [
        [
            shown(r.get("id")),
            shown(r.get("kind")),
            _status(r),
            shown(r.get("requester")),
            shown(r.get("connection")),
            when(r.get("created_at")),
            _approvals(r),
            _what(r),
        ]
        for r in reviews
    ]
    headers = ["ID", "KIND", "STATUS", "REQUESTER", "CONNECTION", "CREATED", "APPROVALS", "WHAT"]
    for line in table(headers, rows):
        print(line)
    which = "" if args.status or args.all else "pending "
    hint = "; more exist: raise --limit" if more else ""
    print(f"({plural(len(reviews), which + 'review')}{hint})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _api(args, "hoopfast review show") as api:
        review = api.get(_path(args.review_id))
    if args.json:
        print(json.dumps(review, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(render_review(review))
    return 0


def _decide(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        body = {"reason": args.reason} if args.reason else {}
        with _api(args, f"hoopfast review {action}") as api:
            review = api.post(_path(args.review_id, action), body)
        print(_summary(review))
        return 0

    return run


# --------------------------------------------------------------------------- request access


def _parse_window(text: str) -> float:
    from hoopfast.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r}")
    return seconds


def _wait(api: Api, review: dict[str, Any], interval: float) -> dict[str, Any]:
    """Poll until the review is decided (approved or final)."""
    print(f"waiting for a decision on {shown(review.get('id'))}...", file=sys.stderr, flush=True)
    while review.get("status") == "pending":
        time.sleep(interval)
        review = api.get(_path(str(review["id"])))
    return review


def cmd_request_access(args: argparse.Namespace) -> int:
    body = {
        "connection": args.connection,
        "role": args.role,
        "duration": args.window,
        "reason": args.reason,
    }
    with _api(args, "hoopfast request access") as api:
        review = api.post("/v1/access-requests", body)
        approvers = ", ".join(shown(a) for a in review.get("approvers") or []) or "-"
        needed = review.get("min_approvals", 1)
        print(
            f"{shown(review.get('id'))}: requested role {shown(review.get('role'))} on "
            f"{shown(review.get('connection'))} for {_window(review.get('duration'))}; "
            f"approvers: {approvers} ({plural(needed, 'approval')} needed)"
        )
        if not args.wait:
            return 0
        review = _wait(api, review, args.poll)
    print(_summary(review))
    return 0 if review.get("status") == "approved" else EXIT_FAILED


# --------------------------------------------------------------------------- the parser


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not an interval in seconds: {text!r}")
    return value


def add_review_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``review`` command group, for :func:`hoopfast.cli.build_parser`."""
    common = api_options()
    review = sub.add_parser(
        "review",
        help="reviews of held statements and access requests: list, show, decide",
        description="See and decide reviews through the admin API with your own token. "
        "Nobody decides on their own request.",
    )
    commands = review.add_subparsers(dest="review_command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list", parents=[common], help="reviews you may see, newest first (default: pending)"
    )
    listing.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        help="only this status (repeatable; default: pending)",
    )
    listing.add_argument("--kind", choices=["statement", "access"], help="only this kind")
    listing.add_argument("--connection", help="only this gateway connection")
    listing.add_argument("--all", action="store_true", help="every status, not only pending")
    listing.add_argument(
        "--limit", type=positive, default=50, help="at most this many (default 50)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=guarded(cmd_list, "hoopfast review list"))

    show = commands.add_parser("show", parents=[common], help="one review, with its decisions")
    show.add_argument("review_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="the review as JSON")
    show.set_defaults(func=guarded(cmd_show, "hoopfast review show"))

    decisions = (
        ("approve", "approve a review (never your own)", False),
        ("reject", "reject a review", True),
        ("revoke", "revoke a pending review, an unused approval or a grant in force", False),
        ("withdraw", "withdraw your own pending request", False),
        ("force", "force-approve alone (break-glass roles only; recorded and flagged)", True),
    )
    for action, text, needs_reason in decisions:
        parser = commands.add_parser(action, parents=[common], help=text)
        parser.add_argument("review_id", metavar="ID")
        parser.add_argument(
            "--reason", required=needs_reason, help="why" + (" (required)" if needs_reason else "")
        )
        parser.set_defaults(func=guarded(_decide(action), f"hoopfast review {action}"))


def add_request_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``request`` command group, for :func:`hoopfast.cli.build_parser`."""
    common = api_options()
    request = sub.add_parser(
        "request",
        help="ask for time-boxed access to a connection",
        description="Ask the approvers of a connection for a role for a while.",
    )
    commands = request.add_subparsers(dest="request_command", required=True, metavar="COMMAND")
    access = commands.add_parser(
        "access",
        parents=[common],
        help="ask for a role on a connection for a while",
        description="Prints the review id and who may approve. With --wait, waits for the "
        "decision: exit 0 when approved, 1 when rejected, revoked, withdrawn or expired.",
    )
    access.add_argument("connection", metavar="CONNECTION")
    access.add_argument("--role", required=True, help="a role the connection lets you request")
    access.add_argument(
        "--for",
        dest="window",
        required=True,
        type=_parse_window,
        metavar="DURATION",
        help="how long, e.g. 30m, 2h",
    )
    access.add_argument("--reason", required=True, help="why (the approvers see it)")
    access.add_argument("--wait", action="store_true", help="wait for the decision")
    access.add_argument(
        "--poll",
        type=_interval,
        default=2.0,
        metavar="SECONDS",
        help="with --wait: seconds between checks (default 2)",
    )
    access.set_defaults(func=guarded(cmd_request_access, "hoopfast request access"))
