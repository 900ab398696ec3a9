"""Upload quotas per user: pending upload URLs, and image bytes per UTC day.

* **Pending uploads.** An upload URL takes a slot until its object is sent or the URL expires; at most
  ``MAX_PENDING_UPLOADS`` slots per user. A slot is the stored key, scored by the URL's expiry.
* **Bytes per day.** Sends count the verified size of their image, once per object (a retried send or
  one that failed after the count is not counted again); an upload URL whose declared ``size_bytes``
  would go over ``UPLOAD_BYTES_PER_DAY`` is refused, and so is a send whose real size would.

Over either: 429 ``quota_exceeded`` with ``Retry-After`` (when the oldest slot expires, or the next UTC
day). The store is the limit store (``LIMIT_STORE``): Redis in the cloud, where one Lua script per check
keeps it atomic across replicas, and the process's memory embedded. Not the message store: these are
short-lived counters on the hot path, and a Firestore transaction per upload URL would cost more than
the URL. Like the rate limits, a quota whose store is down fails open (``chat_rate_limit_errors_total``
``{check="quota"}``).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Protocol

import msgspec

from chat_core import metrics
from chat_core.errors import ProblemError
from chat_core.ratelimit import StoreHealth
from chat_core.settings import LimitSettings

__all__ = ["QuotaExceeded", "QuotaRefusal", "QuotaStore", "Quotas", "utc_day"]

DAY_SECONDS = 86400


class QuotaRefusal(msgspec.Struct, frozen=True):
    """Why a store said no: which quota, and seconds until it may say yes."""

    quota: str  # pending_uploads | upload_bytes_per_day
    retry_after: float
    used: int  # slots or bytes in use


class QuotaStore(Protocol):
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
        """Take a pending-upload slot for ``upload`` until ``expires_at`` (Unix seconds), unless the user has
        ``max_pending`` live ones or ``declared_bytes`` would take the day's bytes over ``bytes_per_day``."""
        ...

    async def charge_send(
        self, user_id: str, upload: str, *, size_bytes: int, bytes_per_day: int, day: str
    ) -> QuotaRefusal | None:
        """Free ``upload``'s slot and count ``size_bytes`` against the day, once per upload; refuse
        (counting nothing) when that would go over ``bytes_per_day``."""
        ...

    async def forget_user(self, user_id: str, *, day: str) -> None:
        """Drop everything kept about ``user_id``: pending-upload slots and ``day``'s bytes (an erasure)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def utc_day(now: float | None = None) -> str:
    day = int((time.time() if now is None else now) // DAY_SECONDS)
    text = _day_text.get(day)
    if text is None:  # once a day (formatting it cost 2 µs on every upload URL and send)
        text = dt.datetime.fromtimestamp(day * DAY_SECONDS, dt.UTC).strftime("%Y%m%d")
        if len(_day_text) > 4:
            _day_text.clear()
        _day_text[day] = text
    return text


_day_text: dict[int, str] = {}


def seconds_to_next_day(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return DAY_SECONDS - (now % DAY_SECONDS)


class QuotaExceeded(ProblemError):
    def __init__(self, refusal: QuotaRefusal, limit: int) -> None:
        retry_after = max(1, math.ceil(refusal.retry_after))
        what = (
            f"{refusal.used} upload URLs are pending (neither sent nor expired); the limit is {limit}"
            if refusal.quota == "pending_uploads"
            else f"this would take today's image bytes over the limit of {limit} (used: {refusal.used})"
        )
        super().__init__(
            429,
            "quota_exceeded",
            f"{what}; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            extra={"quota": refusal.quota, "limit": limit},
        )


class Quotas:
    """The quotas of ``LimitSettings`` over one store, failing open when the store is down."""

    def __init__(self, store: QuotaStore, settings: LimitSettings) -> None:
        self.store = store
        self._max_pending = settings.max_pending_uploads
        self._bytes_per_day = settings.upload_bytes_per_day
        self._health = StoreHealth("quota")

    def _refuse(self, refusal: QuotaRefusal) -> QuotaExceeded:
        metrics.RATE_LIMITED.labels(refusal.quota).inc()
        limit = self._max_pending if refusal.quota == "pending_uploads" else self._bytes_per_day
        return QuotaExceeded(refusal, limit)

    async def reserve_upload(
        self, user_id: str, upload: str, *, expires_at: float, declared_bytes: int | None
    ) -> None:
        """Raises ``QuotaExceeded`` (429) when the user may not have another upload URL now."""
        if self._health.skipping():
            return
        try:
            refusal = await self.store.reserve_upload(
                user_id,
                upload,
                expires_at=expires_at,
                declared_bytes=declared_bytes,
                max_pending=self._max_pending,
                bytes_per_day=self._bytes_per_day,
                day=utc_day(),
            )
        except Exception as exc:
            self._health.failed(exc)
            return
        self._health.succeeded()
        if refusal is not None:
            raise self._refuse(refusal)

    async def forget_user(self, user_id: str) -> None:
        """A user's erasure: their quota records go (raises when the store fails: the job retries)."""
        await self.store.forget_user(user_id, day=utc_day())

    async def charge_send(self, user_id: str, upload: str, size_bytes: int) -> None:
        """Raises ``QuotaExceeded`` (429) when this image would take the user over today's bytes."""
        if self._health.skipping():
            return
        try:
            refusal = await self.store.charge_send(
                user_id, upload, size_bytes=size_bytes, bytes_per_day=self._bytes_per_day, day=utc_day()
            )
        except Exception as exc:
            self._health.failed(exc)
            return
        self._health.succeeded()
        if refusal is not None:
            raise self._refuse(refusal)
