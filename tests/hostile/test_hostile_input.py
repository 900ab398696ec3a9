"""Hostile input, table-driven over every route of every service: a 4xx with a stable code, never a 500.

Routes are enumerated from the apps (``app.routes``), so a route added to any service is covered without
touching this file; ``test_every_service_route_is_in_the_table`` fails when one is not (e.g. a service
whose routes the all-in-one app does not mount). Each case runs against the all-in-one app (embedded
backends), before authentication and after it, then the app must still be healthy: nothing hostile was
stored to fail later (the "later 503").
"""

from __future__ import annotations

import base64
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import image_proxy.app
import message_service.app
import notification_consumer.app
import upload_service.app
from chat_core.json_guard import MAX_DEPTH
from chat_management.all import create_app
from tests.conftest import TEST_SECRET, auth_header, make_settings, running, token_for

CONVERSATION = "hostile-room"
IMAGE_KEY = f"images/alice/20260101-000000-{uuid.UUID(int=7)}.jpg"
PATH_VALUES = {
    "conversation_id": CONVERSATION,
    "user_id": "bob",
    "message_id": str(uuid.UUID(int=9)),
    "job_id": str(uuid.UUID(int=11)),
    "token": "device-token-0001",
    "object_key": IMAGE_KEY,
    "key": f"uploads/{CONVERSATION}/{IMAGE_KEY}",
    "path": "openapi.json",
    "name": "icon.svg",
}
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/docs", "/_storage", "/web/")
PUBLIC_PATHS = frozenset({"/"})  # the web client's page
STORAGE = "/_storage"
CODE = re.compile(r"[a-z][a-z0-9_]*")
DEEP_ARRAY = b"[" * 1000 + b"]" * 1000  # ~2 KB
DEEP_OBJECT = b'{"a":' * 400 + b"1" + b"}" * 400
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_with_header(header: dict[str, Any], sub: str = "alice") -> str:
    payload = {"sub": sub, "exp": 4_000_000_000}
    return ".".join(
        [_b64(msgspec.json.encode(header)), _b64(msgspec.json.encode(payload)), _b64(b"\x00" * 32)]
    )


NON_LATIN1_ALG = token_with_header({"alg": "HS256\u2603\u4e2d", "typ": "JWT"})
NON_LATIN1_KID = token_with_header({"alg": "HS256\u2603", "kid": "k\u4e2d"})
# Long enough that echoing it overflows a WebSocket close reason (123 bytes of UTF-8).
LONG_NON_LATIN1_ALG = token_with_header({"alg": "\u2603" * 60})


def _service_apps(settings: Any) -> dict[str, Litestar]:
    return {
        "upload": upload_service.app.create_app(settings),
        "message": message_service.app.create_app(settings),
        "image-proxy": image_proxy.app.create_app(settings),
        "notification-consumer": notification_consumer.app.create_app(settings),
    }


def http_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route the app serves (HEAD and OPTIONS aside)."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            found.update(
                (method, route.path) for method in route.methods if method not in ("OPTIONS", "HEAD")
            )
    return sorted(found)


def fill(template: str, override: dict[str, str] | None = None) -> str:
    values = {**PATH_VALUES, **(override or {})}
    return _PARAM.sub(
        lambda match: quote(values[match[1]], safe="/" if match[1] in ("key", "object_key") else ""), template
    )


def requires_auth(path: str) -> bool:
    return path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES)


def assert_clean_refusal(response: httpx.Response, *, statuses: range = range(400, 500)) -> None:
    """A 4xx problem with a stable code (S3's XML ``<Code>`` on the S3 stand-in ``/_storage``)."""
    assert response.status_code in statuses, (response.request.url, response.status_code, response.text[:300])
    if response.request.url.path.startswith(STORAGE):
        assert re.search(r"<Code>[A-Za-z]+</Code>", response.text), response.text
        return
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert CODE.fullmatch(body["code"]), body
    assert body["status"] == response.status_code
    for value in response.headers.values():
        value.encode("latin-1")  # every header survived the trip, nothing echoed raw


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Litestar]:
    application = create_app(make_settings(tmp_path_factory.mktemp("hostile")))
    async with running(application):
        yield application


@pytest.fixture(scope="module")
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    asgi: Any = app
    transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as http:
        created = await http.post(
            "/conversations",
            json={"conversationId": CONVERSATION, "participantIds": ["bob"]},
            headers=auth_header("alice"),
        )
        assert created.status_code == 201, created.text
        yield http


