"""Readiness: 503 only when an essential backend is down; any other outage is reported as "degraded".

A Redis outage degrades every service (caches fall back to their TTL, the outbox keeps notifications,
sockets are told to retry) but takes none out of rotation; the message store is essential to all that
serve requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import image_proxy.app
import message_service.app
import upload_service.app
from chat_devstack import start_local_firestore
from chat_management import all as all_in_one
from tests import harness
from tests.conftest import make_settings, skip_unless_required


def _redis_env(redis: harness.Backend) -> dict[str, str]:
    return {"EVENT_BUS": "redis", "REDIS_URL": redis.address}


@pytest.fixture
def private_firestore() -> Iterator[harness.Backend]:
    try:
        backend = start_local_firestore()
    except RuntimeError as exc:
        skip_unless_required("firestore", str(exc))
    yield backend
    backend.stop()


async def test_every_service_stays_ready_but_degraded_while_redis_is_down(
    private_redis: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    clients = {
        name: await client_for(factory(make_settings(tmp_path / name, _redis_env(private_redis))))
        for name, factory in {
            "upload": upload_service.app.create_app,
            "image-proxy": image_proxy.app.create_app,
            "message": message_service.app.create_app,
            "all": all_in_one.create_app,
        }.items()
    }
    for client in clients.values():
        assert (await client.get("/readyz")).json()["status"] == "ready"

    private_redis.stop()
    for name, client in clients.items():
        response = await client.get("/readyz")
        assert response.status_code == 200, name
        assert response.json()["status"] == "degraded", name
        assert response.json()["checks"]["redis"] != "ok", name

    private_redis.start()
    for client in clients.values():
        assert (await client.get("/readyz")).json()["status"] == "ready"


async def test_the_message_store_down_makes_a_service_unready_naming_it(
    private_firestore: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    env = {
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_EMULATOR_HOST": private_firestore.address,
        "FIRESTORE_PROJECT_ID": "readiness",
    }
    client = await client_for(message_service.app.create_app(make_settings(tmp_path, env)))
    # A freshly started emulator may answer its first calls slower than the probe's timeout on a busy
    # machine: the service becomes ready once it answers in time.
    deadline = asyncio.get_running_loop().time() + 30
    while (await client.get("/readyz")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, "never became ready"
        await asyncio.sleep(0.5)

    private_firestore.stop()
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == "not_ready"
    assert "firestore" in response.json()["detail"]
