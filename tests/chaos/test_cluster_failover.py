"""Redis Cluster failover: a primary is ``kill -9``-ed under load (a test cluster of 3 primaries and 3
replicas of its own) and its replica takes over its slots. The event bus, presence and the rate limiter
follow the new primary by themselves, within seconds:

* the bus: each subscription reports at most one gap (``session.resync`` for a socket), publishes that
  failed meanwhile succeed when retried (the outbox retries until they do), and every publish that
  succeeded reaches the subscriber unless that subscription reported its gap;
* presence answers again (a heartbeat after the failover counts; no error escapes);
* the rate limiter fails open while the shard is down (never an error, never a 429 it cannot know) and
  counts again on the new primary.

The failover time is printed (node timeout 2 s plus the election); ``docs/operations/failure-behaviour.md``
has the row of the chaos table.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import connect

from chat_core.composition import Composition
from chat_core.ratelimit import RateLimited
from chat_core.realtime import EventBusUnavailable, conversation_channel
from chat_devstack import kill_cluster_node
from chat_management import all as all_in_one
from tests import harness
from tests.conftest import auth_header, make_settings, skip_unless_required, token_for
from tests.consumer.receivers import WebhookReceiver
from tests.contract.test_realtime_contract import Gaps

pytestmark = pytest.mark.redis

FAILOVER_DEADLINE = 20.0  # seconds from the kill to a working bus, presence and limiter on the new primary
CHANNELS = 12  # spread over the three shards


@pytest.fixture
def replicated_cluster() -> Iterator[harness.Backend]:
    try:
        backend = harness.start_local_redis_cluster(3, replicas=1)
    except RuntimeError as exc:
        skip_unless_required("redis", str(exc))
    yield backend
    backend.stop()


@pytest.fixture
async def backends(replicated_cluster: harness.Backend, tmp_path: Path) -> AsyncIterator[Composition]:
    settings = make_settings(
        tmp_path,
        {
            "EVENT_BUS": "redis",
            "LIMIT_STORE": "redis",
            "REDIS_MODE": "cluster",
            "REDIS_URL": replicated_cluster.address,
            "RATE_LIMIT_SENDS": "5/minute",
        },
    )
    opened = Composition(settings)
    _ = opened.event_bus, opened.presence, opened.rate_limiter  # ports are asked for before start-up
    async with opened:
        yield opened


@dataclass
class Received:
    payloads: dict[str, set[bytes]] = field(default_factory=dict)

    def __call__(self, channel: str, payload: bytes) -> None:
        self.payloads.setdefault(channel, set()).add(payload)


async def _owners(address: str, channels: list[str]) -> dict[str, str]:
    """The port of the primary owning each channel's slot."""
    raw = RedisCluster.from_url(address)
    try:
        await raw.initialize()
        nodes = {channel: raw.get_node_from_key(channel) for channel in channels}
        return {channel: str(node.port) for channel, node in nodes.items() if node is not None}
    finally:
        await raw.aclose()


async def _primary_of(address: str, channel: str) -> str:
    return (await _owners(address, [channel]))[channel]


async def _publish_until_done(backends: Composition, channel: str, payload: bytes, stop_at: float) -> bool:
    """What the outbox relay does: publish, and on failure try again until it goes through."""
    while time.monotonic() < stop_at:
        try:
            await backends.event_bus.publish(channel, payload)
            return True
        except EventBusUnavailable:
            await asyncio.sleep(0.1)
    return False


