"""The backends a process uses, built from settings on first use and shared by every service in it.

A service asks for what it needs (``backends.conversations``, ``backends.object_store``); only those
adapters are imported, started at start-up, closed at shutdown and checked by ``/readyz``. In the
all-in-one process the five services share one ``Backends``, so the embedded adapters (in-process bus,
SQLite) are one instance each.

Each port has one typed factory below (``object_store(backends) -> ObjectStore``): a ``match`` on the
configured kind with the adapter's import inside it, so a deployment never imports a client library it
does not use and an IDE goes from the port to every adapter in one jump. What only some adapters can do
is a small protocol of its own (``ReadinessProbe``, ``ServesRoutes``, ``UsesAws``),
checked with ``isinstance``. No adapter creates its bucket or queue: that is ``chat-management setup``'s
(``chat_management.provision``), with credentials the services do not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

import httpx

from chat_core.auth import TokenVerifier, build_verifier
from chat_core.aws import AwsCredentialSource, AwsHttp
from chat_core.errors import ReportsOutages
from chat_core.settings import PushKind, Settings

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from chat_core.chatstore import (
        ChatStore,
        ConversationStore,
        DeviceStore,
        MessageStore,
        OutboxStore,
        PushReceiptStore,
    )
    from chat_core.jobqueue import Job, JobKind, JobQueue
    from chat_core.leases import WriteLeases
    from chat_core.ledger import StorageLedger
    from chat_core.media import MediaJob
    from chat_core.notifications import Notification
    from chat_core.objectstore import ObjectInfo, ObjectStore
    from chat_core.push import PushProvider, PushRouter
    from chat_core.quota import Quotas, QuotaStore
    from chat_core.ratelimit import RateLimiter
    from chat_core.realtime import EventBus, Presence

__all__ = [
    "PORTS",
    "AnnouncesUploads",
    "Backends",
    "Lifecycle",
    "ReadinessCheck",
    "ReadinessProbe",
    "ServesRoutes",
    "UsesAws",
    "chat_store",
    "event_bus",
    "job_queue",
    "object_store",
    "presence",
    "push_provider",
    "quota_store",
    "rate_limiter",
    "storage_ledger",
    "write_leases",
]

ReadinessCheck = Callable[[], Awaitable[None]]
J = TypeVar("J", bound="Job")
A = TypeVar("A", bound="Lifecycle")

# The ports a service may name as essential for its readiness (``ServiceParts.essential``).
PORTS = frozenset(
    {
        "object_store",
        "message_store",
        "event_bus",
        "presence",
        "notification_queue",
        "media_queue",
        "push_provider",
    }
)


# --- what every adapter is, and what only some can do ---------------------------------------------------
class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReadinessProbe(Protocol):
    """An adapter ``/readyz`` can ask; ``readiness_name`` is what an operator looks for (``redis``)."""

    readiness_name: str

    async def ping(self) -> None: ...


@runtime_checkable
class ServesRoutes(Protocol):
    """An embedded adapter that serves HTTP itself (the local object store's signed URLs)."""

    def route_handlers(self) -> list[HTTPRouteHandler]: ...


@runtime_checkable
class UsesAws(Protocol):
    """An adapter that signs AWS requests: ``Backends`` resolves credentials before starting it."""

    uses_aws: Literal[True]


@runtime_checkable
class AnnouncesUploads(Protocol):
    """An object store that receives uploads itself (the local one) and can say when one lands, as S3's
    object-created notification does for the bucket."""

    def announce_uploads(self, listener: Callable[[ObjectInfo], Awaitable[None]]) -> None: ...


# --- one factory per port ------------------------------------------------------------------------------
def object_store(backends: Backends) -> ObjectStore:
    match backends.settings.backends.object_store:
        case "local":
            from chat_core.objectstore import local

            return local.create(backends)
        case "s3":
            from chat_core.objectstore import s3

            return s3.create(backends)


def chat_store(backends: Backends) -> ChatStore:
    match backends.settings.backends.message_store:
        case "sqlite":
            from chat_core.chatstore import sqlite

            return sqlite.create(backends.settings.service.data_dir)
        case "firestore":
            from chat_core.chatstore import firestore

            return firestore.create(backends.settings.firestore)


def event_bus(backends: Backends) -> EventBus:
    match backends.settings.backends.event_bus:
        case "memory":
            from chat_core.realtime import memory

            return memory.create_event_bus(backends)
        case "redis":
            from chat_core.realtime import redis

            return redis.create_event_bus(backends)


def presence(backends: Backends) -> Presence:
    match backends.settings.backends.event_bus:
        case "memory":
            from chat_core.realtime import memory

            return memory.create_presence(backends)
        case "redis":
            from chat_core.realtime import redis

            return redis.create_presence(backends)


def job_queue(backends: Backends, kind: JobKind[J]) -> JobQueue[J]:
    match backends.settings.backends.notification_queue:
        case "sqlite":
            from chat_core.jobqueue import sqlite

            return sqlite.create(backends, kind)
        case "sqs":
            from chat_core.jobqueue import sqs

            return sqs.create(backends, kind)


def push_provider(backends: Backends, kind: PushKind) -> PushProvider:
    match kind:
        case "log":
            from chat_core.push import log

            return log.create(backends)
        case "webhook":
            from chat_core.push import webhook

            return webhook.create(backends)
        case "fcm":
            from chat_core.push import fcm

            return fcm.create(backends)
        case "apns":
            from chat_core.push import apns

            return apns.ApnsPushProvider(backends.settings.push)  # needs its settings alone


def rate_limiter(backends: Backends) -> RateLimiter:
    match backends.settings.backends.limit_store:
        case "memory":
            from chat_core import ratelimit

            return ratelimit.create_memory(backends)
        case "redis":
            from chat_core import ratelimit

            return ratelimit.create_redis(backends)


def quota_store(backends: Backends) -> QuotaStore:
    match backends.settings.backends.limit_store:
        case "memory":
            from chat_core.quota import memory

            return memory.create(backends)
        case "redis":
            from chat_core.quota import redis

            return redis.create(backends)


def storage_ledger(backends: Backends) -> StorageLedger:
    match backends.settings.backends.limit_store:
        case "memory":
            from chat_core.ledger import memory

            return memory.create(backends)
        case "redis":
            from chat_core.ledger import redis

            return redis.create(backends)


def write_leases(backends: Backends) -> WriteLeases:
    # Built here from settings (the adapters take an address, not the locator: no arrow back up to it).
    settings = backends.settings
    match settings.backends.limit_store:
        case "memory":
            from chat_core.leases.memory import MemoryWriteLeases

            return MemoryWriteLeases()
        case "redis":
            from chat_core.leases.redis import RedisWriteLeases

            return RedisWriteLeases(
                settings.redis.address(),
                settings.limits.key_prefix,
                mode=settings.redis.mode,
                ca_cert=settings.redis.tls_ca_cert,
            )


class Backends:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._adapters: dict[str, Lifecycle] = {}  # by port, in the order they were built
        self._object_store: ObjectStore | None = None
        self._chat_store: ChatStore | None = None
        self._event_bus: EventBus | None = None
        self._presence: Presence | None = None
        self._notification_queue: JobQueue[Notification] | None = None
        self._media_queue: JobQueue[MediaJob] | None = None
        self._push_provider: PushRouter | None = None
        self._rate_limiter: RateLimiter | None = None
        self._quotas: Quotas | None = None
        self._storage_ledger: StorageLedger | None = None
        self._write_leases: WriteLeases | None = None
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
    def _adopt(self, port: str, adapter: A) -> A:
        """Keep ``adapter`` for its lifecycle and readiness; ports must be asked for before start-up."""
        if self._started:
            raise RuntimeError(f"{port} was first asked for after start-up; ask for it in create_app()")
        self._adapters[port] = adapter
        return adapter

    @property
    def object_store(self) -> ObjectStore:
        if self._object_store is None:
            self._object_store = self._adopt("object_store", object_store(self))
        return self._object_store

    @property
    def chat_store(self) -> ChatStore:
        """The one adapter behind the narrow stores below (start, close, ping)."""
        if self._chat_store is None:
            self._chat_store = self._adopt("message_store", chat_store(self))
        return self._chat_store

    @property
    def conversations(self) -> ConversationStore:
        return self.chat_store

    @property
    def messages(self) -> MessageStore:
        return self.chat_store

    @property
    def devices(self) -> DeviceStore:
        return self.chat_store

    @property
    def outbox(self) -> OutboxStore:
        return self.chat_store

    @property
    def push_receipts(self) -> PushReceiptStore:
        return self.chat_store

    @property
    def event_bus(self) -> EventBus:
        if self._event_bus is None:
            self._event_bus = self._adopt("event_bus", event_bus(self))
        return self._event_bus

    @property
    def presence(self) -> Presence:
        if self._presence is None:
            self._presence = self._adopt("presence", presence(self))
        return self._presence

    @property
    def notification_queue(self) -> JobQueue[Notification]:
        if self._notification_queue is None:
            from chat_core.notifications import notification_jobs

            queue = job_queue(self, notification_jobs(self.settings))
            self._notification_queue = self._adopt("notification_queue", queue)
        return self._notification_queue

    @property
    def media_queue(self) -> JobQueue[MediaJob]:
        if self._media_queue is None:
            from chat_core.media import media_jobs

            queue = job_queue(self, media_jobs(self.settings))
            self._media_queue = self._adopt("media_queue", queue)
        return self._media_queue

    @property
    def push_provider(self) -> PushRouter:
        """The configured push providers (``PUSH_PROVIDER``), each an adapter of its own (``push_provider``,
        then ``push_provider:<kind>``), behind one router that picks one per device."""
        if self._push_provider is None:
            from chat_core.push import PushRouter

            providers = []
            for index, kind in enumerate(self.settings.backends.push_provider):
                port = "push_provider" if index == 0 else f"push_provider:{kind}"
                providers.append(self._adopt(port, push_provider(self, kind)))
            self._push_provider = PushRouter(providers)
        return self._push_provider

    @property
    def rate_limiter(self) -> RateLimiter:
        """Rate limits (``LIMIT_STORE``); every process has one: the app factory's guard uses it."""
        if self._rate_limiter is None:
            self._rate_limiter = self._adopt("rate_limiter", rate_limiter(self))
        return self._rate_limiter

    @property
    def quotas(self) -> Quotas:
        """Upload quotas (pending upload URLs, bytes per day) over ``LIMIT_STORE``."""
        if self._quotas is None:
            from chat_core.quota import Quotas

            store = self._adopt("quota_store", quota_store(self))
            self._quotas = Quotas(store, self.settings.limits)
        return self._quotas

    @property
    def storage_ledger(self) -> StorageLedger:
        """Objects and bytes stored by kind, shared by the replicas (``LIMIT_STORE``; chat_core.ledger)."""
        if self._storage_ledger is None:
            self._storage_ledger = self._adopt("storage_ledger", storage_ledger(self))
        return self._storage_ledger

    @property
    def write_leases(self) -> WriteLeases:
        """At most one writer per interval across replicas (``LIMIT_STORE``; chat_core.leases)."""
        if self._write_leases is None:
            self._write_leases = self._adopt("write_leases", write_leases(self))
        return self._write_leases

    # --- lifecycle --------------------------------------------------------------------------------
    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """One check per backend in use, named by what an operator would look for (``redis``, ``s3``)."""
        checks: dict[str, ReadinessCheck] = {}
        for adapter in self._adapters.values():
            if isinstance(adapter, ReadinessProbe):
                checks[adapter.readiness_name] = adapter.ping
        if self.settings.auth.jwks_url:
            checks["auth_jwks"] = self.verifier.ping
        return checks

    def check_names(self, ports: Iterable[str]) -> set[str]:
        """The readiness-check names of those of ``ports`` this process uses."""
        wanted = set(ports)
        return {
            adapter.readiness_name
            for port, adapter in self._adapters.items()
            # ``push_provider:apns``: the second push provider is the same port
            if port.partition(":")[0] in wanted and isinstance(adapter, ReadinessProbe)
        }

    def outage_reporters(self) -> list[ReportsOutages]:
        """Adapters in use that tell an outage of their backend from a bug (a 503, not a 500)."""
        return [adapter for adapter in self._adapters.values() if isinstance(adapter, ReportsOutages)]

    def route_handlers(self) -> list[HTTPRouteHandler]:
        """Routes an embedded adapter serves itself (the local object store's signed URLs)."""
        handlers: list[HTTPRouteHandler] = []
        for adapter in self._adapters.values():
            if isinstance(adapter, ServesRoutes):
                handlers.extend(adapter.route_handlers())
        return handlers

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if any(isinstance(adapter, UsesAws) for adapter in self._adapters.values()):
            await self.aws_credentials.start()
        for adapter in self._adapters.values():
            await adapter.start()

    async def close(self) -> None:
        for adapter in reversed(list(self._adapters.values())):
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
