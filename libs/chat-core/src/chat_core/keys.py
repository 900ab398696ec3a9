"""Object-key layout (docs/api.md, "Upload an image"), in one place for upload, send, serve and cleanup.

``object_key`` (what clients see) is ``images/{uploader_id}/{yyyymmdd-HHMMSS}-{uuid}.{ext}``; the stored
key is ``uploads/{conversation_id}/{object_key}``. The stamp and the UUID (a version 7 UUID, whose first 48
bits are Unix milliseconds) both say when the upload URL was issued: the media processor measures URL
issued -> object stored from the key alone (``ParsedKey.issued_at``), with no lookup. Parsing
is strict (a regular expression over the whole key), so nothing like ``..``, ``//``, encoded slashes or
another extension ever reaches a store.

Raw uploads share one server-side prefix, ``RAW_UPLOAD_PREFIX``, because S3 lifecycle rules, event
notifications and IAM resources select objects by prefix only: ``uploads/`` is what expires, what the
media queue hears about and what the upload role may write, while derivatives under
``{conversation_id}/media/`` are never matched (docs/adr/0005-raw-upload-prefix.md). Clients never see the
prefix: ``object_key`` and ``file_url`` keep the spec's shapes.

``refused/{conversation_id}/{object_key}`` (``refusal_key``) is where the media processor notes why it
deleted a raw upload on arrival, so a later send of it gets the reason rather than a 404. No upload URL
can name it (they all start with ``uploads/``) and the proxy never serves it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid

import msgspec

from chat_core.errors import ProblemError

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "DERIVATIVE_EXTENSIONS",
    "EXPORT_PREFIX",
    "EXTENSIONS",
    "OBJECT_KEY_PATTERN",
    "OBJECT_REFERENCE_PATTERN",
    "RAW_UPLOAD_PREFIX",
    "REFUSAL_PREFIX",
    "USER_ID_PATTERN",
    "UUID_PATTERN",
    "VARIANTS",
    "InvalidKey",
    "ParsedKey",
    "accepted_content_type",
    "content_type_pattern",
    "derivative_key",
    "derivative_prefix",
    "new_object_key",
    "parse_conversation_key",
    "parse_derivative_key",
    "parse_object_key",
    "parse_refusal_key",
    "parse_stored_key",
    "refusal_key",
    "stored_key",
    "uuid7",
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
# ``uploads`` and ``refused`` are no conversation ids: their derivatives ({cid}/media/...) would fall under
# RAW_UPLOAD_PREFIX or REFUSAL_PREFIX (and so under the prefix rules of IAM, lifecycle and notifications).
CONVERSATION_ID_PATTERN = re.compile(r"^(?!(?:uploads|refused)(?!\n)$)[A-Za-z0-9][A-Za-z0-9_-]{0,63}(?!\n)$")
# Every raw upload lives under this prefix (lifecycle, notification and IAM rules target it).
RAW_UPLOAD_PREFIX = "uploads/"
# Why a raw upload was deleted on arrival (server-only: no upload URL, no proxy path reaches it).
REFUSAL_PREFIX = "refused/"
# Users' exports (server-only, handed out as signed GETs): "_" starts no conversation id, so never a
# derivative's or an upload's key.
EXPORT_PREFIX = "_admin/exports/"
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
# The layout as one portable pattern (ECMAScript and Python read it alike: ``[0-9]``, not ``\d``, which is
# any Unicode digit in Python; no named groups): the OpenAPI documents publish it, ``parse_object_key``
# enforces it.
_KEY_LAYOUT = (
    r"images/([A-Za-z0-9][A-Za-z0-9_.@:-]{0,127})/"  # uploader
    rf"([0-9]{{8}}-[0-9]{{6}})-({UUID})"  # stamp, uuid
    rf"\.({'|'.join(EXTENSIONS.values())})(?!\n)$"  # extension
)
# No ``..`` rule is needed: every segment starts with a letter or digit, so none is ``..`` (and an
# uploader id holding ``..`` is no user id, so such a key is nobody's: 403/404).
OBJECT_KEY_PATTERN = re.compile(rf"^{_KEY_LAYOUT}")
# How a send may name its image: the object_key, or ``{conversation_id}/{object_key}`` (its file_url's path).
OBJECT_REFERENCE_PATTERN = re.compile(
    rf"^(?:(?!(?:uploads|refused|images)/)[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}/)?{_KEY_LAYOUT}"
)


def accepted_content_type(declared: str, allowed: frozenset[str]) -> str:
    """The canonical (lower-case) media type of ``declared``; a 415 ``unsupported_image_type`` problem
    naming the accepted ones when it is not among ``allowed``."""
    # Media types are case-insensitive; the signed and stored type is the canonical lower-case one.
    # Nothing else is forgiven (no surrounding spaces): ``content_type_pattern`` says exactly this.
    content_type = declared.lower()
    if content_type not in allowed:
        raise ProblemError(
            415,
            "unsupported_image_type",
            f"content_type {declared!r} is not accepted; use one of {', '.join(sorted(allowed))}",
            extra={"allowed_types": sorted(allowed)},
        )
    return content_type


def content_type_pattern(allowed: frozenset[str] | set[str]) -> str:
    """A portable pattern (JSON Schema, ECMAScript) matching exactly what ``accepted_content_type`` accepts:
    one of ``allowed``, in any letter case (JSON Schema patterns take no flags)."""

    def any_case(text: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)

    return f"^(?:{'|'.join(any_case(t) for t in sorted(allowed))})(?!\\n)$"


class InvalidKey(ValueError):
    pass


class ParsedKey(msgspec.Struct, frozen=True):
    uploader_id: str
    extension: str
    issued_at: dt.datetime | None = None  # when the upload URL was issued (None: not a valid stamp)


def _uuid7_int(now: dt.datetime) -> int:
    millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | (int.from_bytes(os.urandom(10)) & ((1 << 80) - 1))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    return (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant


def uuid7(now: dt.datetime | None = None) -> uuid.UUID:
    """A version 7 UUID (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    return uuid.UUID(int=_uuid7_int(now or dt.datetime.now(dt.UTC)))


def new_object_key(uploader_id: str, content_type: str, now: dt.datetime | None = None) -> str:
    ext = EXTENSIONS.get(content_type)
    if ext is None:
        raise InvalidKey(f"no key layout for content type {content_type!r}")
    now = now or dt.datetime.now(dt.UTC)
    hexed = f"{_uuid7_int(now):032x}"  # str(uuid.UUID(...)), without building the UUID (one per upload URL)
    return (
        f"images/{uploader_id}/{now:%Y%m%d-%H%M%S}-"
        f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}.{ext}"
    )


