"""The push receipts port: a notification pushed at most once per device, and no push lost to a crash."""

from __future__ import annotations

import datetime as dt
from typing import Literal, Protocol

import msgspec

# How long a push receipt is kept: longer than a notification can be redelivered (SQS keeps a message
# at most 14 days). Firestore drops older ones with a TTL policy on ``pushReceipts.expireAt``.
PUSH_RECEIPT_TTL = dt.timedelta(days=14)


PushClaimState = Literal["claimed", "leased", "done"]


class PushClaim(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``claim_push``.

    ``claimed``: this call holds the pair until ``leased_until``; ``leased``: another claim holds it until
    ``leased_until`` (its push may be under way: try again after that); ``done``: pushed, never again.
    """

    state: PushClaimState
    leased_until: dt.datetime | None = None


class PushReceiptStore(Protocol):
    """A redelivered notification never pushes twice to one device, and a crashed claimer loses no push.

    A claim is a lease: it holds a (notification, device) pair for ``lease``, long enough for one push.
    A pushed pair is marked done and is never claimed again; a claim neither done nor within its lease
    (its holder crashed between claim and push) can be taken again. Each call is atomic.
    """

    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        """Claim the pair for ``lease`` unless it is done or another claim's lease still runs."""

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        """Mark the pair pushed: no later claim succeeds."""

    async def release_push(self, notification_id: str, device_token: str) -> None:
        """Undo a claim whose push failed, so a retry may send it (a done pair stays done)."""
