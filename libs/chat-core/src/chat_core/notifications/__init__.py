"""Notifications: the job the message service queues for the notification consumer.

One queue message per chat message (recipient ids inside, chunked only for huge groups); the consumer fans
out to devices. The queue is a ``chat_core.jobqueue.JobQueue[Notification]``.
"""

from __future__ import annotations

import datetime as dt

from chat_core.jobqueue import Job, JobKind, JobQueue, Received
from chat_core.messagestore import MessageType
from chat_core.settings import Settings

__all__ = ["Notification", "NotificationQueue", "ReceivedNotification", "notification_jobs"]


class Notification(Job, frozen=True, kw_only=True, rename="camel"):
    notification_id: str  # "{messageId}:{chunk}": stable, so a re-relayed job dedupes at the consumer
    conversation_id: str
    message_id: str
    sender_id: str
    message_type: MessageType
    preview: str
    recipient_ids: tuple[str, ...]
    created_at: dt.datetime
    # An image message's ``object_key`` (what its ``file_url`` names): the push's thumbnail link is built
    # from it. Never the source of a forward: a forwarded message has its own key.
    object_key: str | None = None
    # How many images the message carries (an album: 2..MAX_IMAGES_PER_MESSAGE): "sent 3 photos".
    images: int = 1


NotificationQueue = JobQueue[Notification]
ReceivedNotification = Received[Notification]


def notification_jobs(settings: Settings) -> JobKind[Notification]:
    """The notification queue's kind: its SQS names and redrive limits come from the settings."""
    queue = settings.notifications
    return JobKind(
        name="notification",
        job_type=Notification,
        queue_name=queue.queue_name,
        dlq_name=queue.dlq_name,
        max_receives=queue.max_receives,
        visibility_timeout_seconds=queue.visibility_timeout_seconds,
    )
