"""Firestore load model: the code's real writes, counted on the emulator, projected to a target rate.

    uv run python -m bench.firestore_model [--rate 3300] [--messages 300] [--busy-seconds 3]

The message service's own code (``FirestoreChatStore``, the event outbox, ``LastMessageWriter`` with its
write lease) runs a sample of the traffic against the Firestore emulator, and every document write the
client commits is recorded (``AsyncWriteBatch.commit`` is where all of them pass). From the sample:

* **writes per message**, by collection, as the send path, the relay, read receipts and the media
  processor really make them (a send and its ``message.created`` entry and its delete; one read receipt
  and its ``message.read`` entry and delete; for one message in five, an image finished with its
  ``message.updated`` entry and delete; the conversation summary through the lease);
* **index ranges**: the writes into each range of an index whose values only grow (a single-field index
  not exempted in ``firestore.indexes.json``, or the outbox's composite ``shard, createdAt``, counted per
  shard as the ids really spread); a range takes about 500 writes/s before Firestore hot-spots it;
* **one document**: a busy conversation (a message every 0.1 s, as fast as the emulator takes them, for
  ``--busy-seconds``) and how often its document is written (the summary lease: at most once per second
  across pods);
* **the database**: all writes per second.

Each projected to ``--rate`` messages/s (default 3,300: a million online users sending one message every
five minutes) and printed against Google's published limits (docs/operations/scaling.md cites them):
500 writes/s per range of sequential index values, 1 sustained write/s per document, 10,000 writes/s per
database. A row over its limit is marked NO (and fails the run with ``--strict``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from google.cloud.firestore_v1.async_batch import AsyncWriteBatch

import chat_devstack as devstack
from chat_core.chatstore import Conversation, ImageMetadata, LastMessage, Message, new_event
from chat_core.chatstore.firestore import OUTBOX, OUTBOX_SHARDS, FirestoreChatStore, outbox_shard
from chat_core.composition import Composition
from chat_core.leases.memory import MemoryWriteLeases
from chat_core.settings import load_settings
from message_service.last_message import LastMessageWriter

ROOT = Path(__file__).resolve().parents[1]
RANGE_LIMIT = 500.0  # writes/s into one range of sequential index values
DOCUMENT_LIMIT = 1.0  # sustained writes/s to one document
DATABASE_LIMIT = 10_000.0  # writes/s per database
IMAGE_SHARE = 5  # one message in five is an image


@dataclass
class Write:
    path: str  # the document's path under the database's documents
    kind: str  # "create", "update", "delete"
    fields: frozenset[str]
    at: float = field(default_factory=time.monotonic)

    @property
    def collection(self) -> str:
        parts = self.path.split("/")
        return parts[-2]


@dataclass
class Recorder:
    writes: list[Write] = field(default_factory=list)

    @contextmanager
    def recording(self) -> Iterator[None]:
        original = AsyncWriteBatch.commit
        recorder = self

        async def commit(batch: AsyncWriteBatch, *args: Any, **kwargs: Any) -> Any:
            for pb in batch._write_pbs:
                if pb.delete:
                    recorder.writes.append(Write(_path(pb.delete), "delete", frozenset()))
                else:
                    kind = "create" if pb.current_document.exists is False else "update"
                    recorder.writes.append(
                        Write(_path(pb.update.name), kind, frozenset(pb.update.fields.keys()))
                    )
            return await original(batch, *args, **kwargs)

        AsyncWriteBatch.commit = commit  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            AsyncWriteBatch.commit = original  # type: ignore[method-assign]


def _path(name: str) -> str:
    return name.split("/documents/", 1)[1]


def _exempt() -> set[tuple[str, str]]:
    data = json.loads((ROOT / "firestore.indexes.json").read_text())
    return {(o["collectionGroup"], o["fieldPath"]) for o in data["fieldOverrides"] if o["indexes"] == []}


# Fields whose values only grow (times), by collection: their single-field index is one hot range unless
# exempt, or unless the collection is a subcollection (then one range per parent).
MONOTONIC = {
    "conversations": ("createdAt", "updatedAt"),
    "messages": ("timestamp",),
    "outbox": ("createdAt",),
    "devices": ("updatedAt",),
    "pushReceipts": ("claimedAt", "expireAt"),
}


def message(sender: str, *, image: bool, cid: str) -> Message:
    metadata = None
    if image:
        key = f"images/{sender}/20260101-000000-{uuid.uuid4()}.jpg"
        metadata = ImageMetadata(
            object_key=key,
            url=f"https://chat.example/images/{cid}/{key}",
            content_type="image/jpeg",
            size_bytes=1000,
            width=10,
            height=10,
            status="processing",
        )
    return Message(
        message_id=str(uuid.uuid4()),
        content=None if image else "hello",
        message_type="image" if image else "text",
        sender_id=sender,
        timestamp=dt.datetime.now(dt.UTC),
        read_by=(sender,),
        metadata=metadata,
    )


async def conversation(store: FirestoreChatStore, members: tuple[str, ...]) -> str:
    cid = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    await store.create_conversation(
        Conversation(conversation_id=cid, participants=members, name=None, created_at=now, updated_at=now)
    )
    return cid


async def one_message(store: FirestoreChatStore, summaries: LastMessageWriter, cid: str, n: int) -> None:
    """What the code writes for one message: send, relay, one read receipt, the image's finish."""
    image = n % IMAGE_SHARE == 0
    sent = message("alice", image=image, cid=cid)
    await store.create_message(
        cid, sent, object_key=f"{cid}/{sent.metadata.object_key}" if sent.metadata else None
    )
    await store.delete_outbox([sent.message_id])  # its delivery released it
    await summaries.touch(
        cid,
        LastMessage(
            message_id=sent.message_id,
            sender_id="alice",
            message_type=sent.message_type,
            preview="hello",
            timestamp=sent.timestamp,
        ),
    )
    read = new_event("message.read", cid, user_id="bob")
    await store.mark_read(cid, sent.message_id, "bob", event=read)
    await store.delete_outbox([read.event_id])
    if sent.metadata is not None:
        updated = new_event("message.updated", cid)
        ready = msgspec.structs.replace(sent.metadata, status="ready")
        await store.finish_image(cid, sent.message_id, ready, event=updated)
        await store.delete_outbox([updated.event_id])


