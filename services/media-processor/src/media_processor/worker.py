"""The media queue worker: raw upload -> sanitized derivatives -> message ready (or failed) -> event.

For a **process** job (one per image message, queued by the message service's outbox relay):

1. the message is read; one already ``ready`` or ``failed`` is done: a redelivered job writes nothing and
   publishes nothing again (it only makes sure the raw upload is gone);
2. the raw upload is fetched pinned to the ETag verified at send (``If-Match`` on S3; the local store
   compares the ETag of the bytes it read): another object under that key (a second PUT to the upload
   URL) or none fails the job with ``object_changed``, so what was swapped in is never served;
3. ``imaging.sanitize`` runs in the worker-process pool (limits from the header first, then a bounded
   decode; a breach is a reason code, never a crash);
4. ``original``, ``preview`` and ``thumbnail`` are written under ``{cid}/media/{messageId}/``;
5. the message is finished in the store (only if still ``processing``: the store's compare-and-set is
   what makes two racing deliveries finish it once), ``message.updated`` is published with the full
   message, and the raw upload is deleted (it holds what was stripped);
6. the job is acknowledged.

A failure of ours (the store, the object store or the bus unreachable) is retried with a doubling delay
through the visibility timeout; after ``MEDIA_MAX_RECEIVES`` receives SQS (or the SQLite queue) moves it
to the dead-letter queue, and the message stays ``processing`` (the proxy answers 503).

For an **object-created** event (a new raw upload, from the bucket's notification or the local store's
upload route) the upload is checked at once, from its first bytes: size within ``MAX_IMAGE_BYTES``,
magic bytes of an accepted type, declared pixels within ``MAX_IMAGE_PIXELS``. One that could never be
sent is deleted within seconds (after ``REFUSED_UPLOAD_GRACE_SECONDS``, so that a send made right after
the upload still gets its 413/422 with the reason), as is a raw upload whose message is already
finished (an overwrite after processing). Anything else on the queue is acknowledged and dropped.

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

from chat_core import images, keys, metrics, tracing
from chat_core.backends import AnnouncesUploads, Backends
from chat_core.jobqueue import JobQueue
from chat_core.jobqueue.runner import JobRunner
from chat_core.media import MediaJob, ObjectCreated, ReceivedMediaJob, object_created_job
from chat_core.messagestore import (
    ConversationStore,
    ImageMetadata,
    ImageVariant,
    ImageVariants,
    Message,
    MessageStore,
)
from chat_core.objectstore import ObjectChanged, ObjectInfo, ObjectNotFound, ObjectStore
from chat_core.realtime import EventBus, conversation_channel
from chat_core.realtime.events import Envelope, encode
from chat_core.settings import Settings
from media_processor.imaging import ImageLimits, Rejected, Sanitized, Variant
from media_processor.pool import MediaProcessor, PoolSettings

__all__ = ["MediaWorker", "limits_from", "pool_settings_from"]

RETRY_BASE_SECONDS = 2.0
REFUSED_UPLOAD_GRACE_SECONDS = 3.0  # before an upload that can never be sent is deleted
MAX_RETRY_DELAY_SECONDS = 300.0
_log = structlog.get_logger("media_processor")
_tracer = tracing.get_tracer("media_processor")

Outcome = Literal["ready", "failed", "skipped"]


def limits_from(settings: Settings) -> ImageLimits:
    media = settings.media
    return ImageLimits(
        max_pixels=media.max_image_pixels,
        max_frames=media.max_image_frames,
        preview_edge=media.preview_edge,
        thumbnail_edge=media.thumbnail_edge,
    )


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


class MediaWorker:
    def __init__(
        self,
        queue: JobQueue[MediaJob],
        messages: MessageStore,
        conversations: ConversationStore,
        objects: ObjectStore,
        bus: EventBus,
        processor: MediaProcessor,
        *,
        max_bytes: int,
        max_pixels: int,
        wait_seconds: float,
        max_receives: int,
        drain_seconds: float,
    ) -> None:
        self._queue = queue
        self._messages = messages
        self._conversations = conversations
        self._objects = objects
        self._bus = bus
        self._processor = processor
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._max_receives = max_receives
        # Jobs in work at once: one per image worker, plus as many fetching or writing meanwhile.
        self._runner = JobRunner(
            "media",
            queue,
            self.handle,
            concurrency=max(2, 2 * processor.size),
            wait_seconds=wait_seconds,
            drain_seconds=drain_seconds,
            depth_gauge=metrics.MEDIA_QUEUE_DEPTH,
        )
        self._pool_started = False
        self._pool_lock = asyncio.Lock()

    @classmethod
    def from_backends(cls, settings: Settings, backends: Backends) -> MediaWorker:
        return cls(
            backends.media_queue,
            backends.messages,
            backends.conversations,
            backends.object_store,
            backends.event_bus,
            MediaProcessor(limits_from(settings), pool_settings_from(settings)),
            max_bytes=settings.images.max_bytes,
            max_pixels=settings.media.max_image_pixels,
            wait_seconds=settings.sqs.wait_seconds,
            max_receives=settings.media.max_receives,
            drain_seconds=settings.service.drain_seconds,
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
        try:
            async with self._runner.running():
                yield
        finally:
            await asyncio.gather(warm_up, return_exceptions=True)
            await self._processor.close()

    async def _pool(self) -> MediaProcessor:
        if not self._pool_started:
            async with self._pool_lock:
                if not self._pool_started:
                    await self._processor.start()
                    self._pool_started = True
        return self._processor

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
        if message is None or message.metadata is None:
            metrics.MEDIA_JOBS.labels("skipped", "no_message").inc()
            return "skipped"
        if message.metadata.status in ("ready", "failed"):
            await self._objects.delete(raw_key)  # a crash may have come between finishing and this
            metrics.MEDIA_JOBS.labels("skipped", "already_done").inc()
            return "skipped"
        try:
            _info, data = await self._objects.read(raw_key, if_match=job.object_etag)
        except (ObjectChanged, ObjectNotFound):
            return await self._fail(message, conversation_id, raw_key, "object_changed", started)
        metrics.MEDIA_BYTES.labels("in").inc(len(data))
        if len(data) > self._max_bytes:  # the ETag pins the object verified at send: cannot happen
            return await self._fail(message, conversation_id, raw_key, "image_too_large", started)
        pool = await self._pool()
        result = await pool.process(data, message.metadata.content_type)
        del data
        if isinstance(result, Rejected):
            _log.info(
                "media_rejected", message_id=message_id, reason=str(result.reason), detail=result.detail
            )
            return await self._fail(message, conversation_id, raw_key, str(result.reason), started)
        metadata = await self._write_derivatives(conversation_id, message, result)
        return await self._finish(message, conversation_id, raw_key, metadata, "ready", "ok", started)

    async def _write_derivatives(
        self, conversation_id: str, message: Message, result: Sanitized
    ) -> ImageMetadata:
        if message.metadata is None:
            raise ValueError("not an image message")
        written = 0
        for name in keys.VARIANTS:
            variant: Variant = getattr(result, name)
            key = keys.derivative_key(conversation_id, message.message_id, name, variant.content_type)
            await self._objects.put(key, variant.data, content_type=variant.content_type)
            written += variant.size
        metrics.MEDIA_BYTES.labels("out").inc(written)
        metrics.MEDIA_PIXELS.observe(result.original.width * result.original.height * result.frames)
        file_url = message.metadata.url
        original = result.original
        return msgspec.structs.replace(
            message.metadata,
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

    async def _fail(
        self, message: Message, conversation_id: str, raw_key: str, reason: str, started: float
    ) -> Outcome:
        if message.metadata is None:
            raise ValueError("not an image message")
        metadata = msgspec.structs.replace(message.metadata, status="failed", error=reason)
        return await self._finish(message, conversation_id, raw_key, metadata, "failed", reason, started)

    async def _finish(
        self,
        message: Message,
        conversation_id: str,
        raw_key: str,
        metadata: ImageMetadata,
        outcome: Outcome,
        reason: str,
        started: float,
    ) -> Outcome:
        updated = await self._messages.finish_image(conversation_id, message.message_id, metadata)
        if updated is None:  # another delivery finished it first: its event is the one
            metrics.MEDIA_JOBS.labels("skipped", "already_done").inc()
            return "skipped"
        metrics.MEDIA_JOBS.labels(outcome, reason).inc()
        metrics.MEDIA_PROCESSING_SECONDS.observe(time.perf_counter() - started)
        await self._publish_updated(conversation_id, updated)
        # Last: the raw upload holds what was stripped, and nothing serves it any more.
        await self._objects.delete(raw_key)
        return outcome

    async def _publish_updated(self, conversation_id: str, message: Message) -> None:
        try:
            members = await self._conversations.get_participants(conversation_id) or frozenset()
            with _tracer.start_as_current_span("publish message.updated", kind=SpanKind.PRODUCER):
                envelope = Envelope(
                    type="message.updated",
                    conversation_id=conversation_id,
                    message=message,
                    members=tuple(sorted(members)),
                    trace=tracing.inject(),
                )
                await self._bus.publish(conversation_channel(conversation_id), encode(envelope))
            metrics.EVENTS_PUBLISHED.labels("message.updated").inc()
        except Exception as exc:
            # The message is finished in the store; clients that missed the event see it on resync.
            metrics.OUTBOX_RELAY_ERRORS.labels("bus").inc()
            _log.warning("message_updated_not_published", message_id=message.message_id, error=repr(exc))

    # --- object-created events ----------------------------------------------------------------------
    async def check_upload(self, created: ObjectCreated) -> str:
        """Check a new raw upload from its first bytes; delete it when it can never be served."""
        key = created.key
        try:
            conversation_id, _object_key, _parsed = keys.parse_stored_key(key)
        except keys.InvalidKey:
            return self._verdict("ignored")  # not a raw upload of ours: nothing to say about it
        found = await self._objects.read_prefix(key, images.HEADER_BYTES)
        if found is None:
            return self._verdict("gone")
        info, prefix = found
        if created.etag and info.etag != created.etag:
            return self._verdict("superseded")  # a newer upload replaced it: its own event follows
        verdict = self._refusal(info, prefix)
        if verdict is None:
            message = await self._messages.image_message(conversation_id, key)
            status = message.metadata.status if message and message.metadata else None
            if status in ("ready", "failed"):
                verdict = "already_processed"  # an overwrite after processing: never served
        if verdict is None:
            return self._verdict("kept")
        if verdict != "already_processed":
            # A send right after the upload still gets its 413/422 with the reason from its own check;
            # a later one finds nothing (404). Then only this version is deleted, not a newer upload.
            await asyncio.sleep(REFUSED_UPLOAD_GRACE_SECONDS)
            current = await self._objects.head(key)
            if current is None or current.etag != info.etag:
                return self._verdict("superseded")
        _log.info("raw_upload_deleted", key=key, reason=verdict, size=info.size)
        await self._objects.delete(key)
        return self._verdict(verdict)

    def _refusal(self, info: ObjectInfo, prefix: bytes) -> str | None:
        if info.size > self._max_bytes:
            return "image_too_large"
        try:
            header = images.inspect_image(prefix, total_size=info.size)
            images.refuse_too_many_pixels(header, self._max_pixels)
        except images.NotAnImage:
            return "not_an_image"
        except images.TooManyPixels:
            return "too_many_pixels"
        return None

    @staticmethod
    def _verdict(verdict: str) -> str:
        metrics.MEDIA_UPLOADS_CHECKED.labels(verdict).inc()
        return verdict
