"""``/ws`` and the fan-out behind it, on the embedded and the distributed deployment."""

from __future__ import annotations

import asyncio
import base64
import os
import socket as socket_module
from collections.abc import Callable

import msgspec
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed

from chat_core import tracing
from chat_core.auth import mint_token
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import Envelope
from message_service.realtime import OUTBOUND_LIMIT
from tests.conftest import TEST_SECRET, auth_header, token_for
from tests.realtime.conftest import DeployFactory, Deployment, Socket

Users = Callable[..., list[str]]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def _read_until_closed(socket: Socket) -> None:
    while True:  # the events that made it out, then the close
        await socket.next_event()


async def closed_with(socket: Socket) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        await socket.next_event()
    return closed.value.rcvd.code if closed.value.rcvd else None


# --- the scenario ---------------------------------------------------------------------------
async def test_the_connected_member_gets_the_message_at_once_and_only_the_offline_one_a_push(
    deployment: Deployment, users: Users
) -> None:
    alice, bob, carol = users("alice", "bob", "carol")
    conversation = await deployment.create_conversation(alice, bob, carol)
    await deployment.register_device(bob, f"{bob}-phone")
    await deployment.register_device(carol, f"{carol}-phone")
    bob_socket = await deployment.connect(bob)

    response = await deployment.send_text(alice, conversation, "are you there?")
    assert response.status_code == 201
    event = await bob_socket.next_event(timeout=1.0)
    assert event == {"type": "message.created", "conversationId": conversation, "message": response.json()}

    await deployment.receiver.wait_for(1)
    await deployment.wait_drained()
    assert deployment.receiver.tokens() == [f"{carol}-phone"]
    [push] = deployment.receiver.accepted()
    assert push.json["data"]["messageId"] == response.json()["messageId"]
    assert deployment.receiver.signature_valid(push)


async def test_the_sender_gets_no_push_for_their_own_message(deployment: Deployment, users: Users) -> None:
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    await deployment.register_device(alice, f"{alice}-phone")
    await deployment.register_device(bob, f"{bob}-phone")
    assert (await deployment.send_text(alice, conversation)).status_code == 201
    await deployment.receiver.wait_for(1)
    await deployment.wait_drained()
    assert deployment.receiver.tokens() == [f"{bob}-phone"]


async def test_every_member_with_a_socket_open_gets_the_event(deployment: Deployment, users: Users) -> None:
    alice, *others = users("alice", "b", "c", "d", "e")
    conversation = await deployment.create_conversation(alice, *others)
    sockets = [await deployment.connect(user) for user in others]
    sockets.append(await deployment.connect(alice))  # the sender's other devices hear it too
    response = await deployment.send_text(alice, conversation)
    for socket in sockets:
        event = await socket.next_of("message.created")
        assert event["message"]["messageId"] == response.json()["messageId"]


async def test_one_message_is_one_publish_and_one_queue_message_whatever_the_group_size(
    deployment: Deployment, users: Users
) -> None:
    alice, *members = users("alice", *(f"m{n}" for n in range(60)))
    conversation = await deployment.create_conversation(alice, *members)
    for user in members[:30]:
        await deployment.register_device(user, f"{user}-phone")
    watcher = await deployment.connect(alice)
    published = sample("chat_events_published_total", {"type": "message.created"})
    enqueued = sample("chat_notifications_enqueued_total")
    await deployment.send_text(alice, conversation)
    await watcher.next_of("message.created")
    await deployment.receiver.wait_for(30)
    assert sample("chat_events_published_total", {"type": "message.created"}) == published + 1
    assert sample("chat_notifications_enqueued_total") == enqueued + 1


async def test_a_read_receipt_reaches_the_connected_members(deployment: Deployment, users: Users) -> None:
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    alice_socket = await deployment.connect(alice)
    message = (await deployment.send_text(alice, conversation)).json()
    await alice_socket.next_of("message.created")
    read = await deployment.http.post(
        f"/conversations/{conversation}/messages/{message['messageId']}/read", headers=auth_header(bob)
    )
    assert read.status_code == 200
    event = await alice_socket.next_of("message.read")
    assert event == {
        "type": "message.read",
        "conversationId": conversation,
        "messageId": message["messageId"],
        "userId": bob,
        "readBy": [alice, bob],
    }


# --- membership while connected ---------------------------------------------------------------------
async def test_a_conversation_joined_while_connected_is_delivered(
    deployment: Deployment, users: Users
) -> None:
    alice, bob = users("alice", "bob")
    bob_socket = await deployment.connect(bob)
    conversation = await deployment.create_conversation(alice, bob)
    assert await bob_socket.next_of("conversation.joined") == {
        "type": "conversation.joined",
        "conversationId": conversation,
    }
    response = await deployment.send_text(alice, conversation)
    event = await bob_socket.next_of("message.created")
    assert event["message"]["messageId"] == response.json()["messageId"]


