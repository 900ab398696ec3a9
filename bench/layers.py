"""CPU µs per request of each layer of the hot routes, beside the whole route and a bare route of its shape.

    uv run python -m bench.layers [--requests 2000] [--stacks embedded,cloud]

How: **each layer timed in isolation, in-process**, with the very objects the service uses. The
all-in-one app (``chat_management.all``, so the real wiring) is built in this process with the
embedded adapters or the cloud ones (Redis, LocalStack, the Firestore emulator), a conversation is created
and an image uploaded, sent and processed through it, then:

* the whole route (``POST .../images/upload_url``, the proxy's 302) and the bare route of its shape
  (``bench/bare_app.py``) are called straight through ASGI, one request at a time, no network;
* each layer's own call is repeated alone: auth (the cached JWT verification, and an uncached one for
  scale), membership (the cache's ``require``), the rate limiter's ``hit``, the quota's
  ``reserve_upload``, presigning, the proxy's audit line, and the observability wrapper around an ASGI
  app that answers at once (split into metrics, tracing and the access log by switching each off), plus
  our other ASGI wrappers (the request deadline and the JSON guard).

Every figure is **CPU time of the event loop's thread** (``time.thread_time``) per call, best of ``--repeats``
runs: what a layer costs the pod's core. A Redis round trip's wait is not CPU and is not counted (the
wall time is printed beside it). A layer timed alone runs with warm caches; inside a route it costs more,
so the wrappers are also measured **in the route**: the real app with its access log, then its whole
observability wrapper, then the request deadline taken off in turn ("in the route: ..." rows), down to
the handler and its layers on the lean path (``chat_core.hot_routes``; the JSON guard is behind it).
"The rest" (the route minus the layers timed alone minus the bare route) is mostly our own layers' extra
cost in the route, not the framework's: with the upload service's answer stubbed, the route through
Litestar (hook, auth, limiter, dependency, response) cost 43 µs against the bare shape's 34 (2026-12-07,
before the lean path). The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import chat_devstack as devstack
from bench import bare_app, guard, results
from bench.guard import NEVER_REFUSING_LIMITS
from bench.http import SECRET, jpeg
from chat_core import metrics, observability
from chat_core.auth import HS256Verifier, mint_token
from chat_core.composition import Composition
from chat_core.deadline import DeadlineMiddleware
from chat_core.json_guard import JsonGuard
from chat_core.logging import configure_logging
from chat_core.settings import Settings, load_settings

BASE = "http://127.0.0.1:9"  # PUBLIC_BASE_URL: never dialled, the client routes it into the app
USER = "alice"


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


class Caller:
    """One prepared request, straight into an ASGI app; checks the status of every answer."""

    def __init__(self, app: Any, method: str, path: str, *, token: str = "", body: bytes = b"") -> None:
        self.app = app
        self.method = method
        self.path = path
        self.body = body
        # No ``Origin``: what a phone's client and ``bench.http``'s wrk send. (A browser's cross-origin
        # request carries one and is answered by Litestar, not the hot routes' lean path.)
        self.headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
        if token:
            self.headers.append((b"authorization", f"Bearer {token}".encode()))
        if body:
            self.headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]

    async def __call__(self) -> int:
        status = 0
        sent = False
        body = self.body

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(_scope(self.method, self.path, list(self.headers)), receive, send)
        return status


@dataclass
class Timing:
    cpu_us: float
    wall_us: float


async def timed(call: Callable[[], Awaitable[Any]], requests: int, repeats: int) -> Timing:
    """Best of ``repeats`` runs of ``requests`` sequential calls: CPU and wall µs per call."""
    for _ in range(min(requests, 200)):
        await call()  # warm-up: caches filled, code paths taken once
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started = time.thread_time(), time.perf_counter()
        for _ in range(requests):
            await call()
        cpu.append((time.thread_time() - started_cpu) / requests * 1e6)
        wall.append((time.perf_counter() - started) / requests * 1e6)
    return Timing(min(cpu), min(wall))


def expect(status: int, call: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    async def checked() -> int:
        got = await call()
        if got != status:
            raise guard.BenchFailure(f"in-process request answered {got}, not {status}")
        return got

    return checked


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
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise guard.BenchFailure(f"the app did not start: {started}")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


@contextlib.contextmanager
def stack_env(name: str, workdir: Path) -> Iterator[dict[str, str]]:
    common = {
        "AUTH_JWT_SECRET": SECRET,
        "PUBLIC_BASE_URL": BASE,
        "DATA_DIR": str(workdir / "data"),
        "SQS_WAIT_SECONDS": "1",  # the setup app's consumers stop within a second
        "REQUEST_TIMEOUT_SECONDS": "60",  # a shared emulator can be slow to answer the setup's writes
        **NEVER_REFUSING_LIMITS,
    }
    if name == "embedded":
        yield {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FIRESTORE_", "REDIS_"))},
            **common,
        }
        return
    with devstack.local_backends() as (redis, localstack, firestore):
        suffix = f"layers{uuid.uuid4().hex[:6]}"
        stack = devstack.Stack(
            redis_url=redis.address,
            aws_endpoint_url=localstack.address,
            firestore_host=firestore.address,
            workdir=workdir / "cloud",
            extra_env=common,
            suffix=suffix,
        )
        env = stack.env()
        subprocess.run(
            [sys.executable, "-m", "chat_management", "setup"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield env


class Route:
    """A conversation with a sent, processed image, reached through the in-process app."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.AsyncClient(
            mounts={BASE: httpx.ASGITransport(app=app)}, timeout=30, follow_redirects=False
        )
        self.conversation_id = ""
        self.object_key = ""
        self.file_path = ""

    async def prepare(self) -> None:
        created = await self.http.post(
            f"{BASE}/conversations", json={"participantIds": ["bob"], "name": "layers"}, headers=self.headers
        )
        if created.status_code != 201:
            raise guard.BenchFailure(
                f"creating the conversation answered {created.status_code}: {created.text}"
            )
        self.conversation_id = created.json()["conversationId"]
        grant = await self.http.post(
            f"{BASE}{self.upload_path}", json={"content_type": "image/jpeg"}, headers=self.headers
        )
        grant.raise_for_status()
        body = grant.json()
        put = await self.http.put(body["upload_url"], content=jpeg(1), headers={"Content-Type": "image/jpeg"})
        put.raise_for_status()
        sent = await self.http.post(
            f"{BASE}/conversations/{self.conversation_id}/messages",
            json={
                "messageType": "image",
                "metadata": {"object_key": body["object_key"], "content_type": "image/jpeg"},
            },
            headers=self.headers,
        )
        if sent.status_code != 201:
            raise guard.BenchFailure(f"the image send answered {sent.status_code}: {sent.text}")
        self.object_key = body["object_key"]
        self.file_path = body["file_url"].removeprefix(BASE)
        deadline = time.monotonic() + 240  # a shared machine can take minutes to start the media workers
        while True:
            answer = await self.http.get(f"{BASE}{self.file_path}", headers=self.headers)
            if answer.status_code == 302:
                return
            if answer.status_code not in (404, 503) or time.monotonic() > deadline:
                raise guard.BenchFailure(f"the sent image is not ready: {answer.status_code} {answer.text}")
            await asyncio.sleep(0.2)

    @property
    def upload_path(self) -> str:
        return f"/conversations/{self.conversation_id}/images/upload_url"

    async def close(self) -> None:
        await self.http.aclose()


