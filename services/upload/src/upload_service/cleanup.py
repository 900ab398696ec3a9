"""Orphan cleanup: delete uploaded images that no message references once their grace period is over.

A job of the upload service's (the uploads it signs are what may be orphaned), run by the CronJob as
``chat-management cleanup-orphans``.

A client may ask for an upload URL, PUT the bytes and never send the message (the app was closed, the
send failed for good). Those objects cost storage forever and nobody can see them. The job streams the
store's listing page by page, asks the message store which keys of a batch back a message, and deletes
the rest once they are older than ``ORPHAN_GRACE_SECONDS``. Memory stays flat in the number of objects:
one listing page and one batch at a time.

Only keys with the layout of ``chat_core.keys`` are ever considered: anything else in the bucket is not
ours to delete. Every deletion (or, with ``dry_run``, every would-be deletion) is one log line. Refusal
notes (``refused/{conversation_id}/{object_key}``: why the media processor deleted an upload on arrival,
for a later send of it) are deleted once past the same grace period (a send of an upload that old is
refused as expired anyway); they are neither orphans nor storage, and counted apart.

The scan also counts what the store holds by kind (raw uploads, derived images) and sets the shared
storage ledger to it (``chat_core.ledger``): the events keep the ledger current, the scan corrects what
they cannot see. A ledger that is unreachable is logged, never a failed run.

With ``OBJECT_STORE=s3`` the job lists and deletes through boto3 (``S3Objects``): the ``list_objects_v2``
paginator, ``DeleteObjects`` with up to 1,000 keys a request (Quiet: S3 answers only the keys it could not
delete, each logged as ``orphan_delete_failed``), botocore's ``standard`` retry mode with a bounded number of
attempts. Orphans are gathered across reference batches until a full request's worth is due, so ``n``
orphans take ``ceil(n / 1000)`` requests. The local disk keeps its own path through the ``ObjectStore`` port
(one delete per key, ``delete_concurrency`` at a time). The job stays async because the message store and
the other adapters are; each blocking boto3 call runs in a worker thread, one at a time, off the event loop.

A run with keys S3 would not delete still finishes (the rest are deleted, the counts recorded), then fails:
the command exits 1 and the last-success time is not moved, so the staleness alert fires.

Metrics: a CronJob lives too briefly to be scraped, so ``run`` pushes the deletion counters and the
last-success time to ``PUSHGATEWAY_URL`` when it is set, and always logs a summary. The storage gauges
are not pushed: the services export them from the ledger (a pushed copy would go stale).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec
import structlog
from prometheus_client import CollectorRegistry, push_to_gateway

from chat_core import ledger, metrics
from chat_core.chatstore import MessageStore
from chat_core.composition import Composition
from chat_core.keys import REFUSAL_PREFIX, InvalidKey, parse_refusal_key
from chat_core.ledger import Kind, Usage
from chat_core.objectstore import ObjectInfo, ObjectStore
from chat_core.settings import Settings
from upload_service.ports import CleanupPorts

__all__ = [
    "DELETE_OBJECTS_MAX_KEYS",
    "PUSH_JOB",
    "CleanupIncomplete",
    "CleanupReport",
    "S3Objects",
    "cleanup_orphans",
    "objects_for",
    "ports",
    "push_instance",
    "push_metrics",
    "run",
]

PUSH_JOB = "chat-management-cleanup"
DELETE_OBJECTS_MAX_KEYS = 1000  # S3's limit for one DeleteObjects request
MAX_ATTEMPTS = 5  # botocore standard retry mode: the first attempt and up to four retries
_log = structlog.get_logger("upload_service.cleanup")


class CleanupReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    scanned_objects: int = 0
    scanned_bytes: int = 0
    foreign_objects: int = 0  # keys without our layout: never touched
    young_objects: int = 0  # still within the grace period
    referenced_objects: int = 0
    orphan_objects: int = 0
    orphan_bytes: int = 0
    deleted_objects: int = 0
    deleted_bytes: int = 0
    failed_objects: int = 0  # orphans the store refused to delete (each logged): the run fails
    raw_objects: int = 0  # scanned, by kind (the storage ledger's counts)
    raw_bytes: int = 0
    derived_objects: int = 0
    derived_bytes: int = 0
    refusal_notes: int = 0  # scanned
    expired_notes: int = 0  # past the grace period (deleted unless dry_run)
    deleted_notes: int = 0
    deleted_note_bytes: int = 0

    @property
    def stored_objects(self) -> int:
        """Objects left in the store after this run."""
        return self.scanned_objects - self.deleted_objects - self.deleted_notes

    @property
    def stored_bytes(self) -> int:
        return self.scanned_bytes - self.deleted_bytes - self.deleted_note_bytes

    def usage(self) -> dict[Kind, Usage]:
        """Raw uploads and derived images left after this run: what the storage ledger is set to."""
        return {
            "raw": Usage(self.raw_objects - self.deleted_objects, self.raw_bytes - self.deleted_bytes),
            "derived": Usage(self.derived_objects, self.derived_bytes),
        }


class CleanupIncomplete(RuntimeError):
    """Some orphans could not be deleted (each was logged); the rest of the run went through."""


class DeleteFailure(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    code: str
    message: str


class _Objects(Protocol):
    """What the job needs of a store: a streamed listing, and deleting keys in batches."""

    delete_batch: int  # the job hands ``delete`` this many keys at a time (the last batch: fewer)

    def scan(self, *, page_size: int) -> AsyncIterator[ObjectInfo]: ...

    async def delete(self, infos: Sequence[ObjectInfo]) -> list[DeleteFailure]: ...


class _PortObjects:
    """Any ``ObjectStore`` (the local disk): its own listing, one delete per key, a few at a time."""

    delete_batch = 1  # nothing to gain by waiting: each sweep's orphans are deleted right away

    def __init__(self, store: ObjectStore, *, concurrency: int) -> None:
        self._store = store
        self._limiter = anyio.CapacityLimiter(concurrency)

    def scan(self, *, page_size: int) -> AsyncIterator[ObjectInfo]:
        return self._store.list(page_size=page_size)

    async def delete(self, infos: Sequence[ObjectInfo]) -> list[DeleteFailure]:
        async def one(key: str) -> None:
            async with self._limiter:
                await self._store.delete(key)

        async with anyio.create_task_group() as group:
            for info in infos:
                group.start_soon(one, info.key)
        return []  # a failed delete raises (and fails the run), as any error of the port does


class S3Objects:
    """The bucket through boto3: the ``list_objects_v2`` paginator and ``DeleteObjects`` (Quiet).

    Every call is blocking, so each runs in a worker thread; the client is botocore's, thread-safe.
    Register event hooks on ``client.meta.events`` to watch its requests (the tests count them so).
    """

    delete_batch = DELETE_OBJECTS_MAX_KEYS

    def __init__(self, client: Any, bucket: str, *, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Objects:
        """A client as ``setup``'s: static keys when set, else the default chain; standard retries."""
        import boto3
        from botocore.config import Config

        aws = settings.aws
        session = boto3.session.Session(
            aws_access_key_id=aws.access_key_id or None,
            aws_secret_access_key=aws.secret_access_key or None,
            aws_session_token=aws.session_token or None,
            region_name=aws.region,
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},  # as the hot path: AWS, LocalStack and MinIO alike
        )
        client = session.client(
            "s3", endpoint_url=aws.s3_endpoint_url or aws.endpoint_url or None, config=config
        )
        return cls(client, settings.s3.bucket)

    async def scan(self, *, page_size: int) -> AsyncIterator[ObjectInfo]:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be within 1..1000 (S3's limit)")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": page_size}
            )
        )
        while True:
            page = await anyio.to_thread.run_sync(next, pages, None)
            if page is None:
                return
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    content_type="",  # ListObjectsV2 does not return it
                    etag=item.get("ETag", ""),
                    last_modified=item["LastModified"],
                )

    async def delete(self, infos: Sequence[ObjectInfo]) -> list[DeleteFailure]:
        failures: list[DeleteFailure] = []
        for start in range(0, len(infos), DELETE_OBJECTS_MAX_KEYS):
            chunk = infos[start : start + DELETE_OBJECTS_MAX_KEYS]
            response = await anyio.to_thread.run_sync(self._delete_objects, [info.key for info in chunk])
            failures += [
                DeleteFailure(
                    key=error.get("Key", ""), code=error.get("Code", ""), message=error.get("Message", "")
                )
                for error in response.get("Errors", ())
            ]
        return failures

    def _delete_objects(self, keys: list[str]) -> dict[str, Any]:
        response: dict[str, Any] = self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        return response


