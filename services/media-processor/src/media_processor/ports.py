"""The narrow ports the media processor uses, picked from the composition root by ``app.ports(root)``."""

from __future__ import annotations

from dataclasses import dataclass

from chat_core.chatstore import ConversationStore, MessageStore, OutboxStore
from chat_core.jobqueue import JobQueue
from chat_core.ledger import StorageLedger
from chat_core.media_jobs import MediaJob
from chat_core.objectstore import ObjectStore
from chat_core.realtime import EventBus

__all__ = ["MediaPorts"]


@dataclass(frozen=True, kw_only=True)
class MediaPorts:
    media_queue: JobQueue[MediaJob]
    messages: MessageStore
    conversations: ConversationStore
    outbox: OutboxStore
    object_store: ObjectStore
    event_bus: EventBus
    storage_ledger: StorageLedger
