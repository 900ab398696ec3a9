"""MessageStore contract: the same tests against SQLite (embedded) and the Firestore emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat_core.backends import Backends
from chat_core.messagestore import (
    Conversation,
    ConversationNotFound,
    InvalidCursor,
    LastMessage,
    MessageStore,
)
from tests.conftest import make_settings

T0 = dt.datetime(2024, 4, 19, 12, 35, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MessageStore]:
    """The adapter as a service gets it: built by ``Backends`` from settings, started, closed."""
    env = {"MESSAGE_STORE": request.param}
    if request.param == "firestore":
        project = request.getfixturevalue("firestore_project")
        emulator = request.getfixturevalue("firestore_emulator")
        env |= {"FIRESTORE_PROJECT_ID": project, "FIRESTORE_EMULATOR_HOST": emulator.address}
    backends = Backends(make_settings(tmp_path, env))
    message_store = backends.message_store
    assert message_store.name == request.param
    async with backends:
        yield message_store


def conversation(
    participants: tuple[str, ...] = ("alice", "bob"),
    *,
    at: dt.datetime = T0,
    name: str | None = "trip",
    conversation_id: str | None = None,
) -> Conversation:
    return Conversation(
        conversation_id=conversation_id or uuid.uuid4().hex,
        participants=participants,
        name=name,
        created_at=at,
        updated_at=at,
    )


def last_message(at: dt.datetime, message_id: str = "m1", preview: str = "hi") -> LastMessage:
    return LastMessage(
        message_id=message_id, sender_id="alice", message_type="text", preview=preview, timestamp=at
    )


# --- conversations and membership -----------------------------------------------------------------
async def test_a_created_conversation_reads_back_exactly(store: MessageStore) -> None:
    created = conversation(("alice", "bob", "carol"))
    await store.create_conversation(created)
    assert await store.get_conversation(created.conversation_id) == created


async def test_an_unknown_conversation_reads_as_none(store: MessageStore) -> None:
    assert await store.get_conversation("nope") is None
    assert await store.get_participants("nope") is None


async def test_participants_are_the_membership(store: MessageStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", "bob"})


async def test_a_conversation_without_a_name_keeps_none(store: MessageStore) -> None:
    created = conversation(name=None)
    await store.create_conversation(created)
    fetched = await store.get_conversation(created.conversation_id)
    assert fetched is not None
    assert fetched.name is None


async def test_adding_participants_appends_new_ones_once(store: MessageStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    updated = await store.add_participants(created.conversation_id, ["carol", "bob", "dave", "carol"])
    assert updated.participants == ("alice", "bob", "carol", "dave")
    members = await store.get_participants(created.conversation_id)
    assert members == frozenset({"alice", "bob", "carol", "dave"})
    assert await store.get_conversation(created.conversation_id) == updated


async def test_adding_only_existing_members_changes_nothing(store: MessageStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.add_participants(created.conversation_id, ["bob"]) == created


async def test_removing_a_participant_ends_their_membership(store: MessageStore) -> None:
    created = conversation(("alice", "bob", "carol"))
    await store.create_conversation(created)
    updated = await store.remove_participant(created.conversation_id, "bob")
    assert updated.participants == ("alice", "carol")
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", "carol"})
    assert (await store.list_conversations("bob", limit=10)).items == []


async def test_removing_a_non_member_changes_nothing(store: MessageStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.remove_participant(created.conversation_id, "zed") == created


async def test_membership_changes_on_an_unknown_conversation_raise(store: MessageStore) -> None:
    with pytest.raises(ConversationNotFound):
        await store.add_participants("nope", ["bob"])
    with pytest.raises(ConversationNotFound):
        await store.remove_participant("nope", "bob")


async def test_concurrent_additions_are_all_kept(store: MessageStore) -> None:
    created = conversation(("alice",))
    await store.create_conversation(created)
    newcomers = [f"user{i}" for i in range(6)]
    await asyncio.gather(*(store.add_participants(created.conversation_id, [u]) for u in newcomers))
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", *newcomers})


async def test_my_conversations_are_listed_most_recently_updated_first(store: MessageStore) -> None:
    old = conversation(("alice", "bob"), at=T0)
    middle = conversation(("alice", "carol"), at=T0 + dt.timedelta(minutes=1))
    new = conversation(("alice",), at=T0 + dt.timedelta(minutes=2))
    not_mine = conversation(("bob", "carol"), at=T0 + dt.timedelta(minutes=3))
    for item in (middle, not_mine, old, new):
        await store.create_conversation(item)
    page = await store.list_conversations("alice", limit=10)
    assert [c.conversation_id for c in page.items] == [
        new.conversation_id,
        middle.conversation_id,
        old.conversation_id,
    ]
    assert page.next_cursor is None


async def test_conversation_pages_cover_each_conversation_once(store: MessageStore) -> None:
    created = [conversation(("alice",), at=T0 + dt.timedelta(seconds=i // 2)) for i in range(7)]
    for item in created:  # pairs share an updatedAt: the id breaks the tie
        await store.create_conversation(item)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list_conversations("alice", limit=3, cursor=cursor)
        seen += [c.conversation_id for c in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(c.conversation_id for c in created)
    assert len(seen) == len(set(seen))


async def test_a_touched_conversation_moves_to_the_front(store: MessageStore) -> None:
    first = conversation(("alice",), at=T0)
    second = conversation(("alice",), at=T0 + dt.timedelta(minutes=1))
    await store.create_conversation(first)
    await store.create_conversation(second)
    touch = last_message(T0 + dt.timedelta(minutes=5))
    await store.touch_conversation(first.conversation_id, touch)
    page = await store.list_conversations("alice", limit=10)
    assert [c.conversation_id for c in page.items] == [first.conversation_id, second.conversation_id]
    assert page.items[0].last_message == touch
    assert page.items[0].updated_at == touch.timestamp


async def test_touch_keeps_the_newest_last_message(store: MessageStore) -> None:
    created = conversation()
    await store.create_conversation(created)
    newer = last_message(T0 + dt.timedelta(seconds=10), "m2", "newer")
    older = last_message(T0 + dt.timedelta(seconds=5), "m1", "older")
    await store.touch_conversation(created.conversation_id, newer)
    await store.touch_conversation(created.conversation_id, older)
    fetched = await store.get_conversation(created.conversation_id)
    assert fetched is not None
    assert fetched.last_message == newer
    assert fetched.updated_at == newer.timestamp


async def test_touching_an_unknown_conversation_is_a_no_op(store: MessageStore) -> None:
    await store.touch_conversation("nope", last_message(T0))
    assert await store.get_conversation("nope") is None


async def test_a_garbled_conversation_cursor_is_refused(store: MessageStore) -> None:
    with pytest.raises(InvalidCursor):
        await store.list_conversations("alice", limit=10, cursor="not-a-cursor")


async def test_the_store_answers_ping(store: MessageStore) -> None:
    await store.ping()
