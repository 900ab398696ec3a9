"""A Redis outage degrades upload and the image proxy (their cache falls back to its TTL) but never makes
them unready; the message service, which needs the bus outright, does turn unready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import image_proxy.app
import message_service.app
import upload_service.app
from chat_management import all as all_in_one
from tests import harness
from tests.conftest import make_settings


def _settings(tmp_path: Path, redis: harness.Backend) -> Any:
    return make_settings(tmp_path, {"EVENT_BUS": "redis", "REDIS_URL": redis.address})


async def test_upload_and_proxy_stay_ready_but_degraded_while_redis_is_down(
    private_redis: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    settings = _settings(tmp_path, private_redis)
    upload = await client_for(upload_service.app.create_app(settings))
    proxy = await client_for(image_proxy.app.create_app(settings))
    assert (await upload.get("/readyz")).json()["status"] == "ready"

    private_redis.stop()
    for client in (upload, proxy):
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["checks"]["redis"] != "ok"

    private_redis.start()
    assert (await upload.get("/readyz")).json()["status"] == "ready"


async def test_a_process_that_needs_the_bus_turns_unready_without_it(
    private_redis: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    settings = _settings(tmp_path, private_redis)
    message = await client_for(message_service.app.create_app(settings))
    everything = await client_for(all_in_one.create_app(make_settings(tmp_path / "all", {
        "EVENT_BUS": "redis", "REDIS_URL": private_redis.address,
    })))  # fmt: skip
    private_redis.stop()
    for client in (message, everything):
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert "redis" in response.json()["detail"]
