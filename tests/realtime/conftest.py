"""Real-time and notifications end to end: real uvicorn servers, a websockets client, a webhook receiver.

Two deployments run the same tests:

* ``embedded``: the all-in-one app (what ``make run`` starts): in-process bus and presence, SQLite queue
  and store, the consumer worker inside the same process;
* ``distributed``: the message service and the notification consumer as two apps with their own
  backends, talking through Redis (bus, presence) and SQS on LocalStack.

Outage tests build a distributed deployment on a private Redis or a private LocalStack they may stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from chat_core.composition import Composition
from chat_core.settings import Settings
from chat_management import all as all_in_one
from message_service import app as message_app
from notification_consumer import app as consumer_app
from tests import harness
from tests.conftest import auth_header, make_settings, token_for, unique
from tests.consumer.receivers import WebhookReceiver

EVENT_TIMEOUT = 5.0
Serve = Callable[[Any], Awaitable[str]]


class Socket:
    """A websockets client connection that parses the JSON events."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def next_event(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        event: dict[str, Any] = msgspec.json.decode(raw)
        return event

    async def next_of(self, kind: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next event of type ``kind``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if event["type"] == kind:
                    return event

    async def send(self, event: Mapping[str, Any]) -> None:
        await self.connection.send(msgspec.json.encode(event).decode())


@dataclass
class Deployment:
    kind: str
    base_url: str
    http: httpx.AsyncClient
    receiver: WebhookReceiver
    settings: Settings
    message_backends: Composition  # the message service's (in embedded: everyone's)
    consumer_backends: Composition
    stack: contextlib.AsyncExitStack = field(repr=False, default_factory=contextlib.AsyncExitStack)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/ws"

    async def connect(self, user: str, *, via_query: bool = False) -> Socket:
        """An open socket of ``user``, subscribed (``session.ready`` received)."""
        socket = await self.open_socket(user, via_query=via_query)
        ready = await socket.next_event()
        assert ready["type"] == "session.ready", ready
        return socket

    async def open_socket(
        self, user: str | None, *, via_query: bool = False, token: str | None = None
    ) -> Socket:
        token = token or (token_for(user) if user else None)
        url, headers = self.ws_url, {}
        if token and via_query:
            url += f"?access_token={token}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        connection = await self.stack.enter_async_context(
            connect(url, additional_headers=headers, proxy=None, open_timeout=5, close_timeout=2)
        )
        return Socket(connection)

    async def create_conversation(self, owner: str, *others: str) -> str:
        response = await self.http.post(
            "/conversations", json={"participantIds": list(others)}, headers=auth_header(owner)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["conversationId"])

    async def send_text(self, user: str, conversation_id: str, content: str = "hello") -> httpx.Response:
        return await self.http.post(
            f"/conversations/{conversation_id}/messages",
            json={"content": content, "messageType": "text"},
            headers=auth_header(user),
        )

    async def register_device(self, user: str, token: str, platform: str = "android") -> None:
        response = await self.http.put(
            f"/me/devices/{token}", json={"platform": platform}, headers=auth_header(user)
        )
        assert response.status_code == 200, response.text

    async def queue_drained(self) -> bool:
        return await self.consumer_backends.notification_queue.depth() == (0, 0)

    async def wait_drained(self, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not await self.queue_drained():
                await asyncio.sleep(0.05)  # a queue's depth offers nothing to await


def _users(*names: str) -> list[str]:
    suffix = uuid.uuid4().hex[:6]
    return [f"{name}-{suffix}" for name in names]


@pytest.fixture
def users() -> Callable[..., list[str]]:
    """Fresh user ids per test (the shared Redis and LocalStack outlive a test)."""
    return _users


DeployFactory = Callable[..., Awaitable[Deployment]]


@pytest.fixture
async def deploy(serve: Serve, tmp_path: Path) -> AsyncIterator[DeployFactory]:
    """``await deploy(kind, env)`` -> a running deployment (``embedded`` or ``distributed``); ``ws``: the
    WebSocket protocol of its message service (default: the services' own)."""
    deployments: list[Deployment] = []

    async def make(kind: str, env: Mapping[str, str] | None = None, *, ws: Any = None) -> Deployment:
        receiver = WebhookReceiver()
        hook = await serve(receiver.app())
        base_env = {
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": f"{hook}/hook",
            "PUSH_WEBHOOK_SECRET": receiver.secret,
            "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
            "SQS_WAIT_SECONDS": "1",
            "SHUTDOWN_DRAIN_SECONDS": "2",
            **(env or {}),
        }
        settings = make_settings(tmp_path / uuid.uuid4().hex, base_env)
        await harness.provision(settings)
        if kind == "embedded":
            backends = Composition(settings)
            base_url = await serve(all_in_one.create_app(settings, backends), **({"ws": ws} if ws else {}))
            consumer_backends = backends
        else:
            backends = Composition(settings)
            base_url = await serve(message_app.create_app(settings, backends), **({"ws": ws} if ws else {}))
            consumer_backends = Composition(settings)
            await serve(consumer_app.create_app(settings, consumer_backends))
        deployment = Deployment(
            kind,
            base_url,
            httpx.AsyncClient(base_url=base_url),
            receiver,
            settings,
            backends,
            consumer_backends,
        )
        deployments.append(deployment)
        return deployment

    yield make
    for deployment in deployments:
        await deployment.stack.aclose()
        await deployment.http.aclose()


def distributed_env(redis_url: str, aws_endpoint: str) -> dict[str, str]:
    queue = unique("rt")
    return {
        "EVENT_BUS": "redis",
        "REDIS_URL": redis_url,
        "NOTIFICATION_QUEUE": "sqs",
        "AWS_ENDPOINT_URL": aws_endpoint,
        "SQS_QUEUE_NAME": queue,
        "SQS_DLQ_NAME": queue + "-dlq",
    }


@pytest.fixture(params=["embedded", "distributed"])
async def deployment(request: pytest.FixtureRequest, deploy: DeployFactory) -> Deployment:
    if request.param == "embedded":
        return await deploy("embedded")
    redis: harness.Backend = request.getfixturevalue("redis_backend")
    localstack: harness.Backend = request.getfixturevalue("localstack")
    return await deploy("distributed", distributed_env(redis.address, localstack.address))
