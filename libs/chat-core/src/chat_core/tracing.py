"""OpenTelemetry set-up and the helpers that carry trace context through plain dicts.

Spans are always recorded (so log lines have trace ids); they are exported only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. ``inject``/``extract`` move W3C trace context into and out of
event-bus payloads and queue-message attributes, so one trace runs send -> publish -> enqueue -> push.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

__all__ = [
    "configure_tracing",
    "current_span_id",
    "current_trace_id",
    "extract",
    "get_tracer",
    "inject",
]

_configured = False


class _SampleWhenExported(Sampler):
    """Record spans only when something receives them (an exporter or a test's processor).

    Without one, spans are still created — with real trace and span ids, so log lines and propagated
    context carry them — but as cheap non-recording spans: no attributes, no processor calls.
    """

    def __init__(self) -> None:
        self.exporting = False
        self._delegate = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if not self.exporting:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "SampleWhenExported"


_sampler = _SampleWhenExported()


def configure_tracing(
    service_name: str, otlp_endpoint: str = "", extra_processors: tuple[SpanProcessor, ...] = ()
) -> TracerProvider:
    """Install the process's tracer provider once; later calls return the installed one."""
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        for processor in extra_processors:
            current.add_span_processor(processor)
        _sampler.exporting = _sampler.exporting or bool(extra_processors)
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=_sampler)
    _sampler.exporting = bool(otlp_endpoint or extra_processors)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else None


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """Write the active trace context (``traceparent``/``tracestate``) into ``carrier`` and return it."""
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    """A context whose parent is the span described by ``carrier`` (or the root when it has none)."""
    return propagate.extract(dict(carrier or {}))