@pytest.mark.timeout(120)
async def test_a_primary_killed_under_load_is_followed_by_bus_presence_and_limiter(
    replicated_cluster: harness.Backend, backends: Composition
) -> None:
    channels = [conversation_channel(uuid.uuid4().hex) for _ in range(CHANNELS)]
    owners = await _owners(replicated_cluster.address, channels)
    assert len(set(owners.values())) == 3
    seed = str(replicated_cluster.cluster_ports[0])  # the address clients start from stays up
    victim_channel = next(channel for channel in channels if owners[channel] != seed)
    victim = int(owners[victim_channel])

    received, gaps = Received(), Gaps()
    subscription = await backends.event_bus.subscribe(channels, received, on_gap=gaps)
    published: dict[str, set[bytes]] = {channel: set() for channel in channels}
    errors: list[str] = []
    limiter_errors: list[BaseException] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for channel in channels:
                payload = f"{n}".encode()
                if await _publish_until_done(
                    backends, channel, payload, time.monotonic() + FAILOVER_DEADLINE
                ):
                    published[channel].add(payload)
                else:
                    errors.append(f"{channel} {n}: not published within {FAILOVER_DEADLINE} s")
            await asyncio.sleep(0.05)

    async def heartbeats() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # presence is best effort while a shard is down
                await backends.presence.heartbeat("alice", "socket-1")
            await asyncio.sleep(0.2)

    async def limiter_load() -> None:
        while not stop.is_set():
            try:
                await backends.rate_limiter.hit("sends", f"user:load-{uuid.uuid4().hex[:6]}")
            except BaseException as exc:  # fail open: nothing may escape, not even RateLimited
                limiter_errors.append(exc)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(work()) for work in (publisher, heartbeats, limiter_load)]
    try:
        await asyncio.sleep(1.0)  # load before the fault
        killed_at = time.monotonic()
        kill_cluster_node(replicated_cluster, victim)

        # The replica takes over: the slot's owner changes, then a publish there goes through.
        while await _owner_or_none(replicated_cluster, victim_channel) in (None, str(victim)):
            assert time.monotonic() - killed_at < FAILOVER_DEADLINE, "no replica took over"
            await asyncio.sleep(0.2)
        promoted = time.monotonic() - killed_at

        # A publish between the old owner's death and the new owner's confirmation is lost (that is the
        # gap the subscription reports); one made after it arrives.
        marker = b"after the failover"
        async with asyncio.timeout(FAILOVER_DEADLINE):
            while missing := [c for c in channels if marker not in received.payloads.get(c, set())]:
                for channel in missing:
                    assert await _publish_until_done(backends, channel, marker, killed_at + FAILOVER_DEADLINE)
                await asyncio.sleep(0.2)
        followed = time.monotonic() - killed_at

        # Presence: a heartbeat after the failover counts.
        async with asyncio.timeout(FAILOVER_DEADLINE):
            while True:
                with contextlib.suppress(Exception):
                    await backends.presence.heartbeat("bob", "socket-2")
                    if await backends.presence.online(["alice", "bob", "nobody"]) == {"alice", "bob"}:
                        break
                await asyncio.sleep(0.1)

        # The limiter counts again: a fresh subject is refused past its 5 per minute.
        subject = f"user:after-{uuid.uuid4().hex[:6]}"
        async with asyncio.timeout(FAILOVER_DEADLINE):
            while True:
                try:
                    for _ in range(6):
                        await backends.rate_limiter.hit("sends", subject)
                except RateLimited:
                    break
                subject = f"user:after-{uuid.uuid4().hex[:6]}"  # it was failing open: try a new one
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.3)  # the last publishes land
    await subscription.close()

    print(
        f"\nfailover: replica promoted {promoted:.1f} s after kill -9; bus, presence and limiter on it "
        f"{followed:.1f} s after the kill; gaps reported: {gaps.count}"
    )
    assert not errors, errors[:5]
    assert not limiter_errors, limiter_errors[:3]
    assert gaps.count <= 1  # one session.resync at most
    lost = {channel: published[channel] - received.payloads.get(channel, set()) for channel in channels}
    if gaps.count == 0:
        assert not any(lost.values()), lost  # no gap reported: nothing may be missing
    unaffected = [channel for channel in channels if owners[channel] != str(victim)]
    assert not any(lost[channel] for channel in unaffected), "a shard that did not fail lost events"


async def _owner_or_none(cluster: harness.Backend, channel: str) -> str | None:
    try:
        return await _primary_of(cluster.address, channel)
    except Exception:
        return None


# --- the chaos table's row: the whole process on the cluster, a primary killed under sends --------------
RATE = 10.0  # text sends per second, open loop
LOAD_SECONDS = 12.0
KILL_AT = 2.0


@dataclass
class SocketLog:
    created: dict[str, float] = field(default_factory=dict)  # messageId -> when its event arrived
    resyncs: list[float] = field(default_factory=list)
    reconnects: int = 0


async def _bob_socket(url: str, log: SocketLog, stop: asyncio.Event, started: float) -> None:
    while not stop.is_set():
        try:
            async with connect(url, open_timeout=5, ping_interval=2, ping_timeout=4) as socket:
                while not stop.is_set():
                    try:
                        event = json.loads(await asyncio.wait_for(socket.recv(), 0.5))
                    except TimeoutError:
                        continue
                    if event.get("type") == "message.created":
                        log.created[event["message"]["messageId"]] = time.monotonic() - started
                    elif event.get("type") == "session.resync":
                        log.resyncs.append(time.monotonic() - started)
        except Exception:  # noqa: S110 - any close or failure: reconnect, as a client does
            pass
        if not stop.is_set():
            log.reconnects += 1
            await asyncio.sleep(0.5)


