"""Media jobs: what the media processor's queue carries.

Two kinds of message arrive on that queue (``MEDIA_QUEUE_NAME``), one ``MediaJob`` type decodes both:

* a **process** job, one per stored image message, put in the outbox with the message and queued by the
  message service's relay: message id, conversation id, the stored key of the raw upload and its ETag
  as verified at send (the processor's fetch is pinned to it);
* an **object-created** event for a new raw upload (S3's event notification, ``{"Records": [...]}``, sent
  by the bucket for ``uploads/``; the local object store's upload route sends the same shape into the
  embedded queue): the processor checks the upload at once and deletes it when it could never be sent.

Anything else (S3's ``s3:TestEvent`` when the notification is configured) decodes to a job with neither,
which the processor acknowledges and drops: no message on this queue can fail it for its shape.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote_plus

import msgspec

from chat_core.errors import ProblemError
from chat_core.jobqueue import Job, JobKind, Received
from chat_core.objectstore import ObjectInfo
from chat_core.settings import Settings

__all__ = [
    "REFUSAL_STATUS",
    "MediaJob",
    "ObjectCreated",
    "ReceivedMediaJob",
    "UploadRefusal",
    "media_jobs",
    "object_created_job",
]

# The status a send's own check answers for each reason an upload is refused on arrival (verification.py).
REFUSAL_STATUS = {"image_too_large": 413, "not_an_image": 422, "too_many_pixels": 422}


class S3Object(msgspec.Struct, frozen=True):
    key: str = ""
    size: int = 0
    etag: str = msgspec.field(default="", name="eTag")


class S3Entity(msgspec.Struct, frozen=True):
    object: S3Object = S3Object()


class S3Record(msgspec.Struct, frozen=True):
    event_name: str = msgspec.field(default="", name="eventName")
    # Text, parsed leniently: no message on this queue can fail for its shape.
    event_time: str = msgspec.field(default="", name="eventTime")
    s3: S3Entity = S3Entity()


class ObjectCreated(msgspec.Struct, frozen=True):
    key: str  # the stored key, decoded
    size: int
    etag: str  # quoted, as ``head`` gives it ("" when the event had none)
    stored_at: dt.datetime | None = None  # the event's time (S3: milliseconds), when it had one


class UploadRefusal(msgspec.Struct, frozen=True, kw_only=True):
    """Why the media processor deleted a raw upload on arrival: the note under ``keys.refusal_key``, which
    a later send of that upload reads on its not-found path to answer with the reason."""

    reason: str  # image_too_large | not_an_image | too_many_pixels
    detail: str
    size: int
    refused_at: dt.datetime

    def problem(self) -> ProblemError:
        return ProblemError(
            REFUSAL_STATUS.get(self.reason, 422),
            self.reason,
            f"{self.detail} (the upload was deleted when it arrived; upload an image that fits)",
        )


class MediaJob(Job, frozen=True, kw_only=True, rename="camel"):
    message_id: str | None = None
    conversation_id: str | None = None
    object_key: str | None = None  # stored key of the raw upload
    object_etag: str | None = None  # as seen at send
    records: tuple[S3Record, ...] = msgspec.field(default=(), name="Records")

    @property
    def is_process(self) -> bool:
        return bool(self.message_id and self.conversation_id and self.object_key and self.object_etag)

    def created_objects(self) -> list[ObjectCreated]:
        """The uploads an object-created event announces (keys URL-decoded, as S3 encodes them)."""
        created = []
        for record in self.records:
            if not record.event_name.startswith("ObjectCreated:") or not record.s3.object.key:
                continue
            etag = record.s3.object.etag
            if etag and not etag.startswith('"'):
                etag = f'"{etag}"'
            created.append(
                ObjectCreated(
                    unquote_plus(record.s3.object.key),
                    record.s3.object.size,
                    etag,
                    _event_time(record.event_time),
                )
            )
        return created


ReceivedMediaJob = Received[MediaJob]


def _event_time(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def object_created_job(info: ObjectInfo) -> MediaJob:
    """The event S3 would send for ``info``: what the local store's upload route queues."""
    record = S3Record(
        event_name="ObjectCreated:Put",
        event_time=info.last_modified.isoformat(),
        s3=S3Entity(S3Object(key=info.key, size=info.size, etag=info.etag.strip('"'))),
    )
    return MediaJob(records=(record,))


def media_jobs(settings: Settings) -> JobKind[MediaJob]:
    """The media queue's kind: the names ``chat-management setup`` creates (the DLQ is ``{name}-dlq``)."""
    media = settings.media
    return JobKind(
        name="media",
        job_type=MediaJob,
        queue_name=media.queue_name,
        dlq_name=media.dlq_name,
        max_receives=media.max_receives,
        visibility_timeout_seconds=media.queue_visibility_timeout_seconds,
    )
