"""Telemetry: OpenTelemetry traces of sessions and statements, and
Prometheus metrics. Off by default; see :mod:`hoopfast.telemetry.tracing`
for the measurements behind the design."""

from hoopfast.telemetry.metrics import CONTENT_TYPE, DEFAULT_BUCKETS, Metrics
from hoopfast.telemetry.tracing import NOOP_SESSION_SPAN, SessionSpan, SpanTotals, Tracing

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "NOOP_SESSION_SPAN",
    "Metrics",
    "SessionSpan",
    "SpanTotals",
    "Tracing",
]
