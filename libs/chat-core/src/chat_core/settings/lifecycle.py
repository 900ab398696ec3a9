"""Edits, unsend, retention, and the operators' erasure and export."""

from __future__ import annotations

from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env


class LifecycleSettings(Frozen, frozen=True, kw_only=True):
    """Edits, unsend, retention and the operators' erasure and export."""

    edit_window_seconds: Annotated[
        int,
        env(
            "MESSAGE_EDIT_WINDOW_SECONDS",
            "How long after sending the sender may edit a message's content or alt text (0: never).",
        ),
        msgspec.Meta(ge=0),
    ] = 48 * 3600
    retention_days: Annotated[
        int,
        env(
            "MESSAGE_RETENTION_DAYS",
            "Messages older than this are deleted with their images by the retention job (0: kept forever); "
            "a conversation's admin may set its own `retentionDays`.",
        ),
        msgspec.Meta(ge=0, le=36500),
    ] = 0
    retention_interval_seconds: Annotated[
        int,
        env(
            "RETENTION_INTERVAL_SECONDS",
            "How often the message service runs the retention job itself (0: only `chat-management "
            "apply-retention`, e.g. from the chart's CronJob).",
        ),
        msgspec.Meta(ge=0),
    ] = 3600
    export_url_ttl_seconds: Annotated[
        int,
        env("EXPORT_URL_TTL_SECONDS", "Lifetime of the signed download URL of a user's export."),
        msgspec.Meta(ge=60, le=7 * 24 * 3600),
    ] = 900
    export_expiry_days: Annotated[
        int,
        env(
            "EXPORT_EXPIRY_DAYS",
            "How long a user's export zip (`_admin/exports/`) is kept: the retention pass deletes older ones "
            "and `setup` writes the same as a bucket lifecycle rule.",
        ),
        msgspec.Meta(ge=1, le=3650),
    ] = 7
