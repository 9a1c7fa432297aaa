"""Telemetry: tracing configured from OTEL_* variables (off, console, OTLP/HTTP
to a real HTTP server), the Prometheus exposition read back by a parser, and
the benchmarks behind the per-statement design (run them with
``--benchmark-enable``; the normal run executes each once)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hoopfast.core import Statement, Tally
from hoopfast.telemetry import NOOP_SESSION_SPAN, Metrics, SessionSpan, SpanTotals, Tracing
from hoopfast.telemetry.metrics import CONTENT_TYPE, DEFAULT_BUCKETS


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports, each test starts from no OTEL_*."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _session(tracing: Tracing) -> SessionSpan:
    return tracing.start_session(
        session_id="s-1",
        subject="alice@example.com",
        connection="app",
        client_address="10.0.0.7",
        application_name="psql",
    )


def _two_statements(span: SessionSpan) -> None:
    span.statement("allow", "read-only", 3, 420, 0.0021, None, "SELECT * FROM t WHERE id = ?")
    span.statement("deny", "no-ddl", None, 60, 0.0001, "42501", None)


# -- tracing: configuration -------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": ""},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": " none , "},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
    ],
)
def test_off(environ: dict[str, str]) -> None:
    tracing = Tracing.from_env(environ)
    assert not tracing.enabled
    span = _session(tracing)
    assert span is NOOP_SESSION_SPAN
    assert not span.recording
    _two_statements(span)
    assert span.context_ids() == ("", "")
    span.end("client closed", error=False)
    assert tracing.force_flush()
    tracing.shutdown()


def test_off_by_default_reads_the_process_environment() -> None:
    assert not Tracing.from_env().enabled


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unsupported exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "console,jaeger"}, "unsupported exporter 'jaeger'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf only",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "http/protobuf only",
        ),
    ],
)
def test_refuses_what_it_cannot_export(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Tracing.from_env(environ)


def test_a_malformed_otlp_header_stops_the_start_without_showing_it() -> None:
    """The SDK would log a header it cannot read, API key and all."""
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        environ = {
            "OTEL_TRACES_EXPORTER": "otlp",
            variable: "x-ok=1, x-honeycomb-team: hcaik_01SECRET",
        }
        with pytest.raises(ValueError) as e:
            Tracing.from_env(environ)
        assert f"{variable}: header 2 is not name=value" in str(e.value)
        assert "hcaik_01SECRET" not in str(e.value)


# -- tracing: console -------------------------------------------------------


def _json_documents(text: str) -> list[dict[str, Any]]:
    """The console exporter writes indented JSON objects one after another."""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return documents
        document, index = decoder.raw_decode(text, index)
        documents.append(document)


def test_console_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    out = io.StringIO()
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}, console_out=out)
    assert tracing.enabled
    span = _session(tracing)
    assert span.recording
    _two_statements(span)
    assert out.getvalue() == ""  # the session span is exported when it ends
    span.end("server error", error=True, totals=SpanTotals(2, 1, 3, 480))
    span.end("again", error=False)  # a second end changes nothing
    # nor does a late statement, and the span says it takes no more
    assert not span.statement("allow", None, 1, 1, 0.1, None, None)

    [exported] = _json_documents(out.getvalue())
    assert exported["name"] == "postgres.session"
    assert exported["kind"] == "SpanKind.SERVER"
    assert exported["parent_id"] is None
    assert exported["status"] == {"status_code": "ERROR", "description": "server error"}
    assert exported["resource"]["attributes"]["service.name"] == "hoopfast"
    assert exported["resource"]["attributes"]["deployment.environment"] == "test"
    assert exported["attributes"] == {
        "hoopfast.session.id": "s-1",
        "enduser.id": "alice@example.com",
        "hoopfast.connection": "app",
        "db.system": "postgresql",
        "client.address": "10.0.0.7",
        "hoopfast.application_name": "psql",
        "hoopfast.session.end_reason": "server error",
        "hoopfast.session.statements": 2,
        "hoopfast.session.errors": 1,
        "hoopfast.session.rows": 3,
        "hoopfast.session.bytes": 480,
    }
    allowed, denied = exported["events"]
    assert allowed["name"] == denied["name"] == "postgres.statement"
    assert allowed["attributes"] == {
        "hoopfast.verdict": "allow",
        "hoopfast.rule": "read-only",
        "db.response.returned_rows": 3,
        "hoopfast.bytes": 420,
        "hoopfast.duration_s": 0.0021,
        "db.statement": "SELECT * FROM t WHERE id = ?",
    }
    assert denied["attributes"] == {
        "hoopfast.verdict": "deny",
        "hoopfast.rule": "no-ddl",
        "hoopfast.bytes": 60,
        "hoopfast.duration_s": 0.0001,
        "db.response.status_code": "42501",
    }

    trace_id, span_id = span.context_ids()
    assert re.fullmatch("[0-9a-f]{32}", trace_id)
    assert re.fullmatch("[0-9a-f]{16}", span_id)
    assert exported["context"]["trace_id"] == "0x" + trace_id
    assert exported["context"]["span_id"] == "0x" + span_id
    tracing.shutdown()


def test_service_name_and_optional_attributes() -> None:
    out = io.StringIO()
    tracing = Tracing.from_env(
        {"OTEL_TRACES_EXPORTER": "none,console", "OTEL_SERVICE_NAME": "gw-eu-1"},
        console_out=out,
    )
    span = tracing.start_session("s-2", "bob", "app", None, None)
    span.end("client closed", error=False)
    tracing.shutdown()
    [exported] = _json_documents(out.getvalue())
    assert exported["resource"]["attributes"]["service.name"] == "gw-eu-1"
    assert "client.address" not in exported["attributes"]
    assert "hoopfast.application_name" not in exported["attributes"]
    assert exported["status"]["status_code"] == "UNSET"
    assert exported["events"] == []


def test_sessions_are_separate_traces() -> None:
    out = io.StringIO()
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}, console_out=out)
    first, second = _session(tracing), _session(tracing)
    assert first.context_ids()[0] != second.context_ids()[0]
    # A span current in the accepting task must not become the session's parent.
    outer = TracerProvider(shutdown_on_exit=False).get_tracer("other").start_span("outer")
    with trace.use_span(outer, end_on_exit=True):
        third = _session(tracing)
    for span in (first, second, third):
        span.end("done", error=False)
    tracing.shutdown()
    assert all(d["parent_id"] is None for d in _json_documents(out.getvalue()))


def test_span_keeps_the_first_statements_past_the_event_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past OTEL_SPAN_EVENT_COUNT_LIMIT the span keeps the session's first
    statements (the SDK is not called for the rest), says so when it has
    its last, and ends with the totals it is given."""
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "3")
    out = io.StringIO()
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}, console_out=out)
    span = _session(tracing)
    wanted = [span.statement("allow", "r", i, 10, 0.001, None, None) for i in range(5)]
    assert wanted == [True, True, False, False, False]
    span.end("done", error=False, totals=SpanTotals(statements=5, rows=10))
    tracing.shutdown()
    [exported] = _json_documents(out.getvalue())
    rows = [e["attributes"]["db.response.returned_rows"] for e in exported["events"]]
    assert rows == [0, 1, 2]
    assert exported["attributes"]["hoopfast.session.statements"] == 5
    assert exported["attributes"]["hoopfast.session.rows"] == 10


