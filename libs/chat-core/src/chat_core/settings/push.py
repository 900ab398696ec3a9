"""Push providers (webhook, FCM, APNs) and the image previews pushes carry."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from chat_core.settings.base import Frozen, env


class PushSettings(Frozen, frozen=True, kw_only=True):
    webhook_url: Annotated[str, env("PUSH_WEBHOOK_URL", "Receiver of PUSH_PROVIDER=webhook.")] = ""
    webhook_secret: Annotated[
        str, env("PUSH_WEBHOOK_SECRET", "HMAC-SHA256 key for the webhook's `X-Chat-Signature` header.")
    ] = ""
    fcm_credentials_file: Annotated[
        str,
        env(
            "FCM_CREDENTIALS_FILE",
            "Service-account JSON for PUSH_PROVIDER=fcm; empty: Application Default Credentials.",
        ),
    ] = ""
    fcm_project_id: Annotated[str, env("FCM_PROJECT_ID", "Firebase project (default: the credentials').")] = (
        ""
    )
    fcm_endpoint: Annotated[str, env("FCM_ENDPOINT", "FCM HTTP v1 base URL.")] = "https://fcm.googleapis.com"
    fcm_token_url: Annotated[str, env("FCM_TOKEN_URL", "OAuth token endpoint for the service account.")] = (
        "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    )
    apns_key_file: Annotated[
        str,
        env(
            "APNS_KEY_FILE",
            "PUSH_PROVIDER=apns: the APNs auth key (`AuthKey_<KEYID>.p8`, a P-256 key in PEM), a mounted "
            "secret file; the tokens it signs (ES256) are APNs' token-based authentication.",
        ),
    ] = ""
    apns_key_id: Annotated[str, env("APNS_KEY_ID", "PUSH_PROVIDER=apns: the key's id (10 characters).")] = ""
    apns_team_id: Annotated[str, env("APNS_TEAM_ID", "PUSH_PROVIDER=apns: the Apple developer team id.")] = ""
    apns_topic: Annotated[
        str, env("APNS_TOPIC", "PUSH_PROVIDER=apns: the app's bundle id (`apns-topic`).")
    ] = ""
    apns_environment: Annotated[
        Literal["production", "sandbox"],
        env(
            "APNS_ENVIRONMENT",
            "`production` (api.push.apple.com) or `sandbox` (api.sandbox.push.apple.com: debug builds).",
        ),
    ] = "production"
    apns_endpoint: Annotated[
        str, env("APNS_ENDPOINT", "APNs base URL; empty: APNS_ENVIRONMENT's (tests point it elsewhere).")
    ] = ""
    image_previews: Annotated[
        bool,
        env(
            "PUSH_IMAGE_PREVIEWS",
            "Pushes of image messages carry a link to the thumbnail (FCM `notification.image`, APNs "
            "`mutable-content`), so the lock screen shows the photo; `false` keeps photos off lock screens.",
        ),
    ] = True
    image_url_seconds: Annotated[
        int,
        env("PUSH_IMAGE_URL_SECONDS", "How long a push's thumbnail link works (it needs no token)."),
        msgspec.Meta(ge=1, le=3600),
    ] = 600
    image_url_secret: Annotated[
        str,
        env(
            "PUSH_IMAGE_URL_SECRET",
            "HMAC key of the push thumbnail links (the consumer signs, the image proxy checks; at least 32 "
            "characters). Empty: derived from AUTH_JWT_SECRET; with neither, pushes carry no image.",
        ),
    ] = ""
