"""The messages port: messages, their read receipts and the objects they reference."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import msgspec

from chat_core.chatstore import albums
from chat_core.chatstore.events import OutboxEntry
from chat_core.chatstore.models import ImageMetadata, Message, MessageEdit, StoredImage
from chat_core.chatstore.paging import Page


def edited(message: Message, edit: MessageEdit, edited_at: dt.datetime) -> Message:
    """``message`` with ``edit`` applied (both adapters apply it the same way)."""
    content = message.content if edit.content is msgspec.UNSET else edit.content
    metadata = message.metadata
    if metadata is not None and edit.alt_text is not msgspec.UNSET:
        metadata = albums.with_alt_text(metadata, edit.index, edit.alt_text)
    return msgspec.structs.replace(message, content=content, metadata=metadata, edited_at=edited_at)


def finished(current: Message, metadata: ImageMetadata) -> Message | None:
    """``current`` with its image finished as ``metadata``; None when it may not be (see ``finish_image``).

    For an album, ``metadata`` is the one image finished (found by its ``object_key``): only that image
    changes, so the images of one album finish independently, each once."""
    if current.deleted or current.metadata is None:
        return None
    index = albums.index_of(current.metadata, metadata.object_key)
    image = albums.image_at(current.metadata, index)
    if image is None or image.status not in (None, "processing"):
        return None
    # The media job built ``metadata`` from the message it read; an edit since then wins.
    done = msgspec.structs.replace(metadata, alt_text=image.alt_text, images=msgspec.UNSET)
    return msgspec.structs.replace(current, metadata=albums.with_image(current.metadata, index, done))


class MessageStore(Protocol):
    """Messages, their read receipts and the objects they reference."""

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
        """Store ``message`` atomically with its image reference and its outbox entry (``created_event``).

        An album passes every image as ``images`` (``object_key`` is its first's): each stored key gets
        its reference, all or none (ObjectAlreadyUsed when any is taken), and the entry lists them all.

        The outbox entry carries ``object_key`` and ``object_etag`` (the ETag verified at send): the
        media job the relay queues for an image message.

        Returns ``(message, True)`` when written. When a message with the same ``message_id`` already
        exists (an idempotent retry) nothing is written and ``(existing, False)`` is returned.
        ``object_key`` is the *stored* key the message references; when another message already
        references it, raises ObjectAlreadyUsed. Raises ConversationNotFound, unless
        ``conversation_checked``: the caller has just read the conversation (its membership), and
        conversations are never deleted, so a store may skip a round trip it would spend on the check.
        """

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None: ...

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
        """Turn the message into a tombstone (``Message.tombstone``), in one transaction with its
        ``message.deleted`` entry (``deleted_event``; ``object_key``: the image's stored raw key, whose
        bytes the relay deletes) and the removal of its ``message.created`` entry if still pending (a
        message deleted before its fan-out ran is never announced, notified or processed).

        ``(tombstone, True)`` when deleted now; ``(tombstone, False)`` when it already was one (nothing
        written); None when there is no such message. The image reference stays: the object can never
        back another message, and the proxy can tell a deleted image from one that never was.
        """

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        edit: MessageEdit,
        *,
        edited_at: dt.datetime,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        """Apply ``edit`` and set ``editedAt``, in one transaction with ``event`` (its ``message.edited``).

        None when there is no such message; raises MessageDeleted for a tombstone. ``alt_text`` applies to
        an image message's metadata (the caller refuses it for text).
        """

    def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        """The conversation's messages older than ``before``, oldest first, tombstones included (the
        retention job's; read in pages, so the caller may change what it has read)."""

    def sent_by(self, user_id: str) -> AsyncIterator[tuple[str, Message]]:
        """(conversation id, message) of every message ``user_id`` sent, in any conversation (also those
        they left), oldest first, tombstones included; read in pages (a user's erasure and export)."""

    async def list_messages(
        self, conversation_id: str, *, limit: int, before: str | None = None
    ) -> Page[Message]:
        """Newest first; the cursor pages to older messages and is stable while new ones arrive.

        Raises InvalidCursor.
        """

    async def mark_read(
        self, conversation_id: str, message_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> tuple[Message, bool] | None:
        """Add ``user_id`` to ``readBy`` (idempotent), with ``event`` (its ``message.read``) when it changed.

        ``(message, changed)``; None when no such message."""

    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        """Which of ``stored_keys`` back a message (for orphan cleanup)."""

    async def image_message(self, conversation_id: str, stored_key: str) -> Message | None:
        """The message of ``conversation_id`` that ``stored_key`` backs (the image proxy's lookup)."""

    async def finish_image(
        self,
        conversation_id: str,
        message_id: str,
        metadata: ImageMetadata,
        *,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        """Replace the image metadata of a message still ``processing`` (or without a status), with
        ``event`` (its ``message.updated``). For an album, ``metadata`` is one image (found by its
        ``object_key``) and only that image must still be processing (``finished``).

        Returns the updated message; None when there is no such message, it is already ready or
        failed (a redelivered media job changes nothing twice), or it was deleted. An ``alt_text`` edited
        while the image was processing is kept.
        """
