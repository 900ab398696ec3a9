"""CORS for routes that hand out credentials: only to origins named in ``CORS_ALLOW_ORIGINS``, never ``*``.

The API's CORS may allow any origin (``*``, the default): a bearer token is needed to use it, and a page on
another origin has none. A route that *mints* a token (``POST /dev/token`` with ``DEV_LOGIN``) is another
matter: with ``Access-Control-Allow-Origin: *`` any page a developer visits while ``make run`` is up could
read a token for any user. Its handler says so with ``opt={CREDENTIAL_ROUTE_OPT: True}``, and
``CredentialRouteCors`` answers CORS for its path itself: the origin is allowed only when listed by name, and
the app's own CORS never sees the request's ``Origin`` (so it cannot add its ``*``). The web client calls
it from its own origin, where no CORS is involved.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CREDENTIAL_ROUTE_OPT", "CredentialRouteCors", "credential_paths"]

CREDENTIAL_ROUTE_OPT = "credential_route"
_MAX_AGE = b"600"


def credential_paths(route_handlers: Iterable[Any]) -> frozenset[str]:
    """The paths of the handlers marked with ``CREDENTIAL_ROUTE_OPT``."""
    return frozenset(
        path
        for handler in route_handlers
        if (getattr(handler, "opt", None) or {}).get(CREDENTIAL_ROUTE_OPT)
        for path in handler.paths
    )


class CredentialRouteCors:
    """ASGI middleware: CORS of the credential routes, explicit origins only."""

    def __init__(self, app: ASGIApp, *, paths: Collection[str], allowed_origins: Iterable[str]) -> None:
        self._app = app
        self._paths = frozenset(paths)
        self._origins = frozenset(origin for origin in allowed_origins if origin != "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] not in self._paths:
            await self._app(scope, receive, send)
            return
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is None:
            await self._app(scope, receive, send)
            return
        scope = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"origin"]}
        if origin.decode("latin-1") not in self._origins:
            await self._app(scope, receive, send)  # answered without any CORS header: the browser refuses
            return
        preflight = scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        )
        allowed = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if preflight:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *allowed,
                        (b"access-control-allow-methods", b"POST"),
                        (b"access-control-allow-headers", b"Content-Type"),
                        (b"access-control-max-age", _MAX_AGE),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def send_allowed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allowed]}
            await send(message)

        await self._app(scope, receive, send_allowed)
