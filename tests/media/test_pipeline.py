"""The media pipeline end to end over HTTP, on local disk and on S3 (LocalStack), with SQLite stores.

upload URL -> PUT -> send (201 ``processing``) -> media job through the outbox -> the media processor ->
``message.updated`` on the bus -> the proxy serves the sanitized bytes. Failures have a reason and are
never a 500; an overwrite after the send is never served; a redelivered job changes nothing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

import blurhash
import msgspec
import pytest
from PIL import Image

import media_processor.app
from chat_core import keys
from chat_core.media_jobs import MediaJob, ObjectCreated
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import Envelope, decode_envelope
from media_processor.worker import MediaWorker
from tests.conftest import auth_header
from tests.image_stack import ImageStack, Uploaded
from tests.media import corpus
from tests.media.inspect import close, metadata_left, pixel

MakeStack = Callable[..., Awaitable[ImageStack]]


def _path(stack: ImageStack, url: str) -> str:
    return url.removeprefix(stack.base_url)


async def _served(stack: ImageStack, url: str, user: str = "alice") -> bytes:
    response = await stack.http.get(_path(stack, url), headers=auth_header(user))
    assert response.status_code == 302, response.text
    target = await stack.http.get(response.headers["location"])
    assert target.status_code == 200
    assert "immutable" in target.headers["cache-control"]
    return target.content


class Events:
    """``message.updated`` envelopes published on one conversation's channel."""

    def __init__(self) -> None:
        self.updated: list[Envelope] = []
        self.arrived = asyncio.Event()

    def __call__(self, _channel: str, payload: bytes) -> None:
        envelope = decode_envelope(payload)
        if envelope is not None and envelope.type == "message.updated":
            self.updated.append(envelope)
            self.arrived.set()


async def _listen(stack: ImageStack, conversation_id: str) -> Events:
    events = Events()
    await stack.backends.event_bus.subscribe([conversation_channel(conversation_id)], events)
    return events


