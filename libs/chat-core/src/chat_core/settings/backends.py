"""Which adapter serves each port (embedded or cloud)."""

from __future__ import annotations

from typing import Annotated, Literal

from chat_core.settings.base import Frozen, env

ObjectStoreKind = Literal["local", "s3"]
MessageStoreKind = Literal["sqlite", "firestore"]
EventBusKind = Literal["memory", "redis"]
QueueKind = Literal["sqlite", "sqs"]
PushKind = Literal["log", "webhook", "fcm", "apns"]
LimitStoreKind = Literal["memory", "redis"]


class BackendSettings(Frozen, frozen=True, kw_only=True):
    object_store: Annotated[
        ObjectStoreKind, env("OBJECT_STORE", "`local` (disk under DATA_DIR) or `s3`.")
    ] = "local"
    message_store: Annotated[
        MessageStoreKind, env("MESSAGE_STORE", "`sqlite` (under DATA_DIR) or `firestore`.")
    ] = "sqlite"
    event_bus: Annotated[
        EventBusKind, env("EVENT_BUS", "Real-time bus and presence: `memory` (one process) or `redis`.")
    ] = "memory"
    notification_queue: Annotated[
        QueueKind, env("NOTIFICATION_QUEUE", "`sqlite` (under DATA_DIR) or `sqs`.")
    ] = "sqlite"
    push_provider: Annotated[
        tuple[PushKind, ...],
        env(
            "PUSH_PROVIDER",
            "`log`, `webhook`, `fcm` or `apns` (APNs directly over HTTP/2), or several, comma-separated "
            "(`fcm,apns`): each device's push goes to the provider its token is for (`provider` at "
            "registration); `log` or `webhook` in the list take the devices no other provider listed is for.",
        ),
    ] = ("log",)
    limit_store: Annotated[
        LimitStoreKind,
        env(
            "LIMIT_STORE",
            "Rate limits, quotas and the storage ledger: `memory` (one process) or `redis` (shared by "
            "replicas, REDIS_URL).",
        ),
    ] = "memory"