ALL_ROUTES = http_routes(create_app(make_settings(Path("/tmp/hostile-route-listing"))))
BODY_ROUTES = [(method, path) for method, path in ALL_ROUTES if method in ("POST", "PUT", "PATCH", "DELETE")]
PARAM_ROUTES = [
    (method, path, name) for method, path in ALL_ROUTES for name in _PARAM.findall(path) if name != "path"
]


def test_every_service_route_is_in_the_table(tmp_path: Path) -> None:
    covered = set(ALL_ROUTES)
    assert len(covered) >= 15
    for name, service in _service_apps(make_settings(tmp_path)).items():
        missing = set(http_routes(service)) - covered
        assert not missing, f"{name} serves routes the hostile suite does not reach: {missing}"


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES, ids=[f"{m} {p}" for m, p in ALL_ROUTES])
@pytest.mark.parametrize(
    "token", [NON_LATIN1_ALG, LONG_NON_LATIN1_ALG, NON_LATIN1_KID], ids=["alg", "long_alg", "kid"]
)
async def test_a_token_header_with_non_latin1_characters_is_a_401(
    client: httpx.AsyncClient, method: str, path: str, token: str
) -> None:
    response = await client.request(
        method, fill(path), headers={"Authorization": f"Bearer {token}"}, content=b"{}"
    )
    if requires_auth(path):
        assert_clean_refusal(response, statuses=range(401, 402))
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"].isascii()
    else:
        assert response.status_code < 500, response.text


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "member"])
async def test_deeply_nested_json_is_a_400_before_anything_parses_it(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, authenticated: bool
) -> None:
    headers = {"Content-Type": "application/json", **(auth_header("alice") if authenticated else {})}
    response = await client.request(method, fill(path), content=body, headers=headers)
    assert_clean_refusal(response)
    if not path.startswith(STORAGE):
        assert response.status_code == 400
        assert response.json()["code"] == "json_too_deep"


async def test_a_chunked_deep_body_is_refused_as_one_with_a_length(client: httpx.AsyncClient) -> None:
    """The guard reads any body the request declares, by ``Content-Length`` or ``Transfer-Encoding``."""

    async def chunks() -> Any:
        for start in range(0, len(DEEP_ARRAY), 512):
            yield DEEP_ARRAY[start : start + 512]

    headers = {"Content-Type": "application/json", **auth_header("alice")}
    response = await client.post("/conversations", content=chunks(), headers=headers)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 400
    assert response.json()["code"] == "json_too_deep"


async def test_json_at_the_depth_limit_is_still_parsed(client: httpx.AsyncClient) -> None:
    nested = (
        b'{"participantIds": ["carol"], "name": "'
        + b"[" * 150
        + b'", "x": '
        + b"[" * (MAX_DEPTH - 2)
        + b"]" * (MAX_DEPTH - 2)
        + b"}"
    )
    response = await client.post(
        "/conversations", content=nested, headers={"Content-Type": "application/json", **auth_header("alice")}
    )
    assert response.status_code == 201, response.text  # brackets inside strings do not count


@pytest.mark.parametrize(
    ("method", "path", "param"), PARAM_ROUTES, ids=[f"{m} {p} {n}" for m, p, n in PARAM_ROUTES]
)
async def test_an_identifier_with_a_trailing_newline_is_refused(
    app: Litestar, client: httpx.AsyncClient, method: str, path: str, param: str
) -> None:
    url = fill(path, {param: PATH_VALUES[param] + "\n"})
    body = (
        b'{"participantIds": ["carol"], "messageType": "text", "content": "hi", "content_type": "image/jpeg"}'
    )
    response = await client.request(
        method, url, content=body, headers={"Content-Type": "application/json", **auth_header("alice")}
    )
    assert_clean_refusal(response)
    assert not (await app.state.root.conversations.get_participants(CONVERSATION + "\n"))
    devices = await app.state.root.devices.devices_for(["alice"])
    assert all(not device.token.endswith("\n") for device in devices.get("alice", []))


