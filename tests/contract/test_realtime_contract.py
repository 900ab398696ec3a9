"""EventBus and Presence contract: the same tests against Redis and the in-process adapters.

Negative checks ("X was not delivered") never sleep: a marker is published after X on a channel the
subscriber does hear, and the first thing it receives must be the marker (both adapters keep order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from chat_core.composition import Composition
from chat_core.realtime import (
    MEMBERSHIP_CHANNEL,
    EventBus,
    EventBusUnavailable,
    Presence,
    conversation_channel,
    user_channel,
)
from chat_core.realtime import memory as memory_adapter
from chat_core.realtime import redis as redis_adapter
from tests import harness
from tests.conftest import make_settings

TIMEOUT = 5.0
SHORT_TTL = 0.4


@dataclass
class Realtime:
    kind: str
    bus: EventBus
    presence: Presence
    short_presence: Presence  # same adapter, a TTL short enough to watch expire


class Inbox:
    """A handler that collects (channel, payload) so a test can await them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, channel: str, payload: bytes) -> None:
        self.queue.put_nowait((channel, payload))

    async def next(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


class Gaps:
    """An ``on_gap`` callback that counts the gaps a subscription reports, so a test can await them."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._changed.set()

    async def reported(self, count: int = 1) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


async def publish_when_back(bus: EventBus, channel: str, payload: bytes) -> None:
    """Publish after a restart: the publisher's pooled connection may still be the dead one (once)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await bus.publish(channel, payload)
                return
            except EventBusUnavailable:
                await asyncio.sleep(0.05)


def _unique_channel() -> str:
    return conversation_channel(uuid.uuid4().hex)


async def _open(kind: str, tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Realtime]:
    """``kind``: ``memory``, ``redis`` (one node) or ``redis-cluster`` (REDIS_MODE=cluster)."""
    if kind == "redis-cluster":
        env = {"REDIS_MODE": "cluster", **env}
    settings = make_settings(tmp_path, {"EVENT_BUS": kind.partition("-")[0], **env})
    backends = Composition(settings)
    bus, presence = backends.event_bus, backends.presence
    short: Presence  # a second presence with a short TTL, on the same connections as the root's
    if kind == "memory":
        short = memory_adapter.MemoryPresence(SHORT_TTL)
    else:
        short = redis_adapter.RedisPresence(backends.redis_connections, SHORT_TTL)
    await short.start()
    async with backends:
        yield Realtime(kind, bus, presence, short)
    await short.close()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def realtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Realtime]:
    env: dict[str, str] = {}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_backend").address
    elif request.param == "redis-cluster":
        env["REDIS_URL"] = request.getfixturevalue("redis_cluster").address
    async for opened in _open(request.param, tmp_path, env):
        yield opened


# --- EventBus ---------------------------------------------------------------------------------------
async def test_a_publish_reaches_every_subscriber_of_its_channel(realtime: Realtime) -> None:
    channel = _unique_channel()
    first, second = Inbox(), Inbox()
    subscriptions = [
        await realtime.bus.subscribe([channel], first),
        await realtime.bus.subscribe([channel], second),
    ]
    await realtime.bus.publish(channel, b"hello")
    assert await first.next() == (channel, b"hello")
    assert await second.next() == (channel, b"hello")
    for subscription in subscriptions:
        await subscription.close()


async def test_a_publish_does_not_reach_other_channels(realtime: Realtime) -> None:
    mine, other = _unique_channel(), _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([mine], inbox)
    await realtime.bus.publish(other, b"not for you")
    await realtime.bus.publish(mine, b"marker")
    assert await inbox.next() == (mine, b"marker")
    await subscription.close()


async def test_payload_bytes_arrive_unchanged(realtime: Realtime) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([channel], inbox)
    payload = bytes(range(256)) + "é\r\n$*".encode()
    await realtime.bus.publish(channel, payload)
    assert await inbox.next() == (channel, payload)
    await subscription.close()


async def test_events_on_one_channel_arrive_in_publish_order(realtime: Realtime) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([channel], inbox)
    for n in range(50):
        await realtime.bus.publish(channel, str(n).encode())
    assert [(await inbox.next())[1] for _ in range(50)] == [str(n).encode() for n in range(50)]
    await subscription.close()


