"""Orphan cleanup deletes exactly the unreferenced objects past their grace period, on every store pair:
local disk + SQLite, and S3 (LocalStack, signatures checked) + Firestore (the emulator)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from litestar import Litestar, Request, put
from litestar.params import FromPath
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from chat_core.chatstore import ChatStore, Conversation, ImageMetadata, Message, MessageStore
from chat_core.composition import Composition
from chat_core.keys import derivative_key, new_object_key, refusal_key, stored_key
from chat_core.ledger import Usage
from chat_core.ledger.redis import RedisStorageLedger
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
    job: ObjectStore | cleanup.S3Objects | None = None

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
        """What the command lists and deletes through: boto3 on S3, the port on the local disk.

        One per test, so hooks registered on its client see the run's requests."""
        if self.job is None:
            self.job = cleanup.objects_for(self.settings, self.objects)
            assert isinstance(self.job, cleanup.S3Objects) == (self.kind == "cloud")
        return self.job


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
    backends = Composition(make_settings(tmp_path, _env(kind, request)))
    objects, messages = backends.object_store, backends.chat_store
    await harness.provision(backends.settings)
    async with backends:
        yield Stores(kind, backends.settings, objects, messages)


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[Stores]:
    backends = Composition(settings)
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


# --- S3 through boto3: DeleteObjects, 1,000 keys a request -----------------------------------------------
@pytest.fixture
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    backends = Composition(make_settings(tmp_path, _env("cloud", request)))
    objects, messages = backends.object_store, backends.chat_store
    await harness.provision(backends.settings)
    async with backends:
        yield Stores("cloud", backends.settings, objects, messages)


class Requests:
    """Counts, with botocore's event hooks on the job's own client, what it asks S3 for."""

    def __init__(self, objects: cleanup.S3Objects) -> None:
        self.sent: dict[str, int] = {}  # HTTP requests (every attempt) per operation
        self.delete_keys: list[int] = []  # keys per DeleteObjects call
        self.quiet: list[bool] = []
        events = objects.client.meta.events
        for operation in ("DeleteObjects", "ListObjectsV2"):
            events.register(f"before-send.s3.{operation}", self._count(operation))
        events.register("before-parameter-build.s3.DeleteObjects", self._delete_params)

    def _count(self, operation: str) -> Any:
        def hook(**_: Any) -> None:
            self.sent[operation] = self.sent.get(operation, 0) + 1

        return hook

    def _delete_params(self, params: dict[str, Any], **_: Any) -> None:
        self.delete_keys.append(len(params["Delete"]["Objects"]))
        self.quiet.append(params["Delete"]["Quiet"])


def _put_many(objects: cleanup.S3Objects, keys: Sequence[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def put(key: str) -> None:
        objects.client.put_object(Bucket=objects.bucket, Key=key, Body=b"x" * 10, ContentType="image/png")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))


@pytest.mark.localstack
@pytest.mark.firestore
async def test_s3_deletes_orphans_in_requests_of_1000_keys_and_nothing_else(cloud: Stores) -> None:
    objects = cloud.job_objects()
    assert isinstance(objects, cleanup.S3Objects)
    first, second = await cloud.conversation("alice"), await cloud.conversation("alice", "bob")
    orphans = [stored_key((first, second)[i % 2], new_object_key("alice", "image/png")) for i in range(2001)]
    await anyio.to_thread.run_sync(_put_many, objects, orphans)
    referenced = set()
    for conversation_id in (first, second, second):
        key = await cloud.upload(conversation_id)
        await cloud.send(conversation_id, key)
        referenced.add(key)
    media = uuid.uuid4().hex
    derivatives = {f"{first}/media/{media}/original.jpg", f"{first}/media/{media}/thumb.webp"}
    derivatives.add(f"{second}/media/{uuid.uuid4().hex}/original.png")
    for key in derivatives:
        await cloud.objects.put(key, b"derived", content_type="image/jpeg")
    requests = Requests(objects)

    with capture_logs() as logs:
        report = await cleanup.cleanup_orphans(
            objects, cloud.messages, grace_seconds=GRACE, now=dt.datetime.now(dt.UTC) + LATER
        )

    n = len(orphans)
    assert requests.sent["DeleteObjects"] == math.ceil(n / 1000) == 3
    assert requests.delete_keys == [1000, 1000, 1]
    assert all(requests.quiet)
    assert requests.sent["ListObjectsV2"] == math.ceil((n + 6) / 1000)
    assert await cloud.keys() == referenced | derivatives
    assert (report.deleted_objects, report.deleted_bytes, report.failed_objects) == (n, 10 * n, 0)
    assert (report.referenced_objects, report.foreign_objects, report.stored_objects) == (3, 3, 6)
    assert sorted(e["key"] for e in logs if e["event"] == "orphan_deleted") == sorted(orphans)


