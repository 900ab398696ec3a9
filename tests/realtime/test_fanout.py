"""The fan-out on real adapters: cost per message, chunking, the outbox and its relay."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from chat_core.chatstore import Conversation, Message, OutboxEntry, created_event
from chat_core.composition import Composition
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import decode_envelope
from message_service.fanout import RECIPIENTS_PER_NOTIFICATION, Fanout, notifications_for
from tests import harness
from tests.conftest import make_settings


def message(sender: str = "alice", *, age: float = 0.0, content: str = "hi") -> Message:
    return Message(
        message_id=str(uuid.uuid4()),
        content=content,
        message_type="text",
        sender_id=sender,
        timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age),
        read_by=(sender,),
    )


@dataclass
class Rig:
    backends: Composition
    fanout: Fanout
    events: asyncio.Queue[tuple[str, bytes]]

    async def conversation(self, *members: str) -> str:
        conversation_id = f"c-{uuid.uuid4().hex[:12]}"
        now = dt.datetime.now(dt.UTC)
        await self.backends.chat_store.create_conversation(
            Conversation(
                conversation_id=conversation_id,
                participants=members,
                name=None,
                created_at=now,
                updated_at=now,
            )
        )
        await self.backends.event_bus.subscribe([conversation_channel(conversation_id)], self._heard)
        return conversation_id

    def _heard(self, channel: str, payload: bytes) -> None:
        self.events.put_nowait((channel, payload))

    async def stored(self, conversation_id: str, msg: Message) -> OutboxEntry:
        await self.backends.chat_store.create_message(conversation_id, msg)
        [entry] = [
            e
            for e in await self.backends.chat_store.pending_outbox(older_than=0, limit=1000)
            if e.event_id == msg.message_id
        ]
        return entry

    async def outbox_ids(self) -> set[str]:
        entries = await self.backends.chat_store.pending_outbox(older_than=0, limit=1000)
        return {e.event_id for e in entries}


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Composition] = []

    async def make(env: dict[str, str] | None = None, *, start_queue: bool = True) -> Rig:
        backends = Composition(make_settings(tmp_path / uuid.uuid4().hex, env))
        fanout = Fanout(
            backends.conversations,
            backends.outbox,
            backends.event_bus,
            backends.presence,
            backends.notification_queue,
            relay_grace=0.0,
        )
        if start_queue:
            await backends.start()
        else:
            # A queue that was never started refuses every send: the queue is "down".
            await backends.chat_store.start()
            await backends.event_bus.start()
            await backends.presence.start()
        opened.append(backends)
        return Rig(backends, fanout, asyncio.Queue())

    yield make
    for backends in opened:
        await backends.close()


def test_huge_groups_are_chunked_into_numbered_notifications() -> None:
    recipients = [f"user-{n:05d}" for n in range(2 * RECIPIENTS_PER_NOTIFICATION + 500)]
    entry = created_event("c-1", message())
    notifications = notifications_for(entry, recipients, trace={})
    message_id = entry.event_id
    assert [n.notification_id for n in notifications] == [f"{message_id}:{i}" for i in range(3)]
    assert [len(n.recipient_ids) for n in notifications] == [1000, 1000, 500]
    assert sorted(r for n in notifications for r in n.recipient_ids) == recipients


async def test_a_delivered_message_is_published_once_enqueued_once_and_leaves_the_outbox(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob", "carol")
    await rig.backends.presence.heartbeat("bob", "socket-1")
    entry = await rig.stored(conversation, message())
    assert await rig.fanout.deliver(entry) is True
    channel, _payload = await asyncio.wait_for(rig.events.get(), 5)
    assert channel == conversation_channel(conversation)
    [job] = await rig.backends.notification_queue.receive(max_messages=10, wait_seconds=1)
    assert job.job.recipient_ids == ("carol",)  # bob is online, alice sent it
    assert job.job.notification_id == f"{entry.event_id}:0"
    assert await rig.outbox_ids() == set()


async def test_nobody_offline_means_no_queue_message(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    await rig.backends.presence.heartbeat("bob", "socket-1")
    assert await rig.fanout.deliver(await rig.stored(conversation, message())) is True
    assert await rig.backends.notification_queue.depth() == (0, 0)


async def test_when_the_queue_is_down_the_entry_stays_and_a_retry_does_not_publish_again(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig(start_queue=False)
    conversation = await rig.conversation("alice", "bob")
    entry = await rig.stored(conversation, message())
    assert await rig.fanout.deliver(entry) is False
    assert await rig.outbox_ids() == {entry.event_id}
    await rig.events.get()  # published once
    await rig.backends.notification_queue.start()  # the queue is back
    assert await rig.fanout.deliver(entry) is True
    assert rig.events.empty()
    assert await rig.backends.notification_queue.depth() == (1, 0)
    assert await rig.outbox_ids() == set()


async def test_the_relay_delivers_what_the_outbox_holds_and_exports_its_depth(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    for _ in range(3):
        await rig.backends.chat_store.create_message(conversation, message())  # e.g. a crash before fan-out
    assert await rig.fanout.relay_once() is True
    assert await rig.outbox_ids() == set()
    assert await rig.backends.notification_queue.depth() == (3, 0)
    assert REGISTRY.get_sample_value("chat_outbox_depth") == 0


class _QueueHoldingOneMessage:
    """The real notification queue, with a fault injected: sending ``held``'s notification hangs until
    ``release`` is set (a slow enqueue in flight while the relay runs)."""

    def __init__(self, inner: Any, held: str) -> None:
        self._inner = inner
        self._held = held
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, notifications: Any) -> None:
        if any(n.message_id == self._held for n in notifications):
            self.holding.set()
            await self.release.wait()
        await self._inner.send(notifications)


async def test_the_relay_skips_an_entry_in_flight_and_delivers_the_rest_without_backing_off(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    held = await rig.stored(conversation, message())  # the oldest: first in the relay's pass
    others = [(await rig.stored(conversation, message())).event_id for _ in range(2)]
    queue = _QueueHoldingOneMessage(rig.backends.notification_queue, held.event_id)
    fanout = Fanout(
        rig.backends.conversations,
        rig.backends.outbox,
        rig.backends.event_bus,
        rig.backends.presence,
        queue,  # type: ignore[arg-type]
        relay_grace=0.0,
    )
    await fanout.message_created(held, frozenset({"alice", "bob"}))  # the send's own delivery
    await asyncio.wait_for(queue.holding.wait(), 5)
    assert await fanout.relay_once() is True  # healthy: nothing failed, so no back-off
    assert await rig.outbox_ids() == {held.event_id}
    delivered = await rig.backends.notification_queue.receive(max_messages=10, wait_seconds=1)
    assert sorted(job.job.message_id for job in delivered) == sorted(others)
    queue.release.set()  # the delivery in flight ends on its own
    async with asyncio.timeout(5):
        while await rig.outbox_ids():
            await asyncio.sleep(0.02)


async def test_a_stale_message_is_still_notified_but_no_longer_published(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    entry = await rig.stored(conversation, message(age=3600))
    assert await rig.fanout.deliver(entry) is True
    assert rig.events.empty()
    assert await rig.backends.notification_queue.depth() == (1, 0)


async def test_on_redis_a_message_to_a_large_group_is_one_publish_and_one_presence_call(
    make_rig: Callable[..., Any], private_redis: harness.Backend
) -> None:
    rig: Rig = await make_rig({"EVENT_BUS": "redis", "REDIS_URL": private_redis.address})
    members = ["alice", *(f"member-{n}" for n in range(300))]
    conversation = await rig.conversation(*members)
    entry = await rig.stored(conversation, message())
    raw = aioredis.from_url(private_redis.address)
    try:
        await rig.backends.presence.online(["warm-up"])  # loads the script
        await raw.config_resetstat()
        assert await rig.fanout.deliver(entry) is True
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    calls = {name: value["calls"] for name, value in stats.items()}
    assert calls["cmdstat_publish"] == 1
    assert calls["cmdstat_evalsha"] == 1
    assert await rig.backends.notification_queue.depth() == (1, 0)


# --- relay claims: replicas share a backlog ----------------------------------------------------------
def _replica(rig: Rig, queue: Any = None) -> Fanout:
    """Another message-service replica's relay over the same store and bus."""
    return Fanout(
        rig.backends.conversations,
        rig.backends.outbox,
        rig.backends.event_bus,
        rig.backends.presence,
        queue or rig.backends.notification_queue,
        relay_grace=0.0,
    )


