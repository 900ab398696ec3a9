"""``make dev``'s one URL: the gateway in front of the service processes and the page (``serve web``).

The stack is ``make dev``'s (each service its own process, cloud adapters on real Redis, LocalStack and the
Firestore emulator, the page with DEV_LOGIN on); everything below goes through the gateway's one origin,
as the page's own calls do: the page and its files, ``POST /dev/token``, the API, the socket, the upload
route (which must reach the upload service, not the message service that owns its prefix), the direct PUT
and the image through the proxy with the page's cookie.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chat_devstack import SERVICES, WEB, ServiceProcess, Stack, gateway
from tests import harness
from tests.conftest import TEST_SECRET, token_for, unique

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(
    redis_backend: harness.Backend,
    localstack: harness.Backend,
    firestore_emulator: harness.Backend,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    running = Stack(
        redis_url=redis_backend.address,
        aws_endpoint_url=localstack.address,
        firestore_host=firestore_emulator.address,
        workdir=Path(tmp_path_factory.mktemp("dev-gateway")),
        suffix=unique("gw"),
        gateway=True,
        extra_env={"AUTH_JWT_SECRET": TEST_SECRET, "SHUTDOWN_DRAIN_SECONDS": "2"},
    )
    await asyncio.to_thread(running.start)
    yield running
    exit_codes = await asyncio.to_thread(running.stop)
    assert set(exit_codes) == {"gateway", *SERVICES, WEB}
    assert -signal.SIGKILL not in exit_codes.values(), exit_codes  # each stopped on SIGTERM


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.public_url, timeout=20) as client:
        yield client


async def dev_token(http: httpx.AsyncClient, user: str) -> str:
    minted = await http.post("/dev/token", json={"userId": user})
    assert minted.status_code == 200, minted.text
    token: str = minted.json()["token"]
    return token


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), color=(200, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_the_page_and_its_files_come_through_unchanged(stack: Stack, http: httpx.AsyncClient) -> None:
    page = await http.get("/", headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-encoding"] == "gzip"  # passed through, not re-encoded
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<meta name="chat-dev-login" content="on">' in page.text  # make dev: "sign in as ..."
    direct = httpx.get(f"{stack.url(WEB)}/web/app.js")
    through = await http.get("/web/app.js")
    assert through.status_code == 200
    assert through.content == direct.content
    assert through.headers["etag"] == direct.headers["etag"]
    revalidated = await http.get("/web/app.js", headers={"If-None-Match": through.headers["etag"]})
    assert revalidated.status_code == 304


async def test_a_text_message_reaches_the_other_user_on_the_socket(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    alice, bob = await dev_token(http, "alice"), await dev_token(http, "bob")
    created = await http.post(
        "/conversations", json={"participantIds": ["bob"]}, headers={"Authorization": f"Bearer {alice}"}
    )
    assert created.status_code == 201, created.text
    cid = created.json()["conversationId"]
    ws_url = stack.public_url.replace("http://", "ws://") + f"/ws?access_token={bob}"
    async with connect(ws_url) as bob_socket:
        ready = json.loads(await asyncio.wait_for(bob_socket.recv(), 10))
        assert ready["type"] == "session.ready"
        sent = await http.post(
            f"/conversations/{cid}/messages",
            json={"content": "hi bob", "messageType": "text"},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert sent.status_code == 201, sent.text
        event = json.loads(await asyncio.wait_for(bob_socket.recv(), 5))
        assert event["type"] == "message.created"
        assert event["message"] == sent.json()
    listed = await http.get(f"/conversations/{cid}/messages", headers={"Authorization": f"Bearer {bob}"})
    assert [m["content"] for m in listed.json()["items"]] == ["hi bob"]


async def closed_with(url: str) -> tuple[int | None, str]:
    async with connect(url) as socket:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 10)
        assert socket.close_code is not None
        return socket.close_code, socket.close_reason or ""


async def test_a_refused_socket_keeps_the_services_close_code_and_reason(stack: Stack) -> None:
    through = stack.public_url.replace("http://", "ws://") + "/ws?access_token=not-a-token"
    direct = stack.url("message").replace("http://", "ws://") + "/ws?access_token=not-a-token"
    code, reason = await closed_with(through)
    assert code == 4401  # the page signs out on it, instead of reconnecting forever
    assert (code, reason) == await closed_with(direct)


async def test_an_image_goes_through_upload_bucket_send_and_proxy_on_one_origin(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    alice = await dev_token(http, "alice")
    auth = {"Authorization": f"Bearer {alice}"}
    created = await http.post("/conversations", json={"participantIds": ["bob"]}, headers=auth)
    cid = created.json()["conversationId"]
    issued = await http.post(
        f"/conversations/{cid}/images/upload_url", json={"content_type": "image/jpeg"}, headers=auth
    )
    assert issued.status_code == 200, issued.text  # the message service has no such route: upload got it
    grant = issued.json()
    assert grant["file_url"] == f"{stack.public_url}/images/{cid}/{grant['object_key']}"
    data = jpeg()
    put = await http.put(grant["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text
    sent = await http.post(
        f"/conversations/{cid}/messages",
        json={
            "content": "",
            "messageType": "image",
            "metadata": {
                "object_key": grant["object_key"],
                "url": grant["file_url"],
                "content_type": "image/jpeg",
            },
        },
        headers=auth,
    )
    assert sent.status_code == 201, sent.text
    # What an <img> does: the page's cookie, no header; the proxy's redirect passes through the gateway.
    path = grant["file_url"].removeprefix(stack.public_url)
    # The proxy serves the media processor's sanitized copy: it waits while the image is processing, and
    # answers 503 with Retry-After past MEDIA_WAIT_SECONDS (a busy machine), so a client asks again.
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        viewed = await http.get(path, headers={"Cookie": f"access_token={alice}"})
        if viewed.status_code != 503 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(float(viewed.headers.get("Retry-After", "1")))
    assert viewed.status_code in (200, 302), viewed.text
    if viewed.status_code == 302:
        viewed = await http.get(viewed.headers["location"])
    served, uploaded = Image.open(io.BytesIO(viewed.content)), Image.open(io.BytesIO(data))
    assert (served.format, served.size) == ("JPEG", uploaded.size)
    assert not served.getexif()  # the server's own copy: no metadata
    assert (await http.get(path)).status_code in (401, 403)


async def test_paths_the_chart_does_not_route_are_not_reachable(http: httpx.AsyncClient) -> None:
    for path in ("/metrics", "/readyz", "/docs", "/nowhere"):
        answer = await http.get(path)
        assert answer.status_code == 404, path


async def test_stopping_the_gateway_ends_open_sockets_as_going_away(stack: Stack) -> None:
    # a second gateway over the same processes, so the module's stays up
    port = harness.free_port()
    upstreams = [f"--upstream={name}={service.url}" for name, service in stack.services.items()]
    front = ServiceProcess(
        "gateway-2",
        port,
        stack.workdir / "gateway-2.log",
        command=(sys.executable, "-m", "chat_devstack.gateway", "--port", str(port), *upstreams),
        ready_path="/",
    )
    front.start(stack.env())
    try:
        await asyncio.to_thread(front.wait_ready)
        async with connect(f"ws://127.0.0.1:{port}/ws?access_token={token_for('bob')}") as socket:
            assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "session.ready"
            started = time.monotonic()
            exit_code = await asyncio.to_thread(front.stop)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 5)
            assert socket.close_code == 1001
        assert time.monotonic() - started < 5
        assert exit_code != -signal.SIGKILL
    finally:
        await asyncio.to_thread(front.stop)


async def test_a_process_that_is_down_answers_502_not_a_hang() -> None:
    nobody = harness.free_port()
    app = gateway.create_app(gateway.load_routes(), {"message": f"http://127.0.0.1:{nobody}"})
    runner = web.AppRunner(app)
    await runner.setup()
    port = harness.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            down = await client.get("/conversations")
            assert down.status_code == 502
            assert down.json()["code"] == "upstream_unreachable"
            not_started = await client.get("/")  # the page: no upstream given at all
            assert not_started.status_code == 502
            assert not_started.json()["code"] == "no_upstream"
    finally:
        await runner.cleanup()
