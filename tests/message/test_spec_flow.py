"""The spec's flow end to end over real HTTP: upload URL -> PUT the bytes -> send -> list -> view.

Upload, message and image-proxy services in one app on a real uvicorn; objects in S3 on LocalStack
(signature validation on) or on local disk; messages in each MessageStore adapter.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import image_proxy.app
import media_processor.app
import message_service.app
import upload_service.app
from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from tests import harness
from tests.conftest import auth_header, make_settings, unique
from tests.message.conftest import image_bytes

_buckets_ready: set[str] = set()


@pytest.fixture(scope="session")
def spec_bucket() -> str:
    return unique("spec-flow")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.localstack)])
def object_env(request: pytest.FixtureRequest, spec_bucket: str) -> dict[str, str]:
    if request.param == "local":
        return {"OBJECT_STORE": "local"}
    localstack: harness.Backend = request.getfixturevalue("localstack")
    return {"OBJECT_STORE": "s3", "S3_BUCKET_NAME": spec_bucket, "AWS_ENDPOINT_URL": localstack.address}


@pytest.fixture
async def api(
    tmp_path: Path, store_env: dict[str, str], object_env: dict[str, str], serve: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app's base URL (it also follows absolute presigned URLs)."""
    port = harness.free_port()
    backends = Composition(make_settings(tmp_path, {"PORT": str(port), **store_env, **object_env}))
    settings = backends.settings
    parts = [
        upload_service.app.build(settings, upload_service.app.ports(backends)),
        message_service.app.build(settings, message_service.app.ports(backends)),
        image_proxy.app.build(settings, image_proxy.app.ports(backends)),
        media_processor.app.build(settings, media_processor.app.ports(backends)),
    ]
    app = create_service_app(settings, backends, parts, component="spec-flow", title="spec flow")
    base_url = await serve(app, port)
    bucket = settings.s3.bucket
    if settings.backends.object_store == "s3" and bucket not in _buckets_ready:
        await harness.provision(settings)
        _buckets_ready.add(bucket)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


async def upload(
    api: httpx.AsyncClient, user: str, cid: str, data: bytes, content_type: str
) -> dict[str, Any]:
    """Steps 1 and 2 of the spec's client guide: get an upload URL, PUT the bytes to it."""
    issued = await api.post(
        f"/conversations/{cid}/images/upload_url",
        json={"content_type": content_type},
        headers=auth_header(user),
    )
    assert issued.status_code == 200, issued.text
    body: dict[str, Any] = issued.json()
    put = await api.put(body["upload_url"], content=data, headers={"Content-Type": content_type})
    assert put.status_code == 200, put.text
    return body


async def new_conversation(api: httpx.AsyncClient, owner: str, *others: str) -> str:
    response = await api.post(
        "/conversations", json={"participantIds": list(others)}, headers=auth_header(owner)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["conversationId"])


async def test_the_spec_flow_upload_send_list_view(api: httpx.AsyncClient) -> None:
    cid = await new_conversation(api, "alice", "bob")
    data = image_bytes("JPEG", (800, 600))
    uploaded = await upload(api, "alice", cid, data, "image/jpeg")
    # Step 3, the spec's request as its client guide sends it (no width/height/size).
    sent = await api.post(
        f"/conversations/{cid}/messages",
        json={
            "content": "Check out this photo!",
            "messageType": "image",
            "metadata": {
                "object_key": uploaded["object_key"],
                "url": uploaded["file_url"],
                "content_type": "image/jpeg",
            },
        },
        headers=auth_header("alice"),
    )
    assert sent.status_code == 201, sent.text
    listed = await api.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    [message] = listed.json()["items"]
    assert message["messageId"] == sent.json()["messageId"]
    assert message["metadata"] == {
        "object_key": uploaded["object_key"],
        "url": uploaded["file_url"],
        "content_type": "image/jpeg",
        "size_bytes": len(data),
        "width": 800,
        "height": 600,
        "status": "processing",
        "variants": None,
        "blurhash": None,
        "error": None,
        "alt_text": None,
    }
    # Viewed at once, as the spec's client does: the proxy waits for the media processor, then serves
    # the sanitized copy (same size, no metadata), never the raw upload.
    viewed = await api.get(message["metadata"]["url"], headers=auth_header("bob"), follow_redirects=True)
    assert viewed.status_code == 200
    assert viewed.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(viewed.content)).size == (800, 600)
    [ready] = (await api.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))).json()["items"]
    assert ready["metadata"]["status"] == "ready"
    assert ready["metadata"]["size_bytes"] == len(viewed.content)


async def test_html_uploaded_as_jpeg_is_refused_at_send(api: httpx.AsyncClient) -> None:
    cid = await new_conversation(api, "alice")
    html = b"<!doctype html><html><body onload=alert(1)></body></html>"
    uploaded = await upload(api, "alice", cid, html, "image/jpeg")
    sent = await api.post(
        f"/conversations/{cid}/messages",
        json={
            "messageType": "image",
            "metadata": {"object_key": uploaded["object_key"], "content_type": "image/jpeg"},
        },
        headers=auth_header("alice"),
    )
    assert sent.status_code == 422
    assert sent.json()["code"] == "not_an_image"


async def test_png_declared_but_jpeg_bytes_are_refused_at_send(api: httpx.AsyncClient) -> None:
    cid = await new_conversation(api, "alice")
    uploaded = await upload(api, "alice", cid, image_bytes("JPEG"), "image/png")
    sent = await api.post(
        f"/conversations/{cid}/messages",
        json={
            "messageType": "image",
            "metadata": {"object_key": uploaded["object_key"], "content_type": "image/png"},
        },
        headers=auth_header("alice"),
    )
    assert sent.status_code == 422
    assert sent.json()["code"] == "not_an_image"


async def test_an_upload_url_never_used_is_image_not_found(api: httpx.AsyncClient) -> None:
    cid = await new_conversation(api, "alice")
    issued = await api.post(
        f"/conversations/{cid}/images/upload_url",
        json={"content_type": "image/jpeg"},
        headers=auth_header("alice"),
    )
    sent = await api.post(
        f"/conversations/{cid}/messages",
        json={
            "messageType": "image",
            "metadata": {"object_key": issued.json()["object_key"], "content_type": "image/jpeg"},
        },
        headers=auth_header("alice"),
    )
    assert sent.status_code == 404
    assert sent.json()["code"] == "image_not_found"
