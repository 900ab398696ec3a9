"""ObjectStore contract: the same tests against S3 on LocalStack (signature validation on) and local disk.

Presigned URLs are exercised with real HTTP: LocalStack for S3, a real uvicorn serving the local store's
own ``/_storage`` route for the local adapter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from chat_core.objectstore import ByteRange, ObjectChanged, ObjectNotFound, ObjectStore, RangeNotSatisfiable
from tests import harness
from tests.conftest import make_settings, unique

DATA = bytes(range(256)) * 40  # 10240 bytes, every byte value
_buckets_ready: set[str] = set()


@pytest.fixture(scope="session")
def bucket(localstack: harness.Backend) -> str:
    return unique("contract")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.localstack)])
async def store(request: pytest.FixtureRequest, tmp_path: Path, serve: Any) -> AsyncIterator[ObjectStore]:
    """The adapter as a service gets it (built by the composition root, started by the app's lifespan)."""
    if request.param == "local":
        port = harness.free_port()
        backends = Composition(make_settings(tmp_path, {"PORT": str(port)}))
        local = backends.object_store
        # The local store's signed URLs point at the process's own /_storage route: serve it for real.
        await serve(create_service_app(backends.settings, backends, [], component="test", title="t"), port)
        yield local
        return
    localstack: harness.Backend = request.getfixturevalue("localstack")
    bucket: str = request.getfixturevalue("bucket")
    env = {"OBJECT_STORE": "s3", "S3_BUCKET_NAME": bucket, "AWS_ENDPOINT_URL": localstack.address}
    backends = Composition(make_settings(tmp_path, env))
    s3 = backends.object_store
    if bucket not in _buckets_ready:
        await harness.provision(backends.settings)
        _buckets_ready.add(bucket)
    async with backends:
        yield s3


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone (the S3 bucket is shared by the session)."""
    return f"c{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _tamper_signature(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    name = "X-Amz-Signature" if "X-Amz-Signature" in query else "signature"
    value = query[name]
    query[name] = ("A" if value[0] != "A" else "B") + value[1:]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _body(store: ObjectStore, key: str, byte_range: ByteRange | None = None) -> bytes:
    read = await store.open(key, byte_range)
    return b"".join([chunk async for chunk in read.body])


# --- head / put -----------------------------------------------------------------------------------
async def test_put_then_head_describes_the_object(store: ObjectStore, prefix: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=2)
    written = await store.put(prefix + "a.png", DATA, content_type="image/png")
    info = await store.head(prefix + "a.png")
    assert info == written
    assert info.key == prefix + "a.png"
    assert info.size == len(DATA)
    assert info.content_type == "image/png"
    assert info.etag.startswith('"')
    assert info.etag.endswith('"')
    assert before <= info.last_modified <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


async def test_put_returns_the_etag_head_and_read_give(store: ObjectStore, prefix: str) -> None:
    written = await store.put(prefix + "e.png", DATA, content_type="image/png")
    head = await store.head(prefix + "e.png")
    info, data = await store.read(prefix + "e.png")
    assert head is not None
    assert written.etag == head.etag == info.etag
    assert len(written.etag) > 2
    assert data == DATA
    assert info.size == len(DATA)


async def test_a_read_pinned_to_the_current_etag_gets_the_bytes(store: ObjectStore, prefix: str) -> None:
    written = await store.put(prefix + "p.png", DATA, content_type="image/png")
    info, data = await store.read(prefix + "p.png", if_match=written.etag)
    assert (info.etag, data) == (written.etag, DATA)


async def test_a_read_pinned_to_an_older_etag_is_refused(store: ObjectStore, prefix: str) -> None:
    first = await store.put(prefix + "p.png", b"first version", content_type="image/png")
    await store.put(prefix + "p.png", b"second version", content_type="image/png")
    with pytest.raises(ObjectChanged):
        await store.read(prefix + "p.png", if_match=first.etag)


async def test_a_read_of_a_missing_key_raises_not_found(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ObjectNotFound):
        await store.read(prefix + "nothing.png")
    with pytest.raises(ObjectNotFound):
        await store.read(prefix + "nothing.png", if_match='"0123"')


async def test_head_of_a_missing_key_is_none(store: ObjectStore, prefix: str) -> None:
    assert await store.head(prefix + "nothing.png") is None


async def test_the_etag_changes_when_the_content_changes(store: ObjectStore, prefix: str) -> None:
    first = await store.put(prefix + "a.png", b"one", content_type="image/png")
    second = await store.put(prefix + "a.png", b"two", content_type="image/png")
    assert first.etag != second.etag
    assert (await store.head(prefix + "a.png")) == second


async def test_keys_with_reserved_characters_round_trip(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    key = prefix + "images/a.b@c:d-e_f/20240419-123456 +%~é.jpg"
    await store.put(key, b"odd", content_type="image/jpeg")
    assert (await store.head(key)) is not None
    response = await http.get(store.presign_get(key, expires_in=60))
    assert response.status_code == 200
    assert response.content == b"odd"


# --- read_prefix ----------------------------------------------------------------------------------
async def test_read_prefix_returns_the_info_and_the_first_bytes(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    result = await store.read_prefix(prefix + "a.png", 32)
    assert result is not None
    info, head = result
    assert head == DATA[:32]
    assert info.size == len(DATA)
    assert info.content_type == "image/png"
    assert info == await store.head(prefix + "a.png")


async def test_read_prefix_of_a_short_object_returns_all_of_it(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", b"tiny", content_type="image/png")
    result = await store.read_prefix(prefix + "a.png", 4096)
    assert result is not None
    assert result[1] == b"tiny"
    assert result[0].size == 4


async def test_read_prefix_of_an_empty_object_returns_no_bytes(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "empty.png", b"", content_type="image/png")
    result = await store.read_prefix(prefix + "empty.png", 16)
    assert result is not None
    assert result[1] == b""
    assert result[0].size == 0


async def test_read_prefix_of_a_missing_key_is_none(store: ObjectStore, prefix: str) -> None:
    assert await store.read_prefix(prefix + "nothing.png", 16) is None


# --- open -----------------------------------------------------------------------------------------
async def test_open_streams_the_whole_object(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    read = await store.open(prefix + "a.png")
    assert (read.start, read.end, read.length) == (0, len(DATA) - 1, len(DATA))
    assert read.info.content_type == "image/png"
    assert b"".join([chunk async for chunk in read.body]) == DATA


async def test_open_with_a_closed_range_streams_exactly_those_bytes(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    read = await store.open(prefix + "a.png", ByteRange(100, 199))
    assert (read.start, read.end, read.length) == (100, 199, 100)
    assert read.info.size == len(DATA)
    assert b"".join([chunk async for chunk in read.body]) == DATA[100:200]


async def test_open_with_an_open_range_streams_to_the_end(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    assert await _body(store, prefix + "a.png", ByteRange(10000)) == DATA[10000:]


async def test_open_clamps_a_range_that_runs_past_the_end(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    read = await store.open(prefix + "a.png", ByteRange(10200, 99999))
    assert (read.start, read.end) == (10200, len(DATA) - 1)
    assert b"".join([chunk async for chunk in read.body]) == DATA[10200:]


async def test_a_range_starting_past_the_end_is_not_satisfiable(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    with pytest.raises(RangeNotSatisfiable) as raised:
        await store.open(prefix + "a.png", ByteRange(len(DATA)))
    assert raised.value.size == len(DATA)


async def test_open_of_a_missing_key_raises_object_not_found(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ObjectNotFound):
        await store.open(prefix + "nothing.png")


# --- delete ---------------------------------------------------------------------------------------
async def test_delete_removes_the_object(store: ObjectStore, prefix: str) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    await store.delete(prefix + "a.png")
    assert await store.head(prefix + "a.png") is None


async def test_deleting_a_missing_key_is_not_an_error(store: ObjectStore, prefix: str) -> None:
    await store.delete(prefix + "nothing.png")
    assert await store.head(prefix + "nothing.png") is None


# --- list -----------------------------------------------------------------------------------------
async def test_copy_makes_an_independent_object_with_the_same_bytes_and_type(
    store: ObjectStore, prefix: str
) -> None:
    source = await store.put(f"{prefix}a/thumbnail.jpg", DATA, content_type="image/jpeg")
    copied = await store.copy(f"{prefix}a/thumbnail.jpg", f"{prefix}b/thumbnail.jpg")
    assert copied.key == f"{prefix}b/thumbnail.jpg"
    assert (copied.size, copied.content_type, copied.etag) == (len(DATA), "image/jpeg", source.etag)
    info, data = await store.read(f"{prefix}b/thumbnail.jpg")
    assert (data, info.content_type) == (DATA, "image/jpeg")
    # Deleting either leaves the other intact.
    await store.delete(f"{prefix}a/thumbnail.jpg")
    assert (await store.read(f"{prefix}b/thumbnail.jpg"))[1] == DATA
    await store.copy(f"{prefix}b/thumbnail.jpg", f"{prefix}a/thumbnail.jpg")
    await store.delete(f"{prefix}b/thumbnail.jpg")
    assert (await store.read(f"{prefix}a/thumbnail.jpg"))[1] == DATA


async def test_copy_overwrites_the_destination(store: ObjectStore, prefix: str) -> None:
    await store.put(f"{prefix}new", b"new bytes", content_type="image/png")
    await store.put(f"{prefix}old", b"old", content_type="image/jpeg")
    await store.copy(f"{prefix}new", f"{prefix}old")
    info, data = await store.read(f"{prefix}old")
    assert (data, info.content_type) == (b"new bytes", "image/png")


async def test_copy_of_a_missing_key_raises_not_found(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ObjectNotFound):
        await store.copy(f"{prefix}missing", f"{prefix}copy")
    assert await store.head(f"{prefix}copy") is None


async def test_list_streams_every_object_under_the_prefix_in_key_order(
    store: ObjectStore, prefix: str
) -> None:
    keys = [prefix + k for k in ("b/2.png", "a-c.png", "a/1.png", "a/0.png", "b/1/x.png", "c.png")]
    for key in keys:
        await store.put(key, key.encode(), content_type="image/png")
    await store.put(prefix.rstrip("/") + "-other/a.png", b"x", content_type="image/png")
    listed = [info async for info in store.list(prefix, page_size=2)]
    assert [info.key for info in listed] == sorted(keys)


async def test_list_matches_a_prefix_that_ends_inside_a_name(store: ObjectStore, prefix: str) -> None:
    for key in ("a/one.png", "a/other.png", "a/two.png", "ab.png"):
        await store.put(prefix + key, b"x", content_type="image/png")
    listed = [info.key async for info in store.list(prefix + "a/o")]
    assert listed == [prefix + "a/one.png", prefix + "a/other.png"]


async def test_list_reports_size_and_etag_as_head_does(store: ObjectStore, prefix: str) -> None:
    written = await store.put(prefix + "a.png", DATA, content_type="image/png")
    [listed] = [info async for info in store.list(prefix)]
    assert (listed.key, listed.size, listed.etag) == (written.key, written.size, written.etag)
    assert abs((listed.last_modified - written.last_modified).total_seconds()) < 1


async def test_list_of_an_unused_prefix_yields_nothing(store: ObjectStore, prefix: str) -> None:
    assert [info async for info in store.list(prefix)] == []


# --- presigned PUT --------------------------------------------------------------------------------
async def test_a_presigned_put_stores_the_bytes_with_the_signed_type(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(
        prefix + "a.png", content_type="image/png", content_length=None, expires_in=600
    )
    assert upload.method == "PUT"
    assert upload.headers == {"Content-Type": "image/png"}
    response = await http.put(upload.url, content=DATA, headers=upload.headers)
    assert response.status_code == 200, response.text
    info = await store.head(prefix + "a.png")
    assert info is not None
    assert (info.size, info.content_type) == (len(DATA), "image/png")
    assert await _body(store, prefix + "a.png") == DATA


async def test_a_presigned_put_says_when_it_expires(store: ObjectStore, prefix: str) -> None:
    now = dt.datetime.now(dt.UTC)
    upload = store.presign_put(prefix + "a.png", content_type="image/png", content_length=4, expires_in=600)
    assert upload.headers == {"Content-Type": "image/png", "Content-Length": "4"}
    assert abs((upload.expires_at - now).total_seconds() - 600) < 2


async def test_a_presigned_put_with_the_signed_length_is_accepted(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(prefix + "a.png", content_type="image/png", content_length=4, expires_in=600)
    response = await http.put(upload.url, content=b"four", headers=upload.headers)
    assert response.status_code == 200, response.text
    assert (await store.head(prefix + "a.png")) is not None


async def test_a_put_with_another_content_type_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(
        prefix + "a.png", content_type="image/png", content_length=None, expires_in=600
    )
    response = await http.put(upload.url, content=DATA, headers={"Content-Type": "text/html"})
    assert response.status_code == 403
    assert await store.head(prefix + "a.png") is None


async def test_a_put_with_another_length_than_the_signed_one_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(prefix + "a.png", content_type="image/png", content_length=4, expires_in=600)
    response = await http.put(upload.url, content=b"much longer", headers={"Content-Type": "image/png"})
    assert response.status_code == 403
    assert await store.head(prefix + "a.png") is None


async def test_a_tampered_put_url_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(
        prefix + "a.png", content_type="image/png", content_length=None, expires_in=600
    )
    response = await http.put(_tamper_signature(upload.url), content=DATA, headers=upload.headers)
    assert response.status_code == 403
    assert await store.head(prefix + "a.png") is None


async def test_a_put_url_used_for_another_key_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(
        prefix + "a.png", content_type="image/png", content_length=None, expires_in=600
    )
    response = await http.put(upload.url.replace("/a.png?", "/b.png?"), content=DATA, headers=upload.headers)
    assert response.status_code == 403
    assert await store.head(prefix + "b.png") is None


async def test_an_expired_put_url_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put(prefix + "a.png", content_type="image/png", content_length=None, expires_in=1)
    # Expiry has one-second resolution on both sides: wait until the URL is past it for certain.
    await asyncio.sleep(max(0.0, (upload.expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    response = await http.put(upload.url, content=DATA, headers=upload.headers)
    assert response.status_code == 403
    assert await store.head(prefix + "a.png") is None


# --- presigned GET --------------------------------------------------------------------------------
async def test_a_presigned_get_returns_the_bytes_and_type(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    response = await http.get(store.presign_get(prefix + "a.png", expires_in=60))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-type"] == "image/png"


async def test_the_same_signing_time_gives_the_same_get_url(store: ObjectStore, prefix: str) -> None:
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first = store.presign_get(prefix + "a.png", expires_in=600, signed_at=at)
    again = store.presign_get(prefix + "a.png", expires_in=600, signed_at=at)
    later = store.presign_get(prefix + "a.png", expires_in=600, signed_at=at + dt.timedelta(seconds=1))
    assert first == again
    assert later != first


async def test_a_presigned_get_applies_the_signed_response_headers(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    url = store.presign_get(
        prefix + "a.png", expires_in=60, response_headers={"Cache-Control": "private, max-age=300"}
    )
    response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, max-age=300"


@pytest.mark.parametrize("tamper", ["signature", "key", "unsigned_override"])
async def test_a_tampered_get_url_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient, tamper: str
) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    await store.put(prefix + "b.png", DATA, content_type="image/png")
    url = store.presign_get(prefix + "a.png", expires_in=60)
    if tamper == "signature":
        url = _tamper_signature(url)
    elif tamper == "key":
        url = url.replace("/a.png?", "/b.png?")
    else:
        url = _with_query(url, **{"response-content-type": "text/html"})
    response = await http.get(url)
    assert response.status_code == 403
    assert DATA not in response.content


async def test_an_expired_get_url_is_refused(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    response = await http.get(store.presign_get(prefix + "a.png", expires_in=60, signed_at=an_hour_ago))
    assert response.status_code == 403
    assert DATA not in response.content


async def test_a_presigned_get_of_a_missing_key_is_404(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    response = await http.get(store.presign_get(prefix + "nothing.png", expires_in=60))
    assert response.status_code == 404


async def test_a_presigned_get_serves_a_range(
    store: ObjectStore, prefix: str, http: httpx.AsyncClient
) -> None:
    await store.put(prefix + "a.png", DATA, content_type="image/png")
    response = await http.get(
        store.presign_get(prefix + "a.png", expires_in=60), headers={"Range": "bytes=5-9"}
    )
    assert response.status_code == 206
    assert response.content == DATA[5:10]
    assert response.headers["content-range"] == f"bytes 5-9/{len(DATA)}"


async def test_ping_answers_when_the_store_is_up(store: ObjectStore) -> None:
    await store.ping()
