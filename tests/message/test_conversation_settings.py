"""``PATCH /conversations/{cid}`` and the settings given at creation: push image previews."""

from __future__ import annotations

from tests.conftest import auth_header
from tests.message.conftest import Chat


async def test_image_previews_are_on_by_default_and_can_be_chosen_at_creation(chat: Chat) -> None:
    default = await chat.client.post(
        "/conversations", json={"participantIds": ["bob"]}, headers=auth_header("alice")
    )
    quiet = await chat.client.post(
        "/conversations",
        json={"participantIds": ["bob"], "pushImagePreviews": False},
        headers=auth_header("alice"),
    )
    assert default.json()["pushImagePreviews"] is True
    assert quiet.json()["pushImagePreviews"] is False
    fetched = await chat.client.get(
        f"/conversations/{quiet.json()['conversationId']}", headers=auth_header("bob")
    )
    assert fetched.json()["pushImagePreviews"] is False


async def test_an_admin_turns_image_previews_off_and_on(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    off = await chat.client.patch(
        f"/conversations/{cid}", json={"pushImagePreviews": False}, headers=auth_header("alice")
    )
    assert off.status_code == 200
    assert off.json()["pushImagePreviews"] is False
    unchanged = await chat.client.patch(f"/conversations/{cid}", json={}, headers=auth_header("alice"))
    assert unchanged.json()["pushImagePreviews"] is False
    on = await chat.client.patch(
        f"/conversations/{cid}", json={"pushImagePreviews": True}, headers=auth_header("alice")
    )
    assert on.json()["pushImagePreviews"] is True


async def test_only_admins_change_settings_and_strangers_learn_nothing(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    member = await chat.client.patch(
        f"/conversations/{cid}", json={"pushImagePreviews": False}, headers=auth_header("bob")
    )
    stranger = await chat.client.patch(
        f"/conversations/{cid}", json={"pushImagePreviews": False}, headers=auth_header("eve")
    )
    assert (member.status_code, member.json()["code"]) == (403, "not_an_admin")
    assert (stranger.status_code, stranger.json()["code"]) == (404, "conversation_not_found")


async def test_a_setting_is_true_or_false_not_a_number_or_a_string(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    for value in (0, 1, "false", None):
        response = await chat.client.patch(
            f"/conversations/{cid}", json={"pushImagePreviews": value}, headers=auth_header("alice")
        )
        assert response.status_code == 400, value
        assert response.json()["code"] == "invalid_request"
    created = await chat.client.post(
        "/conversations",
        json={"participantIds": ["bob"], "pushImagePreviews": 0},
        headers=auth_header("alice"),
    )
    assert created.status_code == 400
