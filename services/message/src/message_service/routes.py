"""HTTP handlers for conversations and messages: small, the logic is in ``service``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import BodyKwarg, JSONBody, QueryParameter

from chat_core.auth import Principal
from chat_core.errors import ProblemError, problem_responses
from chat_core.messagestore import Conversation, Message
from chat_core.parameters import ConversationId, Cursor, MessageId, UserId
from chat_core.ratelimit import RATE_LIMIT_OPT
from message_service.schemas import (
    MESSAGE_EXAMPLE,
    SEND_EXAMPLES,
    AddParticipants,
    ConversationPage,
    CreateConversation,
    EditMessage,
    ForwardMessage,
    GalleryPage,
    MessagePage,
    SendMessage,
    UpdateConversation,
)
from message_service.service import ConversationService, MessageService

__all__ = ["ROUTES"]

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page.")]


async def _strict_booleans(request: Request[Any, Any, Any], *fields: str) -> None:
    """Litestar converts bodies leniently (``0`` or ``"false"`` would pass for a boolean); a setting is
    ``true`` or ``false``, as the schema says."""
    body = await request.json()
    for field in fields:
        if isinstance(body, dict) and field in body and not isinstance(body[field], bool):
            raise ProblemError(400, "invalid_request", f"{field}: Expected `bool`")


@post(
    "/conversations",
    status_code=201,
    summary="Start a conversation",
    description="The caller is always a member; `participantIds` are the others.",
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "conversations"},
    responses=problem_responses(400, 409, 413),
)
async def create_conversation(
    request: Request[Any, Any, Any],
    data: JSONBody[CreateConversation],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    await _strict_booleans(request, "pushImagePreviews")
    return await conversation_service.create(principal.user_id, data)


@get("/conversations", summary="My conversations, most recently active first", tags=["conversations"])
async def list_conversations(
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
    limit: Limit = 20,
    before: Cursor = None,
) -> ConversationPage:
    return await conversation_service.list(principal.user_id, limit=limit, before=before)


@get("/conversations/{conversation_id:str}", summary="One conversation", tags=["conversations"])
async def get_conversation(
    conversation_id: ConversationId,
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    return await conversation_service.get(principal.user_id, conversation_id)


@patch(
    "/conversations/{conversation_id:str}",
    status_code=200,
    summary="Change a conversation's settings",
    description="Admins only (403 `not_an_admin`); fields left out stay as they are. `pushImagePreviews`: "
    "whether pushes of its images show the photo. `retentionDays` (1..36500): messages older than this many "
    "days are deleted with their images by the retention job; null returns to the deployment's "
    "`MESSAGE_RETENTION_DAYS`.",
    tags=["conversations"],
    responses=problem_responses(400, 401, 403, 404),
)
async def update_conversation(
    request: Request[Any, Any, Any],
    conversation_id: ConversationId,
    data: JSONBody[UpdateConversation],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    await _strict_booleans(request, "pushImagePreviews")
    return await conversation_service.update(principal.user_id, conversation_id, data)


@post(
    "/conversations/{conversation_id:str}/participants",
    status_code=200,
    summary="Add members",
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "participant_changes"},
)
async def add_participants(
    conversation_id: ConversationId,
    data: JSONBody[AddParticipants],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    return await conversation_service.add_participants(principal.user_id, conversation_id, data)


@delete(
    "/conversations/{conversation_id:str}/participants/{user_id:str}",
    status_code=204,
    summary="Remove a member (or leave)",
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "participant_changes"},
)
async def remove_participant(
    conversation_id: ConversationId,
    user_id: UserId,
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> None:
    await conversation_service.remove_participant(principal.user_id, conversation_id, user_id)


@post(
    "/conversations/{conversation_id:str}/messages",
    summary="Send a text or image message",
    description=(
        "201 with the stored message. For an image, the uploaded object is verified (exists, uploaded by "
        "you to this conversation, declared type, size limit, magic bytes) and its width/height are read "
        "from the image header. An album (`metadata.images`, 2..`MAX_IMAGES_PER_MESSAGE`) is verified "
        "image by image, side by side, and stored whole or not at all: a failing image's problem names its "
        "`index`; 400 `too_many_images` past the limit, `duplicate_image` for one object twice. Rate "
        "limits and quotas count images. A retry with the same `clientMessageId` returns the same message "
        "(200)."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses={
        201: ResponseSpec(Message, description="Stored", examples=[MESSAGE_EXAMPLE]),
        200: ResponseSpec(
            Message,
            description="A retry (the same `clientMessageId`): the message stored the first time",
            generate_examples=False,
        ),
        **problem_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
    },
)
async def send_message(
    conversation_id: ConversationId,
    data: Annotated[SendMessage, BodyKwarg(media_type=RequestEncodingType.JSON, examples=SEND_EXAMPLES)],
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> Response[Message]:
    message, created = await message_service.send(principal.user_id, conversation_id, data)
    return Response(message, status_code=201 if created else 200)


@get(
    "/conversations/{conversation_id:str}/messages",
    summary="Messages, newest first",
    tags=["messages"],
)
async def list_messages(
    conversation_id: ConversationId,
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
    limit: Limit = 50,
    before: Cursor = None,
) -> MessagePage:
    return await message_service.list(principal.user_id, conversation_id, limit=limit, before=before)


@get(
    "/conversations/{conversation_id:str}/images",
    summary="The conversation's images, newest first",
    description=(
        "One item per image: an album gives one per image, in the album's order (`index`, 0-based), "
        "messages newest first; deleted messages never appear, images still processing or failed do "
        "(`status`). Members only (404 `conversation_not_found` otherwise). A page may hold fewer than "
        "`limit` items when the conversation is mostly text; follow `nextCursor` (as `before`) until it "
        "is null."
    ),
    tags=["messages"],
)
async def list_images(
    conversation_id: ConversationId,
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
    limit: Limit = 50,
    before: Cursor = None,
) -> GalleryPage:
    return await message_service.gallery(principal.user_id, conversation_id, limit=limit, before=before)


@post(
    "/conversations/{conversation_id:str}/messages/{message_id:str}/read",
    status_code=200,
    summary="Mark a message read",
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "read_receipts"},
)
async def mark_read(
    conversation_id: ConversationId,
    message_id: MessageId,
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> Message:
    return await message_service.mark_read(principal.user_id, conversation_id, message_id)


@post(
    "/conversations/{conversation_id:str}/messages/{message_id:str}/forward",
    summary="Forward a message to another conversation",
    description=(
        "201 with a new message in `conversationId`, sent by you, `forwarded: true`, the caption kept "
        "unless `content` gives another; it names neither the source conversation nor the source message. "
        "Images are copied server-side from their ready variants (no re-upload, no re-processing): the new "
        "message is `ready` at once, with the same dimensions, variants and BlurHash, and deleting either "
        "message leaves the other's image intact. You must be a member of both conversations (404 "
        "`conversation_not_found` otherwise). 409 `image_not_ready` while the image is processing; 404 "
        "`message_deleted` when the source was deleted. A retry with the same `clientMessageId` returns "
        "the same message (200). Counted as a send by the rate limit and the daily bytes quota."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses={
        201: ResponseSpec(Message, description="Stored in the target", generate_examples=False),
        200: ResponseSpec(
            Message,
            description="A retry (the same `clientMessageId`): the message stored the first time",
            generate_examples=False,
        ),
        **problem_responses(400, 401, 404, 409, 422, 429, 503),
    },
)
async def forward_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    data: JSONBody[ForwardMessage],
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> Response[Message]:
    message, created = await message_service.forward(principal.user_id, conversation_id, message_id, data)
    return Response(message, status_code=201 if created else 200)


@delete(
    "/conversations/{conversation_id:str}/messages/{message_id:str}",
    status_code=204,
    summary="Unsend a message",
    description=(
        "The sender, or an admin of the conversation (else 403 `not_allowed`); 204 again for a message "
        "already deleted. The message stays in lists as a tombstone (`deleted: true`, `deletedAt`, "
        "`deletedBy`, `content` and `metadata` null); the image proxy answers 404 `message_deleted` for its "
        "image at once, and every stored byte of the image is deleted by a durable job within seconds. "
        "Members get `message.deleted`."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses=problem_responses(401, 403, 404, 429, 503),
)
async def delete_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> None:
    await message_service.delete(principal.user_id, conversation_id, message_id)


@patch(
    "/conversations/{conversation_id:str}/messages/{message_id:str}",
    status_code=200,
    summary="Edit a message's text, caption or alt text",
    description=(
        "The sender only (else 403 `not_allowed`), within `MESSAGE_EDIT_WINDOW_SECONDS` of sending (else "
        "403 `edit_window_closed`); a deleted message is 409 `message_deleted`. Fields left out stay as "
        "they are (an empty body changes nothing); the image itself cannot be replaced; 422 `empty_message` "
        "for empty text, `not_an_image_message` for `alt_text` on a text message. 200 with the message, "
        "`editedAt` set; members get `message.edited`."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses=problem_responses(400, 401, 403, 404, 409, 422, 429, 503),
)
async def edit_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    data: JSONBody[EditMessage],
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> Message:
    return await message_service.edit(principal.user_id, conversation_id, message_id, data)


ROUTES = [
    create_conversation,
    list_conversations,
    get_conversation,
    update_conversation,
    add_participants,
    remove_participant,
    send_message,
    list_messages,
    list_images,
    mark_read,
    forward_message,
    delete_message,
    edit_message,
]
