"""Redis Cluster only (``REDIS_MODE=cluster``): sharded pub/sub stays in one shard, subscriptions follow a
slot that migrates, presence reads one command per node. The shared contract runs in
``test_realtime_contract.py`` (param ``redis-cluster``); these use the session's cluster (3 primaries,
3 replicas).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tests import harness
from tests.contract.test_realtime_contract import (
    TIMEOUT,
    Gaps,
    Inbox,
    Realtime,
    _open,
    _unique_channel,
    publish_when_back,
)


@pytest.fixture
async def cluster_realtime(redis_cluster: harness.Backend, tmp_path: Path) -> AsyncIterator[Realtime]:
    async for opened in _open("redis-cluster", tmp_path, {"REDIS_URL": redis_cluster.address}):
        yield opened


@pytest.fixture
async def raw(redis_cluster: harness.Backend) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.address)
    await client.initialize()
    yield client
    await client.aclose()


async def _on(raw: RedisCluster, node: ClusterNode, *command: Any) -> Any:
    return await raw.execute_command(*command, target_nodes=node)


async def _shard_subscribers(raw: RedisCluster, node: ClusterNode, channel: str) -> int:
    reply = await _on(raw, node, "PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


async def _migrate_slot(raw: RedisCluster, channel: str) -> tuple[ClusterNode, ClusterNode]:
    """Move the (key-less) slot of ``channel`` to another primary, the way a resharding does."""
    await raw.nodes_manager.initialize()
    source = raw.get_node_from_key(channel)
    assert source is not None
    target = next(node for node in raw.get_primaries() if node.name != source.name)
    slot = raw.keyslot(channel)
    source_id = (await _on(raw, source, "CLUSTER", "MYID")).decode()
    target_id = (await _on(raw, target, "CLUSTER", "MYID")).decode()
    await _on(raw, target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    await _on(raw, source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    await _on(raw, target, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    await _on(raw, source, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    for node in raw.get_primaries():
        if node.name not in (source.name, target.name):
            await _on(raw, node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    await raw.nodes_manager.initialize()
    assert raw.get_node_from_key(channel).name == target.name  # type: ignore[union-attr]
    return source, target


async def _until(probe: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not await probe():
            await asyncio.sleep(0.02)


async def test_a_channel_is_subscribed_only_on_the_shard_owning_its_slot(
    cluster_realtime: Realtime, raw: RedisCluster
) -> None:
    channels = [_unique_channel() for _ in range(12)]  # spread over the three primaries
    inbox = Inbox()
    subscription = await cluster_realtime.bus.subscribe(channels, inbox)
    for channel in channels:
        owner = raw.get_node_from_key(channel)
        assert owner is not None
        for node in raw.get_primaries():
            assert await _shard_subscribers(raw, node, channel) == (1 if node.name == owner.name else 0)
        # A plain PUBLISH is not sharded pub/sub: the subscriber never hears it; SPUBLISH it does.
        await raw.publish(channel, b"classic")
        await cluster_realtime.bus.publish(channel, b"sharded")
        assert await inbox.next() == (channel, b"sharded")
    await subscription.close()
    for channel in channels:
        owner = raw.get_node_from_key(channel)
        assert owner is not None
        assert await _shard_subscribers(raw, owner, channel) == 0


async def test_a_subscription_follows_its_slot_when_it_migrates(
    cluster_realtime: Realtime, raw: RedisCluster
) -> None:
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await cluster_realtime.bus.subscribe([channel], inbox)
    await cluster_realtime.bus.publish(channel, b"before")
    assert await inbox.next() == (channel, b"before")

    source, target = await _migrate_slot(raw, channel)

    # The old owner pushes `sunsubscribe`; the subscriber resubscribes on the new owner by itself.
    await _until(lambda: _shard_subscribers(raw, target, channel))
    assert await _shard_subscribers(raw, source, channel) == 0
    await cluster_realtime.bus.publish(channel, b"after")  # the publisher follows MOVED too
    assert await inbox.next() == (channel, b"after")
    await subscription.close()


async def test_a_slot_migration_under_a_subscription_is_reported_once_as_a_gap(
    cluster_realtime: Realtime, raw: RedisCluster
) -> None:
    moving, staying = _unique_channel(), _unique_channel()
    inbox, gaps = Inbox(), Gaps()
    subscription = await cluster_realtime.bus.subscribe([moving, staying], inbox, on_gap=gaps)
    _source, target = await _migrate_slot(raw, moving)
    # Between the old owner dropping the channel and the new one confirming it, publishes are lost.
    await gaps.reported()
    assert await _shard_subscribers(raw, target, moving) == 1
    await cluster_realtime.bus.publish(moving, b"after")
    assert await inbox.next() == (moving, b"after")
    assert gaps.count == 1
    await subscription.close()


async def test_subscribing_with_a_stale_slot_map_follows_moved(
    cluster_realtime: Realtime, raw: RedisCluster
) -> None:
    warm = await cluster_realtime.bus.subscribe([_unique_channel()], Inbox())  # loads the slot map
    channel = _unique_channel()
    await _migrate_slot(raw, channel)  # the bus's slot map still names the old owner
    inbox = Inbox()
    subscription = await cluster_realtime.bus.subscribe([channel], inbox)
    await cluster_realtime.bus.publish(channel, b"found it")
    assert await inbox.next() == (channel, b"found it")
    await subscription.close()
    await warm.close()


async def test_a_subscription_comes_back_after_its_node_restarts(
    cluster_realtime: Realtime, redis_cluster: harness.Backend, raw: RedisCluster
) -> None:
    if not redis_cluster.restartable:
        pytest.skip("the cluster comes from REDIS_CLUSTER_URL")
    channel = _unique_channel()
    inbox = Inbox()
    subscription = await cluster_realtime.bus.subscribe([channel], inbox)
    redis_cluster.stop()
    redis_cluster.start()  # same ports, same nodes.conf: the same slot owners
    owner = raw.get_node_from_key(channel)
    assert owner is not None
    await raw.nodes_manager.initialize()
    await _until(lambda: _shard_subscribers(raw, raw.get_node_from_key(channel), channel))  # type: ignore[arg-type]
    await cluster_realtime.bus.publish(channel, b"after restart")
    assert await inbox.next() == (channel, b"after restart")
    await subscription.close()


async def test_presence_of_all_members_is_one_command_per_node(
    cluster_realtime: Realtime, raw: RedisCluster
) -> None:
    members = [f"u-{uuid.uuid4().hex[:10]}" for _ in range(300)]
    online = set(members[::5])
    for user in online:
        await cluster_realtime.presence.heartbeat(user, "c")
    assert await cluster_realtime.presence.online(members) == online  # loads the script on every node
    primaries = raw.get_primaries()
    for node in primaries:
        await _on(raw, node, "CONFIG", "RESETSTAT")
    assert await cluster_realtime.presence.online(members) == online
    calls: dict[str, int] = {}
    for node in primaries:
        stats: dict[str, Any] = await _on(raw, node, "INFO", "commandstats")
        for name, value in stats.items():
            calls[name] = calls.get(name, 0) + int(value["calls"])
    assert calls["cmdstat_evalsha"] == len(primaries)
    assert calls["cmdstat_zcount"] == len(members)
    assert "cmdstat_eval" not in calls


def test_a_users_keys_share_a_slot_and_users_spread() -> None:
    from redis.crc import key_slot

    from chat_core.redis_keys import presence_key, user_tag

    alice = "alice"
    assert key_slot(presence_key(alice).encode()) == key_slot(f"rl:{user_tag(alice)}:send".encode())
    slots = {key_slot(presence_key(f"user-{n}").encode()) for n in range(1000)}
    assert len(slots) > 900  # no common tag: a thousand users land on (almost) a thousand slots


@pytest.fixture
async def private_cluster_realtime(
    private_redis_cluster: harness.Backend, tmp_path: Path
) -> AsyncIterator[Realtime]:
    async for opened in _open("redis-cluster", tmp_path, {"REDIS_URL": private_redis_cluster.address}):
        yield opened


async def test_a_cluster_restart_is_reported_once_as_a_gap_and_later_events_arrive(
    private_cluster_realtime: Realtime, private_redis_cluster: harness.Backend
) -> None:
    bus = private_cluster_realtime.bus
    raw = RedisCluster.from_url(private_redis_cluster.address)
    try:
        await raw.initialize()
        channels = [_unique_channel() for _ in range(12)]
        owners = {raw.get_node_from_key(c).name for c in channels}  # type: ignore[union-attr]
        assert len(owners) == 3  # one subscription on every shard subscriber
    finally:
        await raw.aclose()
    inbox, gaps = Inbox(), Gaps()
    subscription = await bus.subscribe(channels, inbox, on_gap=gaps)
    private_redis_cluster.stop()
    private_redis_cluster.start()  # same ports, same nodes.conf: the same slot owners

    await gaps.reported()  # once every shard has confirmed its channels again
    for channel in channels:
        await publish_when_back(bus, channel, b"after the gap")
    assert {await inbox.next() for _ in channels} == {(c, b"after the gap") for c in channels}
    assert gaps.count == 1
    await subscription.close()
