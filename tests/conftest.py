"""Shared fixtures: real backends (session scope, started on first use), settings and app clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar

from chat_core.auth import mint_token
from chat_core.settings import Settings, load_settings
from chat_core.websocket_server import LeanWebSocketProtocol
from tests import harness

TEST_SECRET = "test-secret-0123456789abcdef-0123456789"
SESSION_ID = uuid.uuid4().hex[:8]
REQUIRED_BACKENDS = {name for name in os.environ.get("CHAT_REQUIRE_BACKENDS", "").split(",") if name}
BACKEND_FIXTURES = {
    "redis_backend": "redis",
    "redis_cluster": "redis",
    "localstack": "localstack",
    "firestore_emulator": "firestore",
}


class BackendRegistry:
    """Starts each backend at most once per session and remembers how (or why not)."""

    def __init__(self) -> None:
        self.running: dict[str, harness.Backend] = {}
        self.unavailable: dict[str, str] = {}

    def require(self, name: str) -> harness.Backend:
        if name in self.running:
            return self.running[name]
        if name not in self.unavailable:
            try:
                self.running[name] = harness.FACTORIES[name]()
            except Exception as exc:
                self.unavailable[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                harness.loud(
                    f"BACKEND {name} UNAVAILABLE ({self.unavailable[name]}): tests marked '{name}' skip"
                )
        if name in self.unavailable:
            if name in REQUIRED_BACKENDS or name.partition("-")[0] in REQUIRED_BACKENDS:
                pytest.fail(
                    f"{name} is required (CHAT_REQUIRE_BACKENDS) but unavailable: {self.unavailable[name]}"
                )
            pytest.skip(f"{name} unavailable: {self.unavailable[name]}")
        return self.running[name]

    def stop_all(self) -> None:
        for backend in self.running.values():
            backend.stop()


_registry = BackendRegistry()


def skip_unless_required(backend: str, reason: str) -> None:
    """Skip a test for want of ``backend``, or fail it when ``CHAT_REQUIRE_BACKENDS`` names the backend."""
    if backend in REQUIRED_BACKENDS:
        pytest.fail(f"{backend} is required (CHAT_REQUIRE_BACKENDS) but unavailable: {reason}")
    pytest.skip(f"{backend} unavailable: {reason}")


# --- one set of backends for every pytest-xdist worker ----------------------------------------------
# Under ``-n N`` the controller starts Redis, LocalStack and the Firestore emulator once (in parallel) and
# hands their addresses to the workers through the same env vars a developer would set. Each worker still
# isolates its data (its own SESSION_ID: key prefixes, bucket and queue names, a Firestore project). The
# Redis Cluster stays per worker: a test restarts its nodes.
SHARED_ACROSS_WORKERS = {
    "redis": "REDIS_URL",
    "localstack": "AWS_ENDPOINT_URL",
    "firestore": "FIRESTORE_EMULATOR_HOST",
}
_shared: dict[str, harness.Backend] = {}
_shared_unavailable: dict[str, str] = {}


def _is_xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if not _is_xdist_controller(config):
        return
    wanted = [name for name, var in SHARED_ACROSS_WORKERS.items() if not os.environ.get(var)]

    def start(name: str) -> None:
        try:
            _shared[name] = harness.FACTORIES[name]()
        except Exception as exc:
            _shared_unavailable[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]

    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        list(pool.map(start, wanted))
    for name, backend in _shared.items():
        os.environ[SHARED_ACROSS_WORKERS[name]] = backend.address  # inherited by the workers


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_xdist_controller(config):
        for backend in _shared.values():
            backend.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that uses a backend fixture carries that backend's marker, so `-m "not firestore"` works.
    for item in items:
        for fixture, marker in BACKEND_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (_registry.running or _registry.unavailable or _shared or _shared_unavailable):
        return
    terminalreporter.write_sep("=", "backends used by this run")
    for name, reason in _shared_unavailable.items():
        terminalreporter.write_line(
            f"!!! {name}: could not be started once for the workers ({reason}); each worker tried again",
            red=True,
            bold=True,
        )
    for backend in [*_shared.values(), *_registry.running.values()]:
        terminalreporter.write_line(backend.describe())
    for name, reason in _registry.unavailable.items():
        terminalreporter.write_line(
            f"!!! {name}: UNAVAILABLE ({reason}); tests marked '{name}' were skipped", red=True, bold=True
        )


@pytest.fixture(scope="session")
def backend_registry() -> Iterator[BackendRegistry]:
    yield _registry
    _registry.stop_all()


@pytest.fixture(scope="session")
def redis_backend(backend_registry: BackendRegistry) -> harness.Backend:
    return backend_registry.require("redis")


@pytest.fixture(scope="session")
def redis_cluster(backend_registry: BackendRegistry) -> harness.Backend:
    """A Redis Cluster (3 primaries, 3 replicas) for the session (``REDIS_CLUSTER_URL``: your own)."""
    return backend_registry.require("redis-cluster")


@pytest.fixture(scope="session")
def localstack(backend_registry: BackendRegistry) -> harness.Backend:
    return backend_registry.require("localstack")


@pytest.fixture(scope="session")
def firestore_emulator(backend_registry: BackendRegistry) -> harness.Backend:
    return backend_registry.require("firestore")


@pytest.fixture
def firestore_project(firestore_emulator: harness.Backend) -> str:
    """A Firestore project of this session, emptied before each test."""
    project = f"test-{SESSION_ID}"
    harness.reset_firestore(firestore_emulator.address, project)
    return project


@pytest.fixture
def private_redis() -> Iterator[harness.Backend]:
    """A redis-server of this test alone, which the test may stop and start (outage tests)."""
    try:
        backend = harness.start_local_redis()
    except RuntimeError as exc:
        skip_unless_required("redis", str(exc))
    yield backend
    backend.stop()


@pytest.fixture
def private_redis_cluster() -> Iterator[harness.Backend]:
    """A Redis Cluster (3 primaries, 3 replicas) of this test alone, which it may stop and start (outages)."""
    try:
        backend = harness.start_local_redis_cluster(3)
    except RuntimeError as exc:
        skip_unless_required("redis", str(exc))
    yield backend
    backend.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{SESSION_ID}-{uuid.uuid4().hex[:6]}"


def make_settings(data_dir: Path | str, env: Mapping[str, str] | None = None) -> Settings:
    """Settings as a service would read them from this environment (plus test defaults)."""
    base = {
        "AUTH_JWT_SECRET": TEST_SECRET,
        "DATA_DIR": str(data_dir),
        "ACCESS_LOG": "false",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "MEDIA_WORKERS": "1",  # one image worker process per app: the machine is shared
    }
    return load_settings({**base, **(env or {})})


def token_for(user_id: str, **kwargs: Any) -> str:
    return mint_token(TEST_SECRET, user_id, **kwargs)


def auth_header(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user_id)}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-adapter settings with a private data dir."""
    return make_settings(tmp_path)


