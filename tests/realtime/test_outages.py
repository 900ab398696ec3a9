"""Nothing lost: a send succeeds while Redis or SQS is down, and what it owes is delivered once they are back.

Each test stops a backend of its own (a private redis-server or a private LocalStack), never the shared ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from tests import harness
from tests.conftest import auth_header, skip_unless_required
from tests.realtime.conftest import DeployFactory, distributed_env

Users = Callable[..., list[str]]


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait for a gauge that the relay updates on its own schedule."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)


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
    response = await deployment.send_text(alice, conversation, "sent while Redis is down")
    assert response.status_code == 201
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
    # Its message.read cannot be published (read receipts are not kept in the outbox): bob never hears it.
    read = await deployment.http.post(
        f"/conversations/{conversation}/messages/{first.json()['messageId']}/read",
        headers=auth_header(alice),
    )
    assert read.status_code == 200
    # Nor of this conversation: its socket must still subscribe to it.
    joined_meanwhile = await deployment.create_conversation(alice, bob)
    await asyncio.to_thread(private_redis.start)

    # The socket stayed open: it says what was missed is to be fetched, before any later event.
    assert await bob_socket.next_event(timeout=30) == {"type": "session.resync"}
    assert gauge("chat_websocket_resyncs_total") == resyncs + 1
    listed = await deployment.http.get(f"/conversations/{conversation}/messages", headers=auth_header(bob))
    assert alice in listed.json()["items"][0]["readBy"]  # what the resync finds
    for where in (conversation, joined_meanwhile):
        later = await deployment.send_text(alice, where, "after the outage")
        assert later.status_code == 201
        event = await bob_socket.next_event()
        assert event["type"] == "message.created"
        assert event["message"]["messageId"] == later.json()["messageId"]
