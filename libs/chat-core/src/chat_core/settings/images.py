"""What an image may be at send, how the proxy serves it, and when orphans go."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from chat_core.settings.base import Frozen, env


class ImageSettings(Frozen, frozen=True, kw_only=True):
    max_bytes: Annotated[int, env("MAX_IMAGE_BYTES", "Largest accepted image."), msgspec.Meta(ge=1)] = (
        20 * 1024 * 1024
    )
    allowed_types: Annotated[
        tuple[str, ...],
        env("ALLOWED_IMAGE_TYPES", "Comma-separated image content types accepted (SVG and HTML never)."),
    ] = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif")
    upload_url_ttl_seconds: Annotated[
        int,
        env("UPLOAD_URL_TTL_SECONDS", "Lifetime of a presigned upload URL."),
        msgspec.Meta(ge=60, le=7 * 24 * 3600),
    ] = 3600
    proxy_mode: Annotated[
        Literal["redirect", "stream"],
        env(
            "IMAGE_PROXY_MODE",
            "`redirect` (302 to a short-lived signed GET) or `stream` (bytes via the proxy).",
        ),
    ] = "redirect"
    proxy_url_window_seconds: Annotated[
        int,
        env(
            "IMAGE_URL_WINDOW_SECONDS",
            "Signed GET URLs are signed on windows this long, so a viewer gets the same URL within one.",
        ),
        msgspec.Meta(ge=10, le=86400),
    ] = 300
    membership_cache_seconds: Annotated[
        float,
        env(
            "MEMBERSHIP_CACHE_SECONDS", "How stale a cached membership answer may be (0 turns the cache off)."
        ),
        msgspec.Meta(ge=0, le=300),
    ] = 5.0
    orphan_grace_seconds: Annotated[
        int,
        env("ORPHAN_GRACE_SECONDS", "Uploaded objects no message references are deleted after this long."),
        msgspec.Meta(ge=0),
    ] = 24 * 3600
    max_images_per_message: Annotated[
        int,
        env(
            "MAX_IMAGES_PER_MESSAGE",
            "Most images one image message (an album) carries; more is 400 `too_many_images` (1: no albums).",
        ),
        msgspec.Meta(ge=1, le=20),
    ] = 10