@contextlib.asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan (start-up before, shutdown after) in the current event loop."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await to_app.get()

    async def send(message: Any) -> None:
        await from_app.put(dict(message))

    asgi: Any = app
    task = asyncio.create_task(
        asgi({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    )
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        task.cancel()
        raise RuntimeError(f"app start-up failed: {started.get('message')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """``await client_for(app)`` -> an httpx client talking to the app, whose lifespan has run.

    The app runs in the test's own event loop (Litestar's AsyncTestClient runs it in a thread of its own
    and serialises requests), so tests can share loop-bound clients with it and send truly concurrent
    requests.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def open_client(app: Litestar, base_url: str = "http://testserver.local") -> httpx.AsyncClient:
            await stack.enter_async_context(running(app))
            asgi: Any = app
            transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 50000))
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=base_url))

        yield open_client


@contextlib.asynccontextmanager
async def _uvicorn_servers() -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Litestar, port: int | None = None, ws: Any = LeanWebSocketProtocol) -> str:
        port = port or harness.free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws=ws,  # by default as the services run (chat_core.server.uvicorn_options)
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        servers.append((server, task))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server, task in reversed(servers):
            server.should_exit = True
            await task


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """``await serve(app)`` -> base URL of a real uvicorn server (HTTP and WebSocket) on a free port.

    ``serve(app, port)`` takes a port chosen beforehand, for apps that must know their own URL
    (``PUBLIC_BASE_URL``: the local object store's signed links point at it); ``ws`` another WebSocket
    protocol than the services' (``"websockets-sansio"``: uvicorn's own, plain ASGI sends).
    """
    async with _uvicorn_servers() as start:
        yield start


@pytest.fixture(scope="module")
async def serve_module() -> AsyncIterator[Any]:
    """``serve`` for module-scoped fixtures (servers shared by a module's tests)."""
    async with _uvicorn_servers() as start:
        yield start
