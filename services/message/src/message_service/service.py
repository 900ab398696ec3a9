"""Conversations, members and messages: who may do what, and what gets stored.

Members only, and a non-member learns nothing: every endpoint under ``/conversations/{id}`` answers a
non-member exactly as it answers for a conversation that does not exist (404 ``conversation_not_found``),
before looking at anything else, so neither the conversation nor a message id can be probed.

Idempotent sends: with a ``clientMessageId`` the message id is derived from (conversation, sender,
clientMessageId) (UUIDv5), so the store's create-if-absent is the idempotency check and no extra record
is kept; the stored message has exactly the spec's fields. Without one, every send is a new message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import uuid
from collections.abc import Awaitable

import msgspec
import structlog

from chat_core import keys, ledger, metrics, tracing
from chat_core.audit import audit
from chat_core.auth import USER_ID_PATTERN
from chat_core.errors import ProblemError
from chat_core.membership import conversation_not_found, require_member
from chat_core.messagestore import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationStore,
    ImageMetadata,
    InvalidCursor,
    LastMessage,
    Message,
    MessageDeleted,
    MessageEdit,
    MessageStore,
    ObjectAlreadyUsed,
    OutboxEntry,
    StoredImage,
    TooManyParticipants,
    albums,
    created_event,
    deleted_event,
    encode_cursor,
    event_done,
    new_event,
)
from chat_core.objectstore import ObjectStore
from chat_core.quota import Quotas
from chat_core.ratelimit import RateLimiter
from message_service import forwarding
from message_service.events import MessageEvents
from message_service.last_message import LastMessageWriter
from message_service.schemas import (
    MAX_PARTICIPANTS,
    AddParticipants,
    ConversationPage,
    CreateConversation,
    EditMessage,
    ForwardMessage,
    GalleryImage,
    GalleryPage,
    ImageRequest,
    MessagePage,
    SendImage,
    SendMessage,
    SendText,
    UpdateConversation,
)
from message_service.verification import ImageVerifier, VerifiedImage

__all__ = ["ConversationService", "MessageService", "delete_message", "message_id_for"]

_log = structlog.get_logger("message_service")
_CLIENT_MESSAGE_IDS = uuid.UUID("5b2f7f0e-6c1a-4d0e-9a57-3f1f5f3e2c11")  # namespace of derived ids
_PREVIEW_CHARS = 120


def message_id_for(conversation_id: str, sender_id: str, client_message_id: str | None) -> str:
    """A fresh id, or the one id a (conversation, sender, clientMessageId) retry always maps to."""
    if client_message_id is None:
        return str(uuid.uuid4())
    # The sender is part of the name: another member reusing the same clientMessageId gets another id.
    return str(uuid.uuid5(_CLIENT_MESSAGE_IDS, f"{conversation_id}\n{sender_id}\n{client_message_id}"))


_no_such_conversation = conversation_not_found
_participants_for = require_member  # the lib's one membership decision (chat_core.membership)


def _too_many_participants() -> ProblemError:
    return ProblemError(
        422, "too_many_participants", f"a conversation has at most {MAX_PARTICIPANTS} members"
    )


def _not_an_admin(detail: str) -> ProblemError:
    return ProblemError(403, "not_an_admin", detail)


async def _emit(event: str, call: Awaitable[None]) -> None:
    try:
        await call
    except Exception:
        # The change is stored; fan-out has its own recovery (the outbox). Never fail the request.
        _log.exception("message_event_failed", event=event)


GALLERY_SCAN_MESSAGES = 500  # messages read at most for one gallery page
_GALLERY_POSITION = re.compile(rf"^([0-9]+)\.({keys.UUID})_([0-9]{{1,2}})$")


def _gallery_resume(cursor: str | None) -> tuple[str, str, int] | None:
    """(micros, message id, index shown last) of a cursor inside a message; None for a message position."""
    match = _GALLERY_POSITION.fullmatch(cursor) if cursor else None
    return None if match is None else (match[1], match[2], int(match[3]))


def _gallery_images(message: Message, *, after: int) -> list[tuple[int, ImageMetadata]]:
    if message.deleted or message.message_type != "image":
        return []
    return [(index, image) for index, image in enumerate(albums.images_of(message.metadata)) if index > after]


def _gallery_item(message: Message, index: int, image: ImageMetadata) -> GalleryImage:
    return GalleryImage(
        message_id=message.message_id,
        index=index,
        url=image.url,
        width=image.width,
        height=image.height,
        blurhash=image.blurhash,
        status=image.status,
        sender_id=message.sender_id,
        timestamp=message.timestamp,
        alt_text=image.alt_text,
    )


def _gallery_cursor(message: Message, index: int) -> str:
    return f"{encode_cursor(message.timestamp, message.message_id)}_{index}"


def _at_index(problem: ProblemError, index: int) -> ProblemError:
    """An album image's problem: the same status and code, naming the image (``index``, 0-based)."""
    return ProblemError(
        problem.status,
        problem.code,
        f"image {index}: {problem.detail or problem.code}",
        title=problem.title,
        headers=problem.headers,
        extra={**problem.extra, "index": index},
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ConversationService:
    def __init__(self, store: ConversationStore, events: MessageEvents) -> None:
        self._store = store
        self._events = events

    async def create(self, user_id: str, request: CreateConversation) -> Conversation:
        participants = tuple(dict.fromkeys([user_id, *request.participant_ids]))
        if len(participants) > MAX_PARTICIPANTS:
            raise _too_many_participants()
        now = _now()
        conversation = Conversation(
            conversation_id=request.conversation_id or uuid.uuid4().hex,
            participants=participants,
            name=(request.name or "").strip() or None,
            created_at=now,
            updated_at=now,
            admins=(user_id,),  # the creator administers the conversation
            push_image_previews=request.push_image_previews,
        )
        joined = new_event(
            "membership.changed", conversation.conversation_id, added=participants, trace=tracing.inject()
        )
        try:
            await self._store.create_conversation(conversation, event=joined)
        except ConversationExists:
            # The same answer whoever asks (member or not): a taken id says nothing of who is in it.
            raise ProblemError(
                409, "conversation_exists", "a conversation with that id exists; pick another or omit it"
            ) from None
        audit(
            "membership_changed",
            action="create",
            actor=user_id,
            conversation_id=conversation.conversation_id,
            added=list(participants),
            admins=[user_id],
        )
        await _emit("membership.changed", self._events.event_stored(joined))
        return conversation

    async def list(self, user_id: str, *, limit: int, before: str | None) -> ConversationPage:
        try:
            page = await self._store.list_conversations(user_id, limit=limit, cursor=before)
        except InvalidCursor as exc:
            raise ProblemError(400, "invalid_cursor", str(exc)) from None
        return ConversationPage(items=page.items, next_cursor=page.next_cursor)

    async def get(self, user_id: str, conversation_id: str) -> Conversation:
        if not keys.CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
            raise _no_such_conversation()
        conversation = await self._store.get_conversation(conversation_id)
        if conversation is None or user_id not in conversation.participants:
            raise _no_such_conversation()
        return conversation

    async def _as_member(self, user_id: str, conversation_id: str) -> Conversation:
        """The conversation, when ``user_id`` is in it; otherwise the lib's one 404."""
        await _participants_for(self._store, conversation_id, user_id)
        conversation = await self._store.get_conversation(conversation_id)
        if conversation is None or user_id not in conversation.participants:
            raise _no_such_conversation()
        return conversation

    async def update(self, user_id: str, conversation_id: str, request: UpdateConversation) -> Conversation:
        """Change the conversation's settings (admins only)."""
        conversation = await self._as_member(user_id, conversation_id)
        if user_id not in conversation.admin_ids():
            raise _not_an_admin("only admins change a conversation's settings")
        previews = request.push_image_previews
        if isinstance(previews, bool) and previews != conversation.push_image_previews:
            try:
                conversation = await self._store.set_push_image_previews(conversation_id, previews)
            except ConversationNotFound:
                raise _no_such_conversation() from None
            audit(
                "conversation_settings_changed",
                actor=user_id,
                conversation_id=conversation_id,
                push_image_previews=previews,
            )
        if (
            request.retention_days is not msgspec.UNSET
            and request.retention_days != conversation.retention_days
        ):
            try:
                conversation = await self._store.set_retention(conversation_id, request.retention_days)
            except ConversationNotFound:
                raise _no_such_conversation() from None
            audit(
                "conversation_settings_changed",
                actor=user_id,
                conversation_id=conversation_id,
                retention_days=request.retention_days,
            )
        return conversation

    async def add_participants(
        self, user_id: str, conversation_id: str, request: AddParticipants
    ) -> Conversation:
        """Any member adds members (as in Slack channels and WhatsApp's default); only admins add admins
        or make members admins."""
        conversation = await self._as_member(user_id, conversation_id)
        current = frozenset(conversation.participants)
        if request.role == "admin" and user_id not in conversation.admin_ids():
            raise _not_an_admin("only admins can add admins")
        wanted = list(dict.fromkeys(request.participant_ids))
        added = [user for user in wanted if user not in current]
        promoted = (
            [user for user in wanted if user not in conversation.admin_ids()]
            if request.role == "admin"
            else []
        )
        if len(current) + len(added) > MAX_PARTICIPANTS:
            raise _too_many_participants()
        if not added and not promoted:
            return conversation
        # A conversation stored before roles has no admins list: write its implicit admin down too.
        admins = [*conversation.admin_ids(), *promoted] if promoted and not conversation.admins else promoted
        joined = (
            new_event("membership.changed", conversation_id, added=added, trace=tracing.inject())
            if added
            else None
        )
        try:
            conversation = await self._store.add_participants(
                conversation_id, added, admins=admins, event=joined, max_participants=MAX_PARTICIPANTS
            )
        except ConversationNotFound:
            raise _no_such_conversation() from None
        except TooManyParticipants:  # others were added meanwhile: the store's check is the atomic one
            raise _too_many_participants() from None
        audit(
            "membership_changed",
            action="add",
            actor=user_id,
            conversation_id=conversation_id,
            added=added,
            admins=promoted,
        )
        if joined is None:
            return conversation
        await _emit("membership.changed", self._events.event_stored(joined))
        return conversation

    async def remove_participant(self, user_id: str, conversation_id: str, removed_id: str) -> None:
        """Anyone may leave; only admins remove others. When the last admin leaves, the member who joined
        first becomes admin (as WhatsApp does), so a conversation with members always has one."""
        conversation = await self._as_member(user_id, conversation_id)
        if not USER_ID_PATTERN.fullmatch(removed_id) or removed_id not in conversation.participants:
            raise ProblemError(404, "participant_not_found", "that user is not a member of this conversation")
        if removed_id != user_id and user_id not in conversation.admin_ids():
            raise _not_an_admin("only admins can remove other members; anyone can leave")
        left = new_event("membership.changed", conversation_id, removed=[removed_id], trace=tracing.inject())
        try:
            remaining = await self._store.remove_participant(conversation_id, removed_id, event=left)
            successor: list[str] = []
            if remaining.participants and not (
                frozenset(remaining.admins) & frozenset(remaining.participants)
            ):
                successor = [remaining.participants[0]]
                await self._store.add_participants(conversation_id, [], admins=successor)
        except ConversationNotFound:
            raise _no_such_conversation() from None
        audit(
            "membership_changed",
            action="leave" if removed_id == user_id else "remove",
            actor=user_id,
            conversation_id=conversation_id,
            removed=[removed_id],
            admins=successor,
        )
        await _emit("membership.changed", self._events.event_stored(left))


class MessageService:
    def __init__(
        self,
        conversations: ConversationStore,
        messages: MessageStore,
        verifier: ImageVerifier,
        last_messages: LastMessageWriter,
        events: MessageEvents,
        quotas: Quotas,
        *,
        objects: ObjectStore,
        storage: ledger.StorageLedger,
        base_url: str,
        edit_window_seconds: int = 48 * 3600,
        max_images: int = albums.DEFAULT_MAX_IMAGES,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._max_images = max_images
        self._limiter = limiter
        self._quotas = quotas
        self._edit_window = dt.timedelta(seconds=edit_window_seconds)
        self._objects = objects
        self._storage = storage
        self._base_url = base_url
        self._conversations = conversations
        self._store = messages
        self._verifier = verifier
        self._last_messages = last_messages
        self._events = events

    async def send(self, user_id: str, conversation_id: str, request: SendMessage) -> tuple[Message, bool]:
        """Store a message; ``(message, True)`` when new, ``(stored, False)`` for a retry of one."""
        verified: list[VerifiedImage] = []
        message_id = message_id_for(conversation_id, user_id, request.client_message_id)
        if isinstance(request, SendText):
            members = await _participants_for(self._conversations, conversation_id, user_id)
            if not request.content.strip():
                raise ProblemError(400, "empty_message", "a text message needs some content")
            content: str | None = request.content
        else:
            wanted = self._images_requested(request)
            members, earlier, verified = await self._member_and_images(
                user_id, conversation_id, request, wanted, message_id
            )
            if earlier is not None:
                return earlier, False
            # Frees each upload's slot and counts its verified size (once per upload, so a retry is free).
            for image in verified:
                await self._quotas.charge_send(user_id, image.stored_key, image.metadata.size_bytes)
            content = request.content if (request.content or "").strip() else None
        album = len(verified) > 1
        message = Message(
            message_id=message_id,
            content=content,
            message_type="text" if isinstance(request, SendText) else "image",
            sender_id=user_id,
            timestamp=_now(),
            read_by=(user_id,),
            metadata=albums.album_of([image.metadata for image in verified]) if verified else None,
        )
        cover = verified[0] if verified else None
        stored_images = (
            [StoredImage(key=image.stored_key, etag=image.etag) for image in verified] if album else []
        )
        trace = tracing.inject()
        try:
            stored, created = await self._store.create_message(
                conversation_id,
                message,
                object_key=cover.stored_key if cover else None,
                object_etag=cover.etag if cover else None,
                trace=trace,
                conversation_checked=True,  # membership was just read
                images=stored_images,
            )
        except ObjectAlreadyUsed:
            metrics.IMAGE_MESSAGES_REJECTED.labels("object_already_used").inc()
            raise ProblemError(
                409, "object_already_used", "this image already belongs to another message; upload it again"
            ) from None
        except ConversationNotFound:
            raise _no_such_conversation() from None
        if created:
            self._record(stored, verified)
            entry = created_event(
                conversation_id,
                stored,
                trace=trace,
                object_key=cover.stored_key if cover else None,
                object_etag=cover.etag if cover else None,
                images=stored_images,
            )
            await self._after_send(conversation_id, stored, entry, members)
        return stored, created

    def _images_requested(self, request: SendImage) -> list[ImageRequest]:
        """The images a send names, in order: one, or an album's (checked for its shape and size)."""
        metadata = request.metadata
        if metadata.images is msgspec.UNSET:
            single = metadata.single()
            if single is None:
                raise ProblemError(
                    400, "invalid_request", "metadata needs object_key and content_type, or images"
                )
            return [single]
        if metadata.mixed():
            raise ProblemError(
                400, "invalid_album", "an album's metadata holds only `images`; each image its own fields"
            )
        if len(metadata.images) > self._max_images:
            metrics.IMAGE_MESSAGES_REJECTED.labels("too_many_images").inc()
            raise ProblemError(
                400,
                "too_many_images",
                f"a message carries at most {self._max_images} images, not {len(metadata.images)}",
                extra={"limit": self._max_images},
            )
        return list(metadata.images)

    async def forward(
        self, user_id: str, conversation_id: str, message_id: str, request: ForwardMessage
    ) -> tuple[Message, bool]:
        """A new message in ``request.conversation_id`` with the source's content and server-side copies
        of its images (``message_service.forwarding``); ``(stored, False)`` for a retry of one."""
        target = request.conversation_id
        await _participants_for(self._conversations, conversation_id, user_id)
        members = await _participants_for(self._conversations, target, user_id)
        source = (
            await self._store.get_message(conversation_id, message_id)
            if keys.UUID_PATTERN.fullmatch(message_id)
            else None
        )
        if source is None:
            raise ProblemError(404, "message_not_found", "no such message in this conversation")
        if forwarding.source_is_deleted(source):
            raise forwarding.message_deleted()
        new_id = message_id_for(target, user_id, request.client_message_id)
        if request.client_message_id is not None:
            # A retry copies nothing again (and is not charged again).
            existing = await self._store.get_message(target, new_id)
            if existing is not None:
                return existing, False
        content = source.content if request.content is None else request.content
        content = content if (content or "").strip() else None
        copied: list[forwarding.CopiedImage] = []
        if source.message_type == "image":
            images = forwarding.forwardable_images(source)
            album = len(images) > 1
            copied = list(
                await asyncio.gather(
                    *(
                        forwarding.copy_image(
                            self._objects,
                            base_url=self._base_url,
                            source_conversation=conversation_id,
                            source_message_id=source.message_id,
                            source=image,
                            target_conversation=target,
                            target_message_id=new_id,
                            forwarder_id=user_id,
                            index=index if album else None,
                        )
                        for index, image in enumerate(images)
                    )
                )
            )
            for copy in copied:
                await ledger.record(self._storage, "derived", len(keys.VARIANTS), copy.copied_bytes)
                await self._quotas.charge_send(user_id, copy.stored_key, copy.copied_bytes)
        elif content is None:
            raise ProblemError(400, "empty_message", "a text message needs some content")
        message = Message(
            message_id=new_id,
            content=content,
            message_type=source.message_type,
            sender_id=user_id,
            timestamp=_now(),
            read_by=(user_id,),
            metadata=albums.album_of([copy.metadata for copy in copied]) if copied else None,
            forwarded=True,
        )
        # No ETags: the outbox entry carries no media job (the copies are already the variants).
        stored_images = [StoredImage(key=copy.stored_key) for copy in copied] if len(copied) > 1 else []
        trace = tracing.inject()
        try:
            stored, created = await self._store.create_message(
                target,
                message,
                object_key=copied[0].stored_key if copied else None,
                trace=trace,
                conversation_checked=True,
                images=stored_images,
            )
        except ConversationNotFound:
            raise _no_such_conversation() from None
        if created:
            metrics.MESSAGES_SENT.labels(stored.message_type).inc()
            metrics.MESSAGES_FORWARDED.labels(stored.message_type).inc()
            entry = created_event(
                target,
                stored,
                trace=trace,
                object_key=copied[0].stored_key if copied else None,
                images=stored_images,
            )
            await self._after_send(target, stored, entry, members)
        return stored, created

    async def _member_and_images(
        self,
        user_id: str,
        conversation_id: str,
        request: SendImage,
        wanted: list[ImageRequest],
        message_id: str,
    ) -> tuple[frozenset[str], Message | None, list[VerifiedImage]]:
        """Membership, the earlier message of a retry and every image's check, overlapped: independent
        round trips, one wait (an album's images are checked side by side).

        Membership is judged first: a non-member learns nothing about the images, and the rejection
        metric only counts what members sent. A retry (its ``clientMessageId`` already stored) is
        answered with the stored message whatever the checks say: by then the media processor may have
        deleted the raw uploads, and a client that lost the 201 must not be told to upload again.
        An album is all or nothing: the first failing image (by index) is the answer, with its ``index``
        in the problem details, and nothing is stored.
        """
        if len(wanted) > 1 and self._limiter is not None:
            # Rate limits count images: the route counted the send as one, an album counts the others.
            await self._limiter.hit("sends", f"user:{user_id}", cost=len(wanted) - 1)
        (membership, earlier), checks = await asyncio.gather(
            asyncio.gather(
                _participants_for(self._conversations, conversation_id, user_id),
                self._earlier_send(conversation_id, message_id, request),
                return_exceptions=True,
            ),
            asyncio.gather(
                *(self._verifier.verify(user_id, conversation_id, image) for image in wanted),
                return_exceptions=True,
            ),
        )
        if isinstance(membership, BaseException):
            raise membership
        if isinstance(earlier, BaseException):
            raise earlier
        if earlier is not None:
            return membership, earlier, []
        album = len(wanted) > 1
        verified: list[VerifiedImage] = []
        for index, check in enumerate(checks):
            if isinstance(check, ProblemError):
                metrics.IMAGE_MESSAGES_REJECTED.labels(check.code).inc()
                if album:
                    raise _at_index(check, index) from None
            if isinstance(check, BaseException):
                raise check
            assert isinstance(check, VerifiedImage)
            verified.append(check)
        seen: dict[str, int] = {}
        for index, image in enumerate(verified):
            first = seen.setdefault(image.stored_key, index)
            if first != index:
                metrics.IMAGE_MESSAGES_REJECTED.labels("duplicate_image").inc()
                raise ProblemError(
                    400,
                    "duplicate_image",
                    f"images {first} and {index} are the same object: each image is its own upload",
                    extra={"index": index},
                )
        return membership, None, verified

    async def _earlier_send(
        self, conversation_id: str, message_id: str, request: SendMessage
    ) -> Message | None:
        """The message a send with this ``clientMessageId`` stored before, if any."""
        if request.client_message_id is None:
            return None
        return await self._store.get_message(conversation_id, message_id)

    @staticmethod
    def _record(message: Message, verified: list[VerifiedImage]) -> None:
        metrics.MESSAGES_SENT.labels(message.message_type).inc()
        if verified:
            metrics.IMAGES_PER_MESSAGE.observe(len(verified))
        for image in verified:
            metrics.IMAGE_SIZE.observe(image.metadata.size_bytes)
            waited = (message.timestamp - image.last_modified).total_seconds()
            metrics.UPLOAD_TO_SEND.observe(max(0.0, waited))  # clocks of store and server may differ

    async def _after_send(
        self, conversation_id: str, message: Message, entry: OutboxEntry, members: frozenset[str]
    ) -> None:
        # Fan-out first: real-time delivery should not wait for the conversation summary's write.
        # ``entry`` is the one stored with the message (media jobs included).
        await _emit("message_created", self._events.message_created(entry, members))
        await self._last_messages.touch(conversation_id, LastMessage.of(message, _PREVIEW_CHARS))

    async def list(
        self, user_id: str, conversation_id: str, *, limit: int, before: str | None
    ) -> MessagePage:
        await _participants_for(self._conversations, conversation_id, user_id)
        try:
            page = await self._store.list_messages(conversation_id, limit=limit, before=before)
        except InvalidCursor as exc:
            raise ProblemError(400, "invalid_cursor", str(exc)) from None
        return MessagePage(items=page.items, next_cursor=page.next_cursor)

    async def gallery(
        self, user_id: str, conversation_id: str, *, limit: int, before: str | None
    ) -> GalleryPage:
        """The conversation's images, newest message first, an album's in its order; deleted messages
        never appear. Reads at most ``GALLERY_SCAN_MESSAGES`` messages per page: a page may hold fewer
        than ``limit`` items (even none) with a ``nextCursor`` when the conversation is mostly text.

        A cursor is the position of the last item shown: ``{micros}.{messageId}_{index}`` (the rest of
        that message's images come first), or any other cursor of the pattern, a message position.
        """
        await _participants_for(self._conversations, conversation_id, user_id)
        items: list[GalleryImage] = []
        resume = _gallery_resume(before)
        store_cursor = before
        if resume is not None:
            stamp, message_id, shown = resume
            store_cursor = f"{stamp}.{message_id}"
            message = await self._store.get_message(conversation_id, message_id)
            if message is not None:
                for index, image in _gallery_images(message, after=shown):
                    if len(items) == limit:
                        return GalleryPage(items=items, next_cursor=_gallery_cursor(message, index - 1))
                    items.append(_gallery_item(message, index, image))
        scanned = 0
        last: tuple[Message, int] | None = None  # the last item's message and index
        while scanned < GALLERY_SCAN_MESSAGES:
            try:
                page = await self._store.list_messages(
                    conversation_id, limit=min(100, GALLERY_SCAN_MESSAGES - scanned), before=store_cursor
                )
            except InvalidCursor as exc:
                raise ProblemError(400, "invalid_cursor", str(exc)) from None
            for message in page.items:
                scanned += 1
                for index, image in _gallery_images(message, after=-1):
                    if len(items) == limit:
                        assert last is not None
                        return GalleryPage(items=items, next_cursor=_gallery_cursor(*last))
                    items.append(_gallery_item(message, index, image))
                    last = (message, index)
                store_cursor = encode_cursor(message.timestamp, message.message_id)
            if page.next_cursor is None:
                return GalleryPage(items=items, next_cursor=None)
        # The scan's budget is spent: go on from the last message read.
        return GalleryPage(items=items, next_cursor=store_cursor)

    async def mark_read(self, user_id: str, conversation_id: str, message_id: str) -> Message:
        await _participants_for(self._conversations, conversation_id, user_id)
        # Every id this service hands out is a UUID; anything else cannot exist (nor reach the store).
        read = new_event("message.read", conversation_id, user_id=user_id, trace=tracing.inject())
        result = (
            await self._store.mark_read(conversation_id, message_id, user_id, event=read)
            if keys.UUID_PATTERN.fullmatch(message_id)
            else None
        )
        if result is None:
            raise ProblemError(404, "message_not_found", "no such message in this conversation")
        message, changed = result
        if changed:
            await _emit("message.read", self._events.event_stored(event_done(read, message)))
        return message

    async def _message(self, conversation_id: str, message_id: str) -> Message:
        # Every id this service hands out is a UUID; anything else cannot exist (nor reach the store).
        message = (
            await self._store.get_message(conversation_id, message_id)
            if keys.UUID_PATTERN.fullmatch(message_id)
            else None
        )
        if message is None:
            raise ProblemError(404, "message_not_found", "no such message in this conversation")
        return message

    async def delete(self, user_id: str, conversation_id: str, message_id: str) -> None:
        """Unsend: the sender, or an admin of the conversation. Deleting a tombstone again is a no-op."""
        await _participants_for(self._conversations, conversation_id, user_id)
        message = await self._message(conversation_id, message_id)
        if message.deleted:
            return
        if message.sender_id == user_id:
            reason = "sender"
        else:
            conversation = await self._conversations.get_conversation(conversation_id)
            if conversation is None or user_id not in conversation.admin_ids():
                raise ProblemError(
                    403, "not_allowed", "only the sender or an admin of the conversation can delete it"
                )
            reason = "admin"
        await delete_message(
            self._store, self._events, conversation_id, message, deleted_by=user_id, reason=reason
        )

    async def edit(
        self, user_id: str, conversation_id: str, message_id: str, request: EditMessage
    ) -> Message:
        """The sender changes the text (or caption) and/or the image's alt text, within the edit window."""
        await _participants_for(self._conversations, conversation_id, user_id)
        message = await self._message(conversation_id, message_id)
        if message.deleted:
            raise ProblemError(409, "message_deleted", "the message was deleted; it can no longer be edited")
        if message.sender_id != user_id:
            raise ProblemError(403, "not_allowed", "only the sender can edit a message")
        now = _now()
        if now - message.timestamp > self._edit_window:
            raise ProblemError(
                403,
                "edit_window_closed",
                f"a message can be edited for {int(self._edit_window.total_seconds())} s after it is sent",
            )
        if request.content is msgspec.UNSET and request.alt_text is msgspec.UNSET:
            return message  # nothing named, nothing changed (not an edit: no editedAt, no event)
        edit = self._edit_of(message, request)
        announced = new_event("message.edited", conversation_id, trace=tracing.inject())
        try:
            changed = await self._store.edit_message(
                conversation_id, message_id, edit, edited_at=now, event=announced
            )
        except MessageDeleted:
            raise ProblemError(
                409, "message_deleted", "the message was deleted; it can no longer be edited"
            ) from None
        if changed is None:
            raise ProblemError(404, "message_not_found", "no such message in this conversation")
        metrics.MESSAGES_EDITED.inc()
        audit(
            "message_edited",
            actor=user_id,
            conversation_id=conversation_id,
            message_id=message_id,
            fields=[name for name in ("content", "alt_text") if getattr(request, name) is not msgspec.UNSET],
        )
        await _emit("message.edited", self._events.event_stored(event_done(announced, changed)))
        return changed

    @staticmethod
    def _edit_of(message: Message, request: EditMessage) -> MessageEdit:
        # A well-formed body that does not fit the stored message is 422 (400 is for malformed bodies).
        content = request.content
        if message.message_type == "text":
            if request.alt_text is not msgspec.UNSET:
                raise ProblemError(422, "not_an_image_message", "alt_text is only for image messages")
            if content is not msgspec.UNSET and not (content or "").strip():
                raise ProblemError(422, "empty_message", "a text message needs some content")
        elif content is not msgspec.UNSET and not (content or "").strip():
            content = None  # an image without a caption, as at send
        if request.index is not None:
            count = len(albums.images_of(message.metadata))
            if request.alt_text is msgspec.UNSET or request.index >= count:
                raise ProblemError(
                    422,
                    "no_such_image",
                    f"index names an image of this message (0..{count - 1}) whose alt_text is given",
                )
        return MessageEdit(content=content, alt_text=request.alt_text, index=request.index)


async def delete_message(
    store: MessageStore,
    events: MessageEvents,
    conversation_id: str,
    message: Message,
    *,
    deleted_by: str,
    reason: str,
) -> bool:
    """Turn ``message`` into a tombstone with its durable ``deleted`` outbox entry, and start its fan-out
    (events, lastMessage, the image's bytes). False when it already was one. Shared by unsend, retention
    and a user's erasure."""
    raw_keys: list[str] = []
    for image in albums.images_of(message.metadata):
        # Not a key of ours: the derivatives are still found by the message id.
        with contextlib.suppress(keys.InvalidKey):
            raw_keys.append(keys.stored_key(conversation_id, image.object_key))
    raw_key = raw_keys[0] if raw_keys else None
    # An album: every image's raw upload goes too (the relay erases each).
    stored_images = [StoredImage(key=key) for key in raw_keys] if albums.is_album(message.metadata) else []
    now = _now()
    trace = tracing.inject()
    result = await store.delete_message(
        conversation_id,
        message.message_id,
        deleted_by=deleted_by,
        deleted_at=now,
        object_key=raw_key,
        trace=trace,
        images=stored_images,
    )
    if result is None or not result[1]:
        return False
    tombstone = result[0]
    metrics.MESSAGES_DELETED.labels(reason).inc()
    audit(
        "message_deleted",
        actor=deleted_by,
        reason=reason,
        conversation_id=conversation_id,
        message_id=message.message_id,
        sender_id=message.sender_id,
        message_type=message.message_type,
    )
    entry = deleted_event(conversation_id, tombstone, object_key=raw_key, trace=trace, images=stored_images)
    await _emit("message.deleted", events.event_stored(entry))
    return True
