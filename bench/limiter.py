"""The rate limiter's cost per request, in µs: the same route with and without its limit, side by side.

    uv run python -m bench.limiter [--requests 2000] [--redis-url redis://...]

One app (the shared app factory, so the real guard, auth and error handling) serves ``POST /unlimited``
and ``POST /limited`` (named limit ``sends``, set high enough never to refuse); both authenticate the
caller, so what differs is the limit alone. Two ways in, one request at a time:

* **in-process**: straight into the ASGI app, no network. The unlimited route then never waits on I/O,
  so with Redis the difference also holds the event loop's turn that the round trip costs;
* **over HTTP**: uvicorn (httptools) and a keep-alive httpx client in one process: both routes wait on
  sockets, as in production, so the difference is what a client sees the limit add.

For ``LIMIT_STORE=memory`` and ``LIMIT_STORE=redis`` (a local redis-server, or ``--redis-url``/
``REDIS_URL``); ``hit()`` alone is timed too. Best of 5 alternating runs (the machine is shared:
the best run is the one least disturbed); compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import httpx
import uvicorn
from litestar import post
from litestar.di import NamedDependency

import chat_devstack as devstack
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.auth import Principal, mint_token
from chat_core.composition import Composition
from chat_core.ratelimit import RATE_LIMIT_OPT
from chat_core.settings import load_settings

SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105 - a throwaway dev secret
NEVER_REFUSES = "1000000/second"  # the window stays short, so its per-key list stays short


# Both routes authenticate the caller, as every limited route does: the difference is the limit alone.
@post("/unlimited", status_code=200)
async def unlimited(principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"user": principal.user_id}


@post("/limited", status_code=200, opt={RATE_LIMIT_OPT: "sends"})
async def limited(principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"user": principal.user_id}


class Caller(Protocol):
    async def call(self, path: str) -> int: ...


class HttpCaller:
    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def call(self, path: str) -> int:
        return (await self.http.post(path, content=b"{}", headers=self.headers)).status_code


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    port = devstack.free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise SystemExit("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class AsgiCaller:
    """Calls an ASGI app in-process with a prepared request; checks the status."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.headers = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
        ]

    async def call(self, path: str) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        return status


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: Any) -> None:
        await outbox.put(dict(message))

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


async def per_request_us(caller: Caller, path: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        status = await caller.call(path)
        if status != 200:
            raise SystemExit(f"{path} answered {status}")
    return (time.perf_counter() - started) / requests * 1e6


async def side_by_side(caller: Caller, requests: int, repeats: int = 5) -> tuple[float, float]:
    """Best of runs taken in turn (without, with, without, ...), so load on the machine hits both."""
    for path in ("/unlimited", "/limited"):
        await per_request_us(caller, path, min(requests, 500))  # warm-up
    without, with_limit = [], []
    for _ in range(repeats):
        without.append(await per_request_us(caller, "/unlimited", requests))
        with_limit.append(await per_request_us(caller, "/limited", requests))
    return min(without), min(with_limit)


async def hit_us(backends: Composition, requests: int, repeats: int = 5) -> float:
    limiter = backends.rate_limiter
    subject = f"user:bench-{uuid.uuid4().hex[:8]}"
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(requests):
            await limiter.hit("sends", subject)
        runs.append((time.perf_counter() - started) / requests * 1e6)
    return min(runs)


def bench_app(store: str, redis_url: str) -> tuple[Any, Composition]:
    env = {
        "AUTH_JWT_SECRET": SECRET,
        "LIMIT_STORE": store,
        "REDIS_URL": redis_url,
        "RATE_LIMIT_SENDS": NEVER_REFUSES,
        "ACCESS_LOG": "false",
        "CORS_ALLOW_ORIGINS": "",
    }
    settings = load_settings(env)
    backends = Composition(settings)
    parts = ServiceParts(component="bench", route_handlers=[unlimited, limited])
    return create_service_app(settings, backends, [parts], component="bench", title="limiter bench"), backends


async def measure(store: str, redis_url: str, requests: int) -> dict[str, float]:
    token = mint_token(SECRET, f"bench-{uuid.uuid4().hex[:8]}")
    app, backends = bench_app(store, redis_url)
    async with lifespan(app):
        without, with_limit = await side_by_side(AsgiCaller(app, token), requests)
        hit = await hit_us(backends, requests)
    app, _ = bench_app(store, redis_url)
    async with uvicorn_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        http_without, http_with = await side_by_side(HttpCaller(http, token), requests)
    return {
        "without": without,
        "with": with_limit,
        "http_without": http_without,
        "http_with": http_with,
        "hit": hit,
    }


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    redis = devstack.start_local_redis()
    try:
        yield redis.address
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 requests")
    args = parser.parse_args()
    if args.quick:
        args.requests = 100
    rows = []
    with redis_server(args.redis_url or None) as redis_url:
        for store in ("memory", "redis"):
            rows.append((store, asyncio.run(measure(store, redis_url, args.requests))))
    print(f"\nrate limiter cost per request, µs ({args.requests} sequential requests, best of 5 runs)")
    print(f"  {'':<12} {'in-process':^29} {'over HTTP (uvicorn)':^29}")
    header = f"{'without':>9} {'with':>9} {'cost':>9}"
    print(f"  {'LIMIT_STORE':<12} {header} {header} {'hit() alone':>12}")
    for store, m in rows:
        print(
            f"  {store:<12} {m['without']:>9.1f} {m['with']:>9.1f} {m['with'] - m['without']:>9.1f}"
            f" {m['http_without']:>9.1f} {m['http_with']:>9.1f} {m['http_with'] - m['http_without']:>9.1f}"
            f" {m['hit']:>12.1f}"
        )


if __name__ == "__main__":
    main()
