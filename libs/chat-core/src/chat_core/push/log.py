"""Log PushProvider (the default): one structured log line per push, nothing leaves the process.

The line says who gets a push on which device (a fingerprint of its token) and how long its title and
body are, never the text: logs hold no message content."""

from __future__ import annotations

import hashlib

import structlog

from chat_core.push import PushMessage, PushOutcome, PushProvider

__all__ = ["LogPushProvider"]

_log = structlog.get_logger("chat_core.push")


def token_fingerprint(token: str) -> str:
    """Enough of a device token to tell devices apart in logs, without writing the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class LogPushProvider(PushProvider):
    name = "log"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: PushMessage) -> PushOutcome:
        _log.info(
            "push",
            provider=self.name,
            user_id=message.user_id,
            platform=message.platform,
            device=token_fingerprint(message.device_token),
            # How long, never what: a notification's title and body are the message's sender and text.
            title_chars=len(message.title),
            body_chars=len(message.body),
            data=message.data,
            device_provider=message.provider,
            with_image=message.image_url is not None,  # never the link: it is a bearer credential
        )
        return "sent"
