"""JobQueue contract: the same tests against SQS on LocalStack and the SQLite queue, for every job type.

A job type is one ``JobType`` entry in ``JOB_TYPES`` (how to build its ``JobKind`` and sample jobs); each
contract test then runs for it against both adapters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import pytest

from chat_core.aws import AwsError
from chat_core.composition import Composition
from chat_core.jobqueue import Job, JobKind, JobQueue, Received
from chat_core.jobqueue.sqs import SqsJobQueue
from chat_core.media_jobs import MediaJob, S3Entity, S3Object, S3Record, media_jobs
from chat_core.notifications import Notification, notification_jobs
from chat_core.settings import Settings
from tests import harness
from tests.conftest import make_settings, unique

MAX_RECEIVES = 2
J = TypeVar("J", bound=Job)
Queue = JobQueue[Any]
OpenQueue = Callable[..., "asyncio.Future[Queue]"]


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


@dataclasses.dataclass(frozen=True)
class JobType(Generic[J]):
    """What the contract needs to know of a job type: its queue's kind and how to make sample jobs."""

    kind: Callable[[Settings], JobKind[J]]
    sample: Callable[[int, dict[str, str]], J]  # the n-th distinct job, with this trace context
    large: Callable[[int], J]  # a job of about 60 KiB (4 fit in one 256 KiB SQS batch)
    key: Callable[[J], str]  # what tells two jobs apart


NOTIFICATIONS = JobType(
    kind=notification_jobs,
    sample=lambda n, trace: notification(n, trace=trace),
    large=lambda n: notification(n, recipients=tuple(f"user-{i:06d}-{'x' * 100}" for i in range(500))),
    key=lambda job: job.notification_id,
)


def media_job(n: int = 0, *, trace: dict[str, str] | None = None, records: int = 0) -> MediaJob:
    message_id = str(uuid.uuid4())
    created = tuple(
        S3Record(
            event_name="ObjectCreated:Put",
            s3=S3Entity(S3Object(key=f"uploads/c-1/images/alice/{i:06d}-{'x' * 150}.jpg", size=i, etag="e")),
        )
        for i in range(records)
    )
    return MediaJob(
        message_id=message_id,
        conversation_id="c-1",
        object_key=f"uploads/c-1/images/alice/20240419-123500-{n:08d}.jpg",
        object_etag=f'"etag-{n}"',
        records=created,
        trace=trace or {},
    )


MEDIA_JOBS = JobType(
    kind=media_jobs,
    sample=lambda n, trace: media_job(n, trace=trace),
    large=lambda n: media_job(n, records=300),
    key=lambda job: job.message_id or "",
)
# Adding a job type to the contract: one more entry here.
JOB_TYPES: dict[str, JobType[Any]] = {"notification": NOTIFICATIONS, "media": MEDIA_JOBS}


async def receive_one(queue: Queue, wait: float = 5.0) -> Received[Any]:
    received = await queue.receive(max_messages=1, wait_seconds=wait)
    assert len(received) == 1, received
    return received[0]


async def receive_all(queue: Queue, count: int) -> list[Received[Any]]:
    got: list[Received[Any]] = []
    async with asyncio.timeout(20):
        while len(got) < count:
            got.extend(await queue.receive(max_messages=10, wait_seconds=1))
    return got


@pytest.fixture(params=list(JOB_TYPES))
def job_type(request: pytest.FixtureRequest) -> JobType[Any]:
    return JOB_TYPES[request.param]


@pytest.fixture
def job(job_type: JobType[Any]) -> Callable[..., Any]:
    """``job(n=0, trace={})`` -> a sample job of the parametrised type."""

    def make(n: int = 0, *, trace: dict[str, str] | None = None) -> Any:
        return job_type.sample(n, trace or {})

    return make


