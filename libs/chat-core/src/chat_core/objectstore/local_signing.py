"""URL signing for the local object store: the key file, presigned PUT/GET links and their verification.

Presigned URLs are HMAC-SHA256-signed links to this process's own route ``/_storage/{key}``
(``local_route``). The HMAC key is 32 random bytes created once in ``DATA_DIR/object-url-signing.key``
(mode 0600) and shared by every process using that data dir; it is independent of the JWT secret, so
rotating one never touches the other. A key file holding fewer than ``MIN_SIGNING_KEY_BYTES`` (empty,
truncated, hand-written) is refused at start-up instead of signing with a guessable key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from chat_core.objectstore import PresignedUpload
from chat_core.objectstore.s3 import RESPONSE_OVERRIDES

if TYPE_CHECKING:
    from litestar import Request

__all__ = [
    "CREATE_FLAGS",
    "MIN_SIGNING_KEY_BYTES",
    "SIGNING_KEY_FILE",
    "STORAGE_ROUTE",
    "Grant",
    "InvalidObjectKey",
    "Refusal",
    "SigningKeyError",
    "UrlSigner",
    "key_segments",
    "load_signing_key",
]

STORAGE_ROUTE = "/_storage"
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 200  # leaves room for the sidecar and temporary names within NAME_MAX (255)


class InvalidObjectKey(ValueError):
    """A key the local store refuses: it could name something outside the objects directory."""


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def key_segments(key: str) -> list[str]:
    """The path segments of ``key``; raises InvalidObjectKey for anything that could leave the root."""
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise InvalidObjectKey("an object key must have 1 to 1024 bytes")
    segments = key.split("/")
    for segment in segments:
        if (
            not segment
            or segment.startswith(".")
            or "\\" in segment
            or len(segment.encode()) > _MAX_SEGMENT_BYTES
            or _CONTROL.search(segment)
        ):
            raise InvalidObjectKey(f"object key {key!r} has a forbidden segment")
    return segments


SIGNING_KEY_FILE = "object-url-signing.key"
MIN_SIGNING_KEY_BYTES = 32
CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


class SigningKeyError(ValueError):
    """The URL-signing key file is unusable: refused at start-up rather than signing with a weak key."""


def _checked_signing_key(path: str, content: bytes) -> bytes:
    try:
        key = base64.b64decode(content.strip(), validate=True)
    except ValueError:
        raise SigningKeyError(f"{path}: the URL-signing key is not base64") from None
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise SigningKeyError(
            f"{path}: the URL-signing key has {len(key)} bytes, fewer than {MIN_SIGNING_KEY_BYTES}; "
            "delete the file to have a new one made (every signed link changes)"
        )
    return key


def load_signing_key(path: str) -> bytes:
    """The key in ``path``, created (atomically, once) when missing; raises SigningKeyError."""
    try:
        with open(path, "rb") as existing:
            return _checked_signing_key(path, existing.read())
    except FileNotFoundError:
        pass
    temp = f"{path}.{uuid.uuid4().hex}"
    fd = os.open(temp, CREATE_FLAGS, 0o600)
    try:
        os.write(fd, base64.b64encode(secrets.token_bytes(MIN_SIGNING_KEY_BYTES)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # atomic and exclusive: two processes starting agree on one key
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    with open(path, "rb") as created:
        return _checked_signing_key(path, created.read())


class Grant(msgspec.Struct, frozen=True):
    """What a signed URL grants; its canonical JSON is what the HMAC covers."""

    method: str
    key: str
    expires: int
    content_type: str
    content_length: int | None
    overrides: list[tuple[str, str]]


class Refusal(Exception):
    """An S3-style error answer of the storage route."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what ``quote`` leaves as it is, whatever ``safe`` says
_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


def _quoted(value: str, safe: str) -> str:
    """``quote(value, safe=safe)`` (``safe`` is ``""`` or ``"/~"``), without its cost for the values that
    need no escaping: signatures, expiry times and keys, most of every signed URL."""
    if (_UNRESERVED_PATH if "/" in safe else _UNRESERVED).fullmatch(value):
        return value
    return quote(value, safe=safe)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class UrlSigner:
    """Signs and verifies links to ``{base_url}/_storage/{key}`` with one HMAC key."""

    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self._base_url = base_url

    def signature(self, grant: Grant) -> str:
        return _b64(hmac.digest(self._key, msgspec.json.encode(grant), "sha256"))

    def _url(self, key: str, grant: Grant, params: list[tuple[str, str]]) -> str:
        params = [*params, ("signature", self.signature(grant))]
        query = "&".join(f"{name}={_quoted(value, '')}" for name, value in params)
        return f"{self._base_url}{STORAGE_ROUTE}/{_quoted(key, '/~')}?{query}"

    def presign_put(
        self, key: str, *, content_type: str, content_length: int | None, expires_in: int
    ) -> PresignedUpload:
        expires_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=expires_in)
        grant = Grant(
            method="PUT",
            key=key,
            expires=int(expires_at.timestamp()),
            content_type=content_type,
            content_length=content_length,
            overrides=[],
        )
        params = [("method", "PUT"), ("expires", str(grant.expires)), ("content-type", content_type)]
        headers = {"Content-Type": content_type}
        if content_length is not None:
            params.append(("content-length", str(content_length)))
            headers["Content-Length"] = str(content_length)
        return PresignedUpload(
            url=self._url(key, grant, params), method="PUT", headers=headers, expires_at=expires_at
        )

    def presign_get(
        self,
        key: str,
        *,
        expires_in: int,
        signed_at: dt.datetime | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> str:
        overrides = sorted((name.lower(), value) for name, value in (response_headers or {}).items())
        for name, _ in overrides:
            if name not in RESPONSE_OVERRIDES:
                raise ValueError(f"a signed GET cannot override the response header {name!r}")
        signed_at = signed_at or dt.datetime.now(dt.UTC)
        grant = Grant(
            method="GET",
            key=key,
            expires=int(signed_at.timestamp()) + expires_in,
            content_type="",
            content_length=None,
            overrides=overrides,
        )
        params = [
            ("method", "GET"),
            ("expires", str(grant.expires)),
            *((f"response-{name}", value) for name, value in overrides),
        ]
        return self._url(key, grant, params)

    def verify(self, request: Request[Any, Any, Any], key: str) -> Grant:
        """The grant of a signed URL, or a Refusal with S3's status and code."""
        query = request.query_params
        try:
            content_length = query.get("content-length")
            grant = Grant(
                method=str(query.get("method", "")),
                key=key,
                expires=int(query.get("expires", "")),
                content_type=str(query.get("content-type", "")),
                content_length=int(content_length) if content_length is not None else None,
                overrides=sorted(
                    (name.removeprefix("response-"), str(value))
                    for name, value in query.items()
                    if name.startswith("response-")
                ),
            )
            signature = str(query["signature"])
        except (KeyError, ValueError):
            raise Refusal(403, "AccessDenied", "Query-string authentication requires a signature") from None
        # As bytes: compare_digest refuses str with non-ASCII characters (a hostile signature).
        expected = self.signature(grant).encode()
        if not hmac.compare_digest(signature.encode(), expected) or grant.method != request.method:
            raise Refusal(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
        if time.time() > grant.expires:
            raise Refusal(403, "AccessDenied", "Request has expired")
        return grant