def _issued_at(stamp: str, key_uuid: str) -> dt.datetime | None:
    """Milliseconds from a version 7 UUID; else (keys issued before them) the stamp's seconds. None when
    neither is a time (any key of the layout can be sent: one with 48 bits of milliseconds past the year
    9999 is no 500)."""
    try:
        if key_uuid[14] == "7":
            return dt.datetime.fromtimestamp(int(key_uuid[:8] + key_uuid[9:13], 16) / 1000, dt.UTC)
        return dt.datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


def parse_object_key(object_key: str) -> ParsedKey:
    match = OBJECT_KEY_PATTERN.fullmatch(object_key)
    if match is None:
        raise InvalidKey("object_key does not have the layout images/{user}/{yyyymmdd-HHMMSS}-{uuid}.{ext}")
    uploader, stamp, key_uuid, extension = match.groups()
    return ParsedKey(uploader_id=uploader, extension=extension, issued_at=_issued_at(stamp, key_uuid))


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


def refusal_key(raw_key: str) -> str:
    """``refused/{conversation_id}/{object_key}`` for the raw upload ``raw_key``; raises InvalidKey."""
    parse_stored_key(raw_key)
    return REFUSAL_PREFIX + raw_key.removeprefix(RAW_UPLOAD_PREFIX)


def parse_refusal_key(key: str) -> tuple[str, str, ParsedKey]:
    """(conversation_id, object_key, parsed) of a refusal note's key; raises InvalidKey."""
    if not key.startswith(REFUSAL_PREFIX):
        raise InvalidKey(f"a refusal key starts with {REFUSAL_PREFIX}")
    return parse_conversation_key(key.removeprefix(REFUSAL_PREFIX))


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


def derivative_key(
    conversation_id: str, message_id: str, variant: str, content_type: str, index: int | None = None
) -> str:
    """``{conversation_id}/media/{message_id}/{variant}.{ext}``, or for image ``index`` of an album
    ``{conversation_id}/media/{message_id}/{index}/{variant}.{ext}``; raises InvalidKey."""
    if variant not in VARIANTS:
        raise InvalidKey(f"no variant {variant!r}; one of {', '.join(VARIANTS)}")
    ext = DERIVATIVE_EXTENSIONS.get(content_type)
    if ext is None:
        raise InvalidKey(f"no derivative layout for content type {content_type!r}")
    folder = "" if index is None else f"{int(index)}/"
    return f"{derivative_prefix(conversation_id, message_id)}{folder}{variant}.{ext}"


_DERIVATIVE_KEY = re.compile(
    rf"^(?P<conversation>[A-Za-z0-9][A-Za-z0-9_-]{{0,63}})/media/(?P<message>{UUID})/(?:[0-9]{{1,2}}/)?"
    rf"(?P<variant>{'|'.join(VARIANTS)})\.(?P<ext>{'|'.join(sorted(set(DERIVATIVE_EXTENSIONS.values())))})\Z"
)


def parse_derivative_key(key: str) -> tuple[str, str, str]:
    """(conversation_id, message_id, variant) of a derivative's key; raises InvalidKey."""
    match = _DERIVATIVE_KEY.fullmatch(key)
    if match is None or not CONVERSATION_ID_PATTERN.fullmatch(match["conversation"]):
        raise InvalidKey("not {conversation_id}/media/{message_id}/{variant}.{ext}")
    return match["conversation"], match["message"], match["variant"]