@pytest.fixture(params=["sqlite", "sqs"])
async def open_queue(
    request: pytest.FixtureRequest, job_type: JobType[Any], tmp_path: Path
) -> AsyncIterator[OpenQueue]:
    """``await open_queue(visibility_timeout=30)`` -> a started queue of the parametrised adapter and job
    type, under fresh private names."""
    opened: list[Composition] = []

    async def open_(*, visibility_timeout: int = 30) -> Queue:
        env = {"NOTIFICATION_QUEUE": request.param}
        if request.param == "sqs":
            env["AWS_ENDPOINT_URL"] = request.getfixturevalue("localstack").address
        settings = make_settings(tmp_path / uuid.uuid4().hex, env)
        name = unique("jobs")
        kind = dataclasses.replace(
            job_type.kind(settings),
            queue_name=name,
            dlq_name=name + "-dlq",
            max_receives=MAX_RECEIVES,
            visibility_timeout_seconds=visibility_timeout,
        )
        if request.param == "sqs":
            await harness.provision_queue(settings, kind)
        backends = Composition(settings)
        queue = backends.job_queue(kind)
        opened.append(backends)
        await backends.start()
        await queue.start()
        queued.append(queue)
        return queue

    queued: list[Queue] = []
    yield open_  # type: ignore[misc]
    for queue in queued:
        await queue.close()
    for backends in opened:
        await backends.close()


@pytest.fixture
async def queue(open_queue: OpenQueue) -> Queue:
    return await open_queue()


