"""``make dev``'s gateway: one origin in front of the service processes, routed as the chart routes them.

The route table is the chart's own (``deploy/helm/chat-management/files/routes.yaml``), matched with the
Gateway API's rules: Exact, then RegularExpression (full match, in table order), then the longest
PathPrefix (whole segments). So the page, its API calls, the socket and the images share one origin on a
laptop exactly as they do behind the cluster's ingress, and a route added to the chart is routed here too.

A small aiohttp reverse proxy: bodies stream both ways untouched (no decompression), redirects pass
through (the image proxy's 302 to a signed URL), WebSockets are relayed frame by frame with their close
codes. Run as ``python -m chat_devstack.gateway --port 8100 --upstream message=http://127.0.0.1:8102 ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["ROUTES_FILE", "Route", "create_app", "load_routes", "route_for"]

ROUTES_FILE = (
    Path(__file__).resolve().parents[4] / "deploy" / "helm" / "chat-management" / "files" / "routes.yaml"
)
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What a socket's upstream handshake carries over from the browser's (the token may be a cookie).
WEBSOCKET_HEADERS = ("authorization", "cookie", "origin", "user-agent")
CLOSED = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR})  # fmt: skip
_SESSION = web.AppKey("session", aiohttp.ClientSession)
_SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
SOCKET_HEARTBEAT_SECONDS = 30.0  # finds a browser that vanished without closing its socket


@dataclass(frozen=True)
class Route:
    component: str
    match_type: str  # Exact | RegularExpression | PathPrefix
    value: str
    websocket: bool = False


def load_routes(path: Path = ROUTES_FILE) -> list[Route]:
    """Every route of the table, the dev-only ones and those of optional services included."""
    table: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    return [
        Route(
            component=str(entry["component"]),
            match_type=str(entry["match"]["type"]),
            value=str(entry["match"]["value"]),
            websocket=bool(entry.get("websocket", False)),
        )
        for entry in table
    ]


def route_for(routes: Sequence[Route], path: str) -> Route | None:
    """The route the Gateway API would pick for ``path``, or None (the gateway answers 404)."""
    for route in routes:
        if route.match_type == "Exact" and path == route.value:
            return route
    for route in routes:
        if route.match_type == "RegularExpression" and re.fullmatch(route.value, path):
            return route
    prefixes = sorted(
        (r for r in routes if r.match_type == "PathPrefix"), key=lambda r: len(r.value), reverse=True
    )
    for route in prefixes:
        prefix = route.value.rstrip("/")
        if path == prefix or path.startswith(prefix + "/") or not prefix:
            return route
    return None


def _forwarded(request: web.Request) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (name, value) for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP
    )
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def create_app(routes: Sequence[Route], upstreams: Mapping[str, str]) -> web.Application:
    """``upstreams``: component -> base URL of the process serving it. A route to a component with no
    upstream (the chart's optional services, when not started) answers 502, like a gateway without
    endpoints."""
    missing = {r.component for r in routes} - set(upstreams)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        # No decompression: the services' gzip bodies and their ETags reach the browser as sent.
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app[_SESSION] = session
            yield

    async def proxy(request: web.Request) -> web.StreamResponse:
        route = route_for(routes, request.path)
        if route is None:
            return web.json_response(
                {"status": 404, "code": "not_found", "detail": f"no route for {request.path}"}, status=404
            )
        if route.component in missing:
            return web.json_response(
                {"status": 502, "code": "no_upstream", "detail": f"{route.component} is not running"},
                status=502,
            )
        upstream = upstreams[route.component].rstrip("/")
        session = request.app[_SESSION]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _relay_websocket(request, session, upstream)
        try:
            answer = await session.request(
                request.method,
                upstream + request.rel_url.path_qs,
                headers=_forwarded(request),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as exc:  # the process is down or restarting
            return web.json_response(
                {"status": 502, "code": "upstream_unreachable", "detail": f"{route.component}: {exc}"},
                status=502,
            )
        async with answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def close_sockets(app: web.Application) -> None:
        # Ctrl-C: sockets end with 1001 (going away) at once, and the page reconnects when it comes back.
        sockets: set[web.WebSocketResponse] = app[_SOCKETS]
        for socket in sockets.copy():
            await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"gateway stopping")

    app = web.Application(client_max_size=0)
    app[_SOCKETS] = set()
    app.cleanup_ctx.append(session_context)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _relay_websocket(
    request: web.Request, session: aiohttp.ClientSession, upstream: str
) -> web.StreamResponse:
    url = "ws" + upstream.removeprefix("http") + request.rel_url.path_qs
    headers = {name: request.headers[name] for name in WEBSOCKET_HEADERS if name in request.headers}
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream_socket = await session.ws_connect(url, headers=headers, protocols=offered, autoping=True)
    except aiohttp.WSServerHandshakeError as refused:
        # The service refused the handshake (a bad token): the browser sees the same status.
        return web.Response(status=refused.status, text=refused.message)
    async with upstream_socket:
        client = web.WebSocketResponse(
            protocols=[upstream_socket.protocol] if upstream_socket.protocol else [],
            autoping=True,
            heartbeat=SOCKET_HEARTBEAT_SECONDS,
        )
        await client.prepare(request)
        request.app[_SOCKETS].add(client)

        async def pump(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            while True:
                message = await source.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                elif message.type in CLOSED:
                    break
            # The close code and reason travel on: the service's own (4401 for a bad token, ...).
            reason = message.extra if message.type == aiohttp.WSMsgType.CLOSE else ""
            await sink.close(code=source.close_code or 1000, message=str(reason or "").encode()[:120])

        tasks = [
            asyncio.create_task(pump(upstream_socket, client)),
            asyncio.create_task(pump(client, upstream_socket)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            request.app[_SOCKETS].discard(client)
        return client


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="COMPONENT=URL",
        help="where a component's routes go (repeat for each)",
    )
    parser.add_argument("--routes", type=Path, default=ROUTES_FILE, help="the route table (the chart's)")
    args = parser.parse_args(argv)
    upstreams = dict(item.split("=", 1) for item in args.upstream)
    app = create_app(load_routes(args.routes), upstreams)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=3)


if __name__ == "__main__":
    main()
