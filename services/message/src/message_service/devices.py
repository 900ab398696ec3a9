"""``PUT /me/devices/{token}`` and ``DELETE /me/devices/{token}``: where the caller's pushes go.

A token belongs to one user at a time: registering a token another user had moves it (the device was
handed over or the app signed in as someone else). Tokens the push provider reports dead are deleted by
the notification consumer.

A user has at most ``MAX_DEVICES_PER_USER`` tokens (10). Registering one more evicts the least recently
registered (rather than a 409): apps register their token at every start, so the evicted one is the
phone sold, the app uninstalled or the browser profile deleted, whose token would only fail later; and
a user is never locked out of pushes on the phone in their hand by tokens they cannot see. The store
does it atomically, so registrations in parallel cannot pass the limit (one message then fans out to
at most that many pushes per recipient).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec
import structlog
from litestar import Response, delete, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter

from chat_core.auth import Principal
from chat_core.chatstore import Device, DeviceProvider, DeviceStore, Platform
from chat_core.errors import ProblemError

__all__ = ["ROUTES", "DeviceRegistration", "DeviceService"]

_log = structlog.get_logger("message_service.devices")

# FCM registration tokens, APNs device tokens (hex) and the like: no spaces, no slashes.
_TOKEN = re.compile(r"^[A-Za-z0-9_:.\-]{8,4096}(?!\n)$")
# Documented (not enforced by Litestar: the service answers its own `invalid_device_token`).
DeviceToken = Annotated[
    str,
    PathParameter(
        description="The push token (FCM registration token, APNs hex token...).",
        schema_extra={"pattern": _TOKEN.pattern, "minLength": 8, "maxLength": 4096},
    ),
]


class DeviceRegistration(msgspec.Struct, frozen=True, kw_only=True):
    platform: Annotated[Platform, msgspec.Meta(description="`ios`, `android` or `web`.")]
    provider: Annotated[
        DeviceProvider,
        msgspec.Meta(
            description="The push service the token is for: `fcm` (an FCM registration token, the default) "
            "or `apns` (a raw APNs device token, for iOS apps without Firebase)."
        ),
    ] = "fcm"


class DeviceService:
    def __init__(self, store: DeviceStore, *, max_devices: int) -> None:
        self._store = store
        self._max_devices = max_devices

    @staticmethod
    def _check(token: str) -> None:
        if not _TOKEN.fullmatch(token):
            raise ProblemError(
                400,
                "invalid_device_token",
                "a device token is 8 to 4096 letters, digits, '_', ':', '.' or '-'",
            )

    async def register(
        self, user_id: str, token: str, platform: Platform, provider: DeviceProvider = "fcm"
    ) -> Device:
        self._check(token)
        device = Device(
            token=token,
            platform=platform,
            user_id=user_id,
            updated_at=dt.datetime.now(dt.UTC),
            provider=provider,
        )
        evicted = await self._store.put_device(device, max_devices=self._max_devices)
        if evicted:  # how many, never which: a token is a credential to push to someone
            _log.info("devices_evicted", user_id=user_id, evicted=len(evicted), limit=self._max_devices)
        return device

    async def unregister(self, user_id: str, token: str) -> None:
        self._check(token)
        if not await self._store.delete_device(user_id, token):
            raise ProblemError(404, "device_not_found", "you have no device with this token")


@put(
    "/me/devices/{token:str}",
    status_code=200,
    summary="Register a device for push notifications",
    description=(
        "Idempotent; a token registered by another user moves to the caller. A user keeps at most "
        "`MAX_DEVICES_PER_USER` tokens (10): one more evicts the least recently registered. `provider` says "
        "which push service the token is for (`fcm` by default, `apns` for a raw APNs device token)."
    ),
    tags=["devices"],
)
async def register_device(
    token: DeviceToken,
    data: JSONBody[DeviceRegistration],
    principal: NamedDependency[Principal],
    device_service: NamedDependency[DeviceService],
) -> Device:
    return await device_service.register(principal.user_id, token, data.platform, data.provider)


@delete("/me/devices/{token:str}", status_code=204, summary="Stop pushes to a device", tags=["devices"])
async def unregister_device(
    token: DeviceToken,
    principal: NamedDependency[Principal],
    device_service: NamedDependency[DeviceService],
) -> Response[None]:
    await device_service.unregister(principal.user_id, token)
    return Response(None, status_code=204)


ROUTES = [register_device, unregister_device]
