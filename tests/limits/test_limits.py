"""Abuse limits on real backends: rate limits (memory and a shared Redis), quotas, body and socket limits.

Each test makes its own users (``unique``), so runs sharing one Redis never count against each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import image_proxy.app
import message_service.app
import upload_service.app
from chat_core import ratelimit
from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from chat_core.quota import QuotaStore, utc_day
from chat_core.quota import memory as memory_quota
from chat_core.quota import redis as redis_quota
from chat_core.ratelimit import client_ip, trusted_networks
from chat_core.settings import SettingsError
from chat_management import all as all_in_one
from message_service.realtime import CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TOO_MANY_SOCKETS
from tests import harness
from tests.conftest import auth_header, make_settings, token_for, unique
from tests.message.conftest import image_bytes


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ]
)
def limit_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Every limit store: the embedded one, the shared Redis, and a Redis Cluster."""
    if request.param == "memory":
        return {"LIMIT_STORE": "memory"}
    if request.param == "redis-cluster":
        cluster: harness.Backend = request.getfixturevalue("redis_cluster")
        return {"LIMIT_STORE": "redis", "REDIS_MODE": "cluster", "REDIS_URL": cluster.address}
    redis: harness.Backend = request.getfixturevalue("redis_backend")
    return {"LIMIT_STORE": "redis", "REDIS_URL": redis.address}


async def _create_conversation(client: httpx.AsyncClient, user: str) -> httpx.Response:
    return await client.post("/conversations", json={"participantIds": []}, headers=auth_header(user))


# --- rate limits ---------------------------------------------------------------------------------------
async def test_the_429_carries_retry_after_and_ratelimit_headers(
    limit_env: dict[str, str], tmp_path: Path, client_for: Any
) -> None:
    env = {**limit_env, "RATE_LIMIT_CONVERSATIONS": "2/minute"}
    client = await client_for(message_service.app.create_app(make_settings(tmp_path, env)))
    user = unique("u")
    before = _metric("chat_rate_limited_total", limit="conversations")
    for _ in range(2):
        assert (await _create_conversation(client, user)).status_code == 201
    refused = await _create_conversation(client, user)

    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited"
    assert refused.json()["limit"] == "conversations"
    retry_after = int(refused.headers["Retry-After"])
    assert 55 <= retry_after <= 60  # the oldest hit, just now, leaves the one-minute window in ~60 s
    assert refused.headers["RateLimit-Policy"] == '"conversations";q=2;w=60'
    assert refused.headers["RateLimit"] == f'"conversations";r=0;t={retry_after}'
    assert _metric("chat_rate_limited_total", limit="conversations") == before + 1
    # Another user is not affected, nor another limit of the same user.
    assert (await _create_conversation(client, unique("u"))).status_code == 201
    assert (await client.get("/conversations", headers=auth_header(user))).status_code == 200


async def test_a_limited_route_checks_the_caller_and_the_limit_before_the_body(
    tmp_path: Path, client_for: Any
) -> None:
    """Authentication, then the limit, then the body: a caller without a token learns nothing about what
    the route accepts (401, whatever the body), and a malformed body still counts against the limit."""
    env = {"LIMIT_STORE": "memory", "RATE_LIMIT_CONVERSATIONS": "2/minute"}
    client = await client_for(message_service.app.create_app(make_settings(tmp_path, env)))
    json_type = {"Content-Type": "application/json"}
    anonymous = await client.post("/conversations", content=b"{not json", headers=json_type)
    assert anonymous.status_code == 401
    user = unique("u")
    for _ in range(2):
        answer = await client.post(
            "/conversations", content=b"{not json", headers={**json_type, **auth_header(user)}
        )
        assert answer.status_code == 400
    refused = await client.post("/conversations", json={"participantIds": []}, headers=auth_header(user))
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    # A route naming no limit never counts: reading the conversations is not refused.
    assert (await client.get("/conversations", headers=auth_header(user))).status_code == 200