async def _answer_at_once(_scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _wrapped(app: Any, settings: Settings, *, access_log: bool) -> Any:
    return observability.ObservabilityMiddleware(
        DeadlineMiddleware(JsonGuard(app), seconds=settings.service.request_timeout_seconds),
        component="bench",
        access_log=access_log,
    )


async def measure_stack(name: str, workdir: Path, requests: int, repeats: int) -> list[dict[str, Any]]:
    import media_processor.pool
    from chat_management import all as all_in_one

    # A busy shared machine can take over a minute to start an image worker (a process importing libvips):
    # the setup's one image must not fail on that.
    media_processor.pool._START_TIMEOUT_SECONDS = 300
    with stack_env(name, workdir) as env:
        settings = load_settings(env)
        # As `serve` does (JSON lines, the access log on), to one file for the run: structlog keeps the
        # stream of its first line per logger, so it is opened once and never closed.
        configure_logging(settings.service.log_level, service="all", stream=_log_stream(workdir))
        token = mint_token(SECRET, USER)
        # The image is sent and processed by the whole stack (its workers: the relay, the media processor)...
        full = all_in_one.create_app(settings, Composition(settings))
        async with lifespan(full):
            route = Route(full, token)
            try:
                await route.prepare()
            finally:
                await route.close()
        # ... and measured on the two services of the hot routes alone (as their pods run them), so no
        # background worker of another service takes this thread's CPU between requests.
        backends = Composition(settings)
        app = all_in_one.create_combined_app(["upload", "image-proxy"], settings, backends)
        bare = bare_app.create_app(settings)
        async with lifespan(app), lifespan(bare):
            errors_before = _store_errors()
            rows = await _measure(name, settings, backends, app, bare, route, token, requests, repeats)
            if (failed := _store_errors() - errors_before) > 0:
                raise guard.BenchFailure(
                    f"layers ({name}): the limit store failed {failed:.0f} times (timeouts?): the figures "
                    "would measure failing open, not the checks"
                )
    return rows


def _log_stream(workdir: Path, streams: dict[Path, Any] = {}) -> Any:  # noqa: B006 - one per run
    if workdir not in streams:
        streams[workdir] = (workdir / "layers.log").open("ab")
    return streams[workdir]


def _store_errors() -> float:
    """Limit checks that failed open so far (``chat_rate_limit_errors_total``, every check)."""
    return sum(
        sample.value
        for family in metrics.RATE_LIMIT_ERRORS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def _measure(
    stack: str,
    settings: Settings,
    backends: Composition,
    app: Any,
    bare: Any,
    route: Route,
    token: str,
    requests: int,
    repeats: int,
) -> list[dict[str, Any]]:
    cid = route.conversation_id
    body = b'{"content_type": "image/jpeg"}'
    membership = backends.membership
    store = backends.object_store
    stored = f"{cid}/{route.object_key}"
    subject = f"user:{USER}"
    window = settings.images.proxy_url_window_seconds
    counter = iter(range(10**9))
    uncached = HS256Verifier(SECRET)

    async def reserve() -> None:
        await backends.quotas.reserve_upload(
            USER, f"{stored}-{next(counter)}", expires_at=time.time() + 600, declared_bytes=None
        )

    async def presign_put() -> None:
        store.presign_put(stored, content_type="image/jpeg", content_length=None, expires_in=300)

    async def presign_get() -> None:
        start = int(time.time() // window) * window
        store.presign_get(
            stored,
            expires_in=2 * window,
            signed_at=dt.datetime.fromtimestamp(start, dt.UTC),
            response_headers={"Cache-Control": "private, max-age=31536000, immutable"},
        )

    async def audit_line() -> None:
        from chat_core.audit import audit

        audit(
            "image_access", decision="allowed", reason="redirect", status=302, user_id=USER,
            conversation_id=cid, object_key=route.object_key, client_ip="127.0.0.1", user_agent="bench",
            mode="redirect", via="token",
        )  # fmt: skip

    plain = Caller(_answer_at_once, "GET", "/images/x/y")
    bare_wrappers = Caller(
        DeadlineMiddleware(JsonGuard(_answer_at_once), seconds=settings.service.request_timeout_seconds),
        "GET",
        "/images/x/y",
    )
    quiet = Caller(_wrapped(_answer_at_once, settings, access_log=False), "GET", "/images/x/y")
    logged = Caller(_wrapped(_answer_at_once, settings, access_log=True), "GET", "/images/x/y")
    middleware = observability.ObservabilityMiddleware(_answer_at_once, component="bench", access_log=False)

    async def metrics_only() -> None:
        middleware._observe("/images/{conversation_id:str}/{object_key:path}", "GET", 302, 0.001)

    print(f"measuring layers: {stack} ...", file=sys.stderr, flush=True)
    n, r = requests, repeats
    t: dict[str, Timing] = {}
    t["upload_url"] = await timed(
        expect(200, Caller(app, "POST", route.upload_path, token=token, body=body)), n, r
    )
    t["bare_upload"] = await timed(
        expect(200, Caller(bare, "POST", "/conversations/c1/images/upload_url", body=body)), n, r
    )
    t["proxy"] = await timed(expect(302, Caller(app, "GET", route.file_path, token=token)), n, r)
    t["bare_proxy"] = await timed(expect(302, Caller(bare, "GET", "/images/c1/alice/0123456789abcdef")), n, r)
    t["bare_get"] = await timed(expect(200, Caller(bare, "GET", "/bare")), n, r)
    t["auth"] = await timed(lambda: backends.verifier.verify(token), n, r)
    t["auth_uncached"] = await timed(lambda: uncached.verify(token), n, r)
    t["membership"] = await timed(lambda: membership.require(cid, USER), n, r)
    t["limiter"] = await timed(lambda: backends.rate_limiter.hit("upload_urls", subject), n, r)
    t["quota"] = await timed(reserve, n, r)
    t["presign_put"] = await timed(presign_put, n, r)
    t["presign_get"] = await timed(presign_get, n, r)
    t["audit"] = await timed(audit_line, n, r)
    t["asgi_floor"] = await timed(plain, n, r)
    t["wrappers"] = await timed(bare_wrappers, n, r)
    t["observability_quiet"] = await timed(quiet, n, r)
    t["observability"] = await timed(logged, n, r)
    t["metrics"] = await timed(metrics_only, n, r)

    # The same layers measured in the route (each wrapper peeled off the real app in turn): a layer timed
    # alone runs with warm caches, inside a route it shares them with everything else, and costs more.
    for name, variant in _peeled(app, settings).items():
        t[f"upload_url {name}"] = await timed(
            expect(200, Caller(variant, "POST", route.upload_path, token=token, body=body)), n, r
        )
        t[f"proxy {name}"] = await timed(
            expect(302, Caller(variant, "GET", route.file_path, token=token)), n, r
        )

    if PROFILE_TOP:
        await _profile(
            f"{stack} POST upload_url", Caller(app, "POST", route.upload_path, token=token, body=body), n
        )
        await _profile(f"{stack} proxy 302", Caller(app, "GET", route.file_path, token=token), n)

    def cpu(key: str) -> float:
        return t[key].cpu_us

    wrappers = cpu("wrappers") - cpu("asgi_floor")
    observability_total = cpu("observability") - cpu("wrappers")
    access_log = cpu("observability") - cpu("observability_quiet")
    tracing_and_rest = observability_total - access_log - cpu("metrics")
    common = {
        "auth (JWT, cached verify)": cpu("auth"),
        "membership (cached)": cpu("membership"),
        "observability: metrics": cpu("metrics"),
        "observability: span and context": tracing_and_rest,
        "observability: access log line": access_log,
        "deadline + JSON guard": wrappers,
    }
    upload_layers = {
        **common,
        "rate limiter (hit)": cpu("limiter"),
        "quota (reserve)": cpu("quota"),
        "presign PUT": cpu("presign_put"),
    }
    proxy_layers = {**common, "audit line": cpu("audit"), "presign GET": cpu("presign_get")}
    rows: list[dict[str, Any]] = []
    for route_name, key in (("POST upload_url", "upload_url"), ("proxy 302", "proxy")):
        in_route = {
            "in the route: access log line": cpu(key) - cpu(f"{key} no access log"),
            "in the route: span, metrics, context": cpu(f"{key} no access log")
            - cpu(f"{key} no observability"),
            "in the route: request deadline": cpu(f"{key} no observability") - cpu(f"{key} no deadline"),
            "in the route: the handler and its layers (lean path)": cpu(f"{key} no deadline"),
        }
        rows += [
            {"stack": stack, "route": route_name, "layer": layer, "cpu_us": round(value, 1)}
            for layer, value in in_route.items()
        ]
    for route_name, total, bare_key, layers in (
        ("POST upload_url", cpu("upload_url"), "bare_upload", upload_layers),
        ("proxy 302", cpu("proxy"), "bare_proxy", proxy_layers),
    ):
        explained = sum(layers.values())
        framework = total - explained - cpu(bare_key)
        for layer, value in layers.items():
            rows.append({"stack": stack, "route": route_name, "layer": layer, "cpu_us": round(value, 1)})
        rows += [
            {"stack": stack, "route": route_name, "layer": "our layers, sum", "cpu_us": round(explained, 1)},
            {
                "stack": stack,
                "route": route_name,
                "layer": "framework beyond the bare route (rest)",
                "cpu_us": round(framework, 1),
            },
            {
                "stack": stack,
                "route": route_name,
                "layer": "bare route, same shape",
                "cpu_us": round(cpu(bare_key), 1),
            },
            {
                "stack": stack,
                "route": route_name,
                "layer": "whole route (in-process)",
                "cpu_us": round(total, 1),
                "wall_us": round(t["upload_url" if route_name == "POST upload_url" else "proxy"].wall_us, 1),
                "ratio_vs_bare_cpu": round(cpu(bare_key) / total, 3),
            },
        ]
    rows.append(
        {"stack": stack, "route": "-", "layer": "bare GET /bare", "cpu_us": round(cpu("bare_get"), 1)}
    )
    rows.append(
        {
            "stack": stack,
            "route": "-",
            "layer": "auth, uncached verify (HS256)",
            "cpu_us": round(cpu("auth_uncached"), 1),
        }
    )
    for key in ("limiter", "quota", "membership"):
        rows.append(
            {"stack": stack, "route": "-", "layer": f"{key} wall µs", "cpu_us": round(t[key].cpu_us, 1),
             "wall_us": round(t[key].wall_us, 1)}
        )  # fmt: skip
    return rows


def _peeled(app: Any, settings: Settings) -> dict[str, Any]:
    """The real app with its wrappers taken off one at a time (``create_service_app`` builds
    observability(deadline(lean path(JSON guard(Litestar's handler))))): each difference is a wrapper's
    cost in the route."""
    deadline = app.asgi_handler.app
    inner = deadline._app  # the lean path of the hot routes (which skips the JSON guard for them)

    def entered(handler: Any) -> Any:
        async def call(scope: Any, receive: Any, send: Any) -> None:
            scope["app"] = scope["litestar_app"] = app  # what ``Litestar.__call__`` sets before its handler
            await handler(scope, receive, send)

        return call

    return {
        "no access log": entered(
            observability.ObservabilityMiddleware(deadline, component="bench", access_log=False)
        ),
        "no observability": entered(deadline),
        "no deadline": entered(inner),
    }


PROFILE_TOP = 0  # --profile N: also print the N functions with the most own time per route (cProfile)


async def _profile(name: str, call: Caller, requests: int) -> None:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        await call()
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    print(f"\n--- cProfile, {name}, {requests} requests (own time; profiling inflates small calls)")
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


def print_table(rows: list[dict[str, Any]], stacks: list[str]) -> None:
    print("\nCPU µs per request by layer (in-process, each layer timed alone; best of runs)")
    for route_name in ("POST upload_url", "proxy 302", "-"):
        print(f"\n  {route_name if route_name != '-' else 'for scale'}")
        print(f"    {'layer':<42}" + "".join(f"{s:>12}" for s in stacks))
        layers = list(dict.fromkeys(r["layer"] for r in rows if r["route"] == route_name))
        for layer in layers:
            cells = []
            for stack in stacks:
                match = [
                    r
                    for r in rows
                    if r["route"] == route_name and r["layer"] == layer and r["stack"] == stack
                ]
                cells.append(f"{match[0]['cpu_us']:>12.1f}" if match else f"{'-':>12}")
            print(f"    {layer:<42}" + "".join(cells))
    for stack in stacks:
        for r in rows:
            if r["stack"] == stack and r["layer"] == "whole route (in-process)":
                print(
                    f"  {stack}: {r['route']} costs {r['cpu_us']:.0f} µs CPU; its bare shape "
                    f"{r['ratio_vs_bare_cpu']:.0%} of that (in-process, no server)"
                )


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stacks", default="embedded,cloud")
    parser.add_argument("--quick", action="store_true", help="a smoke run: embedded, 100 requests")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print each route's top N functions"
    )
    args = parser.parse_args()
    global PROFILE_TOP
    PROFILE_TOP = args.profile
    if args.quick:
        args.requests, args.repeats, args.stacks = 100, 1, "embedded"
    stacks = args.stacks.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="chat-layers-"))
    rows: list[dict[str, Any]] = []
    for name in stacks:
        measured = asyncio.run(measure_stack(name, workdir, args.requests, args.repeats))
        for row in measured:
            results.record("layers", row, key=("stack", "route", "layer"))
        rows += measured
    print_table(rows, stacks)
    print(f"(logs in {workdir})")


if __name__ == "__main__":
    main()
