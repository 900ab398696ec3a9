"""The spec's request and response of ``POST /conversations/{conversation_id}/images/upload_url``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar.openapi.spec import Example

__all__ = ["REQUEST_EXAMPLES", "RESPONSE_EXAMPLE", "UploadUrlRequest", "UploadUrlResponse"]

_KEY = "images/user123/20240419-123456-0f8e4c2a-9b7d-4e11-8a3c-5d6e7f809112.jpg"
REQUEST_EXAMPLES = [
    Example(summary="The spec's request", value={"content_type": "image/jpeg", "filename": "example.jpg"}),
    Example(
        summary="With a declared size (signed in)", value={"content_type": "image/png", "size_bytes": 102400}
    ),
]
RESPONSE_EXAMPLE = Example(
    summary="The spec's response",
    value={
        "upload_url": f"https://s3.ap-southeast-1.amazonaws.com/zalo-phake-images/123/{_KEY}?X-Amz-Algorithm=...",
        "object_key": _KEY,
        "file_url": f"https://images.zalo-phake.example.com/images/123/{_KEY}",
        "expires_at": "2024-04-19T13:34:56Z",
    },
)


class UploadUrlRequest(msgspec.Struct, frozen=True, kw_only=True):
    content_type: Annotated[
        str, msgspec.Meta(min_length=1, max_length=127, description="The image's type, e.g. `image/jpeg`.")
    ]
    filename: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=255, description="Informative only.")] | None
    ) = None
    size_bytes: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, description="The image's size; when given, the upload must be exactly this long."
            ),
        ]
        | None
    ) = None


class UploadUrlResponse(msgspec.Struct, frozen=True, kw_only=True):
    upload_url: str  # PUT the bytes here with the same Content-Type
    object_key: str  # images/{uploader}/{yyyymmdd-HHMMSS}-{uuid}.{ext}
    file_url: str  # the authenticated proxy URL: {PUBLIC_BASE_URL}/images/{conversation_id}/{object_key}
    expires_at: dt.datetime  # ISO-8601 UTC
