"""Push-only links to one image's thumbnail: what a notification shows on the lock screen.

A push cannot carry the user's access token (it is stored by FCM/APNs and shown to an OS extension), so
the notification consumer signs a link instead, and the image proxy honours it without a token:

    {PUBLIC_BASE_URL}/images/{cid}/{object_key}?variant=thumbnail&push_user=<id>&push_expires=<unix s>
        &push_signature=<base64url HMAC-SHA256>

The HMAC covers the conversation, the object key, the variant (only ``thumbnail`` is ever signed), the
recipient and the expiry, so a link serves exactly one thumbnail, to nobody after ``expires`` (at most
``PUSH_IMAGE_URL_SECONDS`` after the push), and stops working if the recipient leaves the conversation
(the proxy checks their membership as for any request, and audits the access in their name).

The key is ``PUSH_IMAGE_URL_SECRET``, else one derived from ``AUTH_JWT_SECRET`` (never that secret itself):
the consumer and the proxy read the same settings. With neither, there is no key and pushes carry no image.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from chat_core.errors import ProblemError
from chat_core.settings import Settings

__all__ = ["PUSH_LINK_PARAMS", "PushImageLinks", "push_image_links"]

VARIANT = "thumbnail"
PUSH_LINK_PARAMS = ("push_user", "push_expires", "push_signature")
_DERIVATION_LABEL = b"chat-management push image links v1"


class PushImageLinks:
    def __init__(self, key: bytes, base_url: str, lifetime_seconds: int) -> None:
        self._key = key
        self._base_url = base_url.rstrip("/")
        self.lifetime_seconds = lifetime_seconds

    def _signature(self, conversation_id: str, object_key: str, user_id: str, expires: int) -> str:
        text = "\n".join(("push-image", conversation_id, object_key, VARIANT, user_id, str(expires)))
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def link(self, conversation_id: str, object_key: str, user_id: str, *, now: float | None = None) -> str:
        """The thumbnail link for ``user_id``'s push, valid for ``lifetime_seconds`` from ``now``."""
        expires = int(time.time() if now is None else now) + self.lifetime_seconds
        query = urlencode(
            {
                "variant": VARIANT,
                "push_user": user_id,
                "push_expires": str(expires),
                "push_signature": self._signature(conversation_id, object_key, user_id, expires),
            }
        )
        return f"{self._base_url}/images/{quote(conversation_id)}/{quote(object_key)}?{query}"

    def verify(self, conversation_id: str, object_key: str, query: Mapping[str, str]) -> str:
        """The recipient a valid, unexpired link was signed for; a 403 problem otherwise."""
        user_id = query.get("push_user", "")
        expires_text = query.get("push_expires", "")
        signature = query.get("push_signature", "")
        if query.get("variant") != VARIANT or not user_id or not expires_text.isdigit():
            raise _invalid()
        expires = int(expires_text)
        expected = self._signature(conversation_id, object_key, user_id, expires)
        if not hmac.compare_digest(expected, signature):
            raise _invalid()
        if time.time() >= expires:
            raise ProblemError(
                403, "push_link_expired", "this image link has expired; open the app to see it"
            )
        return user_id


def _invalid() -> ProblemError:
    return ProblemError(403, "push_link_invalid", "this image link is not valid")


def push_image_links(settings: Settings) -> PushImageLinks | None:
    """The signer/checker of push image links, or None when no key can be had (previews are then off)."""
    push = settings.push
    if push.image_url_secret:
        key = push.image_url_secret.encode()
    elif settings.auth.jwt_secret:
        key = hmac.new(settings.auth.jwt_secret.encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
    else:
        return None
    return PushImageLinks(key, settings.service.base_url(), push.image_url_seconds)
