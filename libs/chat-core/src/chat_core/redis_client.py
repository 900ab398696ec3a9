"""The Redis client of the small Redis adapters (quotas, the storage ledger, write leases).

``REDIS_MODE`` picks a single node or a cluster; ``rediss://`` with ``REDIS_TLS_CA_CERT`` trusts that CA.
Each adapter holds its own pool with short timeouts: a Redis that does not answer fails the call quickly
and the caller's degraded path takes over. The bus and presence (``realtime/redis.py``) build their own,
with a reconnect retry and a subscriber.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

__all__ = ["redis_client"]


def redis_client(
    url: str, *, mode: str = "standalone", ca_cert: str = "", timeout_seconds: float
) -> aioredis.Redis | RedisCluster:
    """A client of ``url``: ``RedisCluster`` when ``mode`` is ``cluster``, else a pooled single-node one."""
    tls: dict[str, str] = {"ssl_ca_data": ca_cert} if ca_cert and url.startswith("rediss:") else {}
    if mode == "cluster":
        return RedisCluster.from_url(
            url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds, **tls
        )
    return aioredis.from_url(
        url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds, **tls
    )
