"""The lean path of the hot routes (``chat_core.hot_routes``) answers exactly what Litestar answers.

Each request is sent twice over real HTTP: plain (the lean path takes it) and with an ``Origin`` header
(the lean path leaves it to Litestar, whose CORS middleware then adds its ``Access-Control-*`` headers). With
those headers set aside, the two answers must be the same: status, headers, body (ids that are new on every
request, such as a fresh object key, compared by shape). ``served`` counts what the lean path answered, so
a case that silently fell through to Litestar on both sends is caught too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from chat_core.hot_routes import HotRoutes
from tests.conftest import auth_header, token_for
from tests.image_stack import ImageStack

ORIGIN = {"Origin": "https://elsewhere.example"}
_FRESH = re.compile(r"\d{8}-\d{6}-[0-9a-f-]{36}")  # the stamp and UUID of a new object key
_SIGNED = re.compile(r"(expires|signature|X-Amz-Date|X-Amz-Signature|X-Amz-Credential)=[^&]+")


def _lean(stack: ImageStack) -> HotRoutes:
    handler: Any = stack.app.asgi_handler if stack.app is not None else None
    while handler is not None and not isinstance(handler, HotRoutes):
        handler = getattr(handler, "app", None) or getattr(handler, "_app", None)
    assert isinstance(handler, HotRoutes), "the app serves no lean path"
    return handler


def _same(value: Any) -> Any:
    """``value`` with what is new on every request (keys, signatures, expiry, trace ids) as placeholders."""
    if isinstance(value, dict):
        return {key: _same(item) for key, item in value.items() if key not in ("trace_id", "expires_at")}
    if isinstance(value, list):
        return [_same(item) for item in value]
    if isinstance(value, str):
        return _SIGNED.sub(r"\1=*", _FRESH.sub("*", value))
    return value


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {
        name: _same(value)
        for name, value in response.headers.items()
        # Litestar's CORS answers an Origin with ``Vary: Origin`` in place of the route's own ``Vary``:
        # the one header its CORS middleware changes besides ``Access-Control-*`` (checked on its own).
        if name not in ("date", "content-length", "vary") and not name.startswith("access-control-")
    }
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json") and response.content:
        body = _same(response.json())
    return response.status_code, headers, body


async def _both(
    stack: ImageStack, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    lean = _lean(stack)
    before = lean.served
    plain = await stack.http.request(method, path, headers=dict(headers or {}), **kwargs)
    taken = lean.served - before
    litestar = await stack.http.request(method, path, headers={**(headers or {}), **ORIGIN}, **kwargs)
    assert lean.served - before == taken, "a request with an Origin took the lean path"
    assert _answer(plain) == _answer(litestar)
    return plain, litestar


async def _taken(stack: ImageStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Both sends agree, and the plain one was answered on the lean path."""
    before = _lean(stack).served
    plain, _ = await _both(stack, method, path, **kwargs)
    assert _lean(stack).served == before + 1, "the plain request did not take the lean path"
    return plain


async def _left(stack: ImageStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Both sends agree, and Litestar answered both (a request the lean path is not sure of)."""
    before = _lean(stack).served
    plain, _ = await _both(stack, method, path, **kwargs)
    assert _lean(stack).served == before, "the lean path answered a request it should leave to Litestar"
    return plain


# --- POST /conversations/{id}/images/upload_url ------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"content_type": "image/jpeg"}, 200),
        ({"content_type": "IMAGE/PNG", "size_bytes": 1234, "filename": "a.png"}, 200),
        ({"content_type": "application/pdf"}, 415),
        ({"content_type": "image/jpeg", "size_bytes": 10**12}, 413),
        ({"content_type": "image/jpeg", "surprise": 1}, 200),  # unknown fields are ignored, as Litestar does
    ],
)
async def test_a_plain_upload_url_request_gets_litestars_answer(
    stack: ImageStack, body: dict[str, Any], status: int
) -> None:
    cid = await stack.conversation("alice", "bob")
    path = f"/conversations/{cid}/images/upload_url"
    answer = await _taken(stack, "POST", path, json=body, headers=auth_header("alice"))
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("who", "status"),
    [("stranger", 404), ("no token", 401), ("bad token", 401), ("unknown conversation", 404)],
)
async def test_refused_callers_get_litestars_problem(stack: ImageStack, who: str, status: int) -> None:
    cid = await stack.conversation("alice", "bob")
    headers = {
        "stranger": auth_header("mallory"),
        "no token": {},
        "bad token": {"Authorization": f"Bearer {token_for('alice')}x"},
        "unknown conversation": auth_header("alice"),
    }[who]
    target = "0123456789abcdef0123456789abcdef" if who == "unknown conversation" else cid
    answer = await _taken(
        stack,
        "POST",
        f"/conversations/{target}/images/upload_url",
        json={"content_type": "image/jpeg"},
        headers=headers,
    )
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"content_type": 5}', "application/json"),
        (b'{"content_type": "image/jpeg", "size_bytes": "12"}', "application/json"),
        (b"[]", "application/json"),
        (b"", "application/json"),
        (b'{"content_type": "image/jpeg"}', "text/plain"),
    ],
    ids=["malformed", "wrong-type", "string-number", "array", "empty", "text-plain"],
)
async def test_a_body_the_lean_path_is_not_sure_of_goes_to_litestar(
    stack: ImageStack, content: bytes, content_type: str
) -> None:
    cid = await stack.conversation("alice", "bob")
    headers = {**auth_header("alice"), "Content-Type": content_type}
    await _left(stack, "POST", f"/conversations/{cid}/images/upload_url", content=content, headers=headers)


async def test_the_rate_limit_counts_once_per_request_on_either_path(make_stack: Any) -> None:
    stack: ImageStack = await make_stack({"RATE_LIMIT_UPLOAD_URLS": "4/minute"})
    cid = await stack.conversation("alice", "bob")
    path = f"/conversations/{cid}/images/upload_url"
    body = {"content_type": "image/jpeg"}
    for _ in range(2):  # two plain, two with an Origin: four hits
        await _taken(stack, "POST", path, json=body, headers=auth_header("alice"))
    refused = await _taken(stack, "POST", path, json=body, headers=auth_header("alice"))
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert "Retry-After" in refused.headers


# --- GET /images/{conversation_id}/{object_key} -------------------------------------------------------
async def test_a_plain_image_request_gets_litestars_answer(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    path = image.file_url.removeprefix(stack.base_url)
    cookie = {"Cookie": f"access_token={token_for('bob')}"}
    cases: list[tuple[str, Mapping[str, str], int]] = [
        (path, auth_header("bob"), 302),
        (path + "?variant=thumbnail", auth_header("bob"), 302),
        (path + "?variant=huge", auth_header("bob"), 400),
        (path, auth_header("mallory"), 404),
        (path, {}, 401),
        (path, cookie, 302),
        (path + "?push_signature=forged&push_expires=1&push_user=bob", {}, 403),
        (path.replace(".jpg", ".png"), auth_header("bob"), 404),
        (f"/images/{cid}/not/a/key.jpg", auth_header("bob"), 400),
    ]
    for target, headers, status in cases:
        answer = await _taken(stack, "GET", target, headers=headers)
        assert answer.status_code == status, (target, answer.text)
        if status == 302:
            assert answer.headers["vary"] == "Authorization, Cookie"
