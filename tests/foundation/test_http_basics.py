"""What every service has: problem details, RED metrics by route template, health, access logs."""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import structlog
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from prometheus_client.parser import text_string_to_metric_families

from chat_core import tracing
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.auth import Principal
from chat_core.composition import Composition
from chat_core.errors import ProblemError
from chat_core.logging import configure_logging
from chat_core.settings import Settings
from tests import harness
from tests.conftest import auth_header


class Thing(msgspec.Struct):
    name: str
    size: int


@get("/things/{thing_id:int}", sync_to_thread=False)
def get_thing(thing_id: FromPath[int]) -> dict[str, int]:
    return {"thing_id": thing_id}


@post("/things", sync_to_thread=False)
def create_thing(data: JSONBody[Thing], principal: NamedDependency[Principal]) -> Thing:
    if data.name == "taken":
        raise ProblemError(409, "thing_exists", "a thing with that name exists")
    return data


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("secret internals: /etc/passwd line 3")


def _app(settings: Settings, readiness: dict[str, Any] | None = None) -> Any:
    backends = Composition(settings)
    part = ServiceParts(component="things", route_handlers=[get_thing, create_thing, boom])
    app = create_service_app(settings, backends, [part], component="things", title="things")
    if readiness:
        original = backends.readiness_checks
        backends.readiness_checks = lambda: {**original(), **readiness}  # type: ignore[method-assign]
    return app


@pytest.fixture
async def client(settings: Settings, client_for: Any) -> Any:
    return await client_for(_app(settings))


# --- problem details ------------------------------------------------------------------------------
async def test_a_raised_problem_is_problem_json_with_its_code(client: Any) -> None:
    response = await client.post("/things", json={"name": "taken", "size": 1}, headers=auth_header("alice"))
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "thing_exists"
    assert body["status"] == 409
    assert body["title"] == "Conflict"
    assert body["detail"] == "a thing with that name exists"
    assert body["type"].endswith("/thing_exists")
    assert body["instance"] == "/things"


async def test_request_validation_lists_the_bad_fields(client: Any) -> None:
    response = await client.post("/things", json={"name": "x", "size": "big"}, headers=auth_header("alice"))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert [e["field"] for e in body["errors"]] == ["size"]


