"""The chat store: narrow ports for conversations, messages, devices, the outbox and push receipts.

Callers depend on the narrow port they use (``ConversationStore``, ``MessageStore``, ``DeviceStore``,
``OutboxStore``, ``PushReceiptStore``); one adapter per backend serves them all (``ChatStore``), so a
message, its image reference and its outbox entry still commit in one transaction.
Adapters: ``firestore.FirestoreChatStore`` (production; the emulator in tests) and
``sqlite.SqliteChatStore`` (embedded default, WAL). Both pass one contract suite with a section per
narrow port (``tests/contract/test_messagestore_contract.py``).

Firestore layout (SQLite mirrors it in tables):

* ``conversations/{cid}``: participants, name, createdAt, updatedAt, lastMessage, admins, pushImagePreviews
* ``conversations/{cid}/messages/{messageId}``: exactly the spec's message fields
* ``imageRefs/{sha256(stored_key)}``: which message an object backs (one object, at most one message)
* ``outbox/{eventId}``: the event outbox. Every event a client acts on (``EventKind``) is an entry written
  in the same transaction as the change it announces, and deleted once relayed: "a 201 means durably
  stored, and nothing a client acts on is dropped". A message's ``message.created`` entry has the
  message's id, so a retried send finds it taken, as it finds the message.
* ``devices/{sha256(token)}``: userId, token, platform, provider (absent: fcm)
* ``deviceUsers/{sha256(user_id)}``: userId, changedAt; rewritten by every registration of the user's
  devices, so that two concurrent ones cannot both pass ``MAX_DEVICES_PER_USER``
* ``pushReceipts/{sha256(notification_id + token)}``: a push to a device for a notification, claimed
  (``leasedUntil``: a time) or done (``leasedUntil`` null or absent)
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Generic, Literal, Protocol, TypeVar

import msgspec

from chat_core.messagestore import albums
from chat_core.timestamps import from_micros, micros

__all__ = [
    "CURSOR_PATTERN",
    "PUSH_RECEIPT_TTL",
    "ChatStore",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationStore",
    "Device",
    "DeviceProvider",
    "DeviceStore",
    "EventKind",
    "ImageMetadata",
    "ImageStatus",
    "ImageVariant",
    "ImageVariants",
    "InvalidCursor",
    "LastMessage",
    "Message",
    "MessageDeleted",
    "MessageEdit",
    "MessageStore",
    "MessageType",
    "ObjectAlreadyUsed",
    "OutboxEntry",
    "OutboxStore",
    "Page",
    "Platform",
    "PushClaim",
    "PushClaimState",
    "PushReceiptStore",
    "StoredImage",
    "TooManyParticipants",
    "created_event",
    "decode_cursor",
    "deleted_event",
    "edited",
    "encode_cursor",
    "event_done",
    "finished",
    "legacy_outbox_fields",
    "new_event",
    "page_of",
]

T = TypeVar("T")
# How long a push receipt is kept: longer than a notification can be redelivered (SQS keeps a message
# at most 14 days). Firestore drops older ones with a TTL policy on ``pushReceipts.expireAt``.
PUSH_RECEIPT_TTL = dt.timedelta(days=14)
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
    # variants and BlurHash; the fields above repeat the first image's (``messagestore.albums``).
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


# What the event outbox carries (the wire names clients get are in ``chat_core.outbox``, which turns each
# kind into what is published). A new kind is added here, in ``chat_core.outbox.bus_events`` and, when it
# needs work besides publishing, in the relay's dispatch (``message_service.fanout.Fanout.deliver``).
EventKind = Literal[
    "message.created",
    "message.updated",
    "message.read",
    "message.deleted",
    "message.edited",
    "membership.changed",
]


class StoredImage(msgspec.Struct, frozen=True, kw_only=True):
    """One image of an album as the store holds it: its raw upload's key and the ETag verified at send."""

    key: str
    etag: str | None = None


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An event still to relay, stored in the same transaction as the change it announces.

    * ``message.created``: ``message`` as stored; its media job (``object_key``, ``object_etag``) and its
      notifications are queued by the relay too. ``event_id`` is the message's id, ``created_at`` its
      timestamp (``created_event``), so the entry a caller builds from the stored message is the stored one.
    * ``message.updated``: ``message`` as the change left it (the media processor finished its image).
    * ``message.read``: ``message`` as the change left it (``readBy``), ``user_id`` the reader.
    * ``message.deleted``: ``message`` the tombstone (``delete_message``); ``object_key`` the image's raw
      upload key. Besides publishing, the relay brings the conversation's ``lastMessage`` along and deletes
      every stored byte of the image (the raw upload, any refusal note, everything under the message's
      media prefix), and releases the entry only once the last byte is gone. ``event_id`` is
      ``{messageId}:deleted`` (``deleted_event``): one per message.
    * ``message.edited``: ``message`` as edited (``edit_message``); the relay also revises ``lastMessage``.
    * ``membership.changed``: ``added`` and ``removed`` users (a new conversation: every member added).

    A store method that takes ``event=`` writes it only when the call changes something, with ``message``
    set to the message as changed; ``event_done`` is that entry, as the caller rebuilds it from the answer.
    """

    event_id: str
    kind: EventKind
    conversation_id: str
    created_at: dt.datetime
    message: Message | None = None
    user_id: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    trace: dict[str, str] = {}  # W3C trace context of the change, so relayed work joins its trace
    # message.created of an image: the stored (raw upload) key and its ETag as verified at send.
    object_key: str | None = None
    object_etag: str | None = None
    # An album's images (``object_key`` is then the first's): message.created queues a media job per
    # image; message.deleted erases every image's raw upload.
    images: tuple[StoredImage, ...] = ()
    # message.updated of an album: the image that changed.
    index: int | None = None

    @property
    def message_id(self) -> str | None:
        return None if self.message is None else self.message.message_id


class MessageEdit(msgspec.Struct, frozen=True, kw_only=True):
    """What an edit changes: ``content`` (text or caption) and/or the image's ``alt_text`` (UNSET: kept);
    ``index`` names an album's image whose ``alt_text`` it is."""

    content: str | msgspec.UnsetType | None = msgspec.UNSET
    alt_text: str | msgspec.UnsetType | None = msgspec.UNSET
    index: int | None = None


