"""A push for an album says how many photos it holds; the queued notification carries the count."""

from __future__ import annotations

import datetime as dt
import uuid

from chat_core.messagestore import Device, ImageMetadata, Message, created_event
from chat_core.messagestore.albums import album_of
from message_service.fanout import notifications_for
from notification_consumer.consumer import push_message_for


def _image(n: int) -> ImageMetadata:
    key = f"images/alice/20261207-050000-{uuid.uuid4()}.jpg"
    return ImageMetadata(
        object_key=key, url=f"https://chat.example/images/c-1/{key}", content_type="image/jpeg", size_bytes=n
    )


def _album_message(count: int, content: str | None = None) -> Message:
    return Message(
        message_id=str(uuid.uuid4()),
        content=content,
        message_type="image",
        sender_id="alice",
        timestamp=dt.datetime.now(dt.UTC),
        read_by=("alice",),
        metadata=album_of([_image(i + 1) for i in range(count)]),
    )


def _body(message: Message) -> str:
    [notification] = notifications_for(created_event("c-1", message), ["bob"], trace={})
    device = Device(
        token="bob-phone-0001", platform="android", user_id="bob", updated_at=dt.datetime.now(dt.UTC)
    )
    return push_message_for(notification, device).body


def test_an_album_push_says_how_many_photos() -> None:
    assert _body(_album_message(3)) == "sent 3 photos"
    assert _body(_album_message(1)) == "sent a photo"
    assert _body(_album_message(3, content="The trip")) == "The trip"  # a caption is the body, as for one
