"""Resources are given back on every path: file descriptors of unread bodies, background tasks at shutdown,
sibling pushes when one fails; a bus failing under a live socket closes it with 1013 (try again)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import message_service.app
from chat_core.chatstore import Conversation, Device
from chat_core.composition import Composition
from chat_core.objectstore import ByteRange
from chat_core.push import PushRouter
from chat_core.realtime import EventBusUnavailable, conversation_channel
from chat_core.realtime.events import Envelope, encode
from chat_management.all import create_app
from message_service.realtime import RealtimeSockets
from notification_consumer.consumer import NotificationConsumer
from tests.conftest import auth_header, make_settings, running
from tests.consumer.test_consumer import notification

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 4096
KEY = f"uploads/room/images/alice/20260101-000000-{uuid.UUID(int=3)}.jpg"


def open_fds(under: Path) -> int:
    """Descriptors this process holds on files under ``under`` (this test's own data: nothing else in
    the process, such as another test's sockets closing meanwhile, moves the count)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            held += os.readlink(f"/proc/self/fd/{fd}").startswith(str(under))
    return held


async def test_a_body_never_read_does_not_leak_its_file_descriptor(tmp_path: Path) -> None:
    backends = Composition(make_settings(tmp_path))
    store = backends.object_store
    async with backends:
        await store.put(KEY, JPEG, content_type="image/jpeg")
        gc.collect()
        before = open_fds(tmp_path)
        for _ in range(50):
            read = await store.open(KEY, ByteRange(0, 99))
            del read  # never iterated: the client left before the response began
        gc.collect()
        assert open_fds(tmp_path) == before
        partly = await store.open(KEY)
        await anext(aiter(partly.body))
        assert open_fds(tmp_path) == before + 1  # the count sees the store's own descriptor
        await partly.body.aclose()  # type: ignore[attr-defined]
        assert open_fds(tmp_path) == before


async def test_aborted_storage_requests_close_their_file_descriptors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    backends = Composition(settings)
    app: Any = create_app(settings, backends)
    async with running(app):
        await backends.object_store.put(KEY, JPEG, content_type="image/jpeg")
        path = "/" + backends.object_store.presign_get(KEY, expires_in=60).split("://", 1)[1].split("/", 1)[1]
        raw_path, _, query = path.partition("?")

        async def aborted_request(range_header: bytes | None) -> None:
            headers = [(b"host", b"testserver")] + ([(b"range", range_header)] if range_header else [])
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": raw_path,
                "raw_path": raw_path.encode(),
                "query_string": query.encode(),
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 5000),
                "server": ("testserver", 80),
                "state": {},
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                raise OSError("the client went away")  # before the first byte of the response

            with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the server makes of it
                await app(scope, receive, send)

        gc.collect()
        before = open_fds(tmp_path)
        for _ in range(30):
            await aborted_request(None)
            await aborted_request(b"bytes=0-10")
        gc.collect()
        assert open_fds(tmp_path) == before


async def test_no_background_task_is_left_pending_when_the_lifespan_ends(tmp_path: Path) -> None:
    import httpx

    before = asyncio.all_tasks()
    app: Any = create_app(make_settings(tmp_path))
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            created = await http.post(
                "/conversations", json={"participantIds": ["bob"]}, headers=auth_header("alice")
            )
            cid = created.json()["conversationId"]
            for n in range(5):
                sent = await http.post(
                    f"/conversations/{cid}/messages",
                    json={"messageType": "text", "content": f"hi {n}"},
                    headers=auth_header("alice"),
                )
                assert sent.status_code == 201
            await http.put(
                "/me/devices/bob-phone-0001", json={"platform": "android"}, headers=auth_header("bob")
            )
    await asyncio.sleep(0)
    left = [
        task
        for task in asyncio.all_tasks() - before
        if not task.done() and task is not asyncio.current_task()
    ]
    assert left == [], [task.get_name() + " " + repr(task.get_coro()) for task in left]


