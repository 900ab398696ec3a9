"""Redis write leases (``LIMIT_STORE=redis``): ``SET {LIMIT_KEY_PREFIX}:lease:<name> 1 NX PX <ms>``.

One key per lease, whose name carries its own hash tag (``summary:{c:<id>}``), so a Redis Cluster spreads
them over its nodes by conversation and each ``SET`` goes to one node. The server's clock times the lease,
so replicas' clocks need not agree.
"""

from __future__ import annotations

from chat_core.leases import WriteLeases
from chat_core.redis_client import redis_client

__all__ = ["RedisWriteLeases"]

TIMEOUT_SECONDS = 0.5


class RedisWriteLeases(WriteLeases):
    def __init__(
        self, url: str, prefix: str = "chat", *, mode: str = "standalone", ca_cert: str = ""
    ) -> None:
        self._prefix = prefix
        self._client = redis_client(url, mode=mode, ca_cert=ca_cert, timeout_seconds=TIMEOUT_SECONDS)

    def key(self, name: str) -> str:
        return f"{self._prefix}:lease:{name}"

    async def acquire(self, name: str, seconds: float) -> bool:
        taken = await self._client.set(self.key(name), b"1", nx=True, px=max(1, round(seconds * 1000)))
        return bool(taken)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()
