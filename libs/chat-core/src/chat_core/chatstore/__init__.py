"""The chat store: narrow ports for conversations, messages, devices, the outbox and push receipts.

Callers depend on the narrow port they use (``ConversationStore``, ``MessageStore``, ``DeviceStore``,
``OutboxStore``, ``PushReceiptStore``); one adapter per backend serves them all (``ChatStore``), so a
message, its image reference and its outbox entry still commit in one transaction.
Adapters: ``firestore.FirestoreChatStore`` (production; the emulator in tests) and
``sqlite.SqliteChatStore`` (embedded default, WAL). Both pass one contract suite with a section per
narrow port (``tests/contract/test_chatstore_contract.py``).

One module per concern, as Synapse splits its stores: the records (``models``), the outbox's entries
(``events``), keyset pages (``paging``), then one port each (``conversations``, ``messages``, ``devices``,
``outbox``, ``receipts``) and their union (``store.ChatStore``); everything is re-exported here, but
``albums`` (how an image message holds 2..``MAX_IMAGES_PER_MESSAGE`` images), imported as a module. Each
adapter is a package with the same concerns, each a class subclassing its port over one shared base
(``firestore.base.FirestoreBase``: the client; ``sqlite.base.SqliteBase``: the engine), composed into
the chat store; its ``create(...)`` takes its settings and a clock, never the composition root.

Firestore layout (SQLite mirrors it in tables):

* ``conversations/{cid}``: participants, name, createdAt, updatedAt, lastMessage, admins, pushImagePreviews
* ``conversations/{cid}/messages/{messageId}``: exactly the spec's message fields
* ``imageRefs/{sha256(stored_key)}``: which message an object backs (one object, at most one message)
* ``outbox/{eventId}``: the event outbox. Every event a client acts on (``EventKind``) is an entry written
  in the same transaction as the change it announces, and deleted once relayed: "a 201 means durably
  stored, and nothing a client acts on is dropped". A message's ``message.created`` entry has the
  message's id, so a retried send finds it taken, as it finds the message.
* ``devices/{sha256(token)}``: userId, token, platform, provider (absent: fcm)
* ``deviceUsers/{sha256(user_id)}``: userId, changedAt; rewritten by every registration of the user's
  devices, so that two concurrent ones cannot both pass ``MAX_DEVICES_PER_USER``
* ``pushReceipts/{sha256(notification_id + token)}``: a push to a device for a notification, claimed
  (``leasedUntil``: a time) or done (``leasedUntil`` null or absent)
"""

from __future__ import annotations

from chat_core.chatstore.conversations import ConversationStore
from chat_core.chatstore.devices import DeviceStore
from chat_core.chatstore.events import (
    EventKind,
    OutboxEntry,
    created_event,
    deleted_event,
    event_done,
    legacy_outbox_fields,
    new_event,
)
from chat_core.chatstore.messages import MessageStore, edited, finished
from chat_core.chatstore.models import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    Device,
    DeviceProvider,
    ImageMetadata,
    ImageStatus,
    ImageVariant,
    ImageVariants,
    LastMessage,
    Message,
    MessageDeleted,
    MessageEdit,
    MessageType,
    ObjectAlreadyUsed,
    Platform,
    StoredImage,
    TooManyParticipants,
)
from chat_core.chatstore.outbox import OutboxStore
from chat_core.chatstore.paging import (
    CURSOR_PATTERN,
    InvalidCursor,
    Page,
    decode_cursor,
    encode_cursor,
    page_of,
)
from chat_core.chatstore.receipts import PUSH_RECEIPT_TTL, PushClaim, PushClaimState, PushReceiptStore
from chat_core.chatstore.store import ChatStore

__all__ = [
    "CURSOR_PATTERN",
    "PUSH_RECEIPT_TTL",
    "ChatStore",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationStore",
    "Device",
    "DeviceProvider",
    "DeviceStore",
    "EventKind",
    "ImageMetadata",
    "ImageStatus",
    "ImageVariant",
    "ImageVariants",
    "InvalidCursor",
    "LastMessage",
    "Message",
    "MessageDeleted",
    "MessageEdit",
    "MessageStore",
    "MessageType",
    "ObjectAlreadyUsed",
    "OutboxEntry",
    "OutboxStore",
    "Page",
    "Platform",
    "PushClaim",
    "PushClaimState",
    "PushReceiptStore",
    "StoredImage",
    "TooManyParticipants",
    "created_event",
    "decode_cursor",
    "deleted_event",
    "edited",
    "encode_cursor",
    "event_done",
    "finished",
    "legacy_outbox_fields",
    "new_event",
    "page_of",
]
