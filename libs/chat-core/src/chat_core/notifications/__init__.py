"""NotificationQueue port: durable work for the notification consumer.

Adapters: ``sqs`` (long poll, visibility timeout, redrive to a DLQ, trace context in message attributes)
and ``sqlite`` (embedded, same semantics). Both pass one contract suite
(``tests/contract/test_queue_contract.py``). One queue message per chat message (recipient ids inside,
chunked only for huge groups); the consumer fans out to devices.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

import msgspec

from chat_core.messagestore import MessageType

__all__ = ["Notification", "NotificationQueue", "ReceivedNotification"]


class Notification(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    notification_id: str  # "{messageId}:{chunk}": stable, so a re-relayed job dedupes at the consumer
    conversation_id: str
    message_id: str
    sender_id: str
    message_type: MessageType
    preview: str
    recipient_ids: tuple[str, ...]
    created_at: dt.datetime
    trace: dict[str, str] = {}


class ReceivedNotification(msgspec.Struct, frozen=True, kw_only=True):
    notification: Notification
    receipt: str  # handle for ack / retry_later
    receive_count: int  # 1 on first delivery
    enqueued_at: dt.datetime


class NotificationQueue(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def send(self, notifications: Sequence[Notification]) -> None:
        """Enqueue durably (batched); raises when the queue cannot take them."""

    async def receive(self, *, max_messages: int, wait_seconds: float) -> list[ReceivedNotification]:
        """Long poll; received messages stay hidden for the visibility timeout."""

    async def ack(self, receipt: str) -> None:
        """Done: delete the message."""

    async def retry_later(self, receipt: str, delay_seconds: float) -> None:
        """Make the message visible again after ``delay_seconds`` (it counts as another receive)."""

    async def depth(self) -> tuple[int, int]:
        """Approximate (visible + in-flight messages in the main queue, messages in the DLQ)."""
