"""Uploads measured where they land, and refused ones explained to a later send: on the embedded stack
(local disk, SQLite queue, in-process ledger) and on the cloud one (S3 on LocalStack with the bucket's
object-created notification to an SQS media queue, the storage ledger in Redis).

The client never declares ``size_bytes`` (the spec's client does not): whatever it PUTs lands, the media
processor refuses it on its object-created event and deletes it within seconds, and a send of it made
after that gets the same 413/422 and reason as its own check would have given, not a 404.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_core import keys
from chat_core.ledger import Usage
from chat_core.ledger.redis import RedisStorageLedger
from tests import harness
from tests.conftest import TEST_SECRET, unique
from tests.image_stack import ImageStack, Uploaded, image_bytes, stack_factory
from tests.media import corpus

MAX_BYTES = 20_000
HTML = b"<html><script>alert(1)</script></html>" * 4
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(stack: ImageStack) -> Samples:
    response = await stack.http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


async def _deleted_on_arrival(stack: ImageStack, conversation_id: str, image: Uploaded) -> float:
    """Seconds until the processor deleted the raw upload (bounded: fails after 20 s)."""
    key = keys.stored_key(conversation_id, image.object_key)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while await stack.store.head(key) is not None:
        assert loop.time() - started < 20, f"{key} was not deleted on arrival"
        await asyncio.sleep(0.1)
    return loop.time() - started


async def _storage_gauges(stack: ImageStack, want: dict[str, Usage]) -> Samples:
    """/metrics once the storage gauges (refreshed from the ledger every few seconds) show ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        samples = await _scrape(stack)
        seen = {
            kind: Usage(
                int(_value(samples, "chat_storage_objects", kind=kind)),
                int(_value(samples, "chat_storage_bytes", kind=kind)),
            )
            for kind in want
        }
        if seen == want or loop.time() > deadline:
            assert seen == want
            return samples
        await asyncio.sleep(0.25)


async def _derived_usage(stack: ImageStack, conversation_id: str) -> Usage:
    objects = [info async for info in stack.store.list(f"{conversation_id}/media/")]
    return Usage(len(objects), sum(info.size for info in objects))


async def _uploads_are_measured_and_refusals_explained(
    stack: ImageStack, refused: list[tuple[bytes, int, str]]
) -> tuple[Usage, list[float]]:
    """One image shared, one uploaded and left unsent, and each of ``refused`` (bytes, status, code)
    uploaded, deleted on arrival and sent; returns the derivatives' usage and how long each deletion
    took."""
    conversation_id = await stack.conversation("alice")
    before = await _scrape(stack)

    await stack.share("alice", conversation_id)
    pending = await stack.upload("alice", conversation_id, image_bytes(size=(80, 60)))
    deletions = []
    for data, status, code in refused:
        uploaded = await stack.upload("alice", conversation_id, data, "image/png")
        deletions.append(await _deleted_on_arrival(stack, conversation_id, uploaded))
        stored = keys.stored_key(conversation_id, uploaded.object_key)
        assert await stack.store.head(keys.refusal_key(stored)) is not None  # the note of why
        sent = await stack.send("alice", conversation_id, uploaded)
        assert (sent.status_code, sent.json()["code"]) == (status, code), sent.text
        assert "deleted when it arrived" in sent.json()["detail"]

    derived = await _derived_usage(stack, conversation_id)
    assert derived.objects == len(keys.VARIANTS)
    # Raw: the unsent upload only (the shared one was deleted once processed, the refused ones on arrival).
    after = await _storage_gauges(stack, {"raw": Usage(1, len(pending.data)), "derived": derived})
    assert _delta(before, after, "chat_uploads_total", result="stored", reason="ok") == 2
    for _data, _status, code in refused:
        expected = sum(1 for _d, _s, c in refused if c == code)
        assert _delta(before, after, "chat_uploads_total", result="rejected", reason=code) == expected
    count = 2 + len(refused)
    assert _delta(before, after, "chat_upload_size_bytes_count") == count
    known_bytes = len(pending.data) + sum(len(data) for data, _s, _c in refused)
    raw_shared = _delta(before, after, "chat_upload_size_bytes_sum") - known_bytes
    assert 0 < raw_shared < MAX_BYTES  # the shared image's raw upload, whatever its encoder made
    assert _delta(before, after, "chat_upload_duration_seconds_count") == count
    # URL issued -> object stored: each PUT followed its URL at once.
    assert 0 <= _delta(before, after, "chat_upload_duration_seconds_sum") < 10 * count
    return derived, deletions


async def test_embedded_uploads_are_measured_and_a_send_after_a_refusal_gets_the_reason(
    tmp_path: Path, serve: Any
) -> None:
    """The local store refuses an oversize PUT itself (413 at the PUT): what lands and is refused here
    is a non-image and a pixel bomb."""
    async with stack_factory(tmp_path, serve, None, "") as make:
        stack = await make("local", {"MAX_IMAGE_BYTES": str(MAX_BYTES)})
        _derived, deletions = await _uploads_are_measured_and_refusals_explained(
            stack,
            [
                (HTML, 422, "not_an_image"),
                (corpus.png_declaring(100_000, 100_000), 422, "too_many_pixels"),
            ],
        )
    assert max(deletions) < 10
    print(f"\nembedded: refused uploads deleted {', '.join(f'{d:.1f}' for d in deletions)} s after the PUT")


@pytest.mark.localstack
@pytest.mark.redis
async def test_s3_uploads_are_measured_in_a_redis_ledger_and_a_send_after_a_refusal_gets_the_reason(
    tmp_path: Path, serve: Any, localstack: harness.Backend, redis_backend: harness.Backend
) -> None:
    name, prefix = unique("metrics"), unique("ledger")
    env = {
        "NOTIFICATION_QUEUE": "sqs",
        "SQS_QUEUE_NAME": name + "-notifications",
        "SQS_DLQ_NAME": name + "-notifications-dlq",
        "MEDIA_QUEUE_NAME": name + "-media",
        "SQS_WAIT_SECONDS": "1",
        "LIMIT_STORE": "redis",
        "REDIS_URL": redis_backend.address,
        "LIMIT_KEY_PREFIX": prefix,
        "MAX_IMAGE_BYTES": str(MAX_BYTES),
    }
    await _setup(localstack, name, env, tmp_path)
    oversize = image_bytes("PNG") + b"\0" * (2 * MAX_BYTES)  # no size_bytes declared: S3 takes it
    ledger = RedisStorageLedger(redis_backend.address, prefix)
    try:
        async with stack_factory(tmp_path, serve, localstack, name) as make:
            stack = await make("s3", env)
            derived, deletions = await _uploads_are_measured_and_refusals_explained(
                stack, [(oversize, 413, "image_too_large"), (HTML, 422, "not_an_image")]
            )
        # The shared count, as every replica reads it.
        assert (await ledger.usage())["derived"] == derived
        assert (await ledger.usage())["raw"].objects == 1
    finally:
        await ledger.close()
    assert max(deletions) < 10
    print(f"\nS3: refused uploads deleted {', '.join(f'{d:.1f}' for d in deletions)} s after the PUT")


async def _setup(localstack: harness.Backend, name: str, env: dict[str, str], tmp_path: Path) -> None:
    """``chat-management setup``: the bucket with its object-created notification, and the queues."""
    setup_env = {
        **os.environ,
        "AUTH_JWT_SECRET": TEST_SECRET,
        **env,
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": name,
        "AWS_ENDPOINT_URL": localstack.address,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "DATA_DIR": str(tmp_path),
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "chat_management", "setup"],
        env=setup_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
