"""Requests for an image still processing wait on one poll of the store per image, and only so many wait.

The message store is the real SQLite one, seen through a counter of the reads the proxy makes of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.di import Provide

from chat_core import keys
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.chatstore import Conversation, ImageMetadata, Message, MessageStore
from chat_core.composition import Composition
from image_proxy.routes import get_image
from image_proxy.service import ImageProxy
from tests.conftest import auth_header, make_settings, running

MEMBERS = tuple(f"member{i:02d}" for i in range(40))


class CountedReads:
    """The real message store; counts ``image_message`` reads."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.reads = 0

    async def image_message(self, conversation_id: str, stored_key: str) -> Message | None:
        self.reads += 1
        return await self._store.image_message(conversation_id, stored_key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def _proxy_with_processing_image(
    tmp_path: Path, env: dict[str, str]
) -> tuple[Any, CountedReads, Composition, str, Message]:
    settings = make_settings(tmp_path, env)
    backends = Composition(settings)
    counted = CountedReads(backends.messages)
    proxy = ImageProxy(
        settings.images,
        settings.media,
        cookie_name=settings.auth.cookie_name,
        push_links=None,
        verifier=backends.verifier,
        store=backends.object_store,
        messages=counted,
        membership=backends.membership,
    )
    part = ServiceParts(
        component="image-proxy",
        route_handlers=[get_image],
        dependencies={"image_proxy": Provide(lambda: proxy, use_cache=True, sync_to_thread=False)},
        workers=[proxy.waits.running],
    )
    app = create_service_app(settings, backends, [part], component="image-proxy", title="image-proxy")
    cid = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    object_key = keys.new_object_key(MEMBERS[0], "image/jpeg")
    message = Message(
        message_id=str(uuid.uuid4()),
        content=None,
        message_type="image",
        sender_id=MEMBERS[0],
        timestamp=now,
        read_by=(MEMBERS[0],),
        metadata=ImageMetadata(
            object_key=object_key,
            url=f"https://chat.example/images/{cid}/{object_key}",
            content_type="image/jpeg",
            size_bytes=1000,
            status="processing",
        ),
    )
    return app, counted, backends, cid, message


async def _store(backends: Composition, cid: str, message: Message) -> None:
    now = dt.datetime.now(dt.UTC)
    await backends.conversations.create_conversation(
        Conversation(conversation_id=cid, participants=MEMBERS, name=None, created_at=now, updated_at=now)
    )
    assert message.metadata is not None
    stored = keys.stored_key(cid, message.metadata.object_key)
    await backends.messages.create_message(cid, message, object_key=stored, object_etag='"e"')


def _url(cid: str, message: Message) -> str:
    assert message.metadata is not None
    return f"/images/{cid}/{message.metadata.object_key}"


async def test_a_group_waiting_for_one_image_makes_one_store_read_per_interval(tmp_path: Path) -> None:
    app, counted, backends, cid, message = await _proxy_with_processing_image(
        tmp_path, {"MEDIA_WAIT_SECONDS": "1"}
    )
    async with running(app):
        await _store(backends, cid, message)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            responses = await asyncio.gather(
                *(client.get(_url(cid, message), headers=auth_header(member)) for member in MEMBERS)
            )
    assert {response.status_code for response in responses} == {503}
    assert {response.json()["code"] for response in responses} == {"image_processing"}
    # 0.1 s doubling to 1 s within a 1 s wait: reads at 0, 0.1, 0.3, 0.7 (and one more at most): the
    # same as one viewer alone, where each of the 40 used to make its own.
    assert counted.reads <= 6, counted.reads


async def test_waiters_see_the_image_as_soon_as_it_is_ready(tmp_path: Path) -> None:
    app, counted, backends, cid, message = await _proxy_with_processing_image(
        tmp_path, {"MEDIA_WAIT_SECONDS": "20"}
    )
    async with running(app):
        await _store(backends, cid, message)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            waiting = [
                asyncio.ensure_future(client.get(_url(cid, message), headers=auth_header(member)))
                for member in MEMBERS[:10]
            ]
            await asyncio.sleep(0.5)
            assert message.metadata is not None
            ready = msgspec.structs.replace(message.metadata, status="failed", error="decode_failed")
            await backends.messages.finish_image(cid, message.message_id, ready)
            responses = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert {response.json()["code"] for response in responses} == {"image_unavailable"}
    assert counted.reads <= 6, counted.reads


async def test_past_max_waiters_a_request_is_answered_at_once(tmp_path: Path) -> None:
    app, counted, backends, cid, message = await _proxy_with_processing_image(
        tmp_path, {"MEDIA_WAIT_SECONDS": "2", "MEDIA_MAX_WAITERS": "5"}
    )
    async with running(app):
        await _store(backends, cid, message)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            waiting = [
                asyncio.ensure_future(client.get(_url(cid, message), headers=auth_header(member)))
                for member in MEMBERS[:5]
            ]
            await asyncio.sleep(0.5)  # the five wait
            assert not any(task.done() for task in waiting)
            turned_away = await asyncio.wait_for(
                asyncio.gather(
                    *(client.get(_url(cid, message), headers=auth_header(m)) for m in MEMBERS[5:])
                ),
                1.0,  # answered at once: none of them waits the 2 s
            )
            waited = await asyncio.gather(*waiting)
    for response in [*turned_away, *waited]:
        assert response.status_code == 503
        assert response.json()["code"] == "image_processing"
        assert response.headers["retry-after"]
    assert all("too many requests wait" in response.json()["detail"] for response in turned_away)
    assert not any("too many" in response.json()["detail"] for response in waited)
    assert counted.reads <= 6, counted.reads  # those turned away read the poll's last answer


@pytest.mark.parametrize("env", [{"MEDIA_WAIT_SECONDS": "0"}], ids=["no_wait"])
async def test_without_a_wait_one_read_answers(tmp_path: Path, env: dict[str, str]) -> None:
    app, counted, backends, cid, message = await _proxy_with_processing_image(tmp_path, env)
    async with running(app):
        await _store(backends, cid, message)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            response = await client.get(_url(cid, message), headers=auth_header(MEMBERS[1]))
    assert response.status_code == 503
    assert counted.reads == 1