async def test_a_member_added_while_connected_hears_the_conversation(
    deployment: Deployment, users: Users
) -> None:
    alice, bob, carol = users("alice", "bob", "carol")
    conversation = await deployment.create_conversation(alice, bob)
    carol_socket = await deployment.connect(carol)
    added = await deployment.http.post(
        f"/conversations/{conversation}/participants",
        json={"participantIds": [carol]},
        headers=auth_header(alice),
    )
    assert added.status_code == 200, added.text
    await carol_socket.next_of("conversation.joined")
    response = await deployment.send_text(alice, conversation)
    assert (await carol_socket.next_of("message.created"))["message"] == response.json()


async def test_a_member_removed_while_connected_hears_nothing_more(
    deployment: Deployment, users: Users
) -> None:
    alice, bob = users("alice", "bob")
    kept = await deployment.create_conversation(alice, bob)
    left = await deployment.create_conversation(alice, bob)
    bob_socket = await deployment.connect(bob)
    removed = await deployment.http.delete(
        f"/conversations/{left}/participants/{bob}", headers=auth_header(alice)
    )
    assert removed.status_code == 204, removed.text
    assert await bob_socket.next_of("conversation.left") == {
        "type": "conversation.left",
        "conversationId": left,
    }
    await deployment.send_text(alice, left, "not for bob")
    marker = await deployment.send_text(alice, kept, "marker")
    event = await bob_socket.next_event()
    assert event["type"] == "message.created"
    assert event["message"]["messageId"] == marker.json()["messageId"]


# --- the socket itself (on the embedded deployment: nothing here depends on the bus) -----------------
@pytest.fixture
async def embedded(deploy: DeployFactory) -> Deployment:
    return await deploy("embedded")


async def test_the_token_may_come_in_the_query_string(embedded: Deployment, users: Users) -> None:
    alice, bob = users("alice", "bob")
    conversation = await embedded.create_conversation(alice, bob)
    socket = await embedded.connect(bob, via_query=True)
    await embedded.send_text(alice, conversation)
    assert (await socket.next_of("message.created"))["conversationId"] == conversation


async def test_a_bad_token_closes_the_socket_with_4401(embedded: Deployment) -> None:
    socket = await embedded.open_socket(None, token="not-a-jwt")
    assert await closed_with(socket) == 4401


async def test_a_missing_token_closes_the_socket_with_4401(embedded: Deployment) -> None:
    socket = await embedded.open_socket(None)
    assert await closed_with(socket) == 4401


async def test_a_token_signed_with_another_key_closes_the_socket_with_4401(
    embedded: Deployment, users: Users
) -> None:
    [bob] = users("bob")
    forged = mint_token("another-secret-0123456789abcdef-0123456789", bob)
    socket = await embedded.open_socket(None, token=forged, via_query=True)
    assert await closed_with(socket) == 4401


async def test_the_socket_closes_with_4401_when_its_token_expires(embedded: Deployment, users: Users) -> None:
    [bob] = users("bob")
    socket = await embedded.open_socket(None, token=mint_token(TEST_SECRET, bob, ttl_seconds=1))
    assert (await socket.next_event())["type"] == "session.ready"
    assert await closed_with(socket) == 4401


async def test_a_ping_gets_a_pong(embedded: Deployment, users: Users) -> None:
    [bob] = users("bob")
    socket = await embedded.connect(bob)
    await socket.send({"type": "ping"})
    assert await socket.next_event() == {"type": "pong"}


async def test_an_open_socket_makes_its_user_present_and_closing_it_clears_that(
    deployment: Deployment, users: Users
) -> None:
    [bob] = users("bob")
    presence = deployment.message_backends.presence
    socket = await deployment.connect(bob)
    assert await presence.online([bob]) == {bob}
    await socket.connection.close()
    async with asyncio.timeout(5):
        while await presence.online([bob]):
            await asyncio.sleep(0.02)  # the server notices the close on its own schedule


async def test_open_sockets_are_counted(embedded: Deployment, users: Users) -> None:
    [bob] = users("bob")
    before = sample("chat_websocket_connections")
    socket = await embedded.connect(bob)
    assert sample("chat_websocket_connections") == before + 1
    await socket.connection.close()
    async with asyncio.timeout(5):
        while sample("chat_websocket_connections") != before:
            await asyncio.sleep(0.02)