async def test_a_channel_added_to_an_open_subscription_is_delivered(realtime: Realtime) -> None:
    first, joined = _unique_channel(), _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([first], inbox)
    await subscription.add([joined])
    await realtime.bus.publish(joined, b"welcome")
    assert await inbox.next() == (joined, b"welcome")
    await subscription.close()


async def test_a_removed_channel_is_no_longer_delivered(realtime: Realtime) -> None:
    kept, left = _unique_channel(), _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([kept, left], inbox)
    await subscription.remove([left])
    await realtime.bus.publish(left, b"gone")
    await realtime.bus.publish(kept, b"marker")
    assert await inbox.next() == (kept, b"marker")
    await subscription.close()


async def test_a_closed_subscription_receives_nothing(realtime: Realtime) -> None:
    channel = _unique_channel()
    closed, open_ = Inbox(), Inbox()
    closing = await realtime.bus.subscribe([channel], closed)
    staying = await realtime.bus.subscribe([channel], open_)
    await closing.close()
    await realtime.bus.publish(channel, b"after close")
    assert await open_.next() == (channel, b"after close")
    assert closed.queue.empty()
    await staying.close()


async def test_one_subscriber_leaving_a_channel_keeps_it_for_the_others(realtime: Realtime) -> None:
    channel = _unique_channel()
    leaving, staying = Inbox(), Inbox()
    first = await realtime.bus.subscribe([channel], leaving)
    second = await realtime.bus.subscribe([channel], staying)
    await first.remove([channel])
    await realtime.bus.publish(channel, b"still here")
    assert await staying.next() == (channel, b"still here")
    await first.close()
    await second.close()


async def test_resubscribing_right_after_the_last_unsubscribe_is_delivered(realtime: Realtime) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await realtime.bus.subscribe([channel], Inbox())
    await subscription.close()
    again = await realtime.bus.subscribe([channel], inbox)
    await realtime.bus.publish(channel, b"back")
    assert await inbox.next() == (channel, b"back")
    await again.close()


async def test_a_failing_handler_does_not_keep_the_event_from_others(realtime: Realtime) -> None:
    channel = _unique_channel()
    inbox = Inbox()

    def broken(_channel: str, _payload: bytes) -> None:
        raise RuntimeError("handler bug")

    bad = await realtime.bus.subscribe([channel], broken)
    good = await realtime.bus.subscribe([channel], inbox)
    await realtime.bus.publish(channel, b"one")
    await realtime.bus.publish(channel, b"two")
    assert [await inbox.next(), await inbox.next()] == [(channel, b"one"), (channel, b"two")]
    await bad.close()
    await good.close()


async def test_membership_and_user_channels_are_ordinary_channels(realtime: Realtime) -> None:
    inbox = Inbox()
    user = user_channel(uuid.uuid4().hex)
    subscription = await realtime.bus.subscribe([MEMBERSHIP_CHANNEL, user], inbox)
    await realtime.bus.publish(MEMBERSHIP_CHANNEL, b'{"conversationId":"c1"}')
    await realtime.bus.publish(user, b"joined")
    received = {await inbox.next(), await inbox.next()}
    assert received == {(MEMBERSHIP_CHANNEL, b'{"conversationId":"c1"}'), (user, b"joined")}
    await subscription.close()


async def test_a_subscription_that_lost_nothing_reports_no_gap(realtime: Realtime) -> None:
    channels = [_unique_channel() for _ in range(3)]
    inbox, gaps = Inbox(), Gaps()
    subscription = await realtime.bus.subscribe(channels[:1], inbox, on_gap=gaps)
    await subscription.add(channels[1:])
    await subscription.remove(channels[:1])
    for channel in channels[1:]:
        await realtime.bus.publish(channel, b"delivered")
    assert {await inbox.next(), await inbox.next()} == {(c, b"delivered") for c in channels[1:]}
    assert gaps.count == 0
    await subscription.close()


# --- Presence ---------------------------------------------------------------------------------------
def _user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def test_a_heartbeat_makes_a_user_online(realtime: Realtime) -> None:
    alice, bob = _user(), _user()
    await realtime.presence.heartbeat(alice, "conn-1")
    assert await realtime.presence.online([alice, bob]) == {alice}


async def test_online_of_nobody_is_empty(realtime: Realtime) -> None:
    assert await realtime.presence.online([]) == set()


