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


_SCOPE: Any = {"type": "http", "path": "/x"}


def _collect() -> tuple[list[dict[str, Any]], Any, Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    return sent, send, receive


async def test_a_request_that_outlasts_the_deadline_is_a_503_with_retry_after() -> None:
    async def hung(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(30)

    sent, send, receive = _collect()
    await DeadlineMiddleware(hung, seconds=0.05)(_SCOPE, receive, send)
    assert sent[0]["status"] == 503
    assert any(name == b"retry-after" for name, _ in sent[0]["headers"])
    assert b"backend_timeout" in sent[1]["body"]
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # our cancellation was taken back: nothing left pending on the task


async def test_a_slow_body_after_the_answer_started_is_not_cut() -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)  # past the deadline: the answer is already on its way
        await send({"type": "http.response.body", "body": b"late"})

    sent, send, receive = _collect()
    await DeadlineMiddleware(streaming, seconds=0.05)(_SCOPE, receive, send)
    assert [m.get("status") or m.get("body") for m in sent] == [200, b"late"]


async def test_a_cancellation_that_is_not_the_deadlines_goes_through() -> None:
    """The server stopping (or the client leaving) cancels the request: that is not a 503."""
    entered = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await asyncio.sleep(30)

    sent, send, receive = _collect()
    request = asyncio.create_task(DeadlineMiddleware(slow, seconds=10)(_SCOPE, receive, send))
    await entered.wait()
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    assert request.cancelled()
    assert sent == []
