"""The chat store: one adapter serving every narrow port of the package."""

from __future__ import annotations

from typing import Protocol

from chat_core.chatstore.conversations import ConversationStore
from chat_core.chatstore.devices import DeviceStore
from chat_core.chatstore.messages import MessageStore
from chat_core.chatstore.outbox import OutboxStore
from chat_core.chatstore.receipts import PushReceiptStore


class ChatStore(ConversationStore, MessageStore, DeviceStore, OutboxStore, PushReceiptStore, Protocol):
    """One adapter (one database, one transaction engine) serving every narrow store of the package.

    The composition root builds one per process and hands each caller only the narrow store it uses
    (``conversations``, ``messages``, ...), as Synapse composes its stores.
    """

    name: str  # "firestore" or "sqlite"
    readiness_name: str
    outage_code: str  # chat_core.errors.ReportsOutages: an outage of the store is a 503 with this code
    outage_errors: tuple[type[Exception], ...]

    def is_outage(self, exc: Exception) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the store answers (readiness)."""
