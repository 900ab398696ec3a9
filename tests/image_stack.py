"""The upload, message and media-processor services and the image proxy on a real uvicorn, over one
object store adapter.

Used by ``tests/upload``, ``tests/proxy`` and ``tests/media``: each test gets a fresh app on its own port
(its ``PUBLIC_BASE_URL``), a SQLite message store and media queue, and either the local disk store (whose
signed links point at the app's own ``/_storage`` route) or S3 on LocalStack (signature validation on).
``share()`` is the whole client flow: upload, send, wait until the media processor finished the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from PIL import Image

import image_proxy.app
import media_processor.app
import message_service.app
import notification_consumer.app
import upload_service.app
from chat_core import keys
from chat_core.app_factory import create_service_app
from chat_core.chatstore import Conversation, Message
from chat_core.composition import Composition
from chat_core.objectstore import ObjectStore
from tests import harness
from tests.conftest import auth_header, make_settings, unique

KINDS = ("local", "s3")
_buckets_ready: set[str] = set()


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48)) -> bytes:
    """A real image, made by Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Uploaded:
    object_key: str
    file_url: str
    data: bytes  # what was uploaded; after share(): the sanitized original the proxy serves
    content_type: str
    message: Message | None = None  # after share(): the finished message


@dataclass
class ImageStack:
    kind: str
    base_url: str
    backends: Composition
    http: httpx.AsyncClient  # talks to the app (base_url) and to presigned URLs (absolute)
    app: Litestar | None = None

    @property
    def store(self) -> ObjectStore:
        return self.backends.object_store

    async def conversation(self, *members: str) -> str:
        conversation_id = uuid.uuid4().hex
        now = dt.datetime.now(dt.UTC)
        await self.backends.chat_store.create_conversation(
            Conversation(
                conversation_id=conversation_id,
                participants=members,
                name=None,
                created_at=now,
                updated_at=now,
            )
        )
        return conversation_id

    async def upload_url(
        self,
        user: str,
        conversation_id: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        return await self.http.post(
            f"/conversations/{conversation_id}/images/upload_url",
            json=dict(body),
            headers=auth_header(user) if headers is None else dict(headers),
        )

    async def upload(
        self, user: str, conversation_id: str, data: bytes | None = None, content_type: str = "image/jpeg"
    ) -> Uploaded:
        """The spec's client flow: ask for a URL, PUT the bytes to it."""
        data = image_bytes() if data is None else data
        response = await self.upload_url(user, conversation_id, {"content_type": content_type})
        assert response.status_code == 200, response.text
        issued = response.json()
        put = await self.http.put(issued["upload_url"], content=data, headers={"Content-Type": content_type})
        assert put.status_code == 200, put.text
        return Uploaded(issued["object_key"], issued["file_url"], data, content_type)

    async def send(self, user: str, conversation_id: str, image: Uploaded, **extra: Any) -> httpx.Response:
        return await self.http.post(
            f"/conversations/{conversation_id}/messages",
            json={
                "messageType": "image",
                "metadata": {"object_key": image.object_key, "content_type": image.content_type},
                **extra,
            },
            headers=auth_header(user),
        )

    async def finished(self, conversation_id: str, message_id: str, timeout: float = 30.0) -> Message:
        """The message once the media processor made it ready or failed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            message = await self.backends.messages.get_message(conversation_id, message_id)
            assert message is not None
            assert message.metadata is not None
            if message.metadata.status in ("ready", "failed"):
                return message
            assert asyncio.get_running_loop().time() < deadline, "the image was not processed in time"
            await asyncio.sleep(0.05)

    async def raw_gone(self, conversation_id: str, object_key: str, timeout: float = 10.0) -> bool:
        """Whether the raw upload is deleted within ``timeout``: the processor deletes it last, after
        the finished message is stored and announced, so a test that saw "ready" waits for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        key = keys.stored_key(conversation_id, object_key)
        while await self.store.head(key) is not None:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def share(
        self, user: str, conversation_id: str, data: bytes | None = None, content_type: str = "image/jpeg"
    ) -> Uploaded:
        """Upload, send and wait until ready: ``data`` is then the sanitized original served at url."""
        uploaded = await self.upload(user, conversation_id, data, content_type)
        sent = await self.send(user, conversation_id, uploaded)
        assert sent.status_code == 201, sent.text
        message = await self.finished(conversation_id, sent.json()["messageId"])
        assert message.metadata is not None
        assert message.metadata.status == "ready", message
        key = keys.derivative_key(
            conversation_id, message.message_id, "original", message.metadata.content_type
        )
        _info, original = await self.store.read(key)
        return Uploaded(uploaded.object_key, uploaded.file_url, original, content_type, message)


StackFactory = Callable[..., Awaitable[ImageStack]]


@contextlib.asynccontextmanager
async def stack_factory(
    tmp_path: Path, serve: Callable[..., Awaitable[str]], localstack: harness.Backend | None, bucket: str
) -> AsyncIterator[StackFactory]:
    """``await make(kind, env)`` -> an ImageStack; everything is closed when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            kind: str, env: Mapping[str, str] | None = None, *, processor: bool = True, consumer: bool = False
        ) -> ImageStack:
            port = harness.free_port()
            settings_env = {"PORT": str(port), **(env or {})}
            if kind == "s3":
                assert localstack is not None
                settings_env |= {
                    "OBJECT_STORE": "s3",
                    "S3_BUCKET_NAME": bucket,
                    "AWS_ENDPOINT_URL": localstack.address,
                }
            data_dir = tmp_path / uuid.uuid4().hex[:8]
            backends = Composition(make_settings(data_dir, settings_env))
            settings = backends.settings
            parts = [
                module.build(settings, module.ports(backends))
                for module in (upload_service.app, message_service.app, image_proxy.app)
            ]
            if processor:  # without: media jobs wait in the queue (a test runs MediaWorker by hand)
                parts.append(media_processor.app.build(settings, media_processor.app.ports(backends)))
            else:  # ports are asked for before start-up: the one a MediaWorker built later needs
                _ = backends.storage_ledger
            if consumer:  # the notification consumer too: pushes go to the PUSH_PROVIDER of ``env``
                parts.append(
                    notification_consumer.app.build(settings, notification_consumer.app.ports(backends))
                )
            app: Litestar = create_service_app(settings, backends, parts, component="images", title="images")
            base_url = await serve(app, port)
            if kind == "s3" and bucket not in _buckets_ready:
                await harness.provision(settings)
                _buckets_ready.add(bucket)
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=10, follow_redirects=False)
            )
            return ImageStack(kind, base_url, backends, http, app)

        yield make


# --- fixtures (conftest.py of tests/upload and tests/proxy import these) ------------------------------
@pytest.fixture(scope="session")
def image_bucket(localstack: harness.Backend) -> str:
    return unique("images")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.localstack)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_stack(
    request: pytest.FixtureRequest, store_kind: str, tmp_path: Path, serve: Any
) -> AsyncIterator[Callable[..., Awaitable[ImageStack]]]:
    """``await make_stack(env)`` -> the stack on this test's store kind, with extra settings."""
    localstack = request.getfixturevalue("localstack") if store_kind == "s3" else None
    bucket = request.getfixturevalue("image_bucket") if store_kind == "s3" else ""
    async with stack_factory(tmp_path, serve, localstack, bucket) as make:

        async def make_for_kind(
            env: Mapping[str, str] | None = None, *, processor: bool = True, consumer: bool = False
        ) -> ImageStack:
            return await make(store_kind, env, processor=processor, consumer=consumer)

        yield make_for_kind


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[ImageStack]]) -> ImageStack:
    """The stack with default settings (redirect mode) on this test's store kind."""
    return await make_stack()
