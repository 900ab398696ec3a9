"""The notification consumer against real queues (SQLite, SQS on LocalStack), the SQLite message store and a
real webhook receiver over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

import notification_consumer.app
from chat_core import tracing
from chat_core.chatstore import ChatStore, Conversation, Device, Message
from chat_core.composition import Composition
from chat_core.notifications import Notification, NotificationQueue
from notification_consumer import app as consumer_app
from notification_consumer.consumer import NotificationConsumer
from tests import harness
from tests.conftest import make_settings, unique
from tests.consumer.receivers import WebhookReceiver

MAX_RECEIVES = 3


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll an external state (a queue's depth) that offers nothing to await."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def notification(recipients: tuple[str, ...], **fields: Any) -> Notification:
    message_id = str(uuid.uuid4())
    values: dict[str, Any] = {
        "notification_id": f"{message_id}:0",
        "conversation_id": "c-1",
        "message_id": message_id,
        "sender_id": "alice",
        "message_type": "image",
        "preview": "",
        "recipient_ids": recipients,
        "created_at": dt.datetime.now(dt.UTC),
        **fields,
    }
    return Notification(**values)


@dataclass
class Rig:
    backends: Composition
    queue: NotificationQueue
    store: ChatStore
    receiver: WebhookReceiver
    consumer: NotificationConsumer

    async def device(self, user: str, token: str, platform: str = "android") -> None:
        await self.store.put_device(
            Device(token=token, platform=platform, user_id=user, updated_at=dt.datetime.now(dt.UTC))  # type: ignore[arg-type]
        )

    async def drained(self) -> bool:
        return await self.queue.depth() == (0, 0)


@pytest.fixture(params=["sqlite", "sqs"])
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, serve: Callable[[Any], Awaitable[str]]
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Composition] = []

    async def make(**env: str) -> Rig:
        receiver = WebhookReceiver()
        base = await serve(receiver.app())
        settings_env = {
            "NOTIFICATION_QUEUE": request.param,
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": f"{base}/hook",
            "PUSH_WEBHOOK_SECRET": receiver.secret,
            "NOTIFICATION_MAX_RECEIVES": str(MAX_RECEIVES),
            "NOTIFICATION_RETRY_BASE_SECONDS": "0.1",
            "SQS_WAIT_SECONDS": "1",
            **env,
        }
        if request.param == "sqs":
            settings_env["AWS_ENDPOINT_URL"] = request.getfixturevalue("localstack").address
            settings_env["SQS_QUEUE_NAME"] = unique("consumer")
            settings_env["SQS_DLQ_NAME"] = settings_env["SQS_QUEUE_NAME"] + "-dlq"
        settings = make_settings(tmp_path / uuid.uuid4().hex, settings_env)
        await harness.provision(settings)
        backends = Composition(settings)
        consumer = NotificationConsumer.from_ports(settings, notification_consumer.app.ports(backends))
        await backends.start()
        made.append(backends)
        return Rig(backends, backends.notification_queue, backends.chat_store, receiver, consumer)

    yield make
    for backends in made:
        await backends.close()


# --- fan-out to devices -----------------------------------------------------------------------------
async def test_every_device_of_every_recipient_gets_one_push(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    await r.device("bob", "bob-tablet-001", "ios")
    await r.device("carol", "carol-phone-01")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob", "carol", "dave-has-no-device"))])
        await r.receiver.wait_for(3)
        await eventually(r.drained)
    assert sorted(r.receiver.tokens()) == ["bob-phone-0001", "bob-tablet-001", "carol-phone-01"]
    [push] = [d.json for d in r.receiver.accepted() if d.json["deviceToken"] == "bob-tablet-001"]
    assert push["platform"] == "ios"
    assert push["title"] == "alice"
    assert push["body"] == "sent a photo"
    assert push["data"]["type"] == "message.created"


async def test_the_caption_is_the_push_body(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",), preview="Check out this photo!")])
        [push] = await r.receiver.wait_for(1)
    assert push.json["body"] == "Check out this photo!"


async def test_the_same_queue_message_delivered_twice_pushes_once(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    job = notification(("bob",))
    await r.queue.send([job])
    [first] = await r.queue.receive(max_messages=1, wait_seconds=5)
    await r.queue.retry_later(first.receipt, 0)  # as if the first consumer died before its ack
    [second] = await r.queue.receive(max_messages=1, wait_seconds=5)
    assert second.job.notification_id == first.job.notification_id
    await r.consumer.handle(first)
    await r.consumer.handle(second)
    assert r.receiver.tokens() == ["bob-phone-0001"]
    assert await r.drained()


async def test_a_notification_enqueued_twice_pushes_each_device_once(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    await r.device("carol", "carol-phone-01")
    job = notification(("bob", "carol"))
    async with r.consumer.worker():
        await r.queue.send([job, job])  # a relay retried after the first enqueue had worked
        await r.receiver.wait_for(2)
        await eventually(r.drained)
    assert sorted(r.receiver.tokens()) == ["bob-phone-0001", "carol-phone-01"]


async def test_a_push_whose_claimer_crashed_before_pushing_is_pushed_once_after_its_lease(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig(PUSH_CLAIM_LEASE_SECONDS="2")
    await r.device("bob", "bob-phone-0001")
    job = notification(("bob",))
    await r.queue.send([job])
    [crashed] = await r.queue.receive(max_messages=1, wait_seconds=5)
    # The first consumer claimed the device, then died before its push and its ack.
    lease = dt.timedelta(seconds=2)
    assert (await r.store.claim_push(job.notification_id, "bob-phone-0001", lease=lease)).state == "claimed"
    await r.queue.retry_later(crashed.receipt, 0)  # its visibility timeout ran out
    [early] = await r.queue.receive(max_messages=1, wait_seconds=5)
    await r.consumer.handle(early)
    # Within the lease the push may still be under way elsewhere: no push, and the job is not acked ...
    assert r.receiver.deliveries == []
    assert await r.queue.depth() == (1, 0)
    assert await r.queue.receive(max_messages=1, wait_seconds=0) == []  # ... but held until the lease ends
    async with r.consumer.worker():
        await r.receiver.wait_for(1)
        await eventually(r.drained)
    assert r.receiver.tokens() == ["bob-phone-0001"]
    assert len(r.receiver.deliveries) == 1


async def test_a_redelivery_after_a_done_push_never_pushes_it_again(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig(PUSH_CLAIM_LEASE_SECONDS="0.5")
    await r.device("bob", "bob-phone-0001")
    job = notification(("bob",))
    await r.queue.send([job])
    [first] = await r.queue.receive(max_messages=1, wait_seconds=5)
    await r.consumer.handle(first)
    await asyncio.sleep(0.6)  # the lease is long over: only "done" keeps the pair from a second push
    await r.queue.send([job])  # the relay enqueued it again
    async with r.consumer.worker():
        await eventually(r.drained)
    assert r.receiver.tokens() == ["bob-phone-0001"]


# --- failures ---------------------------------------------------------------------------------------
async def test_a_failed_push_is_retried_until_it_is_accepted(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    r.receiver.fail_first["bob-phone-0001"] = 1
    retried = sample("chat_notifications_retried_total")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",))])
        await r.receiver.wait_for(1)
        await eventually(r.drained)
    assert r.receiver.attempts("bob-phone-0001") == 2
    assert sample("chat_notifications_retried_total") == retried + 1


async def test_only_the_devices_that_failed_are_pushed_again(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    await r.device("carol", "carol-phone-01")
    r.receiver.fail_first["carol-phone-01"] = 2
    async with r.consumer.worker():
        await r.queue.send([notification(("bob", "carol"))])
        await r.receiver.wait_for(2)
        await eventually(r.drained)
    assert r.receiver.attempts("bob-phone-0001") == 1
    assert r.receiver.attempts("carol-phone-01") == 3


async def test_a_push_that_always_fails_ends_in_the_dlq_after_max_receives(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    r.receiver.status_for["bob-phone-0001"] = 503
    dead = sample("chat_notifications_dead_lettered_total")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",))])
        await eventually(lambda: _depth_is(r.queue, (0, 1)), timeout=30)
    assert r.receiver.attempts("bob-phone-0001") == MAX_RECEIVES
    assert sample("chat_notifications_dead_lettered_total") == dead + 1


async def _depth_is(queue: NotificationQueue, expected: tuple[int, int]) -> bool:
    return await queue.depth() == expected


async def test_a_token_the_provider_calls_gone_is_deleted(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-old-phone1")
    await r.device("bob", "bob-new-phone1")
    r.receiver.status_for["bob-old-phone1"] = 410
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",))])
        await r.receiver.wait_for(1)
        await eventually(r.drained)
    devices = await r.store.devices_for(["bob"])
    assert [d.token for d in devices["bob"]] == ["bob-new-phone1"]


# --- limits, shutdown, metrics, traces --------------------------------------------------------------
async def test_no_more_than_the_concurrency_limit_is_in_flight(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig(NOTIFICATION_CONCURRENCY="2")
    r.receiver.delay = 0.2
    for n in range(6):
        await r.device(f"user-{n}", f"device-token-{n}")
    async with r.consumer.worker():
        await r.queue.send([notification((f"user-{n}",)) for n in range(6)])
        await r.receiver.wait_for(6)
    assert r.receiver.max_in_flight == 2


async def test_shutdown_finishes_in_flight_pushes_and_stops_polling(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig()
    r.receiver.delay = 0.5
    await r.device("bob", "bob-phone-0001")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",))])
        await r.receiver.wait_until(lambda: r.receiver.in_flight == 1)
    # The worker exited only once the push in flight was answered and its message acked.
    assert r.receiver.tokens() == ["bob-phone-0001"]
    assert await r.drained()
    later = notification(("bob",))
    await r.queue.send([later])
    [untouched] = await r.queue.receive(max_messages=1, wait_seconds=5)
    assert untouched.job == later


async def test_sent_pushes_and_queue_age_are_measured(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    sent = sample("chat_notifications_sent_total", {"provider": "webhook"})
    waits = sample("chat_notification_queue_age_seconds_count")
    async with r.consumer.worker():
        await r.queue.send([notification(("bob",))])
        await r.receiver.wait_for(1)
        await eventually(r.drained)
    assert sample("chat_notifications_sent_total", {"provider": "webhook"}) == sent + 1
    assert sample("chat_notification_queue_age_seconds_count") == waits + 1


async def test_the_consumer_span_continues_the_senders_trace(rig: Callable[..., Awaitable[Rig]]) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("tests", extra_processors=(SimpleSpanProcessor(exporter),))
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    tracer = tracing.get_tracer("tests")
    with tracer.start_as_current_span("POST /conversations/{id}/messages") as sender:
        job = notification(("bob",), trace=tracing.inject())
    async with r.consumer.worker():
        await r.queue.send([job])
        await r.receiver.wait_for(1)
        await eventually(r.drained)
    [span] = [s for s in exporter.get_finished_spans() if s.name == "notification process"]
    assert span.context is not None
    assert span.parent is not None
    assert span.context.trace_id == sender.get_span_context().trace_id
    assert span.parent.span_id == sender.get_span_context().span_id


async def test_the_consumer_app_runs_the_worker_and_reports_readiness(
    rig: Callable[..., Awaitable[Rig]], client_for: Any
) -> None:
    r = await rig()  # for its receiver and settings; the app gets backends of its own
    await r.backends.close()
    app = consumer_app.create_app(r.backends.settings)
    client = await client_for(app)
    store: ChatStore = app.state.root.chat_store
    await store.put_device(
        Device(token="bob-phone-0001", platform="android", user_id="bob", updated_at=dt.datetime.now(dt.UTC))
    )
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {"notification_queue", "sqs"} & set(ready.json()["checks"])
    await app.state.root.notification_queue.send([notification(("bob",))])
    await r.receiver.wait_for(1)
    metrics = await client.get("/metrics")
    assert "chat_notifications_sent_total" in metrics.text


# --- unsend -----------------------------------------------------------------------------------------
async def test_a_queued_push_for_an_unsent_message_is_not_sent(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig()
    await r.device("bob", "bob-phone-0001")
    now = dt.datetime.now(dt.UTC)
    conversation = Conversation(
        conversation_id=uuid.uuid4().hex,
        participants=("alice", "bob"),
        name=None,
        created_at=now,
        updated_at=now,
    )
    await r.store.create_conversation(conversation)
    cid = conversation.conversation_id
    kept, unsent = (
        Message(
            message_id=str(uuid.uuid4()),
            content=text,
            message_type="text",
            sender_id="alice",
            timestamp=now,
            read_by=("alice",),
            metadata=None,
        )
        for text in ("kept", "unsent")
    )
    for message in (kept, unsent):
        await r.store.create_message(cid, message)
    await r.store.delete_message(cid, unsent.message_id, deleted_by="alice", deleted_at=now)
    skipped = sample("chat_deleted_message_work_skipped_total", {"work": "push"})
    async with r.consumer.worker():
        await r.queue.send(
            [
                notification(("bob",), conversation_id=cid, message_id=m.message_id, preview=m.content or "")
                for m in (unsent, kept)
            ]
        )
        [push] = await r.receiver.wait_for(1)
        await eventually(r.drained)
    assert push.json["body"] == "kept"
    assert [d.json["body"] for d in r.receiver.accepted()] == ["kept"]
    assert sample("chat_deleted_message_work_skipped_total", {"work": "push"}) == skipped + 1
