"""Tracing honours the standard OTEL_* variables, and server spans carry the semantic conventions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chat_core import tracing
from chat_management import all as all_in_one
from tests.conftest import make_settings
from tests.harness import ROOT

# A process of its own per case: the tracer provider is installed once per process.
_SCRIPT = """
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from chat_core import tracing
received = InMemorySpanExporter()
extra = (SimpleSpanProcessor(received),) if {with_processor} else ()
tracing.configure_tracing("probe", {endpoint!r}, extra_processors=extra)
tracer = tracing.get_tracer("probe")
ids = set()
for _ in range(400):
    with tracer.start_as_current_span("unit"):
        ids.add(tracing.current_trace_id())
recorded = len(received.get_finished_spans())
print("RECORDED", recorded, "IDS", len(ids - {{None}}), "EXPORTING", tracing._sampler.exporting)
"""


def _probe(env: dict[str, str], *, endpoint: str = "", with_processor: bool = True) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(endpoint=endpoint, with_processor=with_processor)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RECORDED")]
    return line, result.stdout


def test_every_span_is_sampled_by_default() -> None:
    line, _ = _probe({})
    assert line == "RECORDED 400 IDS 400 EXPORTING True"


def test_otel_traces_sampler_and_its_ratio_are_honoured() -> None:
    line, _ = _probe({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    recorded = int(line.split()[1])
    assert 40 <= recorded <= 160, line  # ~100 of 400
    assert "IDS 400" in line  # unsampled spans still have ids for the logs
    line, _ = _probe({"OTEL_TRACES_SAMPLER": "always_off"})
    assert line.startswith("RECORDED 0 ")


_SERVER_SPAN_SCRIPT = """
from opentelemetry import trace
from chat_core import tracing
tracing.configure_tracing("probe", "")
tracer = tracing.get_tracer("probe")
assert not tracing._sampler.exporting
parents = [None]
for flags in ("00", "01", "02", "03"):
    header = f"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}"
    parents.append(tracing.extract({"traceparent": header}))
for parent in parents:
    ours = tracing.start_server_span(tracer, "HTTP GET", parent)
    sdk = tracer.start_span("HTTP GET", context=parent, kind=trace.SpanKind.SERVER)
    a, b = ours.get_span_context(), sdk.get_span_context()
    assert type(ours) is type(sdk), (type(ours), type(sdk))
    assert a.is_valid and not a.is_remote and not ours.is_recording()
    assert a.trace_flags == b.trace_flags and a.trace_state == b.trace_state, (a, b)
    assert (a.trace_id == b.trace_id) == (parent is not None), (a, b)
    assert a.span_id != b.span_id
print("SAME")
"""


def test_a_server_span_nobody_records_is_the_one_the_sdk_would_make() -> None:
    """``start_server_span`` skips the SDK's sampling path when no exporter is set: same trace id (a
    caller's trace continued), same flags, a fresh span id, not recording."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _SERVER_SPAN_SCRIPT],
        env={**clean, "OTEL_TRACES_EXPORTER": "none"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.stdout.strip() == "SAME", result.stderr


def test_otel_sdk_disabled_installs_nothing() -> None:
    line, _ = _probe({"OTEL_SDK_DISABLED": "true"}, endpoint="http://127.0.0.1:9")
    assert line == "RECORDED 0 IDS 0 EXPORTING False"


def test_otel_traces_exporter_selects_the_exporters() -> None:
    # `none` turns off the OTLP export the endpoint would otherwise start.
    line, _ = _probe({"OTEL_TRACES_EXPORTER": "none"}, endpoint="http://127.0.0.1:9", with_processor=False)
    assert line.endswith("EXPORTING False")
    line, _ = _probe({}, endpoint="http://127.0.0.1:9", with_processor=False)
    assert line.endswith("EXPORTING True")
    line, stdout = _probe({"OTEL_TRACES_EXPORTER": "console"}, with_processor=False)
    assert line.endswith("EXPORTING True")
    assert '"name": "unit"' in stdout


async def test_server_spans_carry_the_http_semantic_conventions(tmp_path: Path, client_for: Any) -> None:
    received = InMemorySpanExporter()
    tracing.configure_tracing("tests", extra_processors=(SimpleSpanProcessor(received),))
    client = await client_for(all_in_one.create_app(make_settings(tmp_path)))
    response = await client.get("/conversations/c1/messages", headers={"user-agent": "probe/1"})
    assert response.status_code == 401
    names = [s.name for s in received.get_finished_spans()]
    spans = [s for s in received.get_finished_spans() if s.name.startswith("GET /conversations/")]
    assert len(spans) == 1, names
    span = spans[0]
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/conversations/c1/messages"
    assert attributes["url.scheme"] == "http"
    assert attributes["http.route"] == "/conversations/{conversation_id}/messages"
    assert attributes["http.response.status_code"] == 401
    assert attributes["server.address"]
    assert attributes["user_agent.original"] == "probe/1"


async def test_a_device_token_never_reaches_a_span(tmp_path: Path, client_for: Any) -> None:
    received = InMemorySpanExporter()
    tracing.configure_tracing("tests", extra_processors=(SimpleSpanProcessor(received),))
    client = await client_for(all_in_one.create_app(make_settings(tmp_path)))
    token = "fcm-device-token-0123456789"
    response = await client.put(f"/me/devices/{token}", json={"platform": "ios"})
    assert response.status_code == 401
    for span in received.get_finished_spans():
        assert token not in span.name
        assert token not in repr(dict(span.attributes or {}))
