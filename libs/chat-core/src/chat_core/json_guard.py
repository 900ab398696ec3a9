"""Refuse hostile request bodies before anything parses them (or authenticates the caller).

~2 KB of ``[[[[…`` nests a thousand levels deep: a recursive decoder spends its stack on it, and one that
gives up raises an error the handlers do not expect. Every body this API takes is a small JSON document
nested three levels at most, so the guard buffers request bodies (up to ``MAX_BODY_BYTES``), measures
their nesting with a scan that never recurses, and answers 400 ``json_too_deep`` past ``MAX_DEPTH`` (413
``payload_too_large`` past the size), before routing, authentication or decoding. The local object store's
``/_storage`` route takes image bytes, not JSON, and is left alone (it enforces its own signed length).

JSON text is UTF-8 (RFC 8259 §8.1), and the decoder raises a ``UnicodeDecodeError`` (not its own
``DecodeError``) on invalid UTF-8 inside a string, which no handler expects: so a body that is not UTF-8
is 400 ``invalid_json`` here, whatever the route, before anything decodes it.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from chat_core.errors import PROBLEM_JSON, problem_body

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "JsonGuard", "nesting_depth"]

MAX_DEPTH = 32
MAX_BODY_BYTES = 1024 * 1024
_UNGUARDED_PREFIXES = ("/_storage/",)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def nesting_depth(body: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep ``body`` nests arrays and objects, up to ``limit + 1`` (brackets in strings do not count)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return body.count(b"[") + body.count(b"{")  # cannot nest deeper than it has brackets
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', body)):
        if match[0] in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        else:
            depth = max(0, depth - 1)
    return deepest


class JsonGuard:
    """ASGI middleware: buffers each guarded request body, refuses it when too large or too deep."""

    def __init__(self, app: ASGIApp, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BODY_BYTES) -> None:
        self._app = app
        self._max_depth = max_depth
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope["path"].startswith(_UNGUARDED_PREFIXES)
            or not _declares_a_body(scope["headers"])
        ):
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it as usual
                await self._app(scope, _replay(chunks, message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                await _refuse(
                    scope,
                    send,
                    413,
                    "payload_too_large",
                    f"a request body has at most {self._max_bytes} bytes",
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not _is_utf8(body):
            await _refuse(scope, send, 400, "invalid_json", "the body is not UTF-8 text, so not JSON")
            return
        if body and nesting_depth(body, self._max_depth) > self._max_depth:
            await _refuse(
                scope, send, 400, "json_too_deep", f"the body nests deeper than {self._max_depth} levels"
            )
            return
        await self._app(scope, _replay([body], None, receive), send)


def _declares_a_body(headers: Any) -> bool:
    """Whether the request says a body follows (a ``Transfer-Encoding``, or a ``Content-Length`` other than
    0). One that does not has none (HTTP/1.1 frames bodies by these two headers; the server reads nothing
    more), so there is nothing to guard, and a GET is not made to wait on ``receive`` for an empty body."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def _is_utf8(body: bytes) -> bool:
    if body.isascii():
        return True
    try:
        body.decode("utf-8")  # strict: overlong forms and encoded surrogates are refused too
    except UnicodeDecodeError:
        return False
    return True


def _replay(chunks: list[bytes], last: Any, receive: Receive) -> Receive:
    pending: list[Any] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
    if last is not None:
        pending = [last]

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _refuse(scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
    body = msgspec.json.encode(problem_body(status, code, HTTPStatus(status).phrase, detail, scope["path"]))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