@pytest.mark.localstack
@pytest.mark.firestore
async def test_s3_reports_each_key_it_could_not_delete_and_deletes_the_rest(cloud: Stores) -> None:
    """S3 answers a DeleteObjects with per-key errors (AccessDenied, ...): each is logged and counted."""
    objects = cloud.job_objects()
    assert isinstance(objects, cleanup.S3Objects)
    conversation_id = await cloud.conversation("alice")
    keys = [await cloud.upload(conversation_id) for _ in range(4)]
    refused = keys[1]

    # A fault at the client's edge, as S3 reports one: the key is not sent, its error comes back.
    def withhold(params: dict[str, Any], **_: Any) -> None:
        params["Delete"]["Objects"] = [o for o in params["Delete"]["Objects"] if o["Key"] != refused]

    def refuse(parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Errors", []).append(
            {"Key": refused, "Code": "AccessDenied", "Message": "Access Denied"}
        )

    objects.client.meta.events.register("before-parameter-build.s3.DeleteObjects", withhold)
    objects.client.meta.events.register("after-call.s3.DeleteObjects", refuse)

    with capture_logs() as logs:
        report = await cloud.run()

    assert await cloud.keys() == {refused}
    assert (report.deleted_objects, report.failed_objects, report.stored_objects) == (3, 1, 1)
    (failed,) = [e for e in logs if e["event"] == "orphan_delete_failed"]
    assert (failed["key"], failed["code"], failed["log_level"]) == (refused, "AccessDenied", "error")
    assert refused not in {e["key"] for e in logs if e["event"] == "orphan_deleted"}


async def test_refusal_notes_are_deleted_after_the_grace_period_and_are_no_orphans(stores: Stores) -> None:
    conversation_id = await stores.conversation("alice")
    note = refusal_key(await stores.upload(conversation_id))
    await stores.objects.delete(note.replace("refused/", "uploads/", 1))
    await stores.objects.put(note, b'{"reason":"not_an_image"}', content_type="application/json")

    young = await stores.run(now=dt.datetime.now(dt.UTC))
    assert await stores.keys() == {note}
    assert (young.refusal_notes, young.expired_notes, young.foreign_objects, young.orphan_objects) == (
        1,
        0,
        0,
        0,
    )

    report = await stores.run()
    assert await stores.keys() == set()
    assert (report.deleted_notes, report.deleted_objects, report.orphan_objects) == (1, 0, 0)
    assert report.usage() == {"raw": Usage(0, 0), "derived": Usage(0, 0)}


