"""``chat-management smoke``: one image message end to end over plain HTTP, as a client would send it.

    every component's /readyz (``--ready name=url``) -> upload URL -> PUT the bytes -> send the image
    message -> the media processor marks it ``ready`` -> fetch it through the proxy (a member gets the
    same bytes, a stranger does not)

With ``--ready-only`` it asks the readiness of the components alone (the chart's ``helm test`` in a
profile whose tokens come from a real identity provider).

It is the chart's ``helm test`` Job and is meant for any deployment: point ``--base-url`` at the ingress,
or ``--upload-url``/``--message-url``/``--proxy-url`` at the services themselves. Tokens are minted with
``AUTH_JWT_SECRET`` (dev/test), or given with ``--token`` (and ``--stranger-token``) for a deployment
that verifies tokens of a real identity provider. Each step prints one JSON line; the exit code is 0 when
every step passed.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from chat_core import image_headers

__all__ = ["SmokeFailed", "SmokeTargets", "png", "walk"]

PNG_SIZE = (7, 5)


class SmokeFailed(Exception):
    pass


@dataclass
class SmokeTargets:
    upload_url: str
    message_url: str
    proxy_url: str
    token: str  # the sender
    peer_token: str | None = None  # a second member, who must see the image (optional)
    peer_id: str | None = None
    stranger_token: str | None = None  # not a member: must be refused
    ready_urls: dict[str, str] = field(default_factory=dict)  # component -> base URL: /readyz must be 200
    ready_only: bool = False
    timeout: float = 15.0
    steps: list[dict[str, Any]] = field(default_factory=list)


def png(width: int, height: int) -> bytes:
    """A real PNG (grey, 8-bit), built by hand: the runtime image has no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes((x * 30 + y * 10) % 256 for x in range(width)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@contextmanager
def _step(
    targets: SmokeTargets, name: str, emit: Callable[[dict[str, Any]], None]
) -> Iterator[dict[str, Any]]:
    record: dict[str, Any] = {"step": name}
    started = time.perf_counter()
    try:
        yield record
    except Exception as exc:
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    else:
        record["ok"] = True
    finally:
        record["ms"] = round((time.perf_counter() - started) * 1000, 1)
        targets.steps.append(record)
        emit(record)


def _expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        request = response.request
        raise SmokeFailed(
            f"{request.method} {request.url.path} -> {response.status_code}: {response.text[:300]}"
        )
    if not response.content or not response.headers.get("content-type", "").startswith("application/json"):
        return {}
    body: dict[str, Any] = response.json()
    return body


async def _image_ready(
    http: httpx.AsyncClient, targets: SmokeTargets, conversation_id: str, message_id: str
) -> dict[str, Any]:
    """The message as listed once the media processor has made its variants (``status: ready``)."""
    deadline = time.monotonic() + targets.timeout
    status = None
    while time.monotonic() < deadline:
        page = _expect(
            await http.get(
                f"{targets.message_url}/conversations/{conversation_id}/messages",
                params={"limit": 10},
                headers={"Authorization": f"Bearer {targets.token}"},
            ),
            200,
        )
        for item in page.get("items", []):
            if item.get("messageId") == message_id:
                status = (item.get("metadata") or {}).get("status")
                if status == "ready":
                    return dict(item)
                if status == "failed":
                    raise SmokeFailed(f"the media processor failed the image: {item.get('metadata')}")
        await asyncio.sleep(0.2)
    raise SmokeFailed(
        f"the image was still {status!r} after {targets.timeout:.0f}s (is the media processor up?)"
    )


async def check_ready(
    http: httpx.AsyncClient, targets: SmokeTargets, emit: Callable[[dict[str, Any]], None]
) -> None:
    for component, url in targets.ready_urls.items():
        with _step(targets, f"readyz:{component}", emit) as record:
            response = await http.get(f"{url.rstrip('/')}/readyz")
            record["status"] = response.status_code
            if response.status_code != 200:
                raise SmokeFailed(f"{component} is not ready: {response.status_code} {response.text[:300]}")
            # "degraded" is a 200 (the pod stays in rotation) but a backend does not answer: right after
            # an install that is a missing credential or a closed path, not a blip.
            if response.json().get("status") != "ready":
                raise SmokeFailed(f"{component} is degraded: {response.text[:300]}")


async def walk(targets: SmokeTargets, emit: Callable[[dict[str, Any]], None] = lambda _: None) -> None:
    """Run the walk; raises SmokeFailed (or an HTTP error) at the first step that fails."""
    auth = {"Authorization": f"Bearer {targets.token}"}
    image = png(*PNG_SIZE)
    async with httpx.AsyncClient(timeout=targets.timeout) as http:
        await check_ready(http, targets, emit)
        if targets.ready_only:
            return
        with _step(targets, "create_conversation", emit) as record:
            others = [targets.peer_id] if targets.peer_id else []
            body = _expect(
                await http.post(
                    f"{targets.message_url}/conversations",
                    json={"participantIds": others, "name": "smoke test"},
                    headers=auth,
                ),
                201,
            )
            conversation_id = str(body["conversationId"])
            record["conversation_id"] = conversation_id

        with _step(targets, "upload_url", emit) as record:
            issued = _expect(
                await http.post(
                    f"{targets.upload_url}/conversations/{conversation_id}/images/upload_url",
                    json={"content_type": "image/png", "filename": "smoke.png", "size_bytes": len(image)},
                    headers=auth,
                ),
                200,
                201,
            )
            record["object_key"] = issued["object_key"]

        with _step(targets, "upload", emit):
            _expect(
                await http.put(issued["upload_url"], content=image, headers={"Content-Type": "image/png"}),
                200,
                201,
                204,
            )

        with _step(targets, "send_image_message", emit) as record:
            message = _expect(
                await http.post(
                    f"{targets.message_url}/conversations/{conversation_id}/messages",
                    json={
                        "messageType": "image",
                        "content": "smoke test",
                        "clientMessageId": f"smoke-{uuid.uuid4().hex}",
                        "metadata": {
                            "object_key": issued["object_key"],
                            "url": issued["file_url"],
                            "content_type": "image/png",
                        },
                    },
                    headers=auth,
                ),
                201,
            )
            metadata = message.get("metadata") or {}
            if (metadata.get("width"), metadata.get("height")) != PNG_SIZE:
                raise SmokeFailed(
                    f"the server measured {metadata.get('width')}x{metadata.get('height')}, not 7x5"
                )
            record["message_id"] = message["messageId"]

        with _step(targets, "image_ready", emit):
            message = await _image_ready(http, targets, conversation_id, str(message["messageId"]))
            metadata = message.get("metadata") or metadata

        # The proxy URL the client got; fetched from the proxy this walk was pointed at.
        image_path = urlsplit(str(metadata.get("url") or issued["file_url"])).path
        viewers = [("fetch_image_as_sender", targets.token)]
        if targets.peer_token:
            viewers.append(("fetch_image_as_member", targets.peer_token))
        for name, token in viewers:
            with _step(targets, name, emit) as record:
                response = await http.get(
                    f"{targets.proxy_url}{image_path}",
                    headers={"Authorization": f"Bearer {token}"},
                    # Redirect mode: on to the signed URL (httpx drops the token when the origin changes).
                    follow_redirects=True,
                )
                _expect(response, 200)
                # The media processor's sanitized copy, not the upload's bytes: the same picture.
                try:
                    served = image_headers.inspect_image(response.content, total_size=len(response.content))
                except image_headers.NotAnImage as exc:
                    raise SmokeFailed(f"the proxy served {len(response.content)} bytes: {exc}") from None
                if (served.content_type, served.width, served.height) != ("image/png", *PNG_SIZE):
                    raise SmokeFailed(
                        f"the proxy served a {served.width}x{served.height} {served.content_type}, "
                        "not the upload's picture"
                    )
                if response.history:
                    record["redirected"] = True

        if targets.stranger_token:
            with _step(targets, "refuse_stranger", emit) as record:
                response = await http.get(
                    f"{targets.proxy_url}{image_path}",
                    headers={"Authorization": f"Bearer {targets.stranger_token}"},
                    follow_redirects=False,
                )
                _expect(response, 403, 404)
                record["status"] = response.status_code


def _emit_json(record: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
    sys.stdout.flush()


def main(targets: SmokeTargets) -> int:
    try:
        asyncio.run(walk(targets, _emit_json))
    except Exception as exc:
        _emit_json({"smoke": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    _emit_json({"smoke": "passed", "steps": len(targets.steps)})
    return 0
