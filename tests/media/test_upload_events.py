"""S3's object-created events on the media queue (LocalStack, the bucket as `chat-management setup` makes
it): the media processor checks each raw upload on arrival and deletes one that can never be sent.

The events are S3's own JSON, not our job format: they must decode, be acted on, and never jam the queue
(S3's ``s3:TestEvent``, sent when the notification is configured, arrives on it too).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import media_processor.app
from chat_core import keys
from chat_core.composition import Composition
from media_processor.worker import MediaWorker
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique
from tests.image_stack import image_bytes
from tests.media import corpus

pytestmark = pytest.mark.localstack


async def _put(backends: Composition, key: str, data: bytes, content_type: str) -> None:
    upload = backends.object_store.presign_put(
        key, content_type=content_type, content_length=None, expires_in=60
    )
    async with httpx.AsyncClient() as http:
        response = await http.put(upload.url, content=data, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


async def _gone(backends: Composition, key: str, seconds: float = 30.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await backends.object_store.head(key) is None:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_the_bucket_announces_uploads_and_the_processor_deletes_what_can_never_be_sent(
    localstack: harness.Backend, tmp_path: Path
) -> None:
    name = unique("events")
    env = {
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": name,
        "NOTIFICATION_QUEUE": "sqs",
        "SQS_QUEUE_NAME": name + "-notifications",
        "SQS_DLQ_NAME": name + "-notifications-dlq",
        "MEDIA_QUEUE_NAME": name + "-media",
        "SQS_WAIT_SECONDS": "1",
        "AWS_ENDPOINT_URL": localstack.address,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "DATA_DIR": str(tmp_path),
    }
    setup = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "chat_management", "setup"],
        env={**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr
    backends = Composition(make_settings(tmp_path, env))
    worker = MediaWorker.from_ports(backends.settings, media_processor.app.ports(backends))
    good = keys.stored_key("c1", keys.new_object_key("alice", "image/png"))
    html = keys.stored_key("c1", keys.new_object_key("alice", "image/png"))
    bomb = keys.stored_key("c1", keys.new_object_key("alice", "image/png"))
    async with backends, worker.worker():
        await _put(backends, good, image_bytes("PNG"), "image/png")
        await _put(backends, html, b"<html><script>alert(1)</script></html>", "image/png")
        await _put(backends, bomb, corpus.png_declaring(100_000, 100_000), "image/png")
        assert await _gone(backends, html)
        assert await _gone(backends, bomb)
        assert await backends.object_store.head(good) is not None
        # Every event was handled: nothing waits on the queue or went to the dead-letter queue.
        for _ in range(50):
            if await backends.media_queue.depth() == (0, 0):
                break
            await asyncio.sleep(0.2)
        assert await backends.media_queue.depth() == (0, 0)
