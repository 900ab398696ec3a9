"""ChatStore contract: the same tests against SQLite (embedded) and the Firestore emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace as msgspec_replace

from chat_core.chatstore import (
    ChatStore,
    Conversation,
    ConversationExists,
    ConversationNotFound,
    Device,
    ImageMetadata,
    ImageVariant,
    ImageVariants,
    InvalidCursor,
    LastMessage,
    Message,
    MessageDeleted,
    MessageEdit,
    ObjectAlreadyUsed,
    OutboxEntry,
    TooManyParticipants,
    created_event,
    event_done,
    new_event,
)
from chat_core.chatstore.sqlite import SqliteChatStore
from chat_core.composition import Composition
from chat_core.timestamps import micros
from tests.conftest import make_settings

T0 = dt.datetime(2024, 4, 19, 12, 35, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatStore]:
    """The adapter as a service gets it: built by the composition root from settings, started, closed."""
    env = {"MESSAGE_STORE": request.param}
    if request.param == "firestore":
        project = request.getfixturevalue("firestore_project")
        emulator = request.getfixturevalue("firestore_emulator")
        env |= {"FIRESTORE_PROJECT_ID": project, "FIRESTORE_EMULATOR_HOST": emulator.address}
    backends = Composition(make_settings(tmp_path, env))
    message_store = backends.chat_store
    assert message_store.name == request.param
    async with backends:
        yield message_store


async def test_every_narrow_store_is_served_by_the_one_adapter(tmp_path: Path) -> None:
    """A message, its image reference and its outbox entry commit together: one adapter behind all ports."""
    backends = Composition(make_settings(tmp_path))
    adapter = backends.chat_store
    narrow = [backends.conversations, backends.messages, backends.devices, backends.outbox]
    assert all(store is adapter for store in [*narrow, backends.push_receipts])
    assert list(backends.readiness_checks()) == [adapter.readiness_name]


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


def text(
    at: dt.datetime = T0, *, sender: str = "alice", content: str = "hello", message_id: str = ""
) -> Message:
    return Message(
        message_id=message_id or str(uuid.uuid4()),
        content=content,
        message_type="text",
        sender_id=sender,
        timestamp=at,
        read_by=(sender,),
        metadata=None,
    )


def image(cid: str, at: dt.datetime = T0, *, sender: str = "alice", message_id: str = "") -> Message:
    key = f"images/{sender}/20240419-123456-{uuid.uuid4()}.jpg"
    return Message(
        message_id=message_id or str(uuid.uuid4()),
        content=None,
        message_type="image",
        sender_id=sender,
        timestamp=at,
        read_by=(sender,),
        metadata=ImageMetadata(
            object_key=key,
            url=f"https://chat.example/images/{cid}/{key}",
            content_type="image/jpeg",
            size_bytes=102400,
            width=800,
            height=600,
        ),
    )


def stored_key(cid: str, message: Message) -> str:
    assert message.metadata is not None
    return f"{cid}/{message.metadata.object_key}"


async def new_conversation(store: ChatStore, participants: tuple[str, ...] = ("alice", "bob")) -> str:
    created = conversation(participants)
    await store.create_conversation(created)
    return created.conversation_id


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- ConversationStore: conversations and membership ------------------------------------------------
async def test_a_created_conversation_reads_back_exactly(store: ChatStore) -> None:
    created = conversation(("alice", "bob", "carol"))
    await store.create_conversation(created)
    assert await store.get_conversation(created.conversation_id) == created


async def test_a_taken_conversation_id_is_refused_and_not_overwritten(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    squatter = msgspec_replace(conversation(("mallory",)), conversation_id=created.conversation_id)
    with pytest.raises(ConversationExists):
        await store.create_conversation(squatter)
    assert await store.get_conversation(created.conversation_id) == created


async def test_an_unknown_conversation_reads_as_none(store: ChatStore) -> None:
    assert await store.get_conversation("nope") is None
    assert await store.get_participants("nope") is None


async def test_participants_are_the_membership(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", "bob"})


async def test_a_conversation_without_a_name_keeps_none(store: ChatStore) -> None:
    created = conversation(name=None)
    await store.create_conversation(created)
    fetched = await store.get_conversation(created.conversation_id)
    assert fetched is not None
    assert fetched.name is None


async def test_adding_participants_appends_new_ones_once(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    updated = await store.add_participants(created.conversation_id, ["carol", "bob", "dave", "carol"])
    assert updated.participants == ("alice", "bob", "carol", "dave")
    members = await store.get_participants(created.conversation_id)
    assert members == frozenset({"alice", "bob", "carol", "dave"})
    assert await store.get_conversation(created.conversation_id) == updated


async def test_adding_only_existing_members_changes_nothing(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.add_participants(created.conversation_id, ["bob"]) == created


async def test_removing_a_participant_ends_their_membership(store: ChatStore) -> None:
    created = conversation(("alice", "bob", "carol"))
    await store.create_conversation(created)
    updated = await store.remove_participant(created.conversation_id, "bob")
    assert updated.participants == ("alice", "carol")
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", "carol"})
    assert (await store.list_conversations("bob", limit=10)).items == []


async def test_removing_a_non_member_changes_nothing(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    await store.create_conversation(created)
    assert await store.remove_participant(created.conversation_id, "zed") == created


async def test_roles_are_stored_with_the_members(store: ChatStore) -> None:
    created = msgspec_replace(conversation(("alice", "bob")), admins=("alice",))
    await store.create_conversation(created)
    stored = await store.get_conversation(created.conversation_id)
    assert stored is not None
    assert (stored.admins, stored.admin_ids()) == (("alice",), frozenset({"alice"}))


async def test_adding_admins_promotes_new_and_existing_members_in_one_change(store: ChatStore) -> None:
    created = msgspec_replace(conversation(("alice", "bob")), admins=("alice",))
    await store.create_conversation(created)
    cid = created.conversation_id
    changed = await store.add_participants(cid, ["carol"], admins=["bob", "carol"])
    assert changed.participants == ("alice", "bob", "carol")
    assert set(changed.admins) == {"alice", "bob", "carol"}
    plain = await store.add_participants(cid, ["dave"])
    assert "dave" in plain.participants
    assert "dave" not in plain.admin_ids()
    stored = await store.get_conversation(cid)
    assert stored is not None
    assert set(stored.admins) == {"alice", "bob", "carol"}


async def test_removing_a_member_removes_their_role(store: ChatStore) -> None:
    created = msgspec_replace(conversation(("alice", "bob")), admins=("alice", "bob"))
    await store.create_conversation(created)
    after = await store.remove_participant(created.conversation_id, "alice")
    assert (after.participants, after.admins) == (("bob",), ("bob",))
    stored = await store.get_conversation(created.conversation_id)
    assert stored is not None
    assert stored.admins == ("bob",)
    # Rejoining later does not bring the old role back.
    rejoined = await store.add_participants(created.conversation_id, ["alice"])
    assert rejoined.admin_ids() == frozenset({"bob"})


async def test_push_image_previews_are_on_unless_the_conversation_turns_them_off(store: ChatStore) -> None:
    on = conversation()
    off = msgspec_replace(conversation(), push_image_previews=False)
    await store.create_conversation(on)
    await store.create_conversation(off)
    assert (await store.get_conversation(on.conversation_id)).push_image_previews is True  # type: ignore[union-attr]
    assert (await store.get_conversation(off.conversation_id)).push_image_previews is False  # type: ignore[union-attr]
    changed = await store.set_push_image_previews(on.conversation_id, False)
    assert changed.push_image_previews is False
    assert (await store.get_conversation(on.conversation_id)) == changed
    assert (await store.set_push_image_previews(on.conversation_id, True)).push_image_previews is True
    with pytest.raises(ConversationNotFound):
        await store.set_push_image_previews("no-such-conversation", False)


async def test_a_conversation_stored_without_roles_has_its_creator_as_admin(store: ChatStore) -> None:
    legacy = conversation(("alice", "bob"))  # no admins: as stored before roles existed
    await store.create_conversation(legacy)
    stored = await store.get_conversation(legacy.conversation_id)
    assert stored is not None
    assert stored.admin_ids() == frozenset({"alice"})


async def test_membership_changes_on_an_unknown_conversation_raise(store: ChatStore) -> None:
    with pytest.raises(ConversationNotFound):
        await store.add_participants("nope", ["bob"])
    with pytest.raises(ConversationNotFound):
        await store.remove_participant("nope", "bob")


async def test_concurrent_additions_are_all_kept(store: ChatStore) -> None:
    created = conversation(("alice",))
    await store.create_conversation(created)
    newcomers = [f"user{i}" for i in range(6)]
    await asyncio.gather(*(store.add_participants(created.conversation_id, [u]) for u in newcomers))
    assert await store.get_participants(created.conversation_id) == frozenset({"alice", *newcomers})


async def test_my_conversations_are_listed_most_recently_updated_first(store: ChatStore) -> None:
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


async def test_conversation_pages_cover_each_conversation_once(store: ChatStore) -> None:
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


async def test_a_touched_conversation_moves_to_the_front(store: ChatStore) -> None:
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


async def test_touch_keeps_the_newest_last_message(store: ChatStore) -> None:
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


async def test_touching_an_unknown_conversation_is_a_no_op(store: ChatStore) -> None:
    await store.touch_conversation("nope", last_message(T0))
    assert await store.get_conversation("nope") is None


async def test_a_garbled_conversation_cursor_is_refused(store: ChatStore) -> None:
    with pytest.raises(InvalidCursor):
        await store.list_conversations("alice", limit=10, cursor="not-a-cursor")


async def test_the_store_answers_ping(store: ChatStore) -> None:
    await store.ping()


# --- MessageStore: messages, read receipts, the objects they reference ------------------------------
async def test_a_text_message_reads_back_exactly(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text()
    assert await store.create_message(cid, message) == (message, True)
    assert await store.get_message(cid, message.message_id) == message


async def test_an_image_message_reads_back_with_its_metadata(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid)
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    assert await store.get_message(cid, message.message_id) == message


async def test_a_message_is_only_found_in_its_own_conversation(store: ChatStore) -> None:
    cid, other = await new_conversation(store), await new_conversation(store)
    message = text()
    await store.create_message(cid, message)
    assert await store.get_message(other, message.message_id) is None
    assert await store.get_message(cid, "no-such-message") is None


async def test_creating_a_message_writes_its_outbox_entry(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text(now() - dt.timedelta(seconds=30))
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    await store.create_message(cid, message, trace=trace)
    pending = await store.pending_outbox(older_than=0, limit=10)
    assert pending == [created_event(cid, message, trace=trace)]
    assert (pending[0].event_id, pending[0].kind) == (message.message_id, "message.created")


async def test_an_image_messages_outbox_entry_names_its_object_and_etag(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid, now() - dt.timedelta(seconds=30))
    key = stored_key(cid, message)
    await store.create_message(cid, message, object_key=key, object_etag='"abc123"')
    (entry,) = await store.pending_outbox(older_than=0, limit=10)
    assert (entry.message, entry.object_key, entry.object_etag) == (message, key, '"abc123"')


async def test_an_image_message_is_found_by_its_object(store: ChatStore) -> None:
    cid = await new_conversation(store)
    other = await new_conversation(store)
    message = image(cid)
    key = stored_key(cid, message)
    await store.create_message(cid, message, object_key=key)
    assert await store.image_message(cid, key) == message
    assert await store.image_message(other, key) is None
    assert await store.image_message(cid, key + ".other") is None


async def test_finishing_an_image_replaces_its_metadata_once(store: ChatStore) -> None:
    cid = await new_conversation(store)
    sent = image(cid)
    assert sent.metadata is not None
    processing = msgspec_replace(sent.metadata, status="processing")
    message = msgspec_replace(sent, metadata=processing)
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    await store.mark_read(cid, message.message_id, "bob")
    variant = ImageVariant(
        url="u?variant=thumbnail", width=32, height=24, content_type="image/jpeg", size_bytes=9
    )
    ready = msgspec_replace(
        processing,
        status="ready",
        width=640,
        height=480,
        variants=ImageVariants(thumbnail=variant, preview=msgspec_replace(variant, url="u?variant=preview")),
        blurhash="LEHV6nWB2yk8pyo0adR*.7kCMdnj",
    )
    finished = await store.finish_image(cid, message.message_id, ready)
    assert finished is not None
    assert finished.metadata == ready
    assert finished.read_by == ("alice", "bob")  # nothing else changes
    assert await store.get_message(cid, message.message_id) == finished
    # A second finish (a redelivered job) changes nothing.
    failed = msgspec_replace(processing, status="failed", error="object_changed")
    assert await store.finish_image(cid, message.message_id, failed) is None
    assert await store.get_message(cid, message.message_id) == finished
    assert await store.finish_image(cid, "no-such-message", failed) is None


# --- the message lifecycle: unsend (tombstones), edits, lastMessage revisions, retention ------------
async def test_deleting_a_message_leaves_a_tombstone_in_its_place(store: ChatStore) -> None:
    cid = await new_conversation(store)
    before, message, after = (
        text(T0),
        image(cid, T0 + dt.timedelta(seconds=1)),
        text(T0 + dt.timedelta(seconds=2)),
    )
    for sent in (before, message, after):
        await store.create_message(cid, sent, object_key=stored_key(cid, sent) if sent.metadata else None)
    at = T0 + dt.timedelta(minutes=5)
    result = await store.delete_message(cid, message.message_id, deleted_by="alice", deleted_at=at)
    assert result is not None
    tombstone, changed = result
    assert changed
    assert (tombstone.deleted, tombstone.deleted_at, tombstone.deleted_by) == (True, at, "alice")
    assert (tombstone.content, tombstone.metadata) == (None, None)
    assert (tombstone.message_id, tombstone.sender_id, tombstone.timestamp) == (
        message.message_id,
        message.sender_id,
        message.timestamp,
    )
    assert await store.get_message(cid, message.message_id) == tombstone
    page = await store.list_messages(cid, limit=10)
    assert [m.message_id for m in page.items] == [after.message_id, message.message_id, before.message_id]
    assert page.items[1] == tombstone
    # The proxy still finds it by its object (to say it was deleted); the object backs nothing else.
    assert await store.image_message(cid, stored_key(cid, message)) == tombstone
    assert await store.referenced_objects([stored_key(cid, message)]) == {stored_key(cid, message)}


async def test_deleting_writes_its_outbox_entry_and_drops_a_pending_created_one(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid, now() - dt.timedelta(seconds=30))
    key = stored_key(cid, message)
    await store.create_message(cid, message, object_key=key, object_etag='"e"')
    at = now() - dt.timedelta(seconds=20)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    result = await store.delete_message(
        cid, message.message_id, deleted_by="bob", deleted_at=at, object_key=key, trace=trace
    )
    assert result is not None
    (entry,) = await store.pending_outbox(older_than=0, limit=10)
    assert entry == OutboxEntry(
        event_id=f"{message.message_id}:deleted",
        kind="message.deleted",
        conversation_id=cid,
        message=result[0],
        created_at=at,
        trace=trace,
        object_key=key,
    )
    await store.delete_outbox([entry.event_id])
    assert await store.pending_outbox(older_than=0, limit=10) == []


async def test_deleting_again_changes_nothing_and_writes_nothing(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text(now() - dt.timedelta(seconds=30))
    await store.create_message(cid, message)
    first = await store.delete_message(cid, message.message_id, deleted_by="alice", deleted_at=now())
    assert first is not None
    await store.delete_outbox([f"{message.message_id}:deleted"])  # relayed
    again = await store.delete_message(cid, message.message_id, deleted_by="bob", deleted_at=now())
    assert again == (first[0], False)
    assert await store.pending_outbox(older_than=0, limit=10) == []
    assert await store.delete_message(cid, str(uuid.uuid4()), deleted_by="alice", deleted_at=now()) is None


async def test_a_deleted_image_is_never_finished(store: ChatStore) -> None:
    cid = await new_conversation(store)
    sent = image(cid)
    assert sent.metadata is not None
    message = msgspec_replace(sent, metadata=msgspec_replace(sent.metadata, status="processing"))
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    await store.delete_message(cid, message.message_id, deleted_by="alice", deleted_at=now())
    ready = msgspec_replace(sent.metadata, status="ready")
    assert await store.finish_image(cid, message.message_id, ready) is None
    stored = await store.get_message(cid, message.message_id)
    assert stored is not None
    assert (stored.deleted, stored.metadata) == (True, None)


async def test_editing_changes_content_and_alt_text_and_writes_an_outbox_entry(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid, now() - dt.timedelta(seconds=30))
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    await store.delete_outbox([message.message_id])
    at = now() - dt.timedelta(seconds=10)
    announced = new_event("message.edited", cid)
    changed = await store.edit_message(
        cid,
        message.message_id,
        MessageEdit(content="a caption", alt_text="a red kite"),
        edited_at=at,
        event=announced,
    )
    assert changed is not None
    assert changed.metadata is not None
    assert message.metadata is not None
    assert (changed.content, changed.metadata.alt_text, changed.edited_at) == ("a caption", "a red kite", at)
    assert msgspec_replace(changed.metadata, alt_text=None) == message.metadata  # nothing else changes
    assert await store.get_message(cid, message.message_id) == changed
    (entry,) = await store.pending_outbox(older_than=0, limit=10)
    assert entry == event_done(announced, changed)
    # Only what the edit names changes: the caption stays when only the description does.
    again = await store.edit_message(cid, message.message_id, MessageEdit(alt_text=None), edited_at=now())
    assert again is not None
    assert again.metadata is not None
    assert (again.content, again.metadata.alt_text) == ("a caption", None)
    assert await store.edit_message(cid, str(uuid.uuid4()), MessageEdit(content="x"), edited_at=now()) is None


async def test_a_tombstone_cannot_be_edited(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text()
    await store.create_message(cid, message)
    await store.delete_message(cid, message.message_id, deleted_by="alice", deleted_at=now())
    with pytest.raises(MessageDeleted):
        await store.edit_message(cid, message.message_id, MessageEdit(content="x"), edited_at=now())


async def test_an_alt_text_edited_while_processing_survives_the_finish(store: ChatStore) -> None:
    cid = await new_conversation(store)
    sent = image(cid)
    assert sent.metadata is not None
    processing = msgspec_replace(sent.metadata, status="processing")
    message = msgspec_replace(sent, metadata=processing)
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    await store.edit_message(cid, message.message_id, MessageEdit(alt_text="two cats"), edited_at=now())
    done = await store.finish_image(cid, message.message_id, msgspec_replace(processing, status="ready"))
    assert done is not None
    assert done.metadata is not None
    assert (done.metadata.status, done.metadata.alt_text) == ("ready", "two cats")


async def test_revising_the_last_message_replaces_the_same_message_but_never_a_newer_one(
    store: ChatStore,
) -> None:
    created = conversation()
    await store.create_conversation(created)
    cid = created.conversation_id
    first = last_message(T0 + dt.timedelta(seconds=1), "m1", "hello")
    await store.touch_conversation(cid, first)
    tombstone = msgspec_replace(first, preview="", deleted=True)
    await store.revise_last_message(cid, tombstone)
    got = await store.get_conversation(cid)
    assert got is not None
    assert got.last_message == tombstone
    # The old version arriving late (a coalesced touch) does not undo the revision.
    await store.touch_conversation(cid, first)
    got = await store.get_conversation(cid)
    assert got is not None
    assert got.last_message == tombstone
    newer = last_message(T0 + dt.timedelta(seconds=2), "m2", "later")
    await store.touch_conversation(cid, newer)
    await store.revise_last_message(cid, msgspec_replace(first, preview="edited"))
    got = await store.get_conversation(cid)
    assert got is not None
    assert got.last_message == newer


async def test_retention_days_are_stored_with_the_conversation(store: ChatStore) -> None:
    cid = await new_conversation(store)
    assert (await store.set_retention(cid, 30)).retention_days == 30
    got = await store.get_conversation(cid)
    assert got is not None
    assert got.retention_days == 30
    assert (await store.set_retention(cid, None)).retention_days is None
    with pytest.raises(ConversationNotFound):
        await store.set_retention(uuid.uuid4().hex, 7)


async def test_a_users_messages_are_found_in_every_conversation_oldest_first(store: ChatStore) -> None:
    first, second = await new_conversation(store), await new_conversation(store, ("alice", "carol"))
    user = f"u{uuid.uuid4().hex[:10]}"
    mine = [
        (first, text(T0 + dt.timedelta(seconds=2), sender=user)),
        (second, text(T0 + dt.timedelta(seconds=1), sender=user)),
        (first, text(T0 + dt.timedelta(seconds=3), sender=user)),
    ]
    for cid, message in mine:
        await store.create_message(cid, message)
    await store.create_message(first, text(T0, sender="alice"))  # someone else's
    await store.delete_message(first, mine[0][1].message_id, deleted_by=user, deleted_at=now())
    found = [(cid, m.message_id, m.deleted is True) async for cid, m in store.sent_by(user)]
    assert found == [
        (second, mine[1][1].message_id, False),
        (first, mine[0][1].message_id, True),  # tombstones too: the caller skips them
        (first, mine[2][1].message_id, False),
    ]


async def test_a_users_messages_are_read_in_pages_past_the_first(store: ChatStore) -> None:
    cid = await new_conversation(store)
    user = f"u{uuid.uuid4().hex[:10]}"
    sent = [text(T0 + dt.timedelta(milliseconds=n), sender=user) for n in range(205)]
    await asyncio.gather(*(store.create_message(cid, m) for m in sent))
    assert [m.message_id async for _, m in store.sent_by(user)] == [m.message_id for m in sent]


async def test_messages_before_a_time_are_the_retention_jobs_oldest_first(store: ChatStore) -> None:
    cid = await new_conversation(store)
    old = [text(T0 - dt.timedelta(days=40 - n)) for n in range(3)]
    recent = text(T0)
    for message in (recent, *old):
        await store.create_message(cid, message)
    expired = [m.message_id async for m in store.messages_before(cid, T0 - dt.timedelta(days=30))]
    assert expired == [m.message_id for m in old]


async def test_every_conversation_is_visited_once(store: ChatStore) -> None:
    made = {await new_conversation(store) for _ in range(3)}
    seen = [c.conversation_id async for c in store.every_conversation()]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))


async def test_the_same_message_id_again_returns_the_stored_message_and_writes_nothing(
    store: ChatStore,
) -> None:
    cid = await new_conversation(store)
    first = text(content="first")
    retry = msgspec_replace(first, content="retried with other content")
    await store.create_message(cid, first)
    assert await store.create_message(cid, retry) == (first, False)
    assert (await store.list_messages(cid, limit=10)).items == [first]
    assert (await store.outbox_stats())[0] == 1


async def test_an_idempotent_retry_of_an_image_message_is_not_a_reuse(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid)
    await store.create_message(cid, message, object_key=stored_key(cid, message))
    again = await store.create_message(cid, message, object_key=stored_key(cid, message))
    assert again == (message, False)


async def test_an_object_backs_at_most_one_message(store: ChatStore) -> None:
    cid = await new_conversation(store)
    first = image(cid)
    await store.create_message(cid, first, object_key=stored_key(cid, first))
    second = msgspec_replace(first, message_id=str(uuid.uuid4()))
    with pytest.raises(ObjectAlreadyUsed) as caught:
        await store.create_message(cid, second, object_key=stored_key(cid, first))
    assert caught.value.message_id == first.message_id
    assert await store.get_message(cid, second.message_id) is None
    assert (await store.outbox_stats())[0] == 1  # nothing half-written


async def test_concurrent_messages_on_one_object_store_exactly_one(store: ChatStore) -> None:
    cid = await new_conversation(store)
    template = image(cid)
    key = stored_key(cid, template)
    attempts = [msgspec_replace(template, message_id=str(uuid.uuid4())) for _ in range(5)]
    results = await asyncio.gather(
        *(store.create_message(cid, m, object_key=key) for m in attempts), return_exceptions=True
    )
    stored = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, ObjectAlreadyUsed)]
    assert len(stored) == 1
    assert len(refused) == 4
    assert {r.message_id for r in refused} == {stored[0][0].message_id}
    assert [m.message_id for m in (await store.list_messages(cid, limit=10)).items] == [
        stored[0][0].message_id
    ]


async def test_concurrent_creates_of_one_message_store_it_once(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid)
    results = await asyncio.gather(
        *(store.create_message(cid, message, object_key=stored_key(cid, message)) for _ in range(4))
    )
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert all(stored == message for stored, _ in results)
    assert (await store.outbox_stats())[0] == 1


async def test_a_refused_create_among_concurrent_ones_fails_alone(store: ChatStore) -> None:
    # Concurrent writes may share a transaction (SQLite's group commit): each stays atomic on its own.
    cid = await new_conversation(store)
    taken = image(cid)
    await store.create_message(cid, taken, object_key=stored_key(cid, taken))
    others = [image(cid) for _ in range(8)]
    reuse = msgspec_replace(taken, message_id=str(uuid.uuid4()))
    results = await asyncio.gather(
        *(store.create_message(cid, m, object_key=stored_key(cid, m)) for m in others[:4]),
        store.create_message(cid, reuse, object_key=stored_key(cid, taken)),
        store.create_message("no-such-conversation", text()),
        *(store.create_message(cid, m, object_key=stored_key(cid, m)) for m in others[4:]),
        return_exceptions=True,
    )
    assert isinstance(results[4], ObjectAlreadyUsed)
    assert isinstance(results[5], ConversationNotFound)
    assert all(r == (m, True) for r, m in zip(results[:4] + results[6:], others, strict=True))
    listed = {m.message_id for m in (await store.list_messages(cid, limit=20)).items}
    assert listed == {taken.message_id, *(m.message_id for m in others)}
    assert (await store.outbox_stats())[0] == 9  # the refused ones left nothing behind


async def test_a_message_in_an_unknown_conversation_is_refused(store: ChatStore) -> None:
    with pytest.raises(ConversationNotFound):
        await store.create_message("nope", text())


async def test_messages_list_newest_first(store: ChatStore) -> None:
    cid = await new_conversation(store)
    messages = [text(T0 + dt.timedelta(seconds=i)) for i in range(5)]
    for message in (messages[2], messages[0], messages[4], messages[1], messages[3]):
        await store.create_message(cid, message)
    page = await store.list_messages(cid, limit=10)
    assert page.items == messages[::-1]
    assert page.next_cursor is None


async def test_messages_with_one_timestamp_are_ordered_by_id(store: ChatStore) -> None:
    cid = await new_conversation(store)
    same_time = [text(T0, message_id=f"m{i}") for i in range(4)]
    for message in same_time:
        await store.create_message(cid, message)
    first = await store.list_messages(cid, limit=2)
    rest = await store.list_messages(cid, limit=2, before=first.next_cursor)
    assert [m.message_id for m in first.items + rest.items] == ["m3", "m2", "m1", "m0"]
    assert rest.next_cursor is None


async def test_message_pages_are_stable_while_new_messages_arrive(store: ChatStore) -> None:
    cid = await new_conversation(store)
    originals = [text(T0 + dt.timedelta(milliseconds=i)) for i in range(30)]
    for message in originals:
        await store.create_message(cid, message)
    seen: list[str] = []
    cursor: str | None = None
    for round_ in range(100):
        page = await store.list_messages(cid, limit=7, before=cursor)
        seen += [m.message_id for m in page.items]
        await store.create_message(cid, text(T0 + dt.timedelta(hours=1, seconds=round_)))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [m.message_id for m in reversed(originals)]


async def test_a_garbled_message_cursor_is_refused(store: ChatStore) -> None:
    cid = await new_conversation(store)
    with pytest.raises(InvalidCursor):
        await store.list_messages(cid, limit=10, before="garbage!")


async def test_marking_read_adds_the_reader_once(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text()
    await store.create_message(cid, message)
    read = await store.mark_read(cid, message.message_id, "bob")
    assert read is not None
    assert read[0].read_by == ("alice", "bob")
    assert read[1] is True
    again = await store.mark_read(cid, message.message_id, "bob")
    assert again == (read[0], False)
    stored = await store.get_message(cid, message.message_id)
    assert stored is not None
    assert stored.read_by == ("alice", "bob")


async def test_the_sender_reading_changes_nothing(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text()
    await store.create_message(cid, message)
    assert await store.mark_read(cid, message.message_id, "alice") == (message, False)


async def test_marking_an_unknown_message_read_is_none(store: ChatStore) -> None:
    cid = await new_conversation(store)
    assert await store.mark_read(cid, "no-such-message", "bob") is None


async def test_concurrent_readers_are_all_kept(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text()
    await store.create_message(cid, message)
    readers = [f"reader{i}" for i in range(6)]
    await asyncio.gather(*(store.mark_read(cid, message.message_id, r) for r in readers))
    stored = await store.get_message(cid, message.message_id)
    assert stored is not None
    assert set(stored.read_by) == {"alice", *readers}
    assert len(stored.read_by) == 7


async def test_referenced_objects_are_those_backing_a_message(store: ChatStore) -> None:
    cid = await new_conversation(store)
    used = image(cid)
    await store.create_message(cid, used, object_key=stored_key(cid, used))
    orphan = f"{cid}/images/alice/20240419-123456-{uuid.uuid4()}.png"
    assert await store.referenced_objects([stored_key(cid, used), orphan]) == {stored_key(cid, used)}
    assert await store.referenced_objects([]) == set()


async def test_an_addition_past_the_member_limit_changes_nothing(store: ChatStore) -> None:
    cid = await new_conversation(store, ("alice", "bob", "carol"))
    with pytest.raises(TooManyParticipants):
        await store.add_participants(cid, ["dave", "erin"], admins=["dave"], max_participants=4)
    assert await store.get_participants(cid) == frozenset({"alice", "bob", "carol"})
    # Members already in count once; the limit itself is reachable.
    added = await store.add_participants(cid, ["bob", "dave"], max_participants=4)
    assert set(added.participants) == {"alice", "bob", "carol", "dave"}


async def test_concurrent_additions_never_pass_the_member_limit(store: ChatStore) -> None:
    cid = await new_conversation(store, ("alice", "bob"))
    newcomers = [f"user{i:02d}" for i in range(10)]
    results = await asyncio.gather(
        *(store.add_participants(cid, [user], max_participants=5) for user in newcomers),
        return_exceptions=True,
    )
    refused = [result for result in results if isinstance(result, TooManyParticipants)]
    assert len(refused) == 7, results  # every other outcome is a success
    members = await store.get_participants(cid)
    assert members is not None
    assert len(members) == 5


# --- DeviceStore ------------------------------------------------------------------------------------
def device(token: str, user: str, platform: str = "ios") -> Device:
    return Device(token=token, platform=platform, user_id=user, updated_at=T0)  # type: ignore[arg-type]


async def test_devices_are_found_by_user(store: ChatStore) -> None:
    for item in (device("t1", "alice"), device("t2", "alice", "web"), device("t3", "bob", "android")):
        await store.put_device(item)
    assert await store.devices_for(["alice", "bob", "carol"]) == {
        "alice": [device("t1", "alice"), device("t2", "alice", "web")],
        "bob": [device("t3", "bob", "android")],
    }


async def test_a_token_registered_again_moves_to_its_new_user(store: ChatStore) -> None:
    await store.put_device(device("shared-phone", "alice"))
    await store.put_device(device("shared-phone", "bob", "android"))
    assert await store.devices_for(["alice", "bob"]) == {"bob": [device("shared-phone", "bob", "android")]}


async def test_a_user_deletes_only_their_own_token(store: ChatStore) -> None:
    await store.put_device(device("t1", "alice"))
    assert await store.delete_device("bob", "t1") is False
    assert await store.devices_for(["alice"]) == {"alice": [device("t1", "alice")]}
    assert await store.delete_device("alice", "t1") is True
    assert await store.devices_for(["alice"]) == {}
    assert await store.delete_device("alice", "t1") is False


async def test_devices_of_many_users_are_found(store: ChatStore) -> None:
    users = [f"user{i}" for i in range(45)]  # more than one "in" query's worth on Firestore
    for user in users:
        await store.put_device(device(f"token-{user}", user))
    found = await store.devices_for(users)
    assert sorted(found) == sorted(users)


async def test_a_device_token_with_slashes_is_stored_verbatim(store: ChatStore) -> None:
    token = "fcm:APA91b/abc+def/=="
    await store.put_device(device(token, "alice"))
    assert (await store.devices_for(["alice"]))["alice"][0].token == token


async def test_past_the_device_limit_the_least_recently_registered_are_evicted(store: ChatStore) -> None:
    for minute, token in enumerate(["t-old", "t-mid", "t-new"]):
        registered = msgspec_replace(device(token, "alice"), updated_at=T0 + dt.timedelta(minutes=minute))
        assert await store.put_device(registered, max_devices=3) == []
    await store.put_device(device("bobs", "bob"), max_devices=3)
    # Registering t-old again refreshes it: t-mid is now the least recently registered.
    latest = T0 + dt.timedelta(minutes=10)
    assert (
        await store.put_device(msgspec_replace(device("t-old", "alice"), updated_at=latest), max_devices=3)
        == []
    )
    fourth = msgspec_replace(device("t-4th", "alice"), updated_at=latest + dt.timedelta(minutes=1))
    assert await store.put_device(fourth, max_devices=3) == ["t-mid"]
    found = await store.devices_for(["alice", "bob"])
    assert [d.token for d in found["alice"]] == ["t-4th", "t-new", "t-old"]
    assert [d.token for d in found["bob"]] == ["bobs"]  # another user's devices never count


async def test_the_device_being_registered_is_never_the_one_evicted(store: ChatStore) -> None:
    await store.put_device(msgspec_replace(device("newer", "alice"), updated_at=T0), max_devices=1)
    # Its clock is behind the stored one's: still the one kept.
    behind = msgspec_replace(device("phone", "alice"), updated_at=T0 - dt.timedelta(hours=1))
    assert await store.put_device(behind, max_devices=1) == ["newer"]
    assert [d.token for d in (await store.devices_for(["alice"]))["alice"]] == ["phone"]


async def test_concurrent_registrations_never_pass_the_device_limit(store: ChatStore) -> None:
    tokens = [f"token-{i:02d}" for i in range(12)]
    results = await asyncio.gather(
        *(
            store.put_device(msgspec_replace(device(token, "alice"), updated_at=now()), max_devices=3)
            for token in tokens
        )
    )
    found = [d.token for d in (await store.devices_for(["alice"]))["alice"]]
    assert len(found) == 3
    evicted = [token for tokens_evicted in results for token in tokens_evicted]
    assert sorted(evicted + found) == tokens  # each token kept or evicted exactly once


async def test_a_device_keeps_the_push_service_its_token_is_for(store: ChatStore) -> None:
    apns = msgspec_replace(device("a" * 64, "alice"), provider="apns")
    await store.put_device(apns)
    await store.put_device(device("fcm-token-1", "alice", "android"))
    found = await store.devices_for(["alice"])
    assert [(d.token, d.provider) for d in found["alice"]] == [("a" * 64, "apns"), ("fcm-token-1", "fcm")]
    # Registered again for the other service (the app switched push stacks): the latest wins.
    await store.put_device(device("a" * 64, "alice"))
    assert (await store.devices_for(["alice"]))["alice"][0].provider == "fcm"


# --- OutboxStore (create_message writes the entries) ------------------------------------------------
async def test_pending_outbox_is_oldest_first_and_respects_the_age(store: ChatStore) -> None:
    cid = await new_conversation(store)
    oldest = text(now() - dt.timedelta(seconds=300))
    older = text(now() - dt.timedelta(seconds=200))
    fresh = text(now())
    for message in (older, fresh, oldest):
        await store.create_message(cid, message)
    pending = await store.pending_outbox(older_than=60, limit=10)
    assert [e.message_id for e in pending] == [oldest.message_id, older.message_id]
    limited = await store.pending_outbox(older_than=60, limit=1)
    assert [e.message_id for e in limited] == [oldest.message_id]


async def test_deleted_outbox_entries_are_gone(store: ChatStore) -> None:
    cid = await new_conversation(store)
    first, second = text(now() - dt.timedelta(seconds=10)), text(now() - dt.timedelta(seconds=5))
    await store.create_message(cid, first)
    await store.create_message(cid, second)
    await store.delete_outbox([first.message_id, "unknown"])
    pending = await store.pending_outbox(older_than=0, limit=10)
    assert [e.message_id for e in pending] == [second.message_id]
    assert await store.get_message(cid, first.message_id) == first  # the message itself stays


async def test_outbox_stats_count_and_age(store: ChatStore) -> None:
    assert await store.outbox_stats() == (0, None)
    cid = await new_conversation(store)
    old, new = text(T0), text(T0 + dt.timedelta(seconds=3))
    await store.create_message(cid, new)
    await store.create_message(cid, old)
    assert await store.outbox_stats() == (2, T0)


# --- the event outbox: every change a client acts on commits with its entry ---------------------------
TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


async def outbox_of(store: ChatStore) -> list[OutboxEntry]:
    return await store.pending_outbox(older_than=-60, limit=100)  # fresh ones too


async def test_a_new_conversation_commits_its_membership_event(store: ChatStore) -> None:
    created = conversation(("alice", "bob"))
    event = new_event("membership.changed", created.conversation_id, added=created.participants, trace=TRACE)
    await store.create_conversation(created, event=event)
    assert await outbox_of(store) == [event]
    with pytest.raises(ConversationExists):
        await store.create_conversation(
            created, event=new_event("membership.changed", created.conversation_id)
        )
    assert await outbox_of(store) == [event]  # the refused create wrote no event either


async def test_added_and_removed_members_commit_their_membership_events(store: ChatStore) -> None:
    cid = await new_conversation(store)
    joined = new_event("membership.changed", cid, added=["carol", "dave"])
    await store.add_participants(cid, ["carol", "dave"], event=joined)
    left = new_event("membership.changed", cid, removed=["bob"])
    await store.remove_participant(cid, "bob", event=left)
    assert sorted(await outbox_of(store), key=lambda e: e.created_at) == [joined, left]
    assert (joined.added, left.removed) == (("carol", "dave"), ("bob",))
    with pytest.raises(ConversationNotFound):
        await store.add_participants(
            "nope", ["bob"], event=new_event("membership.changed", "nope", added=["bob"])
        )
    assert len(await outbox_of(store)) == 2


async def test_a_read_receipt_commits_its_event_with_the_message_as_read(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text(now() - dt.timedelta(seconds=30))
    await store.create_message(cid, message)
    await store.delete_outbox([message.message_id])
    event = new_event("message.read", cid, user_id="bob", trace=TRACE)
    read = await store.mark_read(cid, message.message_id, "bob", event=event)
    assert read is not None
    [entry] = await outbox_of(store)
    assert entry == msgspec_replace(event, message=read[0])
    assert entry.message is not None
    assert entry.message.read_by == ("alice", "bob")
    # Read again: nothing changed, nothing to announce.
    await store.mark_read(cid, message.message_id, "bob", event=new_event("message.read", cid, user_id="bob"))
    assert await outbox_of(store) == [entry]


async def test_a_finished_image_commits_its_update_event_once(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = image(cid, now() - dt.timedelta(seconds=30))
    await store.create_message(cid, message)
    await store.delete_outbox([message.message_id])
    assert message.metadata is not None
    failed = msgspec_replace(message.metadata, status="failed", error="not_an_image")
    event = new_event("message.updated", cid, trace=TRACE)
    finished = await store.finish_image(cid, message.message_id, failed, event=event)
    assert finished is not None
    assert await outbox_of(store) == [msgspec_replace(event, message=finished)]
    # A redelivered job finishes nothing and announces nothing.
    again = new_event("message.updated", cid)
    assert await store.finish_image(cid, message.message_id, failed, event=again) is None
    assert [e.event_id for e in await outbox_of(store)] == [event.event_id]


async def test_events_of_every_kind_are_relayed_oldest_first_and_deleted_by_id(store: ChatStore) -> None:
    cid = await new_conversation(store)
    message = text(now() - dt.timedelta(seconds=30))
    await store.create_message(cid, message)
    read = new_event("message.read", cid, user_id="bob")
    await store.mark_read(cid, message.message_id, "bob", event=read)
    joined = new_event("membership.changed", cid, added=["carol"])
    await store.add_participants(cid, ["carol"], event=joined)
    pending = await outbox_of(store)
    assert [e.kind for e in pending] == ["message.created", "message.read", "membership.changed"]
    await store.delete_outbox([read.event_id])
    assert [e.event_id for e in await outbox_of(store)] == [message.message_id, joined.event_id]
    assert (await store.outbox_stats())[0] == 2


# --- relay claims: replicas share the outbox instead of each relaying all of it ------------------------
async def stored_texts(store: ChatStore, count: int) -> list[str]:
    cid = await new_conversation(store)
    messages = [text(now() - dt.timedelta(seconds=60 - n)) for n in range(count)]
    for message in messages:
        await store.create_message(cid, message)
    return [m.message_id for m in messages]


async def test_a_claimed_entry_is_not_claimed_again_within_its_lease(store: ChatStore) -> None:
    ids = await stored_texts(store, 3)
    first = await store.claim_outbox(older_than=0, limit=2, lease=LEASE)
    assert [e.event_id for e in first] == ids[:2]  # oldest first
    second = await store.claim_outbox(older_than=0, limit=10, lease=LEASE)
    assert [e.event_id for e in second] == ids[2:]  # the held ones are skipped, not waited for
    assert await store.claim_outbox(older_than=0, limit=10, lease=LEASE) == []
    assert [e.event_id for e in await store.pending_outbox(older_than=0, limit=10)] == ids  # still there


async def test_a_lapsed_claim_is_taken_again(store: ChatStore) -> None:
    # Its holder died between the claim and the delete: another replica relays it after the lease.
    ids = await stored_texts(store, 1)
    assert [e.event_id for e in await store.claim_outbox(older_than=0, limit=10, lease=SHORT_LEASE)] == ids
    await asyncio.sleep(SHORT_LEASE.total_seconds() + 0.1)
    assert [e.event_id for e in await store.claim_outbox(older_than=0, limit=10, lease=LEASE)] == ids


async def test_a_released_claim_is_taken_at_once(store: ChatStore) -> None:
    ids = await stored_texts(store, 2)
    await store.claim_outbox(older_than=0, limit=10, lease=LEASE)
    await store.release_outbox([ids[1], "unknown"])
    assert [e.event_id for e in await store.claim_outbox(older_than=0, limit=10, lease=LEASE)] == [ids[1]]


async def test_a_claim_respects_the_age(store: ChatStore) -> None:
    cid = await new_conversation(store)
    await store.create_message(cid, text(now()))
    assert await store.claim_outbox(older_than=60, limit=10, lease=LEASE) == []


async def test_concurrent_claimers_each_get_an_entry_once(store: ChatStore) -> None:
    ids = await stored_texts(store, 12)
    claims = await asyncio.gather(
        *(store.claim_outbox(older_than=0, limit=12, lease=LEASE) for _ in range(4))
    )
    claimed = [e.event_id for claim in claims for e in claim]
    assert sorted(claimed) == sorted(ids)  # every entry, and none twice


# --- PushReceiptStore -------------------------------------------------------------------------------
LEASE = dt.timedelta(seconds=60)
SHORT_LEASE = dt.timedelta(seconds=0.5)


async def claim(store: ChatStore, notification_id: str, token: str, lease: dt.timedelta = LEASE) -> str:
    return (await store.claim_push(notification_id, token, lease=lease)).state


async def test_a_push_is_claimed_once_per_device_and_notification(store: ChatStore) -> None:
    assert await claim(store, "m1:0", "token-a") == "claimed"
    assert await claim(store, "m1:0", "token-a") == "leased"
    assert await claim(store, "m1:0", "token-b") == "claimed"
    assert await claim(store, "m2:0", "token-a") == "claimed"


async def test_within_its_lease_a_claim_refuses_a_second_one_and_says_until_when(store: ChatStore) -> None:
    before = dt.datetime.now(dt.UTC)
    first = await store.claim_push("m1:0", "token-a", lease=LEASE)
    assert first.state == "claimed"
    assert first.leased_until is not None
    assert before + LEASE <= first.leased_until <= dt.datetime.now(dt.UTC) + LEASE
    second = await store.claim_push("m1:0", "token-a", lease=LEASE)
    assert second.state == "leased"
    assert second.leased_until == first.leased_until


async def test_after_its_lease_a_claim_can_be_taken_again(store: ChatStore) -> None:
    """The claimer crashed between claim and push: once the lease has run out, a redelivery claims it."""
    assert await claim(store, "m1:0", "token-a", SHORT_LEASE) == "claimed"
    await asyncio.sleep(SHORT_LEASE.total_seconds() + 0.1)
    assert await claim(store, "m1:0", "token-a") == "claimed"
    assert await claim(store, "m1:0", "token-a") == "leased"  # the new claim holds its own lease


async def test_a_done_push_is_never_claimed_again(store: ChatStore) -> None:
    assert await claim(store, "m1:0", "token-a", SHORT_LEASE) == "claimed"
    await store.complete_push("m1:0", "token-a")
    assert await claim(store, "m1:0", "token-a") == "done"
    await asyncio.sleep(SHORT_LEASE.total_seconds() + 0.1)
    assert await claim(store, "m1:0", "token-a") == "done"
    await store.release_push("m1:0", "token-a")  # a late release of a done push changes nothing
    assert await claim(store, "m1:0", "token-a") == "done"
    assert await claim(store, "m1:0", "token-b") == "claimed"


async def test_a_released_push_can_be_claimed_again(store: ChatStore) -> None:
    assert await claim(store, "m1:0", "token-a") == "claimed"
    await store.release_push("m1:0", "token-a")
    assert await claim(store, "m1:0", "token-a") == "claimed"


async def test_concurrent_claims_have_one_winner(store: ChatStore) -> None:
    results = await asyncio.gather(*(claim(store, "m1:0", "token-a") for _ in range(5)))
    assert sorted(results) == ["claimed", "leased", "leased", "leased", "leased"]


async def test_concurrent_claims_of_a_lapsed_lease_have_one_winner(store: ChatStore) -> None:
    assert await claim(store, "m1:0", "token-a", SHORT_LEASE) == "claimed"
    await asyncio.sleep(SHORT_LEASE.total_seconds() + 0.1)
    results = await asyncio.gather(*(claim(store, "m1:0", "token-a") for _ in range(5)))
    assert sorted(results) == ["claimed", "leased", "leased", "leased", "leased"]


async def test_a_sqlite_receipt_from_before_leases_counts_as_done(tmp_path: Path) -> None:
    """Data dirs made before claims had leases: their receipts were pushes (or claims) never to repeat."""
    path = tmp_path / "messages.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE push_receipts (notification_id TEXT NOT NULL, device_token TEXT NOT NULL,"
            " claimed_at INTEGER NOT NULL, PRIMARY KEY (notification_id, device_token)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO push_receipts VALUES ('m1:0', 'token-a', ?)", (micros(dt.datetime.now(dt.UTC)),)
        )
    conn.close()
    store = SqliteChatStore(path)
    await store.start()
    try:
        assert await claim(store, "m1:0", "token-a") == "done"
        assert await claim(store, "m1:0", "token-b") == "claimed"
    finally:
        await store.close()


async def test_a_sqlite_outbox_from_before_the_event_outbox_is_relayed_as_message_created(
    tmp_path: Path,
) -> None:
    # A data dir written by the previous release: the outbox keyed by message_id, entries without a kind.
    path = tmp_path / "messages.sqlite3"
    message = text(now() - dt.timedelta(seconds=30))
    legacy_body = msgspec.json.encode(
        {"conversation_id": "c-1", "message": message, "created_at": message.timestamp, "trace": {}}
    )
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE outbox"
            " (message_id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, body BLOB NOT NULL)"
        )
        conn.execute("CREATE INDEX outbox_by_age ON outbox (created_at, message_id)")
        conn.execute(
            "INSERT INTO outbox VALUES (?, ?, ?)",
            (message.message_id, micros(message.timestamp), legacy_body),
        )
    store = SqliteChatStore(path)
    await store.start()
    try:
        [entry] = await store.claim_outbox(older_than=0, limit=10, lease=LEASE)
        assert (entry.event_id, entry.kind, entry.message) == (message.message_id, "message.created", message)
        await store.delete_outbox([entry.event_id])
        assert await store.outbox_stats() == (0, None)
    finally:
        await store.close()
