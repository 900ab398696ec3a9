"""S3 adapter of the ObjectStore port: S3 REST/XML on ``chat_core.aws.AwsClient`` (awscrt SigV4 + aiohttp).

Path-style addressing (``{endpoint}/{bucket}/{key}``) so one code path serves AWS, LocalStack and MinIO.
Presigned URLs point at ``S3_PUBLIC_ENDPOINT_URL`` (what clients reach: the cluster-internal LocalStack name
is useless to a phone), default ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, on real AWS the region's
endpoint in its partition (``https://s3.{region}.amazonaws.com``, ``.amazonaws.com.cn`` in China...).
Presigning is CPU only (credentials are resolved at start-up), so it runs on the event loop.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import NoReturn
from urllib.parse import quote

from chat_core.aws import (
    AwsClient,
    AwsCredentialSource,
    AwsError,
    AwsHttp,
    AwsResponse,
    aws_endpoint,
    uri_encode_path,
)
from chat_core.objectstore import (
    ByteRange,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectRead,
    ObjectStore,
    PresignedUpload,
    RangeNotSatisfiable,
)
from chat_core.settings import Settings

__all__ = ["RESPONSE_OVERRIDES", "S3ObjectStore"]

# Response headers a presigned GET may override (S3's ``response-*`` query parameters).
RESPONSE_OVERRIDES = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-type",
        "expires",
    }
)
# The bucket's browser-upload CORS rule (the spec's), which `chat-management setup` writes.
CORS_ALLOWED_METHODS = ("GET", "PUT", "POST", "HEAD")
CORS_MAX_AGE_SECONDS = 3000
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")
_STREAM_CHUNK = 64 * 1024


def _xml_text(element: ET.Element, name: str) -> str:
    found = element.find(name)
    return found.text or "" if found is not None else ""


def _strip_namespaces(root: ET.Element) -> ET.Element:
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def _parse_xml(body: bytes) -> ET.Element:
    return _strip_namespaces(ET.fromstring(body))  # noqa: S314 - trusted endpoint, see the import


async def _raise_for(response: AwsResponse) -> NoReturn:
    """Raise ``AwsError`` with S3's error code for a non-2xx answer (reads and closes the body)."""
    body = await response.aread()
    code, message = f"Http{response.status_code}", ""
    if body.startswith(b"<"):
        try:
            root = _parse_xml(body)
            code, message = _xml_text(root, "Code") or code, _xml_text(root, "Message")
        except ET.ParseError:
            pass
    raise AwsError(response.status_code, code, message)


def _info_from_headers(key: str, headers: Mapping[str, str], size: int) -> ObjectInfo:
    modified = headers.get("last-modified")
    return ObjectInfo(
        key=key,
        size=size,
        content_type=headers.get("content-type", "application/octet-stream"),
        etag=headers.get("etag", '""'),
        last_modified=parsedate_to_datetime(modified).astimezone(dt.UTC)
        if modified
        else dt.datetime.now(dt.UTC),
    )


def _range_header(byte_range: ByteRange) -> str:
    if byte_range.start < 0 or (byte_range.end is not None and byte_range.end < byte_range.start):
        raise ValueError(f"invalid byte range {byte_range!r}")
    return f"bytes={byte_range.start}-{'' if byte_range.end is None else byte_range.end}"


