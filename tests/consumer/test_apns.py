"""The APNs provider against a local server speaking APNs' HTTP/2 protocol (tests/consumer/apns_receiver.py),
with a P-256 auth key made for the test."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from chat_core.chatstore import Device
from chat_core.composition import Composition
from chat_core.notifications import Notification
from chat_core.push import PushMessage, PushRouter
from chat_core.push.apns import ENDPOINTS, ApnsPushProvider
from chat_core.settings import SettingsError, load_settings
from notification_consumer.consumer import NotificationConsumer
from tests.conftest import make_settings
from tests.consumer.apns_receiver import KEY_ID, TEAM_ID, TOPIC, ApnsReceiver, auth_key, served

APNS_TOKEN = "a1" * 32  # a raw APNs device token: 64 hex digits


def push(token: str = APNS_TOKEN, **fields: Any) -> PushMessage:
    values: dict[str, Any] = {
        "device_token": token,
        "platform": "ios",
        "user_id": "bob",
        "title": "alice",
        "body": "Check out this photo!",
        "data": {"conversationId": "c-1", "messageId": "m-1", "type": "message.created"},
        "provider": "apns",
        **fields,
    }
    return PushMessage(**values)


def apns_env(key_file: Path, endpoint: str) -> dict[str, str]:
    return {
        "PUSH_PROVIDER": "apns",
        "APNS_KEY_FILE": str(key_file),
        "APNS_KEY_ID": KEY_ID,
        "APNS_TEAM_ID": TEAM_ID,
        "APNS_TOPIC": TOPIC,
        "APNS_ENDPOINT": endpoint,
    }


Rig = tuple[ApnsReceiver, PushRouter]


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    async with contextlib.AsyncExitStack() as opened:

        async def make(**env: str) -> Rig:
            key_file, public_key = auth_key(tmp_path)
            receiver = ApnsReceiver(public_key)
            endpoint = await opened.enter_async_context(served(receiver))
            backends = Composition(make_settings(tmp_path, {**apns_env(key_file, endpoint), **env}))
            router = backends.push_provider
            await opened.enter_async_context(backends)
            return receiver, router

        yield make


async def test_a_push_goes_over_http2_with_an_es256_provider_token(
    apns: Callable[..., Awaitable[Rig]],
) -> None:
    receiver, router = await apns()
    assert await router.send(push()) == "sent"
    [request] = receiver.accepted
    assert request.http_version == "2"
    assert request.token == APNS_TOKEN
    assert request.headers["apns-topic"] == TOPIC
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-collapse-id"] == "c-1"  # one visible push per conversation
    aps = request.payload["aps"]
    assert aps["alert"] == {"title": "alice", "body": "Check out this photo!"}
    assert aps["thread-id"] == "c-1"
    assert "mutable-content" not in aps  # no image, nothing for an extension to do
    assert request.payload["messageId"] == "m-1"


async def test_an_image_push_is_mutable_and_carries_the_thumbnail_link(
    apns: Callable[..., Awaitable[Rig]],
) -> None:
    receiver, router = await apns()
    link = "https://chat.example.com/images/c-1/images/alice/x.jpg?variant=thumbnail&push_signature=s"
    assert await router.send(push(image_url=link)) == "sent"
    [request] = receiver.accepted
    assert request.payload["aps"]["mutable-content"] == 1
    assert request.payload["image"] == link


async def test_one_provider_token_serves_many_pushes(apns: Callable[..., Awaitable[Rig]]) -> None:
    receiver, router = await apns()
    for index in range(5):
        assert await router.send(push(f"{index:02x}" * 32)) == "sent"
    assert len(receiver.accepted) == 5
    assert len(receiver.provider_tokens) == 1


@pytest.mark.parametrize(("status", "reason"), [(410, "Unregistered"), (400, "BadDeviceToken")])
async def test_a_dead_device_token_means_invalid_token(
    apns: Callable[..., Awaitable[Rig]], status: int, reason: str
) -> None:
    receiver, router = await apns()
    receiver.errors_for[APNS_TOKEN] = (status, reason)
    assert await router.send(push()) == "invalid_token"


@pytest.mark.parametrize(("status", "reason"), [(429, "TooManyRequests"), (503, "ServiceUnavailable")])
async def test_throttling_and_outages_are_tried_again_with_backoff(
    apns: Callable[..., Awaitable[Rig]], status: int, reason: str
) -> None:
    receiver, router = await apns()
    receiver.fail_first[APNS_TOKEN] = [(status, reason), (status, reason)]
    assert await router.send(push()) == "sent"
    assert len([r for r in receiver.requests if r.token == APNS_TOKEN]) == 3


async def test_an_outage_that_outlasts_the_budget_means_retry(apns: Callable[..., Awaitable[Rig]]) -> None:
    receiver, router = await apns()
    receiver.errors_for[APNS_TOKEN] = (500, "InternalServerError")
    assert await router.send(push()) == "retry"
    assert len(receiver.requests) > 1


@pytest.mark.parametrize(("status", "reason"), [(400, "PayloadTooLarge"), (403, "InvalidProviderToken")])
async def test_a_refusal_of_our_own_request_is_retry_never_a_dead_device(
    apns: Callable[..., Awaitable[Rig]], status: int, reason: str
) -> None:
    receiver, router = await apns()
    receiver.errors_for[APNS_TOKEN] = (status, reason)
    assert await router.send(push()) == "retry"
    assert len(receiver.requests) == 1  # a 4xx is not tried again


async def test_an_expired_provider_token_is_replaced_and_the_push_sent(
    apns: Callable[..., Awaitable[Rig]],
) -> None:
    receiver, router = await apns()
    assert await router.send(push()) == "sent"
    receiver.expired_tokens |= receiver.provider_tokens  # APNs now says ExpiredProviderToken to it
    assert await router.send(push()) == "sent"
    assert len(receiver.requests) == 3  # sent, refused as expired, sent with a fresh token
    assert len(receiver.provider_tokens) == 2


async def test_a_key_that_is_not_p256_is_refused_at_start(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    backends = Composition(make_settings(tmp_path, apns_env(key_file, "http://127.0.0.1:9")))
    _ = backends.push_provider
    with pytest.raises(ValueError, match="APNS_KEY_FILE"):
        await backends.start()
    await backends.close()


def test_apns_needs_its_key_and_names(tmp_path: Path) -> None:
    base = {"AUTH_JWT_SECRET": "x" * 32, "PUSH_PROVIDER": "fcm,apns"}
    with pytest.raises(SettingsError, match="APNS_KEY_FILE"):
        load_settings(base)
    env = {**base, "APNS_KEY_FILE": "/k.p8", "APNS_KEY_ID": KEY_ID, "APNS_TEAM_ID": TEAM_ID}
    with pytest.raises(SettingsError, match="APNS_TOPIC"):
        load_settings(env)
    settings = load_settings({**env, "APNS_TOPIC": TOPIC})
    assert settings.backends.push_provider == ("fcm", "apns")
    with pytest.raises(SettingsError, match="PUSH_PROVIDER"):
        load_settings({**base, "PUSH_PROVIDER": "fcm,fcm"})


def test_sandbox_and_production_have_their_own_endpoints(tmp_path: Path) -> None:
    assert ENDPOINTS == {
        "production": "https://api.push.apple.com",
        "sandbox": "https://api.sandbox.push.apple.com",
    }
    for environment in ("production", "sandbox"):
        env = {**apns_env(tmp_path / "k.p8", ""), "APNS_ENVIRONMENT": environment}
        provider = ApnsPushProvider(make_settings(tmp_path, env).push)
        assert provider.endpoint == ENDPOINTS[environment]


async def test_a_device_no_configured_provider_can_reach_is_skipped_and_kept(
    apns: Callable[..., Awaitable[Rig]], tmp_path: Path
) -> None:
    receiver, router = await apns()
    backends = Composition(make_settings(tmp_path / "store"))
    devices, receipts, queue = backends.devices, backends.push_receipts, backends.notification_queue
    async with backends:
        now = dt.datetime.now(dt.UTC)
        await devices.put_device(
            Device(token="fcm-only-token", platform="android", user_id="bob", updated_at=now)
        )
        await devices.put_device(
            Device(token=APNS_TOKEN, platform="ios", user_id="bob", updated_at=now, provider="apns")
        )
        consumer = NotificationConsumer(
            queue, devices, receipts, router, concurrency=4, wait_seconds=1, max_receives=3,
            retry_base_seconds=0.1, drain_seconds=1,
        )  # fmt: skip
        before = REGISTRY.get_sample_value(
            "chat_notifications_failed_total", {"provider": "fcm", "reason": "no_provider"}
        )
        job = Notification(
            notification_id="m-1:0", conversation_id="c-1", message_id="m-1", sender_id="alice",
            message_type="text", preview="hi", recipient_ids=("bob",), created_at=now,
        )  # fmt: skip
        assert await consumer._push_all(job) == (True, None)
        assert [request.token for request in receiver.accepted] == [APNS_TOKEN]
        after = REGISTRY.get_sample_value(
            "chat_notifications_failed_total", {"provider": "fcm", "reason": "no_provider"}
        )
        assert (after or 0) - (before or 0) == 1
        # Skipped, never deleted: a deployment with FCM configured reaches it.
        assert {d.token for d in (await devices.devices_for(["bob"]))["bob"]} == {
            "fcm-only-token",
            APNS_TOKEN,
        }
