"""Firestore MessageStore (production; the emulator in tests), on ``google-cloud-firestore``'s AsyncClient.

Layout: see ``chat_core.messagestore``. Every query, and the index serving it (the emulator enforces
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

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import os
import random
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1 import DELETE_FIELD, ArrayRemove, ArrayUnion, AsyncClient, FieldFilter
from google.cloud.firestore_v1.async_batch import AsyncWriteBatch
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_query import AsyncQuery
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import BaseQuery

from chat_core.messagestore import (
    PUSH_RECEIPT_TTL,
    ChatStore,
    Conversation,
    ConversationExists,
    ConversationNotFound,
    Device,
    ImageMetadata,
    LastMessage,
    Message,
    MessageDeleted,
    MessageEdit,
    ObjectAlreadyUsed,
    OutboxEntry,
    Page,
    PushClaim,
    StoredImage,
    TooManyParticipants,
    created_event,
    decode_cursor,
    deleted_event,
    edited,
    event_done,
    finished,
    legacy_outbox_fields,
    page_of,
)
from chat_core.settings import FirestoreSettings

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["FirestoreChatStore", "create"]

T = TypeVar("T")


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
_PAGE = 200  # documents per read of the lifecycle jobs' scans
_GET_ALL_CHUNK = 100
_IN_CHUNK = 30  # Firestore's limit on the values of an "in" filter
_BATCH_LIMIT = 500  # writes per batch
_OPTIMISTIC_ATTEMPTS = 8
_CLAIM_SCAN = 4  # a claim reads up to this many entries per one it wants (others may hold the oldest)
_EMULATOR_VARIABLE = "FIRESTORE_EMULATOR_HOST"
_DEVICE_ATTEMPTS = 12
_DESCENDING = BaseQuery.DESCENDING
# What the client raises when Firestore cannot answer now (unreachable, overloaded, contention, its own
# retries given up): a 503 worth a retry. Anything else it raises is a bug of ours (a 500).
_OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.ResourceExhausted,
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.RetryError,
)


@contextlib.contextmanager
def _emulator_environment(emulator_host: str) -> Iterator[None]:
    """``FIRESTORE_EMULATOR_HOST`` as the settings say, while a client is built.

    The variable is the client's one public switch to the emulator (an insecure channel, no credentials),
    and the client reads it in its constructor only. Settings are the single source of truth (two stores
    in one process may point at two emulators, or one at production), so the variable holds the settings'
    value for the constructor's duration and is put back after. Nothing awaits in between: no other task
    of this event loop can see the temporary value.
    """
    before = os.environ.get(_EMULATOR_VARIABLE)
    if emulator_host:
        os.environ[_EMULATOR_VARIABLE] = emulator_host
    else:
        os.environ.pop(_EMULATOR_VARIABLE, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_EMULATOR_VARIABLE, None)
        else:
            os.environ[_EMULATOR_VARIABLE] = before


def _plain(value: Any) -> Any:
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
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _fields(struct: msgspec.Struct) -> dict[str, Any]:
    """A struct as Firestore fields: camelCase names, datetimes kept as timestamps."""
    fields: dict[str, Any] = msgspec.to_builtins(struct, builtin_types=(dt.datetime,))
    return fields


def _doc_id(*parts: str) -> str:
    """Document id for free-form keys (object keys, push tokens): fixed length, no '/' to escape."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _message(snapshot: DocumentSnapshot[Any]) -> Message:
    return msgspec.convert(_plain(snapshot.to_dict() or {}), Message)


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


def _outbox_fields(entry: OutboxEntry) -> dict[str, Any]:
    """An outbox entry as stored (camelCase, like every other document here)."""
    fields = msgspec.to_builtins(entry, builtin_types=(dt.datetime,))
    return {stored: fields[name] for stored, name in _OUTBOX_FIELDS.items() if fields.get(name) is not None}


def _outbox_entry(snapshot: DocumentSnapshot[Any]) -> OutboxEntry:
    data = _plain(snapshot.to_dict() or {})
    fields = {name: data[stored] for stored, name in _OUTBOX_FIELDS.items() if data.get(stored) is not None}
    return msgspec.convert(legacy_outbox_fields(fields, snapshot.id), OutboxEntry)