async def test_malformed_json_is_a_400_not_a_500(client: Any) -> None:
    response = await client.post(
        "/things", content=b"{not json", headers={**auth_header("alice"), "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


async def test_an_unknown_route_is_a_404_problem(client: Any) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_a_wrong_method_is_a_405_problem(client: Any) -> None:
    response = await client.delete("/things")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_an_unexpected_error_is_a_500_with_trace_id_and_no_internals(client: Any) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert len(body["trace_id"]) == 32
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text


# --- metrics --------------------------------------------------------------------------------------
async def test_metrics_parse_and_use_route_templates(client: Any) -> None:
    for thing_id in (1, 2, 3):
        assert (await client.get(f"/things/{thing_id}")).status_code == 200
    await client.get("/nowhere/at/all")
    response = await client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    routes = {
        s.labels["route"]
        for s in families["chat_http_requests"].samples
        if s.name == "chat_http_requests_total" and s.labels["component"] == "things"
    }
    assert "/things/{thing_id}" in routes
    assert not any("/things/1" in route for route in routes)
    assert "unmatched" in routes
    ok = [
        s
        for s in families["chat_http_requests"].samples
        if s.name == "chat_http_requests_total"
        and s.labels
        == {"component": "things", "route": "/things/{thing_id}", "method": "GET", "status": "200"}
    ]
    assert ok
    assert ok[0].value >= 3
    buckets = [
        s for s in families["chat_http_request_duration_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert any(s.labels["route"] == "/things/{thing_id}" for s in buckets)


# --- health ---------------------------------------------------------------------------------------
async def test_healthz_answers_without_backends(client: Any) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_names_redis_while_it_is_down_and_recovers(
    private_redis: harness.Backend, settings: Settings, client_for: Any
) -> None:
    redis_client = aioredis.from_url(private_redis.address, socket_connect_timeout=0.5, socket_timeout=0.5)

    async def redis_ping() -> None:
        await redis_client.ping()

    client = await client_for(_app(settings, readiness={"redis": redis_ping}))
    try:
        assert (await client.get("/readyz")).status_code == 200

        private_redis.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["code"] == "not_ready"
        assert down.json()["checks"]["redis"] != "ok"
        assert "redis" in down.json()["detail"]

        private_redis.start()
        assert (await client.get("/readyz")).status_code == 200
    finally:
        await redis_client.aclose()


# --- logs -----------------------------------------------------------------------------------------
def _lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_log_lines_carry_the_trace_id_of_the_active_span() -> None:
    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    tracing.configure_tracing("test")
    with tracing.get_tracer("test").start_as_current_span("work") as span:
        structlog.get_logger("test").info("inside", answer=42)
        expected = format(span.get_span_context().trace_id, "032x")
    (line,) = [entry for entry in _lines(stream) if entry["event"] == "inside"]
    assert line["trace_id"] == expected
    assert line["answer"] == 42
    assert line["level"] == "info"


async def test_one_access_line_per_request_with_route_user_and_trace(tmp_path: Any, client_for: Any) -> None:
    from tests.conftest import make_settings

    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    settings = make_settings(tmp_path, {"ACCESS_LOG": "true"})
    client = await client_for(_app(settings))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await client.post(
        "/things", json={"name": "a", "size": 1}, headers={**auth_header("alice"), "traceparent": traceparent}
    )
    assert response.status_code == 201
    access = [entry for entry in _lines(stream) if entry.get("event") == "request"]
    assert len(access) == 1
    (line,) = access
    assert line["method"] == "POST"
    assert line["route"] == "/things"
    assert line["status"] == 201
    assert line["user_id"] == "alice"
    assert line["duration_ms"] >= 0
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # continues the caller's trace
    assert len(line["span_id"]) == 16


def test_the_access_line_writer_renders_what_structlog_renders() -> None:
    """``info_line`` skips structlog's processor chain for speed; its line is structlog's, field for field."""
    from chat_core.logging import info_line

    fields = {"method": "GET", "route": "/r/{x}", "path": "/r/1", "status": 200, "user_id": "alice"}
    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    tracing.configure_tracing("test")
    with tracing.get_tracer("test").start_as_current_span("work"):
        structlog.get_logger("access").info("request", **fields)
        info_line("request", fields)
    ours, theirs = _lines(stream)[-1], _lines(stream)[-2]
    assert list(ours) == list(theirs)  # the same keys, in the same order
    assert ours.pop("timestamp").endswith("Z")
    assert theirs.pop("timestamp").endswith("Z")
    assert ours == theirs


def test_the_access_line_writer_masks_and_follows_the_level() -> None:
    from chat_core.logging import info_line

    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    info_line("request", {"path": "/me/devices/device-token-123", "client_ip": "token=abc", "status": 204})
    (line,) = _lines(stream)
    assert "device-token-123" not in stream.getvalue().decode()
    assert "abc" not in line["client_ip"]
    assert line["status"] == 204
    quiet = io.BytesIO()
    configure_logging("WARNING", service="test", stream=quiet, cache=False)
    try:
        info_line("request", {"path": "/x"})
        assert quiet.getvalue() == b""  # LOG_LEVEL=WARNING quiets the access log, as it quiets structlog's
    finally:
        configure_logging("INFO", cache=False)


async def test_creating_an_app_keeps_stdlib_logs_json(settings: Settings) -> None:
    import logging

    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    _app(settings)  # Litestar would install its own logging config unless told not to
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    (line,) = [entry for entry in _lines(stream) if entry.get("logger") == "uvicorn.error"]
    assert line["event"] == "Started server process [1]"
    assert line["service"] == "test"