def test_sampled_out_session_costs_the_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    out = io.StringIO()
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}, console_out=out)
    assert tracing.enabled
    span = _session(tracing)
    assert span is NOOP_SESSION_SPAN
    _two_statements(span)
    span.end("done", error=False)
    tracing.shutdown()
    assert out.getvalue() == ""


# -- tracing: OTLP/HTTP to a real server ------------------------------------


@dataclass
class _Request:
    path: str
    content_type: str
    body: bytes


@dataclass
class _Collector:
    url: str
    requests: list[_Request] = field(default_factory=list)


@pytest.fixture
def collector() -> Iterator[_Collector]:
    """An OTLP/HTTP receiver: records each POST, answers 200."""
    received: list[_Request] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(_Request(self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Collector(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_otlp_http_exporter(monkeypatch: pytest.MonkeyPatch, collector: _Collector) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.url}/v1/traces")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    tracing = Tracing.from_env()
    assert tracing.enabled
    span = _session(tracing)
    _two_statements(span)
    span.end("client closed", error=False, totals=SpanTotals(2, 1, 3, 480))
    tracing.shutdown()  # flushes the batch

    [request] = collector.requests
    assert request.path == "/v1/traces"
    assert request.content_type == "application/x-protobuf"
    export = ExportTraceServiceRequest.FromString(request.body)
    [resource_spans] = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "hoopfast"
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "hoopfast"
    [exported] = scope_spans.spans
    assert exported.name == "postgres.session"
    assert exported.kind == exported.SPAN_KIND_SERVER
    assert (exported.trace_id.hex(), exported.span_id.hex()) == span.context_ids()
    attributes = {a.key: a.value for a in exported.attributes}
    assert attributes["enduser.id"].string_value == "alice@example.com"
    assert attributes["hoopfast.session.statements"].int_value == 2
    assert [e.name for e in exported.events] == ["postgres.statement"] * 2
    denied = {a.key: a.value for a in exported.events[1].attributes}
    assert denied["db.response.status_code"].string_value == "42501"


# -- metrics ----------------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = re.compile(rf"(?:{_LABEL}(?:,{_LABEL})*)?")
_ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass
class _Exposition:
    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        [value] = [v for n, ls, v in self.samples if n == name and ls == labels]
        return value


def _parse(text: str) -> _Exposition:
    """A strict reader of text format 0.0.4, enough to check what render() wrote."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps and name not in types
            assert kind in {"counter", "gauge", "histogram"}
            types[name] = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, line
            name, label_text, value = match.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            family = family if types.get(family) == "histogram" else name
            assert family in types, f"sample before its TYPE: {line}"
            assert _LABELS.fullmatch(label_text or ""), line
            labels = {
                key: re.sub(r"\\(.)", lambda m: _UNESCAPE[m[1]], raw)
                for key, raw in _ONE_LABEL.findall(label_text or "")
            }
            samples.append((name, labels, float(value)))
    return _Exposition(types, samples)


@dataclass(frozen=True)
class _Verdict:
    action: str
    rule: str | None = None


def _tally(*statements: tuple[str, float, int]) -> Tally:
    """A trail's tally of statements (verdict, duration in s, server bytes)."""
    tally = Tally(DEFAULT_BUCKETS)
    for verdict, duration, server_bytes in statements:
        statement = Statement("SELECT 1", _Verdict(verdict))
        statement.duration = duration
        statement.server_bytes = server_bytes
        tally.add(statement)
    return tally


def test_metrics_render_parses_back() -> None:
    metrics = Metrics()
    weird = 'we"ird\\conn\nname'
    metrics.session_started("app")
    metrics.session_started("app")
    metrics.session_started(weird)
    metrics.session_ended("app")
    metrics.fold(
        "app",
        _tally(
            ("allow", 0.001, 1000),  # on a bound: le="0.001"
            ("allow", 0.003, 0),
            ("deny", 20.0, 90),  # over the last bound: +Inf only
        ),
    )
    metrics.moved("app", 115, 1090)
    metrics.fold(weird, _tally(("review", 0.0, 0)))
    metrics.fold("idle", _tally())  # no statements: no series
    metrics.read_spool_bytes = lambda: 4096
    metrics.recording_store_error()

    text = metrics.render()
    exposition = _parse(text)
    assert exposition.types == {
        "hoopfast_sessions_active": "gauge",
        "hoopfast_sessions_total": "counter",
        "hoopfast_statements_total": "counter",
        "hoopfast_bytes_total": "counter",
        "hoopfast_statement_duration_seconds": "histogram",
        "hoopfast_recording_spool_bytes": "gauge",
        "hoopfast_recording_store_errors_total": "counter",
    }
    assert 'connection="we\\"ird\\\\conn\\nname"' in text
    value = exposition.value
    assert value("hoopfast_sessions_active", connection="app") == 1
    assert value("hoopfast_sessions_active", connection=weird) == 1
    assert value("hoopfast_sessions_total", connection="app") == 2
    assert value("hoopfast_statements_total", connection="app", verdict="allow") == 2
    assert value("hoopfast_statements_total", connection="app", verdict="deny") == 1
    assert value("hoopfast_statements_total", connection=weird, verdict="review") == 1
    assert value("hoopfast_bytes_total", connection="app", direction="client") == 115
    assert value("hoopfast_bytes_total", connection="app", direction="server") == 1090
    assert ("hoopfast_bytes_total", {"connection": weird, "direction": "client"}) not in [
        (n, labels) for n, labels, _ in exposition.samples
    ]
    assert value("hoopfast_recording_spool_bytes") == 4096
    assert value("hoopfast_recording_store_errors_total") == 1

    name = "hoopfast_statement_duration_seconds"
    for connection, count, total in (("app", 3, 20.004), (weird, 1, 0.0)):
        buckets = [
            (labels["le"], v)
            for n, labels, v in exposition.samples
            if n == f"{name}_bucket" and labels["connection"] == connection
        ]
        bounds = [float(le) for le, _ in buckets]
        counts = [v for _, v in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert buckets[-1][0] == "+Inf"
        assert counts == sorted(counts), "buckets are cumulative"
        assert counts[-1] == value(f"{name}_count", connection=connection) == count
        assert value(f"{name}_sum", connection=connection) == pytest.approx(total)
    app = {
        labels["le"]: v
        for n, labels, v in exposition.samples
        if n == f"{name}_bucket" and labels["connection"] == "app"
    }
    assert [app[le] for le in ("0.0005", "0.001", "0.0025", "0.005", "10.0")] == [0, 1, 1, 2, 2]
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_metrics_empty_registry_is_valid() -> None:
    exposition = _parse(Metrics().render())
    assert len(exposition.types) == 7
    assert [n for n, _, _ in exposition.samples] == [
        "hoopfast_recording_spool_bytes",
        "hoopfast_recording_store_errors_total",
    ]


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf)])
def test_metrics_rejects_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Metrics(buckets)


