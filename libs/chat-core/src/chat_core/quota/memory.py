"""In-process quota store (``LIMIT_STORE=memory``): the embedded single-node adapter.

Every operation runs without an ``await`` in between its reads and writes, so on the event loop it is
as atomic as the Redis script. Counters live as long as the process: a restart forgets them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from chat_core.quota import QuotaRefusal, seconds_to_next_day

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["MemoryQuotaStore", "create"]


class _Day:
    __slots__ = ("bytes", "charged")

    def __init__(self) -> None:
        self.bytes = 0
        self.charged: set[str] = set()


class MemoryQuotaStore:
    def __init__(self) -> None:
        self._pending: dict[str, dict[str, float]] = {}  # user -> upload -> expiry (Unix seconds)
        self._day = ""
        self._days: dict[str, _Day] = {}  # user -> today's usage; emptied when the day changes

    def _today(self, user_id: str, day: str) -> _Day:
        if day != self._day:
            self._day, self._days = day, {}
        usage = self._days.get(user_id)
        if usage is None:
            usage = self._days[user_id] = _Day()
        return usage

    def _live(self, user_id: str, now: float) -> dict[str, float]:
        pending = self._pending.get(user_id, {})
        live = {upload: expiry for upload, expiry in pending.items() if expiry > now}
        if live:
            self._pending[user_id] = live
        else:
            self._pending.pop(user_id, None)
        return live

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
        now = time.time()
        live = self._live(user_id, now)
        if len(live) >= max_pending:
            return QuotaRefusal("pending_uploads", min(live.values()) - now, len(live))
        usage = self._today(user_id, day)
        if declared_bytes is not None and usage.bytes + declared_bytes > bytes_per_day:
            return QuotaRefusal("upload_bytes_per_day", seconds_to_next_day(now), usage.bytes)
        live[upload] = expires_at
        self._pending[user_id] = live
        return None

    async def charge_send(
        self, user_id: str, upload: str, *, size_bytes: int, bytes_per_day: int, day: str
    ) -> QuotaRefusal | None:
        usage = self._today(user_id, day)
        if upload not in usage.charged:
            if usage.bytes + size_bytes > bytes_per_day:
                return QuotaRefusal("upload_bytes_per_day", seconds_to_next_day(), usage.bytes)
            usage.bytes += size_bytes
            usage.charged.add(upload)
        self._pending.get(user_id, {}).pop(upload, None)
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def create(_backends: Backends) -> MemoryQuotaStore:
    return MemoryQuotaStore()
