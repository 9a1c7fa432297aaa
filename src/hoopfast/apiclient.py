"""What the commands that talk to the admin API share (``hoopfast audit``,
``hoopfast review``, ``hoopfast request``): the httpx client, where the API
and the token come from (--api / $HOOPFAST_API_URL, --token /
$HOOPFAST_TOKEN / the login stored by ``hoopfast login``, --cacert), the
API's explanation of a refusal, exit codes, and text made safe and tidy for
a terminal.

Exit codes: 0 ok, 1 failure (network, server), 2 usage, authentication or a
refusal (the API's message is printed). The token is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from hoopfast.text import shown

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_API_URL",
    "ENV_API_URL",
    "ENV_TOKEN",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "Api",
    "CliError",
    "api_from_args",
    "api_options",
    "guarded",
    "plural",
    "shown",
    "table",
    "when",
]

ENV_API_URL = "HOOPFAST_API_URL"
ENV_TOKEN = "HOOPFAST_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:8080"

EXIT_FAILED = 1
EXIT_USAGE = 2

#: Statuses that mean "you may not" or "not like that" to every command:
#: the message goes to the person and the exit code is 2.
USAGE_STATUSES = frozenset({401, 403, 422})


class CliError(Exception):
    """A command failed; ``exit_code`` says how (1 failure, 2 usage)."""

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILED, *, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        #: The API's HTTP status, when it answered one that failed.
        self.status = status


# --------------------------------------------------------------------------- the API client


def detail(response: httpx.Response) -> str:
    """The API's explanation (FastAPI's ``detail``), as one line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    found = body.get("detail") if isinstance(body, dict) else None
    if isinstance(found, str):
        return found
    if isinstance(found, list):  # request validation errors: [{loc, msg}, ...]
        parts = []
        for item in found:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ())[1:])
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        if parts:
            return "; ".join(parts)
    return response.reason_phrase


