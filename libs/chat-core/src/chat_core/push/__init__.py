"""PushProvider port: deliver one notification to one device.

Adapters: ``log`` (default: a structured log line), ``webhook`` (HTTP POST of JSON with an HMAC-SHA256
signature header), ``fcm`` (FCM HTTP v1 with service-account OAuth) and ``apns`` (APNs over HTTP/2 with
token-based authentication). ``PushRouter`` holds the configured ones and picks one per device: the one
its token is for (``Device.provider``), else a provider that takes any device (log, webhook).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from chat_core.chatstore import DeviceProvider, Platform

__all__ = ["GENERIC_PROVIDERS", "PushMessage", "PushOutcome", "PushProvider", "PushRouter"]

# Providers that can deliver to any device (they hand the push to something that knows what to do).
GENERIC_PROVIDERS = ("webhook", "log")


class PushMessage(msgspec.Struct, frozen=True, kw_only=True):
    device_token: str
    platform: Platform
    user_id: str
    title: str
    body: str
    data: dict[str, str]
    provider: DeviceProvider = "fcm"  # the service the device token is for
    # A short-lived link to the image's thumbnail (push image previews), for the notification to show.
    image_url: str | None = None


PushOutcome = Literal["sent", "retry", "invalid_token"]
"""sent: accepted; retry: transient failure; invalid_token: the device is gone (forget it)."""


class PushProvider(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: PushMessage) -> PushOutcome: ...


class PushRouter:
    """The configured providers (``PUSH_PROVIDER``, one or more), and which one a device's push takes.

    The providers themselves are the composition root's adapters (started, closed and asked for readiness
    there); the router only picks: the provider named like the device's ``provider``, else the first
    generic one configured (webhook or log), else none (the device cannot be reached with this
    configuration).
    """

    def __init__(self, providers: Sequence[PushProvider]) -> None:
        self.providers = tuple(providers)
        self._by_name = {provider.name: provider for provider in self.providers}
        self._generic = next((p for p in self.providers if p.name in GENERIC_PROVIDERS), None)
        self.name = ",".join(provider.name for provider in self.providers)

    def route(self, provider: DeviceProvider) -> PushProvider | None:
        return self._by_name.get(provider, self._generic)

    async def start(self) -> None:
        return None  # the providers are the composition root's adapters

    async def close(self) -> None:
        return None

    async def send(self, message: PushMessage) -> PushOutcome:
        """Send through the provider the device's token is for; LookupError when none is configured."""
        provider = self.route(message.provider)
        if provider is None:
            raise LookupError(f"no push provider for {message.provider} devices is configured")
        return await provider.send(message)