def objects_for(settings: Settings, object_store: ObjectStore) -> ObjectStore | S3Objects:
    """What the job lists and deletes through: boto3 with ``OBJECT_STORE=s3``, else the port."""
    if settings.backends.object_store == "s3":
        return S3Objects.from_settings(settings)
    return object_store


async def cleanup_orphans(
    object_store: ObjectStore | S3Objects,
    message_store: MessageStore,
    *,
    grace_seconds: float,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    batch_size: int = 500,
    page_size: int = 1000,
    delete_concurrency: int = 16,
) -> CleanupReport:
    """Delete every object older than ``grace_seconds`` that no message references."""
    if batch_size < 1 or delete_concurrency < 1:
        raise ValueError("batch_size and delete_concurrency must be positive")
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=grace_seconds)
    report = CleanupReport(dry_run=dry_run)
    objects: _Objects = (
        object_store
        if isinstance(object_store, S3Objects)
        else _PortObjects(object_store, concurrency=delete_concurrency)
    )
    pending: list[ObjectInfo] = []  # orphans found, not yet deleted: fewer than a full request's worth

    async def delete(infos: Sequence[ObjectInfo]) -> None:
        failed = {failure.key: failure for failure in await objects.delete(infos)}
        for info in infos:
            failure = failed.get(info.key)
            if failure is not None:
                report.failed_objects += 1
                _log.error(
                    "orphan_delete_failed",
                    key=info.key,
                    size=info.size,
                    code=failure.code,
                    error=failure.message,
                )
                continue
            if info.key.startswith(REFUSAL_PREFIX):
                report.deleted_notes += 1
                report.deleted_note_bytes += info.size
                _log.info("refusal_note_deleted", key=info.key)
                continue
            report.deleted_objects += 1
            report.deleted_bytes += info.size
            _log.info(
                "orphan_deleted", key=info.key, size=info.size, last_modified=info.last_modified.isoformat()
            )

    async def flush(*, last: bool = False) -> None:
        nonlocal pending
        due = len(pending) if last else len(pending) - len(pending) % objects.delete_batch
        for start in range(0, due, objects.delete_batch):
            await delete(pending[start : start + objects.delete_batch])
        pending = pending[due:]

    async def sweep(batch: Sequence[ObjectInfo]) -> None:
        if not batch:
            return
        referenced = await message_store.referenced_objects([info.key for info in batch])
        orphans = [info for info in batch if info.key not in referenced]
        report.referenced_objects += len(batch) - len(orphans)
        report.orphan_objects += len(orphans)
        report.orphan_bytes += sum(info.size for info in orphans)
        if dry_run:
            for info in orphans:
                _log.info(
                    "orphan_found_dry_run",
                    key=info.key,
                    size=info.size,
                    last_modified=info.last_modified.isoformat(),
                )
            return
        pending.extend(orphans)
        await flush()

    batch: list[ObjectInfo] = []
    async for info in objects.scan(page_size=page_size):
        report.scanned_objects += 1
        report.scanned_bytes += info.size
        kind = ledger.kind_of(info.key)
        if kind == "derived":
            report.derived_objects += 1
            report.derived_bytes += info.size
        if kind != "raw":
            if _is_refusal_note(info.key):
                report.refusal_notes += 1
                if info.last_modified <= cutoff:
                    report.expired_notes += 1
                    if not dry_run:
                        pending.append(info)  # not an orphan: no reference to look for
                        await flush()
            else:
                report.foreign_objects += 1
            continue
        report.raw_objects += 1
        report.raw_bytes += info.size
        if info.last_modified > cutoff:
            report.young_objects += 1
            continue
        batch.append(info)
        if len(batch) >= batch_size:
            await sweep(batch)
            batch = []
    await sweep(batch)
    await flush(last=True)
    return report


