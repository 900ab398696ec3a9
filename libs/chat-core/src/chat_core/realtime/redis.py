"""Redis EventBus (pub/sub, one channel per conversation) and Presence (TTL'd keys), sharing one client.

Publishing and presence go through one pooled ``redis.asyncio`` client. Subscriptions share ONE connection
in subscriber mode per process (``chat_core.realtime.resp_subscriber``; see there why it is our own).

``REDIS_MODE=cluster``: the client is redis-py's ``RedisCluster``; the bus uses sharded pub/sub
(``SPUBLISH``; the subscriber keeps one ``SSUBSCRIBE`` connection per primary owning a subscribed slot), so
a message only travels inside one shard. ``standalone`` keeps ``PUBLISH``/``SUBSCRIBE`` (any Redis, 6 too).

Presence: ``presence:{u:<user>}`` (``chat_core.redis_keys``) is a sorted set of connection ids scored by
their expiry (server time, ms); a heartbeat re-scores one connection and pushes the key's TTL out, a clean
close removes it, and ``online()`` counts unexpired connections of every member in one Lua call (one round
trip, no clock skew between replicas since Redis's own clock is used).

In a cluster the members' keys spread over the nodes: ``online()`` sends one script per node owning some of
them (``allow-cross-slot-keys``), all at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection, Iterable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from chat_core.realtime import EventBus, EventBusUnavailable, EventHandler, GapHandler, Presence
from chat_core.realtime.resp_subscriber import (
    CONNECT_TIMEOUT_SECONDS,
    RespSubscriber,
    RespSubscription,
    ShardedSubscriber,
)
from chat_core.redis_keys import presence_key

__all__ = ["RedisConnections", "RedisEventBus", "RedisPresence"]

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


# Cluster mode: the same count over keys of many slots owned by the node it runs on. Declared keys must
# share one slot even with ``allow-cross-slot-keys``, so the names travel as arguments; Redis still refuses
# a key this node does not serve (then the slot map is refreshed and the call retried).
_ONLINE_CROSS_SLOT = """#!lua flags=allow-cross-slot-keys,no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i, key in ipairs(ARGV) do
  counts[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return counts
"""
_ONLINE_CROSS_SLOT_SHA = hashlib.sha1(_ONLINE_CROSS_SLOT.encode()).hexdigest()  # noqa: S324 - Redis's id


class RedisConnections:
    """What the bus and presence of one process share: the pooled client and the subscriber.

    The composition root builds one per process and hands it to both adapters (``RedisEventBus(connections)``,
    ``RedisPresence(connections, ttl)``); each starts and closes it by reference count."""

    def __init__(self, url: str, mode: str = "standalone", ca_cert: str = "") -> None:
        self.cluster: RedisCluster | None = None
        self.subscriber: RespSubscriber | ShardedSubscriber
        tls: dict[str, Any] = {"ssl_ca_data": ca_cert} if ca_cert and url.startswith("rediss:") else {}
        if mode == "cluster":
            self.cluster = RedisCluster.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=COMMAND_TIMEOUT_SECONDS,
                **tls,
            )
            self.client: aioredis.Redis | RedisCluster = self.cluster
            self.subscriber = ShardedSubscriber(url, self.cluster, ca_cert=ca_cert)
        else:
            self.client = aioredis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=COMMAND_TIMEOUT_SECONDS,
                health_check_interval=30,
                # A pooled connection the server closed (a restart, a failover) fails its next command:
                # that command is tried once more on a new connection instead of failing a publish just
                # after Redis came back. A timeout is not retried (Retry's default would: the command
                # may have run, and the caller's budget is spent).
                retry=Retry(
                    ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                    1,
                    supported_errors=(RedisConnectionError,),
                ),
                retry_on_error=[RedisConnectionError],
                **tls,
            )
            self.subscriber = RespSubscriber(url, ca_cert=ca_cert)
        self._users = 0

    async def start(self) -> None:
        self._users += 1

    async def close(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.subscriber.close()
            await self.client.aclose()


class _OnSharedConnections:
    """Bus and presence share the process's Redis connections (started and closed by reference count)."""

    name = "redis"
    readiness_name = "redis"

    def __init__(self, connections: RedisConnections) -> None:
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


class RedisEventBus(_OnSharedConnections, EventBus):
    async def ping(self) -> None:
        await super().ping()
        if not await self._connections.subscriber.healthy(wait=1.0):
            raise EventBusUnavailable("the subscriber connection to redis is down")

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            if self._connections.cluster is not None:
                await self._connections.cluster.spublish(channel, payload)
            else:
                await self._client.publish(channel, payload)
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis publish failed: {exc}") from exc

    async def subscribe(
        self, channels: Iterable[str], handler: EventHandler, *, on_gap: GapHandler | None = None
    ) -> RespSubscription:
        subscription = RespSubscription(self._connections.subscriber, handler, on_gap)
        await subscription.add(channels)
        return subscription


class RedisPresence(_OnSharedConnections, Presence):
    def __init__(self, connections: RedisConnections, ttl_seconds: float) -> None:
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

    async def forget(self, user_id: str) -> None:
        try:
            await self._client.delete(presence_key(user_id))
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis presence update failed: {exc}") from exc

    async def online(self, user_ids: Collection[str]) -> set[str]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return set()
        try:
            if self._connections.cluster is not None:
                return await self._online_in_cluster(self._connections.cluster, users)
            counts = await self._online(keys=[presence_key(u) for u in users])
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"redis presence read failed: {exc}") from exc
        return {user for user, count in zip(users, counts, strict=True) if int(count) > 0}

    async def _online_in_cluster(self, cluster: RedisCluster, users: list[str]) -> set[str]:
        """One script per node owning some of the keys, every node at once (a retry after a slot moved)."""
        for attempt in range(2):
            if attempt:
                await cluster.nodes_manager.initialize()
            elif not cluster.nodes_manager.slots_cache:
                await cluster.initialize()
            by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
            for user in users:
                node = cluster.get_node_from_key(presence_key(user))
                if node is None:
                    raise EventBusUnavailable("a presence key's slot is not served")
                by_node.setdefault(node.name, (node, []))[1].append(user)
            groups = list(by_node.values())
            results = await asyncio.gather(
                *(self._online_on(cluster, node, members) for node, members in groups),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                online: set[str] = set()
                for found in results:
                    assert isinstance(found, set)
                    online |= found
                return online
            if attempt or not all(isinstance(f, RedisError) for f in failures):
                raise failures[0]
        raise AssertionError("unreachable")

    @staticmethod
    async def _online_on(cluster: RedisCluster, node: ClusterNode, users: list[str]) -> set[str]:
        keys = [presence_key(u) for u in users]
        try:
            counts = await cluster.execute_command(
                "EVALSHA", _ONLINE_CROSS_SLOT_SHA, 0, *keys, target_nodes=node
            )
        except NoScriptError:
            counts = await cluster.execute_command("EVAL", _ONLINE_CROSS_SLOT, 0, *keys, target_nodes=node)
        return {user for user, count in zip(users, counts, strict=True) if int(count) > 0}
