"""Every adapter names the port it implements, so "go to implementation" from a port is one jump, and mypy
checks the adapter against the port at its class line (a missing method makes it abstract)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import chat_core
from chat_core import ratelimit
from chat_core.chatstore import (
    ChatStore,
    ConversationStore,
    DeviceStore,
    MessageStore,
    OutboxStore,
    PushReceiptStore,
)
from chat_core.chatstore.firestore import FirestoreChatStore
from chat_core.chatstore.sqlite import SqliteChatStore
from chat_core.jobqueue import JobQueue
from chat_core.jobqueue.sqlite import SqliteJobQueue
from chat_core.jobqueue.sqs import SqsJobQueue
from chat_core.leases import WriteLeases
from chat_core.leases.memory import MemoryWriteLeases
from chat_core.leases.redis import RedisWriteLeases
from chat_core.ledger import StorageLedger
from chat_core.ledger.memory import MemoryStorageLedger
from chat_core.ledger.redis import RedisStorageLedger
from chat_core.objectstore import ObjectStore
from chat_core.objectstore.local import LocalObjectStore
from chat_core.objectstore.s3 import S3ObjectStore
from chat_core.push import PushProvider
from chat_core.push.apns import ApnsPushProvider
from chat_core.push.fcm import FcmPushProvider
from chat_core.push.log import LogPushProvider
from chat_core.push.webhook import WebhookPushProvider
from chat_core.quota import QuotaStore
from chat_core.quota.memory import MemoryQuotaStore
from chat_core.quota.redis import RedisQuotaStore
from chat_core.realtime import EventBus, Presence, Subscription
from chat_core.realtime.memory import MemoryEventBus, MemoryPresence
from chat_core.realtime.redis import RedisEventBus, RedisPresence

PORTS: dict[type, list[type]] = {
    ObjectStore: [S3ObjectStore, LocalObjectStore],
    ChatStore: [FirestoreChatStore, SqliteChatStore],
    EventBus: [RedisEventBus, MemoryEventBus],
    Presence: [RedisPresence, MemoryPresence],
    JobQueue: [SqsJobQueue, SqliteJobQueue],
    PushProvider: [FcmPushProvider, ApnsPushProvider, WebhookPushProvider, LogPushProvider],
    QuotaStore: [RedisQuotaStore, MemoryQuotaStore],
    StorageLedger: [RedisStorageLedger, MemoryStorageLedger],
    WriteLeases: [RedisWriteLeases, MemoryWriteLeases],
    ratelimit.Windows: [ratelimit.StoreWindows, ratelimit.MemoryWindows],
}


@pytest.mark.parametrize(
    ("port", "adapter"),
    [(port, adapter) for port, adapters in PORTS.items() for adapter in adapters],
    ids=lambda cls: cls.__name__,
)
def test_the_adapter_subclasses_its_port(port: type, adapter: type) -> None:
    assert port in adapter.__mro__


@pytest.mark.parametrize("store", [FirestoreChatStore, SqliteChatStore], ids=lambda cls: cls.__name__)
def test_a_chat_store_declares_every_narrow_store(store: type) -> None:
    for narrow in (ConversationStore, MessageStore, DeviceStore, OutboxStore, PushReceiptStore):
        assert narrow in store.__mro__


def _port_protocols() -> set[type]:
    """The Protocols each port package (chat_core/<port>/) exports, defined in it or in one of its modules."""
    found: set[type] = set()
    for info in pkgutil.iter_modules(chat_core.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"chat_core.{info.name}")
        for _name, value in inspect.getmembers(module, inspect.isclass):
            defined_here = value.__module__ == module.__name__ or value.__module__.startswith(
                f"{module.__name__}."
            )
            if defined_here and getattr(value, "_is_protocol", False):
                found.add(value)
    return found


def test_every_port_protocol_with_adapters_is_in_the_table() -> None:
    """A new port's adapters join the table above (and so declare their port)."""
    declared = set(PORTS) | {ConversationStore, MessageStore, DeviceStore, OutboxStore, PushReceiptStore}
    declared.add(Subscription)  # handed out by an EventBus, never built by a factory
    protocols = _port_protocols()
    assert ObjectStore in protocols  # the scan sees the ports
    assert protocols <= declared