def _is_refusal_note(key: str) -> bool:
    try:
        parse_refusal_key(key)
    except InvalidKey:
        return False
    return True


def record_metrics(report: CleanupReport) -> None:
    metrics.ORPHANS_DELETED.inc(report.deleted_objects)
    metrics.ORPHAN_BYTES_DELETED.inc(report.deleted_bytes)
    if not report.failed_objects:
        metrics.CLEANUP_LAST_SUCCESS.set(time.time())


def push_instance(settings: Settings) -> str:
    """What tells this deployment's cleanup apart on a shared Pushgateway (its ``instance`` label)."""
    if settings.telemetry.pushgateway_instance:
        return settings.telemetry.pushgateway_instance
    if settings.backends.object_store == "s3":
        return settings.s3.bucket
    return str(Path(settings.service.data_dir).resolve())


async def push_metrics(url: str, *, instance: str, job: str = PUSH_JOB) -> None:
    """Push the cleanup metrics (only those) to a Prometheus Pushgateway, replacing the last run's.

    The group is ``job`` and ``instance``: a push replaces its whole group, so with ``job`` alone every
    release sharing the Pushgateway would overwrite the others' (and hide a release whose cleanup stopped).
    """
    registry = CollectorRegistry()
    for collector in (
        metrics.ORPHANS_DELETED,
        metrics.ORPHAN_BYTES_DELETED,
        metrics.CLEANUP_LAST_SUCCESS,
    ):
        registry.register(collector)
    # prometheus_client pushes with blocking urllib: keep it off the event loop.
    await anyio.to_thread.run_sync(
        lambda: push_to_gateway(
            url, job=job, registry=registry, grouping_key={"instance": instance}, timeout=10
        )
    )


