"""Push tokens in Firestore (``devices``, one ``deviceUsers`` anchor per user)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection

import msgspec
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import FieldFilter

from chat_core.chatstore import (
    Device,
    DeviceStore,
)
from chat_core.chatstore.firestore.base import OPTIMISTIC_ATTEMPTS, FirestoreBase
from chat_core.chatstore.firestore.documents import (
    DEVICE_USERS,
    DEVICES,
    chunks,
    doc_id,
    plain,
    to_fields,
)

_IN_CHUNK = 30  # Firestore's limit on the values of an "in" filter
_DEVICE_ATTEMPTS = 12


class FirestoreDevices(FirestoreBase, DeviceStore):
    async def put_device(self, device: Device, *, max_devices: int | None = None) -> list[str]:
        # Keyed by the token: registering it again (for another user) moves it.
        ref = self.client.collection(DEVICES).document(doc_id(device.token))
        if max_devices is None:
            await ref.set(to_fields(device))
            return []
        # One atomic batch writes the device, deletes the evicted ones (each unchanged since read) and
        # bumps the user's anchor document (unchanged since read): two registrations of one user that
        # overlap cannot both commit, so the one that lost reads again and counts the winner's device.
        # Deletions and moves away only lower a user's count, so they need not touch the anchor.
        anchor = self.client.collection(DEVICE_USERS).document(doc_id(device.user_id))
        mine = self.client.collection(DEVICES).where(filter=FieldFilter("userId", "==", device.user_id))
        for attempt in range(_DEVICE_ATTEMPTS):
            anchor_snapshot = await anchor.get()
            others = [snapshot async for snapshot in mine.stream() if snapshot.get("token") != device.token]
            others.sort(key=lambda snapshot: (snapshot.get("updatedAt"), snapshot.get("token")), reverse=True)
            evicted = others[max(0, max_devices - 1) :]
            batch = self.client.batch()
            batch.set(ref, to_fields(device))
            for snapshot in evicted:
                batch.delete(
                    snapshot.reference, option=self.client.write_option(last_update_time=snapshot.update_time)
                )
            stamp = {"userId": device.user_id, "changedAt": device.updated_at}
            if anchor_snapshot.exists:
                batch.update(
                    anchor,
                    stamp,
                    option=self.client.write_option(last_update_time=anchor_snapshot.update_time),
                )
            else:
                batch.create(anchor, stamp)
            try:
                await batch.commit()
            except (gexc.FailedPrecondition, gexc.Conflict):
                await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # noqa: S311 - jitter
                continue
            return [str(snapshot.get("token")) for snapshot in evicted]
        raise gexc.Aborted(f"the devices of {device.user_id} kept changing; try again")  # type: ignore[no-untyped-call]

    async def delete_device(self, user_id: str, token: str) -> bool:
        ref = self.client.collection(DEVICES).document(doc_id(token))
        for _ in range(OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists or snapshot.get("userId") != user_id:
                return False
            try:
                await ref.delete(option=self.client.write_option(last_update_time=snapshot.update_time))
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue  # moved or re-registered meanwhile: look again
            return True
        return False

    async def devices_for(self, user_ids: Collection[str]) -> dict[str, list[Device]]:
        # Single-field index on userId ("in" filter, no order): built in.
        found: dict[str, list[Device]] = {}
        collection = self.client.collection(DEVICES)
        for chunk in chunks(list(dict.fromkeys(user_ids)), _IN_CHUNK):
            query = collection.where(filter=FieldFilter("userId", "in", list(chunk)))
            async for snapshot in query.stream():
                device = msgspec.convert(plain(snapshot.to_dict() or {}), Device)
                found.setdefault(device.user_id, []).append(device)
        for devices in found.values():
            devices.sort(key=lambda device: device.token)
        return found
