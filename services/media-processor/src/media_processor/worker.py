"""The media queue worker: raw upload -> sanitized derivatives -> message ready (or failed) -> event.

For a **process** job (one per image, queued by the message service's outbox relay: an album gets one per
image, each finishing its own image, found by its raw upload's key; its derivatives go under
``{cid}/media/{messageId}/{index}/`` and its ``message.updated`` names the ``index``):

1. the message is read; one already ``ready`` or ``failed`` is done: a redelivered job writes nothing and
   publishes nothing again (it only makes sure the raw upload is gone);
2. the raw upload is fetched pinned to the ETag verified at send (``If-Match`` on S3; the local store
   compares the ETag of the bytes it read): another object under that key (a second PUT to the upload
   URL) or none fails the job with ``object_changed``, so what was swapped in is never served;
3. ``transforms.sanitize`` runs in the worker-process pool (limits from the header first, then a bounded
   decode; a breach is a reason code, never a crash);
4. ``original``, ``preview`` and ``thumbnail`` are written under ``{cid}/media/{messageId}/``;
5. the message is finished in the store (only if still ``processing``: the store's compare-and-set is
   what makes two racing deliveries finish it once) together with its ``message.updated`` event outbox
   entry (``chat_core.outbox``); the event is published with the full message at once, or by the message
   service's relay if the bus is down now; then the raw upload is deleted (it holds what was stripped);
6. the job is acknowledged.

A job for a message deleted meanwhile does nothing but make sure its bytes are gone: found deleted at
the start, its raw upload and anything under its media prefix are deleted (``chat_core.erasure``); found
deleted only at the finish (the tombstone came while the image was being processed, after the message
service's relay had already erased what existed), the derivatives just written are deleted as well.

A failure of ours (the store, the object store or the bus unreachable) is retried with a doubling delay
through the visibility timeout; after ``MEDIA_MAX_RECEIVES`` receives SQS (or the SQLite queue) moves it
to the dead-letter queue, and the message stays ``processing`` (the proxy answers 503).

For an **object-created** event (a new raw upload, from the bucket's notification or the local store's
upload route) the upload is checked at once, from its first bytes: size within ``MAX_IMAGE_BYTES``,
magic bytes of an accepted type, declared pixels within ``MAX_IMAGE_PIXELS``. One that could never be
sent is deleted within seconds (after ``REFUSED_UPLOAD_GRACE_SECONDS``, so that a send made right after
the upload still gets its 413/422 from its own check; the grace is waited out by a task of its own, not by
the job, which is done at once), as is a raw upload whose message is already
finished (an overwrite after processing). Before a refused upload is deleted, a small note of why is
written under ``refused/{conversation_id}/{object_key}`` (``keys.refusal_key``; no upload URL or proxy
path reaches it): a later send finds no object, reads the note and answers with the same 413/422 and
reason. Orphan cleanup deletes notes after ``ORPHAN_GRACE_SECONDS``. Anything else on the queue is
acknowledged and dropped.

The spec's upload metrics are measured here, where uploads land: ``chat_uploads_total{result,reason}``
(stored, or rejected with the reason), ``chat_upload_duration_seconds`` (URL issued, from the key's UUIDv7
-> the event's time), ``chat_upload_size_bytes``; and the storage ledger (``chat_core.ledger``) moves on
each raw upload created or deleted and each message's derivatives written, while the worker keeps the
``chat_storage_*`` gauges current from it.

Shutdown (the poll loop is ``chat_core.jobqueue.runner``): polling stops (the receive in flight returns
what it has: at once on SQLite, within ``SQS_WAIT_SECONDS`` on SQS), in-flight jobs get
``SHUTDOWN_DRAIN_SECONDS`` to finish, the rest are cancelled (they come back after their visibility
timeout, and the message's status keeps the second attempt idempotent). Each job's span continues the
trace of the send.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Literal

import msgspec
import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat_core import image_headers, keys, ledger, metrics, outbox, tracing
from chat_core.capabilities import AnnouncesUploads
from chat_core.chatstore import (
    ConversationStore,
    ImageMetadata,
    ImageVariant,
    ImageVariants,
    Message,
    MessageStore,
    OutboxStore,
    albums,
    event_done,
    new_event,
)
from chat_core.erasure import ImageEraser
from chat_core.jobqueue import JobQueue
from chat_core.jobqueue.runner import JobRunner
from chat_core.ledger import StorageLedger
from chat_core.media_jobs import MediaJob, ObjectCreated, ReceivedMediaJob, UploadRefusal, object_created_job
from chat_core.objectstore import ObjectChanged, ObjectInfo, ObjectNotFound, ObjectStore
from chat_core.realtime import EventBus
from chat_core.settings import MEDIA_JOBS_PER_IMAGE_WORKER, Settings
from media_processor.pool import MediaProcessor, PoolSettings, PoolUnavailable
from media_processor.ports import MediaPorts
from media_processor.transforms import ImageLimits, Rejected, Sanitized, Variant

__all__ = ["MediaWorker", "limits_from", "pool_settings_from"]

RETRY_BASE_SECONDS = 2.0
REFUSED_UPLOAD_GRACE_SECONDS = 3.0  # before an upload that can never be sent is deleted
MAX_RETRY_DELAY_SECONDS = 300.0
_log = structlog.get_logger("media_processor")
_tracer = tracing.get_tracer("media_processor")

Outcome = Literal["ready", "failed", "skipped"]


def limits_from(settings: Settings) -> ImageLimits:
    return ImageLimits.from_settings(settings.media)


def pool_settings_from(settings: Settings) -> PoolSettings:
    media = settings.media
    return PoolSettings(
        workers=media.workers,
        timeout_seconds=media.job_timeout_seconds,
        memory_bytes=media.job_memory_mb * 1024 * 1024,
    )


def _variant(url: str, variant: Variant) -> ImageVariant:
    return ImageVariant(
        url=url,
        width=variant.width,
        height=variant.height,
        content_type=variant.content_type,
        size_bytes=variant.size,
    )


class _Target(msgspec.Struct, frozen=True, kw_only=True):
    """The image a process job finishes: its message, its metadata, its index in an album (None: alone)."""

    message: Message
    image: ImageMetadata
    index: int | None


def _image_of(
    message: Message | None, _conversation_id: str, raw_key: str
) -> tuple[int | None, ImageMetadata | None]:
    """(index, image) of the message's image whose raw upload is ``raw_key`` (index None: not an album)."""
    return albums.image_for_stored_key(message.metadata if message else None, raw_key)


