"""NotificationQueue contract: the same tests against SQS on LocalStack and the SQLite queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from chat_core.backends import Backends
from chat_core.notifications import Notification, NotificationQueue, ReceivedNotification
from chat_core.notifications.sqs import SqsNotificationQueue
from tests import harness
from tests.conftest import make_settings, unique

MAX_RECEIVES = 2
OpenQueue = Callable[..., "asyncio.Future[NotificationQueue]"]


def notification(
    n: int = 0, *, recipients: tuple[str, ...] = ("bob", "carol"), **fields: object
) -> Notification:
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    values: dict[str, object] = {
        "notification_id": f"{message_id}:{n}",
        "conversation_id": "c-1",
        "message_id": message_id,
        "sender_id": "alice",
        "message_type": "image",
        "preview": "Check out this photo!",
        "recipient_ids": recipients,
        "created_at": dt.datetime(2024, 4, 19, 12, 35, tzinfo=dt.UTC),
        **fields,
    }
    return Notification(**values)  # type: ignore[arg-type]


async def receive_one(queue: NotificationQueue, wait: float = 5.0) -> ReceivedNotification:
    received = await queue.receive(max_messages=1, wait_seconds=wait)
    assert len(received) == 1, received
    return received[0]


async def receive_all(queue: NotificationQueue, count: int) -> list[ReceivedNotification]:
    got: list[ReceivedNotification] = []
    async with asyncio.timeout(20):
        while len(got) < count:
            got.extend(await queue.receive(max_messages=10, wait_seconds=1))
    return got


def _env(kind: str, request: pytest.FixtureRequest, overrides: dict[str, str]) -> dict[str, str]:
    env = {"NOTIFICATION_QUEUE": kind, "NOTIFICATION_MAX_RECEIVES": str(MAX_RECEIVES), **overrides}
    if kind == "sqs":
        env.setdefault("AWS_ENDPOINT_URL", request.getfixturevalue("localstack").address)
        env.setdefault("SQS_QUEUE_NAME", unique("notifications"))
        env.setdefault("SQS_DLQ_NAME", env["SQS_QUEUE_NAME"] + "-dlq")
    return env


@pytest.fixture(params=["sqlite", "sqs"])
async def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenQueue]:
    """``await open_queue(**env)`` -> a started queue of the parametrised kind (fresh, private names)."""
    opened: list[Backends] = []

    async def open_(**overrides: str) -> NotificationQueue:
        settings = make_settings(tmp_path, _env(request.param, request, overrides))
        backends = Backends(settings)
        queue = backends.notification_queue
        await backends.start()
        opened.append(backends)
        return queue

    yield open_  # type: ignore[misc]
    for backends in opened:
        await backends.close()


@pytest.fixture
async def queue(open_queue: OpenQueue) -> NotificationQueue:
    return await open_queue()


# --- sending and receiving --------------------------------------------------------------------------
async def test_a_sent_notification_is_received_whole(queue: NotificationQueue) -> None:
    sent = notification(trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    await queue.send([sent])
    received = await receive_one(queue)
    assert received.notification == sent
    assert received.receive_count == 1
    assert before <= received.enqueued_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


async def test_a_notification_without_trace_context_arrives_without_one(queue: NotificationQueue) -> None:
    sent = notification()
    await queue.send([sent])
    assert (await receive_one(queue)).notification.trace == {}


async def test_a_long_poll_returns_as_soon_as_a_message_is_sent(queue: NotificationQueue) -> None:
    waiting = asyncio.create_task(queue.receive(max_messages=1, wait_seconds=10))
    await asyncio.sleep(0.2)  # let the receive start polling
    sent = notification()
    await queue.send([sent])
    received = await asyncio.wait_for(waiting, 5)
    assert [r.notification for r in received] == [sent]


async def test_a_receive_on_an_empty_queue_returns_nothing_after_its_wait(queue: NotificationQueue) -> None:
    assert await queue.receive(max_messages=10, wait_seconds=1) == []


async def test_a_batch_larger_than_one_request_arrives_in_full(queue: NotificationQueue) -> None:
    sent = [notification(n) for n in range(25)]
    await queue.send(sent)
    received = await receive_all(queue, 25)
    assert sorted(r.notification.notification_id for r in received) == sorted(n.notification_id for n in sent)


async def test_a_batch_of_large_notifications_is_split_by_size(queue: NotificationQueue) -> None:
    many = tuple(f"user-{i:06d}-{'x' * 100}" for i in range(500))  # ~60 KiB each: 4 fit in 256 KiB
    sent = [notification(n, recipients=many) for n in range(6)]
    await queue.send(sent)
    received = await receive_all(queue, 6)
    assert {r.notification.recipient_ids for r in received} == {many}


async def test_max_messages_bounds_one_receive(queue: NotificationQueue) -> None:
    await queue.send([notification(n) for n in range(5)])
    async with asyncio.timeout(10):
        first: list[ReceivedNotification] = []
        while not first:
            first = await queue.receive(max_messages=2, wait_seconds=1)
    assert 1 <= len(first) <= 2


async def test_sending_nothing_is_a_no_op(queue: NotificationQueue) -> None:
    await queue.send([])
    assert await queue.depth() == (0, 0)


# --- visibility, acks and retries -------------------------------------------------------------------
async def test_a_received_message_is_hidden_from_other_receivers(queue: NotificationQueue) -> None:
    await queue.send([notification()])
    await receive_one(queue)
    assert await queue.receive(max_messages=10, wait_seconds=0) == []


async def test_an_acked_message_is_never_delivered_again(queue: NotificationQueue) -> None:
    await queue.send([notification()])
    received = await receive_one(queue)
    await queue.ack(received.receipt)
    assert await queue.depth() == (0, 0)
    assert await queue.receive(max_messages=10, wait_seconds=0) == []


async def test_many_acks_at_once_all_take_effect(queue: NotificationQueue) -> None:
    await queue.send([notification(n) for n in range(25)])
    received = await receive_all(queue, 25)
    await asyncio.gather(*(queue.ack(r.receipt) for r in received))
    assert await queue.depth() == (0, 0)


async def test_an_ack_with_a_foreign_receipt_fails_and_deletes_nothing(queue: NotificationQueue) -> None:
    await queue.send([notification()])
    received = await receive_one(queue)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each adapter names the error its own way
        await queue.ack("not-a-receipt-of-this-queue")
    await queue.ack(received.receipt)
    assert await queue.depth() == (0, 0)


async def test_retry_later_redelivers_with_the_next_receive_count(queue: NotificationQueue) -> None:
    sent = notification()
    await queue.send([sent])
    first = await receive_one(queue)
    await queue.retry_later(first.receipt, 0)
    second = await receive_one(queue)
    assert second.notification == sent
    assert second.receive_count == 2
    assert second.receipt != first.receipt


async def test_retry_later_keeps_the_message_hidden_for_its_delay(queue: NotificationQueue) -> None:
    await queue.send([notification()])
    first = await receive_one(queue)
    await queue.retry_later(first.receipt, 1)
    assert await queue.receive(max_messages=1, wait_seconds=0) == []
    again = await receive_one(queue, wait=5)
    assert again.receive_count == 2


async def test_an_unacked_message_comes_back_after_the_visibility_timeout(open_queue: OpenQueue) -> None:
    queue = await open_queue(NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS="1")
    sent = notification()
    await queue.send([sent])
    await receive_one(queue)
    again = await receive_one(queue, wait=5)  # nobody acked: the consumer is presumed dead
    assert again.notification == sent
    assert again.receive_count == 2


async def test_after_max_receives_a_message_moves_to_the_dead_letter_queue(queue: NotificationQueue) -> None:
    await queue.send([notification()])
    for attempt in range(1, MAX_RECEIVES + 1):
        received = await receive_one(queue)
        assert received.receive_count == attempt
        await queue.retry_later(received.receipt, 0)
    assert await queue.receive(max_messages=10, wait_seconds=1) == []
    assert await queue.depth() == (0, 1)


async def test_depth_counts_waiting_and_in_flight_messages(queue: NotificationQueue) -> None:
    await queue.send([notification(n) for n in range(3)])
    await receive_one(queue)
    assert await queue.depth() == (3, 0)


# --- SQS only ---------------------------------------------------------------------------------------
@pytest.fixture
async def sqs_backends(localstack: harness.Backend, tmp_path: Path) -> AsyncIterator[Callable[..., Backends]]:
    made: list[Backends] = []
    name = unique("notifications")

    def make(**overrides: str) -> Backends:
        env = {
            "NOTIFICATION_QUEUE": "sqs",
            "AWS_ENDPOINT_URL": localstack.address,
            "SQS_QUEUE_NAME": name,
            "SQS_DLQ_NAME": name + "-dlq",
            "NOTIFICATION_MAX_RECEIVES": str(MAX_RECEIVES),
            **overrides,
        }
        backends = Backends(make_settings(tmp_path, env))
        made.append(backends)
        return backends

    yield make
    for backends in made:
        await backends.close()


def _sqs(backends: Backends) -> SqsNotificationQueue:
    queue = backends.notification_queue
    assert isinstance(queue, SqsNotificationQueue)
    return queue


async def _redrive_policy(queue: SqsNotificationQueue, name: str) -> dict[str, object]:
    url = (await queue._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
    attributes = await queue._call("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["All"]})
    policy: dict[str, object] = msgspec.json.decode(attributes["Attributes"]["RedrivePolicy"])
    return policy


async def test_ensure_creates_both_queues_with_the_redrive_policy(
    sqs_backends: Callable[..., Backends],
) -> None:
    backends = sqs_backends()
    queue = _sqs(backends)
    await backends.start()
    await queue.ensure()
    await queue.ensure()  # idempotent
    policy = await _redrive_policy(queue, backends.settings.sqs.queue_name)
    assert policy["maxReceiveCount"] == MAX_RECEIVES
    assert str(policy["deadLetterTargetArn"]).endswith(":" + backends.settings.sqs.dlq_name)


async def test_ensure_brings_an_existing_queue_in_line_with_the_settings(
    sqs_backends: Callable[..., Backends],
) -> None:
    first = sqs_backends()
    queue = _sqs(first)
    await first.start()
    await queue.ensure()
    changed = sqs_backends(NOTIFICATION_MAX_RECEIVES="7", NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS="45")
    changed_queue = _sqs(changed)
    await changed.start()
    await changed_queue.ensure()
    policy = await _redrive_policy(changed_queue, changed.settings.sqs.queue_name)
    assert policy["maxReceiveCount"] == 7


async def test_queues_that_vanished_are_recreated_on_the_next_send(
    sqs_backends: Callable[..., Backends],
) -> None:
    backends = sqs_backends()
    queue = _sqs(backends)
    await backends.start()
    for name in (backends.settings.sqs.queue_name, backends.settings.sqs.dlq_name):
        url = (await queue._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
        await queue._call("DeleteQueue", {"QueueUrl": url})
    sent = notification()
    await queue.send([sent])  # as after LocalStack restarted empty
    assert (await receive_one(queue)).notification == sent


async def test_start_survives_an_unreachable_sqs_and_readiness_reports_it(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, {"NOTIFICATION_QUEUE": "sqs", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}"}
    )
    backends = Backends(settings)
    queue = backends.notification_queue
    async with backends:
        with pytest.raises(Exception):  # noqa: B017, PT011 - whichever transport error httpx raises
            await queue.ping()
        assert "sqs" in backends.readiness_checks()