@dataclass
class Row:
    what: str
    per_second: float
    limit: float | None  # None: no published limit of its own (counted into the database's)

    @property
    def ok(self) -> bool:
        return self.limit is None or self.per_second <= self.limit


async def measure(address: str, *, rate: float, messages: int, busy_seconds: float) -> list[Row]:
    project = f"model-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(
            {
                "MESSAGE_STORE": "firestore",
                "FIRESTORE_PROJECT_ID": project,
                "FIRESTORE_EMULATOR_HOST": address,
                "DATA_DIR": data_dir,
                "AUTH_JWT_SECRET": "model-secret-0123456789abcdef-0123456789",
            }
        )
        backends = Composition(settings)
        store = backends.chat_store
        assert isinstance(store, FirestoreChatStore)
        async with backends:
            leases = MemoryWriteLeases()  # every pod of the deployment shares it, as Redis would
            summaries = LastMessageWriter(store, leases=leases, interval=1.0)
            conversations = [
                await conversation(store, ("alice", "bob")) for _ in range(max(1, messages // 3))
            ]
            recorder = Recorder()
            with recorder.recording():
                for n in range(messages):  # spread: each conversation gets a few, well apart
                    await one_message(store, summaries, conversations[n % len(conversations)], n)
            sample = recorder.writes
            busy = await conversation(store, ("alice", "bob"))
            busy_recorder = Recorder()
            async with summaries.worker():
                with busy_recorder.recording():
                    started = time.monotonic()
                    n = 0
                    while time.monotonic() - started < busy_seconds:
                        await one_message(store, summaries, busy, n * IMAGE_SHARE + 1)  # texts
                        n += 1
                        await asyncio.sleep(0.1)  # 10 messages/s in one conversation
                    elapsed = time.monotonic() - started
    return rows(sample, messages, busy_recorder.writes, busy, elapsed, rate, busy_rate=n / elapsed)


def rows(
    sample: list[Write],
    messages: int,
    busy: list[Write],
    busy_cid: str,
    elapsed: float,
    rate: float,
    *,
    busy_rate: float,
) -> list[Row]:
    scale = rate / messages
    out: list[Row] = []
    by_collection = collections.Counter(w.collection for w in sample)
    for collection_name, count in sorted(by_collection.items()):
        out.append(
            Row(
                f"collection {collection_name}: writes/s ({count / messages:.2f} per message)",
                count * scale,
                None,
            )
        )
    exempt = _exempt()
    for collection_name, names in MONOTONIC.items():
        for name in names:
            if (collection_name, name) in exempt:
                continue
            touching = [
                w
                for w in sample
                if w.collection == collection_name and (w.kind == "delete" or name in w.fields)
            ]
            if not touching:
                continue
            if collection_name == "messages":
                # A subcollection: one range per conversation, written at that conversation's own rate.
                mine = [w for w in busy if w.path.startswith(f"conversations/{busy_cid}/messages/")]
                indexed = [w for w in mine if w.kind == "delete" or name in w.fields]
                out.append(
                    Row(
                        f"index {collection_name}.{name}: writes/s into a busy conversation's range"
                        f" ({busy_rate:.1f} msg/s)",
                        len(indexed) / elapsed,
                        RANGE_LIMIT,
                    )
                )
            else:
                out.append(
                    Row(
                        f"index {collection_name}.{name}: writes/s into its one range (sequential values)",
                        len(touching) * scale,
                        RANGE_LIMIT,
                    )
                )
    outbox = [w for w in sample if w.collection == OUTBOX]
    shards = collections.Counter(_shard_of(w) for w in outbox)
    busiest = max(shards.values()) if shards else 0
    # The busiest shard as measured (ids hash unevenly in a small sample: an upper bound on the even share).
    out.append(
        Row(
            f"index outbox(shard, createdAt): writes/s into the busiest of {OUTBOX_SHARDS} shards",
            max(busiest, len(outbox) / OUTBOX_SHARDS) * scale,
            RANGE_LIMIT,
        )
    )
    # Sustained: between its first and its last write (the first is at once, then one per lease).
    times = [w.at for w in busy if w.collection == "conversations" and w.path.endswith(busy_cid)]
    sustained = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    out.append(
        Row(
            "document: a conversation at 10 messages/s, writes/s to its document",
            round(sustained, 1),
            DOCUMENT_LIMIT,
        )
    )
    out.append(
        Row(
            f"database: all writes/s ({len(sample) / messages:.2f} per message)",
            len(sample) * scale,
            DATABASE_LIMIT,
        )
    )
    return out


def _shard_of(write: Write) -> int:
    return outbox_shard(write.path.rsplit("/", 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rate", type=float, default=3300.0, help="target messages per second")
    parser.add_argument("--messages", type=int, default=300, help="messages in the counted sample")
    parser.add_argument("--busy-seconds", type=float, default=3.0, help="how long one conversation is busy")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a row is over its limit")
    args = parser.parse_args(argv)
    emulator = None
    address = os.environ.get("FIRESTORE_EMULATOR_HOST", "")
    if not address:
        emulator = devstack.start_local_firestore()
        address = emulator.address
    try:
        table = asyncio.run(
            measure(address, rate=args.rate, messages=args.messages, busy_seconds=args.busy_seconds)
        )
    finally:
        if emulator is not None:
            emulator.stop()
    counted = f"{args.messages} messages counted on the emulator"
    print(f"\nFirestore load model at {args.rate:,.0f} messages/s ({counted})\n")
    print(f"| {'what':<84} | {'writes/s':>10} | {'limit':>8} |  ok |")
    print(f"|{'-' * 86}|{'-' * 12}|{'-' * 10}|-----|")
    for row in table:
        verdict = "-" if row.limit is None else "yes" if row.ok else "NO"
        limit = "-" if row.limit is None else f"{row.limit:,.0f}"
        print(f"| {row.what:<84} | {row.per_second:>10,.1f} | {limit:>8} | {verdict:>3} |")
    failed = [row for row in table if not row.ok]
    for row in failed:
        print(f"!!! over Google's published limit: {row.what}", file=sys.stderr)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
