"""The shared app factory: every service is ``ServiceParts`` (routes, dependencies, workers) on top of this.

``create_service_app`` adds what all services have — problem-details errors, CORS, OpenAPI at ``/docs``,
``/healthz``, ``/readyz``, ``/metrics``, the observability wrapper, the auth dependency — and a lifespan
that starts the composition root's adapters (``chat_core.composition``), then the workers, and stops them
in reverse order. The all-in-one process passes the parts of all five services to one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import structlog
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import ImproperlyConfiguredException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from chat_core import metrics, tracing
from chat_core.auth import Principal, TokenVerifier, token_from_connection
from chat_core.capabilities import PORTS, ReadinessCheck
from chat_core.composition import Composition
from chat_core.cors import CredentialRouteCors, credential_paths
from chat_core.deadline import DeadlineMiddleware
from chat_core.errors import exception_handlers, outage_handlers, problem_response, problem_responses
from chat_core.hot_routes import HotRoute, HotRoutes
from chat_core.json_guard import MAX_BODY_BYTES, JsonGuard
from chat_core.observability import ObservabilityMiddleware, set_request_user
from chat_core.openapi import DocumentRefinement, complete_error_responses, finish_document, fix_options_allow
from chat_core.ratelimit import RATE_LIMIT_OPT, RateLimiter
from chat_core.settings import Settings

__all__ = [
    "ServiceParts",
    "Worker",
    "authenticate",
    "create_service_app",
]

Worker = Callable[[], contextlib.AbstractAsyncContextManager[None]]
_log = structlog.get_logger("chat_core.app_factory")
READINESS_TIMEOUT_SECONDS = 2.0
ALL_PORTS = PORTS


@dataclass
class ServiceParts:
    """What one service contributes to an app."""

    component: str
    route_handlers: list[Any] = field(default_factory=list)
    dependencies: dict[str, Provide] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    description: str = ""
    # Ports without which this service cannot do its job: their outage makes /readyz 503. Any other
    # backend's outage shows as "degraded" (a 200): the service copes (the outbox keeps notifications,
    # caches expire on their own), and taking every replica out of rotation because a shared dependency
    # blinked would turn a degradation into an outage.
    essential: tuple[str, ...] = ()
    # Checks of the service's own machinery (the media processor's worker pool), beside the backends'
    # in /readyz; no port's, so a failing one makes /readyz 503.
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    # Changes to the served OpenAPI document that depend on settings (``chat_core.openapi``).
    document: list[DocumentRefinement] = field(default_factory=list)
    # Routes of ``route_handlers`` also served on the lean path when a request is plain
    # (``chat_core.hot_routes``).
    hot_routes: list[HotRoute] = field(default_factory=list)


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True):
    status: Literal["ready", "degraded"]
    checks: dict[str, str]  # each backend check: "ok" or why it failed


# The caller, once authenticated for this request (by the rate limit's hook), kept in the ASGI scope
# itself: ``request.state`` builds a ``State`` around the scope's dict on every access.
_PRINCIPAL_KEY = "chat.principal"


async def authenticate(
    request: ASGIConnection[Any, Any, Any, Any], verifier: TokenVerifier, *, cookie_name: str | None = None
) -> Principal:
    """The caller, from ``Authorization: Bearer <JWT>`` (or the ``cookie_name`` cookie); 401 otherwise."""
    principal = await verifier.verify(token_from_connection(request, cookie_name=cookie_name))
    set_request_user(principal.user_id)
    return principal


async def _bearer_principal(
    connection: ASGIConnection[Any, Any, Any, Any], verifier: TokenVerifier
) -> Principal:
    """``authenticate`` once per request: the rate limit's hook and the ``principal`` dependency share it."""
    scope: Any = connection.scope
    known: Principal | None = scope.get(_PRINCIPAL_KEY)
    if known is None:
        known = scope[_PRINCIPAL_KEY] = await authenticate(connection, verifier)
    return known


