"""The spec's request and response of ``POST /conversations/{conversation_id}/images/upload_url``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

__all__ = ["UploadUrlRequest", "UploadUrlResponse"]


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
