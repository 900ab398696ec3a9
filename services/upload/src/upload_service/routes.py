"""HTTP handlers of the upload service: small, the logic is in ``service.UploadService``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import BodyKwarg
from litestar.types import ASGIApp

from chat_core import keys
from chat_core.auth import Principal
from chat_core.errors import problem_responses
from chat_core.hot_routes import HotCall, HotRoute, json_answer
from chat_core.parameters import ConversationId
from chat_core.ratelimit import RATE_LIMIT_OPT
from upload_service.schemas import REQUEST_EXAMPLES, RESPONSE_EXAMPLE, UploadUrlRequest, UploadUrlResponse
from upload_service.service import UploadService

__all__ = ["hot_upload_url", "route_handlers"]


def route_handlers(upload_service: UploadService) -> list[HTTPRouteHandler]:
    """The upload routes, bound to ``upload_service``.

    The service is bound here rather than injected: this is a hot path, and with two dependencies (the
    caller and the service) Litestar resolves them in an anyio task group on every request.
    """

    @post(
        "/conversations/{conversation_id:str}/images/upload_url",
        status_code=200,
        summary="Get a presigned URL to upload an image to",
        description=(
            "Participants only. PUT the image to `upload_url` with the same `Content-Type` (and exactly "
            "`size_bytes` bytes when given) before `expires_at`, then send a message with `object_key`. "
            "`file_url` is where members see the image (the authenticated proxy)."
        ),
        tags=["images"],
        opt={RATE_LIMIT_OPT: "upload_urls"},
        responses={
            200: ResponseSpec(
                UploadUrlResponse, description="Upload URL issued", examples=[RESPONSE_EXAMPLE]
            ),
            **problem_responses(400, 401, 404, 413, 415),
        },
    )
    async def create_upload_url(
        conversation_id: ConversationId,
        data: Annotated[
            UploadUrlRequest, BodyKwarg(media_type=RequestEncodingType.JSON, examples=REQUEST_EXAMPLES)
        ],
        principal: NamedDependency[Principal],
    ) -> UploadUrlResponse:
        return await upload_service.issue_upload_url(principal.user_id, conversation_id, data)

    return [create_upload_url]


def hot_upload_url(upload_service: UploadService, handler: HTTPRouteHandler) -> HotRoute:
    """``create_upload_url`` on the lean path (``chat_core.hot_routes``): a plain request with a body that
    decodes strictly is answered here; anything else (a body Litestar's laxer parsing might still take, a
    malformed conversation id, another content type) goes to Litestar, which answers it as it always has."""
    decoder = msgspec.json.Decoder(UploadUrlRequest)
    encoder = msgspec.json.Encoder()

    async def serve(call: HotCall) -> ASGIApp | None:
        conversation_id = call.params["conversation_id"]
        if not keys.CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
            return None
        if call.content_type != "application/json":
            return None
        try:
            data = decoder.decode(call.body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return None  # the JSON guard or Litestar answers it
        principal = await call.caller()
        answer = await upload_service.issue_upload_url(principal.user_id, conversation_id, data)
        return json_answer(encoder.encode(answer))

    return HotRoute("POST", handler, serve)