# --- traces -----------------------------------------------------------------------------------------
async def test_one_trace_runs_from_the_send_through_publish_and_enqueue_to_the_push(
    deployment: Deployment, users: Users
) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("tests", extra_processors=(SimpleSpanProcessor(exporter),))
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    await deployment.register_device(bob, f"{bob}-phone")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await deployment.http.post(
        f"/conversations/{conversation}/messages",
        json={"content": "traced", "messageType": "text"},
        headers={**auth_header(alice), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 201
    await deployment.receiver.wait_for(1)
    await deployment.wait_drained()
    names = {
        span.name
        for span in exporter.get_finished_spans()
        if span.context and f"{span.context.trace_id:032x}" == trace_id
    }
    assert {
        "fanout message.created",
        "publish message.created",
        "enqueue notifications",
        "notification process",
        "push webhook",
    } <= names


# --- presence and slow clients (embedded: the in-process bus lets the test publish directly) --------
async def test_the_server_keeps_an_open_socket_present_past_the_presence_ttl(
    deploy: DeployFactory, users: Users
) -> None:
    deployment = await deploy("embedded", {"PRESENCE_TTL_SECONDS": "2"})
    [bob] = users("bob")
    await deployment.connect(bob)
    await asyncio.sleep(3)  # longer than the TTL: only the server's heartbeats keep bob online
    assert await deployment.message_backends.presence.online([bob]) == {bob}


# The services' WebSocket protocol writes ready frames straight to the transport (FrameWriter); under any
# other server (uvicorn's own protocol here) the sessions fall back on ASGI sends from their backlog.
SERVER_PROTOCOLS = pytest.mark.parametrize("ws", [None, "websockets-sansio"], ids=["frames", "asgi-sends"])


@SERVER_PROTOCOLS
async def test_events_and_pongs_reach_the_socket_in_order(
    deploy: DeployFactory, users: Users, ws: str
) -> None:
    deployment = await deploy("embedded", ws=ws)
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    socket = await deployment.connect(bob)
    bus = deployment.message_backends.event_bus
    for index in range(5):
        event = Envelope(type="message.read", conversation_id=conversation, message_id=f"m{index}")
        await bus.publish(conversation_channel(conversation), msgspec.json.encode(event))
    await socket.send({"type": "ping"})
    assert [(await socket.next_event())["messageId"] for _ in range(5)] == [f"m{i}" for i in range(5)]
    assert await socket.next_event() == {"type": "pong"}


@SERVER_PROTOCOLS
async def test_a_client_too_slow_to_read_is_closed_with_1013(
    deploy: DeployFactory, users: Users, ws: str
) -> None:
    deployment = await deploy("embedded", ws=ws)
    alice, bob = users("alice", "bob")
    conversation = await deployment.create_conversation(alice, bob)
    socket = await deployment.connect(bob)
    # Frames are written straight to the connection while it takes them: the burst (~14 MB, published
    # without yielding, so the client reads none of it meanwhile) must outgrow the kernel's and the
    # transport's buffers before OUTBOUND_LIMIT events queue behind them.
    readers = tuple(f"reader-{index:05d}" for index in range(300))
    event = msgspec.json.encode(
        Envelope(type="message.read", conversation_id=conversation, message_id="m", read_by=readers)
    )
    for _ in range(OUTBOUND_LIMIT * 3):
        await deployment.message_backends.event_bus.publish(conversation_channel(conversation), event)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(_read_until_closed(socket), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013


async def _never_reading_socket(deployment: Deployment, user: str) -> socket_module.socket:
    """A raw TCP client with a tiny receive buffer that upgrades, sees session.ready, then never reads."""
    raw = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM)
    raw.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    host_port = deployment.base_url.removeprefix("http://")
    host, port = host_port.split(":")
    await loop.sock_connect(raw, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        raw,
        (
            f"GET /ws HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {token_for(user)}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    seen = b""
    async with asyncio.timeout(5):
        while b"session.ready" not in seen:
            seen += await loop.sock_recv(raw, 4096)
    assert seen.startswith(b"HTTP/1.1 101"), seen[:60]
    return raw


async def test_a_socket_that_never_reads_is_dropped_after_its_bound_and_the_others_keep_receiving(
    deploy: DeployFactory, users: Users
) -> None:
    """Events are not buffered without limit for a client that stopped reading: once OUTBOUND_LIMIT are
    queued behind what its connection holds, its session ends (presence cleared, connection dropped)
    even though it cannot take the close frame either, while a member who reads gets every event."""
    deployment = await deploy("embedded")
    alice, bob, carol = users("alice", "bob", "carol")
    conversation = await deployment.create_conversation(alice, bob, carol)
    stuck = await _never_reading_socket(deployment, bob)
    reader = await deployment.connect(carol)
    presence = deployment.message_backends.presence
    assert await presence.online([bob, carol]) == {bob, carol}
    received = 0

    async def read_all() -> None:
        nonlocal received
        while True:
            event = await reader.next_event()
            if event["type"] == "message.read":
                received += 1

    reading = asyncio.create_task(read_all())
    event = msgspec.json.encode(Envelope(type="message.read", conversation_id=conversation, message_id="m"))
    bus = deployment.message_backends.event_bus
    published = 0
    try:
        async with asyncio.timeout(30):
            while bob in await presence.online([bob]):
                for _ in range(50):  # at a pace a reading client keeps up with
                    await bus.publish(conversation_channel(conversation), event)
                published += 50
                await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            while received < published:
                await asyncio.sleep(0.05)
    finally:
        reading.cancel()
    assert published > OUTBOUND_LIMIT  # bob was dropped for being behind, not for anything else
    assert await presence.online([carol]) == {carol}
    # bob's connection is gone: what the server had written, then the end of the stream (or a reset).
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        try:
            while await loop.sock_recv(stuck, 65536):
                pass
        except ConnectionResetError:
            pass
    stuck.close()