@pytest.mark.parametrize(
    "body",
    [
        {"conversationId": "fresh-room\n", "participantIds": ["bob"]},
        {"participantIds": ["bob\n"]},
        {"participantIds": ["bob"], "conversationId": "fresh\nroom"},
    ],
    ids=["conversation_id", "participant", "inner_newline"],
)
async def test_a_body_identifier_with_a_newline_is_refused_and_never_stored(
    app: Litestar, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/conversations", json=body, headers=auth_header("alice"))
    assert_clean_refusal(response, statuses=range(400, 401))
    page = await app.state.root.conversations.list_conversations("bob\n", limit=10)
    assert page.items == []
    assert await app.state.root.conversations.get_participants("fresh-room\n") is None


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES, ids=[f"{m} {p}" for m, p in ALL_ROUTES])
async def test_a_token_whose_subject_ends_in_a_newline_is_a_401(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    token = token_for("alice\n")
    response = await client.request(
        method, fill(path), headers={"Authorization": f"Bearer {token}"}, content=b"{}"
    )
    if requires_auth(path):
        assert_clean_refusal(response, statuses=range(401, 402))
    else:
        assert response.status_code < 500


GET_ROUTES = [path for method, path in ALL_ROUTES if method == "GET"]


@pytest.mark.parametrize("path", GET_ROUTES)
@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=" + "9" * 5000 + "-",
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 5000,
        "bytes=" + "1" * 4301 + "-2",
    ],
    ids=["start", "end", "suffix", "both"],
)
async def test_a_range_with_thousands_of_digits_is_ignored_or_416(
    client: httpx.AsyncClient, path: str, range_header: str
) -> None:
    response = await client.get(fill(path), headers={"Range": range_header, **auth_header("alice")})
    assert response.status_code < 500, response.text


@pytest.mark.parametrize("path", GET_ROUTES)
async def test_query_numbers_with_thousands_of_digits_are_refused(
    client: httpx.AsyncClient, path: str
) -> None:
    digits = "9" * 5000
    response = await client.get(
        fill(path),
        params={"limit": digits, "expires": digits, "before": digits},
        headers=auth_header("alice"),
    )
    assert response.status_code < 500, response.text


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("signature", ["\u00e9t\u00e9", "\u2603" * 50, "%00", ""])
async def test_a_non_ascii_storage_signature_is_a_403(
    client: httpx.AsyncClient, method: str, signature: str
) -> None:
    url = f"{STORAGE}/{PATH_VALUES['key']}"
    params = {"method": method, "expires": "4000000000", "content-type": "image/jpeg", "signature": signature}
    response = await client.request(
        method, url, params=params, content=b"x", headers={"Content-Type": "image/jpeg"}
    )
    assert_clean_refusal(response, statuses=range(403, 404))


@pytest.mark.parametrize("length", ["9" * 5000, "\u00b2".encode("latin-1"), "-1", "1e3"])
async def test_a_storage_put_with_a_hostile_content_length_is_refused(
    client: httpx.AsyncClient, length: str
) -> None:
    # Reaches the length check only with a valid signature: presign one through the store.
    store = client._transport.app.state.root.object_store  # type: ignore[attr-defined]
    upload = store.presign_put(
        f"uploads/{CONVERSATION}/{IMAGE_KEY}", content_type="image/jpeg", content_length=None, expires_in=60
    )
    path = upload.url.split("://", 1)[1].split("/", 1)[1]
    response = await client.put(
        "/" + path, content=b"x", headers={"Content-Type": "image/jpeg", "Content-Length": length}
    )
    assert response.status_code < 500, response.text


async def test_after_the_hostile_rounds_the_app_is_healthy_and_nothing_malformed_was_stored(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    for user in ("alice", "bob"):
        page = await app.state.root.conversations.list_conversations(user, limit=100)
        for conversation in page.items:
            assert "\n" not in conversation.conversation_id
            assert all("\n" not in member for member in conversation.participants)
    listed = await client.get("/conversations", headers=auth_header("alice"))
    assert listed.status_code == 200


@pytest.mark.parametrize(
    "token",
    [NON_LATIN1_ALG, LONG_NON_LATIN1_ALG, NON_LATIN1_KID, token_for("alice\n"), "\u2603"],
    ids=["alg", "long_alg", "kid", "sub", "garbage"],
)
async def test_a_hostile_token_closes_the_socket_with_4401(serve: Any, tmp_path: Path, token: str) -> None:
    websocket_routes = [
        route for route in create_app(make_settings(tmp_path)).routes if isinstance(route, WebSocketRoute)
    ]
    assert [route.path for route in websocket_routes] == ["/ws"]
    base = await serve(create_app(make_settings(tmp_path)))
    url = base.replace("http", "ws") + "/ws?access_token=" + quote(token, safe="")
    async with connect(url, proxy=None, open_timeout=5, close_timeout=2) as socket:
        with contextlib.suppress(ConnectionClosed):
            async for _frame in socket:
                pass
        assert socket.close_code == 4401
    assert TEST_SECRET  # the app under test verifies HS256 with the test secret