def test_a_limited_route_with_its_own_before_request_is_refused_at_start(tmp_path: Path) -> None:
    """Litestar runs the nearest ``before_request`` only: a route's own would silently drop its limit."""
    from litestar import post
    from litestar.exceptions import ImproperlyConfiguredException

    from chat_core.app_factory import ServiceParts
    from chat_core.ratelimit import RATE_LIMIT_OPT

    async def own_hook(_request: Any) -> None:
        return None

    @post("/limited", opt={RATE_LIMIT_OPT: "sends"}, before_request=own_hook)
    async def limited() -> None:
        return None

    settings = make_settings(tmp_path, {"LIMIT_STORE": "memory"})
    part = ServiceParts(component="things", route_handlers=[limited])
    with pytest.raises(ImproperlyConfiguredException, match="replaces the app's rate-limit hook"):
        create_service_app(settings, Composition(settings), [part], component="things", title="things")


async def test_a_limit_holds_across_two_replicas_sharing_redis(
    redis_backend: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    env = {"LIMIT_STORE": "redis", "REDIS_URL": redis_backend.address, "RATE_LIMIT_CONVERSATIONS": "5/minute"}
    replicas = [
        await client_for(message_service.app.create_app(make_settings(tmp_path / name, env)))
        for name in ("a", "b")
    ]
    user = unique("u")
    statuses = [(await _create_conversation(replicas[i % 2], user)).status_code for i in range(8)]
    assert statuses == [201] * 5 + [429] * 3


async def test_concurrent_requests_on_two_replicas_never_exceed_the_limit(
    redis_backend: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    env = {
        "LIMIT_STORE": "redis",
        "REDIS_URL": redis_backend.address,
        "RATE_LIMIT_READ_RECEIPTS": "10/minute",
    }
    replicas = [
        await client_for(message_service.app.create_app(make_settings(tmp_path / name, env)))
        for name in ("a", "b")
    ]
    user = unique("u")
    # Read receipts of an unknown conversation: 404 when allowed, 429 when over; no store writes needed.
    responses = await asyncio.gather(
        *(
            replicas[i % 2].post("/conversations/nope/messages/nope/read", headers=auth_header(user))
            for i in range(30)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [404] * 10 + [429] * 20


async def test_a_redis_outage_fails_open_and_the_limit_returns_with_redis(
    private_redis: harness.Backend, tmp_path: Path, client_for: Any
) -> None:
    env = {"LIMIT_STORE": "redis", "REDIS_URL": private_redis.address, "RATE_LIMIT_CONVERSATIONS": "2/minute"}
    client = await client_for(message_service.app.create_app(make_settings(tmp_path, env)))
    user = unique("u")
    errors_before = _metric("chat_rate_limit_errors_total", check="rate")
    assert [(await _create_conversation(client, user)).status_code for _ in range(3)] == [201, 201, 429]

    private_redis.stop()
    started = time.perf_counter()
    with capture_logs() as logs:
        statuses = [(await _create_conversation(client, user)).status_code for _ in range(5)]
        await asyncio.sleep(ratelimit.RETRY_SECONDS + 0.1)  # due for another try: it fails again
        statuses.append((await _create_conversation(client, user)).status_code)
    elapsed = time.perf_counter() - started
    assert statuses == [201] * 6  # the store is down: nobody is refused
    assert _metric("chat_rate_limit_errors_total", check="rate") >= errors_before + 2
    # One log line per outage, not per request.
    assert [entry["event"] for entry in logs].count("limit_store_down_failing_open") == 1
    assert elapsed < 4.0  # after the first failure the store is skipped, not waited for on each request

    private_redis.start()  # an empty Redis: the counts start over
    await asyncio.sleep(ratelimit.RETRY_SECONDS + 0.1)
    statuses = [(await _create_conversation(client, user)).status_code for _ in range(4)]
    assert statuses[-1] == 429


def test_the_client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() -> None:
    trusted = trusted_networks(["10.0.0.0/8"])
    forwarded = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7, 10.1.2.3")]
    via_proxy = {"client": ("10.0.0.5", 1234), "headers": forwarded}
    direct = {"client": ("198.51.100.9", 1234), "headers": forwarded}
    # The right-most untrusted hop: what the client cannot forge (6.6.6.6 it can).
    assert client_ip(via_proxy, trusted) == "203.0.113.7"
    assert client_ip(direct, trusted) == "198.51.100.9"
    assert client_ip(via_proxy, ()) == "10.0.0.5"


# --- request bodies ------------------------------------------------------------------------------------
async def test_a_body_over_the_limit_is_413_before_parsing(tmp_path: Path, client_for: Any) -> None:
    client = await client_for(message_service.app.create_app(make_settings(tmp_path)))
    user = unique("u")
    junk = b"x" * (64 * 1024 + 1)  # not JSON: parsed, it would be a 400
    sized = await client.post(
        "/conversations", content=junk, headers={**auth_header(user), "Content-Type": "application/json"}
    )
    assert sized.status_code == 413
    assert sized.json()["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 4096

    chunked = await client.post(
        "/conversations", content=chunks(), headers={**auth_header(user), "Content-Type": "application/json"}
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413
    small = await client.post(
        "/conversations",
        content=b"x" * 100,
        headers={**auth_header(user), "Content-Type": "application/json"},
    )
    assert small.status_code == 400  # under the limit it is parsed (and refused as bad JSON)


async def test_the_local_stores_image_put_keeps_its_own_larger_limit(images_api: Any) -> None:
    api = await images_api({})
    user = unique("u")
    cid = await _conversation(api, user)
    issued = (await _upload_url(api, user, cid)).json()
    big = image_bytes() + b"\0" * (256 * 1024)  # four times the API body limit, far under MAX_IMAGE_BYTES
    put = await api.put(issued["upload_url"], content=big, headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text


# --- quotas --------------------------------------------------------------------------------------------
@pytest.fixture
async def images_api(tmp_path: Path, serve: Any) -> AsyncIterator[Any]:
    """``await images_api(env)`` -> an httpx client on upload + message + proxy on a real uvicorn."""
    async with httpx.AsyncClient(timeout=10) as http:

        async def make(env: Mapping[str, str]) -> httpx.AsyncClient:
            port = harness.free_port()
            backends = Composition(make_settings(tmp_path / str(port), {"PORT": str(port), **env}))
            settings = backends.settings
            parts = [
                upload_service.app.build(settings, upload_service.app.ports(backends)),
                message_service.app.build(settings, message_service.app.ports(backends)),
                image_proxy.app.build(settings, image_proxy.app.ports(backends)),
            ]
            app = create_service_app(settings, backends, parts, component="limits", title="limits")
            http.base_url = httpx.URL(await serve(app, port))
            return http

        yield make


async def _conversation(api: httpx.AsyncClient, user: str) -> str:
    response = await _create_conversation(api, user)
    assert response.status_code == 201, response.text
    return str(response.json()["conversationId"])


async def _upload_url(api: httpx.AsyncClient, user: str, cid: str, size: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {"content_type": "image/jpeg"}
    if size is not None:
        body["size_bytes"] = size
    return await api.post(f"/conversations/{cid}/images/upload_url", json=body, headers=auth_header(user))


async def _send_image(
    api: httpx.AsyncClient, user: str, cid: str, issued: dict[str, Any], data: bytes
) -> httpx.Response:
    put = await api.put(issued["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text
    return await api.post(
        f"/conversations/{cid}/messages",
        json={
            "messageType": "image",
            "metadata": {
                "object_key": issued["object_key"],
                "url": issued["file_url"],
                "content_type": "image/jpeg",
            },
        },
        headers=auth_header(user),
    )


async def test_the_pending_upload_quota_frees_a_slot_when_an_upload_is_sent(
    limit_env: dict[str, str], images_api: Any
) -> None:
    api = await images_api({**limit_env, "MAX_PENDING_UPLOADS": "2"})
    user = unique("u")
    cid = await _conversation(api, user)
    first = await _upload_url(api, user, cid)
    assert (await _upload_url(api, user, cid)).status_code == 200
    refused = await _upload_url(api, user, cid)
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_exceeded"
    assert refused.json()["quota"] == "pending_uploads"
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600  # the oldest URL expires in an hour

    sent = await _send_image(api, user, cid, first.json(), image_bytes())
    assert sent.status_code == 201, sent.text
    assert (await _upload_url(api, user, cid)).status_code == 200
    assert (await _upload_url(api, user, cid)).status_code == 429


async def test_bytes_per_day_refuse_a_declared_size_and_a_real_one(
    limit_env: dict[str, str], images_api: Any
) -> None:
    data = image_bytes()
    api = await images_api({**limit_env, "UPLOAD_BYTES_PER_DAY": str(len(data) + 10)})
    user = unique("u")
    cid = await _conversation(api, user)
    declared = await _upload_url(api, user, cid, size=len(data) + 11)
    assert declared.status_code == 429
    assert declared.json()["quota"] == "upload_bytes_per_day"

    first = (await _upload_url(api, user, cid)).json()
    second = (await _upload_url(api, user, cid)).json()
    assert (await _send_image(api, user, cid, first, data)).status_code == 201
    over = await _send_image(api, user, cid, second, data)  # no size was declared: caught at send
    assert over.status_code == 429
    assert over.json()["code"] == "quota_exceeded"
    # Counted once per upload: a retry of the stored message is no second charge.
    retry = await api.post(
        f"/conversations/{cid}/messages",
        json={
            "messageType": "image",
            "metadata": {
                "object_key": first["object_key"],
                "url": first["file_url"],
                "content_type": "image/jpeg",
            },
        },
        headers=auth_header(user),
    )
    assert retry.status_code != 429


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ]
)
async def quota_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    store: QuotaStore
    if request.param == "memory":
        store = memory_quota.MemoryQuotaStore()
    elif request.param == "redis-cluster":
        cluster: harness.Backend = request.getfixturevalue("redis_cluster")
        store = redis_quota.RedisQuotaStore(cluster.address, mode="cluster")
    else:
        redis: harness.Backend = request.getfixturevalue("redis_backend")
        store = redis_quota.RedisQuotaStore(redis.address)
    yield store
    await store.close()


async def test_a_pending_upload_slot_frees_when_its_url_expires(quota_store: QuotaStore) -> None:
    user = unique("u")
    day = utc_day()

    async def reserve(upload: str, expires_at: float) -> Any:
        return await quota_store.reserve_upload(
            user,
            upload,
            expires_at=expires_at,
            declared_bytes=None,
            max_pending=1,
            bytes_per_day=10**9,
            day=day,
        )

    assert await reserve("a", time.time() + 0.5) is None
    refusal = await reserve("b", time.time() + 60)
    assert refusal is not None
    assert refusal.quota == "pending_uploads"
    assert 0 < refusal.retry_after <= 0.5
    await asyncio.sleep(0.6)
    assert await reserve("b", time.time() + 60) is None


async def test_a_send_is_charged_once_per_upload(quota_store: QuotaStore) -> None:
    user = unique("u")
    day = utc_day()
    assert await quota_store.charge_send(user, "a", size_bytes=60, bytes_per_day=100, day=day) is None
    assert await quota_store.charge_send(user, "a", size_bytes=60, bytes_per_day=100, day=day) is None
    refusal = await quota_store.charge_send(user, "b", size_bytes=60, bytes_per_day=100, day=day)
    assert refusal is not None
    assert refusal.used == 60
    assert await quota_store.charge_send(user, "c", size_bytes=40, bytes_per_day=100, day=day) is None


# --- sockets -------------------------------------------------------------------------------------------
@pytest.fixture
def socket_url(tmp_path: Path, serve: Any) -> Any:
    """``await socket_url(env)`` -> the /ws URL of an all-in-one app (embedded) on a real uvicorn."""

    async def make(env: Mapping[str, str]) -> str:
        app = all_in_one.create_app(make_settings(tmp_path, env))
        return str(await serve(app)).replace("http://", "ws://") + "/ws"

    return make


async def _ready(url: str, user: str) -> Any:
    return await connect(f"{url}?access_token={token_for(user)}")


async def _until_closed(socket: Any) -> list[str]:
    """Frames received until the server closes the socket."""
    frames: list[str] = []
    try:
        while True:
            frames.append(str(await asyncio.wait_for(socket.recv(), 5)))
    except ConnectionClosed:
        return frames


async def test_socket_connects_over_the_limit_get_a_429_before_the_handshake(socket_url: Any) -> None:
    url = await socket_url({"RATE_LIMIT_SOCKET_CONNECTS": "2/minute"})
    user = unique("u")
    for _ in range(2):
        socket = await _ready(url, user)
        await socket.close()
    with pytest.raises(InvalidStatus) as refused:
        await _ready(url, user)
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["RateLimit-Policy"] == '"socket_connects";q=2;w=60'
    # Without a token the connect counts against the client's IP, and is refused the same way after 2.
    for _ in range(2):
        anonymous = await connect(url)
        with pytest.raises(ConnectionClosed):
            await anonymous.recv()
        assert anonymous.close_code == 4401
    with pytest.raises(InvalidStatus):
        await connect(url)


async def test_a_frame_over_the_limit_closes_the_socket_with_1009(socket_url: Any) -> None:
    url = await socket_url({"SOCKET_MAX_FRAME_BYTES": "1024"})
    socket = await _ready(url, unique("u"))
    await socket.send('{"type":"ping"}' + " " * 2000)
    await _until_closed(socket)
    assert socket.close_code == CLOSE_TOO_BIG


async def test_too_many_frames_close_the_socket_with_1008(socket_url: Any) -> None:
    url = await socket_url({"RATE_LIMIT_SOCKET_MESSAGES": "3/minute"})
    socket = await _ready(url, unique("u"))
    for _ in range(5):
        await socket.send('{"type":"ping"}')
    frames = await _until_closed(socket)
    assert socket.close_code == CLOSE_POLICY
    assert sum("pong" in frame for frame in frames) == 3


async def test_sockets_per_user_are_bounded_with_4429(socket_url: Any) -> None:
    url = await socket_url({"MAX_SOCKETS_PER_USER": "2"})
    user = unique("u")
    kept = [await _ready(url, user) for _ in range(2)]
    for socket in kept:
        assert "session.ready" in await socket.recv()
    third = await _ready(url, user)
    with pytest.raises(ConnectionClosed):
        await third.recv()
    assert third.close_code == CLOSE_TOO_MANY_SOCKETS
    await kept[0].close()
    await asyncio.sleep(0.2)
    again = await _ready(url, user)
    assert "session.ready" in await again.recv()
    for socket in [kept[1], again]:
        await socket.close()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RATE_LIMIT_SENDS": "lots"}, "RATE_LIMIT_SENDS"),
        ({"RATE_LIMIT_PARTICIPANT_CHANGES": "5 per fortnight"}, "RATE_LIMIT_PARTICIPANT_CHANGES"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,ingress"}, "TRUSTED_PROXIES"),
        ({"MAX_PENDING_UPLOADS": "0"}, "MAX_PENDING_UPLOADS"),
    ],
)
def test_a_bad_limit_setting_is_refused_naming_its_variable(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError, match=variable):
        make_settings(tmp_path, env)


async def test_an_erased_users_quota_records_are_gone(quota_store: QuotaStore) -> None:
    user = unique("u")
    day = utc_day()
    assert await quota_store.charge_send(user, "a", size_bytes=90, bytes_per_day=100, day=day) is None
    later = time.time() + 60
    reserved = await quota_store.reserve_upload(
        user, "b", expires_at=later, declared_bytes=None, max_pending=1, bytes_per_day=100, day=day
    )
    assert reserved is None
    await quota_store.forget_user(user, day=day)
    # Nothing is left: a full slot and a full day are free again.
    again = await quota_store.reserve_upload(
        user, "c", expires_at=later, declared_bytes=None, max_pending=1, bytes_per_day=100, day=day
    )
    assert again is None
    assert await quota_store.charge_send(user, "d", size_bytes=90, bytes_per_day=100, day=day) is None