class MediaWorker:
    def __init__(
        self,
        queue: JobQueue[MediaJob],
        messages: MessageStore,
        conversations: ConversationStore,
        outbox_store: OutboxStore,
        objects: ObjectStore,
        bus: EventBus,
        processor: MediaProcessor,
        storage: StorageLedger,
        *,
        max_bytes: int,
        max_pixels: int,
        wait_seconds: float,
        max_receives: int,
        drain_seconds: float,
        job_deadline_seconds: float | None = None,
        reconcile_at_start: bool = False,
    ) -> None:
        self._queue = queue
        self._messages = messages
        self._conversations = conversations
        self._outbox = outbox_store
        self._objects = objects
        self._bus = bus
        self._processor = processor
        self._storage = storage
        self._eraser = ImageEraser(objects, storage)
        self._reconcile_at_start = reconcile_at_start
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._max_receives = max_receives
        # A backend call that never answers (a request lost on a connection that stays open: the store's
        # clients set no deadline of their own) would hold its job slot forever; once every slot is held,
        # no image is processed again. Past the longest a job may take, it fails and is retried later.
        self._job_deadline = job_deadline_seconds
        # Jobs in work at once: one per image worker, plus as many fetching or writing meanwhile. The media
        # queue's visibility timeout is derived from this (MediaSettings.longest_job_seconds).
        self._runner = JobRunner(
            "media",
            queue,
            self.handle,
            concurrency=max(2, MEDIA_JOBS_PER_IMAGE_WORKER * processor.size),
            wait_seconds=wait_seconds,
            drain_seconds=drain_seconds,
            depth_gauge=metrics.MEDIA_QUEUE_DEPTH,
        )
        self._pool_started = False
        self._pool_lock = asyncio.Lock()
        self._refusals: set[asyncio.Task[None]] = set()  # refused uploads in their grace

    @classmethod
    def from_ports(cls, settings: Settings, ports: MediaPorts) -> MediaWorker:
        return cls(
            ports.media_queue,
            ports.messages,
            ports.conversations,
            ports.outbox,
            ports.object_store,
            ports.event_bus,
            MediaProcessor(limits_from(settings), pool_settings_from(settings)),
            ports.storage_ledger,
            max_bytes=settings.images.max_bytes,
            max_pixels=settings.media.max_image_pixels,
            wait_seconds=settings.sqs.wait_seconds,
            max_receives=settings.media.max_receives,
            drain_seconds=settings.service.drain_seconds,
            job_deadline_seconds=settings.media.longest_job_seconds,
            # An in-process ledger starts empty: count the (local) store once, as cleanup would.
            reconcile_at_start=settings.backends.limit_store == "memory",
        )

    def listen_to_uploads(self, objects: AnnouncesUploads) -> None:
        """Queue an object-created event for each upload the (local) store receives, as S3 does."""
        queue = self._queue

        async def announce(info: ObjectInfo) -> None:
            if info.key.startswith(keys.RAW_UPLOAD_PREFIX):
                await queue.send([object_created_job(info)])

        objects.announce_uploads(announce)

    # --- lifecycle ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        # The image workers start in the background: the service is ready at once, and the first
        # image does not pay for starting them (a second or more each on a busy node).
        warm_up = asyncio.create_task(self._pool(), name="media-pool-start")
        tally = (
            asyncio.create_task(self._reconcile_storage(), name="storage-tally")
            if self._reconcile_at_start
            else None
        )
        try:
            async with self._runner.running(), ledger.refreshing(self._storage):
                yield
        finally:
            if tally is not None:
                tally.cancel()
            await asyncio.gather(warm_up, *([tally] if tally else []), return_exceptions=True)
            await self._finish_refusals()
            await self._processor.close()

    async def _finish_refusals(self) -> None:
        """Let refused uploads in their grace be deleted; past it, leave them to the orphan cleanup."""
        if self._refusals:
            _done, pending = await asyncio.wait(set(self._refusals), timeout=REFUSED_UPLOAD_GRACE_SECONDS + 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def pool_ready(self) -> None:
        """Readiness: raises while the image workers are fewer than the pool's size and cannot be started."""
        problem = self._processor.health().problem()
        if problem is not None:
            raise PoolUnavailable(problem)

    @property
    def refusals_pending(self) -> int:
        """Refused uploads waiting out their grace before they are deleted."""
        return len(self._refusals)

    async def _pool(self) -> MediaProcessor:
        if not self._pool_started:
            async with self._pool_lock:
                if not self._pool_started:
                    await self._processor.start()
                    self._pool_started = True
        return self._processor

    async def _reconcile_storage(self) -> None:
        """Set the storage ledger to what the store holds (the embedded start-up; cleanup does it too)."""
        tally = ledger.Tally()
        try:
            async for info in self._objects.list():
                kind = ledger.kind_of(info.key)
                if kind is not None:
                    tally.add(kind, 1, info.size)
            await self._storage.reconcile(tally.usage())
            await ledger.refresh_gauges(self._storage)
        except Exception as exc:
            _log.warning("storage_tally_failed", error=repr(exc))

    # --- one queue message --------------------------------------------------------------------------
    async def handle(self, received: ReceivedMediaJob) -> None:
        """Process one queue message, then ack it (or schedule a retry after a failure of ours)."""
        job = received.job
        with _tracer.start_as_current_span(
            "media process",
            context=tracing.extract(job.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.message.delivery_count": received.receive_count,
                "chat.message.id": job.message_id or "",
            },
        ) as span:
            if received.receive_count == 1:
                waited = (dt.datetime.now(dt.UTC) - received.enqueued_at).total_seconds()
                metrics.MEDIA_QUEUE_AGE.observe(max(0.0, waited))
            try:
                async with asyncio.timeout(self._job_deadline):
                    if job.is_process:
                        await self.process(job)
                    else:
                        for created in job.created_objects():
                            await self.check_upload(created)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, repr(exc)))
                _log.warning("media_job_failed", message_id=job.message_id, error=repr(exc))
                await self._retry(received)
                return
            await self._settle(self._queue.ack(received.receipt))

    async def _retry(self, received: ReceivedMediaJob) -> None:
        if received.receive_count >= self._max_receives:
            metrics.MEDIA_JOBS.labels("dead_lettered", "error").inc()
            _log.error(
                "media_job_dead_lettered",
                message_id=received.job.message_id,
                receives=received.receive_count,
            )
            delay = 0.0
        else:
            metrics.MEDIA_JOBS.labels("retried", "error").inc()
            delay = RETRY_BASE_SECONDS * 2 ** max(0, received.receive_count - 1)
            delay = min(MAX_RETRY_DELAY_SECONDS, delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
        await self._settle(self._queue.retry_later(received.receipt, delay))

    async def _settle(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as exc:
            # The visibility timeout brings it back; the message's status keeps the redelivery idempotent.
            _log.warning("media_settle_failed", error=repr(exc))

    async def process(self, job: MediaJob) -> Outcome:
        """Finish one image message; raises only for failures of ours (retried)."""
        conversation_id, message_id, raw_key = job.conversation_id, job.message_id, job.object_key
        if not (conversation_id and message_id and raw_key and job.object_etag):
            raise ValueError("not a process job")
        started = time.perf_counter()
        message = await self._messages.get_message(conversation_id, message_id)
        if message is not None and message.deleted:
            await self._eraser.erase(conversation_id, message_id, raw_key)
            metrics.MEDIA_JOBS.labels("skipped", "deleted").inc()
            metrics.DELETED_SKIPPED.labels("media_job").inc()
            return "skipped"
        index, image = _image_of(message, conversation_id, raw_key)
        if message is None or image is None:
            metrics.MEDIA_JOBS.labels("skipped", "no_message").inc()
            return "skipped"
        if image.status in ("ready", "failed"):
            # A crash may have come between finishing and this (the ledger counted that deletion, if
            # it happened: this one is not counted again).
            await self._objects.delete(raw_key)
            metrics.MEDIA_JOBS.labels("skipped", "already_done").inc()
            return "skipped"
        target = _Target(message=message, image=image, index=index)
        try:
            _info, data = await self._objects.read(raw_key, if_match=job.object_etag)
        except (ObjectChanged, ObjectNotFound):
            return await self._fail(target, conversation_id, raw_key, None, "object_changed", started)
        raw_size = len(data)
        metrics.MEDIA_BYTES.labels("in").inc(raw_size)
        if raw_size > self._max_bytes:  # the ETag pins the object verified at send: cannot happen
            return await self._fail(target, conversation_id, raw_key, raw_size, "image_too_large", started)
        pool = await self._pool()
        result = await pool.process(data, image.content_type)
        del data
        if isinstance(result, Rejected):
            _log.info(
                "media_rejected", message_id=message_id, reason=str(result.reason), detail=result.detail
            )
            return await self._fail(target, conversation_id, raw_key, raw_size, str(result.reason), started)
        metadata, derived_bytes = await self._write_derivatives(conversation_id, target, result)
        return await self._finish(
            target,
            conversation_id,
            (raw_key, raw_size),
            metadata,
            "ready",
            "ok",
            started,
            derived_bytes=derived_bytes,
        )

    async def _write_derivatives(
        self, conversation_id: str, target: _Target, result: Sanitized
    ) -> tuple[ImageMetadata, int]:
        """The finished metadata of the image, and the bytes written."""
        written = 0
        for name in keys.VARIANTS:
            variant: Variant = getattr(result, name)
            key = keys.derivative_key(
                conversation_id, target.message.message_id, name, variant.content_type, target.index
            )
            await self._objects.put(key, variant.data, content_type=variant.content_type)
            written += variant.size
        metrics.MEDIA_BYTES.labels("out").inc(written)
        metrics.MEDIA_PIXELS.observe(result.original.width * result.original.height * result.frames)
        file_url = target.image.url
        original = result.original
        metadata = msgspec.structs.replace(
            target.image,
            status="ready",
            width=original.width,
            height=original.height,
            content_type=original.content_type,
            size_bytes=original.size,
            variants=ImageVariants(
                thumbnail=_variant(f"{file_url}?variant=thumbnail", result.thumbnail),
                preview=_variant(f"{file_url}?variant=preview", result.preview),
            ),
            blurhash=result.blurhash,
            error=None,
        )
        return metadata, written

    async def _fail(
        self,
        target: _Target,
        conversation_id: str,
        raw_key: str,
        raw_size: int | None,
        reason: str,
        started: float,
    ) -> Outcome:
        metadata = msgspec.structs.replace(target.image, status="failed", error=reason)
        return await self._finish(
            target, conversation_id, (raw_key, raw_size), metadata, "failed", reason, started
        )

    async def _finish(
        self,
        target: _Target,
        conversation_id: str,
        raw: tuple[str, int | None],
        metadata: ImageMetadata,
        outcome: Outcome,
        reason: str,
        started: float,
        *,
        derived_bytes: int | None = None,
    ) -> Outcome:
        """Finish the image once; ``raw`` is the upload's key and size (None: not read, not counted)."""
        raw_key, raw_size = raw
        message = target.message
        announced = msgspec.structs.replace(
            new_event("message.updated", conversation_id, trace=tracing.inject()), index=target.index
        )
        updated = await self._messages.finish_image(
            conversation_id, message.message_id, metadata, event=announced
        )
        if updated is None:  # another delivery finished it first (its event is the one), or it was deleted
            current = await self._messages.get_message(conversation_id, message.message_id)
            if current is None or current.deleted:
                # The relay may have erased before these derivatives landed: nothing of it may stay.
                if derived_bytes is not None:  # counted in, so that the erasure's count-out balances
                    await ledger.record(self._storage, "derived", len(keys.VARIANTS), derived_bytes)
                await self._eraser.erase(conversation_id, message.message_id, raw_key)
                metrics.MEDIA_JOBS.labels("skipped", "deleted").inc()
                metrics.DELETED_SKIPPED.labels("media_job").inc()
                return "skipped"
            metrics.MEDIA_JOBS.labels("skipped", "already_done").inc()
            return "skipped"
        if derived_bytes is not None:  # counted once per message: only the delivery that finished it
            await ledger.record(self._storage, "derived", len(keys.VARIANTS), derived_bytes)
        metrics.MEDIA_JOBS.labels(outcome, reason).inc()
        metrics.MEDIA_PROCESSING_SECONDS.observe(time.perf_counter() - started)
        # Stored with the change: what this attempt cannot publish, the message service's relay will.
        await outbox.publish_now(self._bus, self._conversations, self._outbox, event_done(announced, updated))
        # Last: the raw upload holds what was stripped, and nothing serves it any more.
        await self._objects.delete(raw_key)
        if raw_size is not None:
            await ledger.record(self._storage, "raw", -1, -raw_size)
        return outcome

    # --- object-created events ----------------------------------------------------------------------
    async def check_upload(self, created: ObjectCreated) -> str:
        """Check a new raw upload from its first bytes; delete it when it can never be served."""
        key = created.key
        try:
            conversation_id, _object_key, parsed = keys.parse_stored_key(key)
        except keys.InvalidKey:
            return self._verdict("ignored")  # not a raw upload of ours: nothing to say about it
        found = await self._objects.read_prefix(key, image_headers.HEADER_BYTES)
        if found is None:
            # Already taken by its message's media job (which counted the deletion), or deleted by an
            # earlier delivery of this event: it landed, and is counted as stored.
            await self._landed(created, parsed, created.size, None)
            return self._verdict("gone")
        info, prefix = found
        if created.etag and info.etag != created.etag:
            return self._verdict("superseded")  # a newer upload replaced it: its own event counts it
        refusal = self._refusal(info, prefix)
        verdict = refusal.reason if refusal else None
        if verdict is None:
            message = await self._messages.image_message(conversation_id, key)
            _index, image = _image_of(message, conversation_id, key)
            status = image.status if image else None
            if status in ("ready", "failed"):
                verdict = "already_processed"  # an overwrite after processing: never served
        await self._landed(created, parsed, info.size, verdict, stored_at=info.last_modified)
        if verdict is None:
            return self._verdict("kept")
        if refusal is not None:
            # Deleted after the grace, by a task of its own: the job (and its slot in the runner) is
            # done now, so a burst of refused uploads cannot hold back the images waiting to be processed.
            task = asyncio.create_task(self._delete_refused(key, info, refusal), name="refused-upload")
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)
            return self._verdict(verdict)
        await self._delete_raw(key, info, verdict)
        return self._verdict(verdict)

    async def _delete_refused(self, key: str, info: ObjectInfo, refusal: UploadRefusal) -> None:
        """After the grace: the note of why, then the upload (only this version, not a newer upload).

        A send right after the upload gets its 413/422 from its own check; a later one finds the note.
        Should this never run (the process stops first), the upload stays until the orphan cleanup: a
        send still gets its 413/422 from its own check, and a raw upload is never served.
        """
        try:
            await asyncio.sleep(REFUSED_UPLOAD_GRACE_SECONDS)
            current = await self._objects.head(key)
            if current is None or current.etag != info.etag:
                await ledger.record(self._storage, "raw", -1, -info.size)  # the newer one is counted
                return
            # The note first: a send between the delete and the note would get a bare 404.
            await self._objects.put(
                keys.refusal_key(key), msgspec.json.encode(refusal), content_type="application/json"
            )
            await self._delete_raw(key, info, refusal.reason)
        except Exception as exc:
            _log.warning("refused_upload_not_deleted", key=key, error=repr(exc))

    async def _delete_raw(self, key: str, info: ObjectInfo, reason: str) -> None:
        _log.info("raw_upload_deleted", key=key, reason=reason, size=info.size)
        await self._objects.delete(key)
        await ledger.record(self._storage, "raw", -1, -info.size)

    async def _landed(
        self,
        created: ObjectCreated,
        parsed: keys.ParsedKey,
        size: int,
        verdict: str | None,
        *,
        stored_at: dt.datetime | None = None,
    ) -> None:
        """Count an upload that reached the store: result and reason, size, URL-to-stored time, ledger."""
        metrics.UPLOADS.labels("stored" if verdict is None else "rejected", verdict or "ok").inc()
        metrics.UPLOAD_SIZE.observe(size)
        stored_at = created.stored_at or stored_at
        if parsed.issued_at is not None and stored_at is not None:
            metrics.UPLOAD_DURATION.observe(max(0.0, (stored_at - parsed.issued_at).total_seconds()))
        await ledger.record(self._storage, "raw", 1, size)

    def _refusal(self, info: ObjectInfo, prefix: bytes) -> UploadRefusal | None:
        def refused(reason: str, detail: str) -> UploadRefusal:
            return UploadRefusal(
                reason=reason, detail=detail, size=info.size, refused_at=dt.datetime.now(dt.UTC)
            )

        if info.size > self._max_bytes:
            return refused(
                "image_too_large", f"the image is {info.size} bytes; the limit is {self._max_bytes}"
            )
        try:
            header = image_headers.inspect_image(prefix, total_size=info.size)
            image_headers.refuse_too_many_pixels(header, self._max_pixels)
        except image_headers.NotAnImage as exc:
            return refused("not_an_image", str(exc))
        except image_headers.TooManyPixels as exc:
            return refused("too_many_pixels", str(exc))
        return None

    @staticmethod
    def _verdict(verdict: str) -> str:
        metrics.MEDIA_UPLOADS_CHECKED.labels(verdict).inc()
        return verdict
