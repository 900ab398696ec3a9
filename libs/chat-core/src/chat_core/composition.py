"""The composition root: the one place that builds a process's adapters and hands each service its ports.

``Composition(settings)`` chooses each port's adapter by settings and builds it from explicit collaborators
(its part of the settings, the process's shared HTTP client, the AWS credential source and transport, the
Redis connections bus and presence share), on first use and once: a deployment builds, starts and checks
only what its services use, and never imports a client library it does not use. Each adapter's import sits
inside the ``match`` of its port below, so an IDE goes from a port to every adapter in one jump; each
adapter subclasses its port's Protocol, so it goes back in one more.

Nothing below the root knows it: adapters import nothing above them, and a service's ``build(settings,
ports)`` receives a small typed bundle of the narrow ports it uses (``message_service.ports.MessagePorts``:
conversations, messages, the bus...), picked from the root by the service's ``app.ports(root)``. In the
all-in-one process the five services share one root, so the embedded adapters (in-process bus, SQLite) are
one instance each.

The root tracks what it built, in order: ``start()`` starts them (resolving AWS credentials first when an
adapter signs AWS requests), ``close()`` closes them in reverse, ``readiness_checks()`` is composed from
the adapters' ``ReadinessProbe``s. A port first asked for after start-up is refused (it would never be
started): a service picks its ports in ``build()``. No adapter creates its bucket or queue: that is
``chat-management setup``'s (``chat_management.provision``), with credentials the services do not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import httpx

from chat_core.auth import TokenVerifier, build_verifier
from chat_core.aws import AwsCredentialSource, AwsHttp
from chat_core.capabilities import Lifecycle, ReadinessCheck, ReadinessProbe, ServesRoutes, UsesAws
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
    from chat_core.media_jobs import MediaJob
    from chat_core.membership import MembershipCache
    from chat_core.notifications import Notification
    from chat_core.objectstore import ObjectStore
    from chat_core.push import PushProvider, PushRouter
    from chat_core.quota import Quotas, QuotaStore
    from chat_core.ratelimit import RateLimiter
    from chat_core.realtime import EventBus, Presence
    from chat_core.realtime.redis import RedisConnections

__all__ = ["Composition"]

J = TypeVar("J", bound="Job")
A = TypeVar("A", bound=Lifecycle)


class Composition:
    """One process's adapters, built from settings and shared clients; see the module's docstring."""

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
        self._membership: MembershipCache | None = None
        self._started = False
        self._http: httpx.AsyncClient | None = None
        self._aws: AwsCredentialSource | None = None
        self._redis: RedisConnections | None = None
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

    @property
    def redis_connections(self) -> RedisConnections:
        """The pooled client and subscriber the Redis bus and presence share (one per process)."""
        if self._redis is None:
            from chat_core.realtime.redis import RedisConnections

            redis = self.settings.redis
            self._redis = RedisConnections(redis.address(), redis.mode, redis.tls_ca_cert)
        return self._redis

    # --- one builder per port: the adapter its setting names, from explicit collaborators ---------
    def _build_object_store(self) -> ObjectStore:
        match self.settings.backends.object_store:
            case "local":
                from chat_core.objectstore.local import LocalObjectStore

                return LocalObjectStore(self.settings)
            case "s3":
                from chat_core.objectstore.s3 import S3ObjectStore

                return S3ObjectStore(self.settings, http=self.aws_http, credentials=self.aws_credentials)

    def _build_chat_store(self) -> ChatStore:
        match self.settings.backends.message_store:
            case "sqlite":
                from chat_core.chatstore import sqlite

                return sqlite.create(self.settings.service.data_dir)
            case "firestore":
                from chat_core.chatstore import firestore

                return firestore.create(self.settings.firestore)

    def _build_event_bus(self) -> EventBus:
        match self.settings.backends.event_bus:
            case "memory":
                from chat_core.realtime.memory import MemoryEventBus

                return MemoryEventBus()
            case "redis":
                from chat_core.realtime.redis import RedisEventBus

                return RedisEventBus(self.redis_connections)

    def _build_presence(self) -> Presence:
        ttl = self.settings.presence.ttl_seconds
        match self.settings.backends.event_bus:
            case "memory":
                from chat_core.realtime.memory import MemoryPresence

                return MemoryPresence(ttl)
            case "redis":
                from chat_core.realtime.redis import RedisPresence

                return RedisPresence(self.redis_connections, ttl)

    def job_queue(self, kind: JobKind[J]) -> JobQueue[J]:
        """A queue of ``kind`` on the configured adapter; kept by nobody: its caller starts and closes it
        (the notification and media queues below are this, kept by the root)."""
        match self.settings.backends.notification_queue:
            case "sqlite":
                from chat_core.jobqueue import sqlite

                return sqlite.create(self.settings.service.data_dir, kind)
            case "sqs":
                from chat_core.jobqueue import sqs

                return sqs.create(
                    self.settings.aws, kind, http=self.aws_http, credentials=self.aws_credentials
                )

    def _build_push_provider(self, kind: PushKind) -> PushProvider:
        push = self.settings.push
        match kind:
            case "log":
                from chat_core.push.log import LogPushProvider

                return LogPushProvider()
            case "webhook":
                from chat_core.push.webhook import WebhookPushProvider

                return WebhookPushProvider(self.http, push.webhook_url, push.webhook_secret)
            case "fcm":
                from chat_core.push.fcm import FcmPushProvider

                return FcmPushProvider(self.http, push)
            case "apns":
                from chat_core.push.apns import ApnsPushProvider

                return ApnsPushProvider(push)

    def _build_rate_limiter(self) -> RateLimiter:
        from chat_core import ratelimit

        match self.settings.backends.limit_store:
            case "memory":
                return ratelimit.in_process(self.settings.limits)
            case "redis":
                return ratelimit.create_redis(self.settings.redis, self.settings.limits)

    def _build_quota_store(self) -> QuotaStore:
        redis, prefix = self.settings.redis, self.settings.limits.key_prefix
        match self.settings.backends.limit_store:
            case "memory":
                from chat_core.quota.memory import MemoryQuotaStore

                return MemoryQuotaStore()
            case "redis":
                from chat_core.quota.redis import RedisQuotaStore

                return RedisQuotaStore(redis.address(), prefix, mode=redis.mode, ca_cert=redis.tls_ca_cert)

    def _build_storage_ledger(self) -> StorageLedger:
        redis, prefix = self.settings.redis, self.settings.limits.key_prefix
        match self.settings.backends.limit_store:
            case "memory":
                from chat_core.ledger.memory import MemoryStorageLedger

                return MemoryStorageLedger()
            case "redis":
                from chat_core.ledger.redis import RedisStorageLedger

                return RedisStorageLedger(redis.address(), prefix, mode=redis.mode, ca_cert=redis.tls_ca_cert)

    def _build_write_leases(self) -> WriteLeases:
        redis, prefix = self.settings.redis, self.settings.limits.key_prefix
        match self.settings.backends.limit_store:
            case "memory":
                from chat_core.leases.memory import MemoryWriteLeases

                return MemoryWriteLeases()
            case "redis":
                from chat_core.leases.redis import RedisWriteLeases

                return RedisWriteLeases(redis.address(), prefix, mode=redis.mode, ca_cert=redis.tls_ca_cert)

    # --- the ports, built once and kept for their lifecycle ---------------------------------------
    def _adopt(self, port: str, adapter: A) -> A:
        """Keep ``adapter`` for its lifecycle and readiness; ports must be asked for before start-up."""
        if self._started:
            raise RuntimeError(f"{port} was first asked for after start-up; pick it in the service's build()")
        self._adapters[port] = adapter
        return adapter

    def adapters(self) -> dict[str, Lifecycle]:
        """What this root built, by port, in the order it was built (``push_provider:<kind>`` for the
        second and later push providers)."""
        return dict(self._adapters)

    @property
    def object_store(self) -> ObjectStore:
        if self._object_store is None:
            self._object_store = self._adopt("object_store", self._build_object_store())
        return self._object_store

    @property
    def chat_store(self) -> ChatStore:
        """The one adapter behind the narrow stores below (start, close, ping)."""
        if self._chat_store is None:
            self._chat_store = self._adopt("message_store", self._build_chat_store())
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
            self._event_bus = self._adopt("event_bus", self._build_event_bus())
        return self._event_bus

    @property
    def presence(self) -> Presence:
        if self._presence is None:
            self._presence = self._adopt("presence", self._build_presence())
        return self._presence

    @property
    def notification_queue(self) -> JobQueue[Notification]:
        if self._notification_queue is None:
            from chat_core.notifications import notification_jobs

            queue = self.job_queue(notification_jobs(self.settings))
            self._notification_queue = self._adopt("notification_queue", queue)
        return self._notification_queue

    @property
    def media_queue(self) -> JobQueue[MediaJob]:
        if self._media_queue is None:
            from chat_core.media_jobs import media_jobs

            queue = self.job_queue(media_jobs(self.settings))
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
                providers.append(self._adopt(port, self._build_push_provider(kind)))
            self._push_provider = PushRouter(providers)
        return self._push_provider

    @property
    def rate_limiter(self) -> RateLimiter:
        """Rate limits (``LIMIT_STORE``); every process has one: the app factory's guard uses it."""
        if self._rate_limiter is None:
            self._rate_limiter = self._adopt("rate_limiter", self._build_rate_limiter())
        return self._rate_limiter

    @property
    def quotas(self) -> Quotas:
        """Upload quotas (pending upload URLs, bytes per day) over ``LIMIT_STORE``."""
        if self._quotas is None:
            from chat_core.quota import Quotas

            store = self._adopt("quota_store", self._build_quota_store())
            self._quotas = Quotas(store, self.settings.limits)
        return self._quotas

    @property
    def storage_ledger(self) -> StorageLedger:
        """Objects and bytes stored by kind, shared by the replicas (``LIMIT_STORE``; chat_core.ledger)."""
        if self._storage_ledger is None:
            self._storage_ledger = self._adopt("storage_ledger", self._build_storage_ledger())
        return self._storage_ledger

    @property
    def write_leases(self) -> WriteLeases:
        """At most one writer per interval across replicas (``LIMIT_STORE``; chat_core.leases)."""
        if self._write_leases is None:
            self._write_leases = self._adopt("write_leases", self._build_write_leases())
        return self._write_leases

    @property
    def membership(self) -> MembershipCache:
        """The process's membership cache over the conversations (one per root: the upload service and the
        image proxy share it, and its invalidation subscription, in the all-in-one process)."""
        if self._membership is None:
            from chat_core.membership import MembershipCache

            ttl = self.settings.images.membership_cache_seconds
            self._membership = MembershipCache(self.conversations, ttl_seconds=ttl)
        return self._membership

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

    async def __aenter__(self) -> Composition:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.shield(self.close())
