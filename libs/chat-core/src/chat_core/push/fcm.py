"""FCM HTTP v1 PushProvider with service-account OAuth.

The service account's key signs a JWT assertion (RS256, ``aud`` = ``FCM_TOKEN_URL``), exchanged for an
access token that is cached until shortly before it expires; one refresh at a time, whatever the number
of concurrent pushes. Each push is ``POST {FCM_ENDPOINT}/v1/projects/{project}/messages:send``.

Answers: 200 sent; ``UNREGISTERED`` (404) and ``SENDER_ID_MISMATCH`` (403), or an ``INVALID_ARGUMENT``
about the registration token, mean the token is dead (``invalid_token``: forget the device); a 401 gets
a fresh access token and one more try; anything else (429, 5xx, no answer) is ``retry``. A 400 about our
own payload is ``retry`` too, never ``invalid_token``: it must end in the DLQ, not wipe devices.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives import serialization

from chat_core.push import PushMessage, PushOutcome
from chat_core.settings import PushSettings

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["FCM_SCOPE", "FcmPushProvider", "ServiceAccount", "create"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_ASSERTION_LIFETIME = 3600
_REFRESH_MARGIN = 120.0  # renew the access token this long before it expires
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_DEAD_TOKEN_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
_log = structlog.get_logger("chat_core.push.fcm")


class ServiceAccount(msgspec.Struct, frozen=True):
    client_email: str
    private_key: str
    private_key_id: str = ""
    project_id: str = ""


class _AuthFailed(Exception):
    pass


class FcmPushProvider:
    name = "fcm"
    readiness_name = "fcm"

    def __init__(self, http: httpx.AsyncClient, settings: PushSettings) -> None:
        self._http = http
        self._settings = settings
        self._account: ServiceAccount | None = None
        self._key: Any = None
        self._send_url = ""
        self._access_token: str | None = None
        self._expires_at = 0.0
        self._refreshing = asyncio.Lock()

    async def start(self) -> None:
        path = Path(self._settings.fcm_credentials_file)
        raw = await asyncio.to_thread(path.read_bytes)
        account = msgspec.json.decode(raw, type=ServiceAccount)
        self._key = serialization.load_pem_private_key(account.private_key.encode(), password=None)
        project = self._settings.fcm_project_id or account.project_id
        if not project:
            raise ValueError("FCM_PROJECT_ID: required when the credentials name no project_id")
        self._account = account
        self._send_url = f"{self._settings.fcm_endpoint.rstrip('/')}/v1/projects/{project}/messages:send"

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        """Ready when an access token can be had (the credentials are accepted)."""
        await self._token()

    # --- OAuth ----------------------------------------------------------------------------------------
    async def _token(self, *, stale: str | None = None) -> str:
        token = self._access_token
        if token is not None and token != stale and time.time() < self._expires_at - _REFRESH_MARGIN:
            return token
        async with self._refreshing:
            # Another push may have refreshed it while this one waited.
            token = self._access_token
            if token is not None and token != stale and time.time() < self._expires_at - _REFRESH_MARGIN:
                return token
            return await self._refresh()

    async def _refresh(self) -> str:
        account = self._account
        if account is None:
            raise RuntimeError("the FCM provider is not started")
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": account.client_email,
                "scope": FCM_SCOPE,
                "aud": self._settings.fcm_token_url,
                "iat": now,
                "exp": now + _ASSERTION_LIFETIME,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": account.private_key_id} if account.private_key_id else None,
        )
        response = await self._http.post(
            self._settings.fcm_token_url,
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
            timeout=_TIMEOUT,
        )
        if response.status_code != 200:
            raise _AuthFailed(f"token endpoint answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        self._access_token = str(answer["access_token"])
        self._expires_at = now + float(answer.get("expires_in", 3600))
        return self._access_token

    # --- pushes ---------------------------------------------------------------------------------------
    def _payload(self, message: PushMessage) -> bytes:
        return msgspec.json.encode(
            {
                "message": {
                    "token": message.device_token,
                    "notification": {"title": message.title, "body": message.body},
                    "data": message.data,
                    "android": {"priority": "high"},
                    "apns": {"headers": {"apns-priority": "10"}},
                }
            }
        )

    async def send(self, message: PushMessage) -> PushOutcome:
        body = self._payload(message)
        stale: str | None = None
        for _ in range(2):  # a second try only after a 401 (the access token was revoked or expired)
            try:
                token = await self._token(stale=stale)
                response = await self._http.post(
                    self._send_url,
                    content=body,
                    headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                    timeout=_TIMEOUT,
                )
            except (httpx.HTTPError, _AuthFailed, ValueError, KeyError) as exc:
                _log.warning("fcm_unreachable", error=f"{type(exc).__name__}: {exc}")
                return "retry"
            if response.status_code == 401:
                stale = token
                continue
            return _outcome(response)
        return "retry"


def _outcome(response: httpx.Response) -> PushOutcome:
    if response.status_code == 200:
        return "sent"
    status, error_code, text = "", "", ""
    try:
        error = response.json().get("error", {})
        status = str(error.get("status", ""))
        text = str(error.get("message", ""))
        for detail in error.get("details", []):
            error_code = str(detail.get("errorCode", "")) or error_code
    except (ValueError, AttributeError):
        pass
    if error_code in _DEAD_TOKEN_CODES or (response.status_code == 404 and status == "NOT_FOUND"):
        return "invalid_token"
    if (
        error_code == "INVALID_ARGUMENT" or status == "INVALID_ARGUMENT"
    ) and "registration token" in text.lower():
        return "invalid_token"
    _log.warning("fcm_refused", status=response.status_code, error=error_code or status, message=text[:200])
    return "retry"


def create(backends: Backends) -> FcmPushProvider:
    return FcmPushProvider(backends.http, backends.settings.push)
