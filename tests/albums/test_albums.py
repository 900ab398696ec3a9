"""Albums and the gallery over real HTTP, on the embedded stack (SQLite, local disk) and the cloud one
(Firestore emulator, S3 on LocalStack): upload, message and image-proxy services and the media processor
in one app under uvicorn.

An album's images are verified side by side and stored whole or not at all; each image is processed by
its own media job (own status, variants, BlurHash, ``message.updated`` naming its ``index``); the gallery
lists one item per image, newest message first; unsending an album deletes every image's bytes.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import image_proxy.app
import media_processor.app
import message_service.app
import upload_service.app
from chat_core import keys
from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from chat_core.realtime import conversation_channel
from tests import harness
from tests.conftest import auth_header, make_settings, unique

COLOURS = ((200, 30, 90), (20, 160, 60), (30, 60, 220), (240, 200, 10))
_buckets_ready: set[str] = set()


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


class Albums:
    def __init__(self, http: httpx.AsyncClient, backends: Composition) -> None:
        self.http = http
        self.backends = backends

    async def conversation(self, owner: str, *others: str) -> str:
        response = await self.http.post(
            "/conversations", json={"participantIds": list(others)}, headers=auth_header(owner)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["conversationId"])

    async def upload(self, user: str, cid: str, data: bytes) -> str:
        """The client's upload: an upload URL, then a PUT of the bytes to it; the object_key."""
        issued = await self.http.post(
            f"/conversations/{cid}/images/upload_url",
            json={"content_type": "image/jpeg"},
            headers=auth_header(user),
        )
        assert issued.status_code == 200, issued.text
        body = issued.json()
        put = await self.http.put(body["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
        assert put.status_code == 200, put.text
        return str(body["object_key"])

    async def send(self, user: str, cid: str, object_keys: list[str], **extra: Any) -> httpx.Response:
        images = [{"object_key": key, "content_type": "image/jpeg"} for key in object_keys]
        return await self.http.post(
            f"/conversations/{cid}/messages",
            json={"messageType": "image", "metadata": {"images": images}, **extra},
            headers=auth_header(user),
        )

    async def album(self, user: str, cid: str, count: int, **extra: Any) -> dict[str, Any]:
        uploaded = [await self.upload(user, cid, photo(COLOURS[i % len(COLOURS)])) for i in range(count)]
        sent = await self.send(user, cid, uploaded, **extra)
        assert sent.status_code == 201, sent.text
        body: dict[str, Any] = sent.json()
        return body

    async def ready(self, user: str, cid: str, message_id: str) -> dict[str, Any]:
        """The message once every image of it is ready (or failed)."""
        async with asyncio.timeout(60):
            while True:
                listed = await self.http.get(f"/conversations/{cid}/messages", headers=auth_header(user))
                message: dict[str, Any] = next(
                    m for m in listed.json()["items"] if m["messageId"] == message_id
                )
                if all(image["status"] != "processing" for image in message["metadata"]["images"]):
                    return message
                await asyncio.sleep(0.1)

    async def gallery(self, user: str, cid: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"/conversations/{cid}/images", params=params, headers=auth_header(user))


@pytest.fixture(scope="session")
def album_bucket() -> str:
    return unique("albums")


@pytest.fixture(
    params=["embedded", pytest.param("cloud", marks=[pytest.mark.firestore, pytest.mark.localstack])]
)
def stack_env(request: pytest.FixtureRequest, album_bucket: str) -> dict[str, str]:
    if request.param == "embedded":
        return {"MESSAGE_STORE": "sqlite", "OBJECT_STORE": "local"}
    localstack: harness.Backend = request.getfixturevalue("localstack")
    return {
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_PROJECT_ID": request.getfixturevalue("firestore_project"),
        "FIRESTORE_EMULATOR_HOST": request.getfixturevalue("firestore_emulator").address,
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": album_bucket,
        "AWS_ENDPOINT_URL": localstack.address,
    }


@pytest.fixture
async def albums(tmp_path: Path, stack_env: dict[str, str], serve: Any) -> AsyncIterator[Albums]:
    port = harness.free_port()
    backends = Composition(make_settings(tmp_path, {"PORT": str(port), "MEDIA_WORKERS": "2", **stack_env}))
    settings = backends.settings
    parts = [
        module.build(settings, module.ports(backends))
        for module in (upload_service.app, message_service.app, image_proxy.app, media_processor.app)
    ]
    app = create_service_app(settings, backends, parts, component="albums", title="albums")
    base_url = await serve(app, port)
    if settings.backends.object_store == "s3" and settings.s3.bucket not in _buckets_ready:
        await harness.provision(settings)
        _buckets_ready.add(settings.s3.bucket)
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as http:
        yield Albums(http, backends)


async def test_an_album_of_three_is_stored_in_order_and_each_image_gets_ready_on_its_own(
    albums: Albums,
) -> None:
    cid = await albums.conversation("alice", "bob")
    updated: list[dict[str, Any]] = []
    subscription = await albums.backends.event_bus.subscribe(
        [conversation_channel(cid)], lambda _channel, payload: updated.append(json.loads(payload))
    )
    uploaded = [await albums.upload("alice", cid, photo(colour)) for colour in COLOURS[:3]]

    sent = await albums.send("alice", cid, uploaded, content="the trip", clientMessageId="trip-1")

    assert sent.status_code == 201, sent.text
    body = sent.json()
    assert body["messageType"] == "image"
    assert [image["object_key"] for image in body["metadata"]["images"]] == uploaded
    assert {image["status"] for image in body["metadata"]["images"]} == {"processing"}
    # A client that knows one image only sees the album's first photo.
    assert body["metadata"]["object_key"] == uploaded[0]
    message = await albums.ready("bob", cid, body["messageId"])
    images = message["metadata"]["images"]
    assert [image["status"] for image in images] == ["ready"] * 3
    assert len({image["blurhash"] for image in images}) == 3  # three colours, three BlurHashes
    for index, image in enumerate(images):
        thumbnail = image["variants"]["thumbnail"]
        assert thumbnail["url"] == f"{image['url']}?variant=thumbnail"
        served = await albums.http.get(thumbnail["url"], headers=auth_header("bob"), follow_redirects=True)
        assert served.status_code == 200
        pixel = Image.open(io.BytesIO(served.content)).convert("RGB").getpixel((5, 5))
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) < 40 for a, b in zip(pixel, COLOURS[index], strict=True)), (index, pixel)
    # One message.updated per image, each naming its index.
    async with asyncio.timeout(10):
        while len([e for e in updated if e["type"] == "message.updated"]) < 3:
            await asyncio.sleep(0.05)
    await subscription.close()
    assert sorted(e["index"] for e in updated if e["type"] == "message.updated") == [0, 1, 2]
    # The alt text of one image changes alone.
    edited = await albums.http.patch(
        f"/conversations/{cid}/messages/{body['messageId']}",
        json={"alt_text": "the boat", "index": 2},
        headers=auth_header("alice"),
    )
    assert edited.status_code == 200, edited.text
    assert [image["alt_text"] for image in edited.json()["metadata"]["images"]] == [None, None, "the boat"]
    # Forwarded whole: every image copied, ready at once, served in the other conversation.
    other = await albums.conversation("bob", "carol")
    forwarded = await albums.http.post(
        f"/conversations/{cid}/messages/{body['messageId']}/forward",
        json={"conversationId": other},
        headers=auth_header("bob"),
    )
    assert forwarded.status_code == 201, forwarded.text
    copies = forwarded.json()["metadata"]["images"]
    assert [image["blurhash"] for image in copies] == [image["blurhash"] for image in images]
    assert [image["status"] for image in copies] == ["ready"] * 3
    served = await albums.http.get(copies[2]["url"], headers=auth_header("carol"), follow_redirects=True)
    assert served.status_code == 200
    # A retry (the same clientMessageId) gets the stored album, not a second one.
    retried = await albums.send("alice", cid, uploaded, content="the trip", clientMessageId="trip-1")
    assert retried.status_code == 200, retried.text
    assert retried.json()["messageId"] == body["messageId"]
    listed = await albums.http.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    assert len(listed.json()["items"]) == 1


