"""The event outbox's entry, and the entries the store's changes write with them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import msgspec

from chat_core.chatstore.models import Message, StoredImage

# What the event outbox carries (the wire names clients get are in ``chat_core.outbox``, which turns each
# kind into what is published). A new kind is added here, in ``chat_core.outbox.bus_events`` and, when it
# needs work besides publishing, in the relay's dispatch (``message_service.fanout.Fanout.deliver``).
EventKind = Literal[
    "message.created",
    "message.updated",
    "message.read",
    "message.deleted",
    "message.edited",
    "membership.changed",
]


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An event still to relay, stored in the same transaction as the change it announces.

    * ``message.created``: ``message`` as stored; its media job (``object_key``, ``object_etag``) and its
      notifications are queued by the relay too. ``event_id`` is the message's id, ``created_at`` its
      timestamp (``created_event``), so the entry a caller builds from the stored message is the stored one.
    * ``message.updated``: ``message`` as the change left it (the media processor finished its image).
    * ``message.read``: ``message`` as the change left it (``readBy``), ``user_id`` the reader.
    * ``message.deleted``: ``message`` the tombstone (``delete_message``); ``object_key`` the image's raw
      upload key. Besides publishing, the relay brings the conversation's ``lastMessage`` along and deletes
      every stored byte of the image (the raw upload, any refusal note, everything under the message's
      media prefix), and releases the entry only once the last byte is gone. ``event_id`` is
      ``{messageId}:deleted`` (``deleted_event``): one per message.
    * ``message.edited``: ``message`` as edited (``edit_message``); the relay also revises ``lastMessage``.
    * ``membership.changed``: ``added`` and ``removed`` users (a new conversation: every member added).

    A store method that takes ``event=`` writes it only when the call changes something, with ``message``
    set to the message as changed; ``event_done`` is that entry, as the caller rebuilds it from the answer.
    """

    event_id: str
    kind: EventKind
    conversation_id: str
    created_at: dt.datetime
    message: Message | None = None
    user_id: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    trace: dict[str, str] = {}  # W3C trace context of the change, so relayed work joins its trace
    # message.created of an image: the stored (raw upload) key and its ETag as verified at send.
    object_key: str | None = None
    object_etag: str | None = None
    # An album's images (``object_key`` is then the first's): message.created queues a media job per
    # image; message.deleted erases every image's raw upload.
    images: tuple[StoredImage, ...] = ()
    # message.updated of an album: the image that changed.
    index: int | None = None

    @property
    def message_id(self) -> str | None:
        return None if self.message is None else self.message.message_id


def created_event(
    conversation_id: str,
    message: Message,
    *,
    trace: Mapping[str, str] | None = None,
    object_key: str | None = None,
    object_etag: str | None = None,
    images: Sequence[StoredImage] = (),
) -> OutboxEntry:
    """The ``message.created`` entry ``create_message`` stores with ``message``."""
    return OutboxEntry(
        event_id=message.message_id,
        kind="message.created",
        conversation_id=conversation_id,
        created_at=message.timestamp,
        message=message,
        trace=dict(trace or {}),
        object_key=object_key,
        object_etag=object_etag,
        images=tuple(images),
    )


def deleted_event(
    conversation_id: str,
    tombstone: Message,
    *,
    object_key: str | None = None,
    trace: Mapping[str, str] | None = None,
    images: Sequence[StoredImage] = (),
) -> OutboxEntry:
    """The ``message.deleted`` entry ``delete_message`` stores with the tombstone: one per message."""
    return OutboxEntry(
        event_id=f"{tombstone.message_id}:deleted",
        kind="message.deleted",
        conversation_id=conversation_id,
        created_at=tombstone.deleted_at
        if isinstance(tombstone.deleted_at, dt.datetime)
        else dt.datetime.now(dt.UTC),
        message=tombstone,
        trace=dict(trace or {}),
        object_key=object_key,
        images=tuple(images),
    )


def new_event(
    kind: EventKind,
    conversation_id: str,
    *,
    message: Message | None = None,
    user_id: str | None = None,
    added: Collection[str] = (),
    removed: Collection[str] = (),
    trace: Mapping[str, str] | None = None,
) -> OutboxEntry:
    """An entry to hand a store method as ``event=`` (a fresh id, created now)."""
    return OutboxEntry(
        event_id=str(uuid.uuid4()),
        kind=kind,
        conversation_id=conversation_id,
        created_at=dt.datetime.now(dt.UTC),
        message=message,
        user_id=user_id,
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        trace=dict(trace or {}),
    )


def event_done(event: OutboxEntry, message: Message) -> OutboxEntry:
    """``event`` as the store wrote it with a change to ``message`` (``message`` set to the changed one)."""
    return msgspec.structs.replace(event, message=message)


def legacy_outbox_fields(fields: dict[str, object], key: str) -> dict[str, object]:
    """Entries stored before the event outbox were all ``message.created``, keyed by the message id."""
    fields.setdefault("event_id", key)
    fields.setdefault("kind", "message.created")
    return fields
