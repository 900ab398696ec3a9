"""MembershipCache over the real SQLite message store, and its invalidation worker on the real buses.

``ReadCounter`` wraps the real store only to count (and, where a test needs it, hold) membership reads;
every answer still comes from SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import REGISTRY

from chat_core.chatstore import ChatStore, Conversation, ConversationStore
from chat_core.composition import Composition
from chat_core.membership import MembershipCache
from chat_core.realtime import MEMBERSHIP_CHANNEL, EventBus
from tests import harness
from tests.conftest import make_settings

TIMEOUT = 5.0


class ReadCounter:
    """The real store, with its membership reads counted and optionally held at a gate."""

    def __init__(self, inner: ChatStore) -> None:
        self.inner = inner
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail_with: Exception | None = None

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        self.reads += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return await self.inner.get_participants(conversation_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Composition]:
    backends = Composition(make_settings(tmp_path))
    _ = backends.chat_store
    async with backends:
        yield backends


@pytest.fixture
def store(backends: Composition) -> ReadCounter:
    return ReadCounter(backends.chat_store)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(store: ReadCounter, clock: Clock) -> MembershipCache:
    return MembershipCache(cast(ConversationStore, store), ttl_seconds=5.0, clock=clock)


async def _conversation(backends: Composition, *members: str) -> str:
    conversation_id = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    await backends.chat_store.create_conversation(
        Conversation(
            conversation_id=conversation_id, participants=members, name=None, created_at=now, updated_at=now
        )
    )
    return conversation_id


# --- caching --------------------------------------------------------------------------------------
async def test_a_member_is_answered_from_the_cache_within_the_ttl(
    cache: MembershipCache, store: ReadCounter, backends: Composition, clock: Clock
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    first = await cache.check(cid, "alice")
    clock.now += 4.9
    second = await cache.check(cid, "bob")
    assert first.member
    assert second.member
    assert store.reads == 1


async def test_the_store_is_asked_again_once_the_ttl_has_passed(
    cache: MembershipCache, store: ReadCounter, backends: Composition, clock: Clock
) -> None:
    cid = await _conversation(backends, "alice")
    await cache.check(cid, "alice")
    clock.now += 5.0
    await cache.check(cid, "alice")
    assert store.reads == 2


async def test_a_removed_member_is_refused_after_the_ttl_even_without_an_invalidation(
    cache: MembershipCache, backends: Composition, clock: Clock
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    await cache.check(cid, "bob")
    await backends.chat_store.remove_participant(cid, "bob")
    clock.now += 5.0
    assert not (await cache.check(cid, "bob")).member


async def test_concurrent_misses_for_one_conversation_are_one_store_read(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    store.gate = asyncio.Event()
    checks = [asyncio.create_task(cache.check(cid, user)) for user in ["alice", "bob"] * 25]
    await asyncio.wait_for(store.started.wait(), TIMEOUT)
    store.gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*checks), TIMEOUT)
    assert all(answer.member for answer in answers)
    assert store.reads == 1


async def test_misses_for_different_conversations_are_not_coalesced(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    first = await _conversation(backends, "alice")
    second = await _conversation(backends, "alice")
    await asyncio.gather(cache.check(first, "alice"), cache.check(second, "alice"))
    assert store.reads == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_read_others_wait_on(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice")
    store.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.check(cid, "alice"))
    patient = asyncio.create_task(cache.check(cid, "alice"))
    await asyncio.wait_for(store.started.wait(), TIMEOUT)
    impatient.cancel()
    store.gate.set()
    assert (await asyncio.wait_for(patient, TIMEOUT)).member
    assert store.reads == 1


async def test_a_store_error_reaches_every_waiter_and_is_not_cached(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice")
    store.gate = asyncio.Event()
    store.fail_with = ConnectionError("store down")
    checks = [asyncio.create_task(cache.check(cid, "alice")) for _ in range(3)]
    await asyncio.wait_for(store.started.wait(), TIMEOUT)
    store.gate.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    store.fail_with, store.gate = None, None
    assert (await cache.check(cid, "alice")).member
    assert store.reads == 2


# --- what is never cached -------------------------------------------------------------------------
async def test_a_non_member_answer_is_never_served_from_the_cache(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice")
    await cache.check(cid, "alice")
    assert not (await cache.check(cid, "carol")).member
    assert store.reads == 2


async def test_a_member_added_after_a_refusal_is_let_in_at_once(
    cache: MembershipCache, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice")
    assert not (await cache.check(cid, "carol")).member
    await backends.chat_store.add_participants(cid, ["carol"])
    assert (await cache.check(cid, "carol")).member


async def test_an_unknown_conversation_is_not_cached(cache: MembershipCache, backends: Composition) -> None:
    cid = uuid.uuid4().hex
    assert not (await cache.check(cid, "alice")).exists
    now = dt.datetime.now(dt.UTC)
    await backends.chat_store.create_conversation(
        Conversation(conversation_id=cid, participants=("alice",), name=None, created_at=now, updated_at=now)
    )
    assert (await cache.check(cid, "alice")).member


# --- invalidation ---------------------------------------------------------------------------------
async def test_invalidate_makes_a_removed_member_refused_at_once(
    cache: MembershipCache, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    await cache.check(cid, "bob")
    await backends.chat_store.remove_participant(cid, "bob")
    cache.invalidate(cid)
    assert not (await cache.check(cid, "bob")).member


async def test_an_answer_read_before_an_invalidation_is_not_kept(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    store.gate = asyncio.Event()
    before = asyncio.create_task(cache.check(cid, "bob"))
    await asyncio.wait_for(store.started.wait(), TIMEOUT)
    cache.invalidate(cid)  # the change lands while that read is in flight
    store.gate.set()
    await asyncio.wait_for(before, TIMEOUT)
    assert len(cache) == 0


async def test_a_lookup_after_an_invalidation_does_not_join_the_older_read(
    cache: MembershipCache, store: ReadCounter, backends: Composition
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    store.gate = asyncio.Event()
    before = asyncio.create_task(cache.check(cid, "bob"))
    await asyncio.wait_for(store.started.wait(), TIMEOUT)
    cache.invalidate(cid)
    after = asyncio.create_task(cache.check(cid, "bob"))
    await asyncio.sleep(0)  # let it reach the store
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(before, after), TIMEOUT)
    assert store.reads == 2


# --- bounds and switches --------------------------------------------------------------------------
async def test_the_cache_holds_at_most_max_entries(store: ReadCounter, backends: Composition) -> None:
    cache = MembershipCache(cast(ConversationStore, store), ttl_seconds=60, max_entries=3)
    conversations = [await _conversation(backends, "alice") for _ in range(5)]
    for cid in conversations:
        await cache.check(cid, "alice")
    assert len(cache) == 3
    await cache.check(conversations[-1], "alice")
    assert store.reads == 5  # the most recent stayed
    await cache.check(conversations[0], "alice")
    assert store.reads == 6  # the oldest was evicted


async def test_a_ttl_of_zero_reads_the_store_for_every_lookup_even_concurrent_ones(
    store: ReadCounter, backends: Composition
) -> None:
    cache = MembershipCache(cast(ConversationStore, store), ttl_seconds=0)
    cid = await _conversation(backends, "alice")
    assert (await cache.check(cid, "alice")).member
    answers = await asyncio.gather(*(cache.check(cid, "alice") for _ in range(3)))
    assert all(answer.member for answer in answers)
    assert store.reads == 4
    assert not cache.enabled


async def test_hits_and_misses_are_counted(cache: MembershipCache, backends: Composition) -> None:
    def sample(result: str) -> float:
        return REGISTRY.get_sample_value("chat_membership_cache_lookups_total", {"result": result}) or 0.0

    cid = await _conversation(backends, "alice")
    hits, misses = sample("hit"), sample("miss")
    await cache.check(cid, "alice")
    await cache.check(cid, "alice")
    await cache.check(cid, "alice")
    assert (sample("hit"), sample("miss")) == (hits + 2, misses + 1)


def test_one_cache_per_root(backends: Composition, tmp_path: Path) -> None:
    assert backends.membership is backends.membership
    assert Composition(make_settings(tmp_path / "other")).membership is not backends.membership


# --- the invalidation worker on the real buses ----------------------------------------------------
@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventBus]:
    env = {"EVENT_BUS": request.param}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_backend").address
    bus_backends = Composition(make_settings(tmp_path / "bus", env))
    event_bus = bus_backends.event_bus
    async with bus_backends:
        yield event_bus


async def _published(bus: EventBus, payload: bytes) -> None:
    """Publish on the membership channel and return once the bus has delivered it to its subscribers."""
    delivered = asyncio.Event()
    probe = await bus.subscribe([MEMBERSHIP_CHANNEL], lambda _channel, _payload: delivered.set())
    try:
        await bus.publish(MEMBERSHIP_CHANNEL, payload)
        # One dispatch calls every subscriber of a message, so the cache's handler has run by now.
        await asyncio.wait_for(delivered.wait(), TIMEOUT)
    finally:
        await probe.close()


async def _until_subscribed(cache: MembershipCache) -> None:
    async with asyncio.timeout(15):
        while not cache.subscribed:
            await asyncio.sleep(0.05)


async def test_the_worker_drops_the_conversation_named_on_the_membership_channel(
    cache: MembershipCache, backends: Composition, bus: EventBus
) -> None:
    cid = await _conversation(backends, "alice", "bob")
    other = await _conversation(backends, "alice")
    async with cache.invalidation_worker(bus):
        assert cache.subscribed
        await cache.check(cid, "bob")
        await cache.check(other, "alice")
        await backends.chat_store.remove_participant(cid, "bob")
        await _published(bus, b'{"conversationId": "%s"}' % cid.encode())
        assert len(cache) == 1  # only the named conversation was dropped
        assert not (await cache.check(cid, "bob")).member


async def test_a_malformed_membership_event_is_ignored(
    cache: MembershipCache, backends: Composition, bus: EventBus
) -> None:
    cid = await _conversation(backends, "alice")
    async with cache.invalidation_worker(bus):
        await cache.check(cid, "alice")
        await _published(bus, b"not json")
        await _published(bus, b'{"conversation": 1}')
        assert len(cache) == 1


async def test_the_worker_is_shared_and_unsubscribes_when_the_last_user_stops(
    cache: MembershipCache, bus: EventBus
) -> None:
    async with cache.invalidation_worker(bus):
        async with cache.invalidation_worker(bus):
            assert cache.subscribed
        assert cache.subscribed
    assert not cache.subscribed


async def test_the_worker_starts_while_redis_is_down_and_subscribes_once_it_is_back(
    private_redis: harness.Backend, store: ReadCounter, backends: Composition, tmp_path: Path
) -> None:
    cache = MembershipCache(
        cast(ConversationStore, store), ttl_seconds=60, resubscribe_seconds=0.2, startup_wait_seconds=0.2
    )
    env = {"EVENT_BUS": "redis", "REDIS_URL": private_redis.address}
    bus_backends = Composition(make_settings(tmp_path / "bus", env))
    redis_bus = bus_backends.event_bus
    cid = await _conversation(backends, "alice", "bob")
    async with bus_backends:
        private_redis.stop()
        async with asyncio.timeout(TIMEOUT):
            worker = cache.invalidation_worker(redis_bus)
            await worker.__aenter__()
        try:
            assert not cache.subscribed
            assert (await cache.check(cid, "bob")).member  # lookups go on without the bus
            private_redis.start()
            await _until_subscribed(cache)
            await backends.chat_store.remove_participant(cid, "bob")
            await _published(redis_bus, b'{"conversationId": "%s"}' % cid.encode())
            assert not (await cache.check(cid, "bob")).member
        finally:
            await worker.__aexit__(None, None, None)


async def test_changes_missed_during_a_redis_outage_empty_the_cache_once_it_is_back(
    private_redis: harness.Backend, store: ReadCounter, backends: Composition, tmp_path: Path
) -> None:
    cache = MembershipCache(cast(ConversationStore, store), ttl_seconds=60)
    env = {"EVENT_BUS": "redis", "REDIS_URL": private_redis.address}
    bus_backends = Composition(make_settings(tmp_path / "bus", env))
    redis_bus = bus_backends.event_bus
    cid = await _conversation(backends, "alice", "bob")
    async with bus_backends, cache.invalidation_worker(redis_bus):
        assert cache.subscribed
        assert (await cache.check(cid, "bob")).member
        private_redis.stop()
        await backends.chat_store.remove_participant(cid, "bob")  # its membership event is lost
        private_redis.start()
        async with asyncio.timeout(TIMEOUT):
            while len(cache):
                await asyncio.sleep(0.05)  # the bus reports the gap on its reconnect schedule
        assert not (await cache.check(cid, "bob")).member
