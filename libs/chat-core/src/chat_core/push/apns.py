"""APNs PushProvider: Apple's provider API over HTTP/2, with token-based authentication.

Credentials: the auth key Apple issues (``AuthKey_<KEYID>.p8``, a P-256 private key in PEM) from the
mounted secret file ``APNS_KEY_FILE``, its ``APNS_KEY_ID`` and the ``APNS_TEAM_ID``. Each request carries
``authorization: bearer <JWT>``, an ES256 token (header ``kid``; claims ``iss`` = team, ``iat``) that is
reused for ``_TOKEN_LIFETIME`` (APNs refuses tokens older than an hour, and refreshing more often than every
20 minutes with ``TooManyProviderTokenUpdates``), one refresh at a time.

Each push is ``POST {endpoint}/3/device/{token}`` on one HTTP/2 connection (requests are multiplexed),
``APNS_ENVIRONMENT`` choosing production (``api.push.apple.com``) or sandbox
(``api.sandbox.push.apple.com``). Headers: ``apns-topic`` (the bundle id), ``apns-push-type: alert``,
``apns-priority: 10`` and ``apns-collapse-id`` = the conversation, so a device shows the newest push of a
conversation instead of a pile. An image message's push sets ``mutable-content`` and carries the
thumbnail link in the payload (``image``), for the app's notification service extension to attach.

Answers: 200 sent; 410 ``Unregistered`` and 400 ``BadDeviceToken`` / ``DeviceTokenNotForTopic`` mean the
token is dead (``invalid_token``: the consumer forgets the device); 429 and 5xx are tried again here with
full-jitter back-off within a budget (``chat_core.retries``), then ``retry`` (the queue's own redelivery);
a 403 ``ExpiredProviderToken`` gets a fresh token and one more try; any other answer (our payload or our
credentials refused) is ``retry``, never ``invalid_token``: it must end in the DLQ, not wipe devices.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from chat_core.push import PushMessage, PushOutcome, PushProvider
from chat_core.retries import RetryableAnswer, RetryBudget, retrying, status_reason
from chat_core.settings import PushSettings

__all__ = ["ENDPOINTS", "ApnsPushProvider", "load_key"]

ENDPOINTS = {"production": "https://api.push.apple.com", "sandbox": "https://api.sandbox.push.apple.com"}
_TOKEN_LIFETIME = 40 * 60.0  # inside APNs' hour, outside its 20-minute refresh floor
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_RETRY = RetryBudget(attempts=4, seconds=8.0, base=0.2, cap=2.0)
_DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})
_COLLAPSE_ID_BYTES = 64  # APNs' limit on apns-collapse-id
_log = structlog.get_logger("chat_core.push.apns")


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The ``.p8`` auth key; ValueError unless it is a P-256 private key."""
    key = load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("APNS_KEY_FILE: not an APNs auth key (a P-256 private key in PEM)")
    return key


class ApnsPushProvider(PushProvider):
    name = "apns"
    readiness_name = "apns"

    def __init__(self, settings: PushSettings) -> None:
        self._settings = settings
        self.endpoint = (settings.apns_endpoint or ENDPOINTS[settings.apns_environment]).rstrip("/")
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None  # (JWT, monotonic time it was made)
        self._refreshing = asyncio.Lock()

    async def start(self) -> None:
        self._key = await asyncio.to_thread(load_key, self._settings.apns_key_file)
        # HTTP/2 only: APNs speaks nothing else. Over https ALPN agrees on it; a plain http endpoint (a local
        # stand-in) is spoken to with prior knowledge.
        self._client = httpx.AsyncClient(
            http1=False, http2=True, timeout=_TIMEOUT, limits=httpx.Limits(max_connections=4)
        )
        _log.info("apns_configured", endpoint=self.endpoint, key_id=self._settings.apns_key_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> None:
        """Ready when a provider token can be signed (APNs has no health call to make)."""
        await self._provider_token()

    # --- provider tokens --------------------------------------------------------------------------------
    async def _provider_token(self, *, stale: str | None = None) -> str:
        current = self._token
        if current is not None and current[0] != stale and time.monotonic() - current[1] < _TOKEN_LIFETIME:
            return current[0]
        async with self._refreshing:
            current = self._token
            if (
                current is not None
                and current[0] != stale
                and time.monotonic() - current[1] < _TOKEN_LIFETIME
            ):
                return current[0]
            if self._key is None:
                raise RuntimeError("the APNs provider is not started")
            token = jwt.encode(
                {"iss": self._settings.apns_team_id, "iat": int(time.time())},
                self._key,
                algorithm="ES256",
                headers={"kid": self._settings.apns_key_id},
            )
            self._token = (token, time.monotonic())
            return token

    # --- pushes ------------------------------------------------------------------------------------------
    def _payload(self, message: PushMessage) -> bytes:
        aps: dict[str, Any] = {
            "alert": {"title": message.title, "body": message.body},
            "sound": "default",
        }
        conversation = message.data.get("conversationId")
        if conversation:
            aps["thread-id"] = conversation  # groups a conversation's notifications on the device
        payload: dict[str, Any] = {"aps": aps, **message.data}
        if message.image_url:
            aps["mutable-content"] = 1  # the notification service extension downloads and attaches it
            payload["image"] = message.image_url
        return msgspec.json.encode(payload)

    def _headers(self, message: PushMessage, token: str) -> dict[str, str]:
        headers = {
            "authorization": f"bearer {token}",
            "apns-topic": self._settings.apns_topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "content-type": "application/json",
        }
        conversation = message.data.get("conversationId", "")
        if conversation and len(conversation.encode()) <= _COLLAPSE_ID_BYTES:
            headers["apns-collapse-id"] = conversation
        return headers

    async def send(self, message: PushMessage) -> PushOutcome:
        client = self._client
        if client is None:
            raise RuntimeError("the APNs provider is not started")
        url = f"{self.endpoint}/3/device/{quote(message.device_token, safe='')}"
        body = self._payload(message)
        stale: str | None = None
        for _ in range(2):  # a second round only after ExpiredProviderToken
            token = await self._provider_token(stale=stale)
            headers = self._headers(message, token)

            async def attempt(headers: dict[str, str] = headers) -> httpx.Response:
                response = await client.post(url, content=body, headers=headers)
                reason = status_reason(response.status_code)
                if reason is not None:
                    raise RetryableAnswer(reason, response)
                return response

            try:
                response = await retrying("apns", "push", attempt, _RETRY)
            except RetryableAnswer as exhausted:
                response = exhausted.answer
            except httpx.HTTPError as exc:
                _log.warning("apns_unreachable", error=f"{type(exc).__name__}: {exc}")
                return "retry"
            reason = _reason(response)
            if response.status_code == 403 and reason == "ExpiredProviderToken":
                stale = token
                continue
            return _outcome(response.status_code, reason)
        return "retry"


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json().get("reason", ""))
    except (ValueError, AttributeError):
        return ""


def _outcome(status: int, reason: str) -> PushOutcome:
    if status == 200:
        return "sent"
    if status == 410 or (status == 400 and reason in _DEAD_TOKEN_REASONS):
        return "invalid_token"
    _log.warning("apns_refused", status=status, reason=reason)
    return "retry"
