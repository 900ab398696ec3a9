"""Firestore MessageStore (production; the emulator in tests), on ``google-cloud-firestore``'s AsyncClient.

Layout: see ``chat_core.chatstore``. Every query, and the index serving it (the emulator enforces
none, so this is reasoned, and ``firestore.indexes.json`` at the repo root is what to deploy):

* ``list_conversations``: ``participants`` array-contains + ``updatedAt`` DESC, ``__name__`` DESC:
  the one composite index in ``firestore.indexes.json``;
* ``list_messages``: one conversation's ``messages``, ``timestamp`` DESC, ``__name__`` DESC: the
  automatic single-field index (``__name__`` follows the last order's direction);
* ``pending_outbox`` / ``claim_outbox`` / ``outbox_stats``: per shard, ``shard`` == n and ``createdAt`` < t
  ordered by ``createdAt``: the composite index (``shard``, ``createdAt``); ``count()`` needs none;
* ``devices_for``: ``userId`` in [...]: automatic single-field index.

Everything else reads documents by id. Fields never queried are exempt from indexing (fewer index
writes: ``readBy`` changes on every read receipt), and ``pushReceipts.expireAt`` carries a TTL policy.
So are fields whose values only grow (``createdAt``, ``updatedAt``, ``claimedAt``, ``leasedUntil``) unless
a query uses their single-field index: an index range of sequential values takes about 500 writes/s
before Firestore hot-spots it, for the whole deployment. The outbox, which every event writes twice, is
split into ``OUTBOX_SHARDS`` shards by its entry id (``outbox_shard``), so each range of its composite
index takes a 64th of the writes; the relay reads the shards at once and leases a shard it claims in
(``outboxShardLeases/{n}``), so replicas split a backlog.

Write rates: Firestore sustains about one write per second per document. Nothing on the send path
writes the conversation document: a message, its image reference and its outbox entry are three new
documents, and ``lastMessage``/``updatedAt`` arrive later through ``touch_conversation``, which callers
coalesce per conversation (``message_service.last_message``).
"""

from __future__ import annotations

from chat_core.chatstore import ChatStore
from chat_core.chatstore.firestore.base import FirestoreBase
from chat_core.chatstore.firestore.conversations import FirestoreConversations
from chat_core.chatstore.firestore.devices import FirestoreDevices
from chat_core.chatstore.firestore.documents import (
    CONVERSATIONS,
    DEVICE_USERS,
    DEVICES,
    IMAGE_REFS,
    MESSAGES,
    OUTBOX,
    OUTBOX_SHARD_LEASES,
    OUTBOX_SHARDS,
    PUSH_RECEIPTS,
    outbox_shard,
)
from chat_core.chatstore.firestore.messages import FirestoreMessages
from chat_core.chatstore.firestore.outbox import FirestoreOutbox
from chat_core.chatstore.firestore.receipts import FirestorePushReceipts
from chat_core.settings import FirestoreSettings
from chat_core.timestamps import Clock, utc_now

__all__ = [
    "CONVERSATIONS",
    "DEVICES",
    "DEVICE_USERS",
    "IMAGE_REFS",
    "MESSAGES",
    "OUTBOX",
    "OUTBOX_SHARDS",
    "OUTBOX_SHARD_LEASES",
    "PUSH_RECEIPTS",
    "FirestoreBase",
    "FirestoreChatStore",
    "create",
    "outbox_shard",
]


class FirestoreChatStore(
    FirestoreConversations,
    FirestoreMessages,
    FirestoreDevices,
    FirestoreOutbox,
    FirestorePushReceipts,
    ChatStore,
):
    """Every narrow store of the chat store over one Firestore client (``FirestoreBase``)."""


def create(settings: FirestoreSettings, *, clock: Clock = utc_now) -> FirestoreChatStore:
    """The chat store on the Firestore database ``settings`` name (the emulator when they name one)."""
    return FirestoreChatStore(settings, clock=clock)
