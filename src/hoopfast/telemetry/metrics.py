"""Metrics in the Prometheus text exposition format (version 0.0.4).

A tiny registry rather than prometheus_client or OpenTelemetry metrics,
with no lock, because one event loop owns the registry. A session's
statements are not reported one by one: its trail adds them up as they
finish (hoopfast.core.Tally, compiled), the session is *watched* while it
runs, and :meth:`Metrics.render` adds up the live sessions' tallies and
bytes at each scrape; when a session ends its tally is folded into the
totals. So counting costs the data path no Python call per statement, and
a scrape costs a pass over the open sessions. Every series this module
exposes is fixed here; the only label values that come from outside are
connection names (from the configuration) and verdicts (from the policy), so
the number of series stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from hoopfast.core import Tally

#: The Content-Type of :meth:`Metrics.render`'s output, for a /metrics handler.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Statement latency buckets, in seconds: from a cached verdict on a local
#: database (sub-millisecond) to a long report.
DEFAULT_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

DIRECTION_CLIENT: Final = "client"
DIRECTION_SERVER: Final = "server"


class _Histogram:
    """One label set's histogram. ``counts`` are per bucket (the last one is
    +Inf), not cumulative: observing touches one slot; rendering adds up."""

    __slots__ = ("count", "counts", "sum_ns")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        #: In whole nanoseconds: exact, whatever the order sessions' sums
        #: are added in at a scrape, so the rendered sum never goes down.
        self.sum_ns = 0
        self.count = 0

    def copy(self) -> _Histogram:
        other = _Histogram(len(self.counts) - 1)
        other.counts[:] = self.counts
        other.sum_ns, other.count = self.sum_ns, self.count
        return other


def _no_spool() -> int:
    return 0


def _histogram(histograms: dict[str, _Histogram], connection: str, buckets: int) -> _Histogram:
    histogram = histograms.get(connection)
    if histogram is None:
        histogram = histograms[connection] = _Histogram(buckets)
    return histogram


def _add_tally(
    statements: dict[tuple[str, str], int],
    durations: dict[str, _Histogram],
    connection: str,
    tally: Tally,
) -> None:
    """A session's tally into a connection's statements and durations (the
    tally made with the registry's buckets; one without statements adds no
    series)."""
    if not tally.statements:
        return
    for verdict, n in tally.statements.items():
        key = (connection, verdict)
        statements[key] = statements.get(key, 0) + n
    counts = tally.durations
    histogram = _histogram(durations, connection, len(counts) - 1)
    if len(histogram.counts) != len(counts):
        raise ValueError("a tally counted with other histogram buckets")
    histogram.counts = [a + b for a, b in zip(histogram.counts, counts, strict=True)]
    histogram.sum_ns += tally.duration_ns
    histogram.count += sum(counts)


def _add_bytes(
    moved: dict[tuple[str, str], int], connection: str, client_bytes: int, server_bytes: int
) -> None:
    if client_bytes:
        key = (connection, DIRECTION_CLIENT)
        moved[key] = moved.get(key, 0) + client_bytes
    if server_bytes:
        key = (connection, DIRECTION_SERVER)
        moved[key] = moved.get(key, 0) + server_bytes


class Watched(Protocol):
    """A live session, as a scrape reads it."""

    connection_name: str

    def metric_tally(self) -> Tally | None:
        """Its statements so far (None: it counts none)."""

    def bytes_uncounted(self) -> tuple[int, int]:
        """Bytes (from the client, from the server) not yet in the totals."""


class Metrics:
    """The gateway's counters, gauges and histograms.

    The session calls :meth:`session_started`, :meth:`watch`, and when it
    ends :meth:`unwatch`, :meth:`moved`, :meth:`fold` and
    :meth:`session_ended`; the recorder calls
    :meth:`recording_store_error` (and the gateway sets
    :attr:`read_spool_bytes`); the
    HTTP side serves :meth:`render` with :data:`CONTENT_TYPE`.
    """

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError("histogram buckets must be finite and not empty (+Inf is implied)")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError("histogram buckets must be strictly increasing")
        self.buckets = bounds
        self.sessions_active: dict[str, int] = {}
        self.sessions_total: dict[str, int] = {}
        self.statements_total: dict[tuple[str, str], int] = {}
        self.bytes_total: dict[tuple[str, str], int] = {}
        self.statement_duration: dict[str, _Histogram] = {}
        #: The recording spool's bytes not yet in the store, read at each
        #: scrape (not pushed on every spool write).
        self.read_spool_bytes: Callable[[], int] = _no_spool
        self.recording_store_errors_total = 0
        #: Sessions open now (read at each scrape).
        self._watched: set[Watched] = set()

    # -- updates: the hot path ------------------------------------------------

    def session_started(self, connection: str) -> None:
        active = self.sessions_active
        active[connection] = active.get(connection, 0) + 1
        total = self.sessions_total
        total[connection] = total.get(connection, 0) + 1

    def session_ended(self, connection: str) -> None:
        active = self.sessions_active
        active[connection] = active.get(connection, 0) - 1

    def watch(self, session: Watched) -> None:
        """Read ``session`` at each scrape until :meth:`unwatch`."""
        self._watched.add(session)

    def unwatch(self, session: Watched) -> None:
        self._watched.discard(session)

    def fold(self, connection: str, tally: Tally) -> None:
        """Add an ended session's tally to the totals."""
        _add_tally(self.statements_total, self.statement_duration, connection, tally)

    def moved(self, connection: str, client_bytes: int, server_bytes: int) -> None:
        """Count bytes a session moved (when it ends: those not counted)."""
        _add_bytes(self.bytes_total, connection, client_bytes, server_bytes)

    def _current(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[str, _Histogram]]:
        """Statements, bytes and durations: the totals plus what the
        sessions open now have counted (the totals themselves unchanged)."""
        if not self._watched:
            return self.statements_total, self.bytes_total, self.statement_duration
        statements = dict(self.statements_total)
        moved = dict(self.bytes_total)
        durations = {c: h.copy() for c, h in self.statement_duration.items()}
        for session in self._watched:
            connection = session.connection_name
            tally = session.metric_tally()
            if tally is not None:
                _add_tally(statements, durations, connection, tally)
            _add_bytes(moved, connection, *session.bytes_uncounted())
        return statements, moved, durations

    def recording_store_error(self) -> None:
        self.recording_store_errors_total += 1

    # -- exposition -----------------------------------------------------------

    def render(self) -> str:
        """The whole registry as Prometheus text format 0.0.4."""
        statements, moved, durations = self._current()
        out: list[str] = []
        _family(
            out,
            "hoopfast_sessions_active",
            "gauge",
            "Client sessions open now.",
            ((f'connection="{_label(c)}"', n) for c, n in sorted(self.sessions_active.items())),
        )
        _family(
            out,
            "hoopfast_sessions_total",
            "counter",
            "Client sessions started.",
            ((f'connection="{_label(c)}"', n) for c, n in sorted(self.sessions_total.items())),
        )
        _family(
            out,
            "hoopfast_statements_total",
            "counter",
            "Statements, by the policy's verdict.",
            (
                (f'connection="{_label(c)}",verdict="{_label(v)}"', n)
                for (c, v), n in sorted(statements.items())
            ),
        )
        _family(
            out,
            "hoopfast_bytes_total",
            "counter",
            "Protocol bytes of statements, by the side they came from.",
            (
                (f'connection="{_label(c)}",direction="{_label(d)}"', n)
                for (c, d), n in sorted(moved.items())
            ),
        )
        self._render_durations(out, durations)
        _family(
            out,
            "hoopfast_recording_spool_bytes",
            "gauge",
            "Bytes in the recording spool not yet flushed to the store.",
            (("", self.read_spool_bytes()),),
        )
        _family(
            out,
            "hoopfast_recording_store_errors_total",
            "counter",
            "Failed attempts to flush the recording spool to the store.",
            (("", self.recording_store_errors_total),),
        )
        return "".join(out)

    def _render_durations(self, out: list[str], durations: dict[str, _Histogram]) -> None:
        name = "hoopfast_statement_duration_seconds"
        out.append(f"# HELP {name} Statement latency, from the client's message to completion.\n")
        out.append(f"# TYPE {name} histogram\n")
        bounds = [_number(b) for b in self.buckets] + ["+Inf"]
        for connection, histogram in sorted(durations.items()):
            labels = f'connection="{_label(connection)}"'
            cumulative = 0
            for bound, count in zip(bounds, histogram.counts, strict=True):
                cumulative += count
                out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}\n')
            out.append(f"{name}_sum{{{labels}}} {_number(histogram.sum_ns / 1e9)}\n")
            out.append(f"{name}_count{{{labels}}} {histogram.count}\n")


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[str, int | float]],
) -> None:
    out.append(f"# HELP {name} {_help(help_text)}\n")
    out.append(f"# TYPE {name} {kind}\n")
    for labels, value in samples:
        series = f"{name}{{{labels}}}" if labels else name
        out.append(f"{series} {_number(value)}\n")


def _label(value: str) -> str:
    """A label value escaped as the format requires: backslash, double
    quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    """HELP text escapes only backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
