"""The notification worker: queue message -> recipients' devices -> one push per device -> ack.

* At most ``NOTIFICATION_CONCURRENCY`` queue messages in work at once (the poller only asks the queue for
  as many as there are free slots), and at most as many pushes in flight.
* A redelivered message never pushes twice to one device, and a crash loses no push: each (notification,
  device) pair is claimed in the PushReceiptStore before its push, as a lease of ``PUSH_CLAIM_LEASE_SECONDS``.
  A push that is accepted (or finds the token dead) marks the pair done: never pushed again. A push that
  failed releases its claim, so only failures are retried. A claim whose holder crashed between claim and
  push is neither done nor released: once its lease has run out, a redelivery claims it again and pushes.
  A redelivery that meets a claim still within its lease (its push may be under way elsewhere) neither
  pushes nor acks: the message goes back on the queue until that lease ends, then looks again. Two copies
  of one job in this process (enqueued twice) take turns on each device instead: the second finds it done.
* A push gets at most half the lease (then it counts as failed and is retried), so a claim never lapses
  while its push is still running; the other half is margin for marking it done and for clock skew.
* A transient failure (provider answered ``retry``, or the store was unreachable) leaves the message on
  the queue with a delay that doubles per attempt (``NOTIFICATION_RETRY_BASE_SECONDS``, through the
  visibility timeout); after ``NOTIFICATION_MAX_RECEIVES`` receives the queue moves it to the DLQ.
* A token the provider reports dead is deleted from the store.
* A notification whose message was deleted (unsent) before it was pushed is acknowledged without a push
  (one message read per queue message, not per device); a redelivery finds it deleted the same way.
* Each device's push goes to the provider its token is for (``Device.provider``: FCM or APNs; a log or
  webhook provider takes any device); a device no configured provider can reach is skipped (counted as
  ``no_provider``), never deleted: another deployment's configuration may reach it.
* An image message's push carries a link to its thumbnail (``chat_core.push.image_links``: signed for that
  recipient, valid ``PUSH_IMAGE_URL_SECONDS``), unless ``PUSH_IMAGE_PREVIEWS=false`` or the conversation
  turned previews off; when the conversation cannot be read, the push goes without the image.
* Shutdown (SIGTERM -> lifespan exit) stops polling (the receive in flight returns what it has: at once
  on SQLite, within ``SQS_WAIT_SECONDS`` on SQS, so nothing is left hidden), lets in-flight
  messages finish for up to ``SHUTDOWN_DRAIN_SECONDS``, then cancels the rest (their claims are
  released, so their redelivery pushes them). The poll loop is ``chat_core.jobqueue.runner``.
* Each message's span continues the sender's trace (W3C context from the queue message attributes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable
from typing import NamedTuple

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat_core import metrics, tracing
from chat_core.backends import Backends
from chat_core.jobqueue.runner import JobRunner
from chat_core.messagestore import ConversationStore, Device, DeviceStore, MessageStore, PushReceiptStore
from chat_core.notifications import Notification, NotificationQueue, ReceivedNotification
from chat_core.push import PushMessage, PushRouter
from chat_core.push.image_links import PushImageLinks, push_image_links
from chat_core.settings import Settings

__all__ = ["MAX_RETRY_DELAY_SECONDS", "NotificationConsumer", "push_message_for"]

MAX_RETRY_DELAY_SECONDS = 900.0
_LEASE_MARGIN_SECONDS = 1.0  # after another claim's lease ends, look again a little later
_log = structlog.get_logger("notification_consumer")
_tracer = tracing.get_tracer("notification_consumer")


class DeviceResult(NamedTuple):
    done: bool  # pushed now or before, or the device is gone
    not_before: dt.datetime | None = None  # not done: another claim holds the device until then


_DONE = DeviceResult(done=True)
_RETRY = DeviceResult(done=False)


def push_message_for(notification: Notification, device: Device, image_url: str | None = None) -> PushMessage:
    if notification.preview:
        body = notification.preview
    elif notification.message_type == "image":
        body = "sent a photo" if notification.images <= 1 else f"sent {notification.images} photos"
    else:
        body = "sent a message"
    return PushMessage(
        device_token=device.token,
        platform=device.platform,
        user_id=device.user_id,
        title=notification.sender_id,
        body=body,
        data={
            "type": "message.created",
            "conversationId": notification.conversation_id,
            "messageId": notification.message_id,
            "senderId": notification.sender_id,
            "messageType": notification.message_type,
        },
        provider=device.provider,
        image_url=image_url,
    )


class NotificationConsumer:
    def __init__(
        self,
        queue: NotificationQueue,
        devices: DeviceStore,
        receipts: PushReceiptStore,
        push: PushRouter,
        *,
        conversations: ConversationStore | None = None,
        image_links: PushImageLinks | None = None,
        concurrency: int,
        wait_seconds: float,
        max_receives: int,
        retry_base_seconds: float,
        drain_seconds: float,
        claim_lease_seconds: float = 60.0,
        messages: MessageStore | None = None,
    ) -> None:
        self._queue = queue
        self._messages = messages
        self._devices = devices
        self._receipts = receipts
        self._push = push
        self._conversations = conversations
        self._image_links = image_links if conversations is not None else None
        self._max_receives = max_receives
        self._retry_base = retry_base_seconds
        self._lease = dt.timedelta(seconds=claim_lease_seconds)
        self._push_deadline = claim_lease_seconds / 2
        self._push_slots = asyncio.Semaphore(concurrency)
        self._pushing: dict[tuple[str, str], asyncio.Event] = {}  # (notification, token) pushed right now
        self._runner = JobRunner(
            "notification",
            queue,
            self.handle,
            concurrency=concurrency,
            wait_seconds=wait_seconds,
            drain_seconds=drain_seconds,
            depth_gauge=metrics.NOTIFICATION_QUEUE_DEPTH,
        )

    @classmethod
    def from_backends(cls, settings: Settings, backends: Backends) -> NotificationConsumer:
        return cls(
            backends.notification_queue,
            backends.devices,
            backends.push_receipts,
            backends.push_provider,
            concurrency=settings.notifications.concurrency,
            wait_seconds=settings.sqs.wait_seconds,
            max_receives=settings.notifications.max_receives,
            retry_base_seconds=settings.notifications.retry_base_seconds,
            drain_seconds=settings.service.drain_seconds,
            claim_lease_seconds=settings.notifications.push_claim_lease_seconds,
            messages=backends.messages,
            conversations=backends.conversations,
            image_links=push_image_links(settings) if settings.push.image_previews else None,
        )

    # --- lifecycle ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        # One poller (chat_core.jobqueue.runner): it asks for as many messages as there are free slots (up
        # to 10 per receive). More pollers measured slower on SQLite (write-lock contention) and on
        # LocalStack (more, smaller receives); a replica's rate is bounded by push latency x concurrency
        # long before that.
        async with self._runner.running():
            yield

    # --- one queue message --------------------------------------------------------------------------
    def retry_delay(self, receive_count: int) -> float:
        delay = self._retry_base * 2 ** max(0, receive_count - 1)
        return float(min(MAX_RETRY_DELAY_SECONDS, delay * random.uniform(0.8, 1.2)))  # noqa: S311 - jitter

    async def handle(self, received: ReceivedNotification) -> None:
        """Push one queue message to every device of its recipients, then ack it (or schedule a retry)."""
        notification = received.job
        with _tracer.start_as_current_span(
            "notification process",
            context=tracing.extract(notification.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.message.id": notification.notification_id,
                "messaging.message.delivery_count": received.receive_count,
                "chat.recipients": len(notification.recipient_ids),
            },
        ) as span:
            if received.receive_count == 1:
                waited = (dt.datetime.now(dt.UTC) - received.enqueued_at).total_seconds()
                metrics.NOTIFICATION_QUEUE_AGE.observe(max(0.0, waited))
            try:
                complete, not_before = await self._push_all(notification)
            except Exception as exc:
                _log.warning(
                    "notification_failed", notification_id=notification.notification_id, error=repr(exc)
                )
                complete, not_before = False, None
            if complete:
                await self._settle(self._queue.ack(received.receipt), notification)
                return
            span.set_status(Status(StatusCode.ERROR, "some pushes will be retried"))
            if received.receive_count >= self._max_receives:
                # The queue moves it to the DLQ on its next receive: let that happen now.
                metrics.NOTIFICATIONS_DEAD_LETTERED.inc()
                _log.error(
                    "notification_dead_lettered",
                    notification_id=notification.notification_id,
                    receives=received.receive_count,
                )
                delay = 0.0
            else:
                metrics.NOTIFICATIONS_RETRIED.inc()
                delay = self.retry_delay(received.receive_count)
                if not_before is not None:
                    # A device is claimed elsewhere: look again once that lease has run out, not before
                    # (each early look would spend one of the message's receives).
                    lease_left = (not_before - dt.datetime.now(dt.UTC)).total_seconds()
                    delay = max(delay, min(MAX_RETRY_DELAY_SECONDS, lease_left + _LEASE_MARGIN_SECONDS))
            await self._settle(self._queue.retry_later(received.receipt, delay), notification)

    async def _settle(self, call: Awaitable[None], notification: Notification) -> None:
        try:
            await call
        except Exception as exc:
            # The visibility timeout brings it back; claims keep a redelivery from pushing twice.
            _log.warning(
                "notification_settle_failed", notification_id=notification.notification_id, error=repr(exc)
            )

    async def _push_all(self, notification: Notification) -> tuple[bool, dt.datetime | None]:
        """(True, None) when every device is done (pushed now or before, or gone); otherwise False and
        the latest time another claim holds one of the devices (None: only failures to retry)."""
        if await self._unsent(notification):
            return True, None
        devices = await self._devices.devices_for(notification.recipient_ids)
        targets = [device for user in notification.recipient_ids for device in devices.get(user, ())]
        links = await self._image_links_for(notification) if targets else None
        # Supervised: every sibling push is settled (sent and done, or released) before this returns, even
        # when one fails, so none is left running behind the retry decision. Cancelling the siblings
        # instead would release claims of pushes that may already have been delivered.
        results = await asyncio.gather(
            *(self._push_device(notification, device, links) for device in targets), return_exceptions=True
        )
        settled: list[DeviceResult] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            settled.append(result)
        held = [result.not_before for result in settled if result.not_before is not None]
        return all(result.done for result in settled), max(held, default=None)

    async def _unsent(self, notification: Notification) -> bool:
        """Whether the message was deleted: then nobody is told about it."""
        if self._messages is None:
            return False
        message = await self._messages.get_message(notification.conversation_id, notification.message_id)
        if message is None or not message.deleted:
            return False
        metrics.DELETED_SKIPPED.labels("push").inc()
        _log.info("push_skipped_message_deleted", notification_id=notification.notification_id)
        return True

    async def _image_links_for(self, notification: Notification) -> PushImageLinks | None:
        """The link signer when this notification's pushes may show its image, else None."""
        if self._image_links is None or notification.message_type != "image" or not notification.object_key:
            return None
        assert self._conversations is not None
        try:
            conversation = await self._conversations.get_conversation(notification.conversation_id)
        except Exception as exc:
            # Privacy first: without the conversation's setting, no image (the push itself still goes).
            _log.warning("push_image_setting_unreadable", error=repr(exc))
            return None
        if conversation is None or not conversation.push_image_previews:
            return None
        return self._image_links

    async def _push_device(
        self, notification: Notification, device: Device, links: PushImageLinks | None
    ) -> DeviceResult:
        # Two copies of one job in this process (the relay enqueued it twice) take turns on a device, so the
        # second finds the first's push done (or released) instead of its live lease, which would send the
        # second copy back to the queue until the lease ends. Other replicas' leases are the store's job.
        key = (notification.notification_id, device.token)
        while (running := self._pushing.get(key)) is not None:
            await running.wait()
        finished = self._pushing[key] = asyncio.Event()
        try:
            return await self._claim_and_push(notification, device, links)
        finally:
            del self._pushing[key]
            finished.set()

    async def _claim_and_push(
        self, notification: Notification, device: Device, links: PushImageLinks | None
    ) -> DeviceResult:
        provider = self._push.route(device.provider)
        if provider is None:
            metrics.NOTIFICATIONS_FAILED.labels(device.provider, "no_provider").inc()
            _log.info("push_no_provider", user_id=device.user_id, provider=device.provider)
            return _DONE
        image_url = None
        if links is not None and notification.object_key:
            image_url = links.link(notification.conversation_id, notification.object_key, device.user_id)
        # The claim is taken once a push slot is free, so its lease covers the push, not the wait.
        async with self._push_slots:
            claim = await self._receipts.claim_push(
                notification.notification_id, device.token, lease=self._lease
            )
            if claim.state == "done":
                return _DONE  # pushed by an earlier delivery of this message
            if claim.state == "leased":
                _log.info(
                    "push_claimed_elsewhere",
                    notification_id=notification.notification_id,
                    user_id=device.user_id,
                    leased_until=str(claim.leased_until),
                )
                return DeviceResult(done=False, not_before=claim.leased_until)
            try:
                with _tracer.start_as_current_span(f"push {provider.name}", kind=SpanKind.CLIENT):
                    async with asyncio.timeout(self._push_deadline):
                        outcome = await provider.send(push_message_for(notification, device, image_url))
            except BaseException as exc:
                await self._release(notification, device)
                if not isinstance(exc, Exception):
                    raise  # cancelled (shutdown): the claim is released, the redelivery pushes it
                metrics.NOTIFICATIONS_FAILED.labels(provider.name, "error").inc()
                _log.warning("push_error", user_id=device.user_id, error=repr(exc))
                return _RETRY
        if outcome == "sent":
            metrics.NOTIFICATIONS_SENT.labels(provider.name).inc()
            await self._complete(notification, device)
            return _DONE
        if outcome == "invalid_token":
            metrics.NOTIFICATIONS_FAILED.labels(provider.name, "invalid_token").inc()
            _log.info("device_token_invalid_deleted", user_id=device.user_id, platform=device.platform)
            await self._complete(notification, device)
            await self._devices.delete_device(device.user_id, device.token)
            return _DONE
        metrics.NOTIFICATIONS_FAILED.labels(provider.name, "retry").inc()
        await self._release(notification, device)
        return _RETRY

    async def _complete(self, notification: Notification, device: Device) -> None:
        try:
            # Shielded: a push that went out must be marked done even if shutdown cancels this task.
            await asyncio.shield(self._receipts.complete_push(notification.notification_id, device.token))
        except Exception as exc:
            # The push went out: it counts as done here (no retry of it from this delivery). Only a
            # redelivery after the lease, for a sibling's failure, could push it once more.
            _log.warning("push_claim_not_completed", user_id=device.user_id, error=repr(exc))

    async def _release(self, notification: Notification, device: Device) -> None:
        try:
            # Shielded: a cancelled push must still give its claim back.
            await asyncio.shield(self._receipts.release_push(notification.notification_id, device.token))
        except Exception as exc:
            _log.warning("push_claim_not_released", user_id=device.user_id, error=repr(exc))
