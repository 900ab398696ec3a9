"""HTTP handler of the image proxy: small, the logic is in ``service.ImageProxy``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from chat_core.errors import problem_responses
from chat_core.hot_routes import HotCall, HotRoute
from chat_core.parameters import ConversationId, ObjectKey
from image_proxy.service import ImageProxy

__all__ = ["get_image", "hot_get_image"]


@get(
    "/images/{conversation_id:str}/{object_key:path}",
    summary="See an image of a conversation",
    description=(
        "Participants only; the token comes from `Authorization: Bearer` or the token cookie (for `<img>`). "
        "Serves the sanitized original, or `?variant=thumbnail|preview`; never the raw upload. While the "
        "image is processing it waits up to `MEDIA_WAIT_SECONDS`, then 503 with `Retry-After`; a failed "
        "image is 422 `image_unavailable`. Redirect mode: 302 to a short-lived signed URL, the same within "
        "a time window. Stream mode: the bytes, with ETag/If-None-Match and Range. Both `immutable`."
    ),
    tags=["images"],
    responses={
        302: ResponseSpec(
            None,
            description="Redirect mode: `Location` is a signed GET of the image, the same for the whole "
            "signing window; `Cache-Control: private, max-age=<rest of the window>`.",
        ),
        206: ResponseSpec(None, description="Stream mode, with `Range`: the requested bytes."),
        304: ResponseSpec(None, description="Stream mode, with a matching `If-None-Match`."),
        **problem_responses(400, 401, 404, 416, 422, 503),
    },
)
async def get_image(
    request: Request[Any, Any, Any],
    conversation_id: ConversationId,
    object_key: ObjectKey,
    image_proxy: NamedDependency[ImageProxy],
) -> Response[Any]:
    return await image_proxy.serve(request, conversation_id, object_key)


def hot_get_image(image_proxy: ImageProxy) -> HotRoute:
    """``get_image`` on the lean path (``chat_core.hot_routes``): the same call, without Litestar's router,
    dependency resolution and middlewares around it."""

    async def serve(call: HotCall) -> Response[Any]:
        return await image_proxy.serve(
            call.request, call.params["conversation_id"], call.params["object_key"]
        )

    return HotRoute("GET", get_image, serve)
