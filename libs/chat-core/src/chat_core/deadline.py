"""A deadline on every HTTP request until its answer starts: a backend that swallows requests without a
word (a blackholed network, a hung emulator) costs the caller ``REQUEST_TIMEOUT_SECONDS`` and a clean
``503 backend_timeout`` with ``Retry-After``, never a hang.

Only the time to the first byte of the answer is bounded: a streamed body (an image on its way to a slow
client) has its own per-read timeouts, and WebSockets are not HTTP requests. Uploads to the local object
store (``/_storage``, bytes from a possibly slow phone) are exempt: their time is the client's. A send
cut off by the deadline may still have been stored; a retry with the same ``clientMessageId`` gets it (200).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from chat_core.errors import PROBLEM_JSON, RETRY_AFTER_SECONDS, problem_body

__all__ = ["DeadlineMiddleware"]

_log = structlog.get_logger("chat_core.deadline")
_EXEMPT = "/_storage/"  # chat_core.objectstore.local.STORAGE_ROUTE: uploads go at the client's pace


class DeadlineMiddleware:
    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self._app = app
        self._seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or self._seconds <= 0
            or str(scope.get("path", "")).startswith(_EXEMPT)
        ):
            await self._app(scope, receive, send)
            return
        started = False
        deadline: Any = None

        async def send_once_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # The answer is on its way: no deadline on the body. Unless the deadline expired in this
                # very instant and the app swallowed its cancellation: it cannot be rescheduled then, and
                # the answer the app made is the one to give (leaving ``async with`` raises nothing).
                if not deadline.expired():
                    deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self._seconds) as deadline:
                await self._app(scope, receive, send_once_started)
        except TimeoutError:
            if started:
                raise
            path = str(scope.get("path", ""))
            _log.warning("request_deadline_exceeded", path=path, seconds=self._seconds)
            body = problem_body(
                503,
                "backend_timeout",
                "Service Unavailable",
                "a backend did not answer in time; retry shortly",
                path,
            )
            payload = msgspec.json.encode(body)
            start: Any = {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", RETRY_AFTER_SECONDS.encode()),
                ],
            }
            body_event: Any = {"type": "http.response.body", "body": payload}
            await send(start)
            await send(body_event)
