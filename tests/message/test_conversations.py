"""Conversations and members over HTTP, on each MessageStore adapter."""

from __future__ import annotations

import datetime as dt

from tests.conftest import auth_header
from tests.message.conftest import Chat


async def test_creating_a_conversation_makes_the_caller_a_member(chat: Chat) -> None:
    response = await chat.client.post(
        "/conversations",
        json={"participantIds": ["bob", "carol"], "name": " Trip "},
        headers=auth_header("alice"),
    )
    assert response.status_code == 201
    body = response.json()
    assert body["participants"] == ["alice", "bob", "carol"]
    assert body["name"] == "Trip"
    assert body["conversationId"]
    created_at = dt.datetime.fromisoformat(body["createdAt"])
    assert abs(dt.datetime.now(dt.UTC) - created_at) < dt.timedelta(minutes=1)
    assert body["lastMessage"] is None


async def test_the_caller_listed_among_participants_is_a_member_once(chat: Chat) -> None:
    response = await chat.client.post(
        "/conversations", json={"participantIds": ["bob", "alice", "bob"]}, headers=auth_header("alice")
    )
    assert response.json()["participants"] == ["alice", "bob"]
    assert response.json()["name"] is None


async def test_a_conversation_with_a_malformed_user_id_is_refused(chat: Chat) -> None:
    response = await chat.client.post(
        "/conversations", json={"participantIds": ["bob", "../etc"]}, headers=auth_header("alice")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_a_conversation_can_have_an_id_of_the_callers_choosing(chat: Chat) -> None:
    response = await chat.client.post(
        "/conversations",
        json={"conversationId": "123", "participantIds": ["bob"]},
        headers=auth_header("alice"),
    )
    assert response.status_code == 201
    assert response.json()["conversationId"] == "123"
    read = await chat.client.get("/conversations/123", headers=auth_header("bob"))
    assert read.status_code == 200


async def test_a_taken_conversation_id_is_a_409_and_changes_nothing(chat: Chat) -> None:
    await chat.client.post(
        "/conversations",
        json={"conversationId": "team", "participantIds": ["bob"]},
        headers=auth_header("alice"),
    )
    squat = await chat.client.post(
        "/conversations",
        json={"conversationId": "team", "participantIds": []},
        headers=auth_header("mallory"),
    )
    assert squat.status_code == 409
    assert squat.json()["code"] == "conversation_exists"
    assert (await chat.client.get("/conversations/team", headers=auth_header("mallory"))).status_code == 404
    assert (await chat.client.get("/conversations/team", headers=auth_header("bob"))).status_code == 200


async def test_a_malformed_conversation_id_is_refused(chat: Chat) -> None:
    response = await chat.client.post(
        "/conversations", json={"conversationId": "../x", "participantIds": []}, headers=auth_header("alice")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_creating_a_conversation_needs_a_token(chat: Chat) -> None:
    response = await chat.client.post("/conversations", json={"participantIds": ["bob"]})
    assert response.status_code == 401


async def test_a_member_reads_the_conversation(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob", name="trip")
    response = await chat.client.get(f"/conversations/{cid}", headers=auth_header("bob"))
    assert response.status_code == 200
    assert response.json()["participants"] == ["alice", "bob"]
    assert response.json()["name"] == "trip"


async def test_a_non_member_gets_the_same_404_as_for_no_conversation(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    theirs = await chat.client.get(f"/conversations/{cid}", headers=auth_header("mallory"))
    missing = await chat.client.get("/conversations/0123456789abcdef", headers=auth_header("mallory"))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "conversation_not_found"
    assert theirs.json()["detail"] == missing.json()["detail"]


async def test_my_conversations_are_listed_most_recently_active_first(chat: Chat) -> None:
    first = await chat.create_conversation("alice", "bob")
    second = await chat.create_conversation("alice", "carol")
    third = await chat.create_conversation("alice")
    await chat.create_conversation("bob", "carol")  # not alice's
    sent = await chat.send_text("bob", first, "back to the first")
    assert sent.status_code == 201
    response = await chat.client.get("/conversations", headers=auth_header("alice"))
    assert response.status_code == 200
    body = response.json()
    assert [c["conversationId"] for c in body["items"]] == [first, third, second]
    assert body["items"][0]["lastMessage"]["preview"] == "back to the first"
    assert body["items"][0]["lastMessage"]["senderId"] == "bob"
    assert body["nextCursor"] is None


async def test_my_conversations_page_with_a_cursor(chat: Chat) -> None:
    created = [await chat.create_conversation("alice", f"user{i}") for i in range(5)]
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        response = await chat.client.get("/conversations", params=params, headers=auth_header("alice"))
        body = response.json()
        seen += [c["conversationId"] for c in body["items"]]
        if body["nextCursor"] is None:
            break
        params["before"] = body["nextCursor"]
    assert seen == created[::-1]


async def test_a_garbled_cursor_is_a_400(chat: Chat) -> None:
    response = await chat.client.get("/conversations", params={"before": "%%%"}, headers=auth_header("alice"))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_an_empty_cursor_is_a_400_not_the_first_page(chat: Chat) -> None:
    """``?before=`` is not a cursor the server issued (nor schema-valid): refused, as Schemathesis expects."""
    created = await chat.client.post(
        "/conversations", json={"participantIds": ["bob"]}, headers=auth_header("alice")
    )
    messages = f"/conversations/{created.json()['conversationId']}/messages"
    for path in ("/conversations", messages):
        response = await chat.client.get(path, params={"before": ""}, headers=auth_header("alice"))
        assert response.status_code == 400, path
        assert response.json()["code"] == "invalid_cursor", path


async def test_a_page_size_out_of_range_is_a_400(chat: Chat) -> None:
    response = await chat.client.get("/conversations", params={"limit": 1000}, headers=auth_header("alice"))
    assert response.status_code == 400


async def test_a_member_adds_participants_who_then_see_it(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await chat.client.post(
        f"/conversations/{cid}/participants",
        json={"participantIds": ["carol", "bob"]},
        headers=auth_header("bob"),
    )
    assert response.status_code == 200
    assert response.json()["participants"] == ["alice", "bob", "carol"]
    assert (await chat.client.get(f"/conversations/{cid}", headers=auth_header("carol"))).status_code == 200
    assert chat.events.membership[-1] == (cid, frozenset({"carol"}), frozenset())


async def test_adding_existing_members_changes_nothing_and_announces_nothing(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    before = len(chat.events.membership)
    response = await chat.client.post(
        f"/conversations/{cid}/participants", json={"participantIds": ["bob"]}, headers=auth_header("alice")
    )
    assert response.status_code == 200
    assert response.json()["participants"] == ["alice", "bob"]
    assert len(chat.events.membership) == before


async def test_a_non_member_cannot_add_themselves(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await chat.client.post(
        f"/conversations/{cid}/participants",
        json={"participantIds": ["mallory"]},
        headers=auth_header("mallory"),
    )
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"


async def test_a_removed_member_loses_access(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob", "carol")
    response = await chat.client.delete(
        f"/conversations/{cid}/participants/bob", headers=auth_header("alice")
    )
    assert response.status_code == 204
    assert (await chat.client.get(f"/conversations/{cid}", headers=auth_header("bob"))).status_code == 404
    assert (await chat.send_text("bob", cid)).status_code == 404
    assert chat.events.membership[-1] == (cid, frozenset(), frozenset({"bob"}))


async def test_a_member_can_leave(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await chat.client.delete(f"/conversations/{cid}/participants/bob", headers=auth_header("bob"))
    assert response.status_code == 204
    listed = await chat.client.get("/conversations", headers=auth_header("bob"))
    assert listed.json()["items"] == []


async def test_removing_someone_who_is_not_a_member_is_a_404(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    response = await chat.client.delete(
        f"/conversations/{cid}/participants/zed", headers=auth_header("alice")
    )
    assert response.status_code == 404
    assert response.json()["code"] == "participant_not_found"


async def test_creating_a_conversation_announces_every_member(chat: Chat) -> None:
    cid = await chat.create_conversation("alice", "bob")
    assert chat.events.membership == [(cid, frozenset({"alice", "bob"}), frozenset())]
