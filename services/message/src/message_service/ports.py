"""The narrow ports the message service uses, handed to ``build()`` by the composition root.

``app.ports(root)`` picks them from ``chat_core.composition.Composition``; nothing in the service holds the
root. Each field is a port (``chat_core.<port>``) or a shared client of one (quotas, the verifier).
"""

from __future__ import annotations

from dataclasses import dataclass

from chat_core.auth import TokenVerifier
from chat_core.chatstore import ConversationStore, DeviceStore, MessageStore, OutboxStore
from chat_core.jobqueue import JobQueue
from chat_core.leases import WriteLeases
from chat_core.ledger import StorageLedger
from chat_core.media_jobs import MediaJob
from chat_core.notifications import Notification
from chat_core.objectstore import ObjectStore
from chat_core.quota import Quotas
from chat_core.ratelimit import RateLimiter
from chat_core.realtime import EventBus, Presence

__all__ = ["MessagePorts"]


@dataclass(frozen=True, kw_only=True)
class MessagePorts:
    conversations: ConversationStore
    messages: MessageStore
    devices: DeviceStore
    outbox: OutboxStore
    object_store: ObjectStore
    event_bus: EventBus
    presence: Presence
    notification_queue: JobQueue[Notification]
    media_queue: JobQueue[MediaJob]
    storage_ledger: StorageLedger
    write_leases: WriteLeases
    quotas: Quotas
    rate_limiter: RateLimiter  # the socket's frames
    verifier: TokenVerifier  # the socket's token
