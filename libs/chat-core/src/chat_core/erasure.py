"""Deleting every stored byte of a deleted message's image, in one place for every path that deletes.

The message service's outbox relay runs it for each ``deleted`` entry (unsend, retention, a user's
erasure); the media processor runs it when it finds that the message it worked on was deleted meanwhile
(its derivatives may land after the relay's pass). What goes: the raw upload (if the media processor has
not deleted it yet), the refusal note under ``refused/`` (if one was ever written for that key) and every
object under ``{cid}/media/{messageId}/`` (listed, not guessed: whatever a job wrote is found). Each
delete is idempotent, so a retry after a failure half-way repeats nothing harmful.
"""

from __future__ import annotations

from chat_core import keys, ledger, metrics
from chat_core.ledger import StorageLedger
from chat_core.objectstore import ObjectStore

__all__ = ["ImageEraser"]


class ImageEraser:
    def __init__(self, objects: ObjectStore, storage: StorageLedger | None = None) -> None:
        self._objects = objects
        self._storage = storage

    async def erase(self, conversation_id: str, message_id: str, raw_key: str | None) -> int:
        """Delete the image's objects; the number deleted. Raises when the object store fails (retry)."""
        deleted = 0
        if raw_key is not None:
            raw = await self._objects.head(raw_key)
            if raw is not None:
                await self._objects.delete(raw_key)
                await self._count("raw", 1, raw.size)
                deleted += 1
            try:
                note = keys.refusal_key(raw_key)
            except keys.InvalidKey:
                note = None
            if note is not None and await self._objects.head(note) is not None:
                await self._objects.delete(note)
                metrics.ERASED_OBJECTS.labels("note").inc()
                deleted += 1
        derived = [
            info async for info in self._objects.list(keys.derivative_prefix(conversation_id, message_id))
        ]
        for info in derived:
            await self._objects.delete(info.key)
        if derived:
            await self._count("derived", len(derived), sum(info.size for info in derived))
        return deleted + len(derived)

    async def _count(self, kind: ledger.Kind, objects: int, size: int) -> None:
        metrics.ERASED_OBJECTS.labels(kind).inc(objects)
        if self._storage is not None:
            await ledger.record(self._storage, kind, -objects, -size)
