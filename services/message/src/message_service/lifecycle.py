"""Operators' side of the message lifecycle: a user's erasure and export, and retention.

* **Erasure** (GDPR Art. 17; ``POST /admin/users/{userId}/erase``, ``chat-management erase-user``): every
  message the user sent, in every conversation (also those they left), becomes a tombstone through the
  same path as an unsend (``service.delete_message``: the ``message.deleted`` entry in the event outbox,
  so the image bytes are erased by the relay, durably); then the user leaves every conversation (an admin
  who leaves hands the role on, as a leave always does); their push devices and upload quota records are
  deleted. Presence entries expire by themselves within ``PRESENCE_TTL_SECONDS`` (and the user is no
  longer a member anywhere). Erasing twice is harmless.
* **Export** (Art. 20; ``.../export``, ``chat-management export-user``): a zip of the user's messages as
  JSON (``messages.json``: conversation id and the message as the API shows it, tombstones left out), the
  conversations they are in (``conversations.json``: id and name) and their images as served (the
  sanitized ``original`` of each ready image, ``images/{conversationId}/{messageId}.{ext}``), stored at
  ``_admin/exports/{jobId}.zip`` (a prefix no conversation id can have) and handed out as a signed GET of
  ``EXPORT_URL_TTL_SECONDS``.
* **Retention**: a conversation's ``retentionDays``, else ``MESSAGE_RETENTION_DAYS`` (0: off): messages
  older than that become tombstones (``deletedBy: "retention"``) and their bytes go the same durable way.
  One pass visits every conversation; the message service runs one every ``RETENTION_INTERVAL_SECONDS``,
  and ``chat-management apply-retention`` runs one (the chart's CronJob). Metrics: runs by outcome, the
  last success time, and how far past its retention the oldest message left behind was (the alert's).

Every erasure and export writes an audit line (``user_erased``, ``user_exported``), as each deletion does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import zipfile

import msgspec
import structlog

from chat_core import keys, metrics
from chat_core.audit import audit
from chat_core.errors import ProblemError
from chat_core.messagestore import ConversationStore, DeviceStore, Message, MessageStore, albums
from chat_core.objectstore import ObjectNotFound, ObjectStore
from chat_core.quota import Quotas
from message_service.events import MessageEvents
from message_service.service import ConversationService, delete_message

__all__ = [
    "EXPORT_PREFIX",
    "ErasureReport",
    "ExportReport",
    "Lifecycle",
    "RetentionReport",
]

EXPORT_PREFIX = "_admin/exports/"  # "_" starts no conversation id: never a derivative's or an upload's key
RETENTION_ACTOR = "retention"
_log = structlog.get_logger("message_service.lifecycle")


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    messages_deleted: int
    conversations_left: int
    devices_deleted: int


class ExportReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    messages: int
    images: int
    size_bytes: int
    object_key: str  # where the zip is stored (server-side)


class RetentionReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    conversations: int
    messages_deleted: int


class _ExportedMessage(msgspec.Struct, frozen=True, rename="camel"):
    conversation_id: str
    message: Message


class _ExportedConversation(msgspec.Struct, frozen=True, rename="camel"):
    conversation_id: str
    name: str | None


class Lifecycle:
    def __init__(
        self,
        conversations: ConversationStore,
        messages: MessageStore,
        devices: DeviceStore,
        objects: ObjectStore,
        events: MessageEvents,
        conversation_service: ConversationService,
        *,
        retention_days: int,
        quotas: Quotas | None = None,
    ) -> None:
        self._quotas = quotas
        self._conversations = conversations
        self._messages = messages
        self._devices = devices
        self._objects = objects
        self._events = events
        self._conversation_service = conversation_service
        self._retention_days = retention_days

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    # --- erasure ------------------------------------------------------------------------------------
    async def erase_user(self, user_id: str, *, actor: str) -> ErasureReport:
        deleted = 0
        async for conversation_id, message in self._messages.sent_by(user_id):
            if not message.deleted and await delete_message(
                self._messages, self._events, conversation_id, message, deleted_by=actor, reason="erasure"
            ):
                deleted += 1
        left = 0
        while True:  # leaving takes each one off the first page
            page = await self._conversations.list_conversations(user_id, limit=100)
            if not page.items:
                break
            for conversation in page.items:
                try:
                    await self._conversation_service.remove_participant(
                        user_id, conversation.conversation_id, user_id
                    )
                    left += 1
                except ProblemError as exc:  # left meanwhile (a concurrent erasure or leave)
                    if exc.status != 404:
                        raise
        devices = (await self._devices.devices_for([user_id])).get(user_id, [])
        for device in devices:
            await self._devices.delete_device(user_id, device.token)
        if self._quotas is not None:
            await self._quotas.forget_user(user_id)
        report = ErasureReport(
            messages_deleted=deleted, conversations_left=left, devices_deleted=len(devices)
        )
        audit("user_erased", actor=actor, user_id=user_id, **msgspec.to_builtins(report))
        return report

    # --- export -------------------------------------------------------------------------------------
    async def export_user(self, user_id: str, *, export_id: str, actor: str) -> ExportReport:
        sent = [
            _ExportedMessage(conversation_id, message)
            async for conversation_id, message in self._messages.sent_by(user_id)
            if not message.deleted
        ]
        conversations: list[_ExportedConversation] = []
        cursor: str | None = None
        while True:
            page = await self._conversations.list_conversations(user_id, limit=100, cursor=cursor)
            conversations.extend(_ExportedConversation(c.conversation_id, c.name) for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        images: list[tuple[str, bytes]] = []
        for item in sent:
            images.extend(await self._served_originals(item.conversation_id, item.message))
        archive = await asyncio.to_thread(_zip, sent, conversations, images)
        key = f"{EXPORT_PREFIX}{export_id}.zip"
        await self._objects.put(key, archive, content_type="application/zip")
        report = ExportReport(messages=len(sent), images=len(images), size_bytes=len(archive), object_key=key)
        audit(
            "user_exported",
            actor=actor,
            user_id=user_id,
            messages=report.messages,
            images=report.images,
            size_bytes=report.size_bytes,
        )
        return report

    async def _served_originals(self, conversation_id: str, message: Message) -> list[tuple[str, bytes]]:
        """The message's images as the proxy serves them (the sanitized originals), named for the zip
        (an album's as ``{messageId}-{index}.{ext}``)."""
        album = albums.is_album(message.metadata)
        served = []
        for index, metadata in enumerate(albums.images_of(message.metadata)):
            if metadata.status != "ready":
                continue
            place = index if album else None
            try:
                key = keys.derivative_key(
                    conversation_id, message.message_id, "original", metadata.content_type, place
                )
                _info, data = await self._objects.read(key)
            except (keys.InvalidKey, ObjectNotFound):
                continue
            ext = keys.DERIVATIVE_EXTENSIONS[metadata.content_type]
            name = message.message_id if place is None else f"{message.message_id}-{place}"
            served.append((f"images/{conversation_id}/{name}.{ext}", data))
        return served

    # --- retention ----------------------------------------------------------------------------------
    async def apply_retention(self, now: dt.datetime | None = None) -> RetentionReport:
        """One pass over every conversation; raises when the store fails (the run counts as an error)."""
        now = now or dt.datetime.now(dt.UTC)
        visited = deleted = 0
        oldest_behind = 0.0
        try:
            async for conversation in self._conversations.every_conversation():
                days = conversation.retention_days or self._retention_days
                visited += 1
                if not days:
                    continue
                cutoff = now - dt.timedelta(days=days)
                async for message in self._messages.messages_before(conversation.conversation_id, cutoff):
                    if message.deleted:
                        continue
                    try:
                        if await delete_message(
                            self._messages,
                            self._events,
                            conversation.conversation_id,
                            message,
                            deleted_by=RETENTION_ACTOR,
                            reason="retention",
                        ):
                            deleted += 1
                    except Exception:
                        behind = (cutoff - message.timestamp).total_seconds()
                        oldest_behind = max(oldest_behind, behind)
                        raise
        except Exception:
            metrics.RETENTION_RUNS.labels("error").inc()
            metrics.RETENTION_OLDEST_EXPIRED_AGE.set(oldest_behind)
            raise
        metrics.RETENTION_RUNS.labels("ok").inc()
        metrics.RETENTION_LAST_SUCCESS.set(now.timestamp())
        metrics.RETENTION_OLDEST_EXPIRED_AGE.set(0.0)
        report = RetentionReport(conversations=visited, messages_deleted=deleted)
        if deleted:
            _log.info("retention_applied", **msgspec.to_builtins(report))
        return report


def _zip(
    sent: list[_ExportedMessage], conversations: list[_ExportedConversation], images: list[tuple[str, bytes]]
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("messages.json", msgspec.json.format(msgspec.json.encode(sent)))
        archive.writestr("conversations.json", msgspec.json.format(msgspec.json.encode(conversations)))
        for name, data in images:
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)  # already compressed
    return buffer.getvalue()
