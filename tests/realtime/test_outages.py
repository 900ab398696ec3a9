"""Nothing lost: a send succeeds while Redis or SQS is down, and what it owes is delivered once they are back.

Each test stops a backend of its own (a private redis-server or a private LocalStack), never the shared ones.

Every event a client acts on is an event outbox entry (``chat_core.outbox``): one test per kind makes the
change while Redis is down and waits for the event after Redis is back (``message.updated``, made by the
media processor, is in ``tests/media/test_outage.py``; ``message.edited`` and ``message.deleted`` share one
test). Each waits until the change's own immediate
publish has failed before Redis comes back: a publish that reaches a Redis already back, but before a
socket's subscription is (its reconnect backs off up to 2 s), is not kept by Redis for that socket, which
is told ``session.resync`` instead (the last test here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests import harness
from tests.conftest import auth_header, skip_unless_required
from tests.realtime.conftest import DeployFactory, distributed_env

Users = Callable[..., list[str]]


def gauge(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait for a gauge that the relay updates on its own schedule."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)


def bus_failures() -> float:
    return gauge("chat_outbox_relay_errors_total", {"target": "bus"})


async def until_publish_failed(before: float, changes: int = 1) -> None:
    """Until the immediate publish of ``changes`` changes failed (stored; their events wait in the outbox)."""
    await until(lambda: bus_failures() >= before + changes, timeout=20)


@pytest.fixture
def private_localstack() -> Iterator[harness.Backend]:
    """A LocalStack of this test alone, which it may stop and start."""
    try:
        backend = harness.start_local_localstack()
    except RuntimeError as exc:
        skip_unless_required("localstack", str(exc))
    yield backend
    backend.stop()


async def test_with_sqs_down_a_send_is_201_and_the_push_arrives_after_it_is_back(
    deploy: DeployFactory,
    private_localstack: harness.Backend,
    redis_backend: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy(
        "distributed", distributed_env(redis_backend.address, private_localstack.address)
    )
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    await deployment.register_device(bob, f"{bob}-phone")

    await asyncio.to_thread(private_localstack.stop)
    response = await deployment.send_text(alice, conversation, "sent while SQS is down")
    assert response.status_code == 201
    await until(lambda: gauge("chat_outbox_depth") >= 1, timeout=20)  # waiting, and the SREs can see it
    assert deployment.receiver.accepted() == []

    await asyncio.to_thread(private_localstack.start)  # it comes back empty
    await harness.provision(deployment.settings)  # the operator runs setup again: nothing was lost meanwhile
    [push] = await deployment.receiver.wait_for(1, timeout=90)
    assert push.json["data"]["messageId"] == response.json()["messageId"]
    await until(lambda: gauge("chat_outbox_depth") == 0, timeout=20)


async def test_with_redis_down_a_send_is_201_listed_pushed_and_readiness_names_redis(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    await deployment.register_device(bob, f"{bob}-phone")

    await asyncio.to_thread(private_redis.stop)
    response = await deployment.send_text(alice, conversation, "sent while Redis is down")
    assert response.status_code == 201
    listed = await deployment.http.get(f"/conversations/{conversation}/messages", headers=auth_header(bob))
    assert [m["messageId"] for m in listed.json()["items"]] == [response.json()["messageId"]]
    ready = await deployment.http.get("/readyz")
    assert ready.status_code == 200  # degraded, not out of rotation: sends still work (above)
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"] != "ok"
    # Presence cannot be read: everyone counts as offline, so the push still goes out.
    await deployment.receiver.wait_for(1, timeout=30)
    await asyncio.to_thread(private_redis.start)


async def test_a_socket_open_through_a_redis_outage_gets_the_message_sent_during_it(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    bob_socket = await deployment.connect(bob)

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    response = await deployment.send_text(alice, conversation, "sent while Redis is down")
    assert response.status_code == 201
    # The send's own publish runs after the 201 and retries a closed connection once: Redis comes back
    # only once that failed (sooner, the publish could succeed before bob's subscription is back, and
    # bob would get session.resync instead: the test after next).
    await until_publish_failed(failures)
    await asyncio.to_thread(private_redis.start)

    # The socket's subscription comes back on its own, and the relay publishes what the outbox held.
    event = await bob_socket.next_of("message.created", timeout=30)
    assert event["message"]["messageId"] == response.json()["messageId"]
    ready = await deployment.http.get("/readyz")
    assert ready.status_code == 200, ready.text


async def test_a_socket_open_through_a_redis_outage_is_told_to_resync_then_gets_later_events(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    bob_socket = await deployment.connect(bob)
    first = await deployment.send_text(bob, conversation, "read while Redis is down")
    assert first.status_code == 201
    assert (await bob_socket.next_of("message.created"))["message"]["messageId"] == first.json()["messageId"]
    resyncs = gauge("chat_websocket_resyncs_total")

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    read = await deployment.http.post(
        f"/conversations/{conversation}/messages/{first.json()['messageId']}/read",
        headers=auth_header(alice),
    )
    assert read.status_code == 200
    # bob's socket must subscribe to this one too, though its conversation.joined waits in the outbox.
    joined_meanwhile = await deployment.create_conversation(alice, bob)
    await until_publish_failed(failures, changes=2)
    await asyncio.to_thread(private_redis.start)

    # The socket stayed open: it says what was missed is to be fetched, before any later event.
    assert await bob_socket.next_event(timeout=30) == {"type": "session.resync"}
    assert gauge("chat_websocket_resyncs_total") == resyncs + 1
    listed = await deployment.http.get(f"/conversations/{conversation}/messages", headers=auth_header(bob))
    assert alice in listed.json()["items"][0]["readBy"]  # what the resync finds
    # The events of the outage arrive too (from the outbox), then what happens later.
    relayed = {(await bob_socket.next_event(timeout=30))["type"] for _ in range(2)}
    assert relayed == {"message.read", "conversation.joined"}
    for where in (conversation, joined_meanwhile):
        later = await deployment.send_text(alice, where, "after the outage")
        assert later.status_code == 201
        event = await bob_socket.next_event()
        assert event["type"] == "message.created"
        assert event["message"]["messageId"] == later.json()["messageId"]


# --- one fault test per event kind: the change made while Redis is down, its event after ---------------
async def test_a_read_receipt_made_while_redis_is_down_arrives_after_it_is_back(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    alice_socket = await deployment.connect(alice)
    sent = await deployment.send_text(alice, conversation, "read while Redis is down")
    message_id = sent.json()["messageId"]
    await alice_socket.next_of("message.created")

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    read = await deployment.http.post(
        f"/conversations/{conversation}/messages/{message_id}/read", headers=auth_header(bob)
    )
    assert read.status_code == 200
    await until_publish_failed(failures)
    await until(lambda: gauge("chat_outbox_depth") >= 1, timeout=20)  # waiting, and the SREs can see it
    await asyncio.to_thread(private_redis.start)

    event = await alice_socket.next_of("message.read", timeout=30)
    assert (event["messageId"], event["userId"]) == (message_id, bob)
    assert event["readBy"] == [alice, bob]
    await until(lambda: gauge("chat_outbox_depth") == 0, timeout=20)


async def test_members_added_and_removed_while_redis_is_down_are_told_after_it_is_back(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob, carol = users("alice", "bob", "carol")
    conversation = await deployment.create_conversation(alice, bob)
    bob_socket = await deployment.connect(bob)
    carol_socket = await deployment.connect(carol)

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    added = await deployment.http.post(
        f"/conversations/{conversation}/participants",
        json={"participantIds": [carol]},
        headers=auth_header(alice),
    )
    assert added.status_code == 200, added.text
    removed = await deployment.http.delete(
        f"/conversations/{conversation}/participants/{bob}", headers=auth_header(alice)
    )
    assert removed.status_code == 204, removed.text
    await until_publish_failed(failures, changes=2)
    await asyncio.to_thread(private_redis.start)

    joined = await carol_socket.next_of("conversation.joined", timeout=30)
    left = await bob_socket.next_of("conversation.left", timeout=30)
    assert joined["conversationId"] == left["conversationId"] == conversation
    await until(lambda: gauge("chat_outbox_depth") == 0, timeout=20)


async def test_an_edit_and_an_unsend_made_while_redis_is_down_arrive_after_it_is_back(
    deploy: DeployFactory,
    private_redis: harness.Backend,
    localstack: harness.Backend,
    users: Users,
) -> None:
    deployment = await deploy("distributed", distributed_env(private_redis.address, localstack.address))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    bob_socket = await deployment.connect(bob)
    edited_id = (await deployment.send_text(alice, conversation, "see you at 8")).json()["messageId"]
    unsent_id = (await deployment.send_text(alice, conversation, "oops")).json()["messageId"]
    await bob_socket.next_of("message.created")
    await bob_socket.next_of("message.created")

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    url = f"/conversations/{conversation}/messages"
    edited = await deployment.http.patch(
        f"{url}/{edited_id}", json={"content": "see you at 9"}, headers=auth_header(alice)
    )
    assert edited.status_code == 200, edited.text
    unsent = await deployment.http.delete(f"{url}/{unsent_id}", headers=auth_header(alice))
    assert unsent.status_code == 204, unsent.text
    await until_publish_failed(failures, changes=2)
    await asyncio.to_thread(private_redis.start)

    seen: dict[str, dict[str, Any]] = {}  # in whichever order the relay publishes them
    async with asyncio.timeout(30):
        while not {"message.edited", "message.deleted"} <= seen.keys():
            event = await bob_socket.next_event(30)
            seen.setdefault(event["type"], event)
    edit = seen["message.edited"]["message"]
    assert (edit["messageId"], edit["content"]) == (edited_id, "see you at 9")
    assert seen["message.deleted"]["messageId"] == unsent_id
    await until(lambda: gauge("chat_outbox_depth") == 0, timeout=30)
