"""The published development secret: fine on a laptop's loopback, refused anywhere else."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from chat_core.settings.base import SettingsError
from chat_core.settings.root import Settings

# The development secret the Makefile, the devstack and the docs hand out: public, so anyone can mint
# tokens with it. Fine on a laptop's loopback, refused anywhere else.
DEV_SECRET_PREFIX = "dev-only-secret-change-me"  # noqa: S105 - the published one, to refuse it
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind or reach) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _production_like(settings: Settings) -> str | None:
    """The first setting that says "this is not a laptop", named as its variable; None when none does."""
    public = urlsplit(settings.service.public_base_url) if settings.service.public_base_url else None
    if public is not None and not is_loopback(public.hostname or ""):
        return f"PUBLIC_BASE_URL={settings.service.public_base_url}"
    if settings.auth.jwks_url:
        return "AUTH_JWKS_URL"
    kinds = settings.backends
    if not settings.aws.endpoint_url and (kinds.object_store == "s3" or kinds.notification_queue == "sqs"):
        return "OBJECT_STORE=s3 or NOTIFICATION_QUEUE=sqs on AWS itself (no AWS_ENDPOINT_URL)"
    if kinds.message_store == "firestore" and not settings.firestore.emulator_host:
        return "MESSAGE_STORE=firestore without FIRESTORE_EMULATOR_HOST"
    if {"fcm", "apns"} & set(kinds.push_provider):
        return "PUSH_PROVIDER=fcm or apns"
    return None


def refuse_dev_secret(settings: Settings, bind_host: str) -> None:
    """Raise ``SettingsError`` when the published dev secret would guard a server reachable by others."""
    if not settings.auth.jwt_secret.startswith(DEV_SECRET_PREFIX):
        return
    if not is_loopback(bind_host):
        raise SettingsError(
            f"AUTH_JWT_SECRET: the published dev secret is refused when binding {bind_host} (not loopback); "
            "set a secret of your own (e.g. `openssl rand -hex 32`) or HOST=127.0.0.1"
        )
    reason = _production_like(settings)
    if reason is not None:
        raise SettingsError(
            f"AUTH_JWT_SECRET: the published dev secret is refused with {reason}; set a secret of your own"
        )
