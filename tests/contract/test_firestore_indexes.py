"""``firestore.indexes.json`` covers the Firestore adapter's queries and exempts none of their fields."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from chat_core.chatstore import firestore

INDEXES = Path(__file__).resolve().parents[2] / "firestore.indexes.json"
# (collection, field) pairs the adapter's queries filter or order on with a single-field index.
QUERIED = {
    (firestore.MESSAGES, "timestamp"),  # one conversation's messages: a range per conversation
    (firestore.DEVICES, "userId"),
}
# Fields whose values only grow: their single-field index is one range written at the deployment's whole
# rate (Firestore hot-spots past ~500 writes/s), so each is exempt (queries use composite indexes).
MONOTONIC = {
    (firestore.CONVERSATIONS, "createdAt"),
    (firestore.CONVERSATIONS, "updatedAt"),
    (firestore.OUTBOX, "createdAt"),
    (firestore.OUTBOX, "leasedUntil"),
    (firestore.DEVICES, "updatedAt"),
    (firestore.PUSH_RECEIPTS, "claimedAt"),
    (firestore.PUSH_RECEIPTS, "leasedUntil"),
    (firestore.PUSH_RECEIPTS, "expireAt"),
    (firestore.OUTBOX_SHARD_LEASES, "leasedUntil"),
}
COLLECTIONS = {
    firestore.CONVERSATIONS,
    firestore.MESSAGES,
    firestore.IMAGE_REFS,
    firestore.OUTBOX,
    firestore.OUTBOX_SHARD_LEASES,
    firestore.DEVICES,
    firestore.PUSH_RECEIPTS,
}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(INDEXES.read_text())
    return data


def test_my_conversations_query_has_its_composite_index() -> None:
    assert {
        "collectionGroup": "conversations",
        "queryScope": "COLLECTION",
        "fields": [
            {"fieldPath": "participants", "arrayConfig": "CONTAINS"},
            {"fieldPath": "updatedAt", "order": "DESCENDING"},
        ],
    } in load()["indexes"]


def test_the_outbox_is_read_per_shard_through_its_composite_index() -> None:
    assert {
        "collectionGroup": "outbox",
        "queryScope": "COLLECTION",
        "fields": [
            {"fieldPath": "shard", "order": "ASCENDING"},
            {"fieldPath": "createdAt", "order": "ASCENDING"},
        ],
    } in load()["indexes"]


def test_every_monotonically_increasing_field_is_exempt_from_its_single_field_index() -> None:
    exempt = {(o["collectionGroup"], o["fieldPath"]) for o in load()["fieldOverrides"] if o["indexes"] == []}
    assert exempt >= MONOTONIC


def test_no_queried_field_is_exempt_from_indexing() -> None:
    exempt = {(o["collectionGroup"], o["fieldPath"]) for o in load()["fieldOverrides"] if o["indexes"] == []}
    assert not exempt & QUERIED


def test_overrides_name_only_collections_the_adapter_uses() -> None:
    data = load()
    groups = {o["collectionGroup"] for o in data["fieldOverrides"]} | {
        i["collectionGroup"] for i in data["indexes"]
    }
    assert groups <= COLLECTIONS


def test_push_receipts_expire_by_ttl() -> None:
    assert {"collectionGroup": "pushReceipts", "fieldPath": "expireAt", "ttl": True, "indexes": []} in load()[
        "fieldOverrides"
    ]


def test_the_setup_script_applies_every_index_and_exemption_of_the_file() -> None:
    spec = importlib.util.spec_from_file_location(
        "firestore_indexes", INDEXES.parent / "scripts" / "firestore_indexes.py"
    )
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lines = [" ".join(c) for c in script.commands(load(), "p", "(default)")]
    for group, field in MONOTONIC:
        assert any(
            f"fields update {field} --collection-group={group} --disable-indexes" in line for line in lines
        )
    assert any(
        "composite create --collection-group=outbox" in line
        and "field-path=shard,order=ascending --field-config=field-path=createdAt,order=ascending" in line
        for line in lines
    )
    assert any("ttls update expireAt --collection-group=pushReceipts --enable-ttl" in line for line in lines)
