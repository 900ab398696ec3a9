"""Orphan cleanup deletes exactly the unreferenced objects past their grace period, on every store pair:
local disk + SQLite, and S3 (LocalStack, signatures checked) + Firestore (the emulator)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, put
from litestar.params import FromPath
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from chat_core.backends import Backends
from chat_core.keys import new_object_key, stored_key
from chat_core.messagestore import ChatStore, Conversation, ImageMetadata, Message, MessageStore
from chat_core.objectstore import ObjectStore
from chat_core.settings import Settings
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique
from upload_service import cleanup

GRACE = 3600
LATER = dt.timedelta(seconds=GRACE + 60)  # "now" for a run that sees every object as past its grace


@dataclass
class Stores:
    kind: str
    settings: Settings
    objects: ObjectStore
    messages: ChatStore

    async def conversation(self, *members: str) -> str:
        conversation_id = uuid.uuid4().hex[:12]
        now = dt.datetime.now(dt.UTC)
        await self.messages.create_conversation(
            Conversation(
                conversation_id=conversation_id,
                participants=members,
                name=None,
                created_at=now,
                updated_at=now,
            )
        )
        return conversation_id

    async def upload(self, conversation_id: str, user: str = "alice", size: int = 100) -> str:
        """An uploaded image nobody sent yet; returns its stored key."""
        key = stored_key(conversation_id, new_object_key(user, "image/png"))
        await self.objects.put(key, b"\x89PNG\r\n\x1a\n" + b"x" * (size - 8), content_type="image/png")
        return key

    async def send(self, conversation_id: str, key: str, user: str = "alice") -> None:
        """A message that references the object ``key``."""
        object_key = key.partition("/")[2]
        message = Message(
            message_id=uuid.uuid4().hex,
            content=None,
            message_type="image",
            sender_id=user,
            timestamp=dt.datetime.now(dt.UTC),
            read_by=(user,),
            metadata=ImageMetadata(
                object_key=object_key, url=f"http://x/images/{key}", content_type="image/png", size_bytes=100
            ),
        )
        await self.messages.create_message(conversation_id, message, object_key=key)

    async def keys(self) -> set[str]:
        return {info.key async for info in self.objects.list()}

    async def run(self, **kwargs: Any) -> cleanup.CleanupReport:
        kwargs.setdefault("grace_seconds", GRACE)
        kwargs.setdefault("now", dt.datetime.now(dt.UTC) + LATER)
        return await cleanup.cleanup_orphans(self.job_objects(), self.messages, **kwargs)

    def job_objects(self) -> ObjectStore | cleanup.S3Objects:
        """What the command lists and deletes through: boto3 on S3, the port on the local disk."""
        objects = cleanup.objects_for(self.settings, self.objects)
        assert isinstance(objects, cleanup.S3Objects) == (self.kind == "cloud")
        return objects


def _env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if kind == "embedded":
        return {}
    localstack: harness.Backend = request.getfixturevalue("localstack")
    emulator: harness.Backend = request.getfixturevalue("firestore_emulator")
    return {
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": unique("cleanup"),
        "AWS_ENDPOINT_URL": localstack.address,
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_EMULATOR_HOST": emulator.address,
        "FIRESTORE_PROJECT_ID": request.getfixturevalue("firestore_project"),
    }


@pytest.fixture(
    params=["embedded", pytest.param("cloud", marks=[pytest.mark.localstack, pytest.mark.firestore])]
)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    kind = str(request.param)
    backends = Backends(make_settings(tmp_path, _env(kind, request)))
    objects, messages = backends.object_store, backends.chat_store
    async with backends:
        await objects.ensure_bucket(())
        yield Stores(kind, backends.settings, objects, messages)


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[Stores]:
    backends = Backends(settings)
    objects, messages = backends.object_store, backends.chat_store  # asked for before start-up
    async with backends:
        yield Stores("embedded", settings, objects, messages)


# --- what gets deleted -----------------------------------------------------------------------------
async def test_deletes_exactly_the_unreferenced_objects(stores: Stores) -> None:
    first, second = await stores.conversation("alice", "bob"), await stores.conversation("alice")
    sent = []
    for conversation_id in (first, first, second):
        key = await stores.upload(conversation_id)
        await stores.send(conversation_id, key)
        sent.append(key)
    orphans = [await stores.upload(first, size=1000), await stores.upload(second, size=2000)]

    report = await stores.run()

    assert await stores.keys() == set(sent)
    assert (report.deleted_objects, report.deleted_bytes) == (2, 3000)
    assert (report.scanned_objects, report.referenced_objects) == (5, 3)
    assert report.stored_objects == 3
    for key in orphans:
        assert await stores.objects.head(key) is None


async def test_keeps_orphans_still_within_the_grace_period(stores: Stores) -> None:
    conversation_id = await stores.conversation("alice")
    key = await stores.upload(conversation_id)

    report = await stores.run(now=dt.datetime.now(dt.UTC))

    assert await stores.keys() == {key}
    assert (report.young_objects, report.deleted_objects) == (1, 0)


async def test_dry_run_reports_the_orphans_and_deletes_nothing(stores: Stores) -> None:
    conversation_id = await stores.conversation("alice")
    keys = {await stores.upload(conversation_id), await stores.upload(conversation_id)}

    with capture_logs() as logs:
        report = await stores.run(dry_run=True)

    assert await stores.keys() == keys
    assert (report.orphan_objects, report.deleted_objects) == (2, 0)
    assert {entry["key"] for entry in logs if entry["event"] == "orphan_found_dry_run"} == keys


async def test_never_touches_objects_outside_the_key_layout(stores: Stores) -> None:
    foreign = {
        "backups/2024-01-01.tar",
        "c1/notes.txt",
        "c1/images/alice/profile.png",
        "uploads/c1/images/alice/profile.png",
        # A derivative, and a raw upload's key without the uploads/ prefix: neither is a raw upload.
        "c1/media/m1/original.jpg",
        f"c1/images/alice/20240419-123456-{uuid.uuid4()}.png",
    }
    for key in foreign:
        await stores.objects.put(key, b"not ours", content_type="application/octet-stream")

    report = await stores.run()

    assert await stores.keys() == foreign
    assert report.foreign_objects == len(foreign)


async def test_every_deletion_is_logged(stores: Stores) -> None:
    conversation_id = await stores.conversation("alice")
    keys = {await stores.upload(conversation_id) for _ in range(3)}

    with capture_logs() as logs:
        await stores.run()

    deleted = [entry for entry in logs if entry["event"] == "orphan_deleted"]
    assert {entry["key"] for entry in deleted} == keys
    assert all(entry["size"] == 100 and entry["last_modified"] for entry in deleted)


class BatchRecorder:
    """The real message store, recording how many keys each ``referenced_objects`` call asked about."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.batches: list[int] = []

    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        self.batches.append(len(stored_keys))
        return await self.store.referenced_objects(stored_keys)