async def test_a_failing_image_fails_the_whole_album_and_names_its_index(albums: Albums) -> None:
    cid = await albums.conversation("alice", "bob")
    good = await albums.upload("alice", cid, photo(COLOURS[0]))
    html = await albums.upload("alice", cid, b"<!doctype html><html><body>not a photo</body></html>")
    other = await albums.upload("alice", cid, photo(COLOURS[1]))

    refused = await albums.send("alice", cid, [good, html, other])

    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "not_an_image"
    assert refused.json()["index"] == 1
    too_many = await albums.send("alice", cid, [good] * 11)
    assert too_many.status_code == 400
    assert too_many.json()["code"] == "too_many_images"
    twice = await albums.send("alice", cid, [good, other, good])
    assert twice.status_code == 400
    assert twice.json()["code"] == "duplicate_image"
    assert twice.json()["index"] == 2
    # Nothing was stored, and every image can still be sent.
    listed = await albums.http.get(f"/conversations/{cid}/messages", headers=auth_header("alice"))
    assert listed.json()["items"] == []
    assert (await albums.send("alice", cid, [good, other])).status_code == 201
    # An object already in an album cannot join another, and the other album's new image stays free.
    fresh = await albums.upload("alice", cid, photo(COLOURS[2]))
    reused = await albums.send("alice", cid, [fresh, other])
    assert reused.status_code == 409
    assert reused.json()["code"] == "object_already_used"
    assert (await albums.send("alice", cid, [fresh])).status_code == 201