async def test_replicas_relaying_one_backlog_publish_each_entry_once(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    stored = [message(age=30) for _ in range(20)]
    for msg in stored:  # the backlog an outage left behind
        await rig.backends.chat_store.create_message(conversation, msg)
    replicas = [rig.fanout, _replica(rig), _replica(rig)]
    assert await asyncio.gather(*(replica.relay_once() for replica in replicas)) == [True] * 3
    published = []
    while not rig.events.empty():
        _channel, payload = rig.events.get_nowait()
        envelope = decode_envelope(payload)
        assert envelope is not None
        assert envelope.message is not None
        published.append(envelope.message.message_id)
    assert sorted(published) == sorted(m.message_id for m in stored)  # each once
    assert await rig.backends.notification_queue.depth() == (20, 0)
    assert await rig.outbox_ids() == set()


class _QueueDown:
    """A notification queue that refuses every send (SQS unreachable from this replica)."""

    async def send(self, notifications: Any) -> None:
        raise ConnectionError("queue unreachable")


async def test_a_failed_pass_releases_its_claims_for_the_next_replica(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    conversation = await rig.conversation("alice", "bob")
    for _ in range(3):
        await rig.backends.chat_store.create_message(conversation, message(age=30))
    assert await _replica(rig, _QueueDown()).relay_once() is False
    # Not held for the lease (30 s): another replica relays them on its next pass.
    assert await rig.fanout.relay_once() is True
    assert await rig.outbox_ids() == set()
    assert await rig.backends.notification_queue.depth() == (3, 0)