def _without_credentials(url: str) -> str:
    """``url`` without the user and password it may carry (messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Api:
    """A small synchronous client of the admin API (httpx).

    ``refused``: further statuses (beyond 401, 403 and 422) that are a
    refusal to explain to the person (exit code 2) rather than a failure
    (for reviews: 400, 404, 409, 410)."""

    def __init__(
        self,
        url: str,
        token: str,
        cacert: str | None,
        timeout: float = 30.0,
        *,
        refused: frozenset[int] = frozenset(),
    ) -> None:
        import httpx

        verify: ssl.SSLContext | bool = True
        if cacert:
            try:
                verify = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as e:
                raise CliError(f"cannot use --cacert {cacert}: {e}", EXIT_USAGE) from None
        self.url = url.rstrip("/")
        #: The URL as messages show it: without a user and password.
        self.shown_url = _without_credentials(self.url)
        self.refused = refused
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            verify=verify,
            # A long export may pause between pages while the store reads.
            timeout=httpx.Timeout(timeout, read=max(timeout, 120.0)),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        response.read()  # a streamed error body is not read yet
        why = detail(response)
        if status == 401:
            raise CliError(f"the API refused the token (401): {why}", EXIT_USAGE)
        if status == 403:
            raise CliError(f"not allowed (403): {why}", EXIT_USAGE)
        if status == 422:
            raise CliError(f"invalid request (422): {why}", EXIT_USAGE)
        if status in self.refused:
            raise CliError(f"refused ({status}): {why}", EXIT_USAGE)
        raise CliError(f"the API answered {status}: {why}", status=status)

    def _transport_error(self, error: Exception) -> CliError:
        import httpx

        if isinstance(error, httpx.LocalProtocolError):
            # (Its message quotes the request's headers: the token.)
            return CliError(f"cannot send the request to {self.shown_url}: {type(error).__name__}")
        return CliError(f"cannot reach the API at {self.shown_url}: {error}")

    def _json(self, response: httpx.Response, path: str) -> Any:
        self._check(response)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"the API at {self.shown_url} did not answer JSON for {path}") from None

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._client.get(path, params=_params(params))
        except httpx.TransportError as e:
            raise self._transport_error(e) from None
        return self._json(response, path)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._client.post(path, json=dict(body or {}))
        except httpx.TransportError as e:
            raise self._transport_error(e) from None
        return self._json(response, path)

    def pages(
        self, path: str, key: str, params: Mapping[str, Any], limit: int | None
    ) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` (None: all) items of a paged listing (``key``
        holds a page's items, ``next`` the cursor), newest first."""
        cursor: str | None = None
        count = 0
        while limit is None or count < limit:
            size = 1000 if limit is None else min(1000, limit - count)
            page = self.get(path, {**params, "limit": size, "before": cursor})
            for item in page.get(key, []):
                count += 1
                yield item
            cursor = page.get("next")
            if not cursor:
                return

    def listing(
        self, path: str, key: str, params: Mapping[str, Any], limit: int, as_json: bool
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """The first ``limit`` items and whether more exist; with
        ``as_json`` they are printed as JSON lines instead (None)."""
        items = list(self.pages(path, key, params, limit + 1))  # one more: are there more?
        more = len(items) > limit
        items = items[:limit]
        if as_json:
            for item in items:
                print(json.dumps(item, ensure_ascii=False))
            return None
        return items, more

    @contextlib.contextmanager
    def stream(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[Iterator[bytes]]:
        """The response body of ``path``, chunk by chunk."""
        import httpx

        try:
            with self._client.stream("GET", path, params=_params(params)) as response:
                self._check(response)
                yield response.iter_bytes()
        except httpx.TransportError as e:
            raise CliError(f"the transfer from {self.shown_url} broke off: {e}") from None


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None and v != ""}


def token_of(args: argparse.Namespace, prog: str) -> str:
    """--token, else $HOOPFAST_TOKEN, else the login stored by ``hoopfast
    login`` (refreshed if about to expire), as ``hoopfast connect`` finds it."""
    if args.token:
        return _checked_token(str(args.token), "--token")
    if os.environ.get(ENV_TOKEN):
        return _checked_token(os.environ[ENV_TOKEN], f"${ENV_TOKEN}")
    from hoopfast.identity.oauth import LoginError
    from hoopfast.identity.tokenstore import TokenStore, fresh_token

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    store = TokenStore.at(args.token_file)
    try:
        stored = store.chosen(args.issuer, args.client_id)
        return _checked_token(fresh_token(store, stored, warn=warn).token, "the stored login")
    except LoginError as e:
        raise CliError(f"{e} (or give --token or ${ENV_TOKEN})", EXIT_USAGE) from None


def _checked_token(token: str, where: str) -> str:
    """The token without surrounding whitespace (a file saved with CRLF);
    refused, without showing it, if it holds anything else a bearer token
    cannot (HTTP would refuse the header and quote it back)."""
    token = token.strip()
    if not token or not all("\x21" <= c <= "\x7e" for c in token):
        raise CliError(
            f"{where}: not a token (it holds spaces or control characters; not shown)",
            EXIT_USAGE,
        )
    return token


def api_from_args(
    args: argparse.Namespace, prog: str, *, refused: frozenset[int] = frozenset()
) -> Api:
    """The client the options of :func:`api_options` describe."""
    url = args.api or os.environ.get(ENV_API_URL) or DEFAULT_API_URL
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--api must be an http:// or https:// URL, not {url!r}", EXIT_USAGE)
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and not _loopback(host):
        # (Not refused: an API behind a TLS-terminating proxy on a private
        # network is a real set-up. Said, since the token is a credential.)
        print(
            f"{prog}: warning: the token goes unencrypted to {shown(host)} (http://): use https://",
            file=sys.stderr,
        )
    return Api(url, token_of(args, prog), args.cacert, refused=refused)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_options() -> argparse.ArgumentParser:
    """A parent parser with the API and token options."""
    common = argparse.ArgumentParser(add_help=False)
    api = common.add_argument_group("API and token")
    api.add_argument("--api", help=f"the admin API (default: ${ENV_API_URL} or {DEFAULT_API_URL})")
    api.add_argument(
        "--token",
        help=f"bearer token (default: ${ENV_TOKEN}, else the token stored by `hoopfast login`)",
    )
    api.add_argument("--cacert", help="CA bundle to verify an https API with")
    api.add_argument("--issuer", help="which stored login (default: $HOOPFAST_LOGIN_ISSUER)")
    api.add_argument("--client-id", help="default: $HOOPFAST_LOGIN_CLIENT_ID")
    api.add_argument("--token-file", help="default: $HOOPFAST_TOKEN_FILE or ~/.config/...")
    return common


def guarded(
    command: Callable[[argparse.Namespace], int], prog: str
) -> Callable[[argparse.Namespace], int]:
    """``command`` with its failures printed as ``prog: message`` and turned
    into the exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            with _terminations_interrupt():
                return command(args)
        except CliError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return e.exit_code
        except Terminated as e:
            print(f"{prog}: {signal.Signals(e.signum).name}", file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130

    return run


class Terminated(BaseException):
    """SIGTERM or SIGHUP during a command: raised where it runs, so that
    what it was writing is cleaned up as after a Ctrl-C (an export's
    unfinished file is removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminations_interrupt() -> Iterator[None]:
    def terminated(signum: int, frame: object) -> None:
        raise Terminated(signum)

    signums = (signal.SIGTERM, signal.SIGHUP)
    try:
        previous = [signal.signal(signum, terminated) for signum in signums]
    except ValueError:  # not the main thread (a test calling main): as is
        yield
        return
    try:
        yield
    finally:
        for signum, handler in zip(signums, previous, strict=True):
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- formatting


def when(at: float | None, with_date: bool = True) -> str:
    """Unix seconds for people: UTC, milliseconds."""
    if at is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(at, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return shown(at)  # (not a time: stored data altered, shown as it is)
    text = moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d} UTC"


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A plain aligned table for listings."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return lines


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