class MessageDeleted(Exception):
    """The message is a tombstone: nothing of it can change any more."""


def created_event(
    conversation_id: str,
    message: Message,
    *,
    trace: Mapping[str, str] | None = None,
    object_key: str | None = None,
    object_etag: str | None = None,
    images: Sequence[StoredImage] = (),
) -> OutboxEntry:
    """The ``message.created`` entry ``create_message`` stores with ``message``."""
    return OutboxEntry(
        event_id=message.message_id,
        kind="message.created",
        conversation_id=conversation_id,
        created_at=message.timestamp,
        message=message,
        trace=dict(trace or {}),
        object_key=object_key,
        object_etag=object_etag,
        images=tuple(images),
    )


def deleted_event(
    conversation_id: str,
    tombstone: Message,
    *,
    object_key: str | None = None,
    trace: Mapping[str, str] | None = None,
    images: Sequence[StoredImage] = (),
) -> OutboxEntry:
    """The ``message.deleted`` entry ``delete_message`` stores with the tombstone: one per message."""
    return OutboxEntry(
        event_id=f"{tombstone.message_id}:deleted",
        kind="message.deleted",
        conversation_id=conversation_id,
        created_at=tombstone.deleted_at
        if isinstance(tombstone.deleted_at, dt.datetime)
        else dt.datetime.now(dt.UTC),
        message=tombstone,
        trace=dict(trace or {}),
        object_key=object_key,
        images=tuple(images),
    )


def new_event(
    kind: EventKind,
    conversation_id: str,
    *,
    message: Message | None = None,
    user_id: str | None = None,
    added: Collection[str] = (),
    removed: Collection[str] = (),
    trace: Mapping[str, str] | None = None,
) -> OutboxEntry:
    """An entry to hand a store method as ``event=`` (a fresh id, created now)."""
    return OutboxEntry(
        event_id=str(uuid.uuid4()),
        kind=kind,
        conversation_id=conversation_id,
        created_at=dt.datetime.now(dt.UTC),
        message=message,
        user_id=user_id,
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        trace=dict(trace or {}),
    )


def event_done(event: OutboxEntry, message: Message) -> OutboxEntry:
    """``event`` as the store wrote it with a change to ``message`` (``message`` set to the changed one)."""
    return msgspec.structs.replace(event, message=message)


def legacy_outbox_fields(fields: dict[str, object], key: str) -> dict[str, object]:
    """Entries stored before the event outbox were all ``message.created``, keyed by the message id."""
    fields.setdefault("event_id", key)
    fields.setdefault("kind", "message.created")
    return fields


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None  # opaque; None on the last page