# -- benchmarks: what one statement costs ------------------------------------


def _in_memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    """Live tracing with the export cost kept off the measurement: spans go to
    memory through a batch processor, as they would to OTLP."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    return Tracing(provider), exporter


def test_bench_statement_tracing_off(benchmark: Any) -> None:
    span = _session(Tracing.from_env({}))
    assert span is NOOP_SESSION_SPAN
    benchmark(span.statement, "allow", "read-only", 3, 420, 0.0021, None, None)


def test_bench_statement_span_event(benchmark: Any) -> None:
    tracing, exporter = _in_memory_tracing()
    span = _session(tracing)
    benchmark(span.statement, "allow", "read-only", 3, 420, 0.0021, None, "SELECT 1")
    span.end("done", error=False)
    tracing.shutdown()
    [exported] = exporter.get_finished_spans()
    assert exported.events and exported.events[-1].name == "postgres.statement"


def test_bench_statement_child_span(benchmark: Any) -> None:
    """The alternative not taken: a child span per statement, started after
    the fact with the statement's own start time."""
    tracing, exporter = _in_memory_tracing()
    session = _session(tracing)
    assert tracing.provider is not None
    tracer = tracing.provider.get_tracer("hoopfast")
    parent = trace.set_span_in_context(session._span)  # type: ignore[attr-defined]

    def child_span() -> None:
        end = time.time_ns()
        span = tracer.start_span(
            "postgres.statement",
            context=parent,
            attributes={
                "hoopfast.verdict": "allow",
                "hoopfast.rule": "read-only",
                "db.response.returned_rows": 3,
                "hoopfast.bytes": 420,
                "db.statement": "SELECT 1",
            },
            start_time=end - 2_100_000,
        )
        span.end(end_time=end)

    benchmark(child_span)
    session.end("done", error=False)
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    assert spans[0].name == "postgres.statement" and spans[-1].name == "postgres.session"
    assert spans[0].parent is not None and spans[0].parent.span_id == spans[-1].context.span_id


