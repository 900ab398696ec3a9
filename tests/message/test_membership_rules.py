"""Membership rules a chat user expects (docs/api.md "Membership rules"), on each store adapter over HTTP.

The creator is an admin; any member adds plain members; only admins add admins and remove others; anyone
may leave; the last admin leaving hands the role to the earliest member. Every change is an audit line
that ``LOG_LEVEL=WARNING`` does not silence.
"""

from __future__ import annotations

import io
from typing import Any

import msgspec

from chat_core.logging import configure_logging
from tests.conftest import auth_header
from tests.message.conftest import Chat


async def _add(chat: Chat, actor: str, cid: str, *users: str, role: str | None = None) -> Any:
    body: dict[str, Any] = {"participantIds": list(users)}
    if role:
        body["role"] = role
    return await chat.client.post(f"/conversations/{cid}/participants", json=body, headers=auth_header(actor))


async def _remove(chat: Chat, actor: str, cid: str, user: str) -> Any:
    return await chat.client.delete(f"/conversations/{cid}/participants/{user}", headers=auth_header(actor))


async def _conversation(chat: Chat, actor: str, cid: str) -> dict[str, Any]:
    response = await chat.client.get(f"/conversations/{cid}", headers=auth_header(actor))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_creator_is_the_admin(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    assert (await _conversation(chat, "bob", cid))["admins"] == ["alice"]


async def test_any_member_adds_plain_members(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await _add(chat, "bob", cid, "carol")
    assert response.status_code == 200, response.text
    assert response.json()["participants"] == ["alice", "bob", "carol"]
    assert response.json()["admins"] == ["alice"]


async def test_only_admins_add_admins(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    refused = await _add(chat, "bob", cid, "carol", role="admin")
    assert (refused.status_code, refused.json()["code"]) == (403, "not_an_admin")
    assert "carol" not in (await _conversation(chat, "alice", cid))["participants"]
    promoted = await _add(chat, "alice", cid, "bob", "carol", role="admin")
    assert promoted.status_code == 200, promoted.text
    assert set(promoted.json()["admins"]) == {"alice", "bob", "carol"}
    assert promoted.json()["participants"] == ["alice", "bob", "carol"]


async def test_only_admins_remove_others(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob", "carol")
    refused = await _remove(chat, "bob", cid, "carol")
    assert (refused.status_code, refused.json()["code"]) == (403, "not_an_admin")
    assert "carol" in (await _conversation(chat, "alice", cid))["participants"]
    refused_admin = await _remove(chat, "bob", cid, "alice")
    assert refused_admin.status_code == 403
    assert (await _remove(chat, "alice", cid, "carol")).status_code == 204


async def test_anyone_may_leave(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    assert (await _remove(chat, "bob", cid, "bob")).status_code == 204
    assert (await _conversation(chat, "alice", cid))["participants"] == ["alice"]


async def test_when_the_last_admin_leaves_the_earliest_member_becomes_admin(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob", "carol")
    assert (await _remove(chat, "alice", cid, "alice")).status_code == 204
    after = await _conversation(chat, "carol", cid)
    assert after["participants"] == ["bob", "carol"]
    assert after["admins"] == ["bob"]
    assert (await _remove(chat, "bob", cid, "carol")).status_code == 204


async def test_a_removed_admin_loses_the_role(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    assert (await _add(chat, "alice", cid, "bob", role="admin")).status_code == 200
    assert (await _remove(chat, "alice", cid, "bob")).status_code == 204
    assert (await _add(chat, "alice", cid, "bob")).status_code == 200
    assert (await _conversation(chat, "alice", cid))["admins"] == ["alice"]
    assert (await _remove(chat, "bob", cid, "alice")).status_code == 403


async def test_a_squatted_id_is_409_for_everyone_and_grants_nothing(chat: Chat) -> None:
    squat = await chat.client.post(
        "/conversations",
        json={"conversationId": "123", "participantIds": ["alice"]},
        headers=auth_header("mallory"),
    )
    assert squat.status_code == 201
    as_member = await chat.client.post(
        "/conversations", json={"conversationId": "123"}, headers=auth_header("alice")
    )
    as_stranger = await chat.client.post(
        "/conversations", json={"conversationId": "123"}, headers=auth_header("bob")
    )
    assert as_member.status_code == as_stranger.status_code == 409
    assert as_member.json()["code"] == as_stranger.json()["code"] == "conversation_exists"
    assert as_member.json()["detail"] == as_stranger.json()["detail"]
    # Alice, added by the squatter, is a plain member of the squatter's conversation: she may leave.
    assert (await _conversation(chat, "alice", "123"))["admins"] == ["mallory"]
    assert (await _remove(chat, "alice", "123", "alice")).status_code == 204
    own = await chat.client.post(
        "/conversations", json={"participantIds": ["bob"]}, headers=auth_header("alice")
    )
    assert own.status_code == 201
    assert (
        await chat.client.get(
            f"/conversations/{own.json()['conversationId']}", headers=auth_header("mallory")
        )
    ).status_code == 404


async def test_membership_changes_are_audited_even_at_log_level_warning(chat: Chat) -> None:
    stream = io.BytesIO()
    configure_logging("WARNING", service="test", stream=stream, cache=False)
    try:
        cid = await chat.create_conversation("alice", "bob")
        await _add(chat, "alice", cid, "carol", role="admin")
        await _remove(chat, "carol", cid, "bob")
        await _remove(chat, "bob", cid, "bob")  # already gone: not a change, no line
        await _remove(chat, "alice", cid, "alice")
    finally:
        configure_logging("INFO", cache=False)
    lines = [msgspec.json.decode(line) for line in stream.getvalue().splitlines() if line.strip()]
    changes = [line for line in lines if line.get("event") == "membership_changed"]
    assert all(line["audit"] is True for line in changes)
    assert [(line["action"], line["actor"]) for line in changes] == [
        ("create", "alice"),
        ("add", "alice"),
        ("remove", "carol"),
        ("leave", "alice"),
    ]
    assert changes[1]["admins"] == ["carol"]
    assert changes[2]["removed"] == ["bob"]
    assert all(line.get("level") not in ("info", "debug") for line in lines if not line.get("audit"))
