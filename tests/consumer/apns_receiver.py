"""An APNs stand-in: Apple's provider API over HTTP/2 (cleartext, prior knowledge), served by hypercorn.

It checks what APNs checks: HTTP/2 only, ``POST /3/device/<token>``, a provider token (ES256 JWT, ``kid``
= the key id, ``iss`` = the team, ``iat`` within the hour) verified with the key's public half, the topic,
the push type and a JSON payload with ``aps``; and it answers like APNs (200 with ``apns-id``, or a status
with ``{"reason": ...}``), per device as a test chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests import harness

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM456789"
TOPIC = "com.example.chat"


def auth_key(directory: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    """A fresh APNs-style auth key: a P-256 private key in PKCS#8 PEM, as Apple's ``.p8`` files are."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path, key.public_key()


@dataclass
class ApnsRequest:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    http_version: str


@dataclass
class ApnsReceiver:
    public_key: ec.EllipticCurvePublicKey
    errors_for: dict[str, tuple[int, str]] = field(default_factory=dict)  # token -> (status, reason), always
    fail_first: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # token -> answers, then 200
    expired_tokens: set[str] = field(default_factory=set)  # provider tokens answered ExpiredProviderToken
    requests: list[ApnsRequest] = field(default_factory=list)  # every request that reached a device route
    accepted: list[ApnsRequest] = field(default_factory=list)
    provider_tokens: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                await send({"type": f"{event}.complete"})  # lifespan.startup / lifespan.shutdown
                if event == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        status, reason = self._answer(scope, headers, body)
        answer_headers = [(b"apns-id", str(uuid.uuid4()).encode())]
        content = b"" if status == 200 else json.dumps({"reason": reason}).encode()
        if content:
            answer_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": content})
        self.arrived.set()

    def _answer(self, scope: dict[str, Any], headers: dict[str, str], body: bytes) -> tuple[int, str]:
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith("/3/device/"):
            return 404, "BadPath"
        if scope["http_version"] != "2":
            return 400, "BadHttpVersion"  # APNs speaks HTTP/2 only
        token = path.removeprefix("/3/device/")
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "PayloadEmpty"
        request = ApnsRequest(token, headers, payload, scope["http_version"])
        self.requests.append(request)
        bearer = headers.get("authorization", "")
        if not bearer.startswith("bearer "):
            return 403, "MissingProviderToken"
        provider_token = bearer.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(provider_token)
            claims = jwt.decode(provider_token, self.public_key, algorithms=["ES256"], issuer=TEAM_ID)
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        if header.get("kid") != KEY_ID:
            return 403, "InvalidProviderToken"
        if claims["iat"] < time.time() - 3600 or provider_token in self.expired_tokens:
            return 403, "ExpiredProviderToken"
        self.provider_tokens.add(provider_token)
        if headers.get("apns-topic") != TOPIC:
            return 400, "TopicDisallowed"
        if headers.get("apns-push-type") != "alert" or "aps" not in payload:
            return 400, "BadPayload"
        if token in self.errors_for:
            return self.errors_for[token]
        if self.fail_first.get(token):
            return self.fail_first[token].pop(0)
        self.accepted.append(request)
        return 200, ""

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[ApnsRequest]:
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted


@contextlib.asynccontextmanager
async def served(receiver: ApnsReceiver) -> AsyncIterator[str]:
    """Serve ``receiver`` with hypercorn on a free port: its base URL (``http``, HTTP/2 prior knowledge)."""
    port = harness.free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(receiver, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