async def test_the_gallery_lists_every_image_newest_first_without_deleted_ones(albums: Albums) -> None:
    cid = await albums.conversation("alice", "bob")
    first = await albums.album("alice", cid, 2)
    text = await albums.http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "text", "content": "nice"},
        headers=auth_header("bob"),
    )
    assert text.status_code == 201
    single_key = await albums.upload("bob", cid, photo(COLOURS[3]))
    single = await albums.http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "image", "metadata": {"object_key": single_key, "content_type": "image/jpeg"}},
        headers=auth_header("bob"),
    )
    assert single.status_code == 201
    gone = await albums.album("alice", cid, 2)
    last = await albums.album("alice", cid, 3)
    deleted = await albums.http.delete(
        f"/conversations/{cid}/messages/{gone['messageId']}", headers=auth_header("alice")
    )
    assert deleted.status_code == 204

    seen: list[tuple[str, int]] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await albums.gallery("bob", cid, limit=2, **({"before": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        body = page.json()
        seen.extend((item["messageId"], item["index"]) for item in body["items"])
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break

    assert seen == [
        (last["messageId"], 0),
        (last["messageId"], 1),
        (last["messageId"], 2),
        (single.json()["messageId"], 0),
        (first["messageId"], 0),
        (first["messageId"], 1),
    ]
    assert pages == 3
    item = (await albums.gallery("alice", cid, limit=1)).json()["items"][0]
    assert set(item) == {"messageId", "index", "url", "width", "height", "blurhash", "status"} | {
        "senderId",
        "timestamp",
        "alt_text",
    }
    assert item["url"] == last["metadata"]["images"][0]["url"]
    stranger = await albums.gallery("mallory", cid)
    assert stranger.status_code == 404
    assert stranger.json()["code"] == "conversation_not_found"
    junk = await albums.gallery("bob", cid, before="not-a-cursor")
    assert junk.status_code == 400


async def test_unsending_an_album_deletes_every_image(albums: Albums) -> None:
    cid = await albums.conversation("alice", "bob")
    album = await albums.album("alice", cid, 3)
    await albums.ready("alice", cid, album["messageId"])
    store = albums.backends.object_store
    prefix = keys.derivative_prefix(cid, album["messageId"])
    assert len([info async for info in store.list(prefix)]) == 3 * len(keys.VARIANTS)

    deleted = await albums.http.delete(
        f"/conversations/{cid}/messages/{album['messageId']}", headers=auth_header("alice")
    )

    assert deleted.status_code == 204
    raws = [keys.stored_key(cid, image["object_key"]) for image in album["metadata"]["images"]]

    async def left() -> list[str]:
        derived = [info.key async for info in store.list(prefix)]
        return derived + [raw for raw in raws if await store.head(raw) is not None]

    # Every image's raw upload and derivatives go (one erasure per image: none may be left behind).
    async with asyncio.timeout(10):
        while await left():
            await asyncio.sleep(0.05)
    for image in album["metadata"]["images"]:
        served = await albums.http.get(image["url"], headers=auth_header("bob"))
        assert served.status_code == 404
        assert served.json()["code"] == "message_deleted"