class _FailingForOneToken:
    """The real push-receipt store, with a fault injected for one device (its claim raises)."""

    def __init__(self, inner: Any, failing_token: str) -> None:
        self._inner = inner
        self._failing = failing_token

    async def claim_push(self, notification_id: str, device_token: str, *, lease: Any) -> Any:
        if device_token == self._failing:
            raise ConnectionError("receipt store unreachable")
        return await self._inner.claim_push(notification_id, device_token, lease=lease)

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        await self._inner.complete_push(notification_id, device_token)

    async def release_push(self, notification_id: str, device_token: str) -> None:
        await self._inner.release_push(notification_id, device_token)


async def test_one_failing_push_leaves_no_sibling_push_running(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"PUSH_PROVIDER": "log"})
    backends = Composition(settings)
    push, devices, receipts, queue = (
        backends.push_provider,
        backends.devices,
        backends.push_receipts,
        backends.notification_queue,
    )
    async with backends:
        slow_started = asyncio.Event()
        finished: list[str] = []

        class SlowPush:
            name = push.name

            async def send(self, message: Any) -> Any:
                slow_started.set()
                await asyncio.sleep(0.3)
                finished.append(message.token if hasattr(message, "token") else "sent")
                return await push.send(message)

        import datetime as dt

        for token in ("bob-phone-0001", "bob-broken-001"):
            await devices.put_device(
                Device(token=token, platform="android", user_id="bob", updated_at=dt.datetime.now(dt.UTC))
            )
        consumer = NotificationConsumer(
            queue,
            devices,
            _FailingForOneToken(receipts, "bob-broken-001"),
            PushRouter([SlowPush()]),  # type: ignore[list-item]
            concurrency=4, wait_seconds=1, max_receives=3, retry_base_seconds=0.1, drain_seconds=1,
        )  # fmt: skip
        with pytest.raises(ConnectionError):
            await consumer._push_all(notification(("bob",)))
        # The failure was reported only once the sibling push had finished: nothing runs behind it.
        assert slow_started.is_set()
        assert len(finished) == 1
        pending = [t for t in asyncio.all_tasks() if "_push_device" in repr(t.get_coro()) and not t.done()]
        assert pending == []


class _BusFailingOnResubscribe:
    """The real event bus, with a fault injected: changing a live subscription's channels raises
    ``EventBusUnavailable``, as a bus that went down under an open socket does."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name

    async def subscribe(self, channels: Any, handler: Any, *, on_gap: Any = None) -> Any:
        subscription = await self._inner.subscribe(channels, handler, on_gap=on_gap)

        class Failing:
            async def add(self, channels: Any) -> None:
                await subscription.add(channels)

            async def remove(self, channels: Any) -> None:
                raise EventBusUnavailable("the bus went down under the socket")

            async def close(self) -> None:
                await subscription.close()

        return Failing()

    async def publish(self, channel: str, payload: bytes) -> None:
        await self._inner.publish(channel, payload)


async def test_a_bus_failing_under_a_live_socket_closes_it_with_1013_not_1011(
    tmp_path: Path, serve: Any
) -> None:
    settings = make_settings(tmp_path)
    backends = Composition(settings)
    bus = backends.event_bus
    failing: Any = _BusFailingOnResubscribe(bus)
    sockets = RealtimeSockets.from_ports(settings, message_service.app.ports(backends), bus=failing)
    async with backends:
        now = dt.datetime.now(dt.UTC)
        await backends.conversations.create_conversation(
            Conversation(
                conversation_id="c-1",
                participants=("alice", "bob"),
                name=None,
                created_at=now,
                updated_at=now,
            )
        )
        base = await serve(Litestar([sockets.route_handler()]))
        url = base.replace("http://", "ws://") + "/ws"
        async with connect(url, additional_headers=auth_header("bob"), proxy=None, open_timeout=5) as socket:
            assert json.loads(await socket.recv())["type"] == "session.ready"
            # bob was removed and the conversation.left was lost: the next event makes the socket drop the
            # channel, and that subscription change fails on the bus.
            removed = Envelope(type="message.read", conversation_id="c-1", message_id="m", members=("alice",))
            await bus.publish(conversation_channel("c-1"), encode(removed))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
