"""The Firestore outbox is sharded: no single index range takes every event's writes, and relays split a
backlog by shard (the emulator, through the adapter's own queries)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat_core.chatstore import Conversation, Message
from chat_core.chatstore.firestore import (
    OUTBOX,
    OUTBOX_SHARD_LEASES,
    OUTBOX_SHARDS,
    FirestoreChatStore,
    outbox_shard,
)
from chat_core.composition import Composition
from tests.conftest import make_settings

pytestmark = pytest.mark.firestore
LEASE = dt.timedelta(seconds=60)


@pytest.fixture
async def store(
    tmp_path: Path, firestore_project: str, firestore_emulator: Any
) -> AsyncIterator[FirestoreChatStore]:
    env = {
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_PROJECT_ID": firestore_project,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.address,
    }
    backends = Composition(make_settings(tmp_path, env))
    store = backends.chat_store
    assert isinstance(store, FirestoreChatStore)
    async with backends:
        yield store


async def backlog(store: FirestoreChatStore, count: int) -> list[str]:
    cid = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    await store.create_conversation(
        Conversation(conversation_id=cid, participants=("alice",), name=None, created_at=now, updated_at=now)
    )
    ids = []
    for n in range(count):
        message = Message(
            message_id=str(uuid.uuid4()),
            content="hi",
            message_type="text",
            sender_id="alice",
            timestamp=now - dt.timedelta(seconds=60 - n / 10),
            read_by=("alice",),
        )
        await store.create_message(cid, message)
        ids.append(message.message_id)
    return ids


async def test_entries_are_spread_over_the_shards_by_their_id(store: FirestoreChatStore) -> None:
    ids = await backlog(store, 40)
    stored = {s.id: s.get("shard") async for s in store.client.collection(OUTBOX).stream()}
    assert stored == {event_id: outbox_shard(event_id) for event_id in ids}
    assert len(set(stored.values())) > OUTBOX_SHARDS // 4  # 40 ids over 64 shards: ~30 are used
    # Read back across every shard, oldest first.
    assert [e.event_id for e in await store.pending_outbox(older_than=0, limit=100)] == ids
    assert await store.outbox_stats() == (
        40,
        min(e.created_at for e in await store.pending_outbox(older_than=0, limit=1)),
    )


async def test_a_shard_another_relay_holds_is_left_to_it(store: FirestoreChatStore) -> None:
    ids = await backlog(store, 20)
    held = outbox_shard(ids[0])
    await (
        store.client.collection(OUTBOX_SHARD_LEASES)
        .document(str(held))
        .create({"leasedUntil": dt.datetime.now(dt.UTC) + LEASE})
    )
    claimed = [e.event_id for e in await store.claim_outbox(older_than=0, limit=100, lease=LEASE)]
    assert claimed == [event_id for event_id in ids if outbox_shard(event_id) != held]  # oldest first
    # The pass gave up its own shard leases (the entries hold theirs): only the other relay's is left.
    leases = [s.id async for s in store.client.collection(OUTBOX_SHARD_LEASES).stream()]
    assert leases == [str(held)]


async def test_a_lapsed_shard_lease_is_taken_over(store: FirestoreChatStore) -> None:
    ids = await backlog(store, 1)
    await (
        store.client.collection(OUTBOX_SHARD_LEASES)
        .document(str(outbox_shard(ids[0])))
        .create(
            {"leasedUntil": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)}  # its relay died mid-pass
        )
    )
    assert [e.event_id for e in await store.claim_outbox(older_than=0, limit=10, lease=LEASE)] == ids
