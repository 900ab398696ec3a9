"""Orphan cleanup: delete uploaded images that no message references once their grace period is over.

A job of the upload service's (the uploads it signs are what may be orphaned), run by the CronJob as
``chat-management cleanup-orphans``.

A client may ask for an upload URL, PUT the bytes and never send the message (the app was closed, the
send failed for good). Those objects cost storage forever and nobody can see them. The job streams the
store's listing page by page, asks the message store which keys of a batch back a message, and deletes
the rest once they are older than ``ORPHAN_GRACE_SECONDS``. Memory stays flat in the number of objects:
one listing page and one batch at a time.

Only keys with the layout of ``chat_core.keys`` are ever considered: anything else in the bucket is not
ours to delete. Every deletion (or, with ``dry_run``, every would-be deletion) is one log line.

Metrics: a CronJob lives too briefly to be scraped, so ``run`` pushes the storage gauges, the deletion
counters and the last-success time to ``PUSHGATEWAY_URL`` when it is set, and always logs a summary.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread
import msgspec
import structlog
from prometheus_client import CollectorRegistry, push_to_gateway

from chat_core import metrics
from chat_core.backends import Backends
from chat_core.keys import InvalidKey, parse_stored_key
from chat_core.messagestore import MessageStore
from chat_core.objectstore import ObjectInfo, ObjectStore
from chat_core.settings import Settings

__all__ = ["PUSH_JOB", "CleanupReport", "cleanup_orphans", "push_metrics", "run"]

PUSH_JOB = "chat-management-cleanup"
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

    @property
    def stored_objects(self) -> int:
        """Objects left in the store after this run."""
        return self.scanned_objects - self.deleted_objects

    @property
    def stored_bytes(self) -> int:
        return self.scanned_bytes - self.deleted_bytes


async def cleanup_orphans(
    object_store: ObjectStore,
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
    limiter = anyio.CapacityLimiter(delete_concurrency)

    async def delete(info: ObjectInfo) -> None:
        async with limiter:
            await object_store.delete(info.key)
        report.deleted_objects += 1
        report.deleted_bytes += info.size
        _log.info(
            "orphan_deleted", key=info.key, size=info.size, last_modified=info.last_modified.isoformat()
        )

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
        async with anyio.create_task_group() as group:
            for info in orphans:
                group.start_soon(delete, info)

    batch: list[ObjectInfo] = []
    async for info in object_store.list(page_size=page_size):
        report.scanned_objects += 1
        report.scanned_bytes += info.size
        try:
            parse_stored_key(info.key)
        except InvalidKey:
            report.foreign_objects += 1
            continue
        if info.last_modified > cutoff:
            report.young_objects += 1
            continue
        batch.append(info)
        if len(batch) >= batch_size:
            await sweep(batch)
            batch = []
    await sweep(batch)
    return report


def record_metrics(report: CleanupReport) -> None:
    metrics.STORED_OBJECTS.set(report.stored_objects)
    metrics.STORED_BYTES.set(report.stored_bytes)
    metrics.ORPHANS_DELETED.inc(report.deleted_objects)
    metrics.ORPHAN_BYTES_DELETED.inc(report.deleted_bytes)
    metrics.CLEANUP_LAST_SUCCESS.set(time.time())


async def push_metrics(url: str, *, job: str = PUSH_JOB) -> None:
    """Push the cleanup metrics (only those) to a Prometheus Pushgateway, replacing the last run's."""
    registry = CollectorRegistry()
    for collector in (
        metrics.STORED_OBJECTS,
        metrics.STORED_BYTES,
        metrics.ORPHANS_DELETED,
        metrics.ORPHAN_BYTES_DELETED,
        metrics.CLEANUP_LAST_SUCCESS,
    ):
        registry.register(collector)
    # prometheus_client pushes with blocking urllib: keep it off the event loop.
    await anyio.to_thread.run_sync(lambda: push_to_gateway(url, job=job, registry=registry, timeout=10))


async def run(settings: Settings, *, dry_run: bool) -> CleanupReport:
    """The ``chat-management cleanup-orphans`` command: scan, delete, record, push, summarise."""
    backends = Backends(settings)
    object_store, message_store = backends.object_store, backends.messages
    started = time.monotonic()
    async with backends:
        report = await cleanup_orphans(
            object_store,
            message_store,
            grace_seconds=settings.images.orphan_grace_seconds,
            dry_run=dry_run,
        )
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
        await push_metrics(settings.telemetry.pushgateway_url)
    return report
