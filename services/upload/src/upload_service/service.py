"""Issuing presigned upload URLs: who may upload, what, how big, and where it goes."""

from __future__ import annotations

import structlog

from chat_core import keys, metrics
from chat_core.errors import ProblemError
from chat_core.membership import MembershipCache
from chat_core.objectstore import ObjectStore
from chat_core.quota import Quotas
from chat_core.settings import ImageSettings
from upload_service.schemas import UploadUrlRequest, UploadUrlResponse

__all__ = ["UploadService"]

_log = structlog.get_logger("upload_service")


class UploadService:
    def __init__(
        self,
        images: ImageSettings,
        base_url: str,
        store: ObjectStore,
        membership: MembershipCache,
        quotas: Quotas,
    ) -> None:
        self._store = store
        self._quotas = quotas
        self._membership = membership
        self._base_url = base_url
        self._allowed = frozenset(images.allowed_types) & keys.EXTENSIONS.keys()
        self._max_bytes = images.max_bytes
        self._ttl = images.upload_url_ttl_seconds

    async def issue_upload_url(
        self, user_id: str, conversation_id: str, request: UploadUrlRequest
    ) -> UploadUrlResponse:
        try:
            response = await self._issue(user_id, conversation_id, request)
        except ProblemError as exc:
            metrics.UPLOAD_URLS_REFUSED.labels(exc.code).inc()
            raise
        except Exception:
            metrics.UPLOAD_URLS_REFUSED.labels("backend_error").inc()
            _log.exception("upload_url_failed", conversation_id=conversation_id, user_id=user_id)
            raise ProblemError(
                503, "service_unavailable", "the upload URL could not be issued; retry shortly"
            ) from None
        metrics.UPLOAD_URLS_ISSUED.inc()
        return response

    async def _issue(
        self, user_id: str, conversation_id: str, request: UploadUrlRequest
    ) -> UploadUrlResponse:
        await self._membership.require(conversation_id, user_id)  # 404 alike for strangers and unknown ids
        content_type = keys.accepted_content_type(request.content_type, self._allowed)
        if request.size_bytes is not None and request.size_bytes > self._max_bytes:
            raise ProblemError(
                413,
                "image_too_large",
                f"size_bytes {request.size_bytes} is over the limit of {self._max_bytes} bytes",
                extra={"max_bytes": self._max_bytes},
            )
        # Verified user ids and stored conversation ids are valid key segments by construction
        # (``keys.USER_ID_PATTERN`` is what auth accepts), so the stored key always parses.
        object_key = keys.new_object_key(user_id, content_type)
        stored = keys.stored_key(conversation_id, object_key)
        upload = self._store.presign_put(
            stored,
            content_type=content_type,
            content_length=request.size_bytes,
            expires_in=self._ttl,
        )
        # After every other check: a refused request takes no slot. The slot frees when the upload is
        # sent (the message service charges it) or when this URL expires.
        await self._quotas.reserve_upload(
            user_id, stored, expires_at=upload.expires_at.timestamp(), declared_bytes=request.size_bytes
        )
        _log.debug(  # the access log already has one line per request; this adds the key, when debugging
            "upload_url_issued",
            user_id=user_id,
            conversation_id=conversation_id,
            object_key=object_key,
            content_type=content_type,
            size_bytes=request.size_bytes,
        )
        return UploadUrlResponse(
            upload_url=upload.url,
            object_key=object_key,
            file_url=f"{self._base_url}/images/{conversation_id}/{object_key}",
            expires_at=upload.expires_at,
        )