def test_bench_tally_add(benchmark: Any) -> None:
    """What counting a statement for the metrics and the span costs (the
    trail calls it from compiled code on the compiled build)."""
    tally = _tally()
    statement = Statement("SELECT 1", _Verdict("allow"))
    statement.duration = 0.0021
    benchmark(tally.add, statement)
    assert tally.statements["allow"] >= 1


@dataclass(eq=False)
class _Live:
    """A session as the metrics watch it (hoopfast.telemetry.metrics.Watched)."""

    connection_name: str
    tally: Tally | None
    moved: tuple[int, int] = (0, 0)

    def metric_tally(self) -> Tally | None:
        return self.tally

    def bytes_uncounted(self) -> tuple[int, int]:
        return self.moved


def test_metrics_read_open_sessions_and_never_go_down() -> None:
    """A scrape adds the open sessions' tallies and bytes to the totals; a
    session's end moves them into the totals, and nothing a scrape shows
    goes down (a duration sum that did would read as a counter reset)."""
    metrics = Metrics()
    durations = (0.1, 0.2, 0.4, 1e-9, 3.3)
    sessions = [
        _Live("app", _tally(*[("allow", d, 10) for d in durations[:i]]), (i, 2 * i))
        for i in range(1, 6)
    ] + [_Live("app", None, (7, 7))]
    for s in sessions:
        metrics.watch(s)
    seen: list[tuple[float, float, float, float]] = []

    def scrape() -> None:
        exposition = _parse(metrics.render())
        value = exposition.value
        seen.append(
            (
                value("hoopfast_statements_total", connection="app", verdict="allow"),
                value("hoopfast_statement_duration_seconds_sum", connection="app"),
                value("hoopfast_bytes_total", connection="app", direction="client"),
                value("hoopfast_bytes_total", connection="app", direction="server"),
            )
        )

    scrape()
    for s in sessions:  # ends, as the session does
        metrics.unwatch(s)
        metrics.moved(s.connection_name, *s.bytes_uncounted())
        if s.tally is not None:
            metrics.fold(s.connection_name, s.tally)
        scrape()
    assert seen[0][0] == 15 and seen[0][2:] == (22, 37)
    assert all(row == seen[0] for row in seen), seen