def outbox_shard(event_id: str) -> int:
    """The outbox shard of an entry, spread evenly by its id: each shard's createdAt range gets
    1/OUTBOX_SHARDS of the writes (Firestore takes about 500 writes/s into one range of sequential values)."""
    return int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:4], "big") % OUTBOX_SHARDS


def _free(snapshot: DocumentSnapshot[Any], now: dt.datetime) -> bool:
    """Nobody holds the outbox entry: never claimed, released, or its lease lapsed."""
    held = _plain((snapshot.to_dict() or {}).get("leasedUntil"))
    return held is None or held <= now


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _conversation(snapshot: DocumentSnapshot[Any]) -> Conversation:
    data = _plain(snapshot.to_dict() or {})
    return msgspec.convert({**data, "conversationId": snapshot.id}, Conversation)


async def _newest_first(
    source: AsyncQuery | AsyncCollectionReference,
    *,
    time_field: str,
    cursor: str | None,
    limit: int,
    decode: Callable[[DocumentSnapshot[Any]], T],
    position: Callable[[T], tuple[dt.datetime, str]],
) -> Page[T]:
    """One page of ``source``, newest first on (``time_field``, document id), after ``cursor``.

    Raises InvalidCursor."""
    after = decode_cursor(cursor) if cursor is not None else None
    query = source.order_by(time_field, direction=_DESCENDING).order_by("__name__", direction=_DESCENDING)
    if after is not None:
        query = query.start_after([after[0], after[1]])
    rows = [decode(snapshot) async for snapshot in query.limit(limit + 1).stream()]
    return page_of(rows, limit, position)


async def _pages(query: Any) -> AsyncIterator[DocumentSnapshot[Any]]:
    """Every document of ``query``, read ``_PAGE`` at a time (short reads; the caller may write between)."""
    last: DocumentSnapshot[Any] | None = None
    while True:
        page = query.start_after(last) if last is not None else query
        snapshots = [snapshot async for snapshot in page.limit(_PAGE).stream()]
        for snapshot in snapshots:
            yield snapshot
        if len(snapshots) < _PAGE:
            return
        last = snapshots[-1]


