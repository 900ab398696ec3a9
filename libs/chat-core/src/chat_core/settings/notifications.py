"""The notification queue and its consumer."""

from __future__ import annotations

from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env


class NotificationSettings(Frozen, frozen=True, kw_only=True):
    """The notification queue and its consumer (whatever the queue's backend)."""

    queue_name: Annotated[str, env("SQS_QUEUE_NAME", "Notification queue name.")] = "chat-notifications"
    dlq_name: Annotated[str, env("SQS_DLQ_NAME", "Dead-letter queue name.")] = "chat-notifications-dlq"
    max_receives: Annotated[
        int,
        env("NOTIFICATION_MAX_RECEIVES", "Deliveries before a notification moves to the dead-letter queue."),
        msgspec.Meta(ge=1, le=1000),
    ] = 5
    visibility_timeout_seconds: Annotated[
        int,
        env("NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS", "How long a received notification stays hidden."),
        msgspec.Meta(ge=1, le=43200),
    ] = 30
    concurrency: Annotated[
        int,
        env("NOTIFICATION_CONCURRENCY", "Queue messages the consumer works on at once."),
        msgspec.Meta(ge=1, le=1000),
    ] = 32
    retry_base_seconds: Annotated[
        float,
        env(
            "NOTIFICATION_RETRY_BASE_SECONDS",
            "Delay before a failed push is retried; doubles with each attempt, at most 15 minutes.",
        ),
        msgspec.Meta(ge=0, le=900),
    ] = 5.0
    push_claim_lease_seconds: Annotated[
        float,
        env(
            "PUSH_CLAIM_LEASE_SECONDS",
            "How long a claim on one device's push holds before a redelivery may push it (a claimer that"
            " crashed before pushing loses nothing); a push gets at most half of it.",
        ),
        msgspec.Meta(gt=0, le=3600),
    ] = 60.0
