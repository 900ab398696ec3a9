"""Redis quota store (``LIMIT_STORE=redis``): one Lua script per check, atomic across replicas.

Keys, per user, under ``LIMIT_KEY_PREFIX`` (``p``), all with the hash tag ``{user}`` because each script
touches two of them (a cluster keeps them in one slot):

* ``p:quota:{u}:pending`` — sorted set of pending uploads scored by URL expiry (ms, Redis's own clock);
  expired members are trimmed on every reserve; the key expires with its last member.
* ``p:quota:{u}:day:{yyyymmdd}`` — hash: ``bytes`` (the day's total) and one field per charged upload (so
  a retried send counts once); expires two days later.
"""

from __future__ import annotations

from chat_core.quota import DAY_SECONDS, QuotaRefusal, QuotaStore, seconds_to_next_day
from chat_core.redis_client import redis_client

__all__ = ["RedisQuotaStore"]

TIMEOUT_SECONDS = 0.5

# KEYS: pending, day. ARGV: upload, expires_at_ms, declared (-1: none), max_pending, bytes_per_day.
# Returns {0} or {1 (pending) | 2 (bytes), retry_after_ms | 0, used}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local pending = redis.call('ZCARD', KEYS[1])
if pending >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, tonumber(oldest[2]) - now, pending}
end
local declared = tonumber(ARGV[3])
if declared >= 0 then
  local used = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
  if used + declared > tonumber(ARGV[5]) then
    return {2, 0, used}
  end
end
local expires = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(last[2]), expires))
return {0}
"""

# KEYS: pending, day. ARGV: upload, size, bytes_per_day, day_ttl_seconds.
_CHARGE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  local used = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
  local size = tonumber(ARGV[2])
  if used + size > tonumber(ARGV[3]) then
    return {2, 0, used}
  end
  redis.call('HINCRBY', KEYS[2], 'bytes', size)
  redis.call('HSET', KEYS[2], ARGV[1], size)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
redis.call('ZREM', KEYS[1], ARGV[1])
return {0}
"""


def pending_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:quota:{{{user_id}}}:pending"


def day_key(prefix: str, user_id: str, day: str) -> str:
    return f"{prefix}:quota:{{{user_id}}}:day:{day}"


def _refusal(result: list[int]) -> QuotaRefusal | None:
    if int(result[0]) == 0:
        return None
    if int(result[0]) == 1:
        return QuotaRefusal("pending_uploads", int(result[1]) / 1000, int(result[2]))
    return QuotaRefusal("upload_bytes_per_day", seconds_to_next_day(), int(result[2]))


class RedisQuotaStore(QuotaStore):
    def __init__(
        self, url: str, prefix: str = "chat", *, mode: str = "standalone", ca_cert: str = ""
    ) -> None:
        self._prefix = prefix
        # in a cluster both keys of a script carry the user's hash tag: one slot
        self._client = redis_client(url, mode=mode, ca_cert=ca_cert, timeout_seconds=TIMEOUT_SECONDS)
        self._reserve = self._client.register_script(_RESERVE)
        self._charge = self._client.register_script(_CHARGE)

    async def reserve_upload(
        self,
        user_id: str,
        upload: str,
        *,
        expires_at: float,
        declared_bytes: int | None,
        max_pending: int,
        bytes_per_day: int,
        day: str,
    ) -> QuotaRefusal | None:
        result = await self._reserve(
            keys=[pending_key(self._prefix, user_id), day_key(self._prefix, user_id, day)],
            args=[
                upload,
                int(expires_at * 1000),
                -1 if declared_bytes is None else declared_bytes,
                max_pending,
                bytes_per_day,
            ],
        )
        return _refusal(result)

    async def charge_send(
        self, user_id: str, upload: str, *, size_bytes: int, bytes_per_day: int, day: str
    ) -> QuotaRefusal | None:
        result = await self._charge(
            keys=[pending_key(self._prefix, user_id), day_key(self._prefix, user_id, day)],
            args=[upload, size_bytes, bytes_per_day, 2 * DAY_SECONDS],
        )
        return _refusal(result)

    async def forget_user(self, user_id: str, *, day: str) -> None:
        # Both keys carry the user's hash tag: one slot, one command even in a cluster.
        await self._client.delete(pending_key(self._prefix, user_id), day_key(self._prefix, user_id, day))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()