class FirestoreChatStore(ChatStore):
    name = "firestore"
    readiness_name = "firestore"
    outage_code = "store_unavailable"
    outage_errors = _OUTAGE_ERRORS

    def __init__(self, settings: FirestoreSettings) -> None:
        self._settings = settings
        self._client: AsyncClient | None = None

    def is_outage(self, exc: Exception) -> bool:
        return isinstance(exc, _OUTAGE_ERRORS)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the Firestore message store is not started")
        return self._client

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        settings = self._settings
        with _emulator_environment(settings.emulator_host):
            if settings.emulator_host:
                client = AsyncClient(
                    project=settings.project_id,
                    database=settings.database,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                )
            else:
                client = AsyncClient(project=settings.project_id, database=settings.database)
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._conversation_ref("-ping-").get(field_paths=["createdAt"], timeout=2.0)

    # --- plumbing ---------------------------------------------------------------------------------
    def _conversation_ref(self, conversation_id: str) -> AsyncDocumentReference:
        return self.client.collection(CONVERSATIONS).document(conversation_id)

    def _outbox_ref(self, event_id: str) -> AsyncDocumentReference:
        return self.client.collection(OUTBOX).document(event_id)

    def _append_event(self, batch: AsyncWriteBatch, event: OutboxEntry) -> None:
        """The one way an entry enters the outbox: in the batch of the change it announces (create():
        an event id is never written twice), in the shard its id hashes to."""
        batch.create(
            self._outbox_ref(event.event_id), {**_outbox_fields(event), "shard": outbox_shard(event.event_id)}
        )

    # --- conversations and membership ------------------------------------------------------------
    async def create_conversation(
        self, conversation: Conversation, *, event: OutboxEntry | None = None
    ) -> None:
        data = _fields(conversation)
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
        return _conversation(snapshot) if snapshot.exists else None

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        snapshot = await self._conversation_ref(conversation_id).get(field_paths=["participants"])
        if not snapshot.exists:
            return None
        return frozenset(snapshot.get("participants") or ())

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> Page[Conversation]:
        # Index: conversations (participants CONTAINS, updatedAt DESC) — firestore.indexes.json.
        return await _newest_first(
            self.client.collection(CONVERSATIONS).where(
                filter=FieldFilter("participants", "array_contains", user_id)
            ),
            time_field="updatedAt",
            cursor=cursor,
            limit=limit,
            decode=_conversation,
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
        for attempt in range(_OPTIMISTIC_ATTEMPTS * 2):
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
        return _conversation(snapshot)

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
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get(field_paths=["updatedAt", "lastMessage"])
            if not snapshot.exists:
                return
            data = _plain(snapshot.to_dict() or {})
            raw = data.get("lastMessage")
            current = None if raw is None else msgspec.convert(raw, LastMessage)
            if not replaces(current):
                return
            fields = {
                "lastMessage": _fields(last_message),
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
        async for snapshot in _pages(self.client.collection(CONVERSATIONS).order_by("__name__")):
            yield _conversation(snapshot)

    # --- messages ---------------------------------------------------------------------------------
    async def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        # The built-in single-field index on timestamp (ascending), as list_messages uses.
        query = (
            self._conversation_ref(conversation_id)
            .collection(MESSAGES)
            .where(filter=FieldFilter("timestamp", "<", before))
            .order_by("timestamp")
            .order_by("__name__")
        )
        async for snapshot in _pages(query):
            yield _message(snapshot)

    async def sent_by(self, user_id: str) -> AsyncIterator[tuple[str, Message]]:
        # Collection-group query over every conversation's messages: the collection-group index on
        # (senderId, timestamp) in firestore.indexes.json.
        query = (
            self.client.collection_group(MESSAGES)
            .where(filter=FieldFilter("senderId", "==", user_id))
            .order_by("timestamp")
            .order_by("__name__")
        )
        async for snapshot in _pages(query):
            parent = snapshot.reference.parent.parent
            if parent is not None:
                yield parent.id, _message(snapshot)

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
            (stored_key, self.client.collection(IMAGE_REFS).document(_doc_id(stored_key)))
            for stored_key in referenced
        ]
        batch = self.client.batch()
        batch.create(message_ref, _fields(message))
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
                return _message(existing), False
            for _stored_key, image_ref in image_refs:
                holder = await image_ref.get()
                if holder.exists:
                    raise ObjectAlreadyUsed(str(holder.get("messageId"))) from None
            raise  # an outbox entry without its message: a message id reused elsewhere
        return message, True

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        snapshot = await self._message_ref(conversation_id, message_id).get()
        return _message(snapshot) if snapshot.exists else None

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
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists:
                return None
            current = _message(snapshot)
            result = change(current)
            if result is None:
                return current, False
            updated, entry = result
            batch = self.client.batch()
            # Every field, each replaced whole (a map value replaces the map): the stored message is
            # exactly ``updated``.
            batch.update(
                ref, _fields(updated), option=self.client.write_option(last_update_time=snapshot.update_time)
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
        return await _newest_first(
            self._conversation_ref(conversation_id).collection(MESSAGES),
            time_field="timestamp",
            cursor=before,
            limit=limit,
            decode=_message,
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
        message = _message(snapshot)
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
        ref = await self.client.collection(IMAGE_REFS).document(_doc_id(stored_key)).get()
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
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists:
                return None
            updated = finished(_message(snapshot), metadata)
            if updated is None or updated.metadata is None:
                return None
            batch = self.client.batch()
            batch.update(
                ref,
                {"metadata": _fields(updated.metadata)},
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
        refs = {_doc_id(key): key for key in stored_keys}
        collection = self.client.collection(IMAGE_REFS)
        found: set[str] = set()
        for chunk in _chunks(list(refs), _GET_ALL_CHUNK):
            async for snapshot in self.client.get_all([collection.document(doc) for doc in chunk]):
                if snapshot.exists:
                    found.add(refs[snapshot.id])
        return found

    # --- devices ----------------------------------------------------------------------------------
    async def put_device(self, device: Device, *, max_devices: int | None = None) -> list[str]:
        # Keyed by the token: registering it again (for another user) moves it.
        ref = self.client.collection(DEVICES).document(_doc_id(device.token))
        if max_devices is None:
            await ref.set(_fields(device))
            return []
        # One atomic batch writes the device, deletes the evicted ones (each unchanged since read) and
        # bumps the user's anchor document (unchanged since read): two registrations of one user that
        # overlap cannot both commit, so the one that lost reads again and counts the winner's device.
        # Deletions and moves away only lower a user's count, so they need not touch the anchor.
        anchor = self.client.collection(DEVICE_USERS).document(_doc_id(device.user_id))
        mine = self.client.collection(DEVICES).where(filter=FieldFilter("userId", "==", device.user_id))
        for attempt in range(_DEVICE_ATTEMPTS):
            anchor_snapshot = await anchor.get()
            others = [snapshot async for snapshot in mine.stream() if snapshot.get("token") != device.token]
            others.sort(key=lambda snapshot: (snapshot.get("updatedAt"), snapshot.get("token")), reverse=True)
            evicted = others[max(0, max_devices - 1) :]
            batch = self.client.batch()
            batch.set(ref, _fields(device))
            for snapshot in evicted:
                batch.delete(
                    snapshot.reference, option=self.client.write_option(last_update_time=snapshot.update_time)
                )
            stamp = {"userId": device.user_id, "changedAt": device.updated_at}
            if anchor_snapshot.exists:
                batch.update(
                    anchor,
                    stamp,
                    option=self.client.write_option(last_update_time=anchor_snapshot.update_time),
                )
            else:
                batch.create(anchor, stamp)
            try:
                await batch.commit()
            except (gexc.FailedPrecondition, gexc.Conflict):
                await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # noqa: S311 - jitter
                continue
            return [str(snapshot.get("token")) for snapshot in evicted]
        raise gexc.Aborted(f"the devices of {device.user_id} kept changing; try again")  # type: ignore[no-untyped-call]

    async def delete_device(self, user_id: str, token: str) -> bool:
        ref = self.client.collection(DEVICES).document(_doc_id(token))
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists or snapshot.get("userId") != user_id:
                return False
            try:
                await ref.delete(option=self.client.write_option(last_update_time=snapshot.update_time))
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue  # moved or re-registered meanwhile: look again
            return True
        return False

    async def devices_for(self, user_ids: Collection[str]) -> dict[str, list[Device]]:
        # Single-field index on userId ("in" filter, no order): built in.
        found: dict[str, list[Device]] = {}
        collection = self.client.collection(DEVICES)
        for chunk in _chunks(list(dict.fromkeys(user_ids)), _IN_CHUNK):
            query = collection.where(filter=FieldFilter("userId", "in", list(chunk)))
            async for snapshot in query.stream():
                device = msgspec.convert(_plain(snapshot.to_dict() or {}), Device)
                found.setdefault(device.user_id, []).append(device)
        for devices in found.values():
            devices.sort(key=lambda device: device.token)
        return found

    # --- outbox -----------------------------------------------------------------------------------
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
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        snapshots = [s for _shard, found in await self._oldest_by_shard(cutoff, limit) for s in found]
        entries = sorted((_outbox_entry(s) for s in snapshots), key=lambda e: (e.created_at, e.event_id))
        return entries[:limit]

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        # Every shard is read at once (its own index range), held ones included (leasedUntil is not indexed,
        # and a second inequality would need its own index). A shard with free entries is then leased for
        # the pass, so replicas relaying a backlog split the shards instead of racing on the same entries;
        # within a leased shard each free entry is taken with its update time as a precondition (of two
        # claimers of one entry exactly one wins, without a transaction or a lock), oldest first across
        # shards. An empty outbox (the usual case: immediate attempts deleted everything) costs no write.
        now = dt.datetime.now(dt.UTC)
        per_shard = max(_CLAIM_SCAN, _CLAIM_SCAN * math.ceil(limit / OUTBOX_SHARDS))
        by_shard = await self._oldest_by_shard(now - dt.timedelta(seconds=older_than), per_shard)
        wanted = {shard: [s for s in found if _free(s, now)] for shard, found in by_shard}
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
                key=lambda s: (_plain(s.get("createdAt")), s.id),
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
        if not snapshot.exists or not _free(snapshot, now):
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
        return _outbox_entry(snapshot)

    async def release_outbox(self, event_ids: Collection[str]) -> None:
        async def release(event_id: str) -> None:
            with contextlib.suppress(gexc.NotFound):  # delivered and deleted meanwhile: nothing to give up
                await self._outbox_ref(event_id).update({"leasedUntil": DELETE_FIELD})

        await asyncio.gather(*(release(event_id) for event_id in dict.fromkeys(event_ids)))

    async def delete_outbox(self, event_ids: Collection[str]) -> None:
        for chunk in _chunks(list(dict.fromkeys(event_ids)), _BATCH_LIMIT):
            batch = self.client.batch()
            for event_id in chunk:
                batch.delete(self._outbox_ref(event_id))
            await batch.commit()

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        # The count needs no index; the oldest is the oldest of each shard's oldest.
        counted = await self.client.collection(OUTBOX).count().get()  # type: ignore[no-untyped-call]
        far_future = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
        oldest = [
            _plain(found[0].get("createdAt"))
            for _shard, found in await self._oldest_by_shard(far_future, 1)
            if found
        ]
        return int(counted[0][0].value), min(oldest, default=None)

    # --- push receipts ----------------------------------------------------------------------------
    def _receipt_ref(self, notification_id: str, device_token: str) -> AsyncDocumentReference:
        return self.client.collection(PUSH_RECEIPTS).document(_doc_id(notification_id, device_token))

    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        # Optimistic, as elsewhere here: create the receipt if there is none; otherwise take over a lapsed
        # lease only if the receipt is unchanged since it was read (its update time as a precondition),
        # so of two claimers of one lapsed lease exactly one wins.
        ref = self._receipt_ref(notification_id, device_token)
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            now = dt.datetime.now(dt.UTC)
            fields = {
                "notificationId": notification_id,
                "claimedAt": now,
                "leasedUntil": now + lease,
                "expireAt": now + PUSH_RECEIPT_TTL,
            }
            try:
                await ref.create(fields)
            except gexc.AlreadyExists:
                pass
            else:
                return PushClaim(state="claimed", leased_until=now + lease)
            snapshot = await ref.get()
            if not snapshot.exists:
                continue  # released in between: create it again
            held = _plain((snapshot.to_dict() or {}).get("leasedUntil"))
            if held is None:  # done (receipts from before leases have no leasedUntil: done as well)
                return PushClaim(state="done")
            if held > now:
                return PushClaim(state="leased", leased_until=held)
            try:
                await ref.update(
                    fields, option=self.client.write_option(last_update_time=snapshot.update_time)
                )
            except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
                continue  # another claimer, a completion or a release came first: look again
            return PushClaim(state="claimed", leased_until=now + lease)
        raise RuntimeError(f"push receipt {notification_id} kept changing; not claimed")

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        now = dt.datetime.now(dt.UTC)
        await self._receipt_ref(notification_id, device_token).set(
            {"notificationId": notification_id, "leasedUntil": None, "expireAt": now + PUSH_RECEIPT_TTL},
            merge=True,
        )

    async def release_push(self, notification_id: str, device_token: str) -> None:
        ref = self._receipt_ref(notification_id, device_token)
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            snapshot = await ref.get()
            if not snapshot.exists or (snapshot.to_dict() or {}).get("leasedUntil") is None:
                return  # nothing held, or done: a done push stays done
            try:
                await ref.delete(option=self.client.write_option(last_update_time=snapshot.update_time))
            except (gexc.FailedPrecondition, gexc.Aborted):
                continue
            return
        raise RuntimeError(f"push receipt {notification_id} kept changing; not released")


def create(backends: Backends) -> FirestoreChatStore:
    return FirestoreChatStore(backends.settings.firestore)
