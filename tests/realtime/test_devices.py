"""``PUT /me/devices/{token}`` and ``DELETE /me/devices/{token}``, through the message service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chat_core.composition import Composition
from chat_core.settings import Settings
from message_service.app import create_app
from tests.conftest import auth_header, make_settings

TOKEN = "fcm-token_0123:abc.DEF-456"


@pytest.fixture
async def service(settings: Settings, client_for: Any) -> tuple[Any, Composition]:
    backends = Composition(settings)
    return await client_for(create_app(settings, backends)), backends


async def _tokens(backends: Composition, user: str) -> list[str]:
    return [device.token for device in (await backends.chat_store.devices_for([user])).get(user, [])]


async def test_registering_a_device_stores_it_for_the_caller(service: tuple[Any, Composition]) -> None:
    client, backends = service
    response = await client.put(f"/me/devices/{TOKEN}", json={"platform": "ios"}, headers=auth_header("bob"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["token"], body["platform"], body["userId"]) == (TOKEN, "ios", "bob")
    assert await _tokens(backends, "bob") == [TOKEN]


async def test_registering_again_is_idempotent(service: tuple[Any, Composition]) -> None:
    client, backends = service
    for platform in ("android", "android"):
        response = await client.put(
            f"/me/devices/{TOKEN}", json={"platform": platform}, headers=auth_header("bob")
        )
        assert response.status_code == 200
    assert await _tokens(backends, "bob") == [TOKEN]


async def test_a_token_registered_by_another_user_moves_to_them(service: tuple[Any, Composition]) -> None:
    client, backends = service
    await client.put(f"/me/devices/{TOKEN}", json={"platform": "android"}, headers=auth_header("bob"))
    await client.put(f"/me/devices/{TOKEN}", json={"platform": "android"}, headers=auth_header("carol"))
    assert await _tokens(backends, "bob") == []
    assert await _tokens(backends, "carol") == [TOKEN]


async def test_deleting_a_device_stops_its_pushes(service: tuple[Any, Composition]) -> None:
    client, backends = service
    await client.put(f"/me/devices/{TOKEN}", json={"platform": "web"}, headers=auth_header("bob"))
    response = await client.delete(f"/me/devices/{TOKEN}", headers=auth_header("bob"))
    assert response.status_code == 204
    assert await _tokens(backends, "bob") == []


async def test_deleting_someone_elses_device_is_a_404_and_keeps_it(service: tuple[Any, Composition]) -> None:
    client, backends = service
    await client.put(f"/me/devices/{TOKEN}", json={"platform": "web"}, headers=auth_header("bob"))
    response = await client.delete(f"/me/devices/{TOKEN}", headers=auth_header("mallory"))
    assert response.status_code == 404
    assert response.json()["code"] == "device_not_found"
    assert await _tokens(backends, "bob") == [TOKEN]


@pytest.mark.parametrize("token", ["short", "has space in it", "x" * 4097])
async def test_a_malformed_token_is_a_400(service: tuple[Any, Composition], token: str) -> None:
    client, _ = service
    response = await client.put(f"/me/devices/{token}", json={"platform": "ios"}, headers=auth_header("bob"))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_device_token"


async def test_an_unknown_platform_is_a_400_naming_the_field(service: tuple[Any, Composition]) -> None:
    client, _ = service
    response = await client.put(
        f"/me/devices/{TOKEN}", json={"platform": "blackberry"}, headers=auth_header("bob")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_devices_need_a_token(service: tuple[Any, Composition]) -> None:
    client, _ = service
    assert (await client.put(f"/me/devices/{TOKEN}", json={"platform": "ios"})).status_code == 401
    assert (await client.delete(f"/me/devices/{TOKEN}")).status_code == 401


async def test_a_user_keeps_at_most_max_devices_per_user(service: tuple[Any, Composition]) -> None:
    client, backends = service
    limit = backends.settings.limits.max_devices_per_user
    assert limit == 10  # the documented default
    tokens = [f"phone-token-{i:03d}" for i in range(limit + 5)]
    for token in tokens:  # one after the other: each newer than the last
        response = await client.put(
            f"/me/devices/{token}", json={"platform": "ios"}, headers=auth_header("bob")
        )
        assert response.status_code == 200, response.text
    assert sorted(await _tokens(backends, "bob")) == tokens[-limit:]


async def test_many_registrations_at_once_never_pass_the_limit(client_for: Any, tmp_path: Path) -> None:
    limited = make_settings(tmp_path, {"MAX_DEVICES_PER_USER": "3"})
    backends = Composition(limited)
    client = await client_for(create_app(limited, backends))
    responses = await asyncio.gather(
        *(
            client.put(
                f"/me/devices/burst-token-{i:03d}", json={"platform": "web"}, headers=auth_header("bob")
            )
            for i in range(40)
        )
    )
    assert {response.status_code for response in responses} == {200}
    assert len(await _tokens(backends, "bob")) == 3
