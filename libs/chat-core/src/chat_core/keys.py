"""Object-key layout (DESIGN.md "Keys"), in one place for upload, send, serve and cleanup.

``object_key`` (what clients see) is ``images/{uploader_id}/{yyyymmdd-HHMMSS}-{uuid}.{ext}``; the stored
key is ``{conversation_id}/{object_key}``. Parsing is strict (a regular expression over the whole key),
so nothing like ``..``, ``//``, encoded slashes or another extension ever reaches a store.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import msgspec

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "EXTENSIONS",
    "USER_ID_PATTERN",
    "InvalidKey",
    "ParsedKey",
    "new_object_key",
    "parse_object_key",
    "parse_stored_key",
    "stored_key",
]

# A user id (the token's ``sub``) is a key segment: never ``..``, never a slash.
USER_ID_PATTERN = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
CONVERSATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}
_OBJECT_KEY = re.compile(
    r"^images/(?P<uploader>[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127})/"
    r"(?P<stamp>\d{8}-\d{6})-(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.(?P<ext>jpg|png|gif|webp|heic|heif)$"
)


class InvalidKey(ValueError):
    pass


class ParsedKey(msgspec.Struct, frozen=True):
    uploader_id: str
    extension: str


def new_object_key(uploader_id: str, content_type: str, now: dt.datetime | None = None) -> str:
    ext = EXTENSIONS.get(content_type)
    if ext is None:
        raise InvalidKey(f"no key layout for content type {content_type!r}")
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    return f"images/{uploader_id}/{stamp}-{uuid.uuid4()}.{ext}"


def parse_object_key(object_key: str) -> ParsedKey:
    match = _OBJECT_KEY.match(object_key)
    if match is None or ".." in object_key:
        raise InvalidKey("object_key does not have the layout images/{user}/{yyyymmdd-HHMMSS}-{uuid}.{ext}")
    return ParsedKey(uploader_id=match["uploader"], extension=match["ext"])


def stored_key(conversation_id: str, object_key: str) -> str:
    if not CONVERSATION_ID_PATTERN.match(conversation_id):
        raise InvalidKey("conversation id is malformed")
    parse_object_key(object_key)
    return f"{conversation_id}/{object_key}"


def parse_stored_key(key: str) -> tuple[str, str, ParsedKey]:
    """(conversation_id, object_key, parsed) of a stored key; raises InvalidKey."""
    conversation_id, _, object_key = key.partition("/")
    if not CONVERSATION_ID_PATTERN.match(conversation_id):
        raise InvalidKey("conversation id is malformed")
    return conversation_id, object_key, parse_object_key(object_key)
