"""Conversations and their membership in Firestore (``conversations/{cid}``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import msgspec
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import ArrayRemove, ArrayUnion, FieldFilter

from chat_core.chatstore import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationStore,
    LastMessage,
    OutboxEntry,
    Page,
    TooManyParticipants,
)
from chat_core.chatstore.firestore.base import OPTIMISTIC_ATTEMPTS, FirestoreBase, newest_first, pages
from chat_core.chatstore.firestore.documents import (
    CONVERSATIONS,
    conversation_of,
    plain,
    to_fields,
)


class FirestoreConversations(FirestoreBase, ConversationStore):
    async def create_conversation(
        self, conversation: Conversation, *, event: OutboxEntry | None = None
    ) -> None:
        data = to_fields(conversation)
        del data["conversationId"]
        batch = self.client.batch()
        batch.create(self._conversation_ref(conversation.conversation_id), data)
        if event is not None:
            self._append_event(batch, event)
        try:
            await batch.commit()
        except gexc.AlreadyExists:
            raise ConversationExists(conversation.conversation_id) from None

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        snapshot = await self._conversation_ref(conversation_id).get()
        return conversation_of(snapshot) if snapshot.exists else None

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        snapshot = await self._conversation_ref(conversation_id).get(field_paths=["participants"])
        if not snapshot.exists:
            return None
        return frozenset(snapshot.get("participants") or ())

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> Page[Conversation]:
        # Index: conversations (participants CONTAINS, updatedAt DESC) — firestore.indexes.json.
        return await newest_first(
            self.client.collection(CONVERSATIONS).where(
                filter=FieldFilter("participants", "array_contains", user_id)
            ),
            time_field="updatedAt",
            cursor=cursor,
            limit=limit,
            decode=conversation_of,
            position=lambda c: (c.updated_at, c.conversation_id),
        )

    async def add_participants(
        self,
        conversation_id: str,
        user_ids: Collection[str],
        *,
        admins: Collection[str] = (),
        event: OutboxEntry | None = None,
        max_participants: int | None = None,
    ) -> Conversation:
        # ArrayUnion is applied by the server: no transaction, so concurrent additions neither lose each
        # other nor queue on a lock. Members and roles change in one update.
        change: dict[str, Any] = {}
        if user_ids:  # Firestore refuses an empty union
            change["participants"] = ArrayUnion(list(dict.fromkeys(user_ids)))
        if admins:
            change["admins"] = ArrayUnion(list(dict.fromkeys(admins)))
        if max_participants is None or not user_ids:
            return await self._update_participants(conversation_id, change, event)
        # The limit: read the members, then update only if the document is unchanged since (its update
        # time as a precondition), so two additions that each fit alone cannot both commit.
        ref = self._conversation_ref(conversation_id)
        wanted = list(dict.fromkeys(user_ids))
        for attempt in range(OPTIMISTIC_ATTEMPTS * 2):
            snapshot = await ref.get(field_paths=["participants"])
            if not snapshot.exists:
                raise ConversationNotFound(conversation_id)
            members = set(snapshot.get("participants") or [])
            if len(members) + sum(user not in members for user in wanted) > max_participants:
                raise TooManyParticipants(max_participants)
            batch = self.client.batch()
            batch.update(ref, change, option=self.client.write_option(last_update_time=snapshot.update_time))
            if event is not None:
                self._append_event(batch, event)
            try:
                await batch.commit()
            except gexc.FailedPrecondition:
                await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # noqa: S311 - jitter
                continue
            except gexc.NotFound:
                raise ConversationNotFound(conversation_id) from None
            return await self._update_participants(conversation_id, {}, None)
        raise gexc.Aborted(f"conversation {conversation_id} kept changing; try again")  # type: ignore[no-untyped-call]

    async def set_push_image_previews(self, conversation_id: str, enabled: bool) -> Conversation:
        return await self._update_participants(conversation_id, {"pushImagePreviews": enabled}, None)

    async def remove_participant(
        self, conversation_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> Conversation:
        return await self._update_participants(
            conversation_id, {"participants": ArrayRemove([user_id]), "admins": ArrayRemove([user_id])}, event
        )

    async def _update_participants(
        self,
        conversation_id: str,
        change: dict[str, Any],
        event: OutboxEntry | None,
        *,
        option: Any = None,
    ) -> Conversation:
        """Apply ``change`` with ``event`` in one batch (under ``option``, a write precondition, if any)."""
        ref = self._conversation_ref(conversation_id)
        try:
            if change:
                # The event goes with the change (no read: the caller's list of who changed is the event's;
                # a racing duplicate announcement is harmless, a lost one is not).
                batch = self.client.batch()
                batch.update(ref, change, option=option)
                if event is not None:
                    self._append_event(batch, event)
                await batch.commit()
        except gexc.NotFound:
            raise ConversationNotFound(conversation_id) from None
        snapshot = await ref.get()
        if not snapshot.exists:
            raise ConversationNotFound(conversation_id)
        return conversation_of(snapshot)

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
        await self._set_last_message(conversation_id, last_message, last_message.is_newer_than)

    async def revise_last_message(self, conversation_id: str, last_message: LastMessage) -> None:
        await self._set_last_message(conversation_id, last_message, last_message.revises)

    async def set_retention(self, conversation_id: str, days: int | None) -> Conversation:
        return await self._update_participants(conversation_id, {"retentionDays": days}, None)

    async def _set_last_message(
        self,
        conversation_id: str,
        last_message: LastMessage,
        replaces: Callable[[LastMessage | None], bool],
    ) -> None:
        # Optimistic: read, then write only if the document is unchanged since (its update time as a
        # precondition). Lock-free, and it writes nothing when a newer last message is already there.
        ref = self._conversation_ref(conversation_id)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get(field_paths=["updatedAt", "lastMessage"])
            if not snapshot.exists:
                return
            data = plain(snapshot.to_dict() or {})
            raw = data.get("lastMessage")
            current = None if raw is None else msgspec.convert(raw, LastMessage)
            if not replaces(current):
                return
            fields = {
                "lastMessage": to_fields(last_message),
                "updatedAt": max(data["updatedAt"], last_message.timestamp),
            }
            try:
                await ref.update(
                    fields, option=self.client.write_option(last_update_time=snapshot.update_time)
                )
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue
            return
        raise RuntimeError(f"conversation {conversation_id} kept changing; lastMessage not updated")

    async def every_conversation(self) -> AsyncIterator[Conversation]:
        async for snapshot in pages(self.client.collection(CONVERSATIONS).order_by("__name__")):
            yield conversation_of(snapshot)
