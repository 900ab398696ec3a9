"""Wiring: the composition root builds the adapter each setting names; optional abilities are protocols.

Nothing here starts an adapter: building one must not touch the network (the contract suites do that).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import image_proxy.app
import media_processor.app
import message_service.app
import notification_consumer.app
import upload_service.app
from chat_core.capabilities import ReadinessProbe, ServesRoutes, UsesAws
from chat_core.chatstore.firestore import FirestoreChatStore
from chat_core.chatstore.sqlite import SqliteChatStore
from chat_core.composition import Composition
from chat_core.jobqueue.sqlite import SqliteJobQueue
from chat_core.jobqueue.sqs import SqsJobQueue
from chat_core.objectstore.local import LocalObjectStore
from chat_core.objectstore.s3 import S3ObjectStore
from chat_core.realtime.memory import MemoryEventBus, MemoryPresence
from chat_core.realtime.redis import RedisEventBus, RedisPresence
from chat_management import all as all_in_one
from tests.conftest import make_settings

CLOUD = {
    "OBJECT_STORE": "s3",
    "S3_BUCKET_NAME": "images",
    "MESSAGE_STORE": "firestore",
    "EVENT_BUS": "redis",
    "NOTIFICATION_QUEUE": "sqs",
}


def test_the_embedded_kinds_build_the_embedded_adapters(tmp_path: Path) -> None:
    backends = Composition(make_settings(tmp_path))
    assert isinstance(backends.object_store, LocalObjectStore)
    assert isinstance(backends.chat_store, SqliteChatStore)
    assert isinstance(backends.event_bus, MemoryEventBus)
    assert isinstance(backends.presence, MemoryPresence)
    assert isinstance(backends.notification_queue, SqliteJobQueue)


def test_the_cloud_kinds_build_the_cloud_adapters(tmp_path: Path) -> None:
    backends = Composition(make_settings(tmp_path, CLOUD))
    assert isinstance(backends.object_store, S3ObjectStore)
    assert isinstance(backends.chat_store, FirestoreChatStore)
    assert isinstance(backends.event_bus, RedisEventBus)
    assert isinstance(backends.presence, RedisPresence)
    assert isinstance(backends.notification_queue, SqsJobQueue)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"object_store", "sqlite", "event_bus", "presence", "notification_queue", "media_queue"}),
        (CLOUD, {"s3", "firestore", "redis", "notification_queue", "media_queue"}),
    ],
)
def test_readiness_checks_are_named_for_an_operator(
    tmp_path: Path, env: dict[str, str], expected: set[str]
) -> None:
    backends = Composition(make_settings(tmp_path, env))
    _ = (backends.object_store, backends.messages, backends.event_bus, backends.presence)
    _ = (backends.notification_queue, backends.media_queue)  # one check each, whatever their adapter
    assert set(backends.readiness_checks()) == expected


def test_abilities_are_declared_by_the_adapters_that_have_them(tmp_path: Path) -> None:
    embedded, cloud = Composition(make_settings(tmp_path)), Composition(make_settings(tmp_path, CLOUD))
    assert isinstance(embedded.object_store, ServesRoutes)
    assert not isinstance(cloud.object_store, ServesRoutes)
    assert isinstance(cloud.object_store, UsesAws)
    assert isinstance(cloud.notification_queue, UsesAws)
    assert not isinstance(embedded.notification_queue, UsesAws)
    # Nothing the services hold provisions: the bucket and the queues are `chat-management setup`'s.
    assert not hasattr(cloud.notification_queue, "ensure")
    assert not hasattr(cloud.object_store, "ensure_bucket")
    assert isinstance(embedded.chat_store, ReadinessProbe)


async def test_a_port_first_asked_for_after_start_up_is_refused(tmp_path: Path) -> None:
    backends = Composition(make_settings(tmp_path))
    async with backends:  # every port must be asked for in create_app(), before the lifespan starts
        with pytest.raises(RuntimeError, match="after start-up"):
            _ = backends.object_store


def test_the_redis_bus_and_presence_share_the_roots_connections(tmp_path: Path) -> None:
    root = Composition(make_settings(tmp_path, CLOUD))
    bus, presence = root.event_bus, root.presence
    assert isinstance(bus, RedisEventBus)
    assert isinstance(presence, RedisPresence)
    assert bus._connections is root.redis_connections
    assert presence._connections is root.redis_connections
    assert Composition(make_settings(tmp_path, CLOUD)).redis_connections is not root.redis_connections


def test_the_all_in_one_process_builds_every_service_on_one_root(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = Composition(settings)
    all_in_one.create_app(settings, root)
    upload, proxy = upload_service.app.ports(root), image_proxy.app.ports(root)
    message, media = message_service.app.ports(root), media_processor.app.ports(root)
    consumer = notification_consumer.app.ports(root)
    assert upload.membership is proxy.membership  # one cache, one invalidation subscription
    assert message.messages is media.messages is consumer.messages is proxy.messages is root.chat_store
    assert message.event_bus is media.event_bus is upload.event_bus
    # one adapter per port, each built once, each in the lifecycle
    adapters = root.adapters()
    assert len({id(adapter) for adapter in adapters.values()}) == len(adapters)
    assert {"object_store", "message_store", "event_bus", "presence", "media_queue"} <= set(adapters)
