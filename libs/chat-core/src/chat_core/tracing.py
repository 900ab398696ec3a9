"""OpenTelemetry set-up and the helpers that carry trace context through plain dicts.

Spans are always created (so log lines have trace ids); they are recorded and exported only when
something receives them. The standard variables are honoured, by the SDK wherever it reads them itself:
``OTEL_SDK_DISABLED=true`` installs nothing; ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` choose
the sampler (default ``parentbased_always_on``); ``OTEL_TRACES_EXPORTER`` is a list of ``otlp``
(the default: OTLP/HTTP to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``),
``console`` and ``none``; ``OTEL_RESOURCE_ATTRIBUTES`` adds to the resource. When spans are exported,
the clients of the backends get client spans too: S3 and SQS (aiohttp), Redis, Firestore (gRPC).

``inject``/``extract`` move W3C trace context into and out of event-bus payloads and queue-message
attributes, so one trace runs send -> publish -> enqueue -> push.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_SDK_DISABLED
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
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
_clients_instrumented = False
_log = structlog.get_logger("chat_core.tracing")


class _SampleWhenExported(Sampler):
    """Record spans only when something receives them (an exporter or a test's processor).

    Without one, spans are still created — with real trace and span ids, so log lines and propagated
    context carry them — but as cheap non-recording spans: no attributes, no processor calls. With one,
    the sampler the SDK builds from ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` decides.
    """

    def __init__(self) -> None:
        self.exporting = False
        self.delegate: Sampler = _get_from_env_or_default()

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
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"SampleWhenExported({self.delegate.get_description()})"


_sampler = _SampleWhenExported()


def _sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _exporters(otlp_endpoint: str) -> list[SpanExporter]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (the OTLP one only with somewhere to send)."""
    names = [n.strip().lower() for n in os.environ.get(OTEL_TRACES_EXPORTER, "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            if os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                # The exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (and headers, timeout) itself.
                endpoint = None
                if not os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT):
                    endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
                exporters.append(OTLPSpanExporter(endpoint=endpoint))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            _log.warning("unknown_traces_exporter", exporter=name)
    return exporters


def _instrument_clients() -> None:
    """Client spans for the backends' clients (instrumented once, only when spans are exported)."""
    global _clients_instrumented
    if _clients_instrumented:
        return
    _clients_instrumented = True
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AioHttpClientInstrumentor().instrument()  # S3 and SQS (chat_core.aws)
    RedisInstrumentor().instrument()  # event bus, presence, caches, rate limits
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]  # Firestore


def configure_tracing(
    service_name: str, otlp_endpoint: str = "", extra_processors: tuple[SpanProcessor, ...] = ()
) -> trace.TracerProvider:
    """Install the process's tracer provider once; later calls return the installed one."""
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        for processor in extra_processors:
            current.add_span_processor(processor)
        _sampler.exporting = _sampler.exporting or bool(extra_processors)
        if _sampler.exporting:
            _instrument_clients()
        return current
    if _sdk_disabled():
        return current  # the API's no-op provider: no spans, no ids
    _sampler.delegate = _get_from_env_or_default()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=_sampler)
    exporters = _exporters(otlp_endpoint)
    _sampler.exporting = bool(exporters or extra_processors)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    if _sampler.exporting:
        _instrument_clients()
    return provider


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


_ids = RandomIdGenerator()
_ROOT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT | trace.TraceFlags.RANDOM_TRACE_ID)
_CHILD_FLAGS = {
    True: _ROOT_FLAGS,
    False: trace.TraceFlags(trace.TraceFlags.DEFAULT),
}


def start_server_span(tracer: trace.Tracer, name: str, parent: otel_context.Context | None) -> trace.Span:
    """``tracer.start_span(name, parent, kind=SERVER)``; when nothing records spans (no exporter, no test
    processor), the non-recording span the SDK would return (the same trace id, flags and a fresh span
    id) made directly: the SDK's path (sampler, sampling result, tracer metrics) was a third of the
    observability wrapper's CPU on a hot route, for a span nobody receives."""
    if not _configured or _sampler.exporting:
        return tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER)
    context = trace.get_current_span(parent).get_span_context()
    if context.is_valid:
        trace_id, flags = context.trace_id, _CHILD_FLAGS[context.trace_flags.random_trace_id]
    else:
        trace_id, flags = _ids.generate_trace_id(), _ROOT_FLAGS
    return trace.NonRecordingSpan(
        trace.SpanContext(trace_id, _ids.generate_span_id(), is_remote=False, trace_flags=flags)
    )


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
