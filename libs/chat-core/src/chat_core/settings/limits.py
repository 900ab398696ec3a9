"""Abuse limits: rate limits, quotas and sizes."""

from __future__ import annotations

from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env


def _rate(name: str, default_meaning: str) -> msgspec.Meta:
    return env(name, f"{default_meaning} (`N/second|minute|hour|day`, moving window: bursts up to N).")


class LimitSettings(Frozen, frozen=True, kw_only=True):
    """Abuse limits: rate limits per user (per client IP before there is one), quotas and sizes."""

    upload_urls: Annotated[str, _rate("RATE_LIMIT_UPLOAD_URLS", "Upload URLs per user")] = "60/minute"
    sends: Annotated[str, _rate("RATE_LIMIT_SENDS", "Messages sent per user")] = "120/minute"
    conversations: Annotated[str, _rate("RATE_LIMIT_CONVERSATIONS", "Conversations created per user")] = (
        "30/minute"
    )
    participant_changes: Annotated[
        str, _rate("RATE_LIMIT_PARTICIPANT_CHANGES", "Participant adds/removes per user")
    ] = "60/minute"
    read_receipts: Annotated[str, _rate("RATE_LIMIT_READ_RECEIPTS", "Read receipts per user")] = "600/minute"
    socket_connects: Annotated[
        str, _rate("RATE_LIMIT_SOCKET_CONNECTS", "Socket connects per user (per client IP without a token)")
    ] = "30/minute"
    socket_messages: Annotated[
        str, _rate("RATE_LIMIT_SOCKET_MESSAGES", "Frames one socket may send (over: close 1008)")
    ] = "120/minute"
    sockets_per_user: Annotated[
        int,
        env("MAX_SOCKETS_PER_USER", "Open sockets per user on one replica (over: close 4429)."),
        msgspec.Meta(ge=1),
    ] = 10
    socket_max_frame_bytes: Annotated[
        int,
        env("SOCKET_MAX_FRAME_BYTES", "Largest frame a client may send on the socket (over: close 1009)."),
        msgspec.Meta(ge=64),
    ] = 4096
    max_request_body_bytes: Annotated[
        int,
        env(
            "MAX_REQUEST_BODY_BYTES",
            "Largest API request body (413 before parsing); the local store's image PUT has its own limit.",
        ),
        msgspec.Meta(ge=1024),
    ] = 64 * 1024
    max_devices_per_user: Annotated[
        int,
        env(
            "MAX_DEVICES_PER_USER",
            "Push tokens a user may have; registering one more evicts the least recently registered.",
        ),
        msgspec.Meta(ge=1),
    ] = 10
    max_pending_uploads: Annotated[
        int,
        env("MAX_PENDING_UPLOADS", "Upload URLs per user whose object is neither sent nor expired."),
        msgspec.Meta(ge=1),
    ] = 20
    upload_bytes_per_day: Annotated[
        int,
        env("UPLOAD_BYTES_PER_DAY", "Image bytes a user may send per UTC day (declared and verified sizes)."),
        msgspec.Meta(ge=1),
    ] = 2 * 1024**3
    key_prefix: Annotated[
        str,
        env("LIMIT_KEY_PREFIX", "Prefix of the limit store's Redis keys (deployments sharing one Redis)."),
        msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$"),
    ] = "chat"
    trusted_proxies: Annotated[
        tuple[str, ...],
        env(
            "TRUSTED_PROXIES",
            "Comma-separated proxy addresses/CIDRs whose X-Forwarded-For names the client (per-IP limits).",
        ),
    ] = ("127.0.0.1",)

    def rate_limits(self) -> dict[str, str]:
        """Each rate limit by its name in metrics and headers, with its env variable's value."""
        return {
            "upload_urls": self.upload_urls,
            "sends": self.sends,
            "conversations": self.conversations,
            "participant_changes": self.participant_changes,
            "read_receipts": self.read_receipts,
            "socket_connects": self.socket_connects,
            "socket_messages": self.socket_messages,
        }
