"""The conversations port: conversations and their membership."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Protocol

from chat_core.chatstore.events import OutboxEntry
from chat_core.chatstore.models import Conversation, LastMessage
from chat_core.chatstore.paging import Page


class ConversationStore(Protocol):
    """Conversations and their membership."""

    async def create_conversation(
        self, conversation: Conversation, *, event: OutboxEntry | None = None
    ) -> None:
        """Store it with ``event`` (its ``membership.changed``). Raises ConversationExists when the id is
        taken; never overwrites."""

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        """Members of the conversation; None when it does not exist. The membership read."""

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> Page[Conversation]:
        """Conversations ``user_id`` belongs to, most recently updated first. Raises InvalidCursor."""

    async def add_participants(
        self,
        conversation_id: str,
        user_ids: Collection[str],
        *,
        admins: Collection[str] = (),
        event: OutboxEntry | None = None,
        max_participants: int | None = None,
    ) -> Conversation:
        """Add ``user_ids`` as members and give ``admins`` (members, or among ``user_ids``) the admin role,
        in one atomic change, with ``event`` (its ``membership.changed``). Raises ConversationNotFound, and
        TooManyParticipants (nothing changed) when the members would then be more than
        ``max_participants``: checked in the same atomic change, so concurrent additions cannot pass it
        together."""

    async def remove_participant(
        self, conversation_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> Conversation:
        """Remove the member and any role they had, with ``event``. Raises ConversationNotFound."""

    async def set_push_image_previews(self, conversation_id: str, enabled: bool) -> Conversation:
        """Whether pushes of the conversation's images may carry a thumbnail. Raises ConversationNotFound."""

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
        """Set ``lastMessage``/``updatedAt`` unless a newer last message is already stored."""

    async def revise_last_message(self, conversation_id: str, last_message: LastMessage) -> None:
        """Set ``lastMessage`` when the stored one is the same message (edited or deleted since) or older;
        ``updatedAt`` never moves back. A later ``touch_conversation`` with the message's old version is
        then not newer, so it cannot undo the revision."""

    async def set_retention(self, conversation_id: str, days: int | None) -> Conversation:
        """Set (or, with None, clear) the conversation's ``retentionDays``. Raises ConversationNotFound."""

    def every_conversation(self) -> AsyncIterator[Conversation]:
        """Every conversation, by id, in pages (the retention job's pass)."""
