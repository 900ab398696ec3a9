"""The media processor's readiness names every backend a job needs.

Each process job ends with ``message.updated``, which leaves through the event outbox: a processor that
cannot reach Redis still finishes its jobs (the relay publishes the events once Redis is back), so it is
"degraded", named in its checks, and not taken out of rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from media_processor import app as media_app
from tests import harness
from tests.conftest import make_settings, unique


async def test_the_media_processor_is_degraded_naming_redis_while_the_redis_it_publishes_on_is_unreachable(
    tmp_path: Path, client_for: Any
) -> None:
    settings = make_settings(
        tmp_path, {"EVENT_BUS": "redis", "REDIS_URL": f"redis://127.0.0.1:{harness.free_port()}"}
    )
    client = await client_for(media_app.create_app(settings))

    ready = await client.get("/readyz")

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"] != "ok"


async def test_the_media_processor_is_ready_when_its_redis_answers(
    tmp_path: Path, client_for: Any, redis_backend: harness.Backend
) -> None:
    settings = make_settings(tmp_path, {"EVENT_BUS": "redis", "REDIS_URL": redis_backend.address})
    client = await client_for(media_app.create_app(settings))

    ready = await client.get("/readyz")

    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {**ready.json()["checks"], "redis": "ok"}}


async def test_the_media_processor_is_not_ready_on_a_queue_that_would_hand_its_jobs_to_another(
    tmp_path: Path, client_for: Any, localstack: harness.Backend
) -> None:
    """A queue set up without the processor's slower job timeout redelivers a decode still running."""
    queue = {"NOTIFICATION_QUEUE": "sqs", "AWS_ENDPOINT_URL": localstack.address}
    queue |= {"MEDIA_QUEUE_NAME": unique("ready-media"), "SQS_QUEUE_NAME": unique("ready-notifications")}
    await harness.provision(make_settings(tmp_path / "setup", queue))  # the defaults: 120 s
    slower = make_settings(tmp_path, {**queue, "MEDIA_JOB_TIMEOUT_SECONDS": "100"})  # needs 260 s
    client = await client_for(media_app.create_app(slower))

    refused = await client.get("/readyz")
    await harness.provision(slower)  # setup run with the processor's settings
    ready = await client.get("/readyz")

    assert refused.status_code == 503, refused.text
    assert "VisibilityTimeoutTooShort" in refused.json()["checks"]["media_queue"]
    assert "120 s" in refused.json()["checks"]["media_queue"]
    assert ready.status_code == 200, ready.text
