"""The devices port: push tokens by user."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from chat_core.chatstore.models import Device


class DeviceStore(Protocol):
    """Push tokens by user."""

    async def put_device(self, device: Device, *, max_devices: int | None = None) -> list[str]:
        """Register (or move) a push token; a token belongs to one user at a time.

        With ``max_devices``, the user keeps at most that many tokens: the ones least recently registered
        (``updated_at``, then token) beyond it are deleted in the same atomic step, never the one being
        registered, so concurrent registrations cannot pass the limit. Returns the tokens evicted.
        """

    async def delete_device(self, user_id: str, token: str) -> bool:
        """Remove ``user_id``'s token; False when the user had no such token."""

    async def devices_for(self, user_ids: Collection[str]) -> dict[str, list[Device]]:
        """Devices by user, each list ordered by token; users without a device are absent."""
