"""``POST /conversations/{cid}/messages/{messageId}/forward`` with real HTTP, on local disk and S3.

The source image gets there the way clients put it (upload URL, PUT, send, the media processor); the
forwarded one must be ready at once, served by the proxy from its own copies, with nothing re-processed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client import REGISTRY

from chat_core import keys
from chat_core.chatstore import Message
from tests.conftest import auth_header
from tests.image_stack import ImageStack, image_bytes

MakeStack = Callable[..., Awaitable[ImageStack]]


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _media_work() -> float:
    """Media jobs queued plus media jobs finished (any outcome): what a re-processing would move."""
    finished = sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "chat_media_jobs"
        for sample in metric.samples
        if sample.name == "chat_media_jobs_total"
    )
    return _sample("chat_media_jobs_queued_total") + finished


async def _forward(
    stack: ImageStack, user: str, source_cid: str, message_id: str, **body: Any
) -> httpx.Response:
    return await stack.http.post(
        f"/conversations/{source_cid}/messages/{message_id}/forward", json=body, headers=auth_header(user)
    )


async def _outbox_empty(stack: ImageStack) -> None:
    async with asyncio.timeout(10):
        while (await stack.backends.outbox.outbox_stats())[0]:
            await asyncio.sleep(0.05)


async def _bytes_via_proxy(stack: ImageStack, url: str, user: str) -> bytes:
    response = await stack.http.get(url.removeprefix(stack.base_url), headers=auth_header(user))
    assert response.status_code == 302, response.text
    target = await stack.http.get(response.headers["location"])
    assert target.status_code == 200
    return target.content


async def _shared(stack: ImageStack, user: str, cid: str) -> Message:
    image = await stack.share(user, cid, image_bytes(size=(320, 200)))
    assert image.message is not None
    await _outbox_empty(stack)
    return image.message


async def test_a_forwarded_image_is_ready_at_once_with_blurhash_and_thumbnails(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice", "bob")
    target_cid = await stack.conversation("bob", "carol")
    source = await _shared(stack, "alice", source_cid)
    assert source.metadata is not None
    before = _media_work()

    response = await _forward(stack, "bob", source_cid, source.message_id, conversationId=target_cid)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["forwarded"] is True
    assert body["senderId"] == "bob"
    assert body["readBy"] == ["bob"]
    metadata = body["metadata"]
    assert metadata["status"] == "ready"
    assert metadata["blurhash"] == source.metadata.blurhash
    assert source.metadata.variants is not None
    for variant in ("thumbnail", "preview"):
        assert metadata["variants"][variant]["width"] == getattr(source.metadata.variants, variant).width
    assert metadata["url"].startswith(f"{stack.base_url}/images/{target_cid}/images/bob/")
    # The target never learns where it came from.
    text = json.dumps(body)
    assert source_cid not in text
    assert source.message_id not in text
    assert source.metadata.object_key not in text
    # Served at once from its own copies, to a member of the target who cannot see the source.
    source_thumbnail = await _bytes_via_proxy(stack, source.metadata.variants.thumbnail.url, "alice")
    assert (
        await _bytes_via_proxy(stack, metadata["variants"]["thumbnail"]["url"], "carol") == source_thumbnail
    )
    original = (
        await stack.store.read(keys.derivative_key(source_cid, source.message_id, "original", "image/jpeg"))
    )[1]
    assert await _bytes_via_proxy(stack, metadata["url"], "carol") == original
    listed = await stack.http.get(f"/conversations/{target_cid}/messages", headers=auth_header("carol"))
    assert [item["messageId"] for item in listed.json()["items"]] == [body["messageId"]]
    # Nothing re-processed: no media job was queued or run for it.
    await _outbox_empty(stack)
    await asyncio.sleep(0.3)  # a job queued by mistake would have been picked up by now
    assert _media_work() == before


async def test_deleting_either_image_leaves_the_other_intact(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    source = await _shared(stack, "alice", source_cid)
    forwarded = (
        await _forward(stack, "alice", source_cid, source.message_id, conversationId=target_cid)
    ).json()
    source_prefix = keys.derivative_prefix(source_cid, source.message_id)
    forwarded_prefix = keys.derivative_prefix(target_cid, forwarded["messageId"])
    for info in [info async for info in stack.store.list(source_prefix)]:
        await stack.store.delete(info.key)
    assert await _bytes_via_proxy(stack, forwarded["metadata"]["variants"]["thumbnail"]["url"], "bob")
    # And the reverse: the source's bytes do not depend on the copy (forward again, delete the copy).
    again = await stack.share("alice", source_cid)
    assert again.message is not None
    copy = (
        await _forward(stack, "alice", source_cid, again.message.message_id, conversationId=target_cid)
    ).json()
    for info in [
        info async for info in stack.store.list(keys.derivative_prefix(target_cid, copy["messageId"]))
    ]:
        await stack.store.delete(info.key)
    assert again.message.metadata is not None
    assert await _bytes_via_proxy(stack, again.message.metadata.url, "alice") == again.data
    assert [info async for info in stack.store.list(forwarded_prefix)]


async def test_a_source_whose_bytes_were_deleted_is_message_deleted(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    source = await _shared(stack, "alice", source_cid)
    for info in [
        info async for info in stack.store.list(keys.derivative_prefix(source_cid, source.message_id))
    ]:
        await stack.store.delete(info.key)
    response = await _forward(stack, "alice", source_cid, source.message_id, conversationId=target_cid)
    assert response.status_code == 404
    assert response.json()["code"] == "message_deleted"
    listed = await stack.http.get(f"/conversations/{target_cid}/messages", headers=auth_header("bob"))
    assert listed.json()["items"] == []  # never a half-written message


async def test_an_unsent_source_is_message_deleted_and_its_copy_stays(stack: ImageStack) -> None:
    """Forward once, unsend the source: a second forward is 404 ``message_deleted``, the copy is intact."""
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    source = await _shared(stack, "alice", source_cid)
    first = await _forward(stack, "alice", source_cid, source.message_id, conversationId=target_cid)
    assert first.status_code == 201, first.text
    unsent = await stack.http.delete(
        f"/conversations/{source_cid}/messages/{source.message_id}", headers=auth_header("alice")
    )
    assert unsent.status_code == 204, unsent.text
    again = await _forward(stack, "alice", source_cid, source.message_id, conversationId=target_cid)
    assert again.status_code == 404, again.text
    assert again.json()["code"] == "message_deleted"
    copy = first.json()["metadata"]
    assert await _bytes_via_proxy(stack, copy["variants"]["thumbnail"]["url"], "bob")


async def test_the_caller_must_be_a_member_of_both_conversations(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice", "bob")
    theirs = await stack.conversation("carol", "dave")
    mine = await stack.conversation("bob", "mallory")
    source = await _shared(stack, "alice", source_cid)
    into_a_stranger = await _forward(stack, "bob", source_cid, source.message_id, conversationId=theirs)
    out_of_a_stranger = await _forward(stack, "mallory", source_cid, source.message_id, conversationId=mine)
    into_nowhere = await _forward(stack, "bob", source_cid, source.message_id, conversationId="nope")
    for response in (into_a_stranger, out_of_a_stranger, into_nowhere):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "conversation_not_found"
    unknown = await _forward(
        stack, "bob", source_cid, "0f8e4c2a-9b7d-4e11-8a3c-5d6e7f809112", conversationId=mine
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "message_not_found")


async def test_an_image_still_processing_is_not_ready_to_forward(make_stack: MakeStack) -> None:
    stack = await make_stack(processor=False)
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    uploaded = await stack.upload("alice", source_cid)
    sent = (await stack.send("alice", source_cid, uploaded)).json()
    response = await _forward(stack, "alice", source_cid, sent["messageId"], conversationId=target_cid)
    assert response.status_code == 409
    assert response.json()["code"] == "image_not_ready"


async def test_a_retry_with_the_same_client_message_id_returns_the_same_message(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    source = await _shared(stack, "alice", source_cid)
    first = await _forward(
        stack, "alice", source_cid, source.message_id, conversationId=target_cid, clientMessageId="f-1"
    )
    again = await _forward(
        stack, "alice", source_cid, source.message_id, conversationId=target_cid, clientMessageId="f-1"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    listed = await stack.http.get(f"/conversations/{target_cid}/messages", headers=auth_header("bob"))
    assert len(listed.json()["items"]) == 1


async def test_the_caption_is_kept_unless_the_forward_gives_one(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice")
    uploaded = await stack.upload("alice", source_cid)
    sent = await stack.http.post(
        f"/conversations/{source_cid}/messages",
        json={
            "messageType": "image",
            "content": "Check out this photo!",
            "metadata": {"object_key": uploaded.object_key, "content_type": "image/jpeg"},
        },
        headers=auth_header("alice"),
    )
    message_id = sent.json()["messageId"]
    await stack.finished(source_cid, message_id)
    kept = await _forward(stack, "alice", source_cid, message_id, conversationId=target_cid)
    replaced = await _forward(
        stack, "alice", source_cid, message_id, conversationId=target_cid, content="look"
    )
    assert kept.json()["content"] == "Check out this photo!"
    assert replaced.json()["content"] == "look"


async def test_a_text_message_can_be_forwarded_too(stack: ImageStack) -> None:
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice", "bob")
    sent = await stack.http.post(
        f"/conversations/{source_cid}/messages",
        json={"messageType": "text", "content": "see you at 8"},
        headers=auth_header("alice"),
    )
    response = await _forward(stack, "alice", source_cid, sent.json()["messageId"], conversationId=target_cid)
    assert response.status_code == 201
    body = response.json()
    assert (body["content"], body["messageType"], body["forwarded"], body["metadata"]) == (
        "see you at 8",
        "text",
        True,
        None,
    )


async def test_forwards_count_against_the_send_rate_limit_and_the_bytes_quota(make_stack: MakeStack) -> None:
    stack = await make_stack({"RATE_LIMIT_SENDS": "3/minute"})
    source_cid = await stack.conversation("alice")
    target_cid = await stack.conversation("alice")
    source = await _shared(stack, "alice", source_cid)  # one send
    statuses = [
        (await _forward(stack, "alice", source_cid, source.message_id, conversationId=target_cid)).status_code
        for _ in range(3)
    ]
    assert statuses == [201, 201, 429]

    tight = await make_stack({"UPLOAD_BYTES_PER_DAY": "60000"})
    source_cid = await tight.conversation("alice")
    target_cid = await tight.conversation("alice")
    image = await tight.share("alice", source_cid, image_bytes(size=(320, 200)))
    assert image.message is not None
    answers = []
    for _ in range(20):
        answer = await _forward(
            tight, "alice", source_cid, image.message.message_id, conversationId=target_cid
        )
        answers.append(answer)
        if answer.status_code != 201:
            break
    assert answers[-1].status_code == 429, [a.status_code for a in answers]
    assert answers[-1].json()["code"] == "quota_exceeded"
