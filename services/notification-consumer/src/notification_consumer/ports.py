"""The narrow ports the notification consumer uses, picked from the composition root (``app.ports``)."""

from __future__ import annotations

from dataclasses import dataclass

from chat_core.chatstore import ConversationStore, DeviceStore, MessageStore, PushReceiptStore
from chat_core.jobqueue import JobQueue
from chat_core.notifications import Notification
from chat_core.push import PushRouter

__all__ = ["NotificationPorts"]


@dataclass(frozen=True, kw_only=True)
class NotificationPorts:
    notification_queue: JobQueue[Notification]
    devices: DeviceStore
    push_receipts: PushReceiptStore
    push_provider: PushRouter
    messages: MessageStore  # a push's text and image, read when it is sent
    conversations: ConversationStore
