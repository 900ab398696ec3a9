"""Push receipts in Firestore (``pushReceipts``): a claim is a lease, a done push is never claimed again."""

from __future__ import annotations

import datetime as dt

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_document import AsyncDocumentReference

from chat_core.chatstore import (
    PUSH_RECEIPT_TTL,
    PushClaim,
    PushReceiptStore,
)
from chat_core.chatstore.firestore.base import OPTIMISTIC_ATTEMPTS, FirestoreBase
from chat_core.chatstore.firestore.documents import (
    PUSH_RECEIPTS,
    doc_id,
    plain,
)


class FirestorePushReceipts(FirestoreBase, PushReceiptStore):
    def _receipt_ref(self, notification_id: str, device_token: str) -> AsyncDocumentReference:
        return self.client.collection(PUSH_RECEIPTS).document(doc_id(notification_id, device_token))

    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        # Optimistic, as elsewhere here: create the receipt if there is none; otherwise take over a lapsed
        # lease only if the receipt is unchanged since it was read (its update time as a precondition),
        # so of two claimers of one lapsed lease exactly one wins.
        ref = self._receipt_ref(notification_id, device_token)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            now = self._clock()
            fields = {
                "notificationId": notification_id,
                "claimedAt": now,
                "leasedUntil": now + lease,
                "expireAt": now + PUSH_RECEIPT_TTL,
            }
            try:
                await ref.create(fields)
            except gexc.AlreadyExists:
                pass
            else:
                return PushClaim(state="claimed", leased_until=now + lease)
            snapshot = await ref.get()
            if not snapshot.exists:
                continue  # released in between: create it again
            held = plain((snapshot.to_dict() or {}).get("leasedUntil"))
            if held is None:  # done (receipts from before leases have no leasedUntil: done as well)
                return PushClaim(state="done")
            if held > now:
                return PushClaim(state="leased", leased_until=held)
            try:
                await ref.update(
                    fields, option=self.client.write_option(last_update_time=snapshot.update_time)
                )
            except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
                continue  # another claimer, a completion or a release came first: look again
            return PushClaim(state="claimed", leased_until=now + lease)
        raise RuntimeError(f"push receipt {notification_id} kept changing; not claimed")

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        now = self._clock()
        await self._receipt_ref(notification_id, device_token).set(
            {"notificationId": notification_id, "leasedUntil": None, "expireAt": now + PUSH_RECEIPT_TTL},
            merge=True,
        )

    async def release_push(self, notification_id: str, device_token: str) -> None:
        ref = self._receipt_ref(notification_id, device_token)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists or (snapshot.to_dict() or {}).get("leasedUntil") is None:
                return  # nothing held, or done: a done push stays done
            try:
                await ref.delete(option=self.client.write_option(last_update_time=snapshot.update_time))
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue
            return
        raise RuntimeError(f"push receipt {notification_id} kept changing; not released")