async def test_streams_the_listing_and_asks_about_references_in_bounded_batches(stores: Stores) -> None:
    conversation_id = await stores.conversation("alice")
    keys = [await stores.upload(conversation_id) for _ in range(23)]
    for key in keys[::4]:
        await stores.send(conversation_id, key)
    recorder = BatchRecorder(stores.messages)

    report = await cleanup.cleanup_orphans(
        stores.job_objects(),
        recorder,  # type: ignore[arg-type]  # only referenced_objects is used
        grace_seconds=GRACE,
        now=dt.datetime.now(dt.UTC) + LATER,
        batch_size=5,
        page_size=3,
    )

    assert await stores.keys() == set(keys[::4])
    assert report.deleted_objects == 23 - len(keys[::4])
    assert sum(recorder.batches) == 23
    assert max(recorder.batches) == 5


# --- metrics and the command -------------------------------------------------------------------------
def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_run_records_storage_and_deletion_metrics(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"ORPHAN_GRACE_SECONDS": "0"})
    async with embedded(settings) as stores:
        conversation_id = await stores.conversation("alice")
        kept = await stores.upload(conversation_id, size=500)
        await stores.send(conversation_id, kept)
        await stores.upload(conversation_id, size=300)
    deleted_before = _sample("chat_orphan_objects_deleted_total")
    bytes_before = _sample("chat_orphan_bytes_deleted_total")

    await cleanup.run(settings, dry_run=False)

    assert _sample("chat_stored_objects") == 1
    assert _sample("chat_stored_bytes") == 500
    assert _sample("chat_orphan_objects_deleted_total") - deleted_before == 1
    assert _sample("chat_orphan_bytes_deleted_total") - bytes_before == 300
    assert (
        abs(_sample("chat_cleanup_last_success_timestamp_seconds") - dt.datetime.now(dt.UTC).timestamp()) < 60
    )


async def test_run_pushes_only_the_cleanup_metrics_to_the_pushgateway(tmp_path: Path, serve: Any) -> None:
    received: list[tuple[str, str]] = []

    @put("/metrics/job/{job:str}", status_code=200)
    async def pushgateway(request: Request[Any, Any, Any], job: FromPath[str]) -> None:
        received.append((job, (await request.body()).decode()))

    url = await serve(Litestar([pushgateway]))
    settings = make_settings(tmp_path, {"PUSHGATEWAY_URL": url})

    await cleanup.run(settings, dry_run=True)

    ((job, body),) = received
    assert job == cleanup.PUSH_JOB
    assert "chat_stored_objects" in body
    assert "chat_cleanup_last_success_timestamp_seconds" in body
    assert "chat_http_requests" not in body


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_management", *args],
        env={**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, "ACCESS_LOG": "false", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _embedded_orphan(tmp_path: Path) -> str:
    async with embedded(make_settings(tmp_path)) as stores:
        return await stores.upload(await stores.conversation("alice"))


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def test_cleanup_orphans_command_deletes_and_logs_a_summary(tmp_path: Path) -> None:
    key = await _embedded_orphan(tmp_path)

    result = _cli("cleanup-orphans", env={"DATA_DIR": str(tmp_path), "ORPHAN_GRACE_SECONDS": "0"})

    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    assert [e["key"] for e in events if e["event"] == "orphan_deleted"] == [key]
    (summary,) = [e for e in events if e["event"] == "cleanup_finished"]
    assert (summary["deleted_objects"], summary["stored_objects"]) == (1, 0)
    assert not list((tmp_path).rglob("*.png"))


async def test_cleanup_orphans_command_dry_run_keeps_the_objects(tmp_path: Path) -> None:
    key = await _embedded_orphan(tmp_path)

    result = _cli(
        "cleanup-orphans", "--dry-run", env={"DATA_DIR": str(tmp_path), "ORPHAN_GRACE_SECONDS": "0"}
    )

    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    assert [e["key"] for e in events if e["event"] == "orphan_found_dry_run"] == [key]
    assert not [e for e in events if e["event"] == "orphan_deleted"]


def test_cleanup_orphans_command_fails_loudly_when_the_store_is_unreachable(tmp_path: Path) -> None:
    result = _cli(
        "cleanup-orphans",
        env={
            "DATA_DIR": str(tmp_path),
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": "b",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        },
    )
    assert result.returncode == 1
    assert [e for e in _events(result.stdout) if e["event"] == "cleanup_failed"]
