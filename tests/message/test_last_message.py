"""Coalesced conversation touches: at most one lastMessage/updatedAt write per conversation per interval.

Behaviour, not timing: a controllable clock stands in for time, and ``flush_due`` is what the worker
calls when an interval ends. The store is a real SQLite store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat_core.chatstore import Conversation, LastMessage
from chat_core.chatstore.sqlite import SqliteChatStore
from chat_core.leases import summary_lease
from chat_core.leases.redis import RedisWriteLeases
from message_service.last_message import LastMessageWriter

T0 = dt.datetime(2024, 4, 19, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SqliteChatStore):
    """The real SQLite store, counting conversation writes."""

    touches = 0

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
        self.touches += 1
        await super().touch_conversation(conversation_id, last_message)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(tmp_path / "messages.sqlite3")
    await store.start()
    yield store
    await store.close()


async def conversation(store: CountingStore) -> str:
    cid = uuid.uuid4().hex
    await store.create_conversation(
        Conversation(conversation_id=cid, participants=("alice",), name=None, created_at=T0, updated_at=T0)
    )
    return cid


def last(n: int) -> LastMessage:
    return LastMessage(
        message_id=f"m{n:03d}",
        sender_id="alice",
        message_type="text",
        preview=f"message {n}",
        timestamp=T0 + dt.timedelta(milliseconds=n),
    )


async def stored_last(store: CountingStore, cid: str) -> LastMessage | None:
    found = await store.get_conversation(cid)
    assert found is not None
    return found.last_message


async def test_the_first_message_of_a_quiet_conversation_is_written_at_once(store: CountingStore) -> None:
    touches = LastMessageWriter(store, interval=1.0, clock=Clock())
    cid = await conversation(store)
    await touches.touch(cid, last(1))
    assert await stored_last(store, cid) == last(1)
    assert touches.pending() == 0


async def test_a_burst_is_one_write_now_and_one_when_the_interval_ends(store: CountingStore) -> None:
    clock = Clock()
    touches = LastMessageWriter(store, interval=1.0, clock=clock)
    cid = await conversation(store)
    for n in range(1, 51):  # 50 messages within one interval
        await touches.touch(cid, last(n))
        clock.now += 0.01
    assert store.touches == 1
    assert await stored_last(store, cid) == last(1)
    await touches.flush_due()  # 0.5 s in: still within the interval
    assert store.touches == 1
    clock.now = 1001.0  # one interval after the first write
    await touches.flush_due()
    assert store.touches == 2
    assert await stored_last(store, cid) == last(50)


async def test_a_steady_stream_writes_once_per_interval(store: CountingStore) -> None:
    clock = Clock()
    touches = LastMessageWriter(store, interval=1.0, clock=clock)
    cid = await conversation(store)
    for n in range(100):  # 10 messages a second for 10 seconds, the worker flushing as it would
        await touches.touch(cid, last(n))
        clock.now += 0.1
        await touches.flush_due()
    assert store.touches <= 11
    await touches.flush_all()
    assert await stored_last(store, cid) == last(99)


async def test_an_older_message_arriving_late_does_not_replace_a_newer_pending_one(
    store: CountingStore,
) -> None:
    clock = Clock()
    touches = LastMessageWriter(store, interval=1.0, clock=clock)
    cid = await conversation(store)
    await touches.touch(cid, last(1))
    await touches.touch(cid, last(9))
    await touches.touch(cid, last(5))
    clock.now += 1.0
    await touches.flush_due()
    assert await stored_last(store, cid) == last(9)


async def test_conversations_are_coalesced_separately(store: CountingStore) -> None:
    touches = LastMessageWriter(store, interval=1.0, clock=Clock())
    first, second = await conversation(store), await conversation(store)
    await touches.touch(first, last(1))
    await touches.touch(second, last(2))
    assert await stored_last(store, first) == last(1)
    assert await stored_last(store, second) == last(2)


async def test_shutdown_writes_what_is_pending(store: CountingStore) -> None:
    touches = LastMessageWriter(store, interval=60.0, clock=Clock())
    cid = await conversation(store)
    async with touches.worker():
        await touches.touch(cid, last(1))
        await touches.touch(cid, last(2))
        assert await stored_last(store, cid) == last(1)
    assert await stored_last(store, cid) == last(2)


async def test_the_worker_writes_the_pending_message_when_the_interval_ends(store: CountingStore) -> None:
    touches = LastMessageWriter(store, interval=0.05)
    cid = await conversation(store)
    async with touches.worker():
        await touches.touch(cid, last(1))
        await touches.touch(cid, last(2))
        for _ in range(200):  # the worker wakes on its own; wait for the event, bounded
            if await stored_last(store, cid) == last(2):
                break
            await asyncio.sleep(0.01)
    assert await stored_last(store, cid) == last(2)


async def test_a_failed_write_is_kept_and_retried(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "messages.sqlite3")
    await store.start()
    clock = Clock()
    touches = LastMessageWriter(store, interval=1.0, clock=clock)
    cid = await conversation(store)
    await store.close()
    await touches.touch(cid, last(1))  # the store is down: the send must not fail
    assert touches.pending() == 1
    await store.start()
    clock.now += 1.0
    await touches.flush_due()
    assert touches.pending() == 0
    assert await stored_last(store, cid) == last(1)
    await store.close()


# --- across replicas: one writer per conversation per interval (a Redis lease) ------------------------
@pytest.fixture
def leases(redis_backend: Any) -> RedisWriteLeases:
    return RedisWriteLeases(redis_backend.address, prefix=f"test-{uuid.uuid4().hex[:8]}")


async def test_a_second_replica_does_not_write_within_the_firsts_interval(
    store: CountingStore, leases: RedisWriteLeases
) -> None:
    pod_a = LastMessageWriter(store, leases=leases, interval=60.0, clock=Clock())
    pod_b = LastMessageWriter(store, leases=leases, interval=60.0, clock=Clock())
    cid = await conversation(store)
    await pod_a.touch(cid, last(1))
    for n in range(2, 12):  # the other pod's sends, all within the lease
        await pod_b.touch(cid, last(n))
        await pod_b.flush_due()
    assert store.touches == 1
    assert await stored_last(store, cid) == last(1)
    assert pod_b.pending() == 1  # its newest is kept, never dropped
    await pod_b.flush_all()  # shutdown: written whatever the lease
    assert await stored_last(store, cid) == last(11)
    await leases.close()


async def test_the_newest_waits_for_the_lease_and_is_written_when_it_lapses(
    store: CountingStore, leases: RedisWriteLeases
) -> None:
    pod_a = LastMessageWriter(store, leases=leases, interval=0.2)
    pod_b = LastMessageWriter(store, leases=leases, interval=0.2)
    cid = await conversation(store)
    await pod_a.touch(cid, last(1))
    await pod_b.touch(cid, last(2))
    assert (store.touches, await stored_last(store, cid)) == (1, last(1))
    await asyncio.sleep(0.3)  # past the lease (Redis's own clock times it)
    await pod_b.flush_due()
    assert (store.touches, await stored_last(store, cid)) == (2, last(2))
    await leases.close()


async def test_the_lease_key_is_tagged_by_conversation_for_redis_cluster() -> None:
    key = RedisWriteLeases("redis://127.0.0.1:1/0", prefix="chat").key(summary_lease("c-1"))
    assert key == "chat:lease:summary:{c:c-1}"


async def test_with_the_lease_store_down_the_summary_is_still_written(store: CountingStore) -> None:
    unreachable = RedisWriteLeases("redis://127.0.0.1:1/0")
    touches = LastMessageWriter(store, leases=unreachable, interval=1.0, clock=Clock())
    cid = await conversation(store)
    await touches.touch(cid, last(1))
    assert await stored_last(store, cid) == last(1)
    await unreachable.close()