def edited(message: Message, edit: MessageEdit, edited_at: dt.datetime) -> Message:
    """``message`` with ``edit`` applied (both adapters apply it the same way)."""
    content = message.content if edit.content is msgspec.UNSET else edit.content
    metadata = message.metadata
    if metadata is not None and edit.alt_text is not msgspec.UNSET:
        metadata = albums.with_alt_text(metadata, edit.index, edit.alt_text)
    return msgspec.structs.replace(message, content=content, metadata=metadata, edited_at=edited_at)


def finished(current: Message, metadata: ImageMetadata) -> Message | None:
    """``current`` with its image finished as ``metadata``; None when it may not be (see ``finish_image``).

    For an album, ``metadata`` is the one image finished (found by its ``object_key``): only that image
    changes, so the images of one album finish independently, each once."""
    if current.deleted or current.metadata is None:
        return None
    index = albums.index_of(current.metadata, metadata.object_key)
    image = albums.image_at(current.metadata, index)
    if image is None or image.status not in (None, "processing"):
        return None
    # The media job built ``metadata`` from the message it read; an edit since then wins.
    done = msgspec.structs.replace(metadata, alt_text=image.alt_text, images=msgspec.UNSET)
    return msgspec.structs.replace(current, metadata=albums.with_image(current.metadata, index, done))


def page_of(rows: list[T], limit: int, position: Callable[[T], tuple[dt.datetime, str]]) -> Page[T]:
    """The page of a keyset query that fetched ``limit + 1`` rows, newest first: the extra row only says
    there is more, and the cursor is the (time, id) ``position`` of the last row shown."""
    items = rows[:limit]
    next_cursor = encode_cursor(*position(items[-1])) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


class ConversationNotFound(LookupError):
    pass


class TooManyParticipants(Exception):
    """The addition would take the conversation past its member limit; nothing was changed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a conversation has at most {limit} members")
        self.limit = limit


class ConversationExists(Exception):
    """A conversation with that id already exists (ids may be chosen by the client)."""


class InvalidCursor(ValueError):
    """A cursor that is no position (not ``CURSOR_PATTERN``)."""


# A cursor is a keyset position, ``{microseconds since the epoch}.{id}`` (the id of the last row shown: a
# message or conversation id). Any value of this shape is a position a page can start after, so the
# OpenAPI document's pattern is the whole rule: a schema-valid cursor is never refused. Times past the
# last representable one mean "from the newest".
CURSOR_PATTERN = re.compile(r"^([0-9]{1,18})\.([A-Za-z0-9][A-Za-z0-9_-]{0,63})(?!\n)$")
_LAST_MICROS = micros(dt.datetime.max.replace(tzinfo=dt.UTC))


def encode_cursor(position: dt.datetime, key: str) -> str:
    """The cursor of keyset pagination on (time, id) after ``position``, ``key`` (both adapters use it)."""
    return f"{max(micros(position), 0)}.{key}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """(time, id) of a cursor of ``CURSOR_PATTERN``; raises InvalidCursor."""
    match = CURSOR_PATTERN.fullmatch(cursor)
    if match is None:
        raise InvalidCursor("a cursor is the nextCursor of a page: {microseconds}.{id}")
    stamp, key = match.groups()
    return from_micros(min(int(stamp), _LAST_MICROS)), key


class ObjectAlreadyUsed(Exception):
    """The object already backs another message (one object, at most one message)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"object already backs message {message_id}")
        self.message_id = message_id


