"""The request deadline (``chat_core.deadline``) in the instant it expires."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from chat_core.deadline import DeadlineMiddleware


async def test_an_answer_started_as_the_deadline_expires_goes_out_whole() -> None:
    """Found by the chaos run (Firestore blackhole): the deadline fired, the handler's await swallowed the
    cancellation (as some backend clients do) and it answered; rescheduling the expiring deadline then raised
    ``RuntimeError`` after the answer had started, a 500. The answer the handler made goes out instead."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # a client library that keeps going after one
            await asyncio.sleep(1.0)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"stored"})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = DeadlineMiddleware(app, seconds=0.05)
    scope: Any = {"type": "http", "path": "/conversations/c/messages"}
    await middleware(scope, receive, send)

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 201
    assert sent[1]["body"] == b"stored"
