"""What only the local-disk store has to prove: nothing escapes its directory, and its own signed route
behaves like S3 on the edges the contract suite does not reach (missing length, size cap, broken uploads).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from chat_core.objectstore import ObjectNotFound
from chat_core.objectstore.local import SIGNING_KEY_FILE, InvalidObjectKey, LocalObjectStore
from tests import harness
from tests.conftest import make_settings

TIMEOUT = 5.0


class Served:
    def __init__(self, store: LocalObjectStore, root: Path, port: int) -> None:
        self.store = store
        self.root = root  # DATA_DIR/objects
        self.port = port


@pytest.fixture
async def served(tmp_path: Path, serve: Any) -> Served:
    port = harness.free_port()
    backends = Composition(make_settings(tmp_path, {"PORT": str(port), "MAX_IMAGE_BYTES": "4096"}))
    store = backends.object_store
    assert isinstance(store, LocalObjectStore)
    await serve(create_service_app(backends.settings, backends, [], component="test", title="t"), port)
    return Served(store, tmp_path / "objects", port)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


# --- confinement ----------------------------------------------------------------------------------
ESCAPES = [
    "../x.png",
    "a/../../x.png",
    "/etc/x.png",
    "a//b.png",
    "a/./b.png",
    ".hidden",
    "a/.meta",
    "a\\b.png",
]
ESCAPES += ["a\x00b.png", "", "a/", "a/\nb.png"]


@pytest.mark.parametrize("key", ESCAPES)
async def test_a_key_that_could_leave_the_directory_is_refused_everywhere(served: Served, key: str) -> None:
    with pytest.raises(InvalidObjectKey):
        await served.store.put(key, b"x", content_type="image/png")
    with pytest.raises(InvalidObjectKey):
        await served.store.head(key)
    with pytest.raises(InvalidObjectKey):
        served.store.presign_put(key, content_type="image/png", content_length=None, expires_in=60)
    with pytest.raises(InvalidObjectKey):
        served.store.presign_get(key, expires_in=60)


async def test_nothing_is_written_through_a_symlinked_directory(served: Served, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (served.root / "conv").symlink_to(outside)
    with pytest.raises(InvalidObjectKey):
        await served.store.put("conv/images/x.png", b"x", content_type="image/png")
    assert list(outside.iterdir()) == []


async def test_nothing_is_read_through_a_symlinked_directory(served: Served, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"secret")
    (served.root / "conv").symlink_to(outside)
    with pytest.raises(InvalidObjectKey):
        await served.store.head("conv/x.png")
    with pytest.raises(InvalidObjectKey):
        await served.store.open("conv/x.png")


async def test_a_symlink_planted_as_an_object_is_not_followed(served: Served, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    (served.root / "conv").mkdir()
    (served.root / "conv" / "x.png").symlink_to(secret)
    assert await served.store.head("conv/x.png") is None
    assert await served.store.read_prefix("conv/x.png", 10) is None
    with pytest.raises(ObjectNotFound):
        await served.store.open("conv/x.png")


async def test_listing_skips_symlinks_hidden_and_temporary_files(served: Served, tmp_path: Path) -> None:
    await served.store.put("conv/a.png", b"a", content_type="image/png")
    (served.root / "conv" / ".tmp-123").write_bytes(b"partial")
    (served.root / "conv" / "link.png").symlink_to(tmp_path / "secret")
    assert [info.key async for info in served.store.list("")] == ["conv/a.png"]


async def test_a_storage_url_cannot_reach_outside_the_directory(
    served: Served, http: httpx.AsyncClient
) -> None:
    url = served.store.presign_get("conv/a.png", expires_in=60)
    request = http.build_request("GET", url)
    request.extensions["target"] = (
        url.split(str(served.port), 1)[1].replace("conv/a.png", "conv/../../x").encode()
    )
    response = await http.send(request)
    assert response.status_code in (400, 403, 404)


# --- the signing key ------------------------------------------------------------------------------
async def test_the_signing_key_is_private_to_its_owner(served: Served, tmp_path: Path) -> None:
    mode = stat.S_IMODE(os.stat(tmp_path / SIGNING_KEY_FILE).st_mode)
    assert mode == 0o600


async def test_another_process_on_the_same_data_dir_honours_the_urls(
    served: Served, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    other = LocalObjectStore(make_settings(tmp_path, {"PORT": str(served.port)}))
    await other.start()
    await served.store.put("conv/a.png", b"shared", content_type="image/png")
    response = await http.get(other.presign_get("conv/a.png", expires_in=60))
    assert response.status_code == 200
    assert response.content == b"shared"


async def test_a_store_on_another_data_dir_cannot_sign_for_this_one(
    served: Served, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    stranger = LocalObjectStore(make_settings(tmp_path / "elsewhere", {"PORT": str(served.port)}))
    await stranger.start()
    await served.store.put("conv/a.png", b"mine", content_type="image/png")
    response = await http.get(stranger.presign_get("conv/a.png", expires_in=60))
    assert response.status_code == 403


# --- the signed route's edges ---------------------------------------------------------------------
async def test_an_upload_without_a_length_is_411(served: Served, http: httpx.AsyncClient) -> None:
    upload = served.store.presign_put(
        "conv/a.png", content_type="image/png", content_length=None, expires_in=60
    )

    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunked"

    response = await http.put(upload.url, content=chunks(), headers=upload.headers)
    assert response.status_code == 411
    assert await served.store.head("conv/a.png") is None


async def test_an_unsigned_length_over_max_image_bytes_is_413(
    served: Served, http: httpx.AsyncClient
) -> None:
    upload = served.store.presign_put(
        "conv/a.png", content_type="image/png", content_length=None, expires_in=60
    )
    response = await http.put(upload.url, content=b"x" * 4097, headers=upload.headers)
    assert response.status_code == 413
    assert await served.store.head("conv/a.png") is None


async def test_a_get_url_used_for_a_put_is_refused(served: Served, http: httpx.AsyncClient) -> None:
    url = served.store.presign_get("conv/a.png", expires_in=60)
    response = await http.put(url, content=b"x", headers={"Content-Type": "image/png"})
    assert response.status_code == 403
    assert await served.store.head("conv/a.png") is None


async def test_refusals_speak_s3s_error_format(served: Served, http: httpx.AsyncClient) -> None:
    upload = served.store.presign_put(
        "conv/a.png", content_type="image/png", content_length=None, expires_in=60
    )
    response = await http.put(upload.url, content=b"x", headers={"Content-Type": "text/html"})
    assert response.headers["content-type"].startswith("application/xml")
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text


async def test_an_interrupted_upload_leaves_no_object_and_no_temporary_file(served: Served) -> None:
    upload = served.store.presign_put(
        "conv/a.png", content_type="image/png", content_length=None, expires_in=60
    )
    target = upload.url.split(str(served.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n"
    writer.write(head.encode() + b"\r\n" + b"only ten b")
    await writer.drain()
    directory = served.root / "conv"
    async with asyncio.timeout(TIMEOUT):
        while not any(directory.glob(".tmp-*")):  # the upload has begun
            await asyncio.sleep(0.01)
    writer.close()
    async with asyncio.timeout(TIMEOUT):
        while any(directory.glob(".tmp-*")):  # and is cleaned up once the client is gone
            await asyncio.sleep(0.01)
    assert await served.store.head("conv/a.png") is None
    del reader
