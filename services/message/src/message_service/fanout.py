"""Fan-out after a change is stored, and the event outbox's relay: real-time events, notification jobs.

``Fanout`` is the message service's ``MessageEvents`` and the relay of every event outbox entry
(``chat_core.outbox``). ``deliver`` dispatches on the entry's kind: every kind other than
``message.created`` is only published (``chat_core.outbox.publish``). For each new message (its outbox
entry is already stored with it):

1. publish ``message.created`` once on the conversation's channel, whatever the group size;
2. read the presence of every other member in one round trip; the offline ones go into O(1) queue
   messages (recipient ids inside, one per ``RECIPIENTS_PER_NOTIFICATION``), notification id
   ``{messageId}:{chunk}``;
3. for an image message, queue its media job (message, raw upload key, ETag verified at send) on the
   media queue, so the media processor sanitizes it;
4. delete the outbox entry once all are done (deletes of many entries share one store write).

For a message **deleted** (a ``deleted`` entry, written with the tombstone): tell every image proxy on
``DELETIONS_CHANNEL`` (they forget the message at once), publish ``message.deleted``
``{conversationId, messageId}``, bring the conversation's ``lastMessage`` along (a tombstone), and delete
every stored byte of its image (``chat_core.erasure``); the entry is released only when the last byte is
gone, so the byte deletion is as durable as the event. For a message **edited** (an ``edited`` entry):
publish ``message.edited`` with the full message and bring ``lastMessage`` along.

Per conversation, events are published in the order the messages were stored; only the publish holds
the conversation's lock, so a busy group's enqueues and deletes overlap instead of queueing behind it.
The send hands over the members it just read, so the immediate attempt reads nothing.

The request does not wait for any of it: ``message_created`` hands the entry to a background task and
returns, so a slow or dead bus or queue never delays a 201. Whatever fails stays in the outbox, and the
relay worker retries it (with backoff) until it is delivered: nothing is dropped when Redis or SQS is
down, only late. The relay claims what it takes (a lease per entry, ``OutboxStore.claim_outbox``), so
replicas relaying a backlog share it instead of each publishing all of it. Steps already done for an
entry are remembered in memory, so a retry after a queue outage does not publish again (after a restart
a step may repeat: clients de-duplicate events by ``messageId``, and the consumer never pushes one
message twice to one device).

Degraded modes: presence unreadable (Redis down) -> every other member counts as offline (a push too many
beats a push missed); a ``message.created`` older than ``STALE_EVENT_SECONDS`` is no longer published
(clients that were connected then have resynced since).

What goes on the bus is shaped in ``chat_core.realtime.events`` (the readers decode it from there), per
kind in ``chat_core.outbox.bus_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Collection, Coroutine
from typing import Any

import structlog
from opentelemetry.trace import SpanKind

from chat_core import metrics, outbox, tracing
from chat_core.batching import Coalescer
from chat_core.chatstore import ConversationStore, LastMessage, Message, OutboxEntry, OutboxStore, albums
from chat_core.erasure import ImageEraser
from chat_core.jobqueue import JobQueue
from chat_core.media_jobs import MediaJob
from chat_core.notifications import Notification, NotificationQueue
from chat_core.realtime import EventBus, Presence

__all__ = [
    "RECIPIENTS_PER_NOTIFICATION",
    "Fanout",
    "notifications_for",
]

RECIPIENTS_PER_NOTIFICATION = 1000  # ~130 KiB of ids at most: well inside SQS's 256 KiB per message
STALE_EVENT_SECONDS = 300.0
PREVIEW_CHARS = 100
RELAY_INTERVAL_SECONDS = 1.0
RELAY_GRACE_SECONDS = 5.0  # an entry younger than this is still in its immediate attempt
RELAY_MAX_BACKOFF_SECONDS = 10.0
RELAY_BATCH = 100
UNSEND_WAIT_SECONDS = 1.0  # how long an unsend's answer waits for its delivery (proxies told, bytes gone)
# How long a relay pass holds the entries it claimed: past it, a replica that died mid-pass loses them to
# another. Longer than a pass takes (a delivery's publish and enqueues time out well within it).
RELAY_LEASE = dt.timedelta(seconds=30)
DELETE_BATCH = 200  # outbox entries removed by one store write at most
DELETE_LINGER_SECONDS = 0.02  # how long a delete waits for company
_PROGRESS_TTL_SECONDS = 3600.0

_log = structlog.get_logger("message_service.fanout")
_tracer = tracing.get_tracer("message_service.fanout")


def notifications_for(
    entry: OutboxEntry, recipients: Collection[str], *, trace: dict[str, str]
) -> list[Notification]:
    """The queue messages for one chat message: one per ``RECIPIENTS_PER_NOTIFICATION`` recipients."""
    message = entry.message
    if message is None:
        raise ValueError("notifications are for message.created entries")
    ordered = sorted(recipients)
    preview = (message.content or "")[:PREVIEW_CHARS]
    return [
        Notification(
            notification_id=f"{message.message_id}:{chunk}",
            conversation_id=entry.conversation_id,
            message_id=message.message_id,
            sender_id=message.sender_id,
            message_type=message.message_type,
            preview=preview,
            recipient_ids=tuple(ordered[start : start + RECIPIENTS_PER_NOTIFICATION]),
            created_at=message.timestamp,
            object_key=message.metadata.object_key if message.metadata else None,
            images=len(albums.images_of(message.metadata)),
            trace=trace,
        )
        for chunk, start in enumerate(range(0, len(ordered), RECIPIENTS_PER_NOTIFICATION))
    ]


class _Progress:
    __slots__ = ("media_queued", "published", "queued", "seen")

    def __init__(self) -> None:
        self.published = False
        self.queued = False
        self.media_queued = False
        self.seen = time.monotonic()


class Fanout:
    def __init__(
        self,
        conversations: ConversationStore,
        outbox: OutboxStore,
        bus: EventBus,
        presence: Presence,
        queue: NotificationQueue,
        *,
        media_queue: JobQueue[MediaJob] | None = None,
        eraser: ImageEraser | None = None,
        drain_seconds: float = 10.0,
        relay_interval: float = RELAY_INTERVAL_SECONDS,
        relay_grace: float = RELAY_GRACE_SECONDS,
        relay_lease: dt.timedelta = RELAY_LEASE,
    ) -> None:
        self._conversations = conversations
        self._outbox = outbox
        self._bus = bus
        self._presence = presence
        self._queue = queue
        self._media_queue = media_queue
        self._eraser = eraser
        self._drain_seconds = drain_seconds
        self._relay_interval = relay_interval
        self._relay_grace = relay_grace
        self._relay_lease = relay_lease
        self._progress: dict[str, _Progress] = {}
        self._delivering: set[str] = set()
        self._background: set[asyncio.Task[bool]] = set()
        self._conversation_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._releases: Coalescer[str] = Coalescer(
            self._delete_released, max_batch=DELETE_BATCH, linger=DELETE_LINGER_SECONDS
        )

    # --- MessageEvents ------------------------------------------------------------------------------
    async def message_created(self, entry: OutboxEntry, members: frozenset[str]) -> None:
        self._in_background(self.deliver(entry, members))

    async def event_stored(self, entry: OutboxEntry) -> None:
        task = self._in_background(self.deliver(entry))
        if entry.kind == "message.deleted":
            # An unsend answers once every proxy was told and the bytes are gone, when that is quick (a
            # few ms): the sender's 204 then means "gone". A slow or dead bus or object store holds it
            # at most UNSEND_WAIT_SECONDS; the delivery goes on, and the relay retries what fails.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), UNSEND_WAIT_SECONDS)

    def _in_background(self, delivery: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        # The request does not wait: a slow or dead bus never delays its answer (the outbox has the entry).
        task = asyncio.get_running_loop().create_task(delivery, name="fanout")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- delivery of one outbox entry: the dispatch on its kind -----------------------------------
    async def deliver(self, entry: OutboxEntry, members: frozenset[str] | None = None) -> bool:
        """Do what is still to do for ``entry``; True once its outbox entry is released.

        False when a step failed, or when another task is delivering the same entry right now (the relay
        skips those instead of calling this).

        ``members``: the conversation's members as the change saw them (None: read them, as the relay does).
        """
        event_id = entry.event_id
        if event_id in self._delivering:
            return False
        self._delivering.add(event_id)
        try:
            if entry.kind == "message.created":
                with _tracer.start_as_current_span(
                    "fanout message.created",
                    context=tracing.extract(entry.trace),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.message.id": event_id,
                        "chat.conversation.id": entry.conversation_id,
                    },
                ):
                    return await self._deliver(entry, members)
            if entry.kind in ("message.deleted", "message.edited"):
                return await self._deliver_change(entry)
            # Every other kind only publishes (chat_core.outbox.bus_events says what).
            return await self._deliver_event(entry)
        finally:
            self._delivering.discard(event_id)

    async def _deliver_change(self, entry: OutboxEntry) -> bool:
        """A deletion or an edit: its events, ``lastMessage`` brought along, and (deleted) every byte of
        the image. Each step is remembered once done, so a retry repeats only what failed."""
        message = entry.message
        if message is None:
            raise ValueError(f"a {entry.kind} entry without its message")
        progress = self._progress.setdefault(entry.event_id, _Progress())
        failed: list[str] = []
        if not progress.published:
            async with self._conversation_lock(entry.conversation_id):
                try:
                    await outbox.publish(
                        self._bus, entry, await outbox.members_for(self._conversations, entry)
                    )
                    progress.published = True
                except Exception as exc:
                    failed.append("bus")
                    _log.warning(
                        "fanout_publish_failed", kind=entry.kind, event_id=entry.event_id, error=repr(exc)
                    )
        if not progress.queued:  # here: the conversation's lastMessage revised
            try:
                await self._conversations.revise_last_message(entry.conversation_id, LastMessage.of(message))
                progress.queued = True
            except Exception as exc:
                failed.append("store")
                _log.warning("fanout_last_message_failed", event_id=entry.event_id, error=repr(exc))
        if entry.kind == "message.deleted" and not progress.media_queued:  # here: the image's bytes gone
            try:
                await self._erase(entry, message)
                progress.media_queued = True
            except Exception as exc:
                failed.append("object_store")
                _log.warning("fanout_erase_failed", event_id=entry.event_id, error=repr(exc))
        if failed:
            for target in failed:
                metrics.OUTBOX_RELAY_ERRORS.labels(target).inc()
            return False
        if not await self._release(entry.event_id):
            return False
        self._progress.pop(entry.event_id, None)
        return True

    async def _erase(self, entry: OutboxEntry, message: Message) -> None:
        if self._eraser is None:
            return
        # An album: every image's raw upload (its derivatives are all under the message's one prefix).
        raw_keys = list(dict.fromkeys([entry.object_key, *(image.key for image in entry.images)]))
        for raw_key in raw_keys:
            await self._eraser.erase(entry.conversation_id, message.message_id, raw_key)
        if message.message_type == "image" and isinstance(message.deleted_at, dt.datetime):
            waited = (dt.datetime.now(dt.UTC) - message.deleted_at).total_seconds()
            metrics.IMAGE_BYTES_ERASED.observe(max(0.0, waited))

    async def _deliver_event(self, entry: OutboxEntry) -> bool:
        async with self._conversation_lock(entry.conversation_id):
            try:
                members = await outbox.members_for(self._conversations, entry)
            except Exception as exc:
                metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
                _log.warning("fanout_store_unavailable", event_id=entry.event_id, error=repr(exc))
                return False
            try:
                await outbox.publish(self._bus, entry, members)
            except Exception as exc:
                metrics.OUTBOX_RELAY_ERRORS.labels("bus").inc()
                _log.warning(
                    "fanout_publish_failed", kind=entry.kind, event_id=entry.event_id, error=repr(exc)
                )
                return False
        return await self._release(entry.event_id)

    async def _deliver(self, entry: OutboxEntry, members: frozenset[str] | None) -> bool:
        message = entry.message
        if message is None:
            raise ValueError("a message.created entry without its message")
        progress = self._progress.setdefault(message.message_id, _Progress())
        failed: list[str] = []
        async with self._conversation_lock(entry.conversation_id):
            if members is None:
                try:
                    members = await self._conversations.get_participants(entry.conversation_id) or frozenset()
                except Exception as exc:
                    metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
                    _log.warning("fanout_store_unavailable", message_id=message.message_id, error=repr(exc))
                    return False
                if not members:  # the conversation is gone: nobody left to tell
                    progress.published = progress.queued = True
            age = (dt.datetime.now(dt.UTC) - message.timestamp).total_seconds()
            if not progress.published and age > STALE_EVENT_SECONDS:
                progress.published = True
            if not progress.published:
                try:
                    await outbox.publish(self._bus, entry, members)
                    progress.published = True
                except Exception as exc:
                    failed.append("bus")
                    _log.warning("fanout_publish_failed", message_id=message.message_id, error=repr(exc))
        if not progress.queued:
            try:
                await self._enqueue(entry, members - {message.sender_id})
                progress.queued = True
            except Exception as exc:
                failed.append("queue")
                _log.warning("fanout_enqueue_failed", message_id=message.message_id, error=repr(exc))
        if not progress.media_queued:
            try:
                await self._enqueue_media(entry)
                progress.media_queued = True
            except Exception as exc:
                failed.append("media_queue")
                _log.warning("fanout_media_enqueue_failed", message_id=message.message_id, error=repr(exc))
        if failed:
            for target in failed:
                metrics.OUTBOX_RELAY_ERRORS.labels(target).inc()
            return False
        if not await self._release(message.message_id):
            return False
        self._progress.pop(message.message_id, None)
        return True

    async def _release(self, event_id: str) -> bool:
        """Delete the outbox entry, together with others released at about the same time."""
        try:
            await self._releases.submit(event_id)
        except Exception:
            return False  # it stays in the outbox: the relay delivers it again (idempotently)
        return True

    async def _delete_released(self, event_ids: list[str]) -> list[None]:
        try:
            await self._outbox.delete_outbox(event_ids)
        except Exception as exc:
            metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
            _log.warning("fanout_outbox_delete_failed", entries=len(event_ids), error=repr(exc))
            raise
        return [None] * len(event_ids)

    async def _enqueue(self, entry: OutboxEntry, recipients: frozenset[str]) -> None:
        if not recipients or entry.message is None:
            return
        try:
            online = await self._presence.online(recipients)
        except Exception as exc:
            online = set()
            _log.warning("presence_unavailable_notifying_everyone", error=repr(exc))
        offline = recipients - online
        if not offline:
            return
        with _tracer.start_as_current_span("enqueue notifications", kind=SpanKind.PRODUCER) as span:
            notifications = notifications_for(entry, offline, trace=tracing.inject())
            span.set_attribute("chat.notifications", len(notifications))
            span.set_attribute("chat.recipients", len(offline))
            await self._queue.send(notifications)
        metrics.NOTIFICATIONS_ENQUEUED.inc(len(notifications))

    async def _enqueue_media(self, entry: OutboxEntry) -> None:
        """An image message's media job: what to process, pinned to the ETag verified at send."""
        if self._media_queue is None or not (entry.object_key and entry.object_etag) or entry.message is None:
            return
        # An album: one job per image, each finishing its own image (the worker finds it by its key).
        objects = [(image.key, image.etag) for image in entry.images] or [
            (entry.object_key, entry.object_etag)
        ]
        with _tracer.start_as_current_span("enqueue media job", kind=SpanKind.PRODUCER):
            trace = tracing.inject()
            jobs = [
                MediaJob(
                    message_id=entry.message.message_id,
                    conversation_id=entry.conversation_id,
                    object_key=key,
                    object_etag=etag,
                    trace=trace,
                )
                for key, etag in objects
            ]
            await self._media_queue.send(jobs)
        metrics.MEDIA_JOBS_QUEUED.inc(len(jobs))

    @contextlib.asynccontextmanager
    async def _conversation_lock(self, conversation_id: str) -> AsyncIterator[None]:
        # Per conversation, events go out in the order the messages were stored (asyncio.Lock is FIFO).
        lock, users = self._conversation_locks.get(conversation_id, (asyncio.Lock(), 0))
        self._conversation_locks[conversation_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._conversation_locks[conversation_id]
            if users == 1:
                del self._conversation_locks[conversation_id]
            else:
                self._conversation_locks[conversation_id] = (lock, users - 1)

    # --- the relay ----------------------------------------------------------------------------------
    async def relay_once(self) -> bool:
        """One pass over the outbox; False when an entry could not be delivered (back off).

        The entries are claimed (``RELAY_LEASE``), so replicas relaying after an outage share them instead
        of each publishing all of them; what this pass does not deliver is released for the next one.
        """
        entries = await self._outbox.claim_outbox(
            older_than=self._relay_grace, limit=RELAY_BATCH, lease=self._relay_lease
        )
        healthy = True
        for index, entry in enumerate(entries):
            if entry.event_id in self._delivering:
                continue  # another task is delivering it right now: not a failure, go on with the rest
            if not await self.deliver(entry):
                healthy = False
                # The bus or queue is down: the rest would fail the same way. Whoever passes next takes them.
                await self._release_claims(entries[index:])
                break
        await self._export_outbox_stats()
        self._forget_stale_progress()
        return healthy

    async def _release_claims(self, entries: list[OutboxEntry]) -> None:
        undelivered = [entry.event_id for entry in entries if entry.event_id not in self._delivering]
        try:
            await self._outbox.release_outbox(undelivered)
        except Exception as exc:  # their leases lapse on their own
            metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
            _log.warning("outbox_release_failed", entries=len(undelivered), error=repr(exc))

    async def _export_outbox_stats(self) -> None:
        count, oldest = await self._outbox.outbox_stats()
        metrics.OUTBOX_DEPTH.set(count)
        age = 0.0 if oldest is None else (dt.datetime.now(dt.UTC) - oldest).total_seconds()
        metrics.OUTBOX_OLDEST_AGE.set(max(0.0, age))

    def _forget_stale_progress(self) -> None:
        # Entries another replica delivered never come back here; do not keep their progress forever.
        cutoff = time.monotonic() - _PROGRESS_TTL_SECONDS
        for message_id in [m for m, p in self._progress.items() if p.seen < cutoff]:
            del self._progress[message_id]

    async def _relay(self) -> None:
        delay = self._relay_interval
        while True:
            await asyncio.sleep(delay)
            try:
                healthy = await self.relay_once()
            except Exception as exc:
                metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
                _log.warning("outbox_relay_failed", error=repr(exc))
                healthy = False
            delay = self._relay_interval if healthy else min(delay * 2, RELAY_MAX_BACKOFF_SECONDS)

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """The relay, during the service's lifespan; at shutdown, in-flight deliveries get time to finish."""
        relay = asyncio.create_task(self._relay(), name="outbox-relay")
        try:
            yield
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            if self._background:
                # What does not finish stays in the outbox for the next start's relay.
                _done, pending = await asyncio.wait(set(self._background), timeout=self._drain_seconds)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
            await self._releases.close()
