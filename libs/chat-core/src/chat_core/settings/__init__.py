"""Typed settings, read once from the environment and validated at start-up.

Every field names the environment variable it comes from (``env("NAME", "what it means")``), so the
loader, the error messages and the configuration table (docs/operations/configuration.md) all come from
one declaration.
A bad or missing value raises ``SettingsError`` with one line that names the variable.

One module per concern (``service``, ``auth``, ``backends``, ``aws``, ``media``, ``images``, ``limits``,
``push``, ``redis``, ...), composed into ``Settings`` in ``root``; ``loading`` reads them from the
environment. This package re-exports every name, so ``from chat_core.settings import X`` is the way in.
"""

from chat_core.settings.auth import AuthSettings
from chat_core.settings.aws import AwsSettings, S3Settings, SqsSettings
from chat_core.settings.backends import (
    BackendSettings,
    EventBusKind,
    LimitStoreKind,
    MessageStoreKind,
    ObjectStoreKind,
    PushKind,
    QueueKind,
)
from chat_core.settings.base import SettingsError, env
from chat_core.settings.dev_secret import DEV_SECRET_PREFIX, is_loopback, refuse_dev_secret
from chat_core.settings.firestore import FirestoreSettings
from chat_core.settings.images import ImageSettings
from chat_core.settings.lifecycle import LifecycleSettings
from chat_core.settings.limits import LimitSettings
from chat_core.settings.loading import iter_env_vars, load_settings, markdown_table
from chat_core.settings.media import (
    MEDIA_JOBS_PER_IMAGE_WORKER,
    MEDIA_TRANSFER_ALLOWANCE_SECONDS,
    MediaSettings,
)
from chat_core.settings.notifications import NotificationSettings
from chat_core.settings.push import PushSettings
from chat_core.settings.redis import PresenceSettings, RedisSettings
from chat_core.settings.root import Settings
from chat_core.settings.service import ServiceSettings
from chat_core.settings.telemetry import TelemetrySettings

__all__ = [
    "DEV_SECRET_PREFIX",
    "MEDIA_JOBS_PER_IMAGE_WORKER",
    "MEDIA_TRANSFER_ALLOWANCE_SECONDS",
    "AuthSettings",
    "AwsSettings",
    "BackendSettings",
    "EventBusKind",
    "FirestoreSettings",
    "ImageSettings",
    "LifecycleSettings",
    "LimitSettings",
    "LimitStoreKind",
    "MediaSettings",
    "MessageStoreKind",
    "NotificationSettings",
    "ObjectStoreKind",
    "PresenceSettings",
    "PushKind",
    "PushSettings",
    "QueueKind",
    "RedisSettings",
    "S3Settings",
    "ServiceSettings",
    "Settings",
    "SettingsError",
    "SqsSettings",
    "TelemetrySettings",
    "env",
    "is_loopback",
    "iter_env_vars",
    "load_settings",
    "markdown_table",
    "refuse_dev_secret",
]
