"""All settings together, and the rules that span more than one concern."""

from __future__ import annotations

import ipaddress

import limits
from chat_core.keys import EXTENSIONS
from chat_core.settings.auth import AuthSettings
from chat_core.settings.aws import AwsSettings, S3Settings, SqsSettings
from chat_core.settings.backends import BackendSettings
from chat_core.settings.base import Frozen, SettingsError
from chat_core.settings.firestore import FirestoreSettings
from chat_core.settings.images import ImageSettings
from chat_core.settings.lifecycle import LifecycleSettings
from chat_core.settings.limits import LimitSettings
from chat_core.settings.media import MediaSettings
from chat_core.settings.notifications import NotificationSettings
from chat_core.settings.push import PushSettings
from chat_core.settings.redis import PresenceSettings, RedisSettings
from chat_core.settings.service import ServiceSettings
from chat_core.settings.telemetry import TelemetrySettings


class Settings(Frozen, frozen=True, kw_only=True):
    service: ServiceSettings = ServiceSettings()
    auth: AuthSettings = AuthSettings()
    backends: BackendSettings = BackendSettings()
    aws: AwsSettings = AwsSettings()
    s3: S3Settings = S3Settings()
    sqs: SqsSettings = SqsSettings()
    notifications: NotificationSettings = NotificationSettings()
    media: MediaSettings = MediaSettings()
    firestore: FirestoreSettings = FirestoreSettings()
    redis: RedisSettings = RedisSettings()
    presence: PresenceSettings = PresenceSettings()
    images: ImageSettings = ImageSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    limits: LimitSettings = LimitSettings()
    push: PushSettings = PushSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    def validate(self) -> Settings:
        """Cross-field rules; raises ``SettingsError`` naming the variable."""
        auth = self.auth
        if not auth.jwt_secret and not auth.jwks_url:
            raise SettingsError("AUTH_JWT_SECRET or AUTH_JWKS_URL: one must be set")
        if auth.jwt_secret and len(auth.jwt_secret) < 32:
            raise SettingsError("AUTH_JWT_SECRET: must be at least 32 characters")
        if auth.dev_login and not auth.jwt_secret:
            raise SettingsError("DEV_LOGIN: needs AUTH_JWT_SECRET (it mints HS256 dev tokens)")
        if auth.jwks_url and not (auth.issuer and auth.audience):
            raise SettingsError("AUTH_ISSUER and AUTH_AUDIENCE: required with AUTH_JWKS_URL")
        if self.backends.object_store == "s3" and not self.s3.bucket:
            raise SettingsError("S3_BUCKET_NAME: required with OBJECT_STORE=s3")
        providers = self.backends.push_provider
        if not providers or len(set(providers)) != len(providers):
            raise SettingsError("PUSH_PROVIDER: one or more of log, webhook, fcm, apns, each once")
        if "webhook" in providers and not self.push.webhook_url:
            raise SettingsError("PUSH_WEBHOOK_URL: required with PUSH_PROVIDER=webhook")
        if "apns" in providers:
            push = self.push
            for name, value in (
                ("APNS_KEY_FILE", push.apns_key_file),
                ("APNS_KEY_ID", push.apns_key_id),
                ("APNS_TEAM_ID", push.apns_team_id),
                ("APNS_TOPIC", push.apns_topic),
            ):
                if not value:
                    raise SettingsError(f"{name}: required with PUSH_PROVIDER=apns")
        if self.push.image_url_secret and len(self.push.image_url_secret) < 32:
            raise SettingsError("PUSH_IMAGE_URL_SECRET: must be at least 32 characters")
        expiry_days = self.s3.raw_upload_expiry_days
        if expiry_days and expiry_days * 86400 <= self.images.orphan_grace_seconds:
            # The backstop must never beat the send window: an upload still sendable would vanish.
            raise SettingsError("RAW_UPLOAD_EXPIRY_DAYS: must be longer than ORPHAN_GRACE_SECONDS (or 0)")
        for name, value in self.limits.rate_limits().items():
            try:
                limits.parse(value)
            except ValueError:
                raise SettingsError(
                    f"RATE_LIMIT_{name.upper()}={value!r}: not a rate like `60/minute`"
                ) from None
        for proxy in self.limits.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(f"TRUSTED_PROXIES: {proxy!r} is not an address or CIDR") from None
        media = self.media
        if media.visibility_timeout_seconds and media.visibility_timeout_seconds <= media.longest_job_seconds:
            # A job still running would be handed to a second worker (decoded twice, a receive burnt).
            raise SettingsError(
                "MEDIA_VISIBILITY_TIMEOUT_SECONDS: must be longer than the longest media job "
                f"({media.longest_job_seconds:g} s from MEDIA_JOB_TIMEOUT_SECONDS), or 0 to derive it"
            )
        if self.lifecycle.export_expiry_days * 86400 < self.lifecycle.export_url_ttl_seconds:
            # A download URL handed out would outlive the zip it points at.
            raise SettingsError("EXPORT_EXPIRY_DAYS: must be at least EXPORT_URL_TTL_SECONDS")
        for content_type in self.images.allowed_types:
            if content_type not in EXTENSIONS:  # SVG, HTML and anything without a key layout
                known = ", ".join(EXTENSIONS)
                raise SettingsError(f"ALLOWED_IMAGE_TYPES: {content_type!r} is not one of {known}")
        return self
