"""A lean path for the hottest routes: plain requests skip Litestar's per-request machinery.

``upload_url`` and the image proxy's redirect are the two routes every image costs (one per upload, one per
view). Litestar stays their definition: their handler, path, ``opt``, OpenAPI entry and exception handlers
are its own, and it answers every request this path does not take. A ``HotRoute`` is served here when the
request is plain — its method and path match, it carries no ``Origin`` (CORS stays Litestar's), its body
(if any) fits ``max_body_bytes`` — and its ``serve`` accepts it: ``serve`` returns ``None`` before doing
anything with a side effect when the request is not one it is sure of (a body that does not decode, a path
parameter of the wrong shape), and Litestar then answers it from the start, with the body replayed. So a
malformed request gets exactly Litestar's answer, and a plain one the same answer for less CPU: the
router, the ``Request`` kwargs model, dependency resolution, the response object and the CORS and
exception middlewares cost more than the route's own work (``docs/benchmarks.md``). An exception ``serve``
raises is answered by the route's exception handlers, as Litestar would (problem details, stable codes).

The lean path sits in front of the JSON guard (``chat_core.json_guard``): a body reaches ``serve`` unguarded,
so ``serve`` decodes it into a closed type (no ``Any``, nothing recursive) and returns ``None`` on any
failure to decode (invalid UTF-8, nesting, a wrong type), and the guard then refuses it or Litestar
answers it, as for any request.

``tests/proxy/test_hot_routes.py`` checks, request by request, that both paths give the same answer.
(``get_exception_handler`` comes from a Litestar module marked internal: the lock pins Litestar, and that
test fails if its answers change.)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType, ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware._internal.exceptions.middleware import get_exception_handler
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils.helpers import get_enum_string_value

from chat_core.auth import Principal

__all__ = ["HotCall", "HotRoute", "HotRoutes", "json_answer"]

_PARAMETER = re.compile(r"\{(\w+)(?::(\w+))?\}")


class HotCall:
    """One request on the lean path: its Litestar ``Request`` (built once), path parameters and body.

    (A class with slots, not a frozen dataclass: one is made per request, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``.)"""

    __slots__ = ("_authorize", "body", "content_type", "params", "request")

    def __init__(
        self,
        request: Request[Any, Any, Any],
        params: Mapping[str, str],
        body: bytes,
        content_type: str,
        authorize: Callable[[Request[Any, Any, Any]], Awaitable[Principal]],
    ) -> None:
        self.request = request
        self.params = params
        self.body = body
        self.content_type = content_type  # the body's media type, lower case, no parameters ("": none)
        # What the app does before any handler: authenticate the caller, then count the route's rate
        # limit (``app_factory``'s hook). ``serve`` awaits ``caller`` once it has decided to answer,
        # before anything else with a side effect.
        self._authorize = authorize

    async def caller(self) -> Principal:
        return await self._authorize(self.request)


# An answer (an ASGI app, or a Litestar ``Response``), or None: "not mine", Litestar answers the request.
Serve = Callable[[HotCall], Awaitable[ASGIApp | Response[Any] | None]]


@dataclass(frozen=True)
class HotRoute:
    """``serve`` answering ``method`` requests of the Litestar route ``handler`` when they are plain."""

    method: str
    handler: HTTPRouteHandler
    serve: Serve


class _Compiled:
    __slots__ = ("handler", "pattern", "serve", "template")

    def __init__(self, route: HotRoute, path: str) -> None:
        self.handler = route.handler
        self.serve = route.serve
        self.template = _PARAMETER.sub(lambda m: "{" + m[1] + "}", path)  # what Litestar puts in scope
        self.pattern = re.compile(_path_regex(path))


def _path_regex(path: str) -> str:
    """The route's path as Litestar matches it: a parameter is one segment; a ``:path`` one is the rest of
    the path, the slash before it included (Litestar passes ``/a/b`` for ``/x/{p:path}``)."""
    regex = ""
    for piece in re.split(r"(/\{\w+(?::\w+)?\})", path):
        match = re.fullmatch(r"/\{(\w+)(?::(\w+))?\}", piece)
        if match is None:
            regex += re.escape(piece)
        elif match[2] == "path":
            regex += f"(?P<{match[1]}>/.*)"
        else:
            regex += f"/(?P<{match[1]}>[^/]+)"
    return regex


class HotRoutes:
    """ASGI middleware in front of Litestar's handler: the lean path for ``routes``, Litestar for the rest."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[HotRoute],
        *,
        max_body_bytes: int,
        authorize: Callable[[Request[Any, Any, Any]], Awaitable[Principal]],
    ) -> None:
        self._app = app
        self._max_body = max_body_bytes
        self._authorize = authorize
        self._routes: dict[str, list[_Compiled]] = {}
        self.served = 0  # requests answered on the lean path (the rest went to Litestar): for tests
        for route in routes:
            (path,) = route.handler.paths
            self._routes.setdefault(route.method, []).append(_Compiled(route, path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope.get("method", "")  # type: ignore[assignment]  # none on a WebSocket
        candidates = self._routes.get(method)
        if candidates and scope["type"] == ScopeType.HTTP:
            for route in candidates:
                match = route.pattern.fullmatch(scope["path"])
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self._app(scope, receive, send)

    async def _serve(
        self, route: _Compiled, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        length = 0
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"origin" or name == b"transfer-encoding":
                await self._app(scope, receive, send)  # CORS, and chunked bodies, are Litestar's
                return
            if name == b"content-length":
                length = int(value) if value.isdigit() else self._max_body + 1
            elif name == b"content-type":
                content_type = value.decode("latin-1").partition(";")[0].strip().lower()
        if length > self._max_body:
            await self._app(scope, receive, send)
            return
        body = await _read(receive) if length else b""
        replay = _replay(body, receive)
        scope["path_template"] = route.template
        scope["route_handler"] = route.handler
        scope["path_params"] = params
        request: Request[Any, Any, Any] = Request(scope, replay, send)
        try:
            answer = await route.serve(HotCall(request, params, body, content_type, self._authorize))
        except Exception as exc:
            handler = get_exception_handler(route.handler.resolve_exception_handlers(), exc)
            if handler is None:
                raise
            self.served += 1
            response = handler(request, exc)
            await response.to_asgi_response(None, request)(scope, replay, send)
            return
        if answer is None:
            await self._app(scope, _replay(body, receive), send)
            return
        self.served += 1
        if isinstance(answer, Response):
            await (_plain(answer) or answer.to_asgi_response(None, request))(scope, replay, send)
        else:
            await answer(scope, replay, send)


async def _read(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _plain(response: Response[Any]) -> ASGIApp | None:
    """The answer Litestar's ``to_asgi_response`` makes of a plain ``Response`` (bytes, not text, no
    cookies, no background task, a status with a body), without its header machinery; None for any
    other, which Litestar then converts itself."""
    content = response.content
    status = response.status_code or 200
    if (
        type(response) is not Response
        or not isinstance(content, bytes)
        or response.cookies
        or response.background is not None
        or status < 200
        or status in (204, 304)
    ):
        return None
    media_type = get_enum_string_value(response.media_type or MediaType.JSON)
    if media_type.startswith("text/"):
        return None
    headers = [
        (name.lower().encode("latin-1"), str(value).encode("latin-1"))
        for name, value in response.headers.items()
    ]
    present = {name for name, _ in headers}
    if b"content-type" not in present:
        headers.append((b"content-type", media_type.encode("latin-1")))
    if b"content-length" not in present:
        headers.append((b"content-length", str(len(content)).encode()))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    end: Message = {"type": "http.response.body", "body": content, "more_body": False}

    async def answer(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send(start)
        await send(end)

    return answer


def json_answer(body: bytes, status: int = 200) -> ASGIApp:
    """An ASGI answer of JSON ``body``, with the headers Litestar gives a Struct answer."""
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    end: Message = {"type": "http.response.body", "body": body, "more_body": False}

    async def answer(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send(start)
        await send(end)

    return answer