# --- sending and receiving --------------------------------------------------------------------------
async def test_a_sent_job_is_received_whole(queue: Queue, job: Callable[..., Any]) -> None:
    sent = job(trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    await queue.send([sent])
    received = await receive_one(queue)
    assert received.job == sent
    assert received.receive_count == 1
    assert before <= received.enqueued_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


async def test_a_job_without_trace_context_arrives_without_one(queue: Queue, job: Callable[..., Any]) -> None:
    sent = job()
    await queue.send([sent])
    assert (await receive_one(queue)).job.trace == {}


async def test_a_long_poll_returns_as_soon_as_a_message_is_sent(
    queue: Queue, job: Callable[..., Any]
) -> None:
    waiting = asyncio.create_task(queue.receive(max_messages=1, wait_seconds=10))
    await asyncio.sleep(0.2)  # let the receive start polling
    sent = job()
    await queue.send([sent])
    received = await asyncio.wait_for(waiting, 5)
    assert [r.job for r in received] == [sent]


async def test_ending_receives_returns_a_waiting_receive_and_hides_nothing(
    queue: Queue, job: Callable[..., Any]
) -> None:
    # Shutdown: a worker ends the receive it is waiting on instead of waiting out the long poll (SQLite,
    # at once) or lets it return by itself (SQS, within its wait: a cancelled long poll could hide a job).
    started = time.monotonic()
    waiting = asyncio.create_task(queue.receive(max_messages=1, wait_seconds=3))
    await asyncio.sleep(0.2)
    queue.end_receives()
    assert await asyncio.wait_for(waiting, 6) == []
    if queue.name == "sqlite":
        assert time.monotonic() - started < 1.5
    sent = job()
    await queue.send([sent])
    assert (await receive_one(queue)).job == sent  # later receives wait as before and see every job


async def test_a_receive_on_an_empty_queue_returns_nothing_after_its_wait(queue: Queue) -> None:
    assert await queue.receive(max_messages=10, wait_seconds=1) == []


async def test_a_batch_larger_than_one_request_arrives_in_full(
    queue: Queue, job: Callable[..., Any], job_type: JobType[Any]
) -> None:
    sent = [job(n) for n in range(25)]
    await queue.send(sent)
    received = await receive_all(queue, 25)
    assert sorted(job_type.key(r.job) for r in received) == sorted(job_type.key(j) for j in sent)


async def test_a_batch_of_large_jobs_is_split_by_size(queue: Queue, job_type: JobType[Any]) -> None:
    sent = [job_type.large(n) for n in range(6)]  # ~60 KiB each: 4 fit in 256 KiB
    await queue.send(sent)
    received = await receive_all(queue, 6)
    assert sorted((r.job for r in received), key=job_type.key) == sorted(sent, key=job_type.key)


async def test_max_messages_bounds_one_receive(queue: Queue, job: Callable[..., Any]) -> None:
    await queue.send([job(n) for n in range(5)])
    async with asyncio.timeout(10):
        first: list[Received[Any]] = []
        while not first:
            first = await queue.receive(max_messages=2, wait_seconds=1)
    assert 1 <= len(first) <= 2


async def test_sending_nothing_is_a_no_op(queue: Queue) -> None:
    await queue.send([])
    assert await queue.depth() == (0, 0)


# --- visibility, acks and retries -------------------------------------------------------------------
async def test_a_received_message_is_hidden_from_other_receivers(
    queue: Queue, job: Callable[..., Any]
) -> None:
    await queue.send([job()])
    await receive_one(queue)
    assert await queue.receive(max_messages=10, wait_seconds=0) == []


async def test_an_acked_message_is_never_delivered_again(queue: Queue, job: Callable[..., Any]) -> None:
    await queue.send([job()])
    received = await receive_one(queue)
    await queue.ack(received.receipt)
    assert await queue.depth() == (0, 0)
    assert await queue.receive(max_messages=10, wait_seconds=0) == []


async def test_many_acks_at_once_all_take_effect(queue: Queue, job: Callable[..., Any]) -> None:
    await queue.send([job(n) for n in range(25)])
    received = await receive_all(queue, 25)
    await asyncio.gather(*(queue.ack(r.receipt) for r in received))
    assert await queue.depth() == (0, 0)


async def test_an_ack_with_a_foreign_receipt_fails_and_deletes_nothing(
    queue: Queue, job: Callable[..., Any]
) -> None:
    await queue.send([job()])
    received = await receive_one(queue)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each adapter names the error its own way
        await queue.ack("not-a-receipt-of-this-queue")
    await queue.ack(received.receipt)
    assert await queue.depth() == (0, 0)


async def test_retry_later_redelivers_with_the_next_receive_count(
    queue: Queue, job: Callable[..., Any]
) -> None:
    sent = job()
    await queue.send([sent])
    first = await receive_one(queue)
    await queue.retry_later(first.receipt, 0)
    second = await receive_one(queue)
    assert second.job == sent
    assert second.receive_count == 2
    assert second.receipt != first.receipt


async def test_retry_later_keeps_the_message_hidden_for_its_delay(
    queue: Queue, job: Callable[..., Any]
) -> None:
    await queue.send([job()])
    first = await receive_one(queue)
    await queue.retry_later(first.receipt, 1)
    assert await queue.receive(max_messages=1, wait_seconds=0) == []
    again = await receive_one(queue, wait=5)
    assert again.receive_count == 2


async def test_an_unacked_message_comes_back_after_the_visibility_timeout(
    open_queue: OpenQueue, job: Callable[..., Any]
) -> None:
    queue = await open_queue(visibility_timeout=1)
    sent = job()
    await queue.send([sent])
    await receive_one(queue)
    again = await receive_one(queue, wait=5)  # nobody acked: the consumer is presumed dead
    assert again.job == sent
    assert again.receive_count == 2


async def test_after_max_receives_a_message_moves_to_the_dead_letter_queue(
    queue: Queue, job: Callable[..., Any]
) -> None:
    await queue.send([job()])
    for attempt in range(1, MAX_RECEIVES + 1):
        received = await receive_one(queue)
        assert received.receive_count == attempt
        await queue.retry_later(received.receipt, 0)
    assert await queue.receive(max_messages=10, wait_seconds=1) == []
    assert await queue.depth() == (0, 1)


async def test_depth_counts_waiting_and_in_flight_messages(queue: Queue, job: Callable[..., Any]) -> None:
    await queue.send([job(n) for n in range(3)])
    await receive_one(queue)
    assert await queue.depth() == (3, 0)


# --- SQS only ---------------------------------------------------------------------------------------
@pytest.fixture
async def sqs_backends(
    localstack: harness.Backend, tmp_path: Path
) -> AsyncIterator[Callable[..., Composition]]:
    made: list[Composition] = []
    name = unique("notifications")

    def make(**overrides: str) -> Composition:
        env = {
            "NOTIFICATION_QUEUE": "sqs",
            "AWS_ENDPOINT_URL": localstack.address,
            "SQS_QUEUE_NAME": name,
            "SQS_DLQ_NAME": name + "-dlq",
            "NOTIFICATION_MAX_RECEIVES": str(MAX_RECEIVES),
            **overrides,
        }
        backends = Composition(make_settings(tmp_path, env))
        made.append(backends)
        return backends

    yield make
    for backends in made:
        await backends.close()


def _sqs(backends: Composition) -> SqsJobQueue[Notification]:
    queue = backends.notification_queue
    assert isinstance(queue, SqsJobQueue)
    return queue


async def _redrive_policy(queue: SqsJobQueue[Notification], name: str) -> dict[str, object]:
    url = (await queue._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
    attributes = await queue._call("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["All"]})
    policy: dict[str, object] = msgspec.json.decode(attributes["Attributes"]["RedrivePolicy"])
    return policy


async def test_setup_creates_both_queues_with_the_redrive_policy(
    sqs_backends: Callable[..., Composition],
) -> None:
    backends = sqs_backends()
    queue = _sqs(backends)
    await harness.provision(backends.settings)
    await harness.provision(backends.settings)  # idempotent
    await backends.start()
    policy = await _redrive_policy(queue, backends.settings.notifications.queue_name)
    assert policy["maxReceiveCount"] == MAX_RECEIVES
    assert str(policy["deadLetterTargetArn"]).endswith(":" + backends.settings.notifications.dlq_name)


async def test_setup_brings_an_existing_queue_in_line_with_the_settings(
    sqs_backends: Callable[..., Composition],
) -> None:
    first = sqs_backends()
    await harness.provision(first.settings)
    changed = sqs_backends(NOTIFICATION_MAX_RECEIVES="7", NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS="45")
    await harness.provision(changed.settings)
    changed_queue = _sqs(changed)
    await changed.start()
    policy = await _redrive_policy(changed_queue, changed.settings.notifications.queue_name)
    assert policy["maxReceiveCount"] == 7


async def test_a_queue_that_vanished_is_not_recreated_by_the_service_and_works_again_after_setup(
    sqs_backends: Callable[..., Composition],
) -> None:
    """The adapter would make it without its redrive, retention and policy: setup is the one writer."""
    backends = sqs_backends()
    queue = _sqs(backends)
    await harness.provision(backends.settings)
    await backends.start()
    for name in (backends.settings.notifications.queue_name, backends.settings.notifications.dlq_name):
        url = (await queue._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
        await queue._call("DeleteQueue", {"QueueUrl": url})
    sent = notification()
    with pytest.raises(AwsError) as missing:
        await queue.send([sent])  # as after LocalStack restarted empty
    assert missing.value.code == "QueueDoesNotExist"
    with pytest.raises(AwsError, match="run chat-management setup"):
        await queue.ping()  # readiness says what to do

    await harness.provision(backends.settings)
    await queue.send([sent])
    assert (await receive_one(queue)).job == sent


async def test_start_survives_an_unreachable_sqs_and_readiness_reports_it(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, {"NOTIFICATION_QUEUE": "sqs", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}"}
    )
    backends = Composition(settings)
    queue = backends.notification_queue
    async with backends:
        with pytest.raises(Exception):  # noqa: B017, PT011 - whichever transport error httpx raises
            await queue.ping()
        assert "notification_queue" in backends.readiness_checks()