def _principal_provider(verifier: TokenVerifier) -> Provide:
    # Bound to the verifier rather than a dependency of its own: every extra dependency level costs a
    # resolution per request, and Litestar resolves sibling dependencies in an anyio task group.
    async def principal(request: Request[Any, Any, Any]) -> Principal:
        return await _bearer_principal(request, verifier)

    return Provide(principal)


def _names_a_limit(route_handlers: Sequence[Any]) -> bool:
    return any(RATE_LIMIT_OPT in (getattr(handler, "opt", None) or {}) for handler in route_handlers)


def _rate_limit_hook(limiter: RateLimiter, verifier: TokenVerifier) -> Any:
    """One app-wide ``before_request`` hook: a route naming a limit in its ``opt``
    (``opt={"rate_limit": "sends"}``) counts one hit per request against the caller, before its body is
    parsed (401 without a valid token, 429 ``rate_limited`` when over).

    A hook rather than a guard: Litestar calls each guard with a copy of the route handler, a cost every
    route paid (the limited or not) on every request, about a tenth of a hot route's CPU."""

    async def rate_limit(request: Request[Any, Any, Any]) -> None:
        limit = request.route_handler.opt.get(RATE_LIMIT_OPT)
        if limit is None:
            return
        principal = await _bearer_principal(request, verifier)
        await limiter.hit(limit, limiter.subject(request, principal.user_id))

    return rate_limit


def _authorizer(rate_limit: Any, verifier: TokenVerifier) -> Any:
    """What runs before a handler on the lean path: the rate limit's hook when the app has one (it
    authenticates first), then the caller (``chat_core.hot_routes``)."""

    async def authorize(request: Request[Any, Any, Any]) -> Principal:
        if rate_limit is not None:
            await rate_limit(request)
        return await _bearer_principal(request, verifier)

    return authorize


