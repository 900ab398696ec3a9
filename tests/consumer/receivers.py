"""Real HTTP receivers for pushes, served by uvicorn in the tests: a webhook endpoint and an FCM stand-in.

The FCM stand-in speaks the two calls the provider makes (the OAuth token exchange and
``messages:send``) and checks what Google checks: the assertion's RS256 signature with the service
account's public key, its audience and scope, and the bearer token on every send.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar, Request, Response, post
from litestar.params import FromPath

from chat_core.push.fcm import FCM_SCOPE

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records every POST; answers each device token with a chosen status (200 by default)."""

    secret: str = "webhook-secret-for-tests"
    status_for: dict[str, int] = field(default_factory=dict)  # token -> status, every time
    fail_first: dict[str, int] = field(default_factory=dict)  # token -> how many 503s before a 200
    delay: float = 0.0  # seconds each answer takes
    deliveries: list[Delivery] = field(default_factory=list)  # every request, answered or not yet
    answers: list[tuple[Delivery, int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> Litestar:
        @post("/hook", status_code=200)
        async def hook(request: Request[Any, Any, Any]) -> Response[bytes]:
            body = await request.body()
            delivery = Delivery(dict(request.headers), body)
            self.deliveries.append(delivery)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrived.set()
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            token = delivery.json["deviceToken"]
            status = self.status_for.get(token, 200)
            if self.fail_first.get(token, 0) > 0:
                self.fail_first[token] -= 1
                status = 503
            self.answers.append((delivery, status))
            self.arrived.set()
            return Response(b"", status_code=status)

        return Litestar([hook])

    def accepted(self) -> list[Delivery]:
        return [delivery for delivery, status in self.answers if status < 300]

    def attempts(self, token: str) -> int:
        return sum(1 for delivery, _ in self.answers if delivery.json["deviceToken"] == token)

    def tokens(self) -> list[str]:
        return [d.json["deviceToken"] for d in self.accepted()]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` pushes were accepted."""
        return await self.wait_until(lambda: len(self.accepted()) >= count, timeout)

    async def wait_until(self, condition: Any, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``condition()`` holds, checking as each request arrives and as it is answered."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted()

    def signature_valid(self, delivery: Delivery) -> bool:
        timestamp = delivery.headers["x-chat-timestamp"]
        expected = hmac.new(
            self.secret.encode(), timestamp.encode() + b"." + delivery.body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(delivery.headers.get("x-chat-signature", ""), f"sha256={expected}")


def service_account(project: str = "test-project") -> tuple[dict[str, str], rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": f"pusher@{project}.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return account, key.public_key()


@dataclass
class FcmReceiver:
    """An FCM HTTP v1 stand-in: token exchange plus ``messages:send``, with chosen errors per device."""

    public_key: rsa.RSAPublicKey
    client_email: str
    project: str = "test-project"
    base_url: str = ""  # set once served
    errors_for: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # token -> (status, code, msg)
    token_requests: int = 0
    issued: set[str] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def revoke_all(self) -> None:
        self.issued.clear()

    def app(self) -> Litestar:
        @post("/token", status_code=200)
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            form = await request.form()
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return Response({"error": "unsupported_grant_type"}, status_code=400)
            try:
                claims = jwt.decode(
                    str(form.get("assertion")),
                    self.public_key,
                    algorithms=["RS256"],
                    # Google's token endpoint wants its own URL as the audience, wherever it is reached.
                    audience=GOOGLE_TOKEN_AUDIENCE,
                    issuer=self.client_email,
                )
            except jwt.PyJWTError as exc:
                return Response({"error": "invalid_grant", "error_description": str(exc)}, status_code=400)
            if claims.get("scope") != FCM_SCOPE or claims["exp"] - claims["iat"] > 3600:
                return Response({"error": "invalid_scope"}, status_code=400)
            self.token_requests += 1
            access = f"ya29.test-{self.token_requests}-{time.monotonic_ns()}"
            self.issued.add(access)
            return Response({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

        @post("/v1/projects/{project:str}/messages:send", status_code=200)
        async def send(project: FromPath[str], request: Request[Any, Any, Any]) -> Response[Any]:
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if bearer not in self.issued:
                return _fcm_error(
                    401, "UNAUTHENTICATED", "", "Request had invalid authentication credentials."
                )
            if project != self.project:
                return _fcm_error(403, "PERMISSION_DENIED", "", "wrong project")
            message = (await request.json())["message"]
            if message["token"] in self.errors_for:
                status, code, text = self.errors_for[message["token"]]
                return _fcm_error(status, _STATUS_NAMES.get(status, "UNKNOWN"), code, text)
            self.sent.append(message)
            return Response({"name": f"projects/{project}/messages/{len(self.sent)}"})

        return Litestar([token, send])


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _fcm_error(status: int, status_name: str, code: str, text: str) -> Response[Any]:
    error: dict[str, Any] = {"code": status, "message": text, "status": status_name}
    if code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]
    return Response({"error": error}, status_code=status)
