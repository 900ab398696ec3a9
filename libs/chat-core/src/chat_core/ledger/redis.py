"""Redis storage ledger (``LIMIT_STORE=redis``): one hash, ``{LIMIT_KEY_PREFIX}:storage``.

Fields ``{kind}:objects`` and ``{kind}:bytes``. One key, so a Redis Cluster keeps it in one slot and the
script that moves both fields of a kind at once runs there; the hash never expires (it is the count).
"""

from __future__ import annotations

from collections.abc import Mapping

from chat_core.ledger import KINDS, Kind, StorageLedger, Usage
from chat_core.redis_client import redis_client

__all__ = ["RedisStorageLedger"]

TIMEOUT_SECONDS = 0.5

# KEYS: the hash. ARGV: kind, objects, bytes.
_ADD = """
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':objects', ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':bytes', ARGV[3])
return 0
"""


def ledger_key(prefix: str) -> str:
    return f"{prefix}:storage"


class RedisStorageLedger(StorageLedger):
    def __init__(
        self, url: str, prefix: str = "chat", *, mode: str = "standalone", ca_cert: str = ""
    ) -> None:
        self._key = ledger_key(prefix)
        self._client = redis_client(url, mode=mode, ca_cert=ca_cert, timeout_seconds=TIMEOUT_SECONDS)
        self._add = self._client.register_script(_ADD)

    async def add(self, kind: Kind, objects: int, size: int) -> None:
        await self._add(keys=[self._key], args=[kind, objects, size])

    async def usage(self) -> dict[Kind, Usage]:
        fields = [f"{kind}:{what}" for kind in KINDS for what in ("objects", "bytes")]
        values = [int(value or 0) for value in await self._client.hmget(self._key, fields)]
        return {kind: Usage(max(0, values[2 * i]), max(0, values[2 * i + 1])) for i, kind in enumerate(KINDS)}

    async def reconcile(self, usage: Mapping[Kind, Usage]) -> None:
        mapping: dict[str, int] = {}
        for kind, counted in usage.items():
            mapping[f"{kind}:objects"] = counted.objects
            mapping[f"{kind}:bytes"] = counted.bytes
        if mapping:
            await self._client.hset(self._key, mapping=mapping)  # type: ignore[arg-type]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()
