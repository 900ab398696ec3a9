"""Request and response bodies of the conversation and message endpoints.

The send request is exactly the spec's (camelCase message fields, snake_case image metadata), plus an
optional ``clientMessageId`` for idempotent retries. Stored messages are returned as
``chat_core.messagestore.Message``, the spec's "Message Data Structure".
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from litestar.openapi.spec import Example

from chat_core.auth import USER_ID_PATTERN
from chat_core.keys import CONVERSATION_ID_PATTERN, OBJECT_REFERENCE_PATTERN
from chat_core.messagestore import CURSOR_PATTERN, Conversation, Message
from chat_core.messagestore.albums import DEFAULT_MAX_IMAGES

__all__ = [
    "MAX_ALT_TEXT_CHARS",
    "MAX_CONTENT_CHARS",
    "MAX_PARTICIPANTS",
    "MESSAGE_EXAMPLE",
    "SEND_EXAMPLES",
    "AddParticipants",
    "ConversationPage",
    "CreateConversation",
    "EditMessage",
    "ForwardMessage",
    "GalleryImage",
    "GalleryPage",
    "ImageMetadataRequest",
    "ImageRequest",
    "MessagePage",
    "SendImage",
    "SendMessage",
    "SendText",
    "UpdateConversation",
]

_KEY = "images/user123/20240419-123456-0f8e4c2a-9b7d-4e11-8a3c-5d6e7f809112.jpg"
_URL = f"https://images.zalo-phake.example.com/images/123/{_KEY}"
SEND_EXAMPLES = [
    Example(
        summary="The spec's image message",
        value={
            "content": "Check out this photo!",
            "messageType": "image",
            "metadata": {"object_key": _KEY, "url": _URL, "content_type": "image/jpeg"},
            "clientMessageId": "c-7f3a91",
        },
    ),
    Example(
        summary="An album (2..MAX_IMAGES_PER_MESSAGE images, in the order shown)",
        value={
            "content": "The trip",
            "messageType": "image",
            "metadata": {
                "images": [
                    {"object_key": _KEY, "content_type": "image/jpeg", "alt_text": "The lake at dawn"},
                    {"object_key": _KEY.replace("0f8e4c2a", "1a2b3c4d"), "content_type": "image/jpeg"},
                ]
            },
            "clientMessageId": "c-7f3a92",
        },
    ),
    Example(summary="A text message", value={"content": "See you at 8", "messageType": "text"}),
]
MESSAGE_EXAMPLE = Example(
    summary="The stored image message (the spec's Message Data Structure)",
    value={
        "messageId": "5b8e0f3c-2d7a-5e41-9c6b-1a2f3e4d5c6b",
        "content": "Check out this photo!",
        "messageType": "image",
        "senderId": "user123",
        "timestamp": "2024-04-19T12:35:00Z",
        "readBy": ["user123"],
        "metadata": {
            "object_key": _KEY,
            "url": _URL,
            "content_type": "image/jpeg",
            "size_bytes": 102400,
            "width": 800,
            "height": 600,
        },
    },
)

MAX_PARTICIPANTS = 500  # a group's membership array stays far below Firestore's 1 MiB document limit
MAX_CONTENT_CHARS = 4000
MAX_ALT_TEXT_CHARS = 1000
MAX_RETENTION_DAYS = 36500

AltText = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_ALT_TEXT_CHARS,
        description="The image described for people who cannot see it (screen readers); <= 1,000 characters.",
    ),
]
EditedContent = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_CONTENT_CHARS,
        description="The new text, or the image's new caption (null or empty: no caption).",
    ),
]
RetentionDays = Annotated[
    int, msgspec.Meta(ge=1, le=MAX_RETENTION_DAYS, description="Days a message is kept.")
]

UserId = Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN.pattern, description="A user id (`sub`).")]


class CreateConversation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    participant_ids: Annotated[
        list[UserId],
        msgspec.Meta(
            max_length=MAX_PARTICIPANTS,
            description="The other members; the caller is always a member.",
        ),
    ] = []
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    conversation_id: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=CONVERSATION_ID_PATTERN.pattern,
                description="Optional id of your choosing (e.g. an existing chat's); 409 when taken. "
                "Default: a random one.",
            ),
        ]
        | None
    ) = None
    push_image_previews: Annotated[
        bool,
        msgspec.Meta(
            description="Whether pushes of this conversation's images show the photo (a thumbnail link); "
            "`false` keeps its photos off lock screens."
        ),
    ] = True


class UpdateConversation(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """Settings an admin changes; a field left out stays as it is, an unknown one is a 400."""

    push_image_previews: Annotated[
        bool | msgspec.UnsetType,
        msgspec.Meta(description="Whether pushes of this conversation's images show the photo."),
    ] = msgspec.UNSET
    # Messages older than this many days are deleted with their images (null: MESSAGE_RETENTION_DAYS).
    retention_days: RetentionDays | msgspec.UnsetType | None = msgspec.UNSET


class AddParticipants(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    participant_ids: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=MAX_PARTICIPANTS)]
    role: Annotated[
        Literal["member", "admin"],
        msgspec.Meta(
            description="`admin` (admins only) adds them as admins, or makes members already in it admins."
        ),
    ] = "member"


ObjectKeyField = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=512,
        description="`object_key` from the upload URL response: "
        "`images/{uploader}/{yyyymmdd-HHMMSS}-{uuid}.{ext}` (or `{conversationId}/images/...`).",
        # Documented, checked by the service (400 `invalid_object_key`, its stable code).
        extra_json_schema={"pattern": OBJECT_REFERENCE_PATTERN.pattern},
    ),
]
ContentTypeField = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=127,
        description="The type the image was uploaded as (any letter case); one of `ALLOWED_IMAGE_TYPES`.",
    ),
]
UrlField = Annotated[str, msgspec.Meta(max_length=2048)]


class ImageRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One image as a client names it (the spec's metadata, or one of an album's ``images``). Only
    ``object_key``, ``content_type`` and ``alt_text`` are used: size, width and height are measured by the
    server and ``url`` is always the proxy URL."""

    object_key: ObjectKeyField
    content_type: ContentTypeField
    url: UrlField | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    alt_text: AltText | None = None


class ImageMetadataRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's image metadata as a client sends it (one image: ``object_key`` and ``content_type``), or
    an album: ``images`` alone, 2..``MAX_IMAGES_PER_MESSAGE`` of them (the OpenAPI document publishes the
    two as ``oneOf``; the service refuses a mix with 400 ``invalid_album``)."""

    object_key: ObjectKeyField | None = None
    content_type: ContentTypeField | None = None
    url: UrlField | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    alt_text: AltText | None = None
    images: (
        Annotated[
            list[ImageRequest],
            msgspec.Meta(
                min_length=1,
                description="An album: the images in the order shown, each uploaded as for one image. "
                "Checked by the service: more than `MAX_IMAGES_PER_MESSAGE` is 400 `too_many_images`, one "
                "object twice is 400 `duplicate_image`; a failing image's problem names its `index`.",
                extra_json_schema={"maxItems": DEFAULT_MAX_IMAGES},
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET

    def single(self) -> ImageRequest | None:
        """The one image this names, when it is not an album and names one."""
        if self.object_key is None or self.content_type is None:
            return None
        return ImageRequest(
            object_key=self.object_key,
            content_type=self.content_type,
            url=self.url,
            width=self.width,
            height=self.height,
            size_bytes=self.size_bytes,
            alt_text=self.alt_text,
        )

    def mixed(self) -> bool:
        """An album that also names fields of one image."""
        return self.images is not msgspec.UNSET and any(
            value is not None
            for value in (
                self.object_key,
                self.content_type,
                self.url,
                self.width,
                self.height,
                self.size_bytes,
                self.alt_text,
            )
        )


ClientMessageId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_.:-]{1,128}(?!\n)$",
        description="Any id the client picks per message; a retry with it returns the same message.",
    ),
]


class SendText(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag_field="messageType", tag="text"
):
    """A text message: some text (not only spaces), and no image."""

    content: Annotated[
        str,
        msgspec.Meta(
            max_length=MAX_CONTENT_CHARS,
            # Documented; the service refuses blank text itself, with its stable code `empty_message`.
            extra_json_schema={"pattern": r"\S"},
        ),
    ]
    # A client that always writes every field sends `"metadata": null`: that is a text message too.
    metadata: None = None
    client_message_id: ClientMessageId | None = None


class SendImage(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag_field="messageType", tag="image"
):
    """An image message: the uploaded image, and an optional caption."""

    metadata: ImageMetadataRequest
    content: Annotated[str, msgspec.Meta(max_length=MAX_CONTENT_CHARS, description="A caption.")] | None = (
        None
    )
    client_message_id: ClientMessageId | None = None


# One body, two shapes told apart by `messageType` (a discriminated union in the OpenAPI document).
SendMessage = SendText | SendImage


NextCursor = Annotated[
    str,
    msgspec.Meta(
        pattern=CURSOR_PATTERN.pattern,
        description="Pass as `before` for the next (older) page; null on the last page.",
    ),
]


class ForwardMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    conversation_id: Annotated[
        str,
        msgspec.Meta(
            pattern=CONVERSATION_ID_PATTERN.pattern,
            description="The conversation to forward to (you must be a member of it).",
        ),
    ]
    content: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_CONTENT_CHARS,
                description="A caption of your own; omitted: the source's caption (or text) is kept.",
            ),
        ]
        | None
    ) = None
    client_message_id: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"^[A-Za-z0-9_.:-]{1,128}(?!\n)$",
                description="Any id the client picks per forward; a retry with it returns the same message.",
            ),
        ]
        | None
    ) = None


class EditMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an edit changes; a field left out stays as it is. The image itself is never replaced."""

    content: EditedContent | msgspec.UnsetType | None = msgspec.UNSET
    alt_text: AltText | msgspec.UnsetType | None = msgspec.UNSET
    index: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                description="An album's image whose `alt_text` this is (0-based; omitted: the first). "
                "422 `no_such_image` past the album's last image or for a single image other than 0.",
            ),
        ]
        | None
    ) = None


class ConversationPage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    items: list[Conversation]
    next_cursor: NextCursor | None


class MessagePage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    items: list[Message]
    next_cursor: NextCursor | None


class GalleryImage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One image of a conversation's gallery (an album gives one item per image)."""

    message_id: str
    index: Annotated[int, msgspec.Meta(ge=0, description="The image's place in its message (0: the first).")]
    url: str
    width: int | None
    height: int | None
    blurhash: str | None
    status: Literal["processing", "ready", "failed"] | None
    sender_id: str
    timestamp: dt.datetime
    # snake_case like the image metadata it comes from
    alt_text: str | None = msgspec.field(name="alt_text", default=None)


class GalleryPage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    items: list[GalleryImage]
    next_cursor: NextCursor | None
