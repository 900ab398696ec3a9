"""``chat-management setup`` creates the notification queues (SQS) idempotently, with the redrive policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec

from chat_core.composition import Composition
from chat_core.jobqueue.sqs import SqsJobQueue
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique


def _setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_management", "setup"],
        env={**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_setup_creates_the_queue_and_its_dead_letter_queue_and_can_run_again(
    localstack: harness.Backend, tmp_path: Path
) -> None:
    name = unique("setup-notifications")
    env = {
        "NOTIFICATION_QUEUE": "sqs",
        "SQS_QUEUE_NAME": name,
        "SQS_DLQ_NAME": name + "-dlq",
        "MEDIA_QUEUE_NAME": name + "-media",
        "NOTIFICATION_MAX_RECEIVES": "4",
        "AWS_ENDPOINT_URL": localstack.address,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "DATA_DIR": str(tmp_path),
    }
    first, again = _setup(env), _setup(env)
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "ok: notification queue (sqs)" in again.stdout
    assert "ok: media queue (sqs)" in again.stdout  # without S3 no bucket step makes it
    backends = Composition(make_settings(tmp_path, env))
    queue = backends.notification_queue
    assert isinstance(queue, SqsJobQueue)
    async with backends:
        url = (await queue._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
        attributes = await queue._call("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["All"]})
    policy = msgspec.json.decode(attributes["Attributes"]["RedrivePolicy"])
    assert policy["maxReceiveCount"] == 4
    assert policy["deadLetterTargetArn"].endswith(f":{name}-dlq")


def test_setup_reports_an_unreachable_sqs_in_one_line(tmp_path: Path) -> None:
    result = _setup(
        {
            "NOTIFICATION_QUEUE": "sqs",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "DATA_DIR": str(tmp_path),
        }
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("failed: notification queue (sqs)")
