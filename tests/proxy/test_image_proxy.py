"""``GET /images/{conversation_id}/{object_key}`` with real HTTP, on local disk and S3, in both modes.

Images get there the way clients put them: an upload URL from the upload service, a PUT, a send; the
media processor then writes the sanitized original the proxy serves (``image.data`` after ``share``).
The media pipeline's own behaviour (variants, waiting, failures) is in ``tests/media``.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from chat_core import keys
from chat_core.logging import configure_logging
from chat_core.realtime import MEMBERSHIP_CHANNEL
from tests.conftest import auth_header, token_for
from tests.image_stack import ImageStack, image_bytes

WINDOW = 300  # IMAGE_URL_WINDOW_SECONDS default
MakeStack = Callable[..., Awaitable[ImageStack]]


@pytest.fixture
async def streaming(make_stack: MakeStack) -> ImageStack:
    return await make_stack({"IMAGE_PROXY_MODE": "stream"})


def _proxy_path(file_url: str, stack: ImageStack) -> str:
    return file_url.removeprefix(stack.base_url)


async def _wait_clear_of_a_window_edge() -> None:
    """Two requests must fall in one signing window: never start within 3 s of its end."""
    remaining = WINDOW - time.time() % WINDOW
    if remaining < 3:
        await asyncio.sleep(remaining + 0.1)


async def _raw_get(stack: ImageStack, target: str, user: str = "alice") -> httpx.Response:
    """GET with the request target sent byte for byte (httpx would normalise ``..`` and escapes)."""
    request = stack.http.build_request("GET", "/", headers=auth_header(user))
    request.extensions["target"] = target.encode()
    return await stack.http.send(request)


# --- redirect mode (the default) ------------------------------------------------------------------
async def test_a_member_following_the_redirect_gets_the_same_bytes(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    response = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("bob"))
    assert response.status_code == 302
    assert response.headers["x-content-type-options"] == "nosniff"
    target = await stack.http.get(response.headers["location"])
    assert target.status_code == 200
    assert target.content == image.data
    assert target.headers["content-type"] == "image/jpeg"


async def test_two_requests_in_one_window_get_the_same_url(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    await _wait_clear_of_a_window_edge()
    first = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("bob"))
    second = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("bob"))
    assert first.status_code == second.status_code == 302
    assert first.headers["location"] == second.headers["location"]


async def test_the_redirect_is_cached_privately_for_the_rest_of_the_window(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    await _wait_clear_of_a_window_edge()
    remaining = WINDOW - time.time() % WINDOW
    response = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("alice"))
    directive, max_age = response.headers["cache-control"].split(", ")
    assert directive == "private"
    assert abs(int(max_age.removeprefix("max-age=")) - remaining) <= 2


async def test_the_token_cookie_is_accepted_for_img_tags(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    response = await stack.http.get(
        _proxy_path(image.file_url, stack), headers={"Cookie": f"access_token={token_for('alice')}"}
    )
    assert response.status_code == 302


# --- who may see ----------------------------------------------------------------------------------
async def test_no_token_is_401(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    response = await stack.http.get(_proxy_path(image.file_url, stack))
    assert response.status_code == 401
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "location" not in response.headers


async def test_a_non_member_is_404_as_if_the_conversation_did_not_exist(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    response = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("mallory"))
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "location" not in response.headers


async def test_an_unknown_conversation_looks_the_same_as_a_foreign_one(stack: ImageStack) -> None:
    object_key = keys.new_object_key("alice", "image/jpeg")
    response = await stack.http.get(f"/images/nosuchconversation/{object_key}", headers=auth_header("alice"))
    assert response.status_code == 404
    assert response.json()["code"] == "conversation_not_found"
    cid = await stack.conversation("bob")
    foreign = await stack.http.get(f"/images/{cid}/{object_key}", headers=auth_header("alice"))
    assert (foreign.status_code, foreign.json()["code"]) == (404, "conversation_not_found")
    assert foreign.json()["detail"] == response.json()["detail"]


async def test_a_missing_object_is_404(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    object_key = keys.new_object_key("alice", "image/jpeg")
    response = await stack.http.get(f"/images/{cid}/{object_key}", headers=auth_header("alice"))
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_key_of_another_conversation_is_not_found_under_this_one(stack: ImageStack) -> None:
    mine = await stack.conversation("alice", "bob")
    theirs = await stack.conversation("bob", "carol")
    image = await stack.share("carol", theirs)
    response = await stack.http.get(f"/images/{mine}/{image.object_key}", headers=auth_header("alice"))
    assert response.status_code == 404


async def test_another_conversations_image_is_refused_to_a_non_member(stack: ImageStack) -> None:
    await stack.conversation("alice", "bob")
    theirs = await stack.conversation("bob", "carol")
    image = await stack.share("carol", theirs)
    response = await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("alice"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    "tail",
    [
        "../{other}/{key}",
        "%2e%2e/{other}/{key}",
        "%2E%2E%2F{other}%2F{key}",
        "images/carol/..%2f..%2f..%2f{other}%2f{key}",
        "images%2fcarol%2f{name}",
        "{other}/{key}",
        "/{key}",
        "{key}/../../{other}/{key}",
        "images/carol/{stem}.svg",
        "images/carol/{stem}.jpg%00.png",
        "images/../../../../etc/passwd",
    ],
)
async def test_traversal_and_malformed_keys_are_refused(stack: ImageStack, tail: str) -> None:
    mine = await stack.conversation("alice", "bob")
    other = await stack.conversation("carol", "alice")
    image = await stack.share("carol", other)
    name = image.object_key.rsplit("/", 1)[1]
    target = f"/images/{mine}/" + tail.format(
        other=other, key=image.object_key, name=name, stem=name.rsplit(".", 1)[0]
    )
    response = await _raw_get(stack, target)
    assert response.status_code in (400, 404), (target, response.status_code)
    assert "location" not in response.headers
    assert image.data not in response.content


async def test_a_malformed_key_is_refused_before_any_store_is_asked(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    response = await _raw_get(stack, f"/images/{cid}/images/alice/%2e%2e/%2e%2e/secret.jpg")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_object_key"


# --- stream mode ----------------------------------------------------------------------------------
async def test_stream_mode_sends_the_bytes_with_etag_and_nosniff(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice", "bob")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(_proxy_path(image.file_url, streaming), headers=auth_header("bob"))
    assert response.status_code == 200
    assert response.content == image.data
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-length"] == str(len(image.data))
    assert response.headers["etag"].startswith('"')
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"].startswith("private")


async def test_stream_mode_answers_304_to_a_matching_etag(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    path = _proxy_path(image.file_url, streaming)
    etag = (await streaming.http.get(path, headers=auth_header("alice"))).headers["etag"]
    response = await streaming.http.get(path, headers={**auth_header("alice"), "If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


async def test_stream_mode_sends_the_bytes_again_for_a_stale_etag(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(
        _proxy_path(image.file_url, streaming), headers={**auth_header("alice"), "If-None-Match": '"stale"'}
    )
    assert response.status_code == 200
    assert response.content == image.data


async def test_stream_mode_answers_206_to_a_range(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(
        _proxy_path(image.file_url, streaming), headers={**auth_header("alice"), "Range": "bytes=10-19"}
    )
    assert response.status_code == 206
    assert response.content == image.data[10:20]
    assert response.headers["content-range"] == f"bytes 10-19/{len(image.data)}"


async def test_stream_mode_answers_206_to_a_suffix_range(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(
        _proxy_path(image.file_url, streaming), headers={**auth_header("alice"), "Range": "bytes=-5"}
    )
    assert response.status_code == 206
    assert response.content == image.data[-5:]


async def test_stream_mode_answers_416_to_a_range_past_the_end(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(
        _proxy_path(image.file_url, streaming),
        headers={**auth_header("alice"), "Range": f"bytes={len(image.data)}-"},
    )
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(image.data)}"


async def test_stream_mode_refuses_a_non_member(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid)
    response = await streaming.http.get(
        _proxy_path(image.file_url, streaming), headers=auth_header("mallory")
    )
    assert response.status_code == 404
    assert image.data not in response.content


async def test_stream_mode_404s_a_missing_object(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    object_key = keys.new_object_key("alice", "image/gif")
    response = await streaming.http.get(f"/images/{cid}/{object_key}", headers=auth_header("alice"))
    assert response.status_code == 404


# --- audit and metrics ----------------------------------------------------------------------------
def _audit_lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "image_access"]


async def test_every_request_writes_one_audit_line_allowed_or_denied(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    stream = io.BytesIO()
    configure_logging("INFO", service="test", stream=stream, cache=False)
    path = _proxy_path(image.file_url, stack)
    await stack.http.get(path, headers={**auth_header("alice"), "User-Agent": "viewer/1.0"})
    await stack.http.get(path, headers={**auth_header("mallory"), "User-Agent": "prober/2.0"})
    await stack.http.get(path)
    allowed, denied, anonymous = _audit_lines(stream)
    assert allowed["decision"] == "allowed"
    assert allowed["reason"] == "redirect"
    assert allowed["user_id"] == "alice"
    assert allowed["conversation_id"] == cid
    assert allowed["object_key"] == image.object_key
    assert allowed["client_ip"] == "127.0.0.1"
    assert allowed["user_agent"] == "viewer/1.0"
    assert len(allowed["trace_id"]) == 32
    assert (denied["decision"], denied["reason"], denied["user_id"]) == (
        "denied",
        "conversation_not_found",
        "mallory",
    )
    assert denied["user_agent"] == "prober/2.0"
    assert (anonymous["decision"], anonymous["user_id"], anonymous["status"]) == ("denied", None, 401)


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
async def test_no_log_level_silences_the_audit_lines(stack: ImageStack, level: str) -> None:
    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    stream = io.BytesIO()
    configure_logging(level, service="test", stream=stream, cache=False)
    try:
        path = _proxy_path(image.file_url, stack)
        await stack.http.get(path, headers=auth_header("alice"))
        await stack.http.get(path, headers=auth_header("mallory"))
    finally:
        configure_logging("INFO", cache=False)
    allowed, denied = _audit_lines(stream)
    assert (allowed["decision"], denied["decision"]) == ("allowed", "denied")
    assert allowed["audit"] is True
    assert denied["reason"] == "conversation_not_found"


async def test_metrics_count_requests_by_decision_and_reason(stack: ImageStack) -> None:
    def sample(decision: str, reason: str) -> float:
        labels = {"decision": decision, "reason": reason}
        return REGISTRY.get_sample_value("chat_image_proxy_requests_total", labels) or 0.0

    cid = await stack.conversation("alice")
    image = await stack.share("alice", cid)
    redirects, refusals = sample("allowed", "redirect"), sample("denied", "conversation_not_found")
    await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("alice"))
    await stack.http.get(_proxy_path(image.file_url, stack), headers=auth_header("mallory"))
    assert sample("allowed", "redirect") == redirects + 1
    assert sample("denied", "conversation_not_found") == refusals + 1


# --- browsers -------------------------------------------------------------------------------------
async def test_cors_preflight_allows_a_page_to_fetch_an_image(stack: ImageStack) -> None:
    cid = await stack.conversation("alice")
    object_key = keys.new_object_key("alice", "image/png")
    response = await stack.http.options(
        f"/images/{cid}/{object_key}",
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", "https://chat.example")
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_a_png_round_trips_through_the_proxy(streaming: ImageStack) -> None:
    cid = await streaming.conversation("alice")
    image = await streaming.share("alice", cid, image_bytes("PNG"), "image/png")
    response = await streaming.http.get(_proxy_path(image.file_url, streaming), headers=auth_header("alice"))
    assert response.content == image.data
    assert response.headers["content-type"] == "image/png"


async def test_a_removed_member_loses_access_as_soon_as_the_change_is_announced(stack: ImageStack) -> None:
    cid = await stack.conversation("alice", "bob")
    image = await stack.share("alice", cid)
    path = _proxy_path(image.file_url, stack)
    assert (await stack.http.get(path, headers=auth_header("bob"))).status_code == 302  # now cached
    await stack.backends.chat_store.remove_participant(cid, "bob")
    # What the message service publishes when participants change.
    await stack.backends.event_bus.publish(MEMBERSHIP_CHANNEL, json.dumps({"conversationId": cid}).encode())
    assert (await stack.http.get(path, headers=auth_header("bob"))).status_code == 404
