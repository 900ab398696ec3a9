"""The event outbox in Firestore: ``OUTBOX_SHARDS`` shards by entry id, leased per shard while claiming."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import random
from collections.abc import Collection
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import DELETE_FIELD, FieldFilter
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_query import AsyncQuery
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from chat_core.chatstore import (
    OutboxEntry,
    OutboxStore,
)
from chat_core.chatstore.firestore.base import FirestoreBase
from chat_core.chatstore.firestore.documents import (
    OUTBOX,
    OUTBOX_SHARD_LEASES,
    OUTBOX_SHARDS,
    chunks,
    is_free,
    outbox_entry,
    plain,
)

_BATCH_LIMIT = 500  # writes per batch
_CLAIM_SCAN = 4  # a claim reads up to this many entries per one it wants (others may hold the oldest)


class FirestoreOutbox(FirestoreBase, OutboxStore):
    def _shard_query(self, shard: int, cutoff: dt.datetime, limit: int) -> AsyncQuery:
        # Composite index outbox (shard ASC, createdAt ASC): firestore.indexes.json.
        query: AsyncQuery = (
            self.client.collection(OUTBOX)
            .where(filter=FieldFilter("shard", "==", shard))
            .where(filter=FieldFilter("createdAt", "<", cutoff))
            .order_by("createdAt")
            .limit(limit)
        )
        return query

    async def _oldest_by_shard(
        self, cutoff: dt.datetime, per_shard: int
    ) -> list[tuple[int, list[DocumentSnapshot[Any]]]]:
        """Each shard's oldest entries before ``cutoff``: one query per shard, all at once."""

        async def read(shard: int) -> list[DocumentSnapshot[Any]]:
            return [snapshot async for snapshot in self._shard_query(shard, cutoff, per_shard).stream()]

        found = await asyncio.gather(*(read(shard) for shard in range(OUTBOX_SHARDS)))
        return list(enumerate(found))

    async def pending_outbox(self, *, older_than: float, limit: int) -> list[OutboxEntry]:
        cutoff = self._clock() - dt.timedelta(seconds=older_than)
        snapshots = [s for _shard, found in await self._oldest_by_shard(cutoff, limit) for s in found]
        entries = sorted((outbox_entry(s) for s in snapshots), key=lambda e: (e.created_at, e.event_id))
        return entries[:limit]

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        # Every shard is read at once (its own index range), held ones included (leasedUntil is not indexed,
        # and a second inequality would need its own index). A shard with free entries is then leased for
        # the pass, so replicas relaying a backlog split the shards instead of racing on the same entries;
        # within a leased shard each free entry is taken with its update time as a precondition (of two
        # claimers of one entry exactly one wins, without a transaction or a lock), oldest first across
        # shards. An empty outbox (the usual case: immediate attempts deleted everything) costs no write.
        now = self._clock()
        per_shard = max(_CLAIM_SCAN, _CLAIM_SCAN * math.ceil(limit / OUTBOX_SHARDS))
        by_shard = await self._oldest_by_shard(now - dt.timedelta(seconds=older_than), per_shard)
        wanted = {shard: [s for s in found if is_free(s, now)] for shard, found in by_shard}
        wanted = {shard: free for shard, free in wanted.items() if free}
        if not wanted:
            return []
        order = list(wanted)
        random.shuffle(order)  # replicas start on different shards
        leased = [
            shard
            for shard, won in zip(
                order,
                await asyncio.gather(*(self._lease_shard(shard, now, lease) for shard in order)),
                strict=True,
            )
            if won
        ]
        try:
            free = sorted(
                (s for shard in leased for s in wanted[shard]),
                key=lambda s: (plain(s.get("createdAt")), s.id),
            )[:limit]
            claimed = await asyncio.gather(*(self._claim_entry(s, now + lease) for s in free))
        finally:
            await asyncio.gather(*(self._release_shard(shard) for shard in leased), return_exceptions=True)
        return [entry for entry in claimed if entry is not None]

    def _shard_lease_ref(self, shard: int) -> AsyncDocumentReference:
        return self.client.collection(OUTBOX_SHARD_LEASES).document(str(shard))

    async def _lease_shard(self, shard: int, now: dt.datetime, lease: dt.timedelta) -> bool:
        """Hold ``shard`` while claiming in it, unless another relay does (create, or take over a lapsed
        lease with the update time as a precondition)."""
        ref = self._shard_lease_ref(shard)
        fields = {"leasedUntil": now + lease}
        try:
            await ref.create(fields)
        except gexc.AlreadyExists:
            pass
        else:
            return True
        snapshot = await ref.get()
        if not snapshot.exists or not is_free(snapshot, now):
            return False
        try:
            await ref.update(fields, option=self.client.write_option(last_update_time=snapshot.update_time))
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
            return False
        return True

    async def _release_shard(self, shard: int) -> None:
        await self._shard_lease_ref(shard).delete()

    async def _claim_entry(self, snapshot: DocumentSnapshot[Any], until: dt.datetime) -> OutboxEntry | None:
        try:
            await snapshot.reference.update(
                {"leasedUntil": until}, option=self.client.write_option(last_update_time=snapshot.update_time)
            )
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
            return None  # another claimer, or the delivery's delete, came first
        return outbox_entry(snapshot)

    async def release_outbox(self, event_ids: Collection[str]) -> None:
        async def release(event_id: str) -> None:
            with contextlib.suppress(gexc.NotFound):  # delivered and deleted meanwhile: nothing to give up
                await self._outbox_ref(event_id).update({"leasedUntil": DELETE_FIELD})

        await asyncio.gather(*(release(event_id) for event_id in dict.fromkeys(event_ids)))

    async def delete_outbox(self, event_ids: Collection[str]) -> None:
        for chunk in chunks(list(dict.fromkeys(event_ids)), _BATCH_LIMIT):
            batch = self.client.batch()
            for event_id in chunk:
                batch.delete(self._outbox_ref(event_id))
            await batch.commit()

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        # The count needs no index; the oldest is the oldest of each shard's oldest.
        counted = await self.client.collection(OUTBOX).count().get()  # type: ignore[no-untyped-call]
        far_future = self._clock() + dt.timedelta(days=3650)
        oldest = [
            plain(found[0].get("createdAt"))
            for _shard, found in await self._oldest_by_shard(far_future, 1)
            if found
        ]
        return int(counted[0][0].value), min(oldest, default=None)
