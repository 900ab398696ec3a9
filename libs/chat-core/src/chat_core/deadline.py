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
        # ``asyncio.timeout``'s protocol (cancel the task on expiry, uncancel it after, TimeoutError only
        # for our own cancellation) on a bare timer handle: the ``Timeout`` context manager and its
        # rescheduling were a few µs of every request.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        started = expired = False

        def expire() -> None:
            nonlocal expired
            if not started:
                expired = True
                task.cancel()

        handle = loop.call_at(loop.time() + self._seconds, expire)

        async def send_once_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                handle.cancel()  # the answer is on its way: no deadline on the body
            await send(message)

        try:
            await self._app(scope, receive, send_once_started)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > cancelling:
                raise  # not (only) ours: the server is stopping, or the client left
            if started:  # the app answered in the very instant, then let our cancellation through
                raise TimeoutError from None
        except BaseException:
            if expired:  # the app turned our cancellation into another error: that error stands
                task.uncancel()
            raise
        else:
            if expired:  # the app swallowed our cancellation and answered: that answer stands
                task.uncancel()
            return
        finally:
            handle.cancel()
        await self._answer_timeout(scope, send)

    async def _answer_timeout(self, scope: Scope, send: Send) -> None:
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
