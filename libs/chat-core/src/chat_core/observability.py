"""One ASGI wrapper for the three per-request signals: a server span, RED metrics, one access log line.

It wraps Litestar's whole handler (outside routing), so 404s and 405s are counted too; the route label is
the matched route template (``scope["path_template"]``), never the raw path.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from chat_core import metrics, tracing
from chat_core.logging import info_line
from chat_core.redaction import redact_text

__all__ = ["ObservabilityMiddleware", "RequestInfo", "current_request", "set_request_user"]

UNMATCHED_ROUTE = "unmatched"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_SPAN_NAMES = {m: f"HTTP {m}" for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}


class RequestInfo:
    """Mutable facts about the current request, filled in by handlers (the user) for the access log."""

    __slots__ = ("client_ip", "user_id")

    def __init__(self, client_ip: str | None) -> None:
        self.user_id: str | None = None
        self.client_ip = client_ip


_current: ContextVar[RequestInfo | None] = ContextVar("chat_request_info", default=None)


def current_request() -> RequestInfo | None:
    return _current.get()


def set_request_user(user_id: str) -> None:
    info = _current.get()
    if info is not None:
        info.user_id = user_id


def _server_attributes(scope: Scope, method: str, client: Any) -> dict[str, str | int]:
    """The HTTP server span's semantic-convention attributes known at the request's start."""
    headers = dict(scope["headers"])
    scheme = str(scope.get("scheme", "http"))
    host = headers.get(b"host", b"").decode("latin-1")
    server: tuple[str, int | None] | None = scope.get("server")
    address, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.path": redact_text(str(scope["path"])),  # a device token is a path segment
        "url.scheme": scheme,
        "network.protocol.version": str(scope.get("http_version", "1.1")),
        "server.address": address or (server[0] if server else ""),
    }
    if port:
        attributes["server.port"] = int(port)
    elif server is not None and server[1] is not None:
        attributes["server.port"] = server[1]
    # No url.query: signed URLs carry their signature there.
    if client:
        attributes["client.address"] = str(client[0])
    agent = headers.get(b"user-agent")
    if agent:
        attributes["user_agent.original"] = agent.decode("latin-1")
    return attributes


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, component: str, access_log: bool = True) -> None:
        self.app = app
        self.component = component
        self.access_log = access_log
        self._tracer = tracing.get_tracer("chat_core.http")
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self._in_flight = metrics.HTTP_IN_FLIGHT.labels(component)

    def _observe(self, route: str, method: str, status: int, elapsed: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[(route, method, status)] = metrics.HTTP_REQUESTS.labels(
                self.component, route, method, str(status)
            )
        histogram = self._histograms.get((route, method))
        if histogram is None:
            histogram = self._histograms[(route, method)] = metrics.HTTP_LATENCY.labels(
                self.component, route, method
            )
        counter.inc()
        histogram.observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope.get("method", "WS")) if kind == "http" else "WS"
        carrier: dict[str, str] | None = None
        for name, value in scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                if carrier is None:
                    carrier = {}
                carrier[name.decode()] = value.decode("latin-1")
        client = scope.get("client")
        info = RequestInfo(client[0] if client else None)
        token = _current.set(info)
        status = 500 if kind == "http" else 101

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close":
                status = int(message.get("code", 1000))
            await send(message)

        self._in_flight.inc()
        span = tracing.start_server_span(
            self._tracer,
            f"{method} {scope['path']}"
            if kind == "websocket"
            else _SPAN_NAMES.get(method) or f"HTTP {method}",
            tracing.extract(carrier) if carrier else None,
        )
        recording = span.is_recording()
        if recording:
            span.set_attributes(_server_attributes(scope, method, client))
        # The span is made current by hand rather than with ``trace.use_span`` (a generator-based context
        # manager, per request): spans are created for every request, recorded only when exported.
        context_token = otel_context.attach(trace.set_span_in_context(span))
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            route: str = scope.get("path_template") or UNMATCHED_ROUTE
            elapsed = time.perf_counter() - started
            if recording:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.response.status_code", status)
                if info.user_id:
                    span.set_attribute("enduser.id", info.user_id)
                if kind == "http" and status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                if failure is not None:  # as ``trace.use_span`` records it, after the attributes
                    span.record_exception(failure)
                    span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))
            span.end()
            self._observe(route, method, status, elapsed)
            if self.access_log and route not in QUIET_ROUTES:
                info_line(
                    "request",
                    {
                        "method": method,
                        "route": route,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "user_id": info.user_id,
                        "client_ip": info.client_ip,
                    },
                )  # while the span is current: the line carries its trace and span ids
            otel_context.detach(context_token)
            self._in_flight.dec()
            _current.reset(token)
