"""Sending, listing and reading messages over HTTP, on each MessageStore adapter.

Image objects are real files in the local-disk object store, written where an upload lands; the spec's
flow through a presigned URL to LocalStack is in ``test_spec_flow.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from chat_core import keys
from tests.conftest import auth_header
from tests.message.conftest import PUBLIC_BASE_URL, Chat, ChatFactory, image_bytes

SPEC_MESSAGE_FIELDS = {"messageId", "content", "messageType", "senderId", "timestamp", "readBy", "metadata"}
SPEC_METADATA_FIELDS = {"object_key", "url", "width", "height", "content_type", "size_bytes"}
# The media pipeline's, additive to the spec's (docs/api.md "Image metadata").
MEDIA_METADATA_FIELDS = {"status", "variants", "blurhash", "error"}
# The image's description (sent in metadata.alt_text, editable; null when there is none).
ALT_TEXT_FIELDS = {"alt_text"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- text -----------------------------------------------------------------------------------------
async def test_a_text_message_is_stored_with_exactly_the_specs_fields(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await chat.send_text("alice", cid, "hello bob")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == SPEC_MESSAGE_FIELDS
    assert body["content"] == "hello bob"
    assert body["messageType"] == "text"
    assert body["senderId"] == "alice"
    assert body["readBy"] == ["alice"]
    assert body["metadata"] is None
    uuid.UUID(body["messageId"])
    assert abs(dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(body["timestamp"])) < dt.timedelta(
        minutes=1
    )
    assert [m.message_id for m in await chat.messages("bob", cid)] == [body["messageId"]]


async def test_an_empty_text_message_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    for content in ("", "   \n"):
        response = await chat.send_text("alice", cid, content)
        assert response.status_code == 400
        assert response.json()["code"] == "empty_message"
    assert await chat.messages("alice", cid) == []


async def test_a_text_message_over_the_length_limit_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.send_text("alice", cid, "x" * 4001)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_a_text_message_with_image_metadata_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.send_text(
        "alice", cid, "hi", metadata={"object_key": "images/alice/x.jpg", "content_type": "image/jpeg"}
    )
    assert response.status_code == 400


async def test_an_unknown_message_type_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.client.post(
        f"/conversations/{cid}/messages",
        json={"content": "hi", "messageType": "video"},
        headers=auth_header("alice"),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


# --- images ---------------------------------------------------------------------------------------
async def test_an_image_message_stores_what_the_server_measured(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    data = image_bytes("JPEG", (640, 480))
    object_key = await chat.upload("alice", cid, data)
    response = await chat.send_image(
        "alice",
        cid,
        object_key,
        caption="Check out this photo!",
        metadata={
            "url": "https://bucket-name.s3.amazonaws.com/whatever.jpg",
            "width": 1,
            "height": 2,
            "size_bytes": 3,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == SPEC_MESSAGE_FIELDS
    assert set(body["metadata"]) == SPEC_METADATA_FIELDS | MEDIA_METADATA_FIELDS | ALT_TEXT_FIELDS
    assert body["content"] == "Check out this photo!"
    assert body["messageType"] == "image"
    assert body["metadata"] == {
        "object_key": object_key,
        "url": f"{PUBLIC_BASE_URL}/images/{cid}/{object_key}",
        "content_type": "image/jpeg",
        "size_bytes": len(data),
        "width": 640,
        "height": 480,
        "status": "processing",
        "variants": None,
        "blurhash": None,
        "error": None,
        "alt_text": None,
    }
    listed = await chat.messages("bob", cid)
    assert listed[0].metadata is not None
    assert (listed[0].metadata.width, listed[0].metadata.height) == (640, 480)


async def test_an_image_without_a_caption_has_no_content(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes("PNG", (10, 20)), "image/png")
    response = await chat.send_image("alice", cid, object_key, "image/png")
    assert response.status_code == 201
    assert response.json()["content"] is None
    assert (response.json()["metadata"]["width"], response.json()["metadata"]["height"]) == (10, 20)


async def test_each_accepted_type_is_verified_and_measured(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    for fmt, content_type in (("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/png")):
        object_key = await chat.upload("alice", cid, image_bytes(fmt, (33, 44)), content_type)
        response = await chat.send_image("alice", cid, object_key, content_type)
        assert response.status_code == 201, (fmt, response.text)
        assert response.json()["metadata"]["width"] == 33
        assert response.json()["metadata"]["height"] == 44


async def test_html_uploaded_as_jpeg_is_not_an_image(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    object_key = await chat.upload("alice", cid, html, "image/jpeg")
    before = sample("chat_image_messages_rejected_total", reason="not_an_image")
    response = await chat.send_image("alice", cid, object_key, "image/jpeg")
    assert response.status_code == 422
    assert response.json()["code"] == "not_an_image"
    assert sample("chat_image_messages_rejected_total", reason="not_an_image") == before + 1
    assert await chat.messages("alice", cid) == []


async def test_jpeg_bytes_declared_and_stored_as_png_are_not_an_image(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes("JPEG"), "image/png")
    response = await chat.send_image("alice", cid, object_key, "image/png")
    assert response.status_code == 422
    assert response.json()["code"] == "not_an_image"
    assert "JPEG" in response.json()["detail"]


async def test_a_stored_type_other_than_the_declared_one_is_a_mismatch(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes("PNG"), "image/png", key_type="image/jpeg")
    response = await chat.send_image("alice", cid, object_key, "image/jpeg")
    assert response.status_code == 422
    assert response.json()["code"] == "content_type_mismatch"


async def test_a_declared_type_other_than_the_uploaded_one_is_a_mismatch(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes("JPEG"), "image/jpeg")
    response = await chat.send_image("alice", cid, object_key, "image/png")
    assert response.status_code == 422
    assert response.json()["code"] == "content_type_mismatch"


async def test_a_key_from_another_conversation_is_refused(chat: Chat) -> None:
    mine = await chat.create_conversation("alice", "bob")
    other = await chat.create_conversation("alice", "carol")
    object_key = await chat.upload("alice", other, image_bytes())
    stored_form = await chat.send_image("alice", mine, f"{other}/{object_key}")
    assert stored_form.status_code == 403
    assert stored_form.json()["code"] == "object_not_in_conversation"
    file_url = f"{PUBLIC_BASE_URL}/images/{other}/{object_key}"
    with_url = await chat.send_image("alice", mine, object_key, metadata={"url": file_url})
    assert with_url.status_code == 403
    assert with_url.json()["code"] == "object_not_in_conversation"
    assert await chat.messages("alice", mine) == []


async def test_a_key_only_names_this_conversations_objects(chat: Chat) -> None:
    mine = await chat.create_conversation("alice", "bob")
    other = await chat.create_conversation("alice", "carol")
    object_key = await chat.upload("alice", other, image_bytes())
    response = await chat.send_image("alice", mine, object_key)  # resolved under `mine`: not there
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"


async def test_a_key_uploaded_by_another_member_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("bob", cid, image_bytes())
    response = await chat.send_image("alice", cid, object_key)
    assert response.status_code == 403
    assert response.json()["code"] == "object_not_yours"


async def test_a_missing_object_is_image_not_found(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.send_image("alice", cid, keys.new_object_key("alice", "image/jpeg"))
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"


def _age_upload(chat: Chat, cid: str, object_key: str, seconds: float) -> None:
    """Make a local-disk upload look ``seconds`` old (its mtime is the object's last-modified)."""
    path = Path(chat.settings.service.data_dir) / "objects" / keys.stored_key(cid, object_key)
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_an_upload_older_than_the_send_window_is_gone(chat: Chat) -> None:
    # Cleanup may delete it any moment (ORPHAN_GRACE_SECONDS = 24 h by default; the window is 23 h).
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    _age_upload(chat, cid, object_key, 23.5 * 3600)
    response = await chat.send_image("alice", cid, object_key)
    assert response.status_code == 410
    assert response.json()["code"] == "upload_expired"
    assert await chat.messages("alice", cid) == []


async def test_an_upload_inside_the_send_window_is_accepted(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    _age_upload(chat, cid, object_key, 22 * 3600)
    assert (await chat.send_image("alice", cid, object_key)).status_code == 201


async def test_an_image_over_the_size_limit_is_refused(make_chat: ChatFactory) -> None:
    chat = await make_chat({"MAX_IMAGE_BYTES": "2000"})
    cid = await chat.create_conversation("alice")
    data = image_bytes("PNG", (300, 300)) + b"\x00" * 2000
    object_key = await chat.upload("alice", cid, data, "image/png")
    response = await chat.send_image("alice", cid, object_key, "image/png")
    assert response.status_code == 413
    assert response.json()["code"] == "image_too_large"


async def test_an_svg_is_not_an_accepted_type(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.send_image("alice", cid, "images/alice/20240419-123456-x.svg", "image/svg+xml")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_image_type"


async def test_a_malformed_object_key_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    for bad in ("images/alice/../../etc/passwd.jpg", "/etc/passwd", f"{cid}/images/alice/x.jpg", "images/"):
        response = await chat.send_image("alice", cid, bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "invalid_object_key"


async def test_an_image_message_without_metadata_is_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    response = await chat.client.post(
        f"/conversations/{cid}/messages", json={"messageType": "image"}, headers=auth_header("alice")
    )
    assert response.status_code == 400


async def test_a_sent_image_is_counted_and_measured(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    sent = sample("chat_messages_sent_total", type="image")
    sizes = sample("chat_image_size_bytes_count")
    waits = sample("chat_image_upload_to_send_seconds_count")
    assert (await chat.send_image("alice", cid, object_key)).status_code == 201
    assert sample("chat_messages_sent_total", type="image") == sent + 1
    assert sample("chat_image_size_bytes_count") == sizes + 1
    assert sample("chat_image_upload_to_send_seconds_count") == waits + 1


# --- idempotency and one object, one message ------------------------------------------------------
async def test_the_same_client_message_id_twice_is_the_same_message(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("alice", cid, image_bytes())
    first = await chat.send_image("alice", cid, object_key, clientMessageId="c-1")
    retry = await chat.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert first.status_code == 201
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert [m.message_id for m in await chat.messages("alice", cid)] == [first.json()["messageId"]]
    assert [e.message_id for e in chat.events.created] == [first.json()["messageId"]]


async def test_a_retry_after_the_raw_upload_was_deleted_returns_the_stored_message(chat: Chat) -> None:
    # The media processor deletes the raw upload once the image is ready: the retry of a send whose
    # 201 was lost must still get the message, not "upload it again".
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("alice", cid, image_bytes())
    first = await chat.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert first.status_code == 201
    await chat.backends.object_store.delete(keys.stored_key(cid, object_key))
    retry = await chat.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert len(await chat.messages("alice", cid)) == 1
    assert len(chat.events.created) == 1


async def test_a_retry_on_another_replica_returns_the_stored_message(make_chat: ChatFactory) -> None:
    # Two app instances on one message store and one object store, as behind a load balancer.
    first_replica, second_replica = await make_chat(), await make_chat()
    cid = await first_replica.create_conversation("alice", "bob")
    object_key = await first_replica.upload("alice", cid, image_bytes())
    first = await first_replica.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert first.status_code == 201
    before_deletion = await second_replica.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert before_deletion.status_code == 200, before_deletion.text
    await first_replica.backends.object_store.delete(keys.stored_key(cid, object_key))
    after_deletion = await second_replica.send_image("alice", cid, object_key, clientMessageId="c-1")
    assert after_deletion.status_code == 200, after_deletion.text
    assert before_deletion.json() == after_deletion.json() == first.json()
    assert len(await second_replica.messages("bob", cid)) == 1
    assert second_replica.events.created == []


async def test_a_retry_from_a_removed_member_is_still_refused(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("bob", cid, image_bytes())
    assert (await chat.send_image("bob", cid, object_key, clientMessageId="c-1")).status_code == 201
    left = await chat.client.delete(f"/conversations/{cid}/participants/bob", headers=auth_header("bob"))
    assert left.status_code == 204, left.text
    retry = await chat.send_image("bob", cid, object_key, clientMessageId="c-1")
    assert retry.status_code == 404
    assert retry.json()["code"] == "conversation_not_found"


async def test_a_text_retry_returns_the_first_message(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    first = await chat.send_text("alice", cid, "once", clientMessageId="c-1")
    retry = await chat.send_text("alice", cid, "once", clientMessageId="c-1")
    assert retry.json()["messageId"] == first.json()["messageId"]
    assert len(await chat.messages("alice", cid)) == 1


async def test_another_senders_client_message_id_is_another_message(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    first = await chat.send_text("alice", cid, "hi", clientMessageId="c-1")
    second = await chat.send_text("bob", cid, "hi", clientMessageId="c-1")
    assert second.status_code == 201
    assert second.json()["messageId"] != first.json()["messageId"]


async def test_one_object_cannot_back_two_messages(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    assert (await chat.send_image("alice", cid, object_key)).status_code == 201
    again = await chat.send_image("alice", cid, object_key)
    assert again.status_code == 409
    assert again.json()["code"] == "object_already_used"


async def test_two_concurrent_sends_of_one_object_give_one_201_and_one_409(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    responses = await asyncio.gather(
        chat.send_image("alice", cid, object_key, caption="one"),
        chat.send_image("alice", cid, object_key, caption="two"),
    )
    assert sorted(r.status_code for r in responses) == [201, 409]
    conflict = next(r for r in responses if r.status_code == 409)
    assert conflict.json()["code"] == "object_already_used"
    assert len(await chat.messages("alice", cid)) == 1


async def test_two_concurrent_retries_of_one_send_store_one_message(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, image_bytes())
    responses = await asyncio.gather(
        *(chat.send_image("alice", cid, object_key, clientMessageId="c-1") for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert responses[0].json() == responses[1].json()
    assert len(chat.events.created) == 1


async def test_a_refused_send_stores_nothing_and_announces_nothing(chat: Chat) -> None:
    cid = await chat.create_conversation("alice")
    object_key = await chat.upload("alice", cid, b"not an image", "image/jpeg")
    assert (await chat.send_image("alice", cid, object_key)).status_code == 422
    assert chat.events.created == []
    pending = await chat.backends.chat_store.pending_outbox(older_than=-60, limit=10)
    assert [e.kind for e in pending] == ["membership.changed"]  # the conversation's, nothing of the send


async def test_the_fan_out_seam_gets_the_stored_outbox_entry(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    sent = (await chat.send_text("alice", cid, "hi")).json()
    pending = await chat.backends.chat_store.pending_outbox(older_than=0, limit=10)
    pending = [entry for entry in pending if entry.kind == "message.created"]
    assert chat.events.created == pending
    assert pending[0].message_id == sent["messageId"]
    assert pending[0].conversation_id == cid
    assert chat.events.created_members == [frozenset({"alice", "bob"})]  # read once, handed over


# --- listing --------------------------------------------------------------------------------------
async def test_pages_over_120_messages_return_each_once_while_new_ones_arrive(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    originals = []
    for n in range(120):
        response = await chat.send_text("alice" if n % 2 else "bob", cid, f"message {n}")
        originals.append(response.json()["messageId"])
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 25}
    for round_ in range(20):
        response = await chat.client.get(
            f"/conversations/{cid}/messages", params=params, headers=auth_header("bob")
        )
        body = response.json()
        seen += [m["messageId"] for m in body["items"]]
        await chat.send_text("alice", cid, f"arrived while paging {round_}")
        if body["nextCursor"] is None:
            break
        params["before"] = body["nextCursor"]
    assert seen == originals[::-1]


async def test_a_non_member_cannot_list_messages(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    await chat.send_text("alice", cid, "secret")
    response = await chat.client.get(f"/conversations/{cid}/messages", headers=auth_header("mallory"))
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"


async def test_a_non_member_cannot_send(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("mallory", cid, image_bytes())
    for response in (await chat.send_text("mallory", cid), await chat.send_image("mallory", cid, object_key)):
        assert response.status_code == 404
        assert response.json()["code"] == "conversation_not_found"
    assert await chat.messages("alice", cid) == []


# --- read receipts --------------------------------------------------------------------------------
async def test_marking_read_adds_the_reader_once(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message_id = (await chat.send_text("alice", cid)).json()["messageId"]
    path = f"/conversations/{cid}/messages/{message_id}/read"
    first = await chat.client.post(path, headers=auth_header("bob"))
    again = await chat.client.post(path, headers=auth_header("bob"))
    assert first.status_code == again.status_code == 200
    assert first.json()["readBy"] == again.json()["readBy"] == ["alice", "bob"]
    assert [(c, m.message_id, r) for c, m, r in chat.events.read] == [(cid, message_id, "bob")]
    assert (await chat.messages("alice", cid))[0].read_by == ("alice", "bob")


async def test_the_sender_marking_read_changes_nothing(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message_id = (await chat.send_text("alice", cid)).json()["messageId"]
    response = await chat.client.post(
        f"/conversations/{cid}/messages/{message_id}/read", headers=auth_header("alice")
    )
    assert response.json()["readBy"] == ["alice"]
    assert chat.events.read == []


async def test_marking_an_unknown_message_read_is_a_404(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    for message_id in (str(uuid.uuid4()), "not-a-uuid", "__x__", "..."):
        response = await chat.client.post(
            f"/conversations/{cid}/messages/{message_id}/read", headers=auth_header("bob")
        )
        assert response.status_code == 404, message_id
        assert response.json()["code"] == "message_not_found"


async def test_a_non_member_learns_nothing_about_message_ids(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    real = (await chat.send_text("alice", cid)).json()["messageId"]
    answers = [
        await chat.client.post(
            f"/conversations/{cid}/messages/{message_id}/read", headers=auth_header("mallory")
        )
        for message_id in (real, str(uuid.uuid4()))
    ]
    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0].json()["code"] == answers[1].json()["code"] == "conversation_not_found"
    assert answers[0].json()["detail"] == answers[1].json()["detail"]
    assert (await chat.messages("alice", cid))[0].read_by == ("alice",)


async def test_any_key_of_the_layout_is_an_answer_not_a_500(chat: Chat) -> None:
    """A version 7 UUID whose 48 bits of milliseconds lie past the year 9999 (Schemathesis found it): the
    key has the documented layout, so the send is refused for what it names (404), never a 500."""
    cid = await chat.create_conversation("alice")
    key = "images/alice/20240419-123456-ffffffff-ffff-7fff-bfff-ffffffffffff.jpg"
    assert keys.parse_object_key(key).issued_at is None
    response = await chat.send_image("alice", cid, key)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "image_not_found"


async def test_an_image_message_with_null_metadata_is_a_400(chat: Chat) -> None:
    """Not schema-valid either: the document's `SendImage` requires `metadata` (an object)."""
    cid = await chat.create_conversation("alice")
    response = await chat.client.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "image", "metadata": None, "content": "hi"},
        headers=auth_header("alice"),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_a_text_message_may_say_metadata_null(chat: Chat) -> None:
    """A client that writes every field sends `"metadata": null` with its text."""
    cid = await chat.create_conversation("alice")
    response = await chat.send_text("alice", cid, "hi", metadata=None)
    assert response.status_code == 201, response.text