async def test_a_user_stays_online_while_any_connection_is_open(realtime: Realtime) -> None:
    alice = _user()
    await realtime.presence.heartbeat(alice, "phone")
    await realtime.presence.heartbeat(alice, "laptop")
    await realtime.presence.disconnect(alice, "phone")
    assert await realtime.presence.online([alice]) == {alice}


async def test_closing_the_last_connection_makes_the_user_offline(realtime: Realtime) -> None:
    alice = _user()
    await realtime.presence.heartbeat(alice, "phone")
    await realtime.presence.disconnect(alice, "phone")
    assert await realtime.presence.online([alice]) == set()


async def test_disconnecting_an_unknown_connection_is_harmless(realtime: Realtime) -> None:
    alice = _user()
    await realtime.presence.disconnect(alice, "never-seen")
    assert await realtime.presence.online([alice]) == set()


async def test_forgetting_a_user_takes_every_connection_offline_at_once(realtime: Realtime) -> None:
    alice, bob = _user(), _user()
    for user, connection in ((alice, "phone"), (alice, "laptop"), (bob, "phone")):
        await realtime.presence.heartbeat(user, connection)
    await realtime.presence.forget(alice)
    assert await realtime.presence.online([alice, bob]) == {bob}
    await realtime.presence.forget(alice)  # again: harmless


async def test_presence_expires_without_heartbeats(realtime: Realtime) -> None:
    alice = _user()
    await realtime.short_presence.heartbeat(alice, "phone")
    assert await realtime.short_presence.online([alice]) == {alice}
    await asyncio.sleep(SHORT_TTL + 0.15)  # the TTL is the behaviour under test
    assert await realtime.short_presence.online([alice]) == set()


async def test_heartbeats_keep_presence_alive_past_the_ttl(realtime: Realtime) -> None:
    alice = _user()
    for _ in range(4):
        await realtime.short_presence.heartbeat(alice, "phone")
        await asyncio.sleep(SHORT_TTL / 2)
    assert await realtime.short_presence.online([alice]) == {alice}


async def test_the_presence_of_a_large_group_is_answered_at_once(realtime: Realtime) -> None:
    members = [_user() for _ in range(2000)]
    online = set(members[::7])
    for user in online:
        await realtime.presence.heartbeat(user, "c")
    assert await realtime.presence.online(members) == online


# --- Redis only: one connection, one round trip, outages -------------------------------------------
@pytest.fixture
async def redis_realtime(private_redis: harness.Backend, tmp_path: Path) -> AsyncIterator[Realtime]:
    async for opened in _open("redis", tmp_path, {"REDIS_URL": private_redis.address}):
        yield opened


async def _raw(address: str) -> aioredis.Redis:
    return aioredis.from_url(address)


