"""In-process quota store (``LIMIT_STORE=memory``): the embedded single-node adapter.

Every operation runs without an ``await`` in between its reads and writes, so on the event loop it is
as atomic as the Redis script. Counters live as long as the process: a restart forgets them.
"""

from __future__ import annotations

import heapq
import time

from chat_core.quota import QuotaRefusal, QuotaStore, seconds_to_next_day

__all__ = ["MemoryQuotaStore"]


class _Day:
    __slots__ = ("bytes", "charged")

    def __init__(self) -> None:
        self.bytes = 0
        self.charged: set[str] = set()


class _Pending:
    """One user's pending uploads: upload -> expiry, plus a heap by expiry (stale entries skipped)."""

    __slots__ = ("by_expiry", "expiry")

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}
        self.by_expiry: list[tuple[float, str]] = []

    def trim(self, now: float) -> None:
        while self.by_expiry and self.by_expiry[0][0] <= now:
            expiry, upload = heapq.heappop(self.by_expiry)
            if self.expiry.get(upload) == expiry:
                del self.expiry[upload]

    def oldest(self) -> float:
        while self.by_expiry[0][1] not in self.expiry:  # sent: removed from the dict only
            heapq.heappop(self.by_expiry)
        return self.by_expiry[0][0]

    def add(self, upload: str, expiry: float) -> None:
        self.expiry[upload] = expiry
        heapq.heappush(self.by_expiry, (expiry, upload))


class MemoryQuotaStore(QuotaStore):
    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._day = ""
        self._days: dict[str, _Day] = {}  # user -> today's usage; emptied when the day changes

    def _today(self, user_id: str, day: str) -> _Day:
        if day != self._day:
            self._day, self._days = day, {}
        usage = self._days.get(user_id)
        if usage is None:
            usage = self._days[user_id] = _Day()
        return usage

    def _live(self, user_id: str, now: float) -> _Pending:
        pending = self._pending.get(user_id)
        if pending is None:
            pending = self._pending[user_id] = _Pending()
        pending.trim(now)
        return pending

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
        if len(live.expiry) >= max_pending:
            return QuotaRefusal("pending_uploads", live.oldest() - now, len(live.expiry))
        usage = self._today(user_id, day)
        if declared_bytes is not None and usage.bytes + declared_bytes > bytes_per_day:
            return QuotaRefusal("upload_bytes_per_day", seconds_to_next_day(now), usage.bytes)
        live.add(upload, expires_at)
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
        pending = self._pending.get(user_id)
        if pending is not None:
            pending.expiry.pop(upload, None)
            if not pending.expiry:
                del self._pending[user_id]
        return None

    async def forget_user(self, user_id: str, *, day: str) -> None:
        self._pending.pop(user_id, None)
        if day == self._day:
            self._days.pop(user_id, None)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