def ports(root: Composition) -> CleanupPorts:
    """The job's ports, picked from its composition root: the objects, the messages, the ledger."""
    return CleanupPorts(
        object_store=root.object_store, messages=root.messages, storage_ledger=root.storage_ledger
    )


async def run(settings: Settings, *, dry_run: bool) -> CleanupReport:
    """The ``chat-management cleanup-orphans`` command: scan, delete, record, push, summarise."""
    root = Composition(settings)
    job = ports(root)
    storage = job.storage_ledger
    started = time.monotonic()
    async with root:
        report = await cleanup_orphans(
            objects_for(settings, job.object_store),
            job.messages,
            grace_seconds=settings.images.orphan_grace_seconds,
            dry_run=dry_run,
        )
        try:
            await storage.reconcile(report.usage())
        except Exception as exc:  # a measurement: the run itself went through
            metrics.STORAGE_LEDGER_ERRORS.inc()
            _log.warning("storage_ledger_not_reconciled", error=repr(exc))
    record_metrics(report)
    _log.info(
        "cleanup_finished",
        duration_seconds=round(time.monotonic() - started, 3),
        grace_seconds=settings.images.orphan_grace_seconds,
        stored_objects=report.stored_objects,
        stored_bytes=report.stored_bytes,
        **msgspec.structs.asdict(report),
    )
    if settings.telemetry.pushgateway_url:
        await push_metrics(settings.telemetry.pushgateway_url, instance=push_instance(settings))
    if report.failed_objects:
        raise CleanupIncomplete(
            f"{report.failed_objects} orphans could not be deleted (orphan_delete_failed)"
        )
    return report