async def test_every_local_subscription_shares_one_redis_connection(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    channels = [_unique_channel() for _ in range(3)]
    subscriptions = [await redis_realtime.bus.subscribe(channels, Inbox()) for _ in range(20)]
    raw = await _raw(private_redis.address)
    try:
        clients = await raw.client_list(_type="pubsub")
        assert len(clients) == 1
        assert await raw.pubsub_numsub(*channels) == [(c.encode(), 1) for c in channels]
    finally:
        await raw.aclose()
    for subscription in subscriptions:
        await subscription.close()


async def test_the_last_local_unsubscribe_unsubscribes_from_redis(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    first = await redis_realtime.bus.subscribe([channel], Inbox())
    second = await redis_realtime.bus.subscribe([channel], Inbox())
    marker = await redis_realtime.bus.subscribe([MEMBERSHIP_CHANNEL], inbox)
    await first.close()
    await second.close()
    # The UNSUBSCRIBE is confirmed before this marker arrives (one connection, replies in order).
    await redis_realtime.bus.publish(MEMBERSHIP_CHANNEL, b"marker")
    await inbox.next()
    raw = await _raw(private_redis.address)
    try:
        assert await raw.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        await raw.aclose()
    await marker.close()


async def test_presence_of_all_members_is_one_redis_call(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    members = [_user() for _ in range(500)]
    await redis_realtime.presence.online(members)  # loads the script
    raw = await _raw(private_redis.address)
    try:
        await raw.config_resetstat()
        await redis_realtime.presence.online(members)
        stats: dict[str, Any] = await raw.info("commandstats")
    finally:
        await raw.aclose()
    calls = {name: value["calls"] for name, value in stats.items()}
    calls.pop("cmdstat_config|resetstat")
    calls.pop("cmdstat_time")  # inside the script
    assert calls == {"cmdstat_evalsha": 1, "cmdstat_zcount": 500}


async def test_subscriptions_come_back_after_redis_restarts(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await redis_realtime.bus.subscribe([channel], inbox)
    private_redis.stop()
    private_redis.start()
    raw = await _raw(private_redis.address)
    try:
        async with asyncio.timeout(TIMEOUT):
            while await raw.publish(channel, b"after restart") == 0:
                await asyncio.sleep(0.05)  # the subscriber reconnects on its own schedule
    finally:
        await raw.aclose()
    assert await inbox.next() == (channel, b"after restart")
    await subscription.close()


async def test_the_first_publish_after_redis_restarts_goes_through(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    # The pooled connection the restart closed is replaced: the first publish after Redis is back does
    # not fail on it (an event's immediate publish would otherwise wait for the relay).
    await redis_realtime.bus.publish(_unique_channel(), b"warms the pool")
    private_redis.stop()
    private_redis.start()
    await redis_realtime.bus.publish(_unique_channel(), b"first after the restart")
    await redis_realtime.presence.online([_user()])


async def test_publishing_while_redis_is_down_raises_unavailable(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    private_redis.stop()
    with pytest.raises(EventBusUnavailable):
        await redis_realtime.bus.publish(_unique_channel(), b"lost")
    with pytest.raises(EventBusUnavailable):
        await redis_realtime.presence.online([_user()])
    private_redis.start()


async def test_subscribing_while_redis_is_down_raises_unavailable(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    private_redis.stop()
    with pytest.raises(EventBusUnavailable):
        await redis_realtime.bus.subscribe([_unique_channel()], Inbox())
    private_redis.start()


async def test_readiness_fails_while_redis_is_down(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    await redis_realtime.bus.subscribe([_unique_channel()], Inbox())
    private_redis.stop()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error the client raises
        await redis_realtime.bus.ping()
    private_redis.start()


async def test_readiness_is_back_as_soon_as_redis_is(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await redis_realtime.bus.subscribe([channel], inbox)
    private_redis.stop()
    with pytest.raises(EventBusUnavailable):
        await redis_realtime.bus.ping()
    private_redis.start()  # blocks the loop: the subscriber's reconnect timer is late, the probe is not
    await redis_realtime.bus.ping()
    await redis_realtime.bus.publish(channel, b"back")
    assert await inbox.next() == (channel, b"back")
    await subscription.close()


async def test_a_redis_restart_is_reported_once_as_a_gap_and_later_events_arrive(
    redis_realtime: Realtime, private_redis: harness.Backend
) -> None:
    channels = [_unique_channel() for _ in range(3)]
    inbox, gaps, other_gaps = Inbox(), Gaps(), Gaps()
    subscription = await redis_realtime.bus.subscribe(channels, inbox, on_gap=gaps)
    other = await redis_realtime.bus.subscribe(channels[:1], Inbox(), on_gap=other_gaps)
    closed_gaps = Gaps()
    closed = await redis_realtime.bus.subscribe(channels[1:], Inbox(), on_gap=closed_gaps)
    private_redis.stop()
    await asyncio.sleep(0.3)  # the subscriber notices the outage
    await closed.close()  # closed during the outage: it is told nothing
    private_redis.start()

    await gaps.reported()
    # Reported once every channel is confirmed again: what is published from then on arrives.
    for channel in channels:
        await publish_when_back(redis_realtime.bus, channel, b"after the gap")
    assert {await inbox.next() for _ in channels} == {(c, b"after the gap") for c in channels}
    await other_gaps.reported()
    assert (gaps.count, other_gaps.count, closed_gaps.count) == (1, 1, 0)
    await subscription.close()
    await other.close()


async def test_each_outage_is_its_own_gap(redis_realtime: Realtime, private_redis: harness.Backend) -> None:
    channel = _unique_channel()
    inbox, gaps = Inbox(), Gaps()
    subscription = await redis_realtime.bus.subscribe([channel], inbox, on_gap=gaps)
    for outage in (1, 2):
        private_redis.stop()
        private_redis.start()
        await gaps.reported(outage)
        await publish_when_back(redis_realtime.bus, channel, b"back")
        assert await inbox.next() == (channel, b"back")
    assert gaps.count == 2
    await subscription.close()
