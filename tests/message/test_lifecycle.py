"""Unsend and edit through the message API, on each MessageStore adapter: who may, what is stored, what
is announced (the stored outbox entry handed to the fan-out), and every client mistake a 4xx problem."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from chat_core.chatstore import Message
from tests.conftest import auth_header
from tests.message.conftest import Chat, ChatFactory, image_bytes


async def sent(chat: Chat, user: str, cid: str, content: str = "hello") -> dict[str, Any]:
    response = await chat.send_text(user, cid, content)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def delete(chat: Chat, user: str, cid: str, message_id: str) -> Any:
    return await chat.client.delete(f"/conversations/{cid}/messages/{message_id}", headers=auth_header(user))


async def patch(chat: Chat, user: str, cid: str, message_id: str, body: Any) -> Any:
    return await chat.client.patch(
        f"/conversations/{cid}/messages/{message_id}", json=body, headers=auth_header(user)
    )


def problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


# --- unsend ---------------------------------------------------------------------------------------
async def test_the_sender_unsends_and_a_tombstone_stays_in_its_place(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    first = await sent(chat, "alice", cid, "first")
    message = await sent(chat, "alice", cid, "oops")
    response = await delete(chat, "alice", cid, message["messageId"])
    assert response.status_code == 204
    listed = await chat.client.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    tombstone, kept = listed.json()["items"]
    assert kept["messageId"] == first["messageId"]
    assert tombstone["messageId"] == message["messageId"]
    assert (tombstone["deleted"], tombstone["deletedBy"], tombstone["content"], tombstone["metadata"]) == (
        True,
        "alice",
        None,
        None,
    )
    assert abs(dt.datetime.fromisoformat(tombstone["deletedAt"]) - dt.datetime.now(dt.UTC)) < dt.timedelta(
        minutes=1
    )
    [announced] = chat.events.changed
    assert (announced.kind, announced.event_id) == ("message.deleted", f"{message['messageId']}:deleted")
    assert announced.message is not None
    assert announced.message.deleted


async def test_unsending_again_is_204_and_announces_nothing_more(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    assert (await delete(chat, "alice", cid, message["messageId"])).status_code == 204
    assert (await delete(chat, "alice", cid, message["messageId"])).status_code == 204
    assert len(chat.events.changed) == 1


async def test_an_admin_unsends_anyones_message_and_another_member_may_not(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob", "carol")  # alice created it: the admin
    bobs = await sent(chat, "bob", cid)
    problem(await delete(chat, "carol", cid, bobs["messageId"]), 403, "not_allowed")
    assert (await delete(chat, "alice", cid, bobs["messageId"])).status_code == 204
    [stored] = [m for m in await chat.messages("carol", cid) if m.message_id == bobs["messageId"]]
    assert (stored.deleted, stored.deleted_by) == (True, "alice")


async def test_a_stranger_learns_nothing_and_an_unknown_message_is_404(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    problem(await delete(chat, "mallory", cid, message["messageId"]), 404, "conversation_not_found")
    problem(
        await delete(chat, "alice", cid, "00000000-0000-4000-8000-000000000000"), 404, "message_not_found"
    )
    problem(await delete(chat, "alice", cid, "not-a-uuid"), 404, "message_not_found")


async def test_the_conversations_last_message_becomes_the_tombstone(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid, "something I regret")
    await delete(chat, "alice", cid, message["messageId"])
    # The fan-out revises lastMessage; here the recording seam does nothing, so ask the store what the
    # relay would write (the fan-out's own test drives it end to end).
    entry = chat.events.changed[0]
    from chat_core.chatstore import LastMessage

    assert entry.message is not None
    await chat.backends.conversations.revise_last_message(cid, LastMessage.of(entry.message))
    got = await chat.client.get(f"/conversations/{cid}", headers=auth_header("bob"))
    last = got.json()["lastMessage"]
    assert (last["messageId"], last["deleted"], last["preview"]) == (message["messageId"], True, "")


# --- edit -----------------------------------------------------------------------------------------
async def test_an_empty_edit_changes_nothing(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    response = await patch(chat, "alice", cid, message["messageId"], {})
    assert response.status_code == 200, response.text
    assert "editedAt" not in response.json()
    assert chat.events.changed == []


async def test_the_sender_edits_the_text_within_the_window(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid, "see you at 8")
    response = await patch(chat, "alice", cid, message["messageId"], {"content": "see you at 9"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == "see you at 9"
    assert dt.datetime.fromisoformat(body["editedAt"]) >= dt.datetime.fromisoformat(message["timestamp"])
    [listed] = await chat.messages("bob", cid)
    assert listed.content == "see you at 9"
    assert isinstance(listed.edited_at, dt.datetime)
    [announced] = chat.events.changed
    assert announced.kind == "message.edited"
    assert announced.message == msgspec_convert(body)


def msgspec_convert(body: dict[str, Any]) -> Message:
    import msgspec

    return msgspec.convert(body, Message, strict=False)


async def test_only_the_sender_edits(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")  # alice is the admin: still not hers to edit
    message = await sent(chat, "bob", cid)
    problem(await patch(chat, "alice", cid, message["messageId"], {"content": "x"}), 403, "not_allowed")
    problem(
        await patch(chat, "mallory", cid, message["messageId"], {"content": "x"}),
        404,
        "conversation_not_found",
    )


async def test_after_the_window_an_edit_is_refused(make_chat: ChatFactory) -> None:
    chat = await make_chat({"MESSAGE_EDIT_WINDOW_SECONDS": "0"})
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    problem(
        await patch(chat, "alice", cid, message["messageId"], {"content": "x"}), 403, "edit_window_closed"
    )


async def test_a_deleted_message_cannot_be_edited(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    await delete(chat, "alice", cid, message["messageId"])
    problem(await patch(chat, "alice", cid, message["messageId"], {"content": "x"}), 409, "message_deleted")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # Malformed bodies: 400.
        ({"content": "x" * 4001}, 400, "invalid_request"),
        ({"content": 7}, 400, "invalid_request"),
        ({"content": "ok", "messageType": "image"}, 400, "invalid_request"),  # unknown fields are refused
        # Well-formed, but not for this message: 422.
        ({"content": ""}, 422, "empty_message"),
        ({"content": "   "}, 422, "empty_message"),
        ({"alt_text": "a photo"}, 422, "not_an_image_message"),  # a text message has no image to describe
    ],
)
async def test_edit_mistakes_are_4xx_problems(chat: Chat, body: Any, status: int, code: str) -> None:
    cid = await chat.create_conversation("alice", "bob")
    message = await sent(chat, "alice", cid)
    response = await patch(chat, "alice", cid, message["messageId"], body)
    problem(response, status, code)
    [kept] = await chat.messages("alice", cid)
    assert (kept.content, kept.edited_at) == ("hello", msgspec.UNSET)


async def test_an_images_caption_and_alt_text_are_edited_and_alt_text_is_accepted_at_send(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    object_key = await chat.upload("alice", cid, image_bytes())
    response = await chat.send_image(
        "alice", cid, object_key, caption="look", metadata={"alt_text": "a kite"}
    )
    assert response.status_code == 201, response.text
    message = response.json()
    assert message["metadata"]["alt_text"] == "a kite"
    edited = await patch(
        chat, "alice", cid, message["messageId"], {"alt_text": "a red kite", "content": None}
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["content"], body["metadata"]["alt_text"]) == (None, "a red kite")
    assert body["metadata"]["object_key"] == object_key  # the image itself stays
    too_long = await patch(chat, "alice", cid, message["messageId"], {"alt_text": "x" * 1001})
    assert too_long.status_code == 400
    at_send = await chat.send_image(
        "alice", cid, await chat.upload("alice", cid, image_bytes()), metadata={"alt_text": "y" * 1001}
    )
    assert at_send.status_code == 400


# --- a conversation's retention ---------------------------------------------------------------------
async def test_an_admin_sets_the_conversations_retention_and_a_member_may_not(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    url = f"/conversations/{cid}"
    set_by_admin = await chat.client.patch(url, json={"retentionDays": 30}, headers=auth_header("alice"))
    assert set_by_admin.status_code == 200, set_by_admin.text
    assert set_by_admin.json()["retentionDays"] == 30
    problem(
        await chat.client.patch(url, json={"retentionDays": 7}, headers=auth_header("bob")),
        403,
        "not_an_admin",
    )
    for bad in ({"retentionDays": 0}, {"retentionDays": 36501}, {"name": "x"}):
        response = await chat.client.patch(url, json=bad, headers=auth_header("alice"))
        assert response.status_code == 400, (bad, response.text)
    cleared = await chat.client.patch(url, json={"retentionDays": None}, headers=auth_header("alice"))
    assert cleared.json()["retentionDays"] is None
