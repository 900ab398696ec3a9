"""The chat store's records (conversations, messages, images, devices) and the errors of its ports."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

MessageType = Literal["text", "image"]
Platform = Literal["ios", "android", "web"]
# Which push service a device's token is for: an FCM registration token, or a raw APNs device token.
DeviceProvider = Literal["fcm", "apns"]


ImageStatus = Literal["processing", "ready", "failed"]


class ImageVariant(msgspec.Struct, frozen=True, kw_only=True):
    """A derivative the proxy serves at ``url`` (``{file_url}?variant=...``)."""

    url: str
    width: int
    height: int
    content_type: str
    size_bytes: int


class ImageVariants(msgspec.Struct, frozen=True, kw_only=True):
    thumbnail: ImageVariant
    preview: ImageVariant


class ImageMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's image metadata (snake_case), as the server verified it, plus the media pipeline's.

    At send, ``width``/``height`` are the header's (as displayed) and ``status`` is ``processing``.
    Once ``ready``, ``width``, ``height``, ``size_bytes`` and ``content_type`` describe the sanitized
    original ``url`` serves, and ``variants``/``blurhash`` are set; ``failed`` carries ``error`` (a code).
    """

    object_key: str
    url: str
    content_type: str
    size_bytes: int
    width: int | None = None
    height: int | None = None
    status: ImageStatus | None = None  # None: stored before the media pipeline existed
    variants: ImageVariants | None = None
    blurhash: str | None = None
    error: str | None = None
    alt_text: str | None = None  # the image's description for screen readers (sender's, editable)
    # An album (2..MAX_IMAGES_PER_MESSAGE images): every image in order, each with its own status,
    # variants and BlurHash; the fields above repeat the first image's (``chatstore.albums``).
    images: tuple[ImageMetadata, ...] | msgspec.UnsetType = msgspec.UNSET


class Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The spec's "Message Data Structure" (camelCase on the wire and in Firestore).

    Exactly the spec's fields (``metadata`` null for text), plus the lifecycle's only once they apply
    (UNSET fields are never encoded): ``editedAt`` after an edit; ``deleted``, ``deletedAt`` and
    ``deletedBy`` on a tombstone. UNSET is falsy, so ``if message.deleted:`` reads as it should.
    """

    message_id: str
    content: str | None
    message_type: MessageType
    sender_id: str
    timestamp: dt.datetime
    read_by: tuple[str, ...]
    metadata: ImageMetadata | None = None
    # True on a message forwarded from another conversation (it never names the source); absent otherwise.
    forwarded: bool | msgspec.UnsetType = msgspec.UNSET
    # Set by an edit of ``content`` or ``metadata.alt_text`` (PATCH, within MESSAGE_EDIT_WINDOW_SECONDS).
    edited_at: dt.datetime | msgspec.UnsetType = msgspec.UNSET
    # A tombstone: the sender or an admin unsent it. ``content`` and ``metadata`` are then None, and every
    # byte of its image is being (or has been) deleted; it keeps its place in the conversation's list.
    deleted: bool | msgspec.UnsetType = msgspec.UNSET
    deleted_at: dt.datetime | msgspec.UnsetType = msgspec.UNSET
    deleted_by: str | msgspec.UnsetType = msgspec.UNSET

    def tombstone(self, deleted_by: str, deleted_at: dt.datetime) -> Message:
        """This message unsent: nothing of what it said is left, only who and when."""
        return msgspec.structs.replace(
            self, content=None, metadata=None, deleted=True, deleted_at=deleted_at, deleted_by=deleted_by
        )


class LastMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    message_id: str
    sender_id: str
    message_type: MessageType
    preview: str  # caption or text, truncated ("" once deleted)
    timestamp: dt.datetime
    deleted: bool = False  # the last message was unsent (a tombstone)

    def is_newer_than(self, current: LastMessage | None) -> bool:
        """Later in the conversation's order (time, then id) than ``current``; anything beats None."""
        return current is None or (self.timestamp, self.message_id) > (current.timestamp, current.message_id)

    def revises(self, current: LastMessage | None) -> bool:
        """A new version of ``current`` (same message, edited or deleted) or newer than it."""
        return current is None or (self.timestamp, self.message_id) >= (current.timestamp, current.message_id)

    @classmethod
    def of(cls, message: Message, preview_chars: int = 120) -> LastMessage:
        return cls(
            message_id=message.message_id,
            sender_id=message.sender_id,
            message_type=message.message_type,
            preview=(message.content or "")[:preview_chars],
            timestamp=message.timestamp,
            deleted=message.deleted is True,
        )


class Conversation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    conversation_id: str
    participants: tuple[str, ...]  # in the order members joined
    name: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_message: LastMessage | None = None
    # Members with the admin role (a subset of ``participants``). Stored since roles exist; a
    # conversation stored before has none, and its creator (the first participant) is its admin.
    admins: tuple[str, ...] = ()
    # Messages older than this many days are deleted (with their images) by the retention job; None: the
    # deployment's MESSAGE_RETENTION_DAYS. Set by an admin of the conversation (PATCH).
    retention_days: int | None = None
    # False: pushes of this conversation's images carry no thumbnail (lock-screen privacy).
    push_image_previews: bool = True

    def admin_ids(self) -> frozenset[str]:
        """Who administers the conversation (see ``admins``)."""
        if self.admins:
            return frozenset(self.admins) & frozenset(self.participants)
        return frozenset(self.participants[:1])


class Device(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    token: str
    platform: Platform
    user_id: str
    updated_at: dt.datetime
    provider: DeviceProvider = "fcm"  # devices registered before it existed are FCM's


class StoredImage(msgspec.Struct, frozen=True, kw_only=True):
    """One image of an album as the store holds it: its raw upload's key and the ETag verified at send."""

    key: str
    etag: str | None = None


class MessageEdit(msgspec.Struct, frozen=True, kw_only=True):
    """What an edit changes: ``content`` (text or caption) and/or the image's ``alt_text`` (UNSET: kept);
    ``index`` names an album's image whose ``alt_text`` it is."""

    content: str | msgspec.UnsetType | None = msgspec.UNSET
    alt_text: str | msgspec.UnsetType | None = msgspec.UNSET
    index: int | None = None


class MessageDeleted(Exception):
    """The message is a tombstone: nothing of it can change any more."""


class ConversationNotFound(LookupError):
    pass


class TooManyParticipants(Exception):
    """The addition would take the conversation past its member limit; nothing was changed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a conversation has at most {limit} members")
        self.limit = limit


class ConversationExists(Exception):
    """A conversation with that id already exists (ids may be chosen by the client)."""


class ObjectAlreadyUsed(Exception):
    """The object already backs another message (one object, at most one message)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"object already backs message {message_id}")
        self.message_id = message_id