def _require_the_limit_hook(app: Litestar, hook: Any) -> None:
    """Refuse to start when a route naming a limit would not count it: Litestar runs the nearest
    ``before_request`` only, so one set on a route, controller or router replaces the limit's hook."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            limit = (handler.opt or {}).get(RATE_LIMIT_OPT)
            if limit is not None and handler.resolve_before_request() is not hook:
                raise ImproperlyConfiguredException(
                    f"{handler.handler_name} names the rate limit {limit!r} but sets its own before_request, "
                    "which replaces the app's rate-limit hook: call the limiter from it instead"
                )


def _health_handlers(
    root: Composition, essential_ports: frozenset[str], own_checks: dict[str, ReadinessCheck]
) -> list[Any]:
    @get(
        "/healthz",
        sync_to_thread=False,
        security=[],
        tags=["operations"],
        summary="Liveness: the process answers (for probes; no token)",
    )
    def healthz() -> Health:
        return Health(status="ok")

    @get(
        "/readyz",
        security=[],
        tags=["operations"],
        summary="Readiness: the backends this service needs answer (for probes; no token)",
        description="`degraded` (200): a backend the service copes without is down. 503 `not_ready`: "
        "one it needs is down; `checks` names each backend's state either way.",
        responses={
            200: ResponseSpec(Readiness, description="Ready or degraded", generate_examples=False),
            **problem_responses(503),
        },
    )
    async def readyz() -> Response[Any]:
        checks = {**root.readiness_checks(), **own_checks}

        async def run(name: str, check: Callable[[], Any]) -> tuple[str, str | None]:
            try:
                await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
            except Exception as exc:
                return name, f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
            return name, None

        results = await asyncio.gather(*(run(name, check) for name, check in checks.items()))
        failing = {name: error for name, error in results if error is not None}
        report = {name: failing.get(name, "ok") for name in checks}
        # A check shared by an essential and another port (one Redis for bus and presence) is essential;
        # checks that are no port's (JWKS) are always essential.
        degradable = root.check_names(ALL_PORTS - essential_ports) - root.check_names(essential_ports)
        blocking = {name: error for name, error in failing.items() if name not in degradable}
        if blocking:
            detail = "not ready: " + ", ".join(f"{name} ({error})" for name, error in blocking.items())
            return problem_response(503, "not_ready", detail, instance="/readyz", extra={"checks": report})
        return Response(Readiness(status="degraded" if failing else "ready", checks=report))

    @get(
        "/metrics",
        sync_to_thread=False,
        security=[],
        tags=["operations"],
        summary="Prometheus metrics (for the scraper; no token)",
        responses={
            200: ResponseSpec(
                str, description="Prometheus text format", media_type="text/plain", generate_examples=False
            )
        },
    )
    def metrics_endpoint() -> Response[bytes]:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)

    return [healthz, readyz, metrics_endpoint]


def create_service_app(
    settings: Settings,
    root: Composition,
    parts: Sequence[ServiceParts],
    *,
    component: str,
    title: str,
    description: str = "",
) -> Litestar:
    tracing.configure_tracing(settings.telemetry.service_name or component, settings.telemetry.otlp_endpoint)
    essential = frozenset(port for part in parts for port in part.essential)
    own_checks = {name: check for part in parts for name, check in part.readiness.items()}
    route_handlers: list[Any] = [*_health_handlers(root, essential, own_checks)]
    dependencies: dict[str, Provide] = {
        "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        "principal": _principal_provider(root.verifier),
    }
    workers: list[Worker] = []
    for part in parts:
        route_handlers.extend(part.route_handlers)
        dependencies.update(part.dependencies)
        workers.extend(part.workers)
    route_handlers.extend(root.route_handlers())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(root)
            for worker in workers:
                await stack.enter_async_context(worker())
            _log.info("started", component=component, backends=sorted(root.readiness_checks()))
            yield
        _log.info("stopped", component=component)

    origins = list(settings.service.cors_allow_origins)
    rate_limit = (
        _rate_limit_hook(root.rate_limiter, root.verifier) if _names_a_limit(route_handlers) else None
    )
    app = Litestar(
        route_handlers=route_handlers,
        dependencies=dependencies,
        exception_handlers={**exception_handlers, **outage_handlers(root.outage_reporters())},
        lifespan=[lifespan],
        # Only apps with a limited route build the limiter (the consumer and the proxy have none).
        before_request=rate_limit,
        # 413 before parsing: Content-Length is checked first, then the streamed count (chunked bodies).
        # Routes that take images (the local store's PUT) set their own limit.
        request_max_body_size=settings.limits.max_request_body_bytes,
        cors_config=CORSConfig(
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "Range", "traceparent"],
            expose_headers=[
                "ETag",
                "Content-Range",
                "Location",
                "WWW-Authenticate",
                "Retry-After",
                "RateLimit",
                "RateLimit-Policy",
            ],
            allow_credentials="*" not in origins,
            max_age=600,
        )
        if origins
        else None,
        openapi_config=OpenAPIConfig(
            title=title,
            version="0.1.0",
            description=description,
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
                }
            ),
            security=[{"BearerToken": []}],
        ),
        debug=False,
        logging_config=None,  # logging is ours (chat_core.logging): JSON lines, trace ids
    )
    app.state.root = root
    app.state.settings = settings
    _require_the_limit_hook(app, rate_limit)
    fix_options_allow(app)
    complete_error_responses(app)
    finish_document(app, [refine for part in parts for refine in part.document])
    handler = app.asgi_handler
    if paths := credential_paths(route_handlers):
        handler = CredentialRouteCors(handler, paths=paths, allowed_origins=origins)
    handler = JsonGuard(handler)
    if hot := [route for part in parts for route in part.hot_routes]:
        # Outside the JSON guard: a hot route decodes its body into a closed type and hands anything that
        # does not decode to the guard, then Litestar (``chat_core.hot_routes``).
        handler = HotRoutes(
            handler,
            hot,
            max_body_bytes=min(settings.limits.max_request_body_bytes, MAX_BODY_BYTES),
            authorize=_authorizer(rate_limit, root.verifier),
        )
    app.asgi_handler = ObservabilityMiddleware(
        DeadlineMiddleware(handler, seconds=settings.service.request_timeout_seconds),
        component=component,
        access_log=settings.service.access_log,
    )
    return app
