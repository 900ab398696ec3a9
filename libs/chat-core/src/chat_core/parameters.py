"""Path and query parameters shared by the routes, with the exact shape the OpenAPI documents publish.

Use these instead of a bare ``FromPath[str]``: the document then tells clients (and Schemathesis) which
values can exist at all. The shapes are documented, not enforced by Litestar, because each service
already answers a malformed id as it answers an unknown one (404 ``conversation_not_found``,
``message_not_found``...; 400 ``invalid_object_key``, ``invalid_cursor``): a stranger learns nothing
from the difference, and the codes clients handle stay what they were. ``tests/docs`` checks that every
path parameter of the document has a pattern.
"""

from __future__ import annotations

from typing import Annotated

from litestar.openapi.spec import Example
from litestar.params import PathParameter, QueryParameter

from chat_core.chatstore import CURSOR_PATTERN
from chat_core.keys import CONVERSATION_ID_PATTERN, OBJECT_KEY_PATTERN, USER_ID_PATTERN, UUID_PATTERN

__all__ = ["SHAPES", "ConversationId", "Cursor", "MessageId", "ObjectKey", "UserId"]


def _shape(pattern: str, min_length: int, max_length: int) -> dict[str, object]:
    return {"pattern": pattern, "minLength": min_length, "maxLength": max_length}


# By parameter name: ``chat_core.openapi`` gives a path parameter of one of these names its shape when its
# route declared a bare ``str`` (the services answer a malformed id as an unknown one: 404).
SHAPES: dict[str, dict[str, object]] = {
    "conversation_id": _shape(CONVERSATION_ID_PATTERN.pattern, 1, 64),
    "message_id": _shape(UUID_PATTERN.pattern, 36, 36),
    "job_id": _shape(UUID_PATTERN.pattern, 36, 36),  # operators' jobs (erase, export)
    "user_id": _shape(USER_ID_PATTERN.pattern, 1, 128),
    "object_key": _shape(OBJECT_KEY_PATTERN.pattern, 65, 193),
}

ConversationId = Annotated[
    str,
    PathParameter(
        description="A conversation id (`conversationId`).",
        schema_extra=SHAPES["conversation_id"],
    ),
]
MessageId = Annotated[
    str,
    PathParameter(description="A message id (`messageId`, a UUID).", schema_extra=SHAPES["message_id"]),
]
UserId = Annotated[
    str,
    PathParameter(description="A user id (the token's `sub`).", schema_extra=SHAPES["user_id"]),
]
ObjectKey = Annotated[
    str,
    PathParameter(
        description="`object_key` as the upload URL response gave it: "
        "`images/{uploader}/{yyyymmdd-HHMMSS}-{uuid}.{ext}`.",
        schema_extra=SHAPES["object_key"],
        # The key spans path segments; an example with slashes also tells fuzzers they belong.
        examples=[
            Example(
                summary="An object key",
                value="images/user123/20240419-123456-0f8e4c2a-9b7d-4e11-8a3c-5d6e7f809112.jpg",
            )
        ],
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="`nextCursor` of the previous page (`{microseconds}.{id}`); omit for the first page.",
        schema_extra=_shape(CURSOR_PATTERN.pattern, 3, 83),
    ),
]