# --- metrics and the command -------------------------------------------------------------------------
def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.redis
async def test_run_records_deletion_metrics_and_sets_the_storage_ledger_to_what_it_counted(
    tmp_path: Path, redis_backend: harness.Backend
) -> None:
    prefix = unique("ledger")
    settings = make_settings(
        tmp_path,
        {
            "ORPHAN_GRACE_SECONDS": "0",
            "LIMIT_STORE": "redis",
            "REDIS_URL": redis_backend.address,
            "LIMIT_KEY_PREFIX": prefix,
        },
    )
    ledger = RedisStorageLedger(redis_backend.address, prefix)
    await ledger.add("raw", 40, 4000)  # drift the events could not see: the scan corrects it
    async with embedded(settings) as stores:
        conversation_id = await stores.conversation("alice")
        kept = await stores.upload(conversation_id, size=500)
        await stores.send(conversation_id, kept)
        await stores.upload(conversation_id, size=300)
        derived = derivative_key(conversation_id, str(uuid.uuid4()), "original", "image/jpeg")
        await stores.objects.put(derived, b"d" * 70, content_type="image/jpeg")
    deleted_before = _sample("chat_orphan_objects_deleted_total")
    bytes_before = _sample("chat_orphan_bytes_deleted_total")

    await cleanup.run(settings, dry_run=False)

    try:
        assert await ledger.usage() == {"raw": Usage(1, 500), "derived": Usage(1, 70)}
    finally:
        await ledger.close()
    assert _sample("chat_orphan_objects_deleted_total") - deleted_before == 1
    assert _sample("chat_orphan_bytes_deleted_total") - bytes_before == 300
    assert (
        abs(_sample("chat_cleanup_last_success_timestamp_seconds") - dt.datetime.now(dt.UTC).timestamp()) < 60
    )


def test_a_run_with_keys_left_undeleted_counts_them_but_is_not_a_success() -> None:
    before = _sample("chat_cleanup_last_success_timestamp_seconds")
    deleted_before = _sample("chat_orphan_objects_deleted_total")

    cleanup.record_metrics(cleanup.CleanupReport(dry_run=False, deleted_objects=2, failed_objects=1))

    assert _sample("chat_orphan_objects_deleted_total") - deleted_before == 2
    assert _sample("chat_cleanup_last_success_timestamp_seconds") == before


async def test_run_pushes_only_the_cleanup_metrics_to_the_pushgateway(tmp_path: Path, serve: Any) -> None:
    received: list[tuple[str, str, str]] = []

    @put("/metrics/job/{job:str}/instance/{instance:str}", status_code=200)
    async def pushgateway(
        request: Request[Any, Any, Any], job: FromPath[str], instance: FromPath[str]
    ) -> None:
        received.append((job, instance, (await request.body()).decode()))

    url = await serve(Litestar([pushgateway]))
    settings = make_settings(tmp_path, {"PUSHGATEWAY_URL": url, "PUSHGATEWAY_INSTANCE": "chat-prod"})

    await cleanup.run(settings, dry_run=True)

    ((job, instance, body),) = received
    assert (job, instance) == (cleanup.PUSH_JOB, "chat-prod")
    assert "chat_orphan_objects_deleted_total" in body
    assert "chat_storage_bytes" not in body  # the services export it from the ledger: never a stale copy
    assert "chat_cleanup_last_success_timestamp_seconds" in body
    assert "chat_http_requests" not in body


async def test_two_releases_push_to_groups_of_their_own(tmp_path: Path, serve: Any) -> None:
    """A push replaces its whole group: with one group per job, a release would hide another's runs."""
    groups: list[str] = []

    @put("/metrics/{group:path}", status_code=200)
    async def pushgateway(group: FromPath[str]) -> None:
        groups.append(group)

    url = await serve(Litestar([pushgateway]))
    for release, data_dir in (("team-a/chat", tmp_path / "a"), ("team-b/chat", tmp_path / "b")):
        await cleanup.run(
            make_settings(data_dir, {"PUSHGATEWAY_URL": url, "PUSHGATEWAY_INSTANCE": release}), dry_run=True
        )
    # Without an instance of its own, a deployment is told apart by its bucket (or data directory).
    await cleanup.run(make_settings(tmp_path / "c", {"PUSHGATEWAY_URL": url}), dry_run=True)

    assert len(groups) == len(set(groups)) == 3, groups
    assert all(group.startswith(f"/job/{cleanup.PUSH_JOB}/instance") for group in groups), groups
    s3 = make_settings(tmp_path, {"OBJECT_STORE": "s3", "S3_BUCKET_NAME": "chat-images-prod"})
    assert cleanup.push_instance(s3) == "chat-images-prod"


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
