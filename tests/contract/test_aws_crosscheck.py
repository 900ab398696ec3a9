"""An independent check on our own S3 and SQS wire code (awscrt SigV4 + aiohttp): what our adapters write,
the AWS SDK (botocore, its own signer and encoder) reads back byte for byte, and the other way round, on
LocalStack with signature validation on. Keys with spaces, '+', '%', unicode and deep paths included."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from chat_core.composition import Composition
from chat_core.jobqueue.sqs import SqsJobQueue
from chat_core.notifications import Notification
from chat_core.objectstore.s3 import S3ObjectStore
from tests import harness
from tests.conftest import make_settings, unique

pytestmark = pytest.mark.localstack

KEYS = [
    "images/alice/20261130-101010-a.png",
    "odd keys/with space+plus%percent/ünïcode-é.png",
    "deep/" * 10 + "leaf~tilde=eq&amp.png",
]


def _sdk(service: str, endpoint: str) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
async def aws(tmp_path: Path, localstack: harness.Backend) -> AsyncIterator[tuple[Composition, Any, Any]]:
    settings = make_settings(
        tmp_path,
        {
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": unique("xcheck"),
            "NOTIFICATION_QUEUE": "sqs",
            "SQS_QUEUE_NAME": unique("xcheck-q"),
            "SQS_DLQ_NAME": unique("xcheck-dlq"),
            "MEDIA_QUEUE_NAME": unique("xcheck-media"),
            "AWS_ENDPOINT_URL": localstack.address,
        },
    )
    backends = Composition(settings)
    store = backends.object_store
    queue = backends.notification_queue
    assert isinstance(store, S3ObjectStore)
    assert isinstance(queue, SqsJobQueue)
    await harness.provision(settings)
    async with backends:
        yield backends, _sdk("s3", localstack.address), _sdk("sqs", localstack.address)


@pytest.mark.parametrize("key", KEYS)
async def test_what_we_write_the_sdk_reads_and_back(aws: tuple[Composition, Any, Any], key: str) -> None:
    backends, s3, _ = aws
    store = backends.object_store
    assert isinstance(store, S3ObjectStore)
    data = bytes(range(256)) * 64
    await store.put(key, data, content_type="image/png")
    got = await asyncio.to_thread(s3.get_object, Bucket=store.bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/png"

    theirs = key + ".sdk"
    await asyncio.to_thread(
        s3.put_object, Bucket=store.bucket, Key=theirs, Body=data[:1000], ContentType="image/webp"
    )
    info = await store.head(theirs)
    assert info is not None
    assert (info.size, info.content_type) == (1000, "image/webp")
    prefix = await store.read_prefix(theirs, 10)
    assert prefix is not None
    assert prefix[1] == data[:10]
    listed = {i.key async for i in store.list(prefix=key)}
    assert listed == {key, theirs}
    await store.delete(theirs)
    assert (
        await asyncio.to_thread(
            lambda: s3.list_objects_v2(Bucket=store.bucket, Prefix=theirs).get("KeyCount")
        )
        == 0
    )


async def test_queue_messages_cross_between_our_client_and_the_sdk(aws: tuple[Composition, Any, Any]) -> None:
    backends, _, sqs = aws
    queue = backends.notification_queue
    assert isinstance(queue, SqsJobQueue)
    note = Notification(
        notification_id="m-x:0",
        message_id="m-x",
        conversation_id="c-1",
        sender_id="alice",
        message_type="image",
        recipient_ids=("bob", "ünï"),
        preview='héllo "quoted" <b>',
        created_at=dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC),
        trace={"traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"},
    )
    await queue.send([note])
    url = (await asyncio.to_thread(sqs.get_queue_url, QueueName=backends.settings.notifications.queue_name))[
        "QueueUrl"
    ]
    got = await asyncio.to_thread(
        sqs.receive_message, QueueUrl=url, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )
    [message] = got["Messages"]
    assert "héllo" in message["Body"]
    assert message["MessageAttributes"]["traceparent"]["StringValue"] == note.trace["traceparent"]
    await asyncio.to_thread(sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    body = message["Body"]
    await asyncio.to_thread(sqs.send_message, QueueUrl=url, MessageBody=body)
    [received] = await queue.receive(max_messages=10, wait_seconds=2)
    assert received.job.preview == note.preview
    assert received.job.recipient_ids == note.recipient_ids
    await queue.ack(received.receipt)
