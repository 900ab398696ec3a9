"""The narrow ports the upload service and its cleanup job use, picked from the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from chat_core.chatstore import MessageStore
from chat_core.ledger import StorageLedger
from chat_core.membership import MembershipCache
from chat_core.objectstore import ObjectStore
from chat_core.quota import Quotas
from chat_core.realtime import EventBus

__all__ = ["CleanupPorts", "UploadPorts"]


@dataclass(frozen=True, kw_only=True)
class UploadPorts:
    object_store: ObjectStore
    membership: MembershipCache  # the process's cache over the conversations
    quotas: Quotas
    event_bus: EventBus  # the membership cache's invalidations


@dataclass(frozen=True, kw_only=True)
class CleanupPorts:
    """The orphan cleanup job's (``cleanup.run``): the objects, the messages naming them, the ledger."""

    object_store: ObjectStore
    messages: MessageStore
    storage_ledger: StorageLedger
