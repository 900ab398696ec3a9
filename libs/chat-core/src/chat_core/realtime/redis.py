"""Redis EventBus (pub/sub, one channel per conversation) and Presence (TTL'd keys), sharing one client.

Publishing and presence go through one pooled ``redis.asyncio`` client. Subscriptions share ONE connection
in subscriber mode per process (``chat_core.realtime.resp_subscriber``; see there why it is our own).

Presence: ``presence:{user}`` is a sorted set of connection ids scored by their expiry (server time, ms);
a heartbeat re-scores one connection and pushes the key's TTL out, a clean close removes it, and
``online()`` counts unexpired connections of every member in one Lua call (one round trip, no clock skew
between replicas since Redis's own clock is used).
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from chat_core.realtime import EventBusUnavailable, EventHandler
from chat_core.realtime.resp_subscriber import CONNECT_TIMEOUT_SECONDS, RespSubscriber, RespSubscription

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["RedisEventBus", "RedisPresence", "create_event_bus", "create_presence"]

_log = structlog.get_logger("chat_core.realtime.redis")


COMMAND_TIMEOUT_SECONDS = 5.0

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

_ONLINE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return counts
"""


def presence_key(user_id: str) -> str:
    return f"presence:{user_id}"


class _RedisConnections:
    """What the bus and presence of one process share: the pooled client and the subscriber."""

    def __init__(self, url: str) -> None:
        self.client: aioredis.Redis = aioredis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
        self.subscriber = RespSubscriber(url)
        self._users = 0

    async def start(self) -> None:
        self._users += 1

    async def close(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.subscriber.close()
            await self.client.aclose()


_shared: weakref.WeakKeyDictionary[Backends, _RedisConnections] = weakref.WeakKeyDictionary()


def _connections(backends: Backends) -> _RedisConnections:
    connections = _shared.get(backends)
    if connections is None:
        connections = _shared[backends] = _RedisConnections(backends.settings.redis.url)
    return connections


class _OnSharedConnections:
    """Bus and presence share the process's Redis connections (started and closed by reference count)."""

    name = "redis"
    readiness_name = "redis"

    def __init__(self, connections: _RedisConnections) -> None:
        self._connections = connections
        self._client = connections.client

    async def start(self) -> None:
        await self._connections.start()

    async def close(self) -> None:
        await self._connections.close()

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis does not answer: {exc}") from exc


class RedisEventBus(_OnSharedConnections):
    async def ping(self) -> None:
        await super().ping()
        if not await self._connections.subscriber.healthy(wait=1.0):
            raise EventBusUnavailable("the subscriber connection to redis is down")

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            await self._client.publish(channel, payload)
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis publish failed: {exc}") from exc

    async def subscribe(self, channels: Iterable[str], handler: EventHandler) -> RespSubscription:
        subscription = RespSubscription(self._connections.subscriber, handler)
        await subscription.add(channels)
        return subscription


class RedisPresence(_OnSharedConnections):
    def __init__(self, connections: _RedisConnections, ttl_seconds: float) -> None:
        super().__init__(connections)
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._online = self._client.register_script(_ONLINE)

    async def heartbeat(self, user_id: str, connection_id: str) -> None:
        try:
            await self._heartbeat(keys=[presence_key(user_id)], args=[connection_id, self._ttl_ms])
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis presence heartbeat failed: {exc}") from exc

    async def disconnect(self, user_id: str, connection_id: str) -> None:
        try:
            await self._client.zrem(presence_key(user_id), connection_id)
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis presence update failed: {exc}") from exc

    async def online(self, user_ids: Collection[str]) -> set[str]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return set()
        try:
            counts = await self._online(keys=[presence_key(u) for u in users])
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis presence read failed: {exc}") from exc
        return {user for user, count in zip(users, counts, strict=True) if int(count) > 0}


def create_event_bus(backends: Backends) -> RedisEventBus:
    return RedisEventBus(_connections(backends))


def create_presence(backends: Backends, ttl_seconds: float | None = None) -> RedisPresence:
    ttl = backends.settings.presence.ttl_seconds if ttl_seconds is None else ttl_seconds
    return RedisPresence(_connections(backends), ttl)
