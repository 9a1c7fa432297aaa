"""Traces: one span per PostgreSQL session, one span event per statement.

Why events and not a child span per statement: measured, not guessed. On a
2-vCPU VM like the one in docs/performance.md (Python 3.11, opentelemetry-sdk 1.45, an in-memory
exporter behind a ``BatchSpanProcessor``; the ``test_bench_*`` cases in
``tests/test_telemetry.py``, run with ``--benchmark-enable``), recording one
statement costs, on the event loop:

=======================================  ========  =====================
per statement                            median    mean
=======================================  ========  =====================
child span (``start_span`` + ``end``)    17 µs     30 µs (export thread)
span event on the session span           5.9 µs    6.1 µs
tracing off (the shared no-op call)      0.04 µs   (a flag test: 0.01)
=======================================  ========  =====================

The child span's mean is higher than its median because every 512 spans
the batch processor's thread wakes up and competes for the GIL. Encoding for
OTLP (``encode_spans``, measured once) adds ~29 µs per child span against
~15 µs per event, also under the GIL. The gateway itself spends ~20 µs of CPU
per pgbench transaction (docs/performance.md): a child span per statement
would more than double that when tracing is on; an event adds about a third.

What events give up, on purpose:

* A session span keeps at most ``OTEL_SPAN_EVENT_COUNT_LIMIT`` events
  (SDK default 128): the session's first statements. Past the limit the
  gateway stops adding events (the SDK would keep the newest, but pays
  for validating and copying each one first, the cost above for every
  statement of a long session); the totals below say how many there were.
  Memory per session stays bounded, as the architecture requires. The
  complete per-statement trail is the recording, not the trace: the
  recording events carry this span's ids (:meth:`SessionSpan.context_ids`),
  and the session span carries totals (statements, errors, rows, bytes)
  over *every* statement, dropped events included: the session's trail
  counts them (hoopfast.core.Tally) and hands them to :meth:`end`. Once
  the span takes no more events, :meth:`SessionSpan.statement` says so and
  the session stops calling it: past the limit a traced session costs the
  data path no Python per statement.
* Events are exported when the session span ends, not as each statement
  finishes; a trace of a long-lived session appears when it closes.

Configuration follows the OpenTelemetry environment variables, with one
deliberate difference: the specification's default exporter is ``otlp``,
but hoopfast traces only when ``OTEL_TRACES_EXPORTER`` is set, so a default
deployment never posts to a collector that is not there. When tracing is
off, :meth:`Tracing.start_session` returns one shared :class:`SessionSpan`
whose methods do nothing (the session does not call it per statement:
:attr:`SessionSpan.recording` is False).

The tracer provider stays on the :class:`Tracing` object and is never made
global: the gateway has exactly one, tests build several, and nothing else
in the process should start reporting into the gateway's traces by accident.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, ClassVar, Final

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from hoopfast import __version__

DEFAULT_SERVICE_NAME: Final = "hoopfast"
SESSION_SPAN_NAME: Final = "postgres.session"
STATEMENT_EVENT_NAME: Final = "postgres.statement"
EXPORTERS: Final = ("otlp", "console")

# Attribute keys. Standard semantic-convention names where one exists, so a
# tracing backend shows them without configuration; hoopfast.* otherwise.
ATTR_SESSION_ID: Final = "hoopfast.session.id"
ATTR_USER: Final = "enduser.id"
ATTR_CONNECTION: Final = "hoopfast.connection"
ATTR_CLIENT_ADDRESS: Final = "client.address"
ATTR_APPLICATION_NAME: Final = "hoopfast.application_name"
ATTR_DB_SYSTEM: Final = "db.system"
ATTR_VERDICT: Final = "hoopfast.verdict"
ATTR_RULE: Final = "hoopfast.rule"
ATTR_ROWS: Final = "db.response.returned_rows"
ATTR_BYTES: Final = "hoopfast.bytes"
ATTR_DURATION: Final = "hoopfast.duration_s"
ATTR_SQLSTATE: Final = "db.response.status_code"
ATTR_STATEMENT: Final = "db.statement"
ATTR_END_REASON: Final = "hoopfast.session.end_reason"
ATTR_STATEMENTS: Final = "hoopfast.session.statements"
ATTR_ERRORS: Final = "hoopfast.session.errors"
ATTR_TOTAL_ROWS: Final = "hoopfast.session.rows"
ATTR_TOTAL_BYTES: Final = "hoopfast.session.bytes"

_NO_IDS: Final = ("", "")


class SessionSpan:
    """A session's span. This base class is the no-op used when tracing is
    off: one shared instance, every method returns at once."""

    __slots__ = ()

    #: False on the no-op: a caller may skip work done only for tracing
    #: (e.g. masking the statement text for ``db.statement``).
    recording: ClassVar[bool] = False

    def statement(
        self,
        verdict: str,
        rule: str | None,
        rows: int | None,
        bytes: int,
        duration_s: float,
        sqlstate: str | None,
        text: str | None,
    ) -> bool:
        """Add one finished statement's event (see :class:`_LiveSessionSpan`);
        False once the span takes no more, so that the caller stops."""
        return False

    def context_ids(self) -> tuple[str, str]:
        """``(trace_id, span_id)`` in hex for the recording; ``("", "")``
        when there is no trace to link to."""
        return _NO_IDS

    def end(self, reason: str, error: bool, totals: SpanTotals | None = None) -> None:
        """End the session span (see :class:`_LiveSessionSpan`)."""


@dataclass(frozen=True, slots=True)
class SpanTotals:
    """A session's totals over every statement, for its span's end (the
    session's hoopfast.core.Tally adds them up)."""

    statements: int = 0
    errors: int = 0
    rows: int = 0
    bytes: int = 0


#: The one no-op session span.
NOOP_SESSION_SPAN: Final = SessionSpan()


class _LiveSessionSpan(SessionSpan):
    """A recording session span. Only the event loop that owns the session
    calls it, so the event count needs no lock."""

    __slots__ = (
        "_add_event",
        "_ended",
        "_events_left",
        "_ids",
        "_span",
    )

    recording: ClassVar[bool] = True

    def __init__(self, span: Span, max_events: int) -> None:
        self._span = span
        #: Statement events still to add: the SDK would keep only its last
        #: ``max_events`` anyway, validating and copying every one first
        #: (~6 µs each, for a session of millions), so the span keeps the
        #: session's first ones and the totals count all.
        self._events_left = max_events
        # Bound once: the per-statement path then makes one call into the SDK.
        self._add_event = span.add_event
        ctx = span.get_span_context()
        # Only a sampled span reaches the backend; a link to an unsampled
        # trace would lead an auditor nowhere.
        self._ids = (
            (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
            if ctx.trace_flags.sampled
            else _NO_IDS
        )
        self._ended = False

    def statement(
        self,
        verdict: str,
        rule: str | None,
        rows: int | None,
        bytes: int,
        duration_s: float,
        sqlstate: str | None,
        text: str | None,
    ) -> bool:
        """Add a ``postgres.statement`` event: ``verdict`` (allow, deny,
        review...), the policy ``rule`` that decided it, ``rows`` returned
        (None when unknown), ``bytes`` relayed for it, ``duration_s`` from the
        client's message to the server's completion, ``sqlstate`` when it
        failed, and ``text`` only as the caller passes it: already masked,
        or None to keep statement text out of traces. False when the span
        takes no more events (it has its limit, or it ended)."""
        if self._ended or self._events_left <= 0:
            return False
        self._events_left -= 1
        attributes: dict[str, str | int | float] = {
            ATTR_VERDICT: verdict,
            ATTR_BYTES: bytes,
            ATTR_DURATION: duration_s,
        }
        if rule is not None:
            attributes[ATTR_RULE] = rule
        if rows is not None:
            attributes[ATTR_ROWS] = rows
        if sqlstate is not None:
            attributes[ATTR_SQLSTATE] = sqlstate
        if text is not None:
            attributes[ATTR_STATEMENT] = text
        self._add_event(STATEMENT_EVENT_NAME, attributes)
        return self._events_left > 0

    def context_ids(self) -> tuple[str, str]:
        return self._ids

    def end(self, reason: str, error: bool, totals: SpanTotals | None = None) -> None:
        """End the span once (later calls do nothing), with the session's
        ``totals``, why it ended, and an error status if ``error``."""
        if self._ended:
            return
        self._ended = True
        span = self._span
        t = totals or SpanTotals()
        span.set_attributes(
            {
                ATTR_END_REASON: reason,
                ATTR_STATEMENTS: t.statements,
                ATTR_ERRORS: t.errors,
                ATTR_TOTAL_ROWS: t.rows,
                ATTR_TOTAL_BYTES: t.bytes,
            }
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()


class Tracing:
    """The gateway's tracer. ``Tracing(None)`` (or :meth:`from_env` without
    ``OTEL_TRACES_EXPORTER``) is off and costs nothing per statement."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = (
            provider.get_tracer("hoopfast", __version__) if provider is not None else None
        )
        # OTEL_SPAN_EVENT_COUNT_LIMIT, as the SDK reads it (None: unlimited).
        limit = SpanLimits().max_events
        self._max_events = sys.maxsize if limit is None else limit

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        console_out: IO[str] | None = None,
    ) -> Tracing:
        """Tracing as the OTEL_* variables in ``environ`` ask for it.

        On only when ``OTEL_TRACES_EXPORTER`` names exporters (a comma
        separated list of ``otlp``, ``console``; ``none`` entries are
        ignored) and ``OTEL_SDK_DISABLED`` is not ``true``. An unknown
        exporter or an OTLP protocol other than ``http/protobuf`` raises
        ValueError: the gateway refuses to start rather than run without the
        traces the operator asked for.

        ``environ`` decides on/off, the exporters and ``OTEL_SERVICE_NAME``
        (default ``hoopfast``). As in every OpenTelemetry SDK, the SDK parts
        read their own settings from the process environment:
        ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_*`` (endpoint,
        headers, TLS, compression, timeout), ``OTEL_BSP_*``,
        ``OTEL_TRACES_SAMPLER`` and ``OTEL_SPAN_*_LIMIT``.

        ``console_out`` is where the console exporter writes (default
        stdout); tests pass a StringIO.
        """
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(None)
        names = _exporter_names(environ.get("OTEL_TRACES_EXPORTER", ""))
        if not names:
            return cls(None)
        processors: list[SpanProcessor] = []
        for name in names:
            if name == "otlp":
                _check_otlp_protocol(environ)
                _check_otlp_headers(environ)
                # Imported here: the exporter pulls in requests and protobuf,
                # which a gateway without OTLP never needs to load.
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                # Batched on the SDK's export thread; OTEL_BSP_* tune it.
                processors.append(BatchSpanProcessor(OTLPSpanExporter()))
            else:
                # Synchronous, so output appears when a session ends; the
                # console exporter is for debugging, not for production load.
                out = console_out if console_out is not None else sys.stdout
                processors.append(SimpleSpanProcessor(ConsoleSpanExporter(out=out)))
        provider = TracerProvider(resource=_resource(environ))
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider)

    def start_session(
        self,
        session_id: str,
        subject: str,
        connection: str,
        client_address: str | None,
        application_name: str | None,
    ) -> SessionSpan:
        """Start the span of one client session: ``subject`` is the
        authenticated identity, ``connection`` the configured upstream the
        client asked for, ``client_address`` the peer's IP address. A new
        root span: a PostgreSQL client cannot hand the gateway a parent."""
        tracer = self._tracer
        if tracer is None:
            return NOOP_SESSION_SPAN
        attributes: dict[str, str] = {
            ATTR_SESSION_ID: session_id,
            ATTR_USER: subject,
            ATTR_CONNECTION: connection,
            ATTR_DB_SYSTEM: "postgresql",
        }
        if client_address:
            attributes[ATTR_CLIENT_ADDRESS] = client_address
        if application_name:
            attributes[ATTR_APPLICATION_NAME] = application_name
        span = tracer.start_span(
            SESSION_SPAN_NAME,
            # An empty context: never a child of whatever span happens to be
            # current in the task that accepted the connection.
            context=Context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=time.time_ns(),
        )
        if not span.is_recording():
            # Sampled out (OTEL_TRACES_SAMPLER): nothing would be exported,
            # so the session pays the no-op's price.
            return NOOP_SESSION_SPAN
        return _LiveSessionSpan(span, self._max_events)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is queued; True if everything went out in time."""
        if self.provider is None:
            return True
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters. Call once, when the gateway stops;
        spans of sessions still open then are not exported."""
        if self.provider is not None:
            self.provider.shutdown()


def _exporter_names(value: str) -> list[str]:
    names: list[str] = []
    for raw in value.split(","):
        name = raw.strip().lower()
        if not name or name == "none" or name in names:
            continue
        if name not in EXPORTERS:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: unsupported exporter {raw.strip()!r}; "
                f"hoopfast supports {', '.join(EXPORTERS)} or none"
            )
        names.append(name)
    return names


def _check_otlp_protocol(environ: Mapping[str, str]) -> None:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r}; "
            "hoopfast exports OTLP over http/protobuf only"
        )


def _check_otlp_headers(environ: Mapping[str, str]) -> None:
    """The exporter's headers (an API key, often) as the SDK reads them:
    comma-separated name=value. The SDK logs a header it cannot read,
    value and all; a malformed one (``name: value`` is the usual slip)
    stops the start here instead, naming the variable and the position
    only."""
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        value = environ.get(variable, "")
        for position, header in enumerate(_HEADER_DELIMITER.split(value), 1):
            if header and not _LIBERAL_HEADER.fullmatch(header.strip()):
                raise ValueError(
                    f"{variable}: header {position} is not name=value (comma-separated,"
                    " values URL-encoded; the value is not shown)"
                )


# The SDK's own reading (opentelemetry.util.re, liberal: values may hold
# spaces).
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")
_LIBERAL_HEADER = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
    r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*"
)


def _resource(environ: Mapping[str, str]) -> Resource:
    # Resource.create applies OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    # from the process environment; the explicit service name wins over both,
    # and "hoopfast" replaces the SDK's "unknown_service" default.
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip()
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else None)
    current = str(resource.attributes.get(SERVICE_NAME, ""))
    if not current or current.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource
