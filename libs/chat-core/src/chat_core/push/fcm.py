"""FCM HTTP v1 PushProvider with Google credentials the platform's way.

Credentials: the service-account key in ``FCM_CREDENTIALS_FILE`` when set, else Google Application
Default Credentials (``google.auth.default``): ``GOOGLE_APPLICATION_CREDENTIALS``, or on GKE the metadata
server, so Workload Identity needs no key at all. google-auth signs the assertion / asks the metadata
server; the access token is cached until shortly before it expires, one refresh at a time whatever the
number of concurrent pushes. Each push is ``POST {FCM_ENDPOINT}/v1/projects/{project}/messages:send``.

An image message's push (``PushMessage.image_url``: a short-lived thumbnail link) sets
``notification.image`` (Android) and ``apns.fcm_options.image`` with ``mutable-content`` (iOS).

Answers: 200 sent; ``UNREGISTERED`` (404) and ``SENDER_ID_MISMATCH`` (403), or an ``INVALID_ARGUMENT``
about the registration token, mean the token is dead (``invalid_token``: forget the device); a 401 gets
a fresh access token and one more try; anything else (429, 5xx, no answer) is ``retry``. A 400 about our
own payload is ``retry`` too, never ``invalid_token``: it must end in the DLQ, not wipe devices.
"""

from __future__ import annotations

import asyncio
from typing import Any

import google.auth
import google.auth.exceptions
import httpx
import msgspec
import requests
import structlog
from google.auth.credentials import Credentials
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2 import service_account

from chat_core.push import PushMessage, PushOutcome, PushProvider
from chat_core.retries import RetryableAnswer, RetryBudget, retrying
from chat_core.settings import PushSettings

__all__ = ["FCM_SCOPE", "FcmPushProvider", "load_credentials"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_TOKEN_RETRY = RetryBudget(attempts=4, seconds=10.0, base=0.1, cap=2.0)
_DEAD_TOKEN_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
_log = structlog.get_logger("chat_core.push.fcm")


def load_credentials(settings: PushSettings) -> tuple[Credentials, str]:
    """The credentials FCM calls are made with, and the Firebase project they go to.

    A key file named by ``FCM_CREDENTIALS_FILE`` wins; otherwise Application Default Credentials. A
    service account's token exchange goes to ``FCM_TOKEN_URL`` (Google's by default).
    """
    credentials: Any
    if settings.fcm_credentials_file:
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            settings.fcm_credentials_file, scopes=[FCM_SCOPE]
        )
        project = credentials.project_id or ""
    else:
        credentials, found = google.auth.default(scopes=[FCM_SCOPE])
        project = found or ""
    if isinstance(credentials, service_account.Credentials):
        credentials = credentials.with_token_uri(settings.fcm_token_url)
    project = settings.fcm_project_id or project
    if not project:
        raise ValueError("FCM_PROJECT_ID: required when the credentials name no project")
    return credentials, project


class FcmPushProvider(PushProvider):
    name = "fcm"
    readiness_name = "fcm"

    def __init__(self, http: httpx.AsyncClient, settings: PushSettings) -> None:
        self._http = http
        self._settings = settings
        self._credentials: Credentials | None = None
        self._session: requests.Session | None = None
        self._send_url = ""
        self._refreshing = asyncio.Lock()

    async def start(self) -> None:
        credentials, project = await asyncio.to_thread(load_credentials, self._settings)
        self._credentials = credentials
        self._session = requests.Session()
        self._send_url = f"{self._settings.fcm_endpoint.rstrip('/')}/v1/projects/{project}/messages:send"
        _log.info("fcm_credentials", kind=type(credentials).__module__ + "." + type(credentials).__name__)

    async def close(self) -> None:
        if self._session is not None:
            self._session.close()

    async def ping(self) -> None:
        """Ready when an access token can be had (the credentials are accepted)."""
        await self._token()

    # --- OAuth ----------------------------------------------------------------------------------------
    def _fresh(self, stale: str | None) -> str | None:
        credentials = self._credentials
        if credentials is None:
            raise RuntimeError("the FCM provider is not started")
        token: str | None = credentials.token
        # `valid` is False within google-auth's refresh threshold before expiry.
        if token is not None and token != stale and credentials.valid:
            return token
        return None

    async def _token(self, *, stale: str | None = None) -> str:
        token = self._fresh(stale)
        if token is not None:
            return token
        async with self._refreshing:
            # Another push may have refreshed it while this one waited.
            token = self._fresh(stale)
            if token is not None:
                return token
            credentials, session = self._credentials, self._session
            assert credentials is not None
            assert session is not None
            request = GoogleAuthRequest(session)

            async def attempt() -> None:
                try:
                    await asyncio.to_thread(credentials.refresh, request)
                except google.auth.exceptions.TransportError as exc:  # the token endpoint unreachable
                    raise RetryableAnswer("connection", exc) from exc
                except google.auth.exceptions.RefreshError as exc:
                    if getattr(exc, "retryable", False):  # google-auth's own verdict: 5xx, 429
                        raise RetryableAnswer("5xx", exc) from exc
                    raise

            try:  # transient failures are tried again; a refused credential is not
                await retrying("fcm", "token", attempt, _TOKEN_RETRY)
            except RetryableAnswer as exhausted:
                raise exhausted.answer from None
            return str(credentials.token)

    # --- pushes ---------------------------------------------------------------------------------------
    def _payload(self, message: PushMessage) -> bytes:
        notification: dict[str, str] = {"title": message.title, "body": message.body}
        apns: dict[str, Any] = {"headers": {"apns-priority": "10"}}
        if message.image_url:
            # Android shows notification.image itself; iOS needs mutable-content for the app's notification
            # service extension, which downloads fcm_options.image and attaches it.
            notification["image"] = message.image_url
            apns["payload"] = {"aps": {"mutable-content": 1}}
            apns["fcm_options"] = {"image": message.image_url}
        return msgspec.json.encode(
            {
                "message": {
                    "token": message.device_token,
                    "notification": notification,
                    "data": message.data,
                    "android": {"priority": "high"},
                    "apns": apns,
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
            except (httpx.HTTPError, google.auth.exceptions.GoogleAuthError, ValueError, KeyError) as exc:
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
