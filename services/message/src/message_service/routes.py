"""HTTP handlers for conversations and messages: small, the logic is in ``service``."""

from __future__ import annotations

from typing import Annotated

from litestar import Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import BodyKwarg, FromPath, JSONBody, QueryParameter

from chat_core.auth import Principal
from chat_core.errors import problem_responses
from chat_core.messagestore import Conversation, Message
from chat_core.ratelimit import RATE_LIMIT_OPT
from message_service.schemas import (
    MESSAGE_EXAMPLE,
    SEND_EXAMPLES,
    AddParticipants,
    ConversationPage,
    CreateConversation,
    EditMessage,
    MessagePage,
    SendMessage,
    UpdateConversation,
)
from message_service.service import ConversationService, MessageService

__all__ = ["ROUTES"]

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page.")]
Before = Annotated[
    str | None, QueryParameter(description="`nextCursor` of the previous page; omit for the first page.")
]


@post(
    "/conversations",
    status_code=201,
    summary="Start a conversation",
    description="The caller is always a member; `participantIds` are the others.",
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "conversations"},
    responses=problem_responses(409),
)
async def create_conversation(
    data: JSONBody[CreateConversation],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    return await conversation_service.create(principal.user_id, data)


@get("/conversations", summary="My conversations, most recently active first", tags=["conversations"])
async def list_conversations(
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
    limit: Limit = 20,
    before: Before = None,
) -> ConversationPage:
    return await conversation_service.list(principal.user_id, limit=limit, before=before)


@get("/conversations/{conversation_id:str}", summary="One conversation", tags=["conversations"])
async def get_conversation(
    conversation_id: FromPath[str],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    return await conversation_service.get(principal.user_id, conversation_id)


@patch(
    "/conversations/{conversation_id:str}",
    summary="Change a conversation's settings (admins)",
    description=(
        "Admins only (403 `not_an_admin`). `retentionDays`: messages older than this many days are deleted "
        "with their images by the retention job; null returns to the deployment's `MESSAGE_RETENTION_DAYS`."
    ),
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "participant_changes"},
    responses=problem_responses(400, 401, 403, 404),
)
async def update_conversation(
    conversation_id: FromPath[str],
    data: JSONBody[UpdateConversation],
    principal: NamedDependency[Principal],
    conversation_service: NamedDependency[ConversationService],
) -> Conversation:
    return await conversation_service.update(principal.user_id, conversation_id, data)


@post(
    "/conversations/{conversation_id:str}/participants",
    status_code=200,
    summary="Add members",
    tags=["conversations"],
    opt={RATE_LIMIT_OPT: "participant_changes"},
)
async def add_participants(
    conversation_id: FromPath[str],
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
    conversation_id: FromPath[str],
    user_id: FromPath[str],
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
        "from the image header. A retry with the same `clientMessageId` returns the same message (200)."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses={
        201: ResponseSpec(
            Message, description="Stored (a retry of a stored one: 200)", examples=[MESSAGE_EXAMPLE]
        ),
        **problem_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
    },
)
async def send_message(
    conversation_id: FromPath[str],
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
    conversation_id: FromPath[str],
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
    limit: Limit = 50,
    before: Before = None,
) -> MessagePage:
    return await message_service.list(principal.user_id, conversation_id, limit=limit, before=before)


@post(
    "/conversations/{conversation_id:str}/messages/{message_id:str}/read",
    status_code=200,
    summary="Mark a message read",
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "read_receipts"},
)
async def mark_read(
    conversation_id: FromPath[str],
    message_id: FromPath[str],
    principal: NamedDependency[Principal],
    message_service: NamedDependency[MessageService],
) -> Message:
    return await message_service.mark_read(principal.user_id, conversation_id, message_id)


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
    responses=problem_responses(401, 403, 404, 503),
)
async def delete_message(
    conversation_id: FromPath[str],
    message_id: FromPath[str],
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
        "they are; the image itself cannot be replaced. 200 with the message, `editedAt` set; members get "
        "`message.edited`."
    ),
    tags=["messages"],
    opt={RATE_LIMIT_OPT: "sends"},
    responses=problem_responses(400, 401, 403, 404, 409, 503),
)
async def edit_message(
    conversation_id: FromPath[str],
    message_id: FromPath[str],
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
    mark_read,
    delete_message,
    edit_message,
]