class ConversationStore(Protocol):
    """Conversations and their membership."""

    async def create_conversation(
        self, conversation: Conversation, *, event: OutboxEntry | None = None
    ) -> None:
        """Store it with ``event`` (its ``membership.changed``). Raises ConversationExists when the id is
        taken; never overwrites."""

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        """Members of the conversation; None when it does not exist. The membership read."""

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> Page[Conversation]:
        """Conversations ``user_id`` belongs to, most recently updated first. Raises InvalidCursor."""

    async def add_participants(
        self,
        conversation_id: str,
        user_ids: Collection[str],
        *,
        admins: Collection[str] = (),
        event: OutboxEntry | None = None,
        max_participants: int | None = None,
    ) -> Conversation:
        """Add ``user_ids`` as members and give ``admins`` (members, or among ``user_ids``) the admin role,
        in one atomic change, with ``event`` (its ``membership.changed``). Raises ConversationNotFound, and
        TooManyParticipants (nothing changed) when the members would then be more than
        ``max_participants``: checked in the same atomic change, so concurrent additions cannot pass it
        together."""

    async def remove_participant(
        self, conversation_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> Conversation:
        """Remove the member and any role they had, with ``event``. Raises ConversationNotFound."""

    async def set_push_image_previews(self, conversation_id: str, enabled: bool) -> Conversation:
        """Whether pushes of the conversation's images may carry a thumbnail. Raises ConversationNotFound."""

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
        """Set ``lastMessage``/``updatedAt`` unless a newer last message is already stored."""

    async def revise_last_message(self, conversation_id: str, last_message: LastMessage) -> None:
        """Set ``lastMessage`` when the stored one is the same message (edited or deleted since) or older;
        ``updatedAt`` never moves back. A later ``touch_conversation`` with the message's old version is
        then not newer, so it cannot undo the revision."""

    async def set_retention(self, conversation_id: str, days: int | None) -> Conversation:
        """Set (or, with None, clear) the conversation's ``retentionDays``. Raises ConversationNotFound."""

    def every_conversation(self) -> AsyncIterator[Conversation]:
        """Every conversation, by id, in pages (the retention job's pass)."""


class MessageStore(Protocol):
    """Messages, their read receipts and the objects they reference."""

    async def create_message(
        self,
        conversation_id: str,
        message: Message,
        *,
        object_key: str | None = None,
        object_etag: str | None = None,
        trace: Mapping[str, str] | None = None,
        conversation_checked: bool = False,
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool]:
        """Store ``message`` atomically with its image reference and its outbox entry (``created_event``).

        An album passes every image as ``images`` (``object_key`` is its first's): each stored key gets
        its reference, all or none (ObjectAlreadyUsed when any is taken), and the entry lists them all.

        The outbox entry carries ``object_key`` and ``object_etag`` (the ETag verified at send): the
        media job the relay queues for an image message.

        Returns ``(message, True)`` when written. When a message with the same ``message_id`` already
        exists (an idempotent retry) nothing is written and ``(existing, False)`` is returned.
        ``object_key`` is the *stored* key the message references; when another message already
        references it, raises ObjectAlreadyUsed. Raises ConversationNotFound, unless
        ``conversation_checked``: the caller has just read the conversation (its membership), and
        conversations are never deleted, so a store may skip a round trip it would spend on the check.
        """

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None: ...

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        *,
        deleted_by: str,
        deleted_at: dt.datetime,
        object_key: str | None = None,
        trace: Mapping[str, str] | None = None,
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool] | None:
        """Turn the message into a tombstone (``Message.tombstone``), in one transaction with its
        ``message.deleted`` entry (``deleted_event``; ``object_key``: the image's stored raw key, whose
        bytes the relay deletes) and the removal of its ``message.created`` entry if still pending (a
        message deleted before its fan-out ran is never announced, notified or processed).

        ``(tombstone, True)`` when deleted now; ``(tombstone, False)`` when it already was one (nothing
        written); None when there is no such message. The image reference stays: the object can never
        back another message, and the proxy can tell a deleted image from one that never was.
        """

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        edit: MessageEdit,
        *,
        edited_at: dt.datetime,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        """Apply ``edit`` and set ``editedAt``, in one transaction with ``event`` (its ``message.edited``).

        None when there is no such message; raises MessageDeleted for a tombstone. ``alt_text`` applies to
        an image message's metadata (the caller refuses it for text).
        """

    def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        """The conversation's messages older than ``before``, oldest first, tombstones included (the
        retention job's; read in pages, so the caller may change what it has read)."""

    def sent_by(self, user_id: str) -> AsyncIterator[tuple[str, Message]]:
        """(conversation id, message) of every message ``user_id`` sent, in any conversation (also those
        they left), oldest first, tombstones included; read in pages (a user's erasure and export)."""

    async def list_messages(
        self, conversation_id: str, *, limit: int, before: str | None = None
    ) -> Page[Message]:
        """Newest first; the cursor pages to older messages and is stable while new ones arrive.

        Raises InvalidCursor.
        """

    async def mark_read(
        self, conversation_id: str, message_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> tuple[Message, bool] | None:
        """Add ``user_id`` to ``readBy`` (idempotent), with ``event`` (its ``message.read``) when it changed.

        ``(message, changed)``; None when no such message."""

    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        """Which of ``stored_keys`` back a message (for orphan cleanup)."""

    async def image_message(self, conversation_id: str, stored_key: str) -> Message | None:
        """The message of ``conversation_id`` that ``stored_key`` backs (the image proxy's lookup)."""

    async def finish_image(
        self,
        conversation_id: str,
        message_id: str,
        metadata: ImageMetadata,
        *,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        """Replace the image metadata of a message still ``processing`` (or without a status), with
        ``event`` (its ``message.updated``). For an album, ``metadata`` is one image (found by its
        ``object_key``) and only that image must still be processing (``finished``).

        Returns the updated message; None when there is no such message, it is already ready or
        failed (a redelivered media job changes nothing twice), or it was deleted. An ``alt_text`` edited
        while the image was processing is kept.
        """


class DeviceStore(Protocol):
    """Push tokens by user."""

    async def put_device(self, device: Device, *, max_devices: int | None = None) -> list[str]:
        """Register (or move) a push token; a token belongs to one user at a time.

        With ``max_devices``, the user keeps at most that many tokens: the ones least recently registered
        (``updated_at``, then token) beyond it are deleted in the same atomic step, never the one being
        registered, so concurrent registrations cannot pass the limit. Returns the tokens evicted.
        """

    async def delete_device(self, user_id: str, token: str) -> bool:
        """Remove ``user_id``'s token; False when the user had no such token."""

    async def devices_for(self, user_ids: Collection[str]) -> dict[str, list[Device]]:
        """Devices by user, each list ordered by token; users without a device are absent."""


class OutboxStore(Protocol):
    """The event outbox: what the relay still has to publish (the changes' methods write the entries).

    Every method that changes what a client sees takes the entry announcing it (``event=``) and commits it
    in the change's own transaction; inside an adapter one helper appends it (``_append_event``).
    """

    async def pending_outbox(self, *, older_than: float, limit: int) -> list[OutboxEntry]:
        """Entries created more than ``older_than`` seconds ago, oldest first (claimed or not)."""

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        """Claim up to ``limit`` entries created more than ``older_than`` seconds ago that nobody holds.

        Oldest first. Each returned entry is held by this call for ``lease``: no other claim returns it until
        the lease lapses (its holder died) or it is released; entries held by others are skipped, not waited
        for. So relay replicas share the outbox instead of each relaying all of it. Atomic per entry.
        """

    async def release_outbox(self, event_ids: Collection[str]) -> None:
        """Give up claims on entries not delivered, so the next claim (any replica's) takes them at once."""

    async def delete_outbox(self, event_ids: Collection[str]) -> None: ...

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        """(pending entries, creation time of the oldest)."""


PushClaimState = Literal["claimed", "leased", "done"]


class PushClaim(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``claim_push``.

    ``claimed``: this call holds the pair until ``leased_until``; ``leased``: another claim holds it until
    ``leased_until`` (its push may be under way: try again after that); ``done``: pushed, never again.
    """

    state: PushClaimState
    leased_until: dt.datetime | None = None


class PushReceiptStore(Protocol):
    """A redelivered notification never pushes twice to one device, and a crashed claimer loses no push.

    A claim is a lease: it holds a (notification, device) pair for ``lease``, long enough for one push.
    A pushed pair is marked done and is never claimed again; a claim neither done nor within its lease
    (its holder crashed between claim and push) can be taken again. Each call is atomic.
    """

    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        """Claim the pair for ``lease`` unless it is done or another claim's lease still runs."""

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        """Mark the pair pushed: no later claim succeeds."""

    async def release_push(self, notification_id: str, device_token: str) -> None:
        """Undo a claim whose push failed, so a retry may send it (a done pair stays done)."""


class ChatStore(ConversationStore, MessageStore, DeviceStore, OutboxStore, PushReceiptStore, Protocol):
    """One adapter (one database, one transaction engine) serving every narrow store above.

    ``Backends`` builds one per process and hands each caller only the narrow store it uses
    (``backends.conversations``, ``backends.messages``, ...), as Synapse composes its stores.
    """

    name: str  # "firestore" or "sqlite"
    readiness_name: str
    outage_code: str  # chat_core.errors.ReportsOutages: an outage of the store is a 503 with this code
    outage_errors: tuple[type[Exception], ...]

    def is_outage(self, exc: Exception) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the store answers (readiness)."""
