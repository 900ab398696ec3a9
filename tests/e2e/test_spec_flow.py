"""End to end: the five services as separate processes on real Redis, LocalStack and the Firestore emulator.

The spec's whole flow over HTTP and WebSocket, as a browser client would drive it (a CORS preflight before
every cross-origin call): upload URL -> PUT to the bucket -> send -> the online member's socket event ->
the media processor's ``message.updated`` on the same socket -> the offline member's push at a real
webhook receiver -> the image proxy serves the sanitized bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import connect

from chat_devstack import Stack
from tests import harness
from tests.conftest import TEST_SECRET, auth_header, token_for, unique
from tests.consumer.receivers import WebhookReceiver

pytestmark = pytest.mark.e2e
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def webhook() -> WebhookReceiver:
    return WebhookReceiver()


@pytest.fixture(scope="module")
async def webhook_url(webhook: WebhookReceiver, serve_module: Any) -> str:
    return f"{await serve_module(webhook.app())}/hook"


@pytest.fixture(scope="module")
async def stack(
    redis_backend: harness.Backend,
    localstack: harness.Backend,
    firestore_emulator: harness.Backend,
    webhook: WebhookReceiver,
    webhook_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    running = Stack(
        redis_url=redis_backend.address,
        aws_endpoint_url=localstack.address,
        firestore_host=firestore_emulator.address,
        workdir=Path(tmp_path_factory.mktemp("e2e")),
        suffix=unique("e2e"),
        extra_env={
            "AUTH_JWT_SECRET": TEST_SECRET,
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": webhook_url,
            "PUSH_WEBHOOK_SECRET": webhook.secret,
            "CORS_ALLOW_ORIGINS": ORIGIN,
            "SQS_WAIT_SECONDS": "1",
            "SHUTDOWN_DRAIN_SECONDS": "3",
        },
    )
    await asyncio.to_thread(running.start)
    yield running
    exit_codes = await asyncio.to_thread(running.stop)
    # SIGTERM drains and finishes the lifespan; none needed SIGKILL. (uvicorn re-raises the signal after
    # its graceful shutdown, so a clean exit reads as -SIGTERM.)
    assert exit_codes == dict.fromkeys(exit_codes, -signal.SIGTERM), exit_codes
    for name, service in running.services.items():
        assert "Application shutdown complete" in service.log_path.read_text(), name


def jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color=(30, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def preflight(http: httpx.AsyncClient, url: str, method: str, headers: str) -> None:
    """What a browser sends before a cross-origin call with these headers; it must be allowed."""
    response = await http.options(
        url,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    assert response.status_code in (200, 204), (url, response.status_code, response.text)
    assert response.headers["access-control-allow-origin"] in (ORIGIN, "*"), url
    allowed_methods = response.headers.get("access-control-allow-methods", "").upper()
    assert method in allowed_methods or "*" in allowed_methods, (url, allowed_methods)


async def call(
    http: httpx.AsyncClient, method: str, url: str, user: str, body: Any | None = None
) -> httpx.Response:
    await preflight(http, url, method, "authorization,content-type")
    response = await http.request(method, url, json=body, headers={**auth_header(user), "Origin": ORIGIN})
    assert response.headers.get("access-control-allow-origin") in (ORIGIN, "*"), url
    return response


async def test_an_image_message_goes_from_upload_to_every_member(
    stack: Stack, webhook: WebhookReceiver
) -> None:
    upload, message, proxy = stack.url("upload"), stack.url("message"), stack.url("image-proxy")
    async with httpx.AsyncClient(timeout=20) as http:
        # Alice writes to Bob (online, on a socket) and Carol (offline, one phone).
        created = await call(
            http,
            "POST",
            f"{message}/conversations",
            "alice",
            {"participantIds": ["bob", "carol"], "name": "trip"},
        )
        assert created.status_code == 201, created.text
        cid = created.json()["conversationId"]
        device = await call(
            http, "PUT", f"{message}/me/devices/carol-phone-1", "carol", {"platform": "android"}
        )
        assert device.status_code in (200, 201, 204), device.text

        ws_url = message.replace("http://", "ws://") + f"/ws?access_token={token_for('bob')}"
        async with connect(ws_url, origin=ORIGIN) as bob_socket:  # type: ignore[arg-type]
            ready = json.loads(await asyncio.wait_for(bob_socket.recv(), 10))
            assert ready["type"] == "session.ready"

            # 1. upload URL
            issued = await call(
                http,
                "POST",
                f"{upload}/conversations/{cid}/images/upload_url",
                "alice",
                {"content_type": "image/jpeg"},
            )
            assert issued.status_code == 200, issued.text
            grant = issued.json()
            assert grant["file_url"] == f"{proxy}/images/{cid}/{grant['object_key']}"

            # 2. PUT straight to the bucket, as the spec's client does (CORS rule on the bucket)
            data = jpeg()
            await preflight(http, grant["upload_url"], "PUT", "content-type")
            put = await http.put(
                grant["upload_url"], content=data, headers={"Content-Type": "image/jpeg", "Origin": ORIGIN}
            )
            assert put.status_code == 200, put.text

            # 3. send
            sent = await call(
                http,
                "POST",
                f"{message}/conversations/{cid}/messages",
                "alice",
                {
                    "content": "Check out this photo!",
                    "messageType": "image",
                    "metadata": {
                        "object_key": grant["object_key"],
                        "url": grant["file_url"],
                        "content_type": "image/jpeg",
                    },
                },
            )
            assert sent.status_code == 201, sent.text
            stored = sent.json()
            assert stored["metadata"]["width"] == 640
            assert stored["metadata"]["height"] == 480
            assert stored["metadata"]["size_bytes"] == len(data)
            assert stored["metadata"]["status"] == "processing"

            # 4. Bob, online, gets the event within a second ...
            event = json.loads(await asyncio.wait_for(bob_socket.recv(), 1.0))
            assert event["type"] == "message.created"
            assert event["conversationId"] == cid
            assert event["message"] == stored

            # 4b. ... then, once the media processor sanitized it, message.updated with the full message.
            updated = json.loads(await asyncio.wait_for(bob_socket.recv(), 30))
            assert updated["type"] == "message.updated"
            assert updated["conversationId"] == cid
            ready = updated["message"]
            assert ready["messageId"] == stored["messageId"]
            assert ready["metadata"]["status"] == "ready"
            assert ready["metadata"]["blurhash"]
            assert set(ready["metadata"]["variants"]) == {"thumbnail", "preview"}

        # 5. ... and Carol, offline, exactly one push (Bob none: he was online).
        async with asyncio.timeout(20):
            while not webhook.accepted():
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a duplicate or a push to Bob would arrive in this time
        pushes = webhook.accepted()
        assert [p.json["deviceToken"] for p in pushes] == ["carol-phone-1"]
        push = pushes[0]
        timestamp = push.headers["x-chat-timestamp"]
        expected = hmac.new(webhook.secret.encode(), f"{timestamp}.".encode() + push.body, hashlib.sha256)
        assert push.headers["x-chat-signature"] == f"sha256={expected.hexdigest()}"
        assert push.json["userId"] == "carol"
        assert push.json["data"]["messageId"] == stored["messageId"]

        # 6. The proxy serves the sanitized original to a member (redirect to a signed GET), and the
        # thumbnail; never anything to a stranger.
        await preflight(http, grant["file_url"], "GET", "authorization")
        viewed = await http.get(grant["file_url"], headers=auth_header("carol"), follow_redirects=True)
        assert viewed.status_code == 200
        assert viewed.headers["content-type"] == "image/jpeg"
        assert "immutable" in viewed.headers["cache-control"]
        assert len(viewed.content) == ready["metadata"]["size_bytes"]
        assert Image.open(io.BytesIO(viewed.content)).size == (640, 480)
        thumbnail = ready["metadata"]["variants"]["thumbnail"]
        small = await http.get(thumbnail["url"], headers=auth_header("carol"), follow_redirects=True)
        assert (
            Image.open(io.BytesIO(small.content)).size
            == (thumbnail["width"], thumbnail["height"])
            == (320, 240)
        )
        stranger = await http.get(grant["file_url"], headers=auth_header("mallory"))
        assert stranger.status_code == 404

        # 7. The list shows it as the event did.
        listed = await call(http, "GET", f"{message}/conversations/{cid}/messages", "carol")
        assert listed.json()["items"][0] == ready


async def test_every_service_is_ready_and_exports_metrics(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for name, service in stack.services.items():
            ready = await http.get(f"{service.url}/readyz")
            assert ready.status_code == 200, (name, ready.text)
            scrape = await http.get(f"{service.url}/metrics")
            assert "chat_http_requests_total" in scrape.text, name
