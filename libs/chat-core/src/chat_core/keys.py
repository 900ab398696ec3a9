"""Object-key layout (DESIGN.md "Keys"), in one place for upload, send, serve and cleanup.

``object_key`` (what clients see) is ``images/{uploader_id}/{yyyymmdd-HHMMSS}-{uuid}.{ext}``; the stored
key is ``uploads/{conversation_id}/{object_key}``. Parsing is strict (a regular expression over the whole
key), so nothing like ``..``, ``//``, encoded slashes or another extension ever reaches a store.

Raw uploads share one server-side prefix, ``RAW_UPLOAD_PREFIX``, because S3 lifecycle rules, event
notifications and IAM resources select objects by prefix only: ``uploads/`` is what expires, what the
media queue hears about and what the upload role may write, while derivatives under
``{conversation_id}/media/`` are never matched (docs/adr/0001-raw-upload-prefix.md). Clients never see the
prefix: ``object_key`` and ``file_url`` keep the spec's shapes.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import msgspec

from chat_core.errors import ProblemError

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "DERIVATIVE_EXTENSIONS",
    "EXTENSIONS",
    "RAW_UPLOAD_PREFIX",
    "USER_ID_PATTERN",
    "UUID_PATTERN",
    "VARIANTS",
    "InvalidKey",
    "ParsedKey",
    "accepted_content_type",
    "derivative_key",
    "derivative_prefix",
    "new_object_key",
    "parse_conversation_key",
    "parse_object_key",
    "parse_stored_key",
    "stored_key",
]

# What the media processor writes per image message, under ``{conversation_id}/media/{message_id}/``.
VARIANTS = ("original", "preview", "thumbnail")
# Derivatives are re-encoded by the server: HEIC/HEIF never appears among them.
DERIVATIVE_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}

# Patterns end in ``(?!\n)$``: Python's ``$`` also matches before a trailing newline, so ``"alice\n"`` would
# pass a plain ``^…$`` (msgspec searches with the pattern as written), while ECMAScript (the OpenAPI
# documents, client generators) reads the same text as a plain end anchor. Code matches with ``fullmatch``.
# A user id (the token's ``sub``) is a key segment: never ``..``, never a slash.
USER_ID_PATTERN = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}(?!\n)$")
# ``uploads`` is no conversation id: its derivatives ({cid}/media/...) would fall under RAW_UPLOAD_PREFIX.
CONVERSATION_ID_PATTERN = re.compile(r"^(?!uploads(?!\n)$)[A-Za-z0-9][A-Za-z0-9_-]{0,63}(?!\n)$")
# Every raw upload lives under this prefix (lifecycle, notification and IAM rules target it).
RAW_UPLOAD_PREFIX = "uploads/"
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}
# A UUID as ``str(uuid.uuid4())`` writes it: message ids and the unique part of object keys.
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_PATTERN = re.compile(f"^{UUID}(?!\\n)$")
_OBJECT_KEY = re.compile(
    r"^images/(?P<uploader>[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127})/"
    rf"(?P<stamp>\d{{8}}-\d{{6}})-(?P<uuid>{UUID})"
    r"\.(?P<ext>jpg|png|gif|webp|heic|heif)\Z"
)


def accepted_content_type(declared: str, allowed: frozenset[str]) -> str:
    """The canonical (lower-case) media type of ``declared``; a 415 ``unsupported_image_type`` problem
    naming the accepted ones when it is not among ``allowed``."""
    # Media types are case-insensitive; the signed and stored type is the canonical lower-case one.
    content_type = declared.strip().lower()
    if content_type not in allowed:
        raise ProblemError(
            415,
            "unsupported_image_type",
            f"content_type {declared!r} is not accepted; use one of {', '.join(sorted(allowed))}",
            extra={"allowed_types": sorted(allowed)},
        )
    return content_type


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
    match = _OBJECT_KEY.fullmatch(object_key)
    if match is None or ".." in object_key:
        raise InvalidKey("object_key does not have the layout images/{user}/{yyyymmdd-HHMMSS}-{uuid}.{ext}")
    return ParsedKey(uploader_id=match["uploader"], extension=match["ext"])


def stored_key(conversation_id: str, object_key: str) -> str:
    if not CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
        raise InvalidKey("conversation id is malformed")
    parse_object_key(object_key)
    return f"{RAW_UPLOAD_PREFIX}{conversation_id}/{object_key}"


def parse_conversation_key(key: str) -> tuple[str, str, ParsedKey]:
    """(conversation_id, object_key, parsed) of ``{conversation_id}/{object_key}``; raises InvalidKey.

    The form a client may name an image by (the path of its ``file_url`` after ``/images/``).
    """
    conversation_id, _, object_key = key.partition("/")
    if not CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
        raise InvalidKey("conversation id is malformed")
    return conversation_id, object_key, parse_object_key(object_key)


def parse_stored_key(key: str) -> tuple[str, str, ParsedKey]:
    """(conversation_id, object_key, parsed) of a stored raw-upload key; raises InvalidKey."""
    if not key.startswith(RAW_UPLOAD_PREFIX):
        raise InvalidKey(f"a stored upload key starts with {RAW_UPLOAD_PREFIX}")
    return parse_conversation_key(key.removeprefix(RAW_UPLOAD_PREFIX))


def derivative_prefix(conversation_id: str, message_id: str) -> str:
    """``{conversation_id}/media/{message_id}/``: where one message's derivatives live.

    Server-only: every key an upload URL may name starts with ``RAW_UPLOAD_PREFIX``, and ``uploads``
    is no conversation id, so no upload URL can name a derivative (and the upload role may write
    nothing else: deploy/iam).
    """
    if not CONVERSATION_ID_PATTERN.match(conversation_id):
        raise InvalidKey("conversation id is malformed")
    if not UUID_PATTERN.match(message_id):
        raise InvalidKey("message id is malformed")
    return f"{conversation_id}/media/{message_id}/"


def derivative_key(conversation_id: str, message_id: str, variant: str, content_type: str) -> str:
    """``{conversation_id}/media/{message_id}/{variant}.{ext}``; raises InvalidKey."""
    if variant not in VARIANTS:
        raise InvalidKey(f"no variant {variant!r}; one of {', '.join(VARIANTS)}")
    ext = DERIVATIVE_EXTENSIONS.get(content_type)
    if ext is None:
        raise InvalidKey(f"no derivative layout for content type {content_type!r}")
    return f"{derivative_prefix(conversation_id, message_id)}{variant}.{ext}"
