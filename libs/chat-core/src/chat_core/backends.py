"""The backends a process uses, built from settings on first use and shared by every service in it.

A service asks for what it needs (``backends.object_store``); only those adapters are imported, started
at start-up, closed at shutdown and checked by ``/readyz``. In the all-in-one process the four services
share one ``Backends``, so the embedded adapters (in-process bus, SQLite) are one instance each.

Adapters are found by module path (``"chat_core.objectstore.s3:create"``): each adapter module exposes
``create(backends) -> <port>``, so a deployment never imports a client library it does not use.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import httpx

from chat_core.auth import TokenVerifier, build_verifier
from chat_core.aws import AwsCredentialSource, AwsHttp
from chat_core.settings import Settings

if TYPE_CHECKING:
    from chat_core.messagestore import MessageStore
    from chat_core.notifications import NotificationQueue
    from chat_core.objectstore import ObjectStore
    from chat_core.push import PushProvider
    from chat_core.realtime import EventBus, Presence

__all__ = ["ADAPTERS", "Backends", "ReadinessCheck"]

ReadinessCheck = Callable[[], Awaitable[None]]

# (port, kind) -> "module:factory"
ADAPTERS: dict[tuple[str, str], str] = {
    ("object_store", "local"): "chat_core.objectstore.local:create",
    ("object_store", "s3"): "chat_core.objectstore.s3:create",
    ("message_store", "sqlite"): "chat_core.messagestore.sqlite:create",
    ("message_store", "firestore"): "chat_core.messagestore.firestore:create",
    ("event_bus", "memory"): "chat_core.realtime.memory:create_event_bus",
    ("event_bus", "redis"): "chat_core.realtime.redis:create_event_bus",
    ("presence", "memory"): "chat_core.realtime.memory:create_presence",
    ("presence", "redis"): "chat_core.realtime.redis:create_presence",
    ("notification_queue", "sqlite"): "chat_core.notifications.sqlite:create",
    ("notification_queue", "sqs"): "chat_core.notifications.sqs:create",
    ("push_provider", "log"): "chat_core.push.log:create",
    ("push_provider", "webhook"): "chat_core.push.webhook:create",
    ("push_provider", "fcm"): "chat_core.push.fcm:create",
}


class Backends:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[str, Any] = {}
        self._started = False
        self._http: httpx.AsyncClient | None = None
        self._aws: AwsCredentialSource | None = None
        self.aws_http = AwsHttp()  # S3 and SQS: the hot path's transport (see chat_core.aws)
        self.verifier: TokenVerifier = build_verifier(settings.auth)

    # --- shared clients ---------------------------------------------------------------------------
    @property
    def http(self) -> httpx.AsyncClient:
        """One pooled HTTP client per process for the light traffic: JWKS, webhooks, FCM."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, connect=3.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            )
        return self._http

    @property
    def aws_credentials(self) -> AwsCredentialSource:
        if self._aws is None:
            self._aws = AwsCredentialSource(self.settings.aws)
        return self._aws

    # --- ports ------------------------------------------------------------------------------------
    def _get(self, port: str, kind: str) -> Any:
        if port not in self._built:
            if self._started:
                raise RuntimeError(f"{port} was first asked for after start-up; ask for it in create_app()")
            module_name, _, factory = ADAPTERS[(port, kind)].partition(":")
            self._built[port] = getattr(importlib.import_module(module_name), factory)(self)
        return self._built[port]

    @property
    def object_store(self) -> ObjectStore:
        return cast("ObjectStore", self._get("object_store", self.settings.backends.object_store))

    @property
    def message_store(self) -> MessageStore:
        return cast("MessageStore", self._get("message_store", self.settings.backends.message_store))

    @property
    def event_bus(self) -> EventBus:
        return cast("EventBus", self._get("event_bus", self.settings.backends.event_bus))

    @property
    def presence(self) -> Presence:
        return cast("Presence", self._get("presence", self.settings.backends.event_bus))

    @property
    def notification_queue(self) -> NotificationQueue:
        return cast(
            "NotificationQueue", self._get("notification_queue", self.settings.backends.notification_queue)
        )

    @property
    def push_provider(self) -> PushProvider:
        return cast("PushProvider", self._get("push_provider", self.settings.backends.push_provider))

    # --- lifecycle --------------------------------------------------------------------------------
    def _check_name(self, port: str) -> str:
        adapter = self._built[port]
        return str(getattr(adapter, "readiness_name", None) or getattr(adapter, "name", port))

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """One check per backend in use, named by what an operator would look for (``redis``, ``s3``)."""
        checks: dict[str, ReadinessCheck] = {}
        for port, adapter in self._built.items():
            if hasattr(adapter, "ping"):
                checks[self._check_name(port)] = adapter.ping
        if self.settings.auth.jwks_url:
            checks["auth_jwks"] = self.verifier.ping
        return checks

    def check_names(self, ports: Iterable[str]) -> set[str]:
        """The readiness-check names of those of ``ports`` this process uses."""
        return {self._check_name(port) for port in ports if port in self._built}

    def route_handlers(self) -> list[Any]:
        """Routes an embedded adapter serves itself (the local object store's signed URLs)."""
        handlers: list[Any] = []
        for adapter in self._built.values():
            handlers.extend(getattr(adapter, "route_handlers", list)())
        return handlers

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if any(hasattr(a, "uses_aws") and a.uses_aws for a in self._built.values()):
            await self.aws_credentials.start()
        for adapter in self._built.values():
            await adapter.start()

    async def close(self) -> None:
        for adapter in reversed(list(self._built.values())):
            try:
                await adapter.close()
            except Exception:  # noqa: S112 - closing must go on for the rest
                continue
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.aws_http.close()
        self._started = False

    async def __aenter__(self) -> Backends:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.shield(self.close())
