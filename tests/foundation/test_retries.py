"""Transport retries against real faults: our TCP/HTTP fault proxy in front of LocalStack, a JWKS server and
an FCM stand-in answers 503 ``SlowDown`` or resets the first connections. A 4xx is never tried again, the
budget bounds the attempts, every retry is counted, and a streamed body is bounded per read, not in total.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from chat_core.auth import JwksVerifier
from chat_core.aws import AwsError, AwsHttp, aws_endpoint, aws_partition
from chat_core.composition import Composition
from chat_core.jobqueue.sqs import SqsJobQueue
from chat_core.notifications import Notification
from chat_core.objectstore.s3 import S3ObjectStore
from chat_core.push import PushMessage
from chat_core.settings import load_settings
from tests import harness
from tests.chaos.faultproxy import FaultProxy, running_proxy
from tests.conftest import make_settings, unique
from tests.consumer.receivers import FcmReceiver, service_account
from tests.jwks_server import JwksServer

Serve = Callable[..., Awaitable[str]]


def retries(backend: str, operation: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "chat_backend_retries_total", {"backend": backend, "operation": operation, "reason": reason}
    )
    return value or 0.0


def _hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


@pytest.fixture
async def proxied_aws(
    tmp_path: Path, localstack: harness.Backend
) -> AsyncIterator[tuple[FaultProxy, Composition]]:
    async with running_proxy(_hostport(localstack.address)) as proxy:
        settings = make_settings(
            tmp_path,
            {
                "OBJECT_STORE": "s3",
                "S3_BUCKET_NAME": unique("retry"),
                "NOTIFICATION_QUEUE": "sqs",
                "SQS_QUEUE_NAME": unique("retry-q"),
                "SQS_DLQ_NAME": unique("retry-dlq"),
                "MEDIA_QUEUE_NAME": unique("retry-media"),
                "AWS_ENDPOINT_URL": f"http://{proxy.address}",
            },
        )
        backends = Composition(settings)
        store = backends.object_store
        assert isinstance(store, S3ObjectStore)
        assert backends.notification_queue is not None
        await harness.provision(settings)
        async with backends:
            yield proxy, backends


@pytest.mark.parametrize("how", ["503", "reset"])
async def test_s3_calls_survive_transient_failures(
    proxied_aws: tuple[FaultProxy, Composition], how: Any
) -> None:
    proxy, backends = proxied_aws
    store = backends.object_store
    await store.put("a/b.png", b"\x89PNG-bytes", content_type="image/png")
    reason = "throttled" if how == "503" else "connection"  # the 503 says SlowDown
    before = retries("s3", "GET", reason)
    # New connections only: the pool's kept-alive ones would slip past the fault.
    await backends.aws_http.close()
    proxy.fail_next(3, how)
    found = await store.read_prefix("a/b.png", 4)
    assert found is not None
    assert found[1] == b"\x89PNG"
    # aiohttp itself tries a reset idempotent request once more on a new connection: not counted
    assert retries("s3", "GET", reason) == before + (3 if how == "503" else 1)


async def test_a_client_error_is_never_tried_again(proxied_aws: tuple[FaultProxy, Composition]) -> None:
    proxy, backends = proxied_aws
    store = backends.object_store
    connections = proxy.connections
    counted = sum(retries("s3", op, r) for op in ("GET", "HEAD") for r in ("5xx", "throttled", "connection"))
    assert await store.read_prefix("missing/key.png", 4) is None  # 404
    assert await store.head("missing/key.png") is None
    assert (
        sum(retries("s3", op, r) for op in ("GET", "HEAD") for r in ("5xx", "throttled", "connection"))
        == counted
    )
    assert proxy.connections - connections <= 1  # one pooled connection at most, no retries


async def test_the_budget_bounds_the_attempts_and_the_answer_is_the_last_one(
    proxied_aws: tuple[FaultProxy, Composition],
) -> None:
    proxy, backends = proxied_aws
    await backends.aws_http.close()
    before = retries("s3", "HEAD", "5xx")
    proxy.fail_next(100, "503")
    connections = proxy.connections
    started = time.monotonic()
    with pytest.raises(AwsError) as caught:
        await backends.object_store.head("any/key.png")
    assert caught.value.status == 503
    attempts = backends.aws_http.retry.attempts
    assert proxy.connections - connections == attempts
    assert retries("s3", "HEAD", "5xx") == before + attempts - 1  # HEAD has no body: no code, plain 5xx
    assert time.monotonic() - started < backends.aws_http.retry.seconds + 1
    proxy.fail_next(0)


async def test_sqs_calls_survive_transient_failures(proxied_aws: tuple[FaultProxy, Composition]) -> None:
    proxy, backends = proxied_aws
    queue = backends.notification_queue
    assert isinstance(queue, SqsJobQueue)
    before = retries("sqs", "SendMessageBatch", "connection")
    await backends.aws_http.close()
    proxy.fail_next(2, "reset")  # a POST: aiohttp does not try it again by itself
    note = Notification(
        notification_id="m-retry:0",
        message_id="m-retry",
        conversation_id="c-1",
        sender_id="alice",
        message_type="text",
        recipient_ids=("bob",),
        preview="hi",
        created_at=dt.datetime.now(dt.UTC),
    )
    await queue.send([note])
    assert retries("sqs", "SendMessageBatch", "connection") == before + 2
    await backends.aws_http.close()
    proxy.fail_next(1, "503")
    before = retries("sqs", "ReceiveMessage", "throttled")
    [got] = await queue.receive(max_messages=10, wait_seconds=1)
    assert got.job.message_id == "m-retry"
    assert retries("sqs", "ReceiveMessage", "throttled") == before + 1


async def test_a_streamed_body_is_bounded_per_read_not_in_total(
    tmp_path: Path, localstack: harness.Backend
) -> None:
    """A slow client reading an image for longer than the request timeout still gets all of it."""
    settings = make_settings(
        tmp_path,
        {"OBJECT_STORE": "s3", "S3_BUCKET_NAME": unique("stream"), "AWS_ENDPOINT_URL": localstack.address},
    )
    backends = Composition(settings)
    backends.aws_http = AwsHttp(timeout=1.0, read_timeout=1.0)
    store = backends.object_store
    assert isinstance(store, S3ObjectStore)
    await harness.provision(settings)
    async with backends:
        data = bytes(range(256)) * 4096 * 4  # 4 MiB
        await store.put("slow/reader.png", data, content_type="image/png")
        read = await store.open("slow/reader.png")
        received = bytearray()
        started = time.monotonic()
        async for chunk in read.body:
            received += chunk
            await asyncio.sleep(0.04)  # a slow client: ~64 chunks, ~2.5 s in all
        assert time.monotonic() - started > 1.5
        assert bytes(received) == data


async def test_jwks_fetch_survives_transient_failures() -> None:
    server = JwksServer()
    server.keys = []
    with server.running():
        async with running_proxy(_hostport(server.url)) as proxy:
            verifier = JwksVerifier(
                server.url.replace(_hostport(server.url), proxy.address),
                issuer="https://issuer.example.test",
                audience="aud",
                min_refresh_interval=0,
            )
            before = retries("jwks", "fetch", "5xx")
            proxy.fail_next(2, "503")
            await verifier.ping()  # fetches the (empty) key set
            assert server.requests == 1
            assert retries("jwks", "fetch", "5xx") == before + 2


async def test_fcm_token_fetch_survives_transient_failures(serve: Serve, tmp_path: Path) -> None:
    account, public_key = service_account()
    receiver = FcmReceiver(public_key=public_key, client_email=account["client_email"])
    base = await serve(receiver.app())
    receiver.base_url = base
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps(account))
    async with running_proxy(_hostport(base)) as proxy:
        receiver.base_url = f"http://{proxy.address}"  # the assertion's audience is the URL we call
        backends = Composition(
            make_settings(
                tmp_path,
                {
                    "PUSH_PROVIDER": "fcm",
                    "FCM_CREDENTIALS_FILE": str(credentials),
                    "FCM_ENDPOINT": f"http://{proxy.address}",
                    "FCM_TOKEN_URL": f"http://{proxy.address}/token",
                },
            )
        )
        provider = backends.push_provider
        async with backends:
            before = retries("fcm", "token", "connection")
            proxy.fail_next(2, "reset")  # a POST
            message = PushMessage(
                device_token="dev-1",
                platform="android",
                user_id="bob",
                title="t",
                body="b",
                data={"messageId": "m-1"},
            )
            assert await provider.send(message) == "sent"
            assert receiver.token_requests == 1
            assert retries("fcm", "token", "connection") == before + 2


def test_aws_conventions_region_endpoints_and_partitions(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "AUTH_JWT_SECRET": "x" * 40,
            "AWS_DEFAULT_REGION": "cn-north-1",
            "AWS_ENDPOINT_URL": "http://shared:4566",
            "AWS_ENDPOINT_URL_SQS": "http://sqs-only:9324",
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": "b",
            "NOTIFICATION_QUEUE": "sqs",
        }
    )
    assert settings.aws.region == "cn-north-1"
    backends = Composition(settings)
    store = backends.object_store
    queue = backends.notification_queue
    assert isinstance(store, S3ObjectStore)
    assert isinstance(queue, SqsJobQueue)
    assert store.public_endpoint_url == "http://shared:4566"
    assert queue._client.endpoint_url == "http://sqs-only:9324"
    assert (
        load_settings(
            {"AUTH_JWT_SECRET": "x" * 40, "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x"}
        ).aws.region
        == "eu-west-1"
    )
    assert aws_endpoint("s3", "cn-north-1") == "https://s3.cn-north-1.amazonaws.com.cn"
    assert aws_endpoint("sqs", "us-gov-west-1") == "https://sqs.us-gov-west-1.amazonaws.com"
    assert aws_endpoint("s3", "us-iso-east-1") == "https://s3.us-iso-east-1.c2s.ic.gov"
    assert aws_partition("cn-northwest-1") == "aws-cn"
    assert aws_partition("us-gov-east-1") == "aws-us-gov"
    assert aws_partition("eu-west-1") == "aws"
    plain = load_settings(
        {"AUTH_JWT_SECRET": "x" * 40, "AWS_REGION": "cn-north-1", "OBJECT_STORE": "s3", "S3_BUCKET_NAME": "b"}
    )
    assert isinstance(s3 := Composition(plain).object_store, S3ObjectStore)
    assert s3.public_endpoint_url == "https://s3.cn-north-1.amazonaws.com.cn"
