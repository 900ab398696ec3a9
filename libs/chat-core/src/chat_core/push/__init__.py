"""PushProvider port: deliver one notification to one device.

Adapters: ``log`` (default: a structured log line), ``webhook`` (HTTP POST of JSON with an HMAC-SHA256
signature header) and ``fcm`` (FCM HTTP v1 with service-account OAuth).
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from chat_core.messagestore import Platform

__all__ = ["PushMessage", "PushOutcome", "PushProvider"]


class PushMessage(msgspec.Struct, frozen=True, kw_only=True):
    device_token: str
    platform: Platform
    user_id: str
    title: str
    body: str
    data: dict[str, str]


PushOutcome = Literal["sent", "retry", "invalid_token"]
"""sent: accepted; retry: transient failure; invalid_token: the device is gone (forget it)."""


class PushProvider(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: PushMessage) -> PushOutcome: ...
