"""``POST /conversations/{conversation_id}/images/upload_url`` with real HTTP, on local disk and S3.

Every test runs against both object store adapters (``store_kind``): the presigned PUTs go to LocalStack
(signature validation on) or to the app's own signed ``/_storage`` route.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from prometheus_client import REGISTRY

from chat_core import keys
from tests.conftest import auth_header, token_for
from tests.image_stack import ImageStack, image_bytes

OBJECT_KEY = re.compile(r"^images/alice/\d{8}-\d{6}-[0-9a-f-]{36}\.(jpg|png|gif|webp)$")


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- the spec's flow ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
async def test_the_spec_flow_puts_a_real_image_that_then_exists_with_its_type(
    stack: ImageStack, fmt: str, content_type: str
) -> None:
    cid = await stack.conversation("alice", "bob")
    data = image_bytes(fmt)
    response = await stack.upload_url("alice", cid, {"content_type": content_type, "filename": "cat.img"})
    assert response.status_code == 200, response.text
    issued = response.json()
    put = await stack.http.put(issued["upload_url"], content=data, headers={"Content-Type": content_type})
    assert put.status_code == 200, put.text
    info = await stack.store.head(keys.stored_key(cid, issued["object_key"]))
    assert info is not None
    assert (info.content_type, info.size) == (content_type, len(data))


async def test_the_response_has_exactly_the_spec_fields(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    before = dt.datetime.now(dt.UTC)
    response = await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})
    body = response.json()
    assert set(body) == {"upload_url", "object_key", "file_url", "expires_at"}
    assert OBJECT_KEY.match(body["object_key"])
    assert body["object_key"].endswith(".jpg")
    assert body["file_url"] == f"{stack.base_url}/images/{cid}/{body['object_key']}"
    assert body["expires_at"].endswith("Z")
    expires_at = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires_at - before).total_seconds() - 3600) < 5


async def test_a_filename_never_shapes_the_key(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    response = await stack.upload_url(
        "alice", cid, {"content_type": "image/jpeg", "filename": "../../etc/passwd.html"}
    )
    assert response.status_code == 200
    assert OBJECT_KEY.match(response.json()["object_key"])


async def test_a_content_type_in_capitals_is_signed_in_its_canonical_form(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    body = (await stack.upload_url("alice", cid, {"content_type": "Image/PNG"})).json()
    put = await stack.http.put(
        body["upload_url"], content=image_bytes("PNG"), headers={"Content-Type": "image/png"}
    )
    assert put.status_code == 200, put.text


# --- what the presigned URL refuses ---------------------------------------------------------------
async def test_a_put_with_another_content_type_is_refused(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    body = (await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})).json()
    put = await stack.http.put(body["upload_url"], content=b"<html>", headers={"Content-Type": "text/html"})
    assert put.status_code == 403
    assert await stack.store.head(keys.stored_key(cid, body["object_key"])) is None


async def test_a_tampered_upload_url_is_refused(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    body = (await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})).json()
    parts = urlsplit(body["upload_url"])
    query = dict(parse_qsl(parts.query))
    name = "X-Amz-Signature" if "X-Amz-Signature" in query else "signature"
    query[name] = query[name][::-1]
    tampered = urlunsplit(parts._replace(query=urlencode(query)))
    put = await stack.http.put(tampered, content=image_bytes(), headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 403
    assert await stack.store.head(keys.stored_key(cid, body["object_key"])) is None


async def test_an_upload_url_past_its_expiry_is_refused(stack: ImageStack) -> None:
    # UPLOAD_URL_TTL_SECONDS is at least a minute, so sign the issued key directly with a 1 s expiry.
    cid = await stack.conversation("alice")
    body = (await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})).json()
    stored = keys.stored_key(cid, body["object_key"])
    upload = stack.store.presign_put(stored, content_type="image/jpeg", content_length=None, expires_in=1)
    await asyncio.sleep(max(0.0, (upload.expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    put = await stack.http.put(upload.url, content=image_bytes(), headers=upload.headers)
    assert put.status_code == 403
    assert await stack.store.head(stored) is None


async def test_a_declared_size_is_signed_in_so_a_longer_upload_is_refused(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    data = image_bytes()
    body = (await stack.upload_url("alice", cid, {"content_type": "image/jpeg", "size_bytes": 100})).json()
    put = await stack.http.put(body["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 403
    assert await stack.store.head(keys.stored_key(cid, body["object_key"])) is None


async def test_a_declared_size_accepts_an_upload_of_exactly_that_size(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    data = image_bytes()
    body = (
        await stack.upload_url("alice", cid, {"content_type": "image/jpeg", "size_bytes": len(data)})
    ).json()
    put = await stack.http.put(body["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text


# --- who may ask ----------------------------------------------------------------------------------
async def test_a_non_member_is_refused_as_if_the_conversation_did_not_exist(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    response = await stack.upload_url("mallory", cid, {"content_type": "image/jpeg"})
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"
    assert "upload_url" not in response.json()


async def test_an_unknown_conversation_is_404(stack: ImageStack) -> None:
    response = await stack.upload_url("alice", "no-such-conversation", {"content_type": "image/jpeg"})
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"


async def test_a_malformed_conversation_id_is_404(stack: ImageStack) -> None:
    response = await stack.upload_url("alice", "bad.id~x", {"content_type": "image/jpeg"})
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"


async def test_no_token_is_401(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    response = await stack.upload_url("alice", cid, {"content_type": "image/jpeg"}, headers={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_expired_token_is_401(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    old = token_for("alice", now=dt.datetime.now(dt.UTC).timestamp() - 7200, ttl_seconds=60)
    response = await stack.upload_url(
        "alice", cid, {"content_type": "image/jpeg"}, headers={"Authorization": f"Bearer {old}"}
    )
    assert response.status_code == 401


# --- what may be uploaded -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    ["image/svg+xml", "text/html", "application/pdf", "image/jpeg; charset=binary", "image/bmp", "image/"],
)
async def test_a_type_off_the_allow_list_is_415(stack: ImageStack, content_type: str) -> None:
    cid = await stack.conversation("alice")
    response = await stack.upload_url("alice", cid, {"content_type": content_type})
    assert response.status_code == 415
    body = response.json()
    assert body["code"] == "unsupported_image_type"
    assert body["allowed_types"] == [
        "image/gif",
        "image/heic",
        "image/heif",
        "image/jpeg",
        "image/png",
        "image/webp",
    ]


async def test_the_allow_list_is_configurable(make_stack: Callable[..., Awaitable[ImageStack]]) -> None:
    stack = await make_stack({"ALLOWED_IMAGE_TYPES": "image/png"})
    cid = await stack.conversation("alice")
    assert (await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})).status_code == 415
    assert (await stack.upload_url("alice", cid, {"content_type": "image/png"})).status_code == 200


async def test_a_declared_size_over_the_limit_is_413(
    make_stack: Callable[..., Awaitable[ImageStack]],
) -> None:
    stack = await make_stack({"MAX_IMAGE_BYTES": "1000"})
    cid = await stack.conversation("alice")
    response = await stack.upload_url("alice", cid, {"content_type": "image/jpeg", "size_bytes": 1001})
    assert response.status_code == 413
    assert response.json()["code"] == "image_too_large"
    assert (
        await stack.upload_url("alice", cid, {"content_type": "image/jpeg", "size_bytes": 1000})
    ).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{}, {"content_type": ""}, {"content_type": 5}, {"content_type": "image/png", "size_bytes": 0}],
    ids=["missing", "empty", "not_a_string", "zero_size"],
)
async def test_a_malformed_request_is_400(stack: ImageStack, body: dict[str, object]) -> None:
    cid = await stack.conversation("alice")
    response = await stack.upload_url("alice", cid, body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


# --- metrics --------------------------------------------------------------------------------------
async def test_metrics_count_issued_urls_and_refusals_by_reason(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    issued = _sample("chat_upload_urls_issued_total")
    refused = _sample("chat_upload_urls_refused_total", {"reason": "conversation_not_found"})
    unsupported = _sample("chat_upload_urls_refused_total", {"reason": "unsupported_image_type"})
    await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})
    await stack.upload_url("bob", cid, {"content_type": "image/jpeg"})
    await stack.upload_url("alice", cid, {"content_type": "text/html"})
    assert _sample("chat_upload_urls_issued_total") == issued + 1
    assert _sample("chat_upload_urls_refused_total", {"reason": "conversation_not_found"}) == refused + 1
    assert _sample("chat_upload_urls_refused_total", {"reason": "unsupported_image_type"}) == unsupported + 1


# --- browsers -------------------------------------------------------------------------------------
async def test_cors_preflight_allows_a_page_to_ask_for_an_upload_url(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    response = await stack.http.options(
        f"/conversations/{cid}/images/upload_url",
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", "https://chat.example")
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed


async def test_the_storage_cors_rule_lets_a_page_put_to_the_upload_url(stack: ImageStack) -> None:
    """The browser's preflight before ``fetch(upload_url, {method: 'PUT'})``: the bucket's rule on S3,
    the app's CORS on the local store's route."""
    cid = await stack.conversation("alice")
    body = (await stack.upload_url("alice", cid, {"content_type": "image/jpeg"})).json()
    response = await stack.http.options(
        body["upload_url"],
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] in ("*", "https://chat.example")
    assert "PUT" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"].lower()


async def test_a_member_token_works_for_every_member(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    response = await stack.upload_url("bob", cid, {"content_type": "image/webp"}, headers=auth_header("bob"))
    assert response.status_code == 200
    assert response.json()["object_key"].startswith("images/bob/")


async def test_a_token_whose_user_id_cannot_be_a_key_segment_is_refused(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    response = await stack.upload_url(
        "a..b", cid, {"content_type": "image/jpeg"}, headers=auth_header("a..b")
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
