"""Messages in Firestore (``conversations/{cid}/messages``) and the objects they back (``imageRefs``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import msgspec
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import ArrayUnion, FieldFilter
from google.cloud.firestore_v1.async_document import AsyncDocumentReference

from chat_core.chatstore import (
    ConversationNotFound,
    ImageMetadata,
    Message,
    MessageDeleted,
    MessageEdit,
    MessageStore,
    ObjectAlreadyUsed,
    OutboxEntry,
    Page,
    StoredImage,
    created_event,
    deleted_event,
    edited,
    event_done,
    finished,
)
from chat_core.chatstore.firestore.base import OPTIMISTIC_ATTEMPTS, FirestoreBase, newest_first, pages
from chat_core.chatstore.firestore.documents import (
    IMAGE_REFS,
    MESSAGES,
    chunks,
    doc_id,
    message_of,
    to_fields,
)

_GET_ALL_CHUNK = 100


class FirestoreMessages(FirestoreBase, MessageStore):
    async def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        # The built-in single-field index on timestamp (ascending), as list_messages uses.
        query = (
            self._conversation_ref(conversation_id)
            .collection(MESSAGES)
            .where(filter=FieldFilter("timestamp", "<", before))
            .order_by("timestamp")
            .order_by("__name__")
        )
        async for snapshot in pages(query):
            yield message_of(snapshot)

    async def sent_by(self, user_id: str) -> AsyncIterator[tuple[str, Message]]:
        # Collection-group query over every conversation's messages: the collection-group index on
        # (senderId, timestamp) in firestore.indexes.json.
        query = (
            self.client.collection_group(MESSAGES)
            .where(filter=FieldFilter("senderId", "==", user_id))
            .order_by("timestamp")
            .order_by("__name__")
        )
        async for snapshot in pages(query):
            parent = snapshot.reference.parent.parent
            if parent is not None:
                yield parent.id, message_of(snapshot)

    def _message_ref(self, conversation_id: str, message_id: str) -> AsyncDocumentReference:
        ref: AsyncDocumentReference = (
            self._conversation_ref(conversation_id).collection(MESSAGES).document(message_id)
        )
        return ref

    async def create_message(
        self,
        conversation_id: str,
        message: Message,
        *,
        object_key: str | None = None,
        object_etag: str | None = None,
        trace: Mapping[str, str] | None = None,
        conversation_checked: bool = False,
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool]:
        if not conversation_checked:
            # A plain read, outside any transaction: it takes no lock on the busy conversation document.
            conversation = await self._conversation_ref(conversation_id).get(field_paths=["createdAt"])
            if not conversation.exists:
                raise ConversationNotFound(conversation_id)
        # One atomic batch of three create()s, no reads and no locks: the message, the object's
        # reference and the outbox entry are written together or not at all. create() fails on an
        # existing document, which is both the idempotency check (same message id) and the
        # one-object-one-message rule (same object reference); only then do we read to say which.
        message_ref = self._message_ref(conversation_id, message.message_id)
        referenced = list(dict.fromkeys([*([object_key] if object_key else []), *(i.key for i in images)]))
        image_refs = [
            (stored_key, self.client.collection(IMAGE_REFS).document(doc_id(stored_key)))
            for stored_key in referenced
        ]
        batch = self.client.batch()
        batch.create(message_ref, to_fields(message))
        for stored_key, image_ref in image_refs:
            batch.create(
                image_ref,
                {"storedKey": stored_key, "conversationId": conversation_id, "messageId": message.message_id},
            )
        self._append_event(
            batch,
            created_event(
                conversation_id,
                message,
                trace=trace,
                object_key=object_key,
                object_etag=object_etag,
                images=images,
            ),
        )
        try:
            await batch.commit()
        except gexc.AlreadyExists:
            existing = await message_ref.get()
            if existing.exists:
                return message_of(existing), False
            for _stored_key, image_ref in image_refs:
                holder = await image_ref.get()
                if holder.exists:
                    raise ObjectAlreadyUsed(str(holder.get("messageId"))) from None
            raise  # an outbox entry without its message: a message id reused elsewhere
        return message, True

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        snapshot = await self._message_ref(conversation_id, message_id).get()
        return message_of(snapshot) if snapshot.exists else None

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        *,
        deleted_by: str,
        deleted_at: dt.datetime,
        object_key: str | None = None,
        trace: Mapping[str, str] | None = None,
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool] | None:
        def change(current: Message) -> tuple[Message, OutboxEntry] | None:
            if current.deleted:
                return None
            tombstone = current.tombstone(deleted_by, deleted_at)
            return tombstone, deleted_event(
                conversation_id, tombstone, object_key=object_key, trace=trace, images=images
            )

        # The message's own fan-out, if still pending, would announce, notify and process what is gone.
        result = await self._change_message(conversation_id, message_id, change, drop_created=True)
        if result is None:
            return None
        message, changed = result
        return message, changed

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        edit: MessageEdit,
        *,
        edited_at: dt.datetime,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        def change(current: Message) -> tuple[Message, OutboxEntry | None] | None:
            if current.deleted:
                raise MessageDeleted(message_id)
            updated = edited(current, edit, edited_at)
            return updated, None if event is None else event_done(event, updated)

        result = await self._change_message(conversation_id, message_id, change)
        return None if result is None else result[0]

    async def _change_message(
        self,
        conversation_id: str,
        message_id: str,
        change: Callable[[Message], tuple[Message, OutboxEntry | None] | None],
        *,
        drop_created: bool = False,
    ) -> tuple[Message, bool] | None:
        """Replace a message by ``change(current)`` with its outbox entry in one batch, only if the message
        is unchanged since it was read (its update time as a precondition; a read receipt in between
        just makes it look again). ``change`` returning None: nothing to write."""
        ref = self._message_ref(conversation_id, message_id)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists:
                return None
            current = message_of(snapshot)
            result = change(current)
            if result is None:
                return current, False
            updated, entry = result
            batch = self.client.batch()
            # Every field, each replaced whole (a map value replaces the map): the stored message is
            # exactly ``updated``.
            batch.update(
                ref,
                to_fields(updated),
                option=self.client.write_option(last_update_time=snapshot.update_time),
            )
            if drop_created:
                batch.delete(self._outbox_ref(message_id))
            if entry is not None:
                self._append_event(batch, entry)
            try:
                await batch.commit()
            except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
                continue
            return updated, True
        raise RuntimeError(f"message {message_id} kept changing; not changed")

    async def list_messages(
        self, conversation_id: str, *, limit: int, before: str | None = None
    ) -> Page[Message]:
        # The built-in single-field index on timestamp serves this (a DESC order on one field, then
        # __name__ in the same direction): no composite index.
        return await newest_first(
            self._conversation_ref(conversation_id).collection(MESSAGES),
            time_field="timestamp",
            cursor=before,
            limit=limit,
            decode=message_of,
            position=lambda m: (m.timestamp, m.message_id),
        )

    async def mark_read(
        self, conversation_id: str, message_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> tuple[Message, bool] | None:
        # No transaction: many members read one message at once, and ArrayUnion merges on the server
        # without a lock. Two racing calls by the same reader may both report a change (harmless). The
        # update and its event are one batch: atomic, still without a lock.
        ref = self._message_ref(conversation_id, message_id)
        snapshot = await ref.get()
        if not snapshot.exists:
            return None
        message = message_of(snapshot)
        if user_id in message.read_by:
            return message, False
        read = msgspec.structs.replace(message, read_by=(*message.read_by, user_id))
        batch = self.client.batch()
        batch.update(ref, {"readBy": ArrayUnion([user_id])})
        if event is not None:
            self._append_event(batch, event_done(event, read))
        await batch.commit()
        return read, True

    async def image_message(self, conversation_id: str, stored_key: str) -> Message | None:
        ref = await self.client.collection(IMAGE_REFS).document(doc_id(stored_key)).get()
        if not ref.exists or ref.get("conversationId") != conversation_id:
            return None
        return await self.get_message(conversation_id, str(ref.get("messageId")))

    async def finish_image(
        self,
        conversation_id: str,
        message_id: str,
        metadata: ImageMetadata,
        *,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        # Optimistic: the update applies only to the version read, so two deliveries of one media job
        # cannot both finish the image (readBy changes in between just make it look again).
        ref = self._message_ref(conversation_id, message_id)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists:
                return None
            updated = finished(message_of(snapshot), metadata)
            if updated is None or updated.metadata is None:
                return None
            batch = self.client.batch()
            batch.update(
                ref,
                {"metadata": to_fields(updated.metadata)},
                option=self.client.write_option(last_update_time=snapshot.update_time),
            )
            if event is not None:
                self._append_event(batch, event_done(event, updated))
            try:
                await batch.commit()
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue
            return updated
        raise RuntimeError(f"message {message_id} kept changing while its image was being finished")

    # --- objects ----------------------------------------------------------------------------------
    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        refs = {doc_id(key): key for key in stored_keys}
        collection = self.client.collection(IMAGE_REFS)
        found: set[str] = set()
        for chunk in chunks(list(refs), _GET_ALL_CHUNK):
            async for snapshot in self.client.get_all([collection.document(doc) for doc in chunk]):
                if snapshot.exists:
                    found.add(refs[snapshot.id])
        return found
