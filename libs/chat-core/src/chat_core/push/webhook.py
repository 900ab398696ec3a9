"""Webhook PushProvider: an HTTP POST of the push as JSON to ``PUSH_WEBHOOK_URL``, signed with HMAC-SHA256.

Body: ``{"deviceToken", "platform", "userId", "title", "body", "data"}``, plus ``"provider": "apns"`` for
a raw APNs token and ``"imageUrl"`` (an image message's thumbnail link) when there is one. Headers:
``X-Chat-Timestamp: <unix seconds>`` and ``X-Chat-Signature: sha256=<hex>``, the HMAC-SHA256 with
``PUSH_WEBHOOK_SECRET`` of ``"<timestamp>.<body>"``: the receiver recomputes it (and may refuse old
timestamps, so a captured request cannot be replayed later).

Answers: 2xx sent; 404/410 the device is gone (``invalid_token``); anything else, or no answer, ``retry``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import msgspec
import structlog

from chat_core.push import PushMessage, PushOutcome, PushProvider

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookPushProvider", "sign"]

SIGNATURE_HEADER = "X-Chat-Signature"
TIMESTAMP_HEADER = "X-Chat-Timestamp"
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_GONE = {404, 410}
_log = structlog.get_logger("chat_core.push.webhook")


class _Body(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    device_token: str
    platform: str
    user_id: str
    title: str
    body: str
    data: dict[str, str]
    provider: str = "fcm"  # the push service the device token is for (`apns` for raw APNs tokens)
    image_url: str | None = None  # an image message's thumbnail link (push image previews)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Chat-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookPushProvider(PushProvider):
    name = "webhook"

    def __init__(self, http: httpx.AsyncClient, url: str, secret: str) -> None:
        self._http = http
        self._url = url
        self._secret = secret

    async def start(self) -> None:
        if not self._secret:
            _log.warning("webhook_unsigned", detail="PUSH_WEBHOOK_SECRET is empty: pushes are sent unsigned")

    async def close(self) -> None:
        return None

    async def send(self, message: PushMessage) -> PushOutcome:
        body = msgspec.json.encode(
            _Body(
                device_token=message.device_token,
                platform=message.platform,
                user_id=message.user_id,
                title=message.title,
                body=message.body,
                data=message.data,
                provider=message.provider,
                image_url=message.image_url,
            )
        )
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", TIMESTAMP_HEADER: timestamp}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        try:
            response = await self._http.post(self._url, content=body, headers=headers, timeout=_TIMEOUT)
        except httpx.HTTPError as exc:
            _log.warning("webhook_unreachable", error=f"{type(exc).__name__}: {exc}")
            return "retry"
        if response.is_success:
            return "sent"
        if response.status_code in _GONE:
            return "invalid_token"
        _log.warning("webhook_refused", status=response.status_code)
        return "retry"
