"""No token, signature, device token or message text in any log line, at any level.

The suite's main flows run against the all-in-one app under a real uvicorn (embedded stack, and the cloud
stack: Redis, SQS and S3 on LocalStack, the Firestore emulator) with every log captured at DEBUG:
structlog, the standard library's loggers, the audit trail and uvicorn's own lines, its access log
included (turned on here although the services turn it off). Then the capture is searched for every
secret and text the test minted: tokens (dev sign-in and others), the socket's ``access_token``, push
device tokens, the signatures of the upload and download URLs, and message texts. Zero hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chat_core.auth import mint_token
from chat_core.composition import Composition
from chat_core.logging import HandshakeRefusals, configure_logging
from chat_core.redaction import redact_text
from chat_management import all as all_in_one
from tests import harness
from tests.conftest import make_settings, token_for, unique
from tests.image_stack import image_bytes

SIGNATURE_PARAMS = {"signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}


@contextlib.asynccontextmanager
async def _served_on(app: Any, port: int) -> AsyncIterator[str]:
    """The app under uvicorn with its access log on (the services turn it off; here it must be clean too)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_config=None,
        access_log=True,
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Minted:
    """Everything secret or private this run created, to be searched for in the logs."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, name: str, value: str) -> str:
        assert len(value) >= 8, (name, value)
        self.values[name] = value
        return value

    def add_url_signatures(self, name: str, url: str) -> None:
        for key, value in parse_qsl(urlsplit(url).query):
            if key.lower() in SIGNATURE_PARAMS:
                self.add(f"{name}:{key}", value)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _next_of(socket: ClientConnection, kind: str, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await socket.recv())
            if event.get("type") == kind:
                return dict(event)


async def _main_flows(base: str, minted: Minted, stream: io.BytesIO) -> None:
    ws = base.replace("http://", "ws://", 1) + "/ws?access_token="
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        alice = minted.add(
            "dev token", (await http.post("/dev/token", json={"userId": "alice"})).json()["token"]
        )
        bob = minted.add("bob's token", token_for("bob"))
        carol = minted.add("carol's token", token_for("carol"))
        device = minted.add("carol's device token", f"fcm:{secrets.token_urlsafe(24)}")
        registered = await http.put(
            f"/me/devices/{quote(device, safe='')}", json={"platform": "android"}, headers=_bearer(carol)
        )
        assert registered.status_code == 200, registered.text

        async with connect(ws + quote(bob, safe=""), proxy=None) as socket:
            await _next_of(socket, "session.ready")
            created = await http.post(
                "/conversations", json={"participantIds": ["bob", "carol"]}, headers=_bearer(alice)
            )
            assert created.status_code == 201, created.text
            cid = created.json()["conversationId"]
            text = minted.add("a text message", f"meet me at the old mill {uuid.uuid4().hex[:8]}")
            sent = await http.post(
                f"/conversations/{cid}/messages",
                json={"messageType": "text", "content": text, "clientMessageId": "t-1"},
                headers=_bearer(alice),
            )
            assert sent.status_code == 201, sent.text

            issued = await http.post(
                f"/conversations/{cid}/images/upload_url",
                json={"content_type": "image/jpeg"},
                headers=_bearer(alice),
            )
            assert issued.status_code == 200, issued.text
            upload = issued.json()
            minted.add_url_signatures("upload URL", upload["upload_url"])
            put = await http.put(
                upload["upload_url"], content=image_bytes(), headers={"Content-Type": "image/jpeg"}
            )
            assert put.status_code == 200, put.text
            caption = minted.add("a caption", f"the key is under the mat {uuid.uuid4().hex[:8]}")
            image = await http.post(
                f"/conversations/{cid}/messages",
                json={
                    "messageType": "image",
                    "content": caption,
                    "clientMessageId": "i-1",
                    "metadata": {"object_key": upload["object_key"], "content_type": "image/jpeg"},
                },
                headers=_bearer(alice),
            )
            assert image.status_code == 201, image.text
            message_id = image.json()["messageId"]
            async with asyncio.timeout(60):
                while True:
                    event = await _next_of(socket, "message.updated")
                    if event["message"]["messageId"] == message_id:
                        break
            served = await http.get(upload["file_url"], headers=_bearer(bob))
            assert served.status_code == 302, served.text
            minted.add_url_signatures("download URL", served.headers["location"])
            assert (await http.get(served.headers["location"])).status_code == 200
            read = await http.post(f"/conversations/{cid}/messages/{message_id}/read", headers=_bearer(bob))
            assert read.status_code == 200, read.text

        # Refused: a bad token on the API and on the socket, and sockets past the connect limit.
        forged = minted.add("a forged token", mint_token("x" * 40, "mallory"))
        assert (await http.get("/conversations", headers=_bearer(forged))).status_code == 401
        with contextlib.suppress(ConnectionClosed):
            async with connect(ws + quote(forged, safe=""), proxy=None) as refused:
                await refused.recv()
        dave = minted.add("dave's token", token_for("dave"))
        for _ in range(4):
            with contextlib.suppress(InvalidStatus, ConnectionClosed):
                async with connect(ws + quote(dave, safe=""), proxy=None) as socket:
                    await _next_of(socket, "session.ready")

        # carol was offline: her pushes go through the log provider.
        async with asyncio.timeout(60):
            while b'"event":"push"' not in stream.getvalue():
                await asyncio.sleep(0.2)
        removed = await http.delete(f"/me/devices/{quote(device, safe='')}", headers=_bearer(carol))
        assert removed.status_code == 204


@pytest.fixture
def capture() -> Any:
    stream = io.BytesIO()
    configure_logging("DEBUG", service="test", stream=stream, cache=False)
    logging.getLogger("uvicorn.access").disabled = False  # on, to prove it clean too
    yield stream
    configure_logging("INFO", cache=False)


def _cloud_env(request: pytest.FixtureRequest) -> dict[str, str]:
    redis: harness.Backend = request.getfixturevalue("redis_backend")
    localstack: harness.Backend = request.getfixturevalue("localstack")
    emulator: harness.Backend = request.getfixturevalue("firestore_emulator")
    name = unique("logs")
    return {
        "EVENT_BUS": "redis",
        "REDIS_URL": redis.address,
        "LIMIT_STORE": "redis",
        "LIMIT_KEY_PREFIX": name,
        "NOTIFICATION_QUEUE": "sqs",
        "SQS_QUEUE_NAME": name,
        "SQS_DLQ_NAME": name + "-dlq",
        "SQS_WAIT_SECONDS": "1",
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": name,
        "AWS_ENDPOINT_URL": localstack.address,
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_PROJECT_ID": request.getfixturevalue("firestore_project"),
        "FIRESTORE_EMULATOR_HOST": emulator.address,
    }


@pytest.mark.parametrize(
    "stack",
    [
        "embedded",
        pytest.param("cloud", marks=[pytest.mark.redis, pytest.mark.localstack, pytest.mark.firestore]),
    ],
)
async def test_a_run_of_the_main_flows_logs_no_secret_and_no_message_text(
    request: pytest.FixtureRequest, tmp_path: Path, capture: io.BytesIO, stack: str
) -> None:
    port = harness.free_port()
    env: Mapping[str, str] = {
        "DEV_LOGIN": "true",
        "PUSH_PROVIDER": "log",
        "LOG_LEVEL": "DEBUG",
        "ACCESS_LOG": "true",
        "RATE_LIMIT_SOCKET_CONNECTS": "2/minute",
        "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PORT": str(port),
        **(_cloud_env(request) if stack == "cloud" else {}),
    }
    settings = make_settings(tmp_path, env)
    backends = Composition(settings)
    app = all_in_one.create_app(settings, backends)
    minted = Minted()
    if stack == "cloud":
        await harness.provision(settings)  # the bucket and the queues, as `chat-management setup` makes them
    async with _served_on(app, port) as base:
        await _main_flows(base, minted, capture)
    logged = capture.getvalue().decode("utf-8", "replace")
    lines = [json.loads(line) for line in logged.splitlines()]
    # The capture saw what it must: uvicorn's socket lines and access lines, ours, the audit, the push.
    events = {str(line.get("event", "")) for line in lines}
    assert any("WebSocket /ws?access_token=[redacted]" in event for event in events), sorted(events)[:50]
    assert any("/me/devices/" in str(line.get("route")) for line in lines), {
        line.get("route") for line in lines
    }
    assert "push" in events
    assert any(line.get("audit") for line in lines)
    assert sum(":" in name for name in minted.values) >= 2  # the upload's and the download's signatures
    # As minted, and as it would appear in a URL.
    forms = {name: {value, quote(value, safe=""), quote(value)} for name, value in minted.values.items()}
    leaks = {name for name, values in forms.items() if any(form in logged for form in values)}
    leaking = [line for line in logged.splitlines() if any(f in line for n in leaks for f in forms[n])]
    assert leaks == set(), leaking[:5]
    # A refused handshake is INFO at most: nobody gets paged because a client was turned away.
    assert not [line for line in lines if line.get("level") in ("error", "critical")], [
        line for line in lines if line.get("level") in ("error", "critical")
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '127.0.0.1:1 - "WebSocket /ws?access_token=eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl" [accepted]',
            '127.0.0.1:1 - "WebSocket /ws?access_token=[redacted]" [accepted]',
        ),
        (
            "/_storage/k?method=GET&expires=1&signature=abcdef0123",
            "/_storage/k?method=GET&expires=1&signature=[redacted]",
        ),
        (
            "https://b.s3/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&X-Amz-Date=1",
            "https://b.s3/k?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&X-Amz-Date=1",
        ),
        ("PUT /me/devices/fcm%3Aabcdefgh HTTP/1.1", "PUT /me/devices/[redacted] HTTP/1.1"),
        ("authorization: Bearer abc.def.ghi", "authorization: Bearer [redacted]"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig in a traceback", "token [redacted] in a traceback"),
        ("/conversations/c1/messages?limit=20&before=abc", "/conversations/c1/messages?limit=20&before=abc"),
    ],
)
def test_credentials_are_masked_wherever_they_appear(line: str, expected: str) -> None:
    assert redact_text(line) == expected


def test_refused_handshakes_are_info_at_most_and_rate_limited() -> None:
    refusals = HandshakeRefusals(per_minute=10)
    passed = []
    for _ in range(50):
        record = logging.LogRecord(
            "uvicorn.error",
            logging.WARNING,
            __file__,
            1,
            '%s - "WebSocket %s" %d',
            ("1.2.3.4:5", "/ws", 429),
            None,
        )
        if refusals.filter(record):
            passed.append(record)
    assert len(passed) == 10
    assert {record.levelno for record in passed} == {logging.INFO}
    # uvicorn's false alarm after a denial response, on the same connection: dropped.
    false_alarm = logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "ASGI callable returned without completing handshake.",
        (),
        None,
    )
    assert refusals.filter(false_alarm) is False