class S3ObjectStore(ObjectStore):
    name = "s3"
    readiness_name = "s3"
    uses_aws = True  # the composition root resolves credentials before start()

    def __init__(self, settings: Settings, *, http: AwsHttp, credentials: AwsCredentialSource) -> None:
        self.bucket = settings.s3.bucket
        self._region = settings.aws.region
        aws = settings.aws
        endpoint = aws_endpoint("s3", aws.region, override=aws.s3_endpoint_url or aws.endpoint_url)
        self.public_endpoint_url = (settings.s3.public_endpoint_url or endpoint).rstrip("/")
        self._client = AwsClient(
            settings.aws, "s3", endpoint_url=endpoint, http=http, credentials=credentials
        )

    def _object_path(self, key: str) -> str:
        if not key:
            raise ValueError("an object key must not be empty")
        return f"/{self.bucket}/{uri_encode_path(key)}"

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        return None  # the HTTP client and the credentials belong to the composition root

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        response = await self._client.send("HEAD", f"/{self.bucket}")
        if response.status_code != 200:
            raise AwsError(response.status_code, f"Http{response.status_code}", f"bucket {self.bucket}")

    # --- presigning (CPU only) --------------------------------------------------------------------
    def presign_put(
        self, key: str, *, content_type: str, content_length: int | None, expires_in: int
    ) -> PresignedUpload:
        signed_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
        headers = {"Content-Type": content_type}
        if content_length is not None:
            headers["Content-Length"] = str(content_length)
        url = self._client.presign(
            "PUT",
            self._object_path(key),
            expires_in=expires_in,
            signed_headers={name.lower(): value for name, value in headers.items()},
            signed_at=signed_at,
            endpoint_url=self.public_endpoint_url,
        )
        return PresignedUpload(
            url=url, method="PUT", headers=headers, expires_at=signed_at + dt.timedelta(seconds=expires_in)
        )

    def presign_get(
        self,
        key: str,
        *,
        expires_in: int,
        signed_at: dt.datetime | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> str:
        query = ""
        if response_headers:
            params = []
            for name, value in sorted((n.lower(), v) for n, v in response_headers.items()):
                if name not in RESPONSE_OVERRIDES:
                    raise ValueError(f"S3 cannot override the response header {name!r}")
                params.append(f"response-{name}={quote(value, safe='~')}")
            query = "?" + "&".join(params)
        return self._client.presign(
            "GET",
            self._object_path(key) + query,
            expires_in=expires_in,
            signed_at=signed_at,
            endpoint_url=self.public_endpoint_url,
        )

    # --- reads ------------------------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo | None:
        response = await self._client.send("HEAD", self._object_path(key))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            await _raise_for(response)
        return _info_from_headers(key, response.headers, int(response.headers.get("content-length", 0)))

    async def read_prefix(self, key: str, length: int) -> tuple[ObjectInfo, bytes] | None:
        if length < 1:
            raise ValueError("length must be at least 1")
        response = await self._client.send(
            "GET", self._object_path(key), headers={"range": f"bytes=0-{length - 1}"}
        )
        if response.status_code == 404:
            return None
        if response.status_code == 416:  # only an empty object cannot serve byte 0
            info = await self.head(key)
            return None if info is None else (info, b"")
        if response.status_code not in (200, 206):
            await _raise_for(response)
        size = len(response.content)
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        if match:
            size = int(match[3])
        return _info_from_headers(key, response.headers, size), response.content[:length]

    async def read(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        headers = {"if-match": if_match} if if_match is not None else None
        response = await self._client.send("GET", self._object_path(key), headers=headers)
        if response.status_code == 404:
            raise ObjectNotFound(key)
        if response.status_code == 412 and if_match is not None:
            raise ObjectChanged(key, if_match)
        if response.status_code != 200:
            await _raise_for(response)
        return _info_from_headers(key, response.headers, len(response.content)), response.content

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectRead:
        headers = {"range": _range_header(byte_range)} if byte_range is not None else None
        response = await self._client.send("GET", self._object_path(key), headers=headers, stream=True)
        if response.status_code == 404:
            await response.aclose()
            raise ObjectNotFound(key)
        if response.status_code == 416:
            error = await response.aread()
            actual = _xml_text(_parse_xml(error), "ActualObjectSize") if error.startswith(b"<") else ""
            if not actual.isdigit():
                info = await self.head(key)
                if info is None:
                    raise ObjectNotFound(key)
                actual = str(info.size)
            raise RangeNotSatisfiable(int(actual))
        if response.status_code not in (200, 206):
            await _raise_for(response)
        length = int(response.headers.get("content-length", 0))
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        if response.status_code == 206 and match:
            start, end, size = int(match[1]), int(match[2]), int(match[3])
        else:
            start, end, size = 0, length - 1, length

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_bytes(_STREAM_CHUNK):
                    yield chunk
            finally:
                await response.aclose()

        return ObjectRead(
            info=_info_from_headers(key, response.headers, size), start=start, end=end, body=body()
        )

    # --- writes -----------------------------------------------------------------------------------
    async def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        response = await self._client.send(
            "PUT", self._object_path(key), headers={"content-type": content_type}, content=data
        )
        if response.status_code != 200:
            await _raise_for(response)
        # PUT answers no Last-Modified; S3's own clock is the one the rest of the contract uses.
        info = await self.head(key)
        if info is None:
            raise AwsError(404, "NoSuchKey", f"{key} vanished right after it was written")
        return info

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        response = await self._client.send(
            "PUT",
            self._object_path(destination),
            headers={"x-amz-copy-source": self._object_path(source)},
            operation="COPY",
        )
        if response.status_code == 404:
            await response.aread()
            raise ObjectNotFound(source)
        if response.status_code != 200:
            await _raise_for(response)
        # S3 may answer 200 and still fail a copy: the error is then the body (CopyObject's docs).
        body = await response.aread()
        root = _parse_xml(body) if body.lstrip().startswith(b"<") else None
        if root is not None and root.tag == "Error":
            raise AwsError(500, _xml_text(root, "Code") or "CopyFailed", _xml_text(root, "Message"))
        info = await self.head(destination)
        if info is None:
            raise AwsError(404, "NoSuchKey", f"{destination} vanished right after it was copied")
        return info

    async def delete(self, key: str) -> None:
        response = await self._client.send("DELETE", self._object_path(key))
        if response.status_code not in (200, 204, 404):
            await _raise_for(response)

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be within 1..1000 (S3's limit)")
        token: str | None = None
        while True:
            query = f"?list-type=2&max-keys={page_size}&prefix={quote(prefix, safe='~')}"
            if token:
                query += f"&continuation-token={quote(token, safe='~')}"
            response = await self._client.send("GET", f"/{self.bucket}{query}")
            if response.status_code != 200:
                await _raise_for(response)
            root = _parse_xml(response.content)
            for item in root.iter("Contents"):
                yield ObjectInfo(
                    key=_xml_text(item, "Key"),
                    size=int(_xml_text(item, "Size") or 0),
                    content_type="",  # ListObjectsV2 does not return it; head() does
                    etag=_xml_text(item, "ETag"),
                    last_modified=dt.datetime.fromisoformat(
                        _xml_text(item, "LastModified").replace("Z", "+00:00")
                    ),
                )
            token = _xml_text(root, "NextContinuationToken")
            if _xml_text(root, "IsTruncated") != "true" or not token:
                return
