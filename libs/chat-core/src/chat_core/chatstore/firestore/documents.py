"""The Firestore chat store's layout: its collections, and how a record becomes a document and back."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from chat_core.chatstore import (
    Conversation,
    Message,
    OutboxEntry,
    legacy_outbox_fields,
)

CONVERSATIONS = "conversations"
MESSAGES = "messages"
IMAGE_REFS = "imageRefs"
OUTBOX = "outbox"
OUTBOX_SHARD_LEASES = "outboxShardLeases"
# The outbox's shards. Each is one range of the (shard, createdAt) index, which takes ~500 writes/s; 64
# carry ~32,000 outbox writes/s (bench.firestore_model counts ~4.4 per message: the message.created entry,
# a read receipt's, an image's update, each created and deleted), ~7,000 messages/s with room for uneven
# hashing. Changing it strands the entries of the shards dropped: drain the outbox first (depth 0).
OUTBOX_SHARDS = 64
DEVICES = "devices"
DEVICE_USERS = "deviceUsers"  # one anchor document per user with devices: serializes their registrations
PUSH_RECEIPTS = "pushReceipts"


# --- how records are documents ---
def plain(value: Any) -> Any:
    """Firestore hands back ``DatetimeWithNanoseconds``; msgspec wants exact ``datetime``s."""
    if isinstance(value, dt.datetime) and type(value) is not dt.datetime:
        return dt.datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=value.tzinfo or dt.UTC,
        )
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def to_fields(struct: msgspec.Struct) -> dict[str, Any]:
    """A struct as Firestore fields: camelCase names, datetimes kept as timestamps."""
    fields: dict[str, Any] = msgspec.to_builtins(struct, builtin_types=(dt.datetime,))
    return fields


def doc_id(*parts: str) -> str:
    """Document id for free-form keys (object keys, push tokens): fixed length, no '/' to escape."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def message_of(snapshot: DocumentSnapshot[Any]) -> Message:
    return msgspec.convert(plain(snapshot.to_dict() or {}), Message)


_OUTBOX_FIELDS = {
    "eventId": "event_id",
    "kind": "kind",
    "conversationId": "conversation_id",
    "createdAt": "created_at",
    "message": "message",
    "userId": "user_id",
    "added": "added",
    "removed": "removed",
    "trace": "trace",
    "objectKey": "object_key",
    "objectEtag": "object_etag",
    "images": "images",
    "index": "index",
}


def outbox_fields(entry: OutboxEntry) -> dict[str, Any]:
    """An outbox entry as stored (camelCase, like every other document here)."""
    fields = msgspec.to_builtins(entry, builtin_types=(dt.datetime,))
    return {stored: fields[name] for stored, name in _OUTBOX_FIELDS.items() if fields.get(name) is not None}


def outbox_entry(snapshot: DocumentSnapshot[Any]) -> OutboxEntry:
    data = plain(snapshot.to_dict() or {})
    fields = {name: data[stored] for stored, name in _OUTBOX_FIELDS.items() if data.get(stored) is not None}
    return msgspec.convert(legacy_outbox_fields(fields, snapshot.id), OutboxEntry)


def outbox_shard(event_id: str) -> int:
    """The outbox shard of an entry, spread evenly by its id: each shard's createdAt range gets
    1/OUTBOX_SHARDS of the writes (Firestore takes about 500 writes/s into one range of sequential values)."""
    return int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:4], "big") % OUTBOX_SHARDS


def is_free(snapshot: DocumentSnapshot[Any], now: dt.datetime) -> bool:
    """Nobody holds the outbox entry: never claimed, released, or its lease lapsed."""
    held = plain((snapshot.to_dict() or {}).get("leasedUntil"))
    return held is None or held <= now


def chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def conversation_of(snapshot: DocumentSnapshot[Any]) -> Conversation:
    data = plain(snapshot.to_dict() or {})
    return msgspec.convert({**data, "conversationId": snapshot.id}, Conversation)
