"""Firestore MessageStore (production; the emulator in tests), on ``google-cloud-firestore``'s AsyncClient.

Layout: see ``chat_core.messagestore``. Composite indexes the queries here need are in the repo's
``firestore.indexes.json``; each query below says which index serves it.

Write rates: Firestore sustains about one write per second per document. Nothing on the send path
writes the conversation document: a message, its image reference and its outbox entry are three new
documents, and ``lastMessage``/``updatedAt`` arrive later through ``touch_conversation``, which callers
coalesce per conversation (``message_service.touches``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import msgspec
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1 import ArrayRemove, ArrayUnion, AsyncClient, FieldFilter
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import BaseQuery

from chat_core.messagestore import (
    Conversation,
    ConversationNotFound,
    LastMessage,
    Page,
    decode_cursor,
    encode_cursor,
)
from chat_core.settings import FirestoreSettings

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["FirestoreMessageStore", "create"]


CONVERSATIONS = "conversations"
_OPTIMISTIC_ATTEMPTS = 8
_DESCENDING = BaseQuery.DESCENDING


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


def _is_newer(candidate: LastMessage, current: LastMessage | None) -> bool:
    if current is None:
        return True
    return (candidate.timestamp, candidate.message_id) > (current.timestamp, current.message_id)


def _conversation(snapshot: DocumentSnapshot[Any]) -> Conversation:
    data = _plain(snapshot.to_dict() or {})
    return msgspec.convert({**data, "conversationId": snapshot.id}, Conversation)


class FirestoreMessageStore:
    name = "firestore"

    def __init__(self, settings: FirestoreSettings) -> None:
        self._settings = settings
        self._client: AsyncClient | None = None

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
        if settings.emulator_host:
            client = AsyncClient(
                project=settings.project_id,
                database=settings.database,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
        else:
            client = AsyncClient(project=settings.project_id, database=settings.database)
        # The client reads FIRESTORE_EMULATOR_HOST from os.environ itself; settings are read once and are
        # the single source of truth, so they decide (before the first call opens the channel).
        client._emulator_host = settings.emulator_host or None
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

    # --- conversations and membership ------------------------------------------------------------
    async def create_conversation(self, conversation: Conversation) -> None:
        data = _fields(conversation)
        del data["conversationId"]
        await self._conversation_ref(conversation.conversation_id).create(data)

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
        after = decode_cursor(cursor) if cursor else None
        query = (
            self.client.collection(CONVERSATIONS)
            .where(filter=FieldFilter("participants", "array_contains", user_id))
            .order_by("updatedAt", direction=_DESCENDING)
            .order_by("__name__", direction=_DESCENDING)
        )
        if after is not None:
            query = query.start_after([after[0], after[1]])
        rows = [_conversation(snapshot) async for snapshot in query.limit(limit + 1).stream()]
        items = rows[:limit]
        next_cursor = (
            encode_cursor(items[-1].updated_at, items[-1].conversation_id) if len(rows) > limit else None
        )
        return Page(items=items, next_cursor=next_cursor)

    async def add_participants(self, conversation_id: str, user_ids: Collection[str]) -> Conversation:
        # ArrayUnion is applied by the server: no read, no transaction, so concurrent additions neither
        # lose each other nor queue on a lock.
        return await self._update_participants(conversation_id, ArrayUnion(list(dict.fromkeys(user_ids))))

    async def remove_participant(self, conversation_id: str, user_id: str) -> Conversation:
        return await self._update_participants(conversation_id, ArrayRemove([user_id]))

    async def _update_participants(
        self, conversation_id: str, change: ArrayUnion | ArrayRemove
    ) -> Conversation:
        ref = self._conversation_ref(conversation_id)
        try:
            await ref.update({"participants": change})
        except gexc.NotFound:
            raise ConversationNotFound(conversation_id) from None
        snapshot = await ref.get()
        if not snapshot.exists:
            raise ConversationNotFound(conversation_id)
        return _conversation(snapshot)

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
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
            if not _is_newer(last_message, current):
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


def create(backends: Backends) -> FirestoreMessageStore:
    return FirestoreMessageStore(backends.settings.firestore)