@pytest.mark.timeout(180)
async def test_a_primary_killed_under_sends_loses_nothing_the_outbox_carries(
    replicated_cluster: harness.Backend, tmp_path: Path, serve: Any
) -> None:
    webhook = WebhookReceiver()
    hook = f"{await serve(webhook.app())}/hook"
    settings = make_settings(
        tmp_path,
        {
            "EVENT_BUS": "redis",
            "LIMIT_STORE": "redis",
            "REDIS_MODE": "cluster",
            "REDIS_URL": replicated_cluster.address,
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": hook,
            "PUSH_WEBHOOK_SECRET": webhook.secret,
        },
    )
    base = await serve(all_in_one.create_app(settings))
    seed = str(replicated_cluster.cluster_ports[0])
    candidates = [f"failover-{uuid.uuid4().hex[:8]}" for _ in range(12)]
    owners = await _owners(replicated_cluster.address, [conversation_channel(c) for c in candidates])
    # a conversation whose channel lives on a primary other than the seed node
    cid = next(c for c in candidates if owners[conversation_channel(c)] != seed)
    victim = int(owners[conversation_channel(cid)])
    outcomes: collections.Counter[str] = collections.Counter()
    stored: dict[str, float] = {}  # messageId -> when the send was answered
    bad: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        created = await http.post(
            "/conversations",
            json={"conversationId": cid, "participantIds": ["bob", "carol"]},
            headers=auth_header("alice"),
        )
        assert created.status_code == 201, created.text
        device = await http.put(
            "/me/devices/carol-phone-failover", json={"platform": "android"}, headers=auth_header("carol")
        )
        assert device.status_code == 200, device.text

        started = time.monotonic()
        log, stop = SocketLog(), asyncio.Event()
        ws = base.replace("http://", "ws://") + f"/ws?access_token={token_for('bob')}"
        socket_task = asyncio.create_task(_bob_socket(ws, log, stop, started))
        await asyncio.sleep(1.0)  # bob is connected before the load

        async def send(n: int) -> None:
            body = {"messageType": "text", "content": f"failover {n}", "clientMessageId": f"f-{n}"}
            try:
                response = await http.post(
                    f"/conversations/{cid}/messages", json=body, headers=auth_header("alice")
                )
            except httpx.HTTPError as exc:
                outcomes["no answer"] += 1
                bad.append(f"{n}: {type(exc).__name__}")
                return
            if response.status_code in (200, 201):
                outcomes["2xx"] += 1
                stored[response.json()["messageId"]] = time.monotonic() - started
            elif response.status_code == 503 and response.headers.get("retry-after"):
                outcomes["503+Retry-After"] += 1
            else:
                outcomes[str(response.status_code)] += 1
                bad.append(f"{n}: {response.status_code} {response.text[:160]}")

        sends: list[asyncio.Task[None]] = []
        load_started = time.monotonic()
        killed_at = 0.0
        for n in range(int(LOAD_SECONDS * RATE)):
            await asyncio.sleep(max(0.0, load_started + n / RATE - time.monotonic()))
            if not killed_at and time.monotonic() - load_started >= KILL_AT:
                kill_cluster_node(replicated_cluster, victim)
                killed_at = time.monotonic() - started
            sends.append(asyncio.create_task(send(n)))
        await asyncio.gather(*sends)

        # Eventually: every stored message listed, its event on bob's socket (or covered by the resync),
        # and one push to carol's device.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pushed = {d.json["data"]["messageId"] for d in webhook.accepted()}
            if stored.keys() <= pushed and stored.keys() - log.created.keys() <= _covered(stored, log):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # late duplicates would land now
        listed: set[str] = set()
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = await http.get(f"/conversations/{cid}/messages", params=params, headers=auth_header("bob"))
            assert page.status_code == 200, page.text
            listed.update(item["messageId"] for item in page.json()["items"])
            if not (cursor := page.json()["nextCursor"]):
                break
            params["before"] = cursor
        stop.set()
        await socket_task

    per_message = collections.Counter(d.json["data"]["messageId"] for d in webhook.accepted())
    lost_messages = stored.keys() - listed
    lost_pushes = stored.keys() - per_message.keys()
    duplicates = sum(1 for m in stored if per_message[m] > 1)
    missed_events = stored.keys() - log.created.keys()
    uncovered = missed_events - _covered(stored, log)
    row = (
        f"{'redis-cluster primary kill -9':<30}{sum(outcomes.values()):>6}{outcomes['2xx']:>6}"
        f"{outcomes['503+Retry-After']:>8}{len(bad):>5}{len(lost_messages):>9}{len(lost_pushes):>10}"
        f"{duplicates:>9}{len(log.resyncs):>8}{len(uncovered):>10}"
    )
    header = (
        f"{'fault':<30}{'sends':>6}{'2xx':>6}{'503+RA':>8}{'bad':>5}{'lost msg':>9}{'lost push':>10}"
        f"{'dup push':>9}{'resync':>8}{'lost evt':>10}"
    )
    print(
        f"\n{header}\n{row}\nkilled at {killed_at:.1f} s; events missed then covered by the resync: "
        f"{len(missed_events) - len(uncovered)}; socket reconnects {log.reconnects}"
    )
    (Path(os.environ.get("CHAOS_REPORT", "/tmp")) / "chaos-cluster-failover.txt").write_text(
        f"{header}\n{row}\n"
    )

    assert not bad, bad[:10]
    assert not lost_messages, row
    assert not lost_pushes, row
    assert not duplicates, row
    assert len(log.resyncs) <= 1, log.resyncs  # a session.resync at most
    assert not uncovered, (row, sorted(stored[m] for m in uncovered))


def _covered(stored: dict[str, float], log: SocketLog) -> set[str]:
    """Messages whose missing event the socket's ``session.resync`` covers: stored before it arrived
    (the client refetches then)."""
    if not log.resyncs:
        return set()
    return {m for m, at in stored.items() if at <= log.resyncs[-1]}
