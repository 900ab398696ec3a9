"""Push providers against real local HTTP receivers: the webhook and the FCM HTTP v1 protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from chat_core.composition import Composition
from chat_core.push import PushMessage, PushProvider
from tests import harness
from tests.conftest import make_settings
from tests.consumer.receivers import FcmReceiver, WebhookReceiver, service_account

Serve = Callable[[Any], Awaitable[str]]


def push(token: str = "device-token-1", **fields: Any) -> PushMessage:  # noqa: S107 - a device token
    values: dict[str, Any] = {
        "device_token": token,
        "platform": "android",
        "user_id": "bob",
        "title": "alice",
        "body": "Check out this photo!",
        "data": {"conversationId": "c-1", "messageId": "m-1", "type": "message.created"},
        **fields,
    }
    return PushMessage(**values)


@pytest.fixture
async def open_provider(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, str]], Awaitable[PushProvider]]]:
    opened: list[Composition] = []

    async def open_(env: dict[str, str]) -> PushProvider:
        backends = Composition(make_settings(tmp_path, env))
        provider = backends.push_provider
        await backends.start()
        opened.append(backends)
        return provider

    yield open_
    for backends in opened:
        await backends.close()


# --- log --------------------------------------------------------------------------------------------
async def test_the_log_provider_logs_each_push_without_the_device_token(
    open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]],
) -> None:
    provider = await open_provider({"PUSH_PROVIDER": "log"})
    with capture_logs() as logs:
        assert await provider.send(push("secret-device-token")) == "sent"
    [line] = [entry for entry in logs if entry["event"] == "push"]
    assert line["user_id"] == "bob"
    assert line["data"]["messageId"] == "m-1"
    assert "secret-device-token" not in json.dumps(line)


async def test_the_log_provider_never_logs_the_message_text(
    open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]],
) -> None:
    provider = await open_provider({"PUSH_PROVIDER": "log"})
    with capture_logs() as logs:
        assert await provider.send(push(body="meet me at the old mill at 9")) == "sent"
    [line] = [entry for entry in logs if entry["event"] == "push"]
    assert "old mill" not in json.dumps(line)
    assert line["body_chars"] == len("meet me at the old mill at 9")


# --- webhook ----------------------------------------------------------------------------------------
@pytest.fixture
async def webhook(
    serve: Serve, open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]]
) -> tuple[WebhookReceiver, PushProvider]:
    receiver = WebhookReceiver()
    base = await serve(receiver.app())
    provider = await open_provider(
        {
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": f"{base}/hook",
            "PUSH_WEBHOOK_SECRET": receiver.secret,
        }
    )
    return receiver, provider


async def test_the_webhook_posts_the_push_as_json(webhook: tuple[WebhookReceiver, PushProvider]) -> None:
    receiver, provider = webhook
    assert await provider.send(push()) == "sent"
    [delivery] = receiver.deliveries
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.json == {
        "deviceToken": "device-token-1",
        "platform": "android",
        "userId": "bob",
        "title": "alice",
        "body": "Check out this photo!",
        "data": {"conversationId": "c-1", "messageId": "m-1", "type": "message.created"},
    }


async def test_the_webhook_signs_timestamp_and_body_with_hmac_sha256(
    webhook: tuple[WebhookReceiver, PushProvider],
) -> None:
    receiver, provider = webhook
    await provider.send(push())
    [delivery] = receiver.deliveries
    assert receiver.signature_valid(delivery)
    tampered = type(delivery)(delivery.headers, delivery.body.replace(b"alice", b"mallory"))
    assert not receiver.signature_valid(tampered)


async def test_the_webhook_names_an_apns_token_and_carries_the_image_link(
    webhook: tuple[WebhookReceiver, PushProvider],
) -> None:
    receiver, provider = webhook
    link = "https://chat.example.com/images/c-1/images/alice/x.jpg?variant=thumbnail&push_signature=s"
    assert await provider.send(push("a1" * 32, provider="apns", image_url=link)) == "sent"
    [delivery] = receiver.deliveries
    assert delivery.json["provider"] == "apns"
    assert delivery.json["imageUrl"] == link


async def test_the_log_provider_never_logs_the_image_link(
    open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]],
) -> None:
    provider = await open_provider({"PUSH_PROVIDER": "log"})
    with capture_logs() as logs:
        await provider.send(push(image_url="https://chat.example.com/i.jpg?push_signature=secret-signature"))
    [line] = [entry for entry in logs if entry["event"] == "push"]
    assert line["with_image"] is True
    assert "secret-signature" not in json.dumps(line)


@pytest.mark.parametrize("status", [404, 410])
async def test_a_webhook_answer_that_the_device_is_gone_means_invalid_token(
    webhook: tuple[WebhookReceiver, PushProvider], status: int
) -> None:
    receiver, provider = webhook
    receiver.status_for["gone-device"] = status
    assert await provider.send(push("gone-device")) == "invalid_token"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_webhook_failure_means_retry(
    webhook: tuple[WebhookReceiver, PushProvider], status: int
) -> None:
    receiver, provider = webhook
    receiver.status_for["busy-device"] = status
    assert await provider.send(push("busy-device")) == "retry"


async def test_an_unreachable_webhook_means_retry(
    open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]],
) -> None:
    provider = await open_provider(
        {"PUSH_PROVIDER": "webhook", "PUSH_WEBHOOK_URL": f"http://127.0.0.1:{harness.free_port()}/hook"}
    )
    assert await provider.send(push()) == "retry"


# --- FCM HTTP v1 ------------------------------------------------------------------------------------
@pytest.fixture
async def fcm(
    serve: Serve, tmp_path: Path, open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]]
) -> tuple[FcmReceiver, PushProvider]:
    account, public_key = service_account()
    receiver = FcmReceiver(public_key=public_key, client_email=account["client_email"])
    base = await serve(receiver.app())
    receiver.base_url = base
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps(account))
    provider = await open_provider(
        {
            "PUSH_PROVIDER": "fcm",
            "FCM_CREDENTIALS_FILE": str(credentials),
            "FCM_ENDPOINT": base,
            "FCM_TOKEN_URL": f"{base}/token",
        }
    )
    return receiver, provider


async def test_fcm_sends_an_http_v1_message_with_an_oauth_token(
    fcm: tuple[FcmReceiver, PushProvider],
) -> None:
    receiver, provider = fcm
    assert await provider.send(push()) == "sent"
    [message] = receiver.sent
    assert message["token"] == "device-token-1"
    assert message["notification"] == {"title": "alice", "body": "Check out this photo!"}
    assert message["data"]["messageId"] == "m-1"
    assert receiver.token_requests == 1


async def test_fcm_reuses_its_access_token_across_pushes(fcm: tuple[FcmReceiver, PushProvider]) -> None:
    receiver, provider = fcm
    for n in range(5):
        assert await provider.send(push(f"device-{n}")) == "sent"
    assert receiver.token_requests == 1


async def test_concurrent_fcm_pushes_share_one_token_exchange(fcm: tuple[FcmReceiver, PushProvider]) -> None:
    receiver, provider = fcm
    outcomes = await asyncio.gather(*(provider.send(push(f"device-{n}")) for n in range(20)))
    assert outcomes == ["sent"] * 20
    assert receiver.token_requests == 1


async def test_fcm_gets_a_new_access_token_when_the_old_one_is_refused(
    fcm: tuple[FcmReceiver, PushProvider],
) -> None:
    receiver, provider = fcm
    assert await provider.send(push()) == "sent"
    receiver.revoke_all()
    assert await provider.send(push()) == "sent"
    assert receiver.token_requests == 2


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (404, "UNREGISTERED", "Requested entity was not found."),
        (403, "SENDER_ID_MISMATCH", "SenderId mismatch"),
        (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
    ],
)
async def test_fcm_errors_about_the_token_mean_invalid_token(
    fcm: tuple[FcmReceiver, PushProvider], status: int, code: str, text: str
) -> None:
    receiver, provider = fcm
    receiver.errors_for["dead-device"] = (status, code, text)
    assert await provider.send(push("dead-device")) == "invalid_token"


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (429, "QUOTA_EXCEEDED", "Quota exceeded"),
        (503, "UNAVAILABLE", "The server is overloaded"),
        (500, "INTERNAL", "Internal error"),
        (400, "INVALID_ARGUMENT", "Invalid value at 'message.data'"),
    ],
)
async def test_other_fcm_errors_mean_retry(
    fcm: tuple[FcmReceiver, PushProvider], status: int, code: str, text: str
) -> None:
    receiver, provider = fcm
    receiver.errors_for["some-device"] = (status, code, text)
    assert await provider.send(push("some-device")) == "retry"


async def test_fcm_credentials_the_token_endpoint_refuses_mean_retry(
    serve: Serve, tmp_path: Path, open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]]
) -> None:
    account, _ = service_account()
    _, other_public_key = service_account()  # the endpoint knows another key: the assertion fails
    receiver = FcmReceiver(public_key=other_public_key, client_email=account["client_email"])
    base = await serve(receiver.app())
    receiver.base_url = base
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps(account))
    provider = await open_provider(
        {
            "PUSH_PROVIDER": "fcm",
            "FCM_CREDENTIALS_FILE": str(credentials),
            "FCM_ENDPOINT": base,
            "FCM_TOKEN_URL": f"{base}/token",
        }
    )
    assert await provider.send(push()) == "retry"
    assert receiver.sent == []


# --- FCM credentials: a key file, or Application Default Credentials ----------------------------------
def _fcm_env(base: str, credentials_file: str = "") -> dict[str, str]:
    return {
        "PUSH_PROVIDER": "fcm",
        "FCM_CREDENTIALS_FILE": credentials_file,
        "FCM_ENDPOINT": base,
        "FCM_TOKEN_URL": f"{base}/token",
    }


async def test_fcm_without_a_key_file_uses_application_default_credentials(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_provider: Callable[[dict[str, str]], Awaitable[PushProvider]],
) -> None:
    # GOOGLE_APPLICATION_CREDENTIALS is how ADC finds a key outside GKE; on GKE the same code path asks
    # the metadata server (Workload Identity) instead.
    account, public_key = service_account(project="adc-project")
    receiver = FcmReceiver(public_key=public_key, client_email=account["client_email"], project="adc-project")
    base = await serve(receiver.app())
    receiver.base_url = base
    key = tmp_path / "adc.json"
    key.write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    provider = await open_provider(_fcm_env(base))
    assert await provider.send(push()) == "sent"
    assert receiver.token_requests == 1
    assert [m["token"] for m in receiver.sent] == ["device-token-1"]


def test_a_key_file_wins_over_application_default_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.oauth2 import service_account as google_service_account

    from chat_core.push.fcm import FCM_SCOPE, load_credentials

    named, _ = service_account(project="named")
    ambient, _ = service_account(project="ambient")
    ambient["client_email"] = "ambient@ambient.iam.gserviceaccount.com"
    (tmp_path / "named.json").write_text(json.dumps(named))
    (tmp_path / "ambient.json").write_text(json.dumps(ambient))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "ambient.json"))
    env = _fcm_env("http://127.0.0.1:9", str(tmp_path / "named.json"))

    credentials, project = load_credentials(make_settings(tmp_path, env).push)
    assert isinstance(credentials, google_service_account.Credentials)
    assert (credentials.service_account_email, project) == (named["client_email"], "named")
    assert credentials._token_uri == "http://127.0.0.1:9/token"
    assert credentials.scopes == [FCM_SCOPE]

    credentials, project = load_credentials(make_settings(tmp_path, _fcm_env("http://127.0.0.1:9")).push)
    assert isinstance(credentials, google_service_account.Credentials)
    assert (credentials.service_account_email, project) == (ambient["client_email"], "ambient")

    # FCM_PROJECT_ID picks another Firebase project than the credentials'.
    env["FCM_PROJECT_ID"] = "firebase-prod"
    assert load_credentials(make_settings(tmp_path, env).push)[1] == "firebase-prod"