async def test_a_photo_is_sanitized_turned_and_announced(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    events = await _listen(stack, cid)
    uploaded = await stack.upload("alice", cid, corpus.jpeg_oriented(6), "image/jpeg")
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201
    at_send = sent.json()["metadata"]
    # Orientation 6: stored 400x300, every viewer shows 300x400.
    assert (at_send["status"], at_send["width"], at_send["height"]) == ("processing", 300, 400)
    await asyncio.wait_for(events.arrived.wait(), 30)
    message = events.updated[0].message
    assert message is not None
    assert message.message_id == sent.json()["messageId"]
    metadata = message.metadata
    assert metadata is not None
    assert metadata.status == "ready"
    original = await _served(stack, metadata.url, "bob")
    assert metadata_left(original, "image/jpeg") == []
    for secret in corpus.SECRETS:
        assert secret not in original
    shown = Image.open(io.BytesIO(original))
    assert shown.size == (300, 400) == (metadata.width, metadata.height)
    assert metadata.size_bytes == len(original)
    assert close(pixel(original, 10, 10), corpus.RED)
    assert close(pixel(original, 290, 390), corpus.GREY)
    assert metadata.variants is not None
    for name, edge in (("thumbnail", 320), ("preview", 1280)):
        variant = getattr(metadata.variants, name)
        assert variant.url == f"{metadata.url}?variant={name}"
        served = await _served(stack, variant.url, "bob")
        image = Image.open(io.BytesIO(served))
        assert image.size == (variant.width, variant.height)
        assert max(image.size) <= edge
        assert variant.size_bytes == len(served)
        assert metadata_left(served, variant.content_type) == []
    assert metadata.blurhash is not None
    assert blurhash.components(metadata.blurhash) in ((3, 4), (4, 3))
    blurhash.decode(metadata.blurhash, 8, 8)
    # The raw upload held what was stripped: it is gone.
    assert await stack.raw_gone(cid, uploaded.object_key)
    # The stored message and the list say the same as the event.
    listed = await stack.http.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    assert listed.json()["items"][0]["metadata"] == msgspec.to_builtins(metadata)


async def test_a_retry_after_processing_returns_the_finished_message(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    uploaded = await stack.upload("alice", cid)
    sent = await stack.send("alice", cid, uploaded, clientMessageId="lost-201")
    assert sent.status_code == 201
    finished = await stack.finished(cid, sent.json()["messageId"])
    assert finished.metadata is not None
    assert finished.metadata.status == "ready"
    # The processor deleted the raw upload: only the message remembers it.
    assert await stack.raw_gone(cid, uploaded.object_key)
    retry = await stack.send("alice", cid, uploaded, clientMessageId="lost-201")
    assert retry.status_code == 200, retry.text
    assert retry.json() == msgspec.json.decode(msgspec.json.encode(finished))


async def test_heic_is_accepted_and_served_as_jpeg(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid, corpus.heic((640, 480)), "image/heic")
    assert image.message is not None
    assert image.message.metadata is not None
    assert image.message.metadata.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(image.data)).format == "JPEG"
    assert (await _served(stack, image.file_url)) == image.data


async def test_a_header_declaring_a_bomb_is_refused_at_send(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    uploaded = await stack.upload("alice", cid, corpus.png_declaring(100_000, 100_000), "image/png")
    response = await stack.send("alice", cid, uploaded)
    assert response.status_code == 422
    assert response.json()["code"] == "too_many_pixels"


async def test_a_truncated_image_fails_with_its_reason_and_is_never_served(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    events = await _listen(stack, cid)
    data = corpus.truncated(corpus.jpeg_oriented(1), 0.5)
    uploaded = await stack.upload("alice", cid, data, "image/jpeg")
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201
    message = await stack.finished(cid, sent.json()["messageId"])
    assert message.metadata is not None
    assert (message.metadata.status, message.metadata.error) == ("failed", "truncated")
    await asyncio.wait_for(events.arrived.wait(), 10)
    response = await stack.http.get(_path(stack, uploaded.file_url), headers=auth_header("alice"))
    assert response.status_code == 422
    assert (response.json()["code"], response.json()["reason"]) == ("image_unavailable", "truncated")
    # The raw upload is deleted last, after the event is out (a loaded machine may take a moment).
    assert await stack.raw_gone(cid, uploaded.object_key)


async def _put_again(stack: ImageStack, cid: str, uploaded: Uploaded, data: bytes) -> None:
    """A second PUT to the object the first one wrote (the upload URL may be reused until it expires)."""
    key = keys.stored_key(cid, uploaded.object_key)
    upload = stack.store.presign_put(
        key, content_type=uploaded.content_type, content_length=None, expires_in=60
    )
    for _attempt in range(3):  # as an S3 client does: a 500 InternalError is tried again
        # (LocalStack answers one now and then when this PUT meets the processor's DELETE of the key)
        put = await stack.http.put(upload.url, content=data, headers={"Content-Type": uploaded.content_type})
        if put.status_code != 500:
            break
        await asyncio.sleep(0.2)
    assert put.status_code == 200, put.text


async def test_an_overwrite_before_processing_fails_the_job_and_is_never_served(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"MEDIA_WAIT_SECONDS": "0.2"}, processor=False)
    cid = await stack.conversation("alice", "bob")
    uploaded = await stack.upload("alice", cid)
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201
    # Still processing: the proxy waits, then says so; the raw upload is never what it serves.
    waiting = await stack.http.get(_path(stack, uploaded.file_url), headers=auth_header("bob"))
    assert waiting.status_code == 503
    assert waiting.headers["retry-after"]
    await _put_again(stack, cid, uploaded, corpus.jpeg_oriented(3))
    worker = MediaWorker.from_ports(stack.backends.settings, media_processor.app.ports(stack.backends))
    async with worker.worker():
        message = await stack.finished(cid, sent.json()["messageId"])
    assert message.metadata is not None
    assert (message.metadata.status, message.metadata.error) == ("failed", "object_changed")
    response = await stack.http.get(_path(stack, uploaded.file_url), headers=auth_header("bob"))
    assert response.status_code == 422
    assert response.json()["reason"] == "object_changed"


async def test_an_overwrite_after_processing_is_never_served(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    await _put_again(stack, cid, image, corpus.jpeg_oriented(1))
    assert (await _served(stack, image.file_url, "bob")) == image.data
    if stack.kind == "local":  # the local store announces the upload: the processor deletes it at once
        assert await stack.raw_gone(cid, image.object_key, timeout=5)


async def test_a_redelivered_job_writes_nothing_and_announces_nothing(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    assert image.message is not None
    metadata = image.message.metadata
    assert metadata is not None
    events = await _listen(stack, cid)
    key = keys.derivative_key(cid, image.message.message_id, "original", metadata.content_type)
    before = await stack.store.head(key)
    job = MediaJob(
        message_id=image.message.message_id,
        conversation_id=cid,
        object_key=keys.stored_key(cid, image.object_key),
        object_etag='"whatever-was-verified"',
    )
    worker = MediaWorker.from_ports(stack.backends.settings, media_processor.app.ports(stack.backends))
    assert await worker.process(job) == "skipped"
    await stack.backends.media_queue.send([job])  # and through the running processor
    await asyncio.sleep(1.0)
    assert events.updated == []
    assert await stack.store.head(key) == before
    stored = await stack.backends.messages.get_message(cid, image.message.message_id)
    assert stored == image.message


async def test_a_refused_upload_waits_out_its_grace_outside_the_job(make_stack: MakeStack) -> None:
    # The job is done at once, so refused uploads never hold the runner's slots the images need.
    stack = await make_stack(processor=False)
    cid = await stack.conversation("alice")
    worker = MediaWorker.from_ports(stack.backends.settings, media_processor.app.ports(stack.backends))
    raws = []
    for _ in range(3):
        object_key = keys.new_object_key("alice", "image/png")
        raw = keys.stored_key(cid, object_key)
        await stack.store.put(raw, b"<html>not an image</html>", content_type="image/png")
        info = await stack.store.head(raw)
        assert info is not None
        assert await worker.check_upload(ObjectCreated(raw, info.size, info.etag)) == "not_an_image"
        raws.append(raw)
    assert worker.refusals_pending == 3
    for raw in raws:  # still there: a send right now gets its 422 from its own check
        assert await stack.store.head(raw) is not None
    async with worker.worker():  # stopping waits for the refusals' grace, then nothing is pending
        pass
    assert worker.refusals_pending == 0
    for raw in raws:
        assert await stack.store.head(raw) is None
        assert await stack.store.head(keys.refusal_key(raw)) is not None


async def test_a_non_image_upload_is_deleted_on_arrival(make_stack: MakeStack) -> None:
    stack = await make_stack()
    if stack.kind != "local":
        pytest.skip("S3 announces uploads through the bucket notification `chat-management setup` makes")
    cid = await stack.conversation("alice")
    uploaded = await stack.upload("alice", cid, b"<html>not an image</html>", "image/png")
    raw = keys.stored_key(cid, uploaded.object_key)
    # A send right after the upload still gets the reason (the deletion waits a few seconds).
    right_away = await stack.send("alice", cid, uploaded)
    assert (right_away.status_code, right_away.json()["code"]) == (422, "not_an_image")
    for _ in range(300):
        if await stack.store.head(raw) is None:
            break
        await asyncio.sleep(0.05)
    assert await stack.store.head(raw) is None
    # Deleted, but a later send still learns why (the processor's note), not a bare 404.
    response = await stack.send("alice", cid, uploaded)
    assert (response.status_code, response.json()["code"]) == (422, "not_an_image"), response.text


async def test_an_unknown_variant_is_400(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    response = await stack.http.get(
        _path(stack, image.file_url) + "?variant=raw", headers=auth_header("alice")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_variant"
